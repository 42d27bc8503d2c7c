"""Synthetic capture generator for the sensor benchmark and the flood memory test.

Two captures, both classic pcap (Ethernet, microsecond timestamps), written column-wise with
numpy (a 2M-packet file takes a few seconds):

- mixed: a realistic mix of conversations between ~65k clients (10.x.y.z) and 500 servers
  (192.0.2.0/24 ... 198.51.100.0/24), each built from a template conversation made once
  with scapy and replicated with per-conversation addresses, ports and timing:
    http   TCP handshake, GET with a Host header, 200 response, FIN close     (9 packets)
    tls    TCP handshake, ClientHello with SNI, server flight, app data, FIN  (16 packets)
    bulk   TCP handshake, 24 data segments + ACKs, FIN close                  (~40 packets)
    dns    A query + answer over UDP 53 (several names)                       (2 packets)
    ntp    UDP 123 request + reply                                            (2 packets)
    icmp   echo request + reply                                               (2 packets)
    rej    SYN answered by RST/ACK (closed port)                              (2 packets)
  Packets of all conversations are interleaved in time order. IP header checksums are
  correct; TCP checksums are those of the template (wrong after patching: no tool used here
  verifies them by default) and UDP checksums are 0 ("none").
- flood: a spoofed-source SYN flood: random source address and port -> one victim:80.

Usage: python bench/gen_capture.py mixed OUT.pcap [--packets 2000000] [--seed 1]
       python bench/gen_capture.py flood OUT.pcap [--packets 10000000] [--seed 1]
The module also offers `flood_batches()` (in-memory PacketBatch objects, no file) for tests.
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
RECORD = np.dtype([("sec", "<u4"), ("usec", "<u4"), ("caplen", "<u4"), ("wirelen", "<u4")])
# Ethernet + IPv4 without options: where the fields patched per conversation sit.
IP_AT, SRC_AT, DST_AT, SPORT_AT, DPORT_AT = 14, 26, 30, 34, 36
T0 = 1_700_000_000  # capture start, seconds since the epoch


@dataclass
class Frame:
    data: bytes
    from_client: bool
    offset_s: float  # time after the conversation start (scaled per conversation)


def _tls_client_hello(server_name: str) -> bytes:
    """A minimal TLS 1.2 ClientHello record with an SNI extension."""
    name = server_name.encode()
    sni = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    extensions = sni + struct.pack("!HHH", 0x000A, 4, 2) + b"\x00\x17"  # supported_groups
    body = (b"\x03\x03" + bytes(range(32)) + b"\x00" + struct.pack("!H", 4)
            + b"\xc0\x2f\x00\x9c" + b"\x01\x00" + struct.pack("!H", len(extensions))
            + extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def _templates() -> dict[str, list[Frame]]:
    """One template conversation per kind, client 10.0.0.1:40000, server 192.0.2.1."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    cmac, smac = "02:00:00:00:00:01", "02:00:00:00:00:02"
    c, s = "10.0.0.1", "192.0.2.1"

    def tcp_conv(dport: int, exchange: list[tuple[bool, bytes]]) -> list[Frame]:
        frames: list[Frame] = []
        cseq, sseq, t = 1000, 5000, 0.0

        def add(from_client: bool, flags: str, payload: bytes = b"") -> None:
            nonlocal cseq, sseq, t
            if from_client:
                pkt = Ether(src=cmac, dst=smac) / IP(src=c, dst=s) / TCP(
                    sport=40000, dport=dport, flags=flags, seq=cseq, ack=sseq)
            else:
                pkt = Ether(src=smac, dst=cmac) / IP(src=s, dst=c) / TCP(
                    sport=dport, dport=40000, flags=flags, seq=sseq, ack=cseq)
            if payload:
                pkt = pkt / Raw(payload)
            frames.append(Frame(bytes(pkt), from_client, t))
            step = len(payload) + (1 if ("S" in flags or "F" in flags) else 0)
            if from_client:
                cseq += step
            else:
                sseq += step
            t += 0.002

        add(True, "S")
        add(False, "SA")
        add(True, "A")
        for from_client, payload in exchange:
            add(from_client, "PA", payload)
            add(not from_client, "A")
        add(True, "FA")
        add(False, "FA")
        add(True, "A")
        return frames

    def udp_pair(sport: int, dport: int, query: bytes, answer: bytes) -> list[Frame]:
        q = Ether(src=cmac, dst=smac) / IP(src=c, dst=s) / UDP(sport=sport, dport=dport) / query
        a = Ether(src=smac, dst=cmac) / IP(src=s, dst=c) / UDP(sport=dport, dport=sport) / answer
        frames = [Frame(bytes(q), True, 0.0), Frame(bytes(a), False, 0.015)]
        for f in frames:  # UDP checksum 0 = none (stays valid after address patching)
            raw = bytearray(f.data)
            raw[40:42] = b"\x00\x00"
            f.data = bytes(raw)
        return frames

    http_response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 900\r\n\r\n"
                     + b"x" * 900)
    templates: dict[str, list[Frame]] = {}
    for i, host in enumerate(("www.example.com", "intranet.example.org", "cdn.example.net")):
        get = f"GET /index{i}.html HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench/1.0\r\n\r\n"
        templates[f"http{i}"] = tcp_conv(80, [(True, get.encode()), (False, http_response)])
    for i, name in enumerate(("api.example.com", "mail.example.org", "login.example.net")):
        templates[f"tls{i}"] = tcp_conv(443, [
            (True, _tls_client_hello(name)), (False, b"\x16\x03\x03" + b"\x05\xa0" + b"s" * 1440),
            (True, b"\x17\x03\x03\x00\x40" + b"a" * 64),
            (False, b"\x17\x03\x03\x05\x00" + b"b" * 1280),
            (False, b"\x17\x03\x03\x05\x00" + b"b" * 1280)])
    templates["bulk"] = tcp_conv(8080, [(False, b"d" * 1448)] * 16)
    for i, name in enumerate(("www.example.com", "update.example.org", "a.b.example.net",
                              "ns1.example.com")):
        query = bytes(DNS(id=0x1234 + i, rd=1, qd=DNSQR(qname=name, qtype="A")))
        answer = bytes(DNS(id=0x1234 + i, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype="A"),
                           an=DNSRR(rrname=name, type="A", ttl=300, rdata="192.0.2.53")))
        templates[f"dns{i}"] = udp_pair(53000, 53, query, answer)
    templates["ntp"] = udp_pair(40123, 123, b"\x23" + bytes(47), b"\x24" + bytes(47))
    echo_q = Ether(src=cmac, dst=smac) / IP(src=c, dst=s) / ICMP(type=8, id=7, seq=1) / (b"p" * 56)
    echo_r = Ether(src=smac, dst=cmac) / IP(src=s, dst=c) / ICMP(type=0, id=7, seq=1) / (b"p" * 56)
    templates["icmp"] = [Frame(bytes(echo_q), True, 0.0), Frame(bytes(echo_r), False, 0.01)]
    syn = Ether(src=cmac, dst=smac) / IP(src=c, dst=s) / TCP(sport=40000, dport=3389, flags="S")
    rst = Ether(src=smac, dst=cmac) / IP(src=s, dst=c) / TCP(sport=3389, dport=40000, flags="RA")
    templates["rej"] = [Frame(bytes(syn), True, 0.0), Frame(bytes(rst), False, 0.001)]
    return templates


