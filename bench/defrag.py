"""IP fragment reassembly benchmark: fragments/s through Sensor.process on one core.

Two generated captures (numpy, written as pcap):
- flood: N first fragments (IPv4, MF set, 1480 bytes of data, random sources and ids,
  never completed): the UDP fragment flood of a DDoS;
- dns: N/3 DNS-like UDP responses (~3.4 KB: one TXT record), each in 3 fragments in order
  (1480 + 1480 + rest), random clients and ids.

Measured in the same run, interleaved, each pinned to CPU 0, median of --runs:
- cirt-sa: a child process reads the capture (CaptureReader) and times the CPU of
  Sensor.process over its batches (after an untimed warm-up pass that loads the kernels);
  also its peak RSS. `--old DIR` adds the same for another checkout (e.g. the previous
  commit from `git archive`), imported from that directory; "off" is this checkout with
  sensor.defrag.enabled false (fragments not held: what the rest of the sensor costs);
- tshark: `tshark -r F -T fields -e ip.id` (it reassembles IPv4 by default), CPU time;
- python: a plain-Python reassembler (struct parsing of the pcap, a dict of pending
  datagrams keyed like ours, first-arrived bytes win, no bounds), CPU time.

Usage: python bench/defrag.py [--fragments 300000] [--runs 5] [--old DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FRAGMENT_DATA = 1480  # data bytes of a full fragment (a 1500-byte MTU, 20-byte header)


# --- captures --------------------------------------------------------------------------------

def _pcap(path: Path, frames: np.ndarray, lengths: np.ndarray) -> None:
    """Write frames (rows of `frames`, each `lengths[i]` bytes used) as a pcap, 1 us apart."""
    n = len(lengths)
    width = 16 + frames.shape[1]
    records = np.zeros((n, width), dtype=np.uint8)
    ts_us = np.arange(n, dtype=np.int64)
    head = np.zeros((n, 4), dtype="<u4")
    head[:, 0], head[:, 1] = 1_700_000_000 + ts_us // 1_000_000, ts_us % 1_000_000
    head[:, 2] = head[:, 3] = lengths
    records[:, :16] = head.view(np.uint8).reshape(n, 16)
    records[:, 16:] = frames
    keep = np.arange(width)[None, :] < (16 + lengths)[:, None]
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        fh.write(records[keep].tobytes())


def _ipv4(n: int, total: np.ndarray, ident: np.ndarray, flags_offset: np.ndarray,
          src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(n, 34) Ethernet + IPv4 headers (UDP), checksums computed."""
    head = np.zeros((n, 34), dtype=np.uint8)
    head[:, 0:6] = [2, 0, 0, 0, 0, 2]
    head[:, 6:12] = [2, 0, 0, 0, 0, 1]
    head[:, 12:14] = [8, 0]
    ip = head[:, 14:]
    ip[:, 0], ip[:, 8], ip[:, 9] = 0x45, 64, 17
    for at, values, size in ((2, total, 2), (4, ident, 2), (6, flags_offset, 2), (12, src, 4),
                             (16, dst, 4)):
        for k in range(size):
            ip[:, at + k] = (values >> (8 * (size - 1 - k))) & 0xFF
    words = ip.reshape(n, 10, 2).astype(np.uint32)
    total_sum = (words[:, :, 0] << 8 | words[:, :, 1]).sum(axis=1)
    total_sum = (total_sum & 0xFFFF) + (total_sum >> 16)
    total_sum = (total_sum & 0xFFFF) + (total_sum >> 16)
    checksum = ~total_sum & 0xFFFF
    ip[:, 10], ip[:, 11] = checksum >> 8, checksum & 0xFF
    return head


