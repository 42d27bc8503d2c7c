"""CPU cost of the DNS analyzer, against a dpkt DNS parse loop measured in the same run.

    python bench/bench_dns.py [--repeat 7] [--mixed 300000] [--copies 50] [--baseline OLD.py]

Inputs: the generated mixed capture (bench/gen_capture.py, `--mixed` packets: ~10% DNS)
and the real captures with the most DNS (/work/shared/pcaps, replayed `--copies` times,
time-shifted, merged into batches of up to 65536 packets as a long capture would be).
`DnsAnalyzer.process` over every decoded batch (CPU time, time.process_time, median of
`--repeat` runs after one warm-up run).

Printed per input: packets, DNS messages, ns of CPU per packet and per message for
- ours: sensors.dns (compiled kernel + event columns),
- ours without Community ID: the same with `community_id_column` replaced by a constant
  (that column is computed by sensors/community_id.py, owned by the flow core: this line
  shows what the DNS code itself costs),
- dpkt: `dpkt.dns.DNS(payload)` per message plus the same fields (id, flags, first
  question, answers as name/type/class/ttl/text) from its records, payloads pre-sliced,
- baseline (with --baseline FILE): an older sensors/dns.py loaded from FILE (e.g.
  `git show REV:sensors/dns.py > /tmp/dns_old.py`), for before/after in one run;
and the ratio dpkt / ours (> 1: ours is faster). The compile cost of the kernels (cold
numba cache, in a subprocess) and the load-from-cache cost are printed separately.

With --small, the other small analyzers (ICMP, ARP, SSH, logins) are timed the same way on
the mix and on captures of their protocols; SSH and logins with and without their port
prefilter (sensors/stream_prefilter.py), which is the before/after of that change.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import dpkt
import numpy as np

import sensors.dns as dns_module
from sensors import dns_kernel
from sensors.decode import decode
from sensors.packets import DecodedPackets
from sensors.pcap_reader import CaptureReader

PCAPS = Path(__file__).resolve().parents[2] / "shared" / "pcaps"
REAL = ["dns_tunneling/ndpi__dns-tunnel-iodine.pcap", "exfiltration/ndpi__dns_exfiltration.pcap",
        "benign/zeek__var-services-std-ports.pcap"]


def _decoded(path: Path) -> list:
    with CaptureReader(path) as reader:
        return [decode(batch) for batch in reader.batches()]


def _replayed(decoded: list, copies: int, batch_packets: int = 65536) -> list:
    """`copies` time-shifted replays of a small capture, merged into batches of up to
    `batch_packets` packets as the reader would cut a long capture (per-batch costs are
    then those of a busy link, not of many tiny batches)."""
    span = int(decoded[-1].ts_ns.max() - decoded[0].ts_ns.min()) + 3_600_000_000_000
    parts = [replace(d, ts_ns=d.ts_ns + k * span) for k in range(copies) for d in decoded]
    out, group, size = [], [], 0
    for part in parts:
        if group and size + len(part) > batch_packets:
            out.append(_merged(group))
            group, size = [], 0
        group.append(part)
        size += len(part)
    if group:
        out.append(_merged(group))
    return out


def _merged(parts: list) -> DecodedPackets:
    """One DecodedPackets holding `parts` back to back (buffers concatenated, payload
    offsets moved accordingly)."""
    buffers = [np.asarray(p.data).reshape(-1) for p in parts]
    shift = np.cumsum([0] + [b.shape[0] for b in buffers[:-1]])
    columns = {f.name: np.concatenate([getattr(p, f.name) for p in parts])
               for f in fields(DecodedPackets) if f.name not in ("data", "weird",
                                                                 "payload_offset")}
    offsets = np.concatenate([p.payload_offset + s for p, s in zip(parts, shift, strict=True)])
    return DecodedPackets(**columns, payload_offset=offsets, data=np.concatenate(buffers))


def _payloads(decoded: list) -> list[bytes]:
    """The DNS messages the analyzer parses (UDP payloads; TCP: after the 2-byte prefix of
    a whole first message), as bytes, for the dpkt loop."""
    out = []
    for d in decoded:
        data = np.asarray(d.data).reshape(-1)
        port53 = np.flatnonzero((d.src_port == dns_module.DNS_PORT)
                                | (d.dst_port == dns_module.DNS_PORT))
        udp, _, _, tcp = dns_kernel.port_candidates(port53, d.ip_version, d.transport,
                                                    d.payload_len, d.payload_offset, data.size)
        for row in udp.tolist():
            start = int(d.payload_offset[row])
            out.append(data[start : start + int(d.payload_len[row])].tobytes())
        for row in tcp.tolist():
            start = int(d.payload_offset[row])
            out.append(data[start + 2 : start + int(d.payload_len[row])].tobytes())
    return out


_DPKT_NAME_FIELD = {dpkt.dns.DNS_CNAME: "cname", dpkt.dns.DNS_NS: "nsname",
                    dpkt.dns.DNS_PTR: "ptrname"}


def _dpkt_loop(payloads: list[bytes]) -> int:
    """dpkt's parse of each message, and the same event fields as ours built from it."""
    events = 0
    for payload in payloads:
        try:
            msg = dpkt.dns.DNS(payload)
        except (dpkt.UnpackError, IndexError, ValueError, struct.error):
            continue
        question = msg.qd[0] if msg.qd else None
        answers = []
        for rr in msg.an:
            if rr.type == dpkt.dns.DNS_A and len(rr.rdata) == 4:
                data = socket.inet_ntoa(rr.rdata)
            elif rr.type == dpkt.dns.DNS_AAAA and len(rr.rdata) == 16:
                data = socket.inet_ntop(socket.AF_INET6, rr.rdata)
            elif rr.type in _DPKT_NAME_FIELD:
                data = getattr(rr, _DPKT_NAME_FIELD[rr.type], "").lower()
            else:
                data = rr.rdata.hex()
            answers.append({"name": rr.name.lower(), "type": rr.type, "class": rr.cls,
                            "ttl": rr.ttl, "data": data})
        _event = (msg.id, msg.op, question.name.lower() if question is not None else "",
                  question.type if question is not None else 0, answers)
        events += 1
    return events



