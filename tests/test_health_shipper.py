"""`cirt-sa health run` (pipeline/health_shipper.py): sensor health documents from a real
broker into a real osmem-server; commit after acknowledgement, survive an Elasticsearch
outage, dead-letter what is not a health document."""

from __future__ import annotations

import base64
import threading
import time

import orjson
import pytest
from es_fixtures import OsmemProcess
from kafka_fixtures import consume, consumer, require_broker_binary, unique

from correlation.es_setup import HEALTH_ALIAS, make_client, setup
from correlation.es_sink import ElasticsearchSink
from pipeline.broker import LocalBroker
from pipeline.bus import TOPIC_DEADLETTER
from pipeline.health_shipper import HealthShipper, health_document
from pipeline.kafka_transport import (
    TOPIC_SENSOR_HEALTH,
    KafkaConfig,
    Record,
    SpoolingProducer,
    ensure_topics,
)
from sensors.health import HealthReporter

CONFIG = {"services": {"health": {"retry_backoff_s": 0.2, "session_timeout_ms": 2000}}}


def health_docs(sensor: str, count: int, first_minute: int = 0) -> list[dict]:
    reporter = HealthReporter(sensor, "dmz", interval_s=60, wall_clock=False)
    t0 = 1_700_000_000 * 10**9
    reporter.due(t0)
    return [reporter.report({"packets": 100 * i}, {"flow": i}, {}, t0 + i * 60 * 10**9)
            for i in range(first_minute + 1, first_minute + count + 1)]


def record(value: bytes) -> Record:
    return Record(TOPIC_SENSOR_HEALTH, 0, 7, b"sensor-a", value, 0)


def test_health_document_reasons():
    good = health_docs("sensor-a", 1)[0]
    assert health_document(record(orjson.dumps(good))) == good
    for value, reason in ((b"{oops", "not JSON"), (b"[1]", "not a JSON object"),
                          (orjson.dumps({**good, "event": {"dataset": "cirtsa.flow"}}),
                           "event.dataset"),
                          (orjson.dumps({**good, "observer": {}}), "observer.name"),
                          (orjson.dumps({k: v for k, v in good.items() if k != "@timestamp"}),
                           "@timestamp")):
        with pytest.raises(ValueError, match=reason):
            health_document(record(value))


def stored(url: str) -> dict[str, dict]:
    client = make_client(url, compat_plain_json=True)
    if not client.indices.exists_alias(name=HEALTH_ALIAS):
        return {}  # the service has not set the cluster up yet
    client.indices.refresh(index=HEALTH_ALIAS)
    hits = client.search(index=HEALTH_ALIAS, size=1000)["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def kafka_broker():
    require_broker_binary()
    with LocalBroker() as broker:
        yield broker


def test_shipper_survives_an_elasticsearch_outage_and_dead_letters_garbage(kafka_broker,
                                                                          tmp_path):
    kafka_config = KafkaConfig(bootstrap=kafka_broker.bootstrap, client_id="cirtsa-test")
    # The services create their topics at start (cirt-sa ... run); so does this test.
    ensure_topics(kafka_config, {TOPIC_SENSOR_HEALTH: 1, TOPIC_DEADLETTER: 1})
    es = OsmemProcess().start()
    client = make_client(es.url, compat_plain_json=True, request_timeout=2)
    setup(client)
    # A short sink budget: an outage makes write_health raise quickly, the shipper rewinds.
    sink = ElasticsearchSink(client, max_attempts=2, initial_backoff_s=0.05,
                             max_backoff_s=0.1, max_total_s=1)
    shipper = HealthShipper(kafka_config, CONFIG, sink.write_health, group=unique("health"))
    producer = SpoolingProducer(kafka_config, str(tmp_path / "spool"),
                                topics={TOPIC_SENSOR_HEALTH: 1, TOPIC_DEADLETTER: 1})
    dead_reader = consumer(kafka_config, [TOPIC_DEADLETTER], unique("dead"))
    stop = threading.Event()
    ready = threading.Event()
    thread = threading.Thread(target=shipper.run, args=(stop,), kwargs={"ready": ready},
                              daemon=True)
    try:
        thread.start()
        assert ready.wait(30)
        first = health_docs("sensor-a", 3)
        for doc in [*first, first[0]]:  # a redelivered document is stored once
            producer.send(TOPIC_SENSOR_HEALTH, b"sensor-a", orjson.dumps(doc))
        producer.send(TOPIC_SENSOR_HEALTH, b"sensor-a", b"not json at all")
        assert producer.flush(30)
        assert wait_for(lambda: len(stored(es.url)) == 3)

        es.kill()  # outage: the next documents cannot be written
        second = health_docs("sensor-b", 4)
        for doc in second:
            producer.send(TOPIC_SENSOR_HEALTH, b"sensor-b", orjson.dumps(doc))
        assert producer.flush(30)
        assert wait_for(lambda: shipper.stats["write_failures"] >= 2)
        es.start()  # back, empty (osmem keeps nothing): set up again, as an operator would
        setup(make_client(es.url, compat_plain_json=True))
        assert wait_for(lambda: len(stored(es.url)) == 4)
        docs = stored(es.url).values()
        assert sorted(d["@timestamp"] for d in docs) == sorted(d["@timestamp"] for d in second)
        assert {d["observer"]["name"] for d in docs} == {"sensor-b"}
        dead = [orjson.loads(r.value) for r in consume(dead_reader, 1, timeout_s=20)]
        assert len(dead) == 1 and dead[0]["reason"].startswith("not JSON: ")
        assert dead[0]["stage"] == "health"
        assert base64.b64decode(dead[0]["message_b64"]) == b"not json at all"
    finally:
        stop.set()
        thread.join(30)
        producer.close(1.0)
        dead_reader.close()
        es.kill()
    assert not thread.is_alive()
    assert shipper.stats["documents"] >= 7 and shipper.stats["dead_lettered"] == 1


def test_health_run_command_ships_and_stops_cleanly_on_sigterm(kafka_broker, tmp_path):
    import signal
    import subprocess
    import sys

    es = OsmemProcess().start()
    config = tmp_path / "c.yaml"
    config.write_text("elasticsearch:\n  compat_plain_json: true\n")
    kafka_config = KafkaConfig(bootstrap=kafka_broker.bootstrap, client_id="cirtsa-test")
    producer = SpoolingProducer(kafka_config, str(tmp_path / "spool"),
                                topics={TOPIC_SENSOR_HEALTH: 1})
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "health", "run", "--kafka",
                             kafka_broker.bootstrap, "--es", es.url, "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for doc in health_docs("sensor-c", 2):
            producer.send(TOPIC_SENSOR_HEALTH, b"sensor-c", orjson.dumps(doc))
        assert producer.flush(30)
        assert wait_for(lambda: len(stored(es.url)) == 2, timeout_s=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert b'"event":"stopped"' in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        producer.close(1.0)
        es.kill()
