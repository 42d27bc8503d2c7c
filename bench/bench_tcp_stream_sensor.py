"""The whole sensor: git HEAD vs HEAD + this session's reassembly files, as separate trees.

    python bench/bench_tcp_stream_sensor.py [--pcap /tmp/mix300k.pcap ...] [--runs 5]
                                            [--digest-only] [--arms head,tcp_stream,joined]

The analyzers now take StreamCollector.feed_joined (a StreamBatch), which HEAD's
tcp_stream.py does not have, so HEAD's collector cannot be patched into today's analyzers
(bench/bench_tcp_stream.py does that for the collectors alone). Instead every arm is a copy
of git HEAD (`git archive`, in /tmp) with working-tree files laid over it:
- head: git HEAD as committed;
- tcp_stream: + sensors/tcp_stream.py (the analyzers as committed: feed());
- joined: + sensors/tcp_stream.py, sensors/stream_columns.py, sensors/http.py,
  sensors/tls.py (HTTP and TLS on feed_joined and the batch's columns).
Each pass runs in a fresh subprocess that imports only its tree (numba caches per tree,
compiled by an untimed first pass); it times Sensor.process over every batch plus flush
(CPU seconds, time.process_time) after one warm-up pass, and prints a digest of every
column of every event kind. Arms are interleaved run by run; medians and the median of
per-run ratios against "head" are printed. With --digest-only: one pass per arm and
capture, digests compared only (the equivalence check on several captures).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = Path("/tmp/bench_tcp_stream_trees")
ARMS = {
    "head": [],
    "tcp_stream": ["sensors/tcp_stream.py"],
    "joined": ["sensors/tcp_stream.py", "sensors/stream_columns.py", "sensors/http.py",
               "sensors/tls.py"],
}

WORKER = r"""
import hashlib, json, sys, time
tree, path, warm = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
sys.path.insert(0, tree)
import sensors
assert sensors.__file__.startswith(tree), sensors.__file__
from pipeline.config import load_config
from sensors.pcap_reader import CaptureReader
from sensors.sensor import Sensor
config = load_config(None)["sensor"]

def one_pass():
    sensor = Sensor(config)
    out = []
    start = time.process_time()
    with CaptureReader(path, batch_packets=int(config.get("batch_packets", 65536))) as r:
        for batch in r.batches():
            out += sensor.process(batch)
    out += sensor.flush()
    return time.process_time() - start, out

if warm:
    one_pass()
cpu, batches = one_pass()
digests = {}
for batch in batches:
    count, digest = digests.get(batch.kind, (0, hashlib.sha1()))
    for name, column in batch.columns.items():
        digest.update(repr((name, column.tolist())).encode())
    digests[batch.kind] = (count + len(batch), digest)
print(json.dumps({"cpu": cpu, "events": {k: [n, d.hexdigest()] for k, (n, d) in
                                         sorted(digests.items())}}))
"""


def make_tree(arm: str) -> Path:
    """git HEAD's files (git archive: read-only on the repository) + the arm's overlay,
    extracted over the arm's previous tree if any (unchanged files keep their mtime, so
    numba's cache in the tree stays valid; an overlay file copied back from HEAD by the
    archive is laid over again below)."""
    tree = TREES / arm
    tree.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    for name in ARMS[arm]:
        shutil.copy2(ROOT / name, tree / name)
    return tree


def run_pass(tree: Path, pcap: str, warm: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, str(tree), pcap, "1" if warm else "0"],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise RuntimeError(f"{tree.name} on {pcap}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pcap", nargs="+", default=["/tmp/mix300k.pcap"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--digest-only", action="store_true")
    args = parser.parse_args()
    arms = args.arms.split(",")
    trees = {arm: make_tree(arm) for arm in arms}
    for tree in trees.values():  # compiles the tree's kernels (its own numba cache)
        run_pass(tree, args.pcap[0], warm=False)
    if args.digest_only:
        for pcap in args.pcap:
            events = {arm: run_pass(tree, pcap, warm=False)["events"]
                      for arm, tree in trees.items()}
            same = all(events[arm] == events[arms[0]] for arm in arms)
            counts = {kind: n for kind, (n, _) in events[arms[-1]].items()}
            print(f"{pcap}: every column identical across {arms}: {same} {counts}")
        return
    pcap = args.pcap[0]
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    events = {}
    for _ in range(args.runs):
        for arm, tree in trees.items():
            result = run_pass(tree, pcap, warm=True)
            times[arm].append(result["cpu"])
            events[arm] = result["events"]
    packets = None
    try:
        sys.path.insert(0, str(ROOT))
        from sensors.pcap_reader import CaptureReader
        with CaptureReader(pcap) as reader:
            packets = sum(len(batch) for batch in reader.batches())
    except Exception:  # noqa: BLE001 - the packet count is only for the pkt/s column
        pass
    same = all(events[arm] == events[arms[0]] for arm in arms)
    counts = {kind: n for kind, (n, _) in events[arms[-1]].items()}
    print(f"{pcap}: {packets} packets; events identical (every column) across arms: {same} "
          f"{counts}")
    print("| arm | CPU s (median) | speed-up vs head (medians) | median of per-run ratios "
          "| pkt/s of CPU |")
    print("|---|---:|---:|---:|---:|")
    base = times[arms[0]]
    for arm in arms:
        median = statistics.median(times[arm])
        paired = statistics.median(b / a for b, a in zip(base, times[arm], strict=True))
        rate = f"{packets / median:,.0f}" if packets else "?"
        print(f"| {arm} | {median:.3f} | {statistics.median(base) / median:.2f}x "
              f"| {paired:.2f}x | {rate} |")
    print("runs:", {arm: [round(x, 3) for x in v] for arm, v in times.items()})


if __name__ == "__main__":
    main()
