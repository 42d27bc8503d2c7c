"""Compiled kernels of the engine's shared buffer compaction (correlation/engine.py).

Why separate from correlation/kernels.py: these serve only `_SharedBuffer.compact`, which on
a sustained stream moves buffers of ~10^7 rows; the point of each kernel is to do it
without a whole-buffer temporary (in this VM a fresh 100 MB array costs more in first-touch
page faults than the pass that fills it).
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterable

import numpy as np

from correlation.kernels import _address_order
from pipeline.jit import njit


def held_rows(holders: np.ndarray, rows: int) -> np.ndarray:
    """Ascending indices of holders[:rows] > 0: int32 when the buffer allows (half the
    memory of flatnonzero's int64, read once per compacted column), int64 beyond 2^31."""
    used = holders[:rows]
    out = np.empty(int(np.count_nonzero(used)), np.int32 if rows < 2**31 else np.int64)
    _fill_held(used, out)
    return out


@njit
def _fill_held(used: np.ndarray, out: np.ndarray) -> None:
    j = 0
    for i in range(used.shape[0]):
        if used[i] > 0:
            out[j] = i
            j += 1


_UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def grow_column(columns: dict, name: str, capacity: int, used: int) -> None:
    """Make columns[name] `capacity` rows long, keeping its first `used` rows (the rest:
    uninitialized, as np.empty).

    Why: growing the shared buffer by a copy into fresh arrays cost ~0.3 us per held row
    (first-touch faults on the new pages plus the copy): a 0.5-1.5 s push at 1.3 and 5
    million rows in a sustained stream (issue #4). ndarray.resize reallocs in place, and
    for an array of its own mapping (every large one) glibc's realloc is an mremap: the
    pages move without a copy or a fault. numpy zero-fills the grown tail of a writeable
    array only (touching every new page), hence resized while read-only. It refuses
    (ValueError) while any other reference to the array lives (a view a caller still holds
    would dangle after a move): then the rows are copied into a fresh array, as before.
    Caveat: an mremap that moves the array splits its transparent huge pages (4 KiB pages
    after, until khugepaged merges them); _advise_huge_pages asks for them on new pages."""
    try:
        columns[name].flags.writeable = False
        columns[name].resize(capacity, refcheck=True)
    except ValueError:
        old = columns[name]
        old.flags.writeable = True
        grown = np.empty(capacity, old.dtype)
        grown[:used] = old[:used]
        columns[name] = grown
    else:
        columns[name].flags.writeable = True
        _advise_huge_pages(columns[name])


_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)
try:
    _madvise = ctypes.CDLL(None).madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
except (OSError, AttributeError):  # not Linux / no libc symbol: no advice
    _madvise = None


def _advise_huge_pages(column: np.ndarray) -> None:
    """Ask for transparent huge pages on a large grown column, as numpy does for the large
    arrays it allocates (not for the ones realloc grows): without them the pages of a
    10^7-row buffer are 4 KiB ones (a fault per 4 KiB appended, TLB misses in every close).
    Advice only: its result is ignored."""
    if _madvise is None or _MADV_HUGEPAGE is None or column.nbytes < 1 << 22:
        return
    start = column.ctypes.data
    aligned = start - start % mmap.PAGESIZE  # madvise wants a page-aligned start
    _madvise(aligned, start + column.nbytes - aligned, _MADV_HUGEPAGE)


