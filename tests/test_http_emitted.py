"""HTTP analyzer: flows already emitted in part are found without a key tuple per row of
the batch (keys_at, _emitted_rows), and the keys it makes are StreamBatch's own."""

from __future__ import annotations

import numpy as np
from conftest import shared_pcap
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.decode import decode
from sensors.http import HttpAnalyzer, _emitted_rows, keys_at
from sensors.http_kernel import rows_with_ports
from sensors.pcap_reader import CaptureReader
from sensors.stream_columns import ChunkColumns


def _joined_batches(name: str, batch_packets: int = 500) -> list:
    analyzer = HttpAnalyzer({}, "s1", "z1")
    out = []
    with CaptureReader(shared_pcap(name), batch_packets=batch_packets) as reader:
        for raw in reader.batches():
            out.append(analyzer.streams.feed_joined(decode(raw)))
    out.append(analyzer.streams.flush_joined())
    return [b for b in out if len(b)]


def test_keys_at_are_the_batch_keys():
    batches = _joined_batches("large/ndpi__1kxun.pcap")
    assert batches
    for batch in batches:
        rows = np.arange(len(batch))[::-1].copy()
        assert keys_at(batch, rows) == [batch.keys[i] for i in rows.tolist()]
        chunks = ChunkColumns(batch.chunks)
        assert keys_at(chunks, rows) == [chunks.keys[i] for i in rows.tolist()]


def test_emitted_rows_are_the_rows_whose_key_was_emitted():
    batch = max(_joined_batches("large/ndpi__1kxun.pcap"), key=len)
    keys = batch.keys
    n = len(batch)
    assert n >= 4
    vlan, cip, cport, sip, sport = keys[1]
    emitted = {keys[1]: 1, keys[n - 1]: 2,
               (vlan, cip, cport, sip, sport + 1): 1,  # same client port, another flow
               (vlan + 7, b"\0" * 16, 1, b"\0" * 16, 2): 1}  # nothing of this batch
    mask = np.ones(n, dtype=bool)
    mask[n - 1] = False  # only rows of the mask count
    want = [i for i in range(n) if mask[i] and keys[i] in emitted]
    assert _emitted_rows(batch, mask, emitted).tolist() == want
    assert _emitted_rows(batch, mask, {(0, b"", -5, b"", 0): 1}).tolist() == []


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.booleans()), max_size=60),
       st.lists(st.integers(0, 12), max_size=8))
def test_rows_with_ports_equals_isin(rows, ports):
    """rows_with_ports (one pass, binary search in the sorted ports) against numpy's isin."""
    column = np.array([port for port, _ in rows], dtype=np.int64)
    mask = np.array([keep for _, keep in rows], dtype=bool)
    wanted = np.asarray(ports, dtype=np.int64)
    assert np.array_equal(rows_with_ports(column, mask, wanted),
                          np.flatnonzero(mask & np.isin(column, wanted)))
