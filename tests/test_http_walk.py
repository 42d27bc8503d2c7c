"""The HTTP kernel's one-walk header block (sensors.http_kernel._walk: LF to LF, the block's
end found as the first CRLFCRLF, the header lines read on the way) and its vector byte
search, against bytes.find and the pure-Python parser; the event fields and whole-flow pairs
built from the kernel's tables against the per-request reference rows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.http import _ParsedFlows, parse_messages, reference_parse, request_row
from sensors.http_kernel import (
    _LF,
    F_FALLBACK,
    MAX_HEADER_BYTES,
    _find_byte,
    parse_flows,
    ready_events,
)
from sensors.tcp_stream import StreamChunk

# CR, LF, ':' and space move the walk; letters make header names (Host, TE, length)
LINE_BYTES = st.binary(max_size=40).map(lambda raw: bytes(b"\r\n: aH"[c % 6] for c in raw))


def _chunk(client: bytes, server: bytes, final: bool = True) -> StreamChunk:
    key = (0, b"\x00" * 16, 40000, b"\x01" * 16, 80)
    return StreamChunk(key=key, client_ip=key[1], server_ip=key[3], client_port=40000,
                       server_port=80, vlan=0, client_by="syn", start_ts=1, last_ts=9,
                       first_ts=(1, 2), data=(client, server), ended=(True, True),
                       capped=(False, False), gap=(False, False), final=final, reason="fin",
                       packets=[(3, 0, len(client)), (4, 1, len(server))])


def _rows(parsed: _ParsedFlows, index: int, c: StreamChunk) -> list[dict]:
    n, _, _, _, _, row_of = parsed.flow(index, c)
    return [row_of(i) for i in range(n)]


def _reference_rows(c: StreamChunk) -> list[dict]:
    requests, _, responses, _ = reference_parse(c)
    return [request_row(r, responses[i] if i < len(responses) else None)
            for i, r in enumerate(requests)]


@settings(deadline=None)
@given(st.binary(max_size=80).map(lambda raw: bytes(b"\na\r\n"[c % 4] if c < 128 else c
                                                    for c in raw)),
       st.integers(0, 90), st.integers(0, 90))
def test_find_lf_equals_bytes_find(data, lo, hi):
    buf = np.frombuffer(data, dtype=np.uint8)
    lo, hi = min(lo, len(data)), min(hi, len(data))
    assert int(_find_byte(buf, lo, hi, _LF)) == data.find(b"\n", lo, max(lo, hi))


@settings(deadline=None)
@given(st.binary(max_size=300).map(lambda raw: bytes(b":a\n"[c % 3] if c < 40 else 97
                                                     for c in raw)),
       st.integers(0, 320), st.integers(0, 320), st.sampled_from([b":", b"\n", b"a"]))
def test_find_byte_equals_bytes_find(data, lo, hi, byte):
    """The 64-byte mask steps, the bytes past `hi` it reads, the buffer's last 63 bytes
    walked one by one."""
    buf = np.frombuffer(data, dtype=np.uint8)
    lo, hi = min(lo, len(data)), min(hi, len(data))
    assert int(_find_byte(buf, lo, hi, np.uint8(byte[0]))) == data.find(byte, lo, max(lo, hi))


@settings(deadline=None)
@given(st.lists(LINE_BYTES, min_size=1, max_size=8), st.sampled_from([b"\r\n", b"\n"]))
def test_header_blocks_of_mixed_line_ends_equal_reference(lines, join):
    """Bare LF lines, "\\n\\n" before the CRLFCRLF, CRs inside lines: the walk must end the
    block where bytes.find(b"\\r\\n\\r\\n") does and read the same first header of each."""
    head = b"GET /x HTTP/1.1" + join + join.join(lines) + b"\r\n\r\n"
    server = b"HTTP/1.1 200 OK\r\n" + join.join(lines) + b"\r\n\r\n"
    c = _chunk(head + head, server + server)
    parsed = _ParsedFlows([c])
    if parsed.table[0, F_FALLBACK]:
        return
    assert _rows(parsed, 0, c) == _reference_rows(c)


def test_header_end_at_the_window_edge():
    """A CRLFCRLF ending exactly at MAX_HEADER_BYTES from the message start is found; one
    byte later it is not (then the header is too long: malformed), as parse_messages."""
    for pad in (-1, 0, 1):
        filler = b"X-Pad: " + b"p" * (MAX_HEADER_BYTES - 40 + pad) + b"\r\n"
        head = b"GET / HTTP/1.1\r\nHost: h\r\n" + filler
        head += b"Z" * (MAX_HEADER_BYTES - len(head) - 4 + pad) + b"\r\n\r\n"
        data = head + b"GET /2 HTTP/1.1\r\n\r\n"
        flows, _ = parse_flows(np.frombuffer(data, dtype=np.uint8), np.array([0, len(data)]),
                               np.array([len(data), 0]), np.array([True, True]))
        requests, bad = parse_messages(data, True, True)
        assert (int(flows[0, 1]), bool(flows[0, 4])) == (len(requests), bad), pad


def test_ready_events_of_whole_flows_pair_by_order():
    chunks = [_chunk(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
                     b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
              _chunk(b"not http\r\n\r\n", b""),
              _chunk(b"HEAD /c HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 204\r\n\r\n")]
    parsed = _ParsedFlows(chunks)
    done = np.array([0, 0, -1])  # the third flow left to the caller
    final = np.ones(3, dtype=bool)
    bad, flow, requests, responses, offsets, upto = ready_events(
        parsed.table, parsed.messages, done, np.zeros(3, dtype=bool), final,
        np.zeros(3, dtype=bool))
    assert upto.tolist() == [2, 0, -1]
    assert bad == 1  # "not http": a malformed request side
    assert flow.tolist() == [0, 0]
    assert offsets.tolist() == [0, 19]
    assert responses[1] == -1 and responses[0] >= 0
    got = parsed.rows(requests.tolist(), responses.tolist())
    assert got == _reference_rows(chunks[0])
    assert parsed.rows([], []) == []
