"""The Kafka transport against a real Tansu broker on 127.0.0.1: round trips of encoded
batches, consumer groups, commit-after-ack, and zero loss across a broker outage."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, shared_pcap
from kafka_fixtures import (
    EVERY_KAFKA_CLIENT,
    SESSION_TIMEOUT_MS,
    consume,
    consumer,
    require_broker_binary,
    unique,
)

from pipeline import wire
from pipeline.broker import BrokerError, LocalBroker, free_port
from pipeline.config import load_config
from pipeline.kafka_transport import (
    DEFAULT_TOPICS,
    TOPIC_ALERTS,
    TOPIC_DEADLETTER,
    TOPIC_EVENTS,
    TOPIC_SENSOR,
    TOPIC_SENSOR_HEALTH,
    KafkaConfig,
    Secret,
    SpoolingProducer,
    TransportError,
    ensure_topics,
)
from pipeline.spool import Spool
from sensors.sensor import CaptureResult, capture_events

# Registers the kafka_broker / kafka_config fixtures (conftest.py is not ours to edit).
pytest_plugins = ["kafka_fixtures"]
kafka_client = EVERY_KAFKA_CLIENT  # every broker test runs with both client libraries

# Short client timeouts so an outage is noticed within seconds.
FAST = dict(delivery_timeout_ms=3000, request_timeout_ms=1000, max_block_ms=1000,
            linger_ms=0, retry_interval_s=0.3)


def message_id(i: int) -> bytes:
    return b"msg-%06d" % i


def ids_of(records) -> list[int]:
    return [int(r.value[4:10]) for r in records]


# --- configuration (no broker) --------------------------------------------------------------

def test_topic_names():
    assert (TOPIC_SENSOR, TOPIC_EVENTS, TOPIC_ALERTS, TOPIC_DEADLETTER, TOPIC_SENSOR_HEALTH) == (
        "sa.sensor", "sa.events", "sa.alerts", "sa.deadletter", "sa.sensor.health")
    assert set(DEFAULT_TOPICS) == {TOPIC_SENSOR, TOPIC_EVENTS, TOPIC_ALERTS, TOPIC_DEADLETTER,
                                   TOPIC_SENSOR_HEALTH}


def test_sasl_password_from_env_or_file_never_shown(tmp_path, caplog):
    settings = {"bootstrap": "kafka-1:9093", "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "sensor-7",
                "ssl_cafile": "/etc/cirt-sa/ca.pem", "sasl_password_env": "MY_KAFKA_PW"}
    config = KafkaConfig.from_mapping(settings, env={"MY_KAFKA_PW": "hunter2-secret"})
    assert config.sasl_password.reveal() == "hunter2-secret"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config)
    assert "***" in repr(config)
    kwargs = config.client_kwargs()
    assert kwargs["sasl_plain_password"] == "hunter2-secret"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512" and kwargs["ssl_cafile"]

    secret_file = tmp_path / "pw"
    secret_file.write_text("from-a-file\n")
    settings_file = dict(settings, sasl_password_file=str(secret_file))
    del settings_file["sasl_password_env"]
    assert KafkaConfig.from_mapping(settings_file, env={}).sasl_password == Secret("from-a-file")

    with pytest.raises(TransportError, match="not in the config"):
        KafkaConfig.from_mapping(dict(settings, sasl_password="inline"), env={})
    with pytest.raises(TransportError, match="needs sasl_username and a password"):
        KafkaConfig.from_mapping(settings, env={})  # variable not set
    with pytest.raises(TransportError, match="cannot read"):
        KafkaConfig.from_mapping(dict(settings, sasl_password_file=str(tmp_path / "no")))
    with pytest.raises(TransportError, match="unknown kafka settings"):
        KafkaConfig.from_mapping({"bootstrap_servers": "x"}, env={})
    with pytest.raises(TransportError, match="security_protocol"):
        KafkaConfig(security_protocol="TLS")


def test_tls_and_sasl_settings_map_to_librdkafka_names_and_the_client_is_chosen(caplog):
    settings = {"bootstrap": "kafka-1:9093,kafka-2:9093", "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "fusion-1",
                "ssl_cafile": "/etc/cirt-sa/ca.pem", "ssl_certfile": "/etc/cirt-sa/c.pem",
                "ssl_keyfile": "/etc/cirt-sa/k.pem", "client": "confluent"}
    config = KafkaConfig.from_mapping(settings, env={"CIRTSA_KAFKA_PASSWORD": "s3cr3t-pw"})
    assert config.librdkafka_conf() == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093", "client.id": "cirt-sa",
        "security.protocol": "sasl_ssl", "ssl.ca.location": "/etc/cirt-sa/ca.pem",
        "ssl.certificate.location": "/etc/cirt-sa/c.pem",
        "ssl.key.location": "/etc/cirt-sa/k.pem", "sasl.mechanisms": "SCRAM-SHA-256",
        "sasl.username": "fusion-1", "sasl.password": "s3cr3t-pw"}
    assert "s3cr3t" not in repr(config) and "client='confluent'" in repr(config)
    assert KafkaConfig.from_mapping(dict(settings, client="kafka-python"),
                                    env={"CIRTSA_KAFKA_PASSWORD": "x"}).client == "kafka-python"
    with pytest.raises(TransportError, match="kafka client must be one of"):
        KafkaConfig(client="librdkafka")
    # librdkafka accepts the mapped settings (a client is built; it connects lazily) and its
    # log lines go through Python logging, where the password never shows.
    caplog.set_level(logging.DEBUG, logger="pipeline.kafka_transport")
    import confluent_kafka

    from pipeline.kafka_transport import _confluent_conf

    plain = KafkaConfig(bootstrap="127.0.0.1:1", client_id="cirtsa-test",
                        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                        sasl_username="u", sasl_password=Secret("s3cr3t-pw"))
    producer = confluent_kafka.Producer(_confluent_conf(plain, **{"message.timeout.ms": 100}))
    producer.produce("t", b"v")
    producer.flush(2)
    assert not any("s3cr3t" in r.getMessage() for r in caplog.records)


def test_plaintext_defaults_from_env_default_variable():
    config = KafkaConfig.from_mapping({"bootstrap": "127.0.0.1:1"}, env={})
    assert config.sasl_password is None
    assert config.client_kwargs() == {"bootstrap_servers": ["127.0.0.1:1"],
                                      "client_id": "cirt-sa", "security_protocol": "PLAINTEXT"}


# --- broker process -------------------------------------------------------------------------

def test_local_broker_binds_loopback_only_and_restarts_on_the_same_port():
    require_broker_binary()
    with LocalBroker() as broker:
        host, port = broker.bootstrap.split(":")
        assert host == "127.0.0.1" and int(port) == broker.port
        command = broker.command()
        assert command.count(f"tcp://127.0.0.1:{port}") == 2 and "0.0.0.0" not in command
        pid = broker.pid
        broker.restart()
        assert broker.running and broker.pid != pid and broker.port == int(port)
    assert not broker.running


def test_run_broker_forever_prints_bootstrap_and_exits_0_on_sigterm():
    require_broker_binary()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pipeline.broker import run_broker_forever; "
         f"sys.exit(run_broker_forever({port}))"],
        stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        line = proc.stdout.readline()
        assert f"bootstrap 127.0.0.1:{port}" in line
        assert ensure_topics(KafkaConfig(bootstrap=f"127.0.0.1:{port}"), {"t": 1}) == ["t"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_local_broker_start_failure_reports_stderr(tmp_path):
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'cannot bind: permission denied' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerError, match="exited with code 3.*cannot bind"):
        LocalBroker(binary=str(fake)).start()


# --- round trips ----------------------------------------------------------------------------

def test_round_trip_of_encoded_batches(kafka_config, tmp_path):
    path = shared_pcap("dns_tunneling/ndpi__dns-tunnel-iodine.pcap")
    batches = [b for _, evs in capture_events(path, load_config()["sensor"],
                                              CaptureResult(str(path))) for b in evs if len(b)]
    assert {"dns", "flow"} <= {b.kind for b in batches}  # the capture's bulk
    topic = unique("sa.sensor")
    ensure_topics(kafka_config, {topic: 2})
    with SpoolingProducer(kafka_config, tmp_path / "spool") as producer:
        for batch in batches:
            producer.send(topic, b"sensor-1", wire.encode(batch))
        assert producer.flush(10)
        metrics = producer.metrics_snapshot()
    assert metrics["acked"] == metrics["sent"] == len(batches) and metrics["spooled"] == 0
    with consumer(kafka_config, [topic], unique("g")) as group_member:
        records = consume(group_member, len(batches))
    # One key -> one partition -> order kept.
    assert [r.key for r in records] == [b"sensor-1"] * len(batches)
    decoded = [wire.decode(r.value) for r in records]
    for sent, got in zip(batches, decoded, strict=True):
        assert got.kind == sent.kind
        for name, column in sent.columns.items():
            assert got.columns[name].tolist() == column.tolist(), name


def test_garbage_message_decodes_to_wire_error(kafka_config, tmp_path):
    topic = unique("sa.sensor")
    ensure_topics(kafka_config, {topic: 1})
    with SpoolingProducer(kafka_config, tmp_path / "spool") as producer:
        producer.send(topic, None, b"\x00garbage, not a batch")
        producer.send(topic, None, b"{not json")
    with consumer(kafka_config, [topic], unique("g")) as member:
        records = consume(member, 2)
    with pytest.raises(wire.WireError, match="bad magic"):
        wire.decode(records[0].value)
    with pytest.raises(wire.WireError, match="not valid JSON"):
        wire.decode_alert(records[1].value)


def test_ensure_topics_is_idempotent(kafka_config):
    topics = {unique("t"): 3, unique("t"): 1}
    assert sorted(ensure_topics(kafka_config, topics)) == sorted(topics)
    assert ensure_topics(kafka_config, topics) == []


def test_ensure_topics_without_broker_is_a_transport_error(kafka_client):
    with pytest.raises(TransportError, match="127.0.0.1"):
        ensure_topics(KafkaConfig(bootstrap=f"127.0.0.1:{free_port()}", client=kafka_client),
                      {"t": 1}, timeout_s=2)


# --- consumer groups and commits ------------------------------------------------------------

def test_group_of_two_consumers_covers_four_partitions_exactly_once(kafka_config, tmp_path):
    topic, group = unique("sa.events"), unique("g")
    ensure_topics(kafka_config, {topic: 4})
    members = [consumer(kafka_config, [topic], group) for _ in range(2)]
    received: list[list] = [[], []]
    stop = threading.Event()

    def work(member, bucket) -> None:  # one thread per member, as one process each would
        while not stop.is_set():
            batch = member.poll_batch(timeout_s=0.2)
            bucket += batch
            member.commit(batch)  # "output acknowledged": commit what was processed

    threads = [threading.Thread(target=work, args=pair, daemon=True)
               for pair in zip(members, received, strict=True)]
    count = 400
    try:
        for thread in threads:
            thread.start()
        # Both join before producing: a rebalance after uncommitted reads would redeliver.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            owned = [m.assignment() for m in members]
            if all(owned) and sum(map(len, owned)) == 4:
                break
            time.sleep(0.05)
        assert owned[0].isdisjoint(owned[1]) and len(owned[0] | owned[1]) == 4, owned
        with SpoolingProducer(kafka_config, tmp_path / "spool") as producer:
            for i in range(count):
                producer.send(topic, b"key-%d" % (i % 37), message_id(i))
            assert producer.flush(10)
        deadline = time.monotonic() + 20
        while sum(map(len, received)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # room for a duplicate to show up
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        for member in members:
            member.close()
    all_ids = ids_of(received[0]) + ids_of(received[1])
    assert sorted(all_ids) == list(range(count))  # every message, none twice
    assert received[0] and received[1]  # both members did work
    for bucket, partitions in zip(received, owned, strict=True):
        assert {(r.topic, r.partition) for r in bucket} <= partitions


def test_uncommitted_records_are_delivered_again_after_restart(kafka_config, tmp_path):
    topic, group = unique("sa.events"), unique("g")
    ensure_topics(kafka_config, {topic: 1})
    with SpoolingProducer(kafka_config, tmp_path / "spool") as producer:
        for i in range(10):
            producer.send(topic, None, message_id(i))
    with consumer(kafka_config, [topic], group) as first:
        records = consume(first, 10, commit=False)
        assert ids_of(records) == list(range(10))
        # Output of the first four acknowledged downstream: commit only those.
        assert first.commit(records[:4]) == {(topic, 0): 4}
        assert first.commit(records[:2]) == {}  # a commit never moves backwards
    # "Crash" after processing all ten: the six not acknowledged come back, nothing else.
    with consumer(kafka_config, [topic], group) as second:
        again = consume(second, 6, commit=False)
        assert ids_of(again) == list(range(4, 10))
    with consumer(kafka_config, [topic], group) as third:  # still nothing committed past 4
        assert ids_of(consume(third, 6, commit=True)) == list(range(4, 10))
    with consumer(kafka_config, [topic], group) as fourth:
        assert fourth.poll_batch(timeout_s=SESSION_TIMEOUT_MS / 1000) == []


def test_rewind_to_committed_redelivers_everything_after_the_commit(kafka_config, tmp_path):
    """The public rewind (what a correlation worker does on a rebalance to rebuild its
    windows): partitions go back to the group's commit, or to the start without one."""
    topic, group = unique("sa.events"), unique("g")
    ensure_topics(kafka_config, {topic: 2})
    with SpoolingProducer(kafka_config, tmp_path / "spool") as producer:
        for i in range(20):
            producer.send(topic, b"key-%d" % (i % 2), message_id(i))
        assert producer.flush(10)
    with consumer(kafka_config, [topic], group) as member:
        records = consume(member, 20, commit=False)
        assert sorted(ids_of(records)) == list(range(20))
        by_partition: dict[int, list] = {}
        for r in records:
            by_partition.setdefault(r.partition, []).append(r)
        committed_part, other_part = sorted(by_partition)
        done = by_partition[committed_part][:3]  # the first three of one partition
        assert member.commit_offsets({(topic, committed_part): done[-1].offset + 1,
                                      (topic, other_part): 0}) == {
            (topic, committed_part): done[-1].offset + 1, (topic, other_part): 0}
        assert member.commit_offsets({(topic, committed_part): 1}) == {}  # never backwards
        assert member.commit_offsets({(topic, 99): 5}) == {}  # not assigned: skipped
        positions = member.rewind_to_committed()
        assert positions == {(topic, committed_part): done[-1].offset + 1,
                             (topic, other_part): 0}
        again = consume(member, 20 - 3, commit=False)
    expected = sorted(set(ids_of(records)) - set(ids_of(done)))
    assert sorted(ids_of(again)) == expected


