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
"""

from __future__ import annotations

import numpy as np

from correlation.detector import WindowRange
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


def rows_in_range(times: np.ndarray, windows: WindowRange) -> np.ndarray:
    """= np.flatnonzero(windows.row_mask(times)), in one compiled pass."""
    return _in_range(np.ascontiguousarray(times, np.int64), int(windows.spec.start(windows.first)),
                     int(windows.spec.end(windows.last)))


class ArrivalMemo:
    """Columns of per-row values (and each row's timestamp), appended in select order."""

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
        if self.rows + n > self.max_rows:  # bounded like the engine's buffer: start over
            self.poison()
        need = self.rows + n
        if need > self.times.shape[0]:
            capacity = max(need, 2 * self.times.shape[0], 1024)
            self.times = _grown(self.times, capacity, self.rows)
            self.values = {k: _grown(v, capacity, self.rows) for k, v in self.values.items()}
        self.times[self.rows:need] = times
        for name, column in self.values.items():
            column[self.rows:need] = values[name]
        self.rows = need
        latest = int(times.max())
        self.max_time = latest if self.max_time is None else max(self.max_time, latest)

    def poison(self) -> None:
        """Forget every row: their values are no longer valid. Ranges that could hold one
        of them (starting at or before the latest time added so far) get no answer."""
        if self.max_time is not None:
            self._poisoned_until = (self.max_time if self._poisoned_until is None
                                    else max(self._poisoned_until, self.max_time))
        self.rows = 0

    def aligned(self, windows: WindowRange, held_times: np.ndarray, idx: np.ndarray
                ) -> dict[str, np.ndarray] | None:
        """The values of buffered rows `idx` (the detector's rows inside the closing range,
        ascending; held_times = the buffered timestamp column), or None when the memo
        cannot vouch for them. Afterwards rows before the next range are released."""
        start = int(windows.spec.start(windows.first))
        times = self.times[: self.rows]
        inside = rows_in_range(times, windows)
        out = None
        if ((self._poisoned_until is None or start > self._poisoned_until)
                and inside.shape[0] == idx.shape[0]
                and np.array_equal(times[inside], held_times[idx])):
            out = {name: column[inside] for name, column in self.values.items()}
        self._release(int(windows.spec.start(windows.last + 1)))
        return out

    def _release(self, horizon: int) -> None:
        """Drop rows before `horizon` (no later range holds them) once they are over a
        quarter of the rows (amortized: a copy per many closes)."""
        times = self.times[: self.rows]
        n_stale = int(np.count_nonzero(times < horizon))
        if n_stale == 0 or n_stale <= self.rows // 4:
            return
        keep = times >= horizon
        n = self.rows - n_stale
        self.times[:n] = times[keep]
        for column in self.values.values():
            column[:n] = column[: self.rows][keep]
        self.rows = n


def _grown(column: np.ndarray, capacity: int, used: int) -> np.ndarray:
    grown = np.empty(capacity, column.dtype)
    grown[:used] = column[:used]
    return grown
