"""End to end: `cirt-sa replay` / `cirt-sa events` on real captures, bad input, exit codes.

Captures are cited by their ../shared/pcaps/MANIFEST.tsv names; the expected attacker comes
from the ground truth shipped beside them (Zeek's expected notice logs), not from this file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PCAPS, REPO, assert_ecs, shared_pcap

from pipeline.cli import main

SCAN_RULES = ("cirtsa.scan.",)
BRUTE_RULES = ("cirtsa.brute_force.",)


def zeek_notice_sources(path: Path) -> set[str]:
    """The `src` column of a Zeek notice log: TSV with a #fields header, or the zeek-cut
    output `src p note msg sub` used by the simple-scan baselines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fields = next((ln.split("\t")[1:] for ln in lines if ln.startswith("#fields")), None)
    rows = [ln.split("\t") for ln in lines if ln and not ln.startswith("#")]
    if fields is None:
        fields = ["src", "p", "note", "msg", "sub"]
    col = fields.index("src")
    return {r[col] for r in rows if len(r) > col and r[col] not in ("-", "")}


def replay(tmp_path: Path, *captures: Path, extra: tuple[str, ...] = ()) -> tuple[int, list[dict]]:
    out = tmp_path / "alerts.ndjson"
    code = main(["replay", *map(str, captures), "--out", str(out), "--quiet", *extra])
    alerts = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return code, alerts


def rule_alerts(alerts: list[dict], prefixes: tuple[str, ...]) -> list[dict]:
    return [a for a in alerts if a["rule"]["id"].startswith(prefixes)]


def test_port_scan_reported_by_zeek_source(tmp_path):
    capture = shared_pcap("port_scan/simplescan__port_scan.pcap")
    expected = zeek_notice_sources(
        PCAPS / "port_scan/groundtruth/simplescan__port_scan.pcap__expected_notice.log")
    assert expected == {"192.168.2.154"}  # sanity of the ground-truth parser
    code, alerts = replay(tmp_path, capture)
    assert code == 0
    scans = rule_alerts(alerts, SCAN_RULES)
    assert scans, "no scan alert"
    assert {a["source"]["ip"] for a in scans} == expected
    assert any(a.get("destination", {}).get("ip") == "192.168.2.22" for a in scans)
    for alert in alerts:
        assert_ecs(alert)
        assert alert["event"]["kind"] == "alert"
        assert alert["threat"]["technique"]["id"] in ("T1046", ["T1046"])


def test_ssh_guessing_reported_by_zeek_source(tmp_path):
    capture = shared_pcap("brute_force/zeek__sshguess.pcap")
    expected = zeek_notice_sources(
        PCAPS / "brute_force/groundtruth/zeek__sshguess.pcap__expected_notice.log")
    assert expected == {"192.168.56.1"}
    code, alerts = replay(tmp_path, capture)
    assert code == 0
    brute = rule_alerts(alerts, BRUTE_RULES)
    assert brute, "no brute-force alert"
    assert {a["source"]["ip"] for a in brute} == expected
    assert {a["destination"]["ip"] for a in brute} == {"192.168.56.103"}
    assert {a["destination"]["port"] for a in brute} == {22}
    for alert in alerts:
        assert_ecs(alert)


def test_replay_is_idempotent(tmp_path):
    capture = shared_pcap("brute_force/zeek__sshguess.pcap")
    _, first = replay(tmp_path, capture)
    _, second = replay(tmp_path, capture)
    assert [a["event"]["id"] for a in first] == [a["event"]["id"] for a in second]
    assert len({a["event"]["id"] for a in first}) == len(first)


BENIGN = sorted(p.name for p in (PCAPS / "benign").glob("*.pcap*")) if PCAPS.is_dir() else []


@pytest.mark.parametrize("name", BENIGN or ["(no shared captures)"])
def test_benign_captures_raise_no_scan_or_brute_force(tmp_path, name):
    capture = shared_pcap(f"benign/{name}")
    code, alerts = replay(tmp_path, capture)
    assert code == 0
    bad = rule_alerts(alerts, SCAN_RULES + BRUTE_RULES)
    assert not bad, [a["message"] for a in bad]


MALFORMED = sorted(p.name for p in (PCAPS / "malformed").glob("*.pcap*")) if PCAPS.is_dir() else []


@pytest.mark.parametrize("name", MALFORMED or ["(no shared captures)"])
def test_malformed_capture_gives_clear_error_not_traceback(tmp_path, capsys, name):
    capture = shared_pcap(f"malformed/{name}")
    code, _ = replay(tmp_path, capture)  # must not raise
    err = capsys.readouterr().err
    assert code in (0, 3)
    if code == 3:
        problems = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert problems, err
        assert all(name in ln for ln in problems), problems
    assert "Traceback" not in err


