"""Hostile traffic for the whole sensor path (tests/test_sensor_bounds.py): valid
conversations of every protocol and layer the sensor decodes, capture-file writers, and
the cuts and mutations that turn them into hostile captures."""

from __future__ import annotations

import functools
import struct
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import test_dns_fuzz as dns_fuzz
import test_tls_kernels as tls_fuzz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from tcp_sessions import tcp_session
from test_decode_fuzz import TEMPLATES
from test_defrag import http_session, v4_fragments, v6_fragments
from test_quic import CLIENT_HELLO, crypto, frame, initial
from test_tls import ext, u16s, vec

from pipeline.config import load_config
from sensors.pcap_reader import CaptureError, CaptureReader
from sensors.sensor import Sensor

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}  # given: scapy would ARP
ETHERNET = 1
Flow = tuple[int, list[bytes]]  # (link type, frames of one conversation)


# --- valid conversations --------------------------------------------------------------------

def _frames(packets: Iterable) -> list[bytes]:
    return [bytes(packet) for packet in packets]


def _tls_exchange() -> list[tuple[int, bytes]]:
    """ClientHello (the RFC 9001 one, SNI and ALPN) and a ServerHello + CCS + app data."""
    client = b"\x16\x03\x01" + vec(CLIENT_HELLO)
    body = (u16s([0x0303]) + bytes(32) + vec(b"\x07" * 32, 1) + u16s([0x1301]) + b"\x00"
            + vec(ext(43, u16s([0x0304])) + ext(51, u16s([29]) + vec(bytes(32)))
                  + ext(16, vec(vec(b"h2", 1)))))
    server = (b"\x16\x03\x03" + vec(b"\x02" + len(body).to_bytes(3, "big") + body)
              + b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x05hello")
    return [(0, client), (1, server)]


def _dns_message(query: bool) -> bytes:
    if query:
        return bytes(DNS(id=7, rd=1, qd=DNSQR(qname="www.example.org", qtype="AAAA")))
    return bytes(DNS(id=7, qr=1, rd=1, ra=1, qd=DNSQR(qname="www.example.org"),
                     an=DNSRR(rrname="www.example.org", rdata="192.0.2.80")
                     / DNSRR(rrname="www.example.org", type="TXT", rdata="v=spf1 -all")))


def _udp(payload: bytes, sport: int, dport: int, reply: bool = False) -> bytes:
    a, b = ("192.0.2.10", "198.51.100.53")
    src, dst = (b, a) if reply else (a, b)
    return bytes(Ether(**MACS) / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)


def _tunnelled(frames: list[bytes], kind: str) -> list[bytes]:
    """Each Ethernet/IP frame inside an outer VXLAN or GRE packet, or VLAN-tagged."""
    outer = Ether(**MACS) / IP(src="203.0.113.1", dst="203.0.113.2")
    if kind == "vxlan":
        return [bytes(outer / UDP(sport=5555, dport=4789) / VXLAN(vni=42) / f) for f in frames]
    if kind == "gre":
        return [bytes(outer / GRE(proto=0x0800) / f[14:]) for f in frames]
    return [f[:12] + b"\x81\x00\x00\x09" + f[12:] for f in frames]  # an 802.1Q tag


def seed_flows() -> list[Flow]:
    """One valid conversation per protocol and layer the sensor decodes."""
    http = _frames(tcp_session(
        [(0, b"GET /a?b=c HTTP/1.1\r\nHost: h.example\r\nUser-Agent: u\r\n"
             b"Authorization: Basic dXNlcjpwYXNz\r\n\r\nPOST /p HTTP/1.1\r\nHost: h\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"),
         (1, b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello"
             b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")], dport=80))
    tls = _frames(tcp_session(_tls_exchange(), dport=443, sport=40001))
    ssh = _frames(tcp_session([(1, b"SSH-2.0-OpenSSH_9.6\r\n"), (0, b"SSH-2.0-libssh_0.9\r\n"),
                               (0, b"\x00\x00\x00\x0c\x0a\x14" + bytes(10))], dport=22))
    ftp = _frames(tcp_session([(1, b"220 ftp\r\n"), (0, b"USER bob\r\n"), (1, b"331 pw\r\n"),
                               (0, b"PASS x\r\n"), (1, b"530 Login incorrect.\r\n")], dport=21))
    dns_tcp = _frames(tcp_session([(0, vec(_dns_message(True))), (1, vec(_dns_message(False)))],
                                  dport=53, sport=40002))
    dns_udp = [_udp(_dns_message(True), 33000, 53), _udp(_dns_message(False), 53, 33000, True)]
    quic = [frame(initial(crypto(0, CLIENT_HELLO), dcid=bytes.fromhex("8394c8f03e515708")))]
    icmp = _frames([Ether(**MACS) / IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(),
                    Ether(**MACS) / IP(src="192.0.2.2", dst="192.0.2.1") / ICMP(type=3, code=3)
                    / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=2),
                    Ether(**MACS) / IPv6() / ICMPv6EchoRequest(data=b"ping")])
    arp = _frames([Ether(**MACS) / ARP(op=1, psrc="192.0.2.1", pdst="192.0.2.2"),
                   Ether(**MACS) / ARP(op=2, psrc="192.0.2.2", pdst="192.0.2.1")])
    flows: list[Flow] = [(ETHERNET, f) for f in (http, tls, ssh, ftp, dns_tcp, dns_udp, quic,
                                                 icmp, arp)]
    flows += [(ETHERNET, v4_fragments()), (ETHERNET, v6_fragments()),
              (ETHERNET, http_session(600))]
    flows += [(ETHERNET, _tunnelled(http, "vxlan")), (ETHERNET, _tunnelled(tls, "gre")),
              (ETHERNET, _tunnelled(dns_udp, "vlan")),
              (ETHERNET, _tunnelled(v4_fragments(ident=778), "vxlan"))]
    flows += [(linktype, [template]) for template, linktype in TEMPLATES]
    return flows


# --- capture files --------------------------------------------------------------------------

def pcap_file(frames: list[bytes], linktype: int = ETHERNET, big_endian: bool = False,
              snaplen: int = 65535) -> bytes:
    """A classic pcap (microseconds) of `frames`, one millisecond apart."""
    order = ">" if big_endian else "<"
    out = [struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)]
    for i, data in enumerate(frames):
        out.append(struct.pack(order + "IIII", 1_700_000_000 + i // 1000, (i % 1000) * 1000,
                               len(data), len(data)) + data)
    return b"".join(out)


def _block(kind: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def pcapng_file(frames: list[tuple[int, bytes]], snaplen: int = 0, tsresol: int | None = None,
                blocks: tuple[int, ...] = (6,)) -> bytes:
    """A pcapng: one interface per link type (maybe with a snaplen and if_tsresol option),
    one packet block per frame, of the types in `blocks` in turn (6 EPB, 3 SPB, 2 PB)."""
    links = sorted({linktype for linktype, _ in frames})
    options = b"" if tsresol is None else struct.pack("<HHB3xHH", 9, 1, tsresol, 0, 0)
    out = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    out += [_block(1, struct.pack("<HHI", linktype, 0, snaplen) + options) for linktype in links]
    for i, (linktype, data) in enumerate(frames):
        ts, kind = 1_700_000_000_000_000 + i * 1000, blocks[i % len(blocks)]
        ifid = links.index(linktype)
        if kind == 3:  # SPB: the first interface's, no timestamp
            out.append(_block(3, struct.pack("<I", len(data)) + data))
        else:  # PB: a 16-bit interface id and drop count where an EPB has its 32-bit id
            head = struct.pack("<HH", ifid, 0) if kind == 2 else struct.pack("<I", ifid)
            out.append(_block(kind, head + struct.pack("<IIII", ts >> 32, ts & 0xFFFFFFFF,
                                                       len(data), len(data)) + data))
    return b"".join(out)


def capture_file(flows: list[Flow], pcapng: bool, big_endian: bool = False,
                 **pcapng_options: object) -> bytes:
    """The frames of `flows`, interleaved round-robin (batch edges then cut conversations);
    a classic pcap holds one link type: only Ethernet frames go there."""
    queues = [[(linktype, f) for f in frames] for linktype, frames in flows]
    rows = [q[i] for i in range(max((len(q) for q in queues), default=0))
            for q in queues if i < len(q)]
    if pcapng:
        return pcapng_file(rows, **pcapng_options)
    return pcap_file([f for linktype, f in rows if linktype == ETHERNET], big_endian=big_endian)


# --- cuts and mutations -----------------------------------------------------------------------

mutate = tls_fuzz.mutate  # bytes with (position, value) edits, positions modulo the length


# the client addresses of seed_flows' conversations (192.0.2.10, 192.0.2.1, 10.1.1.1)
CLIENTS = (bytes([192, 0, 2, 10]), bytes([192, 0, 2, 1]), bytes([10, 1, 1, 1]))
CLIENT6 = bytes.fromhex("20010db8000000000000000000000001")  # 2001:db8::1


def readdressed(flow: Flow, index: int) -> Flow:
    """The conversation from client 100.x.y.z / 2001:db8::1:x.y.z (x.y.z: `index`), so that
    copies of it in one capture are distinct flows, streams and fragment sets (checksums
    are not checked by the sensor)."""
    address = bytes([100]) + (index % (1 << 24)).to_bytes(3, "big")
    linktype, frames = flow
    out = []
    for data in frames:
        for client in CLIENTS:
            data = data.replace(client, address)
        out.append(data.replace(CLIENT6, CLIENT6[:11] + b"\x01" + address))
    return linktype, out


def every_cut(flow: Flow) -> list[Flow]:
    """The conversation once per frame and length: that frame cut there, the others whole."""
    linktype, frames = flow
    return [(linktype, frames[:i] + [frames[i][:cut]] + frames[i + 1:])
            for i in range(len(frames)) for cut in range(len(frames[i]))]


def record_offsets(capture: bytes, order: str = "<") -> list[int]:
    """Where each record header of a classic pcap (byte order `order`) starts."""
    pos, out = 24, []
    while pos + 16 <= len(capture):
        out.append(pos)
        pos += 16 + struct.unpack_from(order + "I", capture, pos + 8)[0]
    return out


def with_record_lengths(capture: bytes, record: int, caplen: int, wirelen: int) -> bytes:
    """A classic pcap with one record header's caplen/wirelen overwritten."""
    offsets = record_offsets(capture)
    if not offsets:
        return capture
    pos = offsets[record % len(offsets)]
    return capture[:pos + 8] + struct.pack("<II", caplen, wirelen) + capture[pos + 16:]


# --- running the sensor -----------------------------------------------------------------------

class Tally:
    """What a run reached: events by kind and the sensor's counters, summed over captures."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self.captures = 0
        self.packets = 0
        self.seconds: dict[str, float] = {}  # wall time per phase of run_all

    def reached(self) -> dict[str, int]:
        s = self.stats
        return {"dns": self.events["dns"], "http": self.events["http"],
                "tls": self.events["tls"], "quic": s["quic_handshakes"],
                "ssh": self.events["ssh"], "login": self.events["login"],
                "icmp": self.events["icmp"], "arp": self.events["arp"],
                "flow": self.events["flow"],
                "tunnel_packets": sum(v for k, v in s.items() if k.startswith("tunnel.")),
                "defrag_datagrams": s["defrag.datagrams"],
                "tcp_streams": sum(v for k, v in s.items() if k.endswith("_stream.flows")),
                "evicted": sum(v for k, v in s.items() if "evicted" in k)}


def run_capture(path: Path, batch: int, tally: Tally) -> None:
    """The capture through CaptureReader + Sensor.process + flush (default config); an
    unusable file is an expected answer, anything else raised is a finding."""
    sensor = Sensor(load_config(None)["sensor"])
    try:
        with CaptureReader(path, batch_packets=batch) as reader:
            for packets in reader.batches():
                for events in sensor.process(packets):
                    tally.events[events.kind] += len(events)
            tally.packets += reader.packets
    except CaptureError:
        pass
    for events in sensor.flush():
        tally.events[events.kind] += len(events)
    tally.stats.update({k: v for k, v in sensor.stats.items() if isinstance(v, int)})
    tally.captures += 1


def block_offsets(capture: bytes) -> list[int]:
    """Where each block of a little-endian pcapng starts."""
    pos, out = 0, []
    while pos + 12 <= len(capture):
        out.append(pos)
        length = struct.unpack_from("<I", capture, pos + 4)[0]
        if length < 12:
            break
        pos += length
    return out


def with_field(capture: bytes, starts: list[int], index: int, field: int, value: int,
               order: str = "<") -> bytes:
    """`capture` with the u32 at `field` bytes into its index-th record/block overwritten."""
    if not starts:
        return capture
    pos = starts[index % len(starts)] + field
    if pos + 4 > len(capture):
        return capture
    return capture[:pos] + struct.pack(order + "I", value) + capture[pos + 4:]


def flood() -> list[Flow]:
    """Open conversations (no FIN) of HTTP, TLS (20500 each), SSH and FTP (10500 each): past
    their analyzers' default max_flows (20000, 10000), so that their evictions run."""
    counts = (20_500, 20_500, 10_500, 10_500)
    kinds = [(linktype, frames[:-3]) for linktype, frames in seeds()[:4]]
    flows = [kinds[k] for i in range(max(counts)) for k in range(4) if i < counts[k]]
    return [readdressed(flow, i) for i, flow in enumerate(flows)]


# --- hypothesis: hostile captures ---------------------------------------------------------------

edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)
# lengths around the reader's limits: 0, a header, snaplen (65535) and past it, the link
# type maximum (262144), and values past any file (caplen > the bytes left)
lengths = st.sampled_from([0, 1, 4, 11, 12, 15, 16, 28, 65535, 65536, 262144, 262145,
                           0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFF]) | st.integers(0, 0xFFFFFFFF)
BATCHES = (65536, 97, 7)


@functools.cache
def seeds() -> list[Flow]:
    return seed_flows()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


TEXT_SEEDS = {  # port: (client bytes, server bytes) that the port's analyzer parses
    80: (b"GET /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
         b"0\r\n\r\nPOST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
         b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 100 Continue\r\n\r\n"),
    22: (b"SSH-2.0-client\r\n" + bytes(40), b"SSH-2.0-server\r\n" + bytes(60)),
    21: (b"USER u\r\nPASS p\r\nUSER v\r\n", b"220 hi\r\n331 pw\r\n530 no\r\n230 ok\r\n"),
    25: (b"EHLO x\r\nAUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\n", b"220 x\r\n334 VXNlcm5hbWU6\r\n"
         b"334 UGFzc3dvcmQ6\r\n535 bad\r\n"),
}


@st.composite
def generated_flow(draw) -> Flow:
    """A conversation with hypothesis-made payloads: TLS flights (tests/test_tls_kernels),
    DNS messages over TCP or UDP (tests/test_dns_fuzz), mutated HTTP/SSH/FTP/SMTP text, or
    TCP segments of random sequence numbers and flags; TCP payloads split at random."""
    kind = draw(st.sampled_from(["tls", "dns_tcp", "dns_udp", "text", "segments"]))
    if kind == "dns_udp":
        return ETHERNET, [_udp(m, 33000, 53, draw(st.booleans()))
                          for m in draw(st.lists(dns_fuzz.mutated(), min_size=1, max_size=4))]
    if kind == "segments":
        flags = st.sampled_from(["S", "SA", "A", "PA", "FA", "R", "RA", "F", ""])
        return ETHERNET, _frames(
            Ether(**MACS) / (IP(src="192.0.2.10", dst="198.51.100.20") if way else
                             IP(src="198.51.100.20", dst="192.0.2.10"))
            / TCP(sport=40000 if way else port, dport=port if way else 40000, flags=flag,
                  seq=seq, ack=seq ^ 0x5555) / payload
            for way, flag, seq, payload, port in draw(st.lists(st.tuples(
                st.booleans(), flags, st.integers(0, 2**32 - 1), st.binary(max_size=64),
                st.sampled_from([80, 443, 22, 53])), max_size=30)))
    if kind == "tls":
        port, client, server = 443, draw(tls_fuzz.client_streams()), draw(tls_fuzz.server_streams())
    elif kind == "dns_tcp":
        port, client, server = 53, draw(dns_fuzz.tcp_segments()), draw(dns_fuzz.tcp_segments())
    else:
        port = draw(st.sampled_from(sorted(TEXT_SEEDS)))
        client, server = (mutate(text, draw(edits)) + draw(st.binary(max_size=20))
                          for text in TEXT_SEEDS[port])
    cuts = st.lists(st.integers(0, 1 << 16), max_size=4)
    exchanges = [(0, part) for part in _split(client, draw(cuts))]
    exchanges += [(1, part) for part in _split(server, draw(cuts))]
    if draw(st.booleans()):
        exchanges = draw(st.permutations(exchanges))
    return ETHERNET, _frames(tcp_session(exchanges, dport=port, handshake=draw(st.booleans()),
                                         close=draw(st.booleans())))


@st.composite
def hostile_flows(draw) -> list[Flow]:
    """A few conversations (valid seeds or generated), each frame maybe cut, byte-mutated,
    given a random tail, dropped or repeated."""
    flows = []
    picks = st.integers(0, len(seeds()) - 1) | generated_flow()
    for pick in draw(st.lists(picks, min_size=1, max_size=6)):
        flow = seeds()[pick] if isinstance(pick, int) else pick
        linktype, frames = readdressed(flow, len(flows))
        out = []
        for data in frames:
            action = draw(st.integers(0, 8))
            if action == 0:
                data = data[: draw(st.integers(0, len(data)))]
            elif action == 1:
                data = mutate(data, draw(edits))
            elif action == 2:
                data = data[: draw(st.integers(0, len(data)))] + draw(st.binary(max_size=64))
            elif action == 3:
                continue
            out += [data] * (2 if action == 4 else 1)
        flows.append((linktype, out))
    return flows


@st.composite
def hostile_captures(draw) -> tuple[bytes, str, int]:
    """(file bytes, file suffix, batch size): hostile flows in a pcap or pcapng whose
    record/block lengths, bytes or end may be damaged too."""
    pcapng, big_endian = draw(st.booleans()), draw(st.booleans())
    options = {}
    if pcapng and draw(st.booleans()):  # other packet blocks, a snaplen, a resolution
        options = {"blocks": tuple(draw(st.lists(st.sampled_from([6, 3, 2]), min_size=1,
                                                 max_size=3))),
                   "snaplen": draw(st.sampled_from([0, 1, 14, 60, 65535]) | lengths),
                   "tsresol": draw(st.none() | st.sampled_from([6, 9, 0x80 | 20, 19, 0x80 | 63]))}
    data = capture_file(draw(hostile_flows()), pcapng, big_endian, **options)
    order = ">" if big_endian and not pcapng else "<"
    if pcapng:
        starts, fields = block_offsets(data), [4, 20, 24]  # block length, EPB caplen/wirelen
    else:
        starts, fields = record_offsets(data, order), [8, 12]  # record caplen, wirelen
    for _ in range(draw(st.integers(0, 2))):
        data = with_field(data, starts, draw(st.integers(0, 1000)), draw(st.sampled_from(fields)),
                          draw(lengths), order)
    if draw(st.integers(0, 3)) == 0:
        data = mutate(data, draw(edits))
    if draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data, ".pcapng" if pcapng else ".pcap", draw(st.sampled_from(BATCHES))


# --- the checked run ------------------------------------------------------------------------------

def run_all(captures: list[Path], work: Path, examples: int) -> Tally:
    """Everything through the sensor: real captures and the seed conversations at every batch
    size, every cut of every seed frame, a flood of open conversations, then `examples`
    hypothesis-made hostile captures."""
    tally = Tally()
    seeds()  # built before hypothesis runs (scapy draws IP ids from `random`)
    start = time.monotonic()
    for path in captures:
        for batch in BATCHES:
            run_capture(path, batch, tally)
    tally.seconds["captures"] = time.monotonic() - start  # most of the kernels compile here
    cuts = [readdressed(flow, i) for i, flow in
            enumerate(cut for seed in seeds() for cut in every_cut(seed))]
    for name, flows, batches in (("seeds", seeds(), BATCHES), ("cuts", cuts, (65536, 97))):
        for suffix in (".pcap", ".pcapng"):
            path = work / f"{name}{suffix}"
            path.write_bytes(capture_file(flows, suffix == ".pcapng"))
            for batch in batches:
                run_capture(path, batch, tally)
    path = work / "flood.pcap"
    path.write_bytes(capture_file(flood(), pcapng=False))
    run_capture(path, 65536, tally)
    tally.seconds["cuts+flood"] = time.monotonic() - start - tally.seconds["captures"]

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(hostile_captures())
    def each_hostile_capture(capture: tuple[bytes, str, int]) -> None:
        data, suffix, batch = capture
        path = work / f"hostile{suffix}"
        path.write_bytes(data)
        run_capture(path, batch, tally)

    each_hostile_capture()
    tally.seconds["hypothesis"] = time.monotonic() - start - sum(tally.seconds.values())
    return tally
