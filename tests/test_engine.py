"""Correlation engine: windows, watermark and lateness, bounded state, suppression, alert ids.

Flow batches are built from row dicts with `flow_batch` (also used by test_port_scan.py and
test_brute_force.py): a row names its connection outcome by a Zeek-like label (see STATES).
"""

from __future__ import annotations

import gc
import hashlib
import re

import numpy as np
import pytest
from conftest import assert_ecs
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from correlation.alerts import alert_id, build_alert, build_alerts, gc_paused, iso_ns
from correlation.detector import Evidence, Finding, WindowRange, WindowSpec, ip_text
from correlation.engine import (
    CorrelationEngine,
    _SharedBuffer,
    build_detectors,
    default_config,
)
from correlation.port_scan import VerticalScanDetector
from pipeline.schema import DNS, FLOW, EventBatch, SchemaError, ns_to_iso, validate_batch
from sensors.packets import IP_DTYPE, IPV4_MAPPED_PREFIX, ip_column_to_str, ip_to_bytes16

pytestmark = pytest.mark.usefixtures("core_detectors_only")

F, S, R, P, A, U = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

# label -> (orig flags, resp flags, orig packets, resp packets, orig payload, resp payload,
#           Zeek conn_state)
STATES = {
    "S0": (S, 0, 1, 0, 0, 0, "S0"),  # SYN, no answer
    "REJ": (S, R | A, 1, 1, 0, 0, "REJ"),  # SYN answered by RST
    "RSTOS0": (S | R, 0, 2, 0, 0, 0, "RSTOS0"),
    "HALF_OPEN": (S | R, S | A, 2, 1, 0, 0, "RSTO"),  # SYN scan of an open port
    "CONNECT_RST": (S | A | R, S | A, 3, 1, 0, 0, "RSTO"),  # connect() scan, no data
    "FIN_SCAN": (F, R | A, 1, 1, 0, 0, "OTH"),
    "NULL_SCAN": (0, R | A, 1, 1, 0, 0, "OTH"),
    "XMAS_SCAN": (F | P | U, R | A, 1, 1, 0, 0, "OTH"),
    "SF": (S | A | P | F, S | A | P | F, 8, 7, 400, 6000, "SF"),  # normal exchange
    "SF_EMPTY": (S | A | F, S | A | F, 3, 2, 0, 0, "SF"),  # connect + close, no data
    "S1": (S | A | P, S | A | P, 5, 5, 300, 900, "S1"),
    "MIDSTREAM": (A | P, A | P, 4, 4, 500, 800, "OTH"),  # picked up mid-connection
    "BACKSCATTER_SYNACK": (S | A, R, 1, 1, 0, 0, "OTH"),  # orig = DoS victim answering spoofs
    "BACKSCATTER_RST": (R | A, 0, 1, 0, 0, 0, "OTH"),
    "BACKSCATTER_FLIPPED": (R, S | A, 1, 1, 0, 0, "RSTRH"),  # flow flipped: orig = us
}

BASE_T = 1_699_999_200.0  # 2023-11-14T22:00:00Z, a whole hour: offsets align with windows


def flow_batch(rows: list[dict]) -> EventBatch:
    """FLOW batch from dicts: src, dst, dport, t (s offset) + optional state, dur, sport,
    proto, src_payload, dst_payload, observer, observer_names, zone."""
    n = len(rows)
    cols = {f.column: np.empty(n, f.dtype) for f in FLOW.fields}
    for i, r in enumerate(rows):
        of, rf, op, rp, opay, rpay, label = STATES[r.get("state", "SF")]
        t = int(round((BASE_T + r["t"]) * 1e9))
        cols["timestamp"][i] = t
        cols["end"][i] = t + int(round(r.get("dur", 0.0) * 1e9))
        cols["src_ip"][i] = np.frombuffer(ip_to_bytes16(r["src"]), IP_DTYPE)[0]
        cols["dst_ip"][i] = np.frombuffer(ip_to_bytes16(r["dst"]), IP_DTYPE)[0]
        cols["src_port"][i] = r.get("sport", 30000 + i % 30000)
        cols["dst_port"][i] = r["dport"]
        cols["transport"][i] = r.get("proto", 6)
        cols["vlan"][i] = 0
        cols["community_id"][i] = ""
        cols["src_tcp_flags"][i], cols["dst_tcp_flags"][i] = of, rf
        cols["src_packets"][i], cols["dst_packets"][i] = op, rp
        cols["src_payload_bytes"][i] = r.get("src_payload", opay)
        cols["dst_payload_bytes"][i] = r.get("dst_payload", rpay)
        cols["src_bytes"][i] = int(cols["src_payload_bytes"][i]) + 60 * op
        cols["dst_bytes"][i] = int(cols["dst_payload_bytes"][i]) + 60 * rp
        cols["conn_state"][i] = label
        cols["end_reason"][i] = "eof"
        cols["observer_name"][i] = r.get("observer", "sensor-1")
        cols["observer_names"][i] = r.get("observer_names", "")  # fusion's list ('|'-joined)
        cols["ingress_zone"][i] = r.get("zone", "dmz")
    batch = EventBatch("flow", cols)
    validate_batch(batch)
    return batch


