"""The event schema: every event kind, its numpy columns, and their ECS field names.

Stages exchange `EventBatch`es: one kind per batch, one numpy column per field, all columns
the same length. This module is the single definition of what each kind carries; it is
documented in docs/schema.md and enforced at stage boundaries by `validate_batch`.

Column conventions:
- times are int64 nanoseconds since the Unix epoch (event time, from the packet);
- addresses are 16-byte columns (sensors.packets.IP_DTYPE; IPv4 as IPv4-mapped IPv6);
- text and nested values (DNS answers) are object columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

import numpy as np

from sensors.packets import IP_DTYPE, ip_column_to_str

SCHEMA_VERSION = 1
ECS_VERSION = "8.17.0"

OBJ = np.dtype(object)


@dataclass(frozen=True)
class Field:
    column: str
    dtype: np.dtype
    ecs: str  # dotted ECS path (or cirtsa.* for fields ECS does not define)
    doc: str
    to_ecs: Callable | None = None  # column value -> ECS value (after IP/time conversion)
    omit_empty: bool = False  # leave the ECS field out when the value is 0 / "" / empty
    # Added after schema version 1 shipped: a batch without the column still validates, and
    # EventBatch fills it with empty values (`fill`) so every stage and the wire format see it.
    optional: bool = False
    fill: object = ""


@dataclass(frozen=True)
class EventKind:
    name: str
    fields: tuple[Field, ...]
    event_category: tuple[str, ...]
    event_type: tuple[str, ...]
    dataset: str  # event.dataset, e.g. "cirtsa.flow"
    # Kind-specific derived ECS fields: finish(doc, row), row = this event's column values
    # (addresses and times already as text).
    finish: Callable[[dict, dict], None] | None = None

    def field(self, column: str) -> Field:
        for f in self.fields:
            if f.column == column:
                return f
        raise KeyError(column)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.fields)

    @cached_property
    def optional_columns(self) -> frozenset[str]:
        return frozenset(f.column for f in self.fields if f.optional)


def _f(column: str, dtype, ecs: str, doc: str, to_ecs: Callable | None = None,
       omit_empty: bool = False, optional: bool = False, fill: object = "") -> Field:
    return Field(column, np.dtype(dtype), ecs, doc, to_ecs, omit_empty, optional, fill)


# Joins the names of flow.observer_names (sensor ids never contain it).
OBSERVER_SEPARATOR = "|"

# --- value vocabularies -----------------------------------------------------------------------

TRANSPORT_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "ipv6-icmp",
                   132: "sctp"}

DNS_TYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 13: "HINFO",
                  15: "MX", 16: "TXT", 17: "RP", 18: "AFSDB", 24: "SIG", 25: "KEY", 28: "AAAA",
                  29: "LOC", 33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS",
                  46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 52: "TLSA", 64: "SVCB",
                  65: "HTTPS", 99: "SPF", 249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR",
                  255: "ANY", 256: "URI", 257: "CAA"}
DNS_CLASS_NAMES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
DNS_RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
                   5: "REFUSED", 6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH",
                   10: "NOTZONE"}
# Header flag bits as ECS lists them in dns.header_flags.
DNS_FLAG_BITS = (("AA", 0x0400), ("TC", 0x0200), ("RD", 0x0100), ("RA", 0x0080),
                 ("AD", 0x0020), ("CD", 0x0010))
ARP_OPERATIONS = {1: "request", 2: "reply"}
# login/ssh outcome column values (int8) -> ECS event.outcome
OUTCOMES = {-1: "unknown", 0: "failure", 1: "success"}


def dns_type_name(number: int) -> str:
    return DNS_TYPE_NAMES.get(number, f"TYPE{number}")


def mac_text(value: int) -> str:
    """48-bit MAC in a uint64 -> ECS notation (RFC 7042: upper-case hex, hyphens)."""
    raw = int(value).to_bytes(8, "big")[2:]
    return "-".join(f"{b:02X}" for b in raw)


# --- kinds -------------------------------------------------------------------------------------

# Fields every event kind carries.
COMMON = (
    _f("timestamp", np.int64, "@timestamp", "event time (first packet), ns since epoch"),
    _f("observer_name", OBJ, "observer.name", "sensor id"),
    _f("ingress_zone", OBJ, "observer.ingress.zone", "segment/zone label of the sensor"),
)

# Address fields of IP-based kinds. ECS types network.iana_number and vlan.id as keywords.
ADDRESSES = (
    _f("src_ip", IP_DTYPE, "source.ip", "originator address"),
    _f("dst_ip", IP_DTYPE, "destination.ip", "responder address"),
)
ENDPOINTS = ADDRESSES + (
    _f("src_port", np.uint16, "source.port", "originator port (ICMP: type)"),
    _f("dst_port", np.uint16, "destination.port", "responder port (ICMP: code)"),
    _f("transport", np.uint8, "network.iana_number", "IANA protocol number", to_ecs=str),
    _f("vlan", np.uint16, "network.vlan.id", "802.1Q VLAN id, 0 when untagged", to_ecs=str,
       omit_empty=True),
    _f("community_id", OBJ, "network.community_id", "Community ID v1 flow hash",
       omit_empty=True),
)


def _finish_ip(doc: dict, row: dict) -> None:
    """network.transport and related.ip for kinds with ENDPOINTS."""
    if "transport" in row:
        t = row["transport"]
        doc.setdefault("network", {})["transport"] = TRANSPORT_NAMES.get(t, str(t))
    ips = {row[c] for c in ("src_ip", "dst_ip") if c in row}
    doc["related"] = {"ip": sorted(ips)}


def _finish_flow(doc: dict, row: dict) -> None:
    _finish_ip(doc, row)
    doc["event"]["start"] = doc["@timestamp"]
    doc["event"]["duration"] = int(row["_end_ns"] - row["_timestamp_ns"])
    src, dst = doc["source"], doc["destination"]
    doc["network"]["packets"] = int(src["packets"] + dst["packets"])
    doc["network"]["bytes"] = int(src["bytes"] + dst["bytes"])
    doc["event"]["action"] = "network_flow"


FLOW = EventKind(
    name="flow",
    fields=COMMON
    + ENDPOINTS
    + (
        _f("end", np.int64, "event.end", "last packet time, ns since epoch"),
        _f("src_packets", np.uint64, "source.packets", "packets originator -> responder"),
        _f("dst_packets", np.uint64, "destination.packets", "packets responder -> originator"),
        _f("src_bytes", np.uint64, "source.bytes", "frame bytes originator -> responder"),
        _f("dst_bytes", np.uint64, "destination.bytes", "frame bytes responder -> originator"),
        _f("src_payload_bytes", np.uint64, "cirtsa.flow.src_payload_bytes",
           "L4 payload bytes originator -> responder"),
        _f("dst_payload_bytes", np.uint64, "cirtsa.flow.dst_payload_bytes",
           "L4 payload bytes responder -> originator"),
        _f("src_tcp_flags", np.uint8, "cirtsa.flow.src_tcp_flags",
           "OR of TCP flags sent by the originator"),
        _f("dst_tcp_flags", np.uint8, "cirtsa.flow.dst_tcp_flags",
           "OR of TCP flags sent by the responder"),
        _f("conn_state", OBJ, "cirtsa.flow.conn_state",
           "Zeek-style connection state (S0, S1, SF, REJ, RSTO, RSTR, SH, OTH, ...)"),
        _f("end_reason", OBJ, "cirtsa.flow.end_reason",
           "why the flow record was emitted: fin, rst, idle, active, eof, evicted"),
        # Optional (added in place, schema version 1): filled by fusion's de-duplication.
        _f("observer_names", OBJ, "cirtsa.observers.name",
           "every sensor that reported this flow, '|'-joined, the kept report's observer "
           "first; empty when one sensor did (fusion de-duplication)",
           to_ecs=lambda v: v.split(OBSERVER_SEPARATOR), omit_empty=True, optional=True),
        # Optional (added in place, schema version 1): tunnelled flows (sensors/decode.py).
        _f("tunnel_type", OBJ, "cirtsa.tunnel.type",
           "outermost tunnel the flow came out of (ipip, gre, erspan, vxlan, geneve, gtpu); "
           "empty when not tunnelled", omit_empty=True, optional=True),
        _f("tunnel_id", np.uint64, "cirtsa.tunnel.id",
           "its segment: VXLAN/Geneve VNI, GRE key, ERSPAN session id (0: none; tunnels in "
           "tunnels: a 56-bit digest of every level); part of the flow key",
           omit_empty=True, optional=True, fill=0),
    ),
    event_category=("network",),
    event_type=("connection", "end"),
    dataset="cirtsa.flow",
    finish=_finish_flow,
)


def _finish_dns(doc: dict, row: dict) -> None:
    _finish_ip(doc, row)
    doc["network"]["protocol"] = "dns"
    dns = doc["dns"]
    if not row["is_response"]:
        dns.pop("response_code", None)  # a query has no response code
    answers = dns.get("answers") or []
    resolved = [a["data"] for a in answers if a["type"] in ("A", "AAAA")]
    if resolved:
        dns["resolved_ip"] = resolved
    if not answers:
        dns.pop("answers", None)
    doc["event"]["action"] = "dns_" + dns["type"]


DNS = EventKind(
    name="dns",
    fields=COMMON
    + ENDPOINTS
    + (
        _f("dns_id", np.uint16, "dns.id", "DNS transaction id", to_ecs=str),
        _f("is_response", np.bool_, "dns.type", "False: query, True: answer",
           to_ecs=lambda v: "answer" if v else "query"),
        _f("qname", OBJ, "dns.question.name", "queried name, lower case, no trailing dot"),
        _f("qtype", np.uint16, "dns.question.type", "query type (RR type number)",
           to_ecs=dns_type_name),
        _f("qclass", np.uint16, "dns.question.class", "query class (1 = IN)",
           to_ecs=lambda v: DNS_CLASS_NAMES.get(v, f"CLASS{v}")),
        _f("rcode", np.uint8, "dns.response_code", "response code (responses only)",
           to_ecs=lambda v: DNS_RCODE_NAMES.get(v, f"RCODE{v}")),
        _f("flags", np.uint16, "dns.header_flags", "DNS header flag bits (QR..CD)",
           to_ecs=lambda v: [name for name, bit in DNS_FLAG_BITS if v & bit]),
        _f("answers", OBJ, "dns.answers",
           "list of {name, type, class, ttl, data} dicts (responses), else empty list"),
    ),
    event_category=("network",),
    event_type=("protocol", "info"),
    dataset="cirtsa.dns",
    finish=_finish_dns,
)


def _finish_with(protocol: str, action: str) -> Callable[[dict, dict], None]:
    def finish(doc: dict, row: dict) -> None:
        _finish_ip(doc, row)
        doc.setdefault("network", {})["protocol"] = protocol
        doc["event"]["action"] = action
    return finish


HTTP = EventKind(
    name="http",
    fields=COMMON
    + ENDPOINTS
    + (
        _f("method", OBJ, "http.request.method", "request method as sent (GET, POST ...)",
           omit_empty=True),
        _f("host", OBJ, "url.domain", "Host header, lower case, without port", omit_empty=True),
        _f("uri", OBJ, "url.original", "request target as sent", omit_empty=True),
        _f("version", OBJ, "http.version", "protocol version (1.0, 1.1)", omit_empty=True),
        _f("user_agent", OBJ, "user_agent.original", "User-Agent header", omit_empty=True),
        _f("referrer", OBJ, "http.request.referrer", "Referer header", omit_empty=True),
        _f("status", np.uint16, "http.response.status_code", "status code, 0: no response seen",
           omit_empty=True),
        _f("request_body_bytes", np.int64, "http.request.body.bytes",
           "request body bytes (Content-Length or counted), -1 unknown"),
        _f("response_body_bytes", np.int64, "http.response.body.bytes",
           "response body bytes (Content-Length or counted), -1 unknown"),
        _f("response_mime_type", OBJ, "http.response.mime_type", "response Content-Type",
           omit_empty=True),
        _f("basic_auth_user", OBJ, "user.name",
           "user of an Authorization: Basic header (never the password)", omit_empty=True),
    ),
    event_category=("network", "web"),
    event_type=("protocol", "access"),
    dataset="cirtsa.http",
    finish=_finish_with("http", "http_request"),
)

_finish_tls_handshake = _finish_with("tls", "tls_handshake")


def _finish_tls(doc: dict, row: dict) -> None:
    """As the other protocol kinds; a handshake read from QUIC Initials says so in
    network.protocol (its network.transport is udp)."""
    _finish_tls_handshake(doc, row)
    if row.get("quic_version"):
        doc["network"]["protocol"] = "quic"


TLS = EventKind(
    name="tls",
    fields=COMMON
    + ENDPOINTS
    + (
        _f("version", OBJ, "tls.version", "negotiated version (1.0 ... 1.3), else offered",
           omit_empty=True),
        _f("server_name", OBJ, "tls.client.server_name", "SNI, lower case", omit_empty=True),
        _f("client_alpn", OBJ, "cirtsa.tls.client.alpn", "ALPN protocols offered, list",
           omit_empty=True),
        _f("next_protocol", OBJ, "tls.next_protocol", "ALPN protocol chosen by the server",
           omit_empty=True),
        _f("cipher", OBJ, "tls.cipher", "cipher suite chosen (IANA name or 0x hex)",
           omit_empty=True),
        _f("ja3", OBJ, "tls.client.ja3", "JA3 MD5 of the ClientHello", omit_empty=True),
        _f("ja4", OBJ, "cirtsa.tls.client.ja4", "JA4 of the ClientHello", omit_empty=True),
        _f("ja3s", OBJ, "tls.server.ja3s", "JA3S MD5 of the ServerHello", omit_empty=True),
        _f("cert_sha1", OBJ, "tls.server.hash.sha1",
           "SHA1 of the server's leaf certificate (upper-case hex), when visible",
           omit_empty=True),
        _f("cert_subject", OBJ, "tls.server.subject", "leaf certificate subject DN",
           omit_empty=True),
        _f("cert_issuer", OBJ, "tls.server.issuer", "leaf certificate issuer DN",
           omit_empty=True),
        _f("established", np.bool_, "tls.established", "handshake completed"),
        # Optional (added in place, schema version 1): set on handshakes seen in QUIC
        # Initial packets (sensors/quic.py), empty for TLS over TCP.
        _f("quic_version", OBJ, "cirtsa.quic.version",
           "QUIC version of the connection (1, 2); empty: TLS over TCP", omit_empty=True,
           optional=True),
        _f("quic_client_initial_dcid", OBJ, "cirtsa.quic.client_initial_dcid",
           "QUIC: Destination Connection ID of the client's first Initial (hex)",
           omit_empty=True, optional=True),
        _f("quic_client_scid", OBJ, "cirtsa.quic.client_scid",
           "QUIC: the client's Source Connection ID (hex)", omit_empty=True, optional=True),
        _f("quic_server_scid", OBJ, "cirtsa.quic.server_scid",
           "QUIC: the server's Source Connection ID (hex)", omit_empty=True, optional=True),
        # Optional (added in place, schema version 1): batches of producers that predate them
        # read with no curve and not resumed.
        _f("curve", OBJ, "tls.curve",
           "key exchange group: the server's key_share (TLS 1.3, QUIC) or an ECDHE "
           "ServerKeyExchange's named curve; Zeek's names, else 0x hex", omit_empty=True,
           optional=True),
        _f("resumed", np.bool_, "tls.resumed",
           "session resumed (session id echoed, ticket, or TLS 1.3 PSK accepted)",
           optional=True, fill=False),
        # Optional (added in place, schema version 1): QUIC rows only (sensors/quic.py).
        _f("quic_history", OBJ, "cirtsa.quic.history",
           "QUIC: Zeek's quic.log history letters of the packets seen up to the event",
           omit_empty=True, optional=True),
    ),
    event_category=("network",),
    event_type=("protocol", "connection"),
    dataset="cirtsa.tls",
    finish=_finish_tls,
)

SSH = EventKind(
    name="ssh",
    fields=COMMON
    + ENDPOINTS
    + (
        _f("client_banner", OBJ, "cirtsa.ssh.client", "client identification string",
           omit_empty=True),
        _f("server_banner", OBJ, "cirtsa.ssh.server", "server identification string",
           omit_empty=True),
        _f("auth_attempts", np.uint16, "cirtsa.ssh.auth_attempts",
           "authentication attempts inferred from packet sizes/directions"),
        _f("auth_success", np.int8, "event.outcome",
           "inferred outcome: 1 success, 0 failure, -1 unknown",
           to_ecs=lambda v: OUTCOMES[int(v)]),
    ),
    event_category=("network", "authentication"),
    event_type=("protocol", "info"),
    dataset="cirtsa.ssh",
    finish=_finish_with("ssh", "ssh_session"),
)

LOGIN = EventKind(
    name="login",
    fields=COMMON
    + ENDPOINTS
    + (
        _f("service", OBJ, "cirtsa.login.service",
           "ftp, telnet, smtp, pop3, imap, http (basic auth) ..."),
        _f("user", OBJ, "user.name", "user name when sent in clear text (never the password)",
           omit_empty=True),
        _f("outcome", np.int8, "event.outcome", "1 success, 0 failure, -1 unknown",
           to_ecs=lambda v: OUTCOMES[int(v)]),
        _f("reply", OBJ, "cirtsa.login.reply", "server reply that decided the outcome",
           omit_empty=True),
    ),
    event_category=("authentication",),
    event_type=("start",),
    dataset="cirtsa.login",
    finish=_finish_with("login", "login_attempt"),
)


def _finish_arp(doc: dict, row: dict) -> None:
    doc["related"] = {"ip": sorted({row["src_ip"], row["dst_ip"]})}
    doc["network"] = {"type": "arp"} | ({"vlan": doc["network"]["vlan"]}
                                        if "vlan" in doc.get("network", {}) else {})
    doc["event"]["action"] = "arp_" + doc["cirtsa"]["arp"]["operation"]


ARP = EventKind(
    name="arp",
    fields=COMMON
    + ADDRESSES
    + (
        _f("vlan", np.uint16, "network.vlan.id", "802.1Q VLAN id, 0 when untagged", to_ecs=str,
           omit_empty=True),
        _f("operation", np.uint16, "cirtsa.arp.operation", "1 request (who-has), 2 reply (is-at)",
           to_ecs=lambda v: ARP_OPERATIONS.get(v, str(v))),
        _f("src_mac", np.uint64, "source.mac", "sender hardware address (48 bits)",
           to_ecs=mac_text),
        _f("dst_mac", np.uint64, "destination.mac", "target hardware address (48 bits)",
           to_ecs=mac_text),
        _f("eth_src_mac", np.uint64, "cirtsa.arp.eth_src_mac",
           "Ethernet source address of the frame", to_ecs=mac_text),
        _f("gratuitous", np.bool_, "cirtsa.arp.gratuitous",
           "sender IP == target IP (announcement)"),
    ),
    event_category=("network",),
    event_type=("protocol", "info"),
    dataset="cirtsa.arp",
    finish=_finish_arp,
)

ICMP = EventKind(
    name="icmp",
    fields=COMMON
    + ADDRESSES
    + (
        _f("transport", np.uint8, "network.iana_number", "1 ICMP, 58 ICMPv6", to_ecs=str),
        _f("vlan", np.uint16, "network.vlan.id", "802.1Q VLAN id, 0 when untagged", to_ecs=str,
           omit_empty=True),
        _f("community_id", OBJ, "network.community_id", "Community ID v1", omit_empty=True),
        _f("icmp_type", np.uint8, "cirtsa.icmp.type", "ICMP type"),
        _f("icmp_code", np.uint8, "cirtsa.icmp.code", "ICMP code"),
        _f("echo_id", np.uint16, "cirtsa.icmp.echo_id", "echo identifier (echo types only)"),
        _f("echo_seq", np.uint16, "cirtsa.icmp.echo_seq", "echo sequence (echo types only)"),
        _f("payload_bytes", np.uint32, "cirtsa.icmp.payload_bytes", "ICMP payload bytes"),
    ),
    event_category=("network",),
    event_type=("protocol", "info"),
    dataset="cirtsa.icmp",
    finish=_finish_with("icmp", "icmp_message"),
)


def _finish_ids_alert(doc: dict, row: dict) -> None:
    _finish_ip(doc, row)
    doc["event"]["kind"] = "alert"
    doc["event"]["action"] = "external_alert"
    doc["rule"]["ruleset"] = doc["observer"]["type"] = row["detector"]


IDS_ALERT = EventKind(
    name="ids_alert",
    fields=COMMON
    + ENDPOINTS
    + (
        _f("detector", OBJ, "observer.product", "external detector: suricata, zeek ..."),
        _f("rule_id", OBJ, "rule.id", "signature id / notice type"),
        _f("rule_name", OBJ, "rule.name", "signature message / notice name"),
        _f("rule_category", OBJ, "rule.category", "signature class / category",
           omit_empty=True),
        _f("severity", np.uint8, "event.severity", "external severity mapped to 1 (high) .. 3+"),
        _f("message", OBJ, "message", "the detector's own message", omit_empty=True),
        _f("action", OBJ, "cirtsa.ids.action", "allowed, blocked, notice ...", omit_empty=True),
    ),
    event_category=("network", "intrusion_detection"),
    event_type=("info",),
    dataset="cirtsa.ids_alert",
    finish=_finish_ids_alert,
)

KINDS: dict[str, EventKind] = {k.name: k for k in (FLOW, DNS, HTTP, TLS, SSH, LOGIN, ARP, ICMP,
                                                   IDS_ALERT)}


class SchemaError(ValueError):
    """A batch does not match its kind's schema; the message says which column and why."""


