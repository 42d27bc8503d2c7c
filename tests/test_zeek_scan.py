"""Zeek JSON scan path (fusion.zeek_scan) against the adapter's decoding path.

The decoding path (ZeekAdapter._convert_decoded: orjson dicts + column-wise mapping) defines
every mapping and dead-letter reason; the scan path must give identical batches, dead
letters and counts on real Zeek logs (../shared/reference/sensor-logs/zeek/json), on
generated lines shaped like Zeek's writer output and on hypothesis-mutated lines. The exact
time parser (json_scan.parse_decimal_us) is checked against the float conversion it replaces.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_fusion_fastpath import _assert_same

from fusion.adapters import ZeekAdapter, _zeek_answer_parts
from fusion.json_scan import FLOAT, INT, STR, parse_decimal_us
from fusion.zeek_scan import (
    _HEXCOLON,
    DURATION_MAX_S,
    TS_MAX_S,
    ZEEK_KEYS,
    _other_type,
    answer_items,
)
from pipeline.schema import DNS_TYPE_NAMES

ZEEK_JSON = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference",
                         "sensor-logs", "zeek", "json")


def _parse_one(text: bytes, vtype: int, value: int, max_int: int) -> tuple[int, bool]:
    buf = np.frombuffer(text + b"\0", dtype=np.uint8)
    us, ok = parse_decimal_us(buf, np.array([0]), np.array([len(text)]),
                              np.array([vtype], np.int8), np.array([value]), max_int)
    return int(us[0]), bool(ok[0])


def _decimal(whole: int, frac: str) -> bytes:
    return f"{whole}.{frac}".encode() if frac else str(whole).encode()


_EDGE_WHOLE = [0, 1, 59, 2**21 - 1, 1_547_188_415, 1_713_484_795, 2**31, 2**32 - 1]


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from(_EDGE_WHOLE)),
       st.one_of(st.text("0123456789", min_size=1, max_size=6),
                 st.sampled_from(["5", "05", "000005", "999999", "000001", "500000", "0"])))
def test_decimal_us_equals_rint_of_float(whole, frac) -> None:
    """<= 6 fractional digits and < 2**32 s: exact us == rint(float(text) * 1e6), the
    adapter's conversion of a JSON float ts; < 2**21 s also == rint(float * 1e9) / 1000
    (its duration conversion)."""
    text = _decimal(whole, frac)
    us, ok = _parse_one(text, FLOAT, 0, TS_MAX_S)
    assert ok
    assert us == int(np.rint(np.float64(float(text)) * 1e6))
    assert us == int(round(float(text) * 1e6))
    small = whole % DURATION_MAX_S
    text = _decimal(small, frac)
    us, ok = _parse_one(text, FLOAT, 0, DURATION_MAX_S)
    assert ok and us * 1000 == int(np.rint(float(text) * 1e9))


@settings(max_examples=500, deadline=None)
@given(st.integers(-(2**40), 2**40))
def test_decimal_us_integers(v) -> None:
    us, ok = _parse_one(str(v).encode(), INT, v, TS_MAX_S)
    assert ok == (0 <= v < TS_MAX_S)
    if ok:
        assert us == v * 1_000_000 == int(np.rint(float(v) * 1e6))


@pytest.mark.parametrize("text", [b"-1.5", b"-0.0", b"1.1234567", b"4294967296.0",
                                  b"99999999999999999999.1", b"1.", b".5", b"1.5x", b""])
def test_decimal_us_declines_what_it_cannot_do_exactly(text) -> None:
    assert not _parse_one(text, FLOAT, 0, TS_MAX_S)[1]


def test_decimal_us_declines_other_types_and_bad_spans() -> None:
    assert not _parse_one(b"1.5", STR, 0, TS_MAX_S)[1]
    buf = np.frombuffer(b"1.5", dtype=np.uint8)
    for vs, ve in ((-1, 2), (0, 9), (2, 1)):  # hostile spans: never read out of range
        _, ok = parse_decimal_us(buf, np.array([vs]), np.array([ve]),
                                 np.array([FLOAT], np.int8), np.array([0]), TS_MAX_S)
        assert not ok[0]


# --- the adapter: scan path == decoding path -----------------------------------------------

def _both(lines: list[bytes], log: str | None):
    return (ZeekAdapter(observer="z1", zone="dmz").convert(lines, log),
            ZeekAdapter(observer="z1", zone="dmz")._convert_decoded(lines, log))


def _reference_logs() -> list[str]:
    files = sorted(f for f in glob.glob(os.path.join(ZEEK_JSON, "*.json"))
                   if "expected" not in f)
    if not files:
        pytest.skip("../shared reference Zeek logs absent")
    return files


def test_reference_zeek_json_logs_same_on_both_paths() -> None:
    """MANIFEST: elastic-*.json (Elastic's Zeek integration test logs) and
    stratosphere-test9-*.json (Stratosphere CTU capture run through Zeek)."""
    for path in _reference_logs():
        with open(path, "rb") as fh:
            lines = fh.read().splitlines()
        log = os.path.basename(path).rsplit("-", 1)[1].split(".")[0]
        scan, decoded = _both(lines, log)
        _assert_same(scan, decoded)


def test_conn_dns_http_take_the_scan_path(monkeypatch) -> None:
    """The reference conn/dns/http logs (incl. 17-digit durations) do not decode."""
    chunks = []
    for path in _reference_logs():
        log = os.path.basename(path).rsplit("-", 1)[1].split(".")[0]
        if log in ("conn", "dns", "http"):
            with open(path, "rb") as fh:
                chunks.append((fh.read().splitlines(), log))
    expected = [ZeekAdapter()._convert_decoded(lines, log) for lines, log in chunks]
    monkeypatch.setattr(ZeekAdapter, "_convert_decoded", None)  # any use would raise
    for (lines, log), exp in zip(chunks, expected, strict=True):
        _assert_same(ZeekAdapter().convert(lines, log), exp)


_BASE = {"ts": 1713484795.123456, "uid": "CabC", "id.orig_h": "10.1.2.3", "id.orig_p": 50000,
         "id.resp_h": "192.0.2.9", "id.resp_p": 443}
_SHAPES = {
    "conn": {"proto": "tcp", "duration": 1.25, "orig_bytes": 517, "resp_bytes": 4012,
             "conn_state": "SF", "history": "ShADadFf", "orig_pkts": 9, "orig_ip_bytes": 1001,
             "resp_pkts": 8, "resp_ip_bytes": 4436, "tunnel_parents": []},
    "dns": {"proto": "udp", "trans_id": 77, "query": "WWW.Example.COM.", "qclass": 1,
            "qtype": 1, "rcode": 0, "AA": False, "TC": False, "RD": True, "RA": True,
            "answers": ["192.0.2.1", "www.example.net"], "TTLs": [60.0, 30.5]},
    "http": {"method": "GET", "host": "WWW.Example.org:8080", "uri": "/a?b=1",
             "version": "1.1", "user_agent": "curl/7.58.0", "request_body_len": 0,
             "response_body_len": 3735, "status_code": 200, "resp_mime_types": ["text/html"],
             "username": "bob"},
}
_ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["10.0.0.1", "::1", "1.2.3", "-", "", "ShAD", "TCP", "icmp",
                     "1713484795.5"]),
    st.lists(st.one_of(st.text(max_size=5), st.integers(), st.none()), max_size=3),
    st.sampled_from([1713484795.1234567, 0.10370898246765137, -0.5, 2**32 + 0.5, 1e8,
                     2097152.000001, 12.0]),
)


@st.composite
def _zeek_lines(draw) -> tuple[list[bytes], str | None]:
    log = draw(st.sampled_from(["conn", "dns", "http"]))
    keys = [*_BASE, *_SHAPES[log], *ZEEK_KEYS.paths]
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        rec = {**_BASE, **_SHAPES[log]}
        for _ in range(draw(st.integers(0, 2))):
            key = draw(st.sampled_from(keys))
            if draw(st.booleans()):
                rec.pop(key, None)
            else:
                rec[key] = draw(_ODD_VALUES)
        line = json.dumps(rec, separators=(",", ":")).encode()  # big ints too
        if draw(st.integers(0, 30)) == 0:  # broken JSON now and then
            line = line[:draw(st.integers(0, len(line)))]
        lines.append(line)
    return lines, draw(st.sampled_from([log, log, None]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_zeek_lines())
def test_mutated_zeek_lines_same_on_both_paths(case) -> None:
    lines, log = case
    _assert_same(*_both(lines, log))


def test_path_field_groups_like_the_decoding_path() -> None:
    lines = [orjson.dumps({**_BASE, **_SHAPES.get(p, {}), "_path": p})
             for p in ("http", "conn", "dns", "conn", "weird", "http")]
    scan, decoded = _both(lines, None)
    _assert_same(scan, decoded)
    assert [b.kind for b in scan.batches] == ["http", "flow", "dns"]
    assert scan.unmapped == {"weird.zeek.unknown": 1}


def test_conn_columns_exact() -> None:
    """A crafted conn line: exact ns times (no float rounding), flags from the history."""
    line = (b'{"ts":1713484795.000001,"id.orig_h":"10.1.2.3","id.orig_p":50000,'
            b'"id.resp_h":"192.0.2.9","id.resp_p":443,"proto":"tcp","duration":0.5,'
            b'"history":"ShADadFf","conn_state":"SF","orig_ip_bytes":1001}')
    result = ZeekAdapter().convert([line], "conn")
    (batch,) = result.batches
    c = batch.columns
    assert c["timestamp"].tolist() == [1_713_484_795_000_001_000]
    assert c["end"].tolist() == [1_713_484_795_500_001_000]
    assert (c["src_tcp_flags"][0], c["dst_tcp_flags"][0]) == (0x02 | 0x10 | 0x18 | 0x11,
                                                              0x12 | 0x10 | 0x18 | 0x11)
    assert c["src_bytes"].tolist() == [1001] and c["transport"].tolist() == [6]



# --- DNS answers: answer_items (compiled) == _zeek_answer_parts (the definition) -------------

_ANSWER_TEXT = st.one_of(
    st.sampled_from(["192.0.2.1", "10.0.0.255", "1.2.3", "1..2.3", "...", "1.2.3.4.",
                     "2001:db8::1", "::ffff:1.2.3.4", "::", "fe80::1%eth0", "dead:beef",
                     "www.example.net", "ns1.example.org", "", " ", "a:b", "ABC:1",
                     "caf\u00e9.example", "\u0661.\u0662.\u0663.\u0664", "tab\there",
                     'quo"te', "back\\slash", "\x7f", "1.2.3.4 "]),
    st.text(st.sampled_from("0123456789.:abcdefxyzABCDEF-"), max_size=12),
    st.text(max_size=6),
)
_ANSWER_ITEM = st.one_of(_ANSWER_TEXT, _ANSWER_TEXT, _ANSWER_TEXT, st.integers(-5, 10**6),
                         st.floats(allow_nan=False, allow_infinity=False), st.none(),
                         st.booleans(), st.lists(st.integers(), max_size=2))
_TTL_TEXT = st.one_of(
    st.sampled_from(["60", "60.0", "0", "0.0", "30.5", "59.999999", "59.9999999", "-0.0",
                     "-1", "-0.5", "4294967295", "4294967295.999999", "4294967296",
                     "4294967296.0", "99999999999", "1e3", "1.5E1", "null", "true", '"60"',
                     '"inf"', '"nan"', "[]", "{}", "0.1234567", "1.000001"]),
    st.builds(lambda w, f: f"{w}.{f}" if f else str(w), st.integers(0, 2**32 + 5),
              st.text("0123456789", max_size=8)),
)


@st.composite
def _answer_arrays(draw) -> tuple[bytes, bytes | None]:
    """A Zeek answers array and a TTLs array (JSON text; None: no TTLs key), with spacing
    as other JSON writers put it."""
    answers = draw(st.lists(_ANSWER_ITEM, max_size=4))
    sep = draw(st.sampled_from([",", ", ", " , "]))
    a = "[" + sep.join(json.dumps(x, ensure_ascii=draw(st.booleans())) for x in answers) + "]"
    if draw(st.integers(0, 5)) == 0:
        return a.encode(), None
    ttls = draw(st.lists(_TTL_TEXT, max_size=5))
    return a.encode(), ("[" + sep.join(ttls) + "]").encode()


def _plain(answers: bytes, ttls: bytes | None) -> bool:
    """What answer_items must take: printable ASCII answer strings that need no escape,
    and each TTL it reads null or digits[.digits] below 2**32 with <= 6 fractional digits."""
    items = orjson.loads(answers)
    if not all(type(x) is str and x.isascii() and x.isprintable() and '"' not in x
               and "\\" not in x for x in items):
        return False
    inner = (ttls or b"[]")[1:-1].decode().strip()
    for token in [t.strip() for t in inner.split(",")][:len(items)] if inner else []:
        whole, dot, frac = token.partition(".")
        if token != "null" and not (whole.isdigit() and int(whole) < 2**32 and len(frac) <= 6
                                    and (frac.isdigit() or not dot)):
            return False
    return True


def _parts_or_error(answers: bytes, ttls: bytes | None, qtype: str):
    try:
        return _zeek_answer_parts(orjson.loads(answers),
                                  orjson.loads(ttls) if ttls is not None else [], qtype)
    except (TypeError, ValueError, OverflowError):
        return None


@settings(max_examples=1500, deadline=None)
@given(st.lists(_answer_arrays(), min_size=1, max_size=6),
       st.sampled_from([1, 28, 5, 12, 15, 99, 65535, -1]))
@example([(b'["192.0.2.1","www.example.net"]', b"[60.0,30.5]")], 1)
@example([(b'["192.0.2.1"]', b"[4294967295.999999]")], 1)
@example([(b'["192.0.2.1"]', b"[4294967296.0]")], 1)
@example([(b'["192.0.2.1","x"]', b"[60.0]")], 12)
@example([(b'["a","b"]', b'[1,"inf"]')], 1)
@example([(b'["a"]', b'[1,"inf"]')], 1)  # a TTL past the last answer is not read
def test_answer_items_equal_zeek_answer_parts(arrays, qtype) -> None:
    """Rows the kernel takes give _zeek_answer_parts' (type, ttl, data) exactly (int TTLs);
    plain rows (ASCII strings without escapes, in-range TTLs with <= 6 fractional digits)
    are always taken; declined rows are left to the Python path."""
    text = b""
    spans = []
    for answers, ttls in arrays:
        a = len(text)
        text += answers + b" "
        c = len(text)
        text += (ttls or b"") + b" "
        spans.append((a, a + len(answers), c, c + len(ttls or b""), ttls is not None))
    buf = np.frombuffer(text, dtype=np.uint8)
    a_s, a_e, t_s, t_e, has = (np.array(x) for x in zip(*spans, strict=True))
    counts, ok, ds, de, ttl, kind = answer_items(buf, a_s, a_e, t_s, t_e, has.astype(bool),
                                                 _HEXCOLON)
    assert len(ds) == counts.sum() and not counts[~ok].any()
    name = DNS_TYPE_NAMES.get(qtype, "") if qtype >= 0 else ""
    i = 0
    for (answers, ttls, *_), row_ok, count in zip(arrays, ok, counts, strict=True):
        expected = _parts_or_error(answers, ttls, name)
        if not row_ok:
            assert not _plain(answers, ttls)  # plain rows are always taken
            continue
        assert expected is not None
        got = []
        for j in range(i, i + count):
            data = text[ds[j]:de[j]].decode()
            rtype = ("A", "AAAA", _other_type(qtype))[kind[j]]
            got.append((rtype, int(ttl[j]), data))
        assert got == expected
        assert all(type(t) is int for _, t, _ in expected)
        i += count


def test_answer_items_hostile_spans_stay_in_bounds() -> None:
    buf = np.frombuffer(b'["a"] [1] ["b",', dtype=np.uint8)
    spans = [(-1, 5), (0, 99), (5, 0), (0, 0), (10, 15), (6, 9)]
    for a, b in spans:
        for c, d in spans:
            counts, ok, *_ = answer_items(buf, np.array([a]), np.array([b]), np.array([c]),
                                          np.array([d]), np.array([True]), _HEXCOLON)
            assert ok[0] == ((a, b) == (0, 5) and (c, d) == (6, 9))
            assert counts[0] == ok[0]


@pytest.mark.parametrize("ttls", [b"[4294967296.0]", b"[-1]", b'["inf"]', b'["nan"]',
                                  b"[1e999]", b"[-0.5]"])
def test_impossible_json_dns_ttl_is_dead_lettered_with_reason(ttls) -> None:
    """As for TSV: a TTL no DNS record can carry loses its own line, with a reason, on the
    scan path as on the decoding path."""
    lines = [orjson.dumps({**_BASE, **_SHAPES["dns"], "answers": ["192.0.2.1"],
                           "TTLs": [60.0]}) for _ in range(5)]
    lines[2] = lines[2].replace(b'"TTLs":[60.0]', b'"TTLs":' + ttls)
    scan, decoded = _both(lines, "dns")
    _assert_same(scan, decoded)
    assert len(scan.deadletter) == 1 and "TTL" in str(scan.deadletter[0])
    assert sum(len(b) for b in scan.batches) == 4


def test_dns_answer_dicts_are_not_shared() -> None:
    """Each row owns its answer list and dicts: changing one event's answers leaves the
    others alone (consumers may edit the documents built from them)."""
    lines = [orjson.dumps({**_BASE, **_SHAPES["dns"]}) for _ in range(4)]
    (batch,) = ZeekAdapter().convert(lines, "dns").batches
    answers = batch.columns["answers"]
    assert len({id(a) for a in answers}) == 4
    assert len({id(d) for a in answers for d in a}) == 8
    answers[0][0]["ttl"] = 1
    assert answers[1][0]["ttl"] == 60
