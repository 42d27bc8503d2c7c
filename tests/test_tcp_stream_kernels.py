"""The batch-level pieces of sensors/tcp_stream.py against plain references: the span copy
kernel (bounds: hostile offsets never read out of range), the per-batch candidate memo shared
by the collectors of one sensor, the fast path's scratch buffer, and feed_joined's columns
and joined buffer against feed's chunks."""

from __future__ import annotations

import gc
import weakref

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packet_builders import batch_from_scapy
from stream_select_reference import _counting_order, _group_kernel, _select_kernel
from test_tcp_stream import CLIENT, SERVER, _feed_all, _loop_stats, handshake, seg, tcp_sessions

import sensors.tcp_stream as tcp_stream
from sensors.decode import decode
from sensors.tcp_stream import (
    CLIENT_BY,
    PREFIX_BYTES,
    StreamBatch,
    StreamChunk,
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
    rows, hashes, heads, seq, ack, found = tcp_stream._candidates(fresh)
    assert rows.tolist() == [0, 2] and tcp_stream._last_candidates[0]() is fresh
    assert found.tolist() == [True, True] and seq.tolist() == [5000, 1001]
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
    real = tcp_stream.candidate_scan

    def colliding(packets, rows):
        hashes, *rest = real(packets, rows)
        return (np.full(len(rows), 7, dtype=np.uint64), *rest)

    tcp_stream.candidate_scan = colliding
    try:
        _fast_and_loop_agree(pkts, cuts)
    finally:
        tcp_stream.candidate_scan = real


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


def _assert_batch_is(batch: StreamBatch, chunks: list[StreamChunk]) -> None:
    """Every column, byte span, key and chunk object of `batch` is what `chunks` say."""
    assert len(batch) == len(chunks)
    for i, chunk in enumerate(chunks):
        for d in (0, 1):
            lo, size = int(batch.start[i, d]), int(batch.length[i, d])
            assert batch.buf[lo : lo + size].tobytes() == chunk.data[d]
        got = (batch.client_ip[i].tobytes(), batch.server_ip[i].tobytes(),
               int(batch.client_port[i]), int(batch.server_port[i]), int(batch.vlan[i]),
               CLIENT_BY[batch.client_by[i]], int(batch.start_ts[i]), int(batch.last_ts[i]),
               tuple(batch.first_ts[i].tolist()), tuple(batch.ended[i].tolist()),
               tuple(batch.capped[i].tolist()), tuple(batch.gap[i].tolist()),
               bool(batch.final[i]), batch.reason[i])
        assert got == (chunk.client_ip, chunk.server_ip, chunk.client_port, chunk.server_port,
                       chunk.vlan, chunk.client_by, chunk.start_ts, chunk.last_ts,
                       chunk.first_ts, chunk.ended, chunk.capped, chunk.gap, chunk.final,
                       chunk.reason)
        rows = slice(int(batch.packet_start[i]), int(batch.packet_stop[i]))
        assert list(zip(batch.packet_ts[rows].tolist(), batch.packet_dir[rows].tolist(),
                        batch.packet_len[rows].tolist(), strict=True)) == chunk.packets
        assert batch.keys[i] == chunk.key
    for i in range(len(chunks)):  # one at a time, then all at once
        assert batch.chunk(i) == chunks[i]
    assert batch.chunks == chunks


def _joined_collectors():
    """HTTP-, TLS- (trimmed) and SSH-like collectors, with small caps and packet lists."""
    return [StreamCollector({80}, 40, 100, 60, max_packets_meta=3,
                            client_predicate=prefix_predicate([b"GET "])),
            StreamCollector(set(), 40, 100, 60, max_packets_meta=0, trim=_through_zero,
                            client_predicate=prefix_predicate([b"SSH-", b"GET "])),
            StreamCollector(None, 24, 100, 60)]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tcp_sessions(), st.booleans())
def test_feed_joined_gives_what_feed_gives(session, zeros):
    """feed_joined/flush_joined: the chunks, columns and bytes of feed/flush (fast path
    and loop flows mixed, trimmed or not), and the same collector state afterwards."""
    pkts, cuts = session
    if zeros:  # zero bytes inside payloads: the trimming collector cuts there
        for p in pkts:
            if p.haslayer("Raw") and len(p["Raw"].load) >= 3:
                p["Raw"].load = p["Raw"].load[:2] + b"\0" + p["Raw"].load[3:]
    bounds = [0, *cuts, len(pkts)]
    batches = [decode(batch_from_scapy(pkts[lo:hi]))
               for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]
    plain, joined = _joined_collectors(), _joined_collectors()
    for batch in batches:
        for a, b in zip(plain, joined, strict=True):
            _assert_batch_is(b.feed_joined(batch), a.feed(batch))
    for a, b in zip(plain, joined, strict=True):
        _assert_batch_is(b.flush_joined(), a.flush())
        assert _results(a, []) == _results(b, [])
        assert b._joined_spans is None  # nothing of a batch kept


