"""TCP reassembly (sensors/tcp_stream.py) alone and inside the whole sensor, against git HEAD.

    python bench/bench_tcp_stream.py [--pcap /tmp/mix300k.pcap] [--runs 5] [--before FILE]
                                     [--copies N --skip-sensor]

- "streams": the HTTP and the TLS analyzers' StreamCollector settings fed every decoded
  batch of the capture, then flushed (decode done once, outside the timing); the chunks
  of the working tree and of HEAD are compared field by field (they must be equal).
- "sensor": the whole Sensor (default config) over the capture, with HEAD's StreamCollector
  patched into the stream analyzers ("before") and the working tree's ("after").
Before and after are interleaved in one process; figures are CPU seconds
(time.process_time), medians of --runs runs, after one warm-up pass of each (numba loads
or compiles its kernels then: reported apart).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sensors.tcp_stream as now_streams  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from sensors.decode import decode  # noqa: E402
from sensors.pcap_reader import CaptureReader  # noqa: E402

STREAM_MODULES = ("sensors.http", "sensors.tls", "sensors.ssh", "sensors.logins")


def load_before(path: str | None):
    """HEAD's tcp_stream.py (or the file `path`) as a module of its own."""
    if path is None:
        source = subprocess.run(["git", "-C", str(ROOT), "show", "HEAD:sensors/tcp_stream.py"],
                                capture_output=True, text=True, check=True).stdout
        path = "/tmp/bench_tcp_stream_head.py"
        Path(path).write_text(source)
    spec = importlib.util.spec_from_file_location("before_tcp_stream", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["before_tcp_stream"] = module
    spec.loader.exec_module(module)
    return module


def collectors(module) -> list:
    """The HTTP and TLS analyzers' collectors (their default settings)."""
    from sensors.http import DEFAULT_PORTS, METHODS
    from sensors.tls import tls_client_predicate
    return [
        module.StreamCollector(set(DEFAULT_PORTS), 16384, 20000, 300,
                               client_predicate=module.prefix_predicate(m + b" " for m in METHODS),
                               max_bytes_total=128 << 20, max_packets_meta=256),
        module.StreamCollector(set(), 16384, 20000, 300,
                               client_predicate=tls_client_predicate,
                               max_bytes_total=128 << 20, max_packets_meta=0),
    ]


def feed_all(module, decoded, keep: bool = False) -> list:
    """Every batch to each collector in turn (as the sensor hands a batch to its analyzers),
    then flush; with `keep`, every chunk (as dicts) and the stats of each collector."""
    streams = collectors(module)
    chunks: list[list] = [[] for _ in streams]  # kept only to compare
    for batch in decoded:
        for collector, got in zip(streams, chunks, strict=True):
            out = collector.feed(batch)
            if keep:
                got += out
    result = []
    for collector, got in zip(streams, chunks, strict=True):
        got += collector.flush()
        if keep:
            result.append(([asdict(c) for c in got], dict(collector.stats)))
    return result


def sensor_pass(path: str, module, full: bool = False) -> dict:
    """The whole sensor with `module`'s StreamCollector in every stream analyzer: events
    per kind (count, and with `full` a digest of every column)."""
    saved = {}
    for name in STREAM_MODULES:
        mod = importlib.import_module(name)
        saved[name] = mod.StreamCollector
        mod.StreamCollector = module.StreamCollector
    try:
        from sensors.sensor import Sensor
        config = load_config(None)["sensor"]
        sensor = Sensor(config)
        events: dict[str, list] = {}
        batches = []
        with CaptureReader(path, batch_packets=int(config.get("batch_packets", 65536))) as r:
            for batch in r.batches():
                batches += sensor.process(batch)
        batches += sensor.flush()
        for out in batches:
            count, digest = events.get(out.kind, (0, hashlib.sha1()))
            if full:  # every value of every column, in order
                for name, column in out.columns.items():
                    digest.update(repr((name, column.tolist())).encode())
            events[out.kind] = (count + len(out), digest)
        return {kind: (count, digest.hexdigest() if full else "")
                for kind, (count, digest) in events.items()}
    finally:
        for name, cls in saved.items():
            importlib.import_module(name).StreamCollector = cls


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pcap", default="/tmp/mix300k.pcap")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", default=None, help="old tcp_stream.py (default: git HEAD)")
    parser.add_argument("--skip-sensor", action="store_true")
    parser.add_argument("--copies", type=int, default=1,
                        help="streams part: the capture's batches this many times, each copy "
                             "shifted in time past the last (small captures)")
    args = parser.parse_args()
    args.skip_sensor |= args.copies > 1  # the sensor reads the file itself: one copy only
    before = load_before(args.before)
    with CaptureReader(args.pcap) as reader:
        decoded = [decode(b) for b in reader.batches()]
    span = int(decoded[-1].ts_ns.max() - decoded[0].ts_ns.min()) + 3_600 * 10**9
    decoded = [replace(d, ts_ns=d.ts_ns + k * span) for k in range(args.copies) for d in decoded]
    packets = sum(len(d) for d in decoded)
    warm = {"before": cpu(lambda: feed_all(before, decoded[:1])),
            "after": cpu(lambda: feed_all(now_streams, decoded[:1]))}
    same = feed_all(before, decoded, keep=True) == feed_all(now_streams, decoded, keep=True)
    print(f"{args.pcap} x{args.copies}: {packets:,} packets in {len(decoded)} batches; "
          f"warm-up (kernel load/compile) before {warm['before']:.2f} s, "
          f"after {warm['after']:.2f} s CPU")
    print(f"HTTP+TLS collectors: chunks and stats identical to before: {same}")
    times: dict[str, list[float]] = {"streams before": [], "streams after": [],
                                     "sensor before": [], "sensor after": []}
    events = {}
    if not args.skip_sensor:
        for label, module in (("before", before), ("after", now_streams)):
            events[label] = sensor_pass(args.pcap, module, full=True)  # warm-up, compared
    for _ in range(args.runs):
        times["streams before"].append(cpu(lambda: feed_all(before, decoded)))
        times["streams after"].append(cpu(lambda: feed_all(now_streams, decoded)))
        if not args.skip_sensor:
            times["sensor before"].append(cpu(lambda: sensor_pass(args.pcap, before)))
            times["sensor after"].append(cpu(lambda: sensor_pass(args.pcap, now_streams)))
    if events:
        counts = {kind: count for kind, (count, _) in events["after"].items()}
        print(f"sensor events identical (every column): {events['before'] == events['after']}"
              f" {counts}")
    print("| part | before s | after s | speed-up (medians) | median of per-run ratios "
          "| before pkt/s of CPU | after pkt/s of CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for part in ("streams", "sensor"):
        b, a = times[f"{part} before"], times[f"{part} after"]
        if not a:
            continue
        mb, ma = statistics.median(b), statistics.median(a)
        paired = statistics.median(x / y for x, y in zip(b, a, strict=True))  # same load
        print(f"| {part} | {mb:.3f} | {ma:.3f} | {mb / ma:.2f}x | {paired:.2f}x "
              f"| {packets / mb:,.0f} | {packets / ma:,.0f} |")
    print("runs:", {k: [round(x, 3) for x in v] for k, v in times.items()})


if __name__ == "__main__":
    main()