def run(rows_or_batches, config: dict | None = None, **engine_kw) -> tuple[list[dict], dict]:
    """Push rows (one batch) or a list of batches, flush; return (alerts, stats)."""
    engine = CorrelationEngine(config or {}, **engine_kw)
    batches = rows_or_batches if isinstance(rows_or_batches[0], EventBatch) \
        else [flow_batch(rows_or_batches)]
    alerts = []
    for b in batches:
        alerts += engine.push(b)
    alerts += engine.flush()
    return alerts, engine.stats


def config_with(**detectors) -> dict:
    """Correlation config overriding the given detector sections (others keep defaults)."""
    return {"detectors": detectors}


def vertical_scan(src="192.168.2.154", dst="192.168.2.22", ports=range(1, 11), t=0.0,
                  step=1e-5, state="S0", **extra) -> list[dict]:
    return [dict(src=src, dst=dst, dport=p, t=t + i * step, state=state, **extra)
            for i, p in enumerate(ports)]


# --- windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size,hop", [(60, 20), (300, 60), (50, 20), (10, 10)])
def test_assign_matches_window_enumeration(size: int, hop: int) -> None:
    spec = WindowSpec(size * 10**9, hop * 10**9)
    rng = np.random.default_rng(size * 1000 + hop)
    times = rng.integers(0, 2000 * 10**9, 500)
    first, last = int(spec.first_index(500 * 10**9)), int(spec.last_index(1500 * 10**9))
    rows, ks = WindowRange(spec, first, last).assign(times)
    got = set(zip(rows.tolist(), ks.tolist(), strict=True))
    expected = {(i, k) for i, t in enumerate(times.tolist()) for k in range(first, last + 1)
                if k * spec.hop_ns <= t < k * spec.hop_ns + spec.size_ns}
    assert got == expected
    assert len(got) == rows.size  # no duplicate (row, window) pairs


