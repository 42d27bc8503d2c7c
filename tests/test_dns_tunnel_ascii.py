"""dns_tunnel's compiled per-name features of ASCII names (DnsTunnelDetector._ascii_features)
give exactly what the mapped string path (_split_names and the string functions) gives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dns_tunnel import KERNEL_NAMES, NAME_LABELS

from correlation import dns_tunnel
from correlation.dns_tunnel import DnsTunnelDetector, PublicSuffixList
from pipeline.config import load_config

pytestmark = pytest.mark.skipif(PublicSuffixList is None,
                                reason="publicsuffixlist not installed")


def detector(**section) -> DnsTunnelDetector:
    return DnsTunnelDetector({**load_config()["correlation"]["detectors"]["dns_tunnel"],
                              **section})


def mapped_features(names: list[str], **section) -> dict[str, np.ndarray]:
    """The mapped path on a fresh detector (the ASCII path switched off)."""
    d = detector(**section)
    d._ascii_features = lambda names: None
    return d._compute_features(names)


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray],
                names: list[str]) -> None:
    assert got.keys() == want.keys()
    for key, column in want.items():
        assert got[key].dtype == column.dtype, key
        assert got[key].tolist() == column.tolist(), (key, names)


ASCII_NAMES = st.lists(
    st.lists(NAME_LABELS.filter(str.isascii) | st.text("abcXY09-._*", max_size=6),
             min_size=1, max_size=7).map(".".join)
    | KERNEL_NAMES.map(lambda names: ".".join(names).encode("ascii", "ignore").decode()),
    min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(ASCII_NAMES)
def test_ascii_features_equal_the_mapped_path(names: list[str]) -> None:
    names = list(dict.fromkeys(names))
    got = detector()._ascii_features(names)
    assert got is not None
    assert_same(got, mapped_features(names), names)


@settings(max_examples=100, deadline=None)
@given(ASCII_NAMES, st.lists(st.sampled_from(["example.com", "co.uk", "Www.a", "in-addr.arpa",
                                              "x", "b.c"]), max_size=3))
def test_ascii_features_apply_the_ignore_list_as_the_mapped_path(names, ignore) -> None:
    names = list(dict.fromkeys(names))
    got = detector(ignore_domains=ignore)._ascii_features(names)
    assert_same(got, mapped_features(names, ignore_domains=ignore), names)


def test_ascii_features_of_the_shapes() -> None:
    names = ["www.example.co.uk", "WWW.Example.COM", "a..b.com", ".x.com", "x.123", "abc",
             "a.b.", "foo.xn--p1ai", "q.XN--P1AI", "1.2.3.4.in-addr.arpa", "city.kobe.jp",
             "a.b.city.kobe.jp", "x.y.kobe.jp", "co.uk", "", ".", "deadbeef.cafe01"]
    got = detector()._ascii_features(names)
    assert_same(got, mapped_features(names), names)
    assert got["parent"].tolist()[:2] == ["example.co.uk", "example.com"]
    assert got["parent"][4] == dns_tunnel.INVALID_TLD
    assert got["parent"][9] == ""  # in-addr.arpa is ignored by default


def test_non_ascii_names_take_the_mapped_path() -> None:
    assert detector()._ascii_features(["www.exämple.com", "a.com"]) is None


@settings(max_examples=100, deadline=None)
@given(ASCII_NAMES, st.sampled_from([0, 0xF, 0xFFFF]))
def test_ascii_features_compare_rule_tails_exactly(names, hash_mask) -> None:
    # a tail table whose hashes keep only a few bits (every key collides with many tails):
    # the byte comparison alone must decide, and the features stay those of the mapped path
    names = list(dict.fromkeys(names))
    d = detector()
    narrow = dns_tunnel._TailTable(d._psl.tails, hash_mask)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dns_tunnel, "_tail_table", lambda tails: narrow)
        got = d._ascii_features(names)
    assert_same(got, mapped_features(names), names)


def test_exact_tail_walk_finds_the_deepest_rule_tail() -> None:
    table = dns_tunnel._TailTable(detector()._psl.tails, 0)  # (all hashes collide)
    names = ["a.b.city.kobe.jp", "www.example.co.uk", "x.unknowntld", "co.uk"]
    codes, bounds = dns_tunnel._utf8_codes(names)
    count, deepest, _, tail = table.walk(codes, bounds)
    assert count.tolist() == [5, 4, 2, 2]
    assert deepest.tolist() == [3, 2, 0, 2]  # city.kobe.jp (from !city.kobe.jp), co.uk
    assert [table.texts[t] if t >= 0 else None for t in tail.tolist()] == [
        "city.kobe.jp", "co.uk", None, "co.uk"]


def test_public_labels_by_tail_equal_the_library_under_every_rule() -> None:
    # every rule of the list (wildcards filled in, exceptions as plain labels) under one
    # and two more labels, and alone: one batch, so the tail table's per-tail answers are
    # filled by some names and reused for the others
    from test_dns_tunnel import _RULES, library_split
    names = []
    for rule in _RULES:
        if not rule.isascii():
            continue
        text = rule.lstrip("!").replace("*", "w")
        names += [f"q.{text}", f"a.b.{text}", text]
    names = list(dict.fromkeys(names))
    got = detector(ignore_domains=[])._ascii_features(names)
    assert got["parent"].tolist() == [library_split(n)[0] for n in names]
    assert_same(got, mapped_features(names, ignore_domains=[]), names)


def test_distinct_spans_compare_the_bytes() -> None:
    codes = np.frombuffer(b"abcabdabc", np.uint8)
    starts = np.array([0, 3, 6, 0, 6])
    ends = np.array([3, 6, 9, 2, 9])
    use = np.array([True, True, True, True, False])
    group, reps = dns_tunnel._distinct_spans(codes, starts, ends, use,
                                             np.array([0, 0, 0, 0, 0]))
    assert group.tolist() == [0, 1, 0, 2, -1]
    assert reps.tolist() == [0, 1, 3]
    group, _ = dns_tunnel._distinct_spans(codes, starts, ends, use, np.array([0, 0, 1, 0, 0]))
    assert group.tolist() == [0, 1, 2, 3, -1]  # the tag keeps equal bytes apart
