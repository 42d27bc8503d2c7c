"""Per-batch fixed costs of the engine (issue #5, task C1 engine-batch): address codes ranked
among the rows read when the table's ranks are stale (engine_kernels.ranks_among), and the
distinct-target detectors' exit when a close has fewer rows than the threshold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from network_builders import flows, only, run
from test_engine import _address_column

from correlation.detector import _dense, combine_codes, factorize_ip
from correlation.engine import _LOCAL_RANK_SHARE, _SharedBuffer
from correlation.engine_kernels import ranks_among


def _reference_ranks(ids: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, int]:
    distinct, inverse = np.unique(ids, return_inverse=True)
    order = np.lexsort((lo[distinct], hi[distinct]))
    rank = np.empty(distinct.size, np.int64)
    rank[order] = np.arange(distinct.size)
    return rank[inverse.reshape(-1)], int(distinct.size)


@settings(max_examples=80, deadline=None)
@given(keys=st.integers(1, 3000), n=st.integers(0, 3000), seed=st.integers(0, 999),
       shape=st.sampled_from(["v4", "mixed_hi", "random"]))
def test_ranks_among_is_the_address_order_of_the_ids_read(keys: int, n: int, seed: int,
                                                          shape: str) -> None:
    rng = np.random.default_rng(seed)
    # distinct keys, as an AddressTable holds them
    lo = np.unique((rng.integers(0, 2**32, keys).astype(np.uint64) << np.uint64(32))
                   | np.uint64(0xFFFF0000))
    rng.shuffle(lo)
    hi = np.zeros(lo.size, np.uint64)
    if shape == "mixed_hi":
        hi[::3] = rng.integers(1, 4, hi[::3].size).astype(np.uint64)
        lo[::3] = rng.integers(0, 2**64 - 1, lo[::3].size, dtype=np.uint64)
        pairs = np.unique(np.stack([hi, lo], axis=1), axis=0)
        rng.shuffle(pairs)
        hi, lo = np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])
    elif shape == "random":
        lo = np.unique(rng.integers(0, 2**64 - 1, keys, dtype=np.uint64))
        rng.shuffle(lo)
        hi = rng.integers(0, 2, lo.size).astype(np.uint64)
    mark = np.full(lo.size, -1, np.int64)
    slot = np.empty(lo.size, np.int64)
    for epoch in range(3):  # the scratch arrays carry marks of earlier calls
        ids = rng.integers(0, lo.size, n // (epoch + 1)).astype(np.int64)
        codes, d = ranks_among(ids, hi, lo, mark, slot, epoch)
        expected, expected_d = _reference_ranks(ids, hi, lo)
        assert d == expected_d
        assert np.array_equal(codes, expected)


def test_ranks_among_rejects_an_id_outside_the_table() -> None:
    hi = np.zeros(4, np.uint64)
    lo = np.arange(4, dtype=np.uint64)
    for bad in (4, -1):
        with pytest.raises(IndexError):
            ranks_among(np.array([0, bad], np.int64), hi, lo, np.full(4, -1, np.int64),
                        np.empty(4, np.int64), 0)
    with pytest.raises(IndexError):  # scratch shorter than the table
        ranks_among(np.array([0, 3], np.int64), hi, lo, np.full(2, -1, np.int64),
                    np.empty(2, np.int64), 0)


def test_stale_ranks_give_local_codes_in_the_same_order() -> None:
    """A small read of a table whose ranks are stale ranks only the addresses it reads: the
    codes differ from the table's ranks but order rows the same (what detectors densify)."""
    rng = np.random.default_rng(5)
    n = 6000
    cols = {"timestamp": np.arange(n, dtype=np.int64),
            "src_ip": _address_column(rng, n, 0.1, 5000),
            "dst_ip": _address_column(rng, n, 0.0, 20000)}
    store = _SharedBuffer(tuple(cols), 1)
    store.append(cols, [np.arange(n)])
    table = store.addresses
    positions = np.sort(rng.choice(n, 60, replace=False)).astype(np.int64)
    assert positions.size * 3 * _LOCAL_RANK_SHARE <= table.size  # the local path's case
    for names in (("src_ip",), ("dst_ip",), ("src_ip", "dst_ip"),
                  ("src_ip", "dst_ip", "src_ip")):
        assert table.ranks_stale()
        local = store.address_codes(names, positions)
        assert table.ranks_stale()  # the whole table was not re-ranked
        expected = combine_codes(*(factorize_ip(cols[c][positions])[0] for c in names))[0]
        assert np.array_equal(_dense(local)[0], expected)
    # new addresses: the table (and its scratch) grow, local codes stay right
    more = {"timestamp": np.arange(n, 2 * n, dtype=np.int64),
            "src_ip": _address_column(rng, n, 0.1, 60000),
            "dst_ip": _address_column(rng, n, 0.0, 60000)}
    store.append(more, [np.arange(n)])
    assert table.ranks_stale()
    both = {c: np.concatenate([cols[c], more[c]]) for c in cols}
    positions = np.sort(rng.choice(2 * n, 40, replace=False)).astype(np.int64)
    for names in (("src_ip",), ("src_ip", "dst_ip")):
        local = store.address_codes(names, positions)
        expected = combine_codes(*(factorize_ip(both[c][positions])[0] for c in names))[0]
        assert np.array_equal(_dense(local)[0], expected)
    cols = both
    table.ranks()
    assert not table.ranks_stale()
    for names in (("src_ip",), ("src_ip", "dst_ip")):
        fresh = store.address_codes(names, positions)
        expected = combine_codes(*(factorize_ip(cols[c][positions])[0] for c in names))[0]
        assert np.array_equal(_dense(fresh)[0], expected)


