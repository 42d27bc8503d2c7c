"""fusion.json_scan kernels against Python's own parsers, and the EVE scan path
(EveAdapter.convert -> fusion.eve_scan) against the decode-then-map path it replaces.

- scan_lines: on hypothesis JSON objects, their mutations (bytes deleted, inserted,
  replaced; truncation) and random bytes: a line the scanner passes is one orjson accepts
  as an object, and every wanted key's type and value agree with orjson's; a line orjson
  rejects is always flagged. Never reads out of range (random spans included).
- parse_iso31 against datetime.fromisoformat, parse_ipv4 against inet_pton,
  factorize_spans against a dict.
- EveAdapter.convert (scan path) equals EveAdapter._convert_decoded (msgspec / orjson
  path, HEAD's code) on generated EVE records of varied shapes and their mutations: same
  batches, columns, dtypes, values, dead letters, reasons, unmapped counts.
"""

from __future__ import annotations

import json
import socket
from datetime import datetime

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fusion_fastpath import _assert_same

from fusion import eve_scan, json_scan
from fusion.adapters import EveAdapter
from fusion.eve_scan import EVE_KEYS
from fusion.json_scan import (
    KeyTable,
    factorize_spans,
    gather_ascii,
    join_lines,
    parse_ipv4,
    parse_iso31,
    scan_lines,
)

KEYS = KeyTable(["a", "b", "src_ip", "flow", "flow.a", "flow.bytes", "x\u00e9"])
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=8) | st.sampled_from(["1.2.3.4", "\\", "\"", "\u00e9", "\x01"]))
NAMES = st.sampled_from(["a", "b", "src_ip", "flow", "bytes", "x\u00e9", "c", ""])
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(NAMES, inner, max_size=4), max_leaves=12)
OBJECTS = st.dictionaries(NAMES, VALUES, max_size=6)


def _scan(lines: list[bytes], keys: KeyTable = KEYS):
    buf, starts, ends, _ = join_lines(lines)
    return scan_lines(buf, starts, ends, keys.names, keys.offsets, keys.first, keys.next)


def _expected_type(v) -> int:
    if v is None:
        return json_scan.NULL
    if v is True:
        return json_scan.TRUE
    if v is False:
        return json_scan.FALSE
    if type(v) is int:
        return json_scan.INT
    if type(v) is float:
        return json_scan.FLOAT
    if type(v) is str:
        return json_scan.STR
    return json_scan.OBJ if type(v) is dict else json_scan.ARR


def _check_lines(lines: list[bytes], keys: KeyTable = KEYS) -> None:
    vs, ve, vt, iv, flags = _scan(lines, keys)
    joined = b"".join(lines)
    for i, line in enumerate(lines):
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            rec = orjson  # a marker: orjson rejects the line
        if flags[i]:
            if flags[i] == json_scan.FLAG_BLANK:
                assert not line.strip()
            elif flags[i] == json_scan.FLAG_INVALID:
                assert rec is orjson or type(rec) is not dict, line
            continue
        assert type(rec) is dict, line  # passed by the scanner: orjson takes it as an object
        for k, path in enumerate(keys.paths):
            parent, _, name = path.rpartition(".")
            holder = rec.get(parent) if parent else rec
            if type(holder) is not dict or name not in holder:
                assert vt[k, i] == json_scan.ABSENT, (line, path)
                continue
            value = holder[name]
            t = vt[k, i]
            if t == json_scan.STR_ESC:
                assert type(value) is str
            else:
                assert t == _expected_type(value), (line, path)
            if t == json_scan.INT:
                assert iv[k, i] == value
            if t in (json_scan.STR, json_scan.STR_ESC):
                assert orjson.loads(joined[vs[k, i] - 1:ve[k, i] + 1]) == value
            else:
                assert orjson.loads(joined[vs[k, i]:ve[k, i]]) == value


@settings(max_examples=100, deadline=None)
@given(st.lists(OBJECTS, min_size=1, max_size=5))
def test_scan_agrees_with_orjson_on_objects(objs) -> None:
    _check_lines([json.dumps(o, ensure_ascii=i % 2 == 0).encode() + b"\n"
                  for i, o in enumerate(objs)])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OBJECTS, st.lists(st.tuples(st.integers(0, 400), st.integers(0, 3), st.binary(max_size=3)),
                         min_size=1, max_size=4))
