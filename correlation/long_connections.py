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


def _tcp_or_udp(c: Columns) -> np.ndarray:
    return (c["transport"] == 6) | (c["transport"] == IANA_UDP)


class LongConnectionDetector(Detector):
    """Connections spanning >= min_duration_s within one window (key: src, dst, port)."""

    name = "long_connection"
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
# slots kept at most (16 MB): closes release slots as the watermark passes them, so only
# rows that never reach a close (all dropped as late) can pile up; the oldest slots go
# first, and a close over a forgotten slot counts too few rows: the exact path
_MAX_SLOTS = 256


@njit
def _slot_bucket_counts(hashes: np.ndarray, mask: np.ndarray, times: np.ndarray, hop: int,
                        bits: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(first slot, rows[slot - first], counts[slot - first, bucket]) of the rows where
    mask holds: per hop slot (time // hop) and pair bucket (the top `bits` bits of the
    row's pair hash); first = -1 and empty arrays when no row does. Indices stay in
    range: the first pass finds the slots' min and max, buckets are < 2**bits by the
    shift."""
    n = mask.shape[0]
    first = np.int64(0)
    last = np.int64(0)
    seen = False
    for i in range(n):
        if mask[i]:
            s = times[i] // hop
            if not seen:
                first = s
                last = s
                seen = True
            elif s < first:
                first = s
            elif s > last:
                last = s
    if not seen:
        return -1, np.zeros(0, np.int64), np.zeros((0, 1 << bits), np.uint32)
    rows = np.zeros(last - first + 1, np.int64)
    counts = np.zeros((last - first + 1, 1 << bits), np.uint32)
    shift = np.uint64(64 - bits)
    for i in range(n):
        if mask[i]:
            s = times[i] // hop - first
            rows[s] += 1
            counts[s, hashes[i] >> shift] += 1
    return first, rows, counts


class _SlotCounts:
    """Per hop slot: rows counted and their pair bucket counts (see the module doc)."""

    def __init__(self, hop_ns: int) -> None:
        self.hop_ns = hop_ns
        self.rows: dict[int, int] = {}
        self.buckets: dict[int, np.ndarray] = {}

    def add(self, batch: EventBatch, mask: np.ndarray) -> None:
        c = batch.columns
        first, rows, counts = _slot_bucket_counts(
            pair_hashes(c), np.ascontiguousarray(mask, np.bool_),
            np.ascontiguousarray(c["timestamp"], np.int64), self.hop_ns, _SLOT_BUCKET_BITS)
        for offset, n in enumerate(rows.tolist()):
            if n:
                slot = first + offset
                self.rows[slot] = self.rows.get(slot, 0) + n
                held = self.buckets.get(slot)
                self.buckets[slot] = counts[offset] if held is None else held + counts[offset]
        if len(self.rows) > _MAX_SLOTS:
            self.release(sorted(self.rows)[-_MAX_SLOTS])

    def quiet(self, first_slot: int, end_slot: int, rows: int, threshold: int) -> bool:
        """Slots first_slot..end_slot-1 counted exactly `rows` rows and no bucket of their
        sum reaches `threshold`."""
        slots = [s for s in range(first_slot, end_slot) if s in self.rows]
        if sum(self.rows[s] for s in slots) != rows:
            return False
        if not slots:
            return True
        total = self.buckets[slots[0]].astype(np.int64)
        for s in slots[1:]:
            total += self.buckets[s]
        return int(total.max()) < threshold

    def release(self, before_slot: int) -> None:
        """Forget slots before `before_slot` (no range still to close holds them)."""
        for s in [s for s in self.rows if s < before_slot]:
            del self.rows[s]
            del self.buckets[s]


class StrobeDetector(Detector):
    """Connections per (source, destination) and window >= min_connections."""

    name = "strobe"
    rules = (STROBE_RULE,)
    inputs = (InputSpec("flow", _COLUMNS),)
    threshold_keys = ("min_connections",)

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.min_connections = int(config["min_connections"])
        # a range is whole hop slots only when the window is a multiple of the hop
        self._slots = (_SlotCounts(self.window.hop_ns)
                       if self.window.size_ns % self.window.hop_ns == 0 else None)

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
