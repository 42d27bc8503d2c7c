"""Row-level validation of external input: bad records are dead-lettered with their reason
and original line, the rest of the stream goes on; batch-level checks for our sensor."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.adapters import EveAdapter, ZeekAdapter
from fusion.sources import eve_file, zeek_file
from fusion.stage import FusionStage
from pipeline.bus import TOPIC_DEADLETTER, TOPIC_EVENTS, TOPIC_SENSOR, InMemoryBus
from pipeline.schema import empty_batch
from pipeline.wire import encode

DATA = Path(__file__).parent / "data" / "fusion"


def test_bad_eve_records_dead_lettered_with_reasons_stream_continues():
    result = EveAdapter().convert((DATA / "eve-bad.json").read_bytes().splitlines())
    assert result.records == 10
    assert sorted(len(b) for b in result.batches) == [2]  # the two good dns queries
    assert dict(result.reasons) == {
        "malformed JSON": 1, "src_port: out of range": 1, "timestamp: out of range": 1,
        "src_port: not an integer": 1, "src_ip: missing": 1, "rule_id: missing": 1,
        "not a JSON object": 1, "src_ip: not an IP address": 1}
    originals = {d["original"] for d in result.deadletter}
    assert '[1,2,3]' in originals and all(d["stage"] == "fusion" for d in result.deadletter)
    assert set(result.batches[0].columns["qname"]) == {"www.google.com", "f.example"}


def test_stage_publishes_dead_letters_and_counts_reasons():
    bus = InMemoryBus()
    stage = FusionStage(bus)
    events, dead = [], []
    bus.subscribe(TOPIC_EVENTS, events.append)
    bus.subscribe(TOPIC_DEADLETTER, dead.append)
    stage.on_external(EveAdapter().convert((DATA / "eve-bad.json").read_bytes().splitlines()))
    assert sum(len(b) for b in events) == 2 and len(dead) == 8
    assert stage.stats["deadletter.malformed JSON"] == 1


def test_invalid_sensor_batch_is_dead_lettered_whole_and_wire_damage_too():
    bus = InMemoryBus()
    stage = FusionStage(bus)
    dead, events = [], []
    bus.subscribe(TOPIC_DEADLETTER, dead.append)
    bus.subscribe(TOPIC_EVENTS, events.append)
    bad = empty_batch("dns")
    bad.columns["qtype"] = bad.columns["qtype"].astype(np.int64)
    bus.publish(TOPIC_SENSOR, bad)
    stage.on_wire(b"garbage")
    good = EveAdapter().convert((DATA / "eve-bad.json").read_bytes().splitlines()).batches[0]
    stage.on_wire(encode(good))
    assert len(dead) == 2 and "qtype" in dead[0]["reason"]
    assert len(events) == 1 and len(events[0]) == len(good)


def test_zeek_tsv_sets_unset_empty_and_gzip(tmp_path):
    text = "\n".join([
        "#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-",
        "#path\tdns",
        "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttrans_id"
        "\tquery\tqclass\tqtype\trcode\tAA\tRD\tanswers\tTTLs",
        "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tstring\tcount\tcount"
        "\tcount\tbool\tbool\tvector[string]\tvector[interval]",
        "1600000000.123456\tC1\t10.0.0.1\t5000\t10.0.0.53\t53\tudp\t7\tx.example\t1\t1\t0\tF"
        "\tT\tcname.example,192.0.2.7\t60.000000,30.000000",
        "1600000001.000000\tC2\t10.0.0.1\t5001\t10.0.0.53\t53\tudp\t8\ty.example\t1\t1\t-\tF"
        "\tT\t(empty)\t-",
        "1600000002.000000\tC3\t10.0.0.1\t5002\t10.0.0.53",  # truncated row
    ]) + "\n"
    path = tmp_path / "dns.log.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(text)
    results = list(zeek_file(path, ZeekAdapter()))
    batch = results[0].batches[0]
    assert len(batch) == 2 and results[0].reasons == {"TSV: wrong column count": 1}
    assert batch.columns["timestamp"][0] == 1600000000_123456000
    assert batch.columns["is_response"].tolist() == [True, False]
    answers = batch.columns["answers"][0]
    assert [(a["type"], a["data"], a["ttl"]) for a in answers] == [
        ("CNAME", "cname.example", 60), ("A", "192.0.2.7", 30)]
    assert batch.columns["answers"][1] == []


def test_eve_file_reader_handles_gzip(tmp_path):
    src = DATA / "eve-bad.json"
    gz = tmp_path / "eve.json.gz"
    with open(src, "rb") as fin, gzip.open(gz, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    assert sum(len(b) for r in eve_file(gz, EveAdapter()) for b in r.batches) == 2


_values = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                    st.text(max_size=20), st.lists(st.integers(), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["timestamp", "event_type", "src_ip", "dest_ip",
                                        "src_port", "dest_port", "proto", "dns", "flow",
                                        "alert", "http", "tls", "ssh"]), _values))
def test_fuzzed_eve_records_never_raise(record):
    line = orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS) if _serializable(record) \
        else b"{"
    result = EveAdapter().convert([line, b'{"event_type":"flow"}'])
    assert result.records == 2
    assert sum(len(b) for b in result.batches) + len(result.deadletter) + sum(
        result.unmapped.values()) == 2


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["ts", "id.orig_h", "id.resp_h", "id.orig_p",
                                        "id.resp_p", "proto", "duration", "orig_bytes",
                                        "history", "query", "answers", "TTLs", "qtype"]),
                       _values), st.sampled_from(["conn", "dns", "http", "ssl", "notice"]))
def test_fuzzed_zeek_records_never_raise(record, log):
    line = orjson.dumps(record) if _serializable(record) else b"["
    result = ZeekAdapter().convert([line], log)
    assert sum(len(b) for b in result.batches) + len(result.deadletter) == 1


def _serializable(obj) -> bool:
    try:
        orjson.dumps(obj)
        return True
    except (TypeError, orjson.JSONEncodeError):
        return False


def test_zeek_hostile_field_shapes_are_dead_lettered_not_raised():
    good = {"ts": 1_700_000_000.5, "uid": "C1", "id.orig_h": "10.0.0.1", "id.orig_p": 5353,
            "id.resp_h": "10.0.0.2", "id.resp_p": 53, "proto": "udp", "query": "a.example",
            "qtype_name": "A", "rcode_name": "NOERROR"}
    hostile = [dict(good, _path=["dns"]),  # unhashable log name: taken as the given log
               dict(good, query={"nested": "object"}),
               dict(good, proto=["udp"]),
               dict(good, **{"id.orig_p": [1, 2]})]
    lines = [orjson.dumps(r) for r in [good, *hostile, good]]
    result = ZeekAdapter().convert(lines, "dns")
    assert result.records == 6
    assert sum(len(b) for b in result.batches) + len(result.deadletter) + \
        sum(result.unmapped.values()) == 6
    assert sum(len(b) for b in result.batches) >= 2
    for doc in result.deadletter:
        assert doc["reason"]
