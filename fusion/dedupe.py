"""De-duplication: the same flow reported by several sensors becomes one event.

Key = Community ID (direction-free 5-tuple hash) + start time. Two reports of one
connection agree on the Community ID and start within `tolerance_s` of each other (sensor
clocks and first-packet definitions differ a little). The first report wins and keeps its
observer_name; later reports are dropped and counted. Every observer of a kept flow travels
with it in the flow's optional `observer_names` column ('|'-joined, kept observer first)
when the reports meet in one batch. A report of a flow published in an *earlier* batch
cannot change that row any more: it is returned as a *late observer update* (the report
itself, its observer_names listing every observer so far), which the stage publishes or
drops (`fusion.dedupe.late_observers`), and it is added to the published batch's side
structure (`observers`) for in-process writers that write later.

State is bounded: keys live in time buckets of `tolerance_s` (by event time); buckets older
than the newest event time minus `retention_s` are dropped whole, and a hard cap on keys
drops the oldest buckets first (counted).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from pipeline.schema import OBSERVER_SEPARATOR, EventBatch

NS = 1_000_000_000


def key_column(community_id: np.ndarray) -> np.ndarray:
    """Community ID text ('1:' + base64 SHA1) -> uint64 key, column-wise: the first 8
    base64 characters after '1:' (48 bits of the hash) as one word, plus the next 8 folded
    in. Collisions would only merge two flows that also start within the tolerance."""
    raw = np.asarray(community_id.astype("S30"))
    words = raw.view(np.uint8).reshape(-1, 30)
    a = np.ascontiguousarray(words[:, 2:10]).view(np.uint64).ravel()
    b = np.ascontiguousarray(words[:, 10:18]).view(np.uint64).ravel()
    return a ^ (b * np.uint64(0x9E3779B97F4A7C15))


_EMPTY_KEY = np.uint64(0)  # key_column of "" (no Community ID)


def _other_observer(state: tuple[np.ndarray, ...], pos: np.ndarray, keys: np.ndarray,
                    names: np.ndarray) -> np.ndarray:
    """Per queried key found at `pos` (leftmost) in a bucket's sorted state: is one of the
    kept reports with that key from another observer? (A sensor never reports one flow
    twice, so only another observer's report duplicates; a bucket holds a key twice when a
    sensor re-used a 5-tuple, rarely - the loop runs over such runs only.)"""
    skeys, snames = state[0], state[1]
    other = snames[pos] != names
    todo = np.flatnonzero(~other)
    step = pos[todo] + 1
    while todo.size:
        live = step < skeys.size
        todo, step = todo[live], step[live]
        live = skeys[step] == keys[todo]
        todo, step = todo[live], step[live]
        hit = snames[step] != names[todo]
        other[todo[hit]] = True
        todo, step = todo[~hit], step[~hit] + 1
    return other


def _key_order(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row order by key, stable; positions in it of keys that occur more than once).
    A quicksort plus a fix-up of the few repeated keys into row order is ~2x faster than
    a stable sort of uint64 (merge sort) and gives the same order."""
    by_key = np.argsort(keys)
    sorted_keys = keys[by_key]
    repeat = sorted_keys[1:] == sorted_keys[:-1]
    if not repeat.any():
        return by_key, np.empty(0, np.int64)
    at = np.flatnonzero(np.r_[repeat, False] | np.r_[False, repeat])
    rows = by_key[at]
    by_key[at] = rows[np.lexsort((rows, sorted_keys[at]))]
    return by_key, at


def _by_bucket(bucket: np.ndarray, by_key: np.ndarray) -> np.ndarray:
    """Row order grouped by bucket, key order kept inside a bucket. A batch spans few
    buckets: as uint16 offsets a stable sort is numpy's radix sort (linear)."""
    rel = bucket[by_key] - bucket.min()
    if int(rel.max()) < 1 << 16:
        return by_key[np.argsort(rel.astype(np.uint16), kind="stable")]
    return by_key[np.argsort(rel, kind="stable")]


def _joined(lists: list[list[str]]) -> np.ndarray:
    out = np.empty(len(lists), dtype=object)
    out[:] = [OBSERVER_SEPARATOR.join(obs) for obs in lists]
    return out


