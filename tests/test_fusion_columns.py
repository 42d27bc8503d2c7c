"""Column parsers of fusion/columns.py: the address column (cached, map()-driven fast path)
accepts and rejects exactly what socket.inet_pton does, None, non-text and embedded NUL
included; the fast fixed-layout timestamp path agrees with the general one."""

from __future__ import annotations

import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.columns import ip_column, iso_times
from sensors.packets import IP_DTYPE, ip_column_to_str


def reference(v) -> str | None:
    """inet_pton's verdict, as text; IPv4-mapped IPv6 is IPv4 in our columns
    (sensors.packets: IPv4 is stored IPv4-mapped, so '::ffff:1.2.3.4' reads '1.2.3.4')."""
    if not isinstance(v, str):
        return None
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            raw = socket.inet_pton(family, v)
        except (OSError, ValueError):
            continue
        if family == socket.AF_INET6 and raw[:12] == bytes(10) + b"\xff\xff":
            return socket.inet_ntop(socket.AF_INET, raw[12:])
        return socket.inet_ntop(family, raw)
    return None


octet_text = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "099", "",
                                                                      "-1", "1a", " 1"]))
dotted = st.lists(octet_text, min_size=2, max_size=6).map(".".join)
address_like = st.one_of(
    dotted, st.ip_addresses().map(str), st.text(alphabet="0123456789.:abcdef ", max_size=20),
    st.none(), st.integers(), st.just("1.2.3.4\x00"))


@settings(max_examples=300, deadline=None)
@given(st.lists(address_like, min_size=1, max_size=40))
def test_ip_column_agrees_with_inet_pton(values) -> None:
    col, bad = ip_column(values)
    assert col.dtype == IP_DTYPE
    text = ip_column_to_str(col)
    for v, t, b in zip(values, text, bad.tolist(), strict=True):
        want = reference(v)
        assert b == (want is None), v
        if want is not None:
            assert t == want, v


def test_iso_times_fast_and_slow_layouts_agree() -> None:
    fast = ["2018-07-05T15:01:09.820360-0400", "2024-07-30T16:00:00.000001+0130"]
    slow = ["2018-07-05T15:01:09.820360-04:00", "2024-07-30T16:00:00.000001+01:30"]
    a, bad_a = iso_times(fast)
    b, bad_b = iso_times(slow)
    assert a.tolist() == b.tolist() and not bad_a.any() and not bad_b.any()
    assert a[0] == 1530817269820360000
    _, bad = iso_times(["2018-07-05T15:01:09.820360-04x0", fast[0]])
    assert bad.tolist() == [True, False]
