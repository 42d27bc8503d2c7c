"""One selection pass for two collectors fed the same batch (HTTP, then TLS; task W1
sensor-stream-select, issue #3): _select_pair_kernel + _kept_columns against two
_select_rows_kernel calls, and collectors that pair against the same collectors alone,
also when the second one's state changes between the two feeds."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_pcap

import sensors.tcp_stream as tcp_stream
from sensors.decode import decode
from sensors.http import HttpAnalyzer
from sensors.packets import IP_DTYPE
from sensors.pcap_reader import CaptureReader
from sensors.tcp_stream import (
    _flow_groups_kernel,
    _HashLru,
    _kept_columns,
    _select_pair_kernel,
    _select_rows_kernel,
)
from sensors.tls import TlsAnalyzer


def _collector_case(rng, flows, n):
    """One collector's inputs: predicate answers, port table (every port, some, none),
    ignored and held flows."""
    n_payload = n
    head_matched = (rng.random(n_payload) < 0.3 if rng.random() < 0.8
                    else np.zeros(0, dtype=bool))
    port_table = np.zeros(65536, dtype=bool)
    mode = int(rng.integers(0, 3))  # 0 every port, 1 some ports, 2 none
    if mode == 1:
        port_table[[80, 443]] = True
    ignored = _HashLru(1 << 20)
    if rng.random() < 0.8:
        ignored.touch(flows[rng.random(flows.size) < 0.3])
    table, used = ignored.arrays()
    held = flows[rng.random(flows.size) < 0.2]
    return head_matched, port_table, mode, table, used, len(ignored) > 0, held


def _case(seed: int):
    """Random candidate rows (a few flows shared by many rows) and two collectors."""
    rng = np.random.default_rng(seed)
    packets = int(rng.integers(1, 300))
    n = int(rng.integers(0, packets + 1))
    rows = np.sort(rng.choice(packets, n, replace=False)).astype(np.int64)
    flows = rng.integers(1, 2**63, max(1, int(rng.integers(1, 40))), dtype=np.uint64)
    hashes = flows[rng.integers(0, flows.size, n)]
    plen = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 2000, n)).astype(np.int32)
    flags = rng.integers(0, 256, n).astype(np.uint8)
    sport = rng.integers(0, 65536, n).astype(np.int64)
    dport = np.where(rng.random(n) < 0.3, rng.choice([80, 443], n),
                     rng.integers(0, 65536, n)).astype(np.int64)
    n_payload = int((plen > 0).sum())
    a = _collector_case(rng, flows, n_payload)
    b = _collector_case(rng, flows, n_payload)
    seq = rng.integers(0, 2**32, n)
    ack = rng.integers(0, 2**32, n)
    found = rng.random(n) < 0.9
    columns = (
        rng.integers(0, 65536, packets).astype(np.uint16),
        rng.integers(0, 65536, packets).astype(np.uint16),
        rng.integers(0, 4096, packets).astype(np.uint16),
        rng.integers(0, 256, packets).astype(np.uint8),
        rng.integers(0, 2**62, packets),
        rng.integers(0, 10**6, packets),
        rng.integers(0, 256, (packets, 16)).astype(np.uint8).view(IP_DTYPE).reshape(-1)
        .view(np.uint64).reshape(-1, 2),
        rng.integers(0, 256, (packets, 16)).astype(np.uint8).view(IP_DTYPE).reshape(-1)
        .view(np.uint64).reshape(-1, 2),
    )
    group_of, group_hash = _flow_groups_kernel(hashes)
    candidates = (rows, group_of, group_hash, seq, ack, found, plen, flags, sport, dport)
    return candidates, a, b, columns


def _alone(candidates, collector, columns):
    head_matched, port_table, mode, table, used, any_ignored, held = collector
    return _select_rows_kernel(*candidates, head_matched, port_table, mode != 0, table, used,
                               any_ignored, held, *columns)


@pytest.mark.parametrize("seed", range(80))
def test_pair_kernel_answers_as_two_selections(seed):
    candidates, a, b, columns = _case(seed)
    got = _select_pair_kernel(*candidates, *a, *b, *columns)
    mine, theirs = got[:19], got[19:]
    keep_b, handshake_b, fresh_b, row_code, state_b = theirs
    rows, group_of, group_hash, seq, ack, found, plen = candidates[:7]
    theirs = (keep_b, handshake_b, fresh_b) + _kept_columns(
        keep_b, row_code, np.uint8(2), state_b, rows, group_of, group_hash, seq, ack, found,
        plen, *columns)
    for got_one, want_one in ((mine, _alone(candidates, a, columns)),
                              (theirs, _alone(candidates, b, columns))):
        assert len(got_one) == len(want_one)
        for index, (g, w) in enumerate(zip(got_one, want_one, strict=True)):
            assert g.dtype == w.dtype, index
            assert np.array_equal(g, w), index


def test_pair_cases_reach_rows_both_keep_and_every_outcome():
    """The random cases keep rows for both collectors at once, and reach handshake, fresh
    and settled rows for each."""
    both = 0
    totals = np.zeros(4, dtype=np.int64)
    for seed in range(80):
        candidates, a, b, columns = _case(seed)
        want_a = _alone(candidates, a, columns)
        want_b = _alone(candidates, b, columns)
        both += np.intersect1d(want_a[0], want_b[0]).size
        for want in (want_a, want_b):
            totals += [want[0].size, want[1].size, want[2].size, int(want[9].sum())]
    assert both > 0 and (totals > 0).all()


def _run(name: str, batch_packets: int, pair: bool, monkeypatch, between=None):
    """HTTP and TLS analyzers fed each batch in turn (as the sensor does): their events'
    stream batches, as chunk lists, and their stream stats. `between(tls)`: called between
    the two feeds of each batch."""
    if not pair:
        monkeypatch.setattr(tcp_stream, "_next_collector", lambda packets, collector: None)
    http = HttpAnalyzer({}, "s1", "z1")
    tls = TlsAnalyzer({}, "s1", "z1")
    seen: list = []
    for analyzer in (http, tls):
        feed = analyzer.streams.feed_joined

        def spy(packets, feed=feed):
            batch = feed(packets)
            seen.append(batch.chunks)
            return batch

        analyzer.streams.feed_joined = spy
    with CaptureReader(shared_pcap(name), batch_packets=batch_packets) as reader:
        for raw in reader.batches():
            packets = decode(raw)
            http.process(packets)
            if between is not None:
                between(tls)
            tls.process(packets)
    seen.append(http.streams.flush() + tls.streams.flush())
    monkeypatch.undo()
    return seen, http.streams.stats, tls.streams.stats


@pytest.mark.parametrize("batch_packets", [97, 1000])
def test_paired_collectors_give_what_they_give_alone(batch_packets, monkeypatch):
    pairs = []
    kernel = tcp_stream._select_pair_kernel

    def counted(*args):
        pairs.append(1)
        return kernel(*args)

    want = _run("large/ndpi__1kxun.pcap", batch_packets, False, monkeypatch)
    monkeypatch.setattr(tcp_stream, "_select_pair_kernel", counted)
    got = _run("large/ndpi__1kxun.pcap", batch_packets, True, monkeypatch)
    assert pairs  # the pass was shared
    assert got == want


def test_a_change_between_the_feeds_is_seen(monkeypatch):
    """The second collector's flows change after the first one made its selection (a held
    flow released, else a released hash remembered): it selects again, as alone."""
    stale = []
    take = tcp_stream._pair_share

    def between(tls):
        if tls.streams.flows:
            tls.streams.release(next(iter(tls.streams.flows)))
        else:
            tls.streams._ignore(0x5EED)

    def counted(packets, rows, collector):
        memo = tcp_stream._last_candidates
        entry = None if memo is None else memo[7].get("pair")
        left = entry is not None and entry[0]() is collector
        share = take(packets, rows, collector)
        stale.append(left and share is None)
        return share

    want = _run("large/ndpi__1kxun.pcap", 97, False, monkeypatch, between)
    monkeypatch.setattr(tcp_stream, "_pair_share", counted)
    got = _run("large/ndpi__1kxun.pcap", 97, True, monkeypatch, between)
    assert any(stale)  # shares were left and not taken
    assert got == want
