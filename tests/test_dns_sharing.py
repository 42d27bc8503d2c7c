"""DNS event objects made once per distinct value (sensors/dns.py, sensors/dns_kernel.py):
answer lists shared between equal answer sets, Community IDs computed once per flow, and the
owner-name shortcut of the parse kernel - each compared with the plain per-row result it
replaces (answer objects kept across batches: tests/test_dns_objects.py)."""

from __future__ import annotations

import random
import struct

import dns_reference as ref
import numpy as np
import pytest
from test_dns import QUESTION_EXAMPLE, events_for, header, udp_frame

from sensors import dns_kernel
from sensors.community_id import community_id_column
from sensors.dns import MalformedDNS, flow_community_ids, parse_message
from sensors.packets import IP_DTYPE, ip_to_bytes16


def test_query_and_response_rows_share_nothing_they_should_not():
    response = header(an=1) + QUESTION_EXAMPLE + b"\xc0\x0c" + struct.pack(
        "!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 1])
    other = header(an=1) + QUESTION_EXAMPLE + b"\xc0\x0c" + struct.pack(
        "!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 2])
    query = header(flags=0x0100) + QUESTION_EXAMPLE
    frames = [udp_frame(query, response=False), udp_frame(response), udp_frame(query, False),
              udp_frame(response), udp_frame(other)]
    answers = events_for(frames).columns["answers"].tolist()
    a1 = {"name": "example.com", "type": "A", "class": "IN", "ttl": 300, "data": "192.0.2.1"}
    assert answers == [[], [a1], [], [a1], [dict(a1, data="192.0.2.2")]]
    assert answers[1] is answers[3] and answers[4] is not answers[1]


def _addresses(rng: random.Random, n: int) -> np.ndarray:
    pool = ["192.0.2.1", "192.0.2.53", "10.0.0.1", "1.0.0.10", "2001:db8::1", "2001:db8::53",
            "::ffff:10.0.0.1"]
    return np.array([np.frombuffer(ip_to_bytes16(rng.choice(pool)), IP_DTYPE)[0]
                     for _ in range(n)], dtype=IP_DTYPE)


@pytest.mark.parametrize("seed", range(5))
def test_flow_community_ids_equal_the_per_row_column(seed):
    rng = random.Random(seed)
    n = 300
    src, dst = _addresses(rng, n), _addresses(rng, n)
    transport = np.array([rng.choice([6, 17]) for _ in range(n)], dtype=np.uint8)
    sport = np.array([rng.choice([53, 40000, 40001]) for _ in range(n)], dtype=np.uint16)
    dport = np.array([rng.choice([53, 40000]) for _ in range(n)], dtype=np.uint16)
    # Half the rows: the reverse direction of an earlier row (a query and its response).
    back = np.array(rng.sample(range(n), n // 2))
    src[back], dst[back] = dst[back // 2].copy(), src[back // 2].copy()
    sport[back], dport[back] = dport[back // 2].copy(), sport[back // 2].copy()
    transport[back] = transport[back // 2]
    expected = community_id_column(src, dst, transport, sport, dport).tolist()
    got = flow_community_ids(src, dst, transport, sport, dport, both_directions=True)
    assert got.dtype == object and got.tolist() == expected


def test_flow_groups_directions():
    ip = [np.frombuffer(ip_to_bytes16(a), IP_DTYPE)[0] for a in ("10.0.0.1", "10.0.0.2")]
    src = np.array([ip[0], ip[1], ip[0], ip[0]], dtype=IP_DTYPE)
    dst = np.array([ip[1], ip[0], ip[1], ip[1]], dtype=IP_DTYPE)
    transport = np.array([17, 17, 17, 6], dtype=np.uint8)
    sport = np.array([40000, 53, 40000, 40000], dtype=np.uint16)
    dport = np.array([53, 40000, 53, 53], dtype=np.uint16)
    pairs = (src.view(np.uint64).reshape(-1, 2), dst.view(np.uint64).reshape(-1, 2))
    first, group = dns_kernel.flow_groups(*pairs, transport, sport, dport, True)
    assert first.tolist() == [0, 3] and group.tolist() == [0, 0, 0, 1]
    first, group = dns_kernel.flow_groups(*pairs, transport, sport, dport, False)
    assert first.tolist() == [0, 1, 3] and group.tolist() == [0, 1, 0, 2]


def _reference_or_none(msg: bytes):
    try:
        return ref.parse_message(msg)
    except ref.MalformedDNS:
        return None


def _parsed_or_none(msg: bytes):
    try:
        return parse_message(msg)
    except MalformedDNS:
        return None


RR_A = struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])


@pytest.mark.parametrize("message", [
    # the usual owner: pointer to the question name
    header(an=2) + QUESTION_EXAMPLE + b"\xc0\x0c" + RR_A + b"\xc0\x0c" + RR_A,
    # no question: offset 12 is the answer itself, so the pointer is a loop (damaged)
    header(qd=0, an=1) + b"\xc0\x0c" + RR_A,
    # question name that is itself a pointer into the header (arcount's low byte 0: root)
    header(an=1) + b"\xc0\x0b\x00\x01\x00\x01" + b"\xc0\x0c" + RR_A,
    # pointer cut by the end of the message
    header(an=1) + QUESTION_EXAMPLE + b"\xc0",
    # pointer to offset 12 + 256 (only the low byte matches)
    header(an=1) + QUESTION_EXAMPLE + b"\xc1\x0c" + RR_A,
    # owner written out again: the same bytes as the question name
    header(an=2) + QUESTION_EXAMPLE + QUESTION_EXAMPLE[:-4] + RR_A
    + b"\x07example\x03con\x00" + RR_A,
    # question name with a pointer into the header, repeated byte for byte by the owner
    header(an=1) + b"\x01a\xc0\x0b\x00\x01\x00\x01" + b"\x01a\xc0\x0b" + RR_A,
    # owner cut by the end of the message after a matching start
    header(an=1) + QUESTION_EXAMPLE + QUESTION_EXAMPLE[:6],
    # no question, an answer whose owner happens to be the bytes at offset 12
    header(qd=0, an=2) + b"\x00" + RR_A + b"\x00" + RR_A,
    # long question name (not interned) answered through the pointer
    header(an=1) + b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x00\x00\x10\x00\x01"
    + b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 5, 3) + b"\x02hi",
    # ... and written out again
    header(an=1) + b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x00\x00\x10\x00\x01"
    + b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x00" + RR_A,
])
def test_owner_pointer_shortcut_equals_the_reference(message):
    assert _parsed_or_none(message) == _reference_or_none(message)
