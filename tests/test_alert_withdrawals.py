"""An alert emitted from an open window (an idle flush) that a later evaluation of its
window no longer finds, or suppresses, is withdrawn: emitted once more, same id, as the
next revision marked `cirtsa.alert.withdrawn` with the reason (correlation/alerts.py
`withdraw`), and every consumer takes it back.

Why: before, such an alert stood for good (docs/kafka.md "Idle input", the former
limit): the analyst worked a detection the whole window does not support and the KPIs
counted it. Exact cases need exact flows: the upload detector (a ratio: payload out >= 5x
payload in, >= 100 MB to one destination in an hour) on flows built by
tests/event_builders.py -- a 150 MB upload is an alert until a 100 MB download of the same
pair within the hour brings the ratio under 5. Sink tests on a real osmem-server.
"""

from __future__ import annotations

import copy
import threading

import pytest
from es_fixtures import (  # noqa: F401 - fixtures
    alerts_es_client,
    lifecycle_sink,
    osmem_process,
    stored_alert,
)
from event_builders import make_batch
from test_alert_revisions import _ListSink, _Producer
from test_services_idle import one_partition_config, worker

from correlation.alerts import (
    NOT_FOUND_CLOSED,
    NOT_FOUND_OPEN,
    SUPPRESSED,
    WITHDRAWN_STATUS,
    count_versions,
    is_revision,
    is_withdrawn,
    latest_versions,
    version_rank,
)
from correlation.engine import CorrelationEngine
from correlation.es_setup import ALERTS_ALIAS, CIRTSA_ALERT
from correlation.exfiltration import UploadDetector
from correlation.incidents import IncidentBuilder
from correlation.lifecycle import WITHDRAWN, LifecycleStore
from pipeline.commands.es import list_query
from pipeline.config import load_config

MB = 1_000_000
HOST, SERVER, OTHER = "10.0.0.5", "203.0.113.7", "198.51.100.9"


def flow(t: float, up: int, down: int, dst: str = SERVER):
    """One TCP flow of HOST to dst at t s (after event_builders.BASE_T, a whole hour)."""
    return make_batch("flow", [{"t": t, "src": HOST, "dst": dst, "dst_port": 443,
                                "transport": 6, "src_payload_bytes": up,
                                "dst_payload_bytes": down, "src_packets": 100,
                                "dst_packets": 100}])


def engine() -> CorrelationEngine:
    config = load_config()["correlation"]
    return CorrelationEngine(config, [UploadDetector(config["detectors"]["exfil_upload"])])


def run(steps) -> tuple[list[list[dict]], CorrelationEngine]:
    """Each step: batches to push, then an idle flush ("idle") or not; then the end of
    input (flush: every window closes). Returns the alerts of each step, then the end's."""
    e = engine()
    out = []
    for batches, idle in steps:
        got = [a for b in batches for a in e.push(b)]
        out.append(got + (e.evaluate_open() if idle else []))
    out.append(e.flush())
    return out, e


def alert_of(doc: dict) -> dict:
    return doc["cirtsa"]["alert"]


# --- engine -------------------------------------------------------------------------------

def test_an_alert_the_close_no_longer_finds_is_withdrawn_with_its_last_evidence():
    (opened, later, closed), e = run([([flow(100, 150 * MB, MB)], True),
                                      ([flow(200, MB, 100 * MB)], False)])
    [first] = opened
    assert alert_of(first)["open_window"] is True and later == []
    [withdrawal] = closed
    assert withdrawal["event"]["id"] == first["event"]["id"]
    assert is_withdrawn(withdrawal) and is_revision(withdrawal)
    assert alert_of(withdrawal)["withdrawn_reason"] == NOT_FOUND_CLOSED
    assert alert_of(withdrawal)["revision"] == 1 and "open_window" not in alert_of(withdrawal)
    assert alert_of(withdrawal)["status"] == WITHDRAWN_STATUS == WITHDRAWN
    # what is taken back: the last version's evidence, times and rule
    for part in ("event", "rule", "source", "destination", "threat"):
        assert withdrawal[part] == first[part]
    assert withdrawal["cirtsa"]["evidence"] == first["cirtsa"]["evidence"]
    assert withdrawal["message"].startswith(f"[withdrawn: {NOT_FOUND_CLOSED}] ")
    assert version_rank(withdrawal) > version_rank(first)
    assert latest_versions([first, withdrawal]) == [withdrawal]
    # KPIs: the alert no longer stands (a run without the pause emits nothing)
    assert (e.stats["alerts_out"], e.stats["alerts_withdrawn"]) == (0, 1)
    assert e.stats.get("alerts_revised", 0) == 0
    reference, _ = run([([flow(100, 150 * MB, MB), flow(200, MB, 100 * MB)], False)])
    assert reference == [[], []]
    for field, kind in (("withdrawn", "boolean"), ("withdrawn_reason", "keyword")):
        assert CIRTSA_ALERT[f"cirtsa.alert.{field}"] == kind


