"""ICMP echo sweep and ARP sweep (correlation/sweep.py).

Real captures (MANIFEST names): icmp_sweep/sgr__hs-icmpScan.pcap (10.0.0.128 pings
10.0.0.0/24), icmp_sweep/slips__test12-icmp-portscan.pcap (192.168.1.109 pings 18 hosts),
icmp_sweep/zeek__5-pings.pcap and suricata-verify__icmp-threshold.pcap (pings to one host:
negative), port_scan/zeek__nmap-vsn.pcap (nmap ARP who-has sweep by 192.168.1.71).
"""

from __future__ import annotations

import pytest
from conftest import assert_ecs, shared_pcap
from network_builders import (
    NEGATIVE_CAPTURES,
    above_low,
    capture_alerts,
    events,
    flows,
    only,
    rule_ids,
    run,
)

ICMP = only("icmp_sweep")
ARP = only("arp_sweep")


def ping(src: str, dst: str, t: float, answered: bool = True) -> dict:
    return dict(src=src, dst=dst, t=t, proto=1, sport=8, dport=0, spk=1,
                dpk=1 if answered else 0, spay=56, dpay=56 if answered else 0)


def test_icmp_sweep_of_a_subnet() -> None:
    rows = [ping("10.0.0.128", f"10.0.0.{i}", i * 0.01, answered=i % 3 == 0)
            for i in range(1, 40)]
    alerts, _ = run([flows(rows)], ICMP)
    assert [a["rule"]["id"] for a in alerts] == ["cirtsa.sweep.icmp"]
    a = alerts[0]
    assert_ecs(a)
    assert a["source"]["ip"] == "10.0.0.128"
    assert a["threat"]["technique"]["id"] == ["T1018"]
    assert a["threat"]["tactic"]["id"] == ["TA0007"]
    ev = a["cirtsa"]["evidence"]
    assert ev["distinct_hosts"] == 39 and ev["answering_hosts"] == 13
    assert ev["hosts"][:3] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]  # numeric order
    assert "10.0.0.3" in a["related"]["ip"]


def test_repeated_pings_of_few_hosts_are_not_a_sweep() -> None:
    rows = [ping("172.16.133.2", f"172.16.0.{i % 9}", i * 1.0) for i in range(300)]
    alerts, engine = run([flows(rows)], ICMP)
    assert alerts == [] and engine.stats["findings"] == 0


def test_echo_replies_and_multicast_are_not_probes() -> None:
    replies = [dict(ping(f"10.0.0.{i}", "10.0.0.128", i * 0.01), sport=0, dport=8)
               for i in range(1, 40)]
    multicast = [ping("10.0.0.128", f"224.0.0.{i}", i * 0.01) for i in range(1, 40)]
    alerts, engine = run([flows(replies + multicast)], ICMP)
    assert alerts == [] and engine.stats["rows_buffered"] == 0


def test_threshold_is_configurable() -> None:
    rows = [ping("10.0.0.128", f"10.0.0.{i}", i * 0.01) for i in range(1, 16)]
    assert len(run([flows(rows)], ICMP)[0]) == 1
    assert run([flows(rows)], only("icmp_sweep", icmp_sweep={"min_hosts": 20}))[0] == []


def arp(src: str, dst: str, t: float, op: int = 1) -> dict:
    return dict(src=src, dst=dst, t=t, operation=op, src_mac=0x0A0B0C0D0E0F,
                eth_src_mac=0x0A0B0C0D0E0F, gratuitous=src == dst)


def test_arp_sweep_with_live_hosts() -> None:
    rows = [arp("192.168.1.250", f"192.168.1.{i}", i * 0.01) for i in range(1, 101)]
    rows += [arp(f"192.168.1.{i}", "192.168.1.250", i * 0.01 + 0.001, op=2) for i in (1, 7, 65)]
    alerts, _ = run([events("arp", rows)], ARP)
    assert [a["rule"]["id"] for a in alerts] == ["cirtsa.sweep.arp"]
    a = alerts[0]
    assert_ecs(a)
    ev = a["cirtsa"]["evidence"]
    assert a["source"]["ip"] == "192.168.1.250"
    assert ev["distinct_targets"] == 100 and ev["requests"] == 100
    assert ev["alive_targets"] == ["192.168.1.1", "192.168.1.7", "192.168.1.65"]


def test_normal_arp_traffic_and_gratuitous_storms_are_not_sweeps() -> None:
    # hosts re-ARPing their gateway, a gateway answering everybody, announcements
    rows = [arp(f"10.1.0.{i % 200 + 1}", "10.1.0.254", i * 0.2) for i in range(300)]
    rows += [arp("10.1.0.254", f"10.1.0.{i % 200 + 1}", i * 0.2 + 0.01, op=2) for i in range(300)]
    rows += [arp("10.1.0.9", "10.1.0.9", i * 0.1) for i in range(100)]
    alerts, engine = run([events("arp", rows)], ARP)
    assert alerts == [] and engine.stats["findings"] == 0


@pytest.mark.parametrize("name,scanner,hosts", [
    ("icmp_sweep/sgr__hs-icmpScan.pcap", "10.0.0.128", 256),
    ("icmp_sweep/slips__test12-icmp-portscan.pcap", "192.168.1.109", 18),
])
def test_real_icmp_sweeps(name: str, scanner: str, hosts: int) -> None:
    alerts, _ = capture_alerts(shared_pcap(name))
    sweeps = [a for a in alerts if a["rule"]["id"] == "cirtsa.sweep.icmp"]
    assert [a["source"]["ip"] for a in sweeps] == [scanner]
    assert sweeps[0]["cirtsa"]["evidence"]["distinct_hosts"] == hosts


@pytest.mark.parametrize("name", ["icmp_sweep/zeek__5-pings.pcap",
                                  "icmp_sweep/suricata-verify__icmp-threshold.pcap"])
def test_real_pings_of_one_host_are_quiet(name: str) -> None:
    alerts, _ = capture_alerts(shared_pcap(name))
    assert rule_ids(alerts, "cirtsa.sweep") == []


def test_real_nmap_arp_sweep() -> None:
    alerts, counts = capture_alerts(shared_pcap("port_scan/zeek__nmap-vsn.pcap"))
    if not counts.get("arp"):
        pytest.skip("the sensor in this build emits no arp events (no ARP analyzer configured)")
    sweeps = [a for a in alerts if a["rule"]["id"] == "cirtsa.sweep.arp"]
    assert [a["source"]["ip"] for a in sweeps] == ["192.168.1.71"]
    assert sweeps[0]["cirtsa"]["evidence"]["distinct_targets"] >= 200


@pytest.mark.parametrize("name", NEGATIVE_CAPTURES)
def test_benign_and_large_captures_raise_no_sweep(name: str) -> None:
    alerts, _ = capture_alerts(shared_pcap(name))
    assert rule_ids(alerts, "cirtsa.sweep") == []
    assert above_low(alerts, "cirtsa.sweep") == []
