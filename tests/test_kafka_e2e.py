"""The Kafka deployment end to end on a real broker (Tansu) on 127.0.0.1:
sensor batches -> sa.sensor -> fusion service -> sa.events -> correlation service(s) -> sa.alerts.

Every test runs its own broker (the services use the fixed topic names) and stops it by PID.
Captures (MANIFEST names): port_scan/simplescan__port_scan.pcap (bro-simple-scan test trace,
one host probing ports of another), brute_force/zeek__sshguess.pcap (Zeek test trace, SSH
password guessing).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import orjson
import pytest
from conftest import shared_pcap
from kafka_fixtures import EVERY_KAFKA_CLIENT, consumer, require_broker_binary

from correlation.alerts import latest_versions, without_version_marks
from correlation.engine import CorrelationEngine
from pipeline.broker import LocalBroker
from pipeline.config import deep_merge, load_config
from pipeline.embedded import run_pipeline
from pipeline.kafka_transport import KafkaConfig, SpoolingProducer, ensure_topics
from pipeline.schema import EventBatch
from pipeline.services import (
    CorrelationService,
    FusionService,
    FusionTransform,
    JsonLog,
    publish_captures,
    sensor_messages,
    topic_partitions,
)
from pipeline.wire import decode, encode

CAPTURES = ["port_scan/simplescan__port_scan.pcap", "brute_force/zeek__sshguess.pcap"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def service_config(**correlation: object) -> dict:
    fast = {"session_timeout_ms": 2000, "metrics_interval_s": 5, "commit_interval_s": 0.2}
    return deep_merge(load_config(), {"services": {
        "fusion": dict(fast), "correlation": {**fast, "idle_flush_s": 1.5, **correlation}}})


kafka_client = EVERY_KAFKA_CLIENT  # every test runs with both client libraries


@pytest.fixture
def broker():
    require_broker_binary()
    with LocalBroker() as b:
        yield b


class Running:
    """A service loop in a thread, stopped (SIGTERM path: flush, commit) on exit."""

    def __init__(self, service: FusionService | CorrelationService) -> None:
        self.stop = threading.Event()
        ready = threading.Event()
        self.thread = threading.Thread(target=service.run, args=(self.stop,),
                                       kwargs={"ready": ready}, daemon=True)
        self.thread.start()
        assert ready.wait(30)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def read_topic(kafka: KafkaConfig, topic: str, count: int, timeout_s: float = 30.0) -> list:
    group = f"reader.{topic}.{time.monotonic_ns()}"
    with consumer(kafka, [topic], group) as reader:
        records = []
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            records += reader.poll_batch(timeout_s=0.5)
        return records


def quiet_log(name: str) -> JsonLog:
    return JsonLog(name, open(os.devnull, "w"))  # noqa: SIM115 - process lifetime


@pytest.mark.parametrize("events_partitions", [4, 1])
def test_kafka_path_gives_the_embedded_alerts(broker, tmp_path, kafka_client,
                                              events_partitions):
    """4 partitions: two keyings (sa.events + sa.events.by_dst), two engines; 1 partition:
    one engine with every detector on sa.events (services.single_pass). Same alerts."""
    paths = [shared_pcap(c) for c in CAPTURES]
    config = service_config()
    config["services"]["topics"]["sa.events"] = events_partitions
    expected = run_pipeline(paths, config).alerts
    assert expected, "the captures must raise alerts for this test to mean anything"
    kafka = KafkaConfig(bootstrap=broker.bootstrap, client=kafka_client)
    ensure_topics(kafka, topic_partitions(config))
    alerts: list[dict] = []
    fusion = Running(FusionService(kafka, config, log=quiet_log("fusion")))
    correlation = Running(CorrelationService(kafka, config, on_alerts=alerts.extend,
                                             log=quiet_log("correlation")))
    try:
        with SpoolingProducer(kafka, tmp_path / "spool") as producer:
            assert publish_captures(paths, config, producer) > 0
            assert producer.flush(30)
        want = {a["event"]["id"]: orjson.loads(orjson.dumps(a)) for a in expected}
        # until the last version of each alert is the whole window's (an idle flush in
        # mid-stream may emit an alert judged on part of it: a revision follows)
        wait_for(lambda: {a["event"]["id"]: without_version_marks(a)
                          for a in latest_versions(alerts)} == want)
    finally:
        correlation.close()
        fusion.close()
    # the last version of each alert (an idle flush may emit one from a still open window,
    # `cirtsa.alert.open_window`, and its close a revision: docs/kafka.md, "Idle input")
    got = {a["event"]["id"]: a for a in latest_versions(alerts)}
    assert set(got) == {a["event"]["id"] for a in expected}
    for alert in expected:  # same documents, not only the same ids
        assert (without_version_marks(got[alert["event"]["id"]])
                == orjson.loads(orjson.dumps(alert)))
    on_topic = read_topic(kafka, "sa.alerts", len(alerts))
    assert {r.key.decode() for r in on_topic} == set(got)
    assert all(orjson.loads(r.value)["event"]["id"] == r.key.decode() for r in on_topic)


def test_a_one_partition_config_on_a_split_topic_is_refused(broker, kafka_client):
    """services.topics says sa.events has 1 partition but the broker's topic has 4 (made
    earlier with another setting): a single-pass worker would see part of the events and
    miss detections silently, so both services refuse to start."""
    from pipeline.kafka_transport import TransportError

    config = service_config()
    kafka = KafkaConfig(bootstrap=broker.bootstrap, client=kafka_client)
    ensure_topics(kafka, topic_partitions(config))  # sa.events: 4
    config["services"]["topics"]["sa.events"] = 1
    for service in (FusionService(kafka, config, log=quiet_log("fusion")),
                    CorrelationService(kafka, config, log=quiet_log("correlation"))):
        with pytest.raises(TransportError, match="has 4 partitions"):
            service.run(threading.Event())


def test_garbage_on_sensor_topic_goes_to_deadletter_and_stream_goes_on(broker, tmp_path,
                                                                       kafka_client):
    paths = [shared_pcap(CAPTURES[0])]
    config = service_config()
    kafka = KafkaConfig(bootstrap=broker.bootstrap, client=kafka_client)
    ensure_topics(kafka, topic_partitions(config))
    good = list(sensor_messages(paths, config))
    garbage = b"\x00not a batch\xff" * 3
    fusion = Running(FusionService(kafka, config, log=quiet_log("fusion")))
    try:
        with SpoolingProducer(kafka, tmp_path / "spool") as producer:
            producer.send("sa.sensor", b"sensor-1", garbage)
            for message in good:
                producer.send("sa.sensor", b"sensor-1", message)
            assert producer.flush(30)
        dead = read_topic(kafka, "sa.deadletter", 1)
        events = read_topic(kafka, "sa.events", 1)
    finally:
        fusion.close()
    assert len(dead) == 1
    doc = orjson.loads(dead[0].value)
    assert doc["stage"] == "fusion" and doc["reason"].startswith("wire:")
    import base64

    assert base64.b64decode(doc["message_b64"]) == garbage
    rows_in = sum(len(decode(m)) for m in good)
    rows_out = sum(len(decode(r.value)) for r in read_topic(kafka, "sa.events", 10**6, 5))
    assert events and rows_out == rows_in


# --- scale-out and crash ----------------------------------------------------------------------

def replicated_sensor_batches(copies: int, shift_s: int) -> list[bytes]:
    """The two captures' sensor batches, `copies` times: copy i moved `i * shift_s` later in
    event time with every address's last byte replaced by a per-copy value, so each copy is
    a separate attacker/victim pair whose windows close while later copies stream in."""
    base = []  # (capture start, batch): each capture rebased onto one timeline (they are
    for capture in CAPTURES:  # years apart) so copies interleave in event time
        batches = [decode(m) for m in sensor_messages([shared_pcap(capture)], load_config())]
        start = min(int(b.columns["timestamp"].min()) for b in batches)
        base += [(start, b) for b in batches]
    out = []
    for i in range(copies):
        for start, batch in base:
            columns = dict(batch.columns)
            columns["timestamp"] = batch.columns["timestamp"] - start + i * shift_s * 10**9
            if "end" in columns:
                columns["end"] = batch.columns["end"] - start + i * shift_s * 10**9
            for name in ("src_ip", "dst_ip"):
                raw = batch.columns[name].copy().view(np.uint8).reshape(-1, 16)
                raw[:, 15] = (raw[:, 15].astype(np.int64) + 7 * i) % 251
                columns[name] = raw.reshape(-1).view(batch.columns[name].dtype)
            out.append(encode(EventBatch(batch.kind, columns)))
    return out


def reference_alerts(messages: list[bytes], config: dict) -> dict[str, dict]:
    """One process, one engine: what a single correlation worker must produce."""
    fusion = FusionTransform(config)
    engine = CorrelationEngine(config["correlation"])
    alerts = []
    for message in messages:
        events, _ = fusion(decode(message))
        for batch in events:
            alerts += engine.push(batch)
    alerts += engine.flush()
    return {a["event"]["id"]: a for a in alerts}


def start_worker(bootstrap: str, config_path: str, out: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "correlate", "run", "--kafka", bootstrap,
         "--config", config_path, "--out", out],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(out + ".log", "wb"))  # noqa: SIM115


def ndjson_ids(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path, "rb") as fh:
        return [orjson.loads(line)["event"]["id"] for line in fh if line.strip()]


def log_lines(path: str, event: str, start: int = 0) -> list[dict]:
    """A worker's JSON log lines of `event`, from byte `start` of its log on (anything
    else on its stderr, or a line still being written, is skipped)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as fh:
        fh.seek(start)
        text = fh.read()
    out = []
    for line in text.splitlines():
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and doc.get("event") == event:
            out.append(doc)
    return out


