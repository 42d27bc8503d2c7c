"""Compiled grouping kernels of the correlation engine: hash-based factorize in one pass.

The group-by helpers of correlation/detector.py used to rank values by sorting every row
(np.sort / argsort / lexsort: O(n log n) over 10^5-10^6 rows per window close) although a
window holds few distinct keys. These kernels find the distinct values with an
open-addressing hash table in one pass over the rows, so only the distinct values are
sorted afterwards (in Python, by the callers). Every index is computed in range by
construction (hash & mask, ids < rows) and the tables are sized by the caller-visible
rules below, so hostile values cannot make a kernel read or write out of bounds.

`AddressTable` interns 16-byte addresses across batches: the engine's shared row buffer
gives every buffered address a stable id once, on arrival, instead of re-sorting the whole
buffer at every window close.
"""

from __future__ import annotations

import numpy as np

from pipeline.jit import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing multiplier
_MIX = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 constant, mixes the second half in


def _table_bits(n: int) -> int:
    """log2 of the slot count for n keys: a power of two >= 2n (load <= 1/2), >= 2 slots."""
    return max(1, (2 * max(n, 1) - 1).bit_length())


_START_BITS = 12  # 4096 slots: windows hold few distinct keys; the table doubles as needed


@njit
def _slot(a: np.uint64, b: np.uint64, shift: np.uint64) -> np.int64:
    """Hash of a (hi, lo) key: the top bits of a multiplicative mix, in [0, 2**(64-shift))."""
    return np.int64(((a * _GOLDEN) ^ (b * _MIX) ^ (b >> np.uint64(29))) * _GOLDEN >> shift)


@njit
def _find_or_add(slots: np.ndarray, key_hi: np.ndarray, key_lo: np.ndarray, a: np.uint64,
                 b: np.uint64, shift: np.uint64, m: int) -> tuple[int, int]:
    """(id of key (a, b), keys held after): linear probing from the key's hash slot; a new
    key takes id m in the first empty slot. The caller keeps the table under half full (a
    probe always ends) and key_* longer than m."""
    mask = slots.shape[0] - 1
    h = _slot(a, b, shift)
    while True:
        s = slots[h]
        if s < 0:
            slots[h] = m
            key_hi[m] = a
            key_lo[m] = b
            return m, m + 1
        if key_hi[s] == a and key_lo[s] == b:
            return s, m
        h = (h + 1) & mask


@njit
def _rehash(key_hi: np.ndarray, key_lo: np.ndarray, m: int, bits: int) -> np.ndarray:
    """A fresh slot table of 2**bits slots holding ids 0..m-1 (caller: 2**bits > 2m)."""
    size = 1 << bits
    mask = size - 1
    shift = np.uint64(64 - bits)
    slots = np.full(size, -1, np.int64)
    for j in range(m):
        h = _slot(key_hi[j], key_lo[j], shift)
        while slots[h] >= 0:
            h = (h + 1) & mask
        slots[h] = j
    return slots


