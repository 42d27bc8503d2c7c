"""Suricata EVE lines -> schema columns straight from the JSON scanner's spans.

Why: `fusion.json_scan.scan_lines` validates a chunk of EVE lines and locates the fields the
adapter reads in one compiled pass; the columns are then built from the spans by kernels
(integers, timestamps, IPv4 text) and text is factorized (one Python str per distinct
value). No per-line Python object is built.

Exactness: this path reproduces `EveAdapter`'s typed (msgspec) mapping for the event types
and value shapes it knows - flow, alert, DNS queries, and counting unmapped event types -
and gives up (`Fallback`) on anything else: a group of lines of one event type with an odd
value (a wrong type, a port out of range, an address that does not parse, a timestamp in
another layout, DNS answers...) is converted by the general path, which defines every
mapping and dead-letter reason. Rows the general path would dead-letter never stay here,
except for the timestamp range and flow end checks, which `build_batch` applies the same
way on both paths.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import msgspec
import numpy as np
import orjson
from msgspec import UNSET

from fusion.columns import ip_column
from fusion.json_scan import (
    ABSENT,
    ARR,
    FALSE,
    FLOAT,
    INT,
    NULL,
    OBJ,
    STR,
    STR_ESC,
    TRUE,
    KeyTable,
    factorize_spans,
    gather_ascii,
    parse_ipv4,
    parse_iso31,
)
from sensors.packets import IP_DTYPE

EVE_KEYS = KeyTable([
    "event_type", "timestamp", "host", "src_ip", "dest_ip", "src_port", "dest_port",
    "icmp_type", "icmp_code", "proto", "vlan", "community_id",
    "flow", "flow.pkts_toserver", "flow.pkts_toclient", "flow.bytes_toserver",
    "flow.bytes_toclient", "flow.start", "flow.end", "flow.reason",
    "tcp", "tcp.tcp_flags_ts", "tcp.tcp_flags_tc",
    "dns", "dns.type", "dns.id", "dns.rrname", "dns.rrtype", "dns.rcode", "dns.flags",
    "alert", "alert.signature_id", "alert.signature", "alert.category", "alert.severity",
    "alert.action",
])
K = EVE_KEYS.index
_U64_MAX = 2**63 - 1  # what fusion.columns accepts for uint64 columns


class Fallback(Exception):
    """This group of lines needs the general path."""


class Spans:
    """The scanner's output for one chunk, and column builders over a group of its rows."""

    def __init__(self, buf: np.ndarray, joined: bytes, vs: np.ndarray, ve: np.ndarray,
                 vt: np.ndarray, iv: np.ndarray, index: dict[str, int] | None = None) -> None:
        self.buf, self.joined, self.vs, self.ve, self.vt, self.iv = buf, joined, vs, ve, vt, iv
        self.index = K if index is None else index  # key path -> row of the span arrays

    def group(self, rows: np.ndarray) -> Group:
        return Group(self, rows)