# Share of conversations per kind (before the per-kind packet counts): mostly DNS and short
# web sessions, a few bulk transfers, some ICMP/NTP/rejected probes.
MIX = {"http": 0.18, "tls": 0.22, "bulk": 0.03, "dns": 0.38, "ntp": 0.07, "icmp": 0.07,
       "rej": 0.05}


def _strided(buf: np.ndarray, width: int) -> np.ndarray:
    """View of `buf` where item i is buf[i:i+width] (for scattered fixed-width writes)."""
    return np.ndarray(shape=(buf.size - width + 1,), dtype=np.dtype(f"V{width}"), buffer=buf,
                      strides=(1,))


def _ip_checksums(buf: np.ndarray, ip_at: np.ndarray) -> None:
    """Recompute the IPv4 header checksum of the 20-byte headers at ip_at (in place)."""
    header = buf[ip_at[:, None] + np.arange(20)].astype(np.uint32)
    header[:, 10:12] = 0
    words = (header[:, 0::2] << 8) | header[:, 1::2]
    total = words.sum(axis=1)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    checksum = (~total & 0xFFFF).astype(">u2")
    _strided(buf, 2)[ip_at + 10] = checksum.view("V2")


def _render(frames: list[bytes], frame_of: np.ndarray, ts_us: np.ndarray,
            patches: dict[int, np.ndarray]) -> bytes:
    """pcap records (no file header) of packets in row order.

    frames: distinct frame templates; frame_of[i]: template of row i; ts_us[i]: time;
    patches: byte offset in the frame -> (n,) void column written there (addresses, ports).
    """
    lengths = np.array([len(f) for f in frames], dtype=np.int64)[frame_of]
    starts = np.zeros(frame_of.size, dtype=np.int64)
    np.cumsum(16 + lengths[:-1], out=starts[1:])
    buf = np.zeros(int(starts[-1] + 16 + lengths[-1]) if frame_of.size else 0, dtype=np.uint8)
    records = np.zeros(frame_of.size, dtype=RECORD)
    records["sec"] = ts_us // 1_000_000
    records["usec"] = ts_us % 1_000_000
    records["caplen"] = lengths
    records["wirelen"] = np.maximum(lengths, 60)  # Ethernet minimum frame (FCS not counted)
    _strided(buf, 16)[starts] = records.view("V16")
    for index, frame in enumerate(frames):  # loop over templates, not packets
        rows = np.flatnonzero(frame_of == index)
        if rows.size:
            _strided(buf, len(frame))[starts[rows] + 16] = np.frombuffer(frame, f"V{len(frame)}")
    for at, column in patches.items():
        _strided(buf, column.dtype.itemsize)[starts + 16 + at] = column
    ip_rows = starts + 16 + IP_AT
    for lo in range(0, ip_rows.size, 1 << 20):  # bounded temporaries
        _ip_checksums(buf, ip_rows[lo:lo + (1 << 20)])
    return buf.tobytes()


