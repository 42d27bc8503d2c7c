"""Brute-force detection: many short authentication sessions from one source to one service.

A password-guessing tool opens session after session to an authentication service, each
ending after a handful of failed tries. On flows that shows as many TCP sessions from one
source to one (destination, port) of a login service that completed the handshake,
exchanged a login-sized payload and ended quickly (Zeek's SSH::Password_Guessing counts 10
failed logins by one source; here the flow shape stands in for the outcome).

Evidence comes from `EvidenceSource`s, one per consumed event kind: each selects the rows
that are attempts, maps them to common columns and has its own threshold. Today only flows
feed it; a "login failed" event kind becomes one more source (count failed logins against
`min_failed_logins`) without touching the grouping code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np

from correlation.arrival_memo import rows_in_range
from correlation.detector import (
    IANA_TCP,
    NS_PER_S,
    TCP_ACK,
    TCP_SYN,
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
    ip_text,
)
from correlation.evidence_rows import row_lists, time_span, unique_texts
from correlation.network_common import in_ports
from correlation.prefilter import pair_candidates
from pipeline.schema import EventBatch

SESSIONS_RULE = Rule(
    id="cirtsa.brute_force.sessions",
    name="Brute force: many short authentication sessions",
    description="One source opened many short, login-sized TCP sessions to one authentication "
                "service (SSH, FTP, Telnet, RDP, SMB, mail, LDAP, databases) within the window.",
    category="Credential access",
    tactic_id="TA0006", tactic_name="Credential Access",
    technique_id="T1110", technique_name="Brute Force",
    severity=47, severity_label="medium", risk_score=47.0,
)

SERVICE_NAMES = {21: "ftp", 22: "ssh", 23: "telnet", 25: "smtp", 110: "pop3", 143: "imap",
                 389: "ldap", 445: "smb", 465: "smtps", 587: "submission", 636: "ldaps",
                 993: "imaps", 995: "pop3s", 1433: "mssql", 1521: "oracle", 3306: "mysql",
                 3389: "rdp", 5432: "postgresql", 5900: "vnc", 5985: "winrm", 5986: "winrm"}

# Common columns every evidence source maps its rows to.
_COMMON = ("timestamp", "end", "src_ip", "dst_ip", "dst_port", "unit", "observer_name",
           "ingress_zone", "client_bytes", "server_bytes")

_FLOW_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "src_port", "dst_port",
                 "src_payload_bytes", "dst_payload_bytes", "observer_name", "ingress_zone")


@dataclass(frozen=True)
class EvidenceSource:
    """One event kind feeding the detector: which rows count and how many are needed."""

    kind: str
    columns: tuple[str, ...]
    select: Callable[[EventBatch], np.ndarray]
    to_common: Callable[[Columns], dict[str, np.ndarray]]
    threshold: int
    unit: str  # what is counted, as named in the evidence ("sessions", "failed_logins")


class BruteForceDetector(Detector):
    """Distinct short sessions per (source, destination, port) and window >= min_sessions."""

    name = "brute_force"
    rules = (SESSIONS_RULE,)
    inputs = (InputSpec("flow", _FLOW_COLUMNS),)  # extended per instance by `sources`
    threshold_keys = ("ports", "min_sessions", "max_session_s", "max_client_payload_bytes",
                      "max_server_payload_bytes")

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.ports = np.asarray(sorted({int(p) for p in config["ports"]}), dtype=np.uint16)
        self.max_session_ns = int(float(config["max_session_s"]) * NS_PER_S)
        self.max_client = int(config["max_client_payload_bytes"])
        self.max_server = int(config["max_server_payload_bytes"])
        self.sources = (
            EvidenceSource("flow", _FLOW_COLUMNS, self._select_flows, _flows_to_common,
                           int(config["min_sessions"]), "sessions"),
        )
        self.inputs = tuple(InputSpec(s.kind, s.columns) for s in self.sources)

    def select(self, batch: EventBatch) -> np.ndarray:
        for source in self.sources:
            if source.kind == batch.kind:
                return source.select(batch)
        return np.zeros(len(batch), bool)

    def _select_flows(self, batch: EventBatch) -> np.ndarray:
        """Short TCP sessions to a login port that completed the handshake and talked a bit."""
        c = batch.columns
        handshake = (((c["src_tcp_flags"] & TCP_SYN) != 0)
                     & ((c["dst_tcp_flags"] & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)))
        talked = (c["src_payload_bytes"] > 0) & (c["dst_payload_bytes"] > 0)
        small = ((c["src_payload_bytes"] <= self.max_client)
                 & (c["dst_payload_bytes"] <= self.max_server))
        short = (c["end"] - c["timestamp"]) <= self.max_session_ns
        return ((c["transport"] == IANA_TCP) & handshake & talked & small & short
                & in_ports(c["dst_port"], self.ports))

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        parts = []
        for i, source in enumerate(self.sources):
            cols = rows.get(source.kind)
            if cols is None:
                continue
            idx = rows_in_range(cols["timestamp"], windows)
            # a (client, server, port) key with >= threshold distinct units has that many
            # rows, and so have its client and its server: the other rows cannot reach
            # (the reachable filter below keeps the same rows; ranks of a subset keep order)
            if "src_ip" in cols and "dst_ip" in cols:
                idx = pair_candidates(cols, idx, source.threshold)
            if idx.size:
                common = source.to_common({k: v[idx] for k, v in cols.items()})
                common["source"] = np.full(idx.size, i, np.int64)
                parts.append(common)
        if not parts:
            return []
        c = {k: np.concatenate([p[k] for p in parts]) for k in (*_COMMON, "source")}
        src, _ = factorize_ip(c["src_ip"])
        dst, _ = factorize_ip(c["dst_ip"])
        key, n_keys = combine_codes(src, dst, c["dst_port"].astype(np.int64))
        unit = c["unit"].astype(np.int64)
        # Necessary condition over the whole range, before replicating rows into windows.
        reachable = np.zeros(c["unit"].shape[0], bool)
        for i, source in enumerate(self.sources):
            mine = c["source"] == i
            counts = distinct_per_group(key[mine], n_keys, unit[mine])
            reachable |= mine & (counts[key] >= source.threshold)
        keep = np.flatnonzero(reachable)
        if keep.size == 0:
            return []
        copy_rows, k = windows.assign(c["timestamp"][keep])
        rows_w = keep[copy_rows]
        group, n_groups = combine_codes(k, key[rows_w])
        hit = np.zeros(n_groups, bool)
        for i, source in enumerate(self.sources):
            mine = c["source"][rows_w] == i
            counts = distinct_per_group(group[mine], n_groups, unit[rows_w][mine])
            hit |= counts >= source.threshold
        groups = Groups.of(group, n_groups)
        findings = []
        for g in np.flatnonzero(hit).tolist():  # one iteration per finding
            members = groups.rows(g)
            r = rows_w[members]
            window_k = int(k[members[0]])
            r0 = int(r[0])
            src, dst = ip_text(c["src_ip"], r0), ip_text(c["dst_ip"], r0)
            findings.append(Finding(
                rule=SESSIONS_RULE, key=f"{src}|{dst}|tcp/{int(c['dst_port'][r[0]])}",
                window_start=int(windows.spec.start(window_k)),
                window_end=int(windows.spec.end(window_k)),
                describe=partial(self._describe, c, r)))
        return findings

    def _describe(self, c: Columns, r: np.ndarray) -> Evidence:
        # plain Python on the finding's rows (see correlation.evidence_rows)
        ts, ends, source_of, unit, client_bytes, server_bytes, observers, zones = row_lists(
            c, r, "timestamp", "end", "source", "unit", "client_bytes", "server_bytes",
            "observer_name", "ingress_zone")
        r0 = int(r[0])
        src, dst = ip_text(c["src_ip"], r0), ip_text(c["dst_ip"], r0)
        port = int(c["dst_port"][r0])
        service = SERVICE_NAMES.get(port, f"tcp/{port}")
        first_seen, last_seen = time_span(ts, ends)
        duration_s = sorted((e - t) / NS_PER_S for t, e in zip(ts, ends, strict=True))
        details: dict = {"service": service, "flows": len(ts)}
        for i, source in enumerate(self.sources):
            details[source.unit] = len({u for u, s in zip(unit, source_of, strict=True)
                                        if s == i})
        details.update({
            "client_payload_bytes": sum(client_bytes),
            "server_payload_bytes": sum(server_bytes),
            "max_session_s": round(duration_s[-1], 3),
            "median_session_s": round(_median(duration_s), 3),
        })
        counted = details.get("sessions", details["flows"])
        return Evidence(
            first_seen=first_seen, last_seen=last_seen,
            source_ip=src, destination_ip=dst, destination_port=port, transport="tcp",
            related_ips=sorted({src, dst}),
            observers=unique_texts(observers), zones=unique_texts(zones),
            details=details,
            message=f"{src} opened {counted} short {service} sessions to {dst}:{port} "
                    f"in {(last_seen - first_seen) / NS_PER_S:.1f} s",
        )


def _median(ordered: list[float]) -> float:
    """np.median of sorted values (the mean of the middle two of an even count)."""
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def _flows_to_common(cols: Columns) -> dict[str, np.ndarray]:
    # A session is counted once per client port: the same session reported by two sensors
    # (or split by the flow table) does not count twice.
    return {
        "timestamp": cols["timestamp"], "end": cols["end"], "src_ip": cols["src_ip"],
        "dst_ip": cols["dst_ip"], "dst_port": cols["dst_port"],
        "unit": cols["src_port"].astype(np.int64),
        "observer_name": cols["observer_name"], "ingress_zone": cols["ingress_zone"],
        "client_bytes": cols["src_payload_bytes"].astype(np.int64),
        "server_bytes": cols["dst_payload_bytes"].astype(np.int64),
    }