def test_a_large_read_re_ranks_the_table() -> None:
    rng = np.random.default_rng(6)
    n = 3000
    cols = {"timestamp": np.arange(n, dtype=np.int64),
            "src_ip": _address_column(rng, n, 0.0, 100)}
    store = _SharedBuffer(tuple(cols), 1)
    store.append(cols, [np.arange(n)])
    codes = store.address_codes(("src_ip",), np.arange(n, dtype=np.int64))
    assert not store.addresses.ranks_stale()
    assert np.array_equal(_dense(codes)[0], factorize_ip(cols["src_ip"])[0])


def _ping(src: str, dst: str, t: float) -> dict:
    return dict(src=src, dst=dst, t=t, proto=1, sport=8, dport=0, spk=1, dpk=1, spay=56,
                dpay=56)


@pytest.mark.parametrize("hosts, alerts", [(14, 0), (15, 1)])
def test_sweep_with_exactly_threshold_rows_still_alerts(hosts: int, alerts: int) -> None:
    """The early exit (fewer rows than the threshold) is exact at the boundary: 15 rows to
    15 hosts reach min_hosts 15, 14 rows cannot."""
    rows = [_ping("10.0.0.128", f"10.0.0.{i}", i * 0.01) for i in range(1, hosts + 1)]
    got, engine = run([flows(rows)], only("icmp_sweep", icmp_sweep={"min_hosts": 15}))
    assert len(got) == alerts
    assert (engine.stats["findings"] > 0) == (alerts > 0)  # hopping windows: repeats


def test_a_close_with_fewer_rows_than_the_threshold_computes_no_keys() -> None:
    from correlation.sweep import IcmpSweepDetector

    calls = []

    class Counting(IcmpSweepDetector):
        def _key_and_target(self, cols, idx):
            calls.append(idx.size)
            return super()._key_and_target(cols, idx)

    rows = [_ping("10.0.0.128", f"10.0.0.{i}", i * 0.01) for i in range(1, 10)]
    from correlation.engine import CorrelationEngine, default_config

    section = dict(default_config()["detectors"]["icmp_sweep"], min_hosts=15)
    engine = CorrelationEngine(detectors=[Counting(section)])
    assert engine.push(flows(rows)) == [] and engine.flush() == []
    assert engine.stats["windows_closed"] > 0 and calls == []
    section = dict(section, min_hosts=9)
    engine = CorrelationEngine(detectors=[Counting(section)])
    assert len(engine.push(flows(rows)) + engine.flush()) == 1
    assert calls and calls[0] == 9