def test_tumbling_windows_hold_each_event_once() -> None:
    spec = WindowSpec(60 * 10**9, 60 * 10**9)
    times = np.arange(0, 600 * 10**9, 7 * 10**9)
    rows, ks = WindowRange(spec, 0, 9).assign(times)
    assert sorted(rows.tolist()) == list(range(times.size))
    assert (ks == times // spec.hop_ns).all()


def test_window_spec_rejects_hop_larger_than_size() -> None:
    with pytest.raises(ValueError):
        WindowSpec(10, 20)


# --- watermark and lateness ------------------------------------------------------------------

TUMBLING_60 = {"allowed_lateness_s": 10, "detectors": {
    "port_scan_vertical": {"window_s": 60, "hop_s": 60},
    "port_scan_horizontal": {"enabled": False}, "brute_force": {"enabled": False}}}


def test_window_closes_only_when_watermark_passes_its_end() -> None:
    engine = CorrelationEngine(TUMBLING_60)
    scan = flow_batch(vertical_scan(t=1000.5))  # window [960, 1020)
    window_end = 1020
    assert engine.push(scan) == []
    benign = dict(src="10.9.9.9", dst="10.9.9.8", dport=443, state="SF")
    assert engine.push(flow_batch([{**benign, "t": window_end + 10 - 0.001}])) == []
    assert engine.stats["windows_closed"] == 0
    alerts = engine.push(flow_batch([{**benign, "t": window_end + 10}]))
    assert [a["rule"]["id"] for a in alerts] == ["cirtsa.scan.vertical"]
    assert engine.watermark == int(round((BASE_T + window_end) * 1e9))
    assert engine.flush() == []


def test_late_events_are_counted_and_still_used_by_open_windows() -> None:
    config = {"allowed_lateness_s": 0, "detectors": {
        "port_scan_vertical": {"window_s": 60, "hop_s": 20},
        "port_scan_horizontal": {"enabled": False}, "brute_force": {"enabled": False}}}
    engine = CorrelationEngine(config)
    base = 100  # windows of t=base+1 start at base-40, base-20, base
    assert engine.push(flow_batch(vertical_scan(ports=[1, 2, 3, 4], t=base + 1))) == []
    # watermark base+50: windows starting base-40 and base-20 close, base stays open
    assert engine.push(flow_batch([dict(src="10.9.9.9", dst="10.9.9.8", dport=443,
                                        state="SF", t=base + 50)])) == []
    assert engine.stats["late_events"] == 0
    late = vertical_scan(ports=[5], t=base + 2)  # belongs to closed and to open windows
    too_late = vertical_scan(ports=[6], t=base - 30)  # all its windows are closed
    assert engine.push(flow_batch(late + too_late)) == []
    assert engine.stats["late_events"] == 2
    assert engine.stats["late_dropped"] == 1
    alerts = engine.flush()
    assert len(alerts) == 1
    assert alerts[0]["cirtsa"]["evidence"]["ports"] == [1, 2, 3, 4, 5]
    window_start = alerts[0]["cirtsa"]["alert"]["window"]["start"]
    assert window_start == ns_to_iso(int((BASE_T + base) * 1e9))


def test_state_is_bounded_by_open_windows() -> None:
    engine = CorrelationEngine({"allowed_lateness_s": 30})
    rng = np.random.default_rng(7)
    peak = 0
    for minute in range(180):  # 3 h of failed attempts from many sources, none a scan
        rows = [dict(src=f"10.{rng.integers(256)}.{rng.integers(256)}.1",
                     dst=f"192.0.2.{rng.integers(256)}", dport=int(rng.integers(1, 1024)),
                     t=minute * 60 + s, state="S0") for s in range(0, 60, 2)]
        assert engine.push(flow_batch(rows)) == []
        peak = max(peak, engine.stats["rows_buffered"])
    # horizontal needs 1 h + lateness + hop of rows, vertical 5 min + 30 s + 1 min; stale
    # rows are compacted away once they exceed a quarter of a buffer: << 3 h of rows
    per_minute = 30
    live = per_minute * ((3600 + 30 + 300) / 60 + (300 + 30 + 60) / 60 + 2)
    assert peak <= live * 4 / 3
    assert engine.stats["events_in"] == 180 * 30
    engine.flush()
    assert engine.stats["rows_buffered"] == 0


def test_buffer_cap_drops_oldest_rows_and_counts_them() -> None:
    config = config_with(port_scan_vertical={"max_buffered_rows": 100},
                         port_scan_horizontal={"enabled": False},
                         brute_force={"enabled": False})
    rows = [dict(src=f"10.0.{i // 250}.{i % 250}", dst="192.0.2.1", dport=80, t=i * 0.01,
                 state="S0") for i in range(250)]
    engine = CorrelationEngine(config)
    engine.push(flow_batch(rows))
    assert engine.stats["rows_dropped_overflow"] == 150
    assert engine.stats["rows_buffered"] == 100


# --- batch-split independence -----------------------------------------------------------------

SPLIT_CONFIG = {"allowed_lateness_s": 20, "detectors": {
    "port_scan_vertical": {"window_s": 60, "hop_s": 20, "vertical_ports": 3, "suppress_s": 0},
    "port_scan_horizontal": {"window_s": 90, "hop_s": 30, "horizontal_hosts": 3,
                             "suppress_s": 120},
    "brute_force": {"window_s": 60, "hop_s": 15, "min_sessions": 3, "suppress_s": 60}}}

_event = st.fixed_dictionaries({
    "src": st.sampled_from(["10.0.0.1", "10.0.0.2", "2001:db8::7"]),
    "dst": st.sampled_from(["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]),
    "dport": st.sampled_from([22, 80, 443, 445, 3389, 8080]),
    "t": st.integers(0, 200_000).map(lambda ms: ms / 1000),
    "state": st.sampled_from(["S0", "REJ", "HALF_OPEN", "SF", "FIN_SCAN"]),
    "sport": st.integers(1024, 1100),
    "dur": st.sampled_from([0.0, 2.0, 50.0]),
    "observer": st.sampled_from(["s1", "s2"]),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(noise=st.lists(_event, min_size=0, max_size=100),
       attack_at=st.integers(0, 150),
       jitter=st.lists(st.floats(0, 19.9), min_size=130, max_size=130),
       cuts=st.lists(st.integers(0, 130), max_size=8))
def test_alerts_do_not_depend_on_batch_splits(noise, attack_at, jitter, cuts) -> None:
    # Random traffic plus a scan and a brute force at a random time, so alerts and
    # suppressed repeats happen in (nearly) every example.
    attack = vertical_scan(src="10.0.0.9", dst="192.0.2.9", ports=range(1, 6), t=attack_at,
                           step=3.0)
    attack += [dict(src="10.0.0.9", dst="192.0.2.8", dport=22, t=attack_at + 4 * i, dur=2.0,
                    sport=2000 + i, state="SF") for i in range(5)]
    events = noise + attack
    # Arrival order: event time plus a delay below the allowed lateness (bounded disorder).
    order = sorted(range(len(events)), key=lambda i: events[i]["t"] + jitter[i])
    arrived = [events[i] for i in order]
    whole, whole_stats = run(arrived, SPLIT_CONFIG)
    assert {"cirtsa.scan.vertical", "cirtsa.brute_force.sessions"} <= {
        a["rule"]["id"] for a in whole}
    bounds = sorted({0, len(arrived), *[c for c in cuts if c < len(arrived)]})
    batches = [flow_batch(arrived[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    split, split_stats = run(batches, SPLIT_CONFIG)
    by_id = lambda alerts: sorted(alerts, key=lambda a: a["event"]["id"])  # noqa: E731
    assert by_id(split) == by_id(whole)
    assert split_stats["late_events"] == whole_stats["late_events"] == 0
    for key in ("findings", "alerts_suppressed", "alerts_out"):
        assert split_stats[key] == whole_stats[key]


def test_one_event_per_batch_gives_the_same_alerts() -> None:
    rows = sorted(_mixed_attack_rows() + _slow_continuous_scan(20, src="172.16.0.8"),
                  key=lambda r: r["t"])
    whole, _ = run(rows)
    single, _ = run([flow_batch([r]) for r in rows])
    assert len(whole) == 4
    assert sorted(whole, key=lambda a: a["event"]["id"]) == sorted(
        single, key=lambda a: a["event"]["id"])


# --- alert identity, suppression, ECS ----------------------------------------------------------


def _mixed_attack_rows() -> list[dict]:
    rows = vertical_scan()
    rows += [dict(src="10.0.0.1", dst=f"10.0.0.{i}", dport=23, t=5 + i * 0.01, state="REJ")
             for i in range(2, 12)]
    rows += [dict(src="192.168.56.1", dst="192.168.56.103", dport=22, t=10 + 6 * i, dur=4.0,
                  sport=55470 + i, state="SF", src_payload=2600, dst_payload=2400)
             for i in range(11)]
    return rows


def test_alert_ids_are_stable_and_distinct() -> None:
    first, _ = run(_mixed_attack_rows())
    again, _ = run(list(reversed(_mixed_attack_rows())))
    assert sorted(a["rule"]["id"] for a in first) == [
        "cirtsa.brute_force.sessions", "cirtsa.scan.horizontal", "cirtsa.scan.vertical"]
    assert sorted(a["event"]["id"] for a in first) == sorted(a["event"]["id"] for a in again)
    ids = [a["event"]["id"] for a in first]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert alert_id("r", "k", 1) == alert_id("r", "k", 1)
    assert len({alert_id("r", "k", 1), alert_id("r", "k", 2), alert_id("r", "k2", 1),
                alert_id("r2", "k", 1), alert_id("r|k", "", 1)}) == 5


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**63), 2**63 - 1))
def test_memoized_iso_time_is_ns_to_iso(ns: int) -> None:
    try:
        expected = ns_to_iso(ns)
    except (ValueError, OverflowError, OSError):  # beyond datetime's years: same error
        with pytest.raises((ValueError, OverflowError, OSError)):
            iso_ns(ns)
        return
    assert iso_ns(ns) == expected
    assert iso_ns(ns) == expected  # memoized second


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(min_size=16, max_size=16),
                          st.binary(min_size=4, max_size=4).map(IPV4_MAPPED_PREFIX.__add__)),
                min_size=1, max_size=8), st.data())
def test_ip_text_is_ip_column_to_str_of_one_row(addresses: list[bytes], data) -> None:
    column = np.array(addresses, IP_DTYPE)
    if data.draw(st.booleans()):
        column = column[::-1]  # a strided view, as gathered columns can be
    row = data.draw(st.integers(0, column.shape[0] - 1))
    assert ip_text(column, row) == ip_column_to_str(column[row:row + 1])[0]


def test_alert_id_is_the_documented_hash() -> None:
    text = "cirtsa.scan.vertical\x1f10.0.0.1|10.0.0.2\x1f1700000000000000000"
    assert alert_id("cirtsa.scan.vertical", "10.0.0.1|10.0.0.2", 1_700_000_000 * 10**9) == \
        hashlib.sha256(text.encode()).hexdigest()[:32]


def test_batch_alert_builder_is_build_alert_per_finding() -> None:
    from correlation.dns_tunnel import TUNNEL_RULE
    from correlation.port_scan import VERTICAL_RULE

    def finding(i: int) -> Finding:
        t = 1_700_000_000 * 10**9 + i * 7_654_321_987
        ev = Evidence(first_seen=t, last_seen=t + i * 1_000_123, source_ip=f"10.0.0.{i}",
                      message=f"m{i}", details={"n": i, "ports": [i, i + 1]},
                      destination_ip="10.9.9.9" if i % 2 else None,
                      destination_port=i if i % 3 else None, transport="tcp" if i % 4 else None,
                      related_ips=[f"10.0.0.{i}"], observers=["s1", "s2"][: i % 3],
                      zones=["z"][: i % 2],
                      ecs={"threat": {"indicator": {"ip": "1.2.3.4"}}} if i % 5 == 0 else {})
        return Finding(rule=VERTICAL_RULE if i % 2 else TUNNEL_RULE, key=f"k{i}",
                       window_start=t // 60_000_000_000 * 60_000_000_000,
                       window_end=t + 300 * 10**9, describe=lambda: ev)

    findings = [finding(i) for i in range(40)]
    one_by_one = [build_alert(f) for f in findings]
    batch = build_alerts(findings)
    assert batch == one_by_one
    assert gc.isenabled()  # restored after the burst
    # every document is its own: editing one (as the intel merge does) leaves the others
    batch[0]["threat"]["tactic"]["id"].append("x")
    batch[0]["event"]["category"].append("x")
    assert batch[1]["threat"] == one_by_one[1]["threat"]
    assert batch[2]["threat"]["tactic"]["id"] == [TUNNEL_RULE.tactic_id]
    assert batch[1]["event"]["category"] == ["network", "intrusion_detection"]
    assert "indicator" not in batch[1]["threat"] and "indicator" in batch[5]["threat"]


def test_gc_paused_restores_the_collector_state() -> None:
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("describe failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller's own pause is kept
    finally:
        gc.enable()


def test_alerts_use_only_ecs_fields_and_event_time() -> None:
    alerts, _ = run(_mixed_attack_rows())
    for a in alerts:
        assert_ecs(a)
        assert a["event"]["kind"] == "alert"
        assert a["event"]["category"] == ["network", "intrusion_detection"]
        assert a["event"]["dataset"] == "cirtsa.alert"
        assert a["rule"]["ruleset"] == "cirt-sa"
        assert a["threat"]["framework"] == "MITRE ATT&CK"
        assert a["@timestamp"].startswith("2023-11-14T")  # event time, never the wall clock
        assert a["event"]["start"] <= a["event"]["end"] == a["@timestamp"]
        assert a["message"] and a["source"]["ip"] in a["related"]["ip"]


def _slow_continuous_scan(minutes: int, src: str = "192.168.2.154") -> list[dict]:
    # One new failed port every 10 s against one host, for `minutes`.
    return vertical_scan(src=src, ports=[1 + i % 60000 for i in range(minutes * 6)], step=10.0)


def test_overlapping_windows_raise_one_alert_per_suppression_interval() -> None:
    alerts, stats = run(_slow_continuous_scan(30))
    vertical = [a for a in alerts if a["rule"]["id"] == "cirtsa.scan.vertical"]
    assert len(vertical) == 1  # 30 min of scanning, suppress_s 3600
    assert stats["findings"] == stats["alerts_out"] + stats["alerts_suppressed"]
    assert stats["alerts_suppressed"] > 20  # every other hopping window qualified too


def test_without_suppress_interval_alerted_windows_do_not_overlap() -> None:
    config = config_with(port_scan_vertical={"suppress_s": 0})
    alerts, _ = run(_slow_continuous_scan(30), config)
    starts = sorted(np.datetime64(a["cirtsa"]["alert"]["window"]["start"][:-1])
                    for a in alerts if a["rule"]["id"] == "cirtsa.scan.vertical")
    assert len(starts) >= 5
    gaps = np.diff(np.array(starts)).astype("timedelta64[s]").astype(int)
    assert (gaps >= 300).all()  # window_s: a repeat never overlaps an alerted window


# --- configuration and inputs ------------------------------------------------------------------


def test_default_config_enables_every_documented_detector() -> None:
    config = default_config()
    assert config["allowed_lateness_s"] > 0
    names = [type(d).__name__ for d in build_detectors(config)]
    assert names[:3] == ["VerticalScanDetector", "HorizontalScanDetector", "BruteForceDetector"]
    assert len(names) == len(config["detectors"])  # every section enabled by default


def test_disabled_and_unknown_detectors() -> None:
    engine = CorrelationEngine(config_with(brute_force={"enabled": False}))
    assert [d.name for d in engine.detectors] == ["port_scan_vertical", "port_scan_horizontal"]
    with pytest.raises(ValueError, match="needs `detector: module:Class`"):
        CorrelationEngine(config_with(no_such_rule={"enabled": True}))
    with pytest.raises(ValueError, match="not in the correlation package"):
        CorrelationEngine(config_with(evil={"detector": "os:system"}))
    with pytest.raises(ValueError, match="not a Detector"):
        CorrelationEngine(config_with(odd={"detector": "correlation.alerts:build_alert"}))
    with pytest.raises(ValueError, match="cannot load"):
        CorrelationEngine(config_with(gone={"detector": "correlation.nope:Nope"}))


def test_explicit_detector_list_overrides_config() -> None:
    section = default_config()["detectors"]["port_scan_vertical"]
    alerts, _ = run(_mixed_attack_rows(), detectors=[VerticalScanDetector(section)])
    assert [a["rule"]["id"] for a in alerts] == ["cirtsa.scan.vertical"]


def test_other_event_kinds_pass_through_and_advance_time() -> None:
    engine = CorrelationEngine({})
    engine.push(flow_batch(vertical_scan()))
    n = 3
    cols = {f.column: np.zeros(n, f.dtype) for f in DNS.fields}
    for c in ("observer_name", "ingress_zone", "community_id", "qname"):
        cols[c] = np.array(["x"] * n, dtype=object)
    cols["answers"] = np.empty(n, dtype=object)
    cols["answers"][:] = [[] for _ in range(n)]
    cols["timestamp"][:] = int((BASE_T + 4000) * 1e9)
    alerts = engine.push(EventBatch("dns", cols))
    assert [a["rule"]["id"] for a in alerts] == ["cirtsa.scan.vertical"]
    assert engine.stats["events_in"] == 10 + n


def test_invalid_batch_is_rejected() -> None:
    batch = flow_batch(vertical_scan())
    batch.columns["dst_port"] = batch.columns["dst_port"].astype(np.int64)
    with pytest.raises(SchemaError):
        CorrelationEngine({}).push(batch)


# --- shared buffer and fast grouping primitives (issue #5: same results, less copying) -------

def _reference_dense(*codes: np.ndarray) -> np.ndarray:
    """Dense ids of code tuples in lexicographic order, the np.unique way."""
    ids = np.unique(codes[0], return_inverse=True)[1].reshape(-1)
    for c in codes[1:]:
        ids = np.unique(ids * (int(c.max()) + 1) + c.astype(np.int64),
                        return_inverse=True)[1].reshape(-1)
    return ids


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 3000), spans=st.lists(st.sampled_from([1, 7, 300, 10**6, 2**40, 2**62]),
                                              min_size=1, max_size=3), seed=st.integers(0, 99))
def test_combine_codes_matches_unique_inverse(n: int, spans: list[int], seed: int) -> None:
    # covers every path of detector._dense_sorted: small n, presence table, packed sort, wide
    from correlation.detector import combine_codes

    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, s, n) for s in spans]
    ids, n_groups = combine_codes(*codes)
    expected = _reference_dense(*codes)
    assert ids.dtype == np.int64
    assert n_groups == int(expected.max()) + 1
    assert np.array_equal(ids, expected)


