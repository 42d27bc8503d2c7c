"""_reopened_at_kernel (the reopening test reading the candidates' hashes through the
pure-SYN positions) against _reopened_kernel on the gathered flags and hashes."""

from __future__ import annotations

import numpy as np
import pytest
from stream_select_reference import _reopened_kernel

from sensors.tcp_stream import _HashLru, _reopened_at_kernel


@pytest.mark.parametrize("seed", range(20))
def test_reopened_at_positions_equals_the_gathered_test(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 400))
    flows = rng.integers(1, 2**63, size=max(1, n // 4), dtype=np.uint64)
    hashes = flows[rng.integers(0, flows.size, size=n)]
    flags = rng.choice(np.array([0x02, 0x12, 0x10, 0x18, 0x01, 0x04], dtype=np.uint8), n)
    ignored = _HashLru(64)
    ignored.touch(flows[rng.random(flows.size) < 0.5])
    table, used = ignored.arrays()
    syn_at = np.flatnonzero((flags & 0x12) == 0x02).astype(np.int64)
    want = _reopened_kernel(flags[syn_at], hashes[syn_at], table, used)
    got = _reopened_at_kernel(syn_at, hashes, table, used)
    assert got.dtype == want.dtype
    assert got.tolist() == want.tolist()
    assert got.tolist() == _reopened_kernel(flags, hashes, table, used).tolist()
