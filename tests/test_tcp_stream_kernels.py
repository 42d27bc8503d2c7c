"""The batch-level pieces of sensors/tcp_stream.py against plain references: the span copy
kernel (bounds: hostile offsets never read out of range), the per-batch candidate memo shared
by the collectors of one sensor, and the fast path's scratch buffer."""

from __future__ import annotations

import gc
import weakref

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packet_builders import batch_from_scapy
from test_tcp_stream import CLIENT, SERVER, _feed_all, _loop_stats, handshake, seg, tcp_sessions

import sensors.tcp_stream as tcp_stream
from sensors.decode import decode
from sensors.tcp_stream import (
    PREFIX_BYTES,
    StreamCollector,
    _spans_kernel,
    flow_hash_column,
    prefix_predicate,
)


def _spans_reference(data: bytes, starts: list[int], sizes: list[int], total: int) -> bytes:
    """Byte by byte: each span's bytes (zero outside `data`), back to back, cut or
    zero-padded to `total`."""
    out = bytearray()
    for lo, size in zip(starts, sizes, strict=True):
        out += bytes(data[i] if 0 <= i < len(data) else 0 for i in range(lo, lo + max(size, 0)))
    return bytes(out[:total].ljust(total, b"\0"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300),
       st.lists(st.tuples(st.integers(-400, 700), st.integers(-5, 120)), max_size=20),
       st.integers(-50, 50))
def test_spans_kernel_equals_byte_by_byte_copy(blob, spans, slack):
    starts = [lo for lo, _ in spans]
    sizes = [size for _, size in spans]
    total = max(0, sum(max(size, 0) for size in sizes) + slack)  # shorter or longer than needed
    out = np.full(total, 0xAA, dtype=np.uint8)  # garbage: every byte must be written
    _spans_kernel(np.frombuffer(blob, dtype=np.uint8), np.array(starts, dtype=np.int64),
                  np.array(sizes, dtype=np.int64), out)
    assert out.tobytes() == _spans_reference(blob, starts, sizes, total)


def _collectors():
    """An HTTP-like and a TLS-like collector, as one sensor runs them on every batch."""
    return [StreamCollector({80}, 48, 100, 60, max_packets_meta=4,
                            client_predicate=prefix_predicate([b"GET "])),
            StreamCollector(set(), 48, 100, 60, max_packets_meta=0,
                            client_predicate=prefix_predicate([b"SSH-"])),
            StreamCollector(None, 48, 100, 60)]


def _results(collector, chunks):
    return chunks, _loop_stats(collector), list(collector._ignored)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tcp_sessions())
def test_collectors_sharing_a_batch_get_what_each_gets_alone(session):
    pkts, cuts = session
    bounds = [0, *cuts, len(pkts)]
    batches = [decode(batch_from_scapy(pkts[lo:hi]))
               for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]
    shared = _collectors()
    together = [[] for _ in shared]
    for batch in batches:  # each batch to every collector in turn: the memo is used
        for collector, got in zip(shared, together, strict=True):
            got.append(collector.feed(batch))
    for collector, got in zip(shared, together, strict=True):
        got.append(collector.flush())
    for index, collector in enumerate(shared):
        alone = _collectors()[index]
        chunks = []
        for batch in batches:
            tcp_stream._last_candidates = None  # nothing to share: computed afresh
            chunks.append(alone.feed(batch))
        chunks.append(alone.flush())
        assert _results(collector, together[index]) == _results(alone, chunks)


def test_memo_never_keeps_a_batch_alive_nor_answers_for_another_batch():
    pkts = handshake() + [seg(CLIENT, SERVER, "PA", 1001, 5001, b"GET / HTTP/1.0\r\n\r\n",
                              t=1.1)]
    batch = decode(batch_from_scapy(pkts))
    StreamCollector({80}).feed(batch)
    ref = weakref.ref(batch)
    del batch
    gc.collect()
    assert ref() is None
    # a new batch (perhaps at the dead one's address) gets its own candidates: the SYN-ACK
    # and the payload (the bare ACK is no candidate)
    fresh = decode(batch_from_scapy(pkts[1:]))
    rows, hashes, heads = tcp_stream._candidates(fresh, True)
    assert rows.tolist() == [0, 2] and tcp_stream._last_candidates[0]() is fresh
    assert hashes.tolist() == flow_hash_column(fresh, rows).tolist()
    assert heads[:, :4].tobytes() == b"GET " and heads.shape == (1, PREFIX_BYTES)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tcp_sessions(), st.sampled_from([0, 1, 16, 1 << 20]))
def test_scratch_buffer_of_any_size_gives_what_the_loop_gives(session, limit):
    pkts, cuts = session

    def make(fast):
        return StreamCollector({80}, 32, 100, 60, max_packets_meta=3, fast_path=fast,
                               client_predicate=prefix_predicate([b"GET ", b"SSH-"]))

    saved = tcp_stream.MAX_SCRATCH_BYTES
    tcp_stream.MAX_SCRATCH_BYTES = limit  # 0: never kept; small: kept for small batches only
    try:
        fast, loop = make(True), make(False)
        assert _feed_all(pkts, cuts, fast) == _feed_all(pkts, cuts, loop)
        assert _loop_stats(fast) == _loop_stats(loop)
    finally:
        tcp_stream.MAX_SCRATCH_BYTES = saved


