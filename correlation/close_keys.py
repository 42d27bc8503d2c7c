"""Hop-close grouping of (source, destination[, port]) keys in one compiled pass.

At a 60 s hop close of 300 s windows, brute_force and port_scan_vertical group ~5M held
rows by an address pair (and, for brute force, the service port), keep the keys with
enough distinct units (client ports, scanned ports) and number the kept keys in their
sorted order. The numpy form took a dozen passes over all rows: two address-code
gathers and bincounts (pair_candidates), a third for the pair codes, a hash pass, two
densifications, the distinct count, a reachable mask and its gathers (issue #4).

`pair_key_groups` does the prefilter, the key hash and the distinct-unit bits in one
kernel over the rows; only the few thousand distinct keys are sorted (in Python). It gives
up (None) on too many distinct keys (the numpy path sorts them) or codes out of range;
callers then take that path. Group numbering, kept rows and
their order are exactly those of the numpy path (see tests/test_hopclose_keys.py).
"""

from __future__ import annotations

import numpy as np

from correlation.detector import Groups, distinct_per_group
from correlation.kernels import _find_or_add, _rehash
from pipeline.jit import njit

# Keys at most 1/_FEW_SHARE of the candidate rows, as detector._dense_few (beyond, the
# numpy path sorts); the bit table at most 16 bytes per row, as distinct_per_group.
_FEW_SHARE = 64
_BITS_PER_ROW = 128
_START_BITS = 12


