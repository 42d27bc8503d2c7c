"""An idle evaluation (CorrelationEngine.evaluate_open) judges open windows through
Detector.probe: it must leave every detector exactly as it was and find what a deep copy
of the detector (the former probe) finds.

Why: the deep copy of every detector at each idle flush also copied memos, sketches and
shared tables (tens of MB after hours of traffic, twice the detectors' memory for a
moment). The probes share what detect does not change and copy the rest; these tests
prove, per detector, that nothing of the detector changes and the findings are the same.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from event_builders import make_batch

from bench.correlation_stream import DENSE_S, NS, T0_S, bench_config, make_stream
from correlation.detector import Detector, WindowRange
from correlation.dns_tunnel import DnsTunnelDetector
from correlation.engine import CorrelationEngine, default_config, merge_config
from correlation.port_scan import VerticalScanDetector

# Points of the benchmark stream's dense phase where every detector with a probe override
# has findings in its open windows (0.85: dns_tunnel, exfil_*; 1.0: strobe).
CUTS = (0.3, 0.85, 1.0)
CLIENT = "10.0.2.30"
# Caches keyed by value a probe shares and may fill (class b): no later result depends on
# their content (beaconing compares name ids within one detect call; the public-suffix
# memos map a name to its split). The alert test below proves the results unchanged.
SHARED_CACHES = {"beaconing": {"_name_ids"}, "dns_tunnel": {"_psl"}}
OVERRIDDEN = ("beaconing", "strobe", "exfil_upload", "exfil_volume", "dns_tunnel")


@pytest.fixture(scope="module")
def stream():
    return make_stream(200_000, seed=1)


def engine_at(stream, frac: float) -> CorrelationEngine:
    """An engine fed the stream up to `frac` of its dense phase: windows still open."""
    engine = CorrelationEngine(merge_config(default_config(), bench_config()))
    cut = (T0_S + frac * DENSE_S) * NS
    for batch in stream.batches:
        if int(batch.columns["timestamp"].min()) > cut:
            break
        engine.push(batch)
    return engine


def state_of(detector: Detector) -> dict[str, bytes]:
    """Every attribute of the detector, pickled (arrays byte for byte, memos whole)."""
    return {name: pickle.dumps(value, protocol=5) for name, value in vars(detector).items()}


def open_range(state) -> tuple[dict, WindowRange] | None:
    """(rows, window range) the engine's _evaluate_open hands the probe; None: no rows."""
    held = [(store, u) for _, store, u, _ in state.inputs if store.held[u]]
    if not held:
        return None
    spec = state.detector.window
    last_k = int(spec.last_index(max(store.max_time(u) for store, u in held)))
    rows = {kind: store.view(u, columns) for kind, store, u, columns in state.inputs
            if store.held[u]}
    return rows, WindowRange(spec, state.next_k, last_k)


def described(findings) -> list[tuple]:
    """Findings with their evidence, in a canonical order."""
    return sorted(((f.rule.id, f.key, f.window_start, f.window_end, repr(f.describe()))
                   for f in findings), key=lambda x: x[:4])


@pytest.mark.parametrize("frac", CUTS)
def test_probe_leaves_every_detector_as_it_was_and_finds_what_a_copy_finds(stream, frac):
    engine = engine_at(stream, frac)
    found = dict.fromkeys(OVERRIDDEN, 0)
    for state in engine._states:
        detector = state.detector
        got = open_range(state)
        if got is None:
            continue
        rows, windows = got
        before = state_of(detector)
        expected = described(copy.deepcopy(detector).detect(rows, windows))
        assert described(detector.probe().detect(rows, windows)) == expected, detector.name
        changed = {k for k, v in state_of(detector).items() if before.get(k) != v}
        assert not changed - SHARED_CACHES.get(detector.name, set()), (detector.name, changed)
        if detector.name in found:
            found[detector.name] += len(expected)
    if frac == 1.0:  # (the cuts together reach a finding of every overridden detector)
        assert found["strobe"] and found["beaconing"]
    if frac == 0.85:
        assert found["dns_tunnel"] and found["exfil_upload"] and found["exfil_volume"]


