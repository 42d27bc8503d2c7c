r"""Fusion and correlation as long-running Kafka services, scaled out with consumer groups.

    sa.sensor --[fusion]--> sa.events        (split by hash(source.ip), key = bucket key)
                        \-> sa.events.by_dst (split by hash(destination.ip)), when a
                        |                     destination-keyed detector is enabled
                        \-> sa.deadletter    (invalid batches, undecodable messages)
    sa.events        --[correlation: source-keyed detectors]------\
    sa.events.by_dst --[correlation: destination-keyed detectors]--+--> sa.alerts (+ ES, NDJSON)

Delivery is at-least-once (DESIGN.md §3): a service commits an input offset only once the
outputs derived from it are acknowledged (producer flush; Elasticsearch ack). The
correlation worker holds open event-time windows in memory, so it commits the *low-water
mark* of the messages its engine may still need (events of open windows, plus the
suppression span before them); a restarted or re-assigned worker replays from there and
rebuilds the windows. Alert ids are hash(rule, key, window start), so an alert re-derived
by a replay is the same document. docs/kafka.md has the details and the limits.
"""

from __future__ import annotations

import base64
import importlib.util
import math
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Protocol

import orjson

from correlation.alerts import count_versions
from correlation.detector import NS_PER_S
from correlation.engine import CorrelationEngine, build_detectors, default_config, merge_config
from fusion.stage import FusionStage
from pipeline.bus import TOPIC_ALERTS, TOPIC_DEADLETTER, TOPIC_EVENTS, TOPIC_SENSOR, InMemoryBus
from pipeline.kafka_transport import (
    DEFAULT_TOPICS,
    BatchConsumer,
    CommitFailed,
    KafkaConfig,
    Record,
    SpoolingProducer,
    TransportError,
)
from pipeline.keys import DESTINATION, SOURCE, aligned_keys, bucket_rows, split_detectors
from pipeline.private_spool import private_spool_dir, remove_private_spool
from pipeline.schema import EventBatch, SchemaError
from pipeline.wire import BatchEncoder, WireError, decode, encode_chunks

TOPIC_EVENTS_BY_DST = "sa.events.by_dst"
# The topic each keying's events travel on.
KEYED_TOPICS = {SOURCE: TOPIC_EVENTS, DESTINATION: TOPIC_EVENTS_BY_DST}

SERVICE_TOPICS: dict[str, int] = {**DEFAULT_TOPICS, TOPIC_EVENTS_BY_DST: 4}

_KAFKA_KEYS = {"bootstrap", "client_id", "security_protocol", "ssl_cafile", "ssl_certfile",
               "ssl_keyfile", "sasl_mechanism", "sasl_username", "sasl_password_env",
               "sasl_password_file", "client"}


# --- configuration ---------------------------------------------------------------------------

def kafka_config(config: Mapping, bootstrap: str | None = None) -> KafkaConfig:
    """KafkaConfig from the `kafka` section (only the connection keys; other components may
    keep their own settings there), with `bootstrap` (--kafka) winning."""
    section = {k: v for k, v in (config.get("kafka") or {}).items() if k in _KAFKA_KEYS}
    if bootstrap:
        section["bootstrap"] = bootstrap
    return KafkaConfig.from_mapping(section)


def service_settings(config: Mapping, name: str) -> dict:
    """`services.<name>` merged over `services.common`."""
    services = config.get("services") or {}
    return merge_config(services.get("common") or {}, services.get(name) or {})


def topic_partitions(config: Mapping) -> dict[str, int]:
    """{topic: partitions} to create: the built-in defaults under `services.topics`."""
    topics = dict(SERVICE_TOPICS)
    topics.update({str(k): int(v) for k, v in ((config.get("services") or {})
                                                 .get("topics") or {}).items()})
    return topics


def producer_compression(settings: Mapping, client: str = "kafka-python") -> str | None:
    """The producer's compression from a service's `compression` setting: none (or null),
    lz4, gzip, zstd, snappy, or auto = lz4 when the client has the codec (librdkafka always;
    kafka-python with the `lz4` package), else none. Consumers decompress whatever they get."""
    value = settings.get("compression") or "none"
    if value == "auto":
        if client == "confluent":
            return "lz4"
        return "lz4" if importlib.util.find_spec("lz4") is not None else None
    return None if value == "none" else str(value)


def correlation_section(config: Mapping) -> dict:
    return merge_config(default_config(), config.get("correlation") or {})


def single_pass(config: Mapping) -> bool:
    """True when sa.events has one partition: its one reader (Kafka gives a partition to
    one group member) sees every event of every key, so every detector runs in one engine
    on sa.events and sa.events.by_dst is not needed. The repartition topic exists so that
    each of several workers gets *all* events of the destinations it owns; with one
    partition that holds already, and skipping it saves a broker hop, an encode and a
    decode per event (docs/kafka.md, "Keys")."""
    return topic_partitions(config).get(TOPIC_EVENTS) == 1


