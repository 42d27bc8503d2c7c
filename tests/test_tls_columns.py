"""TLS event columns built once per distinct value: _names (16-bit codes through a flag
table, anything else through np.unique) and _distinct_texts (SNI / ALPN text decoded once
per distinct slice) give what one call per row gives."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tls_kernels import client_streams, server_streams

from sensors import tls


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF) | st.sampled_from([0x0303, 0x0304, 0x1301]),
                max_size=40),
       st.lists(st.booleans(), max_size=40), st.booleans())
def test_names_per_distinct_code(codes, where, odd):
    if odd:  # outside 16 bits: the np.unique path
        codes = [*codes, 1 << 20, -7]
    where = (where + [True] * len(codes))[: len(codes)]
    calls: list[int] = []

    def name(code: int) -> str:
        calls.append(code)
        return tls.cipher_name(code)

    array = np.array(codes, dtype=np.int64)
    got = tls._names(array, name, np.array(where, dtype=bool))
    assert got.dtype == object and got.shape == (len(codes),)
    assert got.tolist() == [tls.cipher_name(c) if w else ""
                            for c, w in zip(codes, where, strict=True)]
    assert len(calls) == len(set(calls))  # once per distinct code
    assert set(calls) >= {c for c, w in zip(codes, where, strict=True) if w}
    assert tls._names(array, tls.version_name).tolist() == [tls.version_name(c) for c in codes]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=48),
       st.lists(st.tuples(st.integers(-3, 50), st.integers(-3, 50)), max_size=12),
       st.booleans(), st.booleans())
def test_distinct_texts_equal_ascii_slices(data, spans, lower, newlines):
    if newlines:
        data = data.replace(b"a", b"\n")
    src = np.frombuffer(data, np.uint8)
    starts = np.array([a for a, _ in spans], np.int64)
    stops = np.array([b for _, b in spans], np.int64)
    got = tls._distinct_texts(src, starts, stops, lower)
    assert got.dtype == object and got.shape == (len(spans),)
    assert got.tolist() == tls._ascii_slices(src, starts, stops, lower)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(client_streams(), server_streams()), min_size=1, max_size=4))
def test_event_columns_take_an_index_array_or_a_list(flows):
    """The analyzer hands event_columns its index array (no list round trip)."""
    parsed = tls.parse_flows([c for c, _ in flows], [s for _, s in flows])
    at = np.flatnonzero(parsed.status == tls.HELLO_OK)
    by_array, by_list = tls.event_columns(parsed, at), tls.event_columns(parsed, at.tolist())
    assert list(by_array) == list(by_list)
    for name, column in by_array.items():
        assert column.dtype == by_list[name].dtype and column.tolist() == by_list[name].tolist()
