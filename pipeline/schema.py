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

import numpy as np

from sensors.packets import IP_DTYPE, ip_column_to_str

SCHEMA_VERSION = 1

OBJ = np.dtype(object)


@dataclass(frozen=True)
class Field:
    column: str
    dtype: np.dtype
    ecs: str  # dotted ECS path (or cirtsa.* for fields ECS does not define)
    doc: str
    required: bool = True


@dataclass(frozen=True)
class EventKind:
    name: str
    fields: tuple[Field, ...]
    event_category: tuple[str, ...]
    event_type: tuple[str, ...]
    dataset: str  # event.dataset, e.g. "cirtsa.flow"

    def field(self, column: str) -> Field:
        for f in self.fields:
            if f.column == column:
                return f
        raise KeyError(column)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.fields)


def _f(column: str, dtype, ecs: str, doc: str, required: bool = True) -> Field:
    return Field(column, np.dtype(dtype), ecs, doc, required)


# Fields every event kind carries.
COMMON = (
    _f("timestamp", np.int64, "@timestamp", "event time (first packet), ns since epoch"),
    _f("observer_name", OBJ, "observer.name", "sensor id"),
    _f("ingress_zone", OBJ, "observer.ingress.zone", "segment/zone label of the sensor"),
)

ENDPOINTS = (
    _f("src_ip", IP_DTYPE, "source.ip", "originator address"),
    _f("dst_ip", IP_DTYPE, "destination.ip", "responder address"),
    _f("src_port", np.uint16, "source.port", "originator port (ICMP: type)"),
    _f("dst_port", np.uint16, "destination.port", "responder port (ICMP: code)"),
    _f("transport", np.uint8, "network.iana_number", "IANA protocol number"),
    _f("vlan", np.uint16, "network.vlan.id", "802.1Q VLAN id, 0 when untagged"),
    _f("community_id", OBJ, "network.community_id", "Community ID v1 flow hash"),
)

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
    ),
    event_category=("network",),
    event_type=("connection", "end"),
    dataset="cirtsa.flow",
)

DNS = EventKind(
    name="dns",
    fields=COMMON
    + ENDPOINTS
    + (
        _f("dns_id", np.uint16, "dns.id", "DNS transaction id"),
        _f("is_response", np.bool_, "dns.type", "False: query, True: answer"),
        _f("qname", OBJ, "dns.question.name", "queried name, lower case, no trailing dot"),
        _f("qtype", np.uint16, "dns.question.type", "query type (RR type number)"),
        _f("qclass", np.uint16, "dns.question.class", "query class (1 = IN)"),
        _f("rcode", np.uint8, "dns.response_code", "response code (responses only)"),
        _f("flags", np.uint16, "dns.header_flags", "DNS header flag bits (QR..CD)"),
        _f("answers", OBJ, "dns.answers",
           "list of {name, type, class, ttl, data} dicts (responses), else empty list"),
    ),
    event_category=("network",),
    event_type=("protocol", "info"),
    dataset="cirtsa.dns",
)

KINDS: dict[str, EventKind] = {k.name: k for k in (FLOW, DNS)}


class SchemaError(ValueError):
    """A batch does not match its kind's schema; the message says which column and why."""


@dataclass
class EventBatch:
    """A columnar batch of events of one kind."""

    kind: str
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        if not self.columns:
            return 0
        return int(next(iter(self.columns.values())).shape[0])

    def take(self, index: np.ndarray) -> EventBatch:
        """Rows selected by an integer or boolean index, same kind."""
        return EventBatch(self.kind, {k: v[index] for k, v in self.columns.items()})


def empty_batch(kind: str) -> EventBatch:
    spec = KINDS[kind]
    return EventBatch(kind, {f.column: np.empty(0, dtype=f.dtype) for f in spec.fields})


