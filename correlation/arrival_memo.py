"""Per-row values a detector derives once, on arrival, and reads back at every window close.

With hopping windows the engine hands a detector each buffered row again in every close
whose range holds it (4 times for beaconing's 1 h / 15 min windows, 5 for dns_tunnel's),
and a detector that keys rows by a name or an address pair used to recompute that key
every time: a dict lookup or a hash per row touches the row's str object (~80-250 ns, a
cache miss each), and ranking mostly distinct address pairs sorts every row.

`ArrivalMemo` keeps such values in the detector, computed in `select` for the rows the
select keeps, in the order it keeps them. The engine's contract gives the alignment: a
detector's buffered rows are the rows its select kept, in arrival order, minus rows
released as stale (only ever before the start of every range still to close) or dropped
as late (idem) or by the row cap; and `detect` sees every buffered row of the closing
windows, in arrival order. So the memo's rows inside the closing range, in order, are the
buffered rows inside it, in order: `aligned` returns their values next to the detector's
row indices. It checks that claim on every close (the row count and every timestamp must
match; a row cap drop, a select the engine did not follow with an append, detect called
directly by a test) and returns None when it fails: the caller then computes the values
the exact way, from the columns. After `poison` (the values of the rows so far became
invalid, e.g. a bounded text memo started over) it returns None for every range that can
hold a row added before.

Cost per close: one compiled pass over the memo's rows. Usually the memo holds exactly the
buffered rows (both released the same ones): then the pass compares the two timestamp
columns element for element and memo row i is buffered row i; else it walks the memo's
rows inside the range against the held rows. Released rows are compacted in place.
"""

from __future__ import annotations

import copy

import numpy as np

from correlation.detector import WindowRange
from correlation.engine_kernels import grow_column
from pipeline.jit import njit


@njit
def _in_range(times: np.ndarray, start: int, end: int) -> np.ndarray:
    """Indices of the times in [start, end): one pass instead of two comparisons, an AND
    and a flatnonzero over the memo's rows."""
    n = times.shape[0]
    out = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        if start <= times[i] < end:
            out[m] = i
            m += 1
    return out[:m]


@njit
def _aligned_inside(times: np.ndarray, start: int, end: int, held_times: np.ndarray,
                    idx: np.ndarray, horizon: int) -> tuple[np.ndarray, int]:
    """(Indices of the times in [start, end), count of the times < horizon) when, in order,
    the former equal held_times[idx] (as many, every timestamp equal); else ([-1], count)
    (a real answer never holds -1). The range test, the gather of the held times, the
    comparison and the release count in one pass, no temporaries. Indices stay in range:
    j < idx.shape[0] is checked before idx[j] is read, and idx holds indices of
    held_times (the caller's contract)."""
    n = times.shape[0]
    n_held = idx.shape[0]
    out = np.empty(n_held, np.int64)
    aligned = True
    j = 0
    n_stale = 0
    for i in range(n):
        t = times[i]
        if t < horizon:
            n_stale += 1
        if aligned and start <= t < end:
            if j == n_held or held_times[idx[j]] != t:
                aligned = False
            else:
                out[j] = i
                j += 1
    if not aligned or j != n_held:
        return np.full(1, -1, np.int64), n_stale
    return out, n_stale


@njit
def _same_times(times: np.ndarray, held_times: np.ndarray, horizon: int) -> tuple[bool, int]:
    """(times equal held_times element for element, count of times < horizon): when the
    memo holds exactly the buffered rows (both released the same rows), memo row i is
    buffered row i. Same lengths (the caller's check)."""
    same = True
    n_stale = 0
    for i in range(times.shape[0]):
        t = times[i]
        if t < horizon:
            n_stale += 1
        if t != held_times[i]:
            same = False
    return same, n_stale


@njit
def _count_before(times: np.ndarray, horizon: int) -> int:
    n = 0
    for i in range(times.shape[0]):
        if times[i] < horizon:
            n += 1
    return n


@njit
def _compact_from(times: np.ndarray, horizon: int, column: np.ndarray) -> int:
    """Move column's rows whose time is >= horizon to its front, in order (in place:
    the write position never passes the read one); the kept count. column may be times
    itself (each time is read before its place can be written)."""
    j = 0
    for i in range(times.shape[0]):
        if times[i] >= horizon:
            column[j] = column[i]
            j += 1
    return j


def rows_in_range(times: np.ndarray, windows: WindowRange) -> np.ndarray:
    """= np.flatnonzero(windows.row_mask(times)), in one compiled pass."""
    return _in_range(np.ascontiguousarray(times, np.int64), int(windows.spec.start(windows.first)),
                     int(windows.spec.end(windows.last)))


