"""Alerts emitted from open windows (an idle flush, CorrelationEngine.evaluate_open) end up
describing their whole window: the close emits a revision (same id) when more events
changed the document, and every consumer keeps the newest version.

Why: the idle flush judges the windows still open on the events held so far. Before, the
close dropped those alerts (same id: not emitted twice), and Elasticsearch kept the first
document (op_type create), so the alert an analyst saw kept the counts, host lists and
times of the open evaluation forever (here: "scanned 5 ports" of a 10-port scan).

Engine tests on the simplescan capture (MANIFEST: port_scan/simplescan__port_scan.pcap)
cut in mid-scan; sink tests on a real osmem-server; incident builder tests on the same
alert documents.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
from conftest import assert_ecs
from es_fixtures import (  # noqa: F401 - fixtures
    alerts_es_client,
    lifecycle_sink,
    osmem_process,
    stored_alert,
)
from test_services_idle import (
    fused_events,
    one_partition_config,
    records,
    reference_alerts,
    split_at,
    worker,
)

from correlation.alerts import is_revision, latest_versions, version_rank, without_version_marks
from correlation.engine import CorrelationEngine
from correlation.es_setup import ALERTS_ALIAS, CIRTSA_ALERT
from correlation.incidents import IncidentBuilder
from correlation.lifecycle import LifecycleStore

SCAN = "cirtsa.scan.vertical"


def _ns(iso: str) -> int:
    return int(np.datetime64(iso.rstrip("Z"), "ns").astype(np.int64))


@pytest.fixture(scope="module")
def scan_run():
    """(config, events, reference alerts, the scan's reference alert)."""
    config = one_partition_config()
    events = fused_events(config)
    expected = reference_alerts(config, events)
    scan = [a for a in expected if a["rule"]["id"] == SCAN]
    assert len(scan) == 1 and scan[0]["cirtsa"]["evidence"]["distinct_ports"] == 10
    return config, events, expected, scan[0]


def cut(events, alert: dict, frac: float):
    """The events before and from `frac` of the alert's evidence span."""
    start, end = _ns(alert["event"]["start"]), _ns(alert["event"]["end"])
    return split_at(events, int(start + frac * (end - start)))


def run(config, parts, flush_between=True) -> tuple[list[list[dict]], CorrelationEngine]:
    """Push each part, an idle evaluation after each but the last; then the end of input.
    Returns the alerts emitted at each step."""
    engine = CorrelationEngine(config["correlation"])
    steps = []
    for i, part in enumerate(parts):
        got = [a for batch in part for a in engine.push(batch)]
        if flush_between and i < len(parts) - 1:
            got += engine.evaluate_open()
        steps.append(got)
    steps.append(engine.flush())
    return steps, engine


def of_id(alerts: list[dict], doc_id: str) -> list[dict]:
    return [a for a in alerts if a["event"]["id"] == doc_id]


# --- engine -------------------------------------------------------------------------------

def test_a_window_judged_open_is_revised_at_its_close_with_the_whole_evidence(scan_run):
    config, events, expected, scan = scan_run
    before, after = cut(events, scan, 0.5)
    (first, rest, end), engine = run(config, [before, after])
    scan_id = scan["event"]["id"]
    [partial] = of_id(first, scan_id)  # emitted at the idle flush, on half the scan
    assert partial["cirtsa"]["alert"]["open_window"] is True
    assert "revision" not in partial["cirtsa"]["alert"]
    assert partial["cirtsa"]["evidence"]["distinct_ports"] < 10
    [revision] = of_id(rest + end, scan_id)  # the close: once more, the whole window
    assert revision["cirtsa"]["alert"]["revision"] == 1
    assert "open_window" not in revision["cirtsa"]["alert"]
    assert is_revision(revision) and version_rank(revision) > version_rank(partial)
    assert without_version_marks(revision) == scan  # what a run without the pause emits
    assert revision["event"]["end"] == scan["event"]["end"] != partial["event"]["end"]
    # KPIs: a revision is not a second alert
    assert engine.stats["alerts_out"] == len(expected)
    assert engine.stats["alerts_revised"] == 1
    every = first + rest + end
    assert sorted(map(without_version_marks, latest_versions(every)),
                  key=lambda a: a["event"]["id"]) == sorted(expected,
                                                            key=lambda a: a["event"]["id"])


def test_an_alert_its_close_does_not_change_is_not_emitted_again(scan_run):
    config, events, expected, _ = scan_run
    # every event pushed, then an idle flush: the open windows' documents are final
    (first, nothing, end), engine = run(config, [events, []])
    assert nothing == [] and first and all(not is_revision(a) for a in first)
    assert not {a["event"]["id"] for a in end} & {a["event"]["id"] for a in first}
    assert engine.stats.get("alerts_revised", 0) == 0
    assert sorted(a["event"]["id"] for a in first + end) == sorted(
        a["event"]["id"] for a in expected)


def test_a_second_idle_flush_with_more_events_revises_and_the_close_again(scan_run):
    config, events, _, scan = scan_run
    early, rest = cut(events, scan, 0.5)
    middle, late = split_at(rest, int(_ns(scan["event"]["start"]) + 0.8 * (
        _ns(scan["event"]["end"]) - _ns(scan["event"]["start"]))))
    steps, engine = run(config, [early, middle, late])
    versions = of_id([a for step in steps for a in step], scan["event"]["id"])
    ports = [v["cirtsa"]["evidence"]["distinct_ports"] for v in versions]
    marks = [(v["cirtsa"]["alert"].get("open_window", False),
              v["cirtsa"]["alert"].get("revision", 0)) for v in versions]
    assert marks == [(True, 0), (True, 1), (False, 2)]
    assert ports[0] < ports[1] < ports[2] == 10
    assert [version_rank(v) for v in versions] == sorted(version_rank(v) for v in versions)
    assert without_version_marks(versions[-1]) == scan
    assert engine.stats["alerts_revised"] == 2
    for v in versions:  # the marks are mapped fields of the alert index
        assert_ecs(v)
    assert CIRTSA_ALERT["cirtsa.alert.open_window"] == "boolean"
    assert CIRTSA_ALERT["cirtsa.alert.revision"] == "long"


def test_an_idle_flush_without_new_events_repeats_no_version(scan_run):
    config, events, _, scan = scan_run
    before, _ = cut(events, scan, 0.5)
    engine = CorrelationEngine(config["correlation"])
    for batch in before:
        engine.push(batch)
    assert of_id(engine.evaluate_open(), scan["event"]["id"])
    assert engine.evaluate_open() == []


class _Producer:
    """sa.alerts as the worker's _deliver uses it (send, flush)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((key, value))

    def flush(self, timeout_s: float) -> bool:
        return True


class _ListSink:
    def __init__(self) -> None:
        self.docs: list[dict] = []

    def write(self, alerts: list[dict]) -> None:
        self.docs += alerts


def test_the_worker_delivers_the_revision_and_counts_it_apart(scan_run):
    """A pause in mid-scan: the idle flush delivers the scan judged on half its window,
    the flush at the end of the input its revision (same key on sa.alerts); the metrics
    count alerts, not versions."""
    config, events, expected, scan = scan_run
    before, after = cut(events, scan, 0.5)
    service, sink, producer = worker(config), _ListSink(), _Producer()
    service.sinks = [sink]
    for step in (service.push(records(before)), service.flush_engines(),
                 service.push(records(after, len(before))), service.flush_engines()):
        assert service._deliver(step, producer, threading.Event())
    versions = of_id(sink.docs, scan["event"]["id"])
    assert len(versions) == 2 and is_revision(versions[1])
    assert [k for k, _ in producer.sent].count(scan["event"]["id"].encode()) == 2
    # (the input ended: the windows are still open, judged on every event)
    assert versions[1]["cirtsa"]["alert"] == {**scan["cirtsa"]["alert"], "open_window": True,
                                              "revision": 1}
    assert ({a["event"]["id"]: without_version_marks(a) for a in latest_versions(sink.docs)}
            == {a["event"]["id"]: a for a in expected})
    assert service.stats["alerts_out"] == len(expected)
    assert service.stats["alerts_revised"] == 1


# --- Elasticsearch sink --------------------------------------------------------------------

@pytest.fixture
def versions(scan_run):
    """(the scan alert judged on half its window, its revision at the close)."""
    config, events, _, scan = scan_run
    before, after = cut(events, scan, 0.5)
    steps, _ = run(config, [before, after])
    partial, revision = of_id([a for step in steps for a in step], scan["event"]["id"])
    return partial, revision


@pytest.fixture
def es(alerts_es):
    return alerts_es


def count(client) -> int:
    return client.count(index=ALERTS_ALIAS)["count"]


def test_a_revision_replaces_the_detection_fields_and_keeps_the_analysts_triage(es, versions):
    partial, revision = versions
    sink = lifecycle_sink(es)
    assert sink.write([partial]).created == 1
    store = LifecycleStore(es, clock=lambda: "2026-11-30T12:00:00.000000Z")
    store.set_status(partial["event"]["id"], "acknowledged", "alice", note="looking")
    result = sink.write([revision])
    assert (result.created, result.updated, result.duplicates) == (0, 1, 0)
    doc = stored_alert(es, revision["event"]["id"])
    assert doc["cirtsa"]["evidence"] == revision["cirtsa"]["evidence"]  # whole window
    assert doc["message"] == revision["message"] and doc["event"] == revision["event"]
    assert "open_window" not in doc["cirtsa"]["alert"]
    assert doc["cirtsa"]["alert"]["revision"] == 1
    assert doc["cirtsa"]["alert"]["status"] == "acknowledged"  # the triage stays
    assert [h["analyst"] for h in doc["cirtsa"]["alert"]["history"]] == ["alice"]
    assert count(es) == 1
    # delivered again (a consumer's re-delivery): nothing changes
    again = sink.write([revision])
    assert (again.updated, again.duplicates) == (0, 1)
    assert stored_alert(es, revision["event"]["id"]) == doc


def test_a_revision_whose_first_version_never_arrived_is_created(es, versions):
    _, revision = versions
    result = lifecycle_sink(es).write([revision])
    assert (result.created, result.updated) == (1, 0)
    assert stored_alert(es, revision["event"]["id"]) == revision


def test_an_older_version_after_a_newer_one_changes_nothing(es, versions):
    partial, revision = versions
    sink = lifecycle_sink(es)
    sink.write([revision])
    result = sink.write([partial])  # e.g. delivered late after an outage
    assert (result.created, result.updated, result.duplicates) == (0, 0, 1)
    assert stored_alert(es, revision["event"]["id"]) == revision
    # both in one batch (ES was down through both): the newer is stored, in either order
    for batch in ([partial, revision], [revision, partial]):
        sink.client.delete(index=ALERTS_ALIAS, id=revision["event"]["id"], refresh=True)
        both = sink.write(batch)
        assert (both.created, both.duplicates) == (1, 1)
        assert stored_alert(es, revision["event"]["id"]) == revision


def test_a_closed_window_document_replaces_one_judged_open(es, versions):
    """A takeover: the new owner never emitted the open version, so its close emits the
    alert without a revision mark; it still replaces the stored open-window version."""
    partial, revision = versions
    sink = lifecycle_sink(es)
    sink.write([partial])
    final = without_version_marks(revision)
    result = sink.write([final])
    assert (result.updated, result.duplicates) == (1, 0)
    assert stored_alert(es, final["event"]["id"]) == final
    assert sink.write([final]).duplicates == 1  # and stays idempotent


def test_a_revision_racing_an_analyst_reads_again_and_keeps_the_change(es, versions,
                                                                        monkeypatch):
    """The analyst's status change lands between the sink's read and its write: the
    conditional write is refused (409), the sink reads again and keeps the change."""
    partial, revision = versions
    sink = lifecycle_sink(es)
    sink.write([partial])
    store = LifecycleStore(es, clock=lambda: "2026-11-30T12:00:00.000000Z")
    real_mget = sink._mget
    reads = []

    def mget_then_analyst(*args, **kwargs):
        found = real_mget(*args, **kwargs)
        if not reads:
            store.set_status(partial["event"]["id"], "acknowledged", "bob")
        reads.append(copy.deepcopy(found))
        return found

    monkeypatch.setattr(sink, "_mget", mget_then_analyst)
    result = sink.write([revision])
    assert len(reads) == 2 and result.updated == 1
    doc = stored_alert(es, revision["event"]["id"])
    assert doc["cirtsa"]["alert"]["status"] == "acknowledged"
    assert doc["cirtsa"]["evidence"] == revision["cirtsa"]["evidence"]


def test_plain_duplicates_are_still_duplicates(es, versions):
    partial, _ = versions
    final = without_version_marks(partial)
    sink = lifecycle_sink(es)
    sink.write([final])
    result = sink.write([final, final])
    assert (result.created, result.updated, result.duplicates) == (0, 0, 2)
    assert count(es) == 1


# --- incident builder ------------------------------------------------------------------------

def test_the_incident_builder_updates_a_revised_alert_instead_of_adding_it(versions):
    partial, revision = versions
    builder = IncidentBuilder()
    [first] = builder.add([partial])
    [revised] = builder.add([revision])
    assert revised["event"]["id"] == first["event"]["id"]
    assert revised["cirtsa"]["incident"]["alert_count"] == 1
    assert revised["event"]["end"] == revision["event"]["end"] != first["event"]["end"]
    assert builder.add([partial]) == []  # the older version, late: nothing changes
    assert builder.add([revision]) == []  # the same version again: nothing changes
    assert builder.stats["alerts_in"] == 1 and builder.stats["revised"] == 1
    assert builder.incidents[0]["event"]["end"] == revision["event"]["end"]