@dataclass
class EventBatch:
    """A columnar batch of events of one kind."""

    kind: str
    columns: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        # Optional columns a producer does not know about (written before they existed) are
        # filled, so every stage and pipeline.wire see the kind's full column set. A new dict:
        # the caller's is left as it was.
        spec = KINDS.get(self.kind)
        if spec is None or not self.columns or not spec.optional_columns:
            return
        missing = [f for f in spec.fields if f.optional and f.column not in self.columns]
        if missing:
            n = len(self)
            self.columns = {**self.columns,
                            **{f.column: np.full(n, f.fill, dtype=f.dtype) for f in missing}}

    def __len__(self) -> int:
        if not self.columns:
            return 0
        return int(next(iter(self.columns.values())).shape[0])

    def take(self, index: np.ndarray) -> EventBatch:
        """Rows selected by an integer or boolean index, same kind."""
        return EventBatch(self.kind, {k: v[index] for k, v in self.columns.items()})


def observer_update_rows(batch: EventBatch) -> np.ndarray:
    """Boolean mask of the flow rows that re-report a flow published earlier (fusion's late
    observer updates, docs/fusion.md): `observer_names` is set and does not start with the
    row's own observer. A consumer that counts flows skips them; their `observer_names`
    lists every sensor that saw the flow. All False for other kinds and for batches without
    the column. Python runs only over the rows that have observer_names (few)."""
    n = len(batch)
    names = batch.columns.get("observer_names")
    if batch.kind != "flow" or names is None or n == 0:
        return np.zeros(n, dtype=bool)
    rows = np.flatnonzero(names.astype(bool))  # None (np.empty) counts as empty, as ""
    out = np.zeros(n, dtype=bool)
    if rows.size:
        own = batch.columns["observer_name"][rows].tolist()
        out[rows] = [not str(v).startswith(o + OBSERVER_SEPARATOR) and v != o
                     for v, o in zip(names[rows].tolist(), own, strict=True)]
    return out


