"""The detector interface and the vectorized grouping helpers detectors share.

A detector is a pure function of the events inside closed event-time windows. The engine
(correlation/engine.py) owns time: it buffers the rows a detector selected, tracks the
watermark, decides which windows close, and turns findings into ECS alerts. A detector only
says which rows it needs (`inputs`, `select`) and, for a range of closing windows, which
(window, key) groups are attacks (`detect`).

Windows are hopping windows aligned to the Unix epoch: window k covers event times
[k * hop, k * hop + size). `WindowRange.assign` replicates each buffered row into every
closing window that contains it, so a detector can group all closing windows at once with
numpy (sort / unique / bincount) instead of looping over events.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from correlation.kernels import (
    dense_in_span,
    distinct_counts_in_bits,
    distinct_counts_in_span,
    distinct_in_span,
    factorize_u64,
    factorize_u128,
    group_order,
    min_max,
    pair_values,
    window_copies,
)
from pipeline.schema import EventBatch
from sensors.packets import IP_DTYPE, IPV4_MAPPED_PREFIX, ip_column_to_str

NS_PER_S = 1_000_000_000

# TCP flag bits as the flow columns carry them (OR of the flags each side sent).
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20

IANA_TCP = 6

Columns = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Rule:
    """One alert type a detector raises, with its ATT&CK mapping and default severity."""

    id: str
    name: str
    description: str
    category: str  # rule.category
    tactic_id: str
    tactic_name: str
    technique_id: str
    technique_name: str
    severity: int  # event.severity, 0-100 (Elastic's low 21 / medium 47 / high 73 / critical 99)
    severity_label: str
    risk_score: float
    version: str = "1"

    @property
    def tactic_reference(self) -> str:
        return f"https://attack.mitre.org/tactics/{self.tactic_id}/"

    @property
    def technique_reference(self) -> str:
        return f"https://attack.mitre.org/techniques/{self.technique_id.replace('.', '/')}/"


@dataclass(frozen=True)
class InputSpec:
    """An event kind a detector consumes and the columns of it the engine must buffer."""

    kind: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class WindowSpec:
    """Hopping windows of `size_ns`, starting every `hop_ns` (tumbling when equal)."""

    size_ns: int
    hop_ns: int

    def __post_init__(self) -> None:
        if self.hop_ns <= 0 or self.size_ns < self.hop_ns:
            raise ValueError(f"window needs 0 < hop <= size, got size={self.size_ns} "
                             f"hop={self.hop_ns} (ns)")

    @classmethod
    def from_config(cls, config: Mapping) -> WindowSpec:
        return cls(int(round(float(config["window_s"]) * NS_PER_S)),
                   int(round(float(config["hop_s"]) * NS_PER_S)))

    @property
    def copies(self) -> int:
        """Most windows one instant belongs to."""
        return -(-self.size_ns // self.hop_ns)

    def first_index(self, t: np.ndarray | int) -> np.ndarray | int:
        """Index of the earliest window containing time t."""
        return (t - self.size_ns) // self.hop_ns + 1

    def last_index(self, t: np.ndarray | int) -> np.ndarray | int:
        """Index of the latest window containing time t."""
        return t // self.hop_ns

    def start(self, k: np.ndarray | int) -> np.ndarray | int:
        return k * self.hop_ns

    def end(self, k: np.ndarray | int) -> np.ndarray | int:
        return k * self.hop_ns + self.size_ns


@dataclass(frozen=True)
class WindowRange:
    """The windows closing now: indices first..last (inclusive) of one detector's spec."""

    spec: WindowSpec
    first: int
    last: int

    def assign(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row index, window index) for every row and every closing window containing it.

        Copy j of row i belongs to window last_index(t_i) - j; the copies are listed by j,
        then row. One compiled count-and-fill pass (kernels.window_copies) instead of
        several numpy passes and temporaries per window offset.
        """
        return window_copies(np.ascontiguousarray(times, dtype=np.int64), int(self.first),
                             int(self.last), int(self.spec.size_ns), int(self.spec.hop_ns),
                             int(self.spec.copies))

    def row_mask(self, times: np.ndarray) -> np.ndarray:
        """Rows that fall into at least one of the closing windows."""
        return (times >= self.spec.start(self.first)) & (times < self.spec.end(self.last))


def take(cols: Columns, name: str, rows: np.ndarray) -> np.ndarray:
    """cols[name][rows], read at those rows only when the engine's columns have not
    gathered the column yet (engine._UserColumns.take).

    Why: evidence and finding keys read a few of a window's rows (the first row of each
    hit: its addresses), and gathering a whole column of a 5M-row buffer for them cost
    more than the rest of the read (issue #4: 16-byte addresses, 80 MB per column)."""
    reader = getattr(cols, "take", None)
    return reader(name, rows) if reader is not None else cols[name][rows]


def one_window_groups(windows: WindowRange, key: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """When a single window closes (a hop close): (copy rows, window index, group id,
    group count) of the range's rows with int64 codes `key`: the copies of windows.assign
    with their combine_codes(window index, key), in row order (assign lists them by
    window offset, then row), without replicating rows (each row of the range is in the
    one window once); None when several windows close. Group ids are equal; only the order
    of a group's rows differs."""
    if windows.first != windows.last:
        return None
    group, n_groups = combine_codes(key.astype(np.int64, copy=False))
    return (np.arange(key.shape[0], dtype=np.int64),
            np.full(key.shape[0], windows.first, np.int64), group, n_groups)


@dataclass
class Evidence:
    """What an alert says about a finding beyond its identity."""

    first_seen: int  # ns, earliest evidence event
    last_seen: int  # ns, latest evidence activity
    source_ip: str
    message: str
    details: dict  # -> cirtsa.evidence.*
    destination_ip: str | None = None
    destination_port: int | None = None
    transport: str | None = None
    related_ips: list[str] = field(default_factory=list)
    observers: list[str] = field(default_factory=list)
    zones: list[str] = field(default_factory=list)
    # Further ECS fields of the alert (e.g. threat.indicator.* of an intel hit), merged
    # into the document last; keys must be ECS fields or under cirtsa.*.
    ecs: dict = field(default_factory=dict)


@dataclass
class Finding:
    """One (rule, key, window) a detector found; correlation/alerts.py makes it an alert.

    `describe` builds the evidence lazily: most findings of hopping windows are repeats the
    engine suppresses, and they should cost no more than their identity.
    """

    rule: Rule
    key: str  # canonical text of the grouping key, part of the alert id
    window_start: int  # ns
    window_end: int  # ns
    describe: Callable[[], Evidence]


class Detector(ABC):
    """Base class of every detector module.

    Subclasses set `name` (their section under `correlation.detectors` in the config),
    `rules`, `inputs` and `threshold_keys`, implement `select` (which rows of a batch can
    ever matter: everything else is not buffered) and `detect` (findings of closing windows).
    The engine guarantees `detect` sees every buffered row of every closing window, in
    arrival order, and calls it with ascending, non-overlapping window ranges.
    """

    name: ClassVar[str]
    rules: ClassVar[tuple[Rule, ...]]
    inputs: ClassVar[tuple[InputSpec, ...]]
    threshold_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Mapping) -> None:
        self.config = dict(config)
        missing = [k for k in ("window_s", "hop_s", *self.threshold_keys) if k not in config]
        if missing:
            raise ValueError(f"correlation.detectors.{self.name}: missing keys {missing}")
        self.window = WindowSpec.from_config(config)
        self.suppress_ns = int(round(float(config.get("suppress_s", 0)) * NS_PER_S))
        self.max_buffered_rows = int(config.get("max_buffered_rows", 5_000_000))

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(spec.kind for spec in self.inputs)

    def input_spec(self, kind: str) -> InputSpec:
        for spec in self.inputs:
            if spec.kind == kind:
                return spec
        raise KeyError(kind)

    @abstractmethod
    def select(self, batch: EventBatch) -> np.ndarray:
        """Boolean mask of the rows of `batch` (a consumed kind) this detector may need."""

    def select_key(self, kind: str) -> Hashable | None:
        """A key naming what `select` computes for `kind`, or None (the default: not shared).

        Detectors returning equal keys promise equal `select` masks for every batch of
        `kind` (e.g. two instances of one class whose select reads the same settings: the
        key is then the class and those settings); the engine calls `select` once per batch
        for them all. Optional: None keeps the former one-call-per-detector behaviour.
        """
        return None

    @abstractmethod
    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        """Findings of the closing `windows`; `rows[kind]` holds the buffered columns."""

    # True when `detect` changes no attribute of the detector (proven per class by
    # tests/test_idle_evaluation.py): then `probe` needs no copy at all. Not inherited
    # silently by a subclass that adds state: such a subclass must set it again.
    pure_detect: ClassVar[bool] = False

    def probe(self) -> Detector:
        """A detector whose `detect` judges windows that stay open (the engine's idle
        evaluation, CorrelationEngine.evaluate_open) with this one's findings, leaving this
        one as it was: state carried from window to window (a baseline, arrival memos and
        sums released as windows close) is updated once per window, when it closes.

        Default: a deep copy (safe whatever the state). Why detectors override it: a deep
        copy also copies memos, sketches and shared read-only tables (tens of MB after
        hours of traffic, and twice the detectors' memory for a moment); an override shares
        what `detect` does not change, or changes only as a cache keyed by value, and
        copies the rest."""
        if self.pure_detect and "pure_detect" in type(self).__dict__:
            return self
        return copy.deepcopy(self)


# --- vectorized grouping helpers -------------------------------------------------------------


def factorize_ip(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """16-byte address column -> (int64 codes, unique addresses), codes index the uniques.

    Codes follow the (upper, lower) native uint64 order of the addresses. A window holds
    far fewer distinct addresses than rows, so a compiled hash pass finds them
    (correlation/kernels.py) and only they are sorted; mostly distinct addresses are sorted
    whole instead: two uint64 keys (np.unique on V16 compares bytes generically, ~6x
    slower), or, when every address is IPv4-mapped, the IPv4 part packed with the row index
    into one uint64 (a plain sort is ~5x faster than argsort).
    """
    n = column.shape[0]
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, IP_DTYPE)
    halves = np.ascontiguousarray(column).view(np.uint64).reshape(n, 2)
    hi, lo = halves[:, 0], halves[:, 1]
    if n > 1024:  # (a few rows of evidence: the plain argsort below is cheaper)
        hashed = factorize_u128(hi, lo, limit=n // _HASH_MAX_DISTINCT_SHARE)
        if hashed is not None:
            ids, first = hashed
            order = np.lexsort((lo[first], hi[first]))
            return _ranks(order)[ids], column[first[order]]
    if hi.min() == hi.max():
        if n > 1024:
            low32 = lo & np.uint64(0xFFFFFFFF)
            if low32.min() == low32.max():  # same bytes 8..11 (IPv4-mapped): key = 12..15
                codes, first = _dense_sorted(lo >> np.uint64(32), 1 << 32, hashed=False)
                return codes, column[first]
        order = np.argsort(lo)
        lo_sorted = lo[order]
        new = np.empty(n, bool)
        new[0] = True
        np.not_equal(lo_sorted[1:], lo_sorted[:-1], out=new[1:])
    else:
        order = np.lexsort((lo, hi))
        hi_sorted, lo_sorted = hi[order], lo[order]
        new = np.empty(n, bool)
        new[0] = True
        new[1:] = (hi_sorted[1:] != hi_sorted[:-1]) | (lo_sorted[1:] != lo_sorted[:-1])
    codes = np.empty(n, np.int64)
    codes[order] = np.cumsum(new) - 1
    return codes, column[order[new]]


# Hashing pays while distinct keys are at most 1/8 of the rows; beyond, sorting every row
# is faster (measured on 5*10^5 rows), and the hash pass gives up early.
_HASH_MAX_DISTINCT_SHARE = 8


def _ranks(order: np.ndarray) -> np.ndarray:
    """Inverse permutation: ranks[order[j]] = j."""
    ranks = np.empty(order.shape[0], np.int64)
    ranks[order] = np.arange(order.shape[0], dtype=np.int64)
    return ranks


def ip_codes(cols: Columns, name: str, idx: np.ndarray) -> np.ndarray:
    """The codes of factorize_ip(cols[name][idx]), reusing address codes the columns carry.

    The engine's columns (engine._UserColumns) hand out order-preserving codes of the rows
    from address ids interned once on arrival (no sort at window close); densifying them
    gives exactly factorize_ip's codes (ranks in the same order).
    """
    shared = getattr(cols, "address_codes", None)
    codes = shared((name,), idx) if shared is not None else None
    if codes is None:
        return factorize_ip(cols[name][idx])[0]
    return _dense(codes)[0]


def ip_pair_codes(cols: Columns, idx: np.ndarray, first: str = "src_ip",
                  second: str = "dst_ip") -> tuple[np.ndarray, int]:
    """combine_codes(ip_codes(first), ip_codes(second)) of rows idx, and the pair count,
    from the engine's order-preserving pair codes when it has them (no address sort)."""
    shared = getattr(cols, "address_codes", None)
    codes = shared((first, second), idx) if shared is not None else None
    if codes is None:
        return combine_codes(ip_codes(cols, first, idx), ip_codes(cols, second, idx))
    # (client, server) pairs of flows are mostly distinct: sorting beats hashing, unless
    # there are few (a hop close of guessing or scan campaigns: millions of rows of a few
    # thousand pairs, where the sort of every row was most of a detect)
    few = _dense_few(codes) if codes.shape[0] > _FEW_MIN_ROWS else None
    return few if few is not None else _dense(codes, hashed=False)


# A hash attempt on mostly distinct values gives up after 1/_FEW_SHARE of the rows (~2% of a
# sort's cost wasted); few distinct values (<= 1/_FEW_SHARE) are ranked without a row sort.
_FEW_SHARE = 64
_FEW_MIN_ROWS = 1 << 16


def _dense_few(values: np.ndarray) -> tuple[np.ndarray, int] | None:
    """_dense of non-negative int64 values when at most 1/_FEW_SHARE of them are distinct
    (a hash pass, then a sort of the distinct values only); None otherwise."""
    found = factorize_u64(values.view(np.uint64), limit=values.shape[0] // _FEW_SHARE)
    if found is None:
        return None
    ids, first = found
    return _ranks(np.argsort(values[first]))[ids], int(first.shape[0])


def combine_codes(*codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense group ids for the tuple of non-negative integer code columns, and their count."""
    ids, n_groups = _dense(codes[0])
    for c in codes[1:]:
        radix = int(c.max()) + 1 if c.size else 1
        if ids.size > 1024 and radix < 2**62:  # one compiled pass packs the pair, finds its range
            pair, low, high = pair_values(ids, c if c.dtype == np.int64 else c.astype(np.int64),
                                          radix)
            ids, n_groups = _dense_range(pair, int(low), int(high), True)
        else:
            ids, n_groups = _dense(ids * radix + c.astype(np.int64))
    return ids, n_groups


def _dense(values: np.ndarray, hashed: bool = True) -> tuple[np.ndarray, int]:
    """Ranks of values among their distinct values (np.unique's inverse), and how many.
    `hashed=False` skips the hash pass (values known to be mostly distinct)."""
    if values.size == 0:
        return np.empty(0, np.int64), 0
    if values.size > 1024 and values.dtype == np.int64:
        low, high = min_max(values)  # one compiled pass instead of two reductions
        return _dense_range(values, int(low), int(high), hashed)
    low = values.min()
    span = int(values.max()) - int(low) + 1
    codes, first = _dense_sorted((values - low).astype(np.uint64), span, hashed)
    return codes, int(first.shape[0])


def _dense_range(values: np.ndarray, low: int, high: int, hashed: bool
                 ) -> tuple[np.ndarray, int]:
    """_dense of more than 1024 int64 values known to lie in [low, high]."""
    span = high - low + 1
    if span <= 4 * values.shape[0] + 256:  # _dense_sorted's presence-table case, compiled
        codes, first = dense_in_span(values, low, span)
        return codes, int(first.shape[0])
    codes, first = _dense_sorted((values - low).astype(np.uint64), span, hashed)
    return codes, int(first.shape[0])


def _dense_sorted(values: np.ndarray, span: int, hashed: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(rank of each value among the distinct values, a row holding each distinct value).

    values: uint64 in [0, span). A small span is ranked with a presence table (no sort);
    otherwise a compiled hash pass finds the distinct values and only those are sorted
    (unless `hashed` is false or most values are distinct); else value and row index are
    packed into one uint64 and sorted (np.sort's SIMD path, ~5x faster than argsort); very
    wide values fall back to argsort.
    """
    n = values.shape[0]
    if n <= 1024:  # evidence of one finding: fewest numpy calls win
        order = np.argsort(values)
        ordered = values[order]
    elif span <= 4 * n + 256:
        present = np.zeros(span, bool)
        present[values] = True
        rank = np.cumsum(present, dtype=np.int64) - 1
        codes = rank[values]
        first = np.empty(int(rank[-1]) + 1, np.int64)
        first[codes[::-1]] = np.arange(n - 1, -1, -1)  # any row of the value will do
        return codes, first
    else:
        found = factorize_u64(values, limit=n // _HASH_MAX_DISTINCT_SHARE) if hashed else None
        if found is not None:
            ids, first = found
            order = np.argsort(values[first])
            return _ranks(order)[ids], first[order]
        if (span - 1).bit_length() + max(1, (n - 1).bit_length()) <= 64:
            bits = max(1, (n - 1).bit_length())
            packed = np.sort((values << np.uint64(bits)) | np.arange(n, dtype=np.uint64))
            order = (packed & np.uint64((1 << bits) - 1)).astype(np.int64)
            ordered = packed >> np.uint64(bits)
        else:
            order = np.argsort(values)
            ordered = values[order]
    new = np.empty(n, bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    codes = np.empty(n, np.int64)
    codes[order] = np.cumsum(new) - 1
    return codes, order[new]


def unique_int(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array.

    np.unique without return_* flags takes a hash-table path in numpy 2.x that is ~30x
    slower than sorting for int64 columns of 10^5 rows (measured); sort + diff is not.
    Values spanning a small range (ports, dense codes) skip the sort: a presence table.
    """
    if (values.size > 1024 and values.dtype.kind in "iu" and values.dtype != np.uint64
            and values.ndim == 1):
        as_int64 = values.astype(np.int64, copy=False)
        low, high = min_max(as_int64)
        span = int(high) - int(low) + 1
        if span <= 16 * values.size + 4096:
            return distinct_in_span(as_int64, int(low), span).astype(values.dtype, copy=False)
    s = np.sort(values)
    if s.size == 0:
        return s
    keep = np.empty(s.size, bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def distinct_per_group(group: np.ndarray, n_groups: int, values: np.ndarray) -> np.ndarray:
    """Number of distinct `values` (non-negative ints) in each group 0..n_groups-1."""
    if group.size == 0:
        return np.zeros(n_groups, np.int64)
    radix = int(values.max()) + 1
    if (group.size > 1024 and n_groups > 0 and radix > 0
            and n_groups * radix <= 16 * group.size + 4096):
        # few possible pairs: a table of them beats hashing or sorting the rows
        counts = distinct_counts_in_span(group.astype(np.int64, copy=False),
                                         values.astype(np.int64, copy=False), n_groups, radix)
        if counts.size:
            return counts
    if (group.size > 1024 and n_groups > 0 and radix > 0
            and n_groups * radix <= 128 * group.size):
        # many distinct pairs of a bounded span (clients' ports per service): a bit per
        # pair (a table of 16 bytes per row at most, as the pairs and the sort below), no
        # hash pass that gives up and no sort of every row
        counts = distinct_counts_in_bits(group.astype(np.int64, copy=False),
                                         values.astype(np.int64, copy=False), n_groups, radix)
        if counts.size:
            return counts
    pairs = group * radix + values.astype(np.int64)
    if pairs.size > 1024:  # hash pass: the distinct pairs need no order, only counting
        found = factorize_u64(pairs, limit=pairs.size // (2 * _HASH_MAX_DISTINCT_SHARE))
        if found is not None:
            return np.bincount(pairs[found[1]] // radix, minlength=n_groups)
    return np.bincount(unique_int(pairs) // radix, minlength=n_groups)


@dataclass
class Groups:
    """Rows sorted by group id, for per-group reductions and slices of the hit groups."""

    order: np.ndarray  # row indices sorted by group
    bounds: np.ndarray  # group g's rows are order[bounds[g]:bounds[g + 1]]

    @classmethod
    def of(cls, group: np.ndarray, n_groups: int) -> Groups:
        order = np.argsort(group)  # members' order within a group does not matter
        counts = np.bincount(group, minlength=n_groups)
        bounds = np.zeros(n_groups + 1, np.int64)
        np.cumsum(counts, out=bounds[1:])
        return cls(order, bounds)

    @classmethod
    def counted(cls, group: np.ndarray, n_groups: int) -> Groups:
        """Groups.of in linear time (a counting sort), rows ascending within a group (of
        leaves their order unspecified): for detectors whose results do not depend on it."""
        order, bounds = group_order(np.ascontiguousarray(group, np.int64), int(n_groups))
        return cls(order, bounds)

    def rows(self, g: int) -> np.ndarray:
        return self.order[self.bounds[g]:self.bounds[g + 1]]


def sort_ips(column: np.ndarray) -> np.ndarray:
    """Addresses in numeric (128-bit big-endian) order: 10.0.0.2 before 10.0.0.10."""
    n = column.shape[0]
    halves = np.ascontiguousarray(column).view(">u8").reshape(n, 2)
    return column[np.lexsort((halves[:, 1], halves[:, 0]))]


def sorted_unique_ips(column: np.ndarray) -> np.ndarray:
    """Distinct addresses in numeric order (= sort_ips(factorize_ip(column)[1]))."""
    if column.shape[0] <= 32:  # one finding's evidence: a set of the 16-byte strings
        # (bytes order = numeric order) is ~3x cheaper than np.unique's generic V16 sort
        return np.array(sorted(set(column.tolist())), IP_DTYPE)
    if column.shape[0] <= 1024:  # few rows: np.unique's byte-wise (= numeric) sort is cheapest
        return np.unique(column)
    return sort_ips(factorize_ip(column)[1])


def ip_text(column: np.ndarray, row: int) -> str:
    """Text of one address of a 16-byte column: ip_column_to_str(column[row:row + 1])[0].

    Why: evidence names one scanner or victim per finding, and the column helper's fixed
    cost (~10 µs: array views, a loop) is most of a describe() in an alert burst.
    """
    b = column.item(row)  # the 16 bytes (a V16 item is bytes): no array view made
    if b[:12] == IPV4_MAPPED_PREFIX:
        return f"{b[12]}.{b[13]}.{b[14]}.{b[15]}"
    return ip_column_to_str(column[row:row + 1])[0]


def sorted_unique_text(values: np.ndarray) -> list[str]:
    """Sorted distinct non-empty strings of an object column (observer names, zones); a
    '|'-joined value (fusion's observer list folded into observer_name) counts each name."""
    return sorted({s for v in values.tolist() if v for s in str(v).split("|") if s})