# --- outages --------------------------------------------------------------------------------

def test_broker_outage_while_producing_loses_nothing(tmp_path, caplog, kafka_client):
    """Stop the broker while a producer sends, restart it (memory storage: topics and data
    are gone, so what was acknowledged before the stop is read before it), and check that
    every message arrives: count in == count out, by message id."""
    require_broker_binary()
    topic = "sa.sensor"
    topics = {topic: 2}
    total, stop_at, restart_at = 300, 100, 200
    caplog.set_level(logging.WARNING, logger="pipeline.kafka_transport")
    with LocalBroker() as broker:
        config = KafkaConfig(bootstrap=broker.bootstrap, client=kafka_client)
        ensure_topics(config, topics)
        producer = SpoolingProducer(config, Spool(tmp_path / "spool", fsync="never"),
                                    topics=topics, **FAST)
        before_stop: list = []
        try:
            for i in range(total):
                if i == stop_at:
                    # Everything acknowledged so far lives only in the broker's memory:
                    # read it now, then take the broker down while sends continue.
                    assert producer.flush(10)
                    with consumer(config, [topic], unique("g")) as reader:
                        before_stop = consume(reader, stop_at)
                    broker.stop(timeout_s=1)
                if i == restart_at:
                    # Down long enough for deliveries to time out into the spool.
                    deadline = time.monotonic() + 15
                    while producer.metrics_snapshot()["in_spool"] < 50:
                        assert time.monotonic() < deadline, producer.metrics_snapshot()
                        time.sleep(0.1)
                    # what fusion's loop asks instead of waiting: nothing sent before this
                    # point counts as delivered while the spool holds messages
                    mark = producer.mark()
                    assert producer.backlogged and not producer.delivered_through(mark)
                    broker.start()
                producer.send(topic, b"sensor-%d" % (i % 3), message_id(i))
                time.sleep(0.005)
            assert producer.flush(40), producer.metrics_snapshot()
            metrics = producer.metrics_snapshot()
            assert producer.delivered_through(mark) and not producer.backlogged
            assert producer.delivered_through(producer.mark())
        finally:
            producer.close(timeout_s=5)
        with consumer(config, [topic], unique("g")) as reader:
            after_restart = consume(reader, total - stop_at, timeout_s=30)
            after_restart += reader.poll_batch(timeout_s=1)  # duplicates, if any, show up

    assert sorted(ids_of(before_stop)) == list(range(stop_at))
    # At-least-once: duplicates allowed, losses not; in practice there are none here.
    assert sorted(set(ids_of(after_restart))) == list(range(stop_at, total))
    assert metrics["sent"] == total
    assert metrics["acked"] == total and metrics["in_spool"] == 0
    assert metrics["spooled"] >= 50 and metrics["redelivered"] == metrics["spooled"]
    assert metrics["failed"] > 0 and metrics["dropped_oldest"] == metrics["rejected"] == 0
    assert any("spooling" in r.getMessage() for r in caplog.records)