def input_partitions(log_path: str, config: dict) -> set[str]:
    """Every "topic:partition" of the inputs a worker's "started" log line names."""
    started = log_lines(log_path, "started")
    assert started, f"no start line in {log_path}"
    counts = topic_partitions(config)
    return {f"{t}:{p}" for t in started[0]["inputs"] for p in range(counts[t])}


def wait_progressing(condition: Callable[[], bool], progress: Callable[[], object],
                     stall_s: float, limit_s: float) -> bool:
    """wait_for(condition), as long as `progress()` keeps changing: False once it has not
    changed for `stall_s` (or after `limit_s` in all). On a loaded machine the work takes
    as long as it takes; a stuck worker is still caught."""
    deadline = time.monotonic() + limit_s
    last, since = progress(), time.monotonic()
    while time.monotonic() < deadline:
        if condition():
            return True
        now_progress = progress()
        if now_progress != last:
            last, since = now_progress, time.monotonic()
        elif time.monotonic() - since > stall_s:
            break
        time.sleep(0.2)
    return condition()


def test_two_workers_one_killed_lose_and_duplicate_nothing(broker, tmp_path, kafka_client):
    # idle_flush_s 1.5 (service_config): pauses of the input longer than it in mid-stream
    # (a loaded machine, the takeover's rebalance) are part of what this test exercises;
    # an idle flush leaves the windows open (docs/kafka.md, Delivery guarantees).
    config = service_config()
    messages = replicated_sensor_batches(copies=12, shift_s=900)
    expected = reference_alerts(messages, config)
    assert len(expected) >= 12
    config_path = str(tmp_path / "config.yaml")
    import yaml

    with open(config_path, "w") as fh:
        yaml.safe_dump({"services": config["services"], "kafka": {"client": kafka_client}}, fh)
    kafka = KafkaConfig(bootstrap=broker.bootstrap, client=kafka_client)
    ensure_topics(kafka, topic_partitions(config))
    assert topic_partitions(config)["sa.events"] >= 4
    fusion = Running(FusionService(kafka, config, log=quiet_log("fusion")))
    out_a, out_b = str(tmp_path / "a.ndjson"), str(tmp_path / "b.ndjson")
    worker_a = start_worker(broker.bootstrap, config_path, out_a)
    worker_b = start_worker(broker.bootstrap, config_path, out_b)
    try:
        # Both joined and own partitions before input flows.
        assert wait_for(lambda: all(b'"rebuild"' in open(o + ".log", "rb").read()
                                    for o in (out_a, out_b)), 60)
        half = len(messages) // 2
        with SpoolingProducer(kafka, tmp_path / "spool") as producer:
            for message in messages[:half]:
                producer.send("sa.sensor", b"sensor-1", message)
            assert producer.flush(30)
            # Let A work on its share (alerts out, commits made), then kill it mid-stream.
            wait_for(lambda: len(ndjson_ids(out_a)) > 0, 20)
            log_b = out_b + ".log"
            before_kill = os.path.getsize(log_b)
            worker_a.send_signal(signal.SIGKILL)
            worker_a.wait(10)
            for message in messages[half:]:
                producer.send("sa.sensor", b"sensor-1", message)
            assert producer.flush(30)
        # B takes A's partitions over: once the group notices A is gone (session timeout),
        # B rebuilds from the committed offsets with every input partition. How long that
        # takes depends on the load of the machine, so wait for that line, not a time.
        every = input_partitions(log_b, config)
        assert wait_for(lambda: any(set(line["assignment"]) == every
                                    for line in log_lines(log_b, "rebuild", before_kill)),
                        180), "worker B never rebuilt with every partition after A's kill"

        # Then B replays A's uncommitted share and goes on: wait for the alerts while it
        # makes progress (messages consumed, alerts written).
        def b_progress() -> tuple[int, int]:
            metrics = log_lines(log_b, "metrics", before_kill)
            return len(ndjson_ids(out_b)), metrics[-1]["messages_in"] if metrics else -1

        def missing() -> set[str]:
            return set(expected) - set(ndjson_ids(out_a) + ndjson_ids(out_b))

        if not wait_progressing(lambda: not missing(), b_progress, stall_s=60, limit_s=600):
            metrics = log_lines(log_b, "metrics", before_kill)
            late = {t: e["late_dropped"] for t, e in metrics[-1]["engine"].items()} \
                if metrics else "no metrics"
            # (engines restart at a rebuild: what the discarded ones dropped)
            late_before = [line.get("late_dropped_before") for line in log_lines(log_b,
                                                                                 "rebuild")]
            flushes = metrics[-1].get("idle_flushes") if metrics else None
            # late_dropped > 0: the replay merged partitions out of event-time order
            # (docs/kafka.md, "Event time across partitions"), not a slow worker
            pytest.fail(f"{len(missing())} of {len(expected)} alerts never came; worker B "
                        f"stopped progressing; its late events dropped: {late}, before "
                        f"its rebuilds: {late_before}; idle flushes of B: {flushes}; "
                        f"positions: {metrics[-1]['positions'] if metrics else None}")
    finally:
        for proc in (worker_a, worker_b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0  # graceful stop: exit 0
        fusion.close()
    ids = ndjson_ids(out_a) + ndjson_ids(out_b)
    assert set(ids) == set(expected)  # none lost, none invented
    alerts_topic = read_topic(kafka, "sa.alerts", len(ids))
    assert {r.key.decode() for r in alerts_topic} == set(expected)


def test_broker_restart_while_the_sensor_produces_loses_no_event(tmp_path, kafka_client):
    require_broker_binary()
    config = service_config()
    messages = replicated_sensor_batches(copies=6, shift_s=900)
    # Every event gets a unique id in its (otherwise unused here) source port column.
    tagged, next_id = [], 0
    for message in messages:
        batch = decode(message)
        columns = dict(batch.columns)
        columns["src_port"] = np.arange(next_id, next_id + len(batch), dtype=np.uint16)
        next_id += len(batch)
        tagged.append(encode(EventBatch(batch.kind, columns)))
    assert next_id < 65536
    seen: list[int] = []
    with LocalBroker() as broker:
        kafka = KafkaConfig(bootstrap=broker.bootstrap, client=kafka_client)
        topics = topic_partitions(config)
        ensure_topics(kafka, topics)
        # The test broker keeps everything in memory: a restart recreates the topics from
        # offset 0 while a running consumer keeps its old position, so it would wait past the
        # new data forever (a real Kafka cluster keeps topics and offsets). After the restart
        # the test therefore starts fresh fusion and collector consumers — what is under test
        # is that the sensor's spool delivers every event across the outage.
        def start_fusion() -> Running:
            return Running(FusionService(kafka, config, by_destination=False,
                                         log=quiet_log("fusion")))

        def start_collector(group: str) -> tuple[threading.Thread, threading.Event]:
            stop = threading.Event()

            def collect() -> None:
                with consumer(kafka, ["sa.events"], group) as reader:
                    while not stop.is_set():
                        try:
                            records = reader.poll_batch(timeout_s=0.3)
                        except Exception:  # broker away
                            time.sleep(0.5)
                            continue
                        for r in records:
                            seen.extend(decode(r.value).columns["src_port"].tolist())

            thread = threading.Thread(target=collect, daemon=True)
            thread.start()
            return thread, stop

        fusion = start_fusion()
        collector, collector_stop = start_collector("collector-1")
        try:
            half = len(tagged) // 2
            first_half = sum(len(decode(m)) for m in tagged[:half])
            with SpoolingProducer(kafka, tmp_path / "spool", topics=topics,
                                  retry_interval_s=0.3) as producer:
                for message in tagged[:half]:
                    producer.send("sa.sensor", b"sensor-1", message)
                assert producer.flush(30)
                # What the old broker holds must have reached the collector: memory storage
                # forgets it on restart (a real Kafka cluster would not).
                assert wait_for(lambda: len(set(seen)) >= first_half, 60)
                fusion.close()
                collector_stop.set()
                collector.join(10)
                broker.stop(timeout_s=1.0)
                for message in tagged[half:]:
                    producer.send("sa.sensor", b"sensor-1", message)  # spooled
                broker.start()
                assert producer.flush(60)
            fusion = start_fusion()
            collector, collector_stop = start_collector("collector-2")
            assert wait_for(lambda: len(set(seen)) >= next_id, 90)
        finally:
            collector_stop.set()
            collector.join(10)
            fusion.close()
    assert sorted(set(seen)) == list(range(next_id))  # count in == count out, by id
