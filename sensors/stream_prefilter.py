"""Hand a StreamCollector only the rows it can need, chosen by port and first payload bytes.

Why: StreamCollector.feed (sensors/tcp_stream.py) hashes every TCP row of a batch to find
the segments of the flows it holds; an analyzer of a rare protocol (SSH, clear-text logins)
then pays that for every packet of the link (~50-80 ns per packet of the generated mix,
for no event at all). Every flow such a collector opens or holds is found by a port:
- it is opened by a payload segment on a configured port, or (SSH on any port) whose first
  bytes match a client prefix ("SSH-"); the other segments of that flow share its ports;
- it stays held, or remembered as released/closed, only after the collector returned a
  chunk for it (a new flow is "changed" in the batch that opens it), so marking one of its
  ports when that chunk is seen catches all its later segments.
So the rows on a configured port, on a port of a flow seen in a chunk, or sharing a port
with a row whose payload starts with a client prefix are a superset of what the collector
selects from the whole batch, and feeding it only those gives the same chunks (the clock,
which the collector takes from the batch, is advanced from the whole batch first).
tests/test_ssh.py and tests/test_logins.py compare the events with and without it.

Marked ports are never forgotten (a 65536-entry table): the superset only grows, so the
worst case is today's cost, never a missed segment.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from pipeline.jit import njit
from sensors.packets import DecodedPackets
from sensors.tcp_stream import StreamChunk, StreamCollector

PROTO_TCP = 6
_FIELDS = tuple(f.name for f in fields(DecodedPackets))


@njit
def _starts_with(data: np.ndarray, offset: np.ndarray, length: np.ndarray,
                 pattern: np.ndarray) -> np.ndarray:
    """Per row: its payload (data[offset:offset+length]) starts with `pattern`. Reads only
    inside the payload and inside `data`."""
    n = offset.shape[0]
    width = pattern.shape[0]
    size = data.shape[0]
    out = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        start = offset[i]
        if length[i] < width or start < 0 or start + width > size:
            continue
        match = True
        for j in range(width):
            if data[start + j] != pattern[j]:
                match = False
                break
        out[i] = match
    return out


class PortPrefilter:
    """The rows of a batch a StreamCollector on `ports` (and `prefixes`) can select."""

    def __init__(self, ports: set[int], prefixes: tuple[bytes, ...] = ()) -> None:
        self.marked = np.zeros(65536, dtype=bool)  # configured ports + ports of seen flows
        self.marked[np.asarray(sorted(ports), dtype=np.int64)] = True
        self.patterns = [np.frombuffer(p, dtype=np.uint8).copy() for p in prefixes if p]

    def rows(self, packets: DecodedPackets) -> np.ndarray:
        """Row indices (capture order) of the TCP rows the collector may need."""
        tcp = np.flatnonzero(packets.transport == PROTO_TCP)
        if tcp.size == 0:
            return tcp
        src_port = packets.src_port[tcp]
        dst_port = packets.dst_port[tcp]
        on_port = self.marked[src_port] | self.marked[dst_port]
        if self.patterns:
            candidates = np.flatnonzero((packets.payload_len[tcp] > 0) & ~on_port)
            if candidates.size:
                rows = tcp[candidates]
                data = np.asarray(packets.data).reshape(-1).view(np.uint8)
                offset = packets.payload_offset[rows].astype(np.int64)
                length = packets.payload_len[rows].astype(np.int64)
                hit = np.zeros(candidates.size, dtype=bool)
                for pattern in self.patterns:
                    hit |= _starts_with(data, offset, length, pattern)
                if hit.any():
                    # every row of the flows these segments may open (same ports), this batch
                    ports = np.zeros(65536, dtype=bool)
                    ports[src_port[candidates[hit]]] = True
                    ports[dst_port[candidates[hit]]] = True
                    on_port |= ports[src_port] | ports[dst_port]
        return tcp[on_port]

    def note(self, chunks: list[StreamChunk]) -> None:
        """Mark the server port of every flow the collector returned (held or released)."""
        for chunk in chunks:
            self.marked[chunk.server_port] = True

    def feed(self, collector: StreamCollector, packets: DecodedPackets) -> list[StreamChunk]:
        """collector.feed(packets), giving it only the rows it can need."""
        if len(packets):
            collector.clock = max(collector.clock, int(packets.ts_ns.max()))
        rows = self.rows(packets)
        if rows.size < len(packets):
            packets = subset(packets, rows)
        chunks = collector.feed(packets)
        self.note(chunks)
        return chunks


def subset(packets: DecodedPackets, rows: np.ndarray) -> DecodedPackets:
    """The same batch restricted to `rows`: every per-packet column indexed, the byte
    buffer (offsets unchanged) and anything else shared."""
    n = len(packets)
    values = {}
    for name in _FIELDS:
        value = getattr(packets, name)
        per_row = (name != "data" and isinstance(value, np.ndarray) and value.ndim >= 1
                   and value.shape[0] == n)
        values[name] = value[rows] if per_row else value
    return DecodedPackets(**values)
