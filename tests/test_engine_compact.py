"""Compaction of the engine's shared buffer (task CF): the compiled kernels of
correlation/engine_kernels.py against their numpy forms, and object columns stored as codes
into a table (the same objects read back, tables bounded)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation import engine_kernels
from correlation.engine import _SharedBuffer
from correlation.engine_kernels import (
    held_rows,
    kept_runs,
    move_kept_runs,
    renumber_positions,
)
from sensors.packets import IP_DTYPE


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), share=st.floats(0, 1), seed=st.integers(0, 10**6),
       wide=st.booleans())
def test_held_rows_and_renumbering_match_numpy(n: int, share: float, seed: int,
                                               wide: bool) -> None:
    rng = np.random.default_rng(seed)
    holders = (rng.random(n + 7) < share).astype(np.int16) * rng.integers(1, 4, n + 7)
    keep = held_rows(holders, n)  # rows past `n` (spare capacity) are ignored
    assert keep.dtype == np.int32
    assert np.array_equal(keep, np.flatnonzero(holders[:n] > 0))
    if wide:
        keep = keep.astype(np.int64)
    # a user's ascending positions among the kept rows: new position = prefix count - 1
    mine = np.sort(rng.choice(keep, int(rng.integers(0, keep.size + 1)), replace=False)
                   ).astype(np.int64)
    expected = (np.cumsum(holders[:n] > 0) - 1)[mine]
    assert np.array_equal(renumber_positions(mine, keep), expected)


def test_renumbering_refuses_a_row_that_was_not_kept() -> None:
    keep = np.array([1, 4, 5, 9], np.int32)
    assert renumber_positions(np.array([4, 9], np.int64), keep).tolist() == [1, 3]
    with pytest.raises(ValueError):
        renumber_positions(np.array([4, 6], np.int64), keep)
    with pytest.raises(ValueError):
        renumber_positions(np.array([10], np.int64), keep)


@pytest.mark.parametrize("dtype", ["i8", "u2", "u1", "?", "i4", IP_DTYPE, "V3"])
@pytest.mark.parametrize("share", [0.0, 0.3, 0.97, 1.0])
def test_move_kept_runs_equals_boolean_mask(dtype, share: float) -> None:
    rng = np.random.default_rng(7)
    dt = np.dtype(dtype)
    column = rng.integers(0, 256, 1500 * dt.itemsize, dtype=np.uint8).view(dt)
    used = rng.random(column.shape[0]) < share
    used[200:700] = share > 0  # a long run among short ones
    keep = np.flatnonzero(used).astype(np.int32)
    runs = kept_runs(keep, column.shape[0])
    assert runs[:, 2].sum() == keep.size
    assert np.array_equal(np.concatenate([np.arange(s, s + n) for s, _, n in runs] or [[]]),
                          keep)
    expected, tail = column[used].copy(), column[keep.size:].copy()
    move_kept_runs(column, runs)
    assert column[: keep.size].tobytes() == expected.tobytes()
    assert column[keep.size:].tobytes() == tail.tobytes()


def test_kept_runs_reject_bad_indices() -> None:
    with pytest.raises(IndexError):
        kept_runs(np.array([3, 1], np.int32), 10)
    with pytest.raises(IndexError):
        kept_runs(np.array([0, 10], np.int32), 10)
    with pytest.raises(IndexError):  # a run past the column's rows
        move_kept_runs(np.arange(4, dtype=np.int64), kept_runs(np.array([2, 3, 4]), 5))


def test_move_kept_runs_refuses_objects() -> None:
    with pytest.raises(TypeError):
        move_kept_runs(np.array(["a"], object), kept_runs(np.array([0]), 1))


def _names(values: list[str]) -> np.ndarray:
    out = np.empty(len(values), object)
    out[:] = values
    return out


def test_object_columns_read_back_the_same_objects_after_compaction() -> None:
    """Few distinct objects per batch (new str objects of equal value in every batch,
    some batches of one object), and a column of a distinct object per row: every user
    reads the very objects appended, in order, before and after compactions."""
    rng = np.random.default_rng(2)
    store = _SharedBuffer(("timestamp", "observer_name", "qname"), 2)
    private: list[list[tuple[int, object, object]]] = [[], []]
    clock = 0
    for batch in range(40):
        n = int(rng.integers(1, 300))
        sensors = ["".join(["sensor-", str(k)]) for k in range(3)]  # fresh objects
        pick = rng.integers(0, 1 if batch % 3 == 0 else 3, n)
        cols = {"timestamp": np.arange(clock, clock + n, dtype=np.int64),
                "observer_name": _names([sensors[k] for k in pick]),
                "qname": _names([f"q{batch}-{i}.example" for i in range(n)])}
        clock += n
        selected = [np.flatnonzero(rng.random(n) < p) for p in (0.9, 0.2)]
        store.append(cols, selected)
        for u, idx in enumerate(selected):
            private[u] += [(int(cols["timestamp"][i]), cols["observer_name"][i],
                            cols["qname"][i]) for i in idx]
        if batch % 4 == 3:
            for u in (0, 1):
                store.drop_oldest(u, len(private[u]) // 2)
                private[u] = private[u][len(private[u]) // 2:]
            store.compact()
        for u in (0, 1):
            if not private[u]:
                continue
            view = store.view(u, store.names)
            assert view["timestamp"].tolist() == [r[0] for r in private[u]]
            for c, k in (("observer_name", 1), ("qname", 2)):
                got = view[c].tolist()
                assert len(got) == len(private[u])
                assert all(a is r[k] for a, r in zip(got, private[u], strict=True))
            rows = np.arange(len(private[u]))[::-3]  # descending: take() in any order
            assert all(a is private[u][i][1]
                       for a, i in zip(view.take("observer_name", rows).tolist(),
                                       rows.tolist(), strict=True))
    # tables stay bounded by the live rows (a code per row for the distinct names)
    assert store.object_count["qname"] <= 2 * store.rows + 1024
    # per-row names get no pointer entries (but a batch of one row: one object)
    assert len(store._code_of["qname"]) <= 40
    assert store.object_count["observer_name"] <= 3 * 40


def test_object_table_forgets_dropped_objects() -> None:
    store = _SharedBuffer(("timestamp", "name"), 1)
    for batch in range(6):
        n = 2000
        store.append({"timestamp": np.arange(n, dtype=np.int64) + batch * n,
                      "name": _names([f"n{batch}-{i}" for i in range(n)])}, [np.arange(n)])
    store.drop_oldest(0, 5 * 2000 - 10)
    store.compact()
    assert store.rows == 2010
    assert store.object_count["name"] == 2010  # the dropped rows' objects went
    assert store.view(0, ("name",))["name"].tolist() == (
        [f"n4-{i}" for i in range(1990, 2000)] + [f"n5-{i}" for i in range(2000)])


@pytest.mark.parametrize("dtype", ["i8", "u2", "u1", "i4", IP_DTYPE, "V3"])
@pytest.mark.parametrize("long_run", [50, 1 << 15])
def test_move_kept_runs_moves_long_runs_by_memmove(monkeypatch, dtype, long_run: int) -> None:
    # long runs (numpy slice moves) mixed with short ones (the kernel), in run order: a
    # dead prefix, scattered rows, a long run, scattered rows, a long tail run
    monkeypatch.setattr(engine_kernels, "_LONG_RUN", long_run)
    rng = np.random.default_rng(3)
    dt = np.dtype(dtype)
    n = 3 * (1 << 15) + 5000
    column = rng.integers(0, 256, n * dt.itemsize, dtype=np.uint8).view(dt)
    used = rng.random(n) < 0.4
    used[:700] = False
    used[2000:2000 + (1 << 15)] = True
    used[n - (1 << 15) - 100:] = True
    keep = np.flatnonzero(used).astype(np.int32)
    runs = kept_runs(keep, n)
    assert (runs[:, 2] >= long_run).sum() >= 2 and (runs[:, 2] < long_run).sum() > 100
    expected, tail = column[used].copy(), column[keep.size:].copy()
    move_kept_runs(column, runs)
    assert column[: keep.size].tobytes() == expected.tobytes()
    assert column[keep.size:].tobytes() == tail.tobytes()


def test_move_kept_runs_checks_long_runs(monkeypatch) -> None:
    monkeypatch.setattr(engine_kernels, "_LONG_RUN", 2)
    column = np.arange(10, dtype=np.int64)
    with pytest.raises(IndexError):  # past the column's rows
        move_kept_runs(column, np.array([[6, 0, 5]], np.int64))
    with pytest.raises(IndexError):  # moving up
        move_kept_runs(column, np.array([[2, 4, 3]], np.int64))
    assert column.tolist() == list(range(10))
