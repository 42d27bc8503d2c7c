"""CPU time of the HTTP analyzer (TCP reassembly + HTTP parsing) against anchors measured in
the same run: the committed (git HEAD) tcp_stream + http, and a dpkt HTTP parse loop.

    python bench/bench_http.py [--repeat 5] [--mixed 300000] [--copies 20] [--no-before]

Per input, CPU seconds (time.process_time, median of `repeat` runs, after one warm-up run
whose time is printed separately: it includes numba's compile or cache load) of:
  now      sensors.http.HttpAnalyzer process + flush over pre-decoded batches
  feed     its StreamCollector.feed_joined + flush_joined alone (reassembly share of `now`)
  before   the same analyzer as committed at git HEAD (loaded from `git show`), if any
  dpkt     dpkt loop over the raw frames: Ethernet -> IP -> TCP, and for TCP payload on an
           HTTP port, dpkt.http.Request / Response (per packet, no reassembly: less work
           than ours, the usual "parse HTTP with dpkt" loop)
Inputs: the generated mix (bench/gen_capture.py) and real captures with HTTP (replayed
`copies` times, time-shifted so flows do not merge). Then the other tcp_stream consumers
(TLS, SSH, logins: the working tree's modules) on HEAD's tcp_stream and on this one.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import dpkt

from sensors.decode import decode
from sensors.http import DEFAULT_PORTS, HttpAnalyzer
from sensors.pcap_reader import CaptureReader

ROOT = Path(__file__).resolve().parents[1]
PCAPS = ROOT.parent / "shared" / "pcaps"
CAPTURES = ["benign/zeek__bro.org.pcap", "benign/zeek__wikipedia.pcap",
            "large/ndpi__1kxun.pcap", "malformed/suricata-verify__http-mime-truncated.pcap"]


_WORK = Path(tempfile.mkdtemp(prefix="bench_http_"))


def _committed_source(name: str) -> str | None:
    result = subprocess.run(["git", "-C", str(ROOT), "show", f"HEAD:sensors/{name}.py"],
                            capture_output=True, text=True)
    return None if result.returncode else result.stdout


def _on_committed_streams(module: str, source: str | None, cls: str) -> type | None:
    """Class `cls` of a sensors module `source`, importing git HEAD's tcp_stream instead of
    the working tree's (None outside a git checkout)."""
    streams = _committed_source("tcp_stream")
    if streams is None or source is None:
        return None
    (_WORK / "committed_tcp_stream.py").write_text(streams)
    (_WORK / f"committed_{module}.py").write_text(
        source.replace("from sensors.tcp_stream import", "from committed_tcp_stream import"))
    if str(_WORK) not in sys.path:
        sys.path.insert(0, str(_WORK))
    return getattr(importlib.import_module(f"committed_{module}"), cls)


def _load_committed() -> type | None:
    """HttpAnalyzer of git HEAD (its own tcp_stream too), or None outside a git checkout."""
    return _on_committed_streams("http", _committed_source("http"), "HttpAnalyzer")


def _frames(path: Path) -> list[bytes]:
    frames = []
    with open(path, "rb") as handle:
        try:
            for _, frame in dpkt.pcap.UniversalReader(handle):
                frames.append(frame)
        except (dpkt.dpkt.NeedData, ValueError):
            pass  # a truncated file: keep what was read
    return frames


def _dpkt_http(frames: list[bytes]) -> int:
    ports = set(DEFAULT_PORTS)
    messages = 0
    for frame in frames:
        try:
            eth = dpkt.ethernet.Ethernet(frame)
        except dpkt.dpkt.UnpackError:
            continue
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
            continue
        tcp = ip.data
        if not isinstance(tcp, dpkt.tcp.TCP) or not tcp.data:
            continue
        try:
            if tcp.dport in ports:
                dpkt.http.Request(tcp.data)
                messages += 1
            elif tcp.sport in ports:
                dpkt.http.Response(tcp.data)
                messages += 1
        except (dpkt.dpkt.UnpackError, dpkt.dpkt.NeedData, ValueError):
            pass
    return messages


def _cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def _analyze(cls, decoded) -> None:
    analyzer = cls({}, "bench", "z")
    for batch in decoded:
        analyzer.process(batch)
    analyzer.flush()


def _feed(decoded) -> None:
    streams = HttpAnalyzer({}, "bench", "z").streams
    for batch in decoded:
        streams.feed_joined(batch)  # what the analyzer calls
    streams.flush_joined()


def _shifted(decoded, copies: int):
    span = int(decoded[-1].ts_ns.max() - decoded[0].ts_ns.min()) + 3_600_000_000_000
    return [replace(d, ts_ns=d.ts_ns + k * span) for k in range(copies) for d in decoded]


def _decoded(path: Path):
    with CaptureReader(path) as reader:
        return [decode(b) for b in reader.batches()]


