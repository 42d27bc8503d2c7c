"""Beaconing (correlation/beaconing.py): RITA-style regularity scores, vectorized.

Real capture: c2_beaconing/slips__test-cc-capture-1.pcap (curl to 141.193.213.21:443 every
2 s from 147.32.80.37). The AsyncRAT/DcRAT captures hold one and three C2 connections: not
a beacon by connection timing (documented in docs/detections.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_ecs, shared_pcap
from hypothesis import given, settings
from hypothesis import strategies as st
from network_builders import (
    NEGATIVE_CAPTURES,
    A,
    P,
    R,
    S,
    above_low,
    capture_alerts,
    events,
    flows,
    only,
    rule_ids,
    run,
    run_capture,
)
from scapy.layers.inet import IP, TCP
from scapy.utils import wrpcap

from correlation.beaconing import (
    beacon_scores,
    bowley_madm,
    established_tcp,
)

BEACON = only("beaconing")


def beacon_rows(interval: float, n: int, jitter: float = 0.0, seed: int = 0, dport: int = 443,
                size: int = 700, size_jitter: int = 0, src: str = "10.0.0.5",
                dst: str = "203.0.113.50", gaps: tuple = ()) -> list[dict]:
    rng = np.random.default_rng(seed)
    t, rows = 10.0, []
    for i in range(n):
        t += interval * (1 + rng.uniform(-jitter, jitter)) + (gaps[1] if i == gaps[:1] else 0)
        rows.append(dict(src=src, dst=dst, dport=dport, t=t,
                         spay=size + int(rng.integers(-size_jitter, size_jitter + 1))))
    return rows


def test_bowley_and_madm_match_a_direct_computation() -> None:
    rng = np.random.default_rng(5)
    values = rng.exponential(10, 101)
    group = np.zeros(values.size, np.int64)
    skew, madm, median = bowley_madm(group, values, 1)
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    assert skew[0] == pytest.approx((q1 + q3 - 2 * q2) / (q3 - q1))
    assert median[0] == pytest.approx(q2)
    assert madm[0] == pytest.approx(np.median(np.abs(values - q2)))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 10**6), min_size=3, max_size=30), min_size=1,
                max_size=8))
def test_grouped_statistics_equal_per_group_ones(groups: list[list[int]]) -> None:
    group = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)]).astype(np.int64)
    values = np.concatenate([np.array(g, float) for g in groups])
    perm = np.random.default_rng(0).permutation(values.size)  # order must not matter
    skew, madm, median = bowley_madm(group[perm], values[perm], len(groups))
    for i, g in enumerate(groups):
        q2 = np.median(g)
        assert median[i] == pytest.approx(q2)
        assert madm[i] == pytest.approx(np.median(np.abs(np.array(g) - q2)))


def reference_bowley_madm(group: np.ndarray, values: np.ndarray, n_groups: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole-array numpy implementation the compiled kernel replaced (lexsorted
    groups, interpolated quantiles at per-group offsets), kept as the oracle."""
    def quantiles(group, values, qs):
        order = np.lexsort((values, group))
        v = values[order].astype(np.float64)
        counts = np.bincount(group, minlength=n_groups)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        out = []
        for q in qs:
            pos = starts + q * np.maximum(counts - 1, 0)
            lo, hi = np.floor(pos).astype(np.int64), np.ceil(pos).astype(np.int64)
            ok = counts > 0
            res = np.full(n_groups, np.nan)
            frac = pos[ok] - lo[ok]
            res[ok] = v[lo[ok]] * (1 - frac) + v[hi[ok]] * frac
            out.append(res)
        return out

    q1, q2, q3 = quantiles(group, values, (0.25, 0.5, 0.75))
    den = q3 - q1
    valid = (den > 0) & (q2 != q1) & (q2 != q3)
    skew = np.zeros(n_groups)
    skew[valid] = (q1[valid] + q3[valid] - 2 * q2[valid]) / den[valid]
    (madm,) = quantiles(group, np.abs(values - np.nan_to_num(q2)[group]), (0.5,))
    return skew, np.nan_to_num(madm), np.nan_to_num(q2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 10**5) | st.sampled_from([0, 1, 7])),
                max_size=120), st.integers(0, 3))