def _analyzer_run(module, decoded: list) -> float:
    analyzer = module.DnsAnalyzer({}, "bench", "z")
    start = time.process_time()
    for d in decoded:
        analyzer.process(d)
    return time.process_time() - start


def _median(fn, repeat: int) -> float:
    fn()  # warm-up (first call of the kernels, caches)
    return statistics.median(fn() for _ in range(repeat))


def _timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def _without_community_id(module, decoded: list) -> float:
    real = module.community_id_column
    module.community_id_column = lambda src, *rest: np.full(src.shape[0], "", dtype=object)
    try:
        return _analyzer_run(module, decoded)
    finally:
        module.community_id_column = real


def _load_baseline(path: str):
    spec = importlib.util.spec_from_file_location("dns_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dns_baseline"] = module
    spec.loader.exec_module(module)
    return module


def _compile_costs() -> tuple[float, float]:
    """Seconds for the first kernel call in a fresh process: cold numba cache (compile),
    then warm cache (load)."""
    code = ("import time, numpy as np; t = time.perf_counter(); "
            "from sensors import dns_kernel as k; d = np.frombuffer(bytes(64), np.uint8); "
            "k.parse_messages(d, np.zeros(1, np.int64), np.array([64])); "
            "k.split_tcp_segments(d, np.zeros(1, np.int64), np.array([64])); "
            "print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as cache:
        cold = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(os.environ, NUMBA_CACHE_DIR=cache), check=True)
    warm = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return float(cold.stdout.split()[-1]), float(warm.stdout.split()[-1])


def _report(name: str, decoded: list, repeat: int, baseline) -> None:
    packets = sum(len(d) for d in decoded)
    payloads = _payloads(decoded)
    messages = len(payloads)
    t_ours = _median(lambda: _analyzer_run(dns_module, decoded), repeat)
    t_nocid = _median(lambda: _without_community_id(dns_module, decoded), repeat)
    t_dpkt = _median(lambda: _timed(lambda: _dpkt_loop(payloads)), repeat)
    rows = [("ours", t_ours), ("ours w/o community id", t_nocid), ("dpkt DNS loop", t_dpkt)]
    if baseline is not None:
        rows.append(("baseline (--baseline)", _median(lambda: _analyzer_run(baseline, decoded),
                                                      repeat)))
    print(f"\n{name}: {packets:,} packets, {messages:,} DNS messages")
    for label, seconds in rows:
        print(f"  {label:24} {seconds * 1e3:9.2f} ms  {seconds / packets * 1e9:8.1f} ns/pkt  "
              f"{seconds / max(messages, 1) * 1e9:8.0f} ns/msg  dpkt/this {t_dpkt / seconds:6.2f}")


