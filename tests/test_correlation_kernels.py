"""Compiled grouping kernels (correlation/kernels.py) against plain numpy references.

Random and adversarial inputs (few distinct keys, all distinct, extreme values, keys that
collide in the hash's top bits) must give exactly what np.unique gives; the engine's
address interning must give every detector the codes factorize_ip gives on its own rows,
also after compaction renumbered the address table.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from test_engine import _address_column
except ImportError:  # tests/ imported as a package
    from tests.test_engine import _address_column

from correlation.detector import (
    _dense,
    combine_codes,
    distinct_per_group,
    factorize_ip,
    ip_codes,
    ip_pair_codes,
)
from correlation.engine import _SharedBuffer
from correlation.kernels import AddressTable, factorize_u64, factorize_u128

_EXTREMES = np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1, 2**32, 2**52], dtype=np.uint64)


def _values(seed: int, n: int, distinct: int, shape: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if shape == "extremes":
        return _EXTREMES[rng.integers(0, _EXTREMES.size, n)]
    if shape == "top-bit-collisions":  # differ only in high bits: same low bits everywhere
        return (rng.integers(0, distinct, n).astype(np.uint64) << np.uint64(40))
    pool = rng.integers(0, 2**63, distinct, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    return pool[rng.integers(0, distinct, n)]


def _check_first_seen(ids: np.ndarray, first: np.ndarray, keys: np.ndarray) -> None:
    """ids/first are a first-seen factorization of `keys` (rows of a 2-D key array)."""
    n = keys.shape[0]
    assert ids.shape == (n,) and ids.dtype == np.int64
    assert np.array_equal(keys[first][ids], keys)  # every row maps to its own key
    uniq, first_idx = np.unique(keys, axis=0, return_index=True)
    assert first.size == uniq.shape[0]
    assert np.array_equal(first, np.sort(first_idx))  # first occurrences, in row order
    if n:
        assert np.array_equal(np.unique(ids), np.arange(first.size))


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 5000), distinct=st.integers(1, 6000), seed=st.integers(0, 10**6),
       shape=st.sampled_from(["random", "extremes", "top-bit-collisions"]))
def test_factorize_u64_matches_unique(n: int, distinct: int, seed: int, shape: str) -> None:
    values = _values(seed, n, distinct, shape)
    ids, first = factorize_u64(values)
    _check_first_seen(ids, first, values.reshape(-1, 1))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 4000), distinct=st.integers(1, 500), seed=st.integers(0, 10**6),
       limit=st.integers(0, 600))
def test_factorize_gives_up_exactly_beyond_the_limit(n: int, distinct: int, seed: int,
                                                      limit: int) -> None:
    values = _values(seed, n, distinct, "random")
    found = factorize_u64(values, limit=limit)
    n_distinct = np.unique(values).size
    assert (found is None) == (n_distinct > limit)
    if found is not None:
        _check_first_seen(*found, values.reshape(-1, 1))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 5000), distinct=st.integers(1, 3000), seed=st.integers(0, 10**6),
       shape=st.sampled_from(["random", "extremes", "top-bit-collisions"]))
def test_factorize_u128_matches_unique(n: int, distinct: int, seed: int, shape: str) -> None:
    hi = _values(seed, n, max(1, distinct // 7), shape)
    lo = _values(seed + 1, n, distinct, shape)
    ids, first = factorize_u128(hi, lo)
    _check_first_seen(ids, first, np.stack([hi, lo], axis=1))


def _reference_codes(column: np.ndarray) -> np.ndarray:
    halves = column.view(np.uint64).reshape(column.shape[0], 2)
    return np.unique(halves, axis=0, return_inverse=True)[1].reshape(-1)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1025, 20000), v6_share=st.sampled_from([0.0, 0.2, 1.0]),
       distinct=st.sampled_from([5, 800, 2**32 - 1]), seed=st.integers(0, 99))
def test_factorize_ip_hash_and_sort_paths_follow_address_order(n: int, v6_share: float,
                                                              distinct: int,
                                                              seed: int) -> None:
    # few distinct addresses take the hash path, mostly distinct ones the sort fallback
    column = _address_column(np.random.default_rng(seed), n, v6_share, distinct)
    codes, uniques = factorize_ip(column)
    assert np.array_equal(codes, _reference_codes(column))
    assert np.array_equal(uniques[codes], column)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1025, 20000), distinct=st.sampled_from([3, 300, 10**5]),
       span=st.sampled_from([2**20, 2**40, 2**62]), seed=st.integers(0, 99))
def test_dense_and_distinct_per_group_match_unique(n: int, distinct: int, span: int,
                                                   seed: int) -> None:
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, span, distinct)
    values = pool[rng.integers(0, distinct, n)]
    codes, n_codes = _dense(values)
    expected = np.unique(values, return_inverse=True)[1]
    assert n_codes == int(expected.max()) + 1 and np.array_equal(codes, expected)
    group = rng.integers(0, 50, n)
    target = rng.integers(0, distinct, n)
    pairs = np.unique(np.stack([group, target], axis=1), axis=0)
    assert np.array_equal(distinct_per_group(group, 60, target),
                          np.bincount(pairs[:, 0], minlength=60))


@settings(max_examples=30, deadline=None)
@given(batches=st.lists(st.integers(0, 3000), min_size=1, max_size=6),
       v6_share=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 99))
def test_address_table_ids_are_stable_and_ranks_follow_address_order(batches: list[int],
                                                                    v6_share: float,
                                                                    seed: int) -> None:
    rng = np.random.default_rng(seed)
    table = AddressTable()
    seen, seen_ids = [], []
    for n in batches:
        column = _address_column(rng, n, v6_share, 400)
        ids = table.intern(column)
        seen.append(column)
        seen_ids.append(ids)
        everything = np.concatenate(seen)
        # the ids given earlier still name the same addresses: re-interning gives them back
        assert np.array_equal(table.intern(everything), np.concatenate(seen_ids))
        assert np.array_equal(_dense(table.ranks()[np.concatenate(seen_ids)])[0],
                              _reference_codes(everything))
    # rebuild keeps the live ids' addresses and renumbers them densely
    everything = np.concatenate(seen)
    ids = np.concatenate(seen_ids)
    live = np.zeros(table.size, bool)
    keep = rng.random(everything.shape[0]) < 0.5
    live[ids[keep]] = True
    remap = table.rebuild(live)
    assert table.size == int(live.sum())
    assert np.array_equal(table.intern(everything[keep]), remap[ids[keep]])


def test_engine_codes_survive_compaction_and_address_table_renumbering() -> None:
    # > 65536 distinct addresses then most rows released: compaction renumbers the table
    rng = np.random.default_rng(5)
    n = 150_000
    cols = {"timestamp": np.arange(n, dtype=np.int64),
            "src_ip": _address_column(rng, n, 0.1, 2**32 - 1),
            "dst_ip": _address_column(rng, n, 0.0, 50)}
    store = _SharedBuffer(tuple(cols), 1)
    store.append(cols, [np.arange(n)])
    size_before = store.addresses.size
    store.prune(0, n - 20_000)  # release all but the last 20,000 rows
    store.compact()
    assert store.rows == 20_000 and store.addresses.size < size_before
    more = {"timestamp": np.arange(n, n + 3000, dtype=np.int64),
            "src_ip": _address_column(rng, 3000, 0.1, 2**32 - 1),
            "dst_ip": _address_column(rng, 3000, 0.0, 50)}
    store.append(more, [np.arange(0, 3000, 2)])
    view = store.view(0, ("timestamp", "src_ip", "dst_ip"))
    plain = {c: np.concatenate([cols[c][n - 20_000:], more[c][::2]]) for c in cols}
    idx = np.flatnonzero(rng.random(plain["src_ip"].shape[0]) < 0.6)
    for name in ("src_ip", "dst_ip"):
        assert np.array_equal(ip_codes(view, name, idx), factorize_ip(plain[name][idx])[0])
    expected = combine_codes(factorize_ip(plain["src_ip"][idx])[0],
                             factorize_ip(plain["dst_ip"][idx])[0])
    pair, n_pairs = ip_pair_codes(view, idx)
    assert n_pairs == expected[1] and np.array_equal(pair, expected[0])
