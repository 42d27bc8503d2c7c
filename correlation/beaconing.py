"""Beaconing (RITA-class): a host contacting the same peer or name at regular intervals.

Malware implants call home on a timer (sleep + jitter), with requests of nearly the same
size. Per (window, source, destination) from flows, and per (window, source, name) from DNS
queries, TLS SNI and HTTP Host, the detector scores how regular the contacts are, in the
spirit of RITA's beacon analysis (activecm/rita: Bowley skew and MADM of inter-connection
intervals and of data sizes, a connection-count score, and a histogram score), with its own
choices, all computed for every group at once over sorted numpy arrays. Flow contacts are
established connections only (`established_tcp`, UDP with a reply): refused or probed ports
are a scan's, and a fast scan's burst would otherwise look perfectly regular.

* timestamps are taken at one-second resolution and de-duplicated per group, so a burst
  of parallel connections (a browser opening six) counts as one contact;
* **ts_skew** = 1 - |Bowley skew| of the intervals ((Q1 + Q3 - 2 Q2) / (Q3 - Q1); 0 when
  Q3 = Q1 or the median equals a quartile, as RITA does): symmetric jitter keeps it near 1;
* **ts_madm** = 1 - MADM / median interval (median absolute deviation about the median,
  relative, so one score serves a 2 s and a 1 h beacon; RITA uses a fixed 30 s): uniform
  jitter of +-j of the interval scores about 1 - j/2, a Poisson process (browsing) ~0.3;
* **hist** = 1 - coefficient of variation of the contact counts in `histogram_bins` equal
  bins over the group's own active span: a steady caller fills the bins evenly, bursts do
  not; a gap (beacon paused) costs one or two bins, not the whole score;
* **count** = min(1, contacts / `ideal_connections`);
* for flows (and HTTP request bodies) the data-size scores **ds_skew** and **ds_madm**
  (Bowley skew and relative MADM of the bytes the source sent per connection).

Score = mean of ts_score (mean of ts_skew, ts_madm, count), hist, and ds_score (mean of
ds_skew, ds_madm) when sizes exist. The histogram is a third of the score because bursts
(a page load: many contacts one second apart, then silence) look perfectly regular to the
interval statistics; only the spread over time tells them from a timer. Groups with fewer
than `min_connections` contacts are not scored. Severity low, medium at `medium_score` and above.

Cost: nearly every key (pair, source and name) is a one-off, and every row comes back in
each of its windows' closes. So each selected row gets a 64-bit hash of its key once, in
`select` (correlation/arrival_memo.py hands it back at every close); a close keeps only
the rows whose hash bucket reaches `min_connections` (a superset of the rows of keys that
do), groups flow pairs by their hashes (checked against the exact pair codes; ranking the
addresses when two pairs share a hash), and scores only (window, key) groups with enough
rows. Findings and evidence do not depend on how groups are numbered. Flow pair hashes
are computed over a whole batch once and shared with strobe's select (`pair_hashes`); DNS
keys hash the name's str hash, and only a close's candidate rows get exact name ids. Other
columns are read at the rows used (`take_rows`: sizes of the candidates, one row for a
finding's key, a finding's own rows for its evidence), not gathered whole per close. A
scored group's contacts, interval statistics and histogram come from one compiled pass
over its sorted seconds (`_contact_kernel`); the score arithmetic after it is numpy's, so
every score is the same float as the whole-array implementation's (tests/test_beacon_stats.py).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np

from correlation.arrival_memo import ArrivalMemo, rows_in_range
from correlation.detector import (
    IANA_TCP,
    NS_PER_S,
    TCP_SYN,
    Columns,
    Detector,
    Evidence,
    Finding,
    InputSpec,
    Rule,
    WindowRange,
    combine_codes,
    ip_codes,
    ip_pair_codes,
)
from correlation.kernels import factorize_u64
from correlation.network_common import (
    GROUP_ADDRESSES,
    IANA_UDP,
    SEVERITY_LABELS,
    WindowGroups,
    batch_cached,
    one_ip,
    scaled_rule,
    seen_by,
    span,
)
from correlation.prefilter import pack_codes, raw_address_codes, reaching
from pipeline.jit import njit
from pipeline.schema import EventBatch
from pipeline.text_codes import TextIds

_C2 = ("TA0011", "Command and Control")


def take_rows(cols: Columns, name: str, rows: np.ndarray) -> np.ndarray:
    """cols[name][rows] without gathering the whole column first: the engine's column view
    reads only those rows of its buffer (`take`), a close reading a handful of rows of an
    hour's flows; a plain mapping of columns is indexed as is."""
    take = getattr(cols, "take", None)
    return cols[name][rows] if take is None else take(name, rows)


def count_in_range(cols: Columns, windows: WindowRange) -> int:
    """= rows_in_range(cols["timestamp"], windows).size; the engine's view counts at its
    buffer positions without gathering the column."""
    count = getattr(cols, "count_in_range", None)
    if count is None:
        return int(rows_in_range(cols["timestamp"], windows).size)
    return count(windows)