def _fast_and_loop_agree(pkts, cuts, ports=frozenset({80})):
    def make(fast):
        return StreamCollector(set(ports), 32, 100, 60, max_packets_meta=3, fast_path=fast,
                               client_predicate=prefix_predicate([b"GET ", b"SSH-"]))

    fast, loop = make(True), make(False)
    assert _feed_all(pkts, cuts, fast) == _feed_all(pkts, cuts, loop)
    assert _loop_stats(fast) == _loop_stats(loop)
    assert list(fast._ignored) == list(loop._ignored)
    return fast


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tcp_sessions())
def test_fast_walk_with_every_flow_hash_colliding_gives_what_the_loop_gives(session):
    # One hash for every flow: the fast path's groups mix flows (rows neither of the
    # opening row's direction nor the reverse), which it must leave to the loop.
    pkts, cuts = session
    real = tcp_stream.flow_hash_column
    tcp_stream.flow_hash_column = lambda packets, rows: np.full(len(rows), 7, dtype=np.uint64)
    try:
        _fast_and_loop_agree(pkts, cuts)
    finally:
        tcp_stream.flow_hash_column = real


def test_fast_walk_leaves_a_host_talking_to_itself_to_the_loop():
    me = ("10.0.0.7", 80)
    pkts = [seg(me, me, "S", 100, t=1.0), seg(me, me, "SA", 500, 101, t=1.0),
            seg(me, me, "PA", 101, 501, b"GET / HTTP/1.0\r\n\r\n", t=1.1),
            seg(me, me, "FA", 119, 501, t=1.2), seg(me, me, "FA", 501, 120, t=1.2)]
    collector = _fast_and_loop_agree(pkts, [])
    assert collector.stats.get("segments_fast", 0) == 0  # same and reverse at once: looped


def _through_zero(data, seg_start, seg_size, first_seg, end_seg):
    """A `trim` for the test: each direction up to and with its first zero byte (its
    whole length when none), read segment by segment in Python (zero outside data)."""
    out = np.zeros(first_seg.shape, dtype=np.int64)
    for index in np.ndindex(first_seg.shape):
        stream = bytearray()
        for i in range(first_seg[index], end_seg[index]):
            stream += bytes(int(data[at]) if 0 <= at < data.size else 0
                            for at in range(seg_start[i], seg_start[i] + seg_size[i]))
        out[index] = stream.index(0) + 1 if 0 in stream else len(stream)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tcp_sessions(), st.binary(min_size=1, max_size=6))
def test_trim_cuts_only_the_data_of_fast_flows(session, zero_bytes):
    """A collector with `trim` gives the chunks of one without, except that a fast-path
    flow's data stops where trim says (here after its first zero byte)."""
    pkts, cuts = session
    for p in pkts:  # some payloads get zero bytes, so the cut lands inside a stream
        load = p["Raw"].load if p.haslayer("Raw") else b""
        if len(load) >= 2 and zero_bytes[len(load) % len(zero_bytes)] % 2:
            p["Raw"].load = load[:1] + b"\0" + load[2:]
    whole = _feed_all(pkts, cuts, StreamCollector({80, 81}, 64, 100, 60))
    cut = _feed_all(pkts, cuts, StreamCollector({80, 81}, 64, 100, 60, trim=_through_zero))
    for a_list, b_list in zip(whole, cut, strict=True):
        assert len(a_list) == len(b_list)
        for a, b in zip(a_list, b_list, strict=True):
            for d in (0, 1):
                zero = a.data[d].find(0)
                trimmed = a.data[d][: zero + 1] if zero >= 0 else a.data[d]
                # cut where trim says (fast path) or whole (the loop's flows)
                assert b.data[d] in (trimmed, a.data[d])
            b.data = a.data
            assert a == b


def test_trim_is_applied_before_the_copy_on_the_fast_path():
    pkts = handshake() + [seg(CLIENT, SERVER, "PA", 1001, 5001, b"AB\0CD", t=1.1),
                          seg(CLIENT, SERVER, "PA", 1006, 5001, b"EFGH", t=1.2),
                          seg(SERVER, CLIENT, "PA", 5001, 1010, b"XYZ", t=1.3),
                          seg(CLIENT, SERVER, "FA", 1010, 5004, t=1.4),
                          seg(SERVER, CLIENT, "FA", 5004, 1011, t=1.5)]
    collector = StreamCollector({80}, 64, 100, 60, trim=_through_zero)
    chunks = collector.feed(decode(batch_from_scapy(pkts)))
    assert [(c.data, c.final, c.reason) for c in chunks] == [((b"AB\0", b"XYZ"), True, "fin")]
    assert collector.stats["segments_looped"] == 0 and collector.stats["closed_fin"] == 1
