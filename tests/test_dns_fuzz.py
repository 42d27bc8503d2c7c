"""Hostile input for the DNS parser: random payloads and mutations of valid messages never
raise, the compiled kernel (through sensors.dns) gives exactly what the pure-Python reference
parser (tests/dns_reference.py) gives, and what comes out stays bounded."""

from __future__ import annotations

import struct

import dns_reference as ref
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import DNS, DNSQR, DNSRR
from scapy.layers.dns import DNSRRMX, DNSRRSOA, DNSRRSRV

from pipeline.schema import validate_batch
from sensors.dns import (
    MAX_ANSWERS,
    MAX_HEX_BYTES,
    MAX_NAME_WIRE_LEN,
    MAX_TCP_MESSAGES,
    MAX_TEXT_BYTES,
    MalformedDNS,
    dns_events,
    parse_message,
)
from sensors.packets import IP_DTYPE, DecodedPackets, ip_to_bytes16

# Escaping turns one byte into at most 4 characters ("\\255").
MAX_NAME_TEXT = 4 * MAX_NAME_WIRE_LEN
# Longest rendered rdata: SOA (two names + five numbers), TXT or hex, each with "..." suffix.
MAX_DATA_TEXT = max(2 * MAX_NAME_TEXT + 6 * 11, 4 * MAX_TEXT_BYTES + 3, 2 * MAX_HEX_BYTES + 3)


def _valid_messages() -> list[bytes]:
    response = DNS(
        id=0xBEEF, qr=1, rd=1, ra=1, qd=DNSQR(qname="www.example.com"),
        an=[DNSRR(rrname="www.example.com", type="CNAME", rdata="edge.example.net"),
            DNSRR(rrname="edge.example.net", type="A", rdata="192.0.2.1"),
            DNSRR(rrname="edge.example.net", type="AAAA", rdata="2001:db8::1"),
            DNSRR(rrname="edge.example.net", type="TXT", rdata=[b"hello", b"\x00\xff"]),
            DNSRRMX(rrname="example.com", preference=5, exchange="mx.example.com"),
            DNSRRSOA(rrname="example.com", mname="ns.example.com", rname="h.example.com"),
            DNSRRSRV(rrname="_x._tcp.example.com", port=80, target="t.example.com"),
            DNSRR(rrname="example.com", type=65000, rdata=b"\x01\x02\x03")])
    return [bytes(response), bytes(response.compress()),
            bytes(DNS(id=1, rd=1, qd=DNSQR(qname="q.example.org", qtype="AAAA")))]


VALID = _valid_messages()


def test_mutation_seeds_parse_fully():
    # The mutations start from messages that exercise every rdata renderer.
    for msg in VALID[:2]:
        (_, _, qname, _, _, answers), damaged = parse_message(msg)
        assert qname == "www.example.com" and not damaged
        assert [a["type"] for a in answers] == ["CNAME", "A", "AAAA", "TXT", "MX", "SOA", "SRV",
                                                "TYPE65000"]
        assert answers[-1]["data"] == "010203"


def _reference(msg: bytes):
    """The reference parser's ((fields), damaged), or None when it finds msg malformed."""
    try:
        return ref.parse_message(msg)
    except ref.MalformedDNS:
        return None


def _check_parsed(msg: bytes) -> None:
    """parse_message (the kernel) raises nothing but MalformedDNS, agrees with the reference
    parser (same fields, same damage, malformed alike), and its output is bounded."""
    expected = _reference(msg)
    try:
        parsed = parse_message(msg)
    except MalformedDNS:
        assert expected is None
        return
    assert parsed == expected
    (dns_id, flags, qname, qtype, qclass, answers), damaged = parsed
    assert 0 <= dns_id <= 0xFFFF and 0 <= flags <= 0xFFFF
    assert 0 <= qtype <= 0xFFFF and 0 <= qclass <= 0xFFFF
    assert isinstance(damaged, bool)
    assert len(qname) <= MAX_NAME_TEXT and qname.isascii()
    assert len(answers) <= MAX_ANSWERS
    for answer in answers:
        assert set(answer) == {"name", "type", "class", "ttl", "data"}
        assert len(answer["name"]) <= MAX_NAME_TEXT and answer["name"].isascii()
        assert len(answer["data"]) <= MAX_DATA_TEXT and answer["data"].isascii()
        assert 0 <= answer["ttl"] <= 0xFFFFFFFF


