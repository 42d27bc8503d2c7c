"""Zeek JSON conn/dns/http lines -> schema columns straight from the JSON scanner's spans.

Why: as for EVE (fusion.eve_scan), decoding every Zeek line into a dict and pulling each
column out with a list comprehension costs more than the per-line budget; the scanner
(fusion.json_scan.scan_lines) validates the chunk and locates the fields in one compiled
pass, and the columns are built from the spans (integers from the scan, `ts`/`duration`
parsed exactly by json_scan.parse_decimal_us, addresses by parse_ipv4, text one str per
distinct value).

Exactness: each builder reproduces ZeekAdapter._conn/_dns/_http (+ _common) for the value
shapes it knows and raises eve_scan.Fallback on anything else (a wrong type, an out-of-range
number, a negative or over-precise time, an address that does not parse, ...): the caller
then maps that group of lines with the general path, which defines every mapping and
dead-letter reason. Only the timestamp range check stays with build_batch, applied the same
way on both paths.
"""

from __future__ import annotations

import numpy as np
import orjson

from fusion.eve_scan import Fallback, Group, _only, _ready
from fusion.json_scan import (
    ABSENT,
    ARR,
    FLOAT,
    INT,
    NULL,
    STR,
    STR_ESC,
    TRUE,
    KeyTable,
    factorize_spans,
    parse_decimal_us,
)

ZEEK_KEYS = KeyTable([
    "_path", "ts", "id.orig_h", "id.resp_h", "id.orig_p", "id.resp_p", "proto", "vlan",
    "community_id",
    # conn
    "duration", "history", "orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes",
    "orig_bytes", "resp_bytes", "conn_state",
    # dns
    "trans_id", "rcode", "query", "qtype", "qclass", "AA", "TC", "RD", "RA", "answers",
    "TTLs",
    # http
    "method", "host", "uri", "version", "user_agent", "referrer", "status_code",
    "request_body_len", "response_body_len", "resp_mime_types", "username",
], flat=True)
K = ZEEK_KEYS.index
_U64_MAX = 2**63 - 1  # what fusion.columns accepts for uint64 columns
# Exactness bounds of parse_decimal_us (see its doc): seconds below these are exact.
TS_MAX_S = 2**32
DURATION_MAX_S = 2**21


