"""Property tests for sensors/decode.py: hostile bytes never make the decoder raise, read
outside a packet, or let one packet's bytes leak into another packet's columns."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packet_builders import batch_from_frames
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import ARP, GRE, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from sensors.decode import decode, decode_columnwise
from sensors.defrag import Defragmenter
from sensors.packets import DecodedPackets, PacketBatch

KNOWN_LINKTYPES = [0, 1, 101, 108, 113, 228, 229, 276]
linktypes = st.one_of(st.sampled_from(KNOWN_LINKTYPES), st.integers(0, 0xFFFF))

V4 = IP(src="192.0.2.1", dst="198.51.100.2", options=[]) / TCP(sport=1, dport=2, flags="S")
# Valid frames of every layer combination the decoder walks, to be cut and mutated.
TEMPLATES: list[tuple[bytes, int]] = [
    (bytes(Ether() / IP() / TCP(options=[("MSS", 1460)]) / b"payload"), 1),
    (bytes(Ether() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / IP() / UDP() / b"dns?"), 1),
    (bytes(Ether() / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / UDP() / b"x"), 1),
    (bytes(Ether() / IPv6() / IPv6ExtHdrFragment(offset=3) / b"fragment-data"), 1),
    (bytes(Ether() / IP(flags="MF", frag=0) / ICMP() / b"ping"), 1),
    (bytes(Ether() / ARP()), 1),
    (bytes(CookedLinux(proto=0x0800) / V4), 113),
    (bytes(CookedLinuxV2(proto=0x86DD) / IPv6() / ICMPv6EchoRequest()), 276),
    (bytes(V4), 101),
    (bytes(IPv6() / TCP()), 229),
    (b"\x02\x00\x00\x00" + bytes(V4), 0),
    (b"\x00\x00\x00\x1e" + bytes(IPv6() / UDP()), 108),
    # the compiled common case (sensors.decode._decode_common) and its edges
    (bytes(Ether() / Dot1Q(vlan=7) / IP() / TCP(flags="PA") / b"GET / HTTP/1.1\r\n"), 1),
    (bytes(Ether() / IPv6() / TCP(dataofs=6, options=[("MSS", 1400)]) / (b"x" * 9)), 1),
    (bytes(Ether() / IPv6() / ICMPv6EchoRequest() / b"echo"), 1),
    (bytes(Ether() / IP(proto=47) / b"gre-ish payload"), 1),
    (bytes(Ether() / IP(len=20) / UDP() / b"past the IP length"), 1),
    # tunnels (sensors.decode._decapsulate): the inner frame is decoded again
    (bytes(Ether() / IP() / GRE(key_present=1) / V4 / b"in gre"), 1),
    (bytes(Ether() / IP() / GRE(seqnum_present=1, proto=0x88BE) / (b"\x10" + bytes(7))
           / Ether() / Dot1Q(vlan=3) / V4), 1),
    (bytes(Ether() / IP() / UDP(dport=4789) / VXLAN() / Ether() / IPv6() / UDP() / b"x"), 1),
    (bytes(Ether() / IPv6() / UDP(dport=6081) / b"\x01\x00\x65\x58\x00\x00\x01\x00"
           / bytes(4) / Ether() / ARP()), 1),
    (bytes(Ether() / IP() / UDP(dport=2152) / b"\x34\xff\x00\x30\x00\x00\x00\x01\x00\x00\x00\x85"
           / b"\x01\x00\x00\x00" / V4), 1),
    (bytes(IP() / IP() / UDP(dport=4789) / VXLAN() / Ether() / IP() / GRE() / V4), 101),
    # the compiled tunnel pass (sensors.decode._decode_tunnel_rows) over every link type
    (bytes(CookedLinuxV2(proto=0x0800) / IP() / UDP(dport=4789) / VXLAN() / Ether() / V4), 276),
    (bytes(CookedLinux(proto=0x86DD) / IPv6(nh=4) / V4 / b"ip in ipv6"), 113),
    (bytes(IP() / GRE(proto=0x22EB) / (b"\x20" + bytes(10) + b"\x01" + bytes(8)) / Ether()
           / IPv6() / UDP() / b"erspan III"), 101),
    (bytes(IPv6() / UDP(dport=6081) / b"\x01\x00\x08\x00\x00\x00\x05\x00" / bytes(4) / V4), 229),
    (bytes(IP() / UDP(dport=2152) / b"\x32\xff\x00\x30\x00\x00\x00\x01\x00\x07\x00\x00" / V4),
     228),
]


def check_invariants(batch: PacketBatch, decoded: DecodedPackets) -> None:
    n = len(batch)
    assert len(decoded) == n
    size = batch.data.shape[0]
    start = np.clip(batch.offset.astype(np.int64), 0, size)
    end = np.minimum(start + batch.caplen.astype(np.int64), size)
    assert ((decoded.payload_offset >= 0) & (decoded.payload_offset <= size)).all()
    assert (decoded.payload_len >= 0).all()
    assert (decoded.payload_offset >= start).all()
    assert (decoded.payload_offset + decoded.payload_len <= end).all()
    assert np.isin(decoded.ip_version, [0, 4, 6]).all()
    not_ip = decoded.ip_version == 0
    assert (decoded.transport[not_ip] == 0).all()
    assert (decoded.src_port[not_ip] == 0).all() and (decoded.dst_port[not_ip] == 0).all()
    zero_ip = np.zeros(1, dtype=decoded.src_ip.dtype)[0]
    assert (decoded.src_ip[not_ip] == zero_ip).all() and (decoded.dst_ip[not_ip] == zero_ip).all()
    assert all(isinstance(v, int) and v > 0 for v in decoded.weird.values())
    frag = decoded.fragments
    if frag is not None:  # listed fragment data lies inside its packet, one entry per row
        assert np.all(np.diff(frag.row) > 0) and np.isin(frag.version, [4, 6]).all()
        assert np.all((frag.header_offset >= start[frag.row])
                      & (frag.header_offset <= frag.data_start)
                      & (frag.data_start <= frag.data_end) & (frag.data_end <= end[frag.row])
                      & (frag.data_end <= frag.claimed_end))


def check_same_as_columnwise(batch: PacketBatch, decoded: DecodedPackets) -> None:
    """The kernel + column-wise split gives exactly the column-wise decoder's result."""
    reference = decode_columnwise(batch)
    for name in [*COLUMNS, "payload_offset", "ts_ns", "wirelen", "caplen", "interface"]:
        got, want = getattr(decoded, name), getattr(reference, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    assert decoded.weird == reference.weird
    assert (decoded.fragments is None) == (reference.fragments is None)
    if decoded.fragments is not None:
        for field in dataclasses.fields(decoded.fragments):
            got, want = (getattr(f, field.name) for f in (decoded.fragments, reference.fragments))
            assert got.dtype == want.dtype and np.array_equal(got, want), field.name


COLUMNS = ["vlan", "ethertype", "ip_version", "src_ip", "dst_ip", "transport", "src_port",
           "dst_port", "tcp_flags", "icmp_type", "icmp_code", "ip_total_len", "payload_len",
           "tunnel_id"]


def check_rows_independent(frames: list[bytes], linktype: list[int], decoded) -> None:
    """Each packet decodes the same alone as inside the batch: no neighbour bytes read."""
    offsets = np.cumsum([0] + [len(f) for f in frames[:-1]])
    for i, (frame, lt) in enumerate(zip(frames, linktype, strict=True)):
        alone = decode(batch_from_frames([frame], linktype=[lt]))
        for name in COLUMNS:
            assert getattr(alone, name)[0] == getattr(decoded, name)[i], (i, name)
        assert alone.payload_offset[0] + offsets[i] == decoded.payload_offset[i]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.binary(max_size=120), linktypes), max_size=12))
