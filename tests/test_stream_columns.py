"""sensors/stream_columns.py: the per-flow columns the HTTP and TLS analyzers read.

- event_times (compiled walk over the flat packet columns) against http._offset_time (the
  per-chunk walk over its list of tuples), on random packet lists and offsets;
- endpoint_columns_at (from columns) against tcp_stream.endpoint_columns (from chunk
  objects), every column, rows repeated and out of order;
- a collector's StreamBatch (feed_joined) against ChunkColumns of what feed() returns for
  the same packets of real captures: the same columns.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_pcap
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import load_config
from sensors.decode import decode
from sensors.http import DEFAULT_PORTS, METHODS, _offset_time
from sensors.pcap_reader import CaptureReader
from sensors.stream_columns import ChunkColumns, endpoint_columns_at, event_times
from sensors.tcp_stream import StreamChunk, StreamCollector, endpoint_columns, prefix_predicate
from sensors.tls import needed_lengths, tls_client_predicate

packet = st.tuples(st.integers(0, 10**12), st.integers(0, 1), st.integers(0, 1500))
flow = st.fixed_dictionaries({
    "packets": st.lists(packet, max_size=8),
    "first_ts": st.integers(-1, 10**12),
    "start_ts": st.integers(0, 10**12),
    "last_ts": st.integers(0, 10**12),
    "ip": st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
    "ports": st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
    "vlan": st.integers(0, 4095),
})


def make_chunk(f: dict) -> StreamChunk:
    key = (f["vlan"], f["ip"][0], f["ports"][0], f["ip"][1], f["ports"][1])
    return StreamChunk(key=key, client_ip=f["ip"][0], server_ip=f["ip"][1],
                       client_port=f["ports"][0], server_port=f["ports"][1], vlan=f["vlan"],
                       client_by="syn", start_ts=f["start_ts"], last_ts=f["last_ts"],
                       first_ts=(f["first_ts"], -1), data=(b"", b""), ended=(True, True),
                       capped=(False, False), gap=(False, False), packets=f["packets"],
                       final=True, reason="fin")


@settings(max_examples=200, deadline=None)
@given(st.lists(flow, min_size=1, max_size=6), st.data())
def test_event_times_equal_the_per_chunk_walk(flows, data):
    chunks = [make_chunk(f) for f in flows]
    events = data.draw(st.lists(st.tuples(st.integers(0, len(chunks) - 1),
                                          st.integers(0, 5000)), max_size=20))
    rows = np.array([e[0] for e in events], dtype=np.int64)
    offsets = np.array([e[1] for e in events], dtype=np.int64)
    got = event_times(ChunkColumns(chunks), rows, offsets).tolist()
    assert got == [_offset_time(chunks[r], o) for r, o in events]


@settings(max_examples=100, deadline=None)
@given(st.lists(flow, min_size=1, max_size=6), st.data())
def test_endpoint_columns_equal_those_of_chunk_objects(flows, data):
    chunks = [make_chunk(f) for f in flows]
    rows = data.draw(st.lists(st.integers(0, len(chunks) - 1), max_size=12))
    times = data.draw(st.lists(st.integers(0, 10**15), min_size=len(rows),
                               max_size=len(rows)))
    got = endpoint_columns_at(ChunkColumns(chunks), np.array(rows, dtype=np.int64),
                              np.array(times, dtype=np.int64), "obs", "zone")
    want = endpoint_columns([chunks[r] for r in rows], times, "obs", "zone")
    assert list(got) == list(want)
    for name, column in want.items():
        assert got[name].dtype == column.dtype and got[name].shape == column.shape, name
        assert got[name].tolist() == column.tolist(), name


COLUMNS = ("start", "length", "client_ip", "server_ip", "client_port", "server_port", "vlan",
           "start_ts", "last_ts", "first_ts", "ended", "capped", "gap", "final",
           "packet_start", "packet_stop", "packet_ts", "packet_dir", "packet_len")


def collectors() -> list[tuple[StreamCollector, StreamCollector]]:
    """(feed, feed_joined) collector pairs with the HTTP and the TLS analyzers' settings."""
    http = dict(ports=set(DEFAULT_PORTS), max_bytes_per_dir=16384, max_flows=20000,
                idle_timeout_s=300, client_predicate=prefix_predicate(m + b" " for m in METHODS))
    tls = dict(ports=set(), max_bytes_per_dir=16384, max_flows=20000, idle_timeout_s=300,
               client_predicate=tls_client_predicate, max_packets_meta=0, trim=needed_lengths)
    return [(StreamCollector(**kw), StreamCollector(**kw)) for kw in (http, tls)]


def assert_same_columns(chunks: list[StreamChunk], batch) -> None:
    want = ChunkColumns(chunks)
    assert len(batch) == len(chunks)
    for name in COLUMNS:
        got, expected = np.asarray(getattr(batch, name)), getattr(want, name)
        assert got.shape == expected.shape and got.tolist() == expected.tolist(), name
    for i in range(len(chunks)):  # each direction's bytes, through start/length
        for d in range(2):
            a, n = int(batch.start[i, d]), int(batch.length[i, d])
            assert batch.buf[a : a + n].tobytes() == chunks[i].data[d]
    assert batch.keys == want.keys


@pytest.mark.parametrize("name", ["large/ndpi__1kxun.pcap", "benign/zeek__tls1.2.pcap"])
def test_joined_batches_hold_the_columns_of_the_chunks(name):
    path = shared_pcap(name)
    batch_packets = int(load_config(None)["sensor"].get("batch_packets", 65536))
    pairs = collectors()
    with CaptureReader(path, batch_packets=min(batch_packets, 2000)) as reader:
        for raw in reader.batches():
            packets = decode(raw)
            for plain, joined in pairs:
                assert_same_columns(plain.feed(packets), joined.feed_joined(packets))
    for plain, joined in pairs:
        assert_same_columns(plain.flush(), joined.flush_joined())
