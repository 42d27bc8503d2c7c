"""Compiled grouping kernels (correlation/kernels.py) against plain numpy references.

Random and adversarial inputs (few distinct keys, all distinct, extreme values, keys that
collide in the hash's top bits) must give exactly what np.unique gives; the engine's
address interning must give every detector the codes factorize_ip gives on its own rows,
also after compaction renumbered the address table. The engine's buffer kernels (window
copies, stale-row release, ranked address codes, CIDR tests) must give what the numpy
code they replaced gives, and refuse positions out of range; the shared row buffer must
show every user exactly the rows a private list of its own would hold.
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from test_engine import _address_column
except ImportError:  # tests/ imported as a package
    from tests.test_engine import _address_column

from correlation.detector import (
    WindowRange,
    WindowSpec,
    _dense,
    combine_codes,
    distinct_per_group,
    factorize_ip,
    ip_codes,
    ip_pair_codes,
)
from correlation.engine import _SharedBuffer
from correlation.kernels import (
    AddressTable,
    count_stale,
    factorize_u64,
    factorize_u128,
    ranked_codes,
    release_stale,
)
from correlation.network_common import Networks, batch_cached, batch_memo, in_ports
from sensors.packets import IP_DTYPE, ip_to_bytes16

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


# --- engine buffer kernels ---------------------------------------------------------------------


def _assign_reference(windows: WindowRange, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WindowRange.assign as it was in numpy (one masked pass per window offset)."""
    spec = windows.spec
    last_k = spec.last_index(times)
    rows_out, k_out = [], []
    for j in range(spec.copies):
        k = last_k - j
        ok = (k >= windows.first) & (k <= windows.last) & (spec.end(k) > times)
        rows = np.flatnonzero(ok)
        rows_out.append(rows)
        k_out.append(k[rows])
    return np.concatenate(rows_out), np.concatenate(k_out).astype(np.int64)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 3000), hop=st.integers(1, 50), copies=st.integers(1, 13),
       extra=st.integers(0, 49), first=st.integers(-5, 60), span=st.integers(-2, 40),
       t0=st.sampled_from([0, -1000, 1_700_000_000_000_000_000]), seed=st.integers(0, 10**6))
def test_window_copies_match_the_numpy_assign(n: int, hop: int, copies: int, extra: int,
                                              first: int, span: int, t0: int,
                                              seed: int) -> None:
    size = max(hop, hop * copies - extra % hop)  # hop <= size, any remainder
    windows = WindowRange(WindowSpec(size, hop), first + t0 // hop, first + t0 // hop + span)
    times = t0 + np.random.default_rng(seed).integers(-100, 3000, n).astype(np.int64)
    rows, k = windows.assign(times)
    ref_rows, ref_k = _assign_reference(windows, times)
    assert rows.dtype == np.int64 and k.dtype == np.int64
    assert np.array_equal(rows, ref_rows) and np.array_equal(k, ref_k)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 3000), held=st.floats(0.0, 1.0), seed=st.integers(0, 10**6),
       horizon=st.integers(-10, 1100))
def test_stale_release_matches_numpy(n: int, held: float, seed: int, horizon: int) -> None:
    rng = np.random.default_rng(seed)
    times = rng.integers(0, 1000, n).astype(np.int64)
    holders = rng.integers(1, 4, n).astype(np.int16)
    positions = np.flatnonzero(rng.random(n) < held)
    stale = times[positions] < horizon
    assert count_stale(positions, times, horizon) == int(stale.sum())
    expect_holders = holders.copy()
    expect_holders[positions[stale]] -= 1
    kept, freed = release_stale(positions, times, horizon, holders)
    assert np.array_equal(kept, positions[~stale])
    assert np.array_equal(holders, expect_holders)
    assert freed == int(np.count_nonzero(expect_holders[positions[stale]] == 0))


def test_buffer_kernels_refuse_positions_out_of_range() -> None:
    times = np.arange(10, dtype=np.int64)
    holders = np.ones(10, np.int16)
    ranks = np.arange(4, dtype=np.int64)
    ids = np.zeros(10, np.int64)
    for bad in (np.array([3, 10]), np.array([-1])):
        with pytest.raises(IndexError):
            count_stale(bad, times, 5)
        with pytest.raises(IndexError):
            release_stale(bad, times, 5, holders)
        with pytest.raises(IndexError):
            ranked_codes(ranks, ids, ids, bad, 4)
    with pytest.raises(IndexError):  # an address id beyond the rank table
        ranked_codes(ranks, np.full(10, 4, np.int64), ids, np.array([0]), 0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 2000), m=st.integers(1, 300), seed=st.integers(0, 10**6),
       pair=st.booleans())