def test_scan_agrees_with_orjson_on_mutated_bytes(obj, edits) -> None:
    line = bytearray(json.dumps(obj, ensure_ascii=False).encode())
    for pos, how, data in edits:
        pos = min(pos, len(line))
        if how == 0:
            del line[pos:pos + max(1, len(data))]
        elif how == 1:
            line[pos:pos] = data
        elif how == 2:
            line[pos:pos + len(data)] = data
        else:
            del line[pos:]
    _check_lines([bytes(line), b"  \n", json.dumps(obj).encode()])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=6))
def test_scan_random_bytes(lines) -> None:
    _check_lines(lines)


def test_duplicate_escaped_and_deep_lines_are_unsure() -> None:
    lines = [b'{"a":1,"a":2}', b'{"fl\\u006fw":{}}', b'{"c":' + b"[" * 80 + b"]" * 80 + b"}",
             b'{"b":"\\ud800"}', b'{"b":1e5}', b'{"b":12345678901234567890}', b'{"a":1}']
    flags = _scan(lines)[4]
    assert flags.tolist() == [json_scan.FLAG_UNSURE] * 6 + [0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), max_size=20),
       st.binary(max_size=100))
def test_column_kernels_stay_in_bounds(spans, data) -> None:
    """Spans come from the scanner; still, the kernels accept any in-range span."""
    buf = np.frombuffer(data + b"\0", dtype=np.uint8)
    vs = np.array([min(a, b, len(data)) for a, b in spans], dtype=np.int64)
    ve = np.array([min(max(a, b), len(data)) for a, b in spans], dtype=np.int64)
    rows = np.arange(len(spans), dtype=np.int64)
    out = np.zeros((len(spans), 16), np.uint8)
    parse_ipv4(buf, vs, ve, rows, out)
    parse_iso31(buf, vs, ve, rows)
    codes, reps = factorize_spans(buf, vs, ve, rows)
    skip = np.zeros(len(spans), dtype=bool)
    gather_ascii(buf, vs, ve, skip, True)
    gather_ascii(buf, ve, vs, skip, False)  # reversed spans: left empty, not read
    texts = [data[a:b] for a, b in zip(vs.tolist(), ve.tolist(), strict=True)]
    firsts: dict[bytes, int] = {}
    assert codes.tolist() == [firsts.setdefault(t, len(firsts)) for t in texts]
    assert [texts[r] for r in reps.tolist()] == list(firsts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("aZ.-\u00e9\x7f0\\"), max_size=8)
                | st.binary(max_size=8).map(lambda b: b.decode("latin-1")), max_size=8),
       st.booleans(), st.data())
def test_gather_ascii_matches_decode_rstrip_lower(texts, fold, data) -> None:
    """One decode of the gathered spans, sliced, equals a decode (and, with fold, the DNS
    name normalization rstrip('.').lower()) per span; non-ASCII and skipped spans are
    left to the caller."""
    raw = [t.encode("latin-1") if any(ord(c) > 127 for c in t) else t.encode() for t in texts]
    joined = b"|".join(raw)
    starts = np.cumsum([0] + [len(r) + 1 for r in raw[:-1]]).astype(np.int64)[:len(raw)]
    ends = starts + np.array([len(r) for r in raw], dtype=np.int64)
    skip = np.array(data.draw(st.lists(st.booleans(), min_size=len(raw), max_size=len(raw))),
                    dtype=bool)
    out, offs, ok = gather_ascii(np.frombuffer(joined + b"\0", dtype=np.uint8), starts, ends,
                                 skip, fold)
    whole = out.tobytes().decode("ascii")
    for i, r in enumerate(raw):
        assert ok[i] == (not skip[i] and r.isascii())
        got = whole[offs[i]:offs[i + 1]]
        if ok[i]:
            assert got == (r.decode().rstrip(".").lower() if fold else r.decode())
        else:
            assert got == ""