class ArrivalMemo:
    """Columns of per-row values (and each row's timestamp), appended in select order."""

    # a view for windows that stay open (frozen()): it never releases rows
    _frozen = False

    def __init__(self, dtypes: dict[str, np.dtype | type], max_rows: int = 5_000_000) -> None:
        self.dtypes = {name: np.dtype(d) for name, d in dtypes.items()}
        self.max_rows = int(max_rows)
        self.rows = 0
        self.times = np.empty(0, np.int64)
        self.values = {name: np.empty(0, d) for name, d in self.dtypes.items()}
        self.max_time: int | None = None  # latest timestamp ever added
        self._poisoned_until: int | None = None  # ranges starting at or before: no answer

    def __len__(self) -> int:
        return self.rows

    def add(self, times: np.ndarray, **values: np.ndarray) -> None:
        """Append the rows a select kept (their timestamps and values, in row order)."""
        n = int(times.shape[0])
        if n == 0:
            return
        if self._frozen:
            raise RuntimeError("ArrivalMemo.add on a frozen view (it shares the columns)")
        if self.rows + n > self.max_rows:  # bounded like the engine's buffer: start over
            self.poison()
        need = self.rows + n
        if need > self.times.shape[0]:
            capacity = max(need, 2 * self.times.shape[0], 1024)
            # in place where numpy can (no copy, no fault on new pages: grow_column)
            grow_column(self.__dict__, "times", capacity, self.rows)
            for name in self.values:
                grow_column(self.values, name, capacity, self.rows)
        self.times[self.rows:need] = times
        for name, column in self.values.items():
            column[self.rows:need] = values[name]
        self.rows = need
        latest = int(times.max())
        self.max_time = latest if self.max_time is None else max(self.max_time, latest)

    def frozen(self) -> ArrivalMemo:
        """This memo's rows for a detect on windows that stay open (Detector.probe): its
        `aligned` answers as this memo's would and releases nothing (a release compacts the
        shared columns in place, and the rows of open windows are read again when they
        close). Shares the columns: read only, and valid until this memo's next add."""
        view = copy.copy(self)  # (rows, times and the values dict are the same objects)
        view._frozen = True
        return view

    def poison(self) -> None:
        """Forget every row: their values are no longer valid. Ranges that could hold one
        of them (starting at or before the latest time added so far) get no answer."""
        if self.max_time is not None:
            self._poisoned_until = (self.max_time if self._poisoned_until is None
                                    else max(self._poisoned_until, self.max_time))
        self.rows = 0

    def aligned(self, windows: WindowRange, held_times: np.ndarray, idx: np.ndarray,
                copy: bool = True) -> dict[str, np.ndarray] | None:
        """The values of buffered rows `idx` (the detector's rows inside the closing range,
        ascending; held_times = the buffered timestamp column), or None when the memo
        cannot vouch for them. Afterwards rows before the next range are released.

        copy=False may hand back read-only views of the memo's own columns (when the rows
        are consecutive in the memo and no release moves them in this call): valid only
        until the memo's next add or aligned; for a caller that is done with them by then."""
        start = int(windows.spec.start(windows.first))
        horizon = int(windows.spec.start(windows.last + 1))
        times = self.times[: self.rows]
        out = None
        if self._poisoned_until is None or start > self._poisoned_until:
            held = np.ascontiguousarray(held_times, np.int64)
            inside = np.ascontiguousarray(idx, np.int64)
            same = False
            if held.shape[0] == self.rows:  # usually: the engine released the same rows
                same, n_stale = _same_times(times, held, horizon)
            if not same:
                inside, n_stale = _aligned_inside(times, start,
                                                  int(windows.spec.end(windows.last)), held,
                                                  inside, horizon)
            if inside.shape[0] != 1 or inside[0] >= 0:  # [-1]: not aligned
                out = self._take(inside, copy or self._releases(n_stale))
        else:
            n_stale = _count_before(times, horizon)
        if self._releases(n_stale):
            self._release(horizon)
        return out

    def _take(self, inside: np.ndarray, copy: bool) -> dict[str, np.ndarray]:
        """The values at memo rows `inside` (ascending): a read-only view when they are
        consecutive and copy is False, else a gather."""
        if not copy and (inside.shape[0] == 0 or inside[-1] - inside[0] + 1 == inside.shape[0]):
            lo = int(inside[0]) if inside.shape[0] else 0
            out = {}
            for name, column in self.values.items():
                view = column[lo: lo + inside.shape[0]]
                view.flags.writeable = False
                out[name] = view
            return out
        return {name: column[inside] for name, column in self.values.items()}

    def _releases(self, n_stale: int) -> bool:
        """Rows before the horizon are dropped once they are over a quarter of the rows
        (amortized: a copy per many closes)."""
        return not self._frozen and n_stale > 0 and n_stale > self.rows // 4

    def _release(self, horizon: int) -> None:
        """Drop rows before `horizon` (no later range holds them), in place."""
        times = self.times[: self.rows]
        for column in self.values.values():
            _compact_from(times, horizon, column[: self.rows])
        self.rows = _compact_from(times, horizon, times)  # the times last: read above