def _be(values: np.ndarray, dtype: str) -> np.ndarray:
    return values.astype(dtype).view(f"V{np.dtype(dtype).itemsize}")


def mixed_records(packets: int, seed: int = 1, duration_s: float = 600.0) -> bytes:
    """pcap records of about `packets` packets of the mixed traffic (see module doc)."""
    rng = np.random.default_rng(seed)
    templates = _templates()
    kinds = {k: [name for name in templates if name.rstrip("0123456789") == k] for k in MIX}
    mean_len = sum(MIX[k] * np.mean([len(templates[n]) for n in kinds[k]]) for k in MIX)
    conversations = max(int(packets / mean_len), 1)
    names = list(templates)
    weights = np.array([MIX[name.rstrip("0123456789")] / len(kinds[name.rstrip("0123456789")])
                        for name in names])
    conv_kind = rng.choice(len(names), size=conversations, p=weights / weights.sum())
    conv_client = (0x0A000000 | rng.integers(1, 1 << 16, conversations)).astype(np.uint32)
    server_pool = np.concatenate([0xC0000200 + np.arange(1, 251), 0xC6336400 + np.arange(1, 251)])
    conv_server = server_pool[rng.integers(0, server_pool.size, conversations)].astype(np.uint32)
    conv_port = rng.integers(1024, 65535, conversations).astype(np.uint16)
    conv_start = rng.uniform(0, duration_s, conversations)
    conv_scale = rng.uniform(0.5, 4.0, conversations)  # per-conversation RTT / pacing

    frames: list[bytes] = []
    parts = {name: [] for name in ("frame", "conv", "ts", "from_client")}
    for k, name in enumerate(names):
        convs = np.flatnonzero(conv_kind == k)
        for frame in templates[name]:
            parts["frame"].append(np.full(convs.size, len(frames), dtype=np.int64))
            parts["conv"].append(convs)
            parts["ts"].append(conv_start[convs] + frame.offset_s * conv_scale[convs])
            parts["from_client"].append(np.full(convs.size, frame.from_client))
            frames.append(frame.data)
    frame_of, conv, ts, from_client = (np.concatenate(parts[n]) for n in
                                       ("frame", "conv", "ts", "from_client"))
    order = np.argsort(ts, kind="stable")
    frame_of, conv, from_client = frame_of[order], conv[order], from_client[order]
    ts_us = (T0 * 1_000_000 + (ts[order] * 1e6)).astype(np.int64)
    client, server, port = conv_client[conv], conv_server[conv], conv_port[conv]
    is_icmp = np.isin(frame_of, [i for i, f in enumerate(frames) if f[23] == 1])
    patches = {
        SRC_AT: _be(np.where(from_client, client, server), ">u4"),
        DST_AT: _be(np.where(from_client, server, client), ">u4"),
    }
    # Client port: TCP/UDP source port from the client, destination port to it. ICMP keeps
    # its type/code bytes (the address pair separates its conversations).
    template_sport = np.array([int.from_bytes(f[34:36], "big") for f in frames])[frame_of]
    template_dport = np.array([int.from_bytes(f[36:38], "big") for f in frames])[frame_of]
    sport = np.where(from_client & ~is_icmp, port, template_sport)
    dport = np.where(~from_client & ~is_icmp, port, template_dport)
    patches[SPORT_AT] = _be(sport, ">u2")
    patches[DPORT_AT] = _be(dport, ">u2")
    return _render(frames, frame_of, ts_us, patches)