def _one_span(text: bytes):
    buf = np.frombuffer(text + b"\0", dtype=np.uint8)
    return buf, np.array([0]), np.array([len(text)]), np.array([0])


@settings(max_examples=150, deadline=None)
@given(st.datetimes(min_value=datetime(1890, 1, 1), max_value=datetime(2210, 1, 1)),
       st.integers(-23 * 60 - 59, 23 * 60 + 59), st.sampled_from(["", "T", "Z", "60", "99"]))
def test_parse_iso31_matches_fromisoformat(dt, offset_min, spoil) -> None:
    sign = "+" if offset_min >= 0 else "-"
    text = (f"{dt:%Y-%m-%dT%H:%M:%S.%f}{sign}{abs(offset_min) // 60:02d}"
            f"{abs(offset_min) % 60:02d}")
    if spoil == "T":
        text = text.replace("T", " ")
    elif spoil == "Z":
        text = text[:26] + "Z"
    elif spoil:
        text = text[:17] + spoil + text[19:]  # seconds 60 / 99
    buf, vs, ve, rows = _one_span(text.encode())
    ns, ok = parse_iso31(buf, vs, ve, rows)
    try:
        ref = datetime.fromisoformat(text)
    except ValueError:
        ref = None
    if ok[0]:
        assert ref is not None and 1900 <= dt.year <= 2200
        epoch = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
        assert ns[0] == (ref - epoch) // _ONE_US * 1000
    else:
        assert ref is None or text[10] != "T" or len(text) != 31 or not 1900 <= dt.year <= 2200


_ONE_US = datetime(1970, 1, 1, 0, 0, 0, 1) - datetime(1970, 1, 1)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t))),
                 st.text(alphabet="0123456789.", max_size=17),
                 st.sampled_from(["01.2.3.4", "1.2.3", "1.2.3.4.", "::1", "1..2.3"])))
def test_parse_ipv4_matches_inet_pton(text) -> None:
    buf, vs, ve, rows = _one_span(text.encode())
    out = np.zeros((1, 16), np.uint8)
    ok = parse_ipv4(buf, vs, ve, rows, out)
    try:
        ref = socket.inet_pton(socket.AF_INET, text)
    except OSError:
        ref = None
    assert bool(ok[0]) == (ref is not None)
    if ref is not None:
        assert bytes(out[0]) == bytes(10) + b"\xff\xff" + ref


# --- the EVE scan path against the decode-then-map path ---------------------------------------

TIMES = st.sampled_from(["2024-07-30T16:01:02.123456+0000", "2018-07-05T15:01:09.820360-0400",
                         "2024-07-30T16:01:02Z", "9999-01-01T00:00:00.000000+0000", None, 5])
TEXTS = st.sampled_from(["a.example.", "Host\\u00e9", "A\u00e9b", "", "\"q\"", "UDP", "tcp",
                         "17", "1b", "zz", "timeout", "forced", "answer", "query"])
EVE_VALUES = (TEXTS | st.none() | st.booleans() | st.integers(-2, 70000)
              | st.sampled_from([1.5, 2.0, [], [5], {"x": 1}, 2**63]))
IPS = st.sampled_from(["10.0.0.1", "192.168.1.254", "2001:db8::1", "::ffff:1.2.3.4",
                       "01.2.3.4", "1.2.3", "", None, 7])