def _address_column(rng: np.random.Generator, n: int, v6_share: float,
                    distinct: int) -> np.ndarray:
    ips = np.zeros((n, 16), np.uint8)
    ips[:, 10:12] = 0xFF
    ips[:, 12:16] = rng.integers(0, distinct, n).astype(">u4").view(np.uint8).reshape(n, 4)
    v6 = rng.random(n) < v6_share
    ips[v6] = rng.integers(0, 4, (int(v6.sum()), 16))
    return ips.view(IP_DTYPE).reshape(n)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), v6_share=st.sampled_from([0.0, 0.1, 1.0]),
       distinct=st.sampled_from([3, 1000, 2**32 - 1]), seed=st.integers(0, 99))
@example(n=7, v6_share=0.1, distinct=3, seed=1)  # a finding's evidence: the set path
@example(n=32, v6_share=0.1, distinct=1000, seed=2)
@example(n=33, v6_share=1.0, distinct=3, seed=3)
def test_factorize_ip_codes_follow_address_order(n: int, v6_share: float, distinct: int,
                                                 seed: int) -> None:
    from correlation.detector import factorize_ip, sort_ips, sorted_unique_ips

    column = _address_column(np.random.default_rng(seed), n, v6_share, distinct)
    codes, uniques = factorize_ip(column)
    halves = column.view(np.uint64).reshape(n, 2)  # the documented (upper, lower) order
    expected = np.unique(halves, axis=0, return_inverse=True)[1].reshape(-1)
    assert np.array_equal(codes, expected)
    assert np.array_equal(uniques[codes], column)  # codes index the uniques
    assert np.array_equal(sorted_unique_ips(column), sort_ips(uniques))