def fold_observer_names(batch: EventBatch) -> EventBatch:
    """For consumers that name "the sensors that saw it" from `observer_name` (correlation):
    the flow batch without its late observer updates, each update's names merged into the
    row of the same flow (same Community ID, reported by the update's first observer,
    nearest start) when that row is in the batch, and `observer_name` replaced by the
    '|'-joined `observer_names` where that is set (split with OBSERVER_SEPARATOR when
    listing sensors). Other batches are returned as they are. Python runs over the
    multi-observer rows only."""
    names = batch.columns.get("observer_names")
    if batch.kind != "flow" or names is None or not len(batch):
        return batch
    if not names[0] and _one_object(names):  # the usual batch: one shared '' (one sensor)
        return batch
    multi = names.astype(bool)
    if not multi.any():
        return batch
    updates = observer_update_rows(batch)
    if updates.any():
        names = _merge_updates(batch, updates)
        batch = EventBatch(batch.kind, {**batch.columns, "observer_names": names}).take(
            ~updates)
        names = batch.columns["observer_names"]
        multi = names.astype(bool)
    folded = np.where(multi, names, batch.columns["observer_name"])
    return EventBatch(batch.kind, {**batch.columns, "observer_name": folded})


def object_addresses(column: np.ndarray) -> np.ndarray:
    """The object pointers of a contiguous object column as a read-only uint64 view (it
    keeps the column alive). Why: a text column mostly repeats a few str objects (the wire
    decode and the stages share one object per distinct value), so grouping or testing
    rows by pointer touches no Python object per row."""
    if column.dtype != object or column.itemsize != 8 or not column.flags.c_contiguous:
        raise ValueError("not a contiguous object column of 8-byte pointers")
    address = column.__array_interface__["data"][0]
    return np.asarray(_PointerView(column, {"shape": column.shape, "typestr": "<u8",
                                            "data": (address, True), "version": 3}))


