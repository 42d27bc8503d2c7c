"""correlation/es_sink.py against a real osmem-server process: searchable ECS alerts,
exactly-once under re-delivery, lost acknowledgements and a killed server, dead letters."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import Counter
from datetime import datetime

import pytest
from es_fixtures import (  # noqa: F401
    DropReplyProxy,
    es_client,
    make_alerts,
    make_incident,
    osmem_process,
)

from correlation.es_setup import ALERTS_ALIAS, ALERTS_INDEX, INCIDENTS_ALIAS, setup
from correlation.es_sink import (
    CREATED,
    DEAD,
    DUPLICATE,
    FATAL,
    RETRY,
    UPDATED,
    ElasticsearchSink,
    ElasticsearchUnavailable,
    classify,
)


def count(client, index: str = ALERTS_ALIAS) -> int:
    client.indices.refresh(index=index)
    return client.count(index=index)["count"]


def stored_ids(client, index: str = ALERTS_ALIAS) -> Counter:
    client.indices.refresh(index=index)
    resp = client.search(index=index, size=10_000, source=False)
    return Counter(hit["_id"] for hit in resp["hits"]["hits"])


@pytest.fixture
def client(osmem):
    c = es_client(osmem.url)
    setup(c)
    return c


def fast_sink(client, **kwargs) -> ElasticsearchSink:
    options = {"initial_backoff_s": 0.05, "max_backoff_s": 0.5, "max_total_s": 30.0,
               "chunk_size": 100, **kwargs}
    return ElasticsearchSink(client, **options)


def test_alerts_are_searchable_by_cidr_and_aggregate_as_written(client):
    alerts = make_alerts(300)
    result = fast_sink(client).write(alerts)
    assert (result.created, result.duplicates, result.dead_lettered) == (300, 0, 0)
    assert count(client) == 300

    net = ipaddress.ip_network("192.168.0.0/16")
    expected = sum(ipaddress.ip_address(a["source"]["ip"]) in net for a in alerts)
    assert 0 < expected < 300
    resp = client.count(index=ALERTS_ALIAS, query={"term": {"source.ip": "192.168.0.0/16"}})
    assert resp["count"] == expected
    # related.ip is an ip array: the documentation range 203.0.113.0/24 holds every dest.
    resp = client.count(index="logs-*", query={"term": {"related.ip": "203.0.113.0/24"}})
    assert resp["count"] == 300

    resp = client.search(index=ALERTS_ALIAS, size=0, aggs={
        "rules": {"terms": {"field": "rule.name", "size": 10}},
        "per_hour": {"date_histogram": {"field": "@timestamp", "fixed_interval": "1h"}}})
    rules = {b["key"]: b["doc_count"] for b in resp["aggregations"]["rules"]["buckets"]}
    assert rules == Counter(a["rule"]["name"] for a in alerts)
    hours = Counter(datetime.fromisoformat(a["@timestamp"]).replace(minute=0, second=0,
                    microsecond=0) for a in alerts)
    got = {datetime.fromisoformat(b["key_as_string"]): b["doc_count"]
           for b in resp["aggregations"]["per_hour"]["buckets"] if b["doc_count"]}
    assert got == hours
    # External Alerts reads event.kind:alert from logs-*.
    resp = client.count(index="logs-*", query={"term": {"event.kind": "alert"}})
    assert resp["count"] == 300


def test_writing_the_same_alerts_again_changes_nothing(client):
    alerts = make_alerts(120)
    sink = fast_sink(client)
    assert sink.write(alerts).created == 120
    again = sink.write(alerts + alerts[:10])  # re-delivery, with repeats inside the batch
    assert (again.created, again.duplicates, again.dead_lettered) == (0, 130, 0)
    assert count(client) == 120
    assert set(stored_ids(client).values()) == {1}
    assert sink.totals.created == 120 and sink.totals.duplicates == 130


def test_bad_documents_are_dead_lettered_and_the_rest_indexed(client):
    alerts = make_alerts(50)
    alerts[7]["source"]["ip"] = "not-an-ip"
    alerts[21]["@timestamp"] = "yesterday"
    del alerts[33]["event"]["id"]
    dead: list[tuple[dict, str]] = []
    result = fast_sink(client, dead_letter=lambda d, r: dead.append((d, r))).write(alerts)
    assert (result.created, result.dead_lettered) == (47, 3)
    assert count(client) == 47
    reasons = {id(doc): reason for doc, reason in dead}
    assert "source.ip" in reasons[id(alerts[7])] and "400" in reasons[id(alerts[7])]
    assert "@timestamp" in reasons[id(alerts[21])]
    assert "event.id" in reasons[id(alerts[33])]
    assert [doc for doc, _ in dead if doc is alerts[7]][0]["source"]["ip"] == "not-an-ip"


def test_a_failing_dead_letter_callback_fails_the_write(client):
    alerts = make_alerts(5)
    alerts[2]["source"]["ip"] = "not-an-ip"

    def broken(doc, reason):
        raise OSError("dead-letter topic unreachable")

    with pytest.raises(OSError):
        fast_sink(client, dead_letter=broken).write(alerts)


def test_incidents_are_upserted_by_id(client):
    sink = fast_sink(client)
    first = sink.write_incidents([make_incident(i) for i in range(10)])
    assert first.created == 10
    changed = [make_incident(i, status="contained") for i in range(5)]
    second = sink.write_incidents(changed)
    assert (second.created, second.updated) == (0, 5)
    assert count(client, INCIDENTS_ALIAS) == 10
    client.indices.refresh(index=INCIDENTS_ALIAS)
    resp = client.count(index=INCIDENTS_ALIAS,
                        query={"term": {"cirtsa.incident.status": "contained"}})
    assert resp["count"] == 5


def test_lost_acknowledgements_give_no_duplicates(osmem):
    setup(es_client(osmem.url))
    proxy = DropReplyProxy(osmem.port)
    try:
        proxy.drop_bulk_replies = 2  # the first two bulk requests are indexed, replies lost
        sink = fast_sink(es_client(proxy.url))
        alerts = make_alerts(500)
        result = sink.write(alerts)
    finally:
        proxy.close()
    assert proxy.dropped == 2
    assert result.attempts >= 2
    assert result.created + result.duplicates == 500
    # Attempt 1: chunk 1 indexed, reply lost -> all 500 re-sent. Attempt 2: chunk 1 again
    # (409s), reply lost again. Attempt 3: chunk 1 = 100 duplicates, the other 400 created.
    assert result.attempts == 3
    assert result.duplicates == 100
    direct = es_client(osmem.url)
    assert count(direct) == 500
    assert set(stored_ids(direct).values()) == {1}


def test_killed_server_is_survived_and_every_alert_lands_exactly_once(osmem):
    client = es_client(osmem.url)
    setup(client)
    alerts = make_alerts(1000)
    sink = fast_sink(client, chunk_size=50, max_total_s=60.0)
    outcome: dict = {}

    def writer():
        try:
            outcome["result"] = sink.write(alerts)
        except Exception as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=writer)
    thread.start()
    # Kill once part of the batch is acknowledged, i.e. really mid-run.
    deadline = time.monotonic() + 30
    while count(client) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert thread.is_alive(), "the batch finished before the kill: make it larger"
    osmem.kill()
    time.sleep(0.5)  # the writer hits a dead server and retries
    osmem.start()
    setup(client)  # the restarted in-memory server is empty: re-create templates/alias
    thread.join(60)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.retried > 0 and result.attempts > 1
    assert result.created + result.duplicates == 1000

    # osmem keeps nothing across a restart (real ES would keep what it acknowledged), so
    # what is in the index is exactly what was acknowledged after the restart...
    after_restart = stored_ids(client)
    assert set(after_restart.values()) == {1}
    assert 0 < len(after_restart) < 1000
    # ...and the consumer's re-delivery of the batch completes it without a duplicate.
    again = sink.write(alerts)
    assert again.duplicates == len(after_restart)
    assert again.created == 1000 - len(after_restart)
    final = stored_ids(client)
    assert len(final) == 1000 and set(final.values()) == {1}
    assert set(final) == {a["event"]["id"] for a in alerts}


def test_unreachable_past_the_budget_raises_and_drops_nothing(osmem):
    client = es_client(osmem.url)
    setup(client)
    osmem.kill()
    alerts = make_alerts(30)
    sink = fast_sink(client, max_attempts=3, max_total_s=5.0)
    started = time.monotonic()
    with pytest.raises(ElasticsearchUnavailable) as err:
        sink.write(alerts)
    assert time.monotonic() - started < 5.0
    assert err.value.pending == alerts  # every unacknowledged alert handed back
    assert err.value.result.attempts == 3
    assert "nothing was dropped" in str(err.value)


def test_missing_alias_is_retried_never_auto_created(osmem):
    client = es_client(osmem.url)  # setup() deliberately not run
    sink = fast_sink(client, max_attempts=2)
    with pytest.raises(ElasticsearchUnavailable, match="index_not_found"):
        sink.write(make_alerts(5))
    assert not client.indices.exists(index=ALERTS_ALIAS)
    setup(client)
    assert sink.write(make_alerts(5)).created == 5
    assert count(client, ALERTS_INDEX) == 5


@pytest.mark.parametrize("op,item,expected", [
    ("create", {"status": 201, "result": "created"}, CREATED),
    ("index", {"status": 200, "result": "updated"}, UPDATED),
    ("create", {"status": 409, "error": {"type": "version_conflict_engine_exception"}},
     DUPLICATE),
    ("index", {"status": 409, "error": {"type": "version_conflict_engine_exception"}}, DEAD),
    ("create", {"status": 429, "error": {"type": "es_rejected_execution_exception"}}, RETRY),
    ("create", {"status": 503, "error": "unavailable", "exception": object()}, RETRY),
    ("create", {"status": 400, "error": {"type": "mapper_parsing_exception"}}, DEAD),
    ("create", {"status": 400, "error": {"type": "document_parsing_exception"}}, DEAD),
    ("create", {"status": 404, "error": {"type": "index_not_found_exception"}}, RETRY),
    ("create", {"status": 401, "error": "unauthorized", "exception": object()}, FATAL),
    ("create", {"status": 403, "error": {"type": "security_exception"}}, FATAL),
    ("create", {"error": "no status"}, RETRY),
])
def test_classify(op, item, expected):
    assert classify(op, item) == expected