def _seconds_ns(g: Group, key: str, max_int: int, scale: float, lo: float, hi: float,
                absent_zero: bool) -> np.ndarray:
    """A Zeek seconds field -> int64 ns, as the general path computes it from the JSON
    float: rint(seconds * scale) * (1e9 / scale) for seconds in lo..hi (excl. hi).

    Most values are decimals of at most 6 fractional digits: parse_decimal_us gives them
    exactly. Others (Zeek writes intervals with up to 17 digits) are decoded to floats by
    orjson, as the general path does, and scaled the same way. Null/absent -> 0 if
    absent_zero; anything else (a wrong type, a value out of lo..hi): Fallback."""
    vs, ve = g.span(key)
    t = g.types(key)
    us, ok = parse_decimal_us(g.s.buf, vs, ve, t, g.s.iv[K[key], g.rows], max_int)
    ns = us * 1000
    if absent_zero:
        ok |= (t == NULL) | (t == ABSENT)
    if not ok.all():
        rest = np.flatnonzero(~ok)
        if not (t[rest] == FLOAT).all():
            raise Fallback
        joined = g.s.joined
        secs = np.array(orjson.loads(b"[" + b",".join(
            [joined[a:b] for a, b in zip(vs[rest].tolist(), ve[rest].tolist(), strict=True)])
            + b"]"), dtype=np.float64)
        if not ((secs >= lo) & (secs < hi)).all():
            raise Fallback  # NaN cannot come from JSON; out of range: the general path
        ns[rest] = np.rint(secs * scale).astype(np.int64) * int(1e9 // scale)
    return ns


def common(g: Group, observer: str, zone: str, default_proto: str | None) -> tuple[dict, dict]:
    """ZeekAdapter._common: the columns of every Zeek event, already typed."""
    from fusion.adapters import TRANSPORTS, _transport

    n = g.n
    observer_col = np.empty(n, dtype=object)
    observer_col[:] = [observer]
    zone_col = np.empty(n, dtype=object)
    zone_col[:] = [zone]
    transport = g.coded("proto", lambda v: _transport([v])[0], np.uint8, 0, 255)
    if default_proto is not None:  # r.get("proto", default): only an absent key
        transport[g.types("proto") == ABSENT] = TRANSPORTS[default_proto]
    cols = {
        "observer_name": observer_col,
        "ingress_zone": zone_col,
        "src_ip": g.addresses("id.orig_h"),
        "dst_ip": g.addresses("id.resp_h"),
        "src_port": g.ints("id.orig_p", np.uint16, 0, 65535),
        "dst_port": g.ints("id.resp_p", np.uint16, 0, 65535),
        "transport": transport,
        "vlan": g.ints("vlan", np.uint16, 0, 65535),
        "community_id": g.text("community_id"),
    }
    ts = _seconds_ns(g, "ts", TS_MAX_S, 1e6, -9.2e9, 9.2e9, absent_zero=False)
    return cols, {"timestamp": (ts, np.zeros(n, dtype=bool))}


def conn_columns(g: Group, observer: str, zone: str) -> dict:
    """ZeekAdapter._conn: end = ts + duration, TCP flags from the history letters."""
    from fusion.adapters import _history_flags

    cols, ready = common(g, observer, zone, None)
    duration = _seconds_ns(g, "duration", DURATION_MAX_S, 1e9, 0.0, 1e8, absent_zero=True)
    ready["end"] = (ready["timestamp"][0] + duration, np.zeros(g.n, dtype=bool))
    for col, key in (("src_packets", "orig_pkts"), ("dst_packets", "resp_pkts"),
                     ("src_bytes", "orig_ip_bytes"), ("dst_bytes", "resp_ip_bytes"),
                     ("src_payload_bytes", "orig_bytes"), ("dst_payload_bytes", "resp_bytes")):
        cols[col] = g.ints(key, np.uint64, 0, _U64_MAX)
    # history: one _history_flags call per distinct text; any other value -> (0, 0)
    t = g.types("history")
    rows, codes, uniq = g._mapped("history", t, _history_flags)
    src_flags = np.zeros(g.n, dtype=np.uint8)
    dst_flags = np.zeros(g.n, dtype=np.uint8)
    if len(rows):
        table = np.array(uniq, dtype=np.uint8).reshape(len(uniq), 2)
        src_flags[rows] = table[codes, 0]
        dst_flags[rows] = table[codes, 1]
    cols["src_tcp_flags"] = src_flags
    cols["dst_tcp_flags"] = dst_flags
    cols["conn_state"] = g.text("conn_state")
    return _ready(cols, ready)


def dns_columns(g: Group, observer: str, zone: str) -> dict:
    """ZeekAdapter._dns: one line = query + response; answers typed as _zeek_answers."""
    from fusion.eve_scan import _name_text

    cols, ready = common(g, observer, zone, None)
    rcode_t = g.types("rcode")
    is_response = (rcode_t != NULL) & (rcode_t != ABSENT)
    flags = np.where(is_response, 0x8000, 0).astype(np.uint16)
    for name, bit in (("AA", 0x0400), ("TC", 0x0200), ("RD", 0x0100), ("RA", 0x0080)):
        flags[g.types(name) == TRUE] |= bit
    qname = g.text("query", _name_text)
    cols |= {
        "dns_id": g.ints("trans_id", np.uint16, 0, 65535),
        "is_response": is_response,
        "qname": qname,
        "qtype": g.ints("qtype", np.uint16, 0, 65535),
        "qclass": g.ints("qclass", np.uint16, 0, 65535),
        "rcode": g.ints("rcode", np.uint8, 0, 255),
        "flags": flags,
        "answers": _answers(g, qname),
    }
    return _ready(cols, ready)


def _answers(g: Group, qname: np.ndarray) -> np.ndarray:
    """_zeek_answers per row (a list of dicts per row is the column's shape). The
    query-independent part is computed once per distinct (answers, TTLs, qtype) text:
    lines of one resolver repeat their answers."""
    from fusion.adapters import _zeek_answer_parts
    from pipeline.schema import DNS_TYPE_NAMES

    out = np.empty(g.n, dtype=object)
    out[:] = [[] for _ in range(g.n)]
    answers_t = g.types("answers")
    rows = np.flatnonzero(answers_t == ARR)
    if not len(rows):
        return out
    joined = g.s.joined
    a_vs, a_ve = g.span("answers")
    t_vs, t_ve = g.span("TTLs")
    has_ttls = (g.types("TTLs") == ARR)[rows]
    qtype_int = (g.types("qtype") == INT)[rows]
    qtype_v = g.s.iv[K["qtype"], g.rows][rows]
    memo: dict[tuple, list] = {}
    # plain lists: no numpy scalar per row
    for i, a, b, with_ttls, c, d, is_int, qv, name in zip(
            rows.tolist(), a_vs[rows].tolist(), a_ve[rows].tolist(), has_ttls.tolist(),
            t_vs[rows].tolist(), t_ve[rows].tolist(), qtype_int.tolist(), qtype_v.tolist(),
            qname[rows].tolist(), strict=True):
        key = (joined[a:b], joined[c:d] if with_ttls else None, qv if is_int else None)
        parts = memo.get(key)
        if parts is None:
            qtype = DNS_TYPE_NAMES.get(qv, "") if is_int else ""
            ttls = orjson.loads(key[1]) if with_ttls else []
            try:
                parts = _zeek_answer_parts(orjson.loads(key[0]), ttls, qtype)
            except (TypeError, ValueError, OverflowError):  # the general path dead-letters
                raise Fallback from None
            memo[key] = parts
        out[i] = [{"name": name, "type": rtype, "class": "IN", "ttl": ttl, "data": data}
                  for rtype, ttl, data in parts]
    return out


def _http_host(v: str) -> str:
    """ZeekAdapter._http's host: lower case, a single ':port' cut."""
    return v.lower().rsplit(":", 1)[0] if v.count(":") == 1 else v.lower()


def http_columns(g: Group, observer: str, zone: str) -> dict:
    """ZeekAdapter._http (proto defaults to tcp)."""
    cols, ready = common(g, observer, zone, "tcp")
    cols |= {
        "method": g.text("method"),
        "host": g.text("host", _http_host, default_if_other=""),  # not text -> ""
        "uri": g.text("uri"),
        "version": g.text("version"),
        "user_agent": g.text("user_agent"),
        "referrer": g.text("referrer"),
        "status": g.ints("status_code", np.uint16, 0, 65535),
        "request_body_bytes": g.ints("request_body_len", np.int64, -1, 2**62, default=-1),
        "response_body_bytes": g.ints("response_body_len", np.int64, -1, 2**62, default=-1),
        "response_mime_type": _first_text(g, "resp_mime_types"),
        "basic_auth_user": g.text("username"),
    }
    return _ready(cols, ready)


def _first_text(g: Group, key: str) -> np.ndarray:
    """_first(value) as text: a list's first item (an empty list: ""), or the text."""
    t = g.types(key)
    _only(t, (ARR, STR, STR_ESC, NULL, ABSENT))
    out = g.text(key, default_if_other="")  # text rows; lists filled below
    rows = np.flatnonzero(t == ARR)
    if len(rows):
        vs, ve = g.span(key)
        codes, reps = factorize_spans(g.s.buf, vs, ve, rows)
        joined = g.s.joined
        firsts = []
        for a, b in zip(vs[reps].tolist(), ve[reps].tolist(), strict=True):
            items = orjson.loads(joined[a:b])  # one per distinct list
            first = items[0] if items else None
            if first is not None and type(first) is not str:
                raise Fallback  # "not text": the general path dead-letters it
            firsts.append("" if first is None else first)
        table = np.empty(len(firsts), dtype=object)
        table[:] = firsts
        out[rows] = table[codes]
    return out


# Zeek log -> (schema kind, column builder)
COLUMNS = {"conn": ("flow", conn_columns), "dns": ("dns", dns_columns),
           "http": ("http", http_columns)}