def test_an_alert_its_close_still_finds_is_revised_or_left_as_it_is():
    # more upload: a revision (as before withdrawals)
    (opened, _, closed), e = run([([flow(100, 150 * MB, MB)], True),
                                  ([flow(200, 50 * MB, 0)], False)])
    [revision] = closed
    assert revision["event"]["id"] == opened[0]["event"]["id"]
    assert not is_withdrawn(revision) and "withdrawn" not in alert_of(revision)
    assert revision["cirtsa"]["evidence"]["bytes_out"] == 200 * MB
    assert e.stats.get("alerts_withdrawn", 0) == 0 and e.stats["alerts_out"] == 1
    # nothing more: the close's document is the one emitted, nothing again
    (opened, closed), e = run([([flow(100, 150 * MB, MB)], True)])
    assert len(opened) == 1 and closed == []
    assert e.stats.get("alerts_withdrawn", 0) == 0 and e.stats["alerts_out"] == 1


def test_a_later_idle_flush_withdraws_and_one_finding_it_again_reinstates():
    (opened, gone, back, closed), e = run([([flow(100, 150 * MB, MB)], True),
                                           ([flow(200, MB, 100 * MB)], True),
                                           ([flow(300, 600 * MB, 0)], True)])
    [first], [withdrawal], [again] = opened, gone, back
    assert alert_of(withdrawal)["withdrawn_reason"] == NOT_FOUND_OPEN
    assert alert_of(withdrawal)["open_window"] is True and alert_of(withdrawal)["revision"] == 1
    # found again: the next revision says it stands again (readers, sinks, KPIs)
    assert alert_of(again)["withdrawn"] is False and alert_of(again)["revision"] == 2
    assert "status" not in alert_of(again)
    assert again["event"]["id"] == withdrawal["event"]["id"] == first["event"]["id"]
    assert version_rank(first) < version_rank(withdrawal) < version_rank(again)
    assert closed == []  # the close finds what the last idle flush emitted
    assert (e.stats["alerts_out"], e.stats["alerts_withdrawn"], e.stats["alerts_revised"]) \
        == (1, 1, 1)
    assert latest_versions(opened + gone + back + closed) == [again]


def test_a_withdrawal_at_an_idle_flush_is_not_repeated_at_the_close():
    (opened, gone, closed), e = run([([flow(100, 150 * MB, MB)], True),
                                     ([flow(200, MB, 100 * MB)], True)])
    assert len(opened) == 1 and is_withdrawn(gone[0]) and closed == []
    assert (e.stats["alerts_out"], e.stats["alerts_withdrawn"]) == (0, 1)


def test_an_alert_a_late_earlier_window_suppresses_at_the_close_is_withdrawn():
    """The idle flush alerts on the upload at 5000 s; an earlier upload (another sensor's
    flows, late but within the allowed lateness) makes an earlier window the alert of the
    pair, and the close suppresses the later one (one alert per 6 h): it is withdrawn."""
    late = [flow(1000, 150 * MB, MB)]
    (opened, pushed, closed), e = run([([flow(5000, 150 * MB, MB)], True), (late, False)])
    [first] = opened
    withdrawn = [a for a in pushed + closed if is_withdrawn(a)]
    standing = [a for a in pushed + closed if not is_withdrawn(a)]
    assert [a["event"]["id"] for a in withdrawn] == [first["event"]["id"]]
    assert alert_of(withdrawn[0])["withdrawn_reason"] == SUPPRESSED
    reference, _ = run([([flow(5000, 150 * MB, MB)] + late, False)])
    assert standing == [a for step in reference for a in step] and len(standing) == 1
    assert (e.stats["alerts_out"], e.stats["alerts_withdrawn"]) == (1, 1)