def test_acks_from_a_restarted_broker_that_forgot_the_topic_are_not_trusted(tmp_path, caplog,
                                                                            kafka_client):
    """A quick broker restart (memory storage: topics gone) while sends sit in the client's
    queue: the client reconnects and the new broker *acknowledges* produces to a topic it
    does not know, and nobody can read them (docs/kafka.md, "Broker restart"). The producer
    must notice (topic missing / new topic id), recreate the topics and send again: every
    message readable afterwards (duplicates allowed)."""
    require_broker_binary()
    topic = "sa.sensor"
    topics = {topic: 2}
    caplog.set_level(logging.WARNING, logger="pipeline.kafka_transport")
    with LocalBroker() as broker:
        config = KafkaConfig(bootstrap=broker.bootstrap, client=kafka_client)
        ensure_topics(config, topics)
        with SpoolingProducer(config, tmp_path / "spool", topics=topics, **FAST) as producer:
            for i in range(20):
                producer.send(topic, b"sensor-%d" % (i % 3), message_id(i))
            assert producer.flush(10)
            with consumer(config, [topic], unique("g")) as reader:
                assert sorted(ids_of(consume(reader, 20))) == list(range(20))
            broker.stop(timeout_s=1)
            assert producer.delivered_through(producer.mark())
            for i in range(20, 60):  # queued in the client: its cached metadata still works
                producer.send(topic, b"sensor-%d" % (i % 3), message_id(i))
            mark = producer.mark()
            assert not producer.delivered_through(mark)  # nobody can have acknowledged them
            broker.start()  # back within the delivery timeout: no send fails outright
            assert producer.flush(30), producer.metrics_snapshot()
            metrics = producer.metrics_snapshot()
            # only after the re-sends to the recreated topic were confirmed
            assert producer.delivered_through(mark)
        with consumer(config, [topic], unique("g")) as reader:
            got = consume(reader, 40, timeout_s=20)
            got += reader.poll_batch(timeout_s=1)  # duplicates, if any, show up
    assert sorted(set(ids_of(got))) == list(range(20, 60))
    assert metrics["sent"] == 60 and metrics["acked"] == 60 and metrics["in_spool"] == 0
    assert metrics["resent"] > 0 and metrics["unconfirmed"] == 0
    assert any("lost topics" in r.getMessage() for r in caplog.records)


