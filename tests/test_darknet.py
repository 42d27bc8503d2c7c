"""Darknet-aware scan detection (correlation/darknet.py): cirtsa.scan.darknet.

Real captures (port_scan/, bro-simple-scan's test traces; MANIFEST): the darknet is the one
their ground truth configures (groundtruth/simplescan__multiport_scan.pcap__test.zeek and
simplescan__445_scan.pcap__test.zeek: `Site::darknet_address_space = {10.10.0.0/16}`), where
Zeek's expected notice is Scan::Address_Scan by 125.27.226.209 and 176.192.150.3.
simplescan__backscatter.pcap: replies of a spoofed-flood victim reaching 192.150.0.0/16 (the
capture's local net): backscatter into a darknet is not a scan.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_ecs, shared_pcap
from network_builders import (
    NEGATIVE_CAPTURES,
    A,
    R,
    S,
    capture_alerts,
    flows,
    only,
    rule_ids,
    run,
)

from correlation.darknet import DarknetScanDetector, attempt_mask
from pipeline.config import load_config

DARKNET = "10.10.0.0/16"


def darknet_config(*nets: str, **extra) -> dict:
    return only("darknet_scan", darknet_scan={"enabled": True, "darknets": list(nets), **extra})


def pipeline_override(*nets: str) -> dict:
    return {"correlation": {"detectors": {"darknet_scan": {
        "enabled": True, "darknets": list(nets)}}}}


def probe(src: str, dst: str, t: float, dport: int = 80, **kw) -> dict:
    return dict(src=src, dst=dst, t=t, dport=dport, sflags=S, dflags=0, spk=1, dpk=0, spay=0,
                dpay=0, dur=0.0, state="S0", **kw)


def test_no_darknet_by_default_selects_nothing() -> None:
    section = load_config()["correlation"]["detectors"]["darknet_scan"]
    assert section["darknets"] == []
    detector = DarknetScanDetector(section)
    batch = flows([probe("198.51.100.7", f"10.10.0.{i}", i) for i in range(1, 10)])
    assert not detector.select(batch).any()


def test_slow_probes_of_darknet_addresses_alert() -> None:
    # one probe every 40 min on alternating ports: 5 dark hosts in 2 h 40 min
    rows = [probe("198.51.100.7", f"10.10.{i * 37}.{i + 3}", i * 2400.0, dport=(80, 8080)[i % 2])
            for i in range(5)]
    rows += [probe("198.51.100.7", f"192.168.1.{i}", 100 + i * 3000.0) for i in range(1, 4)]
    alerts, _ = run([flows(rows)], darknet_config(DARKNET))
    assert rule_ids(alerts) == ["cirtsa.scan.darknet"]
    a = alerts[0]
    assert_ecs(a)
    assert a["source"]["ip"] == "198.51.100.7"
    assert a["threat"]["technique"]["id"] == ["T1046"]
    ev = a["cirtsa"]["evidence"]
    # alerted in the first window holding 3 dark hosts; the lit hosts never count
    assert ev["distinct_addresses"] == ev["attempts"] >= 3
    assert all(ip.startswith("10.10.") for ip in ev["addresses"])
    assert ev["ports"] == [80, 8080]
    assert "10.10.0.3" in a["related"]["ip"]


def test_below_threshold_and_outside_the_darknet_are_quiet() -> None:
    # many ports on two dark hosts, and many lit hosts: neither is a darknet address scan
    rows = [probe("198.51.100.7", f"10.10.5.{1 + i % 2}", i * 10.0, dport=1 + i)
            for i in range(50)]
    rows += [probe("198.51.100.8", f"10.11.0.{i}", i * 10.0) for i in range(1, 30)]
    assert run([flows(rows)], darknet_config(DARKNET))[0] == []


def test_replies_into_the_darknet_are_backscatter_not_scans() -> None:
    # a spoofed-flood victim answers SYN-ACK / RST to dark addresses; a resolver answers
    # reflection queries from port 53; an echo reply lands there: none is a probe
    rows = [dict(src="203.0.113.9", dst=f"10.10.1.{i}", t=i, sport=80, dport=40000 + i,
                 sflags=S | A, dflags=0, spk=1, dpk=0, spay=0, dpay=0) for i in range(1, 20)]
    rows += [dict(src="203.0.113.9", dst=f"10.10.2.{i}", t=i, sport=80, dport=40000 + i,
                  sflags=R, dflags=0, spk=1, dpk=0, spay=0, dpay=0) for i in range(1, 20)]
    rows += [dict(src="203.0.113.53", dst=f"10.10.3.{i}", t=i, sport=53, dport=33000,
                  proto=17, spk=1, dpk=0, spay=512, dpay=0) for i in range(1, 20)]
    rows += [dict(src="203.0.113.1", dst=f"10.10.4.{i}", t=i, sport=0, dport=0, proto=1,
                  spk=1, dpk=0, spay=56, dpay=0) for i in range(1, 20)]
    batch = flows(rows)
    service = np.array([53, 123], np.uint16)
    assert not attempt_mask(batch.columns, service).any()
    assert run([batch], darknet_config(DARKNET))[0] == []


def test_udp_and_ping_probes_count() -> None:
    rows = [dict(src="198.51.100.9", dst=f"10.10.9.{i}", t=i * 60.0, sport=41000, dport=161,
                 proto=17, spk=1, dpk=0, spay=40, dpay=0) for i in range(1, 3)]
    rows += [dict(src="198.51.100.9", dst=f"10.10.8.{i}", t=i * 60.0, sport=8, dport=0,
                  proto=1, spk=1, dpk=0, spay=56, dpay=0) for i in range(1, 3)]
    alerts, _ = run([flows(rows)], darknet_config(DARKNET, min_addresses=4))
    assert rule_ids(alerts) == ["cirtsa.scan.darknet"]
    assert alerts[0]["cirtsa"]["evidence"]["transports"] == ["icmp", "udp"]


def test_ipv6_darknet() -> None:
    rows = [probe("2001:db8:ffff::66", f"2001:db8:dead::{i:x}", i * 30.0) for i in range(1, 5)]
    alerts, _ = run([flows(rows)], darknet_config("2001:db8:dead::/48", DARKNET))
    assert [a["source"]["ip"] for a in alerts] == ["2001:db8:ffff::66"]


@pytest.mark.parametrize("name,scanner", [
    ("port_scan/simplescan__multiport_scan.pcap", "125.27.226.209"),
    ("port_scan/simplescan__445_scan.pcap", "176.192.150.3"),
])
def test_real_darknet_address_scans(name: str, scanner: str) -> None:
    alerts, _ = capture_alerts(shared_pcap(name), pipeline_override(DARKNET))
    dark = [a for a in alerts if a["rule"]["id"] == "cirtsa.scan.darknet"]
    assert [a["source"]["ip"] for a in dark] == [scanner]
    ev = dark[0]["cirtsa"]["evidence"]
    assert all(ip.startswith("10.10.") for ip in ev["addresses"])
    assert ev["distinct_addresses"] >= 3


def test_real_multiport_scan_lists_its_ports() -> None:
    alerts, _ = capture_alerts(shared_pcap("port_scan/simplescan__multiport_scan.pcap"),
                               pipeline_override(DARKNET))
    (dark,) = [a for a in alerts if a["rule"]["id"] == "cirtsa.scan.darknet"]
    # Zeek's notice: "scanned at least 5 unique hosts on ports #/tcp, #/tcp, #/tcp"
    assert dark["cirtsa"]["evidence"]["distinct_ports"] == 3
    assert dark["cirtsa"]["evidence"]["distinct_addresses"] >= 5


def test_real_backscatter_into_a_darknet_is_not_a_scan() -> None:
    alerts, _ = capture_alerts(shared_pcap("port_scan/simplescan__backscatter.pcap"),
                               pipeline_override("192.150.0.0/16"))
    assert rule_ids(alerts, "cirtsa.scan.darknet") == []
    assert "cirtsa.dos.backscatter" in rule_ids(alerts)  # the traffic is there, and seen


@pytest.mark.parametrize("name", NEGATIVE_CAPTURES)
def test_benign_captures_with_the_darknet_configured(name: str) -> None:
    alerts, _ = capture_alerts(shared_pcap(name), pipeline_override(DARKNET))
    assert rule_ids(alerts, "cirtsa.scan.darknet") == []