@njit
def _key_groups(src: np.ndarray, dst: np.ndarray, extra: np.ndarray, units: np.ndarray,
                threshold: int, limit: int, max_bits: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                           np.ndarray, int]:
    """(candidate rows, their key id, rows per key, distinct units per key, key halves
    (src, dst*radix+extra), key count), key ids unordered (first seen); key count -1: gave
    up. An empty
    `extra`: keys (src, dst). Distinct units empty: a bit per (key, unit) would take more
    than max_bits, the caller counts them.

    Candidates are the rows whose src code has >= threshold rows and, among those, whose
    dst code has >= threshold rows (pair_candidates' two filters, in its order)."""
    n = src.shape[0]
    has_extra = extra.shape[0] > 0  # (empty: no third key part)
    empty = np.empty(0, np.int64)
    empty_u = np.empty(0, np.uint64)
    if n == 0:
        return empty, empty, empty, empty, empty_u, empty_u, 0
    top = 0
    extra_radix = 1
    unit_radix = 1
    for i in range(n):
        s = src[i]
        d = dst[i]
        e = extra[i] if has_extra else 0
        u = units[i]
        if s < 0 or d < 0 or e < 0 or u < 0:
            return empty, empty, empty, empty, empty_u, empty_u, -1
        if s > top:
            top = s
        if d > top:
            top = d
        if e >= extra_radix:
            extra_radix = e + 1
        if u >= unit_radix:
            unit_radix = u + 1
    if top >= 2**40 or extra_radix >= 2**20:  # keep dst * extra_radix + extra in a uint64
        return empty, empty, empty, empty, empty_u, empty_u, -1
    src_count = np.zeros(top + 1, np.int32)
    for i in range(n):
        src_count[src[i]] += 1
    dst_count = np.zeros(top + 1, np.int32)
    for i in range(n):
        if src_count[src[i]] >= threshold:
            dst_count[dst[i]] += 1
    bits = _START_BITS
    shift = np.uint64(64 - bits)
    slots = np.full(1 << bits, -1, np.int64)
    key_hi = np.empty(limit + 1, np.uint64)
    key_lo = np.empty(limit + 1, np.uint64)
    per_key = np.zeros(limit + 1, np.int64)
    rows = np.empty(n, np.int64)
    ids = np.empty(n, np.int64)
    c = 0
    m = 0
    for i in range(n):
        if src_count[src[i]] < threshold or dst_count[dst[i]] < threshold:
            continue
        hi = np.uint64(src[i])
        lo = np.uint64(dst[i])
        if has_extra:
            lo = lo * np.uint64(extra_radix) + np.uint64(extra[i])
        g, grown = _find_or_add(slots, key_hi, key_lo, hi, lo, shift, m)
        rows[c] = i
        ids[c] = g
        c += 1
        per_key[g] += 1
        if grown != m:
            m = grown
            if m > limit:
                return empty, empty, empty, empty, empty_u, empty_u, -1
            if 2 * m >= slots.shape[0]:
                bits += 1
                shift = np.uint64(64 - bits)
                slots = _rehash(key_hi, key_lo, m, bits)
    if m * unit_radix > max_bits:  # the caller counts (distinct_per_group)
        return rows[:c], ids[:c], per_key[:m], empty, key_hi[:m], key_lo[:m], m
    table = np.zeros((m * unit_radix + 63) // 64, np.uint64)
    counts = np.zeros(m, np.int64)
    for j in range(c):
        slot = ids[j] * unit_radix + units[rows[j]]
        word = slot >> 6
        mask = np.uint64(1) << np.uint64(slot & 63)
        if not table[word] & mask:
            table[word] |= mask
            counts[ids[j]] += 1
    return rows[:c], ids[:c], per_key[:m], counts, key_hi[:m], key_lo[:m], m


@njit
def _kept_in_groups(rows: np.ndarray, ids: np.ndarray, group_of: np.ndarray,
                    bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows whose key has a group, ascending as given; their positions ordered by group,
    ascending within a group: Groups.counted's order), in one pass."""
    keep = np.empty(bounds[-1], np.int64)
    order = np.empty(bounds[-1], np.int64)
    fill = bounds[:-1].copy()
    j = 0
    for i in range(rows.shape[0]):
        g = group_of[ids[i]]
        if g >= 0:
            keep[j] = rows[i]
            order[fill[g]] = j
            fill[g] += 1
            j += 1
    return keep, order


def as_range(idx: np.ndarray) -> np.ndarray | slice:
    """idx as a slice when it is one run of consecutive rows (a hop close's rows in range
    mostly are), else idx: columns read at a slice take views of the engine's positions,
    not a gather of millions of them per column (engine._UserColumns: take and
    address_codes index their positions with it)."""
    if idx.size and int(idx[-1]) - int(idx[0]) + 1 == idx.size:
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def pair_key_groups(src: np.ndarray, dst: np.ndarray, extra: np.ndarray | None,
                    units: np.ndarray, threshold: int) -> tuple[np.ndarray, Groups] | None:
    """(kept rows, their Groups) of the rows whose key (src, dst[, extra]) has >= threshold
    distinct `units`; groups numbered in the keys' (src, dst, extra) order, kept rows
    ascending; Groups as Groups.counted of the kept rows' group ids. src, dst: non-negative
    order-preserving int codes (the engine's address codes), extra and units: non-negative
    ints. None: the caller's numpy path (more than 1/64 distinct keys among the candidate
    rows, or codes out of range).

    = pair_candidates, then combine_codes of (pair, extra) and distinct_per_group >=
    threshold, then the kept keys' dense ranks (one_window_groups) and Groups.counted."""
    n = src.shape[0]
    if extra is None:
        extra = np.zeros(0, np.int64)
    elif extra.shape[0] != n:
        raise ValueError("extra and src differ in length")
    if dst.shape[0] != n or units.shape[0] != n:
        raise ValueError("dst, units and src differ in length")
    src = np.ascontiguousarray(src, np.int64)
    dst = np.ascontiguousarray(dst, np.int64)
    # (ports stay uint16: no int64 copies of millions of rows)
    extra = np.ascontiguousarray(extra if extra.dtype.kind in "iu" else extra.astype(np.int64))
    units = np.ascontiguousarray(units if units.dtype.kind in "iu" else units.astype(np.int64))
    rows, ids, per_key, counts, key_hi, key_lo, m = _key_groups(
        src, dst, extra, units, int(threshold), max(n // _FEW_SHARE, 1),
        _BITS_PER_ROW * max(n, 1))
    if m < 0:
        return None
    if counts.shape[0] != m:
        counts = distinct_per_group(ids, m, units[rows])
    reached = np.flatnonzero(counts >= threshold)
    order = reached[np.lexsort((key_lo[reached], key_hi[reached]))]
    group_of = np.full(m, -1, np.int64)
    group_of[order] = np.arange(order.shape[0], dtype=np.int64)
    bounds = np.zeros(order.shape[0] + 1, np.int64)
    np.cumsum(per_key[order], out=bounds[1:])
    keep, rows_by_group = _kept_in_groups(rows, ids, group_of, bounds)
    return keep, Groups(rows_by_group, bounds)
