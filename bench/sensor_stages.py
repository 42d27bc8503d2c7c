"""Where the sensor's time goes: CPU time of each stage over a capture, one core.

    python bench/sensor_stages.py CAPTURE [--runs 5] [--root DIR] [--per-run]

Stages, timed one by one inside one Sensor pass as `Sensor.process` runs them: `read` (the
capture walk, which also decodes the common case), `decode` (the rest of the decode),
each protocol analyzer, `flow_table`, and `flush` at the end. Before the timed passes, one
pass over a 20k-packet generated capture in batches of 97 loads (or compiles) every
kernel. Prints the median of each stage over --runs passes and the total's packets/s.

For A/B comparisons of two trees (`--root` of each, e.g. a `git worktree`), alternate runs
of both and compare medians: a 2-core shared machine moves single figures by several %.
bench/sensor.py gives the end-to-end figures and the anchors (argus, tshark, dpkt).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stage_times(path: str, config: dict) -> tuple[int, dict[str, float]]:
    """(packets, {stage: CPU seconds}) of one fresh Sensor's pass over `path`."""
    from sensors.decode import decode
    from sensors.pcap_reader import CaptureReader
    from sensors.sensor import Sensor

    sensor = Sensor(config)
    times: dict[str, float] = {}

    def timed(stage: str, call, *args):
        start = time.process_time()
        result = call(*args)
        times[stage] = times.get(stage, 0.0) + time.process_time() - start
        return result

    with CaptureReader(path, batch_packets=int(config.get("batch_packets", 65536))) as reader:
        batches = reader.batches()
        while (batch := timed("read", next, batches, None)) is not None:
            packets = timed("decode", decode, batch)
            for analyzer in sensor.analyzers:
                timed(type(analyzer).__name__, analyzer.process, packets)
            timed("flow_table", sensor.flow_table.update, packets)
        count = reader.packets
    timed("flush", lambda: [None for _ in sensor.flush_chunks()])
    return count, times


def warm_capture() -> str:
    """A small generated mix (every protocol of the bench mix), made once, where
    bench/sensor.py keeps its own."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gen_capture

    path = (Path(tempfile.gettempdir()) / "cirtsa-bench"
            / f"warm-v{gen_capture.MIX_VERSION}-20000.pcap")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        gen_capture.write_mixed(path, 20_000)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("capture")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--root", default=str(REPO), help="the tree whose sensor is timed")
    parser.add_argument("--per-run", action="store_true", help="print every run's stages")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.root))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})  # one core, as bench/sensor.py
    from pipeline.config import load_config

    config = dict(load_config(None)["sensor"])
    warm = warm_capture()
    stage_times(warm, {**config, "batch_packets": 97})  # every kernel loaded
    runs = [stage_times(args.capture, config) for _ in range(args.runs)]
    if args.per_run:
        for _, times in runs:
            print({stage: round(seconds * 1000, 1) for stage, seconds in times.items()})
    packets = runs[0][0]
    for stage in runs[0][1]:
        median = statistics.median(times[stage] for _, times in runs)
        print(f"{stage:24s} {median * 1000:9.1f} ms")
    total = statistics.median(sum(times.values()) for _, times in runs)
    print(f"{'TOTAL':24s} {total * 1000:9.1f} ms  {packets / total:,.0f} pkt/s  "
          f"({packets:,} packets, median of {args.runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
