"""CPU time of the TLS analyzer (numba kernels) against the pure-Python parser it replaced
and a dpkt TLS parse loop, all in the same run, on the generated mix and a real capture.

    python bench/bench_tls.py [--repeat 5] [--mixed 300000] [--copies 20] [--no-compile-cost]
                              [--sensor]

Figures are CPU seconds (time.process_time), medians of `repeat` runs, the variants
interleaved within each run so that load from other processes hits them alike:

- analyzer new / old: TlsAnalyzer / tests/tls_reference.ReferenceTlsAnalyzer `process` +
  `flush` over pre-decoded batches: TCP reassembly (sensors/tcp_stream.py, shared by both)
  plus the TLS part.
- TLS part new / old: the TLS part alone, replayed on the chunks reassembly gave (recorded
  once; flows are not released during the replay): parse both directions, decide, build
  the event columns (incl. JA3/JA4/JA3S, endpoint columns and community ID).
- dpkt: on the same chunks, dpkt.ssl.tls_multi_factory on both directions + TLSHandshake of
  the first handshake record of each + the SNI (no JA3/JA4 hashing, no event building; a
  floor for "parse with a Python library"). Hellos dpkt cannot read are skipped.

With --sensor, the whole sensor (sensors.sensor.Sensor on the default config: read, decode,
flow table, every analyzer) on the mix file, with the new and with the old TLS analyzer.

The real capture (c2_beaconing/slips__test-cc-capture-1.pcap, 299 TLS flows) is replayed
`copies` times, time-shifted so flows do not merge. The numba warm-up (compile in an empty
cache, and load from the __pycache__ cache) is measured in fresh processes and reported
apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import dpkt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import gen_capture  # noqa: E402
import tls_reference  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from sensors.decode import decode  # noqa: E402
from sensors.pcap_reader import CaptureReader  # noqa: E402
from sensors.sensor import Sensor  # noqa: E402
from sensors.tls import TlsAnalyzer  # noqa: E402

REAL = HERE.parents[1] / "shared" / "pcaps" / "c2_beaconing" / "slips__test-cc-capture-1.pcap"


def decoded_batches(path: Path, copies: int = 1) -> list:
    with CaptureReader(path) as reader:
        decoded = [decode(b) for b in reader.batches()]
    if copies == 1:
        return decoded
    span = int(decoded[-1].ts_ns.max() - decoded[0].ts_ns.min()) + 3_600_000_000_000
    return [replace(d, ts_ns=d.ts_ns + k * span) for k in range(copies) for d in decoded]


def run_analyzer(cls, decoded) -> tuple[float, int]:
    analyzer = cls({}, "bench", "z")
    start = time.process_time()
    events = sum(len(b.columns["timestamp"]) for d in decoded for b in analyzer.process(d))
    events += sum(len(b.columns["timestamp"]) for b in analyzer.flush())
    return time.process_time() - start, events


def recorded_chunks(decoded) -> list:
    """The StreamBatches reassembly hands the analyzer, per call (feed_joined per batch, then
    flush_joined); their chunk objects are built here, before any timing (the old analyzer
    and dpkt read them)."""
    analyzer = TlsAnalyzer({}, "bench", "z")
    calls: list = []
    for method in ("feed_joined", "flush_joined"):
        inner = getattr(analyzer.streams, method)

        def record(*args, inner=inner):
            chunks = inner(*args)
            calls.append(chunks)
            return chunks

        setattr(analyzer.streams, method, record)
    for d in decoded:
        analyzer.process(d)
    analyzer.flush()
    for batch in calls:
        batch.chunks  # noqa: B018 - built once, outside the timed replays
    return calls


class _NoStreams:
    """Stands in for the collector during a replay: releases are not needed."""

    stats: dict = {}

    def release(self, key) -> None:
        pass


def replay(cls, calls: list) -> float:
    analyzer = cls({}, "bench", "z")
    analyzer.streams = _NoStreams()
    start = time.process_time()
    for batch in calls:
        analyzer._events(batch)
    return time.process_time() - start


def dpkt_loop(calls: list) -> float:
    start = time.process_time()
    for batch in calls:
        for chunk in batch.chunks:
            for data in chunk.data:
                try:
                    records, _ = dpkt.ssl.tls_multi_factory(data)
                    for record in records:
                        if record.type == 22:
                            hs = dpkt.ssl.TLSHandshake(record.data)
                            if hs.type == 1:
                                _sni(hs.data)
                            break
                except (dpkt.dpkt.Error, dpkt.ssl.SSL3Exception, ValueError, struct.error,
                        IndexError, KeyError):
                    pass
    return time.process_time() - start


def _sni(hello) -> str:
    for ext_type, body in getattr(hello, "extensions", []):
        if ext_type == 0 and len(body) > 5:
            return body[5 : 5 + int.from_bytes(body[3:5], "big")].decode("ascii", "replace")
    return ""


WARMUP = """
import time, numpy as np
t = time.process_time()
from sensors.tls import parse_flows
parse_flows([b"\\x16\\x03\\x01\\x00\\x05\\x01\\x00\\x00\\x01\\x00"], [b""])
print(time.process_time() - t)
"""


def warmup_cost() -> tuple[float, float]:
    """(CPU s to compile the kernels into an empty cache, CPU s to load them from it)."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out = [float(subprocess.run([sys.executable, "-c", WARMUP], env=env, check=True,
                                    capture_output=True, text=True).stdout)
               for _ in range(2)]
    return out[0], out[1]


