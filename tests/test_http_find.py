"""The header-end search of the HTTP kernel (sensors.http_kernel._find_crlf2, a Horspool
skip over CR/LF) against bytes.find, and the header-line scan (one pass for the first ':'
and the line end) through parse_flows on header blocks made of CR, LF, ':' and letters."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.http import parse_messages
from sensors.http_kernel import F_FALLBACK, _find_crlf2, parse_flows

# the bytes that move the skip (CR, LF) and a few that do not
CRLF_HEAVY = st.binary(max_size=64).map(
    lambda raw: bytes(b"\r\n:a "[c % 5] for c in raw))


def _find(data: bytes, lo: int, hi: int) -> int:
    buf = np.frombuffer(data, dtype=np.uint8)
    return int(_find_crlf2(buf, lo, hi))


def test_find_crlf2_places():
    for data, want in [(b"", -1), (b"\r\n\r", -1), (b"\r\n\r\n", 0), (b"a\r\n\r\n", 1),
                       (b"\r\r\n\r\n", 1), (b"\n\r\n\r\n", 1), (b"ab\r\n\r\r\n\r\n", 5),
                       (b"Host: x\r\n\r\nGET", 7), (b"\r\n\r\n\r\n\r\n", 0)]:
        assert _find(data, 0, len(data)) == data.find(b"\r\n\r\n") == want, data


@settings(deadline=None)
@given(CRLF_HEAVY, st.integers(0, 70), st.integers(0, 70))
def test_find_crlf2_equals_bytes_find(data, lo, hi):
    lo, hi = min(lo, len(data)), min(hi, len(data))
    assert _find(data, lo, hi) == data.find(b"\r\n\r\n", lo, max(lo, hi))


@settings(deadline=None)
@given(st.lists(CRLF_HEAVY, min_size=1, max_size=6))
def test_header_lines_equal_reference(lines):
    request = b"GET /x HTTP/1.1\r\n" + b"\r\n".join(
        b"Host" + line if i % 2 else line for i, line in enumerate(lines)) + b"\r\n\r\n"
    data = request + request
    flows, messages = parse_flows(np.frombuffer(data, dtype=np.uint8),
                                  np.array([0, len(data)]), np.array([len(data), 0]),
                                  np.array([False, False]))
    requests, bad = parse_messages(data, True, False)
    if flows[0, F_FALLBACK]:
        return
    assert flows[0, 1] == len(requests)
    assert bool(flows[0, 4]) == bad
    for row, message in zip(messages, requests, strict=True):
        assert row[1] == message.start
        host = message.headers.get("host")
        got = data[row[10]:row[11]].decode("utf-8", "replace") if row[10] >= 0 else None
        assert got == host