def test_truncated_capture_keeps_events_before_damage(tmp_path, capsys):
    capture = shared_pcap("malformed/suricata-verify__http-mime-truncated.pcap")
    out = tmp_path / "events.ndjson"
    code = main(["events", str(capture), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3
    assert "2715459" in err and "suricata-verify__http-mime-truncated.pcap" in err
    flows = [json.loads(x) for x in out.read_text().splitlines()]
    packets = sum(d["network"]["packets"] for d in flows if d["event"]["dataset"] == "cirtsa.flow")
    assert packets == 2696  # MANIFEST: 2696 readable packets before the damage


def test_not_a_capture(tmp_path, capsys):
    code, _ = replay(tmp_path, REPO / "README.md")
    err = capsys.readouterr().err
    assert code == 3
    assert "README.md" in err and "not a pcap" in err


def test_missing_file(tmp_path, capsys):
    code, _ = replay(tmp_path, tmp_path / "nope.pcap")
    assert code == 3
    assert "nope.pcap" in capsys.readouterr().err


def test_events_are_ecs(tmp_path):
    captures = [shared_pcap(n) for n in ("benign/zeek__dns53.pcap", "benign/zeek__http_get.pcap",
                                         "dns_tunneling/ndpi__dns2tcp_tunnel.pcap")]
    out = tmp_path / "events.ndjson"
    assert main(["events", *map(str, captures), "--out", str(out), "--quiet",
                 "--sensor-id", "lab-7", "--zone", "core"]) == 0
    docs = [json.loads(x) for x in out.read_text().splitlines()]
    datasets = {d["event"]["dataset"] for d in docs}
    assert {"cirtsa.flow", "cirtsa.dns", "cirtsa.http"} <= datasets
    for doc in docs:
        assert_ecs(doc)
        assert doc["observer"] == {"name": "lab-7", "ingress": {"zone": "core"}}
        if doc["event"]["dataset"] == "cirtsa.flow":
            assert doc["network"]["community_id"].startswith("1:")


def constituency_config(tmp_path) -> str:
    table = tmp_path / "constituencies.csv"
    table.write_text("cidr,constituency,sector,organisation\n"
                     "192.168.56.0/24,lab,education,Training centre\n")
    config = tmp_path / "fusion.yaml"
    config.write_text(f"fusion:\n  constituencies: {table}\n")
    return str(config)


def test_events_and_ingest_carry_the_constituency_of_the_configured_table(tmp_path):
    config = constituency_config(tmp_path)
    capture = str(REPO / "samples" / "sshguess.pcap")  # 192.168.56.1 -> .103, in the table
    out = tmp_path / "events.ndjson"
    assert main(["events", capture, "--out", str(out), "--quiet", "--config", config]) == 0
    ingest_out = tmp_path / "ingest.ndjson"
    assert main(["ingest", "--pcap", capture, "--events-out", str(ingest_out),
                 "--out", str(tmp_path / "alerts.ndjson"), "--quiet", "--config", config]) == 0
    for path in (out, ingest_out):
        docs = [json.loads(x) for x in path.read_text().splitlines()]
        assert docs
        for doc in docs:
            assert_ecs(doc)
            assert doc["network"]["direction"] == "internal"
            lab = {"name": "lab", "sector": "education", "organisation": "Training centre"}
            assert doc["cirtsa"]["constituency"] == {"source": lab, "destination": lab}


def test_summary_and_exit_codes_via_console_script(tmp_path):
    capture = shared_pcap("port_scan/simplescan__port_scan.pcap")
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "replay", str(capture), "--out",
         str(tmp_path / "a.ndjson")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Alerts by rule" in run.stdout and "192.168.2.154" in run.stdout
    usage = subprocess.run([sys.executable, "-m", "pipeline.cli", "replay"],
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2
    for cmd in ([], ["replay"], ["events"], ["config"]):
        help_run = subprocess.run([sys.executable, "-m", "pipeline.cli", *cmd, "--help"],
                                  capture_output=True, text=True, timeout=120)
        assert help_run.returncode == 0 and "usage:" in help_run.stdout


def test_bad_config_is_usage_error(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("- just\n- a list\n")
    code = main(["config", "--config", str(cfg)])
    assert code == 2
    assert "bad.yaml" in capsys.readouterr().err


def test_replay_writes_incidents_beside_the_alerts(tmp_path):
    captures = [REPO / "samples" / "port_scan.pcap", REPO / "samples" / "sshguess.pcap"]
    out = tmp_path / "alerts.ndjson"
    assert main(["replay", *map(str, captures), "--out", str(out), "--quiet"]) == 0
    alerts = [json.loads(x) for x in out.read_text().splitlines()]
    incidents = [json.loads(x) for x in (tmp_path / "incidents.ndjson").read_text().splitlines()]
    assert incidents and len(incidents) <= len(alerts)
    members = {aid for i in incidents for aid in i["cirtsa"]["incident"]["alert_ids"]}
    assert members == {a["event"]["id"] for a in alerts}  # every alert is in an incident
    for incident in incidents:
        assert_ecs(incident)
        assert incident["event"]["kind"] == "alert"


def test_config_prints_the_effective_configuration(tmp_path, capsys):
    cfg = tmp_path / "site.yaml"
    cfg.write_text("sensor:\n  id: lab-3\ncorrelation:\n  detectors:\n"
                   "    brute_force:\n      min_sessions: 25\n")
    assert main(["config", "--config", str(cfg)]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["sensor"]["id"] == "lab-3"
    assert config["correlation"]["detectors"]["brute_force"]["min_sessions"] == 25
    # defaults.d sections are merged in: every detector and analyzer names its class
    assert all("detector" in d for d in config["correlation"]["detectors"].values())
    assert all("analyzer" in a for a in config["sensor"]["analyzers"].values())


def test_output_into_a_closed_pipe_stops_quietly():
    """`cirt-sa config | head -n 2`: no 'Broken pipe' error, exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "config"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            bufsize=0)
    proc.stdout.close()  # the reader is gone before the command (importing for ~1 s) writes
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert b"Broken pipe" not in err and b"Traceback" not in err