SMALL_CAPTURES = ["large/zeek__ssh.pcap", "brute_force/zeek__ftp_bruteforce.pcap",
                  "exfiltration/ndpi__icmp-tunnel.pcap", "port_scan/zeek__nmap-vsn.pcap"]


def _small_run(cls, decoded: list, prefilter: bool) -> float:
    analyzer = cls({}, "bench", "z")
    if not prefilter:
        analyzer.prefilter = None
    start = time.process_time()
    for d in decoded:
        analyzer.process(d)
    analyzer.flush()
    return time.process_time() - start


def _report_small(name: str, decoded: list, repeat: int) -> None:
    from sensors.arp import ArpAnalyzer
    from sensors.icmp import IcmpAnalyzer
    from sensors.logins import LoginAnalyzer
    from sensors.ssh import SshAnalyzer

    packets = sum(len(d) for d in decoded)
    print(f"\n{name}: {packets:,} packets (ns of CPU per packet)")
    for cls in (IcmpAnalyzer, ArpAnalyzer):
        seconds = _median(lambda cls=cls: _small_run(cls, decoded, True), repeat)
        print(f"  {cls.__name__:16} {seconds / packets * 1e9:8.1f}")
    for cls in (SshAnalyzer, LoginAnalyzer):
        without = _median(lambda cls=cls: _small_run(cls, decoded, False), repeat)
        with_ = _median(lambda cls=cls: _small_run(cls, decoded, True), repeat)
        print(f"  {cls.__name__:16} {with_ / packets * 1e9:8.1f}   without prefilter "
              f"{without / packets * 1e9:8.1f}   ratio {without / with_:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--mixed", type=int, default=300_000,
                        help="packets of the generated mixed capture (0: skip)")
    parser.add_argument("--copies", type=int, default=50, help="replays of each real capture")
    parser.add_argument("--baseline", help="an older sensors/dns.py to time in the same run")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile timing")
    parser.add_argument("--small", action="store_true",
                        help="time ICMP, ARP, SSH and logins instead of DNS")
    args = parser.parse_args()
    baseline = _load_baseline(args.baseline) if args.baseline else None
    if args.small:
        _main_small(args)
        return
    if not args.no_compile:
        cold, warm = _compile_costs()
        print(f"kernel first call in a fresh process: {cold:.1f} s with a cold numba cache "
              f"(compile), {warm:.2f} s with the cache in __pycache__ (import + load)")
    if args.mixed:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import gen_capture

        with tempfile.TemporaryDirectory() as work:
            path = Path(work) / "mixed.pcap"
            gen_capture.write_mixed(path, args.mixed)
            _report(f"generated mix ({args.mixed:,} packets, gen_capture.py)", _decoded(path),
                    args.repeat, baseline)
    for capture in REAL:
        path = PCAPS / capture
        if not path.is_file():
            print(f"\n{capture}: missing")
            continue
        _report(f"{capture} x{args.copies}", _replayed(_decoded(path), args.copies),
                args.repeat, baseline)


def _main_small(args: argparse.Namespace) -> None:
    if args.mixed:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import gen_capture

        with tempfile.TemporaryDirectory() as work:
            path = Path(work) / "mixed.pcap"
            gen_capture.write_mixed(path, args.mixed)
            _report_small(f"generated mix ({args.mixed:,} packets)", _decoded(path), args.repeat)
    for capture in SMALL_CAPTURES:
        path = PCAPS / capture
        if path.is_file():
            _report_small(f"{capture} x{args.copies}", _replayed(_decoded(path), args.copies),
                          args.repeat)


if __name__ == "__main__":
    main()