@settings(max_examples=1000, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_random_payloads(msg):
    _check_parsed(msg)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.integers(0, 0xFFFF), st.integers(0, 80))
def test_random_bodies_behind_plausible_header(body, flags, ancount):
    # A believable header makes the parser go deep into names and records.
    _check_parsed(struct.pack("!HHHHHH", 1, flags, 1, ancount, 0, 0) + body)


@st.composite
def mutated(draw) -> bytes:
    msg = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "pointer"]))
        at = draw(st.integers(0, max(0, len(msg) - 1)))
        if not msg:
            break
        if op == "flip":
            msg[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            msg[at] = draw(st.integers(0, 255))
        elif op == "insert":
            msg[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del msg[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del msg[at:]
        else:  # a compression pointer to anywhere, loops and forward jumps included
            msg[at : at + 2] = struct.pack("!H", 0xC000 | draw(st.integers(0, 0x3FFF)))
    return bytes(msg)


@settings(max_examples=1000, deadline=None)
@given(mutated())
def test_mutations_of_valid_messages(msg):
    _check_parsed(msg)


def _decoded_udp53(payloads: list[bytes], transport: int = 17) -> DecodedPackets:
    """Minimal DecodedPackets: one client->resolver packet per payload, data = payloads."""
    n = len(payloads)
    lengths = np.array([len(p) for p in payloads], dtype=np.int32)
    offsets = np.zeros(n, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths, dtype=np.int64)[:-1]
    zeros = {name: np.zeros(n, dtype=dt) for name, dt in (
        ("wirelen", np.uint32), ("caplen", np.uint32), ("interface", np.uint16),
        ("vlan", np.uint16), ("tcp_flags", np.uint8), ("icmp_type", np.uint8),
        ("icmp_code", np.uint8), ("ip_total_len", np.uint32))}
    return DecodedPackets(
        ts_ns=np.arange(1, n + 1, dtype=np.int64) * 1_000_000,
        ethertype=np.full(n, 0x0800, dtype=np.uint16),
        ip_version=np.full(n, 4, dtype=np.uint8),
        src_ip=np.full(n, np.frombuffer(ip_to_bytes16("192.0.2.1"), IP_DTYPE)[0]),
        dst_ip=np.full(n, np.frombuffer(ip_to_bytes16("192.0.2.53"), IP_DTYPE)[0]),
        transport=np.full(n, transport, dtype=np.uint8),
        src_port=np.full(n, 33000, dtype=np.uint16),
        dst_port=np.full(n, 53, dtype=np.uint16),
        payload_offset=offsets,
        payload_len=lengths,
        data=np.frombuffer(b"".join(payloads), dtype=np.uint8),
        **zeros,
    )


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(st.binary(max_size=300), mutated()), min_size=1, max_size=30))
def test_dns_events_accounts_for_every_udp_message(payloads):
    stats: dict[str, int] = {}
    batch = dns_events(_decoded_udp53(payloads), "fuzz", "lab", stats=stats)
    candidates = sum(len(p) >= 12 for p in payloads)
    events = 0 if batch is None else len(batch)
    if batch is not None:
        validate_batch(batch)
    # Every UDP candidate is either an event or counted malformed.
    assert events + stats.get("dns_malformed", 0) == candidates
    assert stats.get("dns_messages", 0) == events


@st.composite
def tcp_segments(draw) -> bytes:
    """Random bytes, or length-prefixed (mutated) messages back to back, the prefixes
    sometimes wrong, the segment sometimes cut."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    segment = b""
    for msg in draw(st.lists(st.one_of(st.sampled_from(VALID), mutated()), max_size=20)):
        prefix = len(msg) + draw(st.sampled_from([0, 0, 0, -1, 1, -len(msg)]))
        segment += struct.pack("!H", max(prefix, 0)) + msg
    return segment[: draw(st.integers(0, len(segment)))] if draw(st.booleans()) else segment


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(tcp_segments(), min_size=1, max_size=10))
def test_dns_events_tcp_segments(payloads):
    # As TCP segments, payloads are read through their length prefixes: the events are the
    # reference's messages of each segment in order, at most MAX_TCP_MESSAGES per segment.
    payloads = [p for p in payloads if len(p) >= 14]  # what dns_kernel.port_candidates selects
    if not payloads:
        return
    stats: dict[str, int] = {}
    batch = dns_events(_decoded_udp53(payloads, transport=6), "fuzz", "lab", stats=stats)
    expected, incomplete, malformed = [], 0, 0
    for payload in payloads:
        messages, cut = ref.tcp_messages(payload)
        incomplete += cut
        for msg in messages:
            parsed = _reference(msg)
            if parsed is None:
                malformed += 1
            else:
                expected.append(parsed[0])
    assert stats.get("dns_tcp_incomplete", 0) == incomplete
    assert stats.get("dns_malformed", 0) == malformed
    if batch is None:
        assert not expected
        return
    validate_batch(batch)
    assert len(batch) <= MAX_TCP_MESSAGES * len(payloads)
    assert _event_fields(batch) == [tuple(fields) for fields in expected]


def _event_fields(batch) -> list[tuple]:
    return list(zip(
        batch.columns["dns_id"].tolist(), batch.columns["flags"].tolist(),
        batch.columns["qname"].tolist(), batch.columns["qtype"].tolist(),
        batch.columns["qclass"].tolist(), batch.columns["answers"].tolist(), strict=True))


@st.composite
def label_walks(draw) -> bytes:
    """A header with 0-3 questions, then label runs that are mostly plausible: lengths up to
    70 (legal ones and reserved/pointer bytes), names near the 255-byte limit, a type/class
    that may be cut short, and records behind."""
    header = struct.pack("!HHHHHH", draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)),
                         draw(st.integers(0, 3)), draw(st.integers(0, 3)), 0, 0)
    body = bytearray()
    for _ in range(draw(st.integers(0, 70))):
        size = draw(st.one_of(st.integers(0, 6), st.integers(60, 70), st.just(0xC0)))
        body.append(size)
        body += draw(st.binary(min_size=0, max_size=min(size, 63) + 2)) if size else b""
        if size == 0 and draw(st.booleans()):
            body += draw(st.binary(min_size=0, max_size=14))  # type, class, records...
    return header + bytes(body)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(st.binary(max_size=300), mutated(), st.sampled_from(VALID),
                          label_walks()), min_size=1, max_size=30))
def test_batch_kernel_equals_the_reference_parser(payloads):
    # dns_events parses every message of the batch in one kernel call; every event must
    # equal what the reference parser gives for that payload alone, in packet order, and
    # the messages it refuses must be exactly those the reference rejects.
    stats: dict[str, int] = {}
    batch = dns_events(_decoded_udp53(payloads), "fuzz", "lab", stats=stats)
    expected, malformed, damaged = [], 0, 0
    for msg in payloads:
        if len(msg) < 12:
            continue
        parsed = _reference(msg)
        if parsed is None:
            malformed += 1
            continue
        expected.append(parsed[0])
        damaged += parsed[1]
    got = [] if batch is None else _event_fields(batch)
    assert got == [tuple(fields) for fields in expected]
    assert stats.get("dns_malformed", 0) == malformed
    assert stats.get("dns_answers_damaged", 0) == damaged


def test_names_at_the_length_limit():
    # 255 wire bytes is the longest legal name (RFC 1035); 256 is malformed. The kernel
    # must agree with the reference on both sides of the limit.
    def query(labels: list[int]) -> bytes:
        name = b"".join(bytes([n]) + b"a" * n for n in labels) + b"\x00"
        return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"

    longest = query([63, 63, 63, 61])  # 1 + 64 * 3 + 62 = 255
    too_long = query([63, 63, 63, 62])
    stats: dict[str, int] = {}
    batch = dns_events(_decoded_udp53([longest, too_long]), "fuzz", "lab", stats=stats)
    assert batch is not None and len(batch) == 1 and stats["dns_malformed"] == 1
    assert batch.columns["qname"][0] == ref.parse_message(longest)[0][2]
    assert len(batch.columns["qname"][0]) == 253