class _PointerView:
    """An __array_interface__ over an object column's pointer array (ctypes' as_array does
    the same at ~10x the cost per call); holds the column so the view cannot outlive it."""

    __slots__ = ("__array_interface__", "column")

    def __init__(self, column: np.ndarray, interface: dict) -> None:
        self.column = column
        self.__array_interface__ = interface


def _one_object(column: np.ndarray) -> bool:
    """Every row of an object column holds the same object."""
    if not column.flags.c_contiguous:
        return False
    pointers = object_addresses(column)
    return bool((pointers == pointers[0]).all())


def _merge_updates(batch: EventBatch, updates: np.ndarray) -> np.ndarray:
    """observer_names with each update row's names merged into its flow's kept row."""
    cols = batch.columns
    names = cols["observer_names"].copy()
    cid, own, ts = cols["community_id"], cols["observer_name"], cols["timestamp"]
    upd = np.flatnonzero(updates)
    kept = np.flatnonzero(~updates & np.isin(cid, cid[upd]))
    rows_of: dict[tuple, list[int]] = {}
    for r in kept.tolist():
        rows_of.setdefault((cid[r], own[r]), []).append(r)
    for u in upd.tolist():
        listed = str(names[u]).split(OBSERVER_SEPARATOR)
        rows = rows_of.get((cid[u], listed[0]))
        if not rows:
            continue  # the flow's row is in an earlier batch
        r = min(rows, key=lambda k: abs(int(ts[k]) - int(ts[u])))
        have = str(names[r]).split(OBSERVER_SEPARATOR) if names[r] else [str(own[r])]
        names[r] = OBSERVER_SEPARATOR.join(have + [o for o in listed if o not in have])
    return names


