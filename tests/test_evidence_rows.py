"""correlation/evidence_rows.py: the plain-Python evidence helpers equal the numpy helpers
they replace in describe() (network_common's span/seen_by/sample_ips, detector's
ip_text/sorted_unique_*), on random rows of IPv4-mapped and IPv6 addresses."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation.detector import ip_text, sorted_unique_ips, sorted_unique_text
from correlation.evidence_rows import (
    ip_bytes_text,
    ip_texts,
    row_lists,
    sample_ip_texts,
    seen_by_lists,
    sorted_ips,
    time_span,
    unique_texts,
)
from correlation.network_common import sample_ips, seen_by, span
from sensors.packets import IP_DTYPE, ip_column_to_str

# IPv4-mapped, IPv6 (incl. all-zero and near-mapped prefixes) as raw 16-byte values
V4 = st.binary(min_size=4, max_size=4).map(lambda b: bytes(10) + b"\xff\xff" + b)
V6 = st.binary(min_size=16, max_size=16)
NEAR = st.binary(min_size=4, max_size=4).map(lambda b: bytes(10) + b"\xff\xfe" + b)
ADDRESSES = st.lists(V4 | V6 | NEAR | st.just(bytes(16)), min_size=1, max_size=40)
NAMES = st.sampled_from(["", "s1", "s2", "s1|s2", "|s3", "z|", "a|a"])


def columns(addresses: list[bytes], draw_ints: list[int], names: list[str]) -> dict:
    n = len(addresses)
    ts = np.array([draw_ints[i % len(draw_ints)] for i in range(n)], np.int64)
    obs = np.empty(n, object)
    obs[:] = [names[i % len(names)] for i in range(n)]
    return {"src_ip": np.frombuffer(b"".join(addresses), IP_DTYPE).copy(),
            "timestamp": ts, "end": ts + np.arange(n, dtype=np.int64)[::-1] * 7,
            "observer_name": obs, "ingress_zone": obs[::-1].copy()}


@settings(max_examples=200, deadline=None)
@given(ADDRESSES, st.lists(st.integers(0, 2**62), min_size=1, max_size=5),
       st.lists(NAMES, min_size=1, max_size=5), st.integers(1, 60), st.data())
def test_list_helpers_equal_the_numpy_helpers(addresses, ints, names, limit, data) -> None:
    cols = columns(addresses, ints, names)
    n = len(addresses)
    r = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=2 * n)),
                 np.int64)
    ts, ends, ips, observers = row_lists(cols, r, "timestamp", "end", "src_ip",
                                         "observer_name")
    assert time_span(ts, ends) == span(cols, r)
    assert time_span(ts) == span({k: v for k, v in cols.items() if k != "end"}, r)
    assert seen_by_lists(cols, r) == seen_by(cols, r)
    assert unique_texts(observers) == sorted_unique_text(cols["observer_name"][r])
    assert sample_ip_texts(ips, limit) == sample_ips(cols["src_ip"][r], limit)
    assert ip_texts(sorted_ips(ips)) == ip_column_to_str(sorted_unique_ips(cols["src_ip"][r]))
    for row in r.tolist():
        assert ip_bytes_text(cols["src_ip"].item(row)) == ip_text(cols["src_ip"], row) \
            == ip_column_to_str(cols["src_ip"][row:row + 1])[0]
