"""FlowDeduplicator (fusion/dedupe.py) against a brute-force reference: within a batch, a
report is a duplicate when the report before it in (Community ID, start) order has the
same Community ID, starts within the tolerance and comes from another observer; a later
batch's report of a kept flow (same bucket or a neighbour) from another observer too."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.dedupe import FlowDeduplicator
from pipeline.schema import EventBatch

NS = 10**9
rows_strategy = st.lists(st.tuples(st.integers(-1, 5), st.integers(0, 30 * NS),
                                   st.integers(0, 2)), min_size=1, max_size=60)


def batch(rows) -> EventBatch:
    cid = np.array([f"1:{k:02d}AAAAAAAAAAAAAAAAAAAAAAAAA=" if k >= 0 else "" for k, _, _ in rows],
                   dtype=object)
    return EventBatch("flow", {
        "community_id": cid, "timestamp": np.array([t for _, t, _ in rows], np.int64),
        "observer_name": np.array([f"s{o}" for _, _, o in rows], dtype=object),
        "row": np.arange(len(rows))})


def reference(rows, tolerance_ns: int) -> list[int]:
    order = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][1], i))
    kept = []
    for prev, i in zip([None] + order[:-1], order, strict=True):
        k, t, o = rows[i]
        dup = (prev is not None and k >= 0 and rows[prev][0] == k
               and t - rows[prev][1] <= tolerance_ns and rows[prev][2] != o)
        if not dup:
            kept.append(i)
    return sorted(kept)


@settings(max_examples=200, deadline=None)
@given(rows_strategy)
def test_within_batch_matches_reference(rows) -> None:
    dd = FlowDeduplicator(tolerance_s=5.0)
    out, observers = dd.filter(batch(rows))
    kept = out.columns["row"].tolist()
    assert kept == reference(rows, 5 * NS)
    assert dd.stats["duplicates"] == len(rows) - len(kept)
    for row, names in observers.items():  # first observer = the kept report's
        assert names[0] == f"s{rows[kept[row]][2]}" and len(set(names)) == len(names) >= 2


@settings(max_examples=100, deadline=None)
@given(rows_strategy, st.integers(0, 2))
def test_later_batch_repeats_are_dropped_once_per_other_observer(rows, observer) -> None:
    dd = FlowDeduplicator(tolerance_s=5.0)
    first, _ = dd.filter(batch(rows))
    kept = [rows[i] for i in first.columns["row"].tolist()]
    # the same flows again from one observer, at the same start times
    again = [(k, t, observer) for k, t, _ in kept]
    second, _ = dd.filter(batch(again))
    left = [again[i] for i in second.columns["row"].tolist()]
    for k, t, o in again:
        seen_by_other = k >= 0 and any(k2 == k and t2 == t and o2 != o for k2, t2, o2 in kept)
        if seen_by_other:
            assert (k, t, o) not in left
    assert all(k < 0 or any(k2 == k and t2 == t and o2 == o for k2, t2, o2 in kept)
               for k, t, o in left)
