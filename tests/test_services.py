"""Unit tests of the Kafka services' pure parts (no broker): keying, fusion's split and
dead-letter, and the correlation worker's commit low-water mark."""

from __future__ import annotations

import base64

import numpy as np
import orjson
from conftest import shared_pcap
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import load_config
from pipeline.kafka_transport import Record
from pipeline.keys import (
    DESTINATION,
    SOURCE,
    aligned_keys,
    bucket_rows,
    default_partition,
    ip_buckets,
    murmur2,
    partition_key_of,
    split_by_key,
    split_detectors,
)
from pipeline.schema import EventBatch
from pipeline.services import (
    CorrelationService,
    FusionService,
    JsonLog,
    needs_destination_keying,
    sensor_messages,
)
from pipeline.wire import decode

CAPTURE = "port_scan/simplescan__port_scan.pcap"


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, key, value))


def quiet(name: str) -> JsonLog:
    import io

    return JsonLog(name, io.StringIO())


@given(st.binary(max_size=40))
def test_murmur2_matches_kafka_python(data):
    from kafka.partitioner.default import murmur2 as kafka_murmur2

    assert murmur2(data) == kafka_murmur2(data)


def test_aligned_keys_land_on_their_partition():
    for partitions in (1, 2, 4, 7, 16):
        keys = aligned_keys(partitions)
        assert [default_partition(k, partitions) for k in keys] == list(range(partitions))


@given(st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=50),
       st.integers(1, 9))
def test_ip_buckets_are_a_function_of_the_address(addresses, buckets):
    column = np.array(addresses, dtype="V16")
    got = ip_buckets(column, buckets)
    assert got.min() >= 0 and got.max() < buckets
    # Same address -> same bucket, wherever it sits in a batch.
    single = [int(ip_buckets(np.array([a], dtype="V16"), buckets)[0]) for a in addresses]
    assert got.tolist() == single


def test_split_by_key_keeps_every_row_once_and_groups_by_address():
    batch = decode(next(iter(sensor_messages([shared_pcap(CAPTURE)], load_config()))))
    for keying, column in ((SOURCE, "src_ip"), (DESTINATION, "dst_ip")):
        parts = split_by_key(batch, keying, 4)
        assert sum(len(p) for _, p in parts) == len(batch)
        owner: dict[bytes, int] = {}
        for bucket, part in parts:
            for address in part.columns[column].tolist():
                assert owner.setdefault(bytes(address), bucket) == bucket


@given(st.lists(st.integers(0, 40), max_size=80), st.sampled_from([1, 2, 4, 16, 17, 64]))
def test_bucket_rows_are_every_row_once_in_order_grouped_by_bucket(addresses, buckets):
    """Both groupings (compare per bucket, radix sort for many buckets) = the plain loop."""
    column = np.array([bytes(15) + bytes([a]) for a in addresses], dtype="V16")
    batch = EventBatch("flow", {"src_ip": column, "dst_ip": column})
    want: dict[int, list[int]] = {}
    for row, bucket in enumerate(ip_buckets(column, buckets).tolist()):
        want.setdefault(bucket, []).append(row)
    got = bucket_rows(batch, SOURCE, buckets)
    if buckets == 1 and addresses:
        assert got == [(0, None)]  # the whole batch, no index
    else:
        assert [(b, rows.tolist()) for b, rows in got] == sorted(want.items())


def test_detectors_are_source_keyed_unless_they_say_otherwise():
    class Plain:
        pass

    class Victim:
        partition_key = "destination"

    class Wrong:
        partition_key = "sideways"

    assert partition_key_of(Plain()) == SOURCE
    split = split_detectors([Plain(), Victim(), Plain()])
    assert [type(d) for d in split[SOURCE]] == [Plain, Plain]
    assert [type(d) for d in split[DESTINATION]] == [Victim]
    try:
        partition_key_of(Wrong())
    except ValueError as exc:
        assert "sideways" in str(exc)
    else:
        raise AssertionError("an unknown partition_key must be refused")


