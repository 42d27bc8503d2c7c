"""The engine's per-push bookkeeping: a detector none of whose windows close is skipped by
one comparison, the late check and the suppression memory are kept as plain bounds, and
validate_batch's per-kind plan. Alerts themselves are covered by test_engine.py (batch-split
independence, lateness, caps, suppression)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipeline.schema as schema
from correlation.engine import CorrelationEngine
from pipeline.schema import EventBatch, SchemaError, validate_batch

pytestmark = pytest.mark.usefixtures("core_detectors_only")


def _engine_tools():
    from test_engine import config_with, flow_batch, vertical_scan

    return config_with, flow_batch, vertical_scan


def _counting_closes(engine: CorrelationEngine) -> list[tuple[str, int | None, int]]:
    """Record (detector, next_k before the call, windows closed by it) of every _close."""
    calls = []
    close = engine._close

    def counted(state, last_k):
        before, closed = state.next_k, engine.stats["windows_closed"]
        out = close(state, last_k)
        calls.append((state.detector.name, before, engine.stats["windows_closed"] - closed))
        return out
    engine._close = counted
    return calls


def test_a_detector_none_of_whose_windows_close_is_not_visited() -> None:
    config_with, flow_batch, vertical_scan = _engine_tools()
    config = {"allowed_lateness_s": 0, **config_with(
        port_scan_vertical={"window_s": 60, "hop_s": 60},
        port_scan_horizontal={"enabled": False}, brute_force={"enabled": False})}
    engine = CorrelationEngine(config)
    calls = _counting_closes(engine)
    # one batch every 0.5 s for 300 s: window ends at 60, 120, 180, 240 (+ the first, empty)
    for i in range(600):
        engine.push(flow_batch(vertical_scan(ports=[1 + i % 50], t=0.5 * i, step=0)))
    after_first = [c for c in calls if c[1] is not None]
    # once the detector has a window position, every visit closes windows: no idle visits
    assert after_first and all(closed > 0 for _, _, closed in after_first)
    assert len(after_first) == 3  # ends 120, 180, 240: one visit per window end
    # before: every push until the first window (end 60) closes, t = 0 .. 60
    assert len(calls) - len(after_first) == 121


_times = st.lists(st.floats(0, 900, allow_nan=False), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(_times, min_size=1, max_size=12), lateness=st.sampled_from([0, 5, 60]))
def test_window_bounds_follow_next_k_after_every_push(batches, lateness) -> None:
    # close_at / late_before are the closed forms of "a window closes" and "a row is late"
    # (out-of-order input, several detectors with different windows)
    config_with, flow_batch, vertical_scan = _engine_tools()
    config = {"allowed_lateness_s": lateness, **config_with(
        port_scan_vertical={"window_s": 60, "hop_s": 20, "suppress_s": 0},
        port_scan_horizontal={"window_s": 300, "hop_s": 60},
        brute_force={"window_s": 30, "hop_s": 30})}
    engine = CorrelationEngine(config)
    for times in batches:
        engine.push(flow_batch([dict(src="10.0.0.1", dst="10.0.0.2", dport=int(t) % 60 + 1,
                                     t=t, state="S0") for t in times]))
        for state in engine._states:
            spec = state.detector.window
            if state.next_k is None:
                continue
            assert state.close_at == spec.end(state.next_k)
            assert state.late_before == spec.end(state.next_k - 1)
            assert state.close_at > engine.watermark  # every closable window was closed
            horizon = spec.start(state.next_k)
            span = max(state.detector.suppress_ns, spec.size_ns)
            # the suppression memory holds no key a future window cannot be suppressed by
            assert all(s + span > horizon for s in state.last_alert.values())
            assert all(state.forget_at <= s + span for s in state.last_alert.values())


def test_suppression_memory_is_not_rebuilt_when_nothing_expires() -> None:
    config_with, flow_batch, vertical_scan = _engine_tools()
    config = {"allowed_lateness_s": 0, **config_with(
        port_scan_vertical={"window_s": 60, "hop_s": 20, "suppress_s": 600},
        port_scan_horizontal={"enabled": False}, brute_force={"enabled": False})}
    engine = CorrelationEngine(config)
    state = engine._states[0]
    alerts = engine.push(flow_batch(vertical_scan(ports=range(1, 40), t=1.0)))
    alerts += engine.push(flow_batch(vertical_scan(ports=[1], src="10.7.7.7", t=100.0)))
    assert [a["rule"]["id"] for a in alerts] == ["cirtsa.scan.vertical"]
    memory = state.last_alert
    assert len(memory) == 1
    engine.push(flow_batch(vertical_scan(ports=[2], src="10.7.7.7", t=300.0)))
    assert state.last_alert is memory  # closes before start + 600 s keep the dict
    engine.push(flow_batch(vertical_scan(ports=[3], src="10.7.7.7", t=800.0)))
    assert state.last_alert == {} and state.last_alert is not memory  # expired: forgotten


def test_validate_batch_takes_equal_dtypes_and_any_column_order() -> None:
    _, flow_batch, vertical_scan = _engine_tools()
    batch = flow_batch(vertical_scan(ports=[1, 2]))
    reordered = dict(reversed(list(batch.columns.items())))
    # an equal dtype that is another object (a V16 descriptor built anew)
    reordered["src_ip"] = reordered["src_ip"].view(np.dtype((np.void, 16)))
    validate_batch(EventBatch("flow", reordered))
    reordered["src_port"] = reordered["src_port"].astype(np.int32)
    with pytest.raises(SchemaError, match="flow.src_port: dtype int32"):
        validate_batch(EventBatch("flow", reordered))


def test_validate_batch_follows_a_replaced_kind(monkeypatch) -> None:
    # the per-kind plan is keyed on the kind object: a replaced kind is not checked with
    # the former kind's columns
    _, flow_batch, vertical_scan = _engine_tools()
    batch = flow_batch(vertical_scan(ports=[1]))
    validate_batch(batch)
    flow = schema.KINDS["flow"]
    fewer = dataclasses.replace(flow, fields=tuple(f for f in flow.fields
                                                   if f.column != "vlan"))
    monkeypatch.setitem(schema.KINDS, "flow", fewer)
    with pytest.raises(SchemaError, match="unexpected columns"):
        validate_batch(batch)