def test_bowley_kernel_equals_the_numpy_reference_exactly(rows: list, extra: int) -> None:
    group = np.array([g for g, _ in rows], np.int64)
    values = np.array([v for _, v in rows], np.float64) / 4  # quarter steps: ties, fractions
    n_groups = (int(group.max()) + 1 if group.size else 0) + extra  # some empty groups
    got = bowley_madm(group, values, n_groups)
    want = reference_bowley_madm(group, values, n_groups)
    for a, b in zip(got, want, strict=True):
        assert a.tolist() == b.tolist()


def test_regular_beacon_with_jitter_alerts_as_encrypted_c2() -> None:
    alerts, _ = run([flows(beacon_rows(60, 60, jitter=0.2, size_jitter=30))], BEACON)
    assert rule_ids(alerts) == ["cirtsa.beacon.flow_encrypted"]
    a = alerts[0]
    assert_ecs(a)
    assert (a["source"]["ip"], a["destination"]["ip"], a["destination"]["port"]) == (
        "10.0.0.5", "203.0.113.50", 443)
    assert a["threat"]["technique"]["id"] == ["T1573"]
    assert a["threat"]["tactic"]["id"] == ["TA0011"]
    ev = a["cirtsa"]["evidence"]
    assert ev["score"] >= 0.8 and 50 <= ev["median_interval_s"] <= 70


def test_a_gap_in_the_beacon_does_not_hide_it() -> None:
    rows = beacon_rows(30, 110, jitter=0.1, gaps=(40, 900.0))  # 15 min pause
    alerts, _ = run([flows(rows)], BEACON)
    assert rule_ids(alerts) == ["cirtsa.beacon.flow_encrypted"]


def test_random_browsing_is_not_a_beacon() -> None:
    rng = np.random.default_rng(11)
    times = np.cumsum(rng.exponential(30, 200))  # Poisson contacts, varied sizes
    rows = [dict(src="10.0.0.5", dst="203.0.113.50", dport=443, t=float(t),
                 spay=int(rng.integers(200, 60000))) for t in times]
    bursts = [dict(src="10.0.0.6", dst="198.51.100.1", dport=80, t=float(b * 600 + i * 0.3))
              for b in range(6) for i in range(20)]  # page loads: bursts
    alerts, _ = run([flows(rows + bursts)], BEACON)
    assert alerts == []


def test_dns_name_beacon() -> None:
    rows = [dict(src="10.0.0.7", dst="10.0.0.53", t=10 + i * 120.0 + (i % 3),
                 qname="cc.evil.example", qtype=1, qclass=1) for i in range(30)]
    alerts, _ = run([events("dns", rows)], BEACON)
    assert rule_ids(alerts) == ["cirtsa.beacon.dns"]
    assert alerts[0]["cirtsa"]["evidence"]["name"] == "cc.evil.example"
    assert alerts[0]["threat"]["technique"]["id"] == ["T1071.004"]


def test_scores_of_a_perfect_beacon_are_one() -> None:
    t = (np.arange(50) * 60 * 10**9).astype(np.int64)
    s = beacon_scores(np.zeros(50, np.int64), 1, t, np.full(50, 500.0), bins=10, ideal=30)
    for k in ("ts_skew", "ts_madm", "count", "hist", "ds_skew", "ds_madm", "score"):
        assert s[k][0] == pytest.approx(1.0), k


def test_real_periodic_beacon() -> None:
    alerts, _ = capture_alerts(shared_pcap("c2_beaconing/slips__test-cc-capture-1.pcap"))
    beacons = [a for a in alerts if a["rule"]["id"].startswith("cirtsa.beacon.flow")]
    assert [(a["source"]["ip"], a["destination"]["ip"]) for a in beacons] == [
        ("147.32.80.37", "141.193.213.21")]
    assert 1.5 <= beacons[0]["cirtsa"]["evidence"]["median_interval_s"] <= 2.5


