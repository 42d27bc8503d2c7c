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
