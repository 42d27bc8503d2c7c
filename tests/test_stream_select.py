"""StreamCollector._select's one-kernel selection (task S2 sensor-stream3, issue #3):
_select_rows_kernel against the steps it replaces (_opening_kernel, _select_core and the
gathers of the kept rows' columns), and the prefetch hints against plain reads (a hint must
never change a result, also for a buffer that is not contiguous)."""

from __future__ import annotations

import numpy as np
import pytest
from stream_select_reference import _group_kernel, _opening_kernel, _reopened_kernel, _select_core

from sensors.packets import IP_DTYPE
from sensors.tcp_stream import (
    _flow_groups_kernel,
    _hash_table,
    _HashLru,
    _select_rows_kernel,
    _set_member,
)
from sensors.tls import needed_lengths


def _case(seed: int):
    """Random candidate rows of a random batch, a few flows shared by many rows (so flows
    open, are held or ignored), ports partly selected, predicate answers per payload row."""
    rng = np.random.default_rng(seed)
    packets = int(rng.integers(0, 300))
    n = int(rng.integers(0, packets + 1))
    rows = np.sort(rng.choice(packets, n, replace=False)).astype(np.int64)
    flows = rng.integers(1, 2**63, max(1, int(rng.integers(1, 40))), dtype=np.uint64)
    hashes = flows[rng.integers(0, flows.size, n)]
    plen = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 2000, n)).astype(np.int32)
    flags = rng.integers(0, 256, n).astype(np.uint8)
    sport = rng.integers(0, 65536, n).astype(np.int64)
    dport = np.where(rng.random(n) < 0.3, 80, rng.integers(0, 65536, n)).astype(np.int64)
    head_matched = (rng.random(int((plen > 0).sum())) < 0.3 if rng.random() < 0.8
                    else np.zeros(0, dtype=bool))
    port_table = np.zeros(65536, dtype=bool)
    port_table[[80, 443]] = True
    ignored = _HashLru(1 << 20)
    ignored.touch(flows[rng.random(flows.size) < 0.3])
    table, used = ignored.arrays()
    held = flows[rng.random(flows.size) < 0.2]
    seq = rng.integers(0, 2**32, n)
    ack = rng.integers(0, 2**32, n)
    found = rng.random(n) < 0.9
    columns = {
        "src_port": rng.integers(0, 65536, packets).astype(np.uint16),
        "dst_port": rng.integers(0, 65536, packets).astype(np.uint16),
        "vlan": rng.integers(0, 4096, packets).astype(np.uint16),
        "tcp_flags": rng.integers(0, 256, packets).astype(np.uint8),
        "ts_ns": rng.integers(0, 2**62, packets),
        "payload_offset": rng.integers(0, 10**6, packets),
        "payload_len": rng.integers(0, 1500, packets).astype(np.int32),
        "src_ip": rng.integers(0, 256, (packets, 16)).astype(np.uint8).view(IP_DTYPE).reshape(-1),
        "dst_ip": rng.integers(0, 256, (packets, 16)).astype(np.uint8).view(IP_DTYPE).reshape(-1),
    }
    return (rows, hashes, seq, ack, found, plen, flags, sport, dport, head_matched, port_table,
            bool(rng.random() < 0.8), table, used, len(ignored) > 0, held, columns)


def _reference(rows, hashes, seq, ack, found, plen, flags, sport, dport, head_matched,
               port_table, any_ports, table, used, any_ignored, held, columns):
    """The former _select: opening flags, flow tests, numpy gathers of the kept rows."""
    has, matched, opens, syn, _, _ = _opening_kernel(plen, flags, sport, dport, head_matched,
                                                     port_table, any_ports)
    in_opening, keep, handshake, settled, fresh = _select_core(
        hashes, has, opens, syn, table, used, any_ignored, held)
    at = np.flatnonzero(keep)
    picked = rows[at]
    kept = [hashes[at], (opens & in_opening)[at], matched[at], seq[at], ack[at], found[at],
            settled[at]]
    kept += [columns[name][picked] for name in ("src_port", "dst_port", "vlan", "tcp_flags",
                                                 "ts_ns")]
    kept += [columns["payload_offset"][picked].astype(np.int64),
             plen[at].astype(np.int64)]
    kept += [np.ascontiguousarray(columns[name][picked]).view(np.uint64).reshape(-1, 2)
             for name in ("src_ip", "dst_ip")]
    return [at, np.flatnonzero(handshake), fresh, *kept]


@pytest.mark.parametrize("seed", range(60))
def test_select_rows_kernel_equals_the_three_steps_it_replaces(seed):
    case = _case(seed)
    rows, hashes, *args, columns = case
    group_of, group_hash = _flow_groups_kernel(hashes)
    got = _select_rows_kernel(
        rows, group_of, group_hash, *args, columns["src_port"], columns["dst_port"],
        columns["vlan"], columns["tcp_flags"], columns["ts_ns"], columns["payload_offset"],
        columns["src_ip"].view(np.uint64).reshape(-1, 2),
        columns["dst_ip"].view(np.uint64).reshape(-1, 2))
    want = _reference(*case)
    assert len(got) == len(want)
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == w.dtype, index
        assert np.array_equal(g, w), index


@pytest.mark.parametrize("seed", range(20))
def test_reopened_rows_are_the_pure_syns_of_ignored_flows(seed):
    rows, hashes, _, _, _, _, flags, *_, table, used, _, _, _ = _case(seed)
    pure_syn = (flags & 0x12) == 0x02
    want = hashes[pure_syn][_set_member(table, used, hashes[pure_syn])]
    assert _reopened_kernel(flags, hashes, table, used).tolist() == want.tolist()


