"""Per-flow columns of reassembled TCP streams, for analyzers that parse with kernels.

`StreamCollector.feed_joined` gives a `StreamBatch` (sensors.tcp_stream): every flow's bytes
in one buffer (`buf`, `start`/`length` (n, 2)) and the StreamChunk fields as columns, the
chunk objects made only when asked for. The HTTP and TLS analyzers read those columns and
never touch a StreamChunk for the flows they handle column-wise. This module holds what they
share on top of it:

- `stream_columns(source)`: a StreamBatch as is, or the same columns built from a list of
  StreamChunk objects (tests and tools hand the analyzers chunk lists);
- `event_times`: the time of the client packet carrying a given byte offset of each event's
  flow, one compiled walk over the batch's flat packet columns (was one Python call per
  event walking the chunk's list of tuples);
- `endpoint_columns_at`: the COMMON + ENDPOINTS event columns of rows of the batch, read from
  its columns (tcp_stream.endpoint_columns reads them from chunk objects, one per event).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pipeline.jit import njit
from sensors.packets import IP_DTYPE, plain_vlan
from sensors.tcp_stream import StreamChunk, tcp_endpoint_columns

TCP = 6


class StreamColumns(Protocol):
    """What the analyzers read of a StreamBatch (row i = the i-th flow's chunk)."""

    buf: np.ndarray  # uint8: direction d of row i is buf[start[i, d] : start[i, d] + length[i, d]]
    start: np.ndarray  # (n, 2) int64
    length: np.ndarray  # (n, 2) int64
    whole: np.ndarray  # (n, 2) int64: the lengths before a consumer's trim (>= length)
    client_ip: np.ndarray  # (n,) IP_DTYPE
    server_ip: np.ndarray
    client_port: np.ndarray  # (n,) int
    server_port: np.ndarray
    vlan: np.ndarray
    start_ts: np.ndarray  # (n,) int64
    last_ts: np.ndarray
    first_ts: np.ndarray  # (n, 2) int64
    ended: np.ndarray  # (n, 2) bool
    capped: np.ndarray
    gap: np.ndarray
    final: np.ndarray  # (n,) bool
    packet_start: np.ndarray  # (n,) int64: row i's packets are packet_*[start:stop]
    packet_stop: np.ndarray
    packet_ts: np.ndarray  # flat int64 columns of every row's (ts, direction, length) list
    packet_dir: np.ndarray
    packet_len: np.ndarray

    @property
    def keys(self) -> list: ...

    @property
    def chunks(self) -> list[StreamChunk]: ...

    def chunk(self, index: int) -> StreamChunk: ...

    def __len__(self) -> int: ...


class ChunkColumns:
    """StreamColumns of a list of StreamChunk objects (tests, tools, the plain `feed`)."""

    def __init__(self, chunks: list[StreamChunk]) -> None:
        n = len(chunks)
        self.chunks = chunks
        self.keys = [c.key for c in chunks]
        parts = [part for c in chunks for part in c.data]
        sizes = np.array([len(p) for p in parts], dtype=np.int64).reshape(n, 2)
        self.length = sizes
        self.whole = sizes  # chunks carry no trim: their bytes are whole
        self.start = (np.cumsum(sizes.reshape(-1)) - sizes.reshape(-1)).reshape(n, 2)
        # writable like StreamBatch.buf (the analyzers take a read-only view of either)
        self.buf = np.frombuffer(bytearray(b"".join(parts)), dtype=np.uint8)
        self.client_ip = np.array([c.client_ip for c in chunks], dtype=IP_DTYPE).reshape(n)
        self.server_ip = np.array([c.server_ip for c in chunks], dtype=IP_DTYPE).reshape(n)
        for name in ("client_port", "server_port", "vlan", "start_ts", "last_ts"):
            setattr(self, name, np.array([getattr(c, name) for c in chunks],
                                         dtype=np.int64).reshape(n))
        self.final = np.array([c.final for c in chunks], dtype=bool).reshape(n)
        self.first_ts = np.array([c.first_ts for c in chunks], dtype=np.int64).reshape(n, 2)
        for name in ("ended", "capped", "gap"):
            setattr(self, name, np.array([getattr(c, name) for c in chunks],
                                         dtype=bool).reshape(n, 2))
        counts = np.array([len(c.packets) for c in chunks], dtype=np.int64).reshape(n)
        self.packet_stop = np.cumsum(counts)
        self.packet_start = self.packet_stop - counts
        flat = np.array([p for c in chunks for p in c.packets], dtype=np.int64).reshape(-1, 3)
        self.packet_ts, self.packet_dir, self.packet_len = (flat[:, i].copy() for i in range(3))

    def chunk(self, index: int) -> StreamChunk:
        return self.chunks[index]

    def __len__(self) -> int:
        return len(self.chunks)


def stream_columns(source: StreamColumns | list[StreamChunk]) -> StreamColumns:
    """A StreamBatch as is; a list of chunks as ChunkColumns."""
    return ChunkColumns(source) if isinstance(source, list) else source


def read_only(buf: np.ndarray) -> np.ndarray:
    """A read-only view: numba compiles a kernel once per array type, and readonly is part of
    the type, so every caller hands the kernels the same kind of buffer."""
    view = buf.view()
    view.flags.writeable = False
    return view


def chunks_at(batch: StreamColumns, rows: list[int]) -> list[StreamChunk]:
    """The chunk objects of `rows`: one by one when they are few (each is built on its own),
    else the batch's whole list (built once)."""
    if len(rows) <= 16:
        return [batch.chunk(i) for i in rows]
    chunks = batch.chunks
    return [chunks[i] for i in rows]


@njit
def _offset_times(packet_ts: np.ndarray, packet_dir: np.ndarray, packet_len: np.ndarray,
                  packet_start: np.ndarray, packet_stop: np.ndarray, first_ts: np.ndarray,
                  start_ts: np.ndarray, last_ts: np.ndarray, flows: np.ndarray,
                  offset: np.ndarray) -> np.ndarray:
    """Per event e of row f = flows[e]: the time of the client packet (direction 0) of the
    row's packets (packet_start[f]..packet_stop[f]-1, clipped to the flat columns) whose bytes
    hold client byte `offset[e]`, counting the listed packets' lengths in list order; past
    the list: the last client packet's time if the list covered more bytes, else
    last_ts[f]; no client packet listed: first_ts[f, 0] (start_ts[f] when < 0) if the list
    covered more bytes, else last_ts[f]. The rows' columns are read here, not gathered per
    event by numpy first (eight passes and arrays a batch)."""
    size = packet_ts.shape[0]
    out = np.empty(offset.size, np.int64)
    for e in range(offset.size):
        f = flows[e]
        if f < 0 or f >= start_ts.shape[0]:
            raise IndexError("event_times: a flow outside the batch")
        lo = min(max(packet_start[f], 0), size)
        hi = min(max(packet_stop[f], lo), size)
        seen = 0
        last = first_ts[f, 0] if first_ts[f, 0] >= 0 else start_ts[f]
        found = False
        for p in range(lo, hi):
            if packet_dir[p] != 0:
                continue
            last = packet_ts[p]
            if offset[e] < seen + packet_len[p]:
                out[e] = packet_ts[p]
                found = True
                break
            seen += packet_len[p]
        if not found:
            out[e] = last if seen > offset[e] else last_ts[f]
    return out


def _int64(column: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(column, dtype=np.int64)


def event_times(batch: StreamColumns, flows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """int64 time of each event: the client packet that carried byte offsets[e] of flow
    flows[e] (http._offset_time's rule for each event, over the batch's packet columns)."""
    n = len(batch)
    return _offset_times(
        _int64(batch.packet_ts), _int64(batch.packet_dir), _int64(batch.packet_len),
        _int64(batch.packet_start).reshape(n), _int64(batch.packet_stop).reshape(n),
        _int64(batch.first_ts).reshape(n, 2), _int64(batch.start_ts).reshape(n),
        _int64(batch.last_ts).reshape(n), _int64(flows), _int64(offsets))


def endpoint_columns_at(batch: StreamColumns, rows: np.ndarray, timestamps: np.ndarray,
                        observer_name: str, ingress_zone: str) -> dict[str, np.ndarray]:
    """The COMMON + ENDPOINTS event columns of one event per entry of `rows` (client =
    source; a row may repeat, e.g. pipelined HTTP): tcp_stream.endpoint_columns, from the
    batch's columns."""
    n = rows.shape[0]
    return tcp_endpoint_columns(
        timestamps, np.ascontiguousarray(batch.client_ip[rows]).view(IP_DTYPE).reshape(n),
        np.ascontiguousarray(batch.server_ip[rows]).view(IP_DTYPE).reshape(n),
        batch.client_port[rows].astype(np.uint16), batch.server_port[rows].astype(np.uint16),
        plain_vlan(batch.vlan[rows]), observer_name, ingress_zone)
