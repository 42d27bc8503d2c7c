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

import gc

import numpy as np
import orjson

from fusion.eve_scan import Fallback, Group, _empty_lists, _only, _ready
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
    gather_ascii,
    parse_decimal_us,
)
from pipeline.jit import njit

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


# What answer_items tells of an answer's data (_zeek_answer_parts' type rule): an IPv4
# literal (A), an IPv6 literal (AAAA), or another text, whose type depends on the query type.
ANSWER_A, ANSWER_AAAA, ANSWER_OTHER = 0, 1, 2
_TTL_LIMIT = 2**32  # a DNS TTL is unsigned 32-bit (adapters._ttl_seconds)
_HEXCOLON = np.zeros(256, dtype=np.bool_)  # the characters of an IPv6 literal, dots too
_HEXCOLON[list(b"0123456789abcdefABCDEF:.")] = True


@njit(inline="always")
def _skip_ws(buf, p, end):
    while p < end and (buf[p] == 32 or buf[p] == 9 or buf[p] == 10 or buf[p] == 13):
        p += 1
    return p


@njit
def answer_items(buf, a_s, a_e, t_s, t_e, has_ttls, hexcolon):
    """Each row's answers array buf[a_s[r]:a_e[r]] (and TTLs array buf[t_s[r]:t_e[r]] where
    has_ttls[r]) -> the items _zeek_answer_parts would make, without a Python object.

    Returns per row (item count, ok) and per item, rows in order: data span (the string's
    content), TTL in whole seconds, ANSWER_* kind. A row is ok only when every answer is a
    plain ASCII string (no escape) and every TTL read is null (-> 0) or a plain number
    0 <= x < 2**32 with at most 6 fractional digits: then int(float(text)) == its integer
    part (the gap to the next integer, >= 1e-6, exceeds half an ulp below 2**32), exactly
    what _ttl_seconds gives. Anything else (escapes, non-ASCII, numbers as text, a minus,
    an exponent, more digits) leaves the row not ok, for the caller's exact Python path;
    TTLs past the last answer are not read (_zeek_answer_parts does not read them).
    Spans out of the buffer or not bracketed leave a row not ok: never read out of range."""
    n = a_s.shape[0]
    blen = buf.shape[0]
    cap = 0
    for r in range(n):
        if 0 <= a_s[r] < a_e[r] <= blen:
            cap += (a_e[r] - a_s[r]) // 3 + 1  # an item is >= 3 bytes with its comma
    counts = np.zeros(n, np.int64)
    ok = np.zeros(n, np.bool_)
    ds = np.empty(cap, np.int64)
    de = np.empty(cap, np.int64)
    ttl = np.empty(cap, np.int64)
    kind = np.empty(cap, np.int8)
    m = 0
    for r in range(n):
        s = a_s[r]
        e = a_e[r]
        if s < 0 or e > blen or s >= e or buf[s] != 91 or buf[e - 1] != 93:
            continue
        e -= 1  # at the closing bracket
        tp = 0
        te = 0
        t_live = False  # TTL items left to read
        if has_ttls[r]:
            tp = t_s[r]
            te = t_e[r]
            if tp < 0 or te > blen or tp >= te or buf[tp] != 91 or buf[te - 1] != 93:
                continue
            te -= 1
            tp += 1
            t_live = True
        m0 = m
        good = True
        p = _skip_ws(buf, s + 1, e)
        i = 0
        while p < e:
            if i > 0:  # a comma between items
                if buf[p] != 44:
                    good = False
                    break
                p = _skip_ws(buf, p + 1, e)
                if p >= e:
                    good = False
                    break
            if buf[p] != 34 or m >= cap:
                good = False
                break
            q = p + 1
            dots = 0
            digits = 0
            colon = False
            hexy = True
            while q < e:
                c = buf[q]
                if c == 34:
                    break
                if c == 92 or c < 32 or c >= 128:  # escape or non-ASCII: the Python path
                    good = False
                    break
                if c == 46:
                    dots += 1
                elif 48 <= c <= 57:
                    digits += 1
                elif c == 58:
                    colon = True
                hexy = hexy and hexcolon[c]
                q += 1
            if not good or q >= e:
                good = False
                break
            size = q - p - 1
            # data.count(".") == 3 and data.replace(".", "").isdecimal(): A;
            # ":" in data and only hex digits, ":" and ".": AAAA; else by the query type
            if dots == 3 and digits > 0 and digits + 3 == size:
                kind[m] = 0
            elif colon and hexy:
                kind[m] = 1
            else:
                kind[m] = 2
            ds[m] = p + 1
            de[m] = q
            # this answer's TTL: the next item of the TTLs array, 0 past its end
            v = 0
            if t_live:
                tp = _skip_ws(buf, tp, te)
                if i > 0 and tp < te:
                    if buf[tp] != 44:
                        good = False
                        break
                    tp = _skip_ws(buf, tp + 1, te)
                    if tp >= te:
                        good = False
                        break
                if tp >= te:
                    t_live = False
                elif buf[tp] == 110:  # null -> 0
                    if tp + 4 > te or buf[tp + 1] != 117 or buf[tp + 2] != 108 \
                            or buf[tp + 3] != 108:
                        good = False
                        break
                    tp += 4
                elif 48 <= buf[tp] <= 57:
                    nd = 0
                    while tp < te and 48 <= buf[tp] <= 57 and nd <= 10:
                        v = v * 10 + (buf[tp] - 48)
                        nd += 1
                        tp += 1
                    if nd > 10 or v >= _TTL_LIMIT or (nd > 1 and buf[tp - nd] == 48):
                        good = False
                        break
                    if tp < te and buf[tp] == 46:
                        tp += 1
                        fd = 0
                        while tp < te and 48 <= buf[tp] <= 57:
                            fd += 1
                            tp += 1
                        if fd == 0 or fd > 6:
                            good = False
                            break
                    if tp < te and buf[tp] != 44 and buf[tp] != 32 and buf[tp] != 9 \
                            and buf[tp] != 10 and buf[tp] != 13:
                        good = False  # an exponent, or anything else after the number
                        break
                else:  # text, a minus, true/false, a list...: the Python path
                    good = False
                    break
            ttl[m] = v
            m += 1
            i += 1
            p = _skip_ws(buf, q + 1, e)
        if good:
            ok[r] = True
            counts[r] = m - m0
        else:
            m = m0
    return counts, ok, ds[:m], de[:m], ttl[:m], kind[:m]


