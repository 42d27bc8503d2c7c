# ruff: noqa: E402
"""Fusion throughput: normalize + dedupe + enrich, one core.

1. our own sensor's flow batches (already columnar) through FusionStage with a 100k-prefix
   constituency table: events/s (target >= 1,000,000);
2. Suricata EVE JSON lines through EveAdapter + FusionStage vs a plain `json.loads` +
   per-event dict-mapping loop producing the same fields (target >= 3x).
IOC tagging is not included: pipeline/intel.py did not exist when this was written.
Prints medians of several runs.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time

# Run as `python3 bench/fusion.py`: this file's directory comes first on sys.path and its
# name would shadow the fusion package.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(
    os.path.abspath(__file__))]

import numpy as np
import orjson

from fusion.adapters import EveAdapter
from fusion.enrich import Constituency, Enricher
from fusion.stage import FusionStage
from pipeline.bus import InMemoryBus
from pipeline.schema import KINDS, EventBatch
from sensors.community_id import community_id_column
from sensors.packets import IP_DTYPE, ipv4_column

RUNS = 5


def _prefix_table(rng: random.Random, n: int = 100_000) -> Enricher:
    prefixes = [f"{rng.getrandbits(8) or 1}.{rng.getrandbits(8)}.{rng.getrandbits(8)}.0/24"
                for _ in range(n // 2)]
    prefixes += [f"2001:db8:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::/64"
                 for _ in range(n // 4)]
    prefixes += [f"{rng.getrandbits(8) or 1}.{rng.getrandbits(8)}.0.0/{rng.choice([12, 16, 20])}"
                 for _ in range(n - len(prefixes))]
    owners = [Constituency(f"c{i % 500}", f"s{i % 20}", f"o{i % 500}") for i in range(n)]
    return Enricher(prefixes, owners)


def _flow_batches(rng: np.random.Generator, rows: int, per_batch: int) -> list[EventBatch]:
    hosts = rng.integers(0x0A000000, 0x0A000000 + 50_000, size=rows).astype(np.uint32)
    remote = rng.integers(1 << 24, 0xDF000000, size=rows).astype(np.uint32)
    cols = {}
    spec = KINDS["flow"]
    for f in spec.fields:
        cols[f.column] = np.zeros(rows, dtype=f.dtype)
    cols["src_ip"] = ipv4_column(hosts)
    cols["dst_ip"] = ipv4_column(remote)
    cols["src_port"] = rng.integers(1024, 65535, rows).astype(np.uint16)
    cols["dst_port"] = rng.choice([53, 80, 443, 22], rows).astype(np.uint16)
    cols["transport"] = np.full(rows, 6, np.uint8)
    cols["timestamp"] = np.sort(rng.integers(0, 3600 * 10**9, rows)) + 1_700_000_000 * 10**9
    cols["end"] = cols["timestamp"] + 10**9
    for c in ("observer_name", "ingress_zone", "conn_state", "end_reason"):
        cols[c] = np.full(rows, "sensor-1", dtype=object)
    cols["community_id"] = community_id_column(cols["src_ip"], cols["dst_ip"],
                                                cols["transport"], cols["src_port"],
                                                cols["dst_port"])
    assert cols["src_ip"].dtype == IP_DTYPE
    return [EventBatch("flow", {k: v[i:i + per_batch] for k, v in cols.items()})
            for i in range(0, rows, per_batch)]


def bench_sensor_batches(enricher: Enricher) -> float:
    batches = _flow_batches(np.random.default_rng(1), 1_000_000, 65_536)
    rates = []
    for _ in range(RUNS):
        stage = FusionStage(InMemoryBus(), enricher=enricher)
        t = time.perf_counter()
        for b in batches:
            stage.on_batch(b)
        rates.append(1_000_000 / (time.perf_counter() - t))
    return statistics.median(rates)


def _eve_lines(n: int) -> list[bytes]:
    rng = random.Random(2)
    lines = []
    for i in range(n):
        src = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        dst = ".".join(str(rng.randrange(1, 224)) for _ in range(4))
        ts = f"2024-07-30T16:{(i // 60) % 60:02d}:{i % 60:02d}.{rng.randrange(10**6):06d}+0000"
        if i % 2:
            rec = {"timestamp": ts, "flow_id": i, "event_type": "flow", "src_ip": src,
                   "src_port": rng.randrange(1024, 65535), "dest_ip": dst, "dest_port": 443,
                   "proto": "TCP", "app_proto": "tls",
                   "flow": {"pkts_toserver": 7, "pkts_toclient": 6, "bytes_toserver": 900,
                            "bytes_toclient": 4000, "start": ts, "end": ts, "age": 0,
                            "state": "closed", "reason": "timeout", "alerted": False},
                   "tcp": {"tcp_flags": "1b", "tcp_flags_ts": "1b", "tcp_flags_tc": "1b"}}
        else:
            rec = {"timestamp": ts, "flow_id": i, "event_type": "dns", "src_ip": src,
                   "src_port": rng.randrange(1024, 65535), "dest_ip": dst, "dest_port": 53,
                   "proto": "UDP", "dns": {"type": "query", "id": i % 65536,
                                           "rrname": f"h{i}.example.com", "rrtype": "A"}}
        lines.append(orjson.dumps(rec))
    return lines


def _plain_loop(lines: list[bytes]) -> list[dict]:
    """The anchor: json.loads + one Python dict per event with the same fields."""
    from datetime import datetime

    out = []
    for line in lines:
        r = json.loads(line)
        e = {"timestamp": datetime.fromisoformat(r["timestamp"]).timestamp(),
             "src_ip": r["src_ip"], "dst_ip": r["dest_ip"], "src_port": r["src_port"],
             "dst_port": r["dest_port"], "transport": r["proto"].lower()}
        if r["event_type"] == "flow":
            f = r["flow"]
            e.update(src_packets=f["pkts_toserver"], dst_packets=f["pkts_toclient"],
                     src_bytes=f["bytes_toserver"], dst_bytes=f["bytes_toclient"],
                     end=datetime.fromisoformat(f["end"]).timestamp())
        else:
            d = r["dns"]
            e.update(qname=d["rrname"].lower(), qtype=d["rrtype"], dns_id=d["id"])
        out.append(e)
    return out


def bench_eve(enricher: Enricher) -> tuple[float, float]:
    lines = _eve_lines(200_000)
    ours, plain = [], []
    for _ in range(RUNS):
        stage = FusionStage(InMemoryBus(), enricher=enricher)
        adapter = EveAdapter()
        t = time.perf_counter()
        for i in range(0, len(lines), 8192):
            stage.on_external(adapter.convert(lines[i:i + 8192]))
        ours.append(len(lines) / (time.perf_counter() - t))
        t = time.perf_counter()
        _plain_loop(lines)
        plain.append(len(lines) / (time.perf_counter() - t))
    return statistics.median(ours), statistics.median(plain)


def main() -> None:
    enricher = _prefix_table(random.Random(0))
    sensor = bench_sensor_batches(enricher)
    print(f"sensor flow batches, normalize+dedupe+enrich (100k prefixes): {sensor:,.0f} events/s"
          f" (target 1,000,000: {sensor / 1e6:.2f}x)")
    ours, plain = bench_eve(enricher)
    print(f"EVE JSON lines, orjson + columnar adapter + fusion: {ours:,.0f} events/s")
    print(f"anchor json.loads + dict-mapping loop (no validation/dedupe/enrich): "
          f"{plain:,.0f} events/s; ratio {ours / plain:.2f}x (target 3x)")


if __name__ == "__main__":
    main()
