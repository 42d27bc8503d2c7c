"""frame_records copies of a server's messages only what server_flights reads (ServerHello
and Certificate whole, a ServerKeyExchange's first 3 bytes, any other message's header with
length 0): server_flights finds the same hello fields, ALPN, leaf certificate, server key,
curve and pre_shared_key as on every byte, on generated flights with other messages (key
exchange, hello done, unknown types; some cut short) between them, split into records at
random points, mutated and cut."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tls_kernels import as_records, client_streams, mutate, server_streams

from sensors import tls


@st.composite
def flights(draw) -> bytes:
    """A server_streams flight with other handshake messages put before, between and after
    its messages (their bodies maybe declared longer than what follows), re-split."""
    data = draw(server_streams())
    messages = []
    pos = 0
    body = b"".join(data[p + 5 : p + 5 + int.from_bytes(data[p + 3 : p + 5], "big")]
                    for p in _records(data))
    while pos + 4 <= len(body):  # the flight's own messages, as framed
        stop = pos + 4 + int.from_bytes(body[pos + 1 : pos + 4], "big")
        messages.append(body[pos:stop])
        pos = stop
    tail = body[pos:]
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from([12, 12, 14, 22, 4, 0x73, 2, 11]))
        payload = draw(st.binary(max_size=40) | st.sampled_from([b"\x03\x00\x1d", b"\x03\x00"]))
        declared = len(payload) + draw(st.sampled_from([0, 0, 0, 1, 500]))
        other = bytes([kind]) + declared.to_bytes(3, "big") + payload
        messages.insert(draw(st.integers(0, len(messages))), other)
    stream = b"".join(messages) + tail
    out = as_records(stream, draw(st.lists(st.integers(0, 600), max_size=6)), b"\x03\x03") \
        if stream else b""
    out = mutate(out, draw(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 255)),
                                    max_size=2)))
    return out[: draw(st.integers(0, len(out)))] if draw(st.booleans()) else out


def _records(data: bytes) -> list[int]:
    """Positions of the whole handshake records at the start of data."""
    out, pos = [], 0
    while pos + 5 <= len(data) and data[pos] == 22:
        stop = pos + 5 + int.from_bytes(data[pos + 3 : pos + 5], "big")
        if stop > len(data):
            break
        out.append(pos)
        pos = stop
    return out


def flight_view(data: bytes, servers_from: int):
    hs, start, stop, flags = tls.frame_records(
        np.frombuffer(data, np.uint8), np.zeros(1, np.int64), np.array([len(data)], np.int64),
        servers_from)
    (found, malformed, version, cipher, selected, alpn_start, alpn_stop, cert_start, cert_stop,
     keys, key_start, key_stop, curve, psk) = tls.server_flights(hs, start, stop)

    def cut(src, a, b):
        return src[a:b].tobytes() if a >= 0 else None

    return (int(flags[0]), bool(found[0]), bool(malformed[0]), int(version[0]), int(cipher[0]),
            int(selected[0]), cut(hs, alpn_start[0], alpn_stop[0]),
            cut(hs, cert_start[0], cert_stop[0]), cut(keys, key_start[0], key_stop[0]),
            int(curve[0]), bool(psk[0]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flights())
def test_server_flight_reads_the_same_without_the_other_messages(data):
    assert flight_view(data, 0) == flight_view(data, -1)


def test_other_messages_are_not_copied():
    body = bytes([2]) + (40).to_bytes(3, "big") + bytes(40)
    exchange = bytes([12]) + (300).to_bytes(3, "big") + bytes(300)
    done = bytes([14, 0, 0, 0])
    data = as_records(body + exchange + done, [50], b"\x03\x03")
    hs, start, stop, _ = tls.frame_records(np.frombuffer(data, np.uint8),
                                           np.zeros(1, np.int64),
                                           np.array([len(data)], np.int64), 0)
    # the key exchange's first 3 bytes (a named curve's), its length set to that
    assert hs[start[0]:stop[0]].tobytes() == body + bytes([12, 0, 0, 3, 0, 0, 0]) + done


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(client_streams(), server_streams() | st.just(b"")), min_size=1,
                max_size=5))
def test_event_columns_of_a_batch_equal_each_flow_alone(flows):
    """Server columns (JA3S, cipher, ALPN chosen) are computed for the flows with a
    ServerHello only; "" elsewhere, as for each flow on its own."""
    parsed = tls.parse_flows([c for c, _ in flows], [s for _, s in flows])
    rows = np.flatnonzero(parsed.status == tls.HELLO_OK)
    together = tls.event_columns(parsed, rows)
    for k, i in enumerate(rows.tolist()):
        alone = tls.parse_flows([flows[i][0]], [flows[i][1]])
        one = tls.event_columns(alone, [0])
        for name, column in together.items():
            assert column[k] == one[name][0] and type(column[k]) is type(one[name][0]), name
