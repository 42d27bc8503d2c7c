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

The rows are chosen by one compiled pass over the batch (`_prefilter_rows`). A prefix is
compared in the payload heads the HTTP/TLS collectors already scanned for the same batch
object (tcp_stream.known_heads), when there are any, instead of in the capture: by the
time SSH and logins run, those packets' cache lines are usually evicted
(tests/test_stream_prefilter_rows.py checks both ways against the numpy version).
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from pipeline.jit import njit
from sensors.packets import DecodedPackets
from sensors.tcp_stream import PREFIX_BYTES, StreamChunk, StreamCollector, known_heads

PROTO_TCP = 6
_FIELDS = tuple(f.name for f in fields(DecodedPackets))
_NO_HEADS = (np.zeros(0, dtype=np.int64), np.zeros((0, PREFIX_BYTES), dtype=np.uint8))


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


@njit
def _prefilter_rows(transport, src_port, dst_port, payload_len, payload_offset, data, marked,
                    pattern_bytes, pattern_stops, head_rows, heads):
    """PortPrefilter.rows in one pass over the batch (plus a second one only when a payload
    off the marked ports starts with a pattern): the TCP rows on a marked port, and the TCP
    rows sharing a port with a TCP row whose payload, not on a marked port, starts with one
    of the patterns (pattern k = pattern_bytes[pattern_stops[k-1]:pattern_stops[k]];
    _starts_with's test). Reads data only inside it.

    head_rows/heads: rows (ascending) and the first heads.shape[1] payload bytes of those of
    them with payload (tcp_stream's candidate heads, when already computed for this batch;
    empty otherwise): a pattern that fits in a row's head is compared there, not in the
    capture, whose line of that packet is likely out of the cache by now."""
    n = transport.shape[0]
    if pattern_stops.shape[0] == 0:
        # port test only (logins): without branches (TCP or not, marked or not, alternate
        # unpredictably row to row: the branchy loop was mostly mispredictions, ~4 ns a row)
        marks = np.empty(n, dtype=np.bool_)
        for i in range(n):
            marks[i] = (transport[i] == PROTO_TCP) & (marked[src_port[i]] | marked[dst_port[i]])
        return np.flatnonzero(marks)
    keep = np.zeros(n, dtype=np.bool_)
    hit_ports = np.zeros(65536, dtype=np.bool_)
    any_hit = False
    size = data.shape[0]
    at_row = 0  # head_rows[at_row] is the first of them >= the row being read
    at_head = 0  # heads[at_head]: the head of head_rows[at_row] (when it has payload)
    for i in range(n):
        if transport[i] != PROTO_TCP:
            continue
        if marked[src_port[i]] or marked[dst_port[i]]:
            keep[i] = True
            continue
        length = payload_len[i]
        if length <= 0:
            continue
        start = np.int64(payload_offset[i])
        while at_row < head_rows.shape[0] and head_rows[at_row] < i:  # the head of row i
            if payload_len[head_rows[at_row]] > 0:
                at_head += 1
            at_row += 1
        has_head = at_row < head_rows.shape[0] and head_rows[at_row] == i
        lo = 0
        for k in range(pattern_stops.shape[0]):
            width = pattern_stops[k] - lo
            if length >= width and start >= 0 and start + width <= size:
                match = True
                if has_head and width <= heads.shape[1]:  # the same bytes, in the head
                    for j in range(width):
                        if heads[at_head, j] != pattern_bytes[lo + j]:
                            match = False
                            break
                else:
                    for j in range(width):
                        if data[start + j] != pattern_bytes[lo + j]:
                            match = False
                            break
                if match:
                    hit_ports[src_port[i]] = True
                    hit_ports[dst_port[i]] = True
                    any_hit = True
                    break
            lo = pattern_stops[k]
    if any_hit:
        for i in range(n):
            if (transport[i] == PROTO_TCP and not keep[i]
                    and (hit_ports[src_port[i]] or hit_ports[dst_port[i]])):
                keep[i] = True
    return np.flatnonzero(keep)


class PortPrefilter:
    """The rows of a batch a StreamCollector on `ports` (and `prefixes`) can select."""

    def __init__(self, ports: set[int], prefixes: tuple[bytes, ...] = ()) -> None:
        self.marked = np.zeros(65536, dtype=bool)  # configured ports + ports of seen flows
        self.marked[np.asarray(sorted(ports), dtype=np.int64)] = True
        self.patterns = [np.frombuffer(p, dtype=np.uint8).copy() for p in prefixes if p]
        # the patterns back to back, for the kernel: pattern k is bytes[stops[k-1]:stops[k]]
        self._pattern_bytes = np.frombuffer(b"".join(p for p in prefixes if p),
                                            dtype=np.uint8).copy()
        self._pattern_stops = np.cumsum([len(p) for p in prefixes if p], dtype=np.int64)

    def rows(self, packets: DecodedPackets) -> np.ndarray:
        """Row indices (capture order) of the TCP rows the collector may need."""
        if len(packets) == 0:
            return np.zeros(0, dtype=np.int64)
        head_rows, heads = _NO_HEADS
        if self._pattern_stops.size:
            known = known_heads(packets)  # never computed here: only if already known
            if known is not None:
                head_rows, heads = known
        return _prefilter_rows(
            packets.transport, packets.src_port, packets.dst_port, packets.payload_len,
            packets.payload_offset, np.asarray(packets.data).reshape(-1).view(np.uint8),
            self.marked, self._pattern_bytes, self._pattern_stops, head_rows, heads)

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
