"""EveAdapter's msgspec fast path must give exactly what the orjson dict path gives.

Inputs: every real EVE line of /work/shared/reference/sensor-logs/suricata/*.json (Elastic's
integration test files, Stratosphere CTU test6, Hassanabad alert sets, suricata-verify), then
mutated copies (fields deleted, values of other types, keys added or duplicated, strings
with invalid UTF-8, truncated lines, garbage bytes, non-object JSON). For each chunk the
fast path either declines (the chunk then takes the dict path) or returns an AdapterResult
equal to the dict path's: same batches (kinds, columns, dtypes, values), dead letters,
reasons, unmapped counts and record count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion.adapters import AdapterResult, EveAdapter, _eve_fast

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sensor-logs" / "suricata"
pytestmark = pytest.mark.skipif(not REF.is_dir(), reason="shared reference logs absent")


def _real_files() -> dict[str, list[bytes]]:
    if not REF.is_dir():
        return {}
    return {p.name: [ln for ln in p.read_bytes().splitlines() if ln.strip()]
            for p in sorted(REF.glob("*.json")) if "expected-ecs" not in p.name}


FILES = _real_files()
LINES = [ln for lines in FILES.values() for ln in lines]
RECORDS = [orjson.loads(ln) for ln in LINES]


def _assert_same(fast: AdapterResult, slow: AdapterResult) -> None:
    assert fast.records == slow.records
    assert fast.reasons == slow.reasons
    assert fast.unmapped == slow.unmapped
    assert fast.deadletter == slow.deadletter
    assert [b.kind for b in fast.batches] == [b.kind for b in slow.batches]
    for fb, sb in zip(fast.batches, slow.batches, strict=True):
        assert fb.columns.keys() == sb.columns.keys()
        for name, col in fb.columns.items():
            other = sb.columns[name]
            assert col.dtype == other.dtype, name
            if col.dtype == object:
                assert col.tolist() == other.tolist(), name
            else:
                assert np.array_equal(col, other, equal_nan=col.dtype.kind in "fc"), name


def _both(lines: list) -> tuple[AdapterResult | None, AdapterResult]:
    """(fast path result or None when it declines, dict path result) of one chunk."""
    adapter = EveAdapter(observer="sensor-x", zone="dmz")
    kept = [ln for ln in lines if ln.strip()]
    typed = _eve_fast(kept)
    fast = None if typed is None else adapter._convert_fast(typed, kept)
    return fast, adapter._convert_dicts(kept)


def _check_chunk(chunk: list) -> AdapterResult | None:
    """Fast path (when taken) and convert() both equal the dict path, which never raises
    on hostile shapes (they are dead-lettered); returns the fast result or None."""
    fast, slow = _both(chunk)
    if fast is not None:
        _assert_same(fast, slow)
    _assert_same(EveAdapter(observer="sensor-x", zone="dmz").convert(chunk), slow)
    return fast


def test_a_hostile_field_shape_is_dead_lettered_and_the_rest_mapped() -> None:
    good = FILES["elastic-eve-dns-4.1.4.json"]
    rec = orjson.loads(good[0])
    rec.setdefault("dns", {})["rrtype"] = ["A", "AAAA"]  # a list where text belongs
    result = EveAdapter(observer="sensor-x", zone="dmz").convert([orjson.dumps(rec), *good])
    assert result.records == len(good) + 1
    assert sum(len(b) for b in result.batches) >= len(good) - 1
    bad = [d for d in result.deadletter if "unexpected field shape" in d["reason"]]
    assert len(bad) == 1 and bad[0]["reason"].startswith("suricata.dns: ")


@pytest.mark.parametrize("name", sorted(FILES))
def test_real_files_identical(name: str) -> None:
    fast, slow = _both(FILES[name])
    # AWS Network Firewall wraps EVE in an envelope without a top-level event_type: the
    # fast path leaves those to the dict path; every other reference file takes it.
    if "aws-network-firewall" in name:
        assert fast is None
        return
    assert fast is not None
    assert slow.batches or slow.unmapped  # the file maps to something
    _assert_same(fast, slow)


def test_convert_uses_fast_path_and_matches() -> None:
    plain = [ln for name, lines in FILES.items() if "aws" not in name for ln in lines]
    assert _eve_fast(plain) is not None
    _assert_same(EveAdapter().convert(plain), EveAdapter()._convert_dicts(plain))


@pytest.mark.parametrize("line, takes_fast", [
    (b'{"event_type":"flow","src_port":"80","dest_port":null,"proto":"6"}', True),
    (b'{"event_type":"alert","alert":{"signature_id":null}}', True),
    (b'{"event_type":"alert","alert":{"signature_id":2.5}}', True),
    (b'{"event_type":"dns","dns":{"type":"answer","answers":null}}', True),
    (b'{"event_type":"dns","dns":{"version":2,"type":"answer","rrname":"x.org",'
     b'"rrtype":"SOA","grouped":{"SOA":[{"mname":"ns.x.org","serial":12}]}}}', True),
    (b'{"event_type":"flow","src_port":123456789012345678901234567890}', False),  # orjson: float
    (b'{"event_type":"flow","flow":[1]}', False),  # not an object where one is expected
    (b'{"event_type":"flow","src_ip":{"a":1}}', False),
    (b'{"event_type":7}', False),
    (b'{"timestamp":"2024-01-01T00:00:00Z"}', False),  # no event_type: dict path dead-letters
    (b'{"event_type":"flow","x":"\xff"}', False),  # invalid UTF-8 in a skipped field
    # numbers beyond the double range: orjson rejects the line, msgspec would skip them
    (b'{"event_type":"flow","payload_len":1e400}', False),
    (b'{"event_type":"flow","x":[-9E+308]}', False),
    (b'{"event_type":"flow","alert":{"gid":1' + b"0" * 320 + b'}}', False),
    (b'{"event_type":"flow","x":1e-400,"ja3":"a98e123"}', True),  # underflow: both accept
    (b'{"event_type":"flow","x":NaN}', False),
    (b'[1,2]', False),
    (b'{"event_type":"flow",', False),
    (b'{"event_type":"common"}', True),  # not a handler name: counted as unmapped
])
def test_crafted_lines(line: bytes, takes_fast: bool) -> None:
    chunk = FILES.get("elastic-eve-small.json", [])[:2] + [line]
    fast, slow = _both(chunk)
    assert (fast is not None) == takes_fast
    if fast is not None:
        _assert_same(fast, slow)
    _assert_same(EveAdapter(observer="sensor-x", zone="dmz").convert(chunk), slow)


# --- mutation fuzzing --------------------------------------------------------------------

FIELD_NAMES = ["event_type", "timestamp", "host", "src_ip", "dest_ip", "src_port",
               "dest_port", "icmp_type", "icmp_code", "proto", "vlan", "community_id",
               "event", "alert", "flow", "tcp", "dns", "http", "tls", "ssh", "anomaly",
               "signature_id", "signature", "severity", "start", "end", "reason",
               "tcp_flags_ts", "tcp_flags_tc", "type", "id", "rrname", "rrtype", "rdata",
               "ttl", "rcode", "flags", "version", "answers", "grouped", "hostname",
               "protocol", "length", "status", "sni", "ja3", "ja3s", "hash", "fingerprint",
               "client", "server", "proto_version", "software_version"]
TEXTS = ["80", "0x1b", "1b", "zz", "answer", "query", "TCP", "udp", "6", "2", "A", "AAAA",
         "NOERROR", "NXDOMAIN", "timeout", "HTTP/1.1", "TLSv1.2", "TLS 1.3", "UNDETERMINED",
         "10.0.0.1", "::1", "300.1.1.1", "example.com.", "aa:bb:cc", "alert", "flow", "dns",
         "2024-07-30T16:00:00.000000+0000", "2024-07-30T16:00:01Z", "not a time", ""]
SCALARS = st.one_of(st.none(), st.booleans(),
                    st.integers(-(1 << 70), 1 << 70), st.integers(-3, 70_000),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from(TEXTS), st.text(max_size=6))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(FIELD_NAMES), inner, max_size=4)), max_leaves=6)


def _paths(value, prefix=()) -> list[tuple]:
    out = [prefix]
    if type(value) is dict:
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif type(value) is list:
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _container(rec, path):
    for key in path[:-1]:
        rec = rec[key]
    return rec


# Scalars the fast path accepts (int64 range): mutations that keep it on the fast path.
FAST_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1),
                         st.integers(-3, 70_000), st.floats(allow_nan=False,
                                                            allow_infinity=False),
                         st.sampled_from(TEXTS), st.text(max_size=6))


@st.composite
def mutated_line(draw, mild: bool = False) -> bytes | str:
    """A real EVE record with fields deleted, retyped or added. mild: scalar values in the
    int64 range and no broken bytes (most such lines stay on the fast path)."""
    values = FAST_SCALARS if mild else VALUES
    rec = json.loads(json.dumps(draw(st.sampled_from(RECORDS))))  # deep copy
    for _ in range(draw(st.integers(0, 4))):
        paths = [p for p in _paths(rec) if p]
        op = draw(st.sampled_from(["delete", "retype", "add", "add"]))
        if op == "add" or not paths:
            targets = [p for p in _paths(rec) if type(_container(rec, p + (0,))) is dict]
            where = _container(rec, draw(st.sampled_from(targets)) + (0,))
            where[draw(st.sampled_from(FIELD_NAMES))] = draw(values)
            continue
        path = draw(st.sampled_from(paths))
        holder = _container(rec, path)
        if op == "delete":
            del holder[path[-1]]
        else:
            holder[path[-1]] = draw(values)
    line = json.dumps(rec, ensure_ascii=draw(st.booleans())).encode()
    tail = draw(st.sampled_from(["", "dup"] if mild else
                                ["", "dup", "utf8", "truncate", "text", "number"]))
    if tail == "dup" and line.endswith(b"}") and len(line) > 2:  # duplicate key: last wins
        line = line[:-1] + b',"' + draw(st.sampled_from(FIELD_NAMES)).encode() + b'":' + \
            json.dumps(draw(values)).encode() + b"}"
    elif tail == "utf8" and b'"' in line:
        at = line.index(b'"') + 1
        line = line[:at] + b"\xff" + line[at:]
    elif tail == "number" and line.endswith(b"}") and len(line) > 2:  # raw number text
        digits = draw(st.sampled_from([b"1e400", b"-2E+308", b"1e308", b"1e-999", b"9" * 320,
                                       b"1.5e0310", b"12345678901234567890123"]))
        line = line[:-1] + b',"zz":' + digits + b"}"
    elif tail == "truncate":
        line = line[:draw(st.integers(0, len(line)))]
    elif tail == "text":
        return line.decode("utf-8", "replace")
    return line


GARBAGE = st.one_of(st.binary(max_size=40), st.sampled_from(
    [b"[]", b"1", b'"x"', b"null", b"{}", b'{"event_type":null}', b"   ", b"",
     b'{"event":{"event_type":"alert"}}', b'{"event_type":"alert"} x']))


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(mutated_line(), mutated_line(), GARBAGE), min_size=1, max_size=8),
       st.booleans())
def test_mutated_chunks_identical(chunk: list, as_text: bool) -> None:
    if as_text:  # str lines (the adapter takes both); invalid UTF-8 becomes U+FFFD
        chunk = [ln.decode("utf-8", "replace") if type(ln) is bytes else ln for ln in chunk]
    elif any(type(ln) is str for ln in chunk):
        chunk = [ln.encode("utf-8", "surrogatepass") if type(ln) is str else ln
                 for ln in chunk]
    _check_chunk(chunk)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_line(mild=True), min_size=1, max_size=4))
def test_mutated_clean_chunks_identical(chunk: list) -> None:
    """Valid JSON objects with scalar mutations only (no garbage line sends the whole
    chunk to the dict path), so most of these examples exercise the fast path itself."""
    chunk = [ln.encode() if type(ln) is str else ln for ln in chunk]
    _check_chunk(chunk)