def check_single_pass(consumer: BatchConsumer, config: Mapping) -> None:
    """Raise TransportError when the config says sa.events has one partition and the
    broker's topic has more (created earlier with another setting): one engine per worker
    would then see only part of each destination's events and miss detections silently."""
    if not single_pass(config):
        return
    real = consumer.partition_count(TOPIC_EVENTS)
    if real is not None and real != 1:
        raise TransportError(f"{TOPIC_EVENTS} has {real} partitions but services.topics says "
                             f"1: set services.topics.{TOPIC_EVENTS} to {real} (or recreate "
                             f"the topic with one partition)")


def needs_destination_keying(config: Mapping) -> bool:
    """True when sa.events.by_dst is needed: an enabled detector declares
    `partition_key = "destination"` and sa.events has more than one partition."""
    if single_pass(config):
        return False
    return bool(split_detectors(build_detectors(correlation_section(config)))[DESTINATION])


# --- structured logging ----------------------------------------------------------------------

class JsonLog:
    """One JSON object per line (stderr by default): {"ts", "service", "event", ...}."""

    def __init__(self, service: str, stream: IO[str] | None = None) -> None:
        self.service = service
        self.stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        doc = {"ts": round(time.time(), 3), "service": self.service, "event": event, **fields}
        line = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        with self._lock:
            self.stream.write(line.decode() + "\n")
            self.stream.flush()


class LoopClock:
    """Where a service loop's time goes: wall seconds and main-thread CPU seconds per phase
    (poll wait, decode, stage, encode + send, flush wait, commit...), logged in the metrics
    lines as `time` next to the process's whole CPU time (the difference is the Kafka
    client's and the producer's own threads). Two clock reads per phase entered, per poll
    or per message: nothing next to a batch of thousands of events."""

    def __init__(self) -> None:
        self.wall: Counter[str] = Counter()
        self.cpu: Counter[str] = Counter()
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.wall[phase] += time.perf_counter() - wall
            self.cpu[phase] += time.thread_time() - cpu

    def snapshot(self) -> dict:
        """{elapsed_s, process_cpu_s, wall_s: {phase: s}, thread_cpu_s: {phase: s}} since
        the clock was made."""
        return {"elapsed_s": round(time.perf_counter() - self._wall0, 4),
                "process_cpu_s": round(time.process_time() - self._cpu0, 4),
                "wall_s": {k: round(v, 4) for k, v in self.wall.items()},
                "thread_cpu_s": {k: round(v, 4) for k, v in self.cpu.items()}}


# --- fusion ----------------------------------------------------------------------------------

class FusionTransform:
    """The fusion stage as a batch transform: a FusionStage bound to a private in-memory bus,
    whatever it publishes on sa.events / sa.deadletter collected per input batch. This keeps
    working whatever the fusion stage adds inside (normalization, dedupe, enrichment)."""

    def __init__(self, config: Mapping | None = None) -> None:
        self.bus = InMemoryBus()
        self.stage = FusionStage(self.bus, config)
        self._events: list[EventBatch] = []
        self._dead: list[dict] = []
        self.bus.subscribe(TOPIC_EVENTS, self._events.append)
        self.bus.subscribe(TOPIC_DEADLETTER, self._dead.append)

    def __call__(self, batch: EventBatch) -> tuple[list[EventBatch], list[dict]]:
        self.bus.publish(TOPIC_SENSOR, batch)
        events, dead = list(self._events), list(self._dead)
        self._events.clear()
        self._dead.clear()
        return events, dead


def deadletter_record(record: Record, reason: str, stage: str = "fusion",
                      **extra: Any) -> dict:
    """The dead-letter document: why, where from, and the original bytes (base64)."""
    return {"@timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stage": stage,
            "reason": reason, "topic": record.topic, "partition": record.partition,
            "offset": record.offset,
            "key_b64": base64.b64encode(record.key).decode() if record.key else None,
            "message_b64": base64.b64encode(record.value).decode(), **extra}