def flood_records(packets: int, seed: int = 1, start_s: float = 0.0,
                  rate_pps: float = 1_000_000.0, dport: int = 80) -> bytes:
    """pcap records of a spoofed-source SYN flood: random source ip:port -> 192.0.2.10:dport."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    syn = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                / IP(src="10.0.0.1", dst="192.0.2.10") / TCP(sport=40000, dport=dport, flags="S"))
    rng = np.random.default_rng(seed)
    src = rng.integers(1 << 24, 0xE0000000, packets, dtype=np.uint32)  # unicast-looking
    sport = rng.integers(1024, 65535, packets).astype(np.uint16)
    ts_us = (T0 * 1_000_000 + (start_s + np.arange(packets) / rate_pps) * 1e6).astype(np.int64)
    return _render([syn], np.zeros(packets, dtype=np.int64), ts_us,
                   {SRC_AT: _be(src, ">u4"), SPORT_AT: _be(sport, ">u2")})


def write_mixed(path: str | Path, packets: int = 2_000_000, seed: int = 1) -> int:
    body = mixed_records(packets, seed)
    Path(path).write_bytes(PCAP_HEADER + body)
    return len(PCAP_HEADER) + len(body)


def write_flood(path: str | Path, packets: int = 10_000_000, seed: int = 1,
                chunk: int = 1_000_000, dport: int = 80) -> int:
    """Written in chunks so the generator itself stays small."""
    size = len(PCAP_HEADER)
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        for lo in range(0, packets, chunk):
            n = min(chunk, packets - lo)
            body = flood_records(n, seed + lo, start_s=lo / 1_000_000.0, dport=dport)
            fh.write(body)
            size += len(body)
    return size


def flood_batches(packets: int, batch_packets: int = 65536, seed: int = 1,
                  dport: int = 80) -> Iterator:
    """The flood as in-memory PacketBatch objects (no file), for tests."""
    from sensors.packets import PacketBatch

    for lo in range(0, packets, batch_packets):
        n = min(batch_packets, packets - lo)
        body = np.frombuffer(flood_records(n, seed + lo, start_s=lo / 1_000_000.0, dport=dport),
                             np.uint8)
        records_at = np.arange(n, dtype=np.int64) * (16 + 54)
        head = body[records_at[:, None] + np.arange(16)].copy().view(RECORD)[:, 0]
        yield PacketBatch(
            data=body, offset=records_at + 16, caplen=head["caplen"].astype(np.uint32),
            wirelen=head["wirelen"].astype(np.uint32),
            ts_ns=head["sec"].astype(np.int64) * 1_000_000_000 + head["usec"] * 1000,
            linktype=np.ones(n, dtype=np.uint16), interface=np.zeros(n, dtype=np.uint16),
            first_index=lo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("mixed", "flood"))
    parser.add_argument("out")
    parser.add_argument("--packets", type=int)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dport", type=int, default=80, help="flood: victim port")
    args = parser.parse_args(argv)
    if args.kind == "mixed":
        size = write_mixed(args.out, args.packets or 2_000_000, args.seed)
    else:
        size = write_flood(args.out, args.packets or 10_000_000, args.seed, dport=args.dport)
    print(f"{args.out}: {size / 1e6:.1f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