def test_feed_joined_copies_fast_flows_straight_into_one_buffer():
    """A fast flow and a held (looped) flow in one batch: one buffer holds both; the fast
    flow's bytes come first, copied from the capture; offsets point at each direction."""
    other = ("192.0.2.77", 40001)
    pkts = handshake() + [seg(CLIENT, SERVER, "PA", 1001, 5001, b"GET / HTTP/1.0\r\n\r\n",
                              t=1.1),
                          seg(SERVER, CLIENT, "PA", 5001, 1019, b"HTTP/1.0 200 OK\r\n\r\n",
                              t=1.2),
                          seg(CLIENT, SERVER, "FA", 1019, 5020, t=1.3),
                          seg(SERVER, CLIENT, "FA", 5020, 1020, t=1.4),
                          seg(other, SERVER, "PA", 7, 9, b"GET /x HTTP/1.1\r\n", t=1.5)]
    collector = StreamCollector({80}, 64, 100, 60)
    batch = collector.feed_joined(decode(batch_from_scapy(pkts)))
    assert collector.stats["segments_fast"] == 6 and collector.stats["segments_looped"] == 1
    assert batch.final.tolist() == [True, False]
    assert batch.buf.tobytes() == (b"GET / HTTP/1.0\r\n\r\nHTTP/1.0 200 OK\r\n\r\n"
                                   b"GET /x HTTP/1.1\r\n")
    assert batch.start.tolist() == [[0, 18], [37, 54]]
    assert batch.length.tolist() == [[18, 19], [17, 0]]
    assert batch.reason.tolist() == ["fin", ""]
    assert [c.data for c in batch.chunks] == [(b"GET / HTTP/1.0\r\n\r\n",
                                               b"HTTP/1.0 200 OK\r\n\r\n"),
                                              (b"GET /x HTTP/1.1\r\n", b"")]


def _select_reference(hashes, has_payload, opens, syn, ignored, held):
    """_select_kernel's answers the way _select computed them before, with np.isin."""
    not_ignored = ~np.isin(hashes, ignored)
    opening = np.unique(hashes[opens & has_payload & not_ignored])
    may_open = np.isin(hashes, opening)
    is_held = np.isin(hashes, held)
    keep = is_held | may_open
    handshake = syn & ~has_payload & opens & not_ignored & ~keep
    return may_open, keep, handshake, is_held | ~not_ignored, np.setdiff1d(opening, held)


# few distinct hashes (so rows share flows and sets overlap), some with equal low bits
_HASHES = st.sampled_from([0, 1, 7, 16, 17, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15, 2**32 + 7])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_HASHES, st.booleans(), st.booleans(), st.booleans()), max_size=40),
       st.lists(_HASHES, max_size=6), st.lists(_HASHES, max_size=6))
def test_select_kernel_equals_the_isin_version(rows, ignored, held):
    hashes = np.array([r[0] for r in rows], dtype=np.uint64)
    has, opens, syn = (np.array([r[i] for r in rows], dtype=bool) for i in (1, 2, 3))
    ignored = np.array(ignored, dtype=np.uint64)
    held = np.array(held, dtype=np.uint64)
    got = _select_kernel(hashes, has, opens, syn, ignored, held)
    want = _select_reference(hashes, has, opens, syn, ignored, held)
    for a, b in zip(got[:4], want[:4], strict=True):
        assert a.tolist() == b.tolist()
    assert sorted(got[4].tolist()) == want[4].tolist()  # each once (order: first seen)
    assert len(set(got[4].tolist())) == got[4].size


@settings(max_examples=200, deadline=None)
@given(st.lists(_HASHES, max_size=60))
def test_grouping_kernels_give_flows_in_first_seen_order_rows_in_time_order(values):
    hashes = np.array(values, dtype=np.uint64)
    group_of, n_groups = _group_kernel(hashes)
    first_seen = list(dict.fromkeys(values))
    assert n_groups == len(first_seen)
    assert group_of.tolist() == [first_seen.index(v) for v in values]
    order = _counting_order(group_of, n_groups)
    # stable: by group, then by row index (the time order of the selected rows)
    assert order.tolist() == sorted(range(len(values)), key=lambda i: (group_of[i], i))
