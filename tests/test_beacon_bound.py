"""correlation/beaconing.py's close scores only the groups `may_hit` keeps: every hit of
the full `beacon_scores` must be kept (the bound is never below a score), and the scores of
a subset of groups, from their `contact_stats` rows and renumbered rows, must be the full
scores of those groups bit for bit (evidence prints them, severity compares them)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation.beaconing import (
    NS_PER_S,
    beacon_scores,
    candidate_rows,
    candidates,
    contact_stats,
    finish_scores,
    key_window_groups,
    may_hit,
)
from correlation.detector import WindowRange, WindowSpec
from correlation.network_common import WindowGroups


def _groups(seed: int, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of timers (some near-perfect, some jittered), bursts and random callers."""
    rng = np.random.default_rng(seed)
    group, times, sizes = [], [], []
    for g in range(n_groups):
        shape = rng.integers(0, 4)
        n = int(rng.integers(1, 80))
        if shape == 0:  # a timer with jitter from none to large
            t = np.cumsum(rng.uniform(60 - rng.uniform(0, 30), 60 + rng.uniform(0, 30), n))
        elif shape == 1:  # bursts
            t = np.repeat(rng.uniform(0, 3600, max(n // 6, 1)), 6)
        elif shape == 2:  # a perfect timer
            t = np.arange(n) * float(rng.integers(5, 300))
        else:
            t = rng.uniform(0, 3600, n)
        group.append(np.full(t.size, g))
        times.append(t)
        size = rng.integers(100, 2000)
        sizes.append(np.where(rng.random(t.size) < rng.uniform(0, 0.5),
                              rng.integers(0, 4000, t.size), size).astype(np.float64))
    perm = rng.permutation(sum(x.size for x in group))
    g = np.concatenate(group)[perm]
    t = ((np.concatenate(times) + 1_767_225_600) * NS_PER_S).astype(np.int64)[perm]
    return g, t, np.concatenate(sizes)[perm]


def _subset_scores(group: np.ndarray, n_groups: int, times: np.ndarray,
                   sizes: np.ndarray | None, keep: np.ndarray, bins: int
                   ) -> dict[str, np.ndarray]:
    """finish_scores of groups `keep` as the close computes them."""
    stats = contact_stats(group, n_groups, times, bins)
    wanted = np.zeros(n_groups, bool)
    wanted[keep] = True
    rows = wanted[group]
    renumber = np.cumsum(wanted) - 1
    return finish_scores(tuple(s[keep] for s in stats), renumber[group[rows]], keep.size,
                         None if sizes is None else sizes[rows], 30)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.booleans(),
       st.sampled_from([1, 5, 12]), st.sampled_from([0.5, 0.7, 0.8, 0.9]),
       st.sampled_from([2, 10]))
def test_may_hit_keeps_every_hit_and_subset_scores_are_exact(
        seed: int, n_groups: int, sized: bool, bins: int, min_score: float,
        min_contacts: int) -> None:
    group, times, sizes = _groups(seed, n_groups)
    sizes = sizes if sized else None
    full = beacon_scores(group, n_groups, times, sizes, bins, 30)
    hits = np.flatnonzero((full["contacts"] >= min_contacts) & (full["score"] >= min_score))
    keep = may_hit(contact_stats(group, n_groups, times, bins), 30, sized, min_contacts,
                   min_score)
    assert set(hits.tolist()) <= set(keep.tolist())
    assert np.all(full["contacts"][keep] >= min_contacts)
    # any subset (the kept groups, and a random one) scores to the bit
    rng = np.random.default_rng(seed)
    for subset in (keep, np.flatnonzero(rng.random(n_groups) < 0.5)):
        got = _subset_scores(group, n_groups, times, sizes, subset, bins)
        assert set(got) == set(full)
        for name, values in got.items():
            assert values.tobytes() == full[name][subset].tobytes(), name


def test_the_bound_is_tight_for_sizeless_groups() -> None:
    """Without sizes the bound is the score itself (less the slack): a group just under
    min_score is dropped, one at it kept."""
    group, times, _ = _groups(7, 30)
    full = beacon_scores(group, 30, times, None, 12, 30)
    stats = contact_stats(group, 30, times, 12)
    for g in np.flatnonzero(full["contacts"] >= 10)[:10].tolist():
        score = float(full["score"][g])
        assert g in may_hit(stats, 30, False, 10, score).tolist()
        assert g not in may_hit(stats, 30, False, 10, score + 1e-6).tolist()


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 3000), st.sampled_from([1, 2, 10, 255, 300]))
def test_candidates_are_the_rows_candidate_rows_passes(seed: int, n: int,
                                                        threshold: int) -> None:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    if n:  # some keys repeated up to a few hundred times
        often = rng.integers(0, n, int(rng.integers(0, n + 1)))
        hashes[often] = hashes[rng.integers(0, max(n // 50, 1), often.size)]
    idx = np.sort(rng.choice(10 * n + 1, n, replace=False)).astype(np.int64)
    passed = candidate_rows(hashes, threshold)
    got_idx, got_hashes = candidates(idx, hashes, threshold)
    assert got_idx.tolist() == idx[passed].tolist()
    assert got_hashes.tolist() == hashes[passed].tolist()


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 400), st.integers(1, 300),
       st.sampled_from([(3600, 900), (3600, 3600), (600, 60), (300, 100)]),
       st.integers(0, 6))
def test_key_window_groups_equal_window_groups_of(seed: int, n: int, n_keys: int,
                                                  size_hop: tuple[int, int],
                                                  extra_windows: int) -> None:
    """Copies, their order, window indices and group ids: as WindowGroups.of gives them
    (one and several closing windows, keys not all present, rows out of time order)."""
    rng = np.random.default_rng(seed)
    spec = WindowSpec(size_hop[0] * NS_PER_S, size_hop[1] * NS_PER_S)
    first = 1_963_000 + int(rng.integers(0, 50))
    windows = WindowRange(spec, first, first + extra_windows)
    lo, hi = int(spec.start(first)) - spec.size_ns, int(spec.end(first + extra_windows))
    times = rng.integers(lo, hi + spec.size_ns, n + 50)  # some outside the range
    idx = np.sort(rng.choice(times.size, n, replace=False)).astype(np.int64)
    key = rng.integers(0, n_keys, n).astype(np.int64)
    want = WindowGroups.of(windows, times, idx, key)
    got = key_window_groups(windows, times, idx, key, n_keys)
    assert got.n_groups == want.n_groups
    for name in ("idx", "k", "group"):
        assert getattr(got, name).tolist() == getattr(want, name).tolist(), name
