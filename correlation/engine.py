"""The correlation engine: event-time hopping windows, watermark, vectorized detectors, alerts.

Time is event time only. The watermark is the largest event time pushed so far (any kind)
minus `allowed_lateness_s`; window [start, start + size) of a detector closes once the
watermark reaches its end, and the detector then sees every buffered row of it. Windows
close in ascending order, each exactly once, so results do not depend on how the input is
split into batches as long as no event arrives more than `allowed_lateness_s` behind the
newest event pushed before it. An event arriving for windows that already closed is
counted (`late_events`) and still counted in the windows of it that are open; when none
is open it is dropped and counted (`late_dropped`).

State is bounded: per detector and kind, the engine keeps only the columns the detector
asked for, of the rows its `select` kept, and drops rows once no open window needs them
(compacting when they are over a quarter of the buffer), plus a hard `max_buffered_rows`
cap, oldest rows dropped first and counted. The rows are stored once per kind for all
detectors (a shared buffer, `_SharedBuffer`, in which each detector keeps the positions of
its rows), and every buffered address gets a stable id once, on arrival (a compiled hash table,
correlation/kernels.py), from which the order-preserving address codes detectors group by
are a gather at window close; what each detector sees is exactly what a buffer of its own
would hold.

Repeats are suppressed, Zeek-notice style: once (rule, key) alerted for the window starting
at s, findings of the same (rule, key) in windows starting before s + max(window_s,
suppress_s) are dropped (and counted). Decisions are taken in window order, so they are
as deterministic and batch-split independent as the windows themselves.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import orjson

from correlation.alerts import (
    NOT_FOUND_CLOSED,
    NOT_FOUND_OPEN,
    SUPPRESSED,
    WITHDRAWN,
    build_alerts,
    count_versions,
    gc_paused,
    mark_version,
    withdraw,
)
from correlation.arrival_memo import rows_in_range
from correlation.detector import (
    NS_PER_S,
    Detector,
    Finding,
    WindowRange,
    combine_codes,
)
from correlation.engine_kernels import (
    grow_column,
    held_rows,
    kept_runs,
    move_columns_by_runs,
    ranks_among,
    renumber_by_runs,
)
from correlation.kernels import (
    AddressTable,
    count_at,
    factorize_u64,
    hold_rows,
    min_max,
    more_stale_than,
    ranked_codes,
    release_stale,
)
from correlation.network_common import batch_memo
from pipeline.config import deep_merge, load_class, load_config
from pipeline.heap import freeze_startup_heap
from pipeline.schema import EventBatch, fold_observer_names, object_addresses, validate_batch
from sensors.packets import IP_DTYPE


# Config section name under `correlation.detectors` -> "module:class". New detectors add a line.
def default_config() -> dict:
    """The `correlation` section of the embedded defaults (pipeline/config.py)."""
    return load_config()["correlation"]


def merge_config(base: Mapping, override: Mapping | None) -> dict:
    """Deep merge: mappings merge key by key, anything else in `override` replaces."""
    return deep_merge(dict(base), dict(override or {}))


def detector_class(name: str, section: Mapping) -> type[Detector]:
    """The class a detector section names in its `detector: module:Class` key."""
    return load_class(f"correlation.detectors.{name}.detector", section.get("detector"),
                      "correlation", Detector)


def build_detectors(config: Mapping) -> list[Detector]:
    """One detector per enabled section of `config["detectors"]`, in config order."""
    detectors: list[Detector] = []
    for name, section in (config.get("detectors") or {}).items():
        if not section.get("enabled", True):
            continue
        detectors.append(detector_class(name, section)(section))
    return detectors


class _AddressTable(AddressTable):
    """AddressTable with ranks_among's scratch, counting the ids ranked locally since its
    ranks went stale (see _SharedBuffer.address_codes)."""

    def __init__(self) -> None:
        super().__init__()
        self.ranked_locally = 0
        # ranks_among's scratch: mark[id] = the epoch of the call that last counted id
        self._mark = np.empty(0, np.int64)
        self._slot = np.empty(0, np.int64)
        self._epoch = 0

    def ranks_among(self, ids: np.ndarray) -> tuple[np.ndarray, int]:
        """engine_kernels.ranks_among of `ids` (ids of this table) with the table's scratch."""
        if self._mark.shape[0] < self.size:
            grown = max(self.size, 2 * self._mark.shape[0], 1024)
            self._mark = np.full(grown, -1, np.int64)  # -1: no epoch (epochs count from 0)
            self._slot = np.empty(grown, np.int64)
        epoch = self._epoch
        self._epoch += 1
        return ranks_among(ids, self.hi, self.lo, self._mark, self._slot, epoch)

    def ranks(self) -> np.ndarray:
        self.ranked_locally = 0
        return super().ranks()


