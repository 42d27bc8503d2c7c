"""Growth of the engine's shared buffer and of ArrivalMemo in place (issue #4, task V8):
grow_column keeps the rows, resizes the array itself when nothing else refers to it (no
copy into a fresh array), and copies when a view is alive (the view must stay valid)."""

from __future__ import annotations

import numpy as np
import pytest

from correlation.arrival_memo import ArrivalMemo
from correlation.engine import _SharedBuffer
from correlation.engine_kernels import grow_column
from sensors.packets import IP_DTYPE


@pytest.mark.parametrize("dtype", [np.int64, np.int16, np.uint8, IP_DTYPE])
def test_grow_column_in_place_keeps_rows(dtype) -> None:
    used = 300_000  # several MB: its own mapping, grown by realloc
    column = np.empty(used, dtype)
    column.view(np.uint8)[:] = np.arange(column.nbytes, dtype=np.int64).astype(np.uint8)
    expected = column.copy()
    columns = {"c": column}
    del column
    grow_column(columns, "c", 4 * used, used)
    grown = columns["c"]
    assert grown.shape == (4 * used,) and grown.dtype == np.dtype(dtype)
    assert grown.flags.owndata and grown.flags.writeable and grown.flags.c_contiguous
    assert np.array_equal(grown[:used], expected)
    grown[used:] = np.tile(grown[:used], 3)  # the tail is writable
    assert np.array_equal(grown[used:2 * used], expected)


def test_grow_column_resizes_the_same_object() -> None:
    column = np.arange(1000, dtype=np.int64)
    columns = {"c": column}
    ident = id(column)
    del column
    grow_column(columns, "c", 5000, 1000)
    assert id(columns["c"]) == ident  # resized itself: no copy into a new array
    assert np.array_equal(columns["c"][:1000], np.arange(1000))


def test_grow_column_copies_when_a_view_is_alive() -> None:
    column = np.arange(1000, dtype=np.int64)
    columns = {"c": column}
    view = column[10:20]  # a caller still reads this: the array must not move
    grow_column(columns, "c", 5000, 1000)
    assert columns["c"] is not column
    assert columns["c"].shape == (5000,)
    assert np.array_equal(columns["c"][:1000], np.arange(1000))
    assert column.flags.writeable  # the old array is left as it was
    assert np.array_equal(view, np.arange(10, 20))
    column[15] = -1  # the view still reads the old (live) memory
    assert view[5] == -1


def test_grow_column_copies_a_view_column() -> None:
    base = np.arange(2000, dtype=np.int64)
    columns = {"c": base[500:]}  # does not own its data: cannot be resized
    grow_column(columns, "c", 4000, 1500)
    assert columns["c"].flags.owndata
    assert np.array_equal(columns["c"][:1500], np.arange(500, 2000))


def test_shared_buffer_growth_keeps_rows_and_positions() -> None:
    rng = np.random.default_rng(5)
    store = _SharedBuffer(("timestamp", "src", "n"), users=2)
    times, srcs, ns = [], [], []
    held = [[], []]
    for batch in range(40):  # 40 x 997 rows: grows 1024 -> 4096 -> 16384 -> 65536
        n = 997
        t = np.arange(batch * n, (batch + 1) * n, dtype=np.int64)
        src = np.zeros(n, IP_DTYPE)
        src.view(np.uint8).reshape(n, 16)[:, 15] = rng.integers(0, 256, n)
        cnt = rng.integers(0, 1000, n).astype(np.int32)
        sel0 = np.flatnonzero(rng.random(n) < 0.5)
        sel1 = np.flatnonzero(rng.random(n) < 0.3)
        store.append({"timestamp": t, "src": src, "n": cnt}, [sel0, sel1])
        any_row = np.zeros(n, bool)
        any_row[sel0] = any_row[sel1] = True
        times.append(t[any_row]), srcs.append(src[any_row]), ns.append(cnt[any_row])
        for u, sel in enumerate((sel0, sel1)):
            held[u].append(t[sel])
    assert store.capacity >= store.rows > 16384
    assert np.array_equal(store.column("timestamp"), np.concatenate(times))
    assert np.array_equal(store.column("src"), np.concatenate(srcs))
    assert np.array_equal(store.column("n"), np.concatenate(ns))
    for u in range(2):
        assert np.array_equal(store.times(u), np.concatenate(held[u]))
    holders = store.holders[: store.rows]
    assert holders.min() >= 1 and holders.max() <= 2


def test_arrival_memo_growth_keeps_values() -> None:
    memo = ArrivalMemo({"v": np.int64})
    for i in range(20):
        t = np.arange(i * 1000, (i + 1) * 1000, dtype=np.int64)
        memo.add(t, v=t * 3)
    assert memo.times.shape[0] >= 20_000
    assert np.array_equal(memo.times[:memo.rows], np.arange(20_000))
    assert np.array_equal(memo.values["v"][:memo.rows], 3 * np.arange(20_000))