def test_ranked_codes_match_gathers(n: int, m: int, seed: int, pair: bool) -> None:
    rng = np.random.default_rng(seed)
    ranks = rng.permutation(m).astype(np.int64)
    a = rng.integers(0, m, n).astype(np.int64)
    b = rng.integers(0, m, n).astype(np.int64)
    positions = np.flatnonzero(rng.random(n) < 0.5)
    expected = ranks[a[positions]] * m + ranks[b[positions]] if pair else ranks[a[positions]]
    assert np.array_equal(ranked_codes(ranks, a, b, positions, m if pair else 0), expected)


def _random_address(rng: np.random.Generator) -> str:
    if rng.random() < 0.3:
        return str(ipaddress.IPv6Address(int(rng.integers(0, 2**63)) << 64
                                         | int(rng.integers(0, 2**63))))
    if rng.random() < 0.5:  # near the blocks below
        return f"10.{rng.integers(0, 3)}.{rng.integers(0, 256)}.{rng.integers(0, 256)}"
    return str(ipaddress.IPv4Address(int(rng.integers(0, 2**32))))


def _as_v6(text: str) -> ipaddress.IPv6Address:
    address = ipaddress.ip_address(text)
    return ipaddress.IPv6Address(f"::ffff:{address}") if address.version == 4 else address


def _as_v6_network(text: str) -> ipaddress.IPv6Network:
    net = ipaddress.ip_network(text)
    if net.version == 4:
        return ipaddress.IPv6Network(f"::ffff:{net.network_address}/{96 + net.prefixlen}")
    return net


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 6000), blocks=st.integers(0, 6), seed=st.integers(0, 10**6))
def test_networks_contains_matches_ipaddress(n: int, blocks: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cidrs = []
    for _ in range(blocks):
        base = ipaddress.ip_address(_random_address(rng))
        bits = int(rng.integers(0, base.max_prefixlen + 1))
        cidrs.append(str(ipaddress.ip_network(f"{base}/{bits}", strict=False)))
    nets = Networks.of(cidrs)
    texts = [_random_address(rng) for _ in range(n)]
    column = np.frombuffer(b"".join(ip_to_bytes16(t) for t in texts), IP_DTYPE)
    # the address columns' model: IPv4 is IPv4-mapped IPv6 (so ::/0 holds IPv4 too)
    parsed = [_as_v6_network(c) for c in cidrs]
    expected = np.array([any(_as_v6(t) in net for net in parsed) for t in texts],
                        bool).reshape(-1)
    assert np.array_equal(nets.contains(column), expected)
    with batch_memo():  # as the engine selects: a repeat is the remembered mask
        got = nets.contains(column)
        assert np.array_equal(got, expected)
        got[:] = ~got  # callers combine masks in place: a repeat test must not see that
        assert np.array_equal(nets.contains(column), expected)
        assert np.array_equal(nets.contains(column.copy()), expected)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 5000), ports=st.lists(st.integers(-3, 70000), max_size=20),
       seed=st.integers(0, 10**6))
def test_in_ports_matches_isin(n: int, ports: list[int], seed: int) -> None:
    column = np.random.default_rng(seed).integers(0, 65536, n).astype(np.uint16)
    column[: min(n, len(ports))] = np.array(ports, np.int64)[: min(n, len(ports))] % 65536
    expected = np.isin(column.astype(np.int64), np.array(ports, np.int64))
    assert np.array_equal(in_ports(column, ports), expected)
    with batch_memo():
        first = in_ports(column, ports)
        first[:] = True  # in place: the remembered mask must not change
        assert np.array_equal(in_ports(column, ports), expected)
        other = [p + 1 for p in ports]  # another set on the same column: its own mask
        assert np.array_equal(in_ports(column, other),
                              np.isin(column.astype(np.int64), np.array(other, np.int64)))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), users=st.integers(1, 4), steps=st.integers(1, 25))
