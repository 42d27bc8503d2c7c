"""Darknet-aware scan detection: one source touching several unused (darknet) addresses.

A darknet (network telescope) is address space that is routed to, or seen by, the sensor but
holds no hosts and offers no service. Nothing legitimate connects there, so every connection
attempt to it is unsolicited: a source that reaches `min_addresses` distinct darknet addresses
is scanning, however slowly and on whatever ports (Zeek's bro-simple-scan alerts on an
address scan after fewer hosts when they are in `Site::darknet_address_space`; national
CIRTs run telescopes for exactly this). The ordinary horizontal-scan rule needs 5 hosts on
one port within an hour; a patient scanner spreading 10 probes over 3 ports and 4 hours
stays below it, but not below this rule.

Counted: attempts by the originator, not replies. TCP flows whose originator sent SYN
without ACK, or a stealth probe (neither SYN, ACK nor RST); UDP flows not sent from a
service port (a DNS/NTP reply reaching the darknet is backscatter of a reflection attack:
the backscatter rules' business); ICMP/ICMPv6 echo requests. Answered or not does not
matter (a telescope may run a responder).

The darknet list is configuration (`darknets`, CIDRs), empty by default: the detector is
enabled but selects nothing until a deployment lists its unused prefixes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from correlation.detector import (
    IANA_TCP,
    NS_PER_S,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    Columns,
    Evidence,
    InputSpec,
    Rule,
    ip_codes,
)
from correlation.network_common import (
    IANA_UDP,
    DistinctTargetDetector,
    Networks,
    echo_request_flows,
    in_ports,
    one_ip,
    sample_ips,
    seen_by,
    span,
)
from pipeline.schema import TRANSPORT_NAMES, EventBatch

DARKNET_RULE = Rule(
    id="cirtsa.scan.darknet",
    name="Darknet address scan",
    description="One source sent unsolicited connection attempts to several distinct unused "
                "(darknet) addresses within the window.",
    category="Network scan",
    tactic_id="TA0007", tactic_name="Discovery",
    technique_id="T1046", technique_name="Network Service Discovery",
    severity=21, severity_label="low", risk_score=21.0,
)

_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "dst_port", "transport",
            "observer_name", "ingress_zone")


def attempt_mask(c: Columns, service_ports: np.ndarray) -> np.ndarray:
    """Flows that are an originator's unsolicited attempt (TCP SYN / stealth probe, UDP not
    from a service port, ICMP echo request), never a reply or backscatter."""
    sf = c["src_tcp_flags"]
    tcp_attempt = (c["transport"] == IANA_TCP) & (
        (((sf & TCP_SYN) != 0) & ((sf & TCP_ACK) == 0))
        | ((sf & (TCP_SYN | TCP_ACK | TCP_RST)) == 0))
    udp_attempt = (c["transport"] == IANA_UDP) & ~in_ports(c["src_port"], service_ports)
    return (c["src_packets"] > 0) & (tcp_attempt | udp_attempt | echo_request_flows(c))


class DarknetScanDetector(DistinctTargetDetector):
    """Attempts to >= min_addresses distinct darknet addresses per source (key: source)."""

    name = "darknet_scan"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (DARKNET_RULE,)
    inputs = (InputSpec("flow", _COLUMNS),)
    kind = "flow"
    threshold_key = "min_addresses"
    threshold_keys = ("min_addresses", "darknets", "service_source_ports")

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.darknets = Networks.of([str(n) for n in (config.get("darknets") or [])])
        self.has_darknets = bool(config.get("darknets"))
        self.service_ports = np.asarray(
            sorted({int(p) for p in config["service_source_ports"]}), dtype=np.uint16)

    def select(self, batch: EventBatch) -> np.ndarray:
        c = batch.columns
        if not self.has_darknets:  # nothing configured: buffer nothing
            return np.zeros(len(batch), bool)
        return self.darknets.contains(c["dst_ip"]) & attempt_mask(c, self.service_ports)

    def _key_and_target(self, cols: Columns, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ip_codes(cols, "src_ip", idx), ip_codes(cols, "dst_ip", idx)

    def _key_text(self, cols: Columns, row: int) -> str:
        return one_ip(cols["src_ip"], row)

    def _describe(self, cols: Columns, r: np.ndarray) -> Evidence:
        first, last = span(cols, r)
        src = one_ip(cols["src_ip"], r[0])
        n_addr, addresses = sample_ips(cols["dst_ip"][r], self.max_sample)
        ports = np.unique(cols["dst_port"][r])
        protos = [TRANSPORT_NAMES.get(int(p), str(int(p)))
                  for p in np.unique(cols["transport"][r])]
        return Evidence(
            first_seen=first, last_seen=last, source_ip=src,
            destination_port=int(ports[0]) if ports.size == 1 else None,
            transport=protos[0] if len(protos) == 1 else None,
            related_ips=[src] + [a for a in addresses if a != src], **seen_by(cols, r),
            details={"attempts": int(r.size), "distinct_addresses": n_addr,
                     "addresses": addresses, "distinct_ports": int(ports.size),
                     "ports": ports[: self.max_sample].tolist(), "transports": protos},
            message=f"{src} probed {n_addr} darknet addresses on {ports.size} port(s) "
                    f"in {(last - first) / NS_PER_S / 60:.0f} min",
        )
