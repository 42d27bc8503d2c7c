"""Throughput of the protocol analyzers on real captures and on the generated mix.

Prints packets/s of each analyzer's `process` + `flush` over pre-decoded batches, and the
ratio to the decoder itself (the anchor, measured in the same run). Median of several runs.

    python bench/bench_l7_analyzers.py [--repeat 7] [--copies 20] [--mixed 200000]

Each capture's decoded batch is replayed `copies` times through a fresh analyzer (time-
shifted so flows do not merge across copies), so small captures give stable figures. The
DNS, HTTP and TLS analyzers also run on a generated mixed capture (bench/gen_capture.py,
`--mixed` packets, once per run: it is large enough).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from sensors.arp import ArpAnalyzer
from sensors.decode import decode
from sensors.dns import DnsAnalyzer
from sensors.http import HttpAnalyzer
from sensors.icmp import IcmpAnalyzer
from sensors.logins import LoginAnalyzer
from sensors.pcap_reader import CaptureReader
from sensors.ssh import SshAnalyzer
from sensors.tls import TlsAnalyzer

PCAPS = Path(__file__).resolve().parents[2] / "shared" / "pcaps"
CASES = [
    ("ssh", SshAnalyzer, "large/zeek__ssh.pcap"),
    ("ssh", SshAnalyzer, "brute_force/zeek__sshguess.pcap"),
    ("logins", LoginAnalyzer, "brute_force/zeek__ftp_bruteforce.pcap"),
    ("arp", ArpAnalyzer, "port_scan/zeek__nmap-vsn.pcap"),
    ("icmp", IcmpAnalyzer, "exfiltration/ndpi__icmp-tunnel.pcap"),
    ("all four", None, "large/ndpi__1kxun.pcap"),
    ("dns", DnsAnalyzer, "benign/ndpi__dns.pcap"),
    ("http", HttpAnalyzer, "large/ndpi__1kxun.pcap"),
    ("tls", TlsAnalyzer, "large/ndpi__1kxun.pcap"),
]
MIXED = [("dns", DnsAnalyzer), ("http", HttpAnalyzer), ("tls", TlsAnalyzer)]


def _batches(path: Path):
    with CaptureReader(path) as reader:
        return list(reader.batches())


def _shifted(decoded, copies: int):
    span = int(decoded[-1].ts_ns.max() - decoded[0].ts_ns.min()) + 3_600_000_000_000
    return [replace(d, ts_ns=d.ts_ns + k * span) for k in range(copies) for d in decoded]


def _run(classes, decoded) -> float:
    analyzers = [cls({}, "bench", "z") for cls in classes]
    start = time.perf_counter()
    for d in decoded:
        for a in analyzers:
            a.process(d)
    for a in analyzers:
        a.flush()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--mixed", type=int, default=200_000,
                        help="packets of the generated mixed capture (0: skip)")
    args = parser.parse_args()
    print(f"{'analyzer':10} {'capture':42} {'packets':>8} {'pkt/s':>12} {'decode pkt/s':>13} "
          f"{'ratio':>6}")
    for name, cls, capture in CASES:
        path = PCAPS / capture
        if not path.is_file():
            print(f"{name:10} {capture:42} (missing)")
            continue
        raw = _batches(path)
        decoded = _shifted([decode(b) for b in raw], args.copies)
        packets = sum(len(d) for d in decoded)
        classes = [cls] if cls else [SshAnalyzer, LoginAnalyzer, ArpAnalyzer, IcmpAnalyzer]
        t_an = statistics.median(_run(classes, decoded) for _ in range(args.repeat))
        t_dec = statistics.median(
            _time(lambda raw=raw: [decode(b) for b in raw for _ in range(args.copies)])
            for _ in range(args.repeat))
        print(f"{name:10} {capture:42} {packets:8d} {packets / t_an:12,.0f} "
              f"{packets / t_dec:13,.0f} {t_dec / t_an:6.2f}")
    if args.mixed:
        _bench_mixed(args.mixed, args.repeat)


def _bench_mixed(count: int, repeat: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gen_capture

    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "mixed.pcap"
        gen_capture.write_mixed(path, count)
        raw = _batches(path)
        decoded = [decode(b) for b in raw]
        packets = sum(len(d) for d in decoded)
        t_dec = statistics.median(_time(lambda: [decode(b) for b in raw])
                                  for _ in range(repeat))
        for name, cls in MIXED:
            t_an = statistics.median(_run([cls], decoded) for _ in range(repeat))
            print(f"{name:10} {'generated mix (gen_capture.py)':42} {packets:8d} "
                  f"{packets / t_an:12,.0f} {packets / t_dec:13,.0f} {t_dec / t_an:6.2f}")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
