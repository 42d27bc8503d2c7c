"""Beaconing and strobe closes that read few rows (issue #5, task C1).

* take_rows / RowColumns read a few rows of the engine's buffered columns without gathering
  whole columns, and equal cols[name][rows]; count_in_range counts a close's rows without
  gathering the timestamps;
* strobe counts each selected row into hop-slot pair buckets in select; a close whose slots
  counted exactly its rows and hold no bucket at the threshold returns at once, any other
  close takes the exact path: the alerts equal those of the exact path on every close;
* pair_hashes (one hash pass over a batch, shared by beaconing's and strobe's selects) are
  the key hashes of the rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from network_builders import flows, only, rule_ids, run

from bench.correlation_stream import bench_config, make_stream
from correlation import long_connections
from correlation.arrival_memo import rows_in_range
from correlation.beaconing import (
    BeaconDetector,
    RowColumns,
    _address_halves,
    _key_hashes,
    count_in_range,
    pair_hashes,
    take_rows,
)
from correlation.detector import WindowRange
from correlation.engine import CorrelationEngine
from correlation.long_connections import StrobeDetector, _SlotCounts
from correlation.network_common import batch_memo
from pipeline.config import deep_merge, load_config
from pipeline.schema import EventBatch

STROBE = only("strobe")


def strobe_rows(n: int = 4000, src: str = "10.0.0.5", step: float = 0.5) -> list[dict]:
    return [dict(src=src, dst="203.0.113.9", sport=1024 + i % 60000, dport=80, t=i * step)
            for i in range(n)]


def background_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [dict(src=f"10.0.{int(a)}.{int(b)}", dst=f"198.51.100.{int(c)}", dport=443,
                 t=float(t), observer=f"s{int(c) % 3}", zone=f"z{int(a) % 2}")
            for a, b, c, t in zip(rng.integers(0, 4, n), rng.integers(1, 250, n),
                                  rng.integers(1, 250, n), np.sort(rng.random(n)) * 7200,
                                  strict=True)]


# --- reading a few rows of the engine's columns -------------------------------------------


def test_take_rows_equals_the_gathered_column_and_gathers_nothing(monkeypatch) -> None:
    seen = []

    def detect(self, rows, windows):
        cols = rows["flow"]
        counted = count_in_range(cols, windows)  # at the buffer's positions: no gather
        assert not dict.__contains__(cols, "timestamp")
        n = len(cols["timestamp"])  # (gathered: the one column every close reads)
        assert counted == rows_in_range(cols["timestamp"], windows).size
        assert count_in_range(cols, windows) == counted  # (from the gathered column)
        pick = np.array([n - 1, 0, n // 2, 0])  # unordered, repeated
        for name in ("src_ip", "dst_port", "end", "observer_name", "ingress_zone"):
            taken = take_rows(cols, name, pick)
            assert not dict.__contains__(cols, name)  # no whole-column gather
            assert np.array_equal(taken, cols[name][pick])
            assert np.array_equal(take_rows(cols, name, pick), cols[name][pick])  # gathered
        few = RowColumns(cols, pick[:2])
        assert "end" in few and "nothing" not in few
        assert np.array_equal(few["dst_ip"], cols["dst_ip"][pick[:2]])
        seen.append(n)
        return []

    monkeypatch.setattr(StrobeDetector, "detect", detect)
    # two detectors hold different rows: strobe's view is a gather of some buffer rows
    batches = [flows(background_rows(3000, seed=s)) for s in range(2)]
    run(batches, only("strobe", "brute_force"))
    assert seen


def test_take_rows_on_plain_columns() -> None:
    cols = {"x": np.arange(10) * 3, "name": np.array(list("abcdefghij"), object)}
    rows = np.array([4, 1, 4])
    assert take_rows(cols, "x", rows).tolist() == [12, 3, 12]
    assert take_rows(cols, "name", rows).tolist() == ["e", "b", "e"]


# --- strobe: the quiet-close shortcut ----------------------------------------------------


def test_strobe_found_when_detect_is_called_without_select() -> None:
    # the slots counted nothing: the close must take the exact path, not return "quiet"
    config = deep_merge(dict(load_config()["correlation"]["detectors"]["strobe"]), {})
    detector = StrobeDetector(config)
    batch = flows(strobe_rows())
    k = int(detector.window.last_index(int(batch.columns["timestamp"].min())))
    windows = WindowRange(detector.window, k - 3, k)  # (window k holds every row)
    findings = detector.detect({"flow": batch.columns}, windows)
    assert {f.key for f in findings} == {"10.0.0.5|203.0.113.9"}


def test_quiet_needs_the_exact_row_count_and_no_full_bucket() -> None:
    slots = _SlotCounts(10)
    counts = {"key": np.array([5 << 60, 5 << 60, 9 << 60, 5 << 60], np.uint64)}
    batch = EventBatch("flow", {"timestamp": np.array([1, 2, 12, 25], np.int64),
                                "src_ip": np.zeros(4, "V16"), "dst_ip": np.zeros(4, "V16")})
    with pytest.MonkeyPatch.context() as m:
        m.setattr(long_connections, "pair_hashes", lambda c: counts["key"])
        slots.add(batch, np.array([True, True, True, True]))
    assert slots.held() == {0: 2, 1: 1, 2: 1}
    assert slots.quiet(0, 3, 4, 4)
    assert not slots.quiet(0, 3, 4, 3)  # bucket 5 holds 3 rows of slots 0..2
    assert slots.quiet(0, 2, 3, 3)  # slots 0..1: bucket 5 holds 2
    assert not slots.quiet(0, 3, 5, 4)  # the engine holds a row the slots did not count
    assert not slots.quiet(0, 3, 3, 4)  # or the slots counted a row the engine dropped
    slots.release(2)
    assert slots.held() == {2: 1}
    assert not slots.quiet(0, 3, 4, 4)  # slots 0 and 1 are forgotten: counts fall short
    assert slots.quiet(2, 3, 1, 2)


def test_slots_are_bounded_and_a_forgotten_slot_is_not_quiet(monkeypatch) -> None:
    monkeypatch.setattr(long_connections, "_MAX_SLOTS", 3)
    monkeypatch.setattr(long_connections, "pair_hashes",
                        lambda c: np.zeros(c["timestamp"].shape[0], np.uint64))
    slots = _SlotCounts(10)
    for t in range(0, 60, 10):  # slots 0..5, one row each
        slots.add(EventBatch("flow", {"timestamp": np.array([t], np.int64)}),
                  np.array([True]))
    assert sorted(slots.held()) == [3, 4, 5]
    assert slots.quiet(3, 6, 3, 4)
    assert not slots.quiet(2, 6, 4, 5)  # slot 2's row was forgotten: counts fall short


def test_a_row_older_than_its_ring_place_is_not_counted(monkeypatch) -> None:
    monkeypatch.setattr(long_connections, "_MAX_SLOTS", 4)
    monkeypatch.setattr(long_connections, "pair_hashes",
                        lambda c: np.zeros(c["timestamp"].shape[0], np.uint64))
    slots = _SlotCounts(10)
    slots.add(EventBatch("flow", {"timestamp": np.array([55, -5], np.int64)}),
              np.array([True, True]))  # slots 5 and -1 (floor): places 1 and 3
    slots.add(EventBatch("flow", {"timestamp": np.array([15, 56], np.int64)}),
              np.array([True, True]))  # slot 1 is older than place 1's slot 5
    assert slots.held() == {5: 2, -1: 1}
    assert not slots.quiet(1, 2, 1, 10)  # the engine holds slot 1's row: exact path
    assert slots.quiet(-1, 6, 3, 4)
    assert not slots.quiet(-1, 6, 3, 3)  # bucket 0 holds 3 rows


def _config(extra: dict) -> dict:
    base = deep_merge(dict(load_config()["correlation"]), bench_config())
    sections = {n: {"enabled": n in ("strobe", "beaconing")} for n in base["detectors"]}
    sections["strobe"] = {"enabled": True, **extra}
    return deep_merge(bench_config(), {"detectors": sections, "allowed_lateness_s": 30})


@pytest.fixture(scope="module")
def stream():
    return make_stream(30_000, seed=11)


def _rebatched(stream, rows: int, shuffle_seed: int | None) -> list[EventBatch]:
    out = []
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    for batch in stream.batches:
        n = len(batch)
        order = np.arange(n)
        if rng is not None:  # mildly out of order inside a batch: some rows arrive late
            order = np.argsort(order + rng.integers(0, max(2, n // 4), n), kind="stable")
        for start in range(0, n, rows):
            take = order[start:start + rows]
            out.append(EventBatch(batch.kind, {c: v[take] for c, v in batch.columns.items()}))
    return out


def _docs(batches: list[EventBatch], config: dict, shortcut: bool, monkeypatch
          ) -> tuple[list[str], int]:
    closes = []
    with monkeypatch.context() as m:
        quiet = _SlotCounts.quiet

        def counted(self, *a):
            answer = quiet(self, *a) if shortcut else False
            closes.append(answer)
            return answer

        m.setattr(_SlotCounts, "quiet", counted)
        engine = CorrelationEngine(config)
        docs = []
        for batch in batches:
            docs += engine.push(batch)
        docs += engine.flush()
    return [json.dumps(d, sort_keys=True, default=str) for d in docs], sum(closes)


@pytest.mark.parametrize("rows,shuffle,cap", [
    (65_536, None, None), (700, None, None), (2_000, 1, None), (1_500, None, 3_000)])
def test_shortcut_on_and_off_give_identical_alerts(stream, monkeypatch, rows: int,
                                                   shuffle: int | None, cap: int | None
                                                   ) -> None:
    config = _config({} if cap is None else {"max_buffered_rows": cap})
    batches = _rebatched(stream, rows, shuffle)
    fast, quiet_closes = _docs(batches, config, True, monkeypatch)
    exact, _ = _docs(batches, config, False, monkeypatch)
    assert fast == exact
    assert quiet_closes > 0  # the shortcut was taken: the comparison is not vacuous
    if cap is None:
        assert any('"cirtsa.c2.strobe"' in d for d in fast)  # the planted strobe


def test_strobe_between_quiet_hours() -> None:
    rows = background_rows(3000) + [dict(r, t=r["t"] + 7200) for r in strobe_rows()]
    alerts, _ = run([flows(sorted(rows, key=lambda r: r["t"]))], STROBE)
    assert rule_ids(alerts) == ["cirtsa.c2.strobe"]
    assert alerts[0]["cirtsa"]["evidence"]["connections"] >= 3600


# --- shared pair hashes ------------------------------------------------------------------


def test_pair_hashes_are_the_key_hashes_of_the_rows_and_shared_per_batch() -> None:
    batch = flows(background_rows(500))
    c = batch.columns
    rows = np.arange(0, 500, 7)
    expected = _key_hashes(_address_halves(c["src_ip"][rows]), _address_halves(c["dst_ip"][rows]))
    assert np.array_equal(pair_hashes(c)[rows], expected)
    calls = []
    with batch_memo(), pytest.MonkeyPatch.context() as m:
        from correlation import beaconing
        real = beaconing._key_hashes
        m.setattr(beaconing, "_key_hashes", lambda a, b: calls.append(1) or real(a, b))
        first, second = pair_hashes(c), pair_hashes(c)
    assert np.array_equal(first, second) and len(calls) == 1


def test_beaconing_flow_keys_from_pair_hashes() -> None:
    batch = flows(background_rows(500))
    detector = BeaconDetector(load_config()["correlation"]["detectors"]["beaconing"])
    mask = detector.select(batch)
    memo = detector._key_memo["flow"]
    rows = np.flatnonzero(mask)
    c = batch.columns
    assert np.array_equal(memo.values["key"][: memo.rows],
                          _key_hashes(_address_halves(c["src_ip"][rows]),
                                      _address_halves(c["dst_ip"][rows])))
