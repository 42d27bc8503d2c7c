"""Port scan detectors: failed-attempt classification, vertical and horizontal scans, negatives.

Flows are synthetic (flow_batch in test_engine.py); their shapes follow the captures in
port_scan/ (MANIFEST names): simplescan__port_scan.pcap (10 SYNs to one host in 0.2 ms),
simplescan__445_scan.pcap (slow tcp/445 sweep, minutes between hosts),
simplescan__backscatter.pcap (SYN-ACK/RST backscatter, must not alert),
ndpi__tcp_scan.pcapng (REJ, half-open and FIN/NULL/XMAS probes).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from correlation.port_scan import failed_attempt_mask

pytestmark = pytest.mark.usefixtures("core_detectors_only")

try:
    from test_engine import STATES, config_with, flow_batch, run, vertical_scan
except ImportError:  # tests/ imported as a package
    from tests.test_engine import STATES, config_with, flow_batch, run, vertical_scan

FAILED = {"S0", "REJ", "RSTOS0", "HALF_OPEN", "CONNECT_RST", "FIN_SCAN", "NULL_SCAN",
          "XMAS_SCAN"}


def by_rule(alerts: list[dict], rule_id: str) -> list[dict]:
    return [a for a in alerts if a["rule"]["id"] == rule_id]


@pytest.mark.parametrize("state", sorted(STATES))
def test_failed_attempt_classification(state: str) -> None:
    batch = flow_batch([dict(src="10.0.0.1", dst="10.0.0.2", dport=80, t=0, state=state)])
    assert bool(failed_attempt_mask(batch.columns)[0]) == (state in FAILED)


def test_udp_and_data_carrying_flows_are_not_attempts() -> None:
    rows = [dict(src="10.0.0.1", dst="10.0.0.2", dport=53, t=0, state="S0", proto=17),
            dict(src="10.0.0.1", dst="10.0.0.2", dport=80, t=0, state="HALF_OPEN",
                 src_payload=10)]
    assert not failed_attempt_mask(flow_batch(rows).columns).any()


# --- vertical ----------------------------------------------------------------------------------


def test_vertical_scan_of_ten_ports() -> None:
    ports = [21, 113, 23, 135, 111, 143, 445, 554, 22, 995]
    alerts, _ = run(vertical_scan(ports=ports, step=2e-5))
    assert [a["rule"]["id"] for a in alerts] == ["cirtsa.scan.vertical"]
    a = alerts[0]
    assert a["source"]["ip"] == "192.168.2.154"
    assert a["destination"] == {"ip": "192.168.2.22"}  # many ports: no destination.port
    assert a["message"] == "192.168.2.154 scanned 10 ports on 192.168.2.22 in 0.0 s"
    assert a["threat"]["technique"]["id"] == ["T1046"]
    assert a["threat"]["tactic"]["id"] == ["TA0007"]
    ev = a["cirtsa"]["evidence"]
    assert ev["distinct_ports"] == 10 and ev["ports"] == sorted(ports)
    assert (ev["attempts"], ev["unanswered"], ev["refused"], ev["half_open"]) == (10, 10, 0, 0)
    assert a["related"]["ip"] == ["192.168.2.154", "192.168.2.22"]
    assert a["observer"] == {"name": "sensor-1", "ingress": {"zone": "dmz"}}


def test_vertical_scan_below_threshold_is_quiet() -> None:
    alerts, stats = run(vertical_scan(ports=[1, 2, 3, 4]))
    assert alerts == [] and stats["findings"] == 0


def test_repeated_attempts_to_the_same_ports_count_once() -> None:
    rows = vertical_scan(ports=[1, 2, 3, 4] * 20, step=0.5)
    assert run(rows)[0] == []


def test_refused_half_open_and_stealth_probes_count_and_open_ports_are_reported() -> None:
    # The shape of ndpi__tcp_scan.pcapng: connect/half-open on open ports, REJ on closed
    # ones, then FIN, NULL and XMAS probes.
    states = ["CONNECT_RST", "HALF_OPEN", "REJ", "REJ", "FIN_SCAN", "NULL_SCAN", "XMAS_SCAN"]
    ports = [80, 443, 445, 3389, 3390, 3391, 3392]
    rows = [dict(src="192.168.1.178", dst="192.168.1.2", dport=p, t=8 * i, state=s)
            for i, (p, s) in enumerate(zip(ports, states, strict=True))]
    alerts, _ = run(rows)
    assert len(alerts) == 1
    ev = alerts[0]["cirtsa"]["evidence"]
    assert ev["distinct_ports"] == 7
    assert ev["open_ports"] == [80, 443]
    assert (ev["half_open"], ev["refused"], ev["unanswered"]) == (2, 5, 0)


def test_successful_connections_are_never_a_scan() -> None:
    # A browser / client opening many established connections to many ports and hosts.
    rows = [dict(src="10.1.1.1", dst=f"203.0.113.{i % 7}", dport=p, t=i * 0.05, state=s)
            for i, (p, s) in enumerate((p, s) for p in range(8000, 8040)
                                       for s in ("SF", "S1", "SF_EMPTY", "MIDSTREAM"))]
    alerts, stats = run(rows)
    assert alerts == [] and stats["rows_buffered"] == 0


@pytest.mark.parametrize("state", ["BACKSCATTER_SYNACK", "BACKSCATTER_RST",
                                   "BACKSCATTER_FLIPPED"])
def test_backscatter_is_not_a_scan(state: str) -> None:
    # A DoS victim (202.229.120.98:80 in simplescan__backscatter.pcap) answering SYNs spoofed
    # with our addresses: flows from it to many of our hosts and ports, or (flipped) from us.
    rng = np.random.default_rng(1)
    rows = []
    for i in range(400):
        ours, victim = f"192.150.{186 + i % 2}.{rng.integers(1, 255)}", "202.229.120.98"
        src, dst = (ours, victim) if state == "BACKSCATTER_FLIPPED" else (victim, ours)
        sport, dport = (80, int(rng.integers(1024, 65535)))
        if state == "BACKSCATTER_FLIPPED":
            sport, dport = dport, 80
        rows.append(dict(src=src, dst=dst, sport=sport, dport=dport, t=i * 3.0, state=state))
    alerts, stats = run(rows)
    assert alerts == [] and stats["findings"] == 0


def test_ipv6_vertical_scan() -> None:
    rows = vertical_scan(src="2001:db8::bad", dst="2001:db8:1::22", ports=range(20, 30))
    rows += vertical_scan(src="10.0.0.1", dst="10.0.0.2", ports=[1, 2])  # mixed families
    alerts, _ = run(rows)
    assert [(a["source"]["ip"], a["destination"]["ip"]) for a in alerts] == [
        ("2001:db8::bad", "2001:db8:1::22")]


def test_same_scan_seen_by_two_sensors_counts_ports_once() -> None:
    rows = vertical_scan(ports=range(1, 7), observer="sensor-a", zone="dmz")
    rows += vertical_scan(ports=range(1, 7), observer="sensor-b", zone="core")
    alerts, _ = run(rows)
    assert len(alerts) == 1
    a = alerts[0]
    assert a["cirtsa"]["evidence"]["distinct_ports"] == 6
    assert a["cirtsa"]["evidence"]["attempts"] == 12
    assert a["observer"] == {"name": "sensor-a", "ingress": {"zone": "core"}}
    assert a["cirtsa"]["observers"] == {"name": ["sensor-a", "sensor-b"], "zone": ["core", "dmz"]}


def test_fused_observer_lists_name_every_sensor_and_updates_do_not_count() -> None:
    # fusion's de-duplicated flows carry every observer in observer_names; a late observer
    # update (first name not its own observer) re-reports a flow and is not a new attempt
    kept = vertical_scan(ports=range(1, 7), observer="sensor-a")
    for r in kept:
        r["observer_names"] = "sensor-a|zeek"
    updates = vertical_scan(ports=range(1, 7), observer="zeek")
    for r in updates:
        r["observer_names"] = "sensor-a|zeek"
    alerts, _ = run(kept + updates)
    assert len(alerts) == 1
    a = alerts[0]
    assert a["cirtsa"]["evidence"]["attempts"] == 6
    assert a["cirtsa"]["observers"]["name"] == ["sensor-a", "zeek"]


def test_vertical_threshold_is_configurable() -> None:
    config = config_with(port_scan_vertical={"vertical_ports": 20})
    assert run(vertical_scan(ports=range(1, 11)), config)[0] == []
    assert len(run(vertical_scan(ports=range(1, 21)), config)[0]) == 1


# --- horizontal --------------------------------------------------------------------------------


def _sweep(hosts: int, gap_s: float, port: int = 445, state: str = "S0",
           src: str = "176.192.150.3") -> list[dict]:
    return [dict(src=src, dst=f"192.168.{10 + i}.{20 + i}", dport=port, t=i * gap_s,
                 state=state) for i in range(hosts)]


def test_slow_horizontal_scan_within_an_hour() -> None:
    # One host every 8 minutes, like the tcp/445 sweep in simplescan__445_scan.pcap.
    alerts, _ = run(_sweep(6, 480))
    assert [a["rule"]["id"] for a in alerts] == ["cirtsa.scan.horizontal"]
    a = alerts[0]
    assert a["destination"] == {"port": 445}  # many hosts: no destination.ip
    assert a["source"]["ip"] == "176.192.150.3"
    ev = a["cirtsa"]["evidence"]
    assert ev["distinct_hosts"] >= 5
    assert ev["hosts"] == sorted(ev["hosts"], key=lambda h: tuple(map(int, h.split("."))))
    assert set(ev["hosts"]) < set(a["related"]["ip"])
    assert a["message"].startswith(f"176.192.150.3 scanned {ev['distinct_hosts']} hosts on "
                                   "port 445/tcp in ")


def test_horizontal_scan_slower_than_the_window_is_quiet() -> None:
    assert run(_sweep(8, 1500))[0] == []  # at most 3 hosts in any hour


def test_horizontal_needs_one_port() -> None:
    # 10 hosts, each on a different port: neither vertical nor horizontal
    rows = [dict(src="125.27.226.209", dst=f"10.10.{i}.1", dport=80 + i, t=i, state="S0")
            for i in range(10)]
    assert run(rows)[0] == []


def test_refused_sweep_is_a_scan() -> None:
    alerts, _ = run(_sweep(10, 0.001, port=23, state="REJ", src="10.0.0.1"))
    assert len(alerts) == 1
    assert alerts[0]["cirtsa"]["evidence"]["refused"] == 10


def test_spoofed_syn_flood_is_not_a_scan_and_stays_cheap() -> None:
    # 50k spoofed sources, one SYN each, to one web server: no source reaches a threshold.
    n = 50_000
    rng = np.random.default_rng(3)
    src = rng.integers(1, 2**32 - 1, n, dtype=np.uint64)
    rows = [dict(src="10.0.0.1", dst="192.0.2.80", dport=80, t=0.0, state="S0")]
    batch = flow_batch(rows * n)
    raw = batch.columns["src_ip"].view(np.uint8).reshape(n, 16).copy()
    raw[:, 12:] = src.astype(">u4").view(np.uint8).reshape(n, 4)
    batch.columns["src_ip"] = raw.view(batch.columns["src_ip"].dtype).reshape(n)
    batch.columns["timestamp"] += (np.arange(n) * 1_000_000).astype(np.int64)  # 50 s
    batch.columns["end"] = batch.columns["timestamp"].copy()
    start = time.perf_counter()
    alerts, stats = run([batch])
    elapsed = time.perf_counter() - start
    assert alerts == [] and stats["findings"] == 0
    assert elapsed < 10, f"{elapsed:.1f} s for {n} spoofed SYNs"
