"""distinct_slice_table on slices longer than _slice_hash's 32-byte stripes and
equal_bytes' word steps: numbering stays exact when slices differ in one byte anywhere
(stripe, word tail, byte tail) or only in length, and the hash reads bytes only."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.http_kernel import _slice_hash, distinct_slice_ids, equal_bytes


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200), st.integers(0, 7), st.data())
def test_one_byte_changes_anywhere_make_a_new_number(size, shift, data):
    rng = np.random.default_rng(size * 8 + shift)
    base = rng.integers(0, 256, size, dtype=np.uint8)
    copies = [base.copy() for _ in range(4)]
    if size:
        at = data.draw(st.integers(0, size - 1))
        copies[1][at] ^= 1 << data.draw(st.integers(0, 7))
    copies[3] = copies[3][: max(size - 1, 0)]  # a prefix: equal bytes, other length
    src = np.concatenate([np.zeros(shift, np.uint8), *copies])
    lengths = np.array([c.size for c in copies], np.int64)
    starts = shift + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ids, first = distinct_slice_ids(src, starts, starts + lengths)
    want: dict = {}
    expected = [want.setdefault(c.tobytes(), len(want)) for c in copies]
    assert ids.tolist() == expected
    assert [int(f) for f in first] == [expected.index(k) for k in range(len(want))]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 9), st.integers(0, 9))
def test_long_slices_hash_and_compare_by_bytes_only(data, a, b):
    n = len(data)
    src = np.frombuffer(bytes(a) + data + bytes(b) + data, np.uint8)
    assert _slice_hash(src, a, a + n) == _slice_hash(src, a + n + b, a + 2 * n + b)
    assert equal_bytes(src, a, src, a + n + b, n)
    assert equal_bytes(src, a, src.copy(), a, n)  # two arrays
    if n:
        other = bytearray(src.tobytes())
        other[a + n + b + n // 2] ^= 0x80
        other_src = np.frombuffer(bytes(other), np.uint8)
        assert not equal_bytes(other_src, a, other_src, a + n + b, n)