def empty_batch(kind: str) -> EventBatch:
    spec = KINDS[kind]
    return EventBatch(kind, {f.column: np.empty(0, dtype=f.dtype) for f in spec.fields})


def concat_batches(batches: Iterable[EventBatch | None]) -> EventBatch | None:
    """Concatenate batches of one kind, skipping None and empty ones (None when none left)."""
    batches = [b for b in batches if b is not None and len(b)]
    if not batches:
        return None
    kind = batches[0].kind
    cols = {c: np.concatenate([b.columns[c] for b in batches]) for c in batches[0].columns}
    return EventBatch(kind, cols)


def validate_batch(batch: EventBatch) -> None:
    """Raise SchemaError unless `batch` has exactly its kind's columns, dtypes and length."""
    spec = KINDS.get(batch.kind)
    if spec is None:
        raise SchemaError(f"unknown event kind {batch.kind!r}")
    expected, fields = _validation_plan(spec)
    columns = batch.columns
    if columns.keys() != expected:  # the usual batch has every column: one set compare
        got = set(columns)
        if missing := expected - got - spec.optional_columns:
            raise SchemaError(f"{batch.kind}: missing columns {sorted(missing)}")
        if extra := got - expected:
            raise SchemaError(f"{batch.kind}: unexpected columns {sorted(extra)}")
    n = None
    for name, dtype in fields:
        col = columns.get(name)
        if col is None:  # an optional column left out (checked above)
            continue
        if not isinstance(col, np.ndarray) or col.ndim != 1:
            raise SchemaError(f"{batch.kind}.{name}: not a 1-d numpy array")
        if col.dtype is not dtype and col.dtype != dtype:  # identity: the common case
            raise SchemaError(f"{batch.kind}.{name}: dtype {col.dtype}, expected {dtype}")
        if n is None:
            n = col.shape[0]
        elif col.shape[0] != n:
            raise SchemaError(f"{batch.kind}.{name}: length {col.shape[0]}, expected {n}")
    if n and (columns["timestamp"] < 0).any():
        raise SchemaError(f"{batch.kind}.timestamp: negative event time")