def test_the_worker_counts_a_withdrawal_out_of_its_kpis():
    (opened, _, closed), _ = run([([flow(100, 150 * MB, MB)], True),
                                  ([flow(200, MB, 100 * MB)], False)])
    service, sink, producer = worker(one_partition_config()), _ListSink(), _Producer()
    service.sinks = [sink]
    for step in (opened, closed):
        assert service._deliver(step, producer, threading.Event())
    assert (service.stats["alerts_out"], service.stats["alerts_withdrawn"]) == (0, 1)
    assert latest_versions(sink.docs) == closed
    stats: dict = {}
    count_versions(opened + closed, stats)
    assert stats == {"alerts_out": 0, "alerts_withdrawn": 1}


# --- Elasticsearch sink --------------------------------------------------------------------

@pytest.fixture(scope="module")
def versions():
    """(an upload alert from an idle flush, its withdrawal at the close, a version found
    again after a withdrawal at an idle flush)."""
    (opened, _, closed), _ = run([([flow(100, 150 * MB, MB)], True),
                                  ([flow(200, MB, 100 * MB)], False)])
    (_, _, back, _), _ = run([([flow(100, 150 * MB, MB)], True),
                              ([flow(200, MB, 100 * MB)], True),
                              ([flow(300, 600 * MB, 0)], True)])
    return opened[0], closed[0], back[0]


@pytest.fixture
def es(alerts_es):
    return alerts_es


def listed(client, status: str) -> list[str]:
    """Ids `cirt-sa alerts list --status` shows."""
    hits = client.search(index=ALERTS_ALIAS, query=list_query("alert", status))["hits"]
    return [h["_id"] for h in hits["hits"]]


def test_a_withdrawal_replaces_an_untouched_alert_and_leaves_the_new_view(es, versions):
    first, withdrawal, _ = versions
    doc_id = first["event"]["id"]
    sink = lifecycle_sink(es)
    sink.write([first])
    assert listed(es, "new") == [doc_id]
    result = sink.write([withdrawal])
    assert (result.created, result.updated, result.duplicates) == (0, 1, 0)
    assert stored_alert(es, doc_id) == withdrawal  # its last evidence, marked, status withdrawn
    assert listed(es, "new") == [] and listed(es, WITHDRAWN) == [doc_id]
    # an older version after the withdrawal changes nothing; nor does the withdrawal again
    for late in (first, withdrawal):
        again = sink.write([late])
        assert (again.updated, again.duplicates) == (0, 1)
        assert stored_alert(es, doc_id) == withdrawal
    # an analyst who disagrees takes it as from new
    store = LifecycleStore(es, clock=lambda: "2026-11-30T12:00:00.000000Z")
    state = store.set_status(doc_id, "acknowledged", "carol", note="real exfil")
    assert state["history"][-1]["from"] == WITHDRAWN and state["status"] == "acknowledged"


def test_a_withdrawal_keeps_the_analysts_status_and_history(es, versions):
    first, withdrawal, _ = versions
    doc_id = first["event"]["id"]
    sink = lifecycle_sink(es)
    sink.write([first])
    store = LifecycleStore(es, clock=lambda: "2026-11-30T12:00:00.000000Z")
    store.set_status(doc_id, "acknowledged", "alice", note="looking")
    assert sink.write([withdrawal]).updated == 1
    doc = stored_alert(es, doc_id)
    assert doc["cirtsa"]["alert"]["status"] == "acknowledged"  # never the analyst's decision
    assert [h["analyst"] for h in doc["cirtsa"]["alert"]["history"]] == ["alice"]
    assert doc["cirtsa"]["alert"]["withdrawn"] is True  # what the correlation says, visible
    assert doc["cirtsa"]["alert"]["withdrawn_reason"] == NOT_FOUND_CLOSED
    assert doc["cirtsa"]["evidence"] == withdrawal["cirtsa"]["evidence"]
    assert sink.write([first]).duplicates == 1 and stored_alert(es, doc_id) == doc


def test_a_withdrawal_whose_alert_never_arrived_is_created_withdrawn(es, versions):
    _, withdrawal, _ = versions
    assert lifecycle_sink(es).write([withdrawal]).created == 1
    assert stored_alert(es, withdrawal["event"]["id"]) == withdrawal
    assert listed(es, "new") == []