def test_in_ports_matches_isin() -> None:
    from correlation.network_common import in_ports

    ports = np.arange(65536, dtype=np.uint16)
    for wanted in ([22], [0, 65535], [53, 123, 70000, -1], []):
        assert np.array_equal(in_ports(ports, wanted), np.isin(ports, wanted))


def test_shared_address_codes_give_the_codes_of_the_detectors_rows() -> None:
    from correlation.detector import combine_codes, factorize_ip, ip_codes, ip_pair_codes
    from correlation.engine import _SharedBuffer

    rng = np.random.default_rng(3)
    n = 5000
    cols = {"timestamp": np.arange(n, dtype=np.int64),
            "src_ip": _address_column(rng, n, 0.05, 40),
            "dst_ip": _address_column(rng, n, 0.0, 300)}
    store = _SharedBuffer(tuple(cols), 2)
    mine = np.flatnonzero(rng.random(n) < 0.7)  # enough rows to share the store's codes
    store.append(cols, [mine, np.arange(0, n, 9)])
    view = store.view(0, ("timestamp", "src_ip", "dst_ip"))
    plain = {c: v[mine] for c, v in cols.items()}
    idx = np.flatnonzero(rng.random(mine.size) < 0.5)
    assert view.address_codes(("src_ip",)) is not None
    for name in ("src_ip", "dst_ip"):
        assert np.array_equal(ip_codes(view, name, idx), factorize_ip(plain[name][idx])[0])
        assert np.array_equal(ip_codes(plain, name, idx), factorize_ip(plain[name][idx])[0])
    expected = combine_codes(factorize_ip(plain["src_ip"][idx])[0],
                             factorize_ip(plain["dst_ip"][idx])[0])
    for columns in (view, plain):
        pair, n_pairs = ip_pair_codes(columns, idx)
        assert n_pairs == expected[1] and np.array_equal(pair, expected[0])


