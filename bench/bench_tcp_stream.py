"""TCP reassembly (sensors/tcp_stream.py) alone, against git HEAD's tcp_stream.py.

    python bench/bench_tcp_stream.py [--pcap /tmp/mix300k.pcap] [--runs 5] [--before FILE]
                                     [--copies N]

The HTTP and the TLS analyzers' StreamCollector settings (TLS with its `trim`) fed every
decoded batch of the capture, then flushed (decode done once, outside the timing):
- "before": HEAD's collector, feed()/flush(), plus the join the analyzers made of the
  chunks' bytes (one buffer + lengths for their kernels);
- "feed": the working tree's feed()/flush() plus the same join (SSH, logins, tests);
- "joined": the working tree's feed_joined()/flush_joined(): the StreamBatch the HTTP and
  TLS analyzers now read (bytes already in one buffer, no chunk objects).
The chunks of feed are compared field by field with HEAD's, and feed_joined's StreamBatch
row by row with them. Figures are CPU seconds (time.process_time), medians of --runs
runs, arms interleaved, after one warm-up pass of each (numba loads or compiles its kernels
then: reported apart). The whole sensor: bench/bench_tcp_stream_sensor.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sensors.tcp_stream as now_streams  # noqa: E402
from sensors.decode import decode  # noqa: E402
from sensors.pcap_reader import CaptureReader  # noqa: E402


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
    from sensors.tls import needed_lengths, tls_client_predicate
    return [
        module.StreamCollector(set(DEFAULT_PORTS), 16384, 20000, 300,
                               client_predicate=module.prefix_predicate(m + b" " for m in METHODS),
                               max_bytes_total=128 << 20, max_packets_meta=256),
        module.StreamCollector(set(), 16384, 20000, 300,
                               client_predicate=tls_client_predicate,
                               max_bytes_total=128 << 20, max_packets_meta=0,
                               trim=needed_lengths),
    ]


def _joined(chunks: list) -> tuple:
    """What HTTP and TLS did with a chunk list before feed_joined: every direction's bytes
    joined into one buffer, with their lengths."""
    parts = [part for chunk in chunks for part in chunk.data]
    lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    return np.frombuffer(b"".join(parts), dtype=np.uint8), lengths


def feed_all(module, decoded, keep: bool = False, joined: bool = False) -> list:
    """Every batch to each collector in turn (as the sensor hands a batch to its analyzers),
    then flush; with `keep`, per collector: what each call returned (chunks as dicts, or the
    StreamBatches) and the stats."""
    streams = collectors(module)
    got: list[list] = [[] for _ in streams]  # kept only to compare
    for batch in decoded:
        for collector, kept in zip(streams, got, strict=True):
            out = collector.feed_joined(batch) if joined else collector.feed(batch)
            if not joined:
                _joined(out)
            if keep:
                kept.append(out if joined else [asdict(c) for c in out])
    result = []
    for collector, kept in zip(streams, got, strict=True):
        out = collector.flush_joined() if joined else collector.flush()
        if not joined:
            _joined(out)
        if keep:
            kept.append(out if joined else [asdict(c) for c in out])
            result.append((kept, dict(collector.stats)))
    return result


def same_batches(batches: list, chunk_lists: list) -> bool:
    """Each StreamBatch equals its chunk list (as dicts) row by row: columns, bytes, keys."""
    for batch, chunks in zip(batches, chunk_lists, strict=True):
        if len(batch) != len(chunks):
            return False
        for i, chunk in enumerate(chunks):
            lo, size = batch.start[i].tolist(), batch.length[i].tolist()
            rows = slice(int(batch.packet_start[i]), int(batch.packet_stop[i]))
            row = {"key": batch.keys[i], "client_by": now_streams.CLIENT_BY[batch.client_by[i]],
                   "data": tuple(batch.buf[lo[d] : lo[d] + size[d]].tobytes() for d in (0, 1)),
                   "packets": list(zip(batch.packet_ts[rows].tolist(),
                                       batch.packet_dir[rows].tolist(),
                                       batch.packet_len[rows].tolist(), strict=True)),
                   "reason": batch.reason[i]}
            for name in ("client_ip", "server_ip"):
                row[name] = getattr(batch, name)[i].tobytes()
            for name in ("client_port", "server_port", "vlan", "start_ts", "last_ts", "final"):
                row[name] = getattr(batch, name)[i].item()
            for name in ("first_ts", "ended", "capped", "gap"):
                row[name] = tuple(getattr(batch, name)[i].tolist())
            if any(row[name] != chunk[name] for name in row):
                return False
    return True


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pcap", default="/tmp/mix300k.pcap")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", default=None, help="old tcp_stream.py (default: git HEAD)")
    parser.add_argument("--copies", type=int, default=1,
                        help="the capture's batches this many times, each copy shifted in "
                             "time past the last (small captures)")
    args = parser.parse_args()
    before = load_before(args.before)
    with CaptureReader(args.pcap) as reader:
        decoded = [decode(b) for b in reader.batches()]
    span = int(decoded[-1].ts_ns.max() - decoded[0].ts_ns.min()) + 3_600 * 10**9
    decoded = [replace(d, ts_ns=d.ts_ns + k * span) for k in range(args.copies) for d in decoded]
    packets = sum(len(d) for d in decoded)
    arms = {"before": (before, False), "feed": (now_streams, False),
            "joined": (now_streams, True)}
    warm = {name: cpu(lambda m=module, j=joined: feed_all(m, decoded[:1], joined=j))
            for name, (module, joined) in arms.items()}
    old = feed_all(before, decoded, keep=True)
    new = feed_all(now_streams, decoded, keep=True)
    batches = feed_all(now_streams, decoded, keep=True, joined=True)
    same_joined = all(same_batches(j[0], n[0]) and j[1] == n[1]
                      for j, n in zip(batches, new, strict=True))
    print(f"{args.pcap} x{args.copies}: {packets:,} packets in {len(decoded)} batches; "
          "warm-up (kernel load/compile) CPU s: "
          + ", ".join(f"{k} {v:.2f}" for k, v in warm.items()))
    print(f"HTTP+TLS collectors: feed's chunks and stats identical to HEAD's: {old == new}; "
          f"feed_joined's batches identical to feed's chunks: {same_joined}")
    del old, new, batches  # not timed with them alive: the collector would walk them
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.runs):
        for name, (module, joined) in arms.items():
            times[name].append(cpu(lambda m=module, j=joined: feed_all(m, decoded, joined=j)))
    print("| HTTP + TLS collectors | CPU s (median) | speed-up vs before (medians) "
          "| median of per-run ratios | pkt/s of CPU |")
    print("|---|---:|---:|---:|---:|")
    base = times["before"]
    for name, values in times.items():
        median = statistics.median(values)
        paired = statistics.median(b / a for b, a in zip(base, values, strict=True))
        print(f"| {name} | {median:.3f} | {statistics.median(base) / median:.2f}x "
              f"| {paired:.2f}x | {packets / median:,.0f} |")
    print("runs:", {k: [round(x, 3) for x in v] for k, v in times.items()})


if __name__ == "__main__":
    main()
