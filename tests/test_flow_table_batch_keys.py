"""FlowTable batch keys (task X4): the per-batch hash table of _batch_keys against a plain
Python reference (canonical endpoints, Zeek's ICMP ports, key ids by first packet, the
_mix64 hash), and the key order of _key_order, including its exact fallback when two keys
share their hash's high bits."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sensors.flow_table as ft
from sensors.community_id import _ICMP4_TABLE, _ICMP6_TABLE
from sensors.packets import IP_DTYPE

_ADDRS = [bytes(16), bytes(15) + b"\x01", bytes(15) + b"\x02", b"\x20\x01" + bytes(13) + b"\x01",
          bytes(10) + b"\xff\xff\x0a\x00\x00\x01", bytes(10) + b"\xff\xff\x0a\x00\x00\x02"]
_packet = st.tuples(st.sampled_from(range(len(_ADDRS))), st.sampled_from(range(len(_ADDRS))),
                    st.sampled_from([0, 1, 8, 13, 80, 443, 65535]),
                    st.sampled_from([0, 3, 8, 53, 80, 128, 129, 65535]),
                    st.sampled_from([1, 6, 17, 47, 58, 132]), st.sampled_from([0, 1, 4095]),
                    st.sampled_from([0, 4 << 56 | 5, 4 << 56 | 6, 1 << 63 | 2 << 56 | 99]))


def _reference_key(src: bytes, dst: bytes, sport: int, dport: int, proto: int,
                   vlan: int, segment: int = 0) -> tuple[tuple, bool]:
    """(key words, fwd) written out plainly: the layout _packet_key builds."""
    if proto in (1, 58):
        counter = (_ICMP4_TABLE if proto == 1 else _ICMP6_TABLE)[min(sport, 255)]
        if counter >= 0:
            dport = int(counter)
    if proto not in (1, 6, 17, 58, 132):
        sport = dport = 0
    fwd = (src, sport) <= (dst, dport)
    (lo, lp), (hi, hp) = ((src, sport), (dst, dport)) if fwd else ((dst, dport), (src, sport))
    meta = (vlan | (ft.SEGMENT_FLAG if segment else 0)) << 48 | proto << 40 | lp << 16 | hp
    words = (meta, int.from_bytes(lo[:8], "big"), int.from_bytes(lo[8:], "big"),
             int.from_bytes(hi[:8], "big"), int.from_bytes(hi[8:], "big"), segment)
    return words, fwd


@settings(max_examples=150, deadline=None)
@given(st.lists(_packet, min_size=1, max_size=60), st.data())
def test_batch_keys_equal_a_plain_reference(packets, data):
    n = len(packets)
    # the kernel reads the batch through `rows` (IP rows): leave some batch rows out
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1))),
                    dtype=np.int64)
    src = np.array([_ADDRS[p[0]] for p in packets], dtype=IP_DTYPE)
    dst = np.array([_ADDRS[p[1]] for p in packets], dtype=IP_DTYPE)
    columns = (rows, ft._words16(src), ft._words16(dst),
               np.array([p[2] for p in packets], dtype=np.uint16),
               np.array([p[3] for p in packets], dtype=np.uint16),
               np.array([p[4] for p in packets], dtype=np.uint8),
               np.array([p[5] for p in packets], dtype=np.uint16),
               np.array([p[6] for p in packets], dtype=np.uint64))
    key_of, fwd, words, key_hash = ft._batch_keys(*columns)
    # the same in kept buffers holding garbage (FlowTable's _keys_buffers), larger than asked
    extra = data.draw(st.integers(0, 40))
    table = np.full(ft._keys_table_size(rows.size + extra), 7, dtype=np.int32)
    scratch = np.full(ft._KEYS_SCRATCH * (rows.size + extra), 0xDEAD, dtype=np.uint64)
    kept = ft._batch_keys_in(*columns, table, scratch)
    assert all(np.array_equal(a, b) for a, b in zip(kept, (key_of, fwd, words, key_hash),
                                                    strict=True))
    ids: dict[tuple, int] = {}
    for i, r in enumerate(rows):
        s, d, sport, dport, proto, vlan, segment = packets[r]
        key, forward = _reference_key(_ADDRS[s], _ADDRS[d], sport, dport, proto, vlan, segment)
        ids.setdefault(key, len(ids))  # ids count keys in order of their first packet
        assert key_of[i] == ids[key]
        assert fwd[i] == forward
    assert [tuple(int(w) for w in row) for row in words] == list(ids)
    assert np.array_equal(key_hash, ft._mix64(words))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40, unique=True),
       st.integers(1, 70_000), st.data())
def test_key_order_is_hash_order_or_exact_when_high_bits_collide(hashes, n_packets, data):
    k = len(hashes)
    words = np.array(data.draw(st.lists(st.lists(st.integers(0, 2**64 - 1), min_size=5,
                                                 max_size=5), min_size=k, max_size=k,
                                        unique_by=tuple)), dtype=np.uint64).reshape(k, 5)
    if data.draw(st.booleans()) and k > 1:  # two keys share the bits above the index bits
        hashes[1] = hashes[0] ^ 1
    key_hash = np.array(hashes, dtype=np.uint64)
    order = ft._key_order(key_hash, words, n_packets)
    high = [h >> max(n_packets.bit_length(), 1) for h in hashes]
    if len(set(high)) == k:
        assert [high[i] for i in order] == sorted(high)
    else:
        assert [tuple(words[i]) for i in order] == sorted(tuple(w) for w in words)


@pytest.mark.parametrize("byte", [0, 1, 6, 8, 14])
@pytest.mark.parametrize("side", ["src", "dst"])
def test_probe_hash_spreads_keys_that_differ_in_two_address_bytes(byte, side):
    """Keys that differ only in two bytes of one address (e.g. the first bytes: the high bits
    of a word) must still spread over the batch table: positions shared by many keys would
    make its linear probing quadratic (a flood of such keys)."""
    n = 4096
    values = np.random.default_rng(byte).permutation(1 << 16)[:n]
    varied = np.zeros((n, 16), dtype=np.uint8)
    varied[:, byte], varied[:, byte + 1] = values >> 8, values & 0xFF
    other = np.full((n, 16), 0xFF, dtype=np.uint8)
    src, dst = (varied, other) if side == "src" else (other, varied)
    words = [np.ascontiguousarray(a).view(np.uint64).reshape(-1, 2) for a in (src, dst)]
    ports = np.full(n, 443, dtype=np.uint16)
    positions = {int(ft._packet_key(r, words[0], words[1], ports, ports,
                                    np.full(n, 6, dtype=np.uint8),
                                    np.zeros(n, dtype=np.uint16),
                                    np.zeros(n, dtype=np.uint64))[7]) & (2 * n - 1)
                 for r in range(n)}
    assert len(positions) > n // 2  # random positions: ~0.79 n distinct in 2n


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 20_000), st.integers(1, 40), st.integers(0, 2**32 - 1),
       st.integers(0, 3))
def test_high_order_sorts_as_argsort_and_flags_shared_values(n, index_bits, seed, copies):
    """_key_order's counting + insertion sort: the order of np.argsort of the masked hashes
    when they are distinct, and `shared` exactly when two are equal."""
    rng = np.random.default_rng(seed)
    key_hash = rng.integers(0, 2**64, n, dtype=np.uint64)
    if n > 1:
        for _ in range(copies):  # equal high bits (low bits may differ)
            i, j = rng.integers(0, n, 2)
            key_hash[j] = key_hash[i] ^ np.uint64(rng.integers(0, 1 << index_bits))
    mask = np.uint64(~((1 << index_bits) - 1) & (2**64 - 1))
    order, shared = ft._high_order(key_hash, mask)
    high = key_hash & mask
    assert shared == (np.unique(high).size < n)
    assert sorted(order.tolist()) == list(range(n))
    assert (np.diff(high[order].astype(object)) >= 0).all() if n > 1 else True
    if not shared:
        assert np.array_equal(order, np.argsort(high))