def test_random_bytes_with_random_linktypes(packets):
    frames = [frame for frame, _ in packets]
    lts = [lt for _, lt in packets]
    batch = batch_from_frames(frames, linktype=lts)
    decoded = decode(batch)
    check_invariants(batch, decoded)
    check_rows_independent(frames, lts, decoded)
    check_same_as_columnwise(batch, decoded)


mutation = st.tuples(st.integers(0, 200), st.integers(0, 255))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(range(len(TEMPLATES))),
            st.integers(0, 200),  # cut length
            st.lists(mutation, max_size=4),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_truncated_and_mutated_valid_frames(specs):
    frames, lts = [], []
    for template, cut, mutations in specs:
        frame, lt = TEMPLATES[template]
        raw = bytearray(frame[:cut])
        for pos, value in mutations:
            if pos < len(raw):
                raw[pos] = value
        frames.append(bytes(raw))
        lts.append(lt)
    batch = batch_from_frames(frames, linktype=lts)
    decoded = decode(batch)
    check_invariants(batch, decoded)
    check_rows_independent(frames, lts, decoded)
    check_same_as_columnwise(batch, decoded)


# Tunnel headers around random bytes: flags, versions, lengths and protocol fields drawn too.
tunnel_headers = st.one_of(
    st.tuples(st.just(47), st.binary(min_size=4, max_size=24)),  # GRE (+ ERSPAN)
    st.tuples(st.just(47), st.tuples(st.integers(0, 0xFFFF), st.sampled_from(
        [0x0800, 0x86DD, 0x6558, 0x88BE, 0x22EB])).map(lambda t: t[0].to_bytes(2, "big")
                                                      + t[1].to_bytes(2, "big"))),
    st.tuples(st.just(4789), st.binary(min_size=0, max_size=8)),
    st.tuples(st.just(6081), st.binary(min_size=0, max_size=12)),
    st.tuples(st.just(2152), st.binary(min_size=0, max_size=20)),
    st.tuples(st.sampled_from([4, 41]), st.just(b"")),
)


