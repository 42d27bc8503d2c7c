"""Exfiltration (correlation/exfiltration.py): volume vs own baseline, large uploads, ICMP
tunnels.

Real captures: exfiltration/ndpi__icmp-tunnel.pcap (192.168.154.131 <-> .132 echo with
large payloads); exfiltration/zeek__http-post-large.pcap (a 62 KB POST on loopback: below
any defensible production threshold, detected with the documented lab profile).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_ecs, shared_pcap
from hypothesis import given, settings
from hypothesis import strategies as st
from network_builders import (
    NEGATIVE_CAPTURES,
    above_low,
    capture_alerts,
    flows,
    only,
    rule_ids,
    run,
)

from correlation.exfiltration import HostBaselines

UPLOAD = only("exfil_upload")
VOLUME = only("exfil_volume")
ICMP = only("exfil_icmp")

# docs/detections.md, "Lab profile": what an instructor sets for small training captures
LAB_PROFILE = {"correlation": {"detectors": {"exfil_upload": {
    "min_upload_bytes": 50000, "min_out_in_ratio": 0, "destinations": "any",
    "internal_networks": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"]}}}}


def upload(t: float, mb: float, src: str = "10.0.0.5", dst: str = "203.0.113.77",
           down_kb: float = 50) -> dict:
    return dict(src=src, dst=dst, dport=443, t=t, dur=60, spk=int(mb * 700), dpk=100,
                spay=int(mb * 1e6), dpay=int(down_kb * 1e3))


def test_large_upload_to_one_destination() -> None:
    rows = [upload(i * 60, 30) for i in range(5)]  # 150 MB in 5 min
    alerts, _ = run([flows(rows)], UPLOAD)
    assert rule_ids(alerts) == ["cirtsa.exfil.upload"]
    a = alerts[0]
    assert_ecs(a)
    assert (a["source"]["ip"], a["destination"]["ip"]) == ("10.0.0.5", "203.0.113.77")
    assert a["threat"]["technique"]["id"] == ["T1048"]
    assert a["threat"]["tactic"]["id"] == ["TA0010"]
    assert a["event"]["severity"] == 47
    assert a["cirtsa"]["evidence"]["bytes_out"] >= 100_000_000


def test_internal_transfers_symmetric_sessions_and_downloads_are_not_uploads() -> None:
    internal = [upload(i * 60, 30, dst="10.1.1.1") for i in range(5)]
    call = [upload(i * 60, 30, src="10.0.0.6", down_kb=30000) for i in range(5)]
    download = [dict(src="10.0.0.7", dst="203.0.113.7", t=i, spay=500, dpay=50_000_000)
                for i in range(5)]
    assert run([flows(internal + call + download)], UPLOAD)[0] == []


def hourly(host: str, hours: range, mb: float) -> list[dict]:
    return [dict(src=host, dst="198.51.100.10", dport=443, t=h * 3600 + 5, dur=10,
                 spay=int(mb * 1e6), dpay=int(mb * 1e5), sbytes=int(mb * 1e6),
                 dbytes=int(mb * 1e5)) for h in hours]


def test_outbound_volume_far_above_the_hosts_own_baseline() -> None:
    rows = hourly("10.0.0.5", range(30), 2)  # 2 MB/h for 30 h ...
    rows += hourly("10.0.0.5", range(30, 31), 200)  # ... then 200 MB
    rows += hourly("10.0.0.9", range(31), 200)  # a backup server: 200 MB every hour
    alerts, engine = run([flows(rows)], VOLUME)
    assert rule_ids(alerts) == ["cirtsa.exfil.volume"]
    a = alerts[0]
    assert_ecs(a)
    assert a["source"]["ip"] == "10.0.0.5"
    ev = a["cirtsa"]["evidence"]
    assert ev["history_windows"] == 30 and ev["baseline_bytes"] < 5e6


def test_new_hosts_need_history_and_baseline_state_is_bounded() -> None:
    rows = hourly("10.0.0.5", range(3), 2) + hourly("10.0.0.5", range(3, 4), 500)
    rows += [r for i in range(200) for r in hourly(f"10.2.0.{i}", range(1), 1)]
    config = only("exfil_volume", exfil_volume={"max_hosts": 50})
    alerts, engine = run([flows(rows)], config)
    assert alerts == []  # 3 windows of history < min_history_windows
    detector = engine.detectors[0]
    assert len(detector.baseline) <= 50 and detector.stats["hosts_evicted"] > 0


class DictBaselines:
    """The dict state the compiled HostBaselines replaced (host -> [ewma, first, last]),
    kept as the oracle, eviction included."""

    def __init__(self) -> None:
        self.state: dict[tuple[int, int], list] = {}

    def update(self, key_hi, key_lo, k, sent, alpha):
        baseline, history = [], []
        for h, lo, w, x in zip(key_hi.tolist(), key_lo.tolist(), k.tolist(), sent.tolist(),
                               strict=True):
            entry = self.state.get((h, lo))
            if entry is None:
                entry = self.state[(h, lo)] = [0.0, w, w - 1]
            ewma = entry[0] * (1 - alpha) ** max(w - entry[2] - 1, 0)
            baseline.append(ewma)
            history.append(w - entry[1])
            entry[0] = alpha * x + (1 - alpha) * ewma
            entry[2] = w
        return baseline, history

    def bound(self, max_hosts: int) -> int:
        excess = len(self.state) - max_hosts
        for name, _ in sorted(self.state.items(), key=lambda kv: kv[1][2])[:max(excess, 0)]:
            del self.state[name]
        return max(excess, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 10**7)), max_size=60),
                min_size=1, max_size=8),
       st.integers(1, 30), st.sampled_from([0.1, 0.3, 0.5]))
def test_host_baselines_equal_the_dict_state(calls: list, max_hosts: int, alpha: float
                                             ) -> None:
    compiled, reference = HostBaselines(), DictBaselines()
    k0 = 0
    for rows in calls:  # one detect call: (window, host) pairs ascending by window
        pairs = sorted({(k0 + w % 3, host) for host, w in ((h, i) for i, (h, _) in
                                                        enumerate(rows))})
        sent = np.array([x for _, x in rows[:len(pairs)]] + [0] * (len(pairs) - len(rows)),
                        np.float64)[:len(pairs)]
        k = np.array([w for w, _ in pairs], np.int64)
        hi = np.array([h * 2654435761 for _, h in pairs], np.uint64)
        lo = np.array([h % 5 for _, h in pairs], np.uint64)
        got = compiled.update(hi, lo, k, sent, alpha)
        want = reference.update(hi, lo, k, sent, alpha)
        assert got[0].tolist() == want[0] and got[1].tolist() == want[1]
        assert compiled.bound(max_hosts) == reference.bound(max_hosts)
        assert len(compiled) == len(reference.state)
        k0 += 3 + len(rows) % 4  # later windows, sometimes with silent ones between


def echo(t: float, payload: int, packets: int = 100) -> dict:
    return dict(src="192.168.154.132", dst="192.168.154.131", proto=1, sport=8, dport=0, t=t,
                dur=50, spk=packets, dpk=packets, spay=payload * packets,
                dpay=payload * packets)


def test_icmp_tunnel() -> None:
    alerts, _ = run([flows([echo(i * 60, 400) for i in range(5)])], ICMP)
    assert rule_ids(alerts) == ["cirtsa.exfil.icmp_tunnel"]
    a = alerts[0]
    assert_ecs(a)
    assert a["cirtsa"]["evidence"]["mean_payload_bytes"] == 400
    assert a["threat"]["technique"]["id"] == ["T1048.003"]


def test_continuous_default_ping_is_not_a_tunnel() -> None:
    # ping for an hour, 56-byte payloads: 400 KB of payload, all ordinary
    assert run([flows([echo(i * 60, 56, packets=60) for i in range(60)])], ICMP)[0] == []


def test_real_icmp_tunnel() -> None:
    alerts, _ = capture_alerts(shared_pcap("exfiltration/ndpi__icmp-tunnel.pcap"))
    hits = [a for a in alerts if a["rule"]["id"] == "cirtsa.exfil.icmp_tunnel"]
    assert len(hits) == 1
    assert set(hits[0]["related"]["ip"]) == {"192.168.154.131", "192.168.154.132"}


def test_real_large_post_needs_the_lab_profile() -> None:
    path = shared_pcap("exfiltration/zeek__http-post-large.pcap")
    assert rule_ids(capture_alerts(path)[0], "cirtsa.exfil") == []
    alerts, _ = capture_alerts(path, LAB_PROFILE)
    uploads = [a for a in alerts if a["rule"]["id"] == "cirtsa.exfil.upload"]
    assert uploads and uploads[0]["source"]["ip"] == "127.0.0.1"
    assert uploads[0]["cirtsa"]["evidence"]["bytes_out"] >= 50000


@pytest.mark.parametrize("name", NEGATIVE_CAPTURES)
def test_benign_captures_have_no_exfiltration(name: str) -> None:
    alerts, _ = capture_alerts(shared_pcap(name))
    assert rule_ids(alerts, "cirtsa.exfil") == []
    assert above_low(alerts, "cirtsa.exfil") == []
