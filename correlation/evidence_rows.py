"""Evidence of findings: of all hit groups at once with numpy (HitRows, LazyEvidence, below:
what the network detectors use), and of one finding's few rows in plain Python (the
helpers first, kept as the per-row reference of tests/test_burst_evidence.py).

Why the per-row helpers: when thousands of alerts close at once (issue #4), describe() ran
once per alert on a few dozen rows. There, each numpy call (a fancy index, a reduction,
np.unique of a tiny array, ip_column_to_str of one address) costs a fixed 1-10 µs that
dwarfs the work; one gather + `.tolist()` per column and Python's min/max/set/sorted on
the lists is several times cheaper; but it is linear Python per row, ~1 ms per alert of
~650 rows (the 90 s latency run's burst), which the all-hits numpy passes avoid.

Results equal those of the numpy helpers they replace (correlation.network_common's span,
seen_by and sample_ips, correlation.detector's sorted_unique_ips/_text): addresses are the
16-byte IP_DTYPE values, whose bytes order is their numeric order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cached_property, partial

import numpy as np

from correlation.alert_kernels import distinct_per_hit
from correlation.detector import Columns, Evidence, Groups, factorize_ip, take, unique_int
from correlation.kernels import factorize_u64, min_max
from pipeline.schema import object_addresses
from pipeline.text_codes import factorize_text
from sensors.packets import IP_DTYPE, ip_column_to_str

_V4_PREFIX = bytes(10) + b"\xff\xff"  # IPv4-mapped IPv6 (sensors.packets.IP_DTYPE)
_NO_MASK = np.empty(0, bool)


def row_lists(cols: Columns, r: np.ndarray, *names: str) -> list[list]:
    """`cols[name][r].tolist()` for each name: one gather per column and finding."""
    return [cols[name][r].tolist() for name in names]


def ip_bytes_text(b: bytes) -> str:
    """Text of one 16-byte address value (= ip_column_to_str of it)."""
    if b[:12] == _V4_PREFIX:
        return f"{b[12]}.{b[13]}.{b[14]}.{b[15]}"
    return ip_column_to_str(np.frombuffer(b, IP_DTYPE))[0]  # IPv6: rare, exact helper


def ip_texts(values: Iterable[bytes]) -> list[str]:
    """ip_bytes_text of each value, in order."""
    return [ip_bytes_text(b) for b in values]


def _octet_words(last: bytes) -> np.ndarray:
    """Octet value -> its text as 4 bytes in a uint32: 3 digits (leading zeros as NUL,
    dropped after the join) and `last` (the separator that follows)."""
    table = np.zeros((256, 4), np.uint8)
    for v in range(256):
        digits = str(v).encode()
        table[v, 3 - len(digits):3] = np.frombuffer(digits, np.uint8)
    table[:, 3] = last[0]
    return table.view(np.uint32).ravel()


_OCTET_DOT, _OCTET_END = _octet_words(b"."), _octet_words(b"\n")
_V4_WORDS = np.frombuffer(_V4_PREFIX, np.uint32)


def ip_column_texts(column: np.ndarray) -> list[str]:
    """ip_column_to_str of a 16-byte address column, IPv4 formatted all at once.

    Why: evidence names up to 2 x 50 sampled hosts per alert, thousands of alerts per
    burst; one f-string per address costs ~0.5 µs, these few numpy passes and one split
    < 0.1 µs. Each IPv4 address is written as 4 words (its octets' digits, leading zeros
    as NUL, and '.' or a newline), the NULs deleted from the joined bytes, which are then
    split at the newlines.
    """
    words = np.ascontiguousarray(column).view(np.uint32).reshape(-1, 4)
    n = words.shape[0]
    if n == 0:
        return []
    v4 = (words[:, 0] == _V4_WORDS[0]) & (words[:, 1] == _V4_WORDS[1]) \
        & (words[:, 2] == _V4_WORDS[2])
    all_v4 = bool(v4.all())
    octets = words[:, 3:].view(np.uint8)
    if not all_v4:
        octets = octets[v4]
    out = np.empty((octets.shape[0], 4), np.uint32)
    for j in range(3):
        np.take(_OCTET_DOT, octets[:, j], out=out[:, j])
    np.take(_OCTET_END, octets[:, 3], out=out[:, 3])
    texts = out.tobytes().translate(None, b"\0").decode("ascii").split("\n")
    texts.pop()  # after the last newline
    if all_v4:
        return texts
    result: list[str] = [""] * n
    for i, t in zip(np.flatnonzero(v4).tolist(), texts, strict=True):
        result[i] = t
    others = np.flatnonzero(~v4)
    for i, t in zip(others.tolist(), ip_column_to_str(column[others]), strict=True):
        result[i] = t
    return result


def sorted_pair(a: str, b: str) -> list[str]:
    """sorted({a, b}) (a finding's two addresses) without a set and a sort per alert."""
    return [a] if a == b else [a, b] if a < b else [b, a]


def sorted_ips(values: Iterable[bytes]) -> list[bytes]:
    """Distinct 16-byte addresses in numeric order (bytes order = numeric order)."""
    return sorted(set(values))


def sample_ip_texts(values: Iterable[bytes], limit: int) -> tuple[int, list[str]]:
    """(distinct count, numerically sorted sample of texts): network_common.sample_ips."""
    uniq = sorted_ips(values)
    return len(uniq), ip_texts(uniq[:limit])


def time_span(timestamps: list[int], ends: list[int] | None = None) -> tuple[int, int]:
    """(first evidence time, last evidence activity), ns: network_common.span."""
    last = max(timestamps)
    if ends is not None:
        last = max(last, max(ends))
    return min(timestamps), last


def unique_texts(values: Iterable) -> list[str]:
    """Sorted distinct non-empty names, '|'-joined values split: sorted_unique_text."""
    # distinct values first: a finding's rows mostly repeat one sensor and zone
    return sorted({s for v in set(values) if v for s in str(v).split("|") if s})


def seen_by_lists(cols: Columns, r: np.ndarray) -> dict:
    """Evidence keyword arguments naming the sensors and zones of rows r (= seen_by)."""
    observers, zones = row_lists(cols, r, "observer_name", "ingress_zone")
    return {"observers": unique_texts(observers), "zones": unique_texts(zones)}


# --- evidence of every hit group at once --------------------------------------------------
#
# Why: an alert burst can close thousands of findings of hundreds of rows each (issue #4's
# latency run: 3,200 alerts of ~650 rows, ~1 ms of per-row Python each). Numpy passes over
# the rows of all hit groups together (sorted by hit) make the per-alert cost a constant:
# describe() only picks its hit's values and formats them. Results equal the per-row
# helpers above (tests/test_burst_evidence.py).

class LazyEvidence:
    """The evidence of a detect's hits, computed for all hits of a window on the first
    describe of one of them (only for the hits `expect` announced, when it did).

    Why per window: findings the engine suppresses as repeats (the same key in the next
    overlapping windows of one close) are never described, so a window of only repeats
    costs nothing; the kept findings of a window are described together. Why `expect`:
    a hop close of 300 s windows holds the hits of five hops, of which only the newest
    hop's are not repeats (issue #4: 5M rows of evidence for 2,400 alerts of ~1/2 of them);
    build_alerts announces the kept ones, so the suppressed ones' rows are never read.
    """

    def __init__(self, window_of_hit: np.ndarray,
                 make: Callable[[np.ndarray], Callable[[int], Evidence]]) -> None:
        """window_of_hit: window index of each hit; make(hit numbers) -> describe(position
        among those hits). make's results per hit must not depend on the other hits."""
        n = window_of_hit.shape[0]
        self._window_of_hit = window_of_hit
        self._windows = window_of_hit.tolist()
        self._make = make
        # per hit, as lists: describe reads them once per alert (a numpy item costs more)
        self._position = [0] * n
        self._batch_of = [-1] * n  # -1: not computed
        self._pending = np.ones(n, bool)  # not computed
        self._expected: np.ndarray | None = None  # bool per hit, once announced
        self._batches: list[Callable[[int], Evidence]] = []

    def expect(self, hits: np.ndarray) -> None:
        """Announce the hits that will be described (more may be, at a further cost)."""
        if self._expected is None:
            self._expected = np.zeros(self._window_of_hit.shape[0], bool)
        self._expected[hits] = True

    def describe(self, hit: int) -> Evidence:
        b = self._batch_of[hit]
        if b < 0:
            pending = (self._window_of_hit == self._windows[hit]) & self._pending
            if self._expected is not None and self._expected[hit]:
                pending &= self._expected
            members = np.flatnonzero(pending)
            self._pending[members] = False
            b = len(self._batches)
            batch_of, position = self._batch_of, self._position
            for p, m in enumerate(members.tolist()):
                batch_of[m] = b
                position[m] = p
            self._batches.append(self._make(members))
        return self._batches[b](self._position[hit])


def expect_described(describes: Iterable[Callable[[], Evidence]]) -> None:
    """Announce to their LazyEvidence the hits of describe callables
    `partial(lazy.describe, hit)` that are about to be called (others are ignored)."""
    announced: dict[int, tuple[LazyEvidence, list[int]]] = {}
    last, hits = None, []  # a detect's findings come together: one lookup per run of them
    for d in describes:
        if type(d) is not partial or len(d.args) != 1 or d.keywords:
            continue
        func = d.func
        if getattr(func, "__func__", None) is not _LAZY_DESCRIBE:
            continue
        lazy = func.__self__
        if lazy is not last:
            if type(lazy) is not LazyEvidence:
                continue
            last, hits = lazy, announced.setdefault(id(lazy), (lazy, []))[1]
        hits.append(d.args[0])
    for lazy, hits in announced.values():
        lazy.expect(np.asarray(hits, np.int64))


_LAZY_DESCRIBE = LazyEvidence.describe


def hit_evidence(evidence: Callable[[HitRows], Callable[[int], Evidence]], groups: Groups,
                 hits: np.ndarray, row_of: np.ndarray, members: np.ndarray
                 ) -> Callable[[int], Evidence]:
    """LazyEvidence's make for hits[members]: evidence(their HitRows)."""
    return evidence(HitRows(groups, hits[members], row_of))


class TargetEvidence:
    """What every host-probing finding (ICMP sweep, UDP scan) reports, for all hits at
    once: time span, probes, distinct target hosts with a numerically sorted sample,
    sensors and zones, the first row of each hit (its key's addresses)."""

    def __init__(self, cols: Columns, hit_rows: HitRows, max_sample: int) -> None:
        self.first, self.last = hit_rows.time_span(hit_rows.gather(cols, "timestamp"),
                                                   hit_rows.gather(cols, "end"))
        self.host, hosts = ip_numeric_codes(hit_rows.gather(cols, "dst_ip"))
        self.n_hosts, self.sample = hit_rows.distinct(self.host, max_sample)
        self.probes = np.diff(hit_rows.bounds).tolist()
        self.observers = hit_rows.names_in(cols, "observer_name")
        self.zones = hit_rows.names_in(cols, "ingress_zone")
        self._first_rows = hit_rows.rows[hit_rows.bounds[:-1]]
        self.first_row = self._first_rows.tolist()
        self.hosts = hosts  # the distinct hosts, in code order
        # texts of every host at once when the hits' samples (and their subsets: answering
        # hosts) could name a good share of them; else one by one
        self._all_texts = hosts.shape[0] <= 8 * max_sample * hit_rows.n + 4096
        self._host_texts: list[str] | None = None

    def first_texts(self, cols: Columns, name: str) -> list[str]:
        """Per hit: the text of address column `name` at its first row (a key address:
        every row of the hit has it), read and formatted at those rows only."""
        return ip_column_texts(take(cols, name, self._first_rows))

    def host_texts(self, codes: Iterable[int]) -> list[str]:
        """Texts of hosts by their codes (self.host's)."""
        texts = self._host_texts
        if texts is None:
            if not self._all_texts:
                return [ip_bytes_text(self.hosts.item(c)) for c in codes]
            texts = self._host_texts = ip_column_texts(self.hosts)
        return [texts[c] for c in codes]


class HitRows:
    """The rows of the hit groups, sorted by hit: hit i's rows are rows[bounds[i]:bounds[i+1]]
    (each hit has >= 1 row), `hit` is the hit number of each."""

    def __init__(self, groups: Groups, hits: np.ndarray, row_of: np.ndarray) -> None:
        """groups: the detector's groups of copies; hits: the hit group ids, in finding
        order; row_of: the row (of the detector's columns) of each copy."""
        starts = groups.bounds[hits]
        counts = groups.bounds[hits + 1] - starts
        self.n = int(hits.shape[0])
        self.bounds = np.zeros(self.n + 1, np.int64)
        np.cumsum(counts, out=self.bounds[1:])
        # position in groups.order of each hit row: its hit's start + its rank in the hit
        at = np.arange(int(self.bounds[-1]), dtype=np.int64)
        at += np.repeat(starts - self.bounds[:-1], counts)
        self.rows = row_of[groups.order[at]]

    @cached_property
    def hit(self) -> np.ndarray:
        """The hit number of each hit row (made on first use: most aggregates run per hit
        over bounds, and a close's ~2.5M hit rows cost an int64 array)."""
        return np.repeat(np.arange(self.n, dtype=np.int64), np.diff(self.bounds))

    def gather(self, cols: Columns, name: str) -> np.ndarray:
        """cols[name] at the hit rows (read at those rows only: detector.take)."""
        return take(cols, name, self.rows)

    def min(self, values: np.ndarray) -> np.ndarray:
        return np.minimum.reduceat(values, self.bounds[:-1])

    def max(self, values: np.ndarray) -> np.ndarray:
        return np.maximum.reduceat(values, self.bounds[:-1])

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Per-hit sums; integers summed in int64 (float64 for floats)."""
        dtype = np.int64 if values.dtype.kind in "iub" else None
        return np.add.reduceat(values, self.bounds[:-1], dtype=dtype)

    def count(self, mask: np.ndarray) -> np.ndarray:
        """Rows per hit where mask holds."""
        if self.n == 0:
            return np.zeros(0, np.int64)
        return np.add.reduceat(mask, self.bounds[:-1], dtype=np.int64)  # (>= 1 row per hit)

    def time_span(self, timestamps: np.ndarray, ends: np.ndarray | None = None
                  ) -> tuple[list[int], list[int]]:
        """Per hit (first evidence time, last evidence activity) as in time_span."""
        last = self.max(timestamps)
        if ends is not None:
            np.maximum(last, self.max(ends), out=last)
        return self.min(timestamps).tolist(), last.tolist()

    def distinct(self, codes: np.ndarray, limit: int, mask: np.ndarray | None = None
                 ) -> tuple[list[int], list[list[int]]]:
        """Per hit: (number of distinct codes, the `limit` smallest of them, ascending), of
        the rows where mask holds (all rows without a mask). codes: non-negative ints."""
        if codes.size:
            values = codes.astype(np.int64, copy=False)
            low, high = min_max(values)
            # one compiled pass per hit with a seen-table of `high` entries (not too many)
            if low >= 0 and high <= 4 * values.shape[0] + 65536:
                counts, sample, kept = distinct_per_hit(
                    self.bounds, values,
                    _NO_MASK if mask is None else np.ascontiguousarray(mask, bool),
                    int(high) + 1, limit)
                return counts.tolist(), _split(sample.tolist(), kept)
        hit = self.hit if mask is None else self.hit[mask]
        codes = codes if mask is None else codes[mask]
        radix = int(codes.max()) + 1 if codes.size else 1
        pairs = hit * radix + codes.astype(np.int64)
        if self.n * radix <= 4 * pairs.shape[0] + 256:  # few codes (names): a presence table
            present = np.zeros(self.n * radix, bool)
            present[pairs] = True
            pairs = np.flatnonzero(present)
        else:
            pairs = unique_int(pairs)
        pair_hit = pairs // radix
        counts = np.bincount(pair_hit, minlength=self.n)
        first = np.zeros(self.n + 1, np.int64)
        np.cumsum(counts, out=first[1:])
        sampled = (np.arange(pairs.shape[0]) - first[pair_hit]) < limit
        kept = np.minimum(counts, limit)
        return counts.tolist(), _split((pairs[sampled] % radix).tolist(), kept)

    def sorted_per_hit(self, values: np.ndarray) -> np.ndarray:
        """values (int64) sorted within each hit (the hits stay in order)."""
        if values.size == 0:
            return values.copy()
        low = int(values.min())
        span = int(values.max()) - low + 1
        if span * self.n < 2**62:  # one int64 key (hit, value): a plain sort
            shift = self.hit * span
            return np.sort(shift + (values - low)) - shift + low
        return values[np.lexsort((values, self.hit))]

    def names(self, column: np.ndarray, rows: np.ndarray | None = None) -> list[list[str]]:
        """Per hit: unique_texts of an object column (observer, zone names) at its rows
        (self.rows, or `rows`: the row in column of each hit row)."""
        return self.names_of(*object_codes(column, self.rows if rows is None else rows))

    def names_in(self, cols: Columns, name: str) -> list[list[str]]:
        """names(cols[name]), the object column read at the hit rows only (detector.take).

        Why: the engine's columns gather a whole object column on first access, one object
        per buffered row (issue #4's hop close: 0.155 s per 5M-row column, four of them per
        close), where the evidence needs only the hit rows'."""
        return self.names_of(*object_codes(take(cols, name, self.rows)))

    def names_of(self, codes: np.ndarray, uniques: list) -> list[list[str]]:
        """Per hit: unique_texts of the values of its rows given as object_codes."""
        if len(uniques) == 1:  # one sensor (zone) in every row: no per-hit sets to find
            return [unique_texts(uniques)] * self.n  # (shared, as the memo below shares)
        _, per_hit = self.distinct(codes, len(uniques))
        memo: dict[tuple, list[str]] = {}  # hits mostly share one sensor and zone
        out = []
        for hit_codes in per_hit:
            key = tuple(hit_codes)
            texts = memo.get(key)
            if texts is None:
                texts = memo[key] = unique_texts(uniques[c] for c in hit_codes)
            out.append(texts)
        return out


def _split(values: list, counts: np.ndarray) -> list[list]:
    """values cut into consecutive lists of the given lengths."""
    out = []
    start = 0
    for c in counts.tolist():
        out.append(values[start:start + c])
        start += c
    return out


def object_codes(column: np.ndarray, rows: np.ndarray | None = None
                 ) -> tuple[np.ndarray, list]:
    """(int64 code of each of column[rows] (of every row of column: rows None), the
    distinct values), equal values (as a set sees them) sharing a code.

    Why: an object column has no codes, and hashing or comparing a Python object per row
    costs ~0.1 µs (a gather of objects as much again); rows of one name mostly hold the
    same object, so the column's object pointers (a uint64 view, no object touched) are
    factorized, and only the few distinct objects are compared as values. Mostly distinct
    objects (names decoded row by row) are factorized by their str hash instead.
    """
    n = column.shape[0] if rows is None else rows.shape[0]
    if n == 0:
        return np.empty(0, np.int64), []
    column = np.ascontiguousarray(column)  # (a copy only of a strided view)
    addresses = object_addresses(column)
    pointers = addresses if rows is None else addresses[rows]
    if pointers.min() == pointers.max():  # one object in every row (one sensor, one zone)
        return np.zeros(n, np.int64), [column[0 if rows is None else rows[0]]]
    found = factorize_u64(pointers, limit=n // 16 + 64)
    if found is None:
        return factorize_text(column if rows is None else column[rows])
    pointer_codes, first = found
    index: dict = {}  # distinct value -> code (equal strings at two addresses: one code)
    code_of_pointer = np.array(
        [index.setdefault(v, len(index))
         for v in column[first if rows is None else rows[first]].tolist()], np.int64)
    return code_of_pointer[pointer_codes], list(index)


def ip_numeric_codes(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code of each address, the distinct addresses) with codes in numeric order."""
    codes, uniques = factorize_ip(column)
    halves = np.ascontiguousarray(uniques).view(">u8").reshape(uniques.shape[0], 2)
    order = np.lexsort((halves[:, 1], halves[:, 0]))
    rank = np.empty(order.shape[0], np.int64)
    rank[order] = np.arange(order.shape[0])
    return rank[codes], uniques[order]
