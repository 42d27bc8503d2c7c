"""correlation/arrival_memo.py and the detectors that read per-row values from it.

The memo claims: the values it hands back at a close are those of exactly the buffered rows
inside the closing range, in order, or nothing. Checked on a model of the engine's buffer
(hypothesis: random arrival times, late rows, rows dropped by a cap, a poisoned memo: the
memo may say "don't know", never a wrong value), and end to end: beaconing and dns_tunnel
with the memo and with it switched off give byte-identical alert documents on a mixed
stream cut into batches of several sizes, with late rows, and with a row cap that drops.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation import beaconing, dns_tunnel
from correlation.arrival_memo import ArrivalMemo, rows_in_range
from correlation.beaconing import _address_halves, candidate_rows, hashed_pair_codes, key_hashes
from correlation.detector import WindowRange, WindowSpec, ip_pair_codes
from correlation.engine import CorrelationEngine
from pipeline.config import deep_merge, load_config
from pipeline.schema import EventBatch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.correlation_stream import bench_config, make_stream  # noqa: E402

SPEC = WindowSpec(size_ns=40, hop_ns=10)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, 300), min_size=0, max_size=12), min_size=1,
                max_size=25),
       st.lists(st.integers(0, 3), min_size=25, max_size=25),
       st.sets(st.integers(0, 120), max_size=4), st.integers(-1, 24), st.booleans())
def test_aligned_values_are_the_held_rows_or_nothing(batches: list[list[int]],
                                                      lateness: list[int],
                                                      cap_drops: set[int],
                                                      poison_at: int, copy: bool) -> None:
    """A model engine: rows arrive in batches, each close takes every window the watermark
    passed, rows of closed windows only are dropped on arrival (late) or released after a
    close, and a few rows vanish (a cap). Whatever the memo answers is the held rows'."""
    memo = ArrivalMemo({"value": np.int64})
    held_t: list[int] = []
    held_v: list[int] = []
    next_k = None
    serial = 0
    newest = None
    for b, times in enumerate(batches):
        times = [max(0, t - 50 * lateness[b]) for t in times]  # some rows arrive late
        values = list(range(serial, serial + len(times)))
        serial += len(times)
        t_arr = np.array(times, np.int64)
        memo.add(t_arr, value=np.array(values, np.int64))
        if b == poison_at:
            memo.poison()
        for t, v in zip(times, values, strict=True):
            if next_k is not None and SPEC.last_index(t) < next_k:
                continue  # every window of the row closed: the engine drops it
            if v in cap_drops:
                continue  # the row cap dropped it
            held_t.append(t)
            held_v.append(v)
        if times:
            newest = max(times) if newest is None else max(newest, max(times))
        if newest is None:
            continue
        last_k = (newest - SPEC.size_ns) // SPEC.hop_ns
        if next_k is None:
            if not held_t:
                continue
            next_k = int(SPEC.first_index(min(held_t)))
        if last_k < next_k:
            continue
        windows = WindowRange(SPEC, next_k, int(last_k))
        ht = np.array(held_t, np.int64)
        idx = rows_in_range(ht, windows)
        assert np.array_equal(idx, np.flatnonzero(windows.row_mask(ht)))
        got = memo.aligned(windows, ht, idx, copy=copy)  # views too (copy=False)
        if got is not None:
            assert got["value"].tolist() == np.array(held_v, np.int64)[idx].tolist()
            if not copy and got["value"].base is not None:
                assert not got["value"].flags.writeable  # the memo's own rows
        elif not cap_drops and poison_at < 0:
            pytest.fail("nothing was lost: the memo must vouch for the rows")
        next_k = int(last_k) + 1
        horizon = SPEC.start(next_k)
        keep = [i for i, t in enumerate(held_t) if t >= horizon]
        held_t = [held_t[i] for i in keep]
        held_v = [held_v[i] for i in keep]


