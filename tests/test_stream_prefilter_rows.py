"""PortPrefilter.rows as one compiled pass (sensors/stream_prefilter.py, task SA, issue #3):
the same rows as the former numpy version, whether the patterns are compared in the
capture or in the payload heads a collector already scanned for the batch (tcp_stream's
candidate memo); and prefix_predicate's kernel against a per-row reference."""

from __future__ import annotations

import numpy as np
import pytest

import sensors.tcp_stream as tcp_stream
from sensors.packets import IP_DTYPE
from sensors.stream_prefilter import PortPrefilter, _starts_with
from sensors.tcp_stream import PREFIX_BYTES, known_heads, prefix_predicate


class _Batch:
    """The DecodedPackets columns the prefilter and the candidate scan read."""

    def __init__(self, **columns: np.ndarray) -> None:
        self.__dict__.update(columns)

    def __len__(self) -> int:
        return int(self.transport.shape[0])


def _rows_reference(prefilter: PortPrefilter, packets: _Batch) -> np.ndarray:
    """The numpy version PortPrefilter.rows replaced (HEAD before task SA)."""
    tcp = np.flatnonzero(packets.transport == 6)
    if tcp.size == 0:
        return tcp
    src_port = packets.src_port[tcp]
    dst_port = packets.dst_port[tcp]
    on_port = prefilter.marked[src_port] | prefilter.marked[dst_port]
    if prefilter.patterns:
        candidates = np.flatnonzero((packets.payload_len[tcp] > 0) & ~on_port)
        if candidates.size:
            rows = tcp[candidates]
            data = np.asarray(packets.data).reshape(-1).view(np.uint8)
            offset = packets.payload_offset[rows].astype(np.int64)
            length = packets.payload_len[rows].astype(np.int64)
            hit = np.zeros(candidates.size, dtype=bool)
            for pattern in prefilter.patterns:
                hit |= _starts_with(data, offset, length, pattern)
            if hit.any():
                ports = np.zeros(65536, dtype=bool)
                ports[src_port[candidates[hit]]] = True
                ports[dst_port[candidates[hit]]] = True
                on_port |= ports[src_port] | ports[dst_port]
    return tcp[on_port]


def _batch(seed: int, n: int) -> _Batch:
    """Random rows: TCP or not (some TCP rows without an IP version, so no candidate head),
    ports from a few values, payloads that start with a pattern or a near miss, offsets and
    lengths also past the end of the capture."""
    rng = np.random.default_rng(seed)
    data = bytearray(rng.integers(0, 256, 64 * n + 64).astype(np.uint8).tobytes())
    offset = rng.integers(0, len(data) + 8, n).astype(np.int64)
    for at in offset[rng.random(n) < 0.4].tolist():
        word = [b"SSH-2.0-OpenSSH_9", b"SSH-1.99", b"SSH", b"SSX-", b"USER x"][rng.integers(5)]
        data[at : at + len(word)] = word[: max(len(data) - at, 0)]
    return _Batch(
        data=np.frombuffer(bytes(data), dtype=np.uint8),
        transport=rng.choice(np.array([6, 6, 6, 17, 0], dtype=np.uint8), n),
        ip_version=rng.choice(np.array([4, 6, 4, 0], dtype=np.uint8), n),
        src_port=rng.choice(np.array([22, 2222, 80, 41000, 5000, 21], dtype=np.uint16), n),
        dst_port=rng.choice(np.array([22, 2222, 80, 41001, 5001, 110], dtype=np.uint16), n),
        payload_len=rng.choice(np.array([0, 1, 3, 4, 8, 9, 20, 400], dtype=np.int32), n),
        payload_offset=offset,
        tcp_flags=rng.integers(0, 256, n).astype(np.uint8),
        vlan=np.zeros(n, dtype=np.uint16),
        src_ip=rng.integers(0, 256, (n, 16)).astype(np.uint8).view(IP_DTYPE).reshape(-1),
        dst_ip=rng.integers(0, 256, (n, 16)).astype(np.uint8).view(IP_DTYPE).reshape(-1),
        ts_ns=np.arange(n, dtype=np.int64),
    )


PREFILTERS = [
    lambda: PortPrefilter({22}, (b"SSH-",)),
    lambda: PortPrefilter({2222}, (b"SSH-", b"USER ")),
    lambda: PortPrefilter({22}, (b"SSH-2.0-OpenSSH",)),  # longer than a head: in the capture
    lambda: PortPrefilter({21, 110}),
    lambda: PortPrefilter({9}, (b"SSH-1.99", b"SSX-")),
]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("make", PREFILTERS)
def test_rows_equal_the_numpy_version_with_and_without_candidate_heads(seed, make):
    packets = _batch(seed, 40 + 37 * seed)
    expected = _rows_reference(make(), packets)
    assert known_heads(packets) is None
    without = make().rows(packets)
    tcp_stream._candidates(packets)  # what the HTTP/TLS collectors leave for the batch
    assert known_heads(packets) is not None
    with_heads = make().rows(packets)
    assert without.dtype == np.int64 and with_heads.dtype == np.int64
    np.testing.assert_array_equal(without, expected)
    np.testing.assert_array_equal(with_heads, expected)


def test_heads_are_read_for_the_rows_they_belong_to():
    """A head of another row must not decide: SSH- only in the capture of row 1, while the
    memo holds (wrongly placed) heads would say otherwise if rows were mismatched."""
    packets = _batch(3, 60)
    tcp_stream._candidates(packets)
    rows, heads = known_heads(packets)
    # the candidate heads are the payload heads of the candidate rows with payload, in order
    with_payload = rows[packets.payload_len[rows] > 0]
    assert heads.shape == (with_payload.size, PREFIX_BYTES)
    for row, head in zip(with_payload.tolist(), heads, strict=True):
        at, size = int(packets.payload_offset[row]), int(packets.payload_len[row])
        want = packets.data[at : at + min(size, PREFIX_BYTES)].tobytes()
        assert head[: len(want)].tobytes() == want


def test_empty_batch():
    packets = _batch(0, 0)
    assert PortPrefilter({22}, (b"SSH-",)).rows(packets).size == 0


@pytest.mark.parametrize("width", [3, 4, 8, 10])
@pytest.mark.parametrize("seed", range(4))
def test_prefix_predicate_kernel_against_per_row_bytes(width, seed):
    rng = np.random.default_rng(seed)
    patterns = [b"GET ", b"POST ", b"OPTIONS ", b"PROPFIND ", b"SSH-", b"\0\0"]
    n = 300
    head = rng.integers(0, 256, (n, width)).astype(np.uint8)
    for i in range(0, n, 3):  # plant patterns, whole or cut
        p = patterns[rng.integers(len(patterns))][: int(rng.integers(1, 10))]
        size = min(len(p), width)
        head[i, :size] = np.frombuffer(p[:size], dtype=np.uint8)
    payload_len = rng.integers(0, 12, n).astype(np.int32)
    got = prefix_predicate(patterns)(head, payload_len)
    shown = [p for p in patterns if 0 < len(p) <= PREFIX_BYTES]
    want = [any(len(p) <= width and payload_len[i] >= len(p)
                and head[i, : len(p)].tobytes() == p for p in shown) for i in range(n)]
    assert got.dtype == bool and got.tolist() == want
