"""The hit-only and filtered matching paths of pipeline/intel.py (task C4):

* IndicatorSet.ip_hits (what match_batch uses for address columns) returns the rows and
  indicators of match_ips's non-negative entries, from a kernel that keeps only the rows
  passing the /24 filter (_v4_hits); IPv6 rows against IPv6 indicators take the full pass.
* match_domains hashes only a name's last `longest` code points (a longer suffix cannot
  be listed) and first tests a tail filter on its last min(4, shortest listed) code
  points: names of every length against listed texts of every length (1 to well past
  the tail), with a plain suffix walk as the reference.
"""

from __future__ import annotations

import ipaddress

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_intel_match_paths import ADDRESS_ROWS, _column, _reference_ip

from pipeline.intel import (
    MATCH_FIELDS,
    Indicator,
    IndicatorSet,
    _tail_filter,
    inline_indicators,
)
from pipeline.schema import EventBatch
from sensors.packets import IP_DTYPE

# --- addresses -------------------------------------------------------------------------------

_V4_NETS = ("192.0.2.0/24", "192.0.2.128/25", "198.51.100.7", "10.0.0.0/8", "10.1.2.3",
            "0.0.0.0/0")
_V6_NETS = ("2001:db8::/32", "2001:db8::1", "::/96", "::fffe:0:0/96")



@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_V4_NETS + _V6_NETS), min_size=1, max_size=8), ADDRESS_ROWS)
def test_ip_hits_are_the_hits_of_match_ips_and_of_the_reference(nets, rows) -> None:
    raw = [p + t for p, t in rows]
    networks = [ipaddress.ip_network(n) for n in nets]
    s = IndicatorSet(inline_indicators([{"type": "cidr", "value": n} for n in nets]))
    column = _column(raw)
    full = s.match_ips(column)
    expected = [_reference_ip(networks, r) for r in raw]
    assert full.tolist() == expected
    hit_rows, found = s.ip_hits(column)
    assert hit_rows.dtype == np.int64 and found.dtype == np.int64
    assert hit_rows.tolist() == [i for i, e in enumerate(expected) if e >= 0]
    assert found.tolist() == [e for e in expected if e >= 0]


def test_ip_hits_of_v4_only_v6_only_and_empty_columns() -> None:
    raw = [bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1]),  # mapped 192.0.2.1
           bytes(12) + bytes([192, 0, 2, 1]),  # ::192.0.2.1: IPv6
           bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 2]),
           bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])]
    both = IndicatorSet(inline_indicators(["192.0.2.1", "::c000:201"]))
    assert [a.tolist() for a in both.ip_hits(_column(raw))] == [[0, 1, 3], [0, 1, 0]]
    only_v6 = IndicatorSet(inline_indicators(["::c000:201"]))
    assert [a.tolist() for a in only_v6.ip_hits(_column(raw))] == [[1], [0]]
    only_v4 = IndicatorSet(inline_indicators(["192.0.2.1"]))
    assert [a.tolist() for a in only_v4.ip_hits(_column(raw))] == [[0, 3], [0, 0]]
    for s in (both, only_v6, only_v4, IndicatorSet([])):
        assert [a.tolist() for a in s.ip_hits(_column([]))] == [[], []]


def test_match_batch_address_hits_equal_match_ips() -> None:
    rng = np.random.default_rng(5)
    n = 5_000
    src = np.zeros(n, IP_DTYPE)
    dst = np.zeros(n, IP_DTYPE)
    for col in (src, dst):
        words = col.view(np.uint8).reshape(n, 16)
        words[:, 10:12] = 0xFF
        words[:, 12] = 192
        words[:, 13] = rng.choice([0, 1], n)
        words[:, 14] = 2
        words[:, 15] = rng.integers(0, 256, n)
    s = IndicatorSet(inline_indicators(["192.0.2.7", "192.0.2.128/26", "2001:db8::/32"]))
    batch = EventBatch("flow", {"src_ip": src, "dst_ip": dst})
    hits = s.match_batch(batch, {"flow": MATCH_FIELDS["flow"]})
    assert [h.field for h in hits] == ["src_ip", "dst_ip"]
    for h in hits:
        full = s.match_ips(batch.columns[h.field])
        assert h.rows.tolist() == np.flatnonzero(full >= 0).tolist()
        assert h.indicators.tolist() == full[full >= 0].tolist()
        assert h.rows.size > 0


# --- domains ---------------------------------------------------------------------------------


def _reference_domain(values: list[str], name: str) -> int:
    """Index of the indicator equal to the longest suffix of `name` that starts at a label;
    the first loaded among equal values."""
    first: dict[str, int] = {}
    for i, v in enumerate(values):
        first.setdefault(v, i)
    for s in range(len(name)):
        if (s == 0 or name[s - 1] == ".") and name[s:] in first:
            return first[name[s:]]
    return -1


_label = st.text(alphabet=st.sampled_from("abz-\u00e9\u4e2d"), min_size=1, max_size=9)
_domain = st.lists(_label, min_size=1, max_size=4).map(".".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(_domain, min_size=1, max_size=6),
       st.lists(st.one_of(_domain, st.text(alphabet=st.sampled_from("ab.z"), max_size=5)),
                max_size=30),
       st.lists(_label, max_size=6), st.data())
def test_match_domains_of_names_longer_and_shorter_than_the_listed(values, names, prefix,
                                                                   data) -> None:
    # names under a listed domain, some with long prefixes (only the last `longest` code
    # points are hashed), and near misses: a listed text with a character changed or cut
    for v in values:
        names.append(".".join(prefix + [v]))
        names.append(".".join(prefix) + v)  # glued: no label start before v
        names.append(v[1:])
        names.append(v[:-1] + data.draw(st.sampled_from("az.")))
    s = IndicatorSet([Indicator("domain", v) for v in values])
    got = s.match_domains(np.array(names, object)).tolist()
    assert got == [_reference_domain(values, n) for n in names]
    latin = [n for n in names if n.isascii()]  # (the 1-byte joined path)
    got = s.match_domains(np.array(latin, object)).tolist()
    assert got == [_reference_domain(values, n) for n in latin]


def test_tail_filter_flags_the_tail_of_every_listed_text() -> None:
    s = IndicatorSet([Indicator("domain", v) for v in ("evil.test", "ab", "x.y.zz")])
    tail_len, packed, _ = s._domain_tails
    assert tail_len == 2 and s._domain_longest == len("evil.test")
    assert int(np.unpackbits(packed).sum()) == 3  # "st", "ab", "zz": three hashes
    names = ["a.b.c.evil.test", "ab", "zab", "q.ab", "x.y.zz", "y.zz", "evil.tesT", "b"]
    assert s.match_domains(np.array(names, object)).tolist() == [0, 1, -1, 1, 2, -1, -1, -1]
    # nothing listed but the empty text: no name can reach the tail
    tail_len, _, _ = _tail_filter(np.zeros(0, np.uint8), np.zeros(2, np.int64))
    assert tail_len > 2**40
