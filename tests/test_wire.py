"""The Kafka wire format: exact round trips, byte layout as documented, strict decoding."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
from conftest import shared_pcap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import wire
from pipeline.config import load_config
from pipeline.schema import DNS, FLOW, KINDS, SCHEMA_VERSION, EventBatch, validate_batch
from pipeline.wire import WireError
from sensors.packets import IP_DTYPE
from sensors.sensor import CaptureResult, capture_events

# --- helpers --------------------------------------------------------------------------------


def assert_same_batch(a: EventBatch, b: EventBatch) -> None:
    assert a.kind == b.kind
    assert list(a.columns) == list(b.columns) or set(a.columns) == set(b.columns)
    for name, col in a.columns.items():
        other = b.columns[name]
        assert other.dtype == col.dtype, name
        assert other.shape == col.shape, name
        if col.dtype.kind == "O":
            assert other.tolist() == col.tolist(), name
        else:
            assert np.array_equal(other, col), name


def capture_batches(name: str) -> list[EventBatch]:
    path = shared_pcap(name)
    config = load_config()["sensor"]
    return [b for _, events in capture_events(path, config, CaptureResult(str(path)))
            for b in events if len(b)]


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


# Strings as our sources produce them: valid Unicode (JSON cannot carry lone surrogates),
# NUL included (such a column must fall back to JSON).
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
# Repeated vocabulary values (the dictionary encoding) mixed with free text.
_VOCABULARY = ("S0", "SF", "REJ", "sensor-1", "", "dmz")
_repeated_text = st.sampled_from(_VOCABULARY)


def _fresh(value: str) -> str:
    """An equal str that is a different object (as a parser building each row makes)."""
    return value.encode("utf-8").decode("utf-8")


def _text_column(rows: int) -> st.SearchStrategy:
    # shared objects (np.full, vocabulary lookups) or one object per row, same values
    values = st.lists(st.one_of(_repeated_text, _text), min_size=rows, max_size=rows)
    return st.tuples(values, st.booleans()).map(
        lambda vb: _objects([_fresh(v) for v in vb[0]] if vb[1] else vb[0]))
_answer = st.fixed_dictionaries({"name": _text, "type": _text, "class": _text,
                                 "ttl": st.integers(0, 2**32 - 1), "data": _text})


def _column(field, rows: int) -> st.SearchStrategy:
    dtype = field.dtype
    if field.column == "answers":
        return st.lists(st.lists(_answer, max_size=3), min_size=rows, max_size=rows).map(_objects)
    if dtype.kind == "O":
        return _text_column(rows)
    if dtype == IP_DTYPE:
        return st.binary(min_size=16 * rows, max_size=16 * rows).map(
            lambda raw: np.frombuffer(raw, dtype=IP_DTYPE).copy())
    if dtype.kind == "b":
        return st.lists(st.booleans(), min_size=rows, max_size=rows).map(
            lambda v: np.array(v, dtype=np.bool_))
    info = np.iinfo(dtype)
    low = 1 if field.column == "timestamp" else int(info.min)
    return st.lists(st.integers(low, int(info.max)), min_size=rows, max_size=rows).map(
        lambda v: np.array(v, dtype=dtype))


@st.composite
def batches(draw) -> EventBatch:
    kind = KINDS[draw(st.sampled_from(sorted(KINDS)))]
    rows = draw(st.integers(0, 24))
    batch = EventBatch(kind.name, {f.column: draw(_column(f, rows)) for f in kind.fields})
    validate_batch(batch)
    return batch


def _valid_message() -> bytes:
    cols = {f.column: np.zeros(3, dtype=f.dtype) for f in DNS.fields}
    cols["timestamp"] = np.array([1, 2, 3], dtype=np.int64)
    for name in ("observer_name", "ingress_zone"):  # repeated: dictionary encoding
        cols[name] = _objects(["s", "s", "s"])
    for name in ("community_id", "qname"):  # distinct: NUL-joined text
        cols[name] = _objects(["a", "b", "\u00e9t\u00e9"])
    cols["answers"] = _objects([[], [{"name": "x", "type": "A", "class": "IN", "ttl": 1,
                                      "data": "10.0.0.1"}], []])
    return wire.encode(EventBatch("dns", cols))


# An independent encoder written from docs/wire-format.md (what a third party would do).
def build_message(kind: str, rows: int, entries: list[tuple[str, int, str, bytes]],
                  magic: bytes = b"CSAB", fmt: int = 2, schema: int = SCHEMA_VERSION,
                  declared_lengths: dict[str, int] | None = None) -> bytes:
    declared_lengths = declared_lengths or {}
    head = struct.pack("<4sBBHIHB", magic, fmt, 0, schema, rows, len(entries), len(kind))
    head += kind.encode()
    for name, encoding, dtype, payload in entries:
        head += bytes([len(name)]) + name.encode() + bytes([len(dtype)]) + dtype.encode()
        head += struct.pack("<BQ", encoding, declared_lengths.get(name, len(payload)))
    out = head + bytes(-len(head) % 8)
    for *_, payload in entries:
        out += payload + bytes(-len(payload) % 8)
    return out


def text_payload(values: list[str]) -> bytes:
    """Encoding 2: the rows' UTF-8 joined by NUL."""
    return "\x00".join(values).encode()


