"""UDP port scans: one source sending unanswered UDP datagrams to many ports or hosts.

A UDP probe to a closed port is answered by ICMP port-unreachable (a separate ICMP flow) or
not at all; to an open port by the service, if the probe made sense to it. So, as Zeek
counts S0 UDP connections, a probe is a UDP flow in which the originator sent and the
responder sent nothing back. Excluded because they are not probes: datagrams to multicast
or broadcast addresses, flows whose *source* port is a well-known service port (DNS, NTP,
mDNS, LLMNR, SSDP, NetBIOS, DHCP, IKE ... replies and announcements to a client's ephemeral
ports look like many ports of one host), and traceroute's UDP port range.

Vertical: distinct destination ports of one host (key: source, destination).
Horizontal: distinct hosts on one destination port (key: source, port).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import numpy as np

from correlation.detector import (
    NS_PER_S,
    Columns,
    Evidence,
    InputSpec,
    Rule,
    combine_codes,
    ip_codes,
    take,
)
from correlation.evidence_rows import HitRows, TargetEvidence, ip_column_texts, sorted_pair
from correlation.network_common import (
    GROUP_ADDRESSES,
    IANA_UDP,
    DistinctTargetDetector,
    in_ports,
)
from pipeline.schema import EventBatch

_TACTIC = ("TA0007", "Discovery")
_TECHNIQUE = ("T1046", "Network Service Discovery")

UDP_VERTICAL_RULE = Rule(
    id="cirtsa.scan.udp_vertical",
    name="Vertical UDP port scan",
    description="One source sent unanswered UDP datagrams to many distinct ports of one host "
                "within the window.",
    category="Network scan",
    tactic_id=_TACTIC[0], tactic_name=_TACTIC[1],
    technique_id=_TECHNIQUE[0], technique_name=_TECHNIQUE[1],
    severity=21, severity_label="low", risk_score=21.0,
)

UDP_HORIZONTAL_RULE = Rule(
    id="cirtsa.scan.udp_horizontal",
    name="Horizontal UDP port scan",
    description="One source sent unanswered UDP datagrams to one port on many distinct hosts "
                "within the window.",
    category="Network scan",
    tactic_id=_TACTIC[0], tactic_name=_TACTIC[1],
    technique_id=_TECHNIQUE[0], technique_name=_TECHNIQUE[1],
    severity=21, severity_label="low", risk_score=21.0,
)

_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "dst_port", "observer_name",
            "ingress_zone")


class _UdpScanDetector(DistinctTargetDetector):
    inputs = (InputSpec("flow", _COLUMNS),)
    kind = "flow"

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.service_ports = np.asarray(sorted({int(p) for p in config["service_source_ports"]}),
                                        dtype=np.uint16)
        lo, hi = (int(p) for p in config.get("ignore_dst_port_range", (0, -1)))
        self.ignore_lo, self.ignore_hi = lo, hi

    def select(self, batch: EventBatch) -> np.ndarray:
        c = batch.columns
        dport = c["dst_port"]
        return ((c["transport"] == IANA_UDP) & (c["src_packets"] > 0) & (c["dst_packets"] == 0)
                & ~in_ports(c["src_port"], self.service_ports)
                & ~((dport >= self.ignore_lo) & (dport <= self.ignore_hi))
                & ~GROUP_ADDRESSES.contains(c["dst_ip"]))

    def select_key(self, kind: str) -> Hashable:
        # vertical and horizontal select the same rows when their settings agree
        return ("unanswered_udp", kind, self.service_ports.tobytes(), self.ignore_lo,
                self.ignore_hi)


class UdpVerticalScanDetector(_UdpScanDetector):
    """Unanswered UDP to >= vertical_ports distinct ports of one host."""

    name = "udp_scan_vertical"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (UDP_VERTICAL_RULE,)
    threshold_key = "vertical_ports"
    threshold_keys = ("vertical_ports", "service_source_ports")

    def _key_and_target(self, cols: Columns, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        src = ip_codes(cols, "src_ip", idx)
        dst = ip_codes(cols, "dst_ip", idx)
        key, _ = combine_codes(src, dst)
        return key, cols["dst_port"][idx].astype(np.int64)

    def _key_texts(self, cols: Columns, rows: np.ndarray) -> list[str]:
        # every hit's key at once, its addresses read at those rows only (as port_scan's:
        # cols[name] would gather the engine's whole 16-byte column for a few rows)
        sources = ip_column_texts(take(cols, "src_ip", rows))
        targets = ip_column_texts(take(cols, "dst_ip", rows))
        return [f"{s}|{d}" for s, d in zip(sources, targets, strict=True)]

    def _evidence(self, cols: Columns, hit_rows: HitRows) -> Callable[[int], Evidence]:
        # numpy over the rows of all hits at once (see correlation.evidence_rows)
        first, last = hit_rows.time_span(hit_rows.gather(cols, "timestamp"),
                                         hit_rows.gather(cols, "end"))
        n_ports, ports = hit_rows.distinct(hit_rows.gather(cols, "dst_port"), self.max_sample)
        probes = np.diff(hit_rows.bounds).tolist()
        observers = hit_rows.names_in(cols, "observer_name")
        zones = hit_rows.names_in(cols, "ingress_zone")
        r0 = hit_rows.rows[hit_rows.bounds[:-1]]  # the key's addresses: those of any row
        sources = ip_column_texts(take(cols, "src_ip", r0))
        targets = ip_column_texts(take(cols, "dst_ip", r0))

        def describe(i: int) -> Evidence:
            src, dst = sources[i], targets[i]
            return Evidence(
                first_seen=first[i], last_seen=last[i], source_ip=src, destination_ip=dst,
                transport="udp", related_ips=sorted_pair(src, dst),
                observers=observers[i], zones=zones[i],
                details={"probes": probes[i], "distinct_ports": n_ports[i],
                         "ports": ports[i]},
                message=f"{src} probed {n_ports[i]} UDP ports on {dst} without answer "
                        f"in {(last[i] - first[i]) / NS_PER_S:.1f} s",
            )
        return describe


class UdpHorizontalScanDetector(_UdpScanDetector):
    """Unanswered UDP to one port on >= horizontal_hosts distinct hosts."""

    name = "udp_scan_horizontal"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (UDP_HORIZONTAL_RULE,)
    threshold_key = "horizontal_hosts"
    threshold_keys = ("horizontal_hosts", "service_source_ports")

    def _key_and_target(self, cols: Columns, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        src = ip_codes(cols, "src_ip", idx)
        dst = ip_codes(cols, "dst_ip", idx)
        key, _ = combine_codes(src, cols["dst_port"][idx].astype(np.int64))
        return key, dst

    def _key_texts(self, cols: Columns, rows: np.ndarray) -> list[str]:
        # (see the vertical scan's)
        sources = ip_column_texts(take(cols, "src_ip", rows))
        ports = take(cols, "dst_port", rows).tolist()
        return [f"{s}|udp/{p}" for s, p in zip(sources, ports, strict=True)]

    def _evidence(self, cols: Columns, hit_rows: HitRows) -> Callable[[int], Evidence]:
        hits = TargetEvidence(cols, hit_rows, self.max_sample)
        sources = hits.first_texts(cols, "src_ip")
        ports = take(cols, "dst_port", hit_rows.rows[hit_rows.bounds[:-1]]).tolist()

        def describe(i: int) -> Evidence:
            src = sources[i]
            port = ports[i]
            hosts_i = hits.host_texts(hits.sample[i])
            first, last, n_hosts = hits.first[i], hits.last[i], hits.n_hosts[i]
            return Evidence(
                first_seen=first, last_seen=last, source_ip=src, destination_port=port,
                transport="udp", related_ips=[src] + [h for h in hosts_i if h != src],
                observers=hits.observers[i], zones=hits.zones[i],
                details={"probes": hits.probes[i], "distinct_hosts": n_hosts,
                         "hosts": hosts_i},
                message=f"{src} probed {n_hosts} hosts on {port}/udp without answer "
                        f"in {(last - first) / NS_PER_S:.1f} s",
            )
        return describe