def renumber_positions(positions: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The index in `keep` (ascending kept rows) of each of the ascending `positions`
    (every one a kept row). Raises ValueError on a position that is not a kept row."""
    rows = int(keep[-1]) + 1 if keep.shape[0] else 0
    return renumber_by_runs(positions, kept_runs(np.ascontiguousarray(keep), rows))


@njit
def renumber_by_runs(positions: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """The new row of each of the ascending `positions` (every one a kept row) after the
    moves of kept_runs: a run's rows shift by the same amount, so a merge walk over the
    positions and the runs they cover costs the user's rows plus those runs (~10^2 rows a
    run), not the kept rows in between (a cumsum over the whole buffer was a fresh 100 MB
    temporary at 10^7 rows; a walk over every kept row cost the buffer per user).
    Raises ValueError on a position that is not a kept row."""
    n = positions.shape[0]
    out = np.empty(n, np.int64)
    if n == 0:
        return out
    m = runs.shape[0]
    # the last run starting at or before the first position (binary search)
    lo, hi = 0, m
    first = positions[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if runs[mid, 0] <= first:
            lo = mid + 1
        else:
            hi = mid
    r = max(lo - 1, 0)
    for i in range(n):
        p = positions[i]
        while r < m and runs[r, 0] + runs[r, 2] <= p:
            r += 1
        if r == m or p < runs[r, 0]:
            raise ValueError("position not among the kept rows")
        out[i] = p - runs[r, 0] + runs[r, 1]
    return out


@njit
def kept_runs(keep: np.ndarray, rows: int) -> np.ndarray:
    """Runs of consecutive kept rows as a (runs, 3) int64 array of (first row, its new
    row, length); raises IndexError on an index not ascending or not below `rows`.
    Why: compaction moves ~20 columns by the same rows, and the kept rows of a sustained
    stream's buffer come in runs of ~10^2 (a copy per run reads no index per row)."""
    n = keep.shape[0]
    runs = 0
    previous = -1
    for i in range(n):
        k = keep[i]
        if k <= previous or k >= rows:
            raise IndexError("kept row out of range or not ascending")
        if k != previous + 1 or i == 0:
            runs += 1
        previous = k
    out = np.empty((runs, 3), np.int64)
    r = -1
    for i in range(n):
        k = keep[i]
        if i == 0 or k != keep[i - 1] + 1:
            r += 1
            out[r, 0] = k
            out[r, 1] = i
            out[r, 2] = 0
        out[r, 2] += 1
    return out


@njit
def _move_runs_1d(column: np.ndarray, runs: np.ndarray) -> None:
    n = column.shape[0]
    for r in range(runs.shape[0]):
        src, dst, length = runs[r, 0], runs[r, 1], runs[r, 2]
        if src + length > n or dst > src:
            raise IndexError("run out of range or moving up")
        for j in range(length):
            column[dst + j] = column[src + j]


@njit
def _move_runs_2d(column: np.ndarray, runs: np.ndarray) -> None:
    n = column.shape[0]
    for r in range(runs.shape[0]):
        src, dst, length = runs[r, 0], runs[r, 1], runs[r, 2]
        if src + length > n or dst > src:
            raise IndexError("run out of range or moving up")
        for j in range(length):
            for k in range(column.shape[1]):
                column[dst + j, k] = column[src + j, k]


# a run of at least this many rows is moved by one numpy slice assignment (a memmove)
_LONG_RUN = 1 << 15


def move_kept_runs(column: np.ndarray, runs: np.ndarray) -> None:
    """column[:len(keep)] = column[keep] in place, given kept_runs(keep): every run moves
    down or stays, so a forward copy never reads a row it overwrote. Numeric columns of any
    dtype, moved as unsigned ints of their item size (16-byte addresses as two uint64).

    Runs of _LONG_RUN rows or more are moved as bytes by numpy (memmove, overlap-safe),
    the runs between them by the kernel, in run order (a later run's destination may be
    an earlier run's source). Why: a capped sustained stream's buffer keeps most rows in
    one run of ~10^7 behind a dead prefix, and memmove moves it 2-10x faster than the
    element loop (issue #4: the first compaction of a 10^7-row buffer)."""
    move_columns_by_runs((column,), runs)


