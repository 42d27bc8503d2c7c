"""The correlation worker's per-partition event-time flow control (PartitionFlow) against a
fake consumer that hands out one partition's backlog at a time, as a replay after a
takeover can (docs/kafka.md, "Event time across partitions")."""

from __future__ import annotations

import io

from conftest import shared_pcap

from pipeline.config import load_config
from pipeline.kafka_transport import Record
from pipeline.schema import EventBatch
from pipeline.services import CorrelationService, JsonLog, PartitionFlow, sensor_messages
from pipeline.wire import decode, encode

CAPTURE = "port_scan/simplescan__port_scan.pcap"
TOPIC = "sa.events"


class FakeConsumer:
    """Partitions of encoded messages; a poll gives up to `per_poll` records of the first
    unpaused partition with unread ones (whole fetches of one partition, kafka-python's
    way). End offsets are known once a partition was polled, or always (`ends_known`)."""

    def __init__(self, partitions: dict[int, list[bytes]], per_poll: int = 2,
                 ends_known: bool = True) -> None:
        self.logs = {(TOPIC, p): m for p, m in partitions.items()}
        self.position = dict.fromkeys(self.logs, 0)
        self.per_poll = per_poll
        self.ends_known = ends_known
        self.fetched: set[tuple[str, int]] = set()
        self.paused: set[tuple[str, int]] = set()
        self.pause_log: list[tuple[str, tuple[str, int]]] = []

    def assignment(self) -> set[tuple[str, int]]:
        return set(self.logs)

    def pause(self, partitions) -> None:
        for tp in partitions:
            self.paused.add(tp)
            self.pause_log.append(("pause", tp))

    def resume(self, partitions) -> None:
        for tp in partitions:
            self.paused.discard(tp)
            self.pause_log.append(("resume", tp))

    def end_offsets(self, partitions, *, query: bool = False) -> dict:
        return {tp: len(self.logs[tp]) if self.ends_known or tp in self.fetched else None
                for tp in partitions}

    def poll_batch(self) -> list[Record]:
        for tp in sorted(self.logs):
            log, at = self.logs[tp], self.position[tp]
            if tp in self.paused or at >= len(log):
                continue
            self.fetched.add(tp)
            out = [Record(tp[0], tp[1], o, b"k", log[o], 0)
                   for o in range(at, min(len(log), at + self.per_poll))]
            self.position[tp] = out[-1].offset + 1
            return out
        return []


def shifted_messages(copies: int, step_s: int, offset_s: int = 0) -> list[bytes]:
    """One capture's events `copies` times, copy i moved i * step_s later."""
    batch = decode(next(iter(sensor_messages([shared_pcap(CAPTURE)], load_config()))))
    start = int(batch.columns["timestamp"].min())
    out = []
    for i in range(copies):
        columns = dict(batch.columns)
        shift = -start + (offset_s + i * step_s) * 10**9
        columns["timestamp"] = batch.columns["timestamp"] + shift
        if "end" in columns:
            columns["end"] = batch.columns["end"] + shift
        out.append(encode(EventBatch(batch.kind, columns)))
    return out


def run(service: CorrelationService, consumer: FakeConsumer, flow: bool,
        clock: list[float]) -> int:
    """The worker loop's part that matters here: poll, push, flow update; returns polls."""
    if flow:  # as the worker's rebuild does
        service.flow.reset(consumer, {tp: 0 for tp in consumer.logs}, clock[0])
        service.flow.update(consumer, service.tracked, clock[0])
    polls = 0
    while polls < 1000:
        records = consumer.poll_batch()
        clock[0] += 0.1
        if records:
            service.push(records)
        elif not consumer.paused and not service.buffered_messages:
            break
        if flow:
            service.flow.update(consumer, service.tracked, clock[0])
            service.release()
        polls += 1
    return polls


def late_dropped(service: CorrelationService) -> int:
    return sum(e.stats["late_dropped"] for e in service.engines.values())


def worker() -> CorrelationService:
    return CorrelationService(None, load_config(), log=JsonLog("correlation", io.StringIO()))


def skewed() -> dict[int, list[bytes]]:
    # Two partitions over the same 2 hours, 600 s apart per message (> allowed lateness).
    return {0: shifted_messages(12, 600), 1: shifted_messages(12, 600, offset_s=300)}


def test_without_flow_control_a_partition_running_ahead_makes_the_other_late():
    service = worker()
    run(service, FakeConsumer(skewed()), flow=False, clock=[0.0])
    assert late_dropped(service) > 0  # the fake reproduces the loss


def test_the_partition_ahead_is_paused_then_resumed_and_nothing_is_late():
    service = worker()
    consumer = FakeConsumer(skewed())
    run(service, consumer, flow=True, clock=[0.0])
    assert late_dropped(service) == 0
    assert all(at == 12 for at in consumer.position.values())  # everything read
    assert ("pause", (TOPIC, 0)) in consumer.pause_log
    assert ("resume", (TOPIC, 0)) in consumer.pause_log
    assert not consumer.paused
    assert service.stats["messages_in"] == 24
    assert service.stats["events_in"] == sum(len(decode(m)) for p in consumer.logs.values()
                                             for m in p)


def test_one_poll_with_a_whole_partition_is_held_back_not_pushed_ahead():
    # A poll bringing all of partition 0 (2 h of events) while partition 1 is unread: its
    # batches wait for partition 1's, and the commit stays before the held ones.
    service = worker()
    consumer = FakeConsumer(skewed(), per_poll=12)
    run(service, consumer, flow=True, clock=[0.0])
    assert late_dropped(service) == 0
    assert ("pause", (TOPIC, 0)) in consumer.pause_log


