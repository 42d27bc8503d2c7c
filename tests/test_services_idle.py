"""The correlation worker's idle flush when the input pauses in mid-window and resumes.

A pause longer than `idle_flush_s` (a sensor reconnecting, a rebalance after a worker was
killed, a loaded machine) is not the end of the input. The flush used to close every open
window: the events after the pause then came late to closed windows (one worker), or the
flush committed the windows' messages so the next owner rebuilt them from the events after
the pause only (a takeover, late_dropped 0): an alert split by the pause never came. The
flaky e2e takeover test (tests/test_kafka_e2e.py) lost alerts this way. No broker, no
clock: the pause is a flush_engines() call between two pushes.
"""

from __future__ import annotations

import io

import numpy as np
from conftest import shared_pcap

from correlation.alerts import is_revision, latest_versions, without_version_marks
from correlation.engine import CorrelationEngine
from pipeline.config import load_config
from pipeline.kafka_transport import Record
from pipeline.schema import EventBatch
from pipeline.services import CorrelationService, FusionTransform, JsonLog, sensor_messages
from pipeline.wire import decode, encode

CAPTURES = ["port_scan/simplescan__port_scan.pcap", "brute_force/zeek__sshguess.pcap"]
BRUTE_FORCE = "cirtsa.brute_force.sessions"


def one_partition_config() -> dict:
    config = load_config()
    config["services"]["topics"]["sa.events"] = 1  # one engine, every detector
    return config


def fused_events(config: dict) -> list[EventBatch]:
    fusion = FusionTransform(config)
    return [b for m in sensor_messages([shared_pcap(c) for c in CAPTURES], config)
            for b in fusion(decode(m))[0]]


def reference_alerts(config: dict, events: list[EventBatch]) -> list[dict]:
    """One engine, no pause: what the worker must emit."""
    engine = CorrelationEngine(config["correlation"])
    alerts = [a for batch in events for a in engine.push(batch)]
    return alerts + engine.flush()


def split_at(events: list[EventBatch], t_ns: int) -> tuple[list[EventBatch], list[EventBatch]]:
    """The events before t_ns and from t_ns on, each in the original batch order."""
    def part(batch: EventBatch, keep: np.ndarray) -> EventBatch:
        return EventBatch(batch.kind, {k: v[keep] for k, v in batch.columns.items()})

    before = [part(b, t) for b in events if (t := b.columns["timestamp"] < t_ns).any()]
    after = [part(b, t) for b in events if (t := b.columns["timestamp"] >= t_ns).any()]
    return before, after


def mid_window_pause(config: dict) -> tuple[list[dict], list[EventBatch], list[EventBatch]]:
    """(reference alerts, events before the pause, events after it): the pause falls in the
    middle of the brute-force alert's events, so neither part alone reaches its threshold."""
    events = fused_events(config)
    expected = reference_alerts(config, events)
    brute = [a for a in expected if a["rule"]["id"] == BRUTE_FORCE]
    assert len(brute) == 1, "the capture must raise one brute-force alert"
    before, after = split_at(events, int(np.mean([_ns(brute[0]["event"]["start"]),
                                                  _ns(brute[0]["event"]["end"])])))
    assert before and after
    for part in (before, after):  # each half alone does not alert: the pause matters
        assert BRUTE_FORCE not in {a["rule"]["id"] for a in reference_alerts(config, part)}
    return expected, before, after


def _ns(iso: str) -> int:
    return int(np.datetime64(iso.rstrip("Z"), "ns").astype(np.int64))


def records(batches: list[EventBatch], first_offset: int = 0) -> list[Record]:
    return [Record("sa.events", 0, first_offset + i, b"k", encode(b), 0)
            for i, b in enumerate(batches)]


def worker(config: dict) -> CorrelationService:
    return CorrelationService(None, config, log=JsonLog("correlation", io.StringIO()))


def _id(alert: dict) -> str:
    return alert["event"]["id"]


def ids(alerts: list[dict]) -> list[str]:
    return sorted(a["event"]["id"] for a in alerts)


def test_an_input_pause_in_mid_window_loses_no_alert_and_repeats_none():
    config = one_partition_config()
    expected, before, after = mid_window_pause(config)
    service = worker(config)
    got = service.push(records(before))
    got += service.flush_engines()  # the input paused longer than idle_flush_s
    got += service.push(records(after, len(before)))
    got += service.flush_engines()  # the end of the input
    assert ids(got) == ids(expected)  # each alert exactly once
    engine = service.engines["sa.events"]
    assert engine.stats["late_events"] == 0  # the pause made nothing late


def test_a_takeover_after_an_idle_flush_replays_the_windows_it_flushed():
    """Worker A flushes on idle input, commits, and is killed; B replays from A's commit."""
    config = one_partition_config()
    expected, before, after = mid_window_pause(config)
    every = records(before) + records(after, len(before))
    a = worker(config)
    got = a.push(every[:len(before)]) + a.flush_engines()
    commit = a.commit_positions()[("sa.events", 0)]
    b = worker(config)
    got += b.push(every[commit:]) + b.flush_engines()
    # every alert comes; one emitted by A's idle flush may come again from B (same id:
    # the sinks dedupe by event.id, DESIGN.md section 3)
    assert set(ids(got)) == set(ids(expected))
    assert commit == 0  # the flushed windows stayed open: their messages were needed


def test_idle_flushes_without_new_input_emit_nothing_again():
    config = one_partition_config()
    expected, before, after = mid_window_pause(config)
    service = worker(config)
    got = service.push(records(before + after))
    first = service.flush_engines()
    assert not service.unflushed  # the loop does not flush again until new events come
    assert service.flush_engines() == []
    assert ids(got + first) == ids(expected)


def test_evaluating_open_windows_after_every_batch_changes_no_alert():
    """CorrelationEngine.evaluate_open after each push: the union of what it and the closes
    emit is the reference, each alert once; the windows close as without it."""
    config = one_partition_config()
    events = fused_events(config)
    expected = reference_alerts(config, events)
    engine = CorrelationEngine(config["correlation"])
    got = []
    for batch in events:
        got += engine.push(batch)
        got += engine.evaluate_open()
    got += engine.flush()
    # each alert once, and revisions of it (same id) where more events changed it: the
    # last version of each is the reference document (tests/test_alert_revisions.py)
    assert ids([a for a in got if not is_revision(a)]) == ids(expected)
    assert (sorted(map(without_version_marks, latest_versions(got)), key=_id)
            == sorted(expected, key=_id))
    assert engine.stats["alerts_out"] == len(expected)
    plain = CorrelationEngine(config["correlation"])
    for batch in events:
        plain.push(batch)
    plain.flush()
    assert engine.stats["windows_closed"] == plain.stats["windows_closed"]
    assert engine.stats["late_events"] == plain.stats["late_events"] == 0