class Group:
    """Rows of one event type: each method returns one column or raises Fallback."""

    def __init__(self, spans: Spans, rows: np.ndarray) -> None:
        self.s = spans
        self.rows = rows
        self.n = len(rows)
        self.all = np.arange(self.n, dtype=np.int64)

    def types(self, key: str) -> np.ndarray:
        return self.s.vt[self.s.index[key], self.rows]

    def span(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        k = self.s.index[key]
        return self.s.vs[k, self.rows], self.s.ve[k, self.rows]

    def require(self, key: str, allowed: tuple[int, ...]) -> np.ndarray:
        t = self.types(key)
        _only(t, allowed)
        return t

    def parent(self, key: str) -> None:
        """A nested object: present, null or absent (msgspec reads null/absent as {})."""
        self.require(key, (OBJ, NULL, ABSENT))

    def ints(self, key: str, dtype, lo: int, hi: int, default: int = 0,
             types: np.ndarray | None = None, values: np.ndarray | None = None) -> np.ndarray:
        """A JSON integer (null/absent -> default) in lo..hi, as int_column takes it."""
        t = self.types(key) if types is None else types
        _only(t, (INT, NULL, ABSENT))
        v = self.s.iv[self.s.index[key], self.rows] if values is None else values
        v = np.where(t == INT, v, default)
        if ((v < lo) | (v > hi)).any():
            raise Fallback
        return v.astype(dtype)

    def _mapped(self, key: str, t: np.ndarray,
                fn: Callable | None) -> tuple[np.ndarray, np.ndarray, list]:
        """fn of every text value of `key` (STR/STR_ESC rows), one str and one fn call
        per distinct text: (text rows, their value index, the distinct values)."""
        vs, ve = self.span(key)
        rows = np.flatnonzero((t == STR) | (t == STR_ESC))
        if not len(rows):
            return rows, rows, []
        codes, reps = factorize_spans(self.s.buf, vs, ve, rows)
        starts, ends = vs[reps], ve[reps]
        escaped = t[reps] == STR_ESC
        # ASCII text (the usual case): one decode for all distinct values, then slices;
        # _name_text is applied by the kernel (fold) there
        fold = fn is _name_text
        text, offs, ok = gather_ascii(self.s.buf, starts, ends, escaped, fold)
        whole = text.tobytes().decode("ascii")
        offs = offs.tolist()
        uniq = [whole[a:b] for a, b in zip(offs[:-1], offs[1:], strict=True)]
        joined = self.s.joined
        for i in np.flatnonzero(~ok).tolist():  # escaped or non-ASCII text (rare)
            if escaped[i]:  # decoded exactly, quotes included
                value = orjson.loads(joined[starts[i] - 1:ends[i] + 1])
            else:
                value = joined[starts[i]:ends[i]].decode()
            uniq[i] = fn(value) if fold else value
        if fn is not None and not fold:
            uniq = list(map(fn, uniq))  # one call per distinct value
        return rows, codes, uniq

    def text(self, key: str, fn: Callable | None = None, missing="",
             default_if_other: str | None = None) -> np.ndarray:
        """Text (null/absent -> missing). Another type: Fallback, or `default_if_other`."""
        t = self.types(key)
        if default_if_other is None:
            _only(t, (STR, STR_ESC, NULL, ABSENT))
        rows, codes, uniq = self._mapped(key, t, fn)
        if fn is not None and default_if_other is None and not set(map(type, uniq)) <= {str}:
            raise Fallback  # "not text": the general path dead-letters it
        out = np.empty(self.n, dtype=object)
        out[:] = [missing if default_if_other is None else default_if_other]
        if len(rows):
            table = np.empty(len(uniq), dtype=object)
            table[:] = uniq
            out[rows] = table[codes]
        return out

    def coded(self, key: str, fn: Callable, dtype, lo: int, hi: int) -> np.ndarray:
        """Text mapped by fn to an integer (a JSON integer kept, null/absent -> 0), as
        `int_column(map(fn, values))` takes it; anything else: Fallback."""
        t = self.types(key)
        _only(t, (STR, STR_ESC, INT, NULL, ABSENT))
        rows, codes, uniq = self._mapped(key, t, fn)
        values = self.s.iv[self.s.index[key], self.rows]
        if len(rows):
            if not set(map(type, uniq)) <= {int}:  # bool or text: not an integer
                raise Fallback
            try:
                table = np.array(uniq, dtype=np.int64)
            except OverflowError:  # beyond int64 (int(text, 16) of a long text)
                raise Fallback from None
            values = values.copy()
            values[rows] = table[codes]
            t = t.copy()
            t[rows] = INT
        return self.ints(key, dtype, lo, hi, types=t, values=values)

    def addresses(self, key: str) -> np.ndarray:
        """Address text -> 16-byte column (IPv4 in a kernel, other text as ip_column)."""
        self.require(key, (STR,))  # missing or not text: dead-lettered by the general path
        vs, ve = self.span(key)
        raw = np.zeros((self.n, 16), dtype=np.uint8)
        ok = parse_ipv4(self.s.buf, vs, ve, self.all, raw)
        col = raw.view(IP_DTYPE).reshape(self.n)
        if not ok.all():
            rest = np.flatnonzero(~ok)
            texts = [self.s.joined[a:b].decode() for a, b in zip(vs[rest].tolist(),
                                                                 ve[rest].tolist(), strict=True)]
            other, bad = ip_column(texts)
            if bad.any():
                raise Fallback
            col[rest] = other
        return col

    def times(self, vs: np.ndarray, ve: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Suricata timestamps, every row in the 31-byte layout (iso_times' fast path)."""
        if not (t == STR).all():
            raise Fallback
        ns, ok = parse_iso31(self.s.buf, vs, ve, self.all)
        if not ok.all():
            raise Fallback
        return ns


def _only(t: np.ndarray, allowed: tuple[int, ...]) -> None:
    """Fallback unless every value type of the column is one of `allowed`."""
    counts = np.bincount(t.view(np.uint8), minlength=16)
    counts[list(allowed)] = 0
    if counts.any():
        raise Fallback


def common(g: Group, observer: str, zone: str, start_key: str = "timestamp",
           ) -> tuple[dict, dict]:
    """The columns of every EVE event (EveAdapter._fast_common), already typed."""
    from fusion.adapters import _transport  # the same memoized protocol lookup

    n = g.n
    zone_col = np.empty(n, dtype=object)
    zone_col[:] = [zone]
    sport_t = g.types("src_port")
    dport_t = g.types("dest_port")
    cols = {
        # a host that is not text: the adapter's own name
        "observer_name": g.text("host", missing=observer, default_if_other=observer),
        "ingress_zone": zone_col,
        "src_ip": g.addresses("src_ip"),
        "dst_ip": g.addresses("dest_ip"),
        "src_port": _either(g, "src_port", "icmp_type", sport_t, np.uint16, 65535),
        "dst_port": _either(g, "dest_port", "icmp_code", dport_t, np.uint16, 65535),
        "transport": g.coded("proto", lambda v: _transport([v])[0], np.uint8, 0, 255),
        "vlan": _vlan(g),
        "community_id": g.text("community_id"),
    }
    if start_key == "timestamp":
        vs, ve = g.span("timestamp")
        ts = g.times(vs, ve, g.types("timestamp"))
    else:
        ts = _time_or_timestamp(g, start_key)
    return cols, {"timestamp": (ts, np.zeros(n, dtype=bool))}


def _either(g: Group, key: str, alt: str, t: np.ndarray, dtype, hi: int) -> np.ndarray:
    """`alt` where `key` is absent (EVE ICMP records carry icmp_type/code, no ports)."""
    use_alt = t == ABSENT
    types = np.where(use_alt, g.types(alt), t)
    values = np.where(use_alt, g.s.iv[K[alt], g.rows], g.s.iv[K[key], g.rows])
    return g.ints(key, dtype, 0, hi, types=types, values=values)


def _vlan(g: Group) -> np.ndarray:
    """Last VLAN id of a list; anything but a list -> 0 (as the adapter reads it)."""
    t = g.types("vlan")
    out = np.zeros(g.n, dtype=np.uint16)
    vs, ve = g.span("vlan")
    for i in np.flatnonzero(t == ARR).tolist():  # rare in practice: decoded exactly
        vlans = orjson.loads(g.s.joined[vs[i]:ve[i]])
        last = vlans[-1] if vlans else None
        if last is None:
            continue
        if type(last) is not int or not 0 <= last <= 65535:  # noqa: E721
            raise Fallback
        out[i] = last
    return out


def _time_or_timestamp(g: Group, key: str) -> np.ndarray:
    """flow.start / flow.end, or the record's timestamp where absent."""
    t = g.types(key)
    vs, ve = g.span(key)
    ts_vs, ts_ve = g.span("timestamp")
    absent = t == ABSENT
    return g.times(np.where(absent, ts_vs, vs), np.where(absent, ts_ve, ve),
                   np.where(absent, g.types("timestamp"), t))


def flow_columns(g: Group, observer: str, zone: str) -> dict:
    """EveAdapter._fast_flow: @timestamp = flow.start, end = flow.end (else timestamp)."""
    from fusion.adapters import EVE_FLOW_REASON, _hex

    g.parent("flow")
    g.parent("tcp")
    cols, ready = common(g, observer, zone, "flow.start")
    end = _time_or_timestamp(g, "flow.end")
    ready["end"] = (end, end < ready["timestamp"][0])
    for col, key in (("src_packets", "pkts_toserver"), ("dst_packets", "pkts_toclient"),
                     ("src_bytes", "bytes_toserver"), ("dst_bytes", "bytes_toclient")):
        cols[col] = g.ints(f"flow.{key}", np.uint64, 0, _U64_MAX)
    cols["src_tcp_flags"] = g.coded("tcp.tcp_flags_ts", _hex, np.uint8, 0, 255)
    cols["dst_tcp_flags"] = g.coded("tcp.tcp_flags_tc", _hex, np.uint8, 0, 255)
    cols["end_reason"] = g.text("flow.reason", lambda v: EVE_FLOW_REASON.get(v, v))
    return _ready(cols, ready)


def alert_columns(g: Group, observer: str, zone: str) -> dict:
    """EveAdapter._fast_alert; rule_id = signature_id as text (required)."""
    g.parent("alert")
    cols, ready = common(g, observer, zone)
    t = g.require("alert.signature_id", (INT, STR, STR_ESC))
    rule_id = np.empty(g.n, dtype=object)
    ints = np.flatnonzero(t == INT)
    if len(ints):
        values = g.s.iv[K["alert.signature_id"], g.rows[ints]]
        uniq, codes = np.unique(values, return_inverse=True)
        table = np.empty(len(uniq), dtype=object)
        table[:] = [str(v) for v in uniq.tolist()]
        rule_id[ints] = table[codes]
    rows, codes, uniq = g._mapped("alert.signature_id", t, None)
    if len(rows):
        if "" in uniq:
            raise Fallback  # "rule_id: missing": the general path dead-letters it
        table = np.empty(len(uniq), dtype=object)
        table[:] = uniq
        rule_id[rows] = table[codes]
    detector = np.empty(g.n, dtype=object)
    detector[:] = ["suricata"]
    cols |= {
        "detector": detector,
        "rule_id": rule_id,
        "rule_name": g.text("alert.signature"),
        "rule_category": g.text("alert.category"),
        "severity": g.ints("alert.severity", np.uint8, 0, 255),
        "action": g.text("alert.action"),
    }
    return _ready(cols, ready)


def dns_columns(g: Group, observer: str, zone: str) -> dict:
    """EveAdapter._fast_dns. Queries from the spans; answer records (EVE v1 per-RR or v2
    grouped) have their `dns` object decoded into the adapter's own typed struct and
    mapped by its own per-record code (answers are lists of RRs: a Python object each)."""
    from fusion.adapters import DNS_TYPES, _hex

    g.parent("dns")
    t = g.require("dns.type", (STR, STR_ESC, INT, FLOAT, TRUE, FALSE, NULL, ABSENT))
    rows, codes, uniq = g._mapped("dns.type", t, None)
    answer = np.zeros(g.n, dtype=bool)
    if "answer" in uniq:
        answer[rows] = codes == uniq.index("answer")
    cols, ready = common(g, observer, zone)
    rrtype_t = g.types("dns.rrtype")
    if np.isin(rrtype_t, (OBJ, ARR)).any():
        raise Fallback  # unhashable in the lookup: the general path reports the shape
    qtype = g.coded("dns.rrtype", lambda v: DNS_TYPES.get(v, 0), np.uint16, 0, 65535)
    # a JSON number as rrtype is not a type name: 0, as DNS_TYPES.get gives
    qtype[~((rrtype_t == STR) | (rrtype_t == STR_ESC))] = 0
    qname = g.text("dns.rrname", _name_text)
    rcode = np.zeros(g.n, dtype=np.uint8)
    answers = _empty_lists(g.n)
    if answer.any():
        _answer_rows(g, np.flatnonzero(answer), qname, qtype, rcode, answers)
    cols |= {
        "dns_id": g.ints("dns.id", np.uint16, 0, 65535),
        "is_response": answer,
        "qname": qname,
        "qtype": qtype,
        "qclass": np.ones(g.n, dtype=np.uint16),
        "rcode": rcode,
        "flags": g.coded("dns.flags", _hex, np.uint16, 0, 65535),
        "answers": answers,
    }
    return _ready(cols, ready)


def _answer_rows(g: Group, rows: np.ndarray, qname: np.ndarray, qtype: np.ndarray,
                 rcode: np.ndarray, answers: np.ndarray) -> None:
    """EveAdapter._fast_dns's answer branch, per answer record (fills the columns)."""
    from fusion.adapters import (
        DNS_RCODES,
        DNS_TYPES,
        _eve_dns_decode,
        _eve_v2_answers_fast,
        _get,
        _name,
        _rr,
    )

    if not (g.types("dns")[rows] == OBJ).all():
        raise Fallback
    vs, ve = g.span("dns")
    joined = g.s.joined
    for i, a, b in zip(rows.tolist(), vs[rows].tolist(), ve[rows].tolist(), strict=True):
        try:
            d = _eve_dns_decode(joined[a:b])
        except (msgspec.DecodeError, RecursionError, ValueError, TypeError):
            raise Fallback from None
        grouped = d.answers is not UNSET or d.grouped is not UNSET
        if grouped or d.version == 2:  # EVE v2
            answers[i] = _eve_v2_answers_fast(d)
            name = _name(d.rrname)
            if name is not None and type(name) is not str:
                raise Fallback  # "qname: not text"
            qname[i] = "" if name is None else name
        else:  # EVE v1: one record per answer RR; no question
            answers[i] = ([_rr(d.rrname, _get(d.rrtype), d.ttl, _get(d.rdata))]
                          if d.rdata is not UNSET or d.rrtype is not UNSET else [])
            qname[i] = ""
        qtype[i] = DNS_TYPES.get(_get(d.rrtype), 0) if grouped else 0
        code = DNS_RCODES.get(d.rcode, 0)
        if type(code) is not int or not 0 <= code <= 255:  # noqa: E721
            raise Fallback
        rcode[i] = code


def _name_text(v: str) -> str:
    """fusion.adapters._name of a text value (map() over distinct names)."""
    return v.rstrip(".").lower()


def _empty_lists(n: int) -> np.ndarray:
    """A list column of queries: a new empty list per row (as build_batch makes them).
    The cyclic GC is paused meanwhile: n new containers trigger collections that walk the
    whole young heap and cost more than the lists (0.5 vs 0.18 us/row measured)."""
    out = np.empty(n, dtype=object)
    enabled = gc.isenabled()
    gc.disable()
    try:
        out[:] = [[] for _ in range(n)]
    finally:
        if enabled:
            gc.enable()
    return out


def _ready(cols: dict, ready: dict) -> dict:
    """Every column ready for build_batch (no bad rows: those fell back)."""
    out = {c: (v, np.zeros(len(v), dtype=bool)) for c, v in cols.items()}
    out.update(ready)
    return out


COLUMNS = {"flow": ("flow", flow_columns), "alert": ("ids_alert", alert_columns),
           "dns": ("dns", dns_columns)}