def dict_payload(codes: list[int], values: list[str], width: int = 1) -> bytes:
    """Encoding 3: u32 value count, u8 code width, 3 zero bytes, codes, pad to 8, values."""
    raw = b"".join(c.to_bytes(width, "little") for c in codes)
    return (struct.pack("<IB3x", len(values), width) + raw + bytes(-len(raw) % 8)
            + text_payload(values))


def flow_entries(rows: int, fmt: int = 2) -> list[tuple[str, int, str, bytes]]:
    entries = []
    for f in FLOW.fields:
        if f.dtype.kind == "O" and fmt == 1:
            entries.append((f.column, 1, "|O", b"[" + b",".join([b'"x"'] * rows) + b"]"))
        elif f.dtype.kind == "O":
            entries.append((f.column, 3, "|O", dict_payload([0] * rows, ["x"])))
        else:
            values = np.arange(1, rows + 1).astype(np.uint8).astype(f.dtype) if f.dtype.kind \
                != "V" else np.zeros(rows, dtype=f.dtype)
            entries.append((f.column, 0, f.dtype.newbyteorder("<").str, values.tobytes()))
    return entries


# --- round trips ----------------------------------------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_decode_encode_round_trip_random_batches(batch):
    message = wire.encode(batch)
    decoded = wire.decode(message)
    assert_same_batch(batch, decoded)
    validate_batch(decoded)
    assert wire.read_header(message) == wire.WireHeader(batch.kind, len(batch), SCHEMA_VERSION,
                                                        wire.FORMAT_VERSION)


@pytest.mark.parametrize("capture", ["dns_tunneling/ndpi__dns-tunnel-iodine.pcap",
                                     "port_scan/ndpi__synscan.pcap"])
def test_round_trip_of_real_sensor_batches(capture):
    batches_ = capture_batches(capture)
    assert batches_
    for batch in batches_:
        assert_same_batch(batch, wire.decode(wire.encode(batch)))


def test_raw_columns_decode_zero_copy_and_read_only():
    message = _valid_message()
    decoded = wire.decode(message)
    whole = np.frombuffer(message, dtype=np.uint8)
    for name in ("timestamp", "src_ip", "dns_id", "is_response"):
        column = decoded.columns[name]
        assert np.shares_memory(column, whole), name
        assert not column.flags.writeable
    assert decoded.columns["answers"][1][0]["data"] == "10.0.0.1"


def test_independent_encoder_from_the_doc_is_decoded():
    rows = 5
    batch = wire.decode(build_message("flow", rows, flow_entries(rows)))
    assert len(batch) == rows
    assert batch.columns["src_port"].tolist() == [1, 2, 3, 4, 5]
    assert batch.columns["conn_state"].tolist() == ["x"] * rows
    validate_batch(batch)
    # ...and our encoder writes the very same bytes for the same batch.
    assert wire.encode(batch) == build_message("flow", rows, flow_entries(rows))


def test_format_1_messages_are_still_read():
    """Writers of format 1 (every object column as JSON) keep working during an upgrade."""
    old = wire.decode(build_message("flow", 4, flow_entries(4, fmt=1), fmt=1))
    new = wire.decode(build_message("flow", 4, flow_entries(4)))
    assert_same_batch(old, new)
    text = [(n, 2 if e == 3 else e, d, text_payload(["x"] * 4) if e == 3 else p)
            for n, e, d, p in flow_entries(4)]
    assert_same_batch(new, wire.decode(build_message("flow", 4, text)))
    with pytest.raises(WireError, match="encoding 2, expected 1 in format 1"):
        wire.decode(build_message("flow", 4, text, fmt=1))
    # ...and we can still write format 1 for readers of the previous release.
    assert wire.encode(old, format_version=1) == build_message("flow", 4,
                                                               flow_entries(4, fmt=1), fmt=1)
    with pytest.raises(WireError, match="cannot write wire format version 3"):
        wire.encode(old, format_version=3)