def test_spool_left_by_a_previous_run_is_sent_first(tmp_path, kafka_client):
    """A producer that starts while the broker is down spools everything; a later producer
    on the same spool directory delivers it, oldest first, once the broker is up."""
    require_broker_binary()
    port = free_port()
    config = KafkaConfig(bootstrap=f"127.0.0.1:{port}", client=kafka_client)
    topic = "sa.alerts"
    first = SpoolingProducer(config, tmp_path / "spool", topics={topic: 1}, **FAST)
    for i in range(5):
        first.send(topic, None, message_id(i))
    assert not first.flush(0.5)
    first.close(timeout_s=0.5)  # broker never came: all five stay on disk
    assert first.metrics_snapshot()["in_spool"] == 5

    with LocalBroker(port=port) as broker:
        assert broker.bootstrap == config.bootstrap
        with SpoolingProducer(config, tmp_path / "spool", topics={topic: 1}, **FAST) as second:
            second.send(topic, None, message_id(5))  # queued behind the spooled five
            assert second.flush(20)
            assert second.metrics_snapshot()["redelivered"] == 6
        with consumer(config, [topic], unique("g")) as reader:
            assert ids_of(consume(reader, 6)) == list(range(6))


def test_unknown_error_after_restart_is_spooled_and_resent(kafka_config, tmp_path):
    """Tansu answers some produces with UnknownError for ~10 s after a restart and
    kafka-python does not retry it: the producer must spool those and send them again."""
    from kafka import errors as kafka_errors
    from kafka.future import Future

    topic = unique("sa.sensor")
    ensure_topics(kafka_config, {topic: 1})
    producer = SpoolingProducer(kafka_config, tmp_path / "spool", **FAST)
    real_client = producer._client()
    failures = {"left": 3}

    class FlakyClient:  # the broker's answer for the first three produces
        def __getattr__(self, name):
            return getattr(real_client, name)

        def send(self, *args, **kwargs):
            if failures["left"]:
                failures["left"] -= 1
                return Future().failure(kafka_errors.UnknownError("after restart"))
            return real_client.send(*args, **kwargs)

    producer._client = lambda: FlakyClient()  # type: ignore[method-assign]
    try:
        for i in range(10):
            producer.send(topic, None, message_id(i))
        assert producer.flush(15)
        metrics = producer.metrics_snapshot()
    finally:
        producer.close()
    assert metrics["failed"] >= 3 and metrics["spooled"] >= 3
    assert metrics["acked"] == 10 and metrics["rejected"] == 0
    with consumer(kafka_config, [topic], unique("g")) as reader:
        assert sorted(ids_of(consume(reader, 10))) == list(range(10))