class FlowDeduplicator:
    def __init__(self, tolerance_s: float = 5.0, retention_s: float = 600.0,
                 max_keys: int = 5_000_000) -> None:
        self.tolerance_ns = max(int(tolerance_s * NS), 1)
        self.bucket_ns = self.tolerance_ns
        self.retention_ns = int(retention_s * NS)
        self.max_keys = max_keys
        # bucket index -> sorted uint64 keys of kept flows starting in that bucket, and
        # their first observers (aligned)
        self.buckets: dict[int, tuple[np.ndarray, ...]] = {}  # keys, names, batch no, row
        # batch no -> that published batch's {row: observers} (filled in when a later
        # report of one of its flows arrives); dropped with the buckets that refer to it
        self.sides: dict[int, dict[int, list[str]]] = {}
        self.batch_no = 0
        self.observers: dict[tuple[int, int], list[str]] = {}  # only flows seen twice+
        self.keys = 0
        self.newest: int | None = None
        self.stats: Counter[str] = Counter()
        self.late: EventBatch | None = None  # late observer updates of the last filter call

    def filter(self, batch: EventBatch) -> tuple[EventBatch, dict[int, list[str]]]:
        """Drop rows that repeat a flow already kept (same Community ID, start within the
        tolerance). Returns the kept rows and, for kept rows that another observer also
        reported, {row index in the kept batch: observer names (first = kept one)}; those
        rows' `observer_names` column holds the same list joined. Late observer updates of
        this call are in `self.late` (see filter_updates)."""
        kept, extra, self.late = self.filter_updates(batch)
        return kept, extra

    def filter_updates(self, batch: EventBatch
                       ) -> tuple[EventBatch, dict[int, list[str]], EventBatch | None]:
        """filter, plus the late observer updates: the rows that repeat a flow published
        in an earlier batch, with `observer_names` = every observer of that flow so far
        (the kept report's first), or None when there are none."""
        n = len(batch)
        if n == 0:
            return batch, {}, None
        cols = batch.columns
        keys = key_column(cols["community_id"])
        keyed = keys != _EMPTY_KEY  # no Community ID (a real one folds to 0: p = 2**-64)
        ts = cols["timestamp"]
        bucket = ts // self.bucket_ns
        names = cols["observer_name"]
        dup = np.zeros(n, dtype=bool)
        hit_bucket = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
        by_key, repeated = _key_order(keys)  # the one full sort; both orders derive from it
        by_bucket = _by_bucket(bucket, by_key)  # grouped by bucket, keys sorted inside
        # 1. against state: per distinct bucket of the batch, its neighbours' key sets
        sorted_b = bucket[by_bucket]
        edges = np.flatnonzero(np.diff(sorted_b)) + 1
        for start, stop in zip(np.r_[0, edges], np.r_[edges, n], strict=True):
            b = int(sorted_b[start])
            if not any(bb in self.buckets for bb in (b, b - 1, b + 1)):
                continue
            rows = by_bucket[start:stop]
            rows = rows[keyed[rows]]
            for bb in (b, b - 1, b + 1):
                state = self.buckets.get(bb)
                if state is None or not len(rows):
                    continue
                pos = np.searchsorted(state[0], keys[rows])
                pos[pos >= len(state[0])] = 0
                found = state[0][pos] == keys[rows]
                if found.any():  # names (object compare) only where the key is known
                    found[found] = _other_observer(state, pos[found], keys[rows[found]],
                                                   names[rows[found]])
                dup[rows[found]] = True
                hit_bucket[rows[found]] = bb
                rows = rows[~found]
        # 2. within the batch: same key, start within the tolerance of the previous report.
        # Only rows whose key occurs twice can be duplicates: those few are ordered by
        # (key, start) exactly.
        in_batch = np.zeros(n, dtype=bool)
        first_of = np.empty(n, dtype=np.int64)  # earlier report each in-batch duplicate joins
        if repeated.size:
            rows = by_key[repeated]
            order = rows[np.lexsort((ts[rows], keys[rows]))]
            same = (keys[order][1:] == keys[order][:-1]) & keyed[order][1:] & (
                np.diff(ts[order]) <= self.tolerance_ns)
            at = np.flatnonzero(same)
            same[at] = names[order[1:][at]] != names[order[:-1][at]]
            in_batch[order[1:][same]] = True
            first_of[order[1:][same]] = order[:-1][same]
        keep = ~dup & ~in_batch
        extra: dict[int, list[str]] = {}
        self.batch_no += 1
        self.sides[self.batch_no] = extra
        late: dict[int, list[str]] = {}
        if (dup | in_batch).any():
            late = self._record_observers(dup, in_batch, first_of, keys, bucket, hit_bucket,
                                          names, cols.get("observer_names"), keep, extra)
        self.stats["duplicates"] += int(n - keep.sum())
        self.stats["flows"] += int(keep.sum())
        kept_rows = np.cumsum(keep) - 1
        remembered = by_bucket[(keep & keyed)[by_bucket]]  # still grouped, keys sorted
        self._remember(keys[remembered], bucket[remembered], names[remembered],
                       kept_rows[remembered])
        self._expire(int(ts.max()))
        updates = None
        if late:
            rows = np.array(sorted(late), dtype=np.int64)
            updates = batch.take(rows)
            updates.columns["observer_names"] = _joined([late[r] for r in rows.tolist()])
            self.stats["late_observers"] += len(rows)
        kept = batch if keep.all() else batch.take(keep)
        if extra:  # the kept rows that other observers reported in this batch
            joined = kept.columns["observer_names"].copy()
            at = np.fromiter(extra, dtype=np.int64, count=len(extra))
            joined[at] = _joined(list(extra.values()))
            kept = EventBatch(kept.kind, {**kept.columns, "observer_names": joined})
        return kept, extra, updates

    def _record_observers(self, dup, in_batch, first_of, keys, bucket, hit_bucket, names,
                          multi, keep, extra) -> dict[int, list[str]]:
        """Fill `extra` (kept row -> observers) and the lists of flows kept earlier; return
        {input row: observers} of the late reports (flows of earlier batches). A loop over
        duplicate reports only (at most one per extra observer of a flow)."""
        def own(i: int) -> list[str]:  # a report's observers (an input may be fused already)
            m = multi[i] if multi is not None else None
            return m.split(OBSERVER_SEPARATOR) if m else [names[i]]

        def add(obs: list[str], i: int) -> None:
            obs += [o for o in own(i) if o not in obs]

        kept_index = np.cumsum(keep) - 1
        late: dict[int, list[str]] = {}
        first: dict[int, str] = {}  # late report -> the observer of the report it repeats
        for i in np.flatnonzero(dup).tolist():
            b, k = int(hit_bucket[i]), int(keys[i])
            skeys, snames, sbatch, srow = self.buckets[b]
            pos = int(np.searchsorted(skeys, keys[i]))
            while snames[pos] == names[i]:  # the report of another observer (see above)
                pos += 1
            first[i] = snames[pos]
            obs = self.observers.get((b, k))
            if obs is None:
                obs = self.observers[(b, k)] = [snames[pos]]
                side = self.sides.get(int(sbatch[pos]))
                if side is not None:  # the published batch lists its observers from now on
                    side[int(srow[pos])] = obs
            add(obs, i)
            late[i] = obs
        for i in np.flatnonzero(in_batch).tolist():
            j = i
            while in_batch[j]:  # chain back to the first report of the flow in this batch
                j = int(first_of[j])
            if dup[j]:  # that one repeats a flow of an earlier batch: so does this one
                add(late[j], i)
                late[i], first[i] = late[j], first[j]
                continue
            obs = extra.get(int(kept_index[j]))
            if obs is None:
                obs = extra[int(kept_index[j])] = own(j)
            add(obs, i)
            self.observers[(int(bucket[j]), int(keys[j]))] = obs
        # An update lists the observer of the published report it repeats first and its
        # own observer last (so the first name is never the row's own: what marks an
        # update, pipeline.schema.observer_update_rows), every other observer between.
        return {i: [first[i]] + [o for o in obs if o not in (first[i], names[i])] + [names[i]]
                for i, obs in late.items()}

    def _remember(self, keys: np.ndarray, bucket: np.ndarray, names: np.ndarray,
                  rows: np.ndarray) -> None:
        """Rows grouped by bucket with keys sorted inside each group (filter's order)."""
        if not len(keys):
            return
        bounds = np.flatnonzero(np.diff(bucket)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(keys)], strict=True):
            b = int(bucket[start])
            new = (keys[start:stop], names[start:stop],
                   np.full(stop - start, self.batch_no, dtype=np.int64), rows[start:stop])
            old = self.buckets.get(b)
            if old is not None:
                merged = [np.concatenate([o, n]) for o, n in zip(old, new, strict=True)]
                o = np.argsort(merged[0], kind="stable")
                new = tuple(m[o] for m in merged)
            self.buckets[b] = new
            self.keys += stop - start

    def _expire(self, newest_ts: int) -> None:
        self.newest = newest_ts if self.newest is None else max(self.newest, newest_ts)
        horizon = (self.newest - self.retention_ns) // self.bucket_ns
        for b in sorted(self.buckets):
            if b >= horizon and self.keys <= self.max_keys:
                break
            dropped = self.buckets.pop(b)
            self.keys -= len(dropped[0])
            if b >= horizon:
                self.stats["evicted_keys"] += len(dropped[0])
        if len(self.observers) > 4 * len(self.buckets) * 1024:  # keep the side maps bounded
            self.observers = {k: v for k, v in self.observers.items() if k[0] in self.buckets}
        if len(self.sides) > 64:
            live = set()
            for state in self.buckets.values():
                live.update(np.unique(state[2]).tolist())
            self.sides = {k: v for k, v in self.sides.items() if k in live}