@pytest.mark.parametrize("frac", CUTS)
def test_idle_flushes_give_the_alerts_of_deep_copied_detectors(stream, frac, monkeypatch):
    """Two idle flushes then the rest of the stream and a flush: the same alerts and stats
    with the probes as with deep copies (the former evaluate_open). (The detectors' states
    are compared on one object above: across runs, memos' unused capacity differs.)"""
    def run(probe) -> tuple[list[dict], dict]:
        with monkeypatch.context() as m:
            if probe is not None:
                for state_detector in {type(d) for d in engine_at(stream, 0).detectors}:
                    m.setattr(state_detector, "probe", probe)
            engine = engine_at(stream, frac)
            alerts = engine.evaluate_open() + engine.evaluate_open()
            cut = (T0_S + frac * DENSE_S) * NS
            for batch in stream.batches:
                if int(batch.columns["timestamp"].min()) > cut:
                    alerts += engine.push(batch)
            alerts += engine.flush()
        return alerts, dict(engine.stats)

    probed, copied = run(None), run(lambda self: copy.deepcopy(self))
    assert probed[0] and probed[0] == copied[0]
    assert probed[1] == copied[1]


def test_dns_tunnel_probe_adding_names_leaves_the_name_memo_alone():
    """A probe whose row memo cannot vouch (here: detect called without select) looks the
    names up itself: new names, even a start-over of the bounded memo, stay in the probe."""
    config = merge_config(default_config(), {})["detectors"]["dns_tunnel"]
    detector = DnsTunnelDetector(config)
    detector.select(make_batch("dns", [{"t": i, "src": CLIENT, "qname": f"a{i}.example.com"}
                                       for i in range(50)]))
    detector._names.limit = 120  # the probe's 100 new names start the memo over
    before = state_of(detector)
    batch = make_batch("dns", [{"t": 60 + i, "src": CLIENT, "dst": "10.0.2.20", "qtype": 16,
                                "qname": f"{'k' * 3}{i:037x}.{i:020x}.t.example.net"}
                               for i in range(100)])
    t = batch.columns["timestamp"]
    windows = WindowRange(detector.window, int(detector.window.first_index(int(t.min()))),
                          int(detector.window.last_index(int(t.max()))))
    rows = {"dns": dict(batch.columns)}
    expected = described(copy.deepcopy(detector).detect(rows, windows))
    probe = detector.probe()
    assert described(probe.detect(rows, windows)) == expected
    assert expected  # (a tunnel: the looked-up features matter)
    assert probe._names.generation == detector._names.generation + 1  # it started over
    changed = {k for k, v in state_of(detector).items() if before.get(k) != v}
    assert not changed - SHARED_CACHES["dns_tunnel"], changed


def test_pure_detect_is_not_inherited():
    """A subclass of a detector whose detect changes nothing may add state: it gets the
    safe default (a deep copy) unless it says pure_detect itself."""
    class WithState(VerticalScanDetector):
        pass

    config = merge_config(default_config(), {})["detectors"]["port_scan_vertical"]
    assert VerticalScanDetector(config).probe() is not None
    plain = VerticalScanDetector(config)
    assert plain.probe() is plain
    derived = WithState(config)
    assert derived.probe() is not derived
    assert np.array_equal(np.asarray(derived.probe().window.size_ns),
                          np.asarray(derived.window.size_ns))


def test_a_frozen_arrival_memo_releases_nothing():
    """A frozen view answers as its memo and leaves the shared columns alone, where the
    memo itself would compact them (a release of the range's rows, in place)."""
    from correlation.arrival_memo import ArrivalMemo  # noqa: PLC0415
    from correlation.detector import WindowSpec  # noqa: PLC0415

    memo = ArrivalMemo({"v": np.int64})
    times = np.arange(100, dtype=np.int64) * 10
    memo.add(times, v=times * 7)
    windows = WindowRange(WindowSpec(500, 500), 0, 0)  # rows 0..49, then released
    idx = np.arange(50)
    before = (memo.times.copy(), memo.values["v"].copy(), memo.rows)
    view = memo.frozen()
    got = view.aligned(windows, times, idx)
    assert np.array_equal(got["v"], times[:50] * 7)
    assert np.array_equal(memo.times, before[0]) and memo.rows == before[2]
    assert np.array_equal(memo.values["v"], before[1]) and view.rows == 100
    with pytest.raises(RuntimeError):
        view.add(times[:1], v=times[:1])
    assert np.array_equal(memo.aligned(windows, times, idx)["v"], got["v"])
    assert memo.rows == 50  # (the memo itself released them)
