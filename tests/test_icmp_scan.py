"""icmp._scan (ICMP rows, header check and echo fields in one compiled pass) equals the
column-wise numpy formulation it replaced, on random columns and bytes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.icmp import _scan


def _numpy_reference(ip_version, transport, payload_offset, icmp_type, icmp_code, data):
    candidates = np.flatnonzero((ip_version != 0) & ((transport == 1) | (transport == 58)))
    header_at = payload_offset[candidates].astype(np.int64) - 8
    inside = header_at >= 0
    header_at = np.where(inside, header_at, 0)
    type_byte = data[header_at]
    code_byte = data[np.minimum(header_at + 1, data.shape[0] - 1)]
    has_header = (inside & (type_byte == icmp_type[candidates])
                  & (code_byte == icmp_code[candidates]))
    rows = candidates[has_header]
    kind = icmp_type[rows]
    is_echo = np.where(transport[rows] == 1, (kind == 0) | (kind == 8),
                       (kind == 128) | (kind == 129))
    rest_at = payload_offset[rows].astype(np.int64) - 4
    rest = data[rest_at[:, None] + np.arange(4)].astype(np.uint16)
    echo_id = np.where(is_echo, (rest[:, 0] << 8) | rest[:, 1], 0).astype(np.uint16)
    echo_seq = np.where(is_echo, (rest[:, 2] << 8) | rest[:, 3], 0).astype(np.uint16)
    return rows, int(candidates.size - np.count_nonzero(has_header)), echo_id, echo_seq


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 60), st.binary(min_size=16, max_size=300), st.randoms())
def test_scan_equals_the_numpy_reference(n, raw, rnd):
    data = np.frombuffer(raw, dtype=np.uint8)
    ip_version = np.array([rnd.choice([0, 4, 6]) for _ in range(n)], dtype=np.uint8)
    transport = np.array([rnd.choice([1, 58, 6, 17, 1, 58]) for _ in range(n)], dtype=np.uint8)
    # payload offsets inside the buffer (as the decoder gives them), some too near its start
    payload_offset = np.array([rnd.randint(0, data.size) for _ in range(n)], dtype=np.int64)
    # type/code: often the bytes really there (a header), else random
    icmp_type = np.empty(n, dtype=np.uint8)
    icmp_code = np.empty(n, dtype=np.uint8)
    for i in range(n):
        at = payload_offset[i] - 8
        real = at >= 0 and rnd.random() < 0.7
        icmp_type[i] = data[at] if real else rnd.choice([0, 8, 128, 129, 3, 11])
        icmp_code[i] = data[min(at + 1, data.size - 1)] if real else rnd.randint(0, 3)
    got = _scan(ip_version, transport, payload_offset, icmp_type, icmp_code, data)
    want = _numpy_reference(ip_version, transport, payload_offset, icmp_type, icmp_code, data)
    assert np.array_equal(got[0], want[0]) and got[1] == want[1]
    assert np.array_equal(got[2], want[2]) and np.array_equal(got[3], want[3])
    assert got[2].dtype == want[2].dtype == np.uint16


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 80), st.randoms())
def test_event_rows_equal_the_numpy_gathers(n, rnd):
    """icmp._event_rows (one kernel, prefetching ahead) gives the columns and dtypes of the
    numpy gathers it replaced, rows in any order and repeated, more rows than its prefetch
    distance."""
    from sensors.icmp import _event_rows
    from sensors.packets import IP_DTYPE

    rng = np.random.default_rng(rnd.randint(0, 2**32))
    ts_ns = rng.integers(-2**62, 2**62, n, dtype=np.int64)
    vlan = rng.integers(0, 4096, n).astype(np.uint16)
    payload_len = rng.integers(-5, 70000, n).astype(np.int32)
    transport = rng.choice(np.array([1, 58], dtype=np.uint8), n)
    icmp_type = rng.integers(0, 256, n).astype(np.uint8)
    icmp_code = rng.integers(0, 256, n).astype(np.uint8)
    src = rng.integers(0, 256, (n, 16)).astype(np.uint8)
    dst = rng.integers(0, 256, (n, 16)).astype(np.uint8)
    rows = rng.integers(0, n, rnd.randint(0, 3 * n))
    got = _event_rows(rows, ts_ns, vlan, payload_len, transport, icmp_type, icmp_code, src, dst)
    want = (ts_ns[rows].astype(np.int64), vlan[rows].astype(np.uint16),
            payload_len[rows].astype(np.uint32), transport[rows].astype(np.uint8),
            icmp_type[rows].astype(np.uint8), icmp_code[rows].astype(np.uint8),
            src.view(IP_DTYPE).reshape(n)[rows], dst.view(IP_DTYPE).reshape(n)[rows])
    for g, w in zip(got[:6], want[:6], strict=True):
        assert g.dtype == w.dtype and np.array_equal(g, w)
    for g, w in zip(got[6:], want[6:], strict=True):
        assert np.array_equal(g.view(IP_DTYPE).reshape(rows.size), w)