def flood_capture(path: Path, count: int, seed: int = 1) -> None:
    """`count` first fragments: random sources, ids and ports, 1480 bytes of data each."""
    rng = np.random.default_rng(seed)
    src = rng.integers(1, 2**32 - 1, count, dtype=np.int64)
    ident = rng.integers(0, 2**16, count, dtype=np.int64)
    dst = np.full(count, 0xC0000201, dtype=np.int64)  # 192.0.2.1
    head = _ipv4(count, np.full(count, 20 + FRAGMENT_DATA), ident, np.full(count, 0x2000),
                 src, dst)
    frames = np.zeros((count, 34 + FRAGMENT_DATA), dtype=np.uint8)
    frames[:, :34] = head
    sport = rng.integers(1024, 65536, count, dtype=np.int64)
    udp = frames[:, 34:42]
    udp[:, 0], udp[:, 1] = sport >> 8, sport & 0xFF
    udp[:, 2:4] = [0, 53]
    udp[:, 4:6] = [0x0B, 0xB8]  # claims 3000 bytes: more fragments to come
    frames[:, 42:] = rng.integers(0, 256, (1, FRAGMENT_DATA - 8), dtype=np.uint8)
    _pcap(path, frames, np.full(count, frames.shape[1]))


def dns_payload() -> bytes:
    """A DNS response of ~3.4 KB: one TXT record of 14 x 240 bytes (one answer: the DNS
    analyzer's share stays small, the figure is the reassembly's)."""
    name = b"".join(bytes([len(p)]) + p for p in (b"big", b"example", b"org")) + b"\0"
    message = struct.pack(">HHHHHH", 4242, 0x8180, 1, 1, 0, 0) + name + b"\0\x10\0\x01"
    text = b"".join(bytes([240]) + bytes([97 + k]) * 240 for k in range(14))
    return message + struct.pack(">HHHIH", 0xC00C, 16, 1, 300, len(text)) + text