def test_detector_columns_hold_only_its_rows_and_declared_columns() -> None:
    from correlation.engine import _SharedBuffer

    names = ("timestamp", "observer_name", "dst_port")
    store = _SharedBuffer(names, 2)
    batch = {"timestamp": np.arange(6, dtype=np.int64),
             "observer_name": np.array(list("abcdef"), dtype=object),
             "dst_port": np.arange(6, dtype=np.uint16), "unused": np.zeros(6)}
    store.append(batch, [np.array([1, 3]), np.array([0, 3, 5])])
    store.append(batch, [np.array([], np.int64), np.array([2])])
    view = store.view(1, ("timestamp", "observer_name"))
    assert view["timestamp"].tolist() == [0, 3, 5, 2]
    assert view["observer_name"].tolist() == ["a", "d", "f", "c"]
    assert "observer_name" in view and "dst_port" not in view and len(view) == 2
    assert [c for c, _ in view.items()] == ["timestamp", "observer_name"]
    assert view.get("dst_port") is None
    with pytest.raises(KeyError):
        view["dst_port"]
    assert store.view(0, names)["dst_port"].tolist() == [1, 3]
    assert store.held == [2, 4]


def test_detectors_sharing_a_buffer_alert_as_when_run_alone() -> None:
    # Each detector must see exactly its own rows (its selection, its cap, its compaction)
    # whether or not other detectors share the buffer.
    rows = []
    for i, src in enumerate(["10.0.0.1", "10.0.0.2", "10.0.0.3"]):
        rows += vertical_scan(src=src, dst=f"192.0.2.{i + 1}", ports=range(1, 30), t=i * 200)
        rows += [dict(src=src, dst=f"198.51.100.{h}", dport=445, t=i * 200 + 5 + h * 0.1,
                      state="REJ") for h in range(1, 30)]
        rows += [dict(src=src, dst="192.0.2.9", dport=22, t=i * 200 + 50 + s, dur=2.0,
                      sport=40000 + s) for s in range(15)]
    batches = [flow_batch(rows[i:i + 37]) for i in range(0, len(rows), 37)]
    caps = {"port_scan_vertical": 40, "port_scan_horizontal": 1000, "brute_force": 30}
    together_config = config_with(**{d: {"max_buffered_rows": cap} for d, cap in caps.items()})
    together, together_stats = run(batches, together_config)
    alone = []
    for name, cap in caps.items():
        config = config_with(**{d: {"enabled": d == name, "max_buffered_rows": cap}
                                for d in caps})
        alone += run(batches, config)[0]
    assert {r for a in together for r in [a["rule"]["id"]]} == {
        "cirtsa.scan.vertical", "cirtsa.scan.horizontal", "cirtsa.brute_force.sessions"}
    by_id = sorted(together, key=lambda a: a["event"]["id"])
    assert by_id == sorted(alone, key=lambda a: a["event"]["id"])
    assert together_stats["rows_dropped_overflow"] > 0  # the caps did bite


