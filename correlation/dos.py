"""Denial of service against one victim: SYN floods and volumetric packet floods.

Victim-keyed (the key is the destination address), so spoofed sources, however many, add up
on their victim instead of spreading over keys; `partition_key = "destination"` tells a
Kafka deployment to route these detectors' events by destination address.

SYN flood: TCP flows whose originator sent SYN and never ACK (the handshake was never
completed by the client: unanswered, refused, or SYN-ACKed into the void of a spoofed
address). The rate that matters for a SYN flood is per second (the victim's backlog fills
in seconds), so the detector counts attempts per victim per one-second bin and alerts on
the peak bin, as Suricata's `detection_filter: count N, seconds 1` does.

A fast SYN port scan of one host also peaks at hundreds of attempts per second, but on as
many ports as attempts; a flood repeats its ports, so at least `min_attempts_per_port`
attempts per distinct destination port are required (a scan is the scan detector's job).

Volumetric flood: flows in which only the originator sent (no reply packet: UDP, ICMP, or
TCP junk at a victim) add their packets to the victim. A flow record's packets are spread
evenly over its duration, and the window holding the flow's start gets the share that falls
inside it; the alert fires when that estimate, divided by the window length, reaches
`min_pps` (FastNetMon's default per-host ban threshold is 20,000 packets/s).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from correlation.arrival_memo import rows_in_range
from correlation.detector import (
    IANA_TCP,
    NS_PER_S,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    Columns,
    Detector,
    Evidence,
    Finding,
    InputSpec,
    Rule,
    WindowRange,
    combine_codes,
    distinct_per_group,
    factorize_ip,
    ip_codes,
    ip_text,
)
from correlation.network_common import (
    GROUP_ADDRESSES,
    WindowGroups,
    sample_ips,
    seen_by,
    span,
)
from pipeline.schema import TRANSPORT_NAMES, EventBatch

_IMPACT = ("TA0040", "Impact")

SYN_FLOOD_RULE = Rule(
    id="cirtsa.dos.syn_flood",
    name="SYN flood",
    description="Many TCP connection attempts that were never completed by the client reached "
                "one host within a second (SYN flood; sources may be spoofed).",
    category="Denial of service",
    tactic_id=_IMPACT[0], tactic_name=_IMPACT[1],
    technique_id="T1499.001", technique_name="Endpoint Denial of Service: OS Exhaustion Flood",
    severity=73, severity_label="high", risk_score=73.0,
)

VOLUMETRIC_RULE = Rule(
    id="cirtsa.dos.flood",
    name="Volumetric packet flood",
    description="One host received one-way traffic (no replies) at a packet rate of a network "
                "flood within the window.",
    category="Denial of service",
    tactic_id=_IMPACT[0], tactic_name=_IMPACT[1],
    technique_id="T1498.001", technique_name="Network Denial of Service: Direct Network Flood",
    severity=73, severity_label="high", risk_score=73.0,
)

_SYN_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "src_port", "dst_port",
                "dst_tcp_flags", "observer_name", "ingress_zone")
_FLOOD_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "dst_port", "transport",
                  "src_packets", "src_bytes", "observer_name", "ingress_zone")


def _top_sources(cols: Columns, r: np.ndarray, weights: np.ndarray | None, limit: int
                 ) -> tuple[int, list[str], str]:
    """(distinct sources, sample of the heaviest, heaviest) of rows r."""
    codes, uniq = factorize_ip(cols["src_ip"][r])
    load = np.bincount(codes, weights=weights, minlength=uniq.shape[0])
    order = np.argsort(-load, kind="stable")
    n, sample = sample_ips(uniq[order[:limit]], limit)
    heaviest = ip_text(uniq, int(order[0]))
    return int(uniq.shape[0]), sample, heaviest


def _peak_per_group(group: np.ndarray, n_groups: int, second: np.ndarray, radix: int
                    ) -> np.ndarray:
    """Most rows of each group 0..n_groups-1 in one `second` (0..radix-1); no sort of many rows.

    Few (group, second) cells: one bincount over a table of all of them. Otherwise (hours
    of range: a table would hold one slot per group per second, quiet ones included) the
    occupied cells get dense ids from combine_codes (hashed; ids are ranks, so a group's
    cells are consecutive), or for a few rows a sort, and the counts of each group's cells
    are reduced at once.
    """
    peak = np.zeros(n_groups, np.int64)
    if group.size == 0:
        return peak
    if n_groups * radix <= 16 * group.size + 4096:
        cells = np.bincount(group.astype(np.int64) * radix + second, minlength=n_groups * radix)
        return cells.reshape(n_groups, radix).max(axis=1)
    if group.size <= 4096:  # few rows: one small sort beats the hash passes' overheads
        ordered = np.sort(group.astype(np.int64) * radix + second)
        starts = np.flatnonzero(_run_starts(ordered))
        counts = np.diff(np.append(starts, ordered.size))
        cell_group = ordered[starts] // radix
    else:
        cell, n_cells = combine_codes(group, second)
        counts = np.bincount(cell, minlength=n_cells)
        cell_group = np.empty(n_cells, np.int64)
        cell_group[cell] = group
        if cell_group.size > 1 and bool((cell_group[1:] < cell_group[:-1]).any()):
            np.maximum.at(peak, cell_group, counts)  # (ids not in group order: never expected)
            return peak
    starts = np.flatnonzero(_run_starts(cell_group))
    peak[cell_group[starts]] = np.maximum.reduceat(counts, starts)
    return peak


def _run_starts(ordered: np.ndarray) -> np.ndarray:
    """True where a run of equal values begins."""
    new = np.empty(ordered.size, bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    return new


def _window_victim_groups(windows: WindowRange, times: np.ndarray, idx: np.ndarray,
                          victim: np.ndarray, n_victims: int, order_free: bool = False
                          ) -> tuple[WindowGroups, np.ndarray]:
    """WindowGroups.of(windows, times, idx, victim) and the position in idx of each copy
    (idx: rows inside the closing range only).

    victim: dense codes 0..n_victims-1. Few (window, victim) pairs (a flood has few
    victims): group = window offset * n_victims + victim, the same (window, victim) order
    as WindowGroups.of's dense ranks, with ids of empty pairs left unused (no re-ranking
    pass over the copies). order_free: the caller's reductions do not depend on the order
    of the copies (integer counts), so one closing window needs no assign pass.
    """
    if order_free and windows.first == windows.last:
        # one closing window: idx holds only its rows (rows_in_range), one copy each, in
        # row order (assign lists them by window offset, then row: only float sums care)
        copy_rows = np.arange(idx.size, dtype=np.int64)
        k = np.full(idx.size, windows.first, np.int64)
    else:
        copy_rows, k = windows.assign(times[idx])
    n_pairs = (int(windows.last) - int(windows.first) + 1) * n_victims
    if copy_rows.size == 0:
        return WindowGroups(copy_rows, k, copy_rows, 0), copy_rows
    if n_pairs > 4 * copy_rows.size + 4096:  # as WindowGroups.of: dense ranks
        group, n_groups = combine_codes(k, victim[copy_rows])
        return WindowGroups(idx[copy_rows], k, group, n_groups), copy_rows
    group = (k - int(windows.first)) * n_victims + victim[copy_rows]
    return WindowGroups(idx[copy_rows], k, group, n_pairs), copy_rows


class SynFloodDetector(Detector):
    """Peak per-second never-completed TCP attempts per victim >= min_syn_per_s."""

    name = "dos_syn_flood"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (SYN_FLOOD_RULE,)
    inputs = (InputSpec("flow", _SYN_COLUMNS),)
    threshold_keys = ("min_syn_per_s", "min_attempts_per_port", "spoofed_min_sources")
    partition_key = "destination"

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.min_rate = int(config["min_syn_per_s"])
        self.per_port = float(config["min_attempts_per_port"])
        self.spoofed_min = int(config["spoofed_min_sources"])
        self.max_sample = int(config.get("evidence_sample", 20))

    def select(self, batch: EventBatch) -> np.ndarray:
        c = batch.columns
        sf = c["src_tcp_flags"]
        return ((c["transport"] == IANA_TCP) & ((sf & TCP_SYN) != 0) & ((sf & TCP_ACK) == 0)
                & ~GROUP_ADDRESSES.contains(c["dst_ip"]))

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows["flow"]
        t = cols["timestamp"]
        idx = rows_in_range(t, windows)
        if idx.size < self.min_rate:
            return []
        victim = ip_codes(cols, "dst_ip", idx)
        second = (t[idx] // NS_PER_S).astype(np.int64)
        second -= second.min()
        radix = int(second.max()) + 1
        # necessary condition: some second of the range holds min_rate attempts at the victim
        hot_victim = _peak_per_group(victim, int(victim.max()) + 1, second, radix) >= self.min_rate
        keep = hot_victim[victim]
        if not keep.any():
            return []
        # the hot victims, densely numbered in the same order (a lookup, no re-ranking)
        hot_code = np.cumsum(hot_victim) - 1
        idx, victim, second = idx[keep], hot_code[victim[keep]], second[keep]
        wg, copy_rows = _window_victim_groups(windows, t, idx, victim, int(hot_code[-1]) + 1,
                                              order_free=True)
        peak = _peak_per_group(wg.group, wg.n_groups, second[copy_rows], radix)
        # a flood hammers its service ports; a fast port scan touches each port once or twice
        ports = distinct_per_group(wg.group, wg.n_groups,
                                   cols["dst_port"][wg.idx].astype(np.int64))
        hits = np.flatnonzero((peak >= self.min_rate)
                              & (wg.count() >= self.per_port * np.maximum(ports, 1)))
        return wg.findings(hits, windows, lambda g: self.rules[0],
                           lambda row: ip_text(cols["dst_ip"], row),
                           lambda r, g: self._describe(cols, r, int(peak[g])))

    def _describe(self, cols: Columns, r: np.ndarray, peak: int) -> Evidence:
        first, last = span(cols, r)
        victim = ip_text(cols["dst_ip"], int(r[0]))
        n_src, sources, heaviest = _top_sources(cols, r, None, self.max_sample)
        df = cols["dst_tcp_flags"][r]
        syn_acked = int(((df & TCP_SYN) != 0).sum())
        refused = int((((df & TCP_SYN) == 0) & ((df & TCP_RST) != 0)).sum())
        ports = np.unique(cols["dst_port"][r])
        spoofed = n_src >= self.spoofed_min and n_src * 2 >= r.size
        return Evidence(
            first_seen=first, last_seen=last, source_ip=heaviest, destination_ip=victim,
            destination_port=int(ports[0]) if ports.size == 1 else None, transport="tcp",
            related_ips=[victim] + [s for s in sources if s != victim], **seen_by(cols, r),
            details={"attempts": int(r.size), "peak_per_s": peak,
                     "distinct_sources": n_src, "sources": sources,
                     "spoofed_sources_likely": bool(spoofed),
                     "source_ports": int(np.unique(cols["src_port"][r]).size),
                     "syn_acked": syn_acked, "refused": refused,
                     "unanswered": int(r.size) - syn_acked - refused,
                     "ports": ports[: self.max_sample].tolist()},
            message=f"SYN flood on {victim}: {r.size} never-completed attempts from {n_src} "
                    f"source(s), peak {peak}/s" + (" (spoofed sources likely)" if spoofed else ""),
        )


class VolumetricFloodDetector(Detector):
    """One-way packets per victim and window / window_s >= min_pps."""

    name = "dos_flood"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (VOLUMETRIC_RULE,)
    inputs = (InputSpec("flow", _FLOOD_COLUMNS),)
    threshold_keys = ("min_pps",)
    partition_key = "destination"

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.min_pps = float(config["min_pps"])
        self.max_sample = int(config.get("evidence_sample", 20))

    def select(self, batch: EventBatch) -> np.ndarray:
        c = batch.columns
        return (c["dst_packets"] == 0) & (c["src_packets"] > 0) & ~GROUP_ADDRESSES.contains(
            c["dst_ip"])

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows["flow"]
        t = cols["timestamp"]
        idx = rows_in_range(t, windows)
        window_s = windows.spec.size_ns / NS_PER_S
        need = self.min_pps * window_s
        if idx.size == 0 or float(cols["src_packets"][idx].sum()) < need:
            return []
        victim = ip_codes(cols, "dst_ip", idx)
        total = np.bincount(victim, weights=cols["src_packets"][idx].astype(np.float64))
        hot_victim = total >= need  # necessary: enough packets over the whole range
        keep = hot_victim[victim]
        if not keep.any():
            return []
        hot_code = np.cumsum(hot_victim) - 1
        idx, victim = idx[keep], hot_code[victim[keep]]
        wg, _ = _window_victim_groups(windows, t, idx, victim, int(hot_code[-1]) + 1)
        start = t[wg.idx]
        dur = np.maximum(cols["end"][wg.idx] - start, 1)
        inside = np.clip((windows.spec.end(wg.k) - start) / dur, 0.0, 1.0)
        packets = np.bincount(wg.group, weights=cols["src_packets"][wg.idx] * inside,
                              minlength=wg.n_groups)
        hits = np.flatnonzero(packets >= need)
        return wg.findings(hits, windows, lambda g: self.rules[0],
                           lambda row: ip_text(cols["dst_ip"], row),
                           lambda r, g: self._describe(cols, r, packets[g] / window_s))

    def _describe(self, cols: Columns, r: np.ndarray, pps: float) -> Evidence:
        first, last = span(cols, r)
        victim = ip_text(cols["dst_ip"], int(r[0]))
        n_src, sources, heaviest = _top_sources(
            cols, r, cols["src_packets"][r].astype(np.float64), self.max_sample)
        protos = np.unique(cols["transport"][r])
        names = [TRANSPORT_NAMES.get(int(p), str(int(p))) for p in protos]
        seconds = max((last - first) / NS_PER_S, 1.0)
        mbps = float(cols["src_bytes"][r].sum()) * 8 / seconds / 1e6
        return Evidence(
            first_seen=first, last_seen=last, source_ip=heaviest, destination_ip=victim,
            transport=names[0] if len(names) == 1 else None,
            related_ips=[victim] + [s for s in sources if s != victim], **seen_by(cols, r),
            details={"flows": int(r.size), "packets": int(cols["src_packets"][r].sum()),
                     "bytes": int(cols["src_bytes"][r].sum()),
                     "estimated_pps": round(float(pps), 1),  # a numpy float breaks NDJSON
                     "mbps": round(mbps, 2), "distinct_sources": n_src, "sources": sources,
                     "transports": names},
            message=f"Flood on {victim}: ~{pps:,.0f} packets/s one-way from {n_src} source(s)",
        )
