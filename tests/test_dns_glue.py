"""The DNS analyzer's small per-batch kernels (sensors/dns_kernel.py: port_rows,
kept_messages) against the numpy code they replaced in sensors/dns.py."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors import dns_kernel

PORTS = st.sampled_from([53, 0, 52, 54, 443, 53 + 65536 // 2, 65535])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(PORTS, PORTS), max_size=200))
def test_port_rows_equal_the_numpy_mask(pairs):
    src = np.array([p[0] for p in pairs], dtype=np.uint16)
    dst = np.array([p[1] for p in pairs], dtype=np.uint16)
    got = dns_kernel.port_rows(src, dst, 53)
    assert got.dtype == np.int64
    assert got.tolist() == np.flatnonzero((src == 53) | (dst == 53)).tolist()


def _numpy_kept(msg: np.ndarray) -> dict[str, np.ndarray]:
    """The numpy formulation kept_messages replaced (dns._kept_columns, _build_batch)."""
    index = np.flatnonzero(msg[:, 0] != dns_kernel.MALFORMED)
    kept = np.take(msg, index, axis=0)
    flags = kept[:, 2].astype(np.uint16)
    is_response = (flags & 0x8000) != 0
    return {"index": index, "msg": kept, "dns_id": kept[:, 1].astype(np.uint16),
            "flags": flags, "qtype": kept[:, 3].astype(np.uint16),
            "qclass": kept[:, 4].astype(np.uint16), "is_response": is_response,
            "rcode": np.where(is_response, flags & 0x000F, 0).astype(np.uint8)}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([dns_kernel.MALFORMED, dns_kernel.OK,
                                           dns_kernel.DAMAGED]),
                          st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
                          st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
                          st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 64)),
                max_size=50))
def test_kept_messages_equal_the_numpy_columns(rows):
    msg = np.array(rows, dtype=np.int64).reshape(-1, 8)
    index, kept, dns_id, flags, qtype, qclass, is_response, rcode = \
        dns_kernel.kept_messages(msg)
    want = _numpy_kept(msg)
    got = {"index": index, "msg": kept, "dns_id": dns_id, "flags": flags, "qtype": qtype,
           "qclass": qclass, "is_response": is_response, "rcode": rcode}
    for key, column in want.items():
        assert got[key].dtype == column.dtype, key
        assert got[key].tolist() == column.tolist(), key
