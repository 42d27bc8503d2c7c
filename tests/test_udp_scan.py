"""UDP port scans (correlation/udp_scan.py): unanswered datagrams to many ports / hosts."""

from __future__ import annotations

import pytest
from conftest import assert_ecs, shared_pcap
from network_builders import (
    NEGATIVE_CAPTURES,
    above_low,
    capture_alerts,
    flows,
    only,
    rule_ids,
    run,
)

BOTH = only("udp_scan_vertical", "udp_scan_horizontal")


def probe(src: str, dst: str, dport: int, t: float, answered: bool = False, **kw) -> dict:
    return dict(src=src, dst=dst, dport=dport, t=t, proto=17, sport=kw.pop("sport", 51000),
                spk=1, dpk=1 if answered else 0, spay=20, dpay=40 if answered else 0, **kw)


def test_vertical_udp_scan() -> None:
    ports = [53, 67, 69, 111, 123, 137, 161, 500, 514, 520, 1900, 5353]
    rows = [probe("10.9.9.9", "10.0.0.5", p, i * 0.05) for i, p in enumerate(ports)]
    alerts, _ = run([flows(rows)], BOTH)
    assert rule_ids(alerts) == ["cirtsa.scan.udp_vertical"]
    a = alerts[0]
    assert_ecs(a)
    assert (a["source"]["ip"], a["destination"]["ip"]) == ("10.9.9.9", "10.0.0.5")
    assert a["network"]["transport"] == "udp"
    assert a["threat"]["technique"]["id"] == ["T1046"]
    assert a["cirtsa"]["evidence"]["ports"] == sorted(ports)


def test_horizontal_udp_scan() -> None:
    rows = [probe("198.51.100.7", f"10.0.{i}.1", 161, i * 30.0) for i in range(25)]
    alerts, _ = run([flows(rows)], BOTH)
    assert rule_ids(alerts) == ["cirtsa.scan.udp_horizontal"]
    assert alerts[0]["destination"] == {"port": 161}
    assert alerts[0]["cirtsa"]["evidence"]["distinct_hosts"] >= 20  # first window at the threshold


def test_answered_service_replies_traceroute_and_multicast_are_not_probes() -> None:
    answered = [probe("10.9.9.9", "10.0.0.5", 1000 + p, p * 0.1, answered=True)
                for p in range(30)]
    # LLMNR / mDNS replies from their service port to a client's ephemeral ports
    replies = [probe("fe80::1", "fe80::2", 49000 + p, p * 0.1, sport=5355) for p in range(30)]
    traceroute = [probe("10.9.9.9", "203.0.113.9", 33434 + p, p * 0.1) for p in range(60)]
    multicast = [probe("10.9.9.9", f"239.255.255.{p}", 1900, p * 0.1) for p in range(40)]
    alerts, engine = run([flows(answered + replies + traceroute + multicast)], BOTH)
    assert alerts == [] and engine.stats["rows_buffered"] == 0


def test_few_ports_stay_quiet() -> None:
    rows = [probe("10.9.9.9", "10.0.0.5", p, p * 0.1) for p in range(1, 10)] * 3
    assert run([flows(rows)], BOTH)[0] == []


@pytest.mark.parametrize("name", NEGATIVE_CAPTURES + [
    "c2_beaconing/corelight__dcrat_30a385ed.pcap",  # LLMNR replies to many ephemeral ports
    "syn_flood_dos/zeek__dhcp_flood.pcap"])
def test_captures_without_udp_scans(name: str) -> None:
    alerts, _ = capture_alerts(shared_pcap(name))
    assert rule_ids(alerts, "cirtsa.scan.udp") == []
    assert above_low(alerts, "cirtsa.scan.udp") == []