def test_fusion_splits_by_key_and_dead_letters_garbage_with_the_original_bytes():
    config = load_config()
    service = FusionService(None, config, by_destination=True, log=quiet("fusion"))
    messages = list(sensor_messages([shared_pcap(CAPTURE)], config))
    garbage = b"CSAB\x63garbage"
    records = [Record("sa.sensor", 0, 0, b"s1", garbage, 0)]
    records += [Record("sa.sensor", 0, i + 1, b"s1", m, 0) for i, m in enumerate(messages)]
    producer = FakeProducer()
    service.process(records, producer)
    dead = [orjson.loads(v) for t, _, v in producer.sent if t == "sa.deadletter"]
    assert len(dead) == 1 and dead[0]["reason"].startswith("wire:")
    assert base64.b64decode(dead[0]["message_b64"]) == garbage and dead[0]["offset"] == 0
    rows_in = sum(len(decode(m)) for m in messages)
    for topic, column in (("sa.events", "src_ip"), ("sa.events.by_dst", "dst_ip")):
        out = [(k, decode(v)) for t, k, v in producer.sent if t == topic]
        assert sum(len(b) for _, b in out) == rows_in
        key_of: dict[bytes, bytes] = {}
        for key, batch in out:
            for address in batch.columns[column].tolist():
                assert key_of.setdefault(bytes(address), key) == key  # one key per address


def test_correlation_commits_the_low_water_mark_of_open_windows():
    config = load_config()
    service = CorrelationService(None, config, log=quiet("correlation"))
    batch = decode(next(iter(sensor_messages([shared_pcap(CAPTURE)], config))))
    records = [Record("sa.events", 0, 10, b"k", next(iter(sensor_messages(
        [shared_pcap(CAPTURE)], config))), 0)]
    service.push(records)
    # Its windows are open (the watermark trails by allowed_lateness_s): not committable.
    assert service.commit_positions() == {("sa.events", 0): 10}
    assert service.buffered_messages == 1
    # An idle flush emits what its windows found so far but leaves them open: the message
    # stays uncommitted, so a takeover replays it (tests/test_services_idle.py).
    service.flush_engines()
    assert service.commit_positions() == {("sa.events", 0): 10}
    assert len(batch) > 0


def test_a_message_is_committed_once_the_watermark_passes_its_windows():
    from pipeline.schema import EventBatch
    from pipeline.wire import encode

    config = load_config()
    service = CorrelationService(None, config, log=quiet("correlation"))
    message = next(iter(sensor_messages([shared_pcap(CAPTURE)], config)))
    batch = decode(message)
    later = dict(batch.columns)
    later["timestamp"] = batch.columns["timestamp"] + 86_400 * 10**9  # a day later
    service.push([Record("sa.events", 0, 0, b"k", message, 0),
                  Record("sa.events", 0, 1, b"k", encode(EventBatch(batch.kind, later)), 0)])
    # The first message's windows and suppression span are behind the watermark now.
    assert service.commit_positions() == {("sa.events", 0): 1}


def test_fusion_output_is_the_fused_rows_in_size_limited_messages():
    """Every fused row reaches each keyed topic exactly once, column values intact, in
    messages under max_message_bytes (split by key, then chunked, from one BatchEncoder)."""
    config = load_config()
    config["services"]["fusion"]["max_message_bytes"] = 1_500
    service = FusionService(None, config, by_destination=True, log=quiet("fusion"))
    messages = list(sensor_messages([shared_pcap(CAPTURE)], config))
    records = [Record("sa.sensor", 0, i, b"s1", m, 0) for i, m in enumerate(messages)]
    producer = FakeProducer()
    service.process(records, producer)
    reference = FusionService(None, config, by_destination=True, log=quiet("fusion"))
    fused = [b for m in messages for b in reference.transform(decode(m))[0]]

    def rows_of(batches: list[EventBatch]) -> list[tuple]:
        cols = [c for c in fused[0].columns]
        return sorted(tuple(bytes(v) if isinstance(v, np.void) else v for v in row)
                      for b in batches
                      for row in zip(*(b.columns[c].tolist() for c in cols), strict=True))

    for topic in ("sa.events", "sa.events.by_dst"):
        sent = [v for t, _, v in producer.sent if t == topic]
        assert len({k for t, k, _ in producer.sent if t == topic}) < len(sent)  # chunked
        assert all(len(v) <= 1_500 for v in sent)
        assert rows_of([decode(v) for v in sent]) == rows_of(fused)


