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


# Zeek JSON numbers: realistic epochs and durations, plus the edges (NaN, infinities,
# negatives, beyond the bounds, ints, an odd None/bool/text among them).
_seconds = st.one_of(
    st.floats(1e9, 2e9), st.floats(-1e10, 1e10), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-10**10, 10**10), st.floats(0, 1e8), st.floats(1e8 - 1, 1e8 + 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(_seconds, min_size=1, max_size=40),
       st.lists(st.one_of(st.none(), st.booleans(), st.just("1.5")), max_size=2))
def test_zeek_number_columns_match_the_value_by_value_reference(values, odd) -> None:
    from fusion.columns import _duration_each, _epoch_times_each, duration_ns, epoch_times

    for column in (values, values + odd, [None, *values]):
        for fast, each in ((epoch_times, _epoch_times_each), (duration_ns, _duration_each)):
            got, want = fast(column), each(column)
            assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()

