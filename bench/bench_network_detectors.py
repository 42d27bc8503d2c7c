"""Correlation throughput with the network detectors on a large synthetic flow stream.

Prints events/s of the engine (all configured detectors) and, as the anchor measured in the
same run, of the engine with only the original scan + brute-force detectors; medians of
several runs. Usage: python3 bench/bench_network_detectors.py [flows] [runs]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from correlation.engine import CorrelationEngine
from pipeline.config import load_config
from pipeline.schema import FLOW, EventBatch

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


def throughput(batch: EventBatch, config: dict, chunk: int = 65536) -> tuple[float, int]:
    engine = CorrelationEngine(config)
    n = len(batch)
    start = time.perf_counter()
    alerts = 0
    for i in range(0, n, chunk):
        alerts += len(engine.push(batch.take(np.arange(i, min(i + chunk, n)))))
    alerts += len(engine.flush())
    return n / (time.perf_counter() - start), alerts


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    batch = synthetic_flows(n)
    full = load_config()["correlation"]
    anchor_names = {"port_scan_vertical", "port_scan_horizontal", "brute_force"}
    anchor = {"detectors": {k: {"enabled": k in anchor_names} for k in full["detectors"]}}
    mine = {"detectors": {k: {"enabled": k not in anchor_names} for k in full["detectors"]}}
    for label, config in (("anchor: scan + brute force only", anchor),
                          ("network detectors only", mine), ("all detectors", {})):
        rates = [throughput(batch, config) for _ in range(runs)]
        med = statistics.median(r for r, _ in rates)
        print(f"{label:34s} {med:12,.0f} events/s  (median of {runs}, {n:,} flows, "
              f"{rates[0][1]} alerts)")


if __name__ == "__main__":
    main()