def move_columns_by_runs(columns: Iterable[np.ndarray], runs: np.ndarray) -> None:
    """move_kept_runs of each column by the same runs, the runs split into long ones and
    the stretches between them once for all columns (a compaction moves ~20 columns, and
    the split's numpy calls cost more than moving a small buffer's column)."""
    pieces = _run_pieces(runs)
    for column in columns:
        if not column.flags.c_contiguous or column.ndim != 1:
            raise ValueError("move_kept_runs needs a contiguous 1-D column")
        if column.dtype.hasobject:
            raise TypeError("move_kept_runs moves numeric columns only")
        size = column.dtype.itemsize
        n = column.shape[0]
        if size in _UINT_OF_SIZE:
            rows, move = column.view(_UINT_OF_SIZE[size]), _move_runs_1d
        elif size % 8 == 0:
            rows, move = column.view(np.uint64).reshape(n, size // 8), _move_runs_2d
        else:
            rows, move = column.view(np.uint8).reshape(n, size), _move_runs_2d
        for piece in pieces:
            if type(piece) is tuple:  # a long run: bytes moved by numpy
                src, dst, length = piece
                if src + length > n:  # the kernel's check (the others hold by kept_runs)
                    raise IndexError("run out of range or moving up")
                if dst != src:
                    flat = column.view(np.uint8)
                    flat[dst * size:(dst + length) * size] = flat[src * size:
                                                                  (src + length) * size]
            else:
                move(rows, piece)


def _run_pieces(runs: np.ndarray) -> list:
    """runs in order as pieces: a (src, dst, length) tuple per run of _LONG_RUN rows or
    more, and the runs between them as (k, 3) arrays for the kernels. Raises IndexError on
    a long run moving up or below row 0 (the kernels check their own)."""
    if runs.shape[0] == 0:
        return []
    long_runs = (runs[:, 2] >= _LONG_RUN).nonzero()[0].tolist()
    if not long_runs:
        return [runs]
    pieces: list = []
    done = 0  # runs before this one are in pieces
    for r in long_runs:
        if done < r:
            pieces.append(runs[done:r])
        src, dst, length = (int(v) for v in runs[r])
        if dst > src or dst < 0:
            raise IndexError("run out of range or moving up")
        pieces.append((src, dst, length))
        done = r + 1
    if done < runs.shape[0]:
        pieces.append(runs[done:])
    return pieces


def keep_rows(column: np.ndarray, keep: np.ndarray) -> None:
    """column[:len(keep)] = column[keep] in place, for ascending distinct `keep`: the runs
    of `keep` (kept_runs, which raises IndexError on a descending or out-of-range index
    before any write) moved by move_kept_runs."""
    move_kept_runs(column, kept_runs(np.ascontiguousarray(keep), column.shape[0]))


@njit
def _distinct_ids(ids: np.ndarray, size: int, mark: np.ndarray, slot: np.ndarray,
                  epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct ids of `ids` in first-seen order, each row's index among them), an id
    counted once per call by mark[id] = epoch and slot[id] = its index (see ranks_among).
    Raises IndexError on an id outside [0, size)."""
    n = ids.shape[0]
    distinct = np.empty(n, np.int64)
    local = np.empty(n, np.int64)
    d = 0
    for i in range(n):
        a = ids[i]
        if a < 0 or a >= size:
            raise IndexError("address id out of range")
        if mark[a] != epoch:
            mark[a] = epoch
            slot[a] = d
            distinct[d] = a
            d += 1
        local[i] = slot[a]
    return distinct[:d], local


def ranks_among(ids: np.ndarray, hi: np.ndarray, lo: np.ndarray, mark: np.ndarray,
                slot: np.ndarray, epoch: int) -> tuple[np.ndarray, int]:
    """(rank of each ids[i]'s key among the distinct keys of `ids`, in ascending (hi[id],
    lo[id]) order; how many distinct): the order of AddressTable.ranks() restricted to
    the ids read, without ranking the whole table (ids of distinct keys: no ties).

    mark / slot: the caller's scratch arrays of at least one entry per id; an id is
    distinct-counted once per call by setting mark[id] = epoch (a value no earlier call
    used, so the arrays are never cleared) and slot[id] = its index among the distinct
    ids; only the distinct ids get sorted, by AddressTable's own order (_address_order).
    Raises IndexError on an id outside hi / lo / the scratch arrays."""
    size = min(hi.shape[0], lo.shape[0], mark.shape[0], slot.shape[0])
    distinct, local = _distinct_ids(np.ascontiguousarray(ids, np.int64), size, mark, slot,
                                    epoch)
    d = distinct.shape[0]
    rank = np.empty(d, np.int64)
    rank[_address_order(hi[distinct], lo[distinct])] = np.arange(d, dtype=np.int64)
    return rank[local], d