class _Producer(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...


@dataclass
class KeyedOutput:
    """How fusion splits its output: one topic per keying, `partitions` buckets each."""

    topic: str
    keying: str
    partitions: int


class FusionService:
    """Consume sa.sensor -> fusion -> produce sa.events (+ sa.events.by_dst), sa.deadletter.

    `process(records, producer)` is the pure part (tests call it directly); `run(stop)` is
    the loop: poll, process, flush the producer, commit, repeat."""

    def __init__(self, kafka: KafkaConfig, config: Mapping, *, group: str | None = None,
                 by_destination: bool | None = None, log: JsonLog | None = None) -> None:
        self.kafka = kafka
        self.config = config
        self.settings = service_settings(config, "fusion")
        self.group = group or str(self.settings.get("group", "cirtsa-fusion"))
        self.topics = topic_partitions(config)
        wanted = self.settings.get("events_by_destination", "auto")
        if by_destination is None:
            by_destination = (needs_destination_keying(config) if wanted == "auto"
                              else bool(wanted))
        self.outputs = [KeyedOutput(TOPIC_EVENTS, SOURCE, self.topics[TOPIC_EVENTS])]
        if by_destination:
            self.outputs.append(KeyedOutput(TOPIC_EVENTS_BY_DST, DESTINATION,
                                            self.topics[TOPIC_EVENTS_BY_DST]))
        self.max_message_bytes = int(self.settings.get("max_message_bytes", 1_000_000))
        self.log = log or JsonLog("fusion")
        self.transform = FusionTransform(config)
        self.stats: Counter[str] = Counter()
        self.clock = LoopClock()

    def process(self, records: Iterable[Record], producer: _Producer) -> None:
        """Decode, fuse, split by key, encode and send every record's output."""
        clock = self.clock
        for record in records:
            self.stats["messages_in"] += 1
            try:
                with clock("decode"):
                    batch = decode(record.value)
            except WireError as exc:
                self._dead(producer, record, f"wire: {exc}")
                continue
            self.stats["events_in"] += len(batch)
            try:
                with clock("fuse"):
                    events, dead = self.transform(batch)
            except (SchemaError, ValueError) as exc:  # a stage bug must not stop the stream
                self._dead(producer, record, f"fusion: {exc}", kind=batch.kind, rows=len(batch))
                continue
            for doc in dead:
                self._dead(producer, record, str(doc.get("reason", "rejected")),
                           **{k: v for k, v in doc.items() if k not in ("reason", "stage")})
            with clock("encode_send"):
                for out in events:
                    self._send_events(record, out, producer)

    def _send_events(self, record: Record, out: EventBatch, producer: _Producer) -> None:
        self.stats["events_out"] += len(out)
        # Text columns are factorized once per batch, then every partition's rows of
        # every keying are encoded from that (no sub-batch copies, no re-encoding).
        try:
            encoder = BatchEncoder(out)
        except WireError as exc:  # a value the wire cannot carry: a stage bug
            self._dead(producer, record, f"wire encode: {exc}", kind=out.kind, rows=len(out))
            return
        for target in self.outputs:
            keys = aligned_keys(target.partitions)
            for bucket, rows in bucket_rows(out, target.keying, target.partitions):
                for chunk in encoder.encode_chunks(self.max_message_bytes, rows):
                    producer.send(target.topic, keys[bucket], chunk)
                    self.stats[f"messages_out.{target.topic}"] += 1

    def _dead(self, producer: _Producer, record: Record, reason: str, **extra: Any) -> None:
        self.stats["deadletter"] += 1
        self.log("deadletter", reason=reason, partition=record.partition, offset=record.offset)
        producer.send(TOPIC_DEADLETTER, record.key,
                      orjson.dumps(deadletter_record(record, reason, **extra),
                                   option=orjson.OPT_SERIALIZE_NUMPY))

    def run(self, stop: threading.Event, *, ready: threading.Event | None = None) -> int:
        s = self.settings
        spool = s.get("spool_dir") or private_spool_dir("fusion")
        consumer = BatchConsumer(self.kafka, [TOPIC_SENSOR], self.group,
                                 session_timeout_ms=int(s.get("session_timeout_ms", 6000)),
                                 max_poll_records=int(s.get("max_poll_records", 16)),
                                 fetch_max_wait_ms=int(s.get("fetch_max_wait_ms", 500)))
        try:
            check_single_pass(consumer, self.config)
        except TransportError:
            consumer.close()
            raise
        producer = SpoolingProducer(self.kafka, spool, topics=self.topics,
                                    linger_ms=int(s.get("linger_ms", 5)),
                                    compression_type=producer_compression(s, self.kafka.client))
        metrics_every = float(s.get("metrics_interval_s", 30))
        next_metrics = time.monotonic() + metrics_every
        self.log("started", group=self.group, outputs=[o.topic for o in self.outputs])
        if ready is not None:
            ready.set()
        # Pipelining: the outputs of a poll are in flight (librdkafka's threads) while the
        # next polls are decoded and fused; nothing waits for the broker. Each poll's
        # records are committed once every output sent up to the end of that poll was
        # delivered (SpoolingProducer.delivered_through: acknowledged, confirmed, nothing
        # spooled), checked at most every commit_interval_s and whenever the input runs
        # dry. Commits trail deliveries, never lead them. Back-pressure: while the broker
        # is away, or outputs stay unconfirmed for max_unconfirmed_s, the loop stops
        # polling and flushes (waits) as before.
        commit_every = float(s.get("commit_interval_s", 0.5))
        max_unconfirmed_s = float(s.get("max_unconfirmed_s", 5.0))
        inflight: deque[tuple[int, float, list[Record]]] = deque()  # (mark, when, records)
        next_commit = 0.0
        clock = self.clock
        try:
            while not stop.is_set():
                with clock("poll"):
                    records = poll_records(consumer, stop, self.log,
                                           0.05 if inflight else 0.5)
                if records:
                    self.process(records, producer)
                    inflight.append((producer.mark(), time.monotonic(), records))
                now = time.monotonic()
                if inflight and (producer.backlogged
                                 or now - inflight[0][1] >= max_unconfirmed_s):
                    with clock("flush"):
                        _flush_until(producer, stop)  # waits: back-pressure, not loss
                if inflight and (not records or now >= next_commit):
                    next_commit = now + commit_every
                    done: list[Record] = []
                    while inflight and producer.delivered_through(inflight[0][0]):
                        done += inflight.popleft()[2]
                    if done:
                        with clock("commit"):
                            commit_records(consumer, done, self.log)
                    if inflight:
                        producer.confirm_soon()  # what was acknowledged, for the next turn
                if time.monotonic() >= next_metrics:
                    next_metrics = time.monotonic() + metrics_every
                    self.log("metrics", **self.stats, producer=producer.metrics_snapshot(),
                             time=clock.snapshot())
        finally:
            flushed = producer.flush(float(s.get("shutdown_flush_s", 10)))
            if flushed and inflight:  # outputs acknowledged: their input is done
                commit_records(consumer, [r for *_, rs in inflight for r in rs], self.log)
            producer.close(1.0)
            consumer.close()
            if not s.get("spool_dir"):
                remove_private_spool(spool)
            self.log("stopped", flushed=flushed, **self.stats, time=self.clock.snapshot())
        return 0


def _flush_until(producer: SpoolingProducer, stop: threading.Event,
                 step_s: float = 5.0) -> bool:
    """Flush, retrying while the broker is away (the spool holds the outputs); give up only
    when asked to stop. Input is not polled meanwhile: back-pressure, not loss."""
    while not producer.flush(step_s):
        if stop.is_set():
            return False
    return True


def poll_records(consumer: BatchConsumer, stop: threading.Event, log: JsonLog,
                 timeout_s: float) -> list[Record]:
    """One poll; [] after a short wait while the broker is away (the client reconnects)."""
    try:
        return consumer.poll_batch(timeout_s=timeout_s)
    except TransportError as exc:
        log("poll_failed", reason=str(exc)[:300])
        stop.wait(1.0)
        return []


def commit_records(consumer: BatchConsumer, records: Sequence[Record], log: JsonLog) -> None:
    try:
        consumer.commit(records)
    except (CommitFailed, TransportError) as exc:
        # The records come again (to us or to the partition's new owner): at-least-once.
        log("commit_failed", reason=str(exc))


# --- correlation -----------------------------------------------------------------------------

class AlertSink(Protocol):
    """Where alerts go besides sa.alerts; `write` returns once they are acknowledged and
    raises when they are not (ES down): the offsets are then not committed."""

    def write(self, alerts: list[dict]) -> Any: ...


class _Tracked:
    """Per input partition: (offset, newest event time) of the messages whose events the
    engine may still need, in offset order, the next offset expected, and for flow
    control the newest event time pushed and when the partition last gave a record."""

    __slots__ = ("messages", "next_offset", "newest_ns", "last_record_s", "held",
                 "idle_since")

    def __init__(self) -> None:
        self.messages: deque[tuple[int, int]] = deque()
        self.next_offset: int | None = None
        self.newest_ns: int | None = None
        self.last_record_s = 0.0
        # decoded, not pushed yet (flow control): (oldest, newest event time, record, batch)
        self.held: deque[tuple[int, int, Record, EventBatch]] = deque()
        # caught up with nothing held: since when a batch of another partition waits for
        # it (None: none yet since its last record); it stops holding others back after
        # PartitionFlow.idle_wait_s
        self.idle_since: float | None = None

    def release_before(self, horizon_ns: float) -> None:
        while self.messages and self.messages[0][1] < horizon_ns:
            self.messages.popleft()

    def rewound(self, offset: int) -> bool:
        """A record before the expected offset: the consumer was moved back (rebalance)."""
        return self.next_offset is not None and offset < self.next_offset

    def low_water(self) -> int | None:
        """The offset to commit: the oldest message still needed (pushed or held), else
        the next one."""
        if self.messages:
            return self.messages[0][0]
        return self.held[0][2].offset if self.held else self.next_offset


class _FlowConsumer(Protocol):
    def assignment(self) -> set[tuple[str, int]]: ...

    def pause(self, partitions: Iterable[tuple[str, int]]) -> None: ...

    def resume(self, partitions: Iterable[tuple[str, int]]) -> None: ...

    def end_offsets(self, partitions: Iterable[tuple[str, int]], *,
                    query: bool = False) -> dict[tuple[str, int], int | None]: ...


class PartitionFlow:
    """Per-partition event-time flow control of the correlation worker (docs/kafka.md,
    "Event time across partitions"): which partitions still have unread records at the
    broker (`backlog`), and pausing the partitions whose records the worker holds back.

    A partition is in the backlog while its position is before its end offset (unknown
    end: until the broker answered), unless it gave no record for `hold_s` (a fetch that
    fails): it then holds nothing back, so flow control never stalls a worker longer. A
    caught-up partition holds others back for `idle_wait_s` at most, from the first time
    a batch waits for it, until it gives records again (as Kafka Streams'
    max.task.idle.ms): the producer writes the partitions one by one and the fetches of
    each come apart, so "caught up" may only mean "its next records are not fetched
    yet", and a batch far ahead pushed meanwhile makes them late; a quiet sensor still
    stalls nothing for longer. `now` is the time of the last update (or reset).
    CorrelationService.release decides what to push from this.
    """

    def __init__(self, margin_ns: int, hold_s: float, idle_wait_s: float = 0.0) -> None:
        self.margin_ns = margin_ns
        self.hold_s = hold_s
        self.idle_wait_s = idle_wait_s
        self.now = 0.0
        self.query_after_s = min(1.0, hold_s)
        self.paused: set[tuple[str, int]] = set()
        self.backlog: set[tuple[str, int]] = set()
        self.stats: Counter[str] = Counter()
        self._start: dict[tuple[str, int], int] = {}
        self._queried: dict[tuple[str, int], int | None] = {}
        self._resumed: dict[tuple[str, int], float] = {}
        self._since = 0.0

    def reset(self, consumer: _FlowConsumer, positions: Mapping[tuple[str, int], int],
              now: float) -> None:
        """After a rebuild: nothing paused, every partition read from `positions`."""
        # Every assigned partition is resumed, not only those paused now: librdkafka keeps
        # a partition's pause across a rebalance that took it away and gave it back, and
        # `paused` was emptied by the rebuild in between (a partition the client can no
        # longer resume): it was never fetched again (the takeover test's confluent
        # failure after these fixes; tests/test_kafka_pause_resume.py).
        if positions:
            consumer.resume(set(positions))
        self.paused = set()
        self.backlog = set(positions)  # unread until the first update says otherwise
        self._start = dict(positions)
        self._queried = {}
        self._resumed = {}
        self._since = now
        self.now = now

    def update(self, consumer: _FlowConsumer, tracked: Mapping[tuple[str, int], _Tracked],
               now: float) -> None:
        """Refresh the backlog; pause the partitions with held records, resume the others."""
        self.now = now
        assigned = consumer.assignment()
        ends = consumer.end_offsets(assigned)
        unknown = [tp for tp, end in ends.items() if end is None and tp not in self._queried]
        if unknown and now - self._since >= self.query_after_s:
            # librdkafka caches no end offset before a partition's first message (an empty
            # partition has none): ask the broker once, after the first fetches had time
            # to bring it (Tansu answers "latest" one batch short, docs/kafka.md).
            self._queried.update(consumer.end_offsets(unknown, query=True))
        self.backlog = {tp for tp in assigned
                        if self._unread(tp, tracked.get(tp), ends.get(tp), now)}
        held = {tp for tp in assigned if (t := tracked.get(tp)) is not None and t.held}
        if held - self.paused:  # the client would fetch on: it is ahead anyway
            consumer.pause(held - self.paused)
            self.stats["pauses"] += len(held - self.paused)
        if self.paused - held:
            consumer.resume(self.paused - held)
            for tp in self.paused - held:
                self._resumed[tp] = now  # its next fetch is not a stall
        self.paused = held

    def _unread(self, tp: tuple[str, int], t: _Tracked | None, end: int | None,
                now: float) -> bool:
        if end is None:
            end = self._queried.get(tp)
        position = t.next_offset if t is not None and t.next_offset is not None else None
        if position is None:
            position = max(self._start.get(tp, -1), 0)
        if end is not None and position >= end:
            return False  # caught up
        last = max(self._since, self._resumed.get(tp, 0.0),
                   t.last_record_s if t is not None else 0.0)
        return now - last < self.hold_s


def retain_span_ns(engine: CorrelationEngine, suppression_cap_s: float) -> int:
    """How far before the watermark events are still needed: the windows not closed yet
    start after watermark - size, and the suppression memory reaches max(size, suppress_s)
    before that (so a replay re-derives the same suppression decisions), the latter capped
    at `suppression_cap_s` (a 24 h suppression would mean replaying a day on restart)."""
    cap = int(suppression_cap_s * NS_PER_S)
    spans = [d.window.size_ns
             + min(cap, max(d.window.size_ns, int(getattr(d, "suppress_ns", 0))))
             for d in engine.detectors]
    return max(spans, default=0)


class CorrelationService:
    """Consume sa.events (+ sa.events.by_dst) -> CorrelationEngine(s) -> sa.alerts, ES, NDJSON.

    One engine per keying: source-keyed detectors read sa.events, destination-keyed ones
    sa.events.by_dst. On every change of partition assignment (a worker joined, left or
    died) the engines are rebuilt: every assigned partition is rewound to its committed
    offset and replayed, so engine state is always a function of (partitions, commits).
    """

    def __init__(self, kafka: KafkaConfig, config: Mapping, *, group: str | None = None,
                 sinks: Sequence[AlertSink] = (), log: JsonLog | None = None,
                 idle_flush_s: float | None = None,
                 on_alerts: Callable[[list[dict]], None] | None = None) -> None:
        self.kafka = kafka
        self.config = config
        self.settings = service_settings(config, "correlation")
        self.group = group or str(self.settings.get("group", "cirtsa-correlation"))
        self.topics = topic_partitions(config)
        self.correlation = correlation_section(config)
        self.single_pass = single_pass(config)
        self.input_topics = list(self._engine_detectors()) or [TOPIC_EVENTS]
        self.sinks = list(sinks)
        self.on_alerts = on_alerts
        self.log = log or JsonLog("correlation")
        self.idle_flush_s = float(self.settings.get("idle_flush_s", 30)
                                  if idle_flush_s is None else idle_flush_s)
        self.stats: Counter[str] = Counter()
        self.clock = LoopClock()
        self.engines: dict[str, CorrelationEngine] = {}
        self.tracked: dict[tuple[str, int], _Tracked] = {}
        self.unflushed = False  # events pushed since the last idle flush (or rebuild)
        lateness_s = float(self.correlation.get("allowed_lateness_s", 360))
        self.flow = PartitionFlow(
            int(float(self.settings.get("flow_margin_s", lateness_s / 2)) * NS_PER_S),
            float(self.settings.get("flow_hold_s", 15)),
            float(self.settings.get("flow_idle_wait_s", 5)))
        self._new_engines()

    def _engine_detectors(self) -> dict[str, list]:
        """{input topic: the detectors of its engine}: every detector on sa.events when
        sa.events has one partition (`single_pass`), else one engine per keying."""
        detectors = build_detectors(self.correlation)
        if self.single_pass:
            return {TOPIC_EVENTS: detectors} if detectors else {}
        split = split_detectors(detectors)
        return {KEYED_TOPICS[k]: split[k] for k in (SOURCE, DESTINATION) if split[k]}

    def _new_engines(self) -> None:
        self.engines = {topic: CorrelationEngine(self.correlation, detectors)
                        for topic, detectors in self._engine_detectors().items()}
        cap = float(self.settings.get("replay_suppression_max_s", 3600))
        self._retain = {t: retain_span_ns(e, cap) for t, e in self.engines.items()}
        self.tracked = {}
        self.unflushed = False

    # --- the transform ---------------------------------------------------------------------

    def push(self, records: Iterable[Record]) -> list[dict]:
        """Feed records to the engines; the alerts of the windows their events closed.

        The engine has one watermark (newest event time seen - allowed lateness), but a
        poll interleaves partitions in no event-time order, and a poll can hold a whole
        backlog of one partition: a partition that runs ahead would make another's events
        late. So records are decoded into per-partition queues and `release` pushes them
        oldest first, as far as the partitions still being read allow."""
        clock = self.clock
        now = time.monotonic()
        for record in records:
            tp = (record.topic, record.partition)
            tracked = self.tracked.setdefault(tp, _Tracked())
            tracked.next_offset = record.offset + 1
            tracked.last_record_s = now
            tracked.idle_since = None
            if record.topic not in self.engines:
                continue
            self.stats["messages_in"] += 1
            try:
                with clock("decode"):
                    batch = decode(record.value)
            except WireError as exc:  # fusion encoded it: should not happen
                self._bad(record, exc)
                continue
            if len(batch):
                times = batch.columns["timestamp"]
                tracked.held.append((int(times.min()), int(times.max()), record, batch))
        return self.release()

    def release(self, *, idle: bool = False) -> list[dict]:
        """Push held batches, per engine the oldest first (each partition's in offset
        order). A batch waits while its newest event is more than flow.margin_ns past the
        *reference*: the oldest next event of the partitions still being read (a held
        batch's oldest event; for a partition in flow.backlog with nothing held, the
        newest event it gave, or minus infinity before its first record; for a caught-up
        one, its newest event during its idle wait, unless the input is `idle`). The batch
        defining the reference always goes, so the oldest partition always progresses."""
        alerts: list[dict] = []
        for topic in self.engines:
            parts = [t for (name, _), t in self.tracked.items() if name == topic]
            waiting = [tp for tp in self.flow.backlog
                       if tp[0] == topic and tp not in self.tracked]
            backlogged = self._backlogged
            while True:
                reference = -math.inf if waiting else math.inf
                head: _Tracked | None = None
                for t in parts:
                    if t.held:
                        front = t.held[0][0]
                        if head is None or front < head.held[0][0]:
                            head = t
                    elif t in backlogged:
                        front = -math.inf if t.newest_ns is None else t.newest_ns
                    elif not idle and self._idle_waits_for(t):
                        front = t.newest_ns  # caught up: its next records may be in flight
                    else:
                        continue
                    reference = min(reference, front)
                if head is None:
                    break
                oldest, newest, record, batch = head.held[0]
                if oldest > reference and newest > reference + self.flow.margin_ns:
                    self._start_idle_waits(parts, backlogged, newest)
                    break
                head.held.popleft()
                alerts += self._push_batch(head, record, batch, newest)
        self._release()
        return alerts

    def _idle_waits_for(self, t: _Tracked) -> bool:
        """A caught-up partition with nothing held still holds others back: until
        flow.idle_wait_s after a batch first waited for it (PartitionFlow)."""
        return (self.flow.idle_wait_s > 0 and t.newest_ns is not None and not t.held
                and (t.idle_since is None or self.flow.now - t.idle_since
                     < self.flow.idle_wait_s))

    def _start_idle_waits(self, parts: list[_Tracked], backlogged: set[_Tracked],
                          newest: int) -> None:
        """A batch ending at `newest` waits: start the idle wait of every caught-up
        partition it waits for."""
        for t in parts:
            if (t.idle_since is None and t not in backlogged and self._idle_waits_for(t)
                    and newest > t.newest_ns + self.flow.margin_ns):
                t.idle_since = self.flow.now
                self.flow.stats["idle_waits"] += 1

    @property
    def _backlogged(self) -> set[_Tracked]:
        return {t for tp in self.flow.backlog if (t := self.tracked.get(tp)) is not None}

    def _push_batch(self, tracked: _Tracked, record: Record, batch: EventBatch,
                    newest: int) -> list[dict]:
        try:
            with self.clock("engines"):
                alerts = self.engines[record.topic].push(batch)
        except SchemaError as exc:
            self._bad(record, exc)
            return []
        self.stats["events_in"] += len(batch)
        self.unflushed = True
        tracked.messages.append((record.offset, newest))
        if tracked.newest_ns is None or newest > tracked.newest_ns:
            tracked.newest_ns = newest
        return alerts

    def _bad(self, record: Record, exc: Exception) -> None:
        self.stats["bad_messages"] += 1
        self.log("bad_message", reason=str(exc), topic=record.topic,
                 partition=record.partition, offset=record.offset)

    def flush_engines(self) -> list[dict]:
        """Idle input: the alerts of every window holding events, judged on what came so
        far. The windows stay open (CorrelationEngine.evaluate_open): input that pauses
        and resumes (a sensor reconnecting, a rebalance, a loaded machine) still joins
        them, and their messages stay uncommitted until the watermark closes them, so a
        rebuild (takeover) replays them whole. Alerts already emitted are not repeated."""
        alerts = self.release(idle=True)  # (nothing is held back without a backlog)
        for engine in self.engines.values():
            alerts += engine.evaluate_open()
        self.unflushed = False
        self.stats["idle_flushes"] += 1
        self.log("idle_flush", alerts=len(alerts),
                 positions={f"{t}:{p}": x.next_offset for (t, p), x in self.tracked.items()},
                 newest_s={f"{t}:{p}": round(x.newest_ns / NS_PER_S, 3)
                           for (t, p), x in self.tracked.items() if x.newest_ns is not None})
        return alerts

    def _release(self) -> None:
        for (topic, _), tracked in self.tracked.items():
            engine = self.engines.get(topic)
            watermark = engine.watermark if engine is not None else None
            if engine is None:
                tracked.messages.clear()
            elif watermark is not None:
                tracked.release_before(watermark - self._retain[topic])

    def commit_positions(self) -> dict[tuple[str, int], int]:
        """{(topic, partition): offset to commit} = low-water mark of what is still needed."""
        return {tp: low for tp, t in self.tracked.items()
                if (low := t.low_water()) is not None}

    @property
    def buffered_messages(self) -> int:
        return sum(len(t.messages) + len(t.held) for t in self.tracked.values())

    # --- the loop ---------------------------------------------------------------------------

    def _deliver(self, alerts: list[dict], producer: SpoolingProducer,
                 stop: threading.Event) -> bool:
        """Send alerts to sa.alerts and the sinks; True once all acknowledged."""
        for alert in alerts:
            producer.send(TOPIC_ALERTS, str(alert["event"]["id"]).encode(),
                          orjson.dumps(alert, option=orjson.OPT_SERIALIZE_NUMPY))
        if not _flush_until(producer, stop):
            return False
        for sink in self.sinks:
            try:
                sink.write(alerts)
            except Exception as exc:  # ES down beyond the sink's own retries
                self.log("sink_failed", sink=type(sink).__name__, reason=str(exc)[:300])
                return False
        if self.on_alerts is not None:
            self.on_alerts(alerts)
        # a revision (same id, more evidence: correlation/alerts.py) replaces an alert
        # delivered before: not a second alert; a withdrawal takes one back
        count_versions(alerts, self.stats)
        return True

    def _commit(self, consumer: BatchConsumer) -> None:
        positions = {tp: offset for tp, offset in self.commit_positions().items() if offset > 0}
        try:
            consumer.commit_offsets(positions)
        except (CommitFailed, TransportError) as exc:
            # The records come again (to us or to the partition's new owner): at-least-once.
            self.log("commit_failed", reason=str(exc))

    def _flow(self, consumer: BatchConsumer) -> None:
        """Pause/resume partitions by event time; logs the changes (backlogs only: in a
        steady stream every partition is near the others)."""
        before = set(self.flow.paused)
        try:
            with self.clock("flow"):
                self.flow.update(consumer, self.tracked, time.monotonic())
        except TransportError as exc:  # retried at the next poll
            self.log("flow_failed", reason=str(exc)[:300])
            return
        if self.flow.paused != before:
            self.log("flow", paused=sorted(f"{t}:{p}" for t, p in self.flow.paused - before),
                     resumed=sorted(f"{t}:{p}" for t, p in before - self.flow.paused),
                     newest_s={f"{t}:{p}": round(x.newest_ns / NS_PER_S, 3)
                               for (t, p), x in self.tracked.items()
                               if x.newest_ns is not None})

    def _rewind(self, consumer: BatchConsumer) -> None:
        # (the engines' own counters restart with them: what the old ones dropped is
        # logged here, or a loss before a rebuild would not show in the metrics)
        late_dropped = {t: e.stats["late_dropped"] for t, e in self.engines.items()}
        self._new_engines()
        positions = consumer.rewind_to_committed()
        self.flow.reset(consumer, positions, time.monotonic())
        self.stats["rebuilds"] += 1
        self.log("rebuild", assignment=sorted(f"{t}:{p}" for t, p in positions),
                 positions={f"{t}:{p}": o for (t, p), o in positions.items()},
                 late_dropped_before=late_dropped)

    def run(self, stop: threading.Event, *, ready: threading.Event | None = None) -> int:
        s = self.settings
        spool = s.get("spool_dir") or private_spool_dir("correlation")
        consumer = BatchConsumer(
            self.kafka, self.input_topics, self.group,
            session_timeout_ms=int(s.get("session_timeout_ms", 6000)),
            max_poll_records=int(s.get("max_poll_records", 64)),
            max_partition_fetch_bytes=int(s.get("max_partition_fetch_bytes", 4 << 20)),
            fetch_max_wait_ms=int(s.get("fetch_max_wait_ms", 500)),
            poll_linger_s=float(s.get("poll_linger_ms", 50)) / 1000)
        try:
            check_single_pass(consumer, self.config)
        except TransportError:
            consumer.close()
            raise
        producer = SpoolingProducer(self.kafka, spool, topics=self.topics,
                                    linger_ms=int(s.get("linger_ms", 5)),
                                    compression_type=producer_compression(s, self.kafka.client))
        metrics_every = float(s.get("metrics_interval_s", 30))
        commit_every = float(s.get("commit_interval_s", 1.0))
        next_metrics = time.monotonic() + metrics_every
        next_commit = 0.0
        last_input = time.monotonic()
        assigned: set[tuple[str, int]] = set()
        pending: list[dict] = []  # alerts not yet acknowledged by every output
        clock = self.clock
        self.log("started", group=self.group, inputs=self.input_topics,
                 idle_flush_s=self.idle_flush_s)
        if ready is not None:
            ready.set()
        try:
            while not stop.is_set():
                with clock("poll"):
                    records = poll_records(consumer, stop, self.log, 0.2)
                now_assigned = consumer.assignment()
                rewound = any(t.rewound(r.offset) for r in records
                              if (t := self.tracked.get((r.topic, r.partition))) is not None)
                if now_assigned != assigned or rewound:
                    try:
                        with clock("rewind"):
                            self._rewind(consumer)  # this poll's records come again from the commit
                    except TransportError as exc:  # broker away: rebuild at the next poll
                        self.log("rewind_failed", reason=str(exc)[:300])
                        assigned = set()
                        stop.wait(1.0)
                        continue
                    assigned = now_assigned
                    self._flow(consumer)  # the backlog before the first poll of the replay
                    continue
                if records:
                    last_input = time.monotonic()
                    pending += self.push(records)
                elif (self.idle_flush_s > 0 and self.unflushed and not self.flow.backlog
                      and time.monotonic() - last_input >= self.idle_flush_s):
                    # (a partition with unread records, paused or slow to fetch under load,
                    # means the input is not idle; once per pause: the windows stay open)
                    pending += self.flush_engines()
                self._flow(consumer)
                if self.flow.paused or self.flow.backlog:
                    pending += self.release()  # what the new backlog lets through
                now = time.monotonic()
                if pending or (now >= next_commit and self.tracked):
                    with clock("deliver"):
                        delivered = self._deliver(pending, producer, stop)
                    if delivered:
                        pending = []
                        with clock("commit"):
                            self._commit(consumer)
                        next_commit = now + commit_every
                if now >= next_metrics:
                    next_metrics = now + metrics_every
                    self.log("metrics", **self.stats, buffered_messages=self.buffered_messages,
                             paused=sorted(f"{t}:{p}" for t, p in self.flow.paused),
                             backlog=sorted(f"{t}:{p}" for t, p in self.flow.backlog),
                             positions={f"{t}:{p}": x.next_offset
                                        for (t, p), x in self.tracked.items()},
                             flow=dict(self.flow.stats),
                             watermark={t: e.watermark for t, e in self.engines.items()},
                             engine={t: e.stats for t, e in self.engines.items()},
                             time=clock.snapshot())
        finally:
            # Open windows are NOT flushed: they would be emitted from part of their events.
            # Their messages stay uncommitted and the next owner rebuilds them.
            if pending and self._deliver(pending, producer, threading.Event()):
                pending = []
            if not pending:
                self._commit(consumer)
            producer.close(float(s.get("shutdown_flush_s", 10)))
            consumer.close()
            if not s.get("spool_dir"):
                remove_private_spool(spool)
            self.log("stopped", **self.stats, buffered_messages=self.buffered_messages,
                     time=self.clock.snapshot())
        return 0


# --- producing sensor batches (tests, bench; `cirt-sa sensor run --kafka` is the real one) --

def sensor_messages(paths: Sequence[str | os.PathLike], config: Mapping,
                    max_bytes: int = 1_000_000) -> Iterable[bytes]:
    """Wire-encoded sensor batches of the captures, in the embedded pipeline's order."""
    from pipeline.embedded import order_captures
    from sensors.sensor import CaptureResult, capture_events

    for path in order_captures([os.fspath(p) for p in paths]):
        for _consumed, batches in capture_events(path, config["sensor"], CaptureResult(path)):
            for batch in batches:
                if len(batch):
                    yield from encode_chunks(batch, max_bytes)


def publish_captures(paths: Sequence[str | os.PathLike], config: Mapping,
                     producer: _Producer, sensor_id: str | None = None) -> int:
    """Send the captures' sensor batches to sa.sensor (key = sensor id); returns messages."""
    key = str(sensor_id or config["sensor"].get("id", "sensor-1")).encode()
    sent = 0
    for message in sensor_messages(paths, config):
        producer.send(TOPIC_SENSOR, key, message)
        sent += 1
    return sent

