"""The Kafka transport: the only module that imports the Kafka client libraries.

Everything else uses `KafkaConfig`, `ensure_topics`, `SpoolingProducer` and `BatchConsumer`.
Two clients sit behind them, chosen by `KafkaConfig.client` (config `kafka.client`):
"confluent" (confluent-kafka = librdkafka, C: record batches, CRC and buffers outside
Python; the default, measured faster: docs/kafka.md) and "kafka-python" (pure Python).
The clients are adapted in `_confluent_conf`, `_ConfluentFuture`/`_ConfluentProducer` and
`BatchConsumer`; the delivery logic above them is shared.

Delivery (DESIGN.md §3, at-least-once):
- `SpoolingProducer` never loses a message to a broker outage: a message whose delivery
  fails (connection refused, timeouts, and the Tansu broker's `UnknownError` after a
  restart, which kafka-python does not retry) goes to an on-disk spool, and every later
  message queues behind it until the spool has drained, oldest first. An acknowledgement
  counts only once a later metadata check finds the topic unchanged: a restarted memory
  broker acknowledges produces to topics it lost (docs/kafka.md, "Broker restart").
- `BatchConsumer` never commits on its own: the caller commits the records whose output has
  been acknowledged downstream, so a crash replays everything after the last commit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import confluent_kafka
from confluent_kafka.admin import AdminClient as ConfluentAdmin
from confluent_kafka.admin import NewTopic as ConfluentNewTopic
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from pipeline.bus import TOPIC_ALERTS, TOPIC_DEADLETTER, TOPIC_EVENTS, TOPIC_SENSOR
from pipeline.spool import Spool

log = logging.getLogger(__name__)

TOPIC_SENSOR_HEALTH = "sa.sensor.health"

# Partitions per topic when the pipeline creates them. sa.sensor and sa.events are keyed
# (sensor id / correlation key) and read by consumer groups; the rest are low volume.
DEFAULT_TOPICS: dict[str, int] = {
    TOPIC_SENSOR: 4,
    TOPIC_EVENTS: 4,
    TOPIC_ALERTS: 1,
    TOPIC_DEADLETTER: 1,
    TOPIC_SENSOR_HEALTH: 1,
}

CLIENTS = ("confluent", "kafka-python")
DEFAULT_CLIENT = "confluent"  # measured faster end to end (docs/kafka.md, "Clients")

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DEFAULT_PASSWORD_ENV = "CIRTSA_KAFKA_PASSWORD"

# Errors that no retry can fix for this message (re-spooling it would block the spool head
# forever): it is counted as rejected and logged instead.
_PERMANENT_ERRORS = (kafka_errors.MessageSizeTooLargeError,
                     kafka_errors.RecordListTooLargeError, kafka_errors.InvalidTopicError,
                     kafka_errors.InvalidRecordError)
_PERMANENT_CODES = frozenset({
    confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE, confluent_kafka.KafkaError.INVALID_MSG_SIZE,
    confluent_kafka.KafkaError.RECORD_LIST_TOO_LARGE, confluent_kafka.KafkaError.INVALID_RECORD,
    confluent_kafka.KafkaError.INVALID_MSG})


class TransportError(RuntimeError):
    """The broker could not be reached or refused an operation; the text says which."""


class DeliveryError(TransportError):
    """A produce failed in the confluent client; `permanent` when no retry can help."""

    def __init__(self, error: confluent_kafka.KafkaError) -> None:
        super().__init__(f"{error.name()}: {error.str()}")
        self.permanent = error.code() in _PERMANENT_CODES


def _is_permanent(exc: BaseException) -> bool:
    return isinstance(exc, _PERMANENT_ERRORS) or getattr(exc, "permanent", False)


class CommitFailed(TransportError):
    """Offsets were not committed (e.g. the group rebalanced); the records will be
    delivered again to whoever owns their partitions now."""


# --- configuration --------------------------------------------------------------------------

class Secret:
    """A string that never shows in repr/str/logs; `.reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _read_secret_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise TransportError(f"cannot read Kafka password file {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class KafkaConfig:
    """Where the brokers are and how to authenticate. The SASL password is a `Secret`:
    it comes from an environment variable or a file, never from the config file itself."""

    bootstrap: str = "127.0.0.1:9092"
    client_id: str = "cirt-sa"
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = field(default=None, repr=False)
    client: str = DEFAULT_CLIENT  # "confluent" | "kafka-python"

    def __post_init__(self) -> None:
        if self.client not in CLIENTS:
            raise TransportError(f"kafka client must be one of {CLIENTS}, not {self.client!r}")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise TransportError(f"security_protocol must be one of {SECURITY_PROTOCOLS}, "
                                 f"not {self.security_protocol!r}")
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise TransportError(f"sasl_mechanism must be one of {SASL_MECHANISMS}")
            if not self.sasl_username or self.sasl_password is None:
                raise TransportError("SASL needs sasl_username and a password (from "
                                     "sasl_password_env or sasl_password_file)")

    def __repr__(self) -> str:
        password = "'***'" if self.sasl_password is not None else "None"
        return (f"KafkaConfig(bootstrap={self.bootstrap!r}, client_id={self.client_id!r}, "
                f"security_protocol={self.security_protocol!r}, ssl_cafile={self.ssl_cafile!r}, "
                f"ssl_certfile={self.ssl_certfile!r}, ssl_keyfile={self.ssl_keyfile!r}, "
                f"sasl_mechanism={self.sasl_mechanism!r}, sasl_username={self.sasl_username!r}, "
                f"sasl_password={password}, client={self.client!r})")

    @classmethod
    def from_mapping(cls, settings: Mapping, env: Mapping[str, str] | None = None) -> KafkaConfig:
        """From a config section such as
        {bootstrap, client_id, security_protocol, ssl_cafile, ssl_certfile, ssl_keyfile,
         sasl_mechanism, sasl_username, sasl_password_env | sasl_password_file, client}.
        A literal `sasl_password` is refused: secrets do not belong in config files."""
        env = os.environ if env is None else env
        if "sasl_password" in settings:
            raise TransportError("put the Kafka password in an environment variable "
                                 "(sasl_password_env) or a file (sasl_password_file), "
                                 "not in the config")
        password: str | None = None
        if settings.get("sasl_password_file"):
            password = _read_secret_file(str(settings["sasl_password_file"]))
        else:
            password = env.get(str(settings.get("sasl_password_env") or DEFAULT_PASSWORD_ENV))
        known = {"bootstrap", "client_id", "security_protocol", "ssl_cafile", "ssl_certfile",
                 "ssl_keyfile", "sasl_mechanism", "sasl_username", "client"}
        unknown = set(settings) - known - {"sasl_password_env", "sasl_password_file"}
        if unknown:
            raise TransportError(f"unknown kafka settings: {sorted(unknown)}")
        values = {k: settings[k] for k in known if settings.get(k) is not None}
        return cls(**values, sasl_password=Secret(password) if password is not None else None)

    def client_kwargs(self) -> dict:
        """Keyword arguments for the kafka-python clients (contains the secret: never log)."""
        kwargs: dict = {"bootstrap_servers": self.bootstrap.split(","),
                        "client_id": self.client_id,
                        "security_protocol": self.security_protocol}
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, name):
                kwargs[name] = getattr(self, name)
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password.reveal()
        return kwargs

    def librdkafka_conf(self) -> dict:
        """The same settings under librdkafka's names (contains the secret: never log)."""
        conf: dict = {"bootstrap.servers": self.bootstrap, "client.id": self.client_id,
                      "security.protocol": self.security_protocol.lower()}
        for ours, theirs in (("ssl_cafile", "ssl.ca.location"),
                             ("ssl_certfile", "ssl.certificate.location"),
                             ("ssl_keyfile", "ssl.key.location")):
            if getattr(self, ours):
                conf[theirs] = getattr(self, ours)
        if self.security_protocol.startswith("SASL"):
            conf["sasl.mechanisms"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password.reveal()
        return conf


class _LibrdkafkaLog:
    """librdkafka's log lines into `pipeline.kafka_transport.librdkafka` (it prints to
    stderr otherwise), one level down: it logs every failed reconnect as an error while
    an outage is expected and handled (the spool logs it once, as a warning)."""

    _logger = logging.getLogger(__name__ + ".librdkafka")

    def log(self, level: int, msg: str, *args: object) -> None:
        self._logger.log(max(logging.DEBUG, level - 10), msg, *args)


def _confluent_conf(config: KafkaConfig, **extra: object) -> dict:
    """librdkafka settings for one client: the connection, our logger, and no log line
    for the idle connections Tansu closes."""
    return {**config.librdkafka_conf(), "logger": _LibrdkafkaLog(),
            "log.connection.close": False, **extra}


# --- topics ---------------------------------------------------------------------------------

def ensure_topics(config: KafkaConfig, topics: Mapping[str, int] | None = None,
                  timeout_s: float = 10.0) -> list[str]:
    """Create the topics that do not exist yet ({name: partitions}, replication 1 unless the
    cluster decides otherwise); returns the names created. Existing topics are left as they
    are (their partition count is not changed)."""
    topics = DEFAULT_TOPICS if topics is None else topics
    if config.client == "confluent":
        created = _ensure_topics_confluent(config, topics, timeout_s)
        if created:
            log.info("created Kafka topics %s on %s", created, config.bootstrap)
        return created
    try:
        admin = KafkaAdminClient(**config.client_kwargs(),
                                 request_timeout_ms=int(timeout_s * 1000),
                                 bootstrap_timeout_ms=int(timeout_s * 1000))
    except kafka_errors.KafkaError as exc:
        raise TransportError(f"cannot reach Kafka at {config.bootstrap}: {exc}") from None
    created = []
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, int(n), 1) for name, n in topics.items() if name not in existing]
        for new in missing:
            try:
                admin.create_topics([new], timeout_ms=int(timeout_s * 1000))
                created.append(new.name)
            except kafka_errors.TopicAlreadyExistsError:
                pass  # created meanwhile by someone else
    except kafka_errors.KafkaError as exc:
        raise TransportError(f"cannot create topics on {config.bootstrap}: {exc}") from None
    finally:
        admin.close()
    if created:
        log.info("created Kafka topics %s on %s", created, config.bootstrap)
    return created


def _ensure_topics_confluent(config: KafkaConfig, topics: Mapping[str, int],
                             timeout_s: float) -> list[str]:
    admin = ConfluentAdmin(_confluent_conf(config, **{"socket.timeout.ms": int(timeout_s * 1000)}))
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except confluent_kafka.KafkaException as exc:
        raise TransportError(f"cannot reach Kafka at {config.bootstrap}: "
                             f"{_reason(exc)}") from None
    missing = [ConfluentNewTopic(name, int(n), 1) for name, n in topics.items()
               if name not in existing]
    if not missing:
        return []
    created = []
    futures = admin.create_topics(missing, operation_timeout=timeout_s,
                                  request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s + 1)
            created.append(name)
        except confluent_kafka.KafkaException as exc:
            if exc.args and getattr(exc.args[0], "code", lambda: None)() == \
                    confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # created meanwhile by someone else
            raise TransportError(f"cannot create topics on {config.bootstrap}: "
                                 f"{_reason(exc)}") from None
    return created


def _describe_confluent(admin: ConfluentAdmin, names: list[str],
                        timeout_s: float) -> dict[str, object]:
    """{topic: topic id or None}; raises KafkaException when the broker cannot be asked."""
    ids: dict[str, object] = dict.fromkeys(names)
    futures = admin.describe_topics(confluent_kafka.TopicCollection(names),
                                    request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            described = future.result(timeout=timeout_s + 1)
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if getattr(error, "code", lambda: None)() in (
                    confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
                    confluent_kafka.KafkaError.UNKNOWN_TOPIC_ID):
                continue  # the broker does not know it: None
            raise
        if described.partitions:
            ids[name] = str(described.topic_id) if described.topic_id else "no-topic-id"
    return ids


class _ConfluentFuture:
    """kafka-python's future interface (add_callback / add_errback) over a librdkafka
    delivery report, so SpoolingProducer's delivery logic serves both clients. The report
    may come (in whichever thread polls) before the callbacks are attached."""

    __slots__ = ("_lock", "_done", "_error", "_callbacks", "_errbacks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False
        self._error: BaseException | None = None
        self._callbacks: list = []
        self._errbacks: list = []

    def report(self, error: confluent_kafka.KafkaError | None, _message: object) -> None:
        with self._lock:
            self._done = True
            self._error = None if error is None else DeliveryError(error)
            callbacks = self._errbacks if error is not None else self._callbacks
            self._callbacks, self._errbacks = [], []
        for fn, args in callbacks:
            fn(*args, self._error if error is not None else None)

    def _attach(self, fn, args: tuple, on_error: bool) -> None:
        with self._lock:  # decide under the lock: the report may arrive concurrently
            if not self._done:
                (self._errbacks if on_error else self._callbacks).append((fn, args))
                return
            fire = (self._error is not None) == on_error
        if fire:
            fn(*args, self._error)

    def add_callback(self, fn, *args) -> _ConfluentFuture:
        self._attach(fn, args, on_error=False)
        return self

    def add_errback(self, fn, *args) -> _ConfluentFuture:
        self._attach(fn, args, on_error=True)
        return self


class _ConfluentProducer:
    """librdkafka's producer behind kafka-python's send/flush/close. Delivery reports are
    served by a polling thread (as kafka-python's I/O thread does): a failure must reach
    the spool while the caller is not sending, e.g. during an outage."""

    def __init__(self, conf: dict) -> None:
        self._producer = confluent_kafka.Producer(conf)
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._serve_reports, name="kafka-reports",
                                        daemon=True)
        self._poller.start()

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)  # returns as soon as a report is served

    def send(self, topic: str, key: bytes | None = None,
             value: bytes | None = None) -> _ConfluentFuture:
        future = _ConfluentFuture()
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=future.report)
                break
            except BufferError:  # local queue full: serve reports, then retry
                self._producer.poll(0.05)
            except confluent_kafka.KafkaException as exc:
                raise DeliveryError(exc.args[0]) from None
        return future

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(-1 if timeout is None else timeout)

    def close(self, timeout: float | None = None) -> None:
        self._producer.flush(10 if timeout is None else timeout)
        self._closed.set()
        self._poller.join()


# --- producer -------------------------------------------------------------------------------

@dataclass
class ProducerMetrics:
    sent: int = 0  # send() calls
    acked: int = 0  # messages delivered: acknowledged, then confirmed (see SpoolingProducer)
    spooled: int = 0  # messages put into the spool (failed delivery, or queued behind it)
    redelivered: int = 0  # spooled messages later delivered (acknowledged and confirmed)
    resent: int = 0  # acknowledged messages sent again: the broker lost their topic (restart)
    failed: int = 0  # delivery attempts that failed (a message can fail several times)
    rejected: int = 0  # messages no retry can deliver (e.g. too large): logged and lost
    dropped_oldest: int = 0  # spooled messages dropped because the spool was full


@dataclass
class _Pending:
    """A message handed to the client and not yet confirmed: `value` is kept for direct
    sends (to re-spool them), spooled ones stay in the spool under `spool_seq`."""

    topic: str
    key: bytes | None
    value: bytes | None
    spool_seq: int | None
    acked: bool = False


class SpoolingProducer:
    """Sends (topic, key, value) messages; spools what cannot be delivered and re-sends it,
    oldest first, once the broker answers again.

    `send()` never waits for the broker during an outage: the message goes to the spool (a
    disk append) and a background thread retries the spool every `retry_interval_s`, up to
    `drain_window` messages in flight. `topics`, when given, are (re)created before draining
    after an outage (a broker with memory storage forgets its topics on restart). A spool
    left on disk by an earlier run is drained first.

    A broker acknowledgement alone is not trusted: a message counts as delivered once it is
    acknowledged *and* a later metadata check finds its topic with the same identity
    (topic id) as before it was sent. A broker that restarted and lost its topics (the
    Tansu memory broker; a topic deleted and recreated on a real cluster) acknowledges
    produces to a topic it does not know and nobody can read them (docs/kafka.md, "Broker
    restart"); the check sees the topic missing or with a new id, and every unconfirmed
    message is sent again after the topics were recreated. The check runs in `flush()` and
    every `retry_interval_s` in the background: one metadata request, not one per message.
    """

    def __init__(self, config: KafkaConfig, spool: Spool | str | os.PathLike, *,
                 topics: Mapping[str, int] | None = None, acks: str | int = "all",
                 linger_ms: int = 5, max_request_size: int = 16 << 20,
                 delivery_timeout_ms: int = 30_000, request_timeout_ms: int = 10_000,
                 max_block_ms: int = 5_000, max_in_flight: int = 1,
                 retry_interval_s: float = 1.0, drain_window: int = 32,
                 compression_type: str | None = None, batch_size: int = 16384) -> None:
        self.config = config
        self.spool = spool if isinstance(spool, Spool) else Spool(spool)
        self.topics = dict(topics) if topics else None
        self.retry_interval_s = retry_interval_s
        self._connect_timeout_s = max_block_ms / 1000
        self.drain_window = drain_window
        self.metrics = ProducerMetrics()
        # Idempotence off: after a Tansu restart the idempotent producer's InitProducerId
        # keeps failing with UnknownError (measured); at-least-once delivery plus stable
        # alert ids make duplicates harmless. max_in_flight=1 keeps order within a
        # partition across kafka-python's internal retries. batch_size: kafka-python puts
        # a record larger than batch_size in a batch of its own; event batches are large
        # messages, so a big batch_size lets several share one produce request.
        self._producer_kwargs = dict(
            **config.client_kwargs(), acks=acks, linger_ms=linger_ms,
            max_request_size=max_request_size, delivery_timeout_ms=delivery_timeout_ms,
            request_timeout_ms=request_timeout_ms, max_block_ms=max_block_ms,
            max_in_flight_requests_per_connection=max_in_flight, enable_idempotence=False,
            bootstrap_timeout_ms=max_block_ms,  # first connection: no 30 s stall in send()
            retries=3, retry_backoff_ms=200, reconnect_backoff_max_ms=1000,
            compression_type=compression_type, batch_size=batch_size)
        # librdkafka: the same guarantees under its names. Its default partitioner is CRC32
        # ("consistent_random"); murmur2_random is the Java/kafka-python one that
        # pipeline/keys.py aligns keys to. retries bounded like kafka-python's so a failure
        # reaches the spool instead of waiting in librdkafka's queue.
        self._confluent_conf = _confluent_conf(config, **{
            "acks": str(acks), "linger.ms": linger_ms, "message.max.bytes": max_request_size,
            "message.timeout.ms": delivery_timeout_ms,
            "request.timeout.ms": request_timeout_ms,
            "max.in.flight.requests.per.connection": max_in_flight,
            "enable.idempotence": False, "partitioner": "murmur2_random",
            "retries": 3, "retry.backoff.ms": 200, "reconnect.backoff.max.ms": 1000,
            "compression.type": compression_type or "none",
            "batch.size": max(batch_size, 1), "socket.timeout.ms": max(request_timeout_ms, 10)})
        self._producer: KafkaProducer | _ConfluentProducer | None = None
        self._admin: KafkaAdminClient | ConfluentAdmin | None = None
        self._client_lock = threading.Lock()
        self._admin_lock = threading.Lock()
        self._lock = threading.Lock()  # metrics and outage state (callbacks: I/O thread)
        self._in_flight: set[int] = set()  # spool seqs sent and not yet confirmed
        self._pending: dict[int, _Pending] = {}  # sent, not confirmed, by send number
        self._send_number = 0
        # messages taken out of _pending on a failure and not yet in the spool: neither
        # place holds them for that moment, so nothing may count as delivered meanwhile
        self._moving = 0
        # {topic: topic id} as last confirmed; None = unknown (start, or after a restart
        # was detected: re-learnt once the topics were recreated)
        self._topic_ids: dict[str, object] | None = None
        self._epoch = 0  # restarts detected so far: a check started before one is void
        self._retry_at = 0.0  # monotonic time of the next drain attempt
        self._outage = len(self.spool) > 0  # a spool left from the last run: drain first
        self._need_topics = self.topics is not None
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._drainer = threading.Thread(target=self._drain_loop, name="spool-drain",
                                         daemon=True)
        self._drainer.start()

    # --- internals --------------------------------------------------------------------------

    def _client(self) -> KafkaProducer | _ConfluentProducer:
        with self._client_lock:  # the caller's and the drain thread's first use may race
            if self._producer is None:
                if self.config.client == "confluent":
                    self._producer = _ConfluentProducer(self._confluent_conf)
                else:
                    self._producer = KafkaProducer(**self._producer_kwargs)
            return self._producer

    def _describe_topic_ids(self, topics: Iterable[str]) -> dict[str, object]:
        """{topic: topic id} now, None for a topic the broker does not know. Raises
        TransportError when the broker cannot be asked."""
        names = sorted(set(topics))
        if not names:
            return {}
        if self.config.client == "confluent":
            return self._describe_topic_ids_confluent(names)
        with self._admin_lock:
            try:
                if self._admin is None:
                    timeout_ms = int(self._connect_timeout_s * 1000)
                    self._admin = KafkaAdminClient(**self.config.client_kwargs(),
                                                   request_timeout_ms=timeout_ms,
                                                   bootstrap_timeout_ms=timeout_ms)
                described = self._admin.describe_topics(names)
            except kafka_errors.KafkaError as exc:
                if self._admin is not None:
                    try:
                        self._admin.close()
                    except Exception:  # already broken; a new one is made next time
                        pass
                    self._admin = None
                raise TransportError(f"metadata check on {self.config.bootstrap} failed: "
                                     f"{_reason(exc)}") from None
        ids: dict[str, object] = dict.fromkeys(names)
        for topic in described:
            if topic.get("error_code", 0) == 0 and topic.get("partitions"):
                # Brokers without topic ids (Kafka < 2.8) give None: identity is then
                # unchecked, which is what those versions can offer.
                ids[topic["name"]] = topic.get("topic_id") or "no-topic-id"
        return ids

    def _describe_topic_ids_confluent(self, names: list[str]) -> dict[str, object]:
        with self._admin_lock:
            if self._admin is None:
                self._admin = ConfluentAdmin(_confluent_conf(self.config))
            try:
                return _describe_confluent(self._admin, names, self._connect_timeout_s)
            except (confluent_kafka.KafkaException, TimeoutError) as exc:
                raise TransportError(f"metadata check on {self.config.bootstrap} failed: "
                                     f"{_reason(exc)}") from None

    def _check(self, wanted: Iterable[str] = ()) -> bool:
        """Confirm the acknowledged messages whose topics kept their identity; learn the
        identity of `wanted` topics. False (and every unconfirmed message re-spooled) when a
        topic vanished or changed identity: the broker lost what it acknowledged."""
        with self._lock:
            epoch = self._epoch
            candidates = [n for n, p in self._pending.items() if p.acked]
            reference = dict(self._topic_ids) if self._topic_ids is not None else None
            topics = {p.topic for p in self._pending.values()} | set(wanted)
            if reference is not None:
                topics |= set(reference)
        if not candidates and reference is not None and set(wanted) <= set(reference):
            return True
        try:
            ids = self._describe_topic_ids(topics)
        except TransportError as exc:
            self._mark_outage(exc)
            return False
        if reference is not None:
            changed = sorted(t for t in reference if ids.get(t) != reference[t])
            if changed:
                self._lost_by_broker(changed)
                return False
        with self._lock:
            if epoch != self._epoch:  # a concurrent check found a restart meanwhile
                return False
            self._topic_ids = {**(reference or {}), **ids}
            for number in candidates:
                pending = self._pending.pop(number, None)
                if pending is None:
                    continue
                self.metrics.acked += 1
                if pending.spool_seq is not None:
                    self.spool.ack(pending.spool_seq)
                    self._in_flight.discard(pending.spool_seq)
                    self.metrics.redelivered += 1
        if candidates:
            self._wake.set()  # room in the drain window
        return True

    def _lost_by_broker(self, topics: list[str]) -> None:
        """The broker forgot `topics` (restart with memory storage, or deleted and
        recreated): send everything not yet confirmed again, after recreating them."""
        with self._lock:
            pending = sorted(self._pending.items())
            self._pending.clear()
            self._moving += 1
            self._topic_ids = None
            self._epoch += 1
            self._outage = True
            self._need_topics = self.topics is not None
            self._retry_at = 0.0
            for _, p in pending:
                if p.spool_seq is not None:  # still in the spool: peeked and sent again
                    self._in_flight.discard(p.spool_seq)
            self.metrics.resent += len(pending)
        log.warning("Kafka at %s lost topics %s (broker restarted?): sending %d unconfirmed "
                    "messages again", self.config.bootstrap, topics, len(pending))
        try:
            for _, p in pending:
                if p.spool_seq is None:
                    self._to_spool(p.topic, p.key, p.value)
        finally:
            with self._lock:
                self._moving -= 1
        self._wake.set()

    def _mark_outage(self, exc: BaseException) -> None:
        with self._lock:
            self.metrics.failed += 1
            self._retry_at = time.monotonic() + self.retry_interval_s
            if not self._outage:
                log.warning("Kafka delivery to %s failed (%s); spooling to %s until it "
                            "recovers", self.config.bootstrap, _reason(exc),
                            self.spool.directory)
            self._outage = True
            self._need_topics = self.topics is not None

    def _to_spool(self, topic: str, key: bytes | None, value: bytes) -> None:
        try:
            self.spool.put(value, key, topic)
        except ValueError as exc:  # larger than the whole spool, or spool closed
            with self._lock:
                self.metrics.rejected += 1
            log.error("message for %s lost: %s", topic, exc)
            return
        with self._lock:
            self.metrics.spooled += 1
        self._wake.set()

    def _rejected(self, topic: str, exc: BaseException) -> None:
        with self._lock:
            self.metrics.rejected += 1
        log.error("message for %s rejected by Kafka and lost (no retry can deliver it): %s",
                  topic, _reason(exc))

    def _on_ok(self, number: int, _metadata: object) -> None:
        with self._lock:
            pending = self._pending.get(number)
            if pending is not None:  # None: already re-sent after a restart
                pending.acked = True

    def _on_direct_error(self, number: int, exc: BaseException) -> None:
        with self._lock:
            pending = self._pending.pop(number, None)
            if pending is not None:
                self._moving += 1
        if pending is None:  # already re-sent after a restart
            return
        try:
            if _is_permanent(exc):
                self._rejected(pending.topic, exc)
                return
            self._mark_outage(exc)
            self._to_spool(pending.topic, pending.key, pending.value)
        finally:
            with self._lock:
                self._moving -= 1

    def _on_spooled_error(self, number: int, seq: int, topic: str,
                          exc: BaseException) -> None:
        with self._lock:
            pending = self._pending.pop(number, None)
            if pending is not None:
                self._in_flight.discard(seq)
        if pending is None:
            return
        if _is_permanent(exc):
            self.spool.ack(seq)  # remove it: it would block the spool forever
            self._rejected(topic, exc)
        else:
            self._mark_outage(exc)

    def _register(self, pending: _Pending) -> int:
        """Track a message about to be handed to the client (call with self._lock held)."""
        self._send_number += 1
        self._pending[self._send_number] = pending
        return self._send_number

    def _drain_loop(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(self.retry_interval_s)
            self._wake.clear()
            try:
                with self._lock:
                    unconfirmed = any(p.acked for p in self._pending.values())
                if unconfirmed:
                    self._check()
                self._drain_once()
            except Exception:  # the drain thread must outlive any surprise
                log.exception("spool drain failed; retrying in %.1f s", self.retry_interval_s)
                with self._lock:
                    self._retry_at = time.monotonic() + self.retry_interval_s

    def _drain_once(self) -> int:
        with self._lock:
            if time.monotonic() < self._retry_at:
                return 0
            room = self.drain_window - len(self._in_flight)
            exclude = set(self._in_flight)
        if room <= 0:
            return 0
        items = self.spool.peek(room, exclude=exclude)
        if not items:
            with self._lock:
                if self._outage and not self._in_flight and len(self.spool) == 0:
                    self._outage = False
                    log.info("Kafka at %s is back; spool drained", self.config.bootstrap)
            return 0
        if self._need_topics:
            try:
                ensure_topics(self.config, self.topics, timeout_s=self._connect_timeout_s)
                self._need_topics = False
            except TransportError as exc:
                self._mark_outage(exc)
                return 0
        # Learn (or re-check) the topics' identity before anything is sent to them.
        if not self._check({item.topic for item in items}):
            return 0
        sent = 0
        for item in items:
            with self._lock:
                self._in_flight.add(item.seq)
                number = self._register(_Pending(item.topic, item.key, None, item.seq))
            try:
                future = self._client().send(item.topic, key=item.key, value=item.value)
            except (kafka_errors.KafkaError, TransportError) as exc:
                self._on_spooled_error(number, item.seq, item.topic, exc)
                break
            future.add_callback(self._on_ok, number)
            future.add_errback(self._on_spooled_error, number, item.seq, item.topic)
            sent += 1
        return sent

    # --- public API -------------------------------------------------------------------------

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue one message: delivered now or, during and after an outage, via the spool."""
        with self._lock:
            self.metrics.sent += 1
            known = self._topic_ids is not None and topic in self._topic_ids
        if not known and not self._outage:
            self._check({topic})  # learn its identity first (marks an outage on failure)
        with self._lock:
            behind_spool = self._outage or len(self.spool) > 0 or self._topic_ids is None
            number = (None if behind_spool
                      else self._register(_Pending(topic, key, value, None)))
        if number is None:  # keep FIFO order: nothing overtakes what is spooled
            self._to_spool(topic, key, value)
            return
        try:
            future = self._client().send(topic, key=key, value=value)
        except (kafka_errors.KafkaError, TransportError) as exc:
            with self._lock:
                self._pending.pop(number, None)
            if _is_permanent(exc):
                self._rejected(topic, exc)
                return
            self._mark_outage(exc)
            self._to_spool(topic, key, value)
            return
        future.add_callback(self._on_ok, number)
        future.add_errback(self._on_direct_error, number)

    def drain(self) -> None:
        """Ask the drain thread to try the spool now (it still honours retry_interval_s)."""
        self._wake.set()

    @property
    def idle(self) -> bool:
        """Nothing spooled, nothing in flight, nothing acknowledged but unconfirmed."""
        with self._lock:
            return (not self._in_flight and not self._pending and not self._moving
                    and len(self.spool) == 0)

    def mark(self) -> int:
        """A point in the stream of sends: `delivered_through(mark)` tells later, without
        waiting, whether every message sent before it was delivered."""
        with self._lock:
            return self._send_number

    def delivered_through(self, mark: int) -> bool:
        """True once every message sent before `mark` (from `mark()`) is delivered:
        acknowledged and confirmed by a metadata check (`confirm_soon`, `flush`), nothing
        spooled or re-sent. Never waits; False while anything is in the spool (it may
        hold older messages), so it trails deliveries, never leads them."""
        with self._lock:
            if self._moving or self._in_flight or len(self.spool):
                return False
            oldest = next(iter(self._pending), None)  # send numbers only grow
            return oldest is None or oldest > mark

    @property
    def backlogged(self) -> bool:
        """The spool holds messages (the broker was away; they drain oldest first, and new
        sends queue behind them): senders should wait (flush) rather than pile up more."""
        with self._lock:
            return len(self.spool) > 0 or bool(self._in_flight)

    def confirm_soon(self) -> None:
        """Ask the background thread to confirm what was acknowledged now (one metadata
        request) instead of at its next retry_interval_s tick."""
        self._wake.set()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything sent so far is delivered (acknowledged and confirmed,
        directly or from the spool). False when `timeout_s` passes first; what is left
        stays spooled."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._producer is not None:
                try:
                    self._producer.flush(timeout=max(0.0, deadline - time.monotonic()))
                except kafka_errors.KafkaTimeoutError:
                    pass
            # Direct sends that failed during the flush are in the spool by now; the
            # acknowledged ones are confirmed (or re-spooled) by one metadata check.
            with self._lock:
                unconfirmed = any(p.acked for p in self._pending.values())
            if unconfirmed:
                self._check()
            if self.idle:
                return True
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.02)

    def metrics_snapshot(self) -> dict[str, int]:
        with self._lock:
            snapshot = dict(vars(self.metrics))
            snapshot["unconfirmed"] = len(self._pending)
        snapshot["dropped_oldest"] = self.spool.stats.dropped_oldest
        snapshot["in_spool"] = len(self.spool)
        return snapshot

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what can be flushed within `timeout_s`; whatever is left stays in the spool
        on disk and is sent first by the next producer on the same spool directory.
        (Direct sends acknowledged but not yet confirmed when the time is up are not
        spooled: call flush() first when that matters.)"""
        try:
            self.flush(timeout_s)
        finally:
            self._closing.set()
            self._wake.set()
            self._drainer.join(timeout_s + self._connect_timeout_s)
            if self._producer is not None:
                self._producer.close(timeout=timeout_s)
                self._producer = None
            with self._admin_lock:
                if self._admin is not None:
                    if hasattr(self._admin, "close"):  # confluent's admin has no close()
                        self._admin.close()
                    self._admin = None
            self.spool.close()

    def __enter__(self) -> SpoolingProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


# --- consumer -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


def _confluent_consumer(config: KafkaConfig, topics: Sequence[str], group_id: str, *,
                        session_timeout_ms: int, heartbeat_interval_ms: int,
                        max_poll_interval_ms: int, max_partition_fetch_bytes: int,
                        fetch_max_bytes: int, fetch_max_wait_ms: int,
                        bootstrap_timeout_s: float,
                        assigned: set[tuple[str, int]]) -> confluent_kafka.Consumer:
    """A librdkafka group member with kafka-python's semantics here: earliest when the
    group has no commit, no auto commit, no offset store, the Java range assignor."""
    conf = _confluent_conf(config, **{
        "group.id": group_id, "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": heartbeat_interval_ms,
        "max.poll.interval.ms": max(max_poll_interval_ms, session_timeout_ms),
        "max.partition.fetch.bytes": max_partition_fetch_bytes,
        "fetch.max.bytes": fetch_max_bytes, "fetch.wait.max.ms": fetch_max_wait_ms,
        # a response may hold fetch.max.bytes plus framing
        "receive.message.max.bytes": min(fetch_max_bytes + (1 << 20), 2_147_483_647),
        "partition.assignment.strategy": "range"})

    # The assignment is mirrored here from the rebalance callbacks (they run inside
    # consume(), in the polling thread): Consumer.assignment() holds the GIL while it waits
    # for librdkafka, which deadlocks against a consume() in another thread (measured).
    def on_assign(_consumer: object, partitions: list) -> None:
        assigned.update((tp.topic, tp.partition) for tp in partitions)

    def on_revoke(_consumer: object, partitions: list) -> None:
        assigned.difference_update((tp.topic, tp.partition) for tp in partitions)

    try:
        consumer = confluent_kafka.Consumer(conf)
        # fail like kafka-python when nothing answers (librdkafka would retry silently)
        consumer.list_topics(timeout=bootstrap_timeout_s)
        consumer.subscribe(list(topics), on_assign=on_assign, on_revoke=on_revoke,
                           on_lost=on_revoke)
    except confluent_kafka.KafkaException as exc:
        raise TransportError(f"cannot reach Kafka at {config.bootstrap}: "
                             f"{_reason(exc)}") from None
    return consumer


def _keep_finished_joins(consumer: KafkaConsumer) -> None:
    """kafka-python: a JoinGroup/SyncGroup attempt that finished while no poll() waited
    for it is applied by the next poll instead of being thrown away.

    Why: kafka-python 3.0.12 runs the attempt as a task that a poll() awaits; a poll
    that times out leaves it running, and the next poll starts a new attempt (a new
    JoinGroup) when the task is already done, without applying its result. A member
    whose attempt ends while it is outside poll() (busy with a batch, or polling
    another consumer) rejoins again and again, reading its old partitions all along:
    a worker gave its second partition up 30 to 175 s after a newcomer joined
    (docs/kafka.md, "Clients"). The finished attempt's assignment is kept until
    applied, and handed to the next attempt once instead of a new JoinGroup, if the
    generation it was joined under is still the member's. Private attributes, read
    defensively: a kafka-python without them is left alone."""
    coordinator = getattr(consumer, "_coordinator", None)
    join = getattr(coordinator, "_do_join_and_sync_async", None)
    complete = getattr(coordinator, "_on_join_complete_async", None)
    if join is None or complete is None or not hasattr(coordinator, "_generation"):
        return
    kept: list[tuple[object, bytes]] = []  # (generation, assignment) not applied yet

    async def join_and_sync() -> bytes:
        if kept:
            generation, assignment = kept.pop()  # once: a stale one must not loop
            if generation is coordinator._generation:
                log.debug("group %s: applying the join that finished between polls",
                          coordinator.group_id)
                return assignment
        assignment = await join()
        kept[:] = [(coordinator._generation, assignment)]
        return assignment

    async def on_join_complete(*args: object, **kwargs: object) -> object:
        kept.clear()  # applied
        return await complete(*args, **kwargs)

    coordinator._do_join_and_sync_async = join_and_sync
    coordinator._on_join_complete_async = on_join_complete


class BatchConsumer:
    """A group member that hands out records in batches and commits only on request.

    Offsets start at the earliest record when the group has no commit (never "latest":
    the Tansu broker reports it one batch short). `commit(records)` commits, per
    partition, the offset after the highest record given: pass records once their output
    is acknowledged downstream.
    """

    def __init__(self, config: KafkaConfig, topics: Sequence[str], group_id: str, *,
                 session_timeout_ms: int = 6000, heartbeat_interval_ms: int | None = None,
                 max_poll_records: int = 64, max_poll_interval_ms: int = 300_000,
                 max_partition_fetch_bytes: int = 16 << 20,
                 fetch_max_bytes: int = 64 << 20, bootstrap_timeout_s: float = 30.0,
                 fetch_max_wait_ms: int = 500, poll_linger_s: float = 0.0) -> None:
        """`poll_linger_s`: once a poll has its first record, wait up to this long for
        more (up to max_poll_records) instead of returning what is there at once (the
        confluent client; kafka-python returns whole fetches anyway): a worker that orders
        a poll's batches by event time across partitions wants every partition's part of a
        fetch in one poll."""
        self.config = config
        self.group_id = group_id
        self.max_poll_records = max_poll_records
        self.poll_linger_s = poll_linger_s
        self._committed: dict[tuple[str, int], int] = {}
        self._confluent = config.client == "confluent"
        self._assigned: set[tuple[str, int]] = set()  # confluent: see _confluent_consumer
        if self._confluent:
            self._consumer = _confluent_consumer(
                config, topics, group_id, session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=heartbeat_interval_ms or max(100, session_timeout_ms // 3),
                max_poll_interval_ms=max_poll_interval_ms,
                max_partition_fetch_bytes=max_partition_fetch_bytes,
                fetch_max_bytes=fetch_max_bytes, bootstrap_timeout_s=bootstrap_timeout_s,
                fetch_max_wait_ms=fetch_max_wait_ms, assigned=self._assigned)
            return
        try:
            self._consumer = KafkaConsumer(
                *topics, **config.client_kwargs(), group_id=group_id,
                auto_offset_reset="earliest", enable_auto_commit=False,
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=heartbeat_interval_ms or max(100, session_timeout_ms // 3),
                max_poll_records=max_poll_records, max_poll_interval_ms=max_poll_interval_ms,
                max_partition_fetch_bytes=max_partition_fetch_bytes,
                fetch_max_bytes=fetch_max_bytes, fetch_max_wait_ms=fetch_max_wait_ms,
                bootstrap_timeout_ms=int(bootstrap_timeout_s * 1000))
        except kafka_errors.KafkaError as exc:
            raise TransportError(f"cannot reach Kafka at {config.bootstrap}: {exc}") from None
        _keep_finished_joins(self._consumer)

    def poll_batch(self, timeout_s: float = 1.0, max_records: int | None = None) -> list[Record]:
        """Up to `max_records` records (partition order kept), waiting up to `timeout_s`."""
        if self._confluent:
            return self._poll_confluent(timeout_s, max_records or self.max_poll_records)
        try:
            polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000),
                                         max_records=max_records or self.max_poll_records)
        except kafka_errors.KafkaError as exc:
            raise TransportError(f"poll from {self.config.bootstrap} failed: {exc}") from None
        return [Record(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                for records in polled.values() for r in records]

    def _poll_confluent(self, timeout_s: float, max_records: int) -> list[Record]:
        # librdkafka's consume(n, timeout) returns only when n messages are there or the
        # timeout has passed (measured: 3 messages fetched, consume(16, 2.0) took 2.0 s):
        # a service would idle up to its whole poll timeout with data in hand. So, like
        # kafka-python's poll: what is fetched already; else wait for the first message
        # and take what arrived with it (or within poll_linger_s).
        consume = self._consumer.consume
        try:
            messages = consume(max_records, 0)
            if not messages and timeout_s > 0:
                messages = consume(1, timeout_s)
            if messages and len(messages) < max_records:
                messages += consume(max_records - len(messages), max(self.poll_linger_s, 0.0))
        except confluent_kafka.KafkaException as exc:
            raise TransportError(f"poll from {self.config.bootstrap} failed: "
                                 f"{_reason(exc)}") from None
        records = []
        for m in messages:
            error = m.error()
            if error is not None:
                if error.fatal():
                    raise TransportError(f"poll from {self.config.bootstrap} failed: "
                                         f"{error.str()}")
                # transient (broker away, topic not there yet): librdkafka retries itself
                log.debug("consumer %s: %s", self.group_id, error.str())
                continue
            records.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                                  m.timestamp()[1]))
        return records

    def commit(self, records: Iterable[Record]) -> dict[tuple[str, int], int]:
        """Commit through the highest offset per partition among `records`; returns the
        committed {(topic, partition): next offset}. Partitions no longer assigned to this
        member are skipped (their new owner re-reads them)."""
        highest: dict[tuple[str, int], int] = {}
        for r in records:
            key = (r.topic, r.partition)
            highest[key] = max(highest.get(key, -1), r.offset + 1)
        return self.commit_offsets(highest)

    def commit_offsets(self, offsets: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Commit {(topic, partition): next offset to read} (Kafka's convention: the offset
        after the last record done). Skips partitions not assigned to this member and
        commits that would move backwards; returns what was committed. Raises CommitFailed."""
        assigned = self.assignment()
        # Forget commits of partitions this member lost: a later owner moved them on.
        self._committed = {k: v for k, v in self._committed.items() if k in assigned}
        todo = {}
        for key, offset in offsets.items():
            if key not in assigned:
                log.info("not committing %s: partition no longer assigned to %s", key,
                         self.group_id)
            elif offset > self._committed.get(key, -1):  # never move a commit backwards
                todo[key] = offset
        if not todo:
            return {}
        try:
            if self._confluent:
                self._commit_confluent(todo)
            else:
                self._consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                                       for (t, p), o in todo.items()})
        except kafka_errors.CommitFailedError as exc:
            raise CommitFailed(f"commit for group {self.group_id} failed: {exc}") from None
        except kafka_errors.KafkaError as exc:
            raise CommitFailed(f"commit for group {self.group_id} failed: "
                               f"{_reason(exc)}") from None
        self._committed.update(todo)
        return todo

    def _commit_confluent(self, todo: Mapping[tuple[str, int], int]) -> None:
        offsets = [confluent_kafka.TopicPartition(t, p, o) for (t, p), o in todo.items()]
        try:
            done = self._consumer.commit(offsets=offsets, asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            raise CommitFailed(f"commit for group {self.group_id} failed: "
                               f"{_reason(exc)}") from None
        failed = [tp for tp in done or () if tp.error is not None]
        if failed:
            raise CommitFailed(f"commit for group {self.group_id} failed: "
                               f"{failed[0].error.str()}")

    def partition_count(self, topic: str, timeout_s: float = 10.0) -> int | None:
        """How many partitions `topic` has on the broker now (None: unknown topic)."""
        try:
            if self._confluent:
                described = self._consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
                if described is None or described.error is not None:
                    return None
                return len(described.partitions) or None
            partitions = self._consumer.partitions_for_topic(topic)
        except (confluent_kafka.KafkaException, kafka_errors.KafkaError) as exc:
            raise TransportError(f"metadata of {topic} from {self.config.bootstrap} failed: "
                                 f"{_reason(exc)}") from None
        return len(partitions) if partitions else None

    def assignment(self) -> set[tuple[str, int]]:
        """The (topic, partition) pairs this member owns now (changes after a rebalance,
        which happens inside poll_batch)."""
        if self._confluent:
            return set(self._assigned)
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def rewind_to_committed(self) -> dict[tuple[str, int], int]:
        """Move every assigned partition back to the group's committed offset (the
        earliest offset when the group has none) so the next polls re-deliver everything
        after the last commit, e.g. to rebuild in-memory state after a rebalance.
        Returns {(topic, partition): offset rewound to}, -1 for "from the beginning"."""
        if self._confluent:
            positions = self._rewind_confluent()
            self._committed = {k: v for k, v in positions.items() if v >= 0}
            return positions
        positions: dict[tuple[str, int], int] = {}
        try:
            for tp in self._consumer.assignment():
                offset = self._consumer.committed(tp)
                if offset is None:
                    self._consumer.seek_to_beginning(tp)
                    offset = -1
                else:
                    self._consumer.seek(tp, offset)
                positions[(tp.topic, tp.partition)] = offset
        except kafka_errors.KafkaError as exc:
            raise TransportError(f"rewind of group {self.group_id} failed: "
                                 f"{_reason(exc)}") from None
        self._committed = {k: v for k, v in positions.items() if v >= 0}
        return positions

    def _rewind_confluent(self) -> dict[tuple[str, int], int]:
        # seek() each owned partition to its commit. A partition whose fetcher has not
        # started yet (just assigned: seek fails with "Erroneous state") starts at its
        # commit anyway, which is the rewind's target. (Re-assigning with start offsets
        # outside a rebalance callback confused librdkafka's group state: a worker stopped
        # fetching after a takeover, seen once in tests/test_kafka_e2e.py.)
        assigned = [confluent_kafka.TopicPartition(t, p) for t, p in sorted(self._assigned)]
        if not assigned:
            return {}
        try:
            committed = self._consumer.committed(assigned, timeout=10)
        except confluent_kafka.KafkaException as exc:
            raise TransportError(f"rewind of group {self.group_id} failed: "
                                 f"{_reason(exc)}") from None
        positions = {}
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else confluent_kafka.OFFSET_BEGINNING
            try:
                self._consumer.seek(confluent_kafka.TopicPartition(tp.topic, tp.partition,
                                                                   offset))
            except confluent_kafka.KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if getattr(error, "code", lambda: None)() != confluent_kafka.KafkaError._STATE:
                    raise TransportError(f"rewind of group {self.group_id} failed: "
                                         f"{_reason(exc)}") from None
            positions[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else -1
        return positions

    def pause(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Stop fetching these partitions (those not assigned are skipped). Records of
        them fetched but not handed out yet are dropped by the client and fetched again
        from the position after resume(): nothing is skipped."""
        self._pause_or_resume(partitions, pause=True)

    def resume(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Fetch paused partitions again, from the record after the last one handed out."""
        self._pause_or_resume(partitions, pause=False)

    def _pause_or_resume(self, partitions: Iterable[tuple[str, int]], *, pause: bool) -> None:
        todo = sorted(set(partitions) & self.assignment())
        if not todo:
            return
        try:
            if self._confluent:
                tps = [confluent_kafka.TopicPartition(t, p) for t, p in todo]
                (self._consumer.pause if pause else self._consumer.resume)(tps)
            else:
                tps = [TopicPartition(t, p) for t, p in todo]
                (self._consumer.pause if pause else self._consumer.resume)(*tps)
                if not pause:
                    self._drop_parked(tps)
        except (confluent_kafka.KafkaException, kafka_errors.KafkaError) as exc:
            raise TransportError(f"{'pause' if pause else 'resume'} of {todo} failed: "
                                 f"{_reason(exc)}") from None

    def _drop_parked(self, tps: Sequence[TopicPartition]) -> None:
        """kafka-python: drop the records it parked for resumed partitions; they are
        fetched again from the position (the record after the last one handed out).

        Why: kafka-python 3.0.12 parks the fetched records of a partition paused while
        they were being handed out (KAFKA-7548), restores them only when its in-line
        slot is None, which it never is again once any partition's records were drained
        (the drained object stays), and never fetches a partition with parked records:
        the resumed partition stalled for good (tests/test_kafka_pause_resume.py; the
        takeover test of tests/test_kafka_e2e.py lost alerts so). Private attributes,
        read defensively: a kafka-python without them is left alone."""
        parked = getattr(getattr(self._consumer, "_fetcher", None),
                         "_paused_partition_records", None)
        if not isinstance(parked, dict):
            return
        for tp in tps:
            records = parked.pop(tp, None)
            if records is not None:
                records.drain()

    def end_offsets(self, partitions: Iterable[tuple[str, int]], *, query: bool = False,
                    timeout_s: float = 2.0) -> dict[tuple[str, int], int | None]:
        """{(topic, partition): end (high-water) offset, None when unknown}. By default the
        client's cached value from its last fetch response for the partition (no request;
        unknown before the first fetch, and with librdkafka until the partition has had a
        message). `query=True` asks the broker (one request; failures give None)."""
        out: dict[tuple[str, int], int | None] = {}
        for t, p in partitions:
            end: int | None = None
            try:
                if self._confluent:
                    _, high = self._consumer.get_watermark_offsets(
                        confluent_kafka.TopicPartition(t, p), timeout=timeout_s,
                        cached=not query)
                    end = high if high is not None and high >= 0 else None
                elif query:
                    end = self._consumer.end_offsets([TopicPartition(t, p)]).get(
                        TopicPartition(t, p))
                else:
                    end = self._consumer.highwater(TopicPartition(t, p))
            except (confluent_kafka.KafkaException, kafka_errors.KafkaError) as exc:
                log.debug("end offset of %s:%s: %s", t, p, _reason(exc))
            out[(t, p)] = end
        return out

    def close(self) -> None:
        """Leave the group (no commit: uncommitted records are delivered again)."""
        if self._confluent:
            self._consumer.close()
            return
        self._consumer.close(autocommit=False)

    def __enter__(self) -> BatchConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