def _answers(g: Group, qname: np.ndarray) -> np.ndarray:
    """_zeek_answers per row: a new list of new {name, type, class, ttl, data} dicts per
    row (the column's shape; nothing is shared between rows, so a consumer may change one
    event's answers). answer_items reads plain answers in one compiled pass; the rows it
    declines are computed by _zeek_answer_parts itself, once per distinct
    (answers, TTLs, qtype) text."""
    rows = np.flatnonzero(g.types("answers") == ARR)
    if not len(rows):
        return _empty_lists(g.n)
    buf = g.s.buf
    a_vs, a_ve = g.span("answers")
    t_vs, t_ve = g.span("TTLs")
    has_ttls = (g.types("TTLs") == ARR)[rows]
    counts, ok, ds, de, ttl, kind = answer_items(
        buf, a_vs[rows], a_ve[rows], np.where(has_ttls, t_vs[rows], 0),
        np.where(has_ttls, t_ve[rows], 0), has_ttls, _HEXCOLON)
    is_int = (g.types("qtype") == INT)[rows]
    qtype_v = np.where(is_int, g.s.iv[K["qtype"], g.rows][rows], -1)
    # rows without answers (or none taken by the kernel): a new empty list each
    out = np.empty(g.n, dtype=object)
    empty = np.ones(g.n, dtype=bool)
    empty[rows[ok]] = False
    if empty.any():
        out[empty] = _empty_lists(int(empty.sum()))
    if not ok.all():
        _answers_by_text(g, qname, rows[~ok], has_ttls[~ok], is_int[~ok], qtype_v[~ok], out)
    if not len(ds):
        return out
    # data: one str per distinct text (ASCII, checked by the kernel)
    codes, reps = factorize_spans(buf, ds, de, np.arange(len(ds)))
    text, offs, _ = gather_ascii(buf, ds[reps], de[reps], np.zeros(len(reps), np.bool_), False)
    whole = text.tobytes().decode("ascii")
    offs = offs.tolist()
    data = np.empty(len(reps), dtype=object)
    data[:] = [whole[a:b] for a, b in zip(offs[:-1], offs[1:], strict=True)]
    # type: A / AAAA, or by the row's query type (one lookup per distinct query type)
    good = np.flatnonzero(ok)
    item_row = np.repeat(good, counts[good])
    qtypes, qcode = np.unique(qtype_v[item_row], return_inverse=True)
    type_names = np.empty(2 + len(qtypes), dtype=object)
    type_names[:] = ["A", "AAAA"] + [_other_type(v) for v in qtypes.tolist()]
    type_code = np.where(kind == ANSWER_OTHER, 2 + qcode.reshape(-1), kind)
    names = qname[rows[item_row]].tolist()
    enabled = gc.isenabled()
    gc.disable()  # n new containers would trigger collections walking the young heap
    try:
        items = zip(names, type_names[type_code].tolist(), ttl.tolist(), data[codes].tolist(),
                    strict=True)
        if (counts[good] == 1).all():  # one answer a row (the usual case): no slicing
            lists = [[{"name": a, "type": b, "class": "IN", "ttl": c, "data": d}]
                     for a, b, c, d in items]
        else:
            dicts = [{"name": a, "type": b, "class": "IN", "ttl": c, "data": d}
                     for a, b, c, d in items]
            ends = np.cumsum(counts[good]).tolist()
            lists = [dicts[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        out[rows[good]] = np.fromiter(lists, dtype=object, count=len(lists))
    finally:
        if enabled:
            gc.enable()
    return out


def _other_type(qtype: int) -> str:
    """_zeek_answer_parts' type of an answer that is no address literal (-1: no integer
    query type)."""
    from pipeline.schema import DNS_TYPE_NAMES

    name = DNS_TYPE_NAMES.get(qtype, "") if qtype >= 0 else ""
    return "CNAME" if name in ("A", "AAAA") else name


def _answers_by_text(g: Group, qname: np.ndarray, rows: np.ndarray, has_ttls: np.ndarray,
                     is_int: np.ndarray, qtype_v: np.ndarray, out: np.ndarray) -> None:
    """The rows answer_items declines, by _zeek_answer_parts itself (the definition),
    once per distinct (answers, TTLs, qtype) text."""
    from fusion.adapters import _zeek_answer_parts
    from pipeline.schema import DNS_TYPE_NAMES

    joined = g.s.joined
    a_vs, a_ve = g.span("answers")
    t_vs, t_ve = g.span("TTLs")
    memo: dict[tuple, list] = {}
    for i, a, b, with_ttls, c, d, int_qtype, qv, name in zip(
            rows.tolist(), a_vs[rows].tolist(), a_ve[rows].tolist(), has_ttls.tolist(),
            t_vs[rows].tolist(), t_ve[rows].tolist(), is_int.tolist(), qtype_v.tolist(),
            qname[rows].tolist(), strict=True):
        key = (joined[a:b], joined[c:d] if with_ttls else None, qv if int_qtype else None)
        parts = memo.get(key)
        if parts is None:
            qtype = DNS_TYPE_NAMES.get(qv, "") if int_qtype else ""
            ttls = orjson.loads(key[1]) if with_ttls else []
            try:
                parts = _zeek_answer_parts(orjson.loads(key[0]), ttls, qtype)
            except (TypeError, ValueError, OverflowError):  # the general path dead-letters
                raise Fallback from None
            memo[key] = parts
        out[i] = [{"name": name, "type": rtype, "class": "IN", "ttl": ttl, "data": data}
                  for rtype, ttl, data in parts]


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
