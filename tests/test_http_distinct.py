"""Slice helpers shared by the HTTP and TLS event columns (sensors.http_kernel): the
distinct-slice table (one kernel pass over several columns, row by row), the vectorizable
byte copy, and HTTP's text columns built from them (sensors.http._text_columns)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.http import _slice_texts, _text_columns
from sensors.http_kernel import (
    _slice_hash,
    distinct_slice_ids,
    distinct_slice_table,
    join_slices,
)

spans = st.lists(st.tuples(st.integers(-3, 40), st.integers(-3, 40)), max_size=12)


def _piece(raw: bytes, a: int, b: int) -> bytes:
    lo = min(max(a, 0), len(raw))
    return raw[lo : max(min(b, len(raw)), lo)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=32), spans, st.integers(1, 3))
def test_distinct_table_numbers_equal_slices_per_column(data, pairs, k):
    """ids[i, c] numbers (column, bytes) pairs in row-major first-seen order; equal bytes
    in different columns get different numbers; first[m] points at the first slice. The
    memo (by length) only decides which number is tried first."""
    rows = len(pairs) // k
    pairs = pairs[: rows * k]
    src = np.frombuffer(data, np.uint8)
    starts = np.array([a for a, _ in pairs], np.int64).reshape(rows, k)
    stops = np.array([b for _, b in pairs], np.int64).reshape(rows, k)
    ids, first = distinct_slice_table(src, starts, stops)
    index: dict = {}
    want = [[index.setdefault((c, _piece(data, int(starts[i, c]), int(stops[i, c]))),
                              len(index)) for c in range(k)] for i in range(rows)]
    assert ids.shape == (rows, k) and ids.tolist() == want
    assert [(int(f) % k, _piece(data, int(starts.reshape(-1)[f]), int(stops.reshape(-1)[f])))
            for f in first] == list(index)
    if k == 1:  # the one-column form
        ids1, first1 = distinct_slice_ids(src, starts.reshape(-1), stops.reshape(-1))
        assert ids1.tolist() == ids.reshape(-1).tolist() and first1.tolist() == first.tolist()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), st.integers(0, 8))
def test_slice_hash_depends_on_bytes_only(data, shift):
    """Equal bytes at different offsets (word loop and tail) hash alike."""
    src = np.frombuffer(bytes(shift) + data + data, np.uint8)
    n = len(data)
    assert _slice_hash(src, shift, shift + n) == _slice_hash(src, shift + n, shift + 2 * n)


def test_slice_hash_mixes_every_byte_into_the_low_bits():
    """The table's slot comes from the low bits: a change in any byte of a word moves them
    (without the final mix, bytes 1..7 of a word would never reach bit 0..7)."""
    base = np.zeros(16, np.uint8)
    low = _slice_hash(base, 0, 16) & np.uint64(0xFF)
    moved = 0
    for i in range(16):
        other = base.copy()
        other[i] = 1
        moved += (_slice_hash(other, 0, 16) & np.uint64(0xFF)) != low
    assert moved >= 14


def test_join_slices_clips_and_separates():
    src = np.frombuffer(b"abcdef", np.uint8)
    got = join_slices(src, np.array([0, 4, -2, 5, 3]), np.array([2, 9, 1, 3, 3]), 0x0A)
    assert got.tobytes() == b"ab\nef\na\n\n\n"


def test_text_columns_apply_each_columns_rule_to_its_own_values():
    """Equal bytes in two columns: each column gets its own text_of (a table shared across
    columns would hand one column the other's text)."""
    buf = np.frombuffer(b"Example.org:80|Example.org:80|text/HTML; x", np.uint8)
    starts = np.array([0, 15, -1], np.int64)
    stops = np.array([14, 29, 5], np.int64)
    plain, lower, absent = _text_columns(buf, [
        (starts, stops, None), (starts, stops, str.lower), (np.array([-1, 30, -1]),
                                                            np.array([0, 42, 0]), str.upper)])
    assert plain.tolist() == ["Example.org:80", "Example.org:80", ""]
    assert lower.tolist() == ["example.org:80", "example.org:80", ""]
    assert absent.tolist() == ["", "TEXT/HTML; X", ""]
    assert plain.dtype == object and all(type(v) is str for v in plain.tolist())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=48), spans, st.booleans())
def test_slice_texts_equal_one_decode_per_slice(data, pairs, newlines):
    """Distinct slices decoded once = every slice decoded alone (UTF-8, "replace"), also
    when a slice holds "\\n" (the split then falls back) or starts < 0 ("")."""
    if newlines:
        data = data.replace(b"a", b"\n")
    src = np.frombuffer(data, np.uint8)
    starts = np.array([a for a, _ in pairs], np.int64)
    stops = np.array([b for _, b in pairs], np.int64)
    got = _slice_texts(src, starts, stops, str.swapcase).tolist()
    want = [(_piece(data, a, b).decode("utf-8", "replace") if a >= 0 else "").swapcase()
            for a, b in pairs]
    assert got == want