def test_text_columns_pick_their_encoding_and_keep_their_values():
    rows = 64
    ids = [f"1:{i:027d}=" for i in range(rows)]
    cols = wire.decode(build_message("flow", rows, flow_entries(rows))).columns
    repeated_objects = _objects([_fresh(s) for s in ("SF", "S0", "REJ", "SF") * 16])
    cases = {"community_id": (_objects(ids), wire.ENC_TEXT),
             "conn_state": (repeated_objects, wire.ENC_DICT),  # by value (distinct objects)
             "end_reason": (np.full(rows, "fin", dtype=object), wire.ENC_DICT),  # by identity
             "ingress_zone": (_objects(["a\x00b"] * rows), wire.ENC_JSON)}  # NUL inside
    batch = EventBatch("flow", {**cols, **{k: v for k, (v, _) in cases.items()}})
    message = wire.encode(batch)
    assert_same_batch(batch, wire.decode(message))
    encodings = {}
    view, pos = memoryview(message), 15 + 4
    for _ in range(struct.unpack_from("<H", message, 12)[0]):
        name = bytes(view[pos + 1:pos + 1 + view[pos]]).decode()
        pos += 1 + view[pos]
        pos += 1 + view[pos]
        encodings[name] = view[pos]
        pos += 9
    assert {k: encodings[k] for k in cases} == {k: e for k, (_, e) in cases.items()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.data())
def test_any_rows_of_a_prepared_batch_encode_like_the_sub_batch(batch, data):
    """BatchEncoder (fusion's split) = encoding batch.take(rows), chunked or not."""
    rows = np.array(data.draw(st.lists(st.integers(0, max(len(batch) - 1, 0)),
                                       max_size=len(batch))) if len(batch) else [], np.int64)
    encoder = wire.BatchEncoder(batch)
    expected = batch.take(rows)
    assert_same_batch(expected, wire.decode(encoder.encode(rows)))
    limit = data.draw(st.integers(2_000, 6_000))
    try:
        chunks = encoder.encode_chunks(limit, rows)
    except WireError:  # one row over the limit (long random text)
        return
    assert all(len(c) <= limit for c in chunks)
    parts = [wire.decode(c) for c in chunks]
    if parts:
        rebuilt = EventBatch(batch.kind, {k: np.concatenate([p.columns[k] for p in parts])
                                          for k in expected.columns})
        assert_same_batch(expected, rebuilt)
    else:
        assert len(rows) == 0


def test_empty_batch_round_trip():
    batch = EventBatch("flow", {f.column: np.empty(0, dtype=f.dtype) for f in FLOW.fields})
    assert_same_batch(batch, wire.decode(wire.encode(batch)))


def test_encode_chunks_respects_the_size_limit_and_keeps_rows_in_order():
    batch = capture_batches("port_scan/ndpi__synscan.pcap")[-1]
    whole = wire.encode(batch)
    limit = len(whole) // 5
    chunks = wire.encode_chunks(batch, limit)
    assert len(chunks) >= 5
    assert all(len(c) <= limit for c in chunks)
    parts = [wire.decode(c) for c in chunks]
    rebuilt = EventBatch(batch.kind, {k: np.concatenate([p.columns[k] for p in parts])
                                      for k in batch.columns})
    assert_same_batch(batch, rebuilt)
    assert wire.encode_chunks(batch, len(whole)) == [whole]
    with pytest.raises(WireError, match="over the"):
        wire.encode_chunks(batch.take(np.arange(1)), 100)


def test_encode_refuses_batches_that_do_not_match_the_schema():
    batch = wire.decode(_valid_message())
    cols = dict(batch.columns)
    cols["dns_id"] = cols["dns_id"].astype(np.int32)
    with pytest.raises(WireError, match="dns_id"):
        wire.encode(EventBatch("dns", cols))
    with pytest.raises(WireError, match="unknown event kind"):
        wire.encode(EventBatch("nope", {}))
    cols = dict(batch.columns)
    cols["qname"] = _objects(["ok", "\ud800", "ok"])  # lone surrogate: not JSON
    with pytest.raises(WireError, match="qname"):
        wire.encode(EventBatch("dns", cols))


# --- strict decoding ------------------------------------------------------------------------

def _replace(message: bytes, offset: int, raw: bytes) -> bytes:
    return message[:offset] + raw + message[offset + len(raw):]


