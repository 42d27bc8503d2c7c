"""Exfiltration: outbound volume of internal hosts, large uploads, ICMP payload tunnels.

"Internal" is configuration (`internal_networks`, CIDR list; default RFC 1918, CGNAT,
ULA and link-local). Outbound = a flow whose originator is internal and whose responder is
not (`destinations: any` counts every destination, for labs on one segment or loopback).

* **Volume vs own baseline** (`exfil_volume`, tumbling windows): per internal host, bytes
  it sent outbound in the window against an exponentially weighted moving average of its
  previous windows (windows without traffic count as zero). Alerts when the host sent at
  least `min_out_bytes`, at least `baseline_factor` times its baseline, and at least
  `min_out_in_ratio` times what it received (uploads, not symmetric sessions), once it
  has `min_history_windows` of history. State: one (ewma, first window, last window) per
  host, at most `max_hosts` hosts (least recently active evicted first, counted).
* **Large upload** (`exfil_upload`): per (internal source, destination) pair, payload bytes
  sent in the window >= `min_upload_bytes` with out/in ratio >= `min_out_in_ratio`.
* **ICMP tunnel** (`exfil_icmp`): per (source, destination), ICMP echo payload (both
  directions) >= `min_payload_bytes` in the window at a mean payload per packet above
  `max_normal_payload_bytes` (ping sends 56 bytes on Linux/macOS, 32 on Windows).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import lru_cache, partial

import numpy as np

from correlation.arrival_memo import rows_in_range
from correlation.detector import (
    NS_PER_S,
    Columns,
    Detector,
    Evidence,
    Finding,
    InputSpec,
    Rule,
    WindowRange,
    combine_codes,
    factorize_ip,
    ip_pair_codes,
    take,
)
from correlation.exfil_sketch import SliceSums, hot_rows
from correlation.network_common import (
    Networks,
    WindowGroups,
    echo_flows,
    one_ip,
    sample_ips,
    seen_by,
    span,
)
from correlation.prefilter import pair_candidates
from pipeline.jit import njit
from pipeline.schema import EventBatch

_EXFIL = ("TA0010", "Exfiltration")
_T1048 = ("T1048", "Exfiltration Over Alternative Protocol")


def _rule(rid: str, name: str, description: str, tech=_T1048) -> Rule:
    return Rule(id=rid, name=name, description=description, category="Exfiltration",
                tactic_id=_EXFIL[0], tactic_name=_EXFIL[1], technique_id=tech[0],
                technique_name=tech[1], severity=47, severity_label="medium",
                risk_score=47.0)


VOLUME_RULE = _rule("cirtsa.exfil.volume", "Outbound volume far above the host's baseline",
                    "An internal host sent far more data out than it usually does, and much "
                    "more than it received, within the window.")
UPLOAD_RULE = _rule("cirtsa.exfil.upload", "Large upload",
                    "An internal host uploaded a large amount of data to one destination "
                    "within the window.")
ICMP_RULE = _rule("cirtsa.exfil.icmp_tunnel", "ICMP tunnel / payload exfiltration",
                  "ICMP echo messages between two hosts carried far more payload than ping "
                  "does within the window.",
                  ("T1048.003", "Exfiltration Over Alternative Protocol: Exfiltration Over "
                                "Unencrypted Non-C2 Protocol"))

DEFAULT_INTERNAL = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                    "169.254.0.0/16", "fc00::/7", "fe80::/10")

# Each detector buffers only the columns its detect and evidence read (select reads the
# batch): every declared column is copied on arrival and moved by every compaction.
_EVIDENCE_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "observer_name", "ingress_zone")
_UPLOAD_COLUMNS = _EVIDENCE_COLUMNS + ("dst_port", "src_payload_bytes", "dst_payload_bytes")
_VOLUME_COLUMNS = _EVIDENCE_COLUMNS + ("src_bytes", "dst_bytes")
_ICMP_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "src_packets", "dst_packets",
                 "src_payload_bytes", "dst_payload_bytes", "observer_name", "ingress_zone")


class _OutboundDetector(Detector):
    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.internal_key = tuple(str(n) for n in config.get("internal_networks",
                                                            DEFAULT_INTERNAL))
        # one object per network list: Networks.contains is remembered per batch and
        # object, so upload's and volume's selects test each address column once
        self.internal = _networks(self.internal_key)
        self.any_destination = str(config.get("destinations", "external")) == "any"
        self.min_ratio = float(config["min_out_in_ratio"])
        self.max_sample = int(config.get("evidence_sample", 20))

    def select(self, batch: EventBatch) -> np.ndarray:
        c = batch.columns
        outbound = self.internal.contains(c["src_ip"])
        if not self.any_destination:
            outbound &= ~self.internal.contains(c["dst_ip"])
        return outbound & (c["src_payload_bytes"] > 0)


class UploadDetector(_OutboundDetector):
    """Payload sent per (internal source, destination) >= min_upload_bytes, ratio-gated."""

    name = "exfil_upload"
    rules = (UPLOAD_RULE,)
    inputs = (InputSpec("flow", _UPLOAD_COLUMNS),)
    threshold_keys = ("min_upload_bytes", "min_out_in_ratio")

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.min_bytes = float(config["min_upload_bytes"])
        # payload bytes per (hop slice, source bucket), added on arrival (exfil_sketch)
        self.arrivals = SliceSums(self.window.hop_ns)
        self.use_arrivals = True  # False: every close takes the exact path (tests)
        self.stats = {"closes_ruled_out_on_arrival_sums": 0}

    def select(self, batch: EventBatch) -> np.ndarray:
        keep = super().select(batch)
        if self.use_arrivals:
            c = batch.columns
            self.arrivals.add_rows(keep, c["timestamp"], _address_words(c["src_ip"]),
                                   c["src_payload_bytes"])
        return keep

    def probe(self) -> UploadDetector:
        """Detector.probe: the arrival sums' slice dicts copied (a close releases its
        slices), their arrays shared; the stats its own (as a deep copy's)."""
        other = copy.copy(self)
        other.arrivals = self.arrivals.probe()
        other.stats = dict(self.stats)
        return other

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows["flow"]
        hot = self._hot_buckets(cols, windows)
        if hot is not None and hot.size == 0:  # no source reaches the threshold: no rows read
            self.stats["closes_ruled_out_on_arrival_sums"] += 1
            return []
        t = cols["timestamp"]
        if hot is None:
            # most closes end here: all the range's uploads together are below the
            # threshold (one compiled pass over the held rows, no index array)
            start = int(windows.spec.start(windows.first))
            end = int(windows.spec.end(windows.last))
            out = cols["src_payload_bytes"]
            if _sum_in_range(np.ascontiguousarray(t, np.int64), out, start, end) < self.min_bytes:
                return []
        idx = rows_in_range(t, windows)
        if hot is not None and idx.size:
            # every row of every source that can reach the threshold (all of a source's
            # rows are in its bucket): the grouping below keeps the same pairs
            hot_table = np.zeros(1 << self.arrivals.bits, bool)
            hot_table[hot] = True
            idx = idx[hot_rows(_address_words(take(cols, "src_ip", idx)), self.arrivals.bits,
                               hot_table)]
        if idx.size == 0:
            return []
        # (byte columns are read at the rows still in play only: take, not whole columns)
        # only sources and destinations that got that many bytes at all can hold a pair
        # that did: rank just their rows (the keep below then gives the same rows)
        idx = pair_candidates(cols, idx, self.min_bytes,
                              weights=_floats_at(cols, "src_payload_bytes", idx))
        if idx.size == 0:
            return []
        pair, n_pairs = ip_pair_codes(cols, idx)
        keep = np.bincount(pair, weights=_floats_at(cols, "src_payload_bytes", idx),
                           minlength=n_pairs)[pair] >= self.min_bytes
        idx, pair = idx[keep], pair[keep]
        if idx.size == 0:
            return []
        wg = WindowGroups.of(windows, t, idx, pair)
        # (= wg.sum of the columns)
        sent = np.bincount(wg.group, weights=_floats_at(cols, "src_payload_bytes", wg.idx),
                           minlength=wg.n_groups)
        received = np.bincount(wg.group, weights=_floats_at(cols, "dst_payload_bytes", wg.idx),
                               minlength=wg.n_groups)
        hits = np.flatnonzero((sent >= self.min_bytes)
                              & (sent >= self.min_ratio * received))
        return wg.findings(hits, windows, lambda g: self.rules[0],
                           lambda row: f"{_ip_at(cols, 'src_ip', row)}|"
                                       f"{_ip_at(cols, 'dst_ip', row)}",
                           lambda r, g: self._describe(cols, r))

    def _hot_buckets(self, cols: Columns, windows: WindowRange) -> np.ndarray | None:
        """Source buckets that reach min_bytes in some closing window by the arrival sums,
        or None when the sums cannot vouch for the held rows (then: exact path). Forgets
        the slices of this range either way."""
        if not self.use_arrivals:
            return None
        count = getattr(cols, "count_in_range", None)  # the engine's columns have it
        held = count(windows) if count is not None else None
        hot = (self.arrivals.hot_buckets(windows, self.min_bytes)
               if self.arrivals.covers(windows, held) else None)
        self.arrivals.release(windows)
        return hot

    def _describe(self, cols: Columns, r: np.ndarray) -> Evidence:
        cols, r = _finding_rows(cols, r, _UPLOAD_COLUMNS)
        first, last = span(cols, r)
        src, dst = one_ip(cols["src_ip"], 0), one_ip(cols["dst_ip"], 0)
        sent = int(cols["src_payload_bytes"].sum())
        received = int(cols["dst_payload_bytes"].sum())
        ports = np.unique(cols["dst_port"])
        return Evidence(
            first_seen=first, last_seen=last, source_ip=src, destination_ip=dst,
            destination_port=int(ports[0]) if ports.size == 1 else None,
            related_ips=sorted({src, dst}), **seen_by(cols, r),
            details={"bytes_out": sent, "bytes_in": received, "flows": int(r.size),
                     "out_in_ratio": round(sent / max(received, 1), 2),
                     "ports": ports[:20].tolist()},
            message=f"{src} uploaded {sent:,} bytes to {dst} "
                    f"in {(last - first) / NS_PER_S:.0f} s",
        )


class VolumeBaselineDetector(_OutboundDetector):
    """Per internal host: outbound bytes per window vs its own EWMA baseline."""

    name = "exfil_volume"
    rules = (VOLUME_RULE,)
    inputs = (InputSpec("flow", _VOLUME_COLUMNS),)
    threshold_keys = ("min_out_bytes", "baseline_factor", "min_out_in_ratio",
                      "min_history_windows", "ewma_alpha", "max_hosts")

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        if self.window.hop_ns != self.window.size_ns:
            raise ValueError("correlation.detectors.exfil_volume: needs tumbling windows "
                             "(hop_s == window_s): each window updates the baseline once")
        self.min_bytes = float(config["min_out_bytes"])
        self.factor = float(config["baseline_factor"])
        self.min_history = int(config["min_history_windows"])
        self.alpha = float(config["ewma_alpha"])
        self.max_hosts = int(config["max_hosts"])
        # per host: ewma, first window, last window; bounded by max_hosts
        self.baseline = HostBaselines()
        self.stats = {"hosts_evicted": 0}

    def probe(self) -> VolumeBaselineDetector:
        """Detector.probe: the baselines copied (a detect updates them, once per window
        when it closes; max_hosts rows of 56 bytes at most), nothing else to protect."""
        other = copy.copy(self)
        other.baseline = copy.deepcopy(self.baseline)
        other.stats = dict(self.stats)
        return other

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows["flow"]
        t = cols["timestamp"]
        idx = rows_in_range(t, windows)
        if idx.size == 0:
            return []
        # (window, host) groups, their first row and byte sums in one compiled hash pass
        # over the rows (tumbling windows: each row is in exactly one window of the range);
        # group ids are first-seen, so the update below orders the groups itself
        words = _address_words(cols["src_ip"])
        group_k, group_row, sent, received = _host_window_sums(
            idx, np.ascontiguousarray(t, np.int64), words, cols["src_bytes"],
            cols["dst_bytes"], int(self.window.hop_ns), int(windows.first), int(windows.last))
        n_groups = group_k.shape[0]
        host_hi, host_lo = words[group_row, 0], words[group_row, 1]
        # the state update is sequential per host (window after window) and inserts new
        # hosts in (window, address words) order, as the ranked codes did: compiled
        order = np.lexsort((host_lo, host_hi, group_k))
        in_order = self.baseline.update(host_hi[order], host_lo[order], group_k[order],
                                        sent[order], self.alpha)
        baseline = np.empty(n_groups)
        history = np.empty(n_groups, np.int64)
        baseline[order], history[order] = in_order
        self.stats["hosts_evicted"] += self.baseline.bound(self.max_hosts)
        hits = np.flatnonzero((sent >= self.min_bytes) & (history >= self.min_history)
                              & (sent >= self.factor * np.maximum(baseline, 1.0))
                              & (sent >= self.min_ratio * received))
        # (hits are rare: a hit's rows are found when it is described, by one pass over
        # the range's rows; the evidence does not depend on the order of its rows)
        findings = []
        for g in hits.tolist():
            w = int(group_k[g])
            findings.append(Finding(
                rule=self.rules[0], key=one_ip(cols["src_ip"], int(group_row[g])),
                window_start=int(windows.spec.start(w)), window_end=int(windows.spec.end(w)),
                describe=partial(self._describe_group, cols, idx, words,
                                 int(group_row[g]), w, float(baseline[g]),
                                 int(history[g]))))
        return findings

    def _describe_group(self, cols: Columns, idx: np.ndarray, words: np.ndarray,
                        first_row: int, w: int, baseline: float, history: int) -> Evidence:
        """Evidence of the (window w, host of first_row) group: its rows among idx."""
        mine = ((words[idx, 0] == words[first_row, 0])
                & (words[idx, 1] == words[first_row, 1])
                & (np.asarray(cols["timestamp"], np.int64)[idx] // self.window.hop_ns == w))
        return self._describe(cols, idx[mine], baseline, history)

    def _describe(self, cols: Columns, r: np.ndarray, baseline: float, history: int
                  ) -> Evidence:
        cols, r = _finding_rows(cols, r, _VOLUME_COLUMNS)
        first, last = span(cols, r)
        src = one_ip(cols["src_ip"], 0)
        sent = int(cols["src_bytes"].sum())
        received = int(cols["dst_bytes"].sum())
        n_dst, dsts = sample_ips(cols["dst_ip"], self.max_sample)
        return Evidence(
            first_seen=first, last_seen=last, source_ip=src,
            related_ips=[src] + [d for d in dsts if d != src], **seen_by(cols, r),
            details={"bytes_out": sent, "bytes_in": received,
                     "out_in_ratio": round(sent / max(received, 1), 2),
                     "baseline_bytes": round(baseline, 1), "history_windows": history,
                     "distinct_destinations": n_dst, "destinations": dsts},
            message=f"{src} sent {sent:,} bytes out, {sent / max(baseline, 1.0):.0f}x its "
                    f"baseline of {baseline:,.0f}",
        )


def _floats_at(cols: Columns, name: str, rows: np.ndarray) -> np.ndarray:
    """cols[name][rows] as float64, read at those rows only (take)."""
    return take(cols, name, rows).astype(np.float64)


def _ip_at(cols: Columns, name: str, row: int) -> str:
    """one_ip(cols[name], row), read at that row only (take)."""
    return one_ip(take(cols, name, np.array([row], np.int64)), 0)


def _finding_rows(cols: Columns, r: np.ndarray, names: tuple[str, ...]
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(the named columns at rows r only, positions 0..len(r) - 1 into them): a finding's
    evidence reads its own rows, not whole columns of an hour's buffer (the engine's
    columns gather a column on first access; take reads the buffer at r)."""
    return ({name: take(cols, name, r) for name in names if name in cols},
            np.arange(r.shape[0]))


@lru_cache(maxsize=16)
def _networks(cidrs: tuple[str, ...]) -> Networks:
    return Networks.of(cidrs)


def _address_words(column: np.ndarray) -> np.ndarray:
    """(rows, 2) native uint64 view of a 16-byte address column (a copy only when the
    column is not contiguous)."""
    return np.ascontiguousarray(column).view(np.uint64).reshape(-1, 2)


@njit
def _mix_words(a: np.uint64, b: np.uint64, c: np.uint64) -> np.uint64:
    """64-bit hash of three words (multiply-xorshift chain); only picks table slots."""
    h = np.uint64(0x9E3779B97F4A7C15)
    for w in (a, b, c):
        h = (h ^ w) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return h


@njit
def _sum_in_range(times: np.ndarray, values: np.ndarray, start: int, end: int) -> float:
    """Sum of values[i] (as float64, in row order) over the rows with start <= times[i] <
    end."""
    total = 0.0
    for i in range(times.shape[0]):
        if start <= times[i] < end:
            total += float(values[i])
    return total


@njit
def _host_window_sums(idx: np.ndarray, times: np.ndarray, words: np.ndarray,
                      sent_col: np.ndarray, received_col: np.ndarray, hop: int, first: int,
                      last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows idx of tumbling windows first..last (window = time // hop) grouped by (window,
    address): per group in first-seen order, its window, first row, and the sums of
    sent_col and received_col as float64 in row order (as np.bincount sums).
    first == last: every row is in that window (no 64-bit division per row).

    Every array is sized by the groups, none by the rows, and each group keeps its key
    words: a dense hour's 170k rows of 4k hosts used to allocate six 170k-row arrays per
    call (fresh pages: their first touches cost more than the hashing) and to compare
    each probe against the words of the group's first row, anywhere in the column."""
    n = idx.shape[0]
    bits = 10  # the table grows with the groups (few hosts: it stays in cache)
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    slots = np.full(1 << bits, -1, np.int64)
    capacity = 1 << (bits - 1)  # groups: the table stays at most half full
    group_k = np.empty(capacity, np.int64)
    group_row = np.empty(capacity, np.int64)
    group_hi = np.empty(capacity, np.uint64)
    group_lo = np.empty(capacity, np.uint64)
    sent = np.zeros(capacity)
    received = np.zeros(capacity)
    m = 0
    for i in range(n):
        r = idx[i]
        k = first if first == last else times[r] // hop
        hi, lo = words[r, 0], words[r, 1]
        s = np.int64(_mix_words(np.uint64(k), hi, lo) >> shift) & mask
        while True:
            g = slots[s]
            if g < 0:
                if m == capacity:  # full: double the table and the groups, reinsert
                    bits += 1
                    mask = (1 << bits) - 1
                    shift = np.uint64(64 - bits)
                    slots = np.full(1 << bits, -1, np.int64)
                    more = capacity
                    capacity *= 2
                    group_k = np.concatenate((group_k, np.empty(more, np.int64)))
                    group_row = np.concatenate((group_row, np.empty(more, np.int64)))
                    group_hi = np.concatenate((group_hi, np.empty(more, np.uint64)))
                    group_lo = np.concatenate((group_lo, np.empty(more, np.uint64)))
                    sent = np.concatenate((sent, np.zeros(more)))
                    received = np.concatenate((received, np.zeros(more)))
                    for q in range(m):
                        t = np.int64(_mix_words(np.uint64(group_k[q]), group_hi[q],
                                                group_lo[q]) >> shift) & mask
                        while slots[t] >= 0:
                            t = (t + 1) & mask
                        slots[t] = q
                    s = np.int64(_mix_words(np.uint64(k), hi, lo) >> shift) & mask
                    continue  # probe the new table
                g = m
                m += 1
                slots[s] = g
                group_k[g], group_row[g] = k, r
                group_hi[g], group_lo[g] = hi, lo
                break
            if group_lo[g] == lo and group_hi[g] == hi and group_k[g] == k:
                break
            s = (s + 1) & mask
        sent[g] += float(sent_col[r])
        received[g] += float(received_col[r])
    return group_k[:m], group_row[:m], sent[:m], received[:m]


@njit
def _slot_of(index: np.ndarray, hi: np.ndarray, lo: np.ndarray, key_hi: np.uint64,
             key_lo: np.uint64, shift: np.uint64) -> tuple[int, int]:
    """(entry of the key or -1, the index slot where it is or would go); linear probing
    over a power-of-two index with free slots (kept under half full by the caller).

    The slot is the top log2(len(index)) bits (shift = 64 - that, _index_shift) of a
    multiplicative mix, which depend on every key bit. (A middle bit slice of the product,
    as before, saw only the first octets of an IPv4 address, which sits in the top half of
    key_lo: every host of a /16 probed from a handful of slots, quadratic in the hosts.)
    Slots decide nothing but where an entry is found: results do not depend on them.
    """
    mask = index.shape[0] - 1
    mixed = ((key_hi * np.uint64(0x9E3779B97F4A7C15)) ^ key_lo) * np.uint64(0xC2B2AE3D27D4EB4F)
    s = np.int64(mixed >> shift) & mask
    while True:
        e = index[s]
        if e < 0 or (hi[e] == key_hi and lo[e] == key_lo):
            return e, s
        s = (s + 1) & mask


@njit
def _index_shift(index: np.ndarray) -> np.uint64:
    """64 - log2(len(index)) for a power-of-two index of >= 2 slots."""
    bits = 0
    while (1 << bits) < index.shape[0]:
        bits += 1
    return np.uint64(64 - bits)


@njit
def _rebuild_index(index: np.ndarray, hi: np.ndarray, lo: np.ndarray, n: int) -> None:
    index[:] = -1
    shift = _index_shift(index)
    for e in range(n):
        _, s = _slot_of(index, hi, lo, hi[e], lo[e], shift)
        index[s] = e


@njit
def _update_baselines(index: np.ndarray, hi: np.ndarray, lo: np.ndarray, ewma: np.ndarray,
                      first: np.ndarray, last: np.ndarray, seq: np.ndarray, n: int,
                      next_seq: int, key_hi: np.ndarray, key_lo: np.ndarray, k: np.ndarray,
                      sent: np.ndarray, alpha: float
                      ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """EWMA update of each (host, window) in the given order (ascending windows per host):
    (baseline before the window, windows of history, entries, next insertion number).

    The caller guarantees room: n + len(k) <= hi.size and the index at least twice that.
    """
    m = k.shape[0]
    baseline = np.zeros(m)
    history = np.zeros(m, np.int64)
    shift = _index_shift(index)
    for i in range(m):
        e, s = _slot_of(index, hi, lo, key_hi[i], key_lo[i], shift)
        if e < 0:
            e = n
            n += 1
            index[s] = e
            hi[e], lo[e] = key_hi[i], key_lo[i]
            ewma[e], first[e], last[e] = 0.0, k[i], k[i] - 1
            seq[e] = next_seq
            next_seq += 1
        gap = k[i] - last[e] - 1
        decayed = ewma[e] * (1 - alpha) ** float(max(gap, 0))  # silent windows count as 0
        baseline[i], history[i] = decayed, k[i] - first[e]
        ewma[e] = alpha * sent[i] + (1 - alpha) * decayed
        last[e] = k[i]
    return baseline, history, n, next_seq


class HostBaselines:
    """Per-host EWMA state in columns (16-byte address as two uint64 words), found through
    a compiled hash index: one pass per detect call instead of a dict operation per
    (window, host). Entries keep their insertion number, so eviction is least recently
    active first and, among equals, oldest inserted first (a dict's order)."""

    def __init__(self) -> None:
        self.n = 0
        self.next_seq = 0
        self._alloc(1024)

    def _alloc(self, capacity: int) -> None:
        old = self.n
        columns = {"hi": np.uint64, "lo": np.uint64, "ewma": np.float64, "first": np.int64,
                   "last": np.int64, "seq": np.int64}
        for name, dtype in columns.items():
            fresh = np.zeros(capacity, dtype)
            if old:
                fresh[:old] = getattr(self, name)[:old]
            setattr(self, name, fresh)
        self.index = np.full(2 * capacity, -1, np.int64)  # power of two: capacity is one
        _rebuild_index(self.index, self.hi, self.lo, old)

    def __len__(self) -> int:
        return self.n

    def update(self, key_hi: np.ndarray, key_lo: np.ndarray, k: np.ndarray,
               sent: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """(baseline, history windows) per (host, window) row, rows ascending by window per
        host; updates the state."""
        need = self.n + k.shape[0]
        if need > self.hi.shape[0]:
            self._alloc(1 << (need - 1).bit_length())
        baseline, history, self.n, self.next_seq = _update_baselines(
            self.index, self.hi, self.lo, self.ewma, self.first, self.last, self.seq, self.n,
            self.next_seq, key_hi.astype(np.uint64), key_lo.astype(np.uint64),
            k.astype(np.int64), sent.astype(np.float64), float(alpha))
        return baseline, history

    def bound(self, max_hosts: int) -> int:
        """Evict the least recently active hosts beyond max_hosts; how many were evicted."""
        excess = self.n - max_hosts
        if excess <= 0:
            return 0
        n = self.n
        stale = np.lexsort((self.seq[:n], self.last[:n]))[:excess]
        keep = np.ones(n, bool)
        keep[stale] = False
        for name in ("hi", "lo", "ewma", "first", "last", "seq"):
            column = getattr(self, name)
            kept = column[:n][keep]
            column[:kept.size] = kept
        self.n = int(keep.sum())
        _rebuild_index(self.index, self.hi, self.lo, self.n)
        return excess


class IcmpTunnelDetector(Detector):
    """ICMP echo payload per (source, destination) >= min_payload_bytes at a large mean size."""

    name = "exfil_icmp"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (ICMP_RULE,)
    inputs = (InputSpec("flow", _ICMP_COLUMNS),)
    threshold_keys = ("min_payload_bytes", "max_normal_payload_bytes")

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.min_bytes = float(config["min_payload_bytes"])
        self.normal = float(config["max_normal_payload_bytes"])

    def select(self, batch: EventBatch) -> np.ndarray:
        c = batch.columns
        return echo_flows(c) & ((c["src_payload_bytes"] + c["dst_payload_bytes"]) > 0)

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows["flow"]
        t = cols["timestamp"]
        idx = rows_in_range(t, windows)
        if idx.size == 0:
            return []
        payload = (cols["src_payload_bytes"] + cols["dst_payload_bytes"]).astype(np.float64)
        packets = (cols["src_packets"] + cols["dst_packets"]).astype(np.float64)
        if not self._some_large_echo(payload[idx], packets[idx]):
            return []
        # a tunnel talks both ways, each side may ping the other: key on the unordered pair
        pair, n_pairs = _unordered_pair(cols, idx)
        keep = np.bincount(pair, weights=payload[idx], minlength=n_pairs)[pair] >= self.min_bytes
        idx, pair = idx[keep], pair[keep]
        if idx.size == 0:
            return []
        wg = WindowGroups.of(windows, t, idx, pair)
        total = wg.sum(payload)
        mean = total / np.maximum(wg.sum(packets), 1)
        hits = np.flatnonzero((total >= self.min_bytes) & (mean > self.normal))
        return wg.findings(hits, windows, lambda g: self.rules[0],
                           lambda row: _pair_key(cols, row),
                           lambda r, g: self._describe(cols, r))

    def _some_large_echo(self, payload: np.ndarray, packets: np.ndarray) -> bool:
        """False only when no group of these rows can have a mean payload per packet above
        `max_normal_payload_bytes` at >= min_payload_bytes: a group's mean is above it
        only if one of its rows' is (the mean of sums lies between the rows' means), and a
        group without packets has no payload. Most closes see ordinary pings only and end
        here, before the pair grouping. (The 1e-9 margin covers the float rounding of the
        products and of the group sums: the test stays one-sided.)"""
        if self.min_bytes <= 0 or self.normal < 0:
            return True
        return bool((payload >= self.normal * (1 - 1e-9) * packets).any())

    def _describe(self, cols: Columns, r: np.ndarray) -> Evidence:
        cols, r = _finding_rows(cols, r, _ICMP_COLUMNS)
        first, last = span(cols, r)
        # the source of the alert: the side that sent the most echo-request payload
        src_pay = cols["src_payload_bytes"].astype(np.int64)
        lead = int(np.argmax(src_pay))
        src, dst = one_ip(cols["src_ip"], lead), one_ip(cols["dst_ip"], lead)
        payload = int((cols["src_payload_bytes"] + cols["dst_payload_bytes"]).sum())
        packets = int((cols["src_packets"] + cols["dst_packets"]).sum())
        return Evidence(
            first_seen=first, last_seen=last, source_ip=src, destination_ip=dst,
            transport="icmp", related_ips=sorted({src, dst}), **seen_by(cols, r),
            details={"payload_bytes": payload, "packets": packets, "flows": int(r.size),
                     "mean_payload_bytes": round(payload / max(packets, 1), 1)},
            message=f"ICMP echo between {src} and {dst} carried {payload:,} bytes of payload "
                    f"({payload / max(packets, 1):.0f} B/packet)",
        )


def _unordered_pair(cols: Columns, idx: np.ndarray) -> tuple[np.ndarray, int]:
    src, dst = cols["src_ip"][idx], cols["dst_ip"][idx]
    s = np.ascontiguousarray(src).view(">u8").reshape(-1, 2)
    d = np.ascontiguousarray(dst).view(">u8").reshape(-1, 2)
    src_first = (s[:, 0] < d[:, 0]) | ((s[:, 0] == d[:, 0]) & (s[:, 1] <= d[:, 1]))
    lo = np.where(src_first, src, dst)
    hi = np.where(src_first, dst, src)
    a, _ = factorize_ip(lo)
    b, _ = factorize_ip(hi)
    return combine_codes(a, b)


def _pair_key(cols: Columns, row: int) -> str:
    ips = sorted((one_ip(cols["src_ip"], row), one_ip(cols["dst_ip"], row)))
    return "|".join(ips)
