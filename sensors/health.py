"""Sensor health events: what an operator watches to know a sensor is alive and keeping up.

Every `interval_s` the sensor service emits one plain ECS JSON document (not an event batch:
health is not one of the event kinds of pipeline.schema) with cumulative counters since the
start and rates over the last interval:

    event.kind: metric, event.dataset: cirtsa.sensor_health, event.module: cirtsa
    observer.name / observer.ingress.zone / observer.hostname / observer.type: sensor
    cirtsa.health.*: packets, bytes, kernel packets/drops (live capture), flows live/evicted,
        events emitted per kind, weird (damaged packet) counts per reason, lag, rates, and
        the Kafka producer's delivery/spool counters when one is used, `tunnels`:
        packets decapsulated per outermost tunnel kind (vxlan, erspan ...), and `defrag`:
        IP fragment reassembly (datagrams reassembled, fragments, timeouts, evicted,
        overlaps; sensors/defrag.py).

The interval runs on event time for captures (packet timestamps: a replayed day yields the
same documents however fast it is read) and on wall time for live capture. `lag_s` is always
wall now minus the newest packet time: how far behind real time the sensor's output is
(for old captures it is simply their age).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping

from pipeline.schema import ECS_VERSION, ns_to_iso

NS = 1_000_000_000
HEALTH_DATASET = "cirtsa.sensor_health"


class HealthReporter:
    """Decides when a health document is due and builds it from counters."""

    def __init__(self, observer_name: str, ingress_zone: str, interval_s: float,
                 wall_clock: bool) -> None:
        self.observer_name = observer_name
        self.ingress_zone = ingress_zone
        self.interval_ns = max(int(float(interval_s) * NS), 1)
        self.wall_clock = wall_clock  # live capture: wall time; files: event time
        self.hostname = socket.gethostname()
        self.started_wall_ns = time.time_ns()
        self._next_due: int | None = None
        self._last: dict[str, int] = {}
        self._last_at: int | None = None

    def clock(self, newest_packet_ns: int | None) -> int | None:
        """The clock health intervals run on (None: no packet yet in event-time mode)."""
        return time.time_ns() if self.wall_clock else newest_packet_ns

    def due(self, newest_packet_ns: int | None) -> bool:
        """True when a document is due now (the first call only starts the interval)."""
        now = self.clock(newest_packet_ns)
        if now is None:
            return False
        if self._next_due is None:
            self._next_due = now + self.interval_ns
            self._last_at = now
            return False
        return now >= self._next_due

    def report(self, counters: Mapping[str, int], events: Mapping[str, int],
               weird: Mapping[str, int], newest_packet_ns: int | None,
               extra: Mapping[str, Mapping[str, int]] | None = None) -> dict:
        """The health document for now, and restart the interval.

        counters: packets, bytes, kernel_packets, kernel_drops, flows_live, flows_evicted,
        ... (cumulative); events: emitted per kind (cumulative); weird: per reason;
        extra: further groups of counters (e.g. {"producer": {...}}) copied as they are.
        """
        wall = time.time_ns()
        now = self.clock(newest_packet_ns)
        now = wall if now is None else now
        elapsed_ns = now - self._last_at if self._last_at is not None else 0
        health: dict = {name: int(value) for name, value in counters.items()}
        health["events"] = {kind: int(n) for kind, n in sorted(events.items())}
        health["events_total"] = int(sum(events.values()))
        health["weird"] = {reason: int(n) for reason, n in sorted(weird.items()) if n}
        health["lag_s"] = (round((wall - newest_packet_ns) / NS, 3)
                           if newest_packet_ns is not None else None)
        health["uptime_s"] = round((wall - self.started_wall_ns) / NS, 3)
        health["interval_s"] = round(elapsed_ns / NS, 3)
        health["clock"] = "wall" if self.wall_clock else "event"
        if elapsed_ns > 0:  # rates over the interval just ended
            seconds = elapsed_ns / NS
            for name in ("packets", "bytes", "kernel_drops"):
                if name in counters:
                    delta = int(counters[name]) - self._last.get(name, 0)
                    health[f"{name}_per_s"] = round(delta / seconds, 1)
            health["events_per_s"] = round(
                (health["events_total"] - self._last.get("events_total", 0)) / seconds, 1)
        for group, values in (extra or {}).items():
            health[group] = {k: int(v) for k, v in values.items()}
        self._last = {name: int(counters[name]) for name in ("packets", "bytes", "kernel_drops")
                      if name in counters}
        self._last["events_total"] = health["events_total"]
        self._last_at = now
        self._next_due = now + self.interval_ns
        return {
            "@timestamp": ns_to_iso(now),
            "ecs": {"version": ECS_VERSION},
            "event": {"kind": "metric", "dataset": HEALTH_DATASET, "module": "cirtsa",
                      "type": ["info"], "created": ns_to_iso(wall)},
            "observer": {"name": self.observer_name, "hostname": self.hostname,
                         "type": "sensor", "ingress": {"zone": self.ingress_zone}},
            "cirtsa": {"health": health},
        }
