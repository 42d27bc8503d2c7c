"""The embedded pipeline: sensor -> fusion -> correlation in one process on the in-memory bus.

Same stages, same order as the Kafka deployment (DESIGN.md §2), no servers. Used by
`cirt-sa replay` and `cirt-sa events`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from correlation.engine import CorrelationEngine
from fusion.stage import FusionStage
from pipeline.bus import TOPIC_ALERTS, TOPIC_DEADLETTER, TOPIC_EVENTS, TOPIC_SENSOR, InMemoryBus
from pipeline.schema import EventBatch, observer_update_rows
from sensors.pcap_reader import CaptureError, CaptureReader
from sensors.sensor import CaptureResult, capture_events

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass
class RunReport:
    captures: list[CaptureResult] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)  # by kind
    alerts: list[dict] = field(default_factory=list)
    deadletter: list[dict] = field(default_factory=list)
    correlation_stats: dict[str, int] = field(default_factory=dict)

    @property
    def input_errors(self) -> bool:
        return any(c.error or c.damage for c in self.captures)


def _first_timestamp(path: str) -> int:
    """Time of a capture's first packet (for ordering inputs); unreadable files sort first."""
    try:
        with CaptureReader(path, batch_packets=1) as reader:
            for batch in reader.batches():
                return int(batch.ts_ns[0]) if len(batch) else 0
    except CaptureError:
        pass
    return 0


def order_captures(paths: Sequence[str]) -> list[str]:
    """Captures in the order of their first packet, so event time moves forward across files
    (what mergecap would do for non-overlapping files)."""
    return sorted(paths, key=_first_timestamp)


def connect_stages(bus: InMemoryBus, report, config: dict,
                   on_events: Callable[[EventBatch], None] | None = None,
                   correlate: bool = True) -> CorrelationEngine | None:
    """Subscribe the correlation stage and the report to the bus (downstream of fusion):
    events are counted and correlated, alerts and dead letters collected in `report` (which
    has `events`, `alerts`, `deadletter`). Returns the engine, to flush at end of input."""
    engine = CorrelationEngine(config.get("correlation") or {}) if correlate else None

    def count_events(batch: EventBatch) -> None:
        # late observer updates (docs/fusion.md) re-report flows already counted
        report.events[batch.kind] += len(batch) - int(observer_update_rows(batch).sum())

    bus.subscribe(TOPIC_EVENTS, count_events)
    if on_events is not None:
        bus.subscribe(TOPIC_EVENTS, on_events)
    if engine is not None:
        bus.subscribe(TOPIC_EVENTS, lambda batch: publish_alerts(bus, engine.push(batch)))
    bus.subscribe(TOPIC_ALERTS, report.alerts.append)
    bus.subscribe(TOPIC_DEADLETTER, report.deadletter.append)
    return engine


def run_pipeline(
    paths: Sequence[str | os.PathLike],
    config: dict,
    on_events: Callable[[EventBatch], None] | None = None,
    correlate: bool = True,
    progress: Progress | None = None,
) -> RunReport:
    """Replay captures through every stage. Alerts are collected in the report;
    validated events also go to `on_events`. Unusable files are reported, not raised."""
    report = RunReport()
    bus = InMemoryBus()
    fusion = FusionStage(bus, config)
    engine = connect_stages(bus, report, config, on_events, correlate)

    paths = order_captures([os.fspath(p) for p in paths])
    total = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    done_before = 0
    for path in paths:
        result = CaptureResult(path=path)
        report.captures.append(result)
        try:
            for consumed, batches in capture_events(path, config["sensor"], result):
                for batch in batches:
                    bus.publish(TOPIC_SENSOR, batch)
                if progress is not None:
                    progress(done_before + consumed, total)
        except CaptureError as exc:
            result.error = str(exc)
        except OSError as exc:
            result.error = f"{path}: cannot read: {exc.strerror or exc}"
        done_before += os.path.getsize(path) if os.path.isfile(path) else 0
    if engine is not None:
        publish_alerts(bus, engine.flush())
        report.correlation_stats = dict(engine.stats)
    report.correlation_stats.update({f"fusion.{k}": v for k, v in fusion.stats.items()})
    return report


def publish_alerts(bus: InMemoryBus, alerts: list[dict]) -> None:
    """Alerts the engine returned, onto sa.alerts."""
    for alert in alerts:
        bus.publish(TOPIC_ALERTS, alert)
