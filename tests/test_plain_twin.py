"""The plain-Python twin (bench/plain_detectors.py) against the numpy correlation engine.

A small version of bench/correlation.py: a seeded mixed stream with one planted attack of
every kind the default detectors find; engine and twin must report the same alerts (id,
rule, key, window, severity, main evidence counts) and every planted attack must be found.
No timing here: speed is bench/correlation.py's business.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.correlation import diff_alerts, planted_status, run_engine, run_plain  # noqa: E402
from bench.correlation_stream import Stream, bench_config, make_stream  # noqa: E402
from bench.plain_detectors import PlainEngine  # noqa: E402
from pipeline.config import deep_merge, load_config  # noqa: E402
from pipeline.schema import EventBatch  # noqa: E402


@pytest.fixture(scope="module")
def stream():
    return make_stream(50_000, seed=7)


@pytest.fixture(scope="module")
def engine_alerts(stream):
    _, alerts, stats = run_engine(stream, bench_config())
    assert stats["late_dropped"] == 0 and stats["rows_dropped_overflow"] == 0
    return alerts


def test_twin_reports_the_same_alerts(stream, engine_alerts):
    _, plain, _ = run_plain(stream, bench_config())
    assert engine_alerts, "the stream must raise alerts"
    assert diff_alerts(engine_alerts, plain) == []


def test_every_planted_attack_is_found(stream, engine_alerts):
    missed = [s for s in planted_status(stream, engine_alerts) if not s[3]]
    assert missed == []
    # every enabled default detector has a planted attack
    rules = {p.rule_id.split(".")[1] for p in stream.planted}
    assert {"scan", "sweep", "dos", "brute_force", "beacon", "c2", "exfil", "dns", "intel",
            "arp"} <= rules


def test_twin_is_batch_split_independent(stream, engine_alerts):
    """The same events re-cut into small batches: the twin still matches the engine."""
    small = make_stream(50_000, seed=7, batch_rows=4096)
    assert len(small.batches) > len(stream.batches)
    _, plain, _ = run_plain(small, bench_config())
    assert diff_alerts(engine_alerts, plain) == []


def test_twin_matches_on_late_arrivals(stream):
    """Batches delivered out of order, some beyond allowed_lateness_s: late rows counted
    into their open windows or dropped must be handled alike."""
    batches = list(stream.batches)
    dense = [i for i, b in enumerate(batches) if b.kind != "flow" or i > 40]
    for i in dense[::7]:  # hold some batches back by a few deliveries (> 360 s of events)
        j = min(i + 6, len(batches) - 1)
        batches.insert(j, batches.pop(i))
    late = Stream(batches, stream.planted, stream.events)
    _, engine, stats = run_engine(late, bench_config())
    assert stats["late_events"] > 0 and stats["late_dropped"] > 0
    _, plain, plain_stats = run_plain(late, bench_config())
    assert diff_alerts(engine, plain) == []
    assert (plain_stats["late_events"], plain_stats["late_dropped"]) == (
        stats["late_events"], stats["late_dropped"])


def test_twin_matches_under_the_buffer_cap(stream):
    """max_buffered_rows small enough to drop rows: the oldest go first in both."""
    config = deep_merge(bench_config(), {"detectors": {
        "strobe": {"max_buffered_rows": 3000}, "beaconing": {"max_buffered_rows": 2000},
        "dos_syn_flood": {"max_buffered_rows": 4000}}})
    _, engine, stats = run_engine(stream, config)
    assert stats["rows_dropped_overflow"] > 0
    _, plain, plain_stats = run_plain(stream, config)
    assert diff_alerts(engine, plain) == []
    assert plain_stats["rows_dropped_overflow"] == stats["rows_dropped_overflow"]


def test_comparison_catches_a_difference(engine_alerts):
    """The cross-check can fail: a changed count, a lost alert, an extra alert."""
    changed = [dict(a) for a in engine_alerts]
    bumped = {k: (v or 0) + 1 for k, v in changed[0]["counts"].items()}
    changed[0] = {**changed[0], "counts": bumped}
    assert diff_alerts(engine_alerts, changed)
    assert diff_alerts(engine_alerts, engine_alerts[1:])
    assert diff_alerts(engine_alerts[1:], engine_alerts)


def test_twin_covers_every_enabled_default_detector():
    detectors = load_config()["correlation"]["detectors"]
    engine = PlainEngine(bench_config())
    enabled = [n for n, s in detectors.items() if s.get("enabled", True)]
    assert len(engine.states) == len(enabled)


def test_planted_port_scans_raise_no_beacon(stream, engine_alerts):
    """The planted vertical scan (200 ports refused by RST in 20 s) once also scored as a
    near-perfect beacon: only established connections are beacon contacts now."""
    scans = {p.key for p in stream.planted if p.rule_id.startswith("cirtsa.scan.")}
    beacons = {a["key"] for a in engine_alerts if a["rule"].startswith("cirtsa.beacon.")}
    assert "203.0.113.5|10.1.0.20" in scans
    assert scans & beacons == set()


def _random_flows(seed: int, n: int = 3000):
    """Flows with every combination of flags, protocols, ports and payloads that the
    selects look at, half of them into the benchmark's darknet."""
    from bench.correlation_stream import DARKNETS, Table, ip4

    rng = np.random.default_rng(seed)
    table = Table("flow")
    dark = ip4(DARKNETS[0].split("/")[0])
    table.add(n, timestamp=np.arange(n, dtype=np.int64) * 10**9, end=np.arange(n) * 10**9,
              src_ip=ip4("198.51.100.1") + rng.integers(0, 4, n),
              dst_ip=np.where(rng.random(n) < 0.5, dark, ip4("10.1.0.0"))
              + rng.integers(0, 50, n),
              src_port=rng.choice([0, 8, 53, 123, 128, 41000], n),
              dst_port=rng.choice([0, 23, 80, 443], n),
              transport=rng.choice([1, 6, 17, 58], n), src_packets=rng.integers(0, 3, n),
              dst_packets=rng.integers(0, 3, n), src_bytes=100, dst_bytes=100,
              src_payload_bytes=rng.choice([0, 0, 40], n),
              dst_payload_bytes=rng.choice([0, 0, 40], n),
              src_tcp_flags=rng.integers(0, 64, n), dst_tcp_flags=rng.integers(0, 64, n))
    cols = table.build()
    return EventBatch("flow", cols)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_twin_selects_equal_the_engine_selects(seed):
    """Beaconing's established-connection rule and the darknet attempt rule, row by row."""
    from bench.plain_detectors import rows_of
    from correlation.engine import build_detectors

    batch = _random_flows(seed)
    config = deep_merge(load_config()["correlation"], bench_config())
    engine = {d.name: d for d in build_detectors(config)}
    plain = {s.detector.name: s.detector for s in PlainEngine(bench_config()).states}
    rows = rows_of(batch)
    for name in ("beaconing", "darknet_scan"):
        want = engine[name].select(batch).tolist()
        got = [plain[name].select("flow", r) for r in rows]
        assert got == want, name
        assert 0 < sum(want) < len(want), name  # both outcomes exercised