class RowColumns(dict):
    """The columns of a few buffered rows (cols[name][rows]), read on first access through
    take_rows: a finding's evidence reads its own rows, not whole buffered columns."""

    def __init__(self, cols: Columns, rows: np.ndarray) -> None:
        super().__init__()
        self._cols = cols
        self._rows = rows

    def __missing__(self, name: str) -> np.ndarray:
        column = take_rows(self._cols, name, self._rows)
        self[name] = column
        return column

    def __contains__(self, name: object) -> bool:
        return name in self._cols


def _rule(rid: str, name: str, what: str, tech: tuple[str, str]) -> Rule:
    return Rule(id=rid, name=name, category="Command and control",
                description=f"One source contacted {what} at regular intervals with regular "
                            "sizes within the window (RITA-style beacon score).",
                tactic_id=_C2[0], tactic_name=_C2[1], technique_id=tech[0],
                technique_name=tech[1], severity=21, severity_label="low", risk_score=21.0)


APP = ("T1071", "Application Layer Protocol")
ENCRYPTED = ("T1573", "Encrypted Channel")
FLOW_RULE = _rule("cirtsa.beacon.flow", "Beaconing connections", "one destination", APP)
FLOW_TLS_RULE = _rule("cirtsa.beacon.flow_encrypted", "Beaconing encrypted connections",
                      "one destination on a TLS port", ENCRYPTED)
DNS_RULE = _rule("cirtsa.beacon.dns", "Beaconing DNS name", "one DNS name",
                 ("T1071.004", "Application Layer Protocol: DNS"))
HTTP_RULE = _rule("cirtsa.beacon.http", "Beaconing HTTP host", "one HTTP host",
                  ("T1071.001", "Application Layer Protocol: Web Protocols"))
TLS_RULE = _rule("cirtsa.beacon.tls", "Beaconing TLS server name", "one TLS server name",
                 ENCRYPTED)

TLS_PORTS = np.array([443, 465, 563, 636, 853, 989, 990, 992, 993, 994, 995, 5061, 8443],
                     np.uint16)

_BASE = ("timestamp", "src_ip", "observer_name", "ingress_zone")
# only the columns a close reads (select reads its batch): the engine buffers each one
_FLOW_COLUMNS = _BASE + ("end", "dst_ip", "dst_port", "src_bytes")
_DNS_COLUMNS = _BASE + ("qname",)
_TLS_COLUMNS = _BASE + ("server_name", "dst_ip")
_HTTP_COLUMNS = _BASE + ("host", "dst_ip", "request_body_bytes")

# distinct names whose ids are kept (then the memo starts over; bounded like dns_tunnel's)
_NAME_MEMO_MAX = 200_000

# kind -> (name column or None for flows, size column or None)
_SOURCES = {"flow": (None, "src_bytes"), "dns": ("qname", None),
            "tls": ("server_name", None), "http": ("host", "request_body_bytes")}


# --- vectorized robust statistics over groups ------------------------------------------------


@njit
def _sorted_quantile(v: np.ndarray, q: float) -> float:
    """Linear-interpolated quantile of an ascending non-empty array (numpy's default)."""
    pos = q * (v.shape[0] - 1)
    lo = int(np.floor(pos))
    hi = int(np.ceil(pos))
    frac = pos - lo
    return v[lo] * (1 - frac) + v[hi] * frac


@njit
def _segment_bowley(seg: np.ndarray, dev: np.ndarray) -> tuple[float, float, float]:
    """(Bowley skew, MADM, median) of an ascending non-empty array; dev: scratch of the
    same length (sorted in place: no allocation per group)."""
    q1 = _sorted_quantile(seg, 0.25)
    q2 = _sorted_quantile(seg, 0.5)
    q3 = _sorted_quantile(seg, 0.75)
    den = q3 - q1
    skew = 0.0
    if den > 0 and q2 != q1 and q2 != q3:
        skew = (q1 + q3 - 2 * q2) / den
    for j in range(seg.shape[0]):
        dev[j] = abs(seg[j] - q2)
    dev.sort()
    return skew, _sorted_quantile(dev, 0.5), q2


@njit
def _group_starts(group: np.ndarray, n_groups: int) -> np.ndarray:
    """starts[g]:starts[g + 1] = group g's slice after a counting sort by group; raises
    on a group id outside [0, n_groups)."""
    counts = np.zeros(n_groups + 1, np.int64)
    for i in range(group.shape[0]):
        g = group[i]
        if g < 0 or g >= n_groups:
            raise ValueError("group id out of range")
        counts[g + 1] += 1
    return np.cumsum(counts)


@njit
def _by_group(group: np.ndarray, values: np.ndarray, starts: np.ndarray,
              out: np.ndarray) -> np.ndarray:
    """values placed in `out` by group (counting sort; arrival order within a group):
    group g's rows are out[starts[g]:starts[g + 1]]."""
    fill = starts[:-1].copy()
    for i in range(group.shape[0]):
        g = group[i]
        out[fill[g]] = values[i]
        fill[g] += 1
    return out