class _SharedBuffer:
    """Rows of one event kind that at least one detector selected, stored once for all.

    Why shared: the hour-long detectors (beaconing, strobe, exfiltration) select nearly
    every flow; one copy per detector made the engine spend most of its time copying the
    same rows (object columns included). Here every row is copied once, into growable
    arrays, and every consuming detector ("user") keeps the ascending positions of the
    rows it holds: exactly the rows the former per-detector buffer held (same drops, caps
    and compaction points), so detectors see the same input. Why positions and not a
    membership bit per row: the short-window detectors hold a few hundred rows of a buffer
    the hour-long ones keep at 10^5 rows, and a bit row made every view, prune and stale
    scan of theirs cost the whole buffer; with positions each costs the user's own rows.
    Rows no user holds are compacted away once they are over a quarter of the buffer (a
    per-row holder count says how many). Object (text) columns are kept as an int32 code
    per row into a table of the distinct objects appended (factorized by object pointer,
    no Python object touched per row): a sensor's columns repeat a few str objects, and
    copying one object reference per row was the costliest part of appends and of
    compacting a 10^7-row buffer (a read is a gather of the same objects, identity kept).
    Address columns also keep an id per row into one AddressTable per kind.
    """

    def __init__(self, columns: tuple[str, ...], users: int) -> None:
        self.names = columns
        self.arrays: dict[str, np.ndarray] = {}  # numeric columns, growable
        # object columns: code per row (growable) into a growable object array of the
        # objects appended (objects[c][:object_count[c]]); `_code_of` maps the pointer of a
        # tabled object to its code (the table keeps the object alive, so its address
        # cannot be reused while the entry exists)
        self.object_codes: dict[str, np.ndarray] = {}
        self.objects: dict[str, np.ndarray] = {}
        self.object_count: dict[str, int] = {}
        self._code_of: dict[str, dict[int, int]] = {}
        self.capacity = 0  # rows the numeric columns have room for
        # _positions[u][:held[u]]: ascending buffer rows user u holds (growable; positions
        # handed out are never written again: releases build new arrays, appends go past)
        self._positions = [np.empty(0, np.int64) for _ in range(users)]
        self.held = [0] * users  # rows each user holds (its former buffer size)
        # earliest time each user holds, kept up to date on append (the engine asks on
        # every push until a detector's first window closes); None = recompute. After a
        # release it is kept as a lower bound (first_exact False): releases only raise the
        # minimum, and a bound answers "can a window close yet?" without a pass over
        # millions of held rows on every push of a capped buffer (issue #4).
        self.first_time: list[int | None] = [None] * users
        self.first_exact = [True] * users
        self.rows = 0
        # holders[row]: how many users hold the row; `free` rows no user holds (compaction)
        self.holders = np.zeros(0, np.int16)
        self.free = 0
        # Address columns get a stable id per distinct address on arrival (one hash probe
        # per row, ever), so the order-preserving codes detectors group by are one gather
        # at window close instead of a sort of the whole buffer per close.
        self.addresses = _AddressTable()
        self.address_ids: dict[str, np.ndarray] = {}  # address column -> ids, growable

    def append(self, columns: Mapping[str, np.ndarray], selected: list[np.ndarray]) -> None:
        """Append the rows any user selected; selected[u] = sorted row indices of user u."""
        n_in = next(iter(columns.values())).shape[0]
        holders = np.zeros(n_in, np.int16)
        # count the holders of each row and each user's earliest time in one compiled pass
        # (idx holds distinct rows)
        earliest_of = [hold_rows(holders, idx, columns["timestamp"]) if idx.size else None
                       for idx in selected]
        rows = np.flatnonzero(holders)
        n = rows.size
        if n == 0:
            return
        need = self.rows + n
        if need > self.capacity:
            # x4: growth copies ~1/3 of the final rows instead of ~1x; the unused tail of
            # numeric columns is never touched, so it costs address space, not memory
            self._grow(max(need, 4 * self.capacity, 1024), columns)
        everything = n == n_in  # skip the gather when every row is wanted
        # numeric columns gathered straight into the buffer (no temporary); mode "clip":
        # numpy buffers `out` under the default "raise", and rows are in range by
        # construction (nonzero of a per-input-row count), as the users' idx are (hold_rows
        # raised on any out-of-range row)
        for c in self.arrays:
            if everything:
                self.arrays[c][self.rows:need] = columns[c]
            else:
                np.take(columns[c], rows, out=self.arrays[c][self.rows:need], mode="clip")
        for c, codes in self.object_codes.items():
            codes[self.rows:need] = self._object_codes_of(c, columns[c],
                                                          None if everything else rows)
        for c, ids in self.address_ids.items():  # (ids written in place)
            self.addresses.intern(self.arrays[c][self.rows:need], out=ids[self.rows:need])
        # where each input row lands in the buffer (an offset when every row is appended)
        if not everything:
            landing = np.empty(n_in, np.int64)
            landing[rows] = np.arange(self.rows, need, dtype=np.int64)
        for u, idx in enumerate(selected):
            if idx.size:
                earliest = int(earliest_of[u])
                if self.held[u] == 0:
                    self.first_time[u] = earliest
                    self.first_exact[u] = True
                elif self.first_time[u] is not None:
                    self.first_time[u] = min(self.first_time[u], earliest)
                self._add_positions(u, idx, self.rows if everything else landing)
        if everything:
            self.holders[self.rows:need] = holders
        else:
            np.take(holders, rows, out=self.holders[self.rows:need], mode="clip")
        self.rows = need

    def _object_codes_of(self, name: str, column: np.ndarray,
                         rows: np.ndarray | None) -> np.ndarray:
        """Codes of column[rows] (every row when None), new objects added to the table."""
        # (a text column of another dtype, if a producer sends one: as objects, as before)
        column = np.ascontiguousarray(column, dtype=object)
        pointers = object_addresses(column)
        if rows is not None:
            pointers = pointers[rows]
        n = pointers.shape[0]
        if n == 0:
            return np.empty(0, np.int32)
        code_of = self._code_of[name]
        first_pointer = int(pointers[0])
        low, high = min_max(pointers)  # one compiled pass instead of two reductions
        if low == high:  # one object in every row (one sensor/zone)
            code = code_of.get(first_pointer)
            if code is None:
                code = code_of[first_pointer] = self._table_objects(
                    name, column[rows[:1] if rows is not None else slice(0, 1)])
            return np.full(n, code, np.int32)
        # (a few distinct objects: a Python step per distinct one, so at most 64 of them)
        found = factorize_u64(pointers, limit=64)
        if found is None or 2 * found[1].shape[0] > n:
            # mostly distinct objects (names): a code per row, no pointer entries
            start = self._table_objects(name, column if rows is None else column[rows])
            return np.arange(start, start + n, dtype=np.int32)
        pointer_codes, first = found
        at = first if rows is None else rows[first]
        code_of_distinct = np.empty(first.shape[0], np.int32)
        for i, pointer in enumerate(pointers[first].tolist()):
            code = code_of.get(pointer)
            if code is None:
                code = code_of[pointer] = self._table_objects(name, column[at[i:i + 1]])
            code_of_distinct[i] = code
        return code_of_distinct[pointer_codes]

    def _table_objects(self, name: str, objects: np.ndarray) -> int:
        """Append objects to a column's table (amortized growth); the first one's code."""
        start = self.object_count[name]
        end = start + objects.shape[0]
        if end >= 2**31:
            raise OverflowError("object table beyond int32 codes")
        table = self.objects[name]
        if end > table.shape[0]:
            grown = np.empty(max(end, 2 * table.shape[0], 64), object)
            grown[:start] = table[:start]
            self.objects[name] = table = grown
        table[start:end] = objects
        self.object_count[name] = end
        return start

    def gather_objects(self, name: str, positions: np.ndarray | slice) -> np.ndarray:
        """An object column at `positions` (any order): the same objects as appended."""
        return self.objects[name].take(self.object_codes[name][positions])

    def _add_positions(self, user: int, idx: np.ndarray, landing: np.ndarray | int) -> None:
        """Append the buffer rows of input rows idx (landing[idx], or idx + landing when it
        is an offset: ascending, past the user's last one) to the user's positions,
        computed in place (amortized growth)."""
        held = self.held[user]
        end = held + idx.shape[0]
        buf = self._positions[user]
        if end > buf.shape[0]:
            grown = np.empty(max(end, 2 * buf.shape[0], 256), np.int64)
            grown[:held] = buf[:held]
            self._positions[user] = buf = grown
        if type(landing) is int:
            np.add(idx, landing, out=buf[held:end])
        else:
            np.take(landing, idx, out=buf[held:end], mode="clip")
        self.held[user] = end

    def _grow(self, size: int, columns: Mapping[str, np.ndarray]) -> None:
        if not self.arrays and not self.object_codes:  # first rows: columns by storage
            self.object_codes = {c: np.empty(0, np.int32) for c in self.names
                                 if columns[c].dtype == object}
            self.objects = {c: np.empty(0, object) for c in self.object_codes}
            self.object_count = {c: 0 for c in self.object_codes}
            self._code_of = {c: {} for c in self.object_codes}
            self.address_ids = {c: np.empty(0, np.int64) for c in self.names
                                if columns[c].dtype == IP_DTYPE}
            self.arrays = {c: np.empty(0, columns[c].dtype) for c in self.names
                           if c not in self.object_codes}
        # in place where numpy can (an mremap, no copy: see grow_column); the tails stay
        # uninitialized (append writes every row it adds)
        for group in (self.arrays, self.address_ids, self.object_codes):
            for c in group:
                grow_column(group, c, size, self.rows)
        # holders past `rows` stay zero (2 bytes a row: a copy into calloc'ed zeros is cheap)
        holders = np.zeros(size, np.int16)
        holders[: self.rows] = self.holders[: self.rows]
        self.holders = holders
        self.capacity = size

    def column(self, name: str) -> np.ndarray:
        """Every row of one column (a view of a numeric column; objects gathered)."""
        if name in self.arrays:
            return self.arrays[name][: self.rows]
        return self.gather_objects(name, slice(0, self.rows))

    def positions(self, user: int) -> np.ndarray:
        """Ascending buffer rows the user holds (a view; never written afterwards)."""
        return self._positions[user][: self.held[user]]

    def view(self, user: int, names: tuple[str, ...]) -> _UserColumns:
        return _UserColumns(self, self.positions(user), names)

    def times(self, user: int) -> np.ndarray:
        return self.arrays["timestamp"][self.positions(user)]

    def min_time(self, user: int) -> int | None:
        """Earliest event time the user holds (None: holds nothing)."""
        if not self.held[user]:
            return None
        if self.first_time[user] is None or not self.first_exact[user]:
            self.first_time[user] = int(self.times(user).min())
            self.first_exact[user] = True
        return self.first_time[user]

    def min_time_bound(self, user: int) -> int | None:
        """A time <= every event time the user holds (None: holds nothing): the exact
        minimum, or the one before rows were released, without a pass over the rows."""
        if not self.held[user]:
            return None
        if self.first_time[user] is None:
            return self.min_time(user)
        return self.first_time[user]

    def _released(self, user: int) -> None:
        """Rows of the user went: its minimum can only have risen (a bound now)."""
        self.first_exact[user] = False

    def max_time(self, user: int) -> int | None:
        return int(self.times(user).max()) if self.held[user] else None

    def drop_oldest(self, user: int, count: int) -> None:
        """Release the user's `count` earliest-arrived rows (the hard row cap)."""
        buf = self._positions[user]
        gone = buf[:count]
        holders = self.holders[gone] - 1
        self.holders[gone] = holders
        self.free += int(np.count_nonzero(holders == 0))
        # A view past the dropped prefix, spare capacity included: at the cap this runs
        # on every push, and a copy of the kept positions (millions) made each push cost
        # the whole buffer (a 50k events/s stream fell behind once 300 s windows filled).
        # The prefix's memory goes at the next growth, which copies only the held rows.
        self._positions[user] = buf[count:]
        self.held[user] -= count
        self._released(user)

    def prune(self, user: int, horizon: int) -> None:
        """Release the user's rows before `horizon` when they are over a quarter of its rows.

        The former per-detector buffer compacted on the same condition; keeping the rule
        keeps what a detector sees (stale rows included) exactly as before. Compiled
        passes over the user's own positions: no mask temporaries, no whole-buffer scan.
        """
        first = self.first_time[user]
        if not self.held[user] or (first is not None and first >= horizon):  # none stale
            return
        mine = self.positions(user)
        times = self.arrays["timestamp"]
        if more_stale_than(mine, times, horizon, self.held[user] // 4):
            kept, freed = release_stale(mine, times, horizon, self.holders)
            self._positions[user] = kept
            self.held[user] = int(kept.shape[0])
            self.free += freed
            self._released(user)

    def compact(self) -> None:
        """Drop rows no user holds once they are over a quarter of the buffer."""
        if self.free <= self.rows // 4:
            return
        # int32 row indices, no whole-buffer bool or int64 temporaries (engine_kernels)
        keep = held_rows(self.holders, self.rows)
        n_used = keep.shape[0]
        # in place, one compiled pass per column by runs of kept rows (no temporaries, no
        # index read per row); object codes included
        runs = kept_runs(keep, self.rows)
        move_columns_by_runs((*self.arrays.values(), *self.address_ids.values(),
                              *self.object_codes.values(), self.holders), runs)
        self.holders[n_used:self.rows] = 0
        # every held row is kept: its run's shift gives its new position (a merge walk over
        # the user's positions and the runs they cover)
        for u in range(len(self._positions)):
            self._positions[u] = renumber_by_runs(self.positions(u), runs)
        self.rows = n_used
        self.free = 0
        self._forget_addresses()
        self._forget_objects()

    def _forget_objects(self) -> None:
        """Drop the objects no row refers to once they are most of a table (a column of
        mostly distinct objects gets a code per row), so that tables stay bounded."""
        for c, codes in self.object_codes.items():
            count = self.object_count[c]
            if count <= 2 * self.rows + 1024:
                continue
            live = np.zeros(count, bool)
            live[codes[: self.rows]] = True
            kept = np.flatnonzero(live)
            remap = np.full(count, -1, np.int32)
            remap[kept] = np.arange(kept.shape[0], dtype=np.int32)
            codes[: self.rows] = remap[codes[: self.rows]]
            self.objects[c] = self.objects[c].take(kept)  # a fresh array: the rest go
            self.object_count[c] = kept.shape[0]
            self._code_of[c] = {p: int(remap[code]) for p, code in self._code_of[c].items()
                                if live[code]}

    def _forget_addresses(self) -> None:
        """Renumber the address table to the live rows' addresses once most ids are dead, so
        that it stays bounded like the rows."""
        live_bound = self.rows * len(self.address_ids)
        if self.addresses.size <= 2 * live_bound + 65536:
            return
        live = np.zeros(self.addresses.size, bool)
        for ids in self.address_ids.values():
            live[ids[: self.rows]] = True
        remap = self.addresses.rebuild(live)
        for ids in self.address_ids.values():
            ids[: self.rows] = remap[ids[: self.rows]]

    def address_codes(self, names: tuple[str, ...], positions: np.ndarray) -> np.ndarray:
        """Order-preserving (not dense) codes of the address tuple `names` at `positions`:
        ordered like factorize_ip codes of one column, like combine_codes of several."""
        table = self.addresses
        if table.ranks_stale():
            # rank locally while the ids ranked so since the table went stale stay a small
            # share of it; beyond, one re-rank serves every later read until new addresses
            wanted = table.ranked_locally + positions.shape[0] * len(names)
            if wanted * _LOCAL_RANK_SHARE <= table.size:
                table.ranked_locally = wanted
                return self._local_address_codes(names, positions)
        ranks = self.addresses.ranks()
        radix = max(1, self.addresses.size)
        if len(names) > 2 or (len(names) == 2 and radix > 3_000_000_000):  # int64 overflow
            return combine_codes(*(ranks[self.address_ids[c][positions]] for c in names))[0]
        # one compiled pass: rank of the first address (times radix, plus the second's)
        ids = self.address_ids[names[0]]
        second = self.address_ids[names[1]] if len(names) == 2 else ids
        return ranked_codes(ranks, ids, second, positions, radix if len(names) == 2 else 0)

    def address_equality_codes(self, names: tuple[str, ...], positions: np.ndarray
                               ) -> np.ndarray:
        """Codes of the address tuple `names` at `positions` that are equal iff the tuples
        are, in no particular order: the interned ids themselves (packed for a pair). Why:
        callers that only compare or count keys (prefilter.raw_address_codes) need no
        ranks, whose refresh after every push that brought a new address costs the table
        or a local sort."""
        radix = max(1, self.addresses.size)
        if len(names) > 2 or (len(names) == 2 and radix > 3_000_000_000):  # int64 overflow
            return self.address_codes(names, positions)
        first = self.address_ids[names[0]][positions]
        if len(names) == 1:
            return first if first.base is None else first.copy()  # (a slice: not a view)
        codes = first * radix  # (a new array: positions may be a slice, first a view)
        codes += self.address_ids[names[1]][positions]
        return codes

    def _local_address_codes(self, names: tuple[str, ...], positions: np.ndarray
                             ) -> np.ndarray:
        """address_codes ranked among the addresses at `positions` alone (the same order,
        other values). Why: re-ranking the whole table after a push that brought a new
        address costs O(table) (~0.3 ms at 3*10^4 addresses), and a short-hop detector
        closes after nearly every push of small batches, over a few hundred rows."""
        m = positions.shape[0]
        ids = (self.address_ids[names[0]][positions] if len(names) == 1 else
               np.concatenate([self.address_ids[c][positions] for c in names]))
        codes, d = self.addresses.ranks_among(ids)
        if len(names) == 1:
            return codes
        if len(names) == 2:  # d <= 2m: no int64 overflow
            return codes[:m] * d + codes[m:]
        return combine_codes(*(codes[i * m:(i + 1) * m] for i in range(len(names))))[0]


class _UserColumns(dict):
    """One detector's buffered columns, gathered from the shared buffer on first access.

    A dict (a hit is a plain C lookup: evidence code reads columns thousands of times) that
    fills itself through __missing__; the key views list the columns the detector declared,
    gathered or not (a detector may test `"end" in cols` or iterate the items).
    """

    def __init__(self, store: _SharedBuffer, positions: np.ndarray,
                 names: tuple[str, ...]) -> None:
        super().__init__()
        self._store = store
        self._positions = positions
        self._names = names
        self._rows_memo: tuple | None = None  # (rows object, its buffer positions)

    def __missing__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        p = self._positions
        if name in self._store.object_codes:
            # consecutive rows held: codes of a slice (a view), else a gather
            run = p.size and p[-1] - p[0] + 1 == p.size
            column = self._store.gather_objects(name, slice(p[0], p[-1] + 1) if run else p)
            self[name] = column
            return column
        full = self._store.column(name)
        # consecutive rows held (every row, or one run of arrivals): a view, no copy
        if p.size and p[-1] - p[0] + 1 == p.size:
            column = full[p[0]:p[-1] + 1]
        else:
            column = full[p]
        self[name] = column
        return column

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """self[name][rows] without gathering the whole column first: a close that reads a
        few rows of an hour's buffer (a finding's evidence, candidate rows' sizes) reads
        the shared buffer at those rows' positions only."""
        if dict.__contains__(self, name) or name not in self._names:
            return self[name][rows]
        at = self._buffer_rows(rows)
        if name not in self._store.object_codes:
            return self._store.column(name)[at]
        return self._store.gather_objects(name, at)

    def _buffer_rows(self, rows: np.ndarray) -> np.ndarray:
        """Buffer positions of `rows`, shared by the takes of several columns at the same
        rows object (evidence reads 6-7 columns at the same ~10^6 hit rows: the position
        gather was redone per column); an offset, not a gather, when the held rows are one
        run of the buffer."""
        memo = self._rows_memo
        if memo is not None and memo[0] is rows:
            return memo[1]
        p = self._positions
        if (type(rows) is np.ndarray and rows.dtype.kind in "iu" and p.size
                and p[-1] - p[0] + 1 == p.size
                and (not rows.size or 0 <= rows.min() <= rows.max() < p.size)):
            at = rows + p[0]
        else:  # (also negative or out-of-range rows: numpy's indexing, as ever)
            at = p[rows]
        self._rows_memo = (rows, at)
        return at

    def count_in_range(self, windows: WindowRange) -> int:
        """= rows_in_range(self["timestamp"], windows).size, counted at the buffer's
        positions when the column is not gathered (reads each time once, writes nothing)."""
        if dict.__contains__(self, "timestamp"):
            return int(rows_in_range(self["timestamp"], windows).size)
        return count_at(np.ascontiguousarray(self._store.column("timestamp"), np.int64),
                        np.ascontiguousarray(self._positions, np.int64),
                        int(windows.spec.start(windows.first)),
                        int(windows.spec.end(windows.last)))

    def address_codes(self, names: tuple[str, ...],
                      idx: np.ndarray | None = None) -> np.ndarray | None:
        """Order-preserving (not dense) int codes of a tuple of address columns, one per
        row (per row of `idx` when given), from the shared buffer's address ids
        (detector.ip_codes densifies them); None when a column is not an address column."""
        if any(name not in self._names for name in names):
            raise KeyError(names)
        if any(name not in self._store.address_ids for name in names):
            return None
        return self._store.address_codes(
            names, self._positions if idx is None else self._positions[idx])

    def address_ids(self, names: tuple[str, ...], idx: np.ndarray | slice | None = None
                    ) -> np.ndarray | None:
        """Equality (not order-preserving) int codes of a tuple of address columns, one
        per row (of `idx` when given): non-negative, equal iff the addresses are; None when
        a column is not an address column. See _SharedBuffer.address_equality_codes."""
        if any(name not in self._names for name in names):
            raise KeyError(names)
        if any(name not in self._store.address_ids for name in names):
            return None
        return self._store.address_equality_codes(
            names, self._positions if idx is None else self._positions[idx])

    def get(self, name, default=None):
        return self[name] if name in self._names else default

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def keys(self):
        return list(self._names)

    def values(self):
        return [self[c] for c in self._names]

    def items(self):
        return [(c, self[c]) for c in self._names]


class _DetectorState:
    """A detector's window position, its buffer inputs and its suppression memory.

    `close_at` and `late_before` are what every push asks about the detector, kept as plain
    ints so that a push in which none of its windows close skips it with one comparison
    (the closed form of last_k >= next_k) and an in-order batch skips its late check."""

    def __init__(self, detector: Detector, users: dict[str, int],
                 stores: dict[str, _SharedBuffer]) -> None:
        self.detector = detector
        self.users = users  # kind -> this detector's user number in that kind's buffer
        # (kind, its shared buffer, user number, declared columns) per consumed kind
        self.inputs = [(kind, stores[kind], u, detector.input_spec(kind).columns)
                       for kind, u in users.items()]
        self.next_k: int | None = None  # first window index not closed yet
        # watermark at which window next_k closes (end(next_k)); before the first close
        # (next_k None) every push asks _close, which finds the first window from the rows
        self.close_at = _NEVER
        # a row is late iff t < end(next_k - 1); no row can be before any window closed
        self.late_before = _NEVER
        self.last_alert: dict[tuple[str, str], int] = {}  # (rule, key) -> window start
        # (window start, rule, key) -> (fingerprint, revision, document as JSON) of the
        # last version emitted of alerts found in windows still open (evaluate_open): a
        # later evaluation of those windows emits them again only as a revision, when
        # their document changed, or withdraws them (the document, last evidence) when it
        # no longer finds them (fingerprint _WITHDRAWN then)
        self.emitted_open: dict[tuple, tuple[bytes, int, bytes]] = {}
        # earliest start + span among last_alert: nothing is forgotten before that horizon
        self.forget_at = _FOREVER

    def advance(self, next_k: int) -> None:
        """Windows before next_k are closed."""
        spec = self.detector.window
        self.next_k = next_k
        self.close_at = int(spec.end(next_k))
        self.late_before = int(spec.end(next_k - 1))


# address_codes ranks only the addresses it reads (not the whole table) when the table's
# ranks are stale, while the ids it ranked so since they went stale are at most
# 1/_LOCAL_RANK_SHARE of the table's addresses
_LOCAL_RANK_SHARE = 8
_NEVER = -(1 << 63)  # below every event time and watermark
_FOREVER = 1 << 63  # above every horizon


class CorrelationEngine:
    """Pushes event batches through the enabled detectors; returns ECS alerts.

    `config` is the `correlation` section of the pipeline config; it is merged over the
    packaged defaults, so a partial dict works. `detectors` overrides the detectors the
    config enables.
    """

    def __init__(self, config: Mapping | None = None,
                 detectors: list[Detector] | None = None) -> None:
        self.config = merge_config(default_config(), config)
        self.lateness_ns = int(round(float(self.config["allowed_lateness_s"]) * NS_PER_S))
        self.detectors = build_detectors(self.config) if detectors is None else list(detectors)
        self._stores, self._states = _shared_buffers(self.detectors)
        # kind -> (state, user number) of the detectors consuming it, in detector order
        self._consumers = {kind: [(s, s.users[kind]) for s in self._states if kind in s.users]
                           for kind in self._stores}
        self._max_time: int | None = None
        self.stats: dict[str, int] = {
            "events_in": 0,  # rows pushed, all kinds
            "late_events": 0,  # rows that arrived after some window of theirs had closed
            "late_dropped": 0,  # late rows no open window of some detector could take
            "windows_closed": 0,  # detector windows closed (empty ones included)
            "findings": 0,  # (rule, key, window) hits before suppression
            "alerts_suppressed": 0,  # findings dropped as repeats
            "alerts_out": 0,
            "rows_buffered": 0,  # rows held now, all detectors
            "rows_dropped_overflow": 0,  # rows dropped by the max_buffered_rows cap
        }

    @property
    def watermark(self) -> int | None:
        """Event time (ns) up to which input is taken as complete; None before any event."""
        return None if self._max_time is None else self._max_time - self.lateness_ns

    def push(self, batch: EventBatch) -> list[dict]:
        """Add events; return the alerts of the windows the new watermark closed."""
        validate_batch(batch)
        # fusion's observer lists (flow.observer_names): late observer updates are not new
        # flows; every sensor that saw a flow is named in its observer_name ('|'-joined)
        batch = fold_observer_names(batch)
        n = len(batch)
        if n == 0:
            return []
        self.stats["events_in"] += n
        batch_min, batch_max = min_max(batch.columns["timestamp"])
        store = self._stores.get(batch.kind)
        if store is not None:
            with batch_memo():  # selects share masks of this batch's columns
                self._buffer(store, batch, int(batch_min))
        batch_max = int(batch_max)
        self._max_time = batch_max if self._max_time is None else max(self._max_time, batch_max)
        watermark = self._max_time - self.lateness_ns
        # window k is closed once end(k) = k * hop + size <= watermark: a detector none of
        # whose windows close is skipped by one comparison (its close_at is end(next_k))
        closing = [state for state in self._states if state.close_at <= watermark]
        if not closing:
            alerts = self._emit([])
        else:
            alerts = []
            # Closes run with the cyclic GC paused: a burst of findings and alert documents
            # (thousands of small acyclic objects) otherwise pays generation scans of the
            # whole heap, ~30% of a 2,000-alert close (bench/alert_burst.py).
            with gc_paused():
                for state in closing:
                    spec = state.detector.window
                    alerts += self._close(state, (watermark - spec.size_ns) // spec.hop_ns)
                alerts = self._emit(alerts)
        self._compact()
        freeze_startup_heap()  # detectors' kernels are loaded now (see pipeline/heap.py)
        return alerts

    def flush(self) -> list[dict]:
        """End of input: close every window that holds a buffered row; return its alerts."""
        alerts = []
        with gc_paused():  # as in push
            for state in self._states:
                ends = [store.max_time(u) for _, store, u, _ in state.inputs if store.held[u]]
                if ends:
                    alerts += self._close(state,
                                          int(state.detector.window.last_index(max(ends))))
            self._compact()
            return self._emit(alerts)

    def evaluate_open(self) -> list[dict]:
        """Idle input: the alerts of every window holding a buffered row, judged on the rows
        held now, WITHOUT closing the windows (flush() closes them for good).

        Why: a pause of the input (a sensor reconnecting, a rebalance, a loaded machine)
        is not the end of it. Closing windows then judged them on the events before the
        pause, and the events after it came late to closed windows: an alert split in
        two halves below the threshold never came. Here the windows stay open: events
        within the allowed lateness still join them, and they are judged again (with
        every event) when the watermark closes them. An alert emitted here comes again
        from a later evaluation of its window (same id: rule, key, window start) only as
        a revision, when more events changed its document (`cirtsa.alert.revision`; it
        replaces the earlier version); one found only with the later events comes then.
        One a later evaluation no longer finds (or suppresses) is withdrawn: its last
        version once more, as the next revision, `cirtsa.alert.withdrawn: true`
        (correlation.alerts.withdraw); found again after that, it comes back as a revision
        with `withdrawn: false`.
        The documents emitted here carry `cirtsa.alert.open_window: true`. Suppression
        is previewed on a copy of its memory: its decisions are taken when the windows
        close, in window order, as without idle evaluations."""
        alerts = []
        with gc_paused():  # as in push
            for state in self._states:
                alerts += self._evaluate_open(state)
        self.stats["alerts_open"] = self.stats.get("alerts_open", 0) + len(alerts)
        return self._emit(alerts)

    # --- internals ---------------------------------------------------------------------------

    def _evaluate_open(self, state: _DetectorState) -> list[tuple[tuple, dict]]:
        """(order, alert) of state's open windows up to its newest held row, not emitted
        from open windows before; the state (windows, suppression, buffers) unchanged."""
        spec = state.detector.window
        held = [(store, u) for _, store, u, _ in state.inputs if store.held[u]]
        if not held:
            return []
        last_k = int(spec.last_index(max(store.max_time(u) for store, u in held)))
        first_k = state.next_k
        if first_k is None:
            first_k = int(spec.first_index(min(store.min_time(u) for store, u in held)))
        if last_k < first_k:
            return []
        rows = {kind: store.view(u, columns) for kind, store, u, columns in state.inputs
                if store.held[u]}
        # judged by a probe of the detector (Detector.probe): the detector itself sees the
        # ascending, non-overlapping window ranges of the closes, as without idle input
        # (state carried from window to window, a baseline, is updated once per window);
        # the probe copies only that state, not the memos and sketches (a deep copy of
        # every detector, 2.8M events of bench/correlation_stream.py: an idle flush 66-117
        # ms and a 55 MB traced peak; probes: 32 ms and 31 MB, the detects' own)
        findings = state.detector.probe().detect(rows, WindowRange(spec, first_k, last_k))
        span = max(state.detector.suppress_ns, spec.size_ns)
        kept, _ = _unsuppressed(findings, dict(state.last_alert), span)
        alerts = _versions(state, kept, open_window=True)
        if state.emitted_open:  # those of the windows judged here that it no longer finds
            alerts += _withdrawals(state, findings, kept, int(spec.start(first_k)),
                                   int(spec.start(last_k)), open_window=True)
        return alerts

    def _buffer(self, store: _SharedBuffer, batch: EventBatch, earliest: int) -> None:
        """Buffer the rows each consuming detector selects (earliest: the batch's first
        event time); count late and dropped rows."""
        selected = []
        consumers = self._consumers[batch.kind]
        times = batch.columns["timestamp"]
        late = dropped = None  # row flags, made only when some row can be late
        shared: dict = {}  # select_key -> selected rows (detectors promising equal selects)
        for state, _ in consumers:
            detector = state.detector
            key = detector.select_key(batch.kind)
            idx = shared.get(key) if key is not None else None
            if idx is None:
                mask = detector.select(batch)
                idx = (mask.nonzero()[0] if type(mask) is np.ndarray and mask.ndim == 1
                       else np.flatnonzero(mask))
                if key is not None:
                    shared[key] = idx  # read-only below: the late filter makes a new array
            # a row is late iff t < end(next_k - 1); in-order input skips the row checks
            if idx.size and earliest < state.late_before:
                t = times[idx]
                is_late = detector.window.first_index(t) < state.next_k
                all_closed = detector.window.last_index(t) < state.next_k
                if late is None:
                    late = np.zeros(len(batch), bool)
                    dropped = np.zeros(len(batch), bool)
                late[idx[is_late]] = True
                dropped[idx[all_closed]] = True
                idx = idx[~all_closed]
            selected.append(idx)
        if late is not None:
            self.stats["late_events"] += int(np.count_nonzero(late))
            self.stats["late_dropped"] += int(np.count_nonzero(dropped))
        store.append(batch.columns, selected)
        held = store.held
        for state, u in consumers:
            excess = held[u] - state.detector.max_buffered_rows
            if excess > 0:  # hard cap: oldest arrivals go first
                self.stats["rows_dropped_overflow"] += excess
                store.drop_oldest(u, excess)

    def _close(self, state: _DetectorState, last_k: int) -> list[tuple[tuple, dict]]:
        """Close windows state.next_k..last_k; return (order, alert) of the unsuppressed."""
        spec = state.detector.window
        if state.next_k is None:
            # a lower bound of the held times first: until the first window closes this
            # runs on every push, and the exact minimum is a pass over every held row
            bounds = [store.min_time_bound(u) for _, store, u, _ in state.inputs
                      if store.held[u]]
            if not bounds:  # nothing buffered: those windows close empty
                state.advance(last_k + 1)
                return []
            if last_k < int(spec.first_index(min(bounds))):
                return []  # the watermark has not passed any window that can hold a row
            starts = [store.min_time(u) for _, store, u, _ in state.inputs if store.held[u]]
            first = int(spec.first_index(min(starts)))
            if last_k < first:  # the watermark has not passed any window holding a row
                return []
            state.next_k = first
        if last_k < state.next_k:
            return []
        windows = WindowRange(spec, state.next_k, last_k)
        rows = {kind: store.view(u, columns) for kind, store, u, columns in state.inputs
                if store.held[u]}
        findings = state.detector.detect(rows, windows) if rows else []
        self.stats["windows_closed"] += last_k - state.next_k + 1
        state.advance(last_k + 1)
        horizon = int(spec.start(state.next_k))  # rows before it belong to closed windows only
        # Build the alerts now: findings describe themselves from views of the buffers.
        kept = self._suppress(state, findings, horizon)
        # as ever, but those emitted already while their windows were open: revisions
        alerts = _versions(state, kept, open_window=False)
        if state.emitted_open:
            # the close is the last word on its windows: an alert emitted from them that
            # it does not find (or suppresses) is taken back
            alerts += _withdrawals(state, findings, kept, _NEVER, horizon - 1,
                                   open_window=False)
            state.emitted_open = {o: v for o, v in state.emitted_open.items()
                                  if o[0] >= horizon}
        for _, store, u, _ in state.inputs:
            if store.held[u]:
                # Release only when it frees a good share: detectors skip stale rows anyway
                # (WindowRange.row_mask), so pruning every close would just copy.
                store.prune(u, horizon)
        return alerts

    def _compact(self) -> None:
        """Compact the buffers once per push, after its append and every close: the closes of
        one push release rows in turns, and a compaction after each moved the rows the next
        one released (at the end of a stream: ~2*10^5 rows moved in runs of a few rows, only
        to be released by the next close)."""
        for store in self._stores.values():
            store.compact()

    def _suppress(self, state: _DetectorState, findings: list[Finding],
                  horizon: int) -> list[Finding]:
        if not findings and state.forget_at > horizon:  # most closes: nothing to do
            return []
        span = max(state.detector.suppress_ns, state.detector.window.size_ns)
        kept: list[Finding] = []
        if findings:
            self.stats["findings"] += len(findings)
            kept, suppressed = _unsuppressed(findings, state.last_alert, span)
            self.stats["alerts_suppressed"] += suppressed
            if kept:
                state.forget_at = min(state.forget_at,
                                      min(f.window_start for f in kept) + span)
        # Forget keys no future window (start >= horizon) can be suppressed by; none is
        # before the earliest start + span (most closes: a comparison, no dict rebuild).
        if state.forget_at <= horizon:
            state.last_alert = {k: s for k, s in state.last_alert.items() if s + span > horizon}
            state.forget_at = min(state.last_alert.values(), default=_FOREVER - span) + span
        return kept

    def _emit(self, alerts: list[tuple[tuple, dict]]) -> list[dict]:
        self.stats["rows_buffered"] = sum(sum(s.held) for s in self._stores.values())
        # KPIs count alerts that stand: a revision replaces an alert already counted, a
        # withdrawal takes one back (alerts_revised, alerts_withdrawn)
        if alerts:
            count_versions([alert for _, alert in alerts], self.stats)
        return [alert for _, alert in sorted(alerts, key=lambda pair: pair[0])]


def _shared_buffers(detectors: list[Detector]
                    ) -> tuple[dict[str, _SharedBuffer], list[_DetectorState]]:
    """One shared buffer per consumed kind (union of the columns its detectors declared)."""
    users: dict[str, list[Detector]] = {}
    columns: dict[str, dict[str, None]] = {}  # insertion-ordered union
    for d in detectors:
        for spec in d.inputs:
            users.setdefault(spec.kind, []).append(d)
            columns.setdefault(spec.kind, {}).update(dict.fromkeys(spec.columns))
    stores = {kind: _SharedBuffer(tuple(columns[kind]), len(ds)) for kind, ds in users.items()}
    states = [_DetectorState(d, {spec.kind: users[spec.kind].index(d) for spec in d.inputs},
                             stores) for d in detectors]
    return stores, states


def _unsuppressed(findings: list[Finding], last_alert: dict[tuple[str, str], int],
                  span: int) -> tuple[list[Finding], int]:
    """The findings not repeating an alert of their (rule, key) started less than `span`
    before, taken in window order (deterministic); `last_alert` is updated. Returns
    (kept, how many were suppressed)."""
    kept = []
    for f in sorted(findings, key=_finding_order):
        key = (f.rule.id, f.key)
        last = last_alert.get(key)
        if last is not None and f.window_start < last + span:
            continue
        last_alert[key] = f.window_start
        kept.append(f)
    return kept, len(findings) - len(kept)


def _versions(state: _DetectorState, kept: list[Finding], *,
              open_window: bool) -> list[tuple[tuple, dict]]:
    """(order, alert) of the findings whose document is new or changed since the version
    emitted from their open window (then a revision of it, same id); `state.emitted_open`
    remembers the versions emitted from open windows (open_window)."""
    if not kept:
        return []
    out = []
    emitted = state.emitted_open
    for f, doc in zip(kept, build_alerts(kept), strict=True):  # alerts: few
        order = _finding_order(f)
        previous = emitted.get(order)
        if previous is None and not open_window:
            out.append((order, doc))  # never emitted open: the alert as ever
            continue
        version = mark_version(doc, previous and previous[:2], open_window=open_window)
        if version is None:
            continue  # the same document as emitted already
        if previous is not None and previous[0] == _WITHDRAWN:
            doc["cirtsa"]["alert"][WITHDRAWN] = False  # found again: stands again
        if open_window:  # kept whole: a withdrawal re-sends this document (few alerts)
            emitted[order] = (*version, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
        out.append((order, doc))
    return out


# the fingerprint of an alert withdrawn (no document's: fingerprints are 16 bytes)
_WITHDRAWN = b""


def _withdrawals(state: _DetectorState, findings: list[Finding], kept: list[Finding],
                 first: int, last: int, *, open_window: bool) -> list[tuple[tuple, dict]]:
    """(order, withdrawal) of the alerts emitted from open windows starting in
    [first, last] that this evaluation of those windows did not keep: suppressed when
    found (a repeat of an earlier alert), else not found. Marks them withdrawn in
    `state.emitted_open` (not withdrawn twice)."""
    kept_orders = set(map(_finding_order, kept))
    gone = [(order, v) for order, v in state.emitted_open.items()
            if first <= order[0] <= last and v[0] != _WITHDRAWN and order not in kept_orders]
    if not gone:
        return []
    found = set(map(_finding_order, findings))
    out = []
    for order, (_, revision, body) in gone:  # alerts: few
        reason = (SUPPRESSED if order in found
                  else NOT_FOUND_OPEN if open_window else NOT_FOUND_CLOSED)
        out.append((order, withdraw(orjson.loads(body), revision, reason,
                                    open_window=open_window)))
        state.emitted_open[order] = (_WITHDRAWN, revision + 1, body)
    return out


def _finding_order(f: Finding) -> tuple:
    return (f.window_start, f.rule.id, f.key)
