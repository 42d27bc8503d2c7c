"""`cirt-sa health run`: sensor health documents from Kafka `sa.sensor.health` into
Elasticsearch (`logs-cirtsa.sensor_health-default`), for the dashboard's sensor panel.

A stage like the others: input = a consumer group on `sa.sensor.health`, transform = parse
and check each message (one JSON health document, sensors/health.py), output = the
Elasticsearch sink's `write_health` (create by a hash of sensor and time, so a redelivered
document is stored once). Offsets are committed only after Elasticsearch acknowledged the
batch; while it is down the consumer rewinds to its last commit and retries with backoff,
so an outage delays health documents and loses none (Kafka is the spool). A message that
is not a health document goes to `sa.deadletter` with the reason and its original bytes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from pipeline.bus import TOPIC_DEADLETTER
from pipeline.kafka_transport import (
    TOPIC_SENSOR_HEALTH,
    BatchConsumer,
    KafkaConfig,
    Record,
    SpoolingProducer,
    TransportError,
)
from pipeline.private_spool import private_spool_dir, remove_private_spool
from pipeline.services import (
    JsonLog,
    commit_records,
    deadletter_record,
    poll_records,
    service_settings,
)
from sensors.health import HEALTH_DATASET

HealthWriter = Callable[[list[dict]], Any]  # raises when Elasticsearch did not acknowledge


def health_document(record: Record) -> dict:
    """The health document of one message; ValueError with the reason when it is none."""
    try:
        doc = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    event = doc.get("event")
    if not isinstance(event, dict) or event.get("dataset") != HEALTH_DATASET:
        raise ValueError(f"event.dataset is not {HEALTH_DATASET}")
    observer = doc.get("observer")
    if not isinstance(observer, dict) or not isinstance(observer.get("name"), str):
        raise ValueError("observer.name missing")
    if not isinstance(doc.get("@timestamp"), str):
        raise ValueError("@timestamp missing")
    return doc


class HealthShipper:
    """Consumes `sa.sensor.health`, writes the documents with `write_health`."""

    def __init__(self, kafka: KafkaConfig, config: Mapping, write_health: HealthWriter, *,
                 group: str | None = None, log: JsonLog | None = None) -> None:
        self.kafka = kafka
        self.settings = service_settings(config, "health")
        self.group = group or self.settings.get("group") or "cirtsa-health"
        self.write_health = write_health
        self.log = log or JsonLog("health")
        self.stats = {"documents": 0, "dead_lettered": 0, "write_failures": 0}

    def split(self, records: Iterable[Record]) -> tuple[list[dict], list[dict]]:
        """(health documents, dead-letter documents) of a poll."""
        docs, dead = [], []
        for record in records:
            try:
                docs.append(health_document(record))
            except ValueError as exc:
                dead.append(deadletter_record(record, str(exc), stage="health"))
        return docs, dead

    def run(self, stop: threading.Event, *, ready: threading.Event | None = None) -> int:
        s = self.settings
        backoff_s = float(s.get("retry_backoff_s", 5))
        spool = s.get("spool_dir") or private_spool_dir("health")
        consumer = BatchConsumer(self.kafka, [TOPIC_SENSOR_HEALTH], self.group,
                                 session_timeout_ms=int(s.get("session_timeout_ms", 6000)),
                                 max_poll_records=int(s.get("max_poll_records", 500)))
        producer = SpoolingProducer(self.kafka, spool, topics={TOPIC_DEADLETTER: 1})
        self.log("started", group=self.group)
        if ready is not None:
            ready.set()
        try:
            while not stop.is_set():
                records = poll_records(consumer, stop, self.log, 0.5)
                if not records:
                    continue
                if self._deliver(records, producer, stop):
                    commit_records(consumer, records, self.log)  # at-least-once: ids dedupe
                else:
                    self._rewind(consumer, stop)  # the same records come again
                    stop.wait(backoff_s)
        finally:
            producer.flush(float(s.get("shutdown_flush_s", 10)))
            producer.close(1.0)
            consumer.close()
            if not s.get("spool_dir"):
                remove_private_spool(spool)
            self.log("stopped", **self.stats)
        return 0

    def _rewind(self, consumer: BatchConsumer, stop: threading.Event) -> None:
        # Until the rewind succeeds the position is past undelivered records: committing
        # later records would skip them, so nothing else happens meanwhile.
        while not stop.is_set():
            try:
                consumer.rewind_to_committed()
                return
            except TransportError as exc:
                self.log("rewind_failed", reason=str(exc)[:300])
                stop.wait(1.0)

    def _deliver(self, records: list[Record], producer: SpoolingProducer,
                 stop: threading.Event) -> bool:
        """True once every record is in Elasticsearch or in the dead-letter topic."""
        docs, dead = self.split(records)
        for doc in dead:
            producer.send(TOPIC_DEADLETTER, None, orjson.dumps(doc))
        if dead and not producer.flush(float(self.settings.get("shutdown_flush_s", 10))):
            return False
        try:
            if docs:
                self.write_health(docs)
        except Exception as exc:  # ES down past the sink's budget: retry the whole poll
            self.stats["write_failures"] += 1
            self.log("write_failed", reason=str(exc)[:300], documents=len(docs),
                     retry_in_s=float(self.settings.get("retry_backoff_s", 5)))
            return False
        self.stats["documents"] += len(docs)
        self.stats["dead_lettered"] += len(dead)
        if docs:
            self.log("shipped", documents=len(docs), newest=max(d["@timestamp"] for d in docs),
                     at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return True