@njit
def _bowley_madm_kernel(group: np.ndarray, values: np.ndarray, n_groups: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: (Bowley skew, MADM, median); 0, 0, 0 for an empty group.

    Rows are bucketed by group (counting sort), then each group's slice is sorted on its
    own: small sorts instead of two whole-array lexsorts per statistic. Indices stay inside
    the arrays: group ids are in [0, n_groups) (checked), slices come from the counts.
    """
    n = group.shape[0]
    starts = _group_starts(group, n_groups)  # group g is starts[g]:starts[g + 1]
    v = _by_group(group, values, starts, np.empty(n, np.float64))
    skew = np.zeros(n_groups)
    madm = np.zeros(n_groups)
    median = np.zeros(n_groups)
    dev = np.empty(n, np.float64)
    for g in range(n_groups):
        a, b = starts[g], starts[g + 1]
        if b == a:
            continue
        seg = v[a:b]
        seg.sort()  # in place: v is this kernel's own copy
        sk, md, me = _segment_bowley(seg, dev[a:b])
        skew[g] = sk
        madm[g] = md
        median[g] = me
    return skew, madm, median


@njit
def _ascending(v: np.ndarray) -> bool:
    for i in range(1, v.shape[0]):
        if v[i] < v[i - 1]:
            return False
    return True


@njit
def _contact_kernel(group: np.ndarray, sec: np.ndarray, n_groups: int, bins: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per group, from its rows' seconds: (distinct seconds = contacts, Bowley skew, MADM
    and median of the intervals between consecutive distinct seconds, histogram of the
    distinct seconds in `bins` equal bins over the group's own span [first, last + 1)).

    One counting sort by group and a small sort per group, instead of a packed sort, a
    dedupe, a bincount and the interval kernel's own counting sort over the same rows.
    Indices stay inside the arrays: group ids are checked by _group_starts, slices come
    from the counts, a bin is clipped to [0, bins) (seconds >= the group's first)."""
    n = group.shape[0]
    starts = _group_starts(group, n_groups)
    v = _by_group(group, sec, starts, np.empty(n, np.int64))
    contacts = np.zeros(n_groups, np.int64)
    skew = np.zeros(n_groups)
    madm = np.zeros(n_groups)
    median = np.zeros(n_groups)
    hist = np.zeros((n_groups, bins), np.int64)
    intervals = np.empty(n, np.float64)
    dev = np.empty(n, np.float64)
    for g in range(n_groups):
        a, b = starts[g], starts[g + 1]
        if b == a:
            continue
        seg = v[a:b]
        if not _ascending(seg):  # rows mostly arrive in time order: often sorted already
            seg.sort()  # in place: v is this kernel's own copy
        m = 1  # distinct seconds, compacted to seg[:m]
        for j in range(1, b - a):
            if seg[j] != seg[m - 1]:
                seg[m] = seg[j]
                m += 1
        contacts[g] = m
        if m > 1:
            for j in range(m - 1):
                intervals[j] = np.float64(seg[j + 1] - seg[j])
            gaps = intervals[:m - 1]
            gaps.sort()
            sk, md, me = _segment_bowley(gaps, dev[:m - 1])
            skew[g] = sk
            madm[g] = md
            median[g] = me
        lo = seg[0]
        width = max((seg[m - 1] - lo + 1) / bins, 1e-9)
        for j in range(m):
            k = int((seg[j] - lo) / width)
            hist[g, min(k, bins - 1)] += 1
    return contacts, skew, madm, median, hist


def bowley_madm(group: np.ndarray, values: np.ndarray, n_groups: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: (Bowley skew, MADM, median) of values (0, 0, 0 for an empty group).

    Bowley skew = (Q1 + Q3 - 2 Q2) / (Q3 - Q1), 0 when Q3 = Q1 or the median equals a
    quartile; MADM = median of |value - Q2|; quartiles linearly interpolated (numpy's
    default method)."""
    return _bowley_madm_kernel(np.asarray(group, np.int64), np.asarray(values, np.float64),
                               int(n_groups))


def contact_stats(group: np.ndarray, n_groups: int, times_ns: np.ndarray, bins: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per group: (contacts, interval Bowley skew, MADM, median, histogram): _contact_kernel
    over the rows' seconds (one contact per second)."""
    return _contact_kernel(np.asarray(group, np.int64),
                           np.asarray(times_ns // NS_PER_S, np.int64), int(n_groups), int(bins))


def beacon_scores(group: np.ndarray, n_groups: int, times_ns: np.ndarray,
                  sizes: np.ndarray | None, bins: int, ideal: int) -> dict[str, np.ndarray]:
    """Per-group beacon score components (see module doc); `contacts` = distinct seconds."""
    return finish_scores(contact_stats(group, n_groups, times_ns, bins), group, n_groups,
                         sizes, ideal)


def finish_scores(stats: tuple[np.ndarray, ...], group: np.ndarray, n_groups: int,
                  sizes: np.ndarray | None, ideal: int) -> dict[str, np.ndarray]:
    """beacon_scores from the groups' contact_stats. Every output of a group depends on
    that group's own stats and sizes only (element-wise numpy, per-row reductions of the
    histogram's integer counts), so the stats of a subset of groups (stats[g][keep], with
    their rows' group ids renumbered) give those groups' scores to the bit."""
    contacts, skew, madm, median, hist = stats
    out = {"contacts": contacts, "median_interval_s": median,
           "ts_skew": 1 - np.abs(skew),
           "ts_madm": np.clip(1 - madm / np.maximum(median, 1.0), 0, 1),
           "count": np.minimum(1.0, contacts / float(ideal))}
    # histogram of contacts over each group's own active span: a steady caller fills the
    # bins evenly
    mean = hist.mean(axis=1)
    cv = np.divide(hist.std(axis=1), mean, out=np.full(n_groups, np.inf), where=mean > 0)
    out["hist"] = np.clip(1 - cv, 0, 1)
    out["ts_score"] = (out["ts_skew"] + out["ts_madm"] + out["count"]) / 3
    parts = [out["ts_score"], out["hist"]]
    if sizes is not None:
        ds_skew, ds_madm, ds_median = bowley_madm(group, sizes.astype(np.float64), n_groups)
        out["ds_skew"] = 1 - np.abs(ds_skew)
        out["ds_madm"] = np.clip(1 - ds_madm / np.maximum(ds_median, 1.0), 0, 1)
        out["ds_score"] = (out["ds_skew"] + out["ds_madm"]) / 2
        out["median_bytes"] = ds_median
        parts.append(out["ds_score"])
    out["score"] = np.mean(parts, axis=0)
    return out


# a bound computed in another order than numpy's differs from its score by a few ulps
_BOUND_SLACK = 1e-9


@njit
def _may_hit_kernel(contacts: np.ndarray, skew: np.ndarray, madm: np.ndarray,
                    median: np.ndarray, hist: np.ndarray, ideal: float, sized: bool,
                    min_contacts: int, floor: float) -> np.ndarray:
    """Groups with >= min_contacts contacts whose score, with the data-size score at its
    maximum of 1 when sized, is >= floor (the same formulas as finish_scores)."""
    n, bins = hist.shape
    out = np.zeros(n, np.bool_)
    for g in range(n):
        if contacts[g] < min_contacts:
            continue
        ts_madm = min(max(1 - madm[g] / max(median[g], 1.0), 0.0), 1.0)
        ts = (1 - abs(skew[g]) + ts_madm + min(1.0, contacts[g] / ideal)) / 3
        total = 0.0
        for b in range(bins):
            total += hist[g, b]
        mean = total / bins
        hist_score = 0.0
        if mean > 0:
            dev = 0.0
            for b in range(bins):
                dev += (hist[g, b] - mean) ** 2
            hist_score = min(max(1 - np.sqrt(dev / bins) / mean, 0.0), 1.0)
        bound = (ts + hist_score + 1) / 3 if sized else (ts + hist_score) / 2
        out[g] = bound >= floor
    return out


def may_hit(stats: tuple[np.ndarray, ...], ideal: int, sized: bool, min_contacts: int,
            min_score: float) -> np.ndarray:
    """The groups (ascending ids) that can be hits: enough contacts, and a score bound
    (data-size score taken as 1) >= min_score less a slack far above the bound's rounding
    difference from numpy. Every hit is among them; the others need no data-size
    statistics and no score arithmetic."""
    contacts, skew, madm, median, hist = stats
    return np.flatnonzero(_may_hit_kernel(contacts, skew, madm, median, hist, float(ideal),
                                          bool(sized), int(min_contacts),
                                          float(min_score) - _BOUND_SLACK))


@njit
def _mix(x: np.uint64) -> np.uint64:
    """splitmix64's finalizer: a bijection of 64-bit words in which every output bit
    depends on every input bit (IPv4-mapped halves vary in their top 32 bits only)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit
def _key_hashes(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row of (first[i, 0], first[i, 1], second[i, 0], second[i, 1]):
    the native uint64 halves of a source address and of a destination address (or a
    name's hash twice), chained through _mix. Equal keys hash equal; different keys
    collide about as rarely as random 64-bit values, and a collision only costs a few
    extra rows past the count filter (`candidate_rows`) or the exact fallback of
    `hashed_pair_codes`."""
    n = first.shape[0]
    out = np.empty(n, np.uint64)
    for i in range(n):
        h = _mix(first[i, 0] ^ np.uint64(0x9E3779B97F4A7C15))
        h = _mix(h ^ first[i, 1])
        h = _mix(h ^ second[i, 0])
        out[i] = _mix(h ^ second[i, 1])
    return out


def _address_halves(column: np.ndarray) -> np.ndarray:
    """(n, 2) native uint64 view of a 16-byte address column."""
    n = column.shape[0]
    return np.ascontiguousarray(column).view(np.uint64).reshape(n, 2)


def key_hashes(kind: str, c: Columns, rows: np.ndarray,
               name_ids: np.ndarray | None = None) -> np.ndarray:
    """The beacon key hash of `rows` of a batch: (source, destination) for flows, (source,
    name) for the name kinds: the name's id when `name_ids` (aligned with rows) are given,
    else Python's cached str hash of the name."""
    name_col = _SOURCES[kind][0]
    if name_col is None:
        return pair_hashes(c)[rows]
    src = _address_halves(c["src_ip"][rows])
    if name_ids is None:
        names = c[name_col][rows].tolist()
        name_ids = np.fromiter(map(hash, names), np.int64, len(names))
    named = np.ascontiguousarray(name_ids, np.int64).view(np.uint64)
    return _key_hashes(src, np.repeat(named, 2).reshape(-1, 2))


def pair_hashes(c: Columns) -> np.ndarray:
    """The (src_ip, dst_ip) key hash of every row of a batch's columns. Over every row
    (no gather) and, while the engine selects a batch, computed once for beaconing's and
    strobe's selects (batch_cached)."""
    return batch_cached(("beacon.pair_hash",), c["src_ip"],
                        lambda: _key_hashes(_address_halves(c["src_ip"]),
                                            _address_halves(c["dst_ip"])))


@njit
def _bucket_counts(hashes: np.ndarray, bits: int) -> np.ndarray:
    """Rows per bucket (the top `bits` bits of the hash), saturating at 255."""
    shift = np.uint64(64 - bits)
    counts = np.zeros(1 << bits, np.uint8)
    for i in range(hashes.shape[0]):
        b = hashes[i] >> shift
        if counts[b] != 255:
            counts[b] += 1
    return counts


@njit
def _bucket_counts_reach(hashes: np.ndarray, bits: int, threshold: int) -> np.ndarray:
    """Boolean per row: rows in its bucket (the top `bits` bits of its hash) >= threshold.
    Bucket indices are < 2**bits by the shift (bits in 1..32). Counts saturate at 255
    (one byte a bucket: a table 4x smaller than uint32 counts stays in cache); the
    caller passes threshold <= 255, so a saturated bucket reaches it."""
    n = hashes.shape[0]
    shift = np.uint64(64 - bits)
    counts = _bucket_counts(hashes, bits)
    out = np.empty(n, np.bool_)
    for i in range(n):
        out[i] = counts[hashes[i] >> shift] >= threshold
    return out


def candidate_rows(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Boolean per row: its key hash bucket holds >= threshold rows. Every row of a key
    with >= threshold rows passes (its rows share a bucket); a colliding row may pass too.
    Two compiled passes over the top bits of the hash: no sort, no hash table."""
    n = hashes.shape[0]
    if n == 0:
        return np.zeros(0, bool)
    if threshold <= 1:
        return np.ones(n, bool)
    if threshold > 255:  # beyond the byte counts: exact counts per key (a hash pass)
        return reaching(np.ascontiguousarray(hashes, np.uint64).view(np.int64), threshold)
    bits = min(max(n.bit_length(), 8), 24)  # about one row per bucket
    return _bucket_counts_reach(np.ascontiguousarray(hashes, np.uint64), bits, int(threshold))


@njit
def _bucket_candidates(hashes: np.ndarray, idx: np.ndarray, bits: int, threshold: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(idx, hashes) at the rows whose bucket reaches threshold: _bucket_counts_reach's
    two passes, the second writing the kept rows' indices and hashes (no mask, no two
    selections over the range). Same bounds as there; idx and hashes have equal lengths
    (the caller's check)."""
    n = hashes.shape[0]
    shift = np.uint64(64 - bits)
    counts = _bucket_counts(hashes, bits)
    out_idx = np.empty(n, np.int64)
    out_hash = np.empty(n, np.uint64)
    m = 0
    for i in range(n):
        if counts[hashes[i] >> shift] >= threshold:
            out_idx[m] = idx[i]
            out_hash[m] = hashes[i]
            m += 1
    return out_idx[:m], out_hash[:m]


def candidates(idx: np.ndarray, hashes: np.ndarray, threshold: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(idx[passed], hashes[passed]) for passed = candidate_rows(hashes, threshold)."""
    n = hashes.shape[0]
    if n != idx.shape[0]:
        raise ValueError("idx and hashes differ in length")
    if n == 0 or threshold <= 1 or threshold > 255:
        passed = candidate_rows(hashes, threshold)
        return idx[passed], hashes[passed]
    bits = min(max(n.bit_length(), 8), 24)  # as candidate_rows
    return _bucket_candidates(np.ascontiguousarray(hashes, np.uint64),
                              np.ascontiguousarray(idx, np.int64), bits, int(threshold))


def hashed_pair_codes(cols: Columns, idx: np.ndarray, hashes: np.ndarray
                      ) -> tuple[np.ndarray, int] | None:
    """Group ids of rows idx by (src_ip, dst_ip) from their key hashes (first appearance,
    one hash pass over mostly repeated keys), or None when two different pairs share a
    hash (then the caller ranks the addresses). Checked exactly: every row's addresses
    equal those of the first row of its id."""
    found = factorize_u64(hashes)
    if found is None:
        return None
    ids, first = found
    # the engine's pair codes (equal iff the pair is) read only rows idx; plain columns
    # are compared address by address
    pairs = raw_address_codes(cols, ("src_ip", "dst_ip"), idx)
    for exact in ([pairs] if pairs is not None
                  else [_address_halves(cols[name][idx]) for name in ("src_ip", "dst_ip")]):
        if not np.array_equal(exact, exact[first][ids]):
            return None
    return ids, int(first.shape[0])


def established_tcp(c: Columns) -> np.ndarray:
    """TCP flows that were really connections, not probes.

    A reply packet is not enough: a port refusing with RST|ACK (Zeek REJ, RSTOS0, RSTRH) or
    a stealth probe answered by RST would count, and a fast vertical scan of one host then
    looks like a perfectly regular series of contacts. Established = the responder sent a
    SYN-ACK, or (a flow picked up mid-connection, Zeek OTH) the responder sent payload;
    and something beyond a handshake torn down by RST happened (a SYN scan of an open port:
    port_scan.failed_attempt_mask's half-open case) - some payload either way.
    """
    df = c["dst_tcp_flags"]
    payload = (c["src_payload_bytes"] > 0) | (c["dst_payload_bytes"] > 0)
    return ((c["transport"] == IANA_TCP) & (c["dst_packets"] > 0) & payload
            & (((df & TCP_SYN) != 0) | (c["dst_payload_bytes"] > 0)))


def _only_groups(wg: WindowGroups, keep: np.ndarray) -> WindowGroups:
    """The copies of groups `keep` (ascending), renumbered 0..len(keep)-1 in that order;
    copies stay in their order (a group's first copy stays first)."""
    wanted = np.zeros(wg.n_groups, bool)
    wanted[keep] = True
    kept = wanted[wg.group]
    renumber = np.cumsum(wanted) - 1
    return WindowGroups(wg.idx[kept], wg.k[kept], renumber[wg.group[kept]], int(keep.size))


def _source_name_codes(cols: Columns, idx: np.ndarray, name_ids: np.ndarray
                       ) -> tuple[np.ndarray, int] | None:
    """Group ids of rows idx by (src_ip, name id) (first appearance), or None when the
    columns carry no address codes. Only for DNS: its evidence reads nothing that differs
    between the rows of a group, so group numbering and member order change nothing
    (TLS/HTTP evidence shows one member's dst_ip: those keep the ranked path)."""
    src = raw_address_codes(cols, ("src_ip",), idx)
    packed = None if src is None else pack_codes(src, name_ids)
    if packed is None:
        return None
    ids, first = factorize_u64(packed)
    return ids, int(first.shape[0])


def _key_texts(cols: Columns, rows: np.ndarray, name_col: str | None) -> list[str]:
    """A finding's key, "source|destination" (flows) or "source|name", of each of rows."""
    src = take_rows(cols, "src_ip", rows)
    other = take_rows(cols, "dst_ip" if name_col is None else name_col, rows)
    return [f"{one_ip(src, i)}|{one_ip(other, i) if name_col is None else str(other[i])}"
            for i in range(rows.shape[0])]


def _flow_rules(cols: Columns, rows: np.ndarray) -> list[Rule]:
    """The flow rule of a group whose first row is each of rows: TLS ports are encrypted."""
    ports = take_rows(cols, "dst_port", rows)
    return [FLOW_TLS_RULE if port in TLS_PORTS else FLOW_RULE for port in ports]


def key_window_groups(windows: WindowRange, times: np.ndarray, idx: np.ndarray,
                      key: np.ndarray, n_keys: int) -> WindowGroups:
    """= WindowGroups.of(windows, times, idx, key) for key codes in [0, n_keys): the same
    copies in the same order, and the same group ids, the dense ranks of (window, key)
    that combine_codes gives, here read off a presence table of the (window, key) cells
    (a cumsum) instead of two ranking passes; WindowGroups.of when the table would be
    large next to the copies."""
    copy_rows, k = windows.assign(times[idx])
    n_windows = int(windows.last) - int(windows.first) + 1
    cells = n_windows * int(n_keys)
    if copy_rows.size == 0 or cells > max(4 * copy_rows.size, 1 << 16):
        return WindowGroups.of(windows, times, idx, key)
    cell = (k - int(windows.first)) * int(n_keys) + key[copy_rows]
    present = np.zeros(cells, bool)
    present[cell] = True
    rank = np.cumsum(present) - 1
    return WindowGroups(idx[copy_rows], k, rank[cell], int(rank[-1]) + 1)


def _enough_copies(wg: WindowGroups, minimum: int) -> WindowGroups:
    """The (window, key) groups of >= `minimum` rows, renumbered densely in their order:
    a group with fewer rows has fewer contacts and cannot be a hit, and every score of a
    group depends on its own rows only, so the scored groups are unchanged."""
    if wg.n_groups == 0:
        return wg
    size = np.bincount(wg.group, minlength=wg.n_groups)
    big = size >= minimum
    if big.all():
        return wg
    renumber = np.cumsum(big) - 1
    kept = big[wg.group]
    return WindowGroups(wg.idx[kept], wg.k[kept], renumber[wg.group[kept]],
                        int(np.count_nonzero(big)))


class BeaconDetector(Detector):
    """Regular contacts per (source, destination) and per (source, name): score >= min_score."""

    name = "beaconing"
    rules = (FLOW_RULE, FLOW_TLS_RULE, DNS_RULE, HTTP_RULE, TLS_RULE)
    inputs = (InputSpec("flow", _FLOW_COLUMNS), InputSpec("dns", _DNS_COLUMNS),
              InputSpec("tls", _TLS_COLUMNS), InputSpec("http", _HTTP_COLUMNS))
    threshold_keys = ("min_connections", "min_score", "medium_score", "histogram_bins",
                      "ideal_connections")

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.min_connections = int(config["min_connections"])
        self.min_score = float(config["min_score"])
        self.medium_score = float(config["medium_score"])
        self.bins = int(config["histogram_bins"])
        self.ideal = int(config["ideal_connections"])
        # name -> id memo: every row is replayed in each of its hop copies' closes, so a
        # name's text is hashed and compared once, not once per close
        self._name_ids = TextIds(_NAME_MEMO_MAX)
        kinds = config.get("kinds", list(_SOURCES))
        self.inputs = tuple(s for s in BeaconDetector.inputs if s.kind in kinds)
        # per kind: each selected row's key hash, computed once on arrival (select), read
        # back at every close of the row's windows (correlation/arrival_memo.py). DNS keys
        # hash the name's str hash, not its memo id: a memo lookup per query costs ~2x
        # the (cached) str hash, and only a close's candidate rows need exact name ids.
        self._key_memo = {spec.kind: ArrivalMemo({"key": np.uint64}, self.max_buffered_rows)
                          for spec in self.inputs}

    def select(self, batch: EventBatch) -> np.ndarray:
        mask = self._select(batch)
        memo = self._key_memo.get(batch.kind)
        if memo is not None:
            rows = np.flatnonzero(mask)
            c = batch.columns
            memo.add(c["timestamp"][rows], key=key_hashes(batch.kind, c, rows))
        return mask

    def probe(self) -> BeaconDetector:
        """Detector.probe: the key memos frozen (a close releases their rows of closed
        windows); the name-id memo shared (ids are compared within one detect call only:
        a new name or a start-over changes no later result)."""
        other = copy.copy(self)
        other._key_memo = {kind: memo.frozen() for kind, memo in self._key_memo.items()}
        return other

    def _select(self, batch: EventBatch) -> np.ndarray:
        c = batch.columns
        if batch.kind == "flow":
            # a beacon gets its answer: established TCP, UDP with a reply (scans are elsewhere)
            return ((established_tcp(c) | ((c["transport"] == IANA_UDP) & (c["dst_packets"] > 0)))
                    & ~GROUP_ADDRESSES.contains(c["dst_ip"]))
        if batch.kind == "dns":
            return ~c["is_response"] & (c["qname"] != "")
        name_col = _SOURCES[batch.kind][0]
        return c[name_col] != ""

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        findings: list[Finding] = []
        for kind, cols in rows.items():
            findings += self._detect_kind(kind, cols, windows)
        return findings

    def _detect_kind(self, kind: str, cols: Columns, windows: WindowRange) -> list[Finding]:
        t = cols["timestamp"]
        idx = rows_in_range(t, windows)
        # Keys (pairs, (source, name)) are nearly all one-offs: only rows of keys that can
        # reach min_connections over the range are keyed exactly below. From the key
        # hashes of arrival when the memo vouches for them, else from the columns. (Asked
        # on every close, so that it also releases the rows of closed windows.)
        memo = self._key_memo.get(kind)
        # (views: the keys are read before this detector's next select or close)
        known = memo.aligned(windows, t, idx, copy=False) if memo is not None else None
        if idx.size < self.min_connections:
            return []
        name_col, size_col = _SOURCES[kind]
        hashed = None
        if known is not None:
            idx, keys = candidates(idx, known["key"], self.min_connections)
            if name_col is None and idx.size:
                hashed = hashed_pair_codes(cols, idx, keys)
            elif kind == "dns" and idx.size:  # (source, name id): exact, candidates' names
                names = self._name_ids.ids(take_rows(cols, name_col, idx))[0]
                hashed = _source_name_codes(cols, idx, names)
        elif name_col is not None:
            idx = self._reaching_names(cols, idx, name_col)
        if idx.size == 0:
            return []
        if hashed is not None:  # (group ids need no order: findings and evidence do not
            key, n_keys = hashed  # depend on how groups are numbered)
        elif name_col is None:
            key, n_keys = ip_pair_codes(cols, idx)
        else:
            src = ip_codes(cols, "src_ip", idx)
            key, n_keys = combine_codes(src, self._name_ids.sorted_codes(cols[name_col][idx])[0])
        # necessary: enough rows over the whole range
        keep = np.bincount(key, minlength=n_keys)[key] >= self.min_connections
        idx, key = idx[keep], key[keep]
        if idx.size == 0:
            return []
        wg = _enough_copies(key_window_groups(windows, t, idx, key, n_keys),
                            self.min_connections)
        if wg.n_groups == 0:
            return []
        # Contacts and interval statistics of every group, then the rest of the score
        # (sizes' statistics, numpy arithmetic) only for the few groups whose bound can
        # reach min_score: nearly every close has none.
        stats = contact_stats(wg.group, wg.n_groups, t[wg.idx], self.bins)
        keep = may_hit(stats, self.ideal, size_col is not None, self.min_connections,
                       self.min_score)
        if keep.size == 0:
            return []
        sub = _only_groups(wg, keep)
        sizes = None
        if size_col is not None:
            sizes = np.maximum(take_rows(cols, size_col, sub.idx).astype(np.float64), 0)
        scores = finish_scores(tuple(s[keep] for s in stats), sub.group, sub.n_groups, sizes,
                               self.ideal)
        sub_hits = np.flatnonzero((scores["contacts"] >= self.min_connections)
                                  & (scores["score"] >= self.min_score))
        if sub_hits.size == 0:
            return []
        hits = keep[sub_hits]
        if name_col is None or kind == "dns":
            # Only the hit groups' copies go on (findings sort copies by group): their
            # evidence reads nothing that differs between a group's rows. (TLS/HTTP
            # evidence shows one member's dst_ip: those keep every copy.)
            wg, scored, hits = _only_groups(wg, hits), sub_hits, np.arange(hits.size)
        else:
            scored = np.zeros(wg.n_groups, np.int64)  # scored[g]: g's row in `scores`
            scored[keep] = np.arange(keep.size)

        # the first copy's row of each hit group (what findings keys and the flow rule
        # read), its columns read once for all hits instead of per hit
        first_rows = wg.idx[np.unique(wg.group, return_index=True)[1][hits]]
        texts = dict(zip(first_rows.tolist(), _key_texts(cols, first_rows, name_col),
                         strict=True))
        rules = (dict(zip(hits.tolist(), _flow_rules(cols, first_rows), strict=True))
                 if kind == "flow" else {})

        def rule_of(g: int) -> Rule:
            base = rules[g] if g in rules else self._rule(kind, cols, wg, g)
            if scores["score"][scored[g]] >= self.medium_score:
                return scaled_rule(base, 47, SEVERITY_LABELS[47])
            return base

        def key_text(row: int) -> str:
            return texts[row] if row in texts else _key_texts(cols, np.array([row]), name_col)[0]

        return wg.findings(hits, windows, rule_of, key_text,
                           lambda r, g: self._describe(kind, cols, r, scores, int(scored[g])))

    def _reaching_names(self, cols: Columns, idx: np.ndarray, name_col: str) -> np.ndarray:
        """Rows idx whose (source, name) has >= min_connections rows: the rows the ranked
        keep below retains, found by a hash pass over unordered codes (text ids from the
        memo), so only those few rows get sorted-name codes. (Flow pairs are ranked
        directly: the engine's pair codes need no text, and sorting them measured faster
        than hashing mostly distinct pairs first.)"""
        src = raw_address_codes(cols, ("src_ip",), idx)
        raw = None if src is None else pack_codes(src, self._name_ids.ids(cols[name_col][idx])[0])
        return idx if raw is None else idx[reaching(raw, self.min_connections)]

    def _rule(self, kind: str, cols: Columns, wg: WindowGroups, g: int) -> Rule:
        if kind == "flow":
            return _flow_rules(cols, wg.idx[[np.argmax(wg.group == g)]])[0]
        return {"dns": DNS_RULE, "http": HTTP_RULE, "tls": TLS_RULE}[kind]

    def _describe(self, kind: str, cols: Columns, rows: np.ndarray, scores: dict, g: int
                  ) -> Evidence:
        cols, r = RowColumns(cols, rows), np.arange(rows.size)  # only this group's rows
        first, last = span(cols, r)
        src = one_ip(cols["src_ip"], r[0])
        details = {k: round(float(v[g]), 3) for k, v in scores.items()
                   if k not in ("contacts",)}
        details["contacts"] = int(scores["contacts"][g])
        details["connections"] = int(r.size)
        name_col = _SOURCES[kind][0]
        dst_ip = port = None
        if name_col is None:
            dst_ip = one_ip(cols["dst_ip"], r[0])
            ports = np.unique(cols["dst_port"][r])
            port = int(ports[0]) if ports.size == 1 else None
            details["ports"] = ports[:20].tolist()
            what = dst_ip + (f":{port}" if port is not None else "")
        else:
            what = str(cols[name_col][r[0]])
            details["name"] = what
            if "dst_ip" in cols:
                dst_ip = one_ip(cols["dst_ip"], r[0])
        related = sorted({src} | ({dst_ip} if dst_ip else set()))
        return Evidence(
            first_seen=first, last_seen=last, source_ip=src, destination_ip=dst_ip,
            destination_port=port, related_ips=related, details=details, **seen_by(cols, r),
            message=f"{src} beacons to {what}: {details['contacts']} contacts every "
                    f"~{details['median_interval_s']:.0f} s, score {details['score']:.2f}",
        )