class _CountingVerticalScan(VerticalScanDetector):
    """A vertical scan detector that counts its select calls and names its select."""

    calls = 0

    def select(self, batch: EventBatch) -> np.ndarray:
        type(self).calls += 1
        return super().select(batch)

    def select_key(self, kind: str):
        return ("failed_attempt_mask", kind)


def test_detectors_with_one_select_key_are_selected_once_per_batch() -> None:
    # Two detectors promising the same select: one select call per batch, and the same
    # alerts as two detectors selecting on their own (window / cap state stays their own).
    rows = vertical_scan(ports=range(1, 40)) + vertical_scan(src="10.9.9.9", t=400.0)
    batches = [flow_batch(rows[i:i + 10]) for i in range(0, len(rows), 10)]
    section = default_config()["detectors"]["port_scan_vertical"]
    short = dict(section, window_s=60, hop_s=20)
    _CountingVerticalScan.calls = 0
    shared, _ = run(batches, detectors=[_CountingVerticalScan(section),
                                        _CountingVerticalScan(short)])
    assert _CountingVerticalScan.calls == len(batches)
    alone, _ = run(batches, detectors=[VerticalScanDetector(section),
                                       VerticalScanDetector(short)])
    assert len(shared) >= 2 and shared == alone


def test_a_capped_buffer_before_the_first_close_is_not_rescanned_per_push(monkeypatch) -> None:
    """Until a detector's first window closes, every push asks whether one can. At the row
    cap every push also drops rows, and recomputing the exact earliest held time after each
    drop was a pass over every held row per push (issue #4: a 50k events/s service fell
    behind once hour-long windows held their 5M-row cap). A lower bound answers; the exact
    minimum is computed only when a window may close, and the alerts are those of the
    exact minimum asked on every push."""
    section = default_config()["detectors"]["port_scan_vertical"]
    hourly = dict(section, window_s=3600, hop_s=600, max_buffered_rows=100)
    rows = vertical_scan(ports=range(1, 401), step=1.0)  # one new port a second
    batches = [flow_batch(rows[i:i + 10]) for i in range(0, len(rows), 10)]
    scans = []
    real_times = _SharedBuffer.times

    def counted(self, user):
        scans.append(user)
        return real_times(self, user)

    monkeypatch.setattr(_SharedBuffer, "times", counted)
    engine = CorrelationEngine({}, detectors=[VerticalScanDetector(hourly)])
    for b in batches:
        assert engine.push(b) == []  # no window can close within these 400 s
    assert engine.stats["rows_dropped_overflow"] == 300  # the cap did bite on every push
    assert scans == []  # no pass over the held rows to answer "nothing closes yet"
    alerts = engine.flush()
    monkeypatch.setattr(_SharedBuffer, "min_time_bound", _SharedBuffer.min_time)
    exact, _ = run(batches, detectors=[VerticalScanDetector(hourly)])
    assert len(alerts) == 1 and alerts == exact
    assert alerts[0]["cirtsa"]["evidence"]["distinct_ports"] == 100  # the newest 100 rows
