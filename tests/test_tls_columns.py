"""TLS event columns built once per distinct value: _names (16-bit codes through a sparse
index, anything else through np.unique) and _hs_columns (SNI / ALPN text and certificate
columns made once per distinct slice) give what one call per row gives."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tls_kernels import client_streams, server_streams

from sensors import tls
from sensors.http_kernel import distinct_slice_ids


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
       st.lists(st.tuples(*[st.tuples(st.integers(-3, 50), st.integers(-3, 50))] * 3),
                max_size=12),
       st.booleans())
def test_hs_columns_equal_each_row_alone(data, rows, newlines):
    """SNI / ALPN columns numbered by one two-column table and leaves by distinct_slice_ids
    (memo by tail) equal each row's own texts: the columns never share numbers, even for
    equal bytes."""
    if newlines:
        data = data.replace(b"a", b"\n")
    src = np.frombuffer(data, np.uint8)
    bounds = np.array(rows, np.int64).reshape(-1, 3, 2)
    starts, stops = bounds[:, :2, 0].copy(), bounds[:, :2, 1].copy()
    leaf_lo, leaf_hi = bounds[:, 2, 0].copy(), bounds[:, 2, 1].copy()
    got = tls._hs_columns(src, starts, stops, leaf_lo, leaf_hi)
    assert all(column.dtype == object and column.shape == (len(rows),) for column in got)
    assert got[0].tolist() == tls._ascii_slices(src, starts[:, 0], stops[:, 0], True)
    assert got[1].tolist() == tls._ascii_slices(src, starts[:, 1], stops[:, 1], False)
    for i, (a, b) in enumerate(zip(leaf_lo.tolist(), leaf_hi.tolist(), strict=True)):
        der = data[max(a, 0) : max(b, 0)] if b > a else b""
        expected = tls.certificate(der) if der else ("", "", "")
        assert (got[2][i], got[3][i], got[4][i]) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=80), min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(0, 5), st.integers(0, 79), st.integers(0, 255)),
                max_size=40))
def test_leaf_numbers_exact(pool, picks):
    """Leaves (distinct_slice_ids with its memo keyed by length and last bytes) are numbered
    equal exactly when their bytes are equal, in first-seen order, whatever the memo
    guesses: slices of a small pool repeat (memo hits), some with one byte changed (same
    length and often the same last bytes: wrong guesses)."""
    parts = []
    for which, at, value in picks:
        piece = bytearray(pool[which % len(pool)])
        if piece and value % 3 == 0:
            piece[at % len(piece)] = value
        parts.append(bytes(piece))
    src = np.frombuffer(b"".join(parts), np.uint8)
    sizes = np.array([len(p) for p in parts], np.int64)
    stops = np.cumsum(sizes)
    starts = stops - sizes
    ids, first = distinct_slice_ids(src, starts, stops, by_tail=True)
    seen: dict[bytes, int] = {}
    expected = [seen.setdefault(p, len(seen)) for p in parts]
    assert ids.tolist() == expected
    assert [parts[i] for i in first.tolist()] == list(seen)


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
