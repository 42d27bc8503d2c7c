"""DNS tunnel / exfiltration-name / DGA detector (correlation/dns_tunnel.py): synthetic DNS
events shaped like iodine, dnscat2 and DGA malware, benign look-alikes, and the captures
of dns_tunneling/, exfiltration/ and benign/ (MANIFEST names) through the real sensor."""

from __future__ import annotations

import random
import string

import pytest
from conftest import PCAPS, assert_ecs, shared_pcap
from event_builders import make_batch

from correlation.dns_tunnel import INVALID_TLD, DnsTunnelDetector, _Psl, entropy
from correlation.engine import CorrelationEngine
from pipeline.config import load_config
from pipeline.embedded import run_pipeline

RULES = ("cirtsa.dns.",)
HEX = "0123456789abcdef"


def only_dns(**section) -> dict:
    detectors = {name: {"enabled": False} for name in load_config()["correlation"]["detectors"]}
    detectors["dns_tunnel"] = {"enabled": True, **section}
    return {"detectors": detectors}


def run(rows: list[dict], **section) -> list[dict]:
    engine = CorrelationEngine(only_dns(**section))
    return engine.push(make_batch("dns", rows)) + engine.flush()


def rand(rng: random.Random, n: int, alphabet: str = string.ascii_lowercase + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def tunnel_rows(n: int, parent: str = "t.example.net", client: str = "10.0.2.30",
                qtype: int = 10, label: int = 40, gap: float = 0.1, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = f"{rand(rng, label)}.{rand(rng, 20)}.{parent}"
        rows.append({"t": i * gap, "src": client, "dst": "10.0.2.20", "qname": name,
                     "qtype": qtype})
        rows.append({"t": i * gap + 0.001, "src": "10.0.2.20", "dst": client, "qname": name,
                     "qtype": qtype, "is_response": True,
                     "answers": [{"name": name, "type": "NULL", "class": "IN", "ttl": 0,
                                  "data": "ab" * 300}]})
    return rows


def test_psl_parent_domains() -> None:
    psl = _Psl()
    assert psl.split("a.b.example.co.uk")[0] == "example.co.uk"
    assert psl.split("x.pirate.sea")[0] == "pirate.sea"  # unknown TLD: PSL default rule
    assert psl.split("dnscat.5a03b5b1.19e4d098dc8c")[0] == INVALID_TLD
    assert psl.split("localhost")[0] == ""


def test_entropy_is_shannon() -> None:
    assert entropy(["aaaa", "abab", "abcd", ""]).round(6).tolist() == [0.0, 1.0, 2.0, 0.0]


def test_iodine_like_tunnel_alerts_high() -> None:
    alerts = run(tunnel_rows(100))
    tunnels = [a for a in alerts if a["rule"]["id"] == "cirtsa.dns.tunnel"]
    assert len(tunnels) == 1
    a = tunnels[0]
    assert a["source"]["ip"] == "10.0.2.30"
    assert a["cirtsa"]["alert"]["key"] == "10.0.2.30|example.net"
    ev = a["cirtsa"]["evidence"]
    assert ev["unique_names"] >= 30 and ev["tunnel_type_queries"] >= 30
    assert ev["large_answers"] == ev["responses"] > 0
    assert a["threat"]["technique"]["id"] == ["T1071.004"]
    assert a["dns"]["question"]["registered_domain"] == "example.net"
    assert_ecs(a)


def test_hex_names_without_a_domain_group_per_client() -> None:
    rng = random.Random(2)
    rows = [{"t": i * 0.4, "src": "192.168.220.56", "dst": "192.168.203.167",
             "qname": f"dnscat.{rand(rng, 60, HEX)}.{rand(rng, 20, HEX)}",
             "qtype": 16} for i in range(60)]
    alerts = [a for a in run(rows) if a["rule"]["id"] == "cirtsa.dns.tunnel"]
    assert [a["cirtsa"]["alert"]["key"] for a in alerts] == [f"192.168.220.56|{INVALID_TLD}"]


def test_benign_browsing_and_cdn_names_are_quiet() -> None:
    rng = random.Random(3)
    words = ["www", "cdn", "static", "images", "api", "login", "mail", "news", "upload", "en"]
    rows = []
    for i in range(400):
        parent = rng.choice(["wikipedia.org", "example.com", "akamaihd.net", "google.com"])
        name = f"{rng.choice(words)}{rng.randint(0, 40)}.{parent}"
        rows.append({"t": i * 0.5, "src": "10.0.0.9", "dst": "10.0.0.53", "qname": name,
                     "qtype": rng.choice([1, 28])})
    # PTR look-ups are unique by design and allow-listed
    rows += [{"t": i * 0.2, "src": "10.0.0.9", "dst": "10.0.0.53",
              "qname": f"{i % 250}.{i // 250}.168.192.in-addr.arpa", "qtype": 12}
             for i in range(300)]
    assert run(rows) == []


def test_many_short_unique_names_without_entropy_or_bulky_types_are_quiet() -> None:
    rows = [{"t": i * 0.1, "src": "10.0.0.9", "dst": "10.0.0.53",
             "qname": f"host{i}.corp.example.com", "qtype": 1} for i in range(200)]
    assert run(rows) == []


def test_tunnel_below_unique_threshold_is_quiet() -> None:
    alerts = run(tunnel_rows(20, label=20))
    assert [a for a in alerts if a["rule"]["id"] == "cirtsa.dns.tunnel"] == []


def test_single_exfiltration_name_is_low_severity() -> None:
    rng = random.Random(4)
    label = rand(rng, 58, string.ascii_lowercase + string.digits + "*=")
    name = f"{label}.{rand(rng, 10)}.test.txt"
    alerts = run([{"t": 0, "src": "192.168.2.225", "dst": "192.168.2.134", "qname": name,
                   "qtype": 1}])
    assert [(a["rule"]["id"], a["cirtsa"]["alert"]["severity_label"]) for a in alerts] == [
        ("cirtsa.dns.exfil_name", "low")]
    assert alerts[0]["cirtsa"]["evidence"]["max_label_chars"] == 58


def test_dga_nxdomain_burst() -> None:
    rng = random.Random(5)
    rows = []
    for i in range(15):
        name = f"{rand(rng, 12, string.ascii_lowercase)}.{rng.choice(['com', 'net', 'biz'])}"
        rows.append({"t": i, "src": "10.0.0.66", "dst": "10.0.0.53", "qname": name, "qtype": 1})
        rows.append({"t": i + 0.01, "src": "10.0.0.53", "dst": "10.0.0.66", "qname": name,
                     "qtype": 1, "is_response": True, "rcode": 3})
    alerts = run(rows)
    assert [(a["rule"]["id"], a["source"]["ip"]) for a in alerts] == [
        ("cirtsa.dns.dga", "10.0.0.66")]
    assert 10 <= alerts[0]["cirtsa"]["evidence"]["nxdomain_domains"] <= 15
    assert_ecs(alerts[0])


def test_nxdomain_for_few_or_wordy_names_is_not_dga() -> None:
    rows = []
    names = [f"printer{i}.corp" for i in range(20)] + ["wpad.example.com"] * 5 \
        + [f"{w}.com" for w in ("aa", "bb", "cc")]
    for i, name in enumerate(names):
        rows.append({"t": i, "src": "10.0.0.53", "dst": "10.0.0.67", "qname": name,
                     "is_response": True, "rcode": 3})
    assert run(rows) == []


def test_thresholds_come_from_config() -> None:
    assert run(tunnel_rows(40), min_unique_names=100, min_tunnel_type_queries=100,
               exfil_min_label_chars=64) == []


def test_detector_declares_threshold_keys() -> None:
    with pytest.raises(ValueError, match="missing keys"):
        DnsTunnelDetector({"window_s": 60, "hop_s": 60})


# --- real captures ---------------------------------------------------------------------------


def replay(name: str) -> list[dict]:
    config = load_config()
    config["correlation"] = only_dns()
    report = run_pipeline([shared_pcap(name)], config)
    return [a for a in report.alerts if a["rule"]["id"].startswith(RULES)]


def test_iodine_capture() -> None:
    # MANIFEST: iodine DNS tunnel 10.0.2.30 -> resolver 10.0.2.20:53, *.pirate.sea
    alerts = replay("dns_tunneling/ndpi__dns-tunnel-iodine.pcap")
    tunnels = [a for a in alerts if a["rule"]["id"] == "cirtsa.dns.tunnel"]
    assert [(a["source"]["ip"], a["cirtsa"]["evidence"]["parent_domain"]) for a in tunnels] == [
        ("10.0.2.30", "pirate.sea")]
    assert tunnels[0]["destination"]["ip"] == "10.0.2.20"
    for a in alerts:
        assert_ecs(a)


def test_dnscat_exfiltration_capture() -> None:
    # MANIFEST: 192.168.220.56 -> 192.168.203.167:53, 150 long hex-label queries in 60 s
    alerts = replay("exfiltration/ndpi__dns_exfiltration.pcap")
    assert {a["source"]["ip"] for a in alerts} == {"192.168.220.56"}
    assert "cirtsa.dns.tunnel" in {a["rule"]["id"] for a in alerts}


def test_single_query_exfiltration_capture() -> None:
    # MANIFEST: single long/high-entropy DNS query+response
    alerts = replay("dns_tunneling/ndpi__dns-exf.pcap")
    assert [(a["rule"]["id"], a["source"]["ip"]) for a in alerts] == [
        ("cirtsa.dns.exfil_name", "192.168.2.225")]


NEGATIVE = ([f"benign/{p.name}" for p in sorted((PCAPS / "benign").glob("*.pcap*"))]
            + ["large/zeek__ssh.pcap", "large/zeek__echo-connections.pcap"]) \
    if PCAPS.is_dir() else ["(no shared captures)"]


@pytest.mark.parametrize("name", NEGATIVE)
def test_benign_captures_raise_nothing_above_low(name: str) -> None:
    alerts = replay(name)
    assert [a["message"] for a in alerts if a["event"]["severity"] > 21] == []