def test_shared_buffer_shows_each_user_its_own_rows(seed: int, users: int,
                                                    steps: int) -> None:
    """Random appends, prunes, caps and compactions: every user's view equals a private
    list of the rows it selected minus the ones released, in arrival order."""
    rng = np.random.default_rng(seed)
    names = ("timestamp", "src_ip", "value", "name")
    store = _SharedBuffer(names, users)
    private: list[list[tuple[int, bytes, int, str]]] = [[] for _ in range(users)]
    clock = 0
    for _ in range(steps):
        action = rng.random()
        if action < 0.6:
            n = int(rng.integers(0, 400))
            cols = {"timestamp": clock + rng.integers(0, 50, n).astype(np.int64),
                    "src_ip": _address_column(rng, n, 0.2, 40),
                    "value": rng.integers(0, 10**6, n).astype(np.int64),
                    "name": np.array([f"s{v}" for v in rng.integers(0, 9, n)] + [None],
                                     object)[:n]}  # (None: an object array even when n=0)
            clock += 40
            selected = [np.flatnonzero(rng.random(n) < p) for p in rng.random(users)]
            store.append(cols, selected)
            for u, idx in enumerate(selected):
                private[u] += [(int(cols["timestamp"][i]), cols["src_ip"][i].tobytes(),
                                int(cols["value"][i]), cols["name"][i]) for i in idx]
        elif action < 0.85:
            u = int(rng.integers(0, users))
            horizon = int(rng.integers(0, clock + 1))
            stale = sum(1 for row in private[u] if row[0] < horizon)
            store.prune(u, horizon)
            if stale > len(private[u]) // 4:  # the engine's release rule
                private[u] = [row for row in private[u] if row[0] >= horizon]
        else:
            u = int(rng.integers(0, users))
            count = int(rng.integers(0, len(private[u]) + 1))
            if count:
                store.drop_oldest(u, count)
                private[u] = private[u][count:]
        store.compact()
        assert store.rows - store.free == len({r for r in range(store.rows)
                                               if store.holders[r] > 0})
        for u in range(users):
            assert store.held[u] == len(private[u])
            if not private[u]:  # the engine views only users holding rows
                continue
            view = store.view(u, names)
            got = list(zip(view["timestamp"].tolist(),
                           [a.tobytes() for a in view["src_ip"]],
                           view["value"].tolist(), view["name"].tolist(), strict=True))
            assert got == private[u]
            assert store.min_time(u) == min(row[0] for row in private[u])
            assert store.max_time(u) == max(row[0] for row in private[u])
            codes = view.address_codes(("src_ip",))
            assert np.array_equal(_dense(codes)[0], factorize_ip(view["src_ip"])[0])


def test_batch_cached_computes_once_per_column_inside_batch_memo_only() -> None:
    column = np.arange(10)
    calls = []

    def classify() -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        return column % 3, column > 4

    first = batch_cached("classify", column, classify)  # outside: no memo
    batch_cached("classify", column, classify)
    assert len(calls) == 2
    with batch_memo():
        a = batch_cached("classify", column, classify)
        a[0][:] = -1  # a caller changing its copy in place
        b = batch_cached("classify", column, classify)
        batch_cached("classify", column.copy(), classify)  # another column: computed
        batch_cached("other", column, classify)  # another `what`: computed
    assert len(calls) == 5
    assert all(np.array_equal(x, y) for x, y in zip(b, first, strict=True))
    batch_cached("classify", column, classify)  # memo forgotten on exit
    assert len(calls) == 6


def test_drop_oldest_keeps_positions_in_place_and_handed_out_views_intact() -> None:
    """At the row cap drop_oldest runs on every push: it must not copy the held positions
    (that made each push cost the whole buffer), and positions handed out before must not
    change when later rows are appended into the spare capacity."""
    store = _SharedBuffer(("timestamp",), 1)

    def push(first: int, n: int) -> None:
        store.append({"timestamp": np.arange(first, first + n, dtype=np.int64)},
                     [np.arange(n)])

    push(0, 1000)
    before = store.positions(0)
    kept = before.copy()
    copies = 0
    for step in range(50):  # the cap: drop as many as arrive
        held_array = store._positions[0]
        store.drop_oldest(0, 100)
        copies += not np.shares_memory(store._positions[0], held_array)
        held_array = store._positions[0]
        push(1000 + 100 * step, 100)
        copies += not np.shares_memory(store._positions[0], held_array)
    # a growth copies the held rows once per ~held rows appended (amortized), never a
    # copy per drop: 50 pushes of 100 at 1000 held need ~5 growths
    assert copies <= 8
    assert np.array_equal(before, kept)
    view = store.view(0, ("timestamp",))
    assert np.array_equal(view["timestamp"], np.arange(5000, 6000))
    assert store.held[0] == 1000 and store.min_time(0) == 5000