def test_views_only_when_consecutive_and_nothing_moves() -> None:
    memo = ArrivalMemo({"value": np.int64})
    memo.add(np.array([5, 15, 25, 35, 12], np.int64), value=np.arange(5, dtype=np.int64))
    held = np.array([5, 15, 25, 35, 12], np.int64)
    # [10, 50): rows 1, 2, 3 and 4 of the memo, consecutive; the horizon 20 releases 2
    # of 5 rows (over a quarter): moved in place, so the answer is a copy
    got = memo.aligned(WindowRange(SPEC, 1, 1), held, np.array([1, 2, 3, 4]), copy=False)
    assert got["value"].tolist() == [1, 2, 3, 4] and got["value"].flags.writeable
    assert memo.times[: memo.rows].tolist() == [25, 35] and len(memo) == 2
    memo.add(np.array([45, 55], np.int64), value=np.array([5, 6], np.int64))
    held = np.array([25, 35, 45, 55], np.int64)
    got = memo.aligned(WindowRange(SPEC, 2, 2), held, np.array([0, 1, 2, 3]), copy=False)
    assert got["value"].tolist() == [2, 3, 5, 6]  # [20, 60): horizon 30 drops 1 of 4: kept
    assert not got["value"].flags.writeable and got["value"].base is not None
    memo.add(np.array([95, 65], np.int64), value=np.array([7, 8], np.int64))
    held = np.array([25, 35, 45, 55, 95, 65], np.int64)
    got = memo.aligned(WindowRange(SPEC, 3, 3), held, np.array([1, 2, 3, 5]), copy=False)
    assert got["value"].tolist() == [3, 5, 6, 8] and got["value"].flags.writeable  # gather
    assert memo.aligned(WindowRange(SPEC, 3, 3), held, np.array([1, 2, 3]), copy=False) is None


def test_as_many_rows_as_held_but_other_times_is_not_aligned() -> None:
    # the one-to-one fast path (memo row i = buffered row i) needs every time equal
    memo = ArrivalMemo({"value": np.int64})
    memo.add(np.array([5, 15, 25, 12], np.int64), value=np.arange(4, dtype=np.int64))
    held = np.array([5, 16, 25, 12], np.int64)  # as many rows, one other
    assert memo.aligned(WindowRange(SPEC, 1, 1), held, np.array([1, 2, 3])) is None
    memo = ArrivalMemo({"value": np.int64})  # (the close above released rows)
    memo.add(np.array([5, 15, 25, 12], np.int64), value=np.arange(4, dtype=np.int64))
    held = np.array([5, 15, 25, 12], np.int64)
    got = memo.aligned(WindowRange(SPEC, 1, 1), held, np.array([1, 2, 3]))
    assert got["value"].tolist() == [1, 2, 3]


def test_poison_refuses_ranges_that_can_hold_earlier_rows() -> None:
    memo = ArrivalMemo({"value": np.int64})
    memo.add(np.array([5, 15], np.int64), value=np.array([1, 2], np.int64))
    memo.poison()
    memo.add(np.array([55], np.int64), value=np.array([3], np.int64))
    early = WindowRange(SPEC, 0, 1)  # [0, 50): holds the forgotten rows
    assert memo.aligned(early, np.array([5, 15, 55], np.int64), np.array([0, 1])) is None
    late = WindowRange(SPEC, 2, 2)  # [20, 60): starts after the latest forgotten row
    got = memo.aligned(late, np.array([5, 15, 55], np.int64), np.array([2]))
    assert got is not None and got["value"].tolist() == [3]


def _addresses(rng: np.random.Generator, n: int, distinct: int) -> np.ndarray:
    raw = np.zeros((n, 16), np.uint8)
    raw[:, 10:12] = 0xFF
    raw[:, 12:] = rng.integers(0, distinct, n).astype(">u4").view(np.uint8).reshape(n, 4)
    return raw.view("V16").reshape(n)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3000), st.integers(1, 60), st.integers(1, 60), st.integers(1, 15),
       st.integers(0, 2**32 - 1))