@pytest.mark.parametrize("name", NEGATIVE_CAPTURES)
def test_benign_captures_have_no_beacon_above_low(name: str) -> None:
    alerts, _ = capture_alerts(shared_pcap(name))
    assert above_low(alerts, "cirtsa.beacon") == []


def _refused_scan(scanner: str = "10.0.0.66", target: str = "10.0.0.10", ports: int = 600,
                  gap_s: float = 0.04) -> list[dict]:
    """Fast vertical scan answered by RST|ACK (Zeek REJ): 600 ports in 24 s."""
    return [dict(src=scanner, dst=target, sport=50000, dport=1 + i, t=i * gap_s, sflags=S,
                 dflags=R | A, spk=1, dpk=1, spay=0, dpay=0, dur=0.0005, state="REJ")
            for i in range(ports)]


def test_established_means_a_handshake_or_data_not_a_reply_packet() -> None:
    batch = flows([
        dict(src="10.0.0.1", dst="10.0.0.2", t=0),  # SF with payload
        dict(src="10.0.0.1", dst="10.0.0.2", t=1, sflags=S, dflags=R | A, spay=0, dpay=0),  # REJ
        dict(src="10.0.0.1", dst="10.0.0.2", t=2, sflags=S | R, dflags=S | A, spay=0,
             dpay=0),  # SYN scan of an open port: half-open, torn down
        dict(src="10.0.0.1", dst="10.0.0.2", t=3, sflags=0x29, dflags=R, spay=0, dpay=0),  # XMAS
        dict(src="10.0.0.1", dst="10.0.0.2", t=4, sflags=A | P, dflags=A | P),  # mid-stream
        dict(src="10.0.0.1", dst="10.0.0.2", t=5, sflags=A, dflags=A, spay=0, dpay=0),  # acks
        dict(src="10.0.0.1", dst="10.0.0.2", t=6, sflags=S, dflags=0, dpk=0, spay=0, dpay=0),
    ])
    assert established_tcp(batch.columns).tolist() == [True, False, False, False, True,
                                                        False, False]


def test_fast_refused_vertical_scan_is_not_a_beacon() -> None:
    # the old "any reply packet" rule scored this 24 s burst as a near-perfect beacon
    alerts, _ = run([flows(_refused_scan())], BEACON)
    assert alerts == []


def test_udp_with_replies_still_beacons() -> None:
    rows = [dict(r, proto=17, dport=8053, sflags=0, dflags=0)
            for r in beacon_rows(60, 60, jitter=0.1)]
    assert rule_ids(run([flows(rows)], BEACON)[0]) == ["cirtsa.beacon.flow"]


def test_crafted_refused_port_scan_capture_has_no_beacon(tmp_path: Path) -> None:
    """Real sensor path: nmap-like SYN scan of 400 ports of one host in 20 s, every port
    closed (RST|ACK), 3 open ports (SYN-ACK, then the scanner's RST)."""
    scanner, target, base = "192.168.7.66", "192.168.7.10", 1_700_000_000.0
    packets, open_ports = [], {22, 80, 443}
    for i in range(400):
        port, t = 1 + i, base + i * 0.05
        syn = IP(src=scanner, dst=target) / TCP(sport=61000, dport=port, flags="S", seq=7)
        syn.time = t
        packets.append(syn)
        if port in open_ports:
            reply = IP(src=target, dst=scanner) / TCP(sport=port, dport=61000, flags="SA",
                                                      seq=100, ack=8)
            rst = IP(src=scanner, dst=target) / TCP(sport=61000, dport=port, flags="R", seq=8)
            rst.time = t + 0.0004
            packets += [reply, rst]
        else:
            reply = IP(src=target, dst=scanner) / TCP(sport=port, dport=61000, flags="RA",
                                                      seq=0, ack=8)
            packets.append(reply)
        reply.time = t + 0.0002
    path = tmp_path / "refused_scan.pcap"
    wrpcap(str(path), packets)
    alerts, counts = run_capture(path)
    assert counts.get("flow", 0) >= 400
    assert "cirtsa.scan.vertical" in rule_ids(alerts)  # the scan is seen, as a scan
    assert rule_ids(alerts, "cirtsa.beacon") == []
