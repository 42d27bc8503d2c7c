"""correlation/beaconing.py's compiled contact statistics (`_contact_kernel`) against the
whole-array numpy implementation they replaced: every score of `beacon_scores` must be the
same float, bit for bit (alert evidence prints them, and min_score/medium_score compare
them), for random groups, duplicate seconds, single-contact and empty groups."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation.beaconing import NS_PER_S, beacon_scores, bowley_madm


def distinct_group_seconds(group: np.ndarray, sec: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (group, second) pairs, ascending by group then second (the packed sort
    of the numpy implementation, lexsort when the product would overflow)."""
    if group.size == 0:
        return group.astype(np.int64), sec.astype(np.int64)
    s0 = int(sec.min())
    span = int(sec.max()) - s0 + 1
    if (int(group.max()) + 1) * span < 2**62:
        packed = np.sort(group.astype(np.int64) * span + (sec - s0))
        keep = np.empty(packed.size, bool)
        keep[0] = True
        np.not_equal(packed[1:], packed[:-1], out=keep[1:])
        packed = packed[keep]
        return packed // span, packed % span + s0
    order = np.lexsort((sec, group))
    g, s = group[order], sec[order]
    first = np.ones(g.size, bool)
    first[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    return g[first], s[first]


def reference_beacon_scores(group: np.ndarray, n_groups: int, times_ns: np.ndarray,
                            sizes: np.ndarray | None, bins: int, ideal: int
                            ) -> dict[str, np.ndarray]:
    """beacon_scores as it was before the contact kernel (numpy over sorted arrays)."""
    g, s = distinct_group_seconds(group, times_ns // NS_PER_S)
    contacts = np.bincount(g, minlength=n_groups)
    same = g[1:] == g[:-1]
    iv_group = g[1:][same]
    intervals = (s[1:] - s[:-1])[same].astype(np.float64)
    skew, madm, median = bowley_madm(iv_group, intervals, n_groups)
    out = {"contacts": contacts, "median_interval_s": median,
           "ts_skew": 1 - np.abs(skew),
           "ts_madm": np.clip(1 - madm / np.maximum(median, 1.0), 0, 1),
           "count": np.minimum(1.0, contacts / float(ideal))}
    lo = np.full(n_groups, np.iinfo(np.int64).max)
    hi = np.full(n_groups, np.iinfo(np.int64).min)
    present = contacts > 0
    ends = np.cumsum(contacts)
    lo[present] = s[(ends - contacts)[present]]
    hi[present] = s[ends[present] - 1]
    width = np.maximum((hi - lo + 1) / bins, 1e-9)
    b = np.minimum(((s - lo[g]) / width[g]).astype(np.int64), bins - 1)
    hist = np.bincount(g * bins + b, minlength=n_groups * bins).reshape(n_groups, bins)
    mean = hist.mean(axis=1)
    cv = np.divide(hist.std(axis=1), mean, out=np.full(n_groups, np.inf), where=mean > 0)
    out["hist"] = np.clip(1 - cv, 0, 1)
    out["ts_score"] = (out["ts_skew"] + out["ts_madm"] + out["count"]) / 3
    parts = [out["ts_score"], out["hist"]]
    if sizes is not None:
        ds_skew, ds_madm, ds_median = bowley_madm(group, sizes.astype(np.float64), n_groups)
        out["ds_skew"] = 1 - np.abs(ds_skew)
        out["ds_madm"] = np.clip(1 - ds_madm / np.maximum(ds_median, 1.0), 0, 1)
        out["ds_score"] = (out["ds_skew"] + out["ds_madm"]) / 2
        out["median_bytes"] = ds_median
        parts.append(out["ds_score"])
    out["score"] = np.mean(parts, axis=0)
    return out


def assert_same_scores(got: dict, want: dict) -> None:
    assert list(got) == list(want)  # evidence prints them in this order
    for name in want:
        a, b = np.asarray(got[name]), np.asarray(want[name])
        assert a.dtype == b.dtype, name
        assert a.tobytes() == b.tobytes(), name  # same bits, not merely close


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 4000), st.integers(0, 10**9 - 1)),
                max_size=200),
       st.integers(0, 3), st.sampled_from([1, 5, 12]), st.booleans(),
       st.sampled_from([0, 1_767_225_600, -5]))
def test_scores_equal_the_numpy_implementation_bit_for_bit(rows: list, extra: int, bins: int,
                                                          with_sizes: bool,
                                                          base_s: int) -> None:
    group = np.array([g for g, _, _ in rows], np.int64)
    # seconds from a small range (duplicates within a group: one contact) plus sub-second
    times = (np.array([s for _, s, _ in rows], np.int64) + base_s) * NS_PER_S + np.array(
        [f for _, _, f in rows], np.int64)
    n_groups = (int(group.max()) + 1 if group.size else 0) + extra  # some empty groups
    sizes = (np.array([(s * 37) % 1500 for _, s, _ in rows], np.float64)
             if with_sizes else None)
    got = beacon_scores(group, n_groups, times, sizes, bins, 30)
    want = reference_beacon_scores(group, n_groups, times, sizes, bins, 30)
    assert_same_scores(got, want)


def test_regular_and_bursty_groups_equal_the_numpy_implementation() -> None:
    rng = np.random.default_rng(3)
    parts = [np.cumsum(rng.uniform(54, 66, 60)),             # a jittered 60 s timer
             np.repeat(np.arange(0, 3600, 600), 7) + 0.2,    # bursts: 7 in one second
             np.sort(rng.uniform(0, 3600, 300)),              # browsing
             np.array([100.0]),                               # one contact
             np.full(12, 2000.5)]                             # twelve rows, one second
    group = np.concatenate([np.full(p.size, i) for i, p in enumerate(parts)])
    times = (np.concatenate(parts) * NS_PER_S).astype(np.int64) + 1_767_225_600 * NS_PER_S
    perm = rng.permutation(group.size)  # row order must not matter
    sizes = rng.integers(600, 800, group.size).astype(np.float64)
    got = beacon_scores(group[perm], len(parts), times[perm], sizes[perm], 12, 30)
    want = reference_beacon_scores(group[perm], len(parts), times[perm], sizes[perm], 12, 30)
    assert_same_scores(got, want)
    assert got["contacts"].tolist() == [60, 6, 300 - int(np.sum(np.diff(
        np.floor(parts[2])) == 0)), 1, 1]


def test_group_ids_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        beacon_scores(np.array([0, 3]), 2, np.array([0, NS_PER_S]), None, 12, 30)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3)), max_size=150),
       st.sampled_from([1_767_225_600, 0, 2**40]))
def test_reference_distinct_group_seconds_equal_lexsort_dedupe(rows: list, base: int) -> None:
    group = np.array([g for g, _ in rows], np.int64)
    sec = np.array([s for _, s in rows], np.int64) + base
    g, s = distinct_group_seconds(group, sec)
    want = sorted(set(zip(group.tolist(), sec.tolist(), strict=True)))
    assert list(zip(g.tolist(), s.tolist(), strict=True)) == want