def dns_capture(path: Path, datagrams: int, seed: int = 2) -> None:
    """`datagrams` DNS responses from 10.3.3.3:53 to random clients, 3 fragments each."""
    rng = np.random.default_rng(seed)
    payload = np.frombuffer(dns_payload(), dtype=np.uint8)
    data_len = 8 + len(payload)
    cuts = [0, FRAGMENT_DATA, 2 * FRAGMENT_DATA, data_len]
    client = rng.integers(0x0A000000, 0x0AFFFFFF, datagrams, dtype=np.int64)
    ident = rng.integers(0, 2**16, datagrams, dtype=np.int64)
    dport = rng.integers(1024, 65536, datagrams, dtype=np.int64)
    datagram = np.zeros((datagrams, data_len), dtype=np.uint8)
    datagram[:, 0:2] = [0, 53]
    datagram[:, 2], datagram[:, 3] = dport >> 8, dport & 0xFF
    datagram[:, 4], datagram[:, 5] = data_len >> 8, data_len & 0xFF
    datagram[:, 8:] = payload
    frames = np.zeros((datagrams, 3, 34 + FRAGMENT_DATA), dtype=np.uint8)
    lengths = np.zeros((datagrams, 3), dtype=np.int64)
    for k in range(3):
        lo, hi = cuts[k], cuts[k + 1]
        more = 0x2000 if k < 2 else 0
        frames[:, k, :34] = _ipv4(datagrams, np.full(datagrams, 20 + hi - lo), ident,
                                  np.full(datagrams, more | lo // 8),
                                  np.full(datagrams, 0x0A030303), client)
        frames[:, k, 34:34 + hi - lo] = datagram[:, lo:hi]
        lengths[:, k] = 34 + hi - lo
    _pcap(path, frames.reshape(3 * datagrams, -1), lengths.reshape(-1))


# --- measurements ----------------------------------------------------------------------------

def worker(root: str, path: str, warm: str) -> dict:
    """Child process: CPU time of Sensor.process over `path` (checkout `root`; "off:ROOT":
    with reassembly off), after an untimed pass over `warm` that loads the kernels."""
    os.sched_setaffinity(0, {0})
    enabled = not root.startswith("off:")
    sys.path.insert(0, root.removeprefix("off:"))
    from pipeline.config import load_config
    from sensors.pcap_reader import CaptureReader
    from sensors.sensor import Sensor

    config = load_config(None)["sensor"]
    config["defrag"] = {**(config.get("defrag") or {}), "enabled": enabled}

    def one_pass(capture: str) -> tuple[float, Sensor]:
        sensor = Sensor(config)
        cpu = 0.0
        with CaptureReader(capture, batch_packets=65536) as reader:
            for batch in reader.batches():
                start = time.process_time()
                sensor.process(batch)
                cpu += time.process_time() - start
        return cpu, sensor

    one_pass(warm)
    cpu, sensor = one_pass(path)
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM"))
    return {"cpu_s": cpu, "packets": int(sensor.stats["packets"]), "peak_rss_mb": peak}


def run_worker(root: Path | str, path: Path, warm: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(root), str(path), str(warm)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_cpu(cmd: list[str]) -> float:
    """CPU time (user + system) of a command pinned to CPU 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def python_reassembly(path: str) -> dict:
    """The plain-Python baseline: parse the pcap and reassemble IPv4 fragments in a dict."""
    pending: dict[tuple, list] = {}
    done = 0
    with open(path, "rb") as fh:
        raw = fh.read()
    at = 24
    while at < len(raw):
        caplen = struct.unpack_from("<I", raw, at + 8)[0]
        frame = raw[at + 16:at + 16 + caplen]
        at += 16 + caplen
        if frame[12:14] != b"\x08\x00":
            continue
        ihl = (frame[14] & 15) * 4
        flags_offset = struct.unpack_from(">H", frame, 20)[0]
        if not flags_offset & 0x3FFF:
            continue
        key = (frame[26:30], frame[30:34], frame[23], frame[18:20])
        offset = (flags_offset & 0x1FFF) * 8
        data = frame[14 + ihl:14 + struct.unpack_from(">H", frame, 16)[0]]
        entry = pending.setdefault(key, [-1, []])
        entry[1].append((offset, data))
        if not flags_offset & 0x2000:
            entry[0] = offset + len(data)
        if entry[0] >= 0:
            covered = 0
            for start, piece in sorted(entry[1]):
                if start > covered:
                    break
                covered = max(covered, start + len(piece))
            if covered >= entry[0]:
                out = bytearray(entry[0])
                for start, piece in reversed(entry[1]):
                    out[start:start + len(piece)] = piece
                done += 1
                del pending[key]
    return {"datagrams": done}


def python_cpu(path: Path) -> float:
    cmd = [sys.executable, __file__, "--python", str(path)]
    return child_cpu(cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fragments", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--old", type=Path, help="another checkout to measure alongside")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--python", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return 0
    if args.python:
        os.sched_setaffinity(0, {0})
        print(json.dumps(python_reassembly(args.python)))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="defrag-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    captures = {"flood": work / "flood.pcap", "dns": work / "dns.pcap"}
    warm = work / "warm.pcap"
    flood_capture(captures["flood"], args.fragments)
    dns_capture(captures["dns"], args.fragments // 3)
    dns_capture(warm, 300, seed=3)
    roots = {"new": str(REPO)} | ({"old": str(args.old)} if args.old else {}) \
        | {"off": f"off:{REPO}"}
    tools = [*roots, "python"] + (["tshark"] if shutil.which("tshark") else [])
    for name, path in captures.items():
        times: dict[str, list[float]] = {tool: [] for tool in tools}
        rss: dict[str, float] = {}
        fragments = 0
        for _ in range(args.runs):  # interleaved: the machine's load hits every tool alike
            for root_name, root in roots.items():
                result = run_worker(root, path, warm)
                times[root_name].append(result["cpu_s"])
                rss[root_name] = max(rss.get(root_name, 0.0), result["peak_rss_mb"])
                fragments = result["packets"]  # (every packet is a fragment)
            times["python"].append(python_cpu(path))
            if "tshark" in times:
                times["tshark"].append(child_cpu(["tshark", "-n", "-r", str(path), "-T",
                                                  "fields", "-e", "ip.id"]))
        report(name, fragments, times, rss)
    return 0


def report(name: str, fragments: int, times: dict[str, list[float]],
           rss: dict[str, float]) -> None:
    rate = {tool: fragments / statistics.median(values) for tool, values in times.items()}
    print(f"\n{name}: {fragments} fragments (median of {len(times['new'])} runs, CPU time)")
    for tool, values in times.items():
        spread = f"{min(values):.3f}-{max(values):.3f} s"
        memory = f", peak RSS {rss[tool]:.0f} MB" if tool in rss else ""
        ratio = rate["new"] / rate[tool]
        print(f"  {tool:7s} {rate[tool] / 1e6:6.3f} M fragments/s  ({spread}){memory}"
              f"  new/{tool} = {ratio:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
