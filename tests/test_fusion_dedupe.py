"""FlowDeduplicator (fusion/dedupe.py) against a brute-force reference: within a batch, a
report is a duplicate when the report before it in (Community ID, start) order has the
same Community ID, starts within the tolerance and comes from another observer; a later
batch's report of a kept flow (same bucket or a neighbour) from another observer too."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.dedupe import FlowDeduplicator
from pipeline.schema import (
    EventBatch,
    batch_to_ecs,
    fold_observer_names,
    observer_update_rows,
    validate_batch,
)

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


@settings(max_examples=100, deadline=None)
@given(rows_strategy)
def test_observer_names_column_lists_every_observer_of_a_kept_flow(rows) -> None:
    dd = FlowDeduplicator(tolerance_s=5.0)
    out, observers = dd.filter(batch(rows))
    column = out.columns["observer_names"].tolist()
    for row, value in enumerate(column):  # travels with the row (Kafka), same as the side map
        assert value == ("|".join(observers[row]) if row in observers else "")
    assert not observer_update_rows(out).any()  # kept rows are never updates


@settings(max_examples=100, deadline=None)
@given(rows_strategy, st.integers(0, 2))
def test_late_reports_become_observer_updates_listing_every_observer(rows, observer) -> None:
    dd = FlowDeduplicator(tolerance_s=5.0)
    first, _ = dd.filter(batch(rows))
    kept = [rows[i] for i in first.columns["row"].tolist()]
    again = [(k, t, observer) for k, t, _ in kept]
    second, _, updates = dd.filter_updates(batch(again))
    dropped = len(again) - len(second)
    assert (0 if updates is None else len(updates)) == dropped
    if updates is None:
        return
    assert observer_update_rows(updates).all()
    for row, names in zip(updates.columns["row"].tolist(),
                          updates.columns["observer_names"].tolist(), strict=True):
        k, t, o = again[row]
        listed = names.split("|")
        assert listed[-1] == f"s{o}" and len(set(listed)) == len(listed) >= 2
        # the first name is an observer whose report of this flow was published before
        # (matched against state by time bucket: the same or a neighbouring one)
        assert any(k2 == k and abs(t2 // (5 * NS) - t // (5 * NS)) <= 1
                   and f"s{o2}" == listed[0] for k2, t2, o2 in kept)


def _flows(cids, observers, names, times=None) -> EventBatch:
    n = len(cids)
    return EventBatch("flow", {
        "community_id": np.array(cids, dtype=object),
        "timestamp": np.array(times or [0] * n, np.int64),
        "observer_name": np.array(observers, dtype=object),
        "observer_names": np.array(names, dtype=object)})


def test_fold_merges_updates_into_their_flow_and_names_every_sensor() -> None:
    flows = _flows(["1:a", "1:b", "1:a", "1:c", "1:d"],
                   ["s1", "s1", "zeek", "s1", "zeek"],
                   ["", "s1|s2", "s1|zeek", "", "s9|zeek"])
    assert observer_update_rows(flows).tolist() == [False, False, True, False, True]
    folded = fold_observer_names(flows)
    # updates gone; 1:a names both; 1:b keeps its list; 1:d's kept row is not in the batch
    assert folded.columns["community_id"].tolist() == ["1:a", "1:b", "1:c"]
    assert folded.columns["observer_name"].tolist() == ["s1|zeek", "s1|s2", "s1"]
    plain = _flows(["1:a"], ["s1"], [""])
    assert fold_observer_names(plain) is plain


def test_a_flow_batch_without_observer_names_still_validates_and_travels() -> None:
    from event_builders import make_batch

    from pipeline.wire import decode, encode

    complete = make_batch("flow", [
        {"src": "10.0.0.1", "dst": "192.0.2.9", "community_id": "1:a", "observer": "s1",
         "observer_names": "s1|zeek"},
        {"src": "10.0.0.2", "dst": "192.0.2.9", "community_id": "1:b", "observer": "s1"}])
    validate_batch(complete)
    docs = batch_to_ecs(complete)
    assert docs[0]["cirtsa"]["observers"]["name"] == ["s1", "zeek"]
    assert "observers" not in docs[1].get("cirtsa", {})
    again = decode(encode(complete))
    assert again.columns["observer_names"].tolist() == ["s1|zeek", ""]
    # a producer of before the column (or a message written then)
    without = EventBatch("flow", dict(complete.columns))
    without.columns.pop("observer_names")
    validate_batch(without)
    assert all("observers" not in d.get("cirtsa", {}) for d in batch_to_ecs(without))
    back = decode(encode(without))  # written without the column: filled on reading
    assert back.columns["observer_names"].tolist() == ["", ""]
    assert EventBatch("flow", without.columns).columns["observer_names"].tolist() == ["", ""]
    assert "observer_names" not in without.columns  # the caller's dict is left as it was


def reference_stream(batches, tolerance_ns: int, retention_ns: int, max_keys: int
                     ) -> tuple[list[list[int]], int]:
    """Kept rows per batch of a stream, and the keys evicted by the cap, by brute force:
    a report repeats a kept flow of an earlier batch when that one has the same key, lies
    in the report's time bucket or a neighbour and comes from another observer; state
    buckets older than the newest start - retention are dropped, then the oldest ones
    while more than max_keys are kept."""
    state: list[tuple[int, int, int]] = []  # (key, bucket, observer) of kept flows
    newest = None
    evicted = 0
    out = []
    for rows in batches:
        in_batch_kept = set(reference(rows, tolerance_ns))
        kept = []
        for i, (k, t, o) in enumerate(rows):
            b = t // tolerance_ns
            seen = k >= 0 and any(k2 == k and abs(b2 - b) <= 1 and o2 != o
                                  for k2, b2, o2 in state)
            if not seen and i in in_batch_kept:
                kept.append(i)
        state += [(rows[i][0], rows[i][1] // tolerance_ns, rows[i][2]) for i in kept
                  if rows[i][0] >= 0]
        newest = max([t for _, t, _ in rows] + ([newest] if newest is not None else []))
        horizon = (newest - retention_ns) // tolerance_ns
        for b in sorted({b for _, b, _ in state}):
            if b >= horizon and len(state) <= max_keys:
                break
            if b >= horizon:
                evicted += sum(1 for _, b2, _ in state if b2 == b)
            state = [e for e in state if e[1] != b]
        out.append(kept)
    return out, evicted


stream_strategy = st.lists(
    st.lists(st.tuples(st.integers(-1, 6), st.integers(0, 120 * NS), st.integers(0, 3)),
             min_size=1, max_size=40), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(stream_strategy, st.sampled_from([10.0, 30.0, 600.0]), st.sampled_from([3, 20, 10**6]),
       st.booleans(), st.sampled_from([0, 5, 65_536]))
def test_stream_of_batches_matches_reference(batches, retention_s, max_keys, recode,
                                             recent_min) -> None:
    """Several batches against the state kept between them, with retention and the key
    cap at work (the state is two key-sorted runs of arrays, a recent one merged into the
    older one when it grows: lookups across both, merges, dropped buckets marked dead and
    compacted; observer codes re-assigned after every batch when `recode`; `recent_min`
    0 merges after every batch, 65,536 never in these small streams)."""
    dd = FlowDeduplicator(tolerance_s=5.0, retention_s=retention_s, max_keys=max_keys)
    dd.recent_min = recent_min
    if recode:
        dd.max_names = 1
    expected, evicted = reference_stream(batches, 5 * NS, int(retention_s * NS), max_keys)
    for rows, kept in zip(batches, expected, strict=True):
        out, _ = dd.filter(batch(rows))
        assert out.columns["row"].tolist() == kept
    assert dd.stats["evicted_keys"] == evicted
    assert dd.stats["duplicates"] == sum(map(len, batches)) - sum(map(len, expected))