def concat_batches(batches: Iterable[EventBatch]) -> EventBatch | None:
    """Concatenate batches of one kind (None when there are none)."""
    batches = [b for b in batches if len(b)]
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
    expected = set(spec.columns)
    got = set(batch.columns)
    if missing := expected - got:
        raise SchemaError(f"{batch.kind}: missing columns {sorted(missing)}")
    if extra := got - expected:
        raise SchemaError(f"{batch.kind}: unexpected columns {sorted(extra)}")
    n = None
    for f in spec.fields:
        col = batch.columns[f.column]
        if not isinstance(col, np.ndarray) or col.ndim != 1:
            raise SchemaError(f"{batch.kind}.{f.column}: not a 1-d numpy array")
        if col.dtype != f.dtype:
            raise SchemaError(f"{batch.kind}.{f.column}: dtype {col.dtype}, expected {f.dtype}")
        if n is None:
            n = col.shape[0]
        elif col.shape[0] != n:
            raise SchemaError(f"{batch.kind}.{f.column}: length {col.shape[0]}, expected {n}")
    if n and (batch.columns["timestamp"] < 0).any():
        raise SchemaError(f"{batch.kind}.timestamp: negative event time")


# --- ECS JSON -------------------------------------------------------------------------------

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


def dns_type_name(number: int) -> str:
    return DNS_TYPE_NAMES.get(number, f"TYPE{number}")


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


def _column_values(kind: EventKind, column: str, values: np.ndarray) -> list:
    """One column -> JSON-ready Python values (vectorized where the conversion allows)."""
    f = kind.field(column)
    if f.dtype == IP_DTYPE:
        uniq, inverse = np.unique(values, return_inverse=True)
        text = ip_column_to_str(uniq)
        return [text[i] for i in inverse.ravel()]
    if column in ("timestamp", "end"):
        return [ns_to_iso(v) for v in values.tolist()]
    return values.tolist()


def _converters(kind: EventKind) -> dict[str, Callable]:
    # ECS types network.iana_number and network.vlan.id as keywords.
    conv: dict[str, Callable] = {"transport": str, "vlan": str}
    if kind.name == "dns":
        conv["is_response"] = lambda v: "answer" if v else "query"
        conv["qtype"] = dns_type_name
        conv["qclass"] = lambda v: DNS_CLASS_NAMES.get(v, f"CLASS{v}")
        conv["dns_id"] = str  # ECS dns.id is a keyword
        conv["flags"] = lambda v: [name for name, bit in DNS_FLAG_BITS if v & bit]
        conv["rcode"] = lambda v: DNS_RCODE_NAMES.get(v, f"RCODE{v}")
    return conv


def batch_to_ecs(batch: EventBatch) -> list[dict]:
    """Columnar batch -> ECS JSON documents (one dict per event)."""
    kind = KINDS[batch.kind]
    n = len(batch)
    values = {c: _column_values(kind, c, batch.columns[c]) for c in kind.columns}
    conv = _converters(kind)
    docs: list[dict] = []
    for i in range(n):
        doc: dict = {
            "@timestamp": None,  # set from the timestamp column below; first for readability
            "ecs": {"version": "8.17.0"},
            "event": {
                "kind": "event",
                "category": list(kind.event_category),
                "type": list(kind.event_type),
                "dataset": kind.dataset,
                "module": "cirtsa",
            },
        }
        for f in kind.fields:
            v = values[f.column][i]
            if not v and f.column in ("vlan", "community_id"):
                continue  # untagged / not computed: leave the field out
            if f.column == "rcode" and not values["is_response"][i]:
                continue  # a query has no response code
            if f.column in conv:
                v = conv[f.column](v)
            _set(doc, f.ecs, v)
        transport = values["transport"][i]
        doc["network"]["transport"] = TRANSPORT_NAMES.get(transport, str(transport))
        doc["related"] = {"ip": sorted({doc["source"]["ip"], doc["destination"]["ip"]})}
        if kind.name == "flow":
            start, end = batch.columns["timestamp"][i], batch.columns["end"][i]
            doc["event"]["start"] = doc["@timestamp"]
            doc["event"]["duration"] = int(end - start)
            src, dst = doc["source"], doc["destination"]
            doc["network"]["packets"] = int(src["packets"] + dst["packets"])
            doc["network"]["bytes"] = int(src["bytes"] + dst["bytes"])
            doc["event"]["action"] = "network_flow"
        elif kind.name == "dns":
            doc["network"]["protocol"] = "dns"
            answers = doc["dns"].get("answers", [])
            resolved = [a["data"] for a in answers if a["type"] in ("A", "AAAA")]
            if resolved:
                doc["dns"]["resolved_ip"] = resolved
            if not doc["dns"].get("answers"):
                doc["dns"].pop("answers", None)
            doc["event"]["action"] = "dns_" + doc["dns"]["type"]
        docs.append(doc)
    return docs
