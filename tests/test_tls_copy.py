"""http_kernel.copy_bytes (the HTTP and TLS kernels' byte copy, unsigned indexes and no
array views) is a slice copy:
the bytes in range and nothing around them, the end returned, nothing for empty or
reversed ranges (also with a large source, where LLVM's memcpy takes over)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.http_kernel import copy_bytes


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300), st.integers(0, 300), st.integers(0, 20))
def test_copy_is_a_slice_copy(data, lo, hi, at):
    src = np.frombuffer(data, np.uint8)
    lo, hi = min(lo, len(data)), min(hi, len(data))
    dst = np.full(at + max(hi - lo, 0) + 3, 7, np.uint8)
    want = dst.copy()
    if hi > lo:
        want[at : at + hi - lo] = src[lo:hi]
    assert copy_bytes(dst, at, src, lo, hi) == at + max(hi - lo, 0)
    assert dst.tolist() == want.tolist()


def test_copy_of_a_large_range_into_the_middle():
    src = np.arange(1 << 16, dtype=np.int64).astype(np.uint8)
    dst = np.zeros(70000, np.uint8)
    assert copy_bytes(dst, 1000, src, 5, 60005) == 61000
    assert np.array_equal(dst[1000:61000], src[5:60005])
    assert not dst[:1000].any() and not dst[61000:].any()
