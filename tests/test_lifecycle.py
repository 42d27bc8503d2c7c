"""correlation/lifecycle.py: the allowed status transitions (pure), and status changes in a
real osmem-server with optimistic concurrency (two analysts at once never clobber)."""

from __future__ import annotations

import itertools

import pytest
from es_fixtures import es_client, make_alerts, make_incident, osmem_process  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation.es_setup import ALERTS_ALIAS, INCIDENTS_ALIAS, setup
from correlation.es_sink import ElasticsearchSink
from correlation.lifecycle import (
    ACKNOWLEDGED,
    ALERT,
    CONTAINED,
    FALSE_POSITIVE,
    INCIDENT,
    NEW,
    REPELLED,
    STATUSES,
    TRANSITIONS,
    InvalidTransition,
    LifecycleStore,
    NotFound,
    current_status,
    kind_of,
    transition,
)


def apply(doc: dict, kind: str, status: str, analyst: str = "alice", note: str | None = None,
          at: str = "2024-03-01T09:00:00.000Z") -> dict:
    """The document after a transition (the partial update merged as ES merges objects)."""
    update = transition(doc, kind, status, analyst, note, at=at)["cirtsa"][kind]
    merged = {**(doc.get("cirtsa", {}).get(kind) or {}), **update}
    return {**doc, "cirtsa": {**doc.get("cirtsa", {}), kind: merged}}


# --- pure transitions -----------------------------------------------------------------------


def test_cirt_workflow_of_an_incident():
    doc = make_incident(1)
    doc["cirtsa"]["incident"].pop("status")
    assert current_status(doc, INCIDENT) == NEW
    doc = apply(doc, INCIDENT, ACKNOWLEDGED, "alice", at="2024-03-01T09:00:00.000Z")
    doc = apply(doc, INCIDENT, CONTAINED, "bob", "source blocked at border",
                at="2024-03-01T09:30:00.000Z")
    doc = apply(doc, INCIDENT, REPELLED, "bob", at="2024-03-01T11:00:00.000Z")
    state = doc["cirtsa"]["incident"]
    assert state["status"] == REPELLED
    assert [(h["from"], h["status"], h["analyst"]) for h in state["history"]] == [
        (NEW, ACKNOWLEDGED, "alice"), (ACKNOWLEDGED, CONTAINED, "bob"),
        (CONTAINED, REPELLED, "bob")]
    assert state["history"][1]["note"] == "source blocked at border"
    assert state["acknowledged_at"] == "2024-03-01T09:00:00.000Z"
    assert state["contained_at"] == "2024-03-01T09:30:00.000Z"
    assert state["repelled_at"] == state["closed_at"] == "2024-03-01T11:00:00.000Z"
    assert state["status_changed"] == "2024-03-01T11:00:00.000Z"


def test_the_transition_table_as_a_cirt_uses_it():
    allowed = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert allowed == {
        (NEW, ACKNOWLEDGED), (NEW, FALSE_POSITIVE),
        (ACKNOWLEDGED, CONTAINED), (ACKNOWLEDGED, REPELLED), (ACKNOWLEDGED, FALSE_POSITIVE),
        (CONTAINED, REPELLED),
        (FALSE_POSITIVE, ACKNOWLEDGED)}
    # Every pair not in the table is refused with a message naming both ends.
    for current, wanted in itertools.product(STATUSES, STATUSES):
        doc = {"cirtsa": {"alert": {"status": current}}}
        if (current, wanted) in allowed:
            assert transition(doc, ALERT, wanted, "alice")["cirtsa"]["alert"]["status"] == wanted
            continue
        with pytest.raises(InvalidTransition) as err:
            transition(doc, ALERT, wanted, "alice", doc_id="abc")
        message = str(err.value)
        assert f"from {current!r} to {wanted!r}" in message and "alert abc" in message
        assert "allowed from" in message


def test_refusal_names_who_set_the_current_status():
    doc = apply({}, ALERT, ACKNOWLEDGED, "carol", at="2024-03-01T10:00:00.000Z")
    with pytest.raises(InvalidTransition, match="set by carol at 2024-03-01T10:00:00.000Z"):
        transition(doc, ALERT, ACKNOWLEDGED, "dave")
    done = apply(doc, ALERT, REPELLED)
    with pytest.raises(InvalidTransition, match="none \\(final status\\)"):
        transition(done, ALERT, ACKNOWLEDGED, "dave")


@pytest.mark.parametrize("status,analyst,match", [
    ("closed", "alice", "unknown status 'closed'"),
    (ACKNOWLEDGED, "", "analyst name is required"),
    (ACKNOWLEDGED, "   ", "analyst name is required"),
])
def test_bad_requests_are_refused(status, analyst, match):
    with pytest.raises(InvalidTransition, match=match):
        transition({}, ALERT, status, analyst)