_Plan = tuple[frozenset[str], tuple[tuple[str, np.dtype], ...]]
_VALIDATION_PLANS: dict[int, tuple[EventKind, _Plan]] = {}  # id(kind) -> (kind, plan)


def _validation_plan(spec: EventKind) -> _Plan:
    """(every column, (column, dtype) in field order) of a kind, built once per kind: every
    stage validates every batch, and rebuilding them per call was a third of its cost."""
    known = _VALIDATION_PLANS.get(id(spec))
    if known is None or known[0] is not spec:
        known = (spec, (frozenset(spec.columns),
                        tuple((f.column, f.dtype) for f in spec.fields)))
        _VALIDATION_PLANS[id(spec)] = known
    return known[1]


# --- ECS JSON ---------------------------------------------------------------------------------

def ns_to_iso(ns: int) -> str:
    """Nanoseconds since epoch -> RFC 3339 UTC with microseconds (what ES date parses)."""
    sec, rem = divmod(int(ns), 1_000_000_000)
    dt = datetime.fromtimestamp(sec, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{rem // 1000:06d}Z"


def _set(doc: dict, path: str, value) -> None:
    parts = path.split(".")
    node = doc
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _column_values(f: Field, values: np.ndarray) -> list:
    """One column -> JSON-ready Python values (vectorized where the conversion allows)."""
    if f.dtype == IP_DTYPE:
        uniq, inverse = np.unique(values, return_inverse=True)
        text = ip_column_to_str(uniq)
        return [text[i] for i in inverse.ravel()]
    if f.ecs in ("@timestamp", "event.end"):
        return [ns_to_iso(v) for v in values.tolist()]
    if f.dtype == OBJ:
        return list(map(_own_copy, values.tolist()))
    return values.tolist()


def _own_copy(value: object) -> object:
    """A document's own copy of a nested cell value. Why: the sensor shares one list/dict
    between the rows of a batch with equal values (DNS answers: one object per distinct
    answer set), so cells are read-only; a document is the consumer's to edit."""
    if type(value) is list:
        return [dict(x) if type(x) is dict else x for x in value]
    if type(value) is dict:
        return dict(value)
    return value


def batch_to_ecs(batch: EventBatch) -> list[dict]:
    """Columnar batch -> ECS JSON documents (one dict per event)."""
    kind = KINDS[batch.kind]
    fields = [f for f in kind.fields if f.column in batch.columns]  # optional ones may lack
    values = {f.column: _column_values(f, batch.columns[f.column]) for f in fields}
    raw_times = {c: batch.columns[c].tolist() for c in ("timestamp", "end") if c in batch.columns}
    docs: list[dict] = []
    for i in range(len(batch)):
        doc: dict = {
            "@timestamp": None,  # set from the timestamp column below; first for readability
            "ecs": {"version": ECS_VERSION},
            "event": {
                "kind": "event",
                "category": list(kind.event_category),
                "type": list(kind.event_type),
                "dataset": kind.dataset,
                "module": "cirtsa",
            },
        }
        row = {c: v[i] for c, v in values.items()}
        for f in fields:
            v = row[f.column]
            if f.omit_empty and not v:
                continue
            _set(doc, f.ecs, f.to_ecs(v) if f.to_ecs is not None else v)
        if kind.finish is not None:
            row.update({f"_{c}_ns": t[i] for c, t in raw_times.items()})
            kind.finish(doc, row)
        docs.append(doc)
    return docs
