"""Engine per-batch cost (task W5): the inline-key address table, the early-exit stale
test, renumbering by runs, equality address codes and one compaction per push, each
against its plain form."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation.engine import CorrelationEngine, _SharedBuffer
from correlation.engine_kernels import (
    kept_runs,
    move_columns_by_runs,
    move_kept_runs,
    renumber_by_runs,
)
from correlation.kernels import AddressTable, KeyTable, count_stale, more_stale_than
from sensors.packets import IP_DTYPE


def _addresses(rng: np.random.Generator, n: int, distinct: int) -> np.ndarray:
    raw = np.zeros((n, 16), np.uint8)
    raw[:, 10:12] = 0xFF
    raw[:, 12:] = rng.integers(0, distinct, n).astype(">u4").view(np.uint8).reshape(n, 4)
    if n:
        raw[rng.random(n) < 0.1, :8] = 0x20  # some IPv6-like upper halves
    return raw.view(IP_DTYPE).reshape(n)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=6),
       distinct=st.integers(1, 5000), seed=st.integers(0, 10**6))
def test_address_ids_are_first_seen_order_across_batches(sizes: list[int], distinct: int,
                                                        seed: int) -> None:
    rng = np.random.default_rng(seed)
    table = AddressTable()
    seen: dict[bytes, int] = {}
    for n in sizes:
        column = _addresses(rng, n, distinct)
        out = np.full(n + 3, -7, np.int64)
        ids = table.intern(column, out=out[:n])
        want = [seen.setdefault(a.tobytes(), len(seen)) for a in column]
        assert ids.tolist() == want and out[:n].tolist() == want  # written in place
        assert out[n:].tolist() == [-7] * 3
        assert table.size == len(seen)
    keys = np.array(list(seen), dtype=object)
    halves = np.frombuffer(b"".join(keys), np.uint64).reshape(-1, 2) if len(keys) else None
    if halves is not None:
        assert np.array_equal(table.hi, halves[:, 0]) and np.array_equal(table.lo, halves[:, 1])


def test_key_table_rebuild_keeps_live_keys_findable() -> None:
    rng = np.random.default_rng(3)
    table = KeyTable()
    hi = rng.integers(0, 4, 5000).astype(np.uint64)
    lo = rng.integers(0, 3000, 5000).astype(np.uint64)
    ids = table.intern_halves(hi, lo)
    live = np.zeros(table.size, bool)
    live[::3] = True
    remap = table.rebuild(live)
    assert table.size == int(live.sum())
    kept_rows = live[ids]
    again = table.intern_halves(hi[kept_rows], lo[kept_rows])
    assert np.array_equal(again, remap[ids[kept_rows]])
    assert table.size == int(live.sum())  # nothing new
    assert table.intern_halves(np.array([9], np.uint64), np.array([9], np.uint64))[0] == \
        table.size - 1


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 2000), held=st.floats(0.0, 1.0), seed=st.integers(0, 10**6),
       horizon=st.integers(-10, 1100), limit=st.integers(-1, 2100))
def test_more_stale_than_is_the_count_compared(n: int, held: float, seed: int, horizon: int,
                                               limit: int) -> None:
    rng = np.random.default_rng(seed)
    times = np.sort(rng.integers(0, 1000, n)).astype(np.int64)  # mostly in arrival order
    times[rng.random(n) < 0.2] = rng.integers(0, 1000)
    positions = np.flatnonzero(rng.random(n) < held)
    assert more_stale_than(positions, times, horizon, limit) == (
        count_stale(positions, times, horizon) > limit)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), share=st.floats(0, 1), seed=st.integers(0, 10**6))
def test_renumber_by_runs_is_the_index_among_kept_rows(n: int, share: float,
                                                      seed: int) -> None:
    rng = np.random.default_rng(seed)
    keep = np.flatnonzero(rng.random(n) < share)
    runs = kept_runs(keep, n)
    mine = np.sort(rng.choice(keep, int(rng.integers(0, keep.size + 1)), replace=False)
                   ).astype(np.int64)
    assert np.array_equal(renumber_by_runs(mine, runs), np.searchsorted(keep, mine))


def test_renumber_by_runs_refuses_rows_not_kept() -> None:
    runs = kept_runs(np.array([1, 4, 5, 9], np.int32), 10)
    assert renumber_by_runs(np.array([4, 9], np.int64), runs).tolist() == [1, 3]
    for bad in ([4, 6], [10], [0], [2]):
        with pytest.raises(ValueError):
            renumber_by_runs(np.array(bad, np.int64), runs)


def test_move_columns_by_runs_equals_one_column_at_a_time() -> None:
    rng = np.random.default_rng(5)
    used = rng.random(100_000) < 0.7
    used[10_000:60_000] = True  # a long run (memmove) between short ones
    runs = kept_runs(np.flatnonzero(used), used.size)
    columns = [rng.integers(0, 1 << 40, used.size), rng.integers(0, 200, used.size, np.uint8),
               rng.integers(0, 256, 16 * used.size, np.uint8).view(IP_DTYPE)]
    expected = [c.copy() for c in columns]
    for c in expected:
        move_kept_runs(c, runs)
    move_columns_by_runs(columns, runs)
    for got, want in zip(columns, expected, strict=True):
        assert got.tobytes() == want.tobytes()


def test_equality_codes_match_ranked_codes_as_a_partition() -> None:
    rng = np.random.default_rng(11)
    n = 4000
    store = _SharedBuffer(("timestamp", "src_ip", "dst_ip"), 1)
    for part in range(4):
        columns = {"timestamp": np.arange(n, dtype=np.int64) + part * n,
                   "src_ip": _addresses(rng, n, 300), "dst_ip": _addresses(rng, n, 50)}
        store.append(columns, [np.flatnonzero(rng.random(n) < 0.5)])
    positions = store.positions(0)
    for names in (("src_ip",), ("dst_ip",), ("src_ip", "dst_ip")):
        eq = store.address_equality_codes(names, positions)
        ordered = store.address_codes(names, positions)
        assert eq.dtype == np.int64 and (eq >= 0).all()
        # equal exactly where the ordered codes are
        _, a = np.unique(eq, return_inverse=True)
        _, b = np.unique(ordered, return_inverse=True)
        first_a = {}
        assert all(first_a.setdefault(x, y) == y for x, y in zip(a, b, strict=True))
        assert len(set(a.tolist())) == len(set(b.tolist()))
    # the buffer's own ids are not changed by a read or a change of the codes read
    # (fresh arrays, also for a slice of positions)
    before = store.address_ids["src_ip"][: store.rows].copy()
    for at in (positions, slice(0, store.rows)):
        for names in (("src_ip",), ("src_ip", "dst_ip")):
            store.address_equality_codes(names, at)[:] = -1
    assert np.array_equal(store.address_ids["src_ip"][: store.rows], before)


def test_one_compaction_per_push_and_split_independent_alerts(monkeypatch) -> None:
    from test_engine import config_with, flow_batch, vertical_scan

    config = {"allowed_lateness_s": 0, **config_with(
        port_scan_vertical={"window_s": 60, "hop_s": 20, "suppress_s": 0},
        port_scan_horizontal={"window_s": 300, "hop_s": 60},
        brute_force={"window_s": 30, "hop_s": 30})}
    rows = [r for i in range(120) for r in vertical_scan(
        src=f"10.0.{i % 7}.1", ports=range(1 + i % 40, 31 + i % 40), t=7.0 * i, step=0.01)]
    calls: list[int] = []
    original = _SharedBuffer.compact

    def counted(self) -> None:
        calls.append(self.rows)
        original(self)

    monkeypatch.setattr(_SharedBuffer, "compact", counted)
    outputs = []
    for size in (len(rows), 97, 13):
        engine = CorrelationEngine(config)
        alerts = []
        for start in range(0, len(rows), size):
            before = len(calls)
            alerts += engine.push(flow_batch(rows[start:start + size]))
            # one compact call per buffer and push, however many detectors closed
            assert len(calls) - before == len(engine._stores)
        alerts += engine.flush()
        store = engine._stores["flow"]
        assert store.free <= store.rows // 4
        outputs.append([(a["rule"]["id"], a["cirtsa"]["alert"]["key"], a["event"]["id"])
                        for a in alerts])
    assert outputs[0] and outputs[0] == outputs[1] == outputs[2]