def test_reopened_false_positive_keeps_its_first_acknowledgement():
    doc = apply({}, INCIDENT, ACKNOWLEDGED, at="2024-03-01T09:00:00.000Z")
    doc = apply(doc, INCIDENT, FALSE_POSITIVE, at="2024-03-01T09:10:00.000Z")
    assert doc["cirtsa"]["incident"]["closed_at"] == "2024-03-01T09:10:00.000Z"
    doc = apply(doc, INCIDENT, ACKNOWLEDGED, "bob", "same source seen again",
                at="2024-03-01T12:00:00.000Z")
    state = doc["cirtsa"]["incident"]
    assert state["closed_at"] is None  # re-opened: not closed any more
    assert state["acknowledged_at"] == "2024-03-01T09:00:00.000Z"  # time-to-ack measured once
    assert [h["status"] for h in state["history"]] == [ACKNOWLEDGED, FALSE_POSITIVE,
                                                       ACKNOWLEDGED]


def test_kind_of_tells_incidents_from_alerts():
    assert kind_of(make_incident(2)) == INCIDENT
    assert kind_of(make_alerts(1)[0]) == ALERT
    assert kind_of({"event": {"dataset": "cirtsa.incidents"}}) == INCIDENT


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(STATUSES), max_size=12))
def test_any_sequence_of_requests_keeps_a_consistent_history(requests):
    doc: dict = {}
    applied = 0
    for i, status in enumerate(requests):
        at = f"2024-03-01T09:{i:02d}:00.000Z"
        try:
            doc = apply(doc, INCIDENT, status, f"analyst{i}", at=at)
            applied += 1
        except InvalidTransition:
            assert status not in TRANSITIONS[current_status(doc, INCIDENT)]
    state = (doc.get("cirtsa") or {}).get(INCIDENT) or {}
    history = state.get("history", [])
    assert len(history) == applied
    previous = NEW
    for entry in history:  # a chain: each change starts where the last one ended
        assert entry["from"] == previous and entry["status"] in TRANSITIONS[previous]
        previous = entry["status"]
    assert current_status(doc, INCIDENT) == previous
    # KPI milestones are ordered as the workflow is.
    if state.get("contained_at") and state.get("repelled_at"):
        assert state["contained_at"] <= state["repelled_at"]
    if state.get("acknowledged_at") and state.get("contained_at"):
        assert state["acknowledged_at"] <= state["contained_at"]


# --- against osmem-server ----------------------------------------------------------------


@pytest.fixture
def client(osmem):
    c = es_client(osmem.url)
    setup(c)
    return c


def stored(client, index: str, doc_id: str) -> dict:
    return client.get(index=index, id=doc_id)["_source"]


def test_set_status_stores_history_and_kpi_times(client):
    sink = ElasticsearchSink(client, preserve_lifecycle=True)
    incident = make_incident(4)
    incident["cirtsa"]["incident"].pop("status")
    sink.write_incidents([incident])
    store = LifecycleStore(client)
    store.set_status("incident-4", ACKNOWLEDGED, "alice")
    store.set_status("incident-4", CONTAINED, "bob", note="host isolated")
    with pytest.raises(InvalidTransition, match="from 'contained' to 'false_positive'"):
        store.set_status("incident-4", FALSE_POSITIVE, "carol")
    state = stored(client, INCIDENTS_ALIAS, "incident-4")["cirtsa"]["incident"]
    assert state["status"] == CONTAINED
    assert [h["status"] for h in state["history"]] == [ACKNOWLEDGED, CONTAINED]
    assert state["history"][1]["note"] == "host isolated"
    assert state["contained_at"] == state["history"][1]["at"]
    # Searchable by the mapped lifecycle fields (what the KPI and the panels query).
    resp = client.count(index=INCIDENTS_ALIAS, query={"bool": {"filter": [
        {"term": {"cirtsa.incident.status": CONTAINED}},
        {"term": {"cirtsa.incident.history.analyst": "bob"}},
        {"exists": {"field": "cirtsa.incident.contained_at"}}]}})
    assert resp["count"] == 1


def test_alerts_have_the_same_lifecycle(client):
    alert = make_alerts(1)[0]
    ElasticsearchSink(client).write([alert])
    doc_id = alert["event"]["id"]
    state = LifecycleStore(client).set_status(doc_id, FALSE_POSITIVE, "alice", "lab traffic")
    assert state["status"] == FALSE_POSITIVE
    source = stored(client, ALERTS_ALIAS, doc_id)
    assert source["cirtsa"]["alert"]["history"][0]["note"] == "lab traffic"
    assert source["rule"] == alert["rule"]  # the alert itself untouched


def test_unknown_id_is_not_found(client):
    with pytest.raises(NotFound, match="no alert or incident with id 'nope'"):
        LifecycleStore(client).set_status("nope", ACKNOWLEDGED, "alice")