def test_producer_compression_setting():
    import importlib.util

    from pipeline.services import producer_compression

    assert producer_compression({}) is None
    assert producer_compression({"compression": "none"}) is None
    assert producer_compression({"compression": None}) is None
    assert producer_compression({"compression": "gzip"}) == "gzip"
    lz4_installed = importlib.util.find_spec("lz4") is not None
    assert producer_compression({"compression": "auto"}) == ("lz4" if lz4_installed else None)
    assert producer_compression({"compression": "auto"}, "kafka-python") == (
        "lz4" if lz4_installed else None)
    # librdkafka always has lz4
    assert producer_compression({"compression": "auto"}, "confluent") == "lz4"
    assert producer_compression({"compression": "none"}, "confluent") is None
    # the shipped default: auto, i.e. lz4 with the default (confluent) client
    config = load_config()
    assert config["services"]["fusion"]["compression"] == "auto"
    assert producer_compression(config["services"]["fusion"], config["kafka"]["client"]) == "lz4"


def _one_partition(config: dict) -> dict:
    config["services"]["topics"]["sa.events"] = 1
    return config


def test_one_events_partition_runs_every_detector_in_one_engine_without_by_dst():
    """sa.events with one partition: its single reader sees every key, so the repartition
    topic is skipped and one engine holds every detector (the embedded pipeline's setup)."""
    from correlation.engine import build_detectors

    split = load_config()
    assert split["services"]["topics"]["sa.events"] > 1
    one = _one_partition(load_config())
    detectors = build_detectors(CorrelationService(None, one, log=quiet("c")).correlation)
    assert split_detectors(detectors)[DESTINATION]  # the default set has victim-keyed ones
    assert needs_destination_keying(split) and not needs_destination_keying(one)
    service = CorrelationService(None, one, log=quiet("correlation"))
    assert service.input_topics == ["sa.events"] and list(service.engines) == ["sa.events"]
    assert ([d.name for d in service.engines["sa.events"].detectors]
            == [d.name for d in detectors])
    fusion = FusionService(None, one, log=quiet("fusion"))
    assert [o.topic for o in fusion.outputs] == ["sa.events"]
    assert len(CorrelationService(None, split, log=quiet("c")).engines) == 2


def test_one_pass_and_two_keyings_give_the_alerts_of_the_embedded_engine():
    """The same sensor batches through fusion -> correlation with sa.events split four
    ways (two engines, two topics) and with one partition (one engine, one topic): both
    give exactly the alerts of one in-process engine."""
    from correlation.engine import CorrelationEngine
    from pipeline.services import FusionTransform, topic_partitions

    captures = ["port_scan/simplescan__port_scan.pcap", "brute_force/zeek__sshguess.pcap"]
    base = load_config()
    # in the embedded pipeline's capture order (by time): the services push each poll's
    # batches oldest first, so an input out of event-time order would differ by late events
    messages = list(sensor_messages([shared_pcap(c) for c in captures], base))
    transform, engine = FusionTransform(base), CorrelationEngine(base["correlation"])
    expected = []
    for message in messages:
        for batch in transform(decode(message))[0]:
            expected += engine.push(batch)
    expected += engine.flush()
    assert expected
    for config in (load_config(), _one_partition(load_config())):
        producer = FakeProducer()
        FusionService(None, config, log=quiet("fusion")).process(
            [Record("sa.sensor", 0, i, b"s1", m, 0) for i, m in enumerate(messages)], producer)
        partitions = topic_partitions(config)
        offsets: dict[tuple[str, int], int] = {}
        records = []
        for topic, key, value in producer.sent:
            if topic.startswith("sa.events"):
                tp = (topic, aligned_keys(partitions[topic]).index(key))
                offsets[tp] = offsets.get(tp, -1) + 1
                records.append(Record(topic, tp[1], offsets[tp], key, value, 0))
        service = CorrelationService(None, config, log=quiet("correlation"))
        got = service.push(records) + service.flush_engines()
        assert sorted(a["event"]["id"] for a in got) == sorted(a["event"]["id"]
                                                                for a in expected)
