"""SYN flood and volumetric flood detectors (correlation/dos.py), victim-keyed.

Real capture: syn_flood_dos/suricata-verify__tcp-session-syn-flood.pcap (200 SYNs
192.0.2.10 -> 198.51.100.5:443 in 0.2 s); port_scan/ndpi__synscan.pcap (fast SYN port
scan of one host: a scan, not a flood).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_ecs, shared_pcap
from network_builders import (
    NEGATIVE_CAPTURES,
    S,
    above_low,
    capture_alerts,
    flows,
    only,
    rule_ids,
    run,
)

from correlation.dos import SynFloodDetector, VolumetricFloodDetector
from sensors.packets import IP_DTYPE

SYN = only("dos_syn_flood")
FLOOD = only("dos_flood")


def syn(src: str, t: float, dport: int = 443, sport: int = 40000, **kw) -> dict:
    return dict(src=src, dst="198.51.100.5", dport=dport, sport=sport, t=t, sflags=S,
                dflags=0, spk=1, dpk=0, spay=0, dpay=0, dur=0.0, state="S0", **kw)


def spoof_sources(batch, seed: int = 1):
    """Replace the IPv4 source of every row by a random address (spoofed flood)."""
    n = len(batch)
    raw = batch.columns["src_ip"].view(np.uint8).reshape(n, 16).copy()
    rng = np.random.default_rng(seed)
    raw[:, 12:] = rng.integers(1, 2**32 - 1, n, dtype=np.uint64).astype(">u4").view(
        np.uint8).reshape(n, 4)
    batch.columns["src_ip"] = raw.view(IP_DTYPE).reshape(n)
    return batch


def test_detectors_are_victim_keyed() -> None:
    assert SynFloodDetector.partition_key == "destination"
    assert VolumetricFloodDetector.partition_key == "destination"


def test_single_source_syn_flood() -> None:
    rows = [syn("192.0.2.10", i * 0.001, sport=40000 + i) for i in range(200)]
    alerts, _ = run([flows(rows)], SYN)
    assert rule_ids(alerts) == ["cirtsa.dos.syn_flood"]
    a = alerts[0]
    assert_ecs(a)
    assert a["destination"] == {"ip": "198.51.100.5", "port": 443}
    assert a["source"]["ip"] == "192.0.2.10"
    assert a["event"]["severity"] == 73
    assert a["threat"]["tactic"]["id"] == ["TA0040"]
    assert a["threat"]["technique"]["id"] == ["T1499.001"]
    ev = a["cirtsa"]["evidence"]
    assert ev["attempts"] == 200 and ev["peak_per_s"] == 200 and ev["distinct_sources"] == 1
    assert ev["spoofed_sources_likely"] is False


def test_spoofed_syn_flood_adds_up_on_the_victim() -> None:
    rows = [syn("10.0.0.1", i * 0.0005, sport=1024 + i % 60000) for i in range(20000)]
    alerts, _ = run([spoof_sources(flows(rows))], SYN)
    assert rule_ids(alerts) == ["cirtsa.dos.syn_flood"]
    ev = alerts[0]["cirtsa"]["evidence"]
    assert ev["spoofed_sources_likely"] is True and ev["distinct_sources"] > 19000
    assert len(ev["sources"]) == 20
    assert "198.51.100.5" in alerts[0]["related"]["ip"]


def test_slow_attempts_and_completed_handshakes_are_not_a_flood() -> None:
    slow = [syn("192.0.2.10", i * 0.02) for i in range(1000)]  # 50/s for 20 s
    busy_server = [dict(src=f"10.1.{i // 250}.{i % 250}", dst="198.51.100.5", dport=443,
                        t=i * 0.0005) for i in range(4000)]  # 2000 completed conns/s
    alerts, _ = run([flows(slow + busy_server)], SYN)
    assert alerts == []


def test_fast_port_scan_is_not_a_syn_flood() -> None:
    rows = [syn("172.16.0.8", i * 0.002, dport=1 + i) for i in range(1000)]
    assert run([flows(rows)], SYN)[0] == []


def test_volumetric_udp_flood() -> None:
    # 40 sources, each one flow of 30,000 packets in 1 s: 1.2M packets/s one-way
    rows = [dict(src=f"203.0.113.{i}", dst="10.0.0.80", dport=53, proto=17, t=2 + i * 0.01,
                 dur=1.0, spk=30000, dpk=0, spay=30000 * 100, dpay=0) for i in range(40)]
    alerts, _ = run([flows(rows)], FLOOD)
    assert rule_ids(alerts) == ["cirtsa.dos.flood"]
    a = alerts[0]
    assert_ecs(a)
    assert a["destination"]["ip"] == "10.0.0.80"
    assert a["threat"]["technique"]["id"] == ["T1498.001"]
    assert a["cirtsa"]["evidence"]["distinct_sources"] == 40


def test_long_one_way_stream_at_a_normal_rate_is_not_a_flood() -> None:
    # one flow of 1.8M packets spread over 30 min = 1,000 packets/s
    rows = [dict(src="203.0.113.1", dst="10.0.0.80", dport=5004, proto=17, t=0, dur=1800,
                 spk=1_800_000, dpk=0, spay=100, dpay=0)]
    assert run([flows(rows)], FLOOD)[0] == []


def test_real_syn_flood() -> None:
    alerts, _ = capture_alerts(shared_pcap(
        "syn_flood_dos/suricata-verify__tcp-session-syn-flood.pcap"))
    floods = [a for a in alerts if a["rule"]["id"] == "cirtsa.dos.syn_flood"]
    assert [(a["source"]["ip"], a["destination"]["ip"]) for a in floods] == [
        ("192.0.2.10", "198.51.100.5")]
    assert floods[0]["cirtsa"]["evidence"]["attempts"] == 200


def test_real_fast_syn_scan_is_not_a_flood() -> None:
    alerts, _ = capture_alerts(shared_pcap("port_scan/ndpi__synscan.pcap"))
    assert rule_ids(alerts, "cirtsa.dos") == []


@pytest.mark.parametrize("name", NEGATIVE_CAPTURES + [
    "syn_flood_dos/zeek__dhcp_flood.pcap",
    "syn_flood_dos/suricata-verify__dhcp-request-flood.pcap"])
def test_captures_without_dos(name: str) -> None:
    alerts, _ = capture_alerts(shared_pcap(name))
    assert rule_ids(alerts, "cirtsa.dos.syn_flood") == []
    assert rule_ids(alerts, "cirtsa.dos.flood") == []
    assert above_low(alerts, "cirtsa.dos") == []


def test_syn_flood_count_over_a_long_sparse_range_follows_the_rows() -> None:
    """One detect call over 12 h of sparse attempts at 300 victims plus one flood: the
    per-second count must be sparse (memory ~ rows), not one slot per victim per second
    (300 x 43,200 slots = 104 MB of int64)."""
    import tracemalloc

    from correlation.detector import WindowRange, WindowSpec
    from pipeline.config import load_config

    config = load_config()["correlation"]["detectors"]["dos_syn_flood"]
    hours = 12
    quiet = [dict(syn("192.0.2.10", v * 100.0 + k * hours * 1800.0), dst=f"10.9.{v // 200}."
                  f"{v % 200 + 1}") for v in range(300) for k in range(2)]
    flood = [syn("192.0.2.99", 5000 + i * 0.005, sport=40000 + i) for i in range(150)]
    batch = flows(quiet + flood)
    cols = batch.columns
    detector = SynFloodDetector(config)
    spec = WindowSpec.from_config(config)
    t = cols["timestamp"]
    windows = WindowRange(spec, int(spec.first_index(int(t.min()))),
                          int(spec.last_index(int(t.max()))))
    assert (int(t.max()) - int(t.min())) / 1e9 > (hours - 1) * 3600
    tracemalloc.start()
    try:
        findings = detector.detect({"flow": cols}, windows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert {f.key for f in findings} == {"198.51.100.5"}
    # a few hundred bytes per row and window copy is ample; per-second slots would be ~100 MB
    assert peak < 4_000 * len(batch), peak