def test_concurrent_change_is_revalidated_not_clobbered(client):
    ElasticsearchSink(client).write_incidents([make_incident(5)])
    bob = LifecycleStore(client)
    calls = {"n": 0}

    def alice_clock() -> str:
        # Runs after Alice read the document (status new) and before her update is sent:
        # Bob acknowledges the incident in between (a real interleaving on the server).
        calls["n"] += 1
        if calls["n"] == 1:
            bob.set_status("incident-5", ACKNOWLEDGED, "bob", "mine")
        return f"2024-03-01T10:0{calls['n']}:00.000Z"

    alice = LifecycleStore(client, clock=alice_clock)
    # Alice wanted new -> false_positive; after re-reading, acknowledged -> false_positive
    # is still allowed, so it is applied on top of Bob's change.
    alice.set_status("incident-5", FALSE_POSITIVE, "alice", "scanner of a partner")
    assert calls["n"] == 2  # her first update was refused (stale seq_no) and recomputed
    history = stored(client, INCIDENTS_ALIAS, "incident-5")["cirtsa"]["incident"]["history"]
    assert [(h["analyst"], h["from"], h["status"]) for h in history] == [
        ("bob", NEW, ACKNOWLEDGED), ("alice", ACKNOWLEDGED, FALSE_POSITIVE)]


def test_concurrent_conflicting_change_is_refused_with_who_did_it(client):
    ElasticsearchSink(client).write_incidents([make_incident(6, status=ACKNOWLEDGED)])
    bob = LifecycleStore(client)
    first = {"done": False}

    def alice_clock() -> str:
        if not first["done"]:
            first["done"] = True
            bob.set_status("incident-6", CONTAINED, "bob")
        return "2024-03-01T10:00:00.000Z"

    with pytest.raises(InvalidTransition, match="from 'contained' to 'false_positive'.*bob"):
        LifecycleStore(client, clock=alice_clock).set_status("incident-6", FALSE_POSITIVE,
                                                             "alice")
    state = stored(client, INCIDENTS_ALIAS, "incident-6")["cirtsa"]["incident"]
    assert state["status"] == CONTAINED and len(state["history"]) == 1


def test_stale_update_request_is_refused_by_the_server(client):
    # The request shape the store relies on: if_seq_no/if_primary_term of an older read.
    from elasticsearch import ConflictError

    ElasticsearchSink(client).write_incidents([make_incident(7)])
    first = client.get(index=INCIDENTS_ALIAS, id="incident-7")
    client.update(index=first["_index"], id="incident-7",
                  doc={"cirtsa": {"incident": {"status": ACKNOWLEDGED}}},
                  if_seq_no=first["_seq_no"], if_primary_term=first["_primary_term"])
    with pytest.raises(ConflictError):
        client.update(index=first["_index"], id="incident-7",
                      doc={"cirtsa": {"incident": {"status": FALSE_POSITIVE}}},
                      if_seq_no=first["_seq_no"], if_primary_term=first["_primary_term"])


def test_pipeline_rewrite_of_an_incident_keeps_the_analysts_status(client):
    sink = ElasticsearchSink(client, preserve_lifecycle=True)
    sink.write_incidents([make_incident(8)])
    LifecycleStore(client).set_status("incident-8", ACKNOWLEDGED, "alice")
    LifecycleStore(client).set_status("incident-8", CONTAINED, "alice")
    grown = make_incident(8, alert_ids=["a1", "a2", "a3"])  # correlation: status "new" again
    grown["message"] = "grown incident"
    result = sink.write_incidents([grown])
    assert result.updated == 1
    source = stored(client, INCIDENTS_ALIAS, "incident-8")
    assert source["message"] == "grown incident"
    assert source["cirtsa"]["incident"]["alert_ids"] == ["a1", "a2", "a3"]
    assert source["cirtsa"]["incident"]["status"] == CONTAINED
    assert len(source["cirtsa"]["incident"]["history"]) == 2
    # Without preserve_lifecycle (the sink's default) the rewrite resets it: why the CLI
    # and services turn it on.
    ElasticsearchSink(client).write_incidents([grown])
    assert stored(client, INCIDENTS_ALIAS, "incident-8")["cirtsa"]["incident"]["status"] == NEW


def test_merged_incident_is_final_and_its_status_lands_on_rewrite(client):
    sink = ElasticsearchSink(client, preserve_lifecycle=True)
    sink.write_incidents([make_incident(9)])
    LifecycleStore(client).set_status("incident-9", ACKNOWLEDGED, "alice")
    merged = make_incident(9)
    merged["cirtsa"]["incident"].update(status="merged", merged_into="incident-10")
    sink.write_incidents([merged])  # the correlation fused it into another incident
    state = stored(client, INCIDENTS_ALIAS, "incident-9")["cirtsa"]["incident"]
    assert state["status"] == "merged" and len(state["history"]) == 1
    with pytest.raises(InvalidTransition, match="merged into incident incident-10"):
        LifecycleStore(client).set_status("incident-9", CONTAINED, "alice")