def test_an_alert_found_again_after_its_withdrawal_is_new_again(es, versions):
    first, _, again = versions
    doc_id = first["event"]["id"]
    withdrawal = copy.deepcopy(again)  # (the idle flush's withdrawal: revision 1)
    sink = lifecycle_sink(es)
    gone = {**first, "cirtsa": {**first["cirtsa"], "alert": {
        **alert_of(first), "revision": 1, "withdrawn": True,
        "withdrawn_reason": NOT_FOUND_OPEN, "status": WITHDRAWN}}}
    sink.write([first, gone])
    assert listed(es, "new") == []
    assert sink.write([withdrawal]).updated == 1
    doc = stored_alert(es, doc_id)
    assert "status" not in doc["cirtsa"]["alert"] and doc["cirtsa"]["alert"]["withdrawn"] is False
    assert listed(es, "new") == [doc_id]


# --- incident builder ----------------------------------------------------------------------

def test_the_incident_builder_drops_a_withdrawn_alert_and_an_emptied_incident():
    """Two uploads of one host (one incident: same attacker); the one to SERVER is taken
    back at the close, then the other one is withdrawn too."""
    (opened, _, closed), _ = run([([flow(50, 150 * MB, MB, OTHER), flow(100, 150 * MB, MB)],
                                   True), ([flow(200, MB, 100 * MB)], False)])
    assert len(opened) == 2 and len(closed) == 1 and is_withdrawn(closed[0])
    stays = next(a for a in opened if a["destination"]["ip"] == OTHER)
    builder = IncidentBuilder()
    [incident] = builder.add(opened)
    assert incident["cirtsa"]["incident"]["alert_count"] == 2
    [shrunk] = builder.add(closed)
    assert shrunk["event"]["id"] == incident["event"]["id"]  # same first member: same id
    assert shrunk["cirtsa"]["incident"]["alert_ids"] == [stays["event"]["id"]]
    assert shrunk["cirtsa"]["incident"]["victims"] == [OTHER]
    assert (builder.stats["alerts_in"], builder.stats["withdrawn"]) == (1, 1)
    # the withdrawn alert's older version, late: nothing
    assert builder.add([a for a in opened if a is not stays]) == []
    assert builder.stats["alerts_in"] == 1
    # its last alert withdrawn: the incident's last document, emptied, and forgotten
    last = {**stays, "cirtsa": {**stays["cirtsa"], "alert": {
        **alert_of(stays), "revision": 1, "withdrawn": True,
        "withdrawn_reason": NOT_FOUND_CLOSED, "status": WITHDRAWN}}}
    [emptied] = builder.add([last])
    assert emptied["event"]["id"] == incident["event"]["id"]
    assert emptied["cirtsa"]["incident"]["alert_count"] == 0
    assert emptied["cirtsa"]["incident"]["alert_ids"] == []
    assert "status" not in emptied["cirtsa"]["incident"]  # the analyst's, if any, stays
    assert emptied["message"].startswith("[withdrawn: ")
    assert builder.incidents == [] and builder.stats["alerts_in"] == 0
    # a withdrawal of an alert the builder never had: nothing
    assert builder.add(closed) == []


def test_an_incident_whose_first_alert_is_withdrawn_takes_its_next_members_identity():
    """The withdrawn alert was the incident's first member (its id's base): the incident
    gets its new first member's id, and the old id is closed as merged into it."""
    (opened, _, closed), _ = run([([flow(100, 150 * MB, MB), flow(150, 150 * MB, MB, OTHER)],
                                   True), ([flow(200, MB, 100 * MB)], False)])
    assert len(opened) == 2 and len(closed) == 1 and is_withdrawn(closed[0])
    builder = IncidentBuilder()
    [incident] = builder.add(opened)
    merged, now = builder.add(closed)
    assert merged["event"]["id"] == incident["event"]["id"] != now["event"]["id"]
    assert merged["cirtsa"]["incident"]["status"] == "merged"
    assert merged["cirtsa"]["incident"]["merged_into"] == now["event"]["id"]
    assert now["cirtsa"]["incident"]["victims"] == [OTHER]
    assert now["cirtsa"]["incident"]["alert_count"] == 1
