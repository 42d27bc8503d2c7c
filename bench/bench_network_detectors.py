"""Correlation throughput with the network detectors on a large synthetic flow stream.

Prints events/s of the engine (all configured detectors) and, as the anchor measured in the
same run, of the engine with only the original scan + brute-force detectors; medians of
several runs. The stream is pushed in batches of 65,536 rows, zero-copy slices of one
synthetic batch (as a Kafka consumer decodes them), so the figure is the engine's alone.
`--shares` then prints where the time of one all-detector run goes: each detector's select
and detect, alert building (evidence included) and the engine's own buffering.
Usage: python3 bench/bench_network_detectors.py [flows] [runs] [--shares]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

# Scripts in bench/ run with bench/ first on sys.path, where bench/correlation.py (the
# plain-Python twins) would shadow the correlation package: drop it, keep the repo root.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.append(os.path.dirname(_HERE))

import numpy as np  # noqa: E402

import correlation.engine as engine_module  # noqa: E402
from correlation.engine import CorrelationEngine  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.schema import FLOW, EventBatch  # noqa: E402

BASE = 1_700_000_000 * 10**9


def synthetic_flows(n: int, seed: int = 0) -> EventBatch:
    """n flows over n/20,000 s: 5,000 internal hosts to 50,000 servers, 5% failed attempts,
    a few periodic callers, ICMP echo and UDP mixed in."""
    rng = np.random.default_rng(seed)
    cols = {f.column: np.zeros(n, f.dtype) for f in FLOW.fields}
    ts = BASE + np.sort(rng.integers(0, n * 50_000, n)).astype(np.int64)  # 20k flows/s
    cols["timestamp"] = ts
    cols["end"] = ts + rng.integers(0, 5 * 10**9, n)
    src = np.zeros((n, 16), np.uint8)
    src[:, 10:12] = 0xFF
    src[:, 12] = 10
    src[:, 13:16] = rng.integers(0, 5000, n).astype(">u4").view(np.uint8).reshape(n, 4)[:, 1:]
    dst = np.zeros((n, 16), np.uint8)
    dst[:, 10:12] = 0xFF
    dst[:, 12:16] = (0xC6000000 + rng.integers(0, 50_000, n)).astype(">u4").view(
        np.uint8).reshape(n, 4)
    cols["src_ip"] = src.view(FLOW.field("src_ip").dtype).reshape(n)
    cols["dst_ip"] = dst.view(FLOW.field("dst_ip").dtype).reshape(n)
    cols["src_port"] = rng.integers(1024, 65535, n).astype(np.uint16)
    cols["dst_port"] = rng.choice(np.array([443, 80, 53, 22, 8080], np.uint16), n)
    proto = rng.choice(np.array([6, 17, 1], np.uint8), n, p=[0.8, 0.17, 0.03])
    cols["transport"] = proto
    failed = rng.random(n) < 0.05
    cols["src_tcp_flags"] = np.where(proto == 6, np.where(failed, 0x02, 0x1B), 0).astype(np.uint8)
    cols["dst_tcp_flags"] = np.where((proto == 6) & ~failed, 0x1B, 0).astype(np.uint8)
    cols["src_packets"] = rng.integers(1, 20, n).astype(np.uint64)
    cols["dst_packets"] = np.where(failed, 0, rng.integers(1, 20, n)).astype(np.uint64)
    cols["src_payload_bytes"] = np.where(failed, 0, rng.integers(0, 5000, n)).astype(np.uint64)
    cols["dst_payload_bytes"] = np.where(failed, 0, rng.integers(0, 50000, n)).astype(np.uint64)
    icmp = proto == 1  # pings go to a few monitoring targets, not sweeps
    cols["src_port"][icmp], cols["dst_port"][icmp] = 8, 0
    cols["dst_ip"][icmp] = cols["dst_ip"][np.flatnonzero(icmp)[:1]].repeat(int(icmp.sum()))
    cols["src_payload_bytes"][icmp] = 56 * cols["src_packets"][icmp]  # default ping payload
    cols["dst_payload_bytes"][icmp] = 56 * cols["dst_packets"][icmp]
    cols["src_bytes"] = cols["src_payload_bytes"] + 60 * cols["src_packets"]
    cols["dst_bytes"] = cols["dst_payload_bytes"] + 60 * cols["dst_packets"]
    for c in ("community_id", "conn_state", "end_reason"):
        cols[c] = np.full(n, "", object)
    cols["observer_name"] = np.full(n, "sensor-1", object)
    cols["ingress_zone"] = np.full(n, "dmz", object)
    return EventBatch("flow", cols)


def split(batch: EventBatch, chunk: int = 65536) -> list[EventBatch]:
    """Consecutive row slices (views, no copy)."""
    n = len(batch)
    return [EventBatch(batch.kind, {c: a[i:i + chunk] for c, a in batch.columns.items()})
            for i in range(0, n, chunk)]


def throughput(batches: list[EventBatch], config: dict,
               engine: CorrelationEngine | None = None) -> tuple[float, int]:
    engine = engine or CorrelationEngine(config)
    n = sum(len(b) for b in batches)
    start = time.perf_counter()
    alerts = 0
    for b in batches:
        alerts += len(engine.push(b))
    alerts += len(engine.flush())
    return n / (time.perf_counter() - start), alerts


def time_shares(batches: list[EventBatch]) -> None:
    """One all-detector run with timers around select, detect and alert building."""
    engine = CorrelationEngine({})
    spent: dict[str, float] = {}

    def timed(label, fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0
        return run

    for d in engine.detectors:
        d.select = timed(f"{d.name}", d.select)
        d.detect = timed(f"{d.name}", d.detect)
    build_alert = engine_module.build_alert
    engine_module.build_alert = timed("(alert building, evidence included)", build_alert)
    try:
        t0 = time.perf_counter()
        throughput(batches, {}, engine)
        total = time.perf_counter() - t0
    finally:
        engine_module.build_alert = build_alert
    spent["(engine: buffering, windows, suppression)"] = total - sum(spent.values())
    print(f"time shares of one all-detector run ({total:.2f} s):")
    for label, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {label:44s} {s:7.3f} s  {100 * s / total:5.1f} %")


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 2_000_000
    runs = int(args[1]) if len(args) > 1 else 3
    batches = split(synthetic_flows(n))
    full = load_config()["correlation"]
    anchor_names = {"port_scan_vertical", "port_scan_horizontal", "brute_force"}
    anchor = {"detectors": {k: {"enabled": k in anchor_names} for k in full["detectors"]}}
    mine = {"detectors": {k: {"enabled": k not in anchor_names} for k in full["detectors"]}}
    for label, config in (("anchor: scan + brute force only", anchor),
                          ("network detectors only", mine), ("all detectors", {})):
        rates = [throughput(batches, config) for _ in range(runs)]
        med = statistics.median(r for r, _ in rates)
        print(f"{label:34s} {med:12,.0f} events/s  (median of {runs}, {n:,} flows, "
              f"{rates[0][1]} alerts)")
    if "--shares" in sys.argv:
        time_shares(batches)


if __name__ == "__main__":
    main()