def _events(cls, decoded) -> int:
    analyzer = cls({}, "bench", "z")
    out = [b for d in decoded for b in analyzer.process(d)] + analyzer.flush()
    return sum(len(b) for b in out)


def bench(label: str, decoded, frames, committed, repeat: int) -> None:
    packets = sum(len(d) for d in decoded)
    warm = _cpu(lambda: _analyze(HttpAnalyzer, decoded))
    now = statistics.median(_cpu(lambda: _analyze(HttpAnalyzer, decoded)) for _ in range(repeat))
    feed = statistics.median(_cpu(lambda: _feed(decoded)) for _ in range(repeat))
    dpkt_s = statistics.median(_cpu(lambda: _dpkt_http(frames)) for _ in range(repeat))
    line = (f"{label:44} {packets:8d} {_events(HttpAnalyzer, decoded):7d} {warm:7.3f} "
            f"{now:7.3f} {feed:7.3f} {packets / now:11,.0f}")
    if committed is not None:
        before = statistics.median(_cpu(lambda: _analyze(committed, decoded))
                                   for _ in range(repeat))
        same = _events(committed, decoded) == _events(HttpAnalyzer, decoded)
        line += f" {before:7.3f} {before / now:6.2f}x{'' if same else ' (event count differs!)'}"
    else:
        line += f" {'-':>7} {'-':>7}"
    print(line + f" {dpkt_s:7.3f} {dpkt_s / now:6.2f}x", flush=True)


OTHERS = [("tls", "TlsAnalyzer", "large/ndpi__1kxun.pcap"),
          ("ssh", "SshAnalyzer", "large/zeek__ssh.pcap"),
          ("logins", "LoginAnalyzer", "brute_force/zeek__ftp_bruteforce.pcap")]


def bench_others(mixed: Path | None, copies: int, repeat: int) -> None:
    """The other tcp_stream consumers (working-tree modules) on HEAD's vs this tcp_stream."""
    print(f"\n{'analyzer on tcp_stream':26} {'input':44} {'HEAD_s':>7} {'now_s':>7} {'ratio':>6}")
    for module, cls_name, capture in OTHERS:
        now_cls = getattr(importlib.import_module(f"sensors.{module}"), cls_name)
        source = (ROOT / "sensors" / f"{module}.py").read_text()
        if "feed_joined" in source and "def feed_joined" not in (
                _committed_source("tcp_stream") or ""):
            print(f"{module:26} (skipped: it needs StreamCollector.feed_joined, which HEAD's "
                  "tcp_stream does not have)")
            continue
        before_cls = _on_committed_streams(module, source, cls_name)
        if before_cls is None:
            return
        inputs = []
        if module == "tls" and mixed is not None:
            inputs.append(("generated mix", _decoded(mixed)))
        path = PCAPS / capture
        if path.is_file():
            inputs.append((f"{capture} x{copies}", _shifted(_decoded(path), copies)))
        for label, decoded in inputs:
            _analyze(now_cls, decoded)
            _analyze(before_cls, decoded)  # warm-up (compiles)
            now = statistics.median(_cpu(lambda: _analyze(now_cls, decoded))  # noqa: B023
                                    for _ in range(repeat))
            before = statistics.median(_cpu(lambda: _analyze(before_cls, decoded))  # noqa: B023
                                       for _ in range(repeat))
            same = _events(now_cls, decoded) == _events(before_cls, decoded)
            print(f"{module:26} {label:44} {before:7.3f} {now:7.3f} {before / now:5.2f}x"
                  f"{'' if same else ' (event count differs!)'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--mixed", type=int, default=300_000,
                        help="packets of the generated mixed capture (0: skip)")
    parser.add_argument("--no-before", action="store_true", help="skip the git HEAD anchor")
    args = parser.parse_args()
    committed = None if args.no_before else _load_committed()
    print(f"{'input':44} {'packets':>8} {'events':>7} {'warm-up':>7} {'now_s':>7} {'feed_s':>7} "
          f"{'now pkt/s':>11} {'HEAD_s':>7} {'vsHEAD':>7} {'dpkt_s':>7} {'vsdpkt':>7}")
    mixed = None
    if args.mixed:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import gen_capture

        mixed = _WORK / "mixed.pcap"
        gen_capture.write_mixed(mixed, args.mixed)
        bench(f"generated mix ({args.mixed} packets)", _decoded(mixed), _frames(mixed),
              committed, args.repeat)
    for name in CAPTURES:
        path = PCAPS / name
        if not path.is_file():
            print(f"{name:44} (missing)")
            continue
        decoded = _shifted(_decoded(path), args.copies)
        bench(f"{name} x{args.copies}", decoded, _frames(path) * args.copies, committed,
              args.repeat)
    if not args.no_before:
        bench_others(mixed, args.copies, args.repeat)
    if mixed is not None:
        mixed.unlink()


if __name__ == "__main__":
    main()
