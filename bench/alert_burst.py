"""Alert-burst benchmark: the cost per alert when thousands of alerts close in one window.

Issue #4's all-detector latency run saw p99 packet -> alert latency grow from 1.7 s (2
alerts) to 7.5 s when ~2,100 alerts closed at once: everything after `detect` is per-alert
Python (evidence, the ECS document, its id, JSON). This bench isolates that path. It makes
a synthetic flow stream in which `--sources` scanners each scan one host (vertical: 8
failed attempts on 8 ports) and `--sources` others each probe 8 hosts on one port
(horizontal), all inside one minute, with every default detector on, and times the push
that closes their first window (CPU time, median of --runs, fresh engine per run), split
into the detectors' `detect` (findings), the findings' evidence (`Finding.describe`,
detector code), the ECS documents (`build_alert`, with evidence excluded), the rest of
the engine, and - outside the engine - orjson serialization (what services.py sends) and
incident fusion (correlation/incidents.py, what `es load` does).

    python3 bench/alert_burst.py                 # 1,100 + 1,100 scanners, 5 runs
    python3 bench/alert_burst.py --sources 2000 --runs 3
    python3 bench/alert_burst.py --victims 1     # one victim: one incident of 1,100+ alerts
    python3 bench/alert_burst.py --mix network   # + UDP scans, ICMP sweeps, SSH brute force
    python3 bench/alert_burst.py --mix large --sources 500 --runs 3
                                                 # hundreds of rows per alert (below)

Mix "large" has the shape of the 90 s latency run's burst (bench/kafka.py, issue #4: 3,200
alerts of ~650 rows each): `--sources` vertical scanners of `--group-rows` ports each, as
many horizontal scanners of as many hosts, SSH brute-forcers of as many sessions, UDP
scanners of as many ports and ICMP sweepers of as many hosts, instead of the small scans.

Prints µs per alert of each part and the SHA-256 of the alert and incident documents
(compare two versions of the code: equal hashes = byte-identical documents).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import statistics
import sys
import time

import numpy as np
import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import correlation.engine as engine_module  # noqa: E402
from bench.correlation_stream import SENSOR, ZONE, Table  # noqa: E402
from correlation.detector import TCP_RST, TCP_SYN  # noqa: E402
from correlation.engine import CorrelationEngine  # noqa: E402
from correlation.incidents import IncidentBuilder  # noqa: E402
from pipeline.schema import EventBatch  # noqa: E402

NS = 1_000_000_000
T0_S = 1_767_225_600  # 2026-01-01T00:00:00Z
PROBES = 8  # ports per vertical scanner, hosts per horizontal scanner (thresholds: 5)


def burst_batches(sources: int, victims: int = 4096, seed: int = 7,
                  mix: str = "scan", group_rows: int = 640) -> list[EventBatch]:
    """[the scans, one later event that closes their first 5-minute window]; mix "network"
    adds as many UDP vertical scanners, ICMP sweepers and SSH brute-forcers; mix "large"
    has vertical and horizontal scanners and SSH brute-forcers of group_rows rows each."""
    rng = np.random.default_rng(seed)
    table = Table("flow")
    if mix == "large":
        _add_large_bursts(table, sources, victims, group_rows, rng)
    else:
        _add_scans(table, sources, victims, rng)
    if mix == "network":
        _add_network_bursts(table, sources, victims, rng)
    cols = table.build()
    order = np.argsort(cols["timestamp"], kind="stable")
    scans = EventBatch("flow", {c: v[order] for c, v in cols.items()})
    closer = Table("flow")
    # a benign flow 7 minutes later: the watermark passes the first window's end
    closer.add(1, timestamp=_ns(T0_S + 420 + 600), end=_ns(T0_S + 421 + 600),
               src_ip=0x0A01_0009, dst_ip=0x0A01_000A, src_port=40000, dst_port=443,
               transport=6, src_packets=5, dst_packets=5, src_bytes=900, dst_bytes=5000,
               src_tcp_flags=0x1B, dst_tcp_flags=0x1B, src_payload_bytes=500,
               dst_payload_bytes=4000)
    return [scans, EventBatch("flow", closer.build())]


def _add_scans(table: Table, sources: int, victims: int, rng: np.random.Generator) -> None:
    """Per source: a vertical scan of PROBES ports, a horizontal one of PROBES hosts."""
    n = sources * PROBES
    # vertical: scanner 100.64.x.y -> one victim 10.2.x.y, PROBES distinct ports
    scanner = 0x6440_0000 + np.repeat(np.arange(sources), PROBES)
    victim = 0x0A02_0000 + np.repeat(rng.integers(0, victims, sources), PROBES)
    port = np.tile(np.arange(PROBES), sources) * 37 + 1000
    # horizontal: scanner 100.96.x.y -> PROBES hosts 10.3.x.y, one port per scanner
    h_scanner = 0x6460_0000 + np.repeat(np.arange(sources), PROBES)
    h_victim = 0x0A03_0000 + rng.integers(0, 65536, n)
    h_port = np.repeat(rng.choice([22, 23, 445, 3389, 5900], sources), PROBES)
    src = np.concatenate([scanner, h_scanner])
    dst = np.concatenate([victim, h_victim])
    dport = np.concatenate([port, h_port])
    t = _ns(T0_S + 10 + rng.uniform(0, 40, 2 * n))
    refused = rng.random(2 * n) < 0.5
    table.add(2 * n, timestamp=t, end=t + 1_000_000, src_ip=src, dst_ip=dst,
              src_port=rng.integers(30000, 60000, 2 * n), dst_port=dport, transport=6,
              src_packets=1, dst_packets=refused.astype(np.int64), src_bytes=60,
              dst_bytes=refused * 40, src_tcp_flags=TCP_SYN,
              dst_tcp_flags=np.where(refused, TCP_RST, 0), observer_name=SENSOR,
              ingress_zone=ZONE)


def _add_large_bursts(table: Table, sources: int, victims: int, group_rows: int,
                      rng: np.random.Generator) -> None:
    """Per source, group_rows rows inside 40 s: failed attempts on as many ports of one host
    (port_scan_vertical), on one port of as many hosts (port_scan_horizontal), short SSH
    sessions to one server (brute_force), unanswered UDP to as many ports of one host
    (udp_scan_vertical), pings to as many hosts (icmp_sweep); two sensors and zones."""
    n = sources * group_rows

    def times() -> np.ndarray:
        return _ns(T0_S + 10 + rng.uniform(0, 40, n))

    def per_source(base: int) -> np.ndarray:
        return base + np.repeat(np.arange(sources), group_rows)

    observers = np.array([SENSOR, SENSOR + "-b"], object)[rng.integers(0, 2, n)]
    zones = np.array([ZONE, ZONE + "-b"], object)[(rng.random(n) < 0.1).astype(np.int64)]
    t = times()
    refused = rng.random(n) < 0.5
    answered = ~refused & (rng.random(n) < 0.2)  # half-open: SYN-ACK then RST
    table.add(n, timestamp=t, end=t + 1_000_000, src_ip=per_source(0x6440_0000),
              dst_ip=0x0A02_0000 + np.repeat(rng.integers(0, victims, sources), group_rows),
              src_port=rng.integers(30000, 60000, n),
              dst_port=np.tile(np.arange(group_rows), sources) * 7 + 1000, transport=6,
              src_packets=1, dst_packets=(refused | answered).astype(np.int64), src_bytes=60,
              dst_bytes=(refused | answered) * 40, src_tcp_flags=TCP_SYN | (answered * TCP_RST),
              dst_tcp_flags=np.where(refused, TCP_RST, np.where(answered, TCP_SYN | 0x10, 0)),
              observer_name=observers, ingress_zone=zones)
    t = times()
    refused = rng.random(n) < 0.5
    table.add(n, timestamp=t, end=t + 1_000_000, src_ip=per_source(0x6460_0000),
              dst_ip=0x0A03_0000 + rng.integers(0, 65536, n),
              src_port=rng.integers(30000, 60000, n),
              dst_port=np.repeat(rng.choice([22, 23, 445, 3389, 5900], sources), group_rows),
              transport=6, src_packets=1, dst_packets=refused.astype(np.int64), src_bytes=60,
              dst_bytes=refused * 40, src_tcp_flags=TCP_SYN,
              dst_tcp_flags=np.where(refused, TCP_RST, 0), observer_name=observers,
              ingress_zone=zones)
    t = times()
    table.add(n, timestamp=t, end=t + rng.integers(100, 5000, n) * 1_000_000,
              src_ip=per_source(0x6480_0000),
              dst_ip=0x0A06_0000 + np.repeat(rng.integers(0, victims, sources), group_rows),
              src_port=rng.integers(1024, 65536, n), dst_port=22, transport=6,
              src_packets=20, dst_packets=20, src_bytes=3000, dst_bytes=4000,
              src_tcp_flags=0x1B, dst_tcp_flags=0x1B,
              src_payload_bytes=rng.integers(1500, 3000, n),
              dst_payload_bytes=rng.integers(2000, 4000, n),
              observer_name=observers, ingress_zone=zones)
    t = times()
    table.add(n, timestamp=t, end=t + 1_000_000, src_ip=per_source(0x6450_0000),
              dst_ip=0x0A04_0000 + np.repeat(rng.integers(0, victims, sources), group_rows),
              src_port=rng.integers(30000, 60000, n),
              dst_port=np.tile(np.arange(group_rows), sources) * 3 + 2000, transport=17,
              src_packets=1, dst_packets=0, src_bytes=40, dst_bytes=0,
              observer_name=observers, ingress_zone=zones)
    t = times()
    answered = rng.random(n) < 0.3
    table.add(n, timestamp=t, end=t + 1_000_000, src_ip=per_source(0x6470_0000),
              dst_ip=0x0A05_0000 + rng.integers(0, 65536, n), src_port=8, dst_port=0,
              transport=1, src_packets=1, dst_packets=answered.astype(np.int64),
              src_bytes=84, dst_bytes=answered * 84, observer_name=observers,
              ingress_zone=zones)


def _add_network_bursts(table: Table, sources: int, victims: int,
                        rng: np.random.Generator) -> None:
    """Per source: 12 unanswered UDP ports on one host (udp_scan_vertical), 12 pinged hosts
    (icmp_sweep), 12 short SSH sessions to one server (brute_force), all inside 40 s."""
    n = sources * 12

    def times() -> np.ndarray:
        return _ns(T0_S + 10 + rng.uniform(0, 40, n))

    def per_source(base: int) -> np.ndarray:
        return base + np.repeat(np.arange(sources), 12)

    t = times()
    table.add(n, timestamp=t, end=t + 1_000_000, src_ip=per_source(0x6450_0000),
              dst_ip=0x0A04_0000 + np.repeat(rng.integers(0, victims, sources), 12),
              src_port=rng.integers(30000, 60000, n),
              dst_port=np.tile(np.arange(12), sources) * 53 + 2000, transport=17,
              src_packets=1, dst_packets=0, src_bytes=40, dst_bytes=0,
              observer_name=SENSOR, ingress_zone=ZONE)
    t = times()
    answered = rng.random(n) < 0.3
    table.add(n, timestamp=t, end=t + 1_000_000, src_ip=per_source(0x6470_0000),
              dst_ip=0x0A05_0000 + rng.integers(0, 65536, n), src_port=8, dst_port=0,
              transport=1, src_packets=1, dst_packets=answered.astype(np.int64),
              src_bytes=84, dst_bytes=answered * 84, observer_name=SENSOR, ingress_zone=ZONE)
    t = times()
    table.add(n, timestamp=t, end=t + rng.integers(1, 5, n) * NS, src_ip=per_source(0x6480_0000),
              dst_ip=0x0A06_0000 + np.repeat(rng.integers(0, victims, sources), 12),
              src_port=rng.integers(30000, 60000, n), dst_port=22, transport=6,
              src_packets=20, dst_packets=20, src_bytes=3000, dst_bytes=4000,
              src_tcp_flags=0x1B, dst_tcp_flags=0x1B,
              src_payload_bytes=rng.integers(1500, 3000, n),
              dst_payload_bytes=rng.integers(2000, 4000, n),
              observer_name=SENSOR, ingress_zone=ZONE)


def _ns(seconds) -> np.ndarray:
    return (np.asarray(seconds, np.float64) * NS).astype(np.int64)


class _Timers:
    """CPU time spent in detect, describe and build_alert (describe subtracted)."""

    def __init__(self) -> None:
        self.detect = self.describe = self.build = 0.0
        self.findings = 0
        self.describe_by: dict[str, list] = {}  # detector name -> [describe CPU s, calls]

    def install(self, engine: CorrelationEngine) -> None:
        timers = self
        for d in engine.detectors:
            inner = d.detect

            def detect(rows, windows, inner=inner, d=d):
                t0 = time.process_time()
                findings = inner(rows, windows)
                timers.detect += time.process_time() - t0
                timers.findings += len(findings)
                for f in findings:
                    f.describe = timers.timed_describe(f.describe, d.name)
                return findings
            d.detect = detect

    def timed_describe(self, describe, name: str):
        def wrapped():
            t0 = time.process_time()
            try:
                return describe()
            finally:
                dt = time.process_time() - t0
                self.describe += dt
                entry = self.describe_by.setdefault(name, [0.0, 0])
                entry[0] += dt
                entry[1] += 1
        return wrapped


def run_once(batches: list[EventBatch], instrument: bool) -> dict:
    engine = CorrelationEngine()
    timers = _Timers()
    # the engine's document builder: build_alerts (batch) or, in older code, build_alert
    name = "build_alerts" if hasattr(engine_module, "build_alerts") else "build_alert"
    build = getattr(engine_module, name)
    if instrument:
        timers.install(engine)

        def timed_build(findings):
            t0 = time.process_time()
            d0 = timers.describe
            docs = build(findings)
            timers.build += time.process_time() - t0 - (timers.describe - d0)
            return docs
        setattr(engine_module, name, timed_build)
    try:
        engine.push(batches[0])  # buffered, no window closes yet
        t0 = time.process_time()
        alerts = engine.push(batches[1])
        total = time.process_time() - t0
    finally:
        setattr(engine_module, name, build)
    t0 = time.process_time()
    payloads = [orjson.dumps(a, option=orjson.OPT_SERIALIZE_NUMPY) for a in alerts]
    dumps = time.process_time() - t0
    t0 = time.process_time()
    incidents = IncidentBuilder().add(alerts)
    incident_s = time.process_time() - t0
    digest = hashlib.sha256(b"\n".join(payloads + [orjson.dumps(i) for i in incidents])
                            ).hexdigest()
    return {"alerts": len(alerts), "findings": timers.findings, "total": total,
            "detect": timers.detect, "describe": timers.describe, "build": timers.build,
            "describe_by": timers.describe_by,
            "rules": collections.Counter(a["rule"]["id"] for a in alerts),
            "dumps": dumps, "incidents": incident_s, "incident_docs": len(incidents),
            "sha": digest}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=1100,
                        help="vertical scanners (and as many horizontal ones)")
    parser.add_argument("--victims", type=int, default=4096,
                        help="distinct hosts the vertical scanners pick from (1: every scanner "
                             "hits one host, so every alert joins one incident)")
    parser.add_argument("--mix", choices=("scan", "network", "large"), default="scan",
                        help="network: also UDP scans, ICMP sweeps and SSH brute force, as "
                             "many sources each (their detectors' describe in the burst); "
                             "large: scans and SSH brute force of --group-rows rows each")
    parser.add_argument("--group-rows", type=int, default=640,
                        help="rows per alert of mix large (the latency run's burst: ~650)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    batches = burst_batches(args.sources, args.victims, mix=args.mix,
                            group_rows=args.group_rows)
    t0 = time.process_time()
    run_once(batches, instrument=False)  # warm-up: kernel cache load / compile
    print(f"{len(batches[0]):,} scan flows from {2 * args.sources:,} scanners; warm-up "
          f"{time.process_time() - t0:.2f} s CPU (not timed)")
    plain = [run_once(batches, instrument=False) for _ in range(args.runs)]
    split = [run_once(batches, instrument=True) for _ in range(args.runs)]
    n = plain[0]["alerts"]
    assert all(r["sha"] == plain[0]["sha"] for r in plain + split), "alerts differ between runs"

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    total = med(plain, "total")
    print(f"{n:,} alerts ({plain[0]['findings'] or split[0]['findings']:,} findings before "
          f"suppression) from the closing push; {plain[0]['incident_docs']:,} incident docs")
    print(f"closing push (uninstrumented), CPU median of {args.runs}: {total:.3f} s = "
          f"{total / n * 1e6:,.1f} µs per alert")
    t_in = med(split, "total")
    parts = {"detect (findings)": med(split, "detect"),
             "describe (evidence, detector code)": med(split, "describe"),
             "build_alert (document + id, minus describe)": med(split, "build")}
    parts["rest of the engine"] = t_in - sum(parts.values())
    print(f"instrumented split (total {t_in:.3f} s):")
    for name, s in parts.items():
        print(f"  {name:<46} {s:7.3f} s  {s / n * 1e6:8.1f} µs/alert")
    rules = plain[0]["rules"]
    for name in sorted(split[0]["describe_by"]):
        s = statistics.median(r["describe_by"].get(name, [0.0])[0] for r in split)
        calls = split[0]["describe_by"][name][1]
        print(f"    describe of {name:<33} {s:7.3f} s  {s / calls * 1e6:8.1f} µs/call "
              f"({calls:,} calls)")
    print("alerts per rule: " + ", ".join(f"{r} {c:,}" for r, c in sorted(rules.items())))
    for name, key in (("orjson.dumps (services.py)", "dumps"),
                      ("IncidentBuilder.add (es load)", "incidents")):
        s = med(plain, key)
        print(f"  {name:<46} {s:7.3f} s  {s / n * 1e6:8.1f} µs/alert")
    print(f"alerts + incidents sha256 {plain[0]['sha']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
