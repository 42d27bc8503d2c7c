"""The engine's compiled compaction (engine_kernels.keep_rows) and the compiled paths of the shared
grouping helpers (detector._dense / combine_codes via kernels.min_max, dense_in_span,
pair_values): same results as the numpy forms they replace, on every dtype and range."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation.detector import _dense, combine_codes, distinct_per_group, unique_int
from correlation.engine import _SharedBuffer
from correlation.engine_kernels import keep_rows
from correlation.kernels import (
    AddressTable,
    dense_in_span,
    distinct_counts_in_span,
    distinct_in_span,
    hold_rows,
    merge_ordered_ids,
    min_max,
    pair_values,
)
from sensors.packets import IP_DTYPE


def _reference_dense(values: np.ndarray) -> tuple[np.ndarray, int]:
    uniques, inverse = np.unique(values, return_inverse=True)
    return inverse.astype(np.int64).ravel(), int(uniques.shape[0])


def _reference_combine(*codes: np.ndarray) -> tuple[np.ndarray, int]:
    if codes[0].size == 0:
        return np.empty(0, np.int64), 0
    rows = np.stack([c.astype(np.int64) for c in codes], axis=1)
    uniques, inverse = np.unique(rows, axis=0, return_inverse=True)
    return inverse.astype(np.int64).ravel(), int(uniques.shape[0])


@pytest.mark.parametrize("dtype", ["i8", "u2", "u1", "?", "u8", "f4", IP_DTYPE, "V3", "V24"])
def test_keep_rows_equals_boolean_mask_in_place(dtype) -> None:
    rng = np.random.default_rng(3)
    dt = np.dtype(dtype)
    column = rng.integers(0, 256, 2000 * dt.itemsize, dtype=np.uint8).view(dt)
    used = rng.random(column.shape[0]) < 0.6
    keep = np.flatnonzero(used)
    expected, tail = column[used].copy(), column[keep.size:].copy()
    keep_rows(column, keep)
    assert column[: keep.size].tobytes() == expected.tobytes()
    assert column[keep.size:].tobytes() == tail.tobytes()  # rows past the kept ones untouched


def test_keep_rows_rejects_descending_or_out_of_range_and_objects() -> None:
    column = np.arange(10, dtype=np.int64)
    with pytest.raises(IndexError):
        keep_rows(column, np.array([3, 1]))  # would read a row it already overwrote
    with pytest.raises(IndexError):
        keep_rows(column, np.array([0, 10]))
    with pytest.raises(TypeError):
        keep_rows(np.array(["a"], object), np.array([0]))


def test_compaction_keeps_every_users_rows_and_object_columns() -> None:
    # rows no user holds go, object codes move with them (the same objects read back)
    rng = np.random.default_rng(11)
    store = _SharedBuffer(("timestamp", "src_ip", "observer_name", "n"), 2)
    for batch in range(6):
        n = 500
        cols = {"timestamp": np.arange(batch * n, (batch + 1) * n, dtype=np.int64),
                "src_ip": rng.integers(0, 256, 16 * n, dtype=np.uint8).view(IP_DTYPE),
                "observer_name": np.array([f"s{batch}-{i}" for i in range(n)], object),
                "n": rng.integers(0, 1000, n).astype(np.uint16)}
        store.append(cols, [np.flatnonzero(rng.random(n) < 0.5),
                            np.flatnonzero(rng.random(n) < 0.3)])
    before = [{c: store.view(u, store.names)[c].copy() for c in store.names} for u in (0, 1)]
    store.prune(0, 2000)
    store.prune(1, 2400)
    expect = []
    for u, horizon in ((0, 2000), (1, 2400)):
        keep = before[u]["timestamp"] >= horizon
        expect.append({c: v[keep] for c, v in before[u].items()})
    assert store.free > store.rows // 4
    store.compact()
    assert store.free == 0 and store.rows == int(np.count_nonzero(store.holders))
    for u in (0, 1):
        view = store.view(u, store.names)
        for c in store.names:
            assert view[c].tobytes() == expect[u][c].tobytes() if c != "observer_name" \
                else view[c].tolist() == expect[u][c].tolist()
    # distinct objects per row: the table lost the dropped rows' objects (bounded)
    assert store.object_count["observer_name"] <= 2 * store.rows + 1024


def test_min_max_and_dense_in_span() -> None:
    values = np.array([7, -3, 7, 12, -3, 5], np.int64)
    assert min_max(values) == (-3, 12)
    codes, first = dense_in_span(values, -3, 16)
    assert codes.tolist() == [2, 0, 2, 3, 0, 1]
    assert first.tolist() == [1, 5, 0, 3]  # first row of each distinct value
    with pytest.raises(IndexError):
        dense_in_span(values, 0, 16)  # -3 lies outside the span


def test_pair_values() -> None:
    a = np.array([0, 2, 1], np.int64)
    b = np.array([3, 0, 4], np.int64)
    packed, low, high = pair_values(a, b, 5)
    assert packed.tolist() == [3, 10, 9] and (low, high) == (3, 10)


@pytest.mark.parametrize("n", [1025, 5000])
@pytest.mark.parametrize("span", [1, 50, 3000, 10**7, 2**62])
def test_dense_compiled_paths_equal_np_unique(n: int, span: int) -> None:
    rng = np.random.default_rng(n + span % 1000)
    for offset in (0, -(2**61), 10**12):
        values = rng.integers(0, span, n, dtype=np.int64) + offset
        codes, count = _dense(values)
        expect, expect_count = _reference_dense(values)
        assert count == expect_count
        assert np.array_equal(codes, expect)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3000), st.integers(1, 5000), st.integers(1, 70000),
       st.sampled_from([np.int64, np.uint16, np.int32, np.uint8]), st.integers(0, 2**31))
def test_combine_codes_equals_unique_rows(n: int, span_a: int, span_b: int, dtype,
                                          seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, span_a, n, dtype=np.int64)
    b = rng.integers(0, min(span_b, np.iinfo(dtype).max + 1), n).astype(dtype)
    for codes in ((a, b), (a, b, a % 7)):
        ids, count = combine_codes(*codes)
        expect, expect_count = _reference_combine(*codes)
        assert count == expect_count
        assert np.array_equal(ids, expect)


def _full_ranks(table) -> np.ndarray:
    order = np.lexsort((table.lo, table.hi))
    ranks = np.empty(table.size, np.int64)
    ranks[order] = np.arange(table.size)
    return ranks


@pytest.mark.parametrize("ipv4_only", [True, False])
def test_address_ranks_merged_incrementally_equal_a_full_sort(ipv4_only: bool) -> None:
    # new addresses batch after batch: ranks() merges the new ids into the kept order
    rng = np.random.default_rng(21)
    table = AddressTable()
    for batch in range(12):
        n = int(rng.integers(0, 3000))
        raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
        if ipv4_only or batch % 3:
            raw[:, :10], raw[:, 10:12] = 0, 0xFF
            raw[:, 12] = rng.integers(0, 4, n)  # some repeats across batches
        table.intern(np.ascontiguousarray(raw).view(IP_DTYPE).ravel())
        assert np.array_equal(table.ranks(), _full_ranks(table))
    live = rng.random(table.size) < 0.5
    table.rebuild(live)  # renumbered: the kept order starts over
    assert np.array_equal(table.ranks(), _full_ranks(table))
    table.intern(rng.integers(0, 256, 16 * 500, dtype=np.uint8).view(IP_DTYPE))
    assert np.array_equal(table.ranks(), _full_ranks(table))


def test_merge_ordered_ids() -> None:
    hi = np.array([1, 0, 1, 0, 2], np.uint64)
    lo = np.array([5, 9, 2, 1, 0], np.uint64)
    merged = merge_ordered_ids(hi, lo, np.array([3, 2]), np.array([1, 0, 4]))
    assert merged.tolist() == [3, 1, 2, 0, 4]
    with pytest.raises(IndexError):
        merge_ordered_ids(hi, lo, np.array([7]), np.array([0]))


def _reference_distinct(group: np.ndarray, n_groups: int, values: np.ndarray) -> np.ndarray:
    pairs = np.unique(np.stack([group.astype(np.int64), values.astype(np.int64)], axis=1),
                      axis=0) if group.size else np.zeros((0, 2), np.int64)
    return np.bincount(pairs[:, 0], minlength=n_groups)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5000), st.integers(1, 400), st.integers(1, 300),
       st.sampled_from([np.int64, np.uint16, np.uint8, np.int32]), st.integers(0, 2**31))
def test_distinct_per_group_equals_unique_pairs(n: int, n_groups: int, span: int, dtype,
                                                seed: int) -> None:
    # spans small enough for the presence table and too large for it, both paths
    rng = np.random.default_rng(seed)
    group = rng.integers(0, n_groups, n, dtype=np.int64)
    values = rng.integers(0, min(span, np.iinfo(dtype).max + 1), n).astype(dtype)
    got = distinct_per_group(group, n_groups, values)
    assert np.array_equal(got, _reference_distinct(group, n_groups, values))


def test_distinct_counts_table_gives_up_outside_its_ranges() -> None:
    group = np.zeros(3000, np.int64)
    group[-1] = 9  # beyond n_groups: the general path's longer bincount, as before
    values = np.arange(3000, dtype=np.int64) % 5
    assert distinct_counts_in_span(group, values, 4, 5).size == 0
    assert np.array_equal(distinct_per_group(group, 4, values),
                          np.bincount(np.array([0] * 5 + [9]), minlength=4))
    counts = distinct_counts_in_span(group[:-1], values[:-1], 4, 5)
    assert counts.tolist() == [5, 0, 0, 0]


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.uint8, np.uint32,
                                   np.uint64, np.int16])
@pytest.mark.parametrize("span", [1, 300, 10**6, 2**40])
def test_unique_int_equals_np_unique(dtype, span: int) -> None:
    rng = np.random.default_rng(span % 997)
    info = np.iinfo(dtype)
    for n in (0, 10, 1025, 20000):
        low = int(rng.integers(max(info.min, -(2**40)), 1 + min(info.max, 2**40) - min(
            span, info.max - info.min)))
        values = (low + rng.integers(0, min(span, info.max - low + 1), n)).astype(dtype)
        got = unique_int(values)
        expect = np.unique(values)
        assert got.dtype == expect.dtype and np.array_equal(got, expect)
        strided = np.repeat(values, 2)[::2]  # a non-contiguous view
        assert np.array_equal(unique_int(strided), expect)


def test_distinct_in_span_rejects_values_outside() -> None:
    assert distinct_in_span(np.array([5, 3, 5], np.int64), 3, 3).tolist() == [3, 5]
    with pytest.raises(IndexError):
        distinct_in_span(np.array([5, 2], np.int64), 3, 3)


def test_hold_rows_counts_holders_and_finds_the_earliest_time() -> None:
    holders = np.zeros(6, np.int16)
    times = np.array([50, 10, 40, 30, 20, 60], np.int64)
    assert hold_rows(holders, np.array([0, 2, 3]), times) == 30
    assert hold_rows(holders, np.array([2, 4]), times) == 20
    assert holders.tolist() == [1, 0, 2, 1, 1, 0]
    with pytest.raises(IndexError):
        hold_rows(holders, np.array([6]), times)


def test_append_tracks_each_users_earliest_time() -> None:
    store = _SharedBuffer(("timestamp", "n"), 3)
    cols = {"timestamp": np.array([30, 10, 20, 5], np.int64), "n": np.arange(4, dtype=np.int64)}
    store.append(cols, [np.array([0, 2]), np.array([], np.int64), np.array([1, 2, 3])])
    assert store.first_time == [20, None, 5] and store.held == [2, 0, 3]
    assert store.holders[: store.rows].tolist() == [1, 1, 2, 1]
    store.append({"timestamp": np.array([1, 40], np.int64), "n": np.array([7, 8])},
                 [np.array([1]), np.array([0]), np.array([], np.int64)])
    assert store.first_time == [20, 1, 5] and store.min_time(1) == 1