def test_confluent_delivery_report_before_or_after_the_callbacks_reaches_them_once():
    """librdkafka's report may be served (by the polling thread) before SpoolingProducer
    attached its callbacks: either order calls the right one, exactly once."""
    import confluent_kafka

    from pipeline.kafka_transport import _ConfluentFuture, _is_permanent

    calls: list = []
    early, late = _ConfluentFuture(), _ConfluentFuture()
    early.report(None, None)
    for future in (early, late):
        future.add_callback(lambda n, meta: calls.append(("ok", n, meta)), 1)
        future.add_errback(lambda n, exc: calls.append(("err", n, exc)), 1)
    late.report(None, None)
    assert calls == [("ok", 1, None), ("ok", 1, None)]

    calls.clear()
    failed = _ConfluentFuture()
    failed.add_errback(lambda exc: calls.append(exc))
    failed.report(confluent_kafka.KafkaError(confluent_kafka.KafkaError._MSG_TIMED_OUT), None)
    failed.add_callback(lambda meta: calls.append("ok?"))
    too_large = _ConfluentFuture()
    too_large.report(confluent_kafka.KafkaError(confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE),
                     None)
    too_large.add_errback(lambda exc: calls.append(exc))
    assert [type(c).__name__ for c in calls] == ["DeliveryError", "DeliveryError"]
    assert not _is_permanent(calls[0]) and _is_permanent(calls[1])  # retry vs reject