def bench(label: str, decoded, repeat: int) -> None:
    packets = sum(len(d) for d in decoded)
    run_analyzer(TlsAnalyzer, decoded)  # warm-up: kernels loaded, caches filled once
    calls = recorded_chunks(decoded)
    chunks = sum(len(c) for c in calls)  # flows handed to the analyzer
    times: dict[str, list[float]] = {k: [] for k in ("new", "old", "tls_new", "tls_old", "dpkt")}
    events = 0
    for _ in range(repeat):
        t, events = run_analyzer(TlsAnalyzer, decoded)
        times["new"].append(t)
        times["old"].append(run_analyzer(tls_reference.ReferenceTlsAnalyzer, decoded)[0])
        times["tls_new"].append(replay(TlsAnalyzer, calls))
        times["tls_old"].append(replay(tls_reference.ReferenceTlsAnalyzer, calls))
        times["dpkt"].append(dpkt_loop(calls))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n## {label}: {packets:,} packets, {events:,} tls events, {chunks:,} chunks parsed")
    print(f"{'variant':34} {'CPU s':>8} {'pkt/s':>12} {'us/event':>9} {'vs old':>7}")
    rows = [("analyzer, new (kernels)", "new", "old"),
            ("analyzer, old (pure Python)", "old", "old"),
            ("TLS part, new (kernels)", "tls_new", "tls_old"),
            ("TLS part, old (pure Python)", "tls_old", "tls_old"),
            ("dpkt parse loop (same chunks)", "dpkt", "tls_old")]
    for name, key, base in rows:
        print(f"{name:34} {med[key]:8.3f} {packets / med[key]:12,.0f} "
              f"{1e6 * med[key] / max(events, 1):9.2f} {med[base] / med[key]:6.1f}x")
    print(f"TLS part new vs dpkt loop: {med['dpkt'] / med['tls_new']:.1f}x less CPU; "
          f"reassembly (analyzer new - TLS part new): {med['new'] - med['tls_new']:.3f} s")


def sensor_cpu(path: Path, old_tls: bool) -> float:
    """CPU s of the whole sensor (Sensor on the default config, as capture_events) on
    `path`, with the new TLS analyzer or the old one put in its place."""
    config = load_config(None)["sensor"]
    sensor = Sensor(config)
    if old_tls:
        at = next(i for i, a in enumerate(sensor.analyzers) if isinstance(a, TlsAnalyzer))
        sensor.analyzers[at] = tls_reference.ReferenceTlsAnalyzer(
            config["analyzers"]["tls"], sensor.observer_name, sensor.ingress_zone)
    start = time.process_time()
    with CaptureReader(path, batch_packets=int(config.get("batch_packets", 65536))) as reader:
        for batch in reader.batches():
            sensor.process(batch)
    sensor.flush()
    return time.process_time() - start


def bench_sensor(path: Path, packets: int, repeat: int) -> None:
    sensor_cpu(path, False)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeat):
        for old_tls in times:
            times[old_tls].append(sensor_cpu(path, old_tls))
    t_new, t_old = (statistics.median(times[k]) for k in (False, True))
    print("\n## whole sensor (Sensor, default config: read + decode + flows + analyzers), mix")
    print(f"TLS analyzer new: {t_new:.3f} s CPU, {packets / t_new:,.0f} pkt/s; "
          f"old: {t_old:.3f} s CPU, {packets / t_old:,.0f} pkt/s; ratio {t_old / t_new:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mixed", type=int, default=300_000, help="packets (0: skip)")
    parser.add_argument("--copies", type=int, default=20, help="replays of the real capture")
    parser.add_argument("--no-compile-cost", action="store_true")
    parser.add_argument("--sensor", action="store_true",
                        help="also the whole sensor on the mix, new vs old TLS analyzer")
    args = parser.parse_args()
    if not args.no_compile_cost:
        compile_s, load_s = warmup_cost()
        print(f"numba warm-up (fresh process): compile {compile_s:.1f} s CPU into an empty "
              f"cache; {load_s:.2f} s CPU to import + load from the cache")
    if args.mixed:
        with tempfile.TemporaryDirectory() as work:
            path = Path(work) / "mixed.pcap"
            gen_capture.write_mixed(path, args.mixed)
            decoded = decoded_batches(path)
            bench(f"generated mix (bench/gen_capture.py, {args.mixed:,} packets)", decoded,
                  args.repeat)
            if args.sensor:
                bench_sensor(path, sum(len(d) for d in decoded), args.repeat)
    if REAL.is_file():
        bench(f"{REAL.parent.name}/{REAL.name} x{args.copies}",
              decoded_batches(REAL, args.copies), args.repeat)


if __name__ == "__main__":
    main()
