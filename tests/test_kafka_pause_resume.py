"""BatchConsumer.pause/resume on a real broker: a resumed partition delivers the rest.

Found in the flaky two-worker takeover test (tests/test_kafka_e2e.py, kafka-python variant):
worker B paused a partition whose fetched records it had only partly handed out (a poll
takes at most max_poll_records), resumed it 0.2 s later, and never got another record of
it: 5 records (3 alerts) never came, and after flow_hold_s the idle flush closed the
windows. kafka-python 3.0.12 parks such records (KAFKA-7548) and restores them only when
no other partition's records were drained meanwhile (its fetcher keeps the drained
PartitionRecords object, not None, in the in-line slot), and never fetches a partition
with parked records: the partition stalls for good.
"""

from __future__ import annotations

import time

from kafka_fixtures import EVERY_KAFKA_CLIENT, consumer, poll_until, unique

from pipeline.kafka_transport import SpoolingProducer, ensure_topics
from pipeline.keys import aligned_keys
from pipeline.services import PartitionFlow

pytest_plugins = ["kafka_fixtures"]
kafka_client = EVERY_KAFKA_CLIENT  # the stall was kafka-python's; librdkafka checked too


def test_a_partition_paused_in_mid_fetch_delivers_the_rest_after_resume(kafka_config,
                                                                       tmp_path):
    topic, per_partition = unique("pause"), 40
    ensure_topics(kafka_config, {topic: 2})
    keys = aligned_keys(2)  # key i lands on partition i
    with SpoolingProducer(kafka_config, tmp_path / "spool") as producer:
        for i in range(per_partition):
            for p in (0, 1):
                producer.send(topic, keys[p], b"%d" % i)
        assert producer.flush(30)
    got: dict[int, list[int]] = {0: [], 1: []}
    with consumer(kafka_config, [topic], unique("group"), max_poll_records=5) as reader:
        def poll() -> list:
            records = reader.poll_batch(timeout_s=0.5)
            for r in records:
                got[r.partition].append(r.offset)
            return records

        deadline = time.monotonic() + 30
        while not any(got.values()) and time.monotonic() < deadline:
            poll()
        first = next(p for p, offsets in got.items() if offsets)  # partly handed out
        other = 1 - first
        reader.pause([(topic, first)])
        # the other partition's records are drained meanwhile
        while len(got[other]) < per_partition and time.monotonic() < deadline:
            poll()
        reader.resume([(topic, first)])
        while len(got[first]) < per_partition and time.monotonic() < deadline:
            poll()
    for p in (0, 1):  # every record once, in order
        assert got[p] == list(range(per_partition)), f"partition {p}: {got[p][-3:]}"


def test_a_partition_paused_then_taken_away_and_given_back_is_fetched_after_the_rebuild(
        kafka_config, tmp_path):
    """Worker B paused a partition (flow control), a rebalance took it away (B rebuilt
    with what it kept, or nothing) and the takeover gave it back: B's rebuild must fetch
    it. librdkafka kept the pause across the re-assignment while B's flow state, reset by
    the rebuild in between, no longer knew it: the partition was never read again. (With
    kafka-python, B gave its second partition up only 30 to 175 s after A joined, past
    the 30 s step, until kafka-python's discarded joins were handled: 2 s now;
    tests/test_kafka_rebalance.py.)"""
    topic, group = unique("rebalance"), unique("group")
    ensure_topics(kafka_config, {topic: 2})
    keys = aligned_keys(2)

    def produce(value: bytes) -> None:
        with SpoolingProducer(kafka_config, tmp_path / value.decode()) as producer:
            for key in keys:
                producer.send(topic, key, value)
            assert producer.flush(30)

    def rebuild(worker, flow: PartitionFlow) -> None:  # as CorrelationService._rewind
        flow.reset(worker, dict.fromkeys(worker.assignment(), 0), time.monotonic())

    produce(b"old")
    flow = PartitionFlow(margin_ns=0, hold_s=15.0)
    with consumer(kafka_config, [topic], group) as b:
        assert poll_until(lambda: len(b.assignment()) == 2, b)
        paused = {(topic, 0), (topic, 1)}  # (so the one taken away was paused)
        b.pause(paused)  # as flow.update does for partitions with held batches
        flow.paused = set(paused)
        with consumer(kafka_config, [topic], group) as a:  # A joins: a rebalance
            assert poll_until(lambda: len(b.assignment()) == 1 and len(a.assignment()) == 1, a, b)
            rebuild(b, flow)
        assert poll_until(lambda: len(b.assignment()) == 2, b)  # A left (killed): all to B
        rebuild(b, flow)
        produce(b"new")
        got: set[int] = set()

        def both() -> bool:
            got.update(r.partition for r in b.poll_batch(timeout_s=0.2) if r.value == b"new")
            return got == {0, 1}

        assert poll_until(both), f"after the rebuild only partitions {sorted(got)} were read"