@pytest.mark.parametrize("mutate, reason", [
    (lambda m: b"XXXX" + m[4:], "bad magic"),
    (lambda m: _replace(m, 4, b"\x07"), "wire format version 7"),
    (lambda m: _replace(m, 6, struct.pack("<H", SCHEMA_VERSION + 1)), "schema version"),
    (lambda m: _replace(m, 15, b"xyz"), "unknown event kind"),
    (lambda m: m[:10], "truncated"),
    (lambda m: m[:-8], "do not add up"),
    (lambda m: m + bytes(8), "do not add up"),
    (lambda m: _replace(m, 8, struct.pack("<I", 0xFFFFFFFF)), "bytes for 4294967295 rows"),
    (lambda m: _replace(m, 12, struct.pack("<H", 3)), "3 columns"),
    (lambda m: b"", "bad magic"),
])
def test_damaged_messages_raise_wire_error_with_reason(mutate, reason):
    with pytest.raises(WireError, match=reason) as info:
        wire.decode(mutate(_valid_message()))
    assert "\n" not in str(info.value)


def _entries_with(column: str, **change) -> list[tuple[str, int, str, bytes]]:
    entries = flow_entries(2)
    index = [e[0] for e in entries].index(column)
    entry = list(entries[index])
    for i, key in enumerate(("name", "encoding", "dtype", "payload")):
        if key in change:
            entry[i] = change[key]
    entries[index] = tuple(entry)
    return entries


@pytest.mark.parametrize("entries, reason", [
    (_entries_with("src_port", dtype="<i2"), "dtype '<i2'"),
    (_entries_with("src_port", encoding=1), "encoding 1"),
    (_entries_with("src_port", payload=bytes(6)), "6 bytes for 2 rows"),
    (_entries_with("src_port", name="bogus"), "unexpected column 'bogus'"),
    (_entries_with("src_port", name="dst_port"), "appears twice"),
    (_entries_with("conn_state", encoding=1, payload=b'["a"]'), "array of 2 values"),
    (_entries_with("conn_state", encoding=1, payload=b'["a", 1]'), "must be strings"),
    (_entries_with("conn_state", encoding=1, payload=b'{"a": 1}'), "array of 2 values"),
    (_entries_with("conn_state", encoding=1, payload=b'["a", "b"'), "invalid JSON"),
    (_entries_with("conn_state", encoding=1, payload=b"\xff\xfe"), "invalid JSON"),
    (_entries_with("conn_state", encoding=2, payload=b"a"), "holds 1 values, expected 2"),
    (_entries_with("conn_state", encoding=2, payload=b"a\x00b\x00c"), "holds 3 values"),
    (_entries_with("conn_state", encoding=2, payload=b"a\x00\xff"), "not UTF-8"),
    (_entries_with("conn_state", encoding=3, payload=dict_payload([0, 2], ["a", "b"])),
     "code 2 beyond 2 values"),
    (_entries_with("conn_state", encoding=3, payload=dict_payload([0, 1], ["a"])),
     "code 1 beyond 1 values"),
    (_entries_with("conn_state", encoding=3, payload=dict_payload([0, 0], ["a"], width=3)),
     "code width 3"),
    (_entries_with("conn_state", encoding=3, payload=dict_payload([0, 0], ["a", "b"])[:8]),
     "cannot hold 2 codes"),
    (_entries_with("conn_state", encoding=3, payload=b"\x01\x00"), "dictionary header"),
    (_entries_with("conn_state", encoding=3,
                   payload=dict_payload([0, 0], ["a"])[:-1] + b"a\x00b"), "holds 2 values"),
    (_entries_with("conn_state", encoding=3, payload=struct.pack("<IB3x", 0, 1) + bytes(8)),
     "empty dictionary"),
    (_entries_with("conn_state", encoding=4), "encoding 4"),
])
def test_malformed_columns_raise_wire_error(entries, reason):
    with pytest.raises(WireError, match=reason):
        wire.decode(build_message("flow", 2, entries))


def test_dns_answers_and_booleans_are_checked():
    good = _valid_message()
    batch = wire.decode(good)
    cols = dict(batch.columns)
    entries = []
    for f in DNS.fields:
        col = cols[f.column]
        payload = (wire.orjson.dumps(col.tolist()) if f.dtype.kind == "O" else col.tobytes())
        entries.append((f.column, int(f.dtype.kind == "O"), f.dtype.newbyteorder("<").str,
                        payload))
    assert wire.decode(build_message("dns", 3, entries)).columns["answers"].tolist() == \
        cols["answers"].tolist()

    def with_payload(name: str, payload: bytes) -> bytes:
        changed = [(n, e, d, payload if n == name else p) for n, e, d, p in entries]
        return build_message("dns", 3, changed)

    for bad in (b'[[], [{"name": "x"}], []]', b'[[], ["x"], []]', b'[[], "x", []]',
                b'[[], {}, []]'):
        with pytest.raises(WireError, match="answers"):
            wire.decode(with_payload("answers", bad))
    with pytest.raises(WireError, match="boolean"):
        wire.decode(with_payload("is_response", b"\x00\x02\x01"))
    # Nested columns travel as JSON only: text/dictionary encodings are refused for them.
    as_text = [(n, 2 if n == "answers" else e, d, text_payload(["", "", ""]) if n == "answers"
                else p) for n, e, d, p in entries]
    with pytest.raises(WireError, match="answers: encoding 2, expected 1"):
        wire.decode(build_message("dns", 3, as_text))


