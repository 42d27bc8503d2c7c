"""Integer codes for text columns (DNS names, hosts) without a Python step per row.

Detectors group rows by a name column (object arrays of str). A dict pass
(`index.setdefault(v, len(index))` per row) costs a Python frame per row; np.unique on
object or fixed-width text arrays sorts with per-item comparisons. Instead: Python's own
str hash (computed in C by `map(hash, ...)`, and cached on each str object), then the
compiled first-appearance factorize of correlation/kernels.py over the 64-bit hashes gives
the codes in one pass, and one C-level list comparison checks that equal hashes really
were equal strings (a collision, never seen with 64-bit salted SipHash, falls back to the
exact dict pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

import numpy as np

from correlation.kernels import factorize_u64


def factorize_text(values: Sequence | np.ndarray) -> tuple[np.ndarray, list]:
    """(int64 code per value, distinct values in code order); codes follow first appearance,
    exactly like `index.setdefault(v, len(index))` over the values."""
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    n = len(items)
    if n == 0:
        return np.empty(0, np.int64), []
    hashes = np.fromiter(map(hash, items), np.int64, n)
    codes, first = factorize_u64(hashes.view(np.uint64))
    distinct = list(map(items.__getitem__, first.tolist()))  # C-level gather
    representative = np.array(distinct + [None], dtype=object)[:-1][codes].tolist()
    if representative == items:  # C-level, identity first: equal hash was equal value
        return codes, distinct
    index: dict = {}  # a hash collision: the exact (slow) pass
    codes = np.fromiter((index.setdefault(v, len(index)) for v in items), np.int64, n)
    return codes, list(index)


def factorize_text_sorted(values: Sequence | np.ndarray) -> tuple[np.ndarray, list]:
    """(int64 code per value, distinct values in sorted order): np.unique's inverse, with
    the sort over the distinct values only."""
    codes, distinct = factorize_text(values)
    if not distinct:
        return codes, distinct
    order = sorted(range(len(distinct)), key=distinct.__getitem__)
    rank = np.empty(len(distinct), np.int64)
    rank[order] = np.arange(len(distinct))
    return rank[codes], [distinct[i] for i in order]


class TextIds:
    """Stable integer ids of strings across calls: a bounded memo (dict) of every string
    seen, so that a detector seeing the same names window after window (hopping windows
    replay each row several times) pays one C-level dict lookup per row and no
    factorization. Ids follow first appearance; `limit` bounds the memo: when a call would
    pass it, the memo starts over (every id changes: `reset` tells the caller, whose tables
    keyed by id must start over too).
    """

    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = int(limit)
        self._index: dict = {}
        self.generation = 0  # +1 at every start-over: ids of different generations differ

    def __len__(self) -> int:
        return len(self._index)

    def ids(self, values: Sequence | np.ndarray) -> tuple[np.ndarray, list, list, bool]:
        """(id per value, the values as a list, values new to the memo in id order, reset).

        New values get ids len(memo before)...; reset = the memo was emptied first, so the
        ids of this call start at 0 and earlier ids mean nothing any more."""
        items = values.tolist() if isinstance(values, np.ndarray) else list(values)
        n = len(items)
        index = self._index
        out = np.fromiter(map(index.get, items, repeat(-1, n)), np.int64, n)
        missing = np.flatnonzero(out < 0)
        if missing.size == 0:
            return out, items, [], False
        new = list(dict.fromkeys(map(items.__getitem__, missing.tolist())))  # first-seen order
        reset = len(index) + len(new) > self.limit
        if reset:  # start over: every value of this call gets a fresh id
            index.clear()
            self.generation += 1
            new = list(dict.fromkeys(items))
            missing = np.arange(n)
        base = len(index)
        index.update(zip(new, range(base, base + len(new)), strict=True))
        out[missing] = np.fromiter(map(index.__getitem__, map(items.__getitem__,
                                                               missing.tolist())),
                                   np.int64, missing.size)
        return out, items, new, reset

    def sorted_codes(self, values: Sequence | np.ndarray) -> tuple[np.ndarray, list]:
        """= factorize_text_sorted(values) (codes in sorted-value order, the sorted distinct
        values), from the memo's ids: a dict lookup per value instead of hashing and
        verifying every value, then a sort of the distinct values only."""
        ids, items, _, _ = self.ids(values)
        if not items:
            return ids, []
        codes, first = factorize_u64(ids.view(np.uint64))
        distinct = list(map(items.__getitem__, first.tolist()))
        order = sorted(range(len(distinct)), key=distinct.__getitem__)
        rank = np.empty(len(distinct), np.int64)
        rank[order] = np.arange(len(distinct))
        return rank[codes], [distinct[i] for i in order]
