"""ARP spoofing detector (correlation/arp_spoof.py): synthetic ARP events shaped like
arpspoof/ettercap poisoning, gateway impersonation and gratuitous storms; benign ARP
resolution, DHCP-style probes and an ARP scan stay quiet, also on the arp_spoofing/
captures (MANIFEST) through the real sensor (sensors/arp.py)."""

from __future__ import annotations

from conftest import assert_ecs, shared_pcap
from event_builders import make_batch

from correlation.engine import CorrelationEngine
from pipeline.config import load_config
from pipeline.embedded import run_pipeline

GW, GW_MAC = "192.168.1.1", "d8:58:d7:00:67:11"
VICTIM, VICTIM_MAC = "192.168.1.50", "44:8a:5b:2d:8b:33"
ATTACKER, ATTACKER_MAC = "192.168.1.66", "50:ed:3c:39:bc:d9"


def only_arp(**section) -> dict:
    detectors = {name: {"enabled": False} for name in load_config()["correlation"]["detectors"]}
    detectors["arp_spoof"] = {"enabled": True, **section}
    return {"detectors": detectors}


def run(rows: list[dict], **section) -> list[dict]:
    engine = CorrelationEngine(only_arp(**section))
    return engine.push(make_batch("arp", rows)) + engine.flush()


def reply(t: float, ip: str, mac: str, to_ip: str, to_mac: str) -> dict:
    return {"t": t, "src": ip, "dst": to_ip, "operation": 2, "src_mac": mac, "dst_mac": to_mac,
            "eth_src_mac": mac}


def normal_resolution() -> list[dict]:
    return [{"t": 0, "src": VICTIM, "dst": GW, "operation": 1, "src_mac": VICTIM_MAC,
             "eth_src_mac": VICTIM_MAC}, reply(0.001, GW, GW_MAC, VICTIM, VICTIM_MAC)]


def poisoning() -> list[dict]:
    # arpspoof -t victim gateway: "gateway is-at attacker" every 2 s
    return [reply(1 + 2 * i, GW, ATTACKER_MAC, VICTIM, VICTIM_MAC) for i in range(20)]


def test_ip_claimed_by_two_macs() -> None:
    alerts = run(normal_resolution() + poisoning())
    assert [(a["rule"]["id"], a["source"]["ip"]) for a in alerts] == [
        ("cirtsa.arp.ip_conflict", GW)]
    a = alerts[0]
    assert a["source"]["mac"] == "50-ED-3C-39-BC-D9"  # the later claimant
    assert sorted(a["cirtsa"]["evidence"]["macs"]) == ["50-ED-3C-39-BC-D9", "D8-58-D7-00-67-11"]
    assert a["threat"]["technique"]["id"] == ["T1557.002"]
    assert_ecs(a)


def test_configured_gateway_spoof_is_high() -> None:
    alerts = run(poisoning(), gateways=[{"ip": GW, "mac": GW_MAC}])
    assert [(a["rule"]["id"], a["cirtsa"]["alert"]["severity_label"]) for a in alerts] == [
        ("cirtsa.arp.gateway_spoof", "high")]
    assert alerts[0]["source"]["mac"] == "50-ED-3C-39-BC-D9"
    # the gateway answering with its own MAC is fine
    assert run(normal_resolution(), gateways=[{"ip": GW, "mac": GW_MAC}]) == []


def test_gratuitous_storm() -> None:
    rows = [{"t": i * 0.5, "src": ATTACKER, "dst": ATTACKER, "operation": 2,
             "src_mac": ATTACKER_MAC, "gratuitous": True} for i in range(40)]
    alerts = run(rows)
    assert [a["rule"]["id"] for a in alerts] == ["cirtsa.arp.gratuitous_storm"]
    assert alerts[0]["cirtsa"]["alert"]["key"] == "50-ED-3C-39-BC-D9"
    assert run(rows[:3]) == []  # a booting host announces itself a few times


def test_probes_resolution_and_scan_are_quiet() -> None:
    probes = [{"t": i, "src": "0.0.0.0", "dst": VICTIM, "operation": 1, "src_mac": m}
              for i, m in enumerate([VICTIM_MAC, ATTACKER_MAC, GW_MAC])]  # RFC 5227 probes
    scan = [{"t": 5 + i * 0.01, "src": ATTACKER, "dst": f"192.168.1.{i}", "operation": 1,
             "src_mac": ATTACKER_MAC} for i in range(2, 250)]
    assert run(normal_resolution() * 5 + probes + scan) == []


def test_real_captures_raise_no_spoofing() -> None:
    # chrissanders__arp_resolution.pcapng: one request/reply (NEGATIVE in MANIFEST);
    # slips__test8-malicious.pcap: an ARP scan from 192.168.1.247 (Slips' "performing an arp
    # scan"), where every IP keeps one MAC: a sweep, not spoofing.
    for name in ("arp_spoofing/chrissanders__arp_resolution.pcapng",
                 "arp_spoofing/slips__test8-malicious.pcap"):
        config = load_config()
        config["correlation"] = only_arp()
        report = run_pipeline([shared_pcap(name)], config)
        assert report.events["arp"] > 0, f"{name}: no ARP events from the sensor"
        assert [a for a in report.alerts if a["rule"]["id"].startswith("cirtsa.arp.")] == []