def _eve_record(draw) -> dict:
    et = draw(st.sampled_from(["flow", "dns", "alert", "stats", "http", "anomaly"]))
    rec = {"timestamp": draw(TIMES), "event_type": et, "src_ip": draw(IPS),
           "dest_ip": draw(IPS), "src_port": draw(st.integers(0, 65535) | EVE_VALUES),
           "dest_port": draw(st.integers(0, 65535)), "proto": draw(TEXTS | st.integers(0, 300))}
    for key in draw(st.lists(st.sampled_from(["host", "vlan", "community_id", "icmp_type",
                                              "icmp_code"]), max_size=3)):
        rec[key] = draw(EVE_VALUES | st.lists(st.integers(0, 5000), max_size=2))
    if draw(st.booleans()):
        del rec["src_port"]
    sub = {"flow": ["pkts_toserver", "bytes_toclient", "start", "end", "reason"],
           "dns": ["type", "id", "rrname", "rrtype", "flags", "rcode"],
           "alert": ["signature_id", "signature", "category", "severity", "action"],
           "stats": ["uptime"], "http": ["hostname", "url"], "anomaly": ["event"]}[et]
    inner = {}
    for key in sub:
        if draw(st.integers(0, 4)):
            inner[key] = draw(EVE_VALUES | TIMES | st.integers(0, 2**40))
    if et == "dns":  # answer records: EVE v1 (one RR) and v2 (answers list / grouped)
        for key, values in (("version", st.sampled_from([2, 1, "2"])),
                            ("answers", st.lists(st.fixed_dictionaries(
                                {"rrname": TEXTS, "rrtype": TEXTS, "ttl": EVE_VALUES,
                                 "rdata": TEXTS | EVE_VALUES}), max_size=3) | EVE_VALUES),
                            ("grouped", st.dictionaries(TEXTS, st.lists(TEXTS | EVE_VALUES,
                                                                        max_size=2),
                                                        max_size=2) | EVE_VALUES),
                            ("rdata", TEXTS | EVE_VALUES), ("ttl", EVE_VALUES)):
            if draw(st.integers(0, 3)) == 0:
                inner[key] = draw(values)
    if et == "flow" and draw(st.booleans()):
        rec["tcp"] = {"tcp_flags_ts": draw(EVE_VALUES), "tcp_flags_tc": "1b"}
    rec[et] = draw(st.sampled_from([inner, inner, inner, None, 5]))
    return rec


EVE_RECORDS = st.composite(lambda draw: _eve_record(draw))()

# Well-formed records (the common case, which the scan path builds itself), with a few
# value variants each; mixed with the hostile ones above.
GOOD_TIME = st.sampled_from(["2024-07-30T16:01:02.123456+0000", "2018-07-05T15:01:09.820360-0400",
                             "2016-02-29T23:59:59.999999+0530"])
GOOD_IP = st.sampled_from(["10.0.0.1", "192.168.1.254", "2001:db8::1", "0.0.0.0"])
NAME = st.sampled_from(["www.Example.org.", "a.b", "", "x\u00e9.test", "\u00c9T\u00c9.fr"])
GOOD_INNER = {
    "flow": {"pkts_toserver": st.integers(0, 10**6), "bytes_toclient": st.integers(0, 10**12),
             "start": GOOD_TIME, "end": GOOD_TIME,
             "reason": st.sampled_from(["timeout", "forced", "shutdown", "odd", None])},
    "dns": {"type": st.sampled_from(["query", "answer"]), "id": st.integers(0, 65535),
            "rrname": NAME, "rrtype": st.sampled_from(["A", "AAAA", "PTR", "TXT", "XX"]),
            "flags": st.sampled_from(["8180", "0", "ffff", None]),
            "rcode": st.sampled_from(["NOERROR", "NXDOMAIN", "XX"]),
            "version": st.sampled_from([2, 1]), "ttl": st.integers(0, 3600),
            "rdata": st.sampled_from(["1.2.3.4", "x.org"]),
            "answers": st.lists(st.fixed_dictionaries(
                {"rrname": NAME, "rrtype": st.sampled_from(["A", "CNAME"]),
                 "ttl": st.integers(0, 99), "rdata": st.sampled_from(["1.2.3.4", "x.org"])}),
                max_size=3),
            "grouped": st.dictionaries(st.sampled_from(["A", "CNAME"]),
                                       st.lists(st.sampled_from(["1.2.3.4", "y.org"]),
                                                max_size=2), max_size=2)},
    "alert": {"signature_id": st.integers(1, 10**9) | st.sampled_from(["sid-1"]),
              "signature": NAME, "category": NAME, "severity": st.integers(1, 4),
              "action": st.sampled_from(["allowed", "blocked"])},
}