def test_held_records_are_not_committed():
    service = worker()
    consumer = FakeConsumer(skewed(), per_poll=12)
    service.flow.reset(consumer, {tp: 0 for tp in consumer.logs}, 0.0)
    service.flow.update(consumer, service.tracked, 0.0)  # both partitions unread
    service.push(consumer.poll_batch())  # all of partition 0, nothing of 1: all held
    assert len(service.tracked[(TOPIC, 0)].held) == 12
    assert service.commit_positions() == {(TOPIC, 0): 0}


def test_a_partition_with_unknown_end_holds_others_until_its_first_fetch():
    service = worker()
    consumer = FakeConsumer(skewed(), ends_known=False)
    run(service, consumer, flow=True, clock=[0.0])
    assert late_dropped(service) == 0
    assert ("pause", (TOPIC, 0)) in consumer.pause_log


def test_a_caught_up_partition_holds_others_back_only_for_idle_wait_s():
    # Partition 1 has old events, all read, and stays quiet: partition 0 far ahead waits
    # for it flow_idle_wait_s once (its next records might be in flight), then goes on.
    service = worker()
    service.flow.idle_wait_s = 2.0
    consumer = FakeConsumer({0: shifted_messages(6, 600, offset_s=86_400),
                             1: shifted_messages(1, 600)})
    consumer.position[(TOPIC, 1)] = 1
    service.push([Record(TOPIC, 1, 0, b"k", consumer.logs[(TOPIC, 1)][0], 0)])
    run(service, consumer, flow=True, clock=[0.0])
    assert pauses(consumer) == [(TOPIC, 0)] and not consumer.paused
    assert consumer.position[(TOPIC, 0)] == 6
    assert service.flow.stats["idle_waits"] == 1  # one wait, not one per batch


def test_without_idle_wait_a_caught_up_partition_holds_nothing_back():
    service = worker()
    service.flow.idle_wait_s = 0.0  # (Kafka Streams' max.task.idle.ms default)
    consumer = FakeConsumer({0: shifted_messages(6, 600, offset_s=86_400),
                             1: shifted_messages(1, 600)})
    consumer.position[(TOPIC, 1)] = 1
    service.push([Record(TOPIC, 1, 0, b"k", consumer.logs[(TOPIC, 1)][0], 0)])
    run(service, consumer, flow=True, clock=[0.0])
    assert pauses(consumer) == []
    assert consumer.position[(TOPIC, 0)] == 6


def pauses(consumer: FakeConsumer) -> list[tuple[str, int]]:
    """The partitions paused, in order (the rebuild resumes every partition anyway)."""
    return [tp for what, tp in consumer.pause_log if what == "pause"]


class InFlightConsumer(FakeConsumer):
    """Partition 1's next records reach the broker only after partition 0's far-ahead
    record was fetched (the producer writes partitions one by one, their fetches come
    apart): when that record arrives, partition 1 looks caught up."""

    def __init__(self, partitions: dict[int, list[bytes]], in_flight: list[bytes]) -> None:
        super().__init__(partitions)
        self.in_flight = in_flight

    def poll_batch(self) -> list[Record]:
        records = super().poll_batch()
        if records and records[0].partition == 0 and self.in_flight:
            self.logs[(TOPIC, 1)] = self.logs[(TOPIC, 1)] + self.in_flight
            self.in_flight = []
        return records


def in_flight_run(idle_wait_s: float) -> CorrelationService:
    """Partition 1 read up to 600 s, quiet; partition 0 brings 6000 s, and then partition
    1's 1200-2400 s records arrive (the takeover test's confluent failures: B pushed one
    partition's last copies before another's middle ones, which were then late)."""
    service = worker()
    service.flow.idle_wait_s = idle_wait_s
    old = shifted_messages(2, 600)
    consumer = InFlightConsumer({0: shifted_messages(1, 600, offset_s=6000), 1: old},
                                in_flight=shifted_messages(3, 600, offset_s=1200))
    consumer.position[(TOPIC, 1)] = 2
    service.push([Record(TOPIC, 1, i, b"k", m, 0) for i, m in enumerate(old)])
    run(service, consumer, flow=True, clock=[0.0])
    assert consumer.position == {(TOPIC, 0): 1, (TOPIC, 1): 5}  # everything read
    return service


def test_records_in_flight_on_a_caught_up_partition_are_not_made_late():
    assert late_dropped(in_flight_run(idle_wait_s=0.0)) > 0  # the fake reproduces the loss
    assert late_dropped(in_flight_run(idle_wait_s=5.0)) == 0


class StuckConsumer(FakeConsumer):
    """Partition 1 reports unread records but never gives any (a fetch that fails)."""

    def poll_batch(self) -> list[Record]:
        records = super().poll_batch()
        if records and records[0].partition == 1:
            self.position[(TOPIC, 1)] = 0
            return []
        return records


def test_a_stalled_partition_holds_others_only_for_hold_s():
    service = worker()
    service.flow = PartitionFlow(service.flow.margin_ns, hold_s=2.0)
    consumer = StuckConsumer({0: shifted_messages(6, 600), 1: shifted_messages(3, 600)})
    clock = [0.0]
    service.flow.reset(consumer, {tp: 0 for tp in consumer.logs}, clock[0])
    for _ in range(200):
        records = consumer.poll_batch()
        clock[0] += 0.1
        service.push(records)
        service.flow.update(consumer, service.tracked, clock[0])
        service.release()
        if clock[0] < 1.9:
            assert (TOPIC, 1) in service.flow.backlog  # the input is not idle
        if consumer.position[(TOPIC, 0)] == 6:
            break
    assert consumer.position[(TOPIC, 0)] == 6  # not stalled forever
    assert 2.0 <= clock[0] < 5.0  # held back for about hold_s
    assert (TOPIC, 1) not in service.flow.backlog
