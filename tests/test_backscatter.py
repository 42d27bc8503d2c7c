"""Backscatter (one remote DoS victim answering spoofed SYNs to our addresses) and reflection /
amplification (many reflectors answering requests our host never sent): backscatter.py.

Real capture: port_scan/simplescan__backscatter.pcap (202.229.120.98:80 SYN-ACKs to
192.150.0.0/16 over a day): must not be a scan; is reported as backscatter (low).
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
    above_low,
    capture_alerts,
    flows,
    only,
    rule_ids,
    run,
)

from correlation.backscatter import ReflectionDetector

BACK = only("backscatter")
REFL = only("reflection")


def synack_to(ours: str, t: float, victim: str = "202.229.120.98") -> dict:
    # flow flipped by the sensor: originator = our (spoofed) address, which answers RST
    return dict(src=ours, dst=victim, sport=1024 + int(t) % 60000, dport=80, t=t, sflags=R,
                dflags=S | A, spk=1, dpk=1, spay=0, dpay=0, dur=0.0, state="RSTRH")


def test_backscatter_from_one_victim_to_many_of_our_addresses() -> None:
    rows = [synack_to(f"192.150.{186 + i % 2}.{i % 250 + 1}", i * 60.0) for i in range(50)]
    alerts, _ = run([flows(rows)], BACK)
    assert rule_ids(alerts) == ["cirtsa.dos.backscatter"]
    a = alerts[0]
    assert_ecs(a)
    assert a["source"]["ip"] == "202.229.120.98"  # the remote victim sending backscatter
    assert a["event"]["severity"] == 21
    ev = a["cirtsa"]["evidence"]
    assert ev["distinct_receivers"] >= 20 and ev["syn_ack_flows"] == ev["flows"]


def test_rst_and_icmp_error_backscatter_count() -> None:
    rst = [dict(src="198.18.0.1", dst=f"10.0.0.{i}", sport=80, dport=2000 + i, t=i,
                sflags=R | A, dflags=0, spk=1, dpk=0, spay=0, dpay=0) for i in range(1, 15)]
    icmp = [dict(src="198.18.0.1", dst=f"10.0.1.{i}", sport=3, dport=3, proto=1, t=i,
                 spk=1, dpk=0, spay=28, dpay=0) for i in range(1, 15)]
    alerts, _ = run([flows(rst + icmp)], BACK)
    ev = alerts[0]["cirtsa"]["evidence"]
    assert (ev["rst_flows"], ev["icmp_error_flows"]) == (14, 14)


def test_answers_to_our_own_requests_are_not_backscatter() -> None:
    refused = [dict(src="10.0.0.9", dst=f"203.0.113.{i}", dport=80, t=i, sflags=S, dflags=R | A,
                    spk=1, dpk=1, spay=0, dpay=0, state="REJ") for i in range(1, 60)]
    normal = [dict(src=f"10.0.0.{i}", dst="203.0.113.1", t=i) for i in range(1, 60)]
    alerts, engine = run([flows(refused + normal)], only("backscatter", "reflection"))
    assert alerts == [] and engine.stats["rows_buffered"] == 0


def ntp_reply(reflector: str, t: float, victim: str = "10.0.0.80") -> dict:
    # unsolicited monlist responses: originator = reflector port 123, no request seen
    return dict(src=reflector, dst=victim, sport=123, dport=80, proto=17, t=t, spk=100,
                dpk=0, spay=100 * 468, dpay=0, sbytes=100 * 510, dbytes=0, dur=0.5)


def test_ntp_amplification_against_one_victim() -> None:
    rows = [ntp_reply(f"198.51.100.{i % 250 + 1}", (i % 50) * 1.0) for i in range(250)]
    alerts, _ = run([flows(rows)], REFL)
    assert rule_ids(alerts) == ["cirtsa.dos.reflection"]
    a = alerts[0]
    assert_ecs(a)
    assert a["destination"]["ip"] == "10.0.0.80"
    assert a["threat"]["technique"]["id"] == ["T1498.002"]
    ev = a["cirtsa"]["evidence"]
    assert ev["distinct_reflectors"] >= 20 and ev["udp_amplified_flows"] == ev["flows"]
    assert ReflectionDetector.partition_key == "destination"


def test_resolver_traffic_is_not_amplification() -> None:
    # a recursive resolver: queries out, answers ~3x the query size back, many servers
    rows = [dict(src="10.0.0.53", dst=f"192.0.2.{i % 250 + 1}", sport=30000 + i, dport=53,
                 proto=17, t=i * 0.01, spk=1, dpk=1, spay=40, dpay=160) for i in range(5000)]
    assert run([flows(rows)], REFL)[0] == []


def test_real_backscatter_is_not_a_scan_but_backscatter() -> None:
    alerts, _ = capture_alerts(shared_pcap("port_scan/simplescan__backscatter.pcap"))
    assert rule_ids(alerts, "cirtsa.scan") == []
    back = [a for a in alerts if a["rule"]["id"] == "cirtsa.dos.backscatter"]
    assert back and {a["source"]["ip"] for a in back} == {"202.229.120.98"}
    assert rule_ids(alerts, "cirtsa.dos.reflection") == []


@pytest.mark.parametrize("name", NEGATIVE_CAPTURES)
def test_benign_captures_have_no_backscatter(name: str) -> None:
    alerts, _ = capture_alerts(shared_pcap(name))
    assert rule_ids(alerts, "cirtsa.dos.backscatter") == []
    assert rule_ids(alerts, "cirtsa.dos.reflection") == []
    assert above_low(alerts, "cirtsa.dos") == []


def test_batch_classes_are_memoized_per_batch_and_equal_classify(monkeypatch) -> None:
    import correlation.backscatter as backscatter
    from correlation.network_common import batch_memo

    classify = backscatter.classify
    calls: list[int] = []

    def counted(*args):
        calls.append(1)
        return classify(*args)

    monkeypatch.setattr(backscatter, "classify", counted)
    rng = np.random.default_rng(5)
    n = 500

    def columns() -> dict:
        return {"transport": rng.choice(np.array([1, 6, 17, 58], np.uint8), n),
                "src_tcp_flags": rng.integers(0, 64, n).astype(np.uint8),
                "dst_tcp_flags": rng.integers(0, 64, n).astype(np.uint8),
                "src_port": rng.choice(np.array([0, 1, 3, 11, 53, 123, 4444], np.uint16), n),
                "dst_port": rng.choice(np.array([0, 3, 53, 123, 5555], np.uint16), n),
                "src_packets": rng.integers(0, 3, n), "dst_packets": rng.integers(0, 3, n),
                "src_bytes": rng.integers(0, 5000, n), "dst_bytes": rng.integers(0, 5000, n),
                "src_payload_bytes": rng.integers(0, 2, n)}

    ports = np.array([53, 123], np.uint16)
    first, second = columns(), columns()
    with batch_memo():  # as the engine selects one batch
        got = backscatter.classify_batch(first, ports, 5.0)
        for a, b in zip(got, classify(first, ports, 5.0), strict=True):
            assert np.array_equal(a, b)
        again = backscatter.classify_batch(first, ports, 5.0)  # the second detector's select
        assert len(calls) == 1
        assert all(np.array_equal(a, b) for a, b in zip(again, got, strict=True))
        other = backscatter.classify_batch(second, ports, 5.0)  # a new batch: computed afresh
        assert len(calls) == 2
        assert all(np.array_equal(a, b) for a, b in zip(other, classify(second, ports, 5.0),
                                                        strict=True))
        changed = backscatter.classify_batch(second, ports, 2.0)  # other settings: not memo's
        assert len(calls) == 3
        assert all(np.array_equal(a, b) for a, b in zip(changed, classify(second, ports, 2.0),
                                                        strict=True))