@njit
def _factorize(hi: np.ndarray, lo: np.ndarray, limit: int
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """(id of each row's key in first-seen order, first row of each id, distinct count),
    or distinct count -1 as soon as there are more than `limit` distinct keys (mostly
    distinct keys: a sort is faster than hashing, the caller sorts instead).

    The slot table starts small and doubles whenever it is half full, so it stays the size
    of the distinct keys (cache-resident) rather than of the rows; a probe always finds a
    free slot and `h` stays in [0, 2**bits) (mask / shift).
    """
    n = hi.shape[0]
    bits = _START_BITS
    shift = np.uint64(64 - bits)
    slots = np.full(1 << bits, -1, np.int64)
    key_hi = np.empty(n, np.uint64)
    key_lo = np.empty(n, np.uint64)
    ids = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        ids[i], grown = _find_or_add(slots, key_hi, key_lo, hi[i], lo[i], shift, m)
        if grown == m:
            continue
        first[m] = i
        m = grown
        if m > limit:
            return ids, first, -1
        if 2 * m >= slots.shape[0]:
            bits += 1
            shift = np.uint64(64 - bits)
            slots = _rehash(key_hi, key_lo, m, bits)
    return ids, first, m


def factorize_u64(values: np.ndarray, limit: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, first): ids[i] = index of values[i] among the distinct values in first-seen
    order, first[j] = the first row holding distinct value j; None when there are more than
    `limit` distinct values (default: no limit)."""
    values = np.ascontiguousarray(values, dtype=np.uint64)
    n = values.shape[0]
    ids, first, m = _factorize(values, np.zeros(n, np.uint64), n if limit is None else limit)
    return None if m < 0 else (ids, first[:m])


def factorize_u128(hi: np.ndarray, lo: np.ndarray, limit: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """factorize_u64 for (hi, lo) uint64 pairs (16-byte addresses)."""
    hi = np.ascontiguousarray(hi, dtype=np.uint64)
    lo = np.ascontiguousarray(lo, dtype=np.uint64)
    ids, first, m = _factorize(hi, lo, hi.shape[0] if limit is None else limit)
    return None if m < 0 else (ids, first[:m])


@njit
def _intern(halves: np.ndarray, table: np.ndarray, key_hi: np.ndarray, key_lo: np.ndarray,
            m: int, ids: np.ndarray) -> tuple[int, np.ndarray]:
    """ids[i] = the id of row i of `halves` (n, 2: (hi, lo) keys) in a persistent table
    holding m keys; returns (keys held after, the table: the same one, or a twice larger one
    it grew into). New keys are appended to key_hi / key_lo (the caller makes them >= m + n
    long) and get the next id. Raises IndexError when ids is shorter than halves.

    Each slot holds its key next to its id (table[s] = (hi, lo, id); id -1: empty), so a
    probe reads one slot instead of the slot, then the key's two halves by id: three cache
    misses per row when the table is out of cache, which it is on every append (the
    buffer's own traffic evicts it). The table doubles whenever half full (a probe always
    ends; it stays the size of the keys, not of the keys plus a whole batch)."""
    n = halves.shape[0]
    size = table.shape[0]
    bits = 0
    while (1 << bits) < size:
        bits += 1
    shift = np.uint64(64 - bits)
    mask = size - 1
    if ids.shape[0] < n:
        raise IndexError("ids shorter than the keys")
    for i in range(n):
        a = halves[i, 0]
        b = halves[i, 1]
        h = _slot(a, b, shift)
        while True:
            s = table[h, 2]
            if s < 0:
                table[h, 0] = np.int64(a)
                table[h, 1] = np.int64(b)
                table[h, 2] = m
                key_hi[m] = a
                key_lo[m] = b
                ids[i] = m
                m += 1
                if 2 * m >= size:
                    bits += 1
                    shift = np.uint64(64 - bits)
                    table = _rehash_inline(key_hi, key_lo, m, bits)
                    size = table.shape[0]
                    mask = size - 1
                break
            if table[h, 0] == np.int64(a) and table[h, 1] == np.int64(b):
                ids[i] = s
                break
            h = (h + 1) & mask
    return m, table


@njit
def _rehash_inline(key_hi: np.ndarray, key_lo: np.ndarray, m: int, bits: int) -> np.ndarray:
    """A fresh inline table (see _intern) of 2**bits slots holding ids 0..m-1 (caller:
    2**bits > 2m)."""
    size = 1 << bits
    mask = size - 1
    shift = np.uint64(64 - bits)
    table = np.full((size, 3), -1, np.int64)
    for j in range(m):
        h = _slot(key_hi[j], key_lo[j], shift)
        while table[h, 2] >= 0:
            h = (h + 1) & mask
        table[h, 0] = np.int64(key_hi[j])
        table[h, 1] = np.int64(key_lo[j])
        table[h, 2] = j
    return table


class KeyTable:
    """Stable int64 ids of (hi, lo) uint64 keys, interned batch by batch.

    ids never change while the table lives (`rebuild` renumbers, returning the mapping).
    """

    def __init__(self) -> None:
        self.size = 0  # distinct keys interned
        self._table = _rehash_inline(np.empty(0, np.uint64), np.empty(0, np.uint64), 0, 1)
        self._hi = np.empty(0, np.uint64)  # key halves by id
        self._lo = np.empty(0, np.uint64)

    @property
    def hi(self) -> np.ndarray:
        return self._hi[: self.size]

    @property
    def lo(self) -> np.ndarray:
        return self._lo[: self.size]

    def intern_halves(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """int64 id of every (hi[i], lo[i]) key (new keys are added, in row order)."""
        n = hi.shape[0]
        if n == 0:
            return np.empty(0, np.int64)
        halves = np.empty((n, 2), np.uint64)
        halves[:, 0] = hi
        halves[:, 1] = lo
        return self._intern_rows(halves)

    def _intern_rows(self, halves: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """intern_halves of a C-contiguous (n, 2) uint64 array of (hi, lo) rows, written
        into `out` (int64, n long) when given."""
        ids = np.empty(halves.shape[0], np.int64) if out is None else out
        self._reserve(self.size + halves.shape[0])
        self.size, self._table = _intern(halves, self._table, self._hi, self._lo, self.size,
                                         ids)
        return ids

    def rebuild(self, live: np.ndarray) -> np.ndarray:
        """Keep only the ids flagged in the boolean `live` (len = size); renumber them densely
        in id order and return old id -> new id (-1 for dropped ids)."""
        keep = np.flatnonzero(live[: self.size])
        remap = np.full(self.size, -1, np.int64)
        remap[keep] = np.arange(keep.size, dtype=np.int64)
        hi, lo = self._hi[keep], self._lo[keep]
        self.clear()
        self._reserve(keep.size)
        self._hi[: keep.size] = hi
        self._lo[: keep.size] = lo
        self.size = int(keep.size)
        self._table = _rehash_inline(self._hi, self._lo, self.size, _table_bits(self.size))
        return remap

    def clear(self) -> None:
        self.size = 0
        self._table = _rehash_inline(np.empty(0, np.uint64), np.empty(0, np.uint64), 0, 1)
        self._hi = np.empty(0, np.uint64)
        self._lo = np.empty(0, np.uint64)

    def _reserve(self, needed: int) -> None:
        """Key arrays with room for `needed` keys (the slot table grows inside _intern)."""
        if needed > self._hi.shape[0]:
            capacity = max(needed, 2 * self._hi.shape[0], 1024)
            hi = np.empty(capacity, np.uint64)
            lo = np.empty(capacity, np.uint64)
            hi[: self.size] = self._hi[: self.size]
            lo[: self.size] = self._lo[: self.size]
            self._hi, self._lo = hi, lo


class AddressTable(KeyTable):
    """Stable ids of 16-byte addresses, and their ranks in factorize_ip's address order.

    `ranks()[id]` orders ids like detector.factorize_ip orders addresses (by the native
    (upper, lower) uint64 halves), recomputed only after new addresses arrived, over the
    distinct addresses alone.
    """

    def __init__(self) -> None:
        super().__init__()
        self._ranks: np.ndarray | None = None
        # ids 0..len(_order)-1 in address order, kept across new arrivals: new ids are
        # sorted alone and merged in (one linear pass) instead of sorting every address
        # again after each batch that brought a new one
        self._order: np.ndarray | None = None

    def intern(self, column: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """int64 id of every address of an IP_DTYPE column (new addresses are added),
        written into `out` (int64, as long as the column) when given."""
        n = column.shape[0]
        if n == 0:
            return np.empty(0, np.int64) if out is None else out
        # (the rows' own bytes as (hi, lo) pairs: no copy of either half)
        halves = np.ascontiguousarray(column).view(np.uint64).reshape(n, 2)
        before = self.size
        ids = self._intern_rows(halves, out)
        if self.size != before:
            self._ranks = None
        return ids

    def clear(self) -> None:
        super().clear()
        self._ranks = None
        self._order = None

    def ranks_stale(self) -> bool:
        """Whether ranks() would recompute: new addresses (or a clear) since its last call."""
        return self._ranks is None

    def ranks(self) -> np.ndarray:
        """int64 rank of each id in address order (distinct ids, distinct ranks)."""
        if self._ranks is None:
            m = self.size
            hi, lo = self.hi, self.lo
            done = 0 if self._order is None else self._order.shape[0]
            if 0 < done <= m:  # ids below `done` are ordered already (ids never change)
                new = _address_order(hi[done:], lo[done:]) + done
                order = merge_ordered_ids(hi, lo, self._order, new)
            else:
                order = _address_order(hi, lo)
            ranks = np.empty(m, np.int64)
            ranks[order] = np.arange(m, dtype=np.int64)
            self._order = order
            self._ranks = ranks
        return self._ranks


def _address_order(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Indices of the (hi, lo) keys (distinct) in ascending (hi, lo) order."""
    m = hi.shape[0]
    bits = max(1, (m - 1).bit_length())
    low32 = lo & np.uint64(0xFFFFFFFF)
    if m and hi.min() == hi.max() and low32.min() == low32.max() and bits <= 32:
        # all IPv4-mapped: the IPv4 part (bytes 12..15) packed with the id sorts in
        # one np.sort (several times faster than lexsort)
        packed = np.sort(((lo >> np.uint64(32)) << np.uint64(bits))
                         | np.arange(m, dtype=np.uint64))
        return (packed & np.uint64((1 << bits) - 1)).astype(np.int64)
    return np.lexsort((lo, hi))


@njit
def merge_ordered_ids(hi: np.ndarray, lo: np.ndarray, first: np.ndarray,
                      second: np.ndarray) -> np.ndarray:
    """Merge two id lists, each in ascending (hi[id], lo[id]) order, into one (ids of
    distinct keys: no ties). Raises IndexError on an id outside hi / lo."""
    n1 = first.shape[0]
    n2 = second.shape[0]
    size = min(hi.shape[0], lo.shape[0])
    out = np.empty(n1 + n2, np.int64)
    i = 0
    j = 0
    for k in range(n1 + n2):
        if j >= n2:
            take_first = True
        elif i >= n1:
            take_first = False
        else:
            a = first[i]
            b = second[j]
            if a < 0 or a >= size or b < 0 or b >= size:
                raise IndexError("id out of range")
            take_first = hi[a] < hi[b] or (hi[a] == hi[b] and lo[a] < lo[b])
        if take_first:
            out[k] = first[i]
            i += 1
        else:
            out[k] = second[j]
            j += 1
    return out


@njit
def in_networks(halves: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Boolean per row: address in any CIDR block.

    halves: (n, 2) uint64, the native view of a 16-byte address column; blocks: (b, 4)
    uint64 rows (net hi, net lo, mask hi, mask lo) in the same native view of their
    big-endian bytes (AND / == are bitwise, so no byte swap is needed). Indices run over
    the arrays' own shapes only.
    """
    n = halves.shape[0]
    out = np.zeros(n, np.bool_)
    for i in range(n):
        a = halves[i, 0]
        b = halves[i, 1]
        for j in range(blocks.shape[0]):
            if (a & blocks[j, 2]) == blocks[j, 0] and (b & blocks[j, 3]) == blocks[j, 1]:
                out[i] = True
                break
    return out


@njit
def window_copies(times: np.ndarray, first: int, last: int, size: int, hop: int,
                  copies: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, window index) of every row copy in every window first..last containing it.

    Copy j of row i belongs to window t_i // hop - j when that window is in first..last and
    ends after t_i; output ordered by j, then row (WindowRange.assign's order). Two passes
    (count, fill) so the output is allocated once; rows index `times` only.
    """
    n = times.shape[0]
    total = 0
    for j in range(copies):
        for i in range(n):
            k = times[i] // hop - j
            if k >= first and k <= last and k * hop + size > times[i]:
                total += 1
    rows = np.empty(total, np.int64)
    ks = np.empty(total, np.int64)
    m = 0
    for j in range(copies):
        for i in range(n):
            k = times[i] // hop - j
            if k >= first and k <= last and k * hop + size > times[i]:
                rows[m] = i
                ks[m] = k
                m += 1
    return rows, ks


@njit
def count_stale(positions: np.ndarray, times: np.ndarray, horizon: int) -> int:
    """How many of the buffered rows `positions` have times[row] < horizon (one pass, no
    temporaries). Raises IndexError on a position outside `times`."""
    count = 0
    for i in range(positions.shape[0]):
        p = positions[i]
        if p < 0 or p >= times.shape[0]:
            raise IndexError("buffered row position out of range")
        if times[p] < horizon:
            count += 1
    return count


@njit
def more_stale_than(positions: np.ndarray, times: np.ndarray, horizon: int, limit: int
                    ) -> bool:
    """count_stale(positions, times, horizon) > limit, stopping as soon as the answer is
    known: stale rows are mostly the earliest arrivals (the front of the positions), so a
    close that releases stops after ~limit rows, and one that cannot reach the limit stops
    once too few rows are left. Raises IndexError on a position read outside `times`."""
    count = 0
    n = positions.shape[0]
    for i in range(n):
        if count + n - i <= limit:  # even if every row left were stale
            return False
        p = positions[i]
        if p < 0 or p >= times.shape[0]:
            raise IndexError("buffered row position out of range")
        if times[p] < horizon:
            count += 1
            if count > limit:
                return True
    return False


@njit
def release_stale(positions: np.ndarray, times: np.ndarray, horizon: int,
                  holders: np.ndarray) -> tuple[np.ndarray, int]:
    """Drop the rows before `horizon` from `positions` (order kept) and decrement their
    holder counts; returns (kept positions, rows no holder keeps any more). Raises
    IndexError on a position outside `times` or `holders`."""
    kept = np.empty(positions.shape[0], np.int64)
    m = 0
    freed = 0
    for i in range(positions.shape[0]):
        p = positions[i]
        if p < 0 or p >= times.shape[0] or p >= holders.shape[0]:
            raise IndexError("buffered row position out of range")
        if times[p] < horizon:
            holders[p] -= 1
            if holders[p] == 0:
                freed += 1
        else:
            kept[m] = p
            m += 1
    return kept[:m], freed


@njit
def ranked_codes(ranks: np.ndarray, first: np.ndarray, second: np.ndarray,
                 positions: np.ndarray, radix: int) -> np.ndarray:
    """ranks[first[p]] * radix + ranks[second[p]] for every p in positions (radix 0: the
    first column's rank alone): the engine's order-preserving address (pair) codes in one
    pass instead of four gathers and two temporaries. Raises IndexError on a position or
    id out of range."""
    n = positions.shape[0]
    out = np.empty(n, np.int64)
    for i in range(n):
        p = positions[i]
        if p < 0 or p >= first.shape[0] or p >= second.shape[0]:
            raise IndexError("buffered row position out of range")
        a = first[p]
        if a < 0 or a >= ranks.shape[0]:
            raise IndexError("address id out of range")
        code = ranks[a]
        if radix:
            b = second[p]
            if b < 0 or b >= ranks.shape[0]:
                raise IndexError("address id out of range")
            code = code * radix + ranks[b]
        out[i] = code
    return out


@njit
def lookup_u16(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """table[values] for a uint16 column and a boolean table (65536 entries for a full
    lookup); values beyond the table give False instead of reading past it."""
    n = values.shape[0]
    out = np.zeros(n, np.bool_)
    size = table.shape[0]
    for i in range(n):
        v = values[i]
        if v < size:
            out[i] = table[v]
    return out


@njit
def min_max(values: np.ndarray) -> tuple[int, int]:
    """(min, max) of a non-empty int64 array in one pass (numpy needs two)."""
    low = values[0]
    high = values[0]
    for i in range(1, values.shape[0]):
        v = values[i]
        if v < low:
            low = v
        elif v > high:
            high = v
    return low, high


@njit
def dense_in_span(values: np.ndarray, low: int, span: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(rank of each value among the distinct values, first row holding each distinct
    value) for int64 values in [low, low + span), via a presence table of `span` entries:
    two passes over the rows and one over the table, no temporaries (the numpy form took
    ~10 passes). Raises IndexError on a value outside the span (the caller's min/max)."""
    n = values.shape[0]
    rank = np.full(span, -1, np.int64)
    for i in range(n):
        v = values[i] - low
        if v < 0 or v >= span:
            raise IndexError("value outside the span")
        rank[v] = 0
    m = 0
    for v in range(span):
        if rank[v] == 0:
            rank[v] = m
            m += 1
    codes = np.empty(n, np.int64)
    first = np.full(m, -1, np.int64)
    for i in range(n):
        c = rank[values[i] - low]
        codes[i] = c
        if first[c] < 0:
            first[c] = i
    return codes, first


@njit
def pair_values(a: np.ndarray, b: np.ndarray, radix: int) -> tuple[np.ndarray, int, int]:
    """(a * radix + b, its min, its max) in one pass: combine_codes' packed pair without
    the astype and product temporaries. a, b: int64 of equal, non-zero length."""
    n = a.shape[0]
    out = np.empty(n, np.int64)
    low = a[0] * radix + b[0]
    high = low
    for i in range(n):
        v = a[i] * radix + b[i]
        out[i] = v
        if v < low:
            low = v
        elif v > high:
            high = v
    return out, low, high


@njit
def distinct_counts_in_span(group: np.ndarray, values: np.ndarray, n_groups: int,
                            radix: int) -> np.ndarray:
    """Distinct values per group through a presence table of n_groups * radix flags (no
    sort, no hash): group in [0, n_groups), values in [0, radix), int64 of equal length.
    Returns an empty array when a group or value lies outside those ranges (the caller
    then takes its general path), so no write goes out of the table."""
    n = group.shape[0]
    present = np.zeros(n_groups * radix, np.bool_)
    for i in range(n):
        g = group[i]
        v = values[i]
        if g < 0 or g >= n_groups or v < 0 or v >= radix:
            return np.empty(0, np.int64)
        present[g * radix + v] = True
    counts = np.zeros(n_groups, np.int64)
    for g in range(n_groups):
        base = g * radix
        s = 0
        for v in range(radix):
            s += present[base + v]
        counts[g] = s
    return counts


@njit
def distinct_in_span(values: np.ndarray, low: int, span: int) -> np.ndarray:
    """Sorted distinct int64 values lying in [low, low + span), through a presence table
    (no sort). Raises IndexError on a value outside the span (the caller's min/max)."""
    present = np.zeros(span, np.bool_)
    for i in range(values.shape[0]):
        v = values[i] - low
        if v < 0 or v >= span:
            raise IndexError("value outside the span")
        present[v] = True
    m = 0
    for v in range(span):
        m += present[v]
    out = np.empty(m, np.int64)
    m = 0
    for v in range(span):
        if present[v]:
            out[m] = v + low
            m += 1
    return out


@njit
def hold_rows(holders: np.ndarray, rows: np.ndarray, times: np.ndarray) -> int:
    """holders[rows] += 1 and the earliest times[rows], in one pass (numpy needed a gather,
    an add and a scatter, then another gather and a min). rows: distinct, non-empty.
    Raises IndexError on a row outside holders or times."""
    n = min(holders.shape[0], times.shape[0])
    earliest = np.iinfo(np.int64).max
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0 or r >= n:
            raise IndexError("selected row out of range")
        holders[r] += 1
        if times[r] < earliest:
            earliest = times[r]
    return earliest


@njit
def count_at(times: np.ndarray, positions: np.ndarray, start: int, end: int) -> int:
    """How many of times[positions] are in [start, end)."""
    n = 0
    for p in positions:
        if start <= times[p] < end:
            n += 1
    return n


@njit
def group_order(group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows ordered by group, ascending rows within a group; bounds: group g's rows are
    order[bounds[g]:bounds[g + 1]]) of group ids in [0, n_groups): a counting sort.
    Raises IndexError on a group id outside that range.

    Why: grouping the rows of a hop close (millions) by an argsort cost ~0.2 s per
    detector; two passes over the rows do it in linear time."""
    n = group.shape[0]
    bounds = np.zeros(n_groups + 1, np.int64)
    for i in range(n):
        g = group[i]
        if g < 0 or g >= n_groups:
            raise IndexError("group id out of range")
        bounds[g + 1] += 1
    for g in range(n_groups):
        bounds[g + 1] += bounds[g]
    fill = bounds[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        g = group[i]
        order[fill[g]] = i
        fill[g] += 1
    return order, bounds


@njit
def distinct_counts_in_bits(group: np.ndarray, values: np.ndarray, n_groups: int,
                            radix: int) -> np.ndarray:
    """distinct_counts_in_span with a bit per (group, value) and counts kept on the way
    (a table 8x smaller, never scanned): for wide values (client ports: 65,536 per
    group) of millions of rows, where the hash pass gave up and a sort ranked every row.
    Returns an empty array when a group or value lies outside the ranges."""
    n = group.shape[0]
    bits = np.zeros((n_groups * radix + 63) // 64, np.uint64)
    counts = np.zeros(n_groups, np.int64)
    for i in range(n):
        g = group[i]
        v = values[i]
        if g < 0 or g >= n_groups or v < 0 or v >= radix:
            return np.empty(0, np.int64)
        slot = g * radix + v
        word = slot >> 6
        mask = np.uint64(1) << np.uint64(slot & 63)
        if not bits[word] & mask:
            bits[word] |= mask
            counts[g] += 1
    return counts
