"""Compiled passes of alert evidence over the rows of many hits (correlation.evidence_rows).

Why: HitRows.distinct (distinct count and the smallest few distinct values per hit: ports,
hosts, sensor names, units) made ~12 numpy passes over every hit row (a (hit, value) key
per row, its sort or presence table, bincount, cumsum, masks, gathers); the rows are
already grouped by hit, so one pass per hit with a seen-table finds them, and a bounded
max-heap keeps the smallest few (a sort per hit cost ~10 µs: more than the pass).
"""

from __future__ import annotations

import numpy as np

from pipeline.jit import njit


@njit
def _sift_down(heap: np.ndarray, start: int, size: int) -> None:
    """Restore the max-heap property of heap[:size] below position start."""
    i = start
    v = heap[i]
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and heap[child + 1] > heap[child]:
            child += 1
        if heap[child] <= v:
            break
        heap[i] = heap[child]
        i = child
    heap[i] = v


@njit
def _push(heap: np.ndarray, size: int, v: int) -> None:
    """Add v to the max-heap heap[:size] (heap has room for it)."""
    i = size
    while i > 0:
        parent = (i - 1) // 2
        if heap[parent] >= v:
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = v


@njit
def distinct_per_hit(bounds: np.ndarray, codes: np.ndarray, mask: np.ndarray, radix: int,
                     limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct count per hit, the `limit` smallest distinct codes of each hit in hit
    order, ascending within a hit, how many of them each hit has) of codes[bounds[h]:
    bounds[h + 1]] where mask holds (every row when mask is empty). codes: in [0, radix),
    checked by the caller."""
    n = bounds.shape[0] - 1
    use_mask = mask.shape[0] > 0
    seen = np.zeros(radix, np.bool_)
    counts = np.zeros(n, np.int64)
    kept = np.zeros(n, np.int64)
    longest = 0
    for h in range(n):
        longest = max(longest, bounds[h + 1] - bounds[h])
    found = np.empty(longest, np.int64)
    heap = np.empty(max(limit, 1), np.int64)
    sample = np.empty(min(codes.shape[0], n * limit), np.int64)
    w = 0
    for h in range(n):
        m = 0
        size = 0
        for r in range(bounds[h], bounds[h + 1]):
            if use_mask and not mask[r]:
                continue
            c = codes[r]
            if not seen[c]:
                seen[c] = True
                found[m] = c
                m += 1
                if size < limit:
                    _push(heap, size, c)
                    size += 1
                elif size > 0 and c < heap[0]:
                    heap[0] = c
                    _sift_down(heap, 0, size)
        for j in range(m):
            seen[found[j]] = False
        counts[h] = m
        # heapsort in place: the largest goes last, so heap[:size] ends ascending
        for end in range(size - 1, 0, -1):
            top = heap[0]
            heap[0] = heap[end]
            heap[end] = top
            _sift_down(heap, 0, end)
        sample[w:w + size] = heap[:size]
        w += size
        kept[h] = size
    return counts, sample[:w], kept


@njit
def middle_and_last(bounds: np.ndarray, values: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per hit (each with >= 1 row): the values at positions (count - 1) // 2 and
    count // 2 of its rows' values sorted (the two middle ones: one for an odd count), and
    the largest, of values[bounds[h]:bounds[h + 1]].

    Why: a median per hit needs only those; a sort of every hit row (~2.5M at issue #4's
    hop close) cost more than the rest of the brute-force evidence's numpy passes."""
    n = bounds.shape[0] - 1
    lower = np.empty(n, np.int64)
    upper = np.empty(n, np.int64)
    largest = np.empty(n, np.int64)
    for h in range(n):
        start = bounds[h]
        count = bounds[h + 1] - start
        k = count // 2
        part = np.partition(values[start:start + count], k)  # (a copy: values untouched)
        upper[h] = part[k]
        low = part[k]
        if count % 2 == 0:
            low = part[0]
            for j in range(1, k):  # the largest below position k
                low = max(low, part[j])
        lower[h] = low
        top = part[k]
        for j in range(k + 1, count):
            top = max(top, part[j])
        largest[h] = top
    return lower, upper, largest


@njit
def sources_reaching(src: np.ndarray, dst: np.ndarray, threshold: int,
                     radix: int) -> np.ndarray:
    """Mask of the rows whose src code has >= threshold distinct dst codes among all rows
    (codes: non-negative, src < radix). Each source keeps its first distinct dsts (at
    most threshold - 1 compared per row) until it reaches the threshold.

    Why (port_scan's horizontal scan): a (source, port) key needs as many distinct hosts
    as its source; at issue #4's hop close ~5M failed attempts of sources that each try
    one host were all kept by the port and source row counts, and coding their keys cost
    0.35 s for no finding."""
    n = src.shape[0]
    seen = np.empty((radix, max(threshold - 1, 1)), np.int64)
    count = np.zeros(radix, np.int64)
    for i in range(n):
        s = src[i]
        c = count[s]
        if c >= threshold:
            continue
        d = dst[i]
        new = True
        for j in range(c):
            if seen[s, j] == d:
                new = False
                break
        if new:
            if c < threshold - 1:
                seen[s, c] = d
            count[s] = c + 1
    mask = np.empty(n, np.bool_)
    for i in range(n):
        mask[i] = count[src[i]] >= threshold
    return mask