class _FakeLibrdkafka:
    """librdkafka's consume(n, timeout) as measured: it returns once n messages are there
    or when the timeout has passed, so with fewer queued it waits the whole timeout
    (recorded in `waited` instead of sleeping)."""

    class Message:
        def __init__(self, offset: int) -> None:
            self._offset = offset

        def error(self) -> None:
            return None

        def topic(self) -> str:
            return "t"

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return self._offset

        def key(self) -> bytes:
            return b"k"

        def value(self) -> bytes:
            return message_id(self._offset)

        def timestamp(self) -> tuple[int, int]:
            return (1, 0)

    def __init__(self, queued: int) -> None:
        self.queue = [self.Message(i) for i in range(queued)]
        self.waited = 0.0

    def consume(self, num_messages: int, timeout: float) -> list:
        if len(self.queue) < num_messages and timeout > 0:
            self.waited += timeout
        out, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        return out


@pytest.mark.parametrize("linger_s", [0.0, 0.05])
@pytest.mark.parametrize("queued", [0, 1, 3, 20])
def test_a_confluent_poll_returns_what_is_fetched_without_waiting_for_a_full_batch(queued,
                                                                                 linger_s):
    """poll_batch(timeout, max_records) returns the records already there at once, up to
    max_records, and waits (up to the timeout) only when there are none, as kafka-python's
    poll does: librdkafka's consume(16, t) would sit out t with 3 records in hand. With
    poll_linger_s, a poll that has records waits at most that long for more."""
    from pipeline.kafka_transport import BatchConsumer

    fake = _FakeLibrdkafka(queued)
    polling = BatchConsumer.__new__(BatchConsumer)  # no broker: only the poll logic
    polling.config, polling.group_id, polling.max_poll_records = KafkaConfig(), "g", 16
    polling._confluent, polling._consumer, polling.poll_linger_s = True, fake, linger_s
    got = []
    while batch := polling.poll_batch(timeout_s=2.0):
        assert len(batch) <= 16
        got += batch
    assert [r.offset for r in got] == list(range(queued))
    # the last, empty poll waited its timeout; a poll with a partial batch its linger
    assert fake.waited == pytest.approx(2.0 + (linger_s if queued else 0.0))