@pytest.mark.parametrize("seed", range(20))
def test_flow_groups_number_hashes_in_first_seen_order(seed):
    """Rows of one hash share a group, groups are numbered as their first row appears
    (_group_kernel's), and each group carries its rows' hash."""
    hashes = _case(seed)[1]
    group_of, group_hash = _flow_groups_kernel(hashes)
    distinct, first = np.unique(hashes, return_index=True)
    order = np.argsort(first, kind="stable")
    assert group_hash.tolist() == distinct[order].tolist()
    assert np.array_equal(group_hash[group_of], hashes)
    want_of, n_groups = _group_kernel(hashes)
    assert np.array_equal(group_of, want_of) and n_groups == group_hash.size


@pytest.mark.parametrize("distinct", [1, 31, 33, 600, 5000])
def test_flow_groups_survive_the_table_growing(distinct):
    """Many flows (the table starts small and doubles, its slots reinserted): each row
    still finds its own group, repeats and zero hashes included."""
    rng = np.random.default_rng(distinct)
    flows = rng.integers(0, 2**64, distinct, dtype=np.uint64)
    flows[0] = 0
    hashes = flows[rng.integers(0, distinct, 4 * distinct)]
    hashes[: distinct] = flows  # every flow appears, first in this order
    group_of, group_hash = _flow_groups_kernel(hashes)
    assert np.array_equal(group_hash, flows)
    assert np.array_equal(group_hash[group_of], hashes)


def test_ignored_flows_are_tested_only_where_an_answer_is_read():
    """The ignored table is probed per flow and only for flows with a row that may open:
    an ignored flow of rows that may not open, but held, is kept and settled; one that is
    neither held nor opened by another row is dropped; an ignored flow's payload row on a
    selected port opens nothing and its SYN is no handshake."""
    case = list(_case(0))
    columns = case[-1]
    packets = columns["src_port"].size
    flows = np.array([11, 22, 33, 44], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    rows = np.arange(8, dtype=np.int64) % max(packets, 1)
    hashes = flows[[0, 0, 1, 1, 2, 2, 3, 3]]
    plen = np.array([0, 10, 0, 10, 10, 0, 10, 0], dtype=np.int32)
    flags = np.array([0x10, 0x18, 0x10, 0x18, 0x18, 0x02, 0x18, 0x02], dtype=np.uint8)
    sport = np.array([5000] * 8, dtype=np.int64)
    # flows 0 and 1 on unselected ports, flows 2 and 3 on port 80
    dport = np.array([9, 9, 9, 9, 80, 80, 80, 80], dtype=np.int64)
    port_table = np.zeros(65536, dtype=bool)
    port_table[80] = True
    ignored = _HashLru(16)
    ignored.touch(flows[:3])
    table, used = ignored.arrays()
    held = flows[[0]]  # flow 0 held (and ignored), flow 1 only ignored
    seq = np.arange(8, dtype=np.int64)
    case[:16] = [rows, hashes, seq, seq, np.ones(8, dtype=bool), plen, flags, sport, dport,
                 np.zeros(0, dtype=bool), port_table, True, table, used, True, held]
    group_of, group_hash = _flow_groups_kernel(hashes)
    got = _select_rows_kernel(
        rows, group_of, group_hash, *case[2:16], columns["src_port"], columns["dst_port"],
        columns["vlan"], columns["tcp_flags"], columns["ts_ns"], columns["payload_offset"],
        columns["src_ip"].view(np.uint64).reshape(-1, 2),
        columns["dst_ip"].view(np.uint64).reshape(-1, 2))
    keep_at, handshake_at, fresh, k_hash, k_may_open = got[:5]
    settled = got[9]
    assert keep_at.tolist() == [0, 1, 6, 7]  # flow 0 (held), flow 3 (opened)
    assert handshake_at.tolist() == []  # flow 2's SYN: ignored; flow 3's: kept
    assert fresh.tolist() == [int(flows[3])]
    assert settled.tolist() == [True, True, False, False]
    assert k_may_open.tolist() == [False, False, True, True]
    for index, (g, w) in enumerate(zip(got, _reference(*case), strict=True)):
        assert np.array_equal(g, w), index


def test_a_case_exercises_every_outcome():
    """The random cases above do reach kept, handshake, fresh and settled rows."""
    totals = np.zeros(4, dtype=np.int64)
    for seed in range(60):
        ref = _reference(*_case(seed))
        totals += [ref[0].size, ref[1].size, ref[2].size, int(ref[9].sum())]
    assert (totals > 0).all()


def test_hash_table_of_nothing_is_empty():
    table, used, mask = _hash_table(np.zeros(0, dtype=np.uint64))
    assert not used.any() and mask == table.size - 1


@pytest.mark.parametrize("seed", range(10))
def test_needed_lengths_are_the_same_for_a_strided_buffer(seed):
    """The prefetch hint is skipped for a buffer that is not contiguous (and never changes
    a result): the same lengths as for a contiguous copy."""
    rng = np.random.default_rng(seed)
    flat = rng.integers(0, 256, 4000).astype(np.uint8)
    flat[::97] = 22  # some handshake record types
    flat[1::97] = 3
    strided = np.repeat(flat, 2)[::2]
    assert not strided.flags.c_contiguous
    m = int(rng.integers(0, 40))
    seg_start = rng.integers(-10, 4100, m)
    seg_size = rng.integers(-5, 300, m)
    n = int(rng.integers(0, 12))
    first = rng.integers(0, m + 1, (n, 2))
    end = np.minimum(first + rng.integers(0, 6, (n, 2)), m)
    assert np.array_equal(needed_lengths(strided, seg_start, seg_size, first, end),
                          needed_lengths(flat, seg_start, seg_size, first, end))
