"""Fuzzing: hostile payloads into the HTTP/TLS parsers and random segment orders into the
TCP stream collector: no exception, bounded state, order-independent reassembly."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packet_builders import batch_from_scapy
from test_tcp_stream import CLIENT, SERVER, seg
from test_tls import GREASE_HELLO

from sensors.decode import decode
from sensors.http import parse_messages
from sensors.tcp_stream import StreamCollector
from sensors.tls import MalformedTLS, parse_handshake

HTTP_SEED = (b"GET /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"5\r\nhello\r\n0\r\n\r\nPOST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")


def mutate(seed: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(seed)
    for pos, value in edits:
        if data:
            data[pos % len(data)] = value
    return bytes(data)


edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(edits, st.integers(0, 400), st.booleans())
def test_http_parser_never_raises(changes, cut, ended):
    data = mutate(HTTP_SEED, changes)[:cut]
    for requests in (True, False):
        messages, _ = parse_messages(data, requests, ended)
        assert all(0 <= m.start < max(len(data), 1) for m in messages)


@settings(max_examples=300, deadline=None)
@given(edits, st.integers(0, 600), st.binary(max_size=300))
def test_tls_parser_never_raises_unexpectedly(changes, cut, server):
    client = mutate(GREASE_HELLO, changes)[:cut]
    try:
        parse_handshake(client, server)
    except MalformedTLS:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=300), st.integers(1, 40), st.randoms(use_true_random=False),
       st.integers(0, 3))
def test_collector_any_segment_order_gives_the_stream(payload, size, rng: random.Random, dups):
    parts = [(i, payload[i : i + size]) for i in range(0, len(payload), size)]
    order = parts + [rng.choice(parts) for _ in range(dups)]  # retransmissions
    rng.shuffle(order)
    pkts = [seg(CLIENT, SERVER, "S", 999, t=1.0)]
    pkts += [seg(CLIENT, SERVER, "PA", 1000 + off, 1, data, t=1.1) for off, data in order]
    collector = StreamCollector({80}, 4096, 10, 60, max_ooo_segments=1000)
    chunks = collector.feed(decode(batch_from_scapy(pkts))) + collector.flush()
    assert chunks[-1].client_data == payload
    assert collector.held_flows == 0 and collector.held_bytes == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 2**32 - 1), st.binary(max_size=64),
                          st.sampled_from(["PA", "S", "SA", "F", "R", "A"])), max_size=60))
def test_collector_random_segments_bounded(segments):
    collector = StreamCollector({80}, 128, max_flows=3, idle_timeout_s=60, max_bytes_total=600)
    pkts = []
    for i, (who, seq, data, flags) in enumerate(segments):
        client = (f"10.0.0.{who}", 40000 + who)
        src, dst = (client, SERVER) if i % 2 else (SERVER, client)
        pkts.append(seg(src, dst, flags, seq, seq ^ 0x5555, data, t=1.0 + i))
    for p in pkts:
        collector.feed(decode(batch_from_scapy([p])))
        assert collector.held_flows <= 3 and collector.held_bytes <= 600
    collector.flush()
    assert collector.held_flows == 0 and collector.held_bytes == 0


def test_non_ascii_digit_content_length_is_not_a_crash():
    """'¹' (latin-1 0xB9) passes str.isdigit() but int() refuses it: found by fuzzing the
    fusion adapters; the HTTP parser had the same pattern."""
    from sensors.http import parse_messages

    messages, _ = parse_messages(b"HTTP/1.1 200 OK\r\nContent-Length: \xb9\r\n\r\nabc",
                                 False, True)
    assert len(messages) <= 1
