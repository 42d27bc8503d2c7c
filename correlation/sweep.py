"""Host sweeps (ping sweeps): one source probing many addresses for live hosts.

ICMP echo sweep: echo-request flows (Zeek convention: transport 1, orig port = type 8;
ICMPv6 type 128) from one source to many distinct destination addresses, answered or not
(discovery is the act, whether hosts reply only says which are alive). ICMP flows rather
than per-message "icmp" events are counted, so one probe is counted once whichever sensor
components produced events for it.

ARP sweep: ARP who-has requests ("arp" events, operation 1, not gratuitous) from one
sender address for many distinct target addresses: what `nmap -sn` and arp-scan do on a
LAN. Replies from the targets (is-at from a target address) mark live hosts in the evidence.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from correlation.detector import (
    NS_PER_S,
    Columns,
    Evidence,
    InputSpec,
    Rule,
    ip_codes,
    ip_text,
)
from correlation.evidence_rows import HitRows, TargetEvidence
from correlation.network_common import (
    GROUP_ADDRESSES,
    DistinctTargetDetector,
    echo_request_flows,
    sample_ips,
    seen_by,
    span,
)
from pipeline.schema import EventBatch

_TACTIC = ("TA0007", "Discovery")
_TECHNIQUE = ("T1018", "Remote System Discovery")

ICMP_SWEEP_RULE = Rule(
    id="cirtsa.sweep.icmp",
    name="ICMP echo sweep",
    description="One source sent ICMP echo requests (pings) to many distinct addresses within "
                "the window: host discovery.",
    category="Network scan",
    tactic_id=_TACTIC[0], tactic_name=_TACTIC[1],
    technique_id=_TECHNIQUE[0], technique_name=_TECHNIQUE[1],
    severity=21, severity_label="low", risk_score=21.0,
)

ARP_SWEEP_RULE = Rule(
    id="cirtsa.sweep.arp",
    name="ARP sweep",
    description="One sender asked ARP who-has for many distinct target addresses within the "
                "window: LAN host discovery (nmap -sn, arp-scan).",
    category="Network scan",
    tactic_id=_TACTIC[0], tactic_name=_TACTIC[1],
    technique_id=_TECHNIQUE[0], technique_name=_TECHNIQUE[1],
    severity=21, severity_label="low", risk_score=21.0,
)

_ICMP_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "dst_packets", "observer_name",
                 "ingress_zone")
_ARP_COLUMNS = ("timestamp", "src_ip", "dst_ip", "operation", "gratuitous", "observer_name",
                "ingress_zone")


class IcmpSweepDetector(DistinctTargetDetector):
    """Echo requests to >= min_hosts distinct unicast addresses (key: source)."""

    name = "icmp_sweep"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (ICMP_SWEEP_RULE,)
    inputs = (InputSpec("flow", _ICMP_COLUMNS),)
    kind = "flow"
    threshold_key = "min_hosts"
    threshold_keys = ("min_hosts",)

    def select(self, batch: EventBatch) -> np.ndarray:
        c = batch.columns
        return echo_request_flows(c) & ~GROUP_ADDRESSES.contains(c["dst_ip"])

    def _key_and_target(self, cols: Columns, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        src = ip_codes(cols, "src_ip", idx)
        dst = ip_codes(cols, "dst_ip", idx)
        return src, dst

    def _key_text(self, cols: Columns, row: int) -> str:
        return ip_text(cols["src_ip"], row)

    def _evidence(self, cols: Columns, hit_rows: HitRows) -> Callable[[int], Evidence]:
        # numpy over the rows of all hits at once (see correlation.evidence_rows)
        hits = TargetEvidence(cols, hit_rows, self.max_sample)
        n_alive, alive = hit_rows.distinct(hits.host, self.max_sample,
                                           hit_rows.gather(cols, "dst_packets") > 0)

        def describe(i: int) -> Evidence:
            src = ip_text(cols["src_ip"], hits.first_row[i])
            hosts_i = hits.host_texts(hits.sample[i])
            first, last, n_hosts = hits.first[i], hits.last[i], hits.n_hosts[i]
            return Evidence(
                first_seen=first, last_seen=last, source_ip=src, transport="icmp",
                related_ips=[src] + [h for h in hosts_i if h != src],
                observers=hits.observers[i], zones=hits.zones[i],
                details={"probes": hits.probes[i], "distinct_hosts": n_hosts,
                         "hosts": hosts_i, "answering_hosts": n_alive[i],
                         "alive_hosts": hits.host_texts(alive[i])},
                message=f"{src} pinged {n_hosts} hosts ({n_alive[i]} answered) "
                        f"in {(last - first) / NS_PER_S:.1f} s",
            )
        return describe


class ArpSweepDetector(DistinctTargetDetector):
    """Who-has requests for >= min_targets distinct addresses (key: sender address)."""

    name = "arp_sweep"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (ARP_SWEEP_RULE,)
    inputs = (InputSpec("arp", _ARP_COLUMNS),)
    kind = "arp"
    threshold_key = "min_targets"
    threshold_keys = ("min_targets",)

    def select(self, batch: EventBatch) -> np.ndarray:
        c = batch.columns
        # requests, plus replies (they tell which targets are alive; never a key's target)
        return ((c["operation"] == 1) & ~c["gratuitous"]) | (c["operation"] == 2)

    def _key_and_target(self, cols: Columns, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Replies are buffered only to name live hosts: each gets a key of its own (past the
        # requesters' codes) with one constant target, so no reply key reaches a threshold.
        src = ip_codes(cols, "src_ip", idx)
        dst = ip_codes(cols, "dst_ip", idx)
        is_reply = cols["operation"][idx] == 2
        key = np.where(is_reply, src + int(src.max()) + 1, src)
        return key, np.where(is_reply, 0, dst)

    def _key_text(self, cols: Columns, row: int) -> str:
        return ip_text(cols["src_ip"], row)

    def _describe(self, cols: Columns, r: np.ndarray) -> Evidence:
        first, last = span(cols, r)
        sender = ip_text(cols["src_ip"], r[0])
        n_targets, targets = sample_ips(cols["dst_ip"][r], self.max_sample)
        # live targets: those that sent an is-at in the same time span
        times = cols["timestamp"]
        reply = (cols["operation"] == 2) & (times >= first) & (times <= last)
        alive = np.intersect1d(cols["dst_ip"][r], cols["src_ip"][reply])
        n_alive, alive_sample = sample_ips(alive, self.max_sample)
        return Evidence(
            first_seen=first, last_seen=last, source_ip=sender,
            related_ips=[sender] + [h for h in targets if h != sender], **seen_by(cols, r),
            details={"requests": int(r.size), "distinct_targets": n_targets,
                     "targets": targets, "answering_targets": n_alive,
                     "alive_targets": alive_sample},
            message=f"{sender} asked ARP who-has for {n_targets} addresses "
                    f"({n_alive} answered) in {(last - first) / NS_PER_S:.1f} s",
        )
