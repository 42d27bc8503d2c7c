"""Long-lived connections and strobes (RITA's two other C2 shapes besides beacons).

Long connection: one connection (same originator, responder, ports, transport) open for at
least `min_duration_s`. The sensor emits a long flow in pieces of `active_timeout_s`
(end_reason "active"); the detector joins the pieces of a connection that fall into one
window (earliest start to latest end), so the window must be longer than the duration
threshold plus one piece. Interactive sessions and C2 channels kept open (reverse shells,
RATs, tunnels) look alike: low severity, for hunting and context.

Strobe: very many connections between one pair (source, destination) in the window: RITA's
strobe threshold is 86,400 connections a day (one a second); per hour that is 3,600.

Cost: nearly every close of a strobe window holds no pair anywhere near the threshold. So
`select` counts each selected row into its hop slot's (pair hash bucket) counts, one
compiled pass over the batch; a close whose slots hold no bucket with `min_connections`
rows (a necessary condition for any pair of its range) and whose slots counted exactly the
rows the engine hands over returns at once, without keying a row. Any other close (a
bucket that reaches it, rows dropped by the row cap, `detect` called without `select`)
takes the exact path.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np

from correlation.arrival_memo import rows_in_range
from correlation.beaconing import RowColumns, count_in_range, pair_hashes
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
    ip_codes,
    ip_pair_codes,
)
from correlation.network_common import (
    GROUP_ADDRESSES,
    IANA_UDP,
    WindowGroups,
    one_ip,
    seen_by,
    span,
)
from correlation.prefilter import pair_candidates
from pipeline.jit import njit
from pipeline.schema import TRANSPORT_NAMES, EventBatch

_C2 = ("TA0011", "Command and Control")
_APP = ("T1071", "Application Layer Protocol")

LONG_RULE = Rule(
    id="cirtsa.c2.long_connection",
    name="Long-lived connection",
    description="One connection stayed open for a long time (C2 channels, tunnels and "
                "interactive sessions look like this).",
    category="Command and control",
    tactic_id=_C2[0], tactic_name=_C2[1], technique_id=_APP[0], technique_name=_APP[1],
    severity=21, severity_label="low", risk_score=21.0,
)

STROBE_RULE = Rule(
    id="cirtsa.c2.strobe",
    name="Connection strobe",
    description="One source opened very many connections to one destination within the "
                "window (RITA strobe).",
    category="Command and control",
    tactic_id=_C2[0], tactic_name=_C2[1], technique_id=_APP[0], technique_name=_APP[1],
    severity=21, severity_label="low", risk_score=21.0,
)

_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "src_port", "dst_port", "transport",
            "src_bytes", "dst_bytes", "observer_name", "ingress_zone")
# strobe's closes read only these (its select reads the batch): every buffered column costs
# the engine a copy, a growth and a compaction move per row
_STROBE_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "dst_port", "observer_name",
                   "ingress_zone")


def _tcp_or_udp(c: Columns) -> np.ndarray:
    return (c["transport"] == 6) | (c["transport"] == IANA_UDP)


class LongConnectionDetector(Detector):
    """Connections spanning >= min_duration_s within one window (key: src, dst, port)."""

    name = "long_connection"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (LONG_RULE,)
    inputs = (InputSpec("flow", _COLUMNS),)
    threshold_keys = ("min_duration_s", "min_piece_s")

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.min_ns = int(float(config["min_duration_s"]) * NS_PER_S)
        # pieces shorter than this are not buffered: a long connection's pieces are long,
        # except its last one, and the others carry the duration
        self.min_piece_ns = int(float(config["min_piece_s"]) * NS_PER_S)
        if self.window.size_ns < self.min_ns:
            raise ValueError("correlation.detectors.long_connection: window_s must be at "
                             "least min_duration_s")

    def select(self, batch: EventBatch) -> np.ndarray:
        c = batch.columns
        return _tcp_or_udp(c) & ((c["end"] - c["timestamp"]) >= self.min_piece_ns)

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows["flow"]
        t = cols["timestamp"]
        idx = rows_in_range(t, windows)
        if idx.size == 0:
            return []
        src = ip_codes(cols, "src_ip", idx)
        dst = ip_codes(cols, "dst_ip", idx)
        conn, n_conn = combine_codes(src, dst, cols["src_port"][idx].astype(np.int64),
                                     cols["dst_port"][idx].astype(np.int64),
                                     cols["transport"][idx].astype(np.int64))
        first = np.full(n_conn, np.iinfo(np.int64).max)
        last = np.full(n_conn, np.iinfo(np.int64).min)
        np.minimum.at(first, conn, t[idx])
        np.maximum.at(last, conn, cols["end"][idx])
        keep = (last - first)[conn] >= self.min_ns  # necessary over the whole range
        idx, conn = idx[keep], conn[keep]
        if idx.size == 0:
            return []
        wg = WindowGroups.of(windows, t, idx, conn)
        first = np.full(wg.n_groups, np.iinfo(np.int64).max)
        last = np.full(wg.n_groups, np.iinfo(np.int64).min)
        np.minimum.at(first, wg.group, t[wg.idx])
        np.maximum.at(last, wg.group, cols["end"][wg.idx])
        hits = np.flatnonzero(last - first >= self.min_ns)
        return wg.findings(hits, windows, lambda g: self.rules[0],
                           lambda row: _pair_text(cols, row),
                           lambda r, g: self._describe(cols, r))

    def _describe(self, cols: Columns, r: np.ndarray) -> Evidence:
        first, last = span(cols, r)
        src, dst = one_ip(cols["src_ip"], r[0]), one_ip(cols["dst_ip"], r[0])
        port = int(cols["dst_port"][r[0]])
        proto = TRANSPORT_NAMES.get(int(cols["transport"][r[0]]), "")
        hours = (last - first) / NS_PER_S / 3600
        return Evidence(
            first_seen=first, last_seen=last, source_ip=src, destination_ip=dst,
            destination_port=port, transport=proto, related_ips=sorted({src, dst}),
            **seen_by(cols, r),
            details={"duration_s": round((last - first) / NS_PER_S, 1), "pieces": int(r.size),
                     "source_port": int(cols["src_port"][r[0]]),
                     "bytes_out": int(cols["src_bytes"][r].sum()),
                     "bytes_in": int(cols["dst_bytes"][r].sum())},
            message=f"{src} kept a {proto} connection to {dst}:{port} open for {hours:.1f} h",
        )


def _pair_key(cols: Columns, row: int) -> str:
    one = RowColumns(cols, np.array([row]))
    return f"{one_ip(one['src_ip'], 0)}|{one_ip(one['dst_ip'], 0)}"


def _pair_text(cols: Columns, row: int) -> str:
    proto = TRANSPORT_NAMES.get(int(cols["transport"][row]), str(int(cols["transport"][row])))
    return (f"{one_ip(cols['src_ip'], row)}|{one_ip(cols['dst_ip'], row)}|"
            f"{proto}/{int(cols['dst_port'][row])}")


# pair hash buckets per hop slot (2**14 uint32 counts: 64 kB a slot; an hour's range of
# ~10^5 flows puts a few rows in a bucket, thousands only where a pair has them)
_SLOT_BUCKET_BITS = 14
# slots kept at most (a ring of 16 MB, zero pages until used): slot s lives at s % _MAX_SLOTS
# and a newer slot takes the place of an older one; a close over a forgotten slot (or a
# row older than its place's slot, not counted) counts too few rows: the exact path
_MAX_SLOTS = 256
_NO_SLOT = np.iinfo(np.int64).min


@njit
def _count_into_slots(hashes: np.ndarray, mask: np.ndarray, times: np.ndarray, hop: int,
                      bits: int, slot_of: np.ndarray, rows: np.ndarray, counts: np.ndarray
                      ) -> None:
    """Count the rows where mask holds into their hop slot's (time // hop) row count and
    pair bucket (the top `bits` bits of the row's pair hash), in place. Slot s lives at
    place s % places: a newer slot clears and takes an older slot's place; a row older
    than its place's slot is not counted. Indices stay in range: a place is < places
    (non-negative modulo), a bucket < 2**bits by the shift (counts has 2**bits columns)."""
    places = slot_of.shape[0]
    shift = np.uint64(64 - bits)
    # rows come mostly in time order: the previous row's slot [lo, lo + hop) usually
    # holds the next one too, and two integer divisions per row are the kernel's cost
    lo = np.int64(0)
    p = -1  # place of the slot [lo, lo + hop); -1: none (skipped rows)
    for i in range(mask.shape[0]):
        if not mask[i]:
            continue
        t = times[i]
        if t < lo or t - lo >= hop or p < 0:
            s = t // hop
            lo = s * hop
            p = s % places
            if slot_of[p] != s:
                if slot_of[p] > s:
                    p = -1
                    continue  # forgotten already: the closes over it take the exact path
                slot_of[p] = s
                rows[p] = 0
                counts[p, :] = 0
        rows[p] += 1
        counts[p, hashes[i] >> shift] += 1


@njit
def _quiet_slots(slot_of: np.ndarray, rows: np.ndarray, counts: np.ndarray, first_slot: int,
                 end_slot: int, held: int, threshold: int) -> bool:
    """Slots first_slot..end_slot-1 counted exactly `held` rows and no bucket of their sum
    reaches `threshold` (see _SlotCounts.quiet)."""
    places = slot_of.shape[0]
    total_rows = 0
    present = np.zeros(places, np.bool_)
    for s in range(first_slot, end_slot):
        p = s % places
        if slot_of[p] == s:
            total_rows += rows[p]
            present[p] = True
    if total_rows != held:
        return False
    total = np.zeros(counts.shape[1], np.int64)
    for p in range(places):
        if present[p]:
            for b in range(counts.shape[1]):
                total[b] += counts[p, b]
    for b in range(counts.shape[1]):
        if total[b] >= threshold:
            return False
    return True


class _SlotCounts:
    """Per hop slot: rows counted and their pair bucket counts (see the module doc), in a
    ring of _MAX_SLOTS places counted into by one compiled pass per batch."""

    def __init__(self, hop_ns: int) -> None:
        self.hop_ns = hop_ns
        self.slot_of = np.full(_MAX_SLOTS, _NO_SLOT, np.int64)
        self.rows = np.zeros(_MAX_SLOTS, np.int64)
        self.buckets = np.zeros((_MAX_SLOTS, 1 << _SLOT_BUCKET_BITS), np.uint32)

    def add(self, batch: EventBatch, mask: np.ndarray) -> None:
        c = batch.columns
        _count_into_slots(pair_hashes(c), np.ascontiguousarray(mask, np.bool_),
                          np.ascontiguousarray(c["timestamp"], np.int64), self.hop_ns,
                          _SLOT_BUCKET_BITS, self.slot_of, self.rows, self.buckets)

    def held(self) -> dict[int, int]:
        """{slot: rows counted} of the slots kept."""
        kept = np.flatnonzero(self.slot_of != _NO_SLOT)
        return dict(zip(self.slot_of[kept].tolist(), self.rows[kept].tolist(), strict=True))

    def quiet(self, first_slot: int, end_slot: int, rows: int, threshold: int) -> bool:
        """Slots first_slot..end_slot-1 counted exactly `rows` rows and no bucket of their
        sum reaches `threshold`."""
        return bool(_quiet_slots(self.slot_of, self.rows, self.buckets, int(first_slot),
                                 int(end_slot), int(rows), int(threshold)))

    def probe(self) -> _SlotCounts:
        """Counts for a detect on windows that stay open: its own slot numbers (release
        writes them), the counts shared (a detect only reads them; 16 MB)."""
        other = copy.copy(self)
        other.slot_of = self.slot_of.copy()
        return other

    def release(self, before_slot: int) -> None:
        """Forget slots before `before_slot` (no range still to close holds them)."""
        self.slot_of[self.slot_of < before_slot] = _NO_SLOT


class StrobeDetector(Detector):
    """Connections per (source, destination) and window >= min_connections."""

    name = "strobe"
    rules = (STROBE_RULE,)
    inputs = (InputSpec("flow", _STROBE_COLUMNS),)
    threshold_keys = ("min_connections",)

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.min_connections = int(config["min_connections"])
        # a range is whole hop slots only when the window is a multiple of the hop
        self._slots = (_SlotCounts(self.window.hop_ns)
                       if self.window.size_ns % self.window.hop_ns == 0 else None)

    def probe(self) -> StrobeDetector:
        """Detector.probe: the slot counts' slot numbers copied (a close releases slots)."""
        other = copy.copy(self)
        if self._slots is not None:
            other._slots = self._slots.probe()
        return other

    def select(self, batch: EventBatch) -> np.ndarray:
        mask = _tcp_or_udp(batch.columns) & ~GROUP_ADDRESSES.contains(batch.columns["dst_ip"])
        if self._slots is not None:
            self._slots.add(batch, mask)
        return mask

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows["flow"]
        if self._slots is not None:
            hop = self.window.hop_ns
            quiet = self._slots.quiet(int(windows.spec.start(windows.first)) // hop,
                                      int(windows.spec.end(windows.last)) // hop,
                                      count_in_range(cols, windows), self.min_connections)
            self._slots.release(int(windows.spec.start(windows.last + 1)) // hop)
            if quiet:
                return []
        t = cols["timestamp"]
        idx = rows_in_range(t, windows)
        if idx.size < self.min_connections:
            return []
        # thousands of connections per pair: few sources and destinations have that many,
        # so only their rows get pair codes (the keep below then gives the same rows)
        idx = pair_candidates(cols, idx, self.min_connections)
        if idx.size == 0:
            return []
        pair, n_pairs = ip_pair_codes(cols, idx)
        keep = np.bincount(pair, minlength=n_pairs)[pair] >= self.min_connections
        idx, pair = idx[keep], pair[keep]
        if idx.size == 0:
            return []
        wg = WindowGroups.of(windows, t, idx, pair)
        hits = np.flatnonzero(wg.count() >= self.min_connections)
        return wg.findings(hits, windows, lambda g: self.rules[0],
                           lambda row: _pair_key(cols, row),
                           lambda r, g: self._describe(cols, r))

    def _describe(self, cols: Columns, rows: np.ndarray) -> Evidence:
        cols, r = RowColumns(cols, rows), np.arange(rows.size)  # only this finding's rows
        first, last = span(cols, r)
        src, dst = one_ip(cols["src_ip"], r[0]), one_ip(cols["dst_ip"], r[0])
        ports = np.unique(cols["dst_port"][r])
        seconds = max((last - first) / NS_PER_S, 1.0)
        return Evidence(
            first_seen=first, last_seen=last, source_ip=src, destination_ip=dst,
            destination_port=int(ports[0]) if ports.size == 1 else None,
            related_ips=sorted({src, dst}), **seen_by(cols, r),
            details={"connections": int(r.size), "per_s": round(r.size / seconds, 1),
                     "distinct_ports": int(ports.size), "ports": ports[:20].tolist()},
            message=f"{src} opened {r.size} connections to {dst} in {seconds:.0f} s",
        )
