"""StreamCollector._select's one-kernel selection (task S2 sensor-stream3, issue #3):
_select_rows_kernel against the steps it replaces (_opening_kernel, _select_core and the
gathers of the kept rows' columns), and the prefetch hints against plain reads (a hint must
never change a result, also for a buffer that is not contiguous)."""

from __future__ import annotations

import numpy as np
import pytest
from stream_select_reference import _opening_kernel, _select_core

from sensors.packets import IP_DTYPE
from sensors.tcp_stream import (
    _hash_table,
    _HashSet,
    _reopened_kernel,
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
    ignored = _HashSet()
    ignored.add_all(flows[rng.random(flows.size) < 0.3].tolist())
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
            bool(rng.random() < 0.8), table, used, bool(ignored.count > 0), held, columns)


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
    *args, columns = case
    got = _select_rows_kernel(
        *args, columns["src_port"], columns["dst_port"], columns["vlan"], columns["tcp_flags"],
        columns["ts_ns"], columns["payload_offset"],
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