def _tunnel_frame(header: tuple[int, bytes], inner: bytes) -> bytes:
    kind, head = header
    outer = Ether(dst="02:00:00:00:00:02") / IP(src="192.0.2.1", dst="192.0.2.2")
    if kind in (4, 41, 47):
        outer[IP].proto = kind
        return bytes(outer / (head + inner))
    return bytes(outer / UDP(sport=7, dport=kind) / (head + inner))


# The outer packet's link layer: Ethernet, or the same L3 bytes raw or Linux cooked (SLL/SLL2).
OUTER_LINKS = {1: b"", 101: None, 113: b"\x00\x04\x00\x01\x00\x06" + bytes(8) + b"\x08\x00",
               276: b"\x08\x00" + bytes(18)}


def _relinked(frame: bytes, linktype: int) -> bytes:
    if linktype == 1:
        return frame
    head = OUTER_LINKS[linktype]
    return frame[14:] if head is None else head + frame[14:]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(tunnel_headers, st.binary(max_size=80), st.integers(0, 200),
                          st.sampled_from(sorted(OUTER_LINKS))), min_size=1, max_size=10))
def test_random_bytes_in_tunnel_headers(packets):
    frames = [_relinked(_tunnel_frame(header, inner), lt)[:cut]
              for header, inner, cut, lt in packets]
    lts = [lt for *_, lt in packets]
    batch = batch_from_frames(frames, linktype=lts)
    decoded = decode(batch)
    check_invariants(batch, decoded)
    check_rows_independent(frames, lts, decoded)
    check_same_as_columnwise(batch, decoded)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=300),
    st.lists(st.tuples(st.integers(-50, 400), st.integers(0, 2**32 - 1), linktypes), max_size=8),
)
def test_inconsistent_offsets_from_a_broken_reader(data, rows):
    """Offsets/caplens pointing past the buffer must be clamped, never followed."""
    n = len(rows)
    batch = PacketBatch(
        data=np.frombuffer(data, dtype=np.uint8),
        offset=np.array([r[0] for r in rows], dtype=np.int64),
        caplen=np.array([r[1] for r in rows], dtype=np.uint32),
        wirelen=np.zeros(n, dtype=np.uint32),
        ts_ns=np.zeros(n, dtype=np.int64),
        linktype=np.array([r[2] for r in rows], dtype=np.uint16),
        interface=np.zeros(n, dtype=np.uint16),
    )
    decoded = decode(batch)
    check_invariants(batch, decoded)
    check_same_as_columnwise(batch, decoded)


# Fragment sets (sensors/defrag.py): the fragments of a datagram, plain or inside a VXLAN
# tunnel or in IPv6 after other extension headers, cut and mutated, in any order.
def _fragment_set(version: int, payload: bytes, size: int, wrap: str) -> list[bytes]:
    udp = UDP(sport=53, dport=5353) / payload
    if version == 4:
        pieces = fragment(IP(src="192.0.2.1", dst="192.0.2.9", id=7) / udp, size)
    else:
        pieces = fragment6(IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(id=9) / udp,
                           size + 64)
    if wrap == "vxlan":
        outer = Ether(dst="02:00:00:00:00:02") / IP() / UDP(sport=7, dport=4789) / VXLAN()
        return [bytes(outer / Ether(dst="02:00:00:00:00:02") / p) for p in pieces]
    if wrap == "vlan":
        return [bytes(Ether(dst="02:00:00:00:00:02") / Dot1Q(vlan=5) / p) for p in pieces]
    return [bytes(Ether(dst="02:00:00:00:00:02") / p) for p in pieces]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([4, 6]), st.binary(min_size=1, max_size=400), st.integers(8, 200),
       st.sampled_from(["plain", "vlan", "vxlan"]), st.randoms(use_true_random=False),
       st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=6),
       st.integers(0, 40))
def test_fragment_sets(version, payload, size, wrap, rng, mutations, cut_from_end):
    frames = _fragment_set(version, payload, size, wrap)
    fragmented = len(frames) > 1  # (else it fit in one packet)
    frames += [rng.choice(frames) for _ in range(rng.randint(0, 2))]
    rng.shuffle(frames)
    intact = decode(batch_from_frames(frames))
    assert (intact.fragments is not None) == fragmented
    raw = [bytearray(f) for f in frames]
    for pos, value in mutations:
        frame = raw[rng.randrange(len(raw))]
        if pos < len(frame):
            frame[pos] = value
    raw[0] = raw[0][: max(len(raw[0]) - cut_from_end, 0)]
    mutated = [bytes(f) for f in raw]
    lts = [1] * len(mutated)
    batch = batch_from_frames(mutated, linktype=lts)
    decoded = decode(batch)
    check_invariants(batch, decoded)
    check_rows_independent(mutated, lts, decoded)
    check_same_as_columnwise(batch, decoded)
    Defragmenter().process(decoded)  # never raises
