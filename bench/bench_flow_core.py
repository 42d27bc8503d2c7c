"""Sensor core path: read + decode + flow table (no protocol analyzers), speed and memory.

speed: a generated mixed capture (bench/gen_capture.py) through CaptureReader -> decode ->
       FlowTable, in a child process pinned to CPU 0; per-stage CPU seconds (process time:
       the machine is shared, wall time swings with other load); median of --runs.
       Anchor measured in the same run: the classic dpkt flow-dict loop (bench/sensor.py's)
       on the same file; the ratio is anchor time / our time. Each child first runs the path
       once over a small capture (warm-up: loads or compiles the numba kernels, reported
       apart as "warm-up"), then times the big one. --before DIR also times the same path
       imported from another tree (e.g. `git archive HEAD | tar -x -C DIR`) in the same run.
flood: a generated spoofed-source SYN flood through the same path with the flow table bound
       at each --max-flows value, one child process each; peak RSS (ru_maxrss) and flows
       evicted. Anchor: the peak RSS of a child that only imports the modules and reads +
       decodes the same file (what the flow table adds is the difference). Peak RSS is the
       child's VmHWM: ru_maxrss would include the parent's (it survives fork+exec).

Usage: python bench/bench_flow_core.py [--runs 3] [--packets 2000000] [--before DIR]
          [--flood 10000000] [--max-flows 100000,1000000] [--work DIR] [--skip-speed]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rss import peak_rss_mb  # bench/rss.py (this script's directory is on sys.path)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def pin() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})


def worker(path: str, max_flows: int, stage: str, repo: str = "", warm: str = "") -> dict:
    """Child: one timed pass. stage "flow" = read+decode+flow table, "decode" = read+decode.
    `warm`: a small capture run through the same path first, timed apart (kernel loading)."""
    pin()
    sys.path.insert(0, repo or str(REPO))
    clock = time.process_time  # CPU seconds of this process: robust to a loaded machine
    warmup_s = 0.0
    if warm:
        start = clock()
        _pass(warm, max_flows, stage)
        warmup_s = clock() - start
    result = _pass(path, max_flows, stage)
    result["warmup_s"] = warmup_s
    result["maxrss_mb"] = peak_rss_mb()
    return result


def _pass(path: str, max_flows: int, stage: str) -> dict:
    from pipeline.config import load_config
    from sensors.decode import decode
    from sensors.flow_table import FlowTable
    from sensors.pcap_reader import CaptureReader

    config = load_config()["sensor"]
    if max_flows:
        config["flow"]["max_flows"] = max_flows
    table = FlowTable(config["flow"], "bench", "lan")
    clock = time.process_time
    t_read = t_decode = t_flow = 0.0
    flows = 0
    start = clock()
    with CaptureReader(path, batch_packets=int(config.get("batch_packets", 65536))) as reader:
        batches = reader.batches()
        while True:
            t0 = clock()
            batch = next(batches, None)
            t1 = clock()
            t_read += t1 - t0
            if batch is None:
                break
            decoded = decode(batch)
            t2 = clock()
            t_decode += t2 - t1
            if stage == "flow":
                out = table.update(decoded)
                flows += len(out) if out is not None else 0
                t_flow += clock() - t2
        packets = reader.packets
    if stage == "flow":
        t0 = clock()
        for out in table.flush_chunks():  # as the sensor hands them on
            flows += len(out)
        t_flow += clock() - t0
    seconds = clock() - start
    return {"packets": packets, "seconds": seconds, "read_s": t_read, "decode_s": t_decode,
            "flow_s": t_flow, "flows": flows,
            "flows_evicted": int(table.stats["flows_evicted"])}


def run_worker(path: Path, max_flows: int = 0, stage: str = "flow", repo: str = "",
               warm: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(path), "--worker-max-flows",
           str(max_flows), "--worker-stage", stage, "--worker-repo", repo,
           "--worker-warm", str(warm or "")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def dpkt_seconds(path: Path) -> float:
    sys.path.insert(0, str(HERE))
    from sensor import dpkt_seconds as loop

    start = time.process_time()  # CPU seconds, like the workers
    loop(path)
    return time.process_time() - start


def _report(label: str, runs: list[dict], packets: int, dpkt_s: float) -> dict:
    med = {k: statistics.median(r[k] for r in runs)
           for k in ("seconds", "read_s", "decode_s", "flow_s", "warmup_s")}
    print(f"  {label:<17}: {packets / med['seconds']:,.0f} pkt/s "
          f"({med['seconds']:.2f} s: read {med['read_s']:.2f}, decode "
          f"{med['decode_s']:.2f}, flow {med['flow_s']:.2f}; warm-up {med['warmup_s']:.2f} s "
          f"apart); dpkt ratio {dpkt_s / med['seconds']:.1f}x")
    return med


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-max-flows", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker-stage", default="flow", help=argparse.SUPPRESS)
    parser.add_argument("--worker-repo", default="", help=argparse.SUPPRESS)
    parser.add_argument("--worker-warm", default="", help=argparse.SUPPRESS)
    parser.add_argument("--before", default="",
                        help="also time the path imported from this tree (the old code)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--packets", type=int, default=2_000_000)
    parser.add_argument("--flood", type=int, default=10_000_000, help="0: skip the flood")
    parser.add_argument("--max-flows", default="100000,1000000")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "cirtsa-core"))
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.worker_max_flows, args.worker_stage,
                                args.worker_repo, args.worker_warm)))
        return 0
    pin()
    sys.path.insert(0, str(HERE))
    import gen_capture

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.skip_speed:
        mixed = work / f"mixed-{args.packets}.pcap"
        if not mixed.exists():
            gen_capture.write_mixed(mixed, args.packets)
        warm = work / "warm-20000.pcap"
        if not warm.exists():
            gen_capture.write_mixed(warm, 20000)
        runs, befores, anchors = [], [], []
        for _ in range(args.runs):  # interleaved, so load changes hit all three alike
            runs.append(run_worker(mixed, warm=warm))
            if args.before:
                befores.append(run_worker(mixed, repo=args.before, warm=warm))
            anchors.append(dpkt_seconds(mixed))
        packets = runs[0]["packets"]
        dpkt_s = statistics.median(anchors)
        print(f"{mixed.name}: {packets:,} packets, {runs[0]['flows']:,} flow records, "
              f"median of {args.runs} runs, CPU seconds, CPU 0")
        med = _report("read+decode+flow", runs, packets, dpkt_s)
        if befores:
            old = _report("before (--before)", befores, packets, dpkt_s)
            print(f"  speed-up vs before: {old['seconds'] / med['seconds']:.1f}x "
                  f"(read {old['read_s'] / med['read_s']:.1f}x, decode "
                  f"{old['decode_s'] / med['decode_s']:.1f}x, flow "
                  f"{old['flow_s'] / med['flow_s']:.1f}x)")
        print(f"  dpkt loop anchor : {packets / dpkt_s:,.0f} pkt/s")
    if args.flood:
        flood = work / f"flood-{args.flood}.pcap"
        if not flood.exists():
            gen_capture.write_flood(flood, args.flood, dport=443)
        base = run_worker(flood, 0, "decode")  # no warm-up: its RSS is part of the anchor
        print(f"{flood.name}: read+decode only (anchor): peak RSS {base['maxrss_mb']:.0f} MB")
        for max_flows in [int(v) for v in args.max_flows.split(",")]:
            r = run_worker(flood, max_flows)
            print(f"  max_flows {max_flows:>9,}: peak RSS {r['maxrss_mb']:.0f} MB "
                  f"(+{r['maxrss_mb'] - base['maxrss_mb']:.0f} MB over anchor), "
                  f"{r['packets'] / r['seconds']:,.0f} pkt/s, "
                  f"{r['flows_evicted']:,} evicted, {r['flows']:,} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
