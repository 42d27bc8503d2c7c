"""`cirt-sa replay --es`, `cirt-sa es setup|load`, `cirt-sa alerts list|show|set-status`
against a real osmem-server process (tests/es_fixtures.py): searchable alerts, exactly-once
on re-runs and across a killed server, `es load` equal to `--es`, the analyst lifecycle."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections import Counter
from datetime import datetime

import orjson
import pytest
from conftest import REPO
from es_fixtures import (  # noqa: F401
    OsmemProcess,
    es_client,
    free_port,
    make_alerts,
    make_incident,
    osmem_process,
)

from correlation.es_setup import ALERTS_ALIAS, INCIDENTS_ALIAS, setup
from pipeline.cli import main

SAMPLES = [REPO / "samples" / "port_scan.pcap", REPO / "samples" / "sshguess.pcap"]


@pytest.fixture
def fast_config(tmp_path):
    """Plain JSON for osmem, a short retry budget and small bulk chunks."""
    path = tmp_path / "es.yaml"
    path.write_text("elasticsearch:\n  compat_plain_json: true\n  request_timeout_s: 5\n"
                    "  initial_backoff_s: 0.05\n  max_backoff_s: 0.5\n  max_total_s: 30\n"
                    "  max_attempts: 60\n  chunk_size: 50\n")
    return str(path)


def replay_es(tmp_path, url: str, config: str, name: str = "alerts.ndjson",
              extra: tuple[str, ...] = ()) -> tuple[int, list[dict]]:
    out = tmp_path / name
    code = main(["replay", *map(str, SAMPLES), "--out", str(out), "--es", url,
                 "--config", config, "--quiet", *extra])
    alerts = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return code, alerts


def documents(client, index: str = ALERTS_ALIAS) -> dict[str, dict]:
    client.indices.refresh(index=index)
    resp = client.search(index=index, size=10_000)
    ids = Counter(hit["_id"] for hit in resp["hits"]["hits"])
    assert set(ids.values()) <= {1}
    return {hit["_id"]: hit["_source"] for hit in resp["hits"]["hits"]}


def write_ndjson(path, docs: list[dict]) -> str:
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    return str(path)


def test_replay_to_es_alerts_are_searchable_and_aggregate_as_produced(osmem, tmp_path,
                                                                     fast_config):
    code, alerts = replay_es(tmp_path, osmem.url, fast_config)
    assert code == 0
    assert len(alerts) >= 2  # a scan and a brute force in the samples
    client = es_client(osmem.url)
    docs = documents(client)
    assert set(docs) == {a["event"]["id"] for a in alerts}
    for alert in alerts:
        assert docs[alert["event"]["id"]] == alert  # the same document as the file
    # Search by CIDR, per attacker /24.
    for alert in alerts:
        net = ipaddress.ip_network(f"{alert['source']['ip']}/24", strict=False)
        expected = sum(ipaddress.ip_address(a["source"]["ip"]) in net for a in alerts)
        resp = client.count(index=ALERTS_ALIAS, query={"term": {"source.ip": str(net)}})
        assert resp["count"] == expected
    resp = client.search(index=ALERTS_ALIAS, size=0, aggs={
        "rules": {"terms": {"field": "rule.name", "size": 50}},
        "per_day": {"date_histogram": {"field": "@timestamp", "calendar_interval": "1d"}}})
    rules = {b["key"]: b["doc_count"] for b in resp["aggregations"]["rules"]["buckets"]}
    assert rules == Counter(a["rule"]["name"] for a in alerts)
    days = Counter(datetime.fromisoformat(a["@timestamp"]).date() for a in alerts)
    got = {datetime.fromisoformat(b["key_as_string"]).date(): b["doc_count"]
           for b in resp["aggregations"]["per_day"]["buckets"] if b["doc_count"]}
    assert got == days


def test_replay_twice_leaves_the_document_count_unchanged(osmem, tmp_path, fast_config,
                                                         capsys):
    code, alerts = replay_es(tmp_path, osmem.url, fast_config)
    assert code == 0
    capsys.readouterr()
    code, again = replay_es(tmp_path, osmem.url, fast_config, extra=())
    assert code == 0 and again == alerts
    assert len(documents(es_client(osmem.url))) == len(alerts)
    main(["replay", *map(str, SAMPLES), "--out", str(tmp_path / "x.ndjson"), "--es",
          osmem.url, "--config", fast_config])
    out = capsys.readouterr().out
    assert f"alerts: 0 created, {len(alerts)} already there" in out


def test_es_load_gives_the_same_documents_as_replay_es(tmp_path, fast_config):
    direct, loaded = OsmemProcess().start(), OsmemProcess().start()
    try:
        code, alerts = replay_es(tmp_path, direct.url, fast_config)
        assert code == 0
        code = main(["es", "load", str(tmp_path / "alerts.ndjson"), "--url", loaded.url,
                     "--config", fast_config, "--quiet"])
        assert code == 0
        for index in (ALERTS_ALIAS, INCIDENTS_ALIAS):
            assert documents(es_client(direct.url), index) == \
                documents(es_client(loaded.url), index)
        assert len(documents(es_client(loaded.url))) == len(alerts)
        try:
            import correlation.incidents  # noqa: F401 - written by another engineer
        except ImportError:
            return
        assert documents(es_client(loaded.url), INCIDENTS_ALIAS)  # built by both paths
    finally:
        direct.kill()
        loaded.kill()


def test_es_load_splits_alerts_and_incidents_and_reports_bad_lines(osmem, tmp_path,
                                                                  fast_config, capsys):
    alerts = make_alerts(30)
    incidents = [make_incident(i) for i in range(3)]
    path = tmp_path / "mixed.ndjson"
    lines = [orjson.dumps(d) for d in alerts[:10] + incidents + alerts[10:]]
    lines.insert(5, b"{not json")
    lines.insert(9, b"[1, 2]")
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    code = main(["es", "load", str(path), "--url", osmem.url, "--config", fast_config])
    captured = capsys.readouterr()
    assert code == 3  # input error, but everything readable was loaded
    assert f"{path}:6: not JSON" in captured.err and f"{path}:10: not a JSON object" in \
        captured.err
    assert "alerts: 30 created" in captured.out and "incidents: 3 created" in captured.out
    client = es_client(osmem.url)
    assert len(documents(client)) == 30
    assert set(documents(client, INCIDENTS_ALIAS)) == {f"incident-{i}" for i in range(3)}


def test_es_load_dead_letters_refused_documents_with_exit_3(osmem, tmp_path, fast_config,
                                                           capsys):
    alerts = make_alerts(5)
    alerts[2]["source"]["ip"] = "not-an-ip"
    code = main(["es", "load", write_ndjson(tmp_path / "a.ndjson", alerts), "--url",
                 osmem.url, "--config", fast_config, "--quiet"])
    assert code == 3
    err = capsys.readouterr().err
    assert f"dead-letter: elasticsearch: {alerts[2]['event']['id']}" in err
    assert "source.ip" in err
    assert len(documents(es_client(osmem.url))) == 4


def test_es_setup_command_is_idempotent(osmem, fast_config, capsys):
    assert main(["es", "setup", "--url", osmem.url, "--config", fast_config,
                 "--retention-days", "14"]) == 0
    first = capsys.readouterr().out
    assert "index/logs-cirtsa.alerts-v1" in first and "created" in first
    assert main(["es", "setup", "--url", osmem.url, "--config", fast_config]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert lines and all(ln.split()[-1] == "unchanged" or "skipped" in ln for ln in lines)


def test_unreachable_es_gives_exit_4_and_keeps_the_file(tmp_path, capsys):
    port = free_port()  # nothing listens there
    config = tmp_path / "short.yaml"
    config.write_text("elasticsearch:\n  compat_plain_json: true\n  request_timeout_s: 1\n"
                      "  initial_backoff_s: 0.01\n  max_backoff_s: 0.05\n  max_attempts: 3\n"
                      "  max_total_s: 2\n")
    code, alerts = replay_es(tmp_path, f"http://127.0.0.1:{port}", str(config))
    assert code == 4
    assert alerts  # the NDJSON output is written regardless
    err = capsys.readouterr().err
    assert "elasticsearch unreachable" in err and "3 attempt(s)" in err
    code = main(["es", "load", str(tmp_path / "alerts.ndjson"), "--url",
                 f"http://127.0.0.1:{port}", "--config", str(config)])
    assert code == 4


def test_no_url_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delenv("CIRTSA_ES_URL", raising=False)
    assert main(["alerts", "list"]) == 2
    assert "no Elasticsearch URL" in capsys.readouterr().err


def test_killed_server_mid_load_every_alert_arrives_exactly_once(osmem, tmp_path,
                                                                 fast_config):
    alerts = make_alerts(1000)
    path = write_ndjson(tmp_path / "alerts.ndjson", alerts)
    client = es_client(osmem.url)
    outcome: dict = {}

    def load() -> None:
        outcome["code"] = main(["es", "load", path, "--url", osmem.url, "--config",
                                fast_config, "--quiet"])

    thread = threading.Thread(target=load)
    thread.start()
    deadline = time.monotonic() + 30
    seen = 0
    while seen < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            client.indices.refresh(index=ALERTS_ALIAS)
            seen = client.count(index=ALERTS_ALIAS)["count"]
        except Exception:  # noqa: BLE001 - setup may not have created the alias yet
            seen = 0
    assert thread.is_alive(), "the load finished before the kill: make it larger"
    osmem.kill()
    time.sleep(0.3)  # the loader hits a dead server and retries
    osmem.start()
    setup(client)  # the restarted in-memory server is empty (real ES would keep its data)
    thread.join(60)
    assert not thread.is_alive()
    assert outcome["code"] == 0
    after_restart = documents(client)
    assert 0 < len(after_restart) < 1000  # what was acknowledged after the restart, once each
    # Re-running the load (the operator's retry, or Kafka's re-delivery) completes the set.
    assert main(["es", "load", path, "--url", osmem.url, "--config", fast_config,
                 "--quiet"]) == 0
    final = documents(client)
    assert set(final) == {a["event"]["id"] for a in alerts}


def test_replay_waits_for_a_restarting_server(tmp_path, fast_config):
    server = OsmemProcess()  # port chosen, not started: ES is down when the replay begins
    timer = threading.Timer(0.7, server.start)
    timer.start()
    try:
        code, alerts = replay_es(tmp_path, server.url, fast_config)
        timer.join()
        assert code == 0
        docs = documents(es_client(server.url))
        assert set(docs) == {a["event"]["id"] for a in alerts}
    finally:
        timer.cancel()
        server.kill()


# --- analyst commands ---------------------------------------------------------------------


@pytest.fixture
def loaded(osmem, tmp_path, fast_config):
    alerts = make_alerts(40)
    incidents = [make_incident(i) for i in range(3)]
    for inc in incidents:
        inc["cirtsa"]["incident"].pop("status")
    path = write_ndjson(tmp_path / "docs.ndjson", alerts + incidents)
    assert main(["es", "load", path, "--url", osmem.url, "--config", fast_config,
                 "--quiet"]) == 0
    return osmem, alerts, ["--url", osmem.url, "--config", fast_config]


def table_ids(out: str) -> list[str]:
    lines = out.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    return [row.split()[1] for row in lines[start:-1]]  # ..., "N of M alert(s)"


def test_alerts_list_filters(loaded, capsys):
    _, alerts, opts = loaded
    assert main(["alerts", "list", *opts, "--size", "100"]) == 0
    out = capsys.readouterr().out
    assert set(table_ids(out)) == {a["event"]["id"] for a in alerts}
    assert out.strip().endswith("40 of 40 alert(s)")

    assert main(["alerts", "list", *opts, "--source", "192.168.0.0/16", "--size", "100"]) == 0
    net = ipaddress.ip_network("192.168.0.0/16")
    want = {a["event"]["id"] for a in alerts if ipaddress.ip_address(a["source"]["ip"]) in net}
    assert 0 < len(want) < 40
    assert set(table_ids(capsys.readouterr().out)) == want

    rule = alerts[1]["rule"]
    for value in (rule["id"], rule["name"]):
        assert main(["alerts", "list", *opts, "--rule", value, "--size", "100"]) == 0
        want = {a["event"]["id"] for a in alerts if a["rule"]["id"] == rule["id"]}
        assert set(table_ids(capsys.readouterr().out)) == want

    since = alerts[30]["@timestamp"]
    assert main(["alerts", "list", *opts, "--since", since, "--size", "100"]) == 0
    want = {a["event"]["id"] for a in alerts if a["@timestamp"] >= since}
    assert set(table_ids(capsys.readouterr().out)) == want

    assert main(["alerts", "list", *opts, "--json", "--size", "5"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["@timestamp"] for d in docs] == sorted((a["@timestamp"] for a in alerts),
                                                     reverse=True)[:5]


def test_alerts_list_rejects_bad_filters(loaded, capsys):
    _, _, opts = loaded
    assert main(["alerts", "list", *opts, "--source", "300.1.1.0/24"]) == 2
    assert "not an IP address or CIDR" in capsys.readouterr().err
    assert main(["alerts", "list", *opts, "--status", "closed"]) == 2
    assert "unknown status 'closed'" in capsys.readouterr().err



def test_alerts_list_status_withdrawn(loaded, capsys):
    """`--status withdrawn` lists the alerts the correlation took back (docs/
    elasticsearch.md); incidents have no such status."""
    osmem, alerts, opts = loaded
    client = es_client(osmem.url)
    taken_back = alerts[3]["event"]["id"]
    client.update(index=ALERTS_ALIAS, id=taken_back, refresh=True,
                  doc={"cirtsa": {"alert": {"status": "withdrawn", "withdrawn": True}}})
    assert main(["alerts", "list", *opts, "--status", "withdrawn", "--size", "100"]) == 0
    assert table_ids(capsys.readouterr().out) == [taken_back]
    assert main(["alerts", "list", *opts, "--status", "new", "--size", "100"]) == 0
    assert taken_back not in table_ids(capsys.readouterr().out)
    assert main(["alerts", "list", *opts, "--incidents", "--status", "withdrawn"]) == 2
    assert "unknown status 'withdrawn'" in capsys.readouterr().err

def test_set_status_moves_an_incident_through_its_states(loaded, capsys):
    osmem, _, opts = loaded
    steps = [("acknowledged", "alice", None), ("contained", "bob", "blocked at the border"),
             ("repelled", "bob", "eradicated")]
    for status, analyst, note in steps:
        args = ["alerts", "set-status", "incident-1", status, "--analyst", analyst, *opts]
        if note:
            args += ["--note", note]
        assert main(args) == 0
        assert f"-> {status} by {analyst}" in capsys.readouterr().out
    assert main(["alerts", "show", "incident-1", *opts]) == 0
    shown = json.loads(capsys.readouterr().out)
    state = shown["cirtsa"]["incident"]
    assert state["status"] == "repelled"
    assert [(h["status"], h["analyst"], h.get("note")) for h in state["history"]] == steps
    assert state["repelled_at"] == state["history"][-1]["at"]

    # A final status cannot be left: refused, exit 2, nothing changed.
    assert main(["alerts", "set-status", "incident-1", "acknowledged", "--analyst", "carol",
                 *opts]) == 2
    err = capsys.readouterr().err
    assert "cannot move incident incident-1 from 'repelled' to 'acknowledged'" in err
    assert "set by bob" in err
    assert main(["alerts", "set-status", "incident-2", "contained", "--analyst", "carol",
                 *opts]) == 2
    assert "allowed from 'new': acknowledged, false_positive" in capsys.readouterr().err
    client = es_client(osmem.url)
    again = client.get(index=INCIDENTS_ALIAS, id="incident-1")["_source"]
    assert len(again["cirtsa"]["incident"]["history"]) == 3

    # The incident list shows the status; --status new still finds the untouched ones.
    assert main(["alerts", "list", "--incidents", *opts]) == 0
    out = capsys.readouterr().out
    assert "repelled" in out and out.strip().endswith("3 of 3 incident(s)")
    assert main(["alerts", "list", "--incidents", "--status", "new", *opts]) == 0
    assert set(table_ids(capsys.readouterr().out)) == {"incident-0", "incident-2"}


def test_set_status_of_an_alert_and_unknown_id(loaded, capsys):
    _, alerts, opts = loaded
    doc_id = alerts[3]["event"]["id"]
    assert main(["alerts", "set-status", doc_id, "false_positive", "--analyst", "alice",
                 "--note", "pentest", *opts]) == 0
    assert main(["alerts", "list", *opts, "--status", "false_positive"]) == 0
    assert table_ids(capsys.readouterr().out) == [doc_id]
    assert main(["alerts", "show", "nope", *opts]) == 2
    assert "no alert or incident with id 'nope'" in capsys.readouterr().err


def test_reloading_incidents_keeps_the_analysts_status(loaded, tmp_path, capsys):
    _, _, opts = loaded
    assert main(["alerts", "set-status", "incident-0", "acknowledged", "--analyst", "alice",
                 *opts]) == 0
    grown = make_incident(0, status="new", alert_ids=["x", "y"])
    path = write_ndjson(tmp_path / "again.ndjson", [grown])
    assert main(["es", "load", path, *opts, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["alerts", "show", "incident-0", *opts]) == 0
    state = json.loads(capsys.readouterr().out)["cirtsa"]["incident"]
    assert state["status"] == "acknowledged" and state["alert_ids"] == ["x", "y"]


def health_documents(sensors: tuple[str, ...], reports: int) -> list[dict]:
    """Health documents as sensors/health.py builds them, on event time one minute apart."""
    from sensors.health import HealthReporter

    docs = []
    for name in sensors:
        reporter = HealthReporter(name, "dmz", interval_s=60, wall_clock=False)
        t0 = 1_700_000_000 * 10**9
        reporter.due(t0)
        for i in range(1, reports + 1):
            docs.append(reporter.report({"packets": 1000 * i, "bytes": 80_000 * i},
                                        {"flow": 10 * i}, {"truncated": i}, t0 + i * 60 * 10**9))
    return docs


def test_es_load_indexes_sensor_health_once_and_skips_raw_events(osmem, tmp_path, fast_config,
                                                                 capsys):
    from correlation.es_setup import HEALTH_ALIAS

    health = health_documents(("sensor-a", "sensor-b"), 3)
    raw_event = {"@timestamp": "2024-01-01T00:00:00Z", "event": {"kind": "event",
                                                                 "dataset": "cirtsa.flow"}}
    path = write_ndjson(tmp_path / "health.ndjson", [*health, raw_event, *make_alerts(2)])
    args = ["es", "load", path, "--url", osmem.url, "--config", fast_config]
    assert main(args) == 3  # the raw event is reported, the rest is loaded
    captured = capsys.readouterr()
    assert "1 document(s) skipped: not an alert, incident or sensor health" in captured.err
    assert "health documents: 6 created" in captured.out
    main(args)  # loading the same file again stores nothing twice
    assert "health documents: 0 created, 6 already there" in capsys.readouterr().out
    client = es_client(osmem.url)
    stored = documents(client, HEALTH_ALIAS)
    assert len(stored) == 6 and len(documents(client)) == 2
    resp = client.search(index=HEALTH_ALIAS, size=0, aggs={
        "sensors": {"terms": {"field": "observer.name"},
                    "aggs": {"most": {"max": {"field": "cirtsa.health.packets"}}}}})
    buckets = {b["key"]: b["most"]["value"] for b in resp["aggregations"]["sensors"]["buckets"]}
    assert buckets == {"sensor-a": 3000, "sensor-b": 3000}