@st.composite
def _good_eve_record(draw) -> dict:
    et = draw(st.sampled_from(["flow", "dns", "alert", "stats"]))
    rec = {"timestamp": draw(GOOD_TIME), "event_type": et, "src_ip": draw(GOOD_IP),
           "dest_ip": draw(GOOD_IP), "src_port": draw(st.integers(0, 65535)),
           "dest_port": draw(st.integers(0, 65535)),
           "proto": draw(st.sampled_from(["TCP", "udp", "17", "IPv6-ICMP"]))}
    if draw(st.booleans()):
        rec["host"] = draw(NAME)
    if draw(st.booleans()):
        rec["vlan"] = draw(st.lists(st.integers(0, 4095), max_size=2))
    if draw(st.booleans()):
        rec["community_id"] = "1:abc="
    if et in GOOD_INNER:
        rec[et] = {k: draw(v) for k, v in GOOD_INNER[et].items() if draw(st.integers(0, 3))}
    if et == "flow" and draw(st.booleans()):
        rec["tcp"] = {"tcp_flags_ts": draw(st.sampled_from(["1b", "00", "ff"])),
                      "tcp_flags_tc": "1a"}
    return rec


MIXED_RECORDS = st.one_of(_good_eve_record(), _good_eve_record(), EVE_RECORDS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(_good_eve_record(), min_size=1, max_size=12),
                st.lists(MIXED_RECORDS, min_size=1, max_size=12)), st.booleans())
def test_eve_scan_path_equals_decoded_path(records, blank) -> None:
    lines = [json.dumps(r, ensure_ascii=False).encode().replace(b"\\\\u", b"\\u") + b"\n"
             for r in records]
    if blank:
        lines.insert(len(lines) // 2, b" \n")
    adapter = EveAdapter(observer="sensor-x", zone="dmz")
    expected = adapter._convert_decoded([ln for ln in lines if ln.strip()])
    _assert_same(adapter.convert(lines), expected)


def test_eve_scan_builds_columns_without_decoding(monkeypatch) -> None:
    """Plain flow/DNS-query/alert lines take the scan path: the decoder is not called."""
    lines = [
        b'{"timestamp":"2024-07-30T16:01:02.123456+0000","event_type":"flow","src_ip":'
        b'"10.0.0.1","src_port":5000,"dest_ip":"192.0.2.1","dest_port":443,"proto":"TCP",'
        b'"flow":{"pkts_toserver":3,"pkts_toclient":2,"bytes_toserver":300,"bytes_toclient":'
        b'200,"start":"2024-07-30T16:01:01.000000+0000","end":"2024-07-30T16:01:02.000000+0000"'
        b',"reason":"timeout"},"tcp":{"tcp_flags_ts":"1b","tcp_flags_tc":"1a"}}',
        b'{"timestamp":"2024-07-30T16:01:02.123456+0200","event_type":"dns","src_ip":'
        b'"2001:db8::1","src_port":5353,"dest_ip":"2001:db8::2","dest_port":53,"proto":"UDP",'
        b'"dns":{"type":"query","id":7,"rrname":"WWW.Example.ORG.","rrtype":"AAAA"}}',
        b'{"timestamp":"2024-07-30T16:01:02.123456+0000","event_type":"alert","src_ip":'
        b'"10.0.0.1","src_port":5000,"dest_ip":"192.0.2.1","dest_port":80,"proto":"TCP",'
        b'"alert":{"signature_id":2013028,"signature":"ET POLICY x","category":"c",'
        b'"severity":2,"action":"allowed"}}',
        b'{"timestamp":"2024-07-30T16:01:02.123456+0000","event_type":"stats","stats":{}}',
    ]
    adapter = EveAdapter()
    expected = adapter._convert_decoded(lines)
    monkeypatch.setattr(EveAdapter, "_convert_decoded", None)  # any use would raise
    result = adapter.convert(lines)
    _assert_same(result, expected)
    assert [b.kind for b in result.batches] == ["flow", "dns", "ids_alert"]
    assert result.unmapped == {"suricata.stats": 1}
    assert result.batches[1].columns["qname"].tolist() == ["www.example.org"]


def test_eve_key_table_covers_the_typed_record() -> None:
    """Every field the scan path reads is a declared key."""
    for path in ("event_type", "flow.start", "tcp.tcp_flags_ts", "dns.rrname",
                 "alert.signature_id"):
        assert path in EVE_KEYS.index
    assert set(eve_scan.COLUMNS) == {"flow", "dns", "alert"}
