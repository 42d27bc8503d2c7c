"""ARP spoofing (ARP cache poisoning) from "arp" events.

An attacker in the middle (arpspoof, ettercap, bettercap) answers or announces the victim's
or the gateway's IP address with its own MAC. What the wire shows:
  cirtsa.arp.ip_conflict      one sender IP claimed by >= min_macs distinct sender MACs in
                              the window (arpwatch's "flip flop"); key: the IP
  cirtsa.arp.gateway_spoof    a configured gateway IP claimed by a MAC other than its
                              configured one (or, when none is configured, by >= 2 MACs);
                              key: the gateway IP
  cirtsa.arp.gratuitous_storm one sender MAC sent >= min_gratuitous gratuitous ARPs
                              (sender IP == target IP) in the window; key: the MAC
ARP probes (sender IP 0.0.0.0, RFC 5227) claim nothing and are ignored. An ARP scan (one
host asking for many addresses) is not spoofing: that is the sweep detector's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import numpy as np

from correlation.arrival_memo import rows_in_range
from correlation.detector import (
    Columns,
    Detector,
    Evidence,
    Finding,
    Groups,
    InputSpec,
    Rule,
    WindowRange,
    combine_codes,
    distinct_per_group,
    factorize_ip,
    ip_codes,
    sorted_unique_text,
)
from pipeline.jit import njit
from pipeline.schema import EventBatch, mac_text
from sensors.packets import IP_DTYPE, ip_column_to_str, ip_to_bytes16

_ATTACK = dict(tactic_id="TA0006", tactic_name="Credential Access",
               technique_id="T1557.002",
               technique_name="Adversary-in-the-Middle: ARP Cache Poisoning")

CONFLICT_RULE = Rule(
    id="cirtsa.arp.ip_conflict", name="ARP spoofing: one IP claimed by several MACs",
    description="ARP packets from several hardware addresses claimed the same IP address "
                "within the window (ARP cache poisoning or an address conflict).",
    category="Adversary in the middle", severity=47, severity_label="medium",
    risk_score=47.0, **_ATTACK)
GATEWAY_RULE = Rule(
    id="cirtsa.arp.gateway_spoof", name="ARP spoofing of a gateway",
    description="A gateway's IP address was claimed by a hardware address other than the "
                "gateway's own.",
    category="Adversary in the middle", severity=73, severity_label="high",
    risk_score=73.0, **_ATTACK)
STORM_RULE = Rule(
    id="cirtsa.arp.gratuitous_storm", name="Gratuitous ARP storm",
    description="One hardware address sent many gratuitous ARP announcements within the "
                "window.",
    category="Adversary in the middle", severity=47, severity_label="medium",
    risk_score=47.0, **_ATTACK)

_COLUMNS = ("timestamp", "src_ip", "dst_ip", "operation", "src_mac", "eth_src_mac",
            "gratuitous", "observer_name", "ingress_zone", "vlan")
_ZERO_V4 = np.frombuffer(ip_to_bytes16("0.0.0.0"), dtype="V16")[0]


def _mac_value(text: str) -> int:
    return int(text.replace(":", "").replace("-", "").replace(".", ""), 16)


class ArpSpoofDetector(Detector):
    """IP conflicts, gateway spoofing and gratuitous storms per window (module doc)."""

    name = "arp_spoof"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (CONFLICT_RULE, GATEWAY_RULE, STORM_RULE)
    inputs = (InputSpec("arp", _COLUMNS),)
    threshold_keys = ("min_macs", "min_gratuitous")

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.min_macs = int(config["min_macs"])
        if self.min_macs < 2:  # one MAC per IP is normal ARP, not a conflict
            raise ValueError(f"arp_spoof: min_macs must be >= 2 (distinct MACs claiming one "
                             f"IP), got {self.min_macs}")
        self.min_gratuitous = int(config["min_gratuitous"])
        self.gateways: dict[bytes, int | None] = {}
        for gw in config.get("gateways") or []:
            entry = {"ip": gw} if isinstance(gw, str) else dict(gw)
            mac = entry.get("mac")
            self.gateways[ip_to_bytes16(str(entry["ip"]))] = _mac_value(mac) if mac else None
        self.max_sample = int(config.get("evidence_sample", 10))
        # the configured gateways as (n, 2) native address words (the fast exit's test)
        self._gateway_words = np.frombuffer(b"".join(self.gateways) or b"", np.uint64
                                            ).reshape(-1, 2).copy()

    def select(self, batch: EventBatch) -> np.ndarray:
        c = batch.columns
        return (c["src_ip"] != _ZERO_V4) & (c["src_mac"] != 0)

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows["arp"]
        t = cols["timestamp"]
        idx = rows_in_range(t, windows)
        if idx.size == 0 or self._quiet(cols, idx):
            return []
        # factorize_ip's codes, from the engine's interned address ids when it has them
        ip_code = ip_codes(cols, "src_ip", idx)
        n_ips = int(ip_code.max()) + 1
        ips = np.empty(n_ips, IP_DTYPE)
        ips[ip_code] = cols["src_ip"][idx]  # (rows of one code share its address)
        mac = cols["src_mac"][idx].astype(np.int64)
        mac_code = _dense(mac)
        gw_codes = {}  # code of each configured gateway present -> its expected MAC
        for b, expected in self.gateways.items():  # (a few gateways, not every address)
            hit = np.flatnonzero(ips == np.frombuffer(b, IP_DTYPE)[0])
            if hit.size:
                gw_codes[int(hit[0])] = expected
        # An IP claimed by fewer than two MACs over the whole range has fewer in every
        # window: unless it is a gateway it cannot be a finding, and its rows (nearly all
        # rows) are not replicated into windows.
        reach = distinct_per_group(ip_code, n_ips, mac_code) >= min(self.min_macs, 2)
        reach[list(gw_codes)] = True
        sel = np.flatnonzero(reach[ip_code])
        copy_rows, k = windows.assign(t[idx[sel]])
        copy_rows = sel[copy_rows]
        group, n_groups = combine_codes(k, ip_code[copy_rows])
        macs = distinct_per_group(group, n_groups, mac_code[copy_rows])
        groups = Groups.of(group, n_groups)
        group_ip = np.full(n_groups, -1, np.int64)
        group_ip[group] = ip_code[copy_rows]
        candidates = (macs >= min(self.min_macs, 2)) | np.isin(group_ip, list(gw_codes))
        findings = []
        for g in np.flatnonzero(candidates).tolist():  # one iteration per (window, IP) hit
            members = groups.rows(g)
            code = int(ip_code[copy_rows[members[0]]])
            r = np.sort(idx[copy_rows[members]])  # arrival order (evidence orders by time)
            rule = None
            if code in gw_codes:
                expected = gw_codes[code]
                seen = set(cols["src_mac"][r].tolist())
                if (expected is not None and seen - {expected}) or (
                        expected is None and len(seen) >= 2):
                    rule = GATEWAY_RULE
            if rule is None and macs[g] >= self.min_macs:
                rule = CONFLICT_RULE
            if rule is None:
                continue
            w = int(k[members[0]])
            ip = ip_column_to_str(ips[code:code + 1])[0]
            findings.append(Finding(
                rule=rule, key=ip, window_start=int(windows.spec.start(w)),
                window_end=int(windows.spec.end(w)),
                describe=partial(self._describe_conflict, cols, r, ip, gw_codes.get(code))))
        # gratuitous storms per sender MAC
        grat = np.flatnonzero(cols["gratuitous"][idx])
        if grat.size:
            mac_code = _dense(mac[grat])
            copy_rows, k = windows.assign(t[idx[grat]])
            group, n_groups = combine_codes(k, mac_code[copy_rows])
            counts = np.bincount(group, minlength=n_groups)
            groups = Groups.of(group, n_groups)
            for g in np.flatnonzero(counts >= self.min_gratuitous).tolist():
                members = groups.rows(g)
                r = idx[grat[copy_rows[members]]]
                w = int(k[members[0]])
                findings.append(Finding(
                    rule=STORM_RULE, key=mac_text(int(cols["src_mac"][r[0]])),
                    window_start=int(windows.spec.start(w)), window_end=int(windows.spec.end(w)),
                    describe=partial(self._describe_storm, cols, r)))
        return findings

    def _quiet(self, cols: Columns, idx: np.ndarray) -> bool:
        """True when no window of the range can hold a finding, by necessary conditions
        over the whole range (one compiled pass instead of the grouping below, which most
        closes of ordinary ARP traffic run only to find nothing): every IP claimed by one
        MAC, no configured gateway seen, no MAC with min_gratuitous gratuitous ARPs."""
        if self.min_macs < 2 or self.min_gratuitous < 1:
            return False  # every IP / every gratuitous row is a candidate: the full path
        words = np.ascontiguousarray(cols["src_ip"]).view(np.uint64).reshape(-1, 2)
        macs = np.ascontiguousarray(cols["src_mac"], np.int64)
        if _some_ip_has_two_macs(idx, words, macs, self._gateway_words):
            return False
        grat = idx[np.flatnonzero(cols["gratuitous"][idx])]
        if grat.size < self.min_gratuitous:
            return True
        return int(np.unique(macs[grat], return_counts=True)[1].max()) < self.min_gratuitous

    def _describe_conflict(self, cols: Columns, r: np.ndarray, ip: str,
                           expected: int | None) -> Evidence:
        times = cols["timestamp"][r]
        order = np.argsort(times, kind="stable")
        macs_in_order = []
        for m in cols["src_mac"][r][order].tolist():
            if m not in macs_in_order:
                macs_in_order.append(m)
        claims = {mac_text(m): int((cols["src_mac"][r] == m).sum()) for m in macs_in_order}
        spoofers = [m for m in macs_in_order if expected is None or m != expected]
        attacker_mac = spoofers[-1] if expected is None else spoofers[0]
        # The IP the attacker's MAC uses for itself, when it also talks ARP under its own IP.
        details = {"ip": ip, "macs": list(claims), "claims": claims,
                   "replies": int((cols["operation"][r] == 2).sum()),
                   "gratuitous": int(cols["gratuitous"][r].sum())}
        if expected is not None:
            details["expected_mac"] = mac_text(expected)
        victims = ip_column_to_str(np.unique(cols["dst_ip"][r])[: self.max_sample])
        first_seen, last_seen = int(times.min()), int(times.max())
        return Evidence(
            first_seen=first_seen, last_seen=last_seen, source_ip=ip,
            related_ips=sorted({ip, *[v for v in victims if v != "0.0.0.0"]}),
            observers=sorted_unique_text(cols["observer_name"][r]),
            zones=sorted_unique_text(cols["ingress_zone"][r]), details=details,
            ecs={"source": {"mac": mac_text(attacker_mac)}},
            message=f"{ip} was claimed by {len(claims)} MACs ({', '.join(claims)})"
                    + (f"; gateway MAC is {mac_text(expected)}" if expected is not None else ""))

    def _describe_storm(self, cols: Columns, r: np.ndarray) -> Evidence:
        times = cols["timestamp"][r]
        mac = mac_text(int(cols["src_mac"][r[0]]))
        _, ips = factorize_ip(cols["src_ip"][r])
        announced = ip_column_to_str(ips[: self.max_sample])
        span = (int(times.max()) - int(times.min())) / 1e9
        return Evidence(
            first_seen=int(times.min()), last_seen=int(times.max()), source_ip=announced[0],
            related_ips=announced, observers=sorted_unique_text(cols["observer_name"][r]),
            zones=sorted_unique_text(cols["ingress_zone"][r]),
            details={"mac": mac, "gratuitous": int(r.size), "announced_ips": announced},
            ecs={"source": {"mac": mac}},
            message=f"{mac} sent {r.size} gratuitous ARPs for {', '.join(announced[:3])} "
                    f"in {span:.1f} s")


@njit
def _some_ip_has_two_macs(idx: np.ndarray, words: np.ndarray, macs: np.ndarray,
                          gateways: np.ndarray) -> bool:
    """Whether some address among rows idx is claimed by two different MACs or is one of
    the gateways: an open-addressing table of address -> first MAC."""
    n = idx.shape[0]
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    slot_row = np.full(1 << bits, -1, np.int64)
    for i in range(n):
        r = idx[i]
        hi, lo = words[r, 0], words[r, 1]
        for g in range(gateways.shape[0]):
            if gateways[g, 0] == hi and gateways[g, 1] == lo:
                return True
        s = np.int64((((hi * np.uint64(0x9E3779B97F4A7C15)) ^ lo)
                      * np.uint64(0xC2B2AE3D27D4EB4F)) >> shift) & mask
        while True:
            f = slot_row[s]
            if f < 0:
                slot_row[s] = r
                break
            if words[f, 0] == hi and words[f, 1] == lo:
                if macs[f] != macs[r]:
                    return True
                break
            s = (s + 1) & mask
    return False


def _dense(values: np.ndarray) -> np.ndarray:
    """np.unique's inverse (ranks among the distinct values), without its object sort."""
    return combine_codes(values)[0]
