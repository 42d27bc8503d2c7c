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

State is bounded: keys belong to time buckets of `tolerance_s` (by event time); buckets
older than the newest event time minus `retention_s` are dropped whole, and a hard cap on
keys drops the oldest buckets first (counted). The state is one set of numeric arrays
sorted by key (not one array per bucket; observers as integer codes): a batch is looked up
by one compiled merge walk of its sorted keys whatever the number of buckets it spans, and
merged in by another - Suricata/Zeek batches of a few thousand flows keyed by flow start
span hundreds of buckets, and per-bucket numpy calls cost them ~3 us a flow. Dropped
buckets' entries are marked dead in place and cut out when they outnumber the live ones.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from pipeline.jit import njit
from pipeline.schema import OBSERVER_SEPARATOR, EventBatch
from pipeline.text_codes import factorize_text

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
        # kept flows, sorted by key (equal keys in the order they were kept): key, time
        # bucket, observer, batch no, row in that published batch (aligned arrays)
        self.state = _State.empty()
        # the newest kept flows, merged into `state` when they reach a fraction of it: a
        # batch is merged into this small run, not into the whole state (which would cost
        # O(state) per batch: quadratic for a steady stream of small batches). Entries of
        # `recent` are newer than all of `state`; positions count `state` first.
        self.recent = _State.empty()
        # the live time buckets of the state, ascending, and how many entries each holds
        self.live_buckets = np.empty(0, np.int64)
        self.bucket_sizes = np.empty(0, np.int64)
        # observer name <-> small int code: the state is numeric (merged in one pass)
        self.name_code: dict[str, int] = {}
        self.name_of: list[str] = []
        # batch no -> that published batch's {row: observers} (filled in when a later
        # report of one of its flows arrives); dropped with the buckets that refer to it
        self.sides: dict[int, dict[int, list[str]]] = {}
        self.batch_no = 0
        self.sides_limit = 64  # sides kept before the ones of dead batches are dropped
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
        name_codes = self._name_codes(names)
        dup = np.zeros(n, dtype=bool)
        hit_bucket = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
        by_key, repeated = _key_order(keys)  # the one full sort
        # 1. against state: kept flows of earlier batches with the key in the row's bucket
        # or a neighbour, from another observer (a sensor never reports one flow twice)
        hit_pos = np.zeros(n, dtype=np.int64)  # that kept report (first in state order)
        if self.keys:
            found, found_bucket, found_pos = _lookup(
                (self.state, self.recent), keys, bucket, name_codes, keyed, by_key)
            dup[found] = True
            hit_bucket[found] = found_bucket
            hit_pos[found] = found_pos
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
                                          hit_pos, names, cols.get("observer_names"), keep,
                                          extra)
        self.stats["duplicates"] += int(n - keep.sum())
        self.stats["flows"] += int(keep.sum())
        kept_rows = np.cumsum(keep) - 1
        remembered = by_key[(keep & keyed)[by_key]]  # key order, equal keys in row order
        self._remember(keys[remembered], bucket[remembered], name_codes[remembered],
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

    def _record_observers(self, dup, in_batch, first_of, keys, bucket, hit_bucket, hit_pos,
                          names, multi, keep, extra) -> dict[int, list[str]]:
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
            pos = int(hit_pos[i])  # the first kept report of another observer (lookup)
            run = self.state
            if pos >= run.keys.size:
                pos -= run.keys.size
                run = self.recent
            sbatch, srow = run.batch, run.row
            first[i] = self.name_of[int(run.names[pos])]
            obs = self.observers.get((b, k))
            if obs is None:
                obs = self.observers[(b, k)] = [first[i]]
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

    def _name_codes(self, names: np.ndarray) -> np.ndarray:
        """int64 code per observer name (codes are the deduplicator's, stable across
        batches). A batch usually comes from one observer: one C-level compare decides."""
        n = names.shape[0]
        items = names.tolist()
        if n and items.count(items[0]) == n:  # C-level, identity first
            return np.full(n, self._code(items[0]), dtype=np.int64)
        local, distinct = factorize_text(names)
        return np.array([self._code(v) for v in distinct], dtype=np.int64)[local]

    def _code(self, name: str) -> int:
        code = self.name_code.get(name)
        if code is None:
            code = self.name_code[name] = len(self.name_of)
            self.name_of.append(name)
        return code

    def _remember(self, keys: np.ndarray, bucket: np.ndarray, names: np.ndarray,
                  rows: np.ndarray) -> None:
        """Add kept flows (rows in key order, equal keys in row order; names as codes) to
        the state."""
        if not len(keys):
            return
        self.recent = self.recent.merged(_State(
            keys, bucket, names, np.full(keys.size, self.batch_no, dtype=np.int64), rows))
        if self.recent.keys.size > max(self.recent_min, self.state.keys.size // 16):
            self.state, self.recent = self.state.merged(self.recent), _State.empty()
        # bucket bookkeeping column-wise (a batch may touch hundreds of buckets)
        low = int(bucket.min())
        if int(bucket.max()) - low < 4 * bucket.size:  # a dense range: count, no sort
            counts = np.bincount(bucket - low)
            new_buckets = np.flatnonzero(counts) + low
            counts = counts[counts > 0]
        else:
            new_buckets, counts = np.unique(bucket, return_counts=True)
        merged, where = np.unique(np.concatenate([self.live_buckets, new_buckets]),
                                  return_inverse=True)
        sizes = np.zeros(merged.size, np.int64)
        sizes[where[:self.live_buckets.size]] = self.bucket_sizes
        sizes[where[self.live_buckets.size:]] += counts
        self.live_buckets, self.bucket_sizes = merged, sizes
        self.keys += keys.size

    def _expire(self, newest_ts: int) -> None:
        self.newest = newest_ts if self.newest is None else max(self.newest, newest_ts)
        horizon = (self.newest - self.retention_ns) // self.bucket_ns
        # buckets are dropped oldest first: every one before the horizon, then more while
        # the state holds more than max_keys entries
        sizes = self.bucket_sizes
        old = int(np.searchsorted(self.live_buckets, horizon))  # buckets < horizon
        left = self.keys - np.cumsum(sizes)  # entries left after dropping buckets 0..i
        over = np.r_[self.keys, left[:-1]] > self.max_keys  # bucket i must go for the cap
        drop = old + int(np.argmin(over[old:])) if not over[old:].all() else sizes.size
        cutoff = None
        if drop:
            cutoff = int(self.live_buckets[drop - 1])
            self.keys -= int(sizes[:drop].sum())
            self.stats["evicted_keys"] += int(sizes[old:drop].sum())
            self.live_buckets, self.bucket_sizes = self.live_buckets[drop:], sizes[drop:]
        if cutoff is not None:
            # dropped entries are marked dead in place (observer code -1) and cut out only
            # when they outnumber the live ones: not a copy of the state per batch
            dead = sum(_mark_dead(run.bucket, run.names, cutoff, _DEAD)
                       for run in (self.state, self.recent))
            if dead > self.keys:
                self.state = _State(*_compact(*self.state._arrays(), _DEAD))
                self.recent = _State(*_compact(*self.recent._arrays(), _DEAD))
        if len(self.observers) > 4 * len(self.bucket_sizes) * 1024:  # keep side maps bounded
            live = set(self.live_buckets.tolist())
            self.observers = {k: v for k, v in self.observers.items() if k[0] in live}
        if len(self.sides) > self.sides_limit:
            live = {b for run in (self.state, self.recent)
                    for b in np.unique(run.batch[run.names != _DEAD]).tolist()}
            self.sides = {k: v for k, v in self.sides.items() if k in live}
            # a scan of the whole state: again only once the map has doubled (every batch
            # while hundreds of batches are alive would be O(state) per batch); a side kept
            # longer is only memory, the lookups never reach it
            self.sides_limit = max(64, 2 * len(self.sides))
        if len(self.name_of) > self.max_names:  # many observer names (hostile input?)
            self._recode_names()

    max_names = 65_536  # observer codes kept before the unused ones are dropped
    recent_min = 65_536  # entries the recent run may hold before it is merged, however small
    # the state (merged past 1/16 of the state: amortized O(16) copies per entry)

    def _recode_names(self) -> None:
        """Codes only for the observers of live state entries (bounds the name table)."""
        names = np.concatenate([self.state.names, self.recent.names])
        used = np.unique(names[names != _DEAD])
        new_code = np.full(len(self.name_of) + 1, _DEAD, np.int64)  # [-1] keeps dead dead
        new_code[used] = np.arange(used.size)
        self.state.names = new_code[self.state.names]
        self.recent.names = new_code[self.recent.names]
        self.name_of = [self.name_of[c] for c in used.tolist()]
        self.name_code = {name: i for i, name in enumerate(self.name_of)}


_DEAD = -1  # observer code of a state entry whose bucket was dropped


@njit
def _merge_state(old_key, old_bucket, old_name, old_batch, old_row,
                 new_key, new_bucket, new_name, new_batch, new_row):
    """The state's arrays with the new entries merged in, all five in one pass. Both
    inputs sorted by key; a new entry goes after the old ones of an equal key. Indices:
    i < len(old) and j < len(new) are checked before every read."""
    n_old = old_key.shape[0]
    n_new = new_key.shape[0]
    n = n_old + n_new
    key = np.empty(n, old_key.dtype)
    bucket = np.empty(n, np.int64)
    name = np.empty(n, np.int64)
    batch = np.empty(n, np.int64)
    row = np.empty(n, np.int64)
    i = 0
    j = 0
    for k in range(n):
        if j < n_new and (i >= n_old or new_key[j] < old_key[i]):
            key[k], bucket[k], name[k] = new_key[j], new_bucket[j], new_name[j]
            batch[k], row[k] = new_batch[j], new_row[j]
            j += 1
        else:
            key[k], bucket[k], name[k] = old_key[i], old_bucket[i], old_name[i]
            batch[k], row[k] = old_batch[i], old_row[i]
            i += 1
    return key, bucket, name, batch, row


@njit
def _mark_dead(bucket: np.ndarray, name: np.ndarray, cutoff: int, dead: int) -> int:
    """Mark entries of buckets <= cutoff dead (name = dead) in place; return how many
    entries are dead now (these and earlier ones)."""
    count = 0
    for k in range(bucket.shape[0]):
        if bucket[k] <= cutoff:
            name[k] = dead
        if name[k] == dead:
            count += 1
    return count


@njit
def _compact(key, bucket, name, batch, row, dead: int):
    """The five arrays without the entries whose name is `dead`, in one pass."""
    n = 0
    for k in range(name.shape[0]):
        if name[k] != dead:
            n += 1
    out_key = np.empty(n, key.dtype)
    out_bucket = np.empty(n, np.int64)
    out_name = np.empty(n, np.int64)
    out_batch = np.empty(n, np.int64)
    out_row = np.empty(n, np.int64)
    m = 0
    for k in range(name.shape[0]):
        if name[k] != dead:
            out_key[m], out_bucket[m], out_name[m] = key[k], bucket[k], name[k]
            out_batch[m], out_row[m] = batch[k], row[k]
            m += 1
    return out_key, out_bucket, out_name, out_batch, out_row


class _State:
    """Kept flows as aligned numeric arrays sorted by key; equal keys stay in the order they
    were kept (what the per-bucket arrays of before held, per bucket). Observers are codes
    (FlowDeduplicator.name_of)."""

    def __init__(self, keys: np.ndarray, bucket: np.ndarray, names: np.ndarray,
                 batch: np.ndarray, row: np.ndarray) -> None:
        self.keys, self.bucket, self.names, self.batch, self.row = keys, bucket, names, batch, row

    @classmethod
    def empty(cls) -> _State:
        return cls(np.empty(0, np.uint64), *(np.empty(0, np.int64) for _ in range(4)))

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self.keys, self.bucket, self.names, self.batch, self.row

    def merged(self, new: _State) -> _State:
        """Both sorted by key -> one, new entries after the old ones of an equal key: one
        compiled linear pass (not a re-sort)."""
        if not self.keys.size:
            return new
        return _State(*_merge_state(*self._arrays(), *new._arrays()))

    def candidates(self, sorted_keys: np.ndarray, by_key: np.ndarray, bucket: np.ndarray,
                   names: np.ndarray, keyed: np.ndarray, offset: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, position + offset, bucket step) of the entries with a row's key in its time
        bucket or a neighbour, from another observer, alive. Binary searches of the sorted
        queries: O(batch log state), not a walk over the state."""
        n = sorted_keys.size
        empty = np.empty(0, np.int64)
        if not self.keys.size:
            return empty, empty, empty
        lo = np.empty(n, np.int64)
        hi = np.empty(n, np.int64)
        lo[by_key] = np.searchsorted(self.keys, sorted_keys, "left")
        hi[by_key] = np.searchsorted(self.keys, sorted_keys, "right")
        rows = np.flatnonzero((hi > lo) & keyed)
        if not rows.size:
            return empty, empty, empty
        count = (hi - lo)[rows]
        row_of = np.repeat(rows, count)  # one candidate per (row, entry of its key)
        first = np.cumsum(count) - count
        pos = lo[row_of] + np.arange(row_of.size) - np.repeat(first, count)
        step = self.bucket[pos] - bucket[row_of]  # -1, 0, +1: neighbours
        owner = self.names[pos]
        near = (np.abs(step) <= 1) & (owner != names[row_of]) & (owner != _DEAD)
        return row_of[near], pos[near] + offset, step[near]


def _lookup(runs: tuple[_State, ...], keys: np.ndarray, bucket: np.ndarray, names: np.ndarray,
            keyed: np.ndarray, by_key: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (is a kept flow of another observer in the row's time bucket or a
    neighbour, tried in the order same, previous, next?, that bucket, the first such
    entry's position). `runs` are the state's sorted runs, older first; a position counts
    the earlier runs' entries first (the order one merged run would have: for an equal key
    older entries come first). Buckets and observer codes are compared only for entries
    whose key matches."""
    n = keys.size
    found = np.zeros(n, dtype=bool)
    sorted_keys = keys[by_key]
    parts = []
    offset = 0
    for run in runs:
        parts.append(run.candidates(sorted_keys, by_key, bucket, names, keyed, offset))
        offset += run.keys.size
    row_of = np.concatenate([p[0] for p in parts])
    if not row_of.size:
        return found, np.empty(0, np.int64), np.empty(0, np.int64)
    pos = np.concatenate([p[1] for p in parts])
    step = np.concatenate([p[2] for p in parts])
    # preference: same bucket, then previous, then next; then state order (position)
    rank = np.where(step == 0, 0, np.where(step < 0, 1, 2))
    order = np.lexsort((pos, rank, row_of))
    row_of, pos, step = row_of[order], pos[order], step[order]
    best = np.r_[True, row_of[1:] != row_of[:-1]]
    found[row_of[best]] = True
    return found, bucket[row_of[best]] + step[best], pos[best]