def test_candidates_keep_every_row_of_a_reaching_pair(n: int, n_src: int, n_dst: int,
                                                      threshold: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cols = {"src_ip": _addresses(rng, n, n_src), "dst_ip": _addresses(rng, n, n_dst)}
    rows = np.arange(n)
    hashes = key_hashes("flow", cols, rows)
    passed = candidate_rows(hashes, threshold)
    pair, _ = ip_pair_codes(cols, rows)
    reaching = np.bincount(pair, minlength=int(pair.max()) + 1 if n else 0)[pair] >= threshold
    assert not (reaching & ~passed).any()
    # grouping by the hashes is the same partition as ranking the addresses
    got = hashed_pair_codes(cols, rows, hashes)
    assert got is not None  # no 64-bit collision among a few thousand pairs
    ids, n_ids = got
    assert n_ids == (int(pair.max()) + 1 if n else 0)
    if n:
        assert len(set(zip(ids.tolist(), pair.tolist(), strict=True))) == n_ids


@pytest.mark.parametrize("threshold", [2, 10, 254, 255, 256, 299, 300, 301])
def test_candidates_saturating_counts(threshold: int) -> None:
    # one key of 300 rows (bucket counts saturate at 255), 40 of 2 rows, 500 one-offs
    rng = np.random.default_rng(threshold)
    keys = np.concatenate([np.full(300, 7), np.repeat(np.arange(100, 140), 2),
                           np.arange(1000, 1500)]).astype(np.uint64)
    hashes = np.array([beaconing._mix(np.uint64(k)) for k in keys.tolist()], np.uint64)
    perm = rng.permutation(hashes.size)
    hashes, keys = hashes[perm], keys[perm]
    passed = candidate_rows(hashes, threshold)
    counts = {k: int(n) for k, n in zip(*np.unique(keys, return_counts=True), strict=True)}
    reaching = np.array([counts[k] >= threshold for k in keys.tolist()])
    assert not (reaching & ~passed).any()  # every row of a reaching key
    assert passed[keys == 7].all() == (threshold <= 300)
    if threshold > 255:  # counted exactly past the byte counts
        assert np.array_equal(passed, reaching)


def test_a_hash_shared_by_two_pairs_falls_back_to_ranking() -> None:
    rng = np.random.default_rng(3)
    cols = {"src_ip": _addresses(rng, 8, 4), "dst_ip": _addresses(rng, 8, 4)}
    rows = np.arange(8)
    assert len({tuple(h) for h in _address_halves(cols["src_ip"]).tolist()}) > 1
    assert hashed_pair_codes(cols, rows, np.zeros(8, np.uint64)) is None


def test_name_keys_hash_the_source_and_the_name() -> None:
    rng = np.random.default_rng(5)
    src = _addresses(rng, 4, 2)
    src[1] = src[0]
    names = np.array(["a.example", "a.example", "b.example", "a.example"], object)
    hashes = key_hashes("dns", {"src_ip": src, "qname": names}, np.arange(4))
    assert hashes[0] == hashes[1] and hashes[0] != hashes[2]
    assert (hashes[3] == hashes[0]) == (src[3] == src[0])


# --- end to end: the memo on and off give the same alert documents ------------------------


@pytest.fixture(scope="module")
def stream():
    return make_stream(30_000, seed=11)


def _config(detectors: dict) -> dict:
    base = deep_merge(dict(load_config()["correlation"]), bench_config())
    sections = {n: {"enabled": n in detectors} for n in base["detectors"]}
    for name, extra in detectors.items():
        sections[name] = {"enabled": True, **extra}
    return deep_merge(bench_config(), {"detectors": sections})


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


def _alert_docs(batches: list[EventBatch], config: dict, memo_on: bool,
                monkeypatch) -> list[str]:
    with monkeypatch.context() as m:
        if not memo_on:
            m.setattr(ArrivalMemo, "aligned", lambda self, *a, **k: None)
        engine = CorrelationEngine(config)
        docs = []
        for batch in batches:
            docs += engine.push(batch)
        docs += engine.flush()
    return [json.dumps(d, sort_keys=True, default=str) for d in docs]


@pytest.mark.parametrize("rows,shuffle,cap,names", [
    (65_536, None, None, None), (700, None, None, None), (2_000, 1, None, None),
    (1_500, None, 3_000, None),
    (1_000, None, None, 300),  # name memos start over every few hundred names
])
def test_memo_on_and_off_give_identical_alerts(stream, monkeypatch, rows: int,
                                               shuffle: int | None, cap: int | None,
                                               names: int | None) -> None:
    if names is not None:
        monkeypatch.setattr(beaconing, "_NAME_MEMO_MAX", names)
        monkeypatch.setattr(dns_tunnel, "_FEATURE_MEMO_MAX", names)
    extra = {} if cap is None else {"max_buffered_rows": cap}
    config = _config({"beaconing": extra, "dns_tunnel": extra})
    config["allowed_lateness_s"] = 30
    batches = _rebatched(stream, rows, shuffle)
    with_memo = _alert_docs(batches, config, True, monkeypatch)
    without = _alert_docs(batches, config, False, monkeypatch)
    assert with_memo == without
    if cap is None:
        assert with_memo  # the planted beacons and tunnels: the comparison is not vacuous