def test_lying_lengths_cost_no_memory():
    message = _valid_message()
    liars = [
        _replace(message, 8, struct.pack("<I", 0xFFFFFFFF)),  # row count
        build_message("flow", 2, flow_entries(2), declared_lengths={"src_ip": 2**63}),
        build_message("flow", 2**32 - 1, flow_entries(2)),
    ]
    tracemalloc.start()
    try:
        for liar in liars:
            with pytest.raises(WireError):
                wire.decode(liar)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes_only_wire_error(data):
    for candidate in (data, b"CSAB" + data, _valid_message()[:30] + data):
        try:
            batch = wire.decode(candidate)
        except WireError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            validate_batch(batch)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_mutated_valid_messages_only_wire_error(data):
    message = bytearray(_valid_message())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert", "set_u64"]))
        pos = data.draw(st.integers(0, max(0, len(message) - 1)))
        if op == "flip" and message:
            message[pos] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            del message[pos:]
        elif op == "insert":
            message[pos:pos] = data.draw(st.binary(min_size=1, max_size=9))
        else:
            message[pos:pos + 8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    tracemalloc.start()
    try:
        try:
            batch = wire.decode(bytes(message))
        except WireError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            assert set(batch.columns) == set(KINDS[batch.kind].columns)
            assert {c.shape[0] for c in batch.columns.values()} == {len(batch)}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000 + 50 * len(message)


def test_non_bytes_input_is_a_wire_error():
    with pytest.raises(WireError, match="not bytes"):
        wire.decode("CSAB")  # type: ignore[arg-type]
    assert wire.decode(memoryview(_valid_message())).kind == "dns"
    assert wire.decode(bytearray(_valid_message())).kind == "dns"


# --- alerts ---------------------------------------------------------------------------------

def test_alert_round_trip_and_numpy_scalars():
    alert = {"@timestamp": "2017-10-25T22:36:41.767055Z", "event": {"kind": "alert"},
             "rule": {"id": "scan.vertical"}, "cirtsa": {"ports": np.uint16(445)},
             "risk_score": np.float64(73.5), "threat": {"technique": {"id": ["T1046"]}}}
    decoded = wire.decode_alert(wire.encode_alert(alert))
    assert decoded["cirtsa"]["ports"] == 445 and decoded["risk_score"] == 73.5
    assert decoded["threat"] == alert["threat"]
    assert wire.encode_alert(alert).startswith(b'{"@timestamp"')  # plain JSON, no header


@pytest.mark.parametrize("data, reason", [
    (b"not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b"", "not valid JSON"),
    (b'"text"', "JSON object"), (b"\xff", "not valid JSON"),
])
def test_bad_alerts_raise_wire_error(data, reason):
    with pytest.raises(WireError, match=reason):
        wire.decode_alert(data)


def test_encode_alert_refuses_non_dicts_and_unserializable():
    with pytest.raises(WireError):
        wire.encode_alert(["x"])  # type: ignore[arg-type]
    with pytest.raises(WireError):
        wire.encode_alert({"x": object()})


def test_reader_example_in_the_doc_decodes_our_messages():
    """docs/wire-format.md's stand-alone reader (json + numpy only) reads what we write."""
    import json
    import re

    from conftest import REPO

    doc = (REPO / "docs" / "wire-format.md").read_text(encoding="utf-8")
    namespace: dict = {}
    exec(re.search(r"```python\n(.*?)```", doc, re.S).group(1), namespace)  # noqa: S102
    batch = wire.decode(_valid_message())
    kind, columns = namespace["read_batch"](wire.encode(batch))
    assert kind == "dns" and set(columns) == set(batch.columns)
    for name, column in batch.columns.items():
        if column.dtype.kind == "O":
            assert json.loads(json.dumps(column.tolist())) == list(columns[name])
        else:
            assert columns[name].tobytes() == column.tobytes()
