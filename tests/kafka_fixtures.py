"""Fixtures for tests against a real Kafka-protocol broker (Tansu) on 127.0.0.1.

Import the fixtures into a test module to register them:
    from kafka_fixtures import kafka_broker, kafka_config  # noqa: F401

The broker runs with memory storage; tests share one broker per module and isolate
themselves with unique topic and group names (`unique`). Tests that stop or restart the
broker use their own `LocalBroker`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from pipeline.broker import BrokerError, LocalBroker, tansu_binary
from pipeline.kafka_transport import CLIENTS, DEFAULT_CLIENT, BatchConsumer, KafkaConfig, Record

# Short group timeouts: the broker's group join waits session_timeout_ms / 2 (DESIGN.md §5).
SESSION_TIMEOUT_MS = 2000


def require_broker_binary() -> str:
    try:
        return tansu_binary()
    except BrokerError as exc:
        pytest.skip(f"no Kafka broker for integration tests: {exc}")


@pytest.fixture(scope="module")
def kafka_broker() -> Iterator[LocalBroker]:
    require_broker_binary()
    with LocalBroker() as broker:
        yield broker


@pytest.fixture
def kafka_client() -> str:
    """The Kafka client library under test: the default one. A module runs its tests with
    every client by overriding this fixture with `every_kafka_client`."""
    return DEFAULT_CLIENT


def every_kafka_client(request: pytest.FixtureRequest) -> str:
    return request.param


# Override in a test module: `kafka_client = EVERY_KAFKA_CLIENT`.
EVERY_KAFKA_CLIENT = pytest.fixture(params=CLIENTS)(every_kafka_client)


@pytest.fixture
def kafka_config(kafka_broker: LocalBroker, kafka_client: str) -> KafkaConfig:
    return KafkaConfig(bootstrap=kafka_broker.bootstrap, client_id="cirtsa-test",
                       client=kafka_client)


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def consumer(config: KafkaConfig, topics: list[str], group: str, **kwargs) -> BatchConsumer:
    kwargs.setdefault("session_timeout_ms", SESSION_TIMEOUT_MS)
    return BatchConsumer(config, topics, group, **kwargs)


def consume(batch_consumer: BatchConsumer, count: int, timeout_s: float = 20.0,
            commit: bool = True) -> list[Record]:
    """Poll until `count` records arrived (or the timeout passes); commits as it goes."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        batch = batch_consumer.poll_batch(timeout_s=0.5)
        records += batch
        if commit and batch:
            batch_consumer.commit(batch)
    return records


def poll_until(condition, *members: BatchConsumer, timeout_s: float = 30.0) -> bool:
    """Poll `members` in turn (0.2 s each: group members join, rebalance and fetch only
    while polled) until `condition()` holds or the time is up; whether it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        for member in members:
            member.poll_batch(timeout_s=0.2)
    return condition()
