"""Hop-close grouping of (source, destination[, port]) keys in one compiled pass.

At a 60 s hop close of 300 s windows, brute_force and port_scan_vertical group ~5M held
rows by an address pair (and, for brute force, the service port), keep the keys with
enough distinct units (client ports, scanned ports) and number the kept keys in their
sorted order. The numpy form took a dozen passes over all rows: two address-code
gathers and bincounts (pair_candidates), a third for the pair codes, a hash pass, two
densifications, the distinct count, a reachable mask and its gathers (issue #4).

`pair_key_groups` does the prefilter, the key ids and the distinct-unit bits in one
kernel over the rows; only the few thousand distinct keys are sorted (in Python). It gives
up (None) on too many distinct keys (the numpy path sorts them) or codes out of range;
callers then take that path. Group numbering, kept rows and
their order are exactly those of the numpy path (see tests/test_hopclose_keys.py).

The kernel's passes read little per row and keep their tables in cache (issue #4, task
V7: 2x on the 4,800-alert close's two calls): int32 key ids of all rows (no candidate
row list), ids as indices into the small space of the reaching codes' ranks (no hash
probe; a hash past it), distinct units counted only until a key reaches, in bit blocks
taken on first use (not a zeroed bit table of every key's whole unit span).
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
# Key ids by index into the (src, dst, extra) ranks' space when it holds at most
# max(rows / _DIRECT_SHARE, _DIRECT_MIN) keys (its per-key arrays stay small), else hashed.
_DIRECT_SHARE = 16
_DIRECT_MIN = 4096
_BLOCK_UNITS = 512  # units per block of a key's bits (_distinct_units): a cache line


@njit
def _value_range(values: np.ndarray) -> tuple[int, int]:
    """(min(values, 0), max(values, 0)) as int64: one branch-free (vectorised) pass."""
    low = np.int64(0)
    high = np.int64(0)
    for i in range(values.shape[0]):
        v = np.int64(values[i])
        low = min(low, v)
        high = max(high, v)
    return low, high


@njit
def _all_reach(count: np.ndarray, threshold: int) -> bool:
    """Whether every code present (count > 0) has >= threshold rows."""
    for c in count:
        if 0 < c < threshold:
            return False
    return True


@njit
def _ranks_of_reaching(count: np.ndarray, threshold: int) -> np.ndarray:
    """Rank (ascending code order) of each code present with >= threshold rows, -1 for
    the others; one more entry at the end: how many reach."""
    rank = np.full(count.shape[0] + 1, -1, np.int64)
    r = 0
    for c in range(count.shape[0]):
        if count[c] > 0 and count[c] >= threshold:
            rank[c] = r
            r += 1
    rank[-1] = r
    return rank


@njit
def _direct_ids(src: np.ndarray, dst: np.ndarray, extra: np.ndarray, src_rank: np.ndarray,
                dst_rank: np.ndarray, extra_rank: np.ndarray, every_row: bool,
                ids: np.ndarray) -> tuple[int, np.ndarray]:
    """(distinct keys, rows per key) with ids[i] = the key's index in the space of
    (src rank, dst rank[, extra rank]): ascending in (src, dst, extra) order, so the kept
    keys need no sort. Why: no hash and probe per row (half of the pass's time) when the
    reaching codes span a small key space (a close's attackers and their few targets)."""
    has_extra = extra.shape[0] > 0
    n_dst = dst_rank[-1]
    n_extra = extra_rank[-1] if has_extra else 1
    per_key = np.zeros(src_rank[-1] * n_dst * n_extra, np.int64)
    for i in range(src.shape[0]):
        s = src_rank[src[i]]
        d = dst_rank[dst[i]]
        if not every_row and (s < 0 or d < 0):
            ids[i] = -1
            continue
        k = s * n_dst + d
        if has_extra:
            k = k * n_extra + extra_rank[extra[i]]
        ids[i] = k
        per_key[k] += 1
    m = 0
    for k in range(per_key.shape[0]):
        if per_key[k] > 0:
            m += 1
    return m, per_key


@njit
def _hashed_ids(src: np.ndarray, dst: np.ndarray, extra: np.ndarray, src_rank: np.ndarray,
                dst_rank: np.ndarray, extra_radix: int, every_row: bool, limit: int,
                ids: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(distinct keys, rows per key, key halves (src, dst*radix+extra)) with ids[i] = the
    key's id, first seen first; distinct keys -1: more than `limit`."""
    has_extra = extra.shape[0] > 0
    bits = _START_BITS
    shift = np.uint64(64 - bits)
    slots = np.full(1 << bits, -1, np.int64)
    key_hi = np.empty(limit + 1, np.uint64)
    key_lo = np.empty(limit + 1, np.uint64)
    per_key = np.zeros(limit + 1, np.int64)
    m = 0
    for i in range(src.shape[0]):
        if not every_row and (src_rank[src[i]] < 0 or dst_rank[dst[i]] < 0):
            ids[i] = -1
            continue
        hi = np.uint64(src[i])
        lo = np.uint64(dst[i])
        if has_extra:
            lo = lo * np.uint64(extra_radix) + np.uint64(extra[i])
        g, grown = _find_or_add(slots, key_hi, key_lo, hi, lo, shift, m)
        ids[i] = g
        per_key[g] += 1
        if grown != m:
            m = grown
            if m > limit:
                return -1, per_key, key_hi, key_lo
            if 2 * m >= slots.shape[0]:
                bits += 1
                shift = np.uint64(64 - bits)
                slots = _rehash(key_hi, key_lo, m, bits)
    return m, per_key[:m], key_hi[:m], key_lo[:m]


@njit
def _distinct_units(ids: np.ndarray, units: np.ndarray, per_key: np.ndarray,
                    threshold: int, unit_radix: int, max_bits: int) -> np.ndarray:
    """Distinct units per key id, counted up to threshold (only `>= threshold` matters:
    a key's later rows are skipped once it reaches, most of a close's rows) and 0 for the
    keys of fewer than threshold rows (they cannot reach); empty: a bit per (key, unit) of
    the keys that can would take more than max_bits (the caller counts).

    The bits are blocks of _BLOCK_UNITS units of one key, taken when first set: a key
    that reaches after a few rows touches a few blocks, not its whole span (a flat table
    of clients' ports is 8 KB a key, 32 MB for a close's 4,000 keys, zeroed and faulted
    in for a few thousand bits)."""
    blocks_per_key = (unit_radix + _BLOCK_UNITS - 1) // _BLOCK_UNITS
    bit_key = np.full(per_key.shape[0], -1, np.int64)
    counted = 0
    most_blocks = 0  # a key takes a block per new unit at most, threshold at most
    for g in range(per_key.shape[0]):
        if per_key[g] > 0 and per_key[g] >= threshold:
            bit_key[g] = counted
            counted += 1
            most_blocks += min(per_key[g], min(blocks_per_key, max(threshold, 0)))
    if counted * unit_radix > max_bits:
        return np.empty(0, np.int64)
    block_of = np.full(counted * blocks_per_key, -1, np.int32)  # (<= max_bits / 512)
    words = _BLOCK_UNITS // 64
    pool = np.zeros(most_blocks * words, np.uint64)
    used = 0
    counts = np.zeros(per_key.shape[0], np.int64)
    for i in range(ids.shape[0]):
        g = ids[i]
        if g < 0:
            continue
        b = bit_key[g]
        if b < 0 or counts[g] >= threshold:
            continue
        u = np.int64(units[i])
        cell = b * blocks_per_key + u // _BLOCK_UNITS
        at = np.int64(block_of[cell])
        if at < 0:
            at = used
            used += 1
            block_of[cell] = at
        word = at * words + (u % _BLOCK_UNITS) // 64
        bit = np.uint64(u & 63)
        w = pool[word]
        # branch-free: whether a row's unit is new is a coin toss
        counts[g] += np.int64(((w >> bit) & np.uint64(1)) ^ np.uint64(1))
        pool[word] = w | (np.uint64(1) << bit)
    return counts


@njit
def _key_groups(src: np.ndarray, dst: np.ndarray, extra: np.ndarray, units: np.ndarray,
                threshold: int, limit: int, max_bits: int, direct_max: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(key id of every row (-1: not a candidate), rows per key id, distinct units per key
    id (up to threshold, see _distinct_units), sort keys of the ids (two uint64
    halves), key id count), or key id count -1: gave up (more than `limit` distinct keys,
    codes out of range). An empty `extra`: keys (src, dst). Distinct units empty: the
    caller counts them (see _distinct_units). A key id may have no rows (rows per key 0).

    Candidates are the rows whose src code has >= threshold rows and, among those, whose
    dst code has >= threshold rows (pair_candidates' two filters, in its order). Key ids:
    the key's index in the (src, dst, extra) ranks' space when that is at most direct_max
    keys, else hashed (src, dst*radix+extra) first seen first."""
    n = src.shape[0]
    has_extra = extra.shape[0] > 0  # (empty: no third key part)
    empty = np.empty(0, np.int64)
    empty_u = np.empty(0, np.uint64)
    no_ids = np.empty(0, np.int32)
    if n == 0:
        return no_ids, empty, empty, empty_u, empty_u, 0
    # bounds: one vectorised pass per column (no per-row branch to give up on)
    src_low, src_top = _value_range(src)
    dst_low, dst_top = _value_range(dst)
    extra_low, extra_top = _value_range(extra)
    unit_low, unit_top = _value_range(units)
    if min(min(src_low, dst_low), min(extra_low, unit_low)) < 0:
        return no_ids, empty, empty, empty_u, empty_u, -1
    top = max(src_top, dst_top)
    extra_radix = extra_top + 1
    if top >= 2**40 or extra_radix >= 2**20:  # keep dst * extra_radix + extra in a uint64
        return no_ids, empty, empty, empty_u, empty_u, -1
    # both code counts in one pass; dst's again over the src candidates only when some
    # src code falls short (the usual close: every code of the window reaches)
    src_count = np.zeros(top + 1, np.int32)
    dst_count = np.zeros(top + 1, np.int32)
    for i in range(n):
        src_count[src[i]] += 1
        dst_count[dst[i]] += 1
    every_src = _all_reach(src_count, threshold)
    if not every_src:
        dst_count[:] = 0
        for i in range(n):
            if src_count[src[i]] >= threshold:
                dst_count[dst[i]] += 1
    every_row = every_src and _all_reach(dst_count, threshold)
    src_rank = _ranks_of_reaching(src_count, threshold)
    dst_rank = _ranks_of_reaching(dst_count, threshold)
    extra_rank = np.zeros(1, np.int64)
    if has_extra:
        extra_seen = np.zeros(extra_radix, np.int32)
        for i in range(n):
            extra_seen[extra[i]] = 1
        extra_rank = _ranks_of_reaching(extra_seen, 1)
    n_src = src_rank[-1]
    n_dst = dst_rank[-1]
    n_extra = extra_rank[-1] if has_extra else 1
    # int32 ids of all rows and no list of candidate rows: the later passes read 4 bytes
    # a row (not 16) and need no gather of units at rows
    ids = np.empty(n, np.int32)
    if (n_src <= direct_max and n_dst <= direct_max and n_src * n_dst <= direct_max
            and n_src * n_dst * n_extra <= direct_max):  # (no product overflows)
        distinct, per_key = _direct_ids(src, dst, extra, src_rank, dst_rank, extra_rank,
                                        every_row, ids)
        if distinct > limit:
            return no_ids, empty, empty, empty_u, empty_u, -1
        key_hi = np.arange(per_key.shape[0]).astype(np.uint64)  # index order = key order
        key_lo = np.zeros(per_key.shape[0], np.uint64)
    else:
        distinct, per_key, key_hi, key_lo = _hashed_ids(src, dst, extra, src_rank, dst_rank,
                                                        extra_radix, every_row, limit, ids)
        if distinct < 0:
            return no_ids, empty, empty, empty_u, empty_u, -1
    counts = _distinct_units(ids, units, per_key, threshold, unit_top + 1, max_bits)
    return ids, per_key, counts, key_hi, key_lo, per_key.shape[0]


@njit
def _kept_in_groups(ids: np.ndarray, group_of: np.ndarray, bounds: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(rows whose key has a group, ascending; their positions ordered by group,
    ascending within a group: Groups.counted's order), in one pass over the rows' key
    ids (-1: no key)."""
    keep = np.empty(bounds[-1], np.int64)
    order = np.empty(bounds[-1], np.int64)
    fill = bounds[:-1].copy()
    j = 0
    for i in range(ids.shape[0]):
        k = ids[i]
        if k < 0:
            continue
        g = group_of[k]
        if g >= 0:
            keep[j] = i
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
    ids, per_key, counts, key_hi, key_lo, m = _key_groups(
        src, dst, extra, units, int(threshold), max(n // _FEW_SHARE, 1),
        _BITS_PER_ROW * max(n, 1), min(max(n // _DIRECT_SHARE, _DIRECT_MIN), 2**30))
    if m < 0:
        return None
    if counts.shape[0] != m:
        rows = np.flatnonzero(ids >= 0)
        counts = distinct_per_group(ids[rows].astype(np.int64), m, units[rows])
    reached = np.flatnonzero((counts >= threshold) & (per_key > 0))
    order = reached[np.lexsort((key_lo[reached], key_hi[reached]))]
    group_of = np.full(m, -1, np.int64)
    group_of[order] = np.arange(order.shape[0], dtype=np.int64)
    bounds = np.zeros(order.shape[0] + 1, np.int64)
    np.cumsum(per_key[order], out=bounds[1:])
    keep, rows_by_group = _kept_in_groups(ids, group_of, bounds)
    return keep, Groups(rows_by_group, bounds)
