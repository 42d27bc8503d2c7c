"""The shared selection pieces of sensors/tcp_stream.py (task S1, issue #3): the one-pass
candidate scan against the three column functions it replaces, the persistent table of
released/closed flow hashes against a Python set, and the collector's use of that table
when its LRU forgets a hash."""

from __future__ import annotations

import struct
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packet_builders import batch_from_scapy
from test_tcp_stream import SERVER, _feed_all, seg, tcp_sessions

from sensors.decode import decode
from sensors.packets import IP_DTYPE
from sensors.tcp_stream import (
    PREFIX_BYTES,
    StreamCollector,
    _HashLru,
    _set_member,
    candidate_scan,
    flow_hash_column,
    payload_heads,
    prefix_predicate,
    tcp_seq_ack,
)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400),
       st.lists(st.tuples(st.integers(-80, 500), st.integers(-3, 30)), max_size=30),
       st.integers(0, 2**32 - 1))
def test_candidate_scan_equals_hash_seq_ack_and_heads(blob, rows, salt):
    """Random bytes with real TCP headers planted before some payload offsets, offsets and
    lengths anywhere (also negative or past the buffer): the same hashes, (seq, ack, found)
    and payload heads as flow_hash_column, tcp_seq_ack and payload_heads."""
    rng = np.random.default_rng(salt)
    data = bytearray(blob)
    n = len(rows)
    sport = rng.integers(0, 65536, n).astype(np.uint16)
    dport = rng.integers(0, 65536, n).astype(np.uint16)
    flags = rng.integers(0, 256, n).astype(np.uint8)
    for i, (off, _) in enumerate(rows):
        header_len = int(rng.integers(5, 16)) * 4
        at = off - header_len
        if rng.random() < 0.7 and at >= 0 and off <= len(data):
            data[at : at + 14] = struct.pack("!HHIIBB", int(sport[i]), int(dport[i]),
                                             int(rng.integers(0, 2**32)),
                                             int(rng.integers(0, 2**32)), header_len // 4 << 4,
                                             int(flags[i]))
    # a few repeated addresses, so that flows share hashes
    ips = rng.integers(0, 256, (4, 16)).astype(np.uint8).view(IP_DTYPE).reshape(-1)
    packets = SimpleNamespace(
        data=np.frombuffer(bytes(data), dtype=np.uint8),
        payload_offset=np.array([r[0] for r in rows], dtype=np.int64),
        payload_len=np.array([r[1] for r in rows], dtype=np.int64),
        src_port=sport, dst_port=dport, tcp_flags=flags,
        src_ip=ips[rng.integers(0, 4, n)], dst_ip=ips[rng.integers(0, 4, n)],
        vlan=rng.integers(0, 4096, n).astype(np.uint16))
    picked = np.flatnonzero(rng.random(n) < 0.8)  # a subset, in order, as the selection's
    hashes, seq, ack, found, heads = candidate_scan(packets, picked)
    assert hashes.tolist() == flow_hash_column(packets, picked).tolist()
    for got, want in zip((seq, ack, found), tcp_seq_ack(packets, picked), strict=True):
        assert got.tolist() == want.tolist()
    with_payload = picked[packets.payload_len[picked] > 0]
    assert heads.shape == (with_payload.size, PREFIX_BYTES)
    assert heads.tolist() == payload_heads(packets, with_payload, PREFIX_BYTES).tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.lists(st.integers(0, 40), max_size=12)),
                max_size=60),
       st.integers(1, 30), st.integers(0, 2**64 - 1))
def test_hash_lru_equals_an_ordered_dict(ops, cap, high):
    """Touches (runs of values, repeats included) and removals in any order against an
    OrderedDict LRU of the same cap (values crowded on few low bits, so probes collide and
    removals shift clusters; the table and the log growing and compacting)."""
    values = [(v * 64) % (1 << 64) ^ (high if v % 3 == 0 else 0) for v in range(41)]
    lru = _HashLru(cap)
    want: OrderedDict[int, None] = OrderedDict()
    for kind, picks in ops:
        run = [values[p] for p in picks]
        if kind:
            lru.touch(np.array(run, dtype=np.uint64))
            for value in run:
                want[value] = None
                want.move_to_end(value)
            while len(want) > cap:
                want.popitem(last=False)
        else:
            lru.remove(np.array(run, dtype=np.uint64))
            for value in run:
                want.pop(value, None)
        t, u = lru.arrays()
        assert _set_member(t, u, np.array(values, dtype=np.uint64)).tolist() == [
            v in want for v in values]
        assert len(lru) == len(want) and int(u.sum()) == len(want)
        assert 2 * len(lru) <= t.size
        assert list(lru) == list(want)
        assert all((value in lru) == (value in want) for value in values)


def _members(collector: StreamCollector) -> set[int]:
    table, used = collector._ignored.arrays()
    return set(table[used].tolist())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tcp_sessions())
def test_the_table_holds_exactly_the_lru_of_closed_flows(session):
    pkts, cuts = session
    for fast in (True, False):
        collector = StreamCollector({80}, 32, 1, 60, max_packets_meta=3, fast_path=fast,
                                    client_predicate=prefix_predicate([b"GET "]))
        _feed_all(pkts, cuts, collector)
        assert _members(collector) == set(collector._ignored)


def _closed_flow(port: int, t: float) -> list:
    client = ("10.0.0.1", port)
    return [seg(client, SERVER, "S", 100, t=t), seg(SERVER, client, "SA", 900, 101, t=t),
            seg(client, SERVER, "PA", 101, 901, b"GET / HTTP/1.0\r\n\r\n", t=t),
            seg(client, SERVER, "FA", 119, 901, t=t), seg(SERVER, client, "FA", 901, 120, t=t)]


def test_a_flow_the_lru_forgot_opens_again_and_one_it_holds_does_not():
    # max_flows 1: the LRU keeps the last 4 closed flows; six close in the first batch
    collector = StreamCollector({80}, 64, 1, 60)
    first = [p for i in range(6) for p in _closed_flow(41000 + i, 1.0 + i)]
    closed = collector.feed(decode(batch_from_scapy(first)))
    assert [c.reason for c in closed] == ["fin"] * 6 and len(collector._ignored) == 4
    assert _members(collector) == set(collector._ignored)
    late = [seg(("10.0.0.1", 41000 + i), SERVER, "PA", 119, 901, b"GET /x HTTP/1.0\r\n\r\n",
                t=10.0) for i in (0, 5)]
    chunks = collector.feed(decode(batch_from_scapy(late)))
    # the first flow's hash was forgotten: its late segment opens a flow; the last is held
    assert [c.client_port if c.server_port == 80 else c.server_port for c in chunks] == [41000]
