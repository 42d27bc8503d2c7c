"""SYN-flood cost of the TCP-stream analyzers: packets/s of HttpAnalyzer on spoofed port-80 SYNs.

Prints the median of several runs and, as an anchor measured in the same run, the packets/s
of decode() on the same batches (the ratio says how much the HTTP analyzer adds).
Usage: python bench/bench_syn_flood.py [n_syns] [batch_size]
"""

from __future__ import annotations

import statistics
import struct
import sys
import time

import numpy as np

from sensors.decode import decode
from sensors.http import HttpAnalyzer
from sensors.packets import PacketBatch


def syn_frames(n: int, seed: int = 1) -> list[bytes]:
    """n Ethernet/IPv4/TCP SYNs to 10.9.0.1:80 from random spoofed sources/ports."""
    rng = np.random.default_rng(seed)
    src = rng.integers(1, 2**32 - 1, n, dtype=np.uint64)
    sport = rng.integers(1024, 65535, n)
    seq = rng.integers(0, 2**32 - 1, n, dtype=np.uint64)
    eth = b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\x08\x00"
    frames = []
    for s, p, q in zip(src.tolist(), sport.tolist(), seq.tolist(), strict=True):
        ip = struct.pack("!BBHHHBBHII", 0x45, 0, 40, 0, 0, 64, 6, 0, s, 0x0A090001)
        tcp = struct.pack("!HHIIBBHHH", p, 80, q, 0, 0x50, 0x02, 65535, 0, 0)
        frames.append(eth + ip + tcp)
    return frames


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
    sys.path.insert(0, "tests")
    from packet_builders import batch_from_frames
    frames = syn_frames(n)
    ts = np.arange(n, dtype=np.int64) * 20_000 + 10**18  # 50k SYN/s of event time
    raw: list[PacketBatch] = [batch_from_frames(frames[i : i + size], ts[i : i + size], 1)
                              for i in range(0, n, size)]
    batches = [decode(b) for b in raw]
    http_rates, decode_rates, flows = [], [], 0
    for _ in range(5):
        t0 = time.perf_counter()
        for b in raw:
            decode(b)
        decode_rates.append(n / (time.perf_counter() - t0))
        analyzer = HttpAnalyzer({}, "bench", "lan")
        t0 = time.perf_counter()
        for batch in batches:
            analyzer.process(batch)
        http_rates.append(n / (time.perf_counter() - t0))
        flows = analyzer.streams.held_flows
    http, dec = statistics.median(http_rates), statistics.median(decode_rates)
    print(f"{n} SYNs to port 80, batches of {size}, median of 5 runs")
    print(f"  HttpAnalyzer.process : {http:,.0f} packets/s (flows held after: {flows})")
    print(f"  decode (anchor)      : {dec:,.0f} packets/s")
    print(f"  HttpAnalyzer / decode: {http / dec:.2f}")


if __name__ == "__main__":
    main()
