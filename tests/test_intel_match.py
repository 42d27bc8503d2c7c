"""Threat-intel hit detector (correlation/intel_match.py) on synthetic events of every
matched kind, and on the known_bad_ioc captures (MANIFEST) through the real sensor with
indicator files written from their public ground truth (tests/data/intel/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PCAPS, assert_ecs, shared_pcap
from event_builders import make_batch

from correlation.engine import CorrelationEngine
from correlation.intel_match import IntelMatchDetector
from pipeline.config import load_config
from pipeline.embedded import run_pipeline

DATA = Path(__file__).parent / "data" / "intel"
SOURCES = [
    {"path": str(DATA / "sample.csv"), "format": "csv", "name": "analyst-csv"},
    {"path": str(DATA / "sample-misp.json"), "format": "misp", "name": "misp-ndpi"},
    {"path": str(DATA / "sample-stix.json"), "format": "stix", "name": "stix-test"},
]


def only_intel(**section) -> dict:
    detectors = {name: {"enabled": False} for name in load_config()["correlation"]["detectors"]}
    detectors["intel_match"] = {"enabled": True, **section}
    return {"detectors": detectors}


def run(batches, **section) -> list[dict]:
    engine = CorrelationEngine(only_intel(**section))
    alerts = []
    for b in batches:
        alerts += engine.push(b)
    return alerts + engine.flush()


def test_flow_to_listed_ip_alerts_once_per_host_with_ecs_threat_fields() -> None:
    flows = make_batch("flow", [
        {"t": i, "src": "10.0.0.5", "dst": "8.8.8.8", "dst_port": 53, "transport": 17}
        for i in range(5)] + [{"t": 1, "src": "10.0.0.6", "dst": "9.9.9.9", "dst_port": 53}])
    alerts = run([flows], sources=SOURCES)
    assert [a["rule"]["id"] for a in alerts] == ["cirtsa.intel.ip"]
    a = alerts[0]
    assert (a["source"]["ip"], a["destination"]["ip"]) == ("10.0.0.5", "8.8.8.8")
    assert a["threat"]["indicator"]["ip"] == "8.8.8.8"
    assert a["threat"]["indicator"]["type"] == "ipv4-addr"
    assert a["threat"]["feed"]["name"] == "analyst-csv"
    assert a["threat"]["technique"]["id"] == ["T1071"]
    assert a["cirtsa"]["evidence"]["hits"] == 5
    assert a["cirtsa"]["evidence"]["direction"] == "outbound"
    assert_ecs(a)


def test_inbound_from_listed_cidr_names_the_local_host() -> None:
    flows = make_batch("flow", [{"t": 0, "src": "198.51.100.77", "dst": "10.0.0.9",
                                 "dst_port": 22, "transport": 6}])
    (a,) = run([flows], sources=SOURCES)
    assert a["cirtsa"]["alert"]["key"] == "cidr:198.51.100.0/24|10.0.0.9"
    assert a["cirtsa"]["evidence"]["direction"] == "inbound"
    assert a["message"].startswith("10.0.0.9 was contacted by threat-intel address")


def test_dns_http_tls_hits() -> None:
    dns = make_batch("dns", [
        {"t": 0, "src": "10.0.0.7", "dst": "10.0.0.53", "qname": "cdn.example.com", "qtype": 1},
        {"t": 0.1, "src": "10.0.0.53", "dst": "10.0.0.7", "qname": "cdn.example.com",
         "is_response": True},
        {"t": 0.2, "src": "10.0.0.7", "dst": "10.0.0.53", "qname": "example.org"}])
    http = make_batch("http", [{"t": 1, "src": "10.0.0.8", "dst": "203.0.113.9",
                                "dst_port": 80, "transport": 6, "host": "testmyids.com",
                                "uri": "/", "method": "GET"}])
    tls = make_batch("tls", [{"t": 2, "src": "192.168.0.20", "dst": "203.0.113.10",
                              "dst_port": 443, "transport": 6, "server_name": "hobbeach.test",
                              "cert_sha1": "30C908A75DAC712C070051204D91DC3CBA7E0A46"}])
    alerts = run([dns, http, tls], sources=SOURCES)
    by_rule = sorted((a["rule"]["id"], a["source"]["ip"]) for a in alerts)
    assert by_rule == [("cirtsa.intel.certificate", "192.168.0.20"),
                       ("cirtsa.intel.domain", "10.0.0.7"),  # query + response: one alert
                       ("cirtsa.intel.domain", "10.0.0.8"),
                       ("cirtsa.intel.url", "10.0.0.8")]
    dom = next(a for a in alerts if a["source"]["ip"] == "10.0.0.7")
    assert dom["threat"]["indicator"]["url"]["domain"] == "example.com"
    assert dom["threat"]["tactic"]["id"] == ["TA0011"]
    assert dom["threat"]["technique"]["id"] == ["T1071.001"]  # the indicator's own tags
    for a in alerts:
        assert_ecs(a)


def test_ja3_ja4_inline_indicators_and_severity() -> None:
    tls = make_batch("tls", [{"t": 0, "src": "10.0.0.1", "dst": "203.0.113.1",
                              "ja3": "e7d705a3286e19ea42f587b344ee6865",
                              "ja4": "t13d1516h2_8daaf6152771_02713d6af862"}])
    alerts = run([tls], indicators=[
        {"type": "ja3", "value": "e7d705a3286e19ea42f587b344ee6865", "severity": "high",
         "description": "test tool"},
        {"type": "ja4", "value": "t13d1516h2_8daaf6152771_02713d6af862"}])
    assert sorted(a["cirtsa"]["alert"]["severity_label"] for a in alerts) == ["high", "medium"]
    assert {a["rule"]["id"] for a in alerts} == {"cirtsa.intel.fingerprint"}


def test_no_indicators_no_hits_and_no_buffering() -> None:
    flows = make_batch("flow", [{"t": i, "src": "10.0.0.5", "dst": "8.8.8.8"} for i in range(50)])
    engine = CorrelationEngine(only_intel())
    assert engine.push(flows) + engine.flush() == []
    assert engine.stats["rows_buffered"] == 0
    # with indicators, only hitting rows are buffered
    engine = CorrelationEngine(only_intel(indicators=["8.8.4.4"]))
    engine.push(flows)
    assert engine.stats["rows_buffered"] == 0


def test_detector_builds_from_config_with_relative_paths() -> None:
    det = IntelMatchDetector({"window_s": 60, "hop_s": 60, "base_dir": str(DATA),
                              "sources": [{"path": "sample.csv", "format": "csv"}]})
    assert len(det.intel) == 3


# --- real captures ---------------------------------------------------------------------------


def replay(name: str, sources: list[dict] = SOURCES) -> list[dict]:
    config = load_config()
    config["correlation"] = only_intel(sources=sources)
    report = run_pipeline([shared_pcap(name)], config)
    return [a for a in report.alerts if a["rule"]["id"].startswith("cirtsa.intel.")]


def test_iprep_capture_hits_the_dshield_listed_address() -> None:
    # suricata-verify issue-4280-iprep: 8.8.8.8 in the Dshield category (groundtruth list)
    alerts = replay("known_bad_ioc/suricata-verify__iprep.pcap")
    assert {(a["source"]["ip"], a["threat"]["indicator"]["ip"]) for a in alerts} == {
        ("192.168.0.13", "8.8.8.8")}


def test_datasets_capture_hits_the_domain() -> None:
    alerts = replay("known_bad_ioc/suricata-verify__datasets-http-dns.pcap")
    assert {a["threat"]["indicator"]["name"] for a in alerts} == {"example.com"}
    assert {a["source"]["ip"] for a in alerts} == {"5.6.7.8"}


def test_testmyids_capture_hits_the_parent_domain() -> None:
    alerts = replay("known_bad_ioc/suricata-verify__testmyids.pcap")
    assert alerts, "no intel alert"
    assert {a["source"]["ip"] for a in alerts} == {"10.16.1.11"}
    assert {a["threat"]["indicator"]["name"] for a in alerts} == {"testmyids.com"}


def test_ndpi_malware_capture_hits_ip_and_certificate() -> None:
    alerts = replay("known_bad_ioc/ndpi__malware.pcap")
    got = {(a["rule"]["id"], a["source"]["ip"]) for a in alerts}
    assert ("cirtsa.intel.ip", "192.168.0.20") in got  # 193.109.85.123
    assert ("cirtsa.intel.certificate", "192.168.0.20") in got  # hobbeach.com certificate
    assert ("cirtsa.intel.domain", "192.168.7.7") in got  # www.internetbadguys.com
    for a in alerts:
        assert_ecs(a)


BENIGN = sorted(p.name for p in (PCAPS / "benign").glob("*.pcap*")) if PCAPS.is_dir() else []


@pytest.mark.parametrize("name", BENIGN or ["(no shared captures)"])
def test_benign_captures_hit_no_malware_indicator(name: str) -> None:
    # Only the malware-host feed: the other two files list test artifacts of their
    # captures (8.8.8.8 as "Dshield listed", example.com) that benign traffic uses too.
    assert replay(f"benign/{name}", SOURCES[1:2]) == []
