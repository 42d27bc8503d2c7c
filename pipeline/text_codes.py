"""Integer codes for text columns (DNS names, hosts) without a Python step per row.

Detectors group rows by a name column (object arrays of str). A dict pass
(`index.setdefault(v, len(index))` per row) costs a Python frame per row; np.unique on
object or fixed-width text arrays sorts with per-item comparisons. Instead: Python's own
str hash (computed in C by `map(hash, ...)`, and cached on each str object), then a
compiled open-addressing table over the int64 hashes gives first-appearance codes in one
pass, and one C-level list comparison checks that equal hashes really were equal strings
(a collision, never seen with 64-bit salted SipHash, falls back to the exact dict pass).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.jit import njit


@njit
def _first_appearance_codes(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, first row of each code): codes 0, 1, ... in order of first appearance.

    Open addressing with linear probing over a power-of-two table of at least 2n slots;
    every index stays inside `slots` (masked) or `codes`/`first` (< n).
    """
    n = hashes.shape[0]
    size = 1
    while size < 2 * n:
        size *= 2
    mask = size - 1
    slots = np.full(size, -1, np.int64)  # code stored in the slot, -1 = empty
    codes = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    n_codes = 0
    for i in range(n):
        h = hashes[i]
        # Fibonacci hashing of the (already well mixed) hash: high bits pick the slot
        s = np.int64((np.uint64(h) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)) & mask
        while True:
            c = slots[s]
            if c < 0:
                slots[s] = n_codes
                first[n_codes] = i
                codes[i] = n_codes
                n_codes += 1
                break
            if hashes[first[c]] == h:
                codes[i] = c
                break
            s = (s + 1) & mask
    return codes, first[:n_codes].copy()


def factorize_text(values: Sequence | np.ndarray) -> tuple[np.ndarray, list]:
    """(int64 code per value, distinct values in code order); codes follow first appearance,
    exactly like `index.setdefault(v, len(index))` over the values."""
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    n = len(items)
    if n == 0:
        return np.empty(0, np.int64), []
    hashes = np.fromiter(map(hash, items), np.int64, n)
    codes, first = _first_appearance_codes(hashes)
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
