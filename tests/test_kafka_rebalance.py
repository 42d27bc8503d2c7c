"""A kafka-python member applies a rebalance's join that finished between two polls.

Found behind the slow hand-over of tests/test_kafka_pause_resume.py (kafka-python): when
worker A joined, worker B gave its second partition up 30 to 175 s later. kafka-python
3.0.12 runs B's JoinGroup/SyncGroup as a task that poll() awaits; when the task finishes
while B is outside poll() (here: while the test polls A), B's next poll throws its result
away and sends a new JoinGroup, which the broker holds for a second. Two members polled in
turn, 0.2 s each, locked into that phase: 67 JoinGroups in 80 s, B reading both partitions
all along (docs/kafka.md, "Clients"). `_keep_finished_joins` applies the finished join.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
from kafka_fixtures import consumer, poll_until, unique

from pipeline.kafka_transport import SpoolingProducer, ensure_topics
from pipeline.keys import aligned_keys

pytest_plugins = ["kafka_fixtures"]


@pytest.fixture
def kafka_client() -> str:
    return "kafka-python"  # librdkafka keeps its own join state


def test_a_join_finished_between_polls_is_applied_without_joining_again(
        kafka_config, tmp_path, caplog):
    topic, group = unique("rejoin"), unique("group")
    ensure_topics(kafka_config, {topic: 2})
    with SpoolingProducer(kafka_config, tmp_path / "spool") as producer:
        for key in aligned_keys(2):
            producer.send(topic, key, b"x")
        assert producer.flush(30)
    # B's own client id names its I/O thread, which logs B's group requests
    b_config = dataclasses.replace(kafka_config, client_id="cirtsa-test-b")
    b_thread = f"kafka-io-{b_config.client_id}"
    caplog.set_level(logging.DEBUG, logger="kafka.coordinator")

    def b_logged(text: str, since: int) -> int:
        return sum(1 for r in caplog.records[since:]
                   if r.threadName == b_thread and r.getMessage().startswith(text))

    with consumer(b_config, [topic], group) as b:
        assert poll_until(lambda: len(b.assignment()) == 2, b)
        start = len(caplog.records)
        with consumer(kafka_config, [topic], group) as a:
            # B learns of the rebalance (heartbeat) and its poll sends the JoinGroup ...
            assert poll_until(lambda: b_logged("(Re-)joining group", start) == 1, a, b)
            # ... which the broker answers, and B's SyncGroup too, while only A polls
            assert poll_until(lambda: b_logged("Received SyncGroup response", start) == 1, a)
            assert poll_until(lambda: len(b.assignment()) == 1, b)
            assert len(a.assignment()) == 1 or poll_until(lambda: len(a.assignment()) == 1, a)
            # one JoinGroup for one rebalance (3.0.12 alone sent another per finished one)
            assert b_logged("(Re-)joining group", start) == 1
