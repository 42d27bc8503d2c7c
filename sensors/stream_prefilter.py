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

When those candidate rows are known, only they are read (`_candidate_rows`): a collector
selects nothing but candidate rows (TCP with an IP version, payload or SYN/FIN/RST) of what
it is fed, so the kept candidate rows give it the same chunks, and the pass skips the other
half of the batch (pure ACKs, UDP, ...). The candidate rows are remembered here per batch
object (`_batch_candidates`) because the first prefiltered collector's feed replaces
tcp_stream's memo with its own subset's: the next prefilter (logins after SSH) reuses them.
"""

from __future__ import annotations

import weakref
from dataclasses import fields

import numpy as np

from pipeline.jit import njit
from sensors.packets import DecodedPackets
from sensors.tcp_stream import (
    PREFIX_BYTES,
    StreamChunk,
    StreamCollector,
    batch_clock,
    known_heads,
)

PROTO_TCP = 6
_FIELDS = tuple(f.name for f in fields(DecodedPackets))
_NO_HEADS = (np.zeros(0, dtype=np.int64), np.zeros((0, PREFIX_BYTES), dtype=np.uint8))
_HEAD_WORD = 8  # a head read as one little-endian uint64 (PREFIX_BYTES == 8)


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


@njit
def _port_bits(rows, src_port, dst_port, table, marked):
    """table[src_port] | table[dst_port] of every row of `rows` (uint8: bit k says "on a
    port marked by prefilter k", _SharedPass). marked: a bit per port, set where table is
    not 0 (1024 words): most rows are on no marked port, and its 8 KB come out of memory
    faster than the 64 KB table's lines (both out of the cache by now)."""
    n = rows.shape[0]
    bits = np.empty(n, dtype=np.uint8)
    for i in range(n):
        r = rows[i]
        a = src_port[r]
        b = dst_port[r]
        hit = ((marked[a >> 6] >> np.uint64(a & 63))
               | (marked[b >> 6] >> np.uint64(b & 63))) & np.uint64(1)
        bits[i] = (table[a] | table[b]) if hit else 0
    return bits


def _marked_words(table: np.ndarray) -> np.ndarray:
    """_port_bits' `marked` of `table`."""
    return np.packbits(table != 0, bitorder="little").view(np.uint64)


@njit
def _candidate_rows(rows, bits, bit, src_port, dst_port, payload_len, payload_offset, size,
                    pattern_words, pattern_masks, pattern_widths, pattern_bytes,
                    pattern_stops, data, head_words):
    """PortPrefilter.rows over the candidate `rows` only (tcp_stream's, ascending; every one
    TCP): those on a marked port (bit `bit` of bits[i], _port_bits), and those sharing a
    port with one whose payload, not on a marked port, starts with a pattern (pattern k =
    pattern_bytes[pattern_stops[k-1]:pattern_stops[k]], pattern_widths[k] long;
    _starts_with's bounds).

    head_words[h]: the first 8 payload bytes (little-endian) of the h-th of the rows with
    payload. A pattern's first bytes are looked for in those words alone (masked compare, a
    branch that is almost never taken) and only a word that matches is traced to its row
    (its port, length and bounds; the rest of a pattern longer than 8 bytes in `data`): a
    test per row for the rare hit was ~10x slower (unpredictable payload/port branches)."""
    n = rows.shape[0]
    keep = np.empty(n, dtype=np.bool_)
    for i in range(n):
        keep[i] = (bits[i] >> bit) & 1
    hit_ports = np.zeros(0, dtype=np.bool_)  # allocated at the first hit
    with_payload = np.zeros(0, dtype=np.int64)  # index in rows of each head (at a hit)
    lo = 0
    for k in range(pattern_widths.shape[0]):
        width = pattern_widths[k]
        word = pattern_words[k]
        mask = pattern_masks[k]
        for h in range(head_words.shape[0]):
            if (head_words[h] & mask) != word:
                continue
            if with_payload.shape[0] == 0:
                with_payload = np.empty(head_words.shape[0] + 1, dtype=np.int64)
                at = 0
                for i in range(n):
                    with_payload[at] = i
                    at += payload_len[rows[i]] > 0
            i = with_payload[h]
            r = rows[i]
            start = np.int64(payload_offset[r])
            if keep[i] or payload_len[r] < width or start < 0 or start + width > size:
                continue
            match = True
            for j in range(_HEAD_WORD, width):
                if data[start + j] != pattern_bytes[lo + j]:
                    match = False
                    break
            if match:
                if hit_ports.shape[0] == 0:
                    hit_ports = np.zeros(65536, dtype=np.bool_)
                hit_ports[src_port[r]] = True
                hit_ports[dst_port[r]] = True
        lo = pattern_stops[k]
    if hit_ports.shape[0]:
        for i in range(n):
            r = rows[i]
            keep[i] |= hit_ports[src_port[r]] | hit_ports[dst_port[r]]
    count = 0
    for i in range(n):
        count += keep[i]
    if count == 0:  # the usual case: no read of the rows (out of the cache by now)
        return np.empty(0, dtype=np.int64)
    out = np.empty(count + 1, dtype=np.int64)  # +1: the slot written after the last kept
    at = 0
    for i in range(n):  # without a branch: kept or not alternates unpredictably
        out[at] = rows[i]
        at += keep[i]
    return out[:count]


class PortPrefilter:
    """The rows of a batch a StreamCollector on `ports` (and `prefixes`) can select."""

    def __init__(self, ports: set[int], prefixes: tuple[bytes, ...] = ()) -> None:
        self.marked = np.zeros(65536, dtype=bool)  # configured ports + ports of seen flows
        self.marked[np.asarray(sorted(ports), dtype=np.int64)] = True
        self.version = 0  # + 1 whenever note() marks a new port (_SharedPass's port table)
        self._words_of: tuple[int, np.ndarray] = (-1, np.zeros(0, dtype=np.uint64))
        _shared.created(self)
        self.patterns = [np.frombuffer(p, dtype=np.uint8).copy() for p in prefixes if p]
        # the patterns back to back, for the kernel: pattern k is bytes[stops[k-1]:stops[k]]
        self._pattern_bytes = np.frombuffer(b"".join(p for p in prefixes if p),
                                            dtype=np.uint8).copy()
        self._pattern_stops = np.cumsum([len(p) for p in prefixes if p], dtype=np.int64)
        # the same patterns as (word, mask) pairs on a head read as one little-endian word
        # (only the first 8 bytes of a longer one: the kernel compares those in the capture)
        self._pattern_widths = np.array([len(p) for p in prefixes if p], dtype=np.int64)
        self._pattern_words = np.array(
            [int.from_bytes(p[:_HEAD_WORD], "little") for p in prefixes if p], dtype=np.uint64)
        self._pattern_masks = np.array(
            [(1 << (8 * min(len(p), _HEAD_WORD))) - 1 for p in prefixes if p], dtype=np.uint64)

    def rows(self, packets: DecodedPackets) -> np.ndarray:
        """Row indices (capture order) of the TCP rows the collector may need."""
        if len(packets) == 0:
            return np.zeros(0, dtype=np.int64)
        known = _batch_candidates(packets)  # never computed here: only if already known
        if known is not None and known[1].shape[1] == _HEAD_WORD:
            head_rows, heads = known
            bits, bit = _shared.bits(self, packets, head_rows)
            data = np.asarray(packets.data).reshape(-1).view(np.uint8)
            return _candidate_rows(
                head_rows, bits, bit, packets.src_port, packets.dst_port, packets.payload_len,
                packets.payload_offset, data.shape[0], self._pattern_words,
                self._pattern_masks, self._pattern_widths, self._pattern_bytes,
                self._pattern_stops, data, np.ascontiguousarray(heads).view(np.uint64)[:, 0])
        head_rows, heads = _NO_HEADS
        if self._pattern_stops.size and known is not None:
            head_rows, heads = known
        return _prefilter_rows(
            packets.transport, packets.src_port, packets.dst_port, packets.payload_len,
            packets.payload_offset, np.asarray(packets.data).reshape(-1).view(np.uint8),
            self.marked, self._pattern_bytes, self._pattern_stops, head_rows, heads)

    def marked_words(self) -> np.ndarray:
        """_port_bits' bit per port of `marked` (made again only after note() marks one)."""
        if self._words_of[0] != self.version:
            self._words_of = (self.version, _marked_words(self.marked.view(np.uint8)))
        return self._words_of[1]

    def note(self, chunks: list[StreamChunk]) -> None:
        """Mark the server port of every flow the collector returned (held or released)."""
        for chunk in chunks:
            if not self.marked[chunk.server_port]:
                self.marked[chunk.server_port] = True
                self.version += 1

    def feed(self, collector: StreamCollector, packets: DecodedPackets) -> list[StreamChunk]:
        """collector.feed(packets), giving it only the rows it can need."""
        if len(packets):
            collector.clock = max(collector.clock, batch_clock(packets))
        rows = self.rows(packets)
        if rows.size == 0 and collector.held_flows == 0:
            # nothing to select, nothing held (so nothing to expire, evict or report): feed
            # would only advance the clock, done above (~60 us of Python a batch saved)
            return []
        if rows.size < len(packets):
            packets = subset(packets, rows)
        chunks = collector.feed(packets)
        self.note(chunks)
        return chunks


class _SharedPass:
    """One port pass over a batch's candidate rows for every prefilter that reads it (SSH and
    logins in the default order): the two passes each loaded the same row indices and port
    columns, out of the cache by then (~0.1 ms a batch each). Bit k of a row's byte is
    "on a port of prefilter k" (_port_bits); the prefilters of a pass are the first caller
    for the batch, those that called for the previous batch and those made since the last
    pass (a new sensor's: its first batch), at most 8. A prefilter
    that is not in the pass, or marked a port since, gets its own pass (same kernel)."""

    def __init__(self) -> None:
        self.batch: weakref.ref | None = None  # the batch of `bits`
        self.members: list[weakref.ref] = []  # bit k: members[k]
        self.versions: list[int] = []  # their `version` when the pass ran
        self.row_bits = np.zeros(0, dtype=np.uint8)
        self.callers: list[weakref.ref] = []  # prefilters that called for `batch`
        self.new: list[weakref.ref] = []  # prefilters made since the last pass (last 8)
        self.table_of: tuple = ([], [])  # (members, versions) `table` was made of
        self.table = np.zeros(65536, dtype=np.uint8)
        self.words = _marked_words(self.table)

    def bits(self, prefilter: PortPrefilter, packets: DecodedPackets, rows: np.ndarray
             ) -> tuple[np.ndarray, int]:
        """(port bits of `rows`, the bit of `prefilter`) for this batch (`rows`: its
        candidate rows)."""
        if self.batch is None or self.batch() is not packets:
            self._run(prefilter, packets, rows)
        if not any(ref() is prefilter for ref in self.callers):
            self.callers.append(weakref.ref(prefilter))
        for k, ref in enumerate(self.members):
            if ref() is prefilter and self.versions[k] == prefilter.version:
                return self.row_bits, k
        return _port_bits(rows, packets.src_port, packets.dst_port,
                          prefilter.marked.view(np.uint8), prefilter.marked_words()), 0

    def _run(self, prefilter: PortPrefilter, packets: DecodedPackets, rows: np.ndarray) -> None:
        others: list[PortPrefilter] = []
        for q in (ref() for ref in self.callers + self.new):
            if q is not None and q is not prefilter and all(q is not o for o in others):
                others.append(q)
        members = [prefilter, *others[:7]]
        self.new = []
        self.batch = weakref.ref(packets)
        self.members = [weakref.ref(q) for q in members]
        self.versions = [q.version for q in members]
        self.callers = []
        table = self._table(members)
        words = self.words if len(members) > 1 else prefilter.marked_words()
        self.row_bits = _port_bits(rows, packets.src_port, packets.dst_port, table, words)

    def created(self, prefilter: PortPrefilter) -> None:
        """A new prefilter: a member of the next pass (a sensor's analyzers are made
        together, so its first batch needs no pass per prefilter)."""
        self.new = [ref for ref in self.new[-7:] if ref() is not None]
        self.new.append(weakref.ref(prefilter))

    def _table(self, members: list[PortPrefilter]) -> np.ndarray:
        """Bit k of table[port]: members[k] marked the port (kept while none marks more)."""
        if len(members) == 1:
            return members[0].marked.view(np.uint8)
        made_of, versions = self.table_of
        if (len(made_of) != len(members) or [q.version for q in members] != versions
                or any(ref() is not q for ref, q in zip(made_of, members, strict=True))):
            table = members[0].marked.view(np.uint8).copy()
            for k, q in enumerate(members[1:], start=1):
                table |= q.marked.view(np.uint8) << np.uint8(k)
            self.table = table
            self.table_of = ([weakref.ref(q) for q in members], [q.version for q in members])
            self.words = _marked_words(table)
        return self.table


_shared = _SharedPass()


# (weak reference to a batch, its candidate rows and heads): see _batch_candidates
_last_known: tuple | None = None


def _batch_candidates(packets: DecodedPackets) -> tuple[np.ndarray, np.ndarray] | None:
    """tcp_stream.known_heads(packets), remembered for the batch object: a prefiltered
    collector's feed makes tcp_stream memoise its subset instead, so a later prefilter of
    the same batch would find nothing there. Never scans."""
    global _last_known
    known = known_heads(packets)
    if known is not None:
        try:
            _last_known = (weakref.ref(packets), known)
        except TypeError:  # a batch type without weak references: nothing remembered
            _last_known = None
        return known
    memo = _last_known
    if memo is not None and memo[0]() is packets:
        return memo[1]
    return None


def subset(packets: DecodedPackets, rows: np.ndarray) -> DecodedPackets:
    """The same batch restricted to `rows`: every per-packet column indexed, the byte
    buffer (offsets unchanged) and anything else shared."""
    n = len(packets)
    values = {}
    for name in _FIELDS:
        value = getattr(packets, name)
        per_row = (name != "data" and isinstance(value, np.ndarray) and value.ndim >= 1
                   and value.shape[0] == n)
        values[name] = (value[rows] if rows.size else value[:0]) if per_row else value
    return DecodedPackets(**values)
