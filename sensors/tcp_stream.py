"""Bounded TCP reassembly: the first bytes of each direction of selected TCP flows.

Protocol parsers (HTTP, TLS, SSH, clear-text logins) only need the start of a connection, so
this is reassembly "only as far as the parsers need it":

- Selection, column-wise before any Python: TCP rows (ip_version != 0, transport 6) that
  carry payload or SYN/FIN/RST, and whose flow is (a) already tracked, or (b) opened in
  this batch by a segment WITH PAYLOAD that is on a selected port (`ports`; None = every
  port) or matches the consumer's `client_predicate` (a vectorized test on the first
  PREFIX_BYTES payload bytes, e.g. "starts with an HTTP method"); all rows of such a flow
  in the batch are kept, also those after the opening one. Payload-less segments never
  create state: a SYN flood costs column operations only. Instead, SYN and SYN-ACK rows of
  flows not held are remembered column-wise (the latest of each per flow, at most
  `max_flows`, none older than the idle timeout, each with the time of the first of its
  retransmissions) and replayed, at those times, ahead of the segment that opens their
  flow in a later batch, so orientation, sequence bases and start times do not depend on
  batch boundaries. Rows of flows the consumer released (`release`) are dropped by a hash
  test, also column-wise. Only the remaining rows enter the Python loop
  (stats["segments_looped"]).
- Fast path (`fast_path`, on by default): flows that open AND close (FIN from both sides,
  RST, or nothing left to collect) within one batch, with each direction's payload in
  order and contiguous, at most one SYN per direction and no payload after a side's FIN,
  are reassembled column-wise (sequence bases, running byte counts and close conditions as
  numpy group operations, bytes joined once per batch) and emitted at the point of the loop
  where they would have closed, with the same chunk, stats and close bookkeeping
  (stats["segments_fast"]). Every other flow goes through the loop. Short request/response
  flows (HTTP, TLS handshakes) are nearly all of the first kind.
- Per direction, the bytes from the direction's first sequence number (SYN+1, else the
  first segment seen, or the peer's ACK number when the flow was opened by the peer's
  packet), in sequence order up to `max_bytes_per_dir`. Out-of-order segments are held (up
  to the cap) and placed by sequence number; retransmissions are ignored; overlapping
  bytes: the first copy received wins. A hole that is still open when the direction ends,
  when `max_ooo_segments` later segments arrived past it, or when the held data reaches the
  cap, is a gap: the direction stops at the hole (`gap` set, stats["gaps"]).
- The first `max_packets_meta` segments of the flow that advanced their direction's
  highest sequence number (so retransmissions are left out) are listed as
  (ts_ns, direction, payload_len) — packet sizes/directions for analyzers such as SSH.
  Collection of a flow goes on while either direction is below its cap or the list is not
  full; after that only FIN/RST (and the idle clock) are tracked.
- A consumer that reads only the start of a stream (TLS: its handshake) may pass `trim`
  (see StreamTrim): the fast path asks it, before copying any payload, how many bytes of
  each direction it reads, and copies only those; the chunk's data stops there (its
  ended/capped/gap flags, packets and close are those of the whole flow; StreamBatch.whole
  keeps each direction's uncut length). Flows of the per-segment loop are not trimmed.

Client (direction 0) = sender of a SYN without ACK; else the receiver of a SYN+ACK; else
the sender of the payload that matched `client_predicate`; else the endpoint whose port is
NOT in `ports` (when exactly one is); else the higher port (ephemeral ports are high).

A flow is final (`StreamChunk.final`) on RST, on FIN from both sides, when both directions
are done (cap, gap or FIN) and the packet list is full ("capped"), when idle for
`idle_timeout_s` of event time (the clock is the largest timestamp fed so far), when
evicted, or at `flush`. Final flows and released flows are remembered (bounded LRU of
their hashes) so their late segments do not reopen them; a SYN without ACK does (port reuse).

Bounds: at most `max_flows` flows held and `max_bytes_total` bytes buffered (sum of both
directions' buffers, each <= max_bytes_per_dir); beyond either, the least recently active
flows are emitted final with reason "evicted" (stats["evicted"]). Released/closed hashes
kept: 4 * max_flows.

Sequence numbers are not a DecodedPackets column; they are read from the TCP header found
by walking back from `payload_offset` (the header length whose data-offset nibble, ports
and flags byte agree with the decoded columns).

The byte-level loops are compiled kernels (pipeline.jit): the seq/ack header lookup, the
payload heads shown to the predicate (and prefix_predicate's test of them), the selection's
per-row flags and flow tests (per flow, not per row: the batch's candidate rows grouped by
flow hash once, the held and released/closed hashes probed once per flow; np.isin sorts),
the gather of the selected rows' columns, the fast path's grouping of rows by flow (a hash
table and counting sorts, no argsort/lexsort), its walk (which reads its inputs through the
rows' positions), its segment layout and chunk columns (two passes where there were ~40
numpy calls per batch), and the copy of the fast path's payload bytes into one buffer
(span by span, one memcpy each, into a scratch buffer the collector keeps, or straight into
feed_joined's buffer). A
collector's selection after the candidate scan (per-row opening flags, flow tests, the kept
rows' columns) is one kernel (`_select_rows_kernel`), and the candidate scan asks the CPU
for the capture lines of the rows a few ahead (`prefetch`), as TLS's needed_lengths does
for its flows' first records. Each checks every index against the capture buffer
(tests/test_tcp_stream.py, tests/test_tcp_stream_kernels.py: kernels against plain
references, on random bytes and offsets; the grouping and selection kernels only index
arrays they size themselves; tests/test_stream_select.py: the selection kernel against the
steps it replaced).

Per batch, not per flow: the candidate rows of a batch with their flow hashes, payload
heads and sequence/ack numbers (one compiled pass over the capture, `candidate_scan`) are
computed once per DecodedPackets object and shared by every collector fed that object (HTTP
and TLS select disjoint flows, but both start from every TCP row), and so are their payload
lengths, flags and ports and their grouping by flow (`_candidate_groups`); the
released/closed flow hashes are an LRU hash table kept from batch to batch (`_HashLru`,
a batch's closes added by one kernel call), not rebuilt from a Python LRU; the fast path's
chunks are built from whole columns turned into lists, and their closes (hashes remembered,
counters) are applied a run at a time. A PortPrefilter (SSH, logins) reads the memoised
payload heads (`known_heads`) instead of the capture when they are there. The selection's
per-row tests and keep pass run once for two collectors fed the same batch (HTTP, then TLS:
a collector fed right after another becomes its successor, `_next_collector`): the first
one's call also answers for the second (`_select_pair_kernel`), which takes the answers from
the batch's memo (`_pair_share`) if its flows and settings are as they were then, else
selects alone, and gathers its kept rows' columns at its own feed (`_kept_columns`).

`feed_joined` (beside `feed`) answers with a StreamBatch: the same chunks as columns, every
flow's bytes in ONE buffer with (start, length) per direction. The fast path then makes no
object per flow at all (no StreamChunk, no bytes, no (ts, direction, length) tuples; they
are built only if `chunks`/`chunk(i)` is asked for) and copies each payload byte once, from
the capture into that buffer. The HTTP and TLS analyzers read it (sensors/stream_columns.py).
"""

from __future__ import annotations

import sys
import weakref
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import repeat

import numba
import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from pipeline.jit import njit
from pipeline.schema import EventKind
from sensors.community_id import community_id_column
from sensors.packets import IP_DTYPE, DecodedPackets, constant_text, plain_vlan

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
TCP = 6
PREFIX_BYTES = 8  # payload bytes shown to a client_predicate
NS = 1_000_000_000
SEQ_MOD = 1 << 32
SEQ_HALF = 1 << 31
MAX_SCRATCH_BYTES = 32 << 20  # the largest payload scratch buffer a collector keeps

CLIENT_BY = ("syn", "synack", "predicate", "port", "heuristic")  # StreamChunk.client_by
CLOSE_REASONS = ("fin", "rst", "capped")  # reasons a flow closes on one of its segments
# every (bool, bool) pair, shared by the chunks (one tuple fewer to allocate per field)
_BOOL_PAIRS = ((False, False), (False, True), (True, False), (True, True))
# client_predicate(head: (n, PREFIX_BYTES) uint8 zero-padded, payload_len: (n,) int) -> bool mask
ClientPredicate = Callable[[np.ndarray, np.ndarray], np.ndarray]
# trim(data: uint8, seg_start, seg_size: int64, first_seg, end_seg: (n, 2) int64) -> (n, 2)
# int64: how many bytes of each flow's directions the consumer reads. Direction d of flow f
# (0 client -> server, 1 server -> client) is data[seg_start[i] : seg_start[i] + seg_size[i]]
# for i in first_seg[f, d] .. end_seg[f, d] - 1, back to back (bytes outside data are
# zero). The chunk's data is cut there (see StreamCollector)
StreamTrim = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                      np.ndarray]
# (vlan, client ip, client port, server ip, server port)
FlowKey = tuple[int, bytes, int, bytes, int]


@dataclass(slots=True)  # slots: no per-chunk __dict__ (thousands are built per batch)
class StreamChunk:
    """What is collected of one flow so far (a snapshot; `final` when the flow is over).

    Direction 0 is client -> server, 1 is server -> client. Timestamps are ns since epoch,
    -1 when the direction has sent nothing.
    """

    key: FlowKey
    client_ip: bytes  # 16-byte column form (IPv4-mapped for IPv4)
    server_ip: bytes
    client_port: int
    server_port: int
    vlan: int
    client_by: str  # how the client was chosen: syn, synack, predicate, port, heuristic
    start_ts: int  # first selected packet of the flow
    last_ts: int
    first_ts: tuple[int, int]  # first payload packet per direction
    data: tuple[bytes, bytes]  # contiguous bytes per direction (<= max_bytes_per_dir)
    ended: tuple[bool, bool]  # FIN/RST sent by that side (data up to it complete unless gap)
    capped: tuple[bool, bool]  # the direction reached max_bytes_per_dir
    gap: tuple[bool, bool]  # bytes missing: data stops at the hole
    packets: list[tuple[int, int, int]]  # (ts_ns, direction, payload_len), first K segments
    final: bool = False
    reason: str = ""  # when final: fin, rst, idle, capped, evicted, flush

    @property
    def client_data(self) -> bytes:
        return self.data[0]

    @property
    def server_data(self) -> bytes:
        return self.data[1]


# StreamBatch's per-chunk columns: name -> (dtype, per-row shape)
_BATCH_COLUMNS = {
    "client_ip": (IP_DTYPE, ()), "server_ip": (IP_DTYPE, ()), "client_port": (np.int64, ()),
    "server_port": (np.int64, ()), "vlan": (np.int64, ()), "client_by": (np.int64, ()),
    "start_ts": (np.int64, ()), "last_ts": (np.int64, ()), "first_ts": (np.int64, (2,)),
    "ended": (np.bool_, (2,)), "capped": (np.bool_, (2,)), "gap": (np.bool_, (2,)),
    "final": (np.bool_, ()), "reason": (object, ()), "packet_start": (np.int64, ()),
    "packet_stop": (np.int64, ()),
}
_PACKET_COLUMNS = ("packet_ts", "packet_dir", "packet_len")  # flat, rows of every chunk


class StreamBatch:
    """feed_joined's answer: what feed returns, as columns, with every chunk's bytes in ONE
    buffer, and the StreamChunk objects only when asked for.

    Row i is the chunk feed() would have returned at position i:
    - bytes: direction d (0 client, 1 server) is buf[start[i, d] : start[i, d] +
      length[i, d]] (== chunks[i].data[d]); whole[i, d]: its length before the collector's
      `trim` cut it (== length where nothing was cut);
    - client_ip, server_ip (n,) IP_DTYPE; client_port, server_port, vlan, start_ts, last_ts
      (n,) int64; client_by (n,) int64, an index into CLIENT_BY; first_ts (n, 2) int64;
      ended, capped, gap (n, 2) bool; final (n,) bool; reason (n,) object (str);
    - packets: chunk i's (ts_ns, direction, payload_len) list is rows packet_start[i] ..
      packet_stop[i] - 1 of the flat columns packet_ts, packet_dir, packet_len (int64);
    - keys: the FlowKey of every row (a list, built on first use);
    - chunks: the StreamChunk list feed() returns (built on first use: the fast path's
      chunks are not made as objects unless asked for); chunk(i): one of them.
    Analyzers that parse with kernels read the columns and skip a StreamChunk, two bytes
    objects and a list of tuples per flow, and their own join of the bytes.
    """

    def __init__(self, columns: dict[str, np.ndarray], buf: np.ndarray, start: np.ndarray,
                 length: np.ndarray, plain: dict[int, StreamChunk],
                 whole: np.ndarray | None = None) -> None:
        self.buf = buf  # uint8
        self.start = start  # (n, 2) int64
        self.length = length  # (n, 2) int64
        # (n, 2) int64: each direction's length before the consumer's trim cut it (>= length)
        self.whole = length if whole is None else whole
        self.client_ip = columns["client_ip"]
        self.server_ip = columns["server_ip"]
        self.client_port = columns["client_port"]
        self.server_port = columns["server_port"]
        self.vlan = columns["vlan"]
        self.client_by = columns["client_by"]
        self.start_ts = columns["start_ts"]
        self.last_ts = columns["last_ts"]
        self.first_ts = columns["first_ts"]
        self.ended = columns["ended"]
        self.capped = columns["capped"]
        self.gap = columns["gap"]
        self.final = columns["final"]
        self.reason = columns["reason"]
        self.packet_start = columns["packet_start"]
        self.packet_stop = columns["packet_stop"]
        self.packet_ts = columns["packet_ts"]
        self.packet_dir = columns["packet_dir"]
        self.packet_len = columns["packet_len"]
        self._plain = plain  # row -> the chunk object the loop made (returned as is)
        self._keys: list[FlowKey] | None = None
        self._chunks: list[StreamChunk] | None = None

    def __len__(self) -> int:
        return int(self.final.shape[0])

    def column(self, name: str) -> np.ndarray:
        return getattr(self, name)

    @property
    def keys(self) -> list[FlowKey]:
        if self._keys is None:
            self._keys = list(zip(self.vlan.tolist(), self.client_ip.tolist(),
                                  self.client_port.tolist(), self.server_ip.tolist(),
                                  self.server_port.tolist(), strict=True))
        return self._keys

    @property
    def chunks(self) -> list[StreamChunk]:
        if self._chunks is None:
            self._chunks = self._build(np.arange(len(self), dtype=np.int64))
        return self._chunks

    def chunk(self, index: int) -> StreamChunk:
        """chunks[index], without building the others."""
        if self._chunks is not None:
            return self._chunks[index]
        return self._build(np.array([index], dtype=np.int64))[0]

    def _build(self, rows: np.ndarray) -> list[StreamChunk]:
        view = memoryview(self.buf)
        lo, size = self.start[rows], self.length[rows]
        data = ((view[a0 : a0 + n0].tobytes(), view[a1 : a1 + n1].tobytes())
                for a0, n0, a1, n1 in zip(lo[:, 0].tolist(), size[:, 0].tolist(),
                                          lo[:, 1].tolist(), size[:, 1].tolist(), strict=True))
        built = _chunks_from_columns(self.column, rows, data)  # (packets not in row order)
        plain = self._plain
        if plain:  # the loop's own objects stay what they are
            built = [plain.get(row, chunk) for row, chunk in zip(rows.tolist(), built,
                                                                 strict=True)]
        return built


def _chunks_from_columns(column: Callable[[str], np.ndarray], rows: np.ndarray | None,
                         data: Iterable[tuple[bytes, bytes]]) -> list[StreamChunk]:
    """StreamChunks of `rows` (None: all, in order) of per-chunk columns (StreamBatch's
    names; column(name) gives one), with their `data` pairs: every field a whole column
    turned into a list, zipped into the chunks."""
    def take(name: str) -> np.ndarray:
        return column(name) if rows is None else column(name)[rows]

    vlan = take("vlan").tolist()
    client_ip = take("client_ip").tolist()
    server_ip = take("server_ip").tolist()
    client_port = take("client_port").tolist()
    server_port = take("server_port").tolist()
    keys = list(zip(vlan, client_ip, client_port, server_ip, server_port, strict=True))
    first_ts = take("first_ts")
    # the rows' (ts, direction, length) tuples, then each chunk's slice of them
    p_start, p_stop = take("packet_start"), take("packet_stop")
    if rows is None:  # all rows: their packets are the whole flat columns, in order
        at = slice(None)
        lo, hi = p_start.tolist(), p_stop.tolist()
    else:
        counts = p_stop - p_start
        stops = np.cumsum(counts)
        total = int(stops[-1]) if stops.size else 0
        at = np.repeat(p_start - (stops - counts), counts) + np.arange(total)
        lo, hi = (stops - counts).tolist(), stops.tolist()
    meta = list(zip(column("packet_ts")[at].tolist(), column("packet_dir")[at].tolist(),
                    column("packet_len")[at].tolist(), strict=True))
    packets = [meta[a:b] for a, b in zip(lo, hi, strict=True)]

    def pairs(name: str) -> list[tuple[bool, bool]]:
        flags = take(name)
        code = 2 * flags[:, 0].astype(np.int64) + flags[:, 1]
        return list(map(_BOOL_PAIRS.__getitem__, code.tolist()))

    return list(map(
        StreamChunk, keys, client_ip, server_ip, client_port, server_port, vlan,
        np.array(CLIENT_BY, dtype=object)[take("client_by")].tolist(),
        take("start_ts").tolist(), take("last_ts").tolist(),
        zip(first_ts[:, 0].tolist(), first_ts[:, 1].tolist(), strict=True), data,
        pairs("ended"), pairs("capped"), pairs("gap"), packets,
        take("final").tolist(), take("reason").tolist()))


def _columns_of(chunks: list[StreamChunk]) -> dict[str, np.ndarray]:
    """StreamBatch's per-chunk columns of chunk objects (the loop's: few per batch)."""
    n = len(chunks)
    if n == 0:  # fresh empty columns (~20 array builds from empty lists cost ~50 us)
        out = {name: np.empty((0, *shape), dtype=dtype)
               for name, (dtype, shape) in _BATCH_COLUMNS.items()}
        for name in _PACKET_COLUMNS:
            out[name] = np.empty(0, dtype=np.int64)
        return out
    out = {
        "client_ip": np.array([c.client_ip for c in chunks], dtype=IP_DTYPE).reshape(n),
        "server_ip": np.array([c.server_ip for c in chunks], dtype=IP_DTYPE).reshape(n),
        "client_by": np.array([CLIENT_BY.index(c.client_by) for c in chunks],
                              dtype=np.int64).reshape(n),
        "reason": np.array([c.reason for c in chunks], dtype=object).reshape(n),
    }
    for name in ("client_port", "server_port", "vlan", "start_ts", "last_ts", "final"):
        dtype = _BATCH_COLUMNS[name][0]
        out[name] = np.array([getattr(c, name) for c in chunks], dtype=dtype).reshape(n)
    for name in ("first_ts", "ended", "capped", "gap"):
        dtype = _BATCH_COLUMNS[name][0]
        out[name] = np.array([getattr(c, name) for c in chunks], dtype=dtype).reshape(n, 2)
    counts = np.array([len(c.packets) for c in chunks], dtype=np.int64).reshape(n)
    out["packet_stop"] = np.cumsum(counts)
    out["packet_start"] = out["packet_stop"] - counts
    flat = np.array([p for c in chunks for p in c.packets], dtype=np.int64).reshape(-1, 3)
    for i, name in enumerate(_PACKET_COLUMNS):
        out[name] = flat[:, i].copy()
    return out


class _Direction:
    """One direction's reassembly state: contiguous buffer plus held out-of-order data."""

    __slots__ = ("base", "buf", "ooo", "ooo_segments", "max_end", "first_ts", "fin", "capped",
                 "gap", "done")

    def __init__(self) -> None:
        self.base: int | None = None  # sequence number of buf[0]
        self.buf = bytearray()
        self.ooo: np.ndarray | None = None  # (2, cap) uint8: held bytes, filled flag
        self.ooo_segments = 0  # segments received since the hole opened
        self.max_end = 0  # highest relative end offset seen (for packet metadata)
        self.first_ts = -1
        self.fin = False
        self.capped = False
        self.gap = False
        self.done = False  # no more bytes wanted (cap, gap or end)

    def held_bytes(self) -> int:
        return len(self.buf) + (0 if self.ooo is None else int(self.ooo.shape[1]))


class _Flow:
    __slots__ = ("key", "client_by", "dirs", "start_ts", "last_ts", "packets", "changed",
                 "hash")

    def __init__(self, key: FlowKey, client_by: str, ts: int, flow_hash: int) -> None:
        self.key = key
        self.client_by = client_by
        self.dirs = (_Direction(), _Direction())
        self.start_ts = ts
        self.last_ts = ts
        self.packets: list[tuple[int, int, int]] = []
        self.changed = True
        self.hash = flow_hash


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer (uint64, wrapping)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def flow_hash_column(packets: DecodedPackets, rows: np.ndarray) -> np.ndarray:
    """Direction-independent uint64 hash of (vlan, {ip:port, ip:port}) for `rows`; the
    vlan may carry a tunnel segment above its low 16 bits (packets.keyed_vlan): mixed in
    too (0 for untunnelled rows, whose hash stays that of (vlan, endpoints))."""
    with np.errstate(over="ignore"):
        def endpoint(ips: np.ndarray, ports: np.ndarray) -> np.ndarray:
            halves = np.ascontiguousarray(ips[rows]).view(np.uint64).reshape(-1, 2)
            h = _mix(halves[:, 0] ^ np.uint64(0x9E3779B97F4A7C15))
            h = _mix(h ^ halves[:, 1])
            return _mix(h ^ ports[rows].astype(np.uint64))
        both = endpoint(packets.src_ip, packets.src_port) + endpoint(packets.dst_ip,
                                                                      packets.dst_port)
        vlan = packets.vlan[rows].astype(np.uint64)
        both ^= vlan << np.uint64(48)
        if packets.vlan.dtype.itemsize > 2:  # a keyed view: its segments too
            both ^= (vlan >> np.uint64(16)) * np.uint64(0xD6E8FEB86659FD93)
        return _mix(both)


@njit
def _heads_kernel(data, offset, length, width):
    """(n, width) uint8: the first `width` payload bytes of each row, zero past the payload
    and outside `data`."""
    n = offset.shape[0]
    out = np.zeros((n, width), dtype=np.uint8)
    size = data.shape[0]
    for i in range(n):
        for j in range(min(width, length[i])):
            at = offset[i] + j
            if 0 <= at < size:
                out[i, j] = data[at]
    return out


def payload_heads(packets: DecodedPackets, rows: np.ndarray, width: int) -> np.ndarray:
    """(len(rows), width) first payload bytes of `rows`, zero-padded (predicate input)."""
    return _heads_kernel(np.asarray(packets.data).reshape(-1),
                         packets.payload_offset[rows].astype(np.int64),
                         packets.payload_len[rows].astype(np.int64), width)


@njit(inline="always")  # no call, no reference counting per row
def _byte_at(data, at):
    """data[at] as int64 (at >= 0), zero past the end."""
    return np.int64(data[at]) if at < data.shape[0] else np.int64(0)


@njit(inline="always")  # no call, no reference counting per row
def _seq_ack_row(data, offset, sport, dport, flags):
    """tcp_seq_ack's answer for one row: (seq, ack, found), the TCP header read in place.
    Returned, not stored into the callers' arrays: with the stores inside the walk (arrays
    LLVM cannot prove apart from `data`) the walk cost ~46 ns a row in cache, ~14 returned."""
    size = data.shape[0]
    for header_len in range(20, 64, 4):
        pos = offset - header_len
        if pos < 0:
            continue
        if pos + 14 <= size:  # the usual case: the 14 bytes inside data, read as they are
            # the data-offset nibble first: most lengths fail there
            if (np.int64(data[pos + 12]) >> 4) * 4 != header_len:
                continue
            if ((np.int64(data[pos]) << 8 | np.int64(data[pos + 1])) == sport
                    and (np.int64(data[pos + 2]) << 8 | np.int64(data[pos + 3])) == dport
                    and np.int64(data[pos + 13]) == flags):
                return ((np.int64(data[pos + 4]) << 24 | np.int64(data[pos + 5]) << 16
                         | np.int64(data[pos + 6]) << 8 | np.int64(data[pos + 7])),
                        (np.int64(data[pos + 8]) << 24 | np.int64(data[pos + 9]) << 16
                         | np.int64(data[pos + 10]) << 8 | np.int64(data[pos + 11])), True)
            continue
        # a header running past the end of data: byte by byte, zero outside
        if (_byte_at(data, pos + 12) >> 4) * 4 != header_len:
            continue
        if ((_byte_at(data, pos) << 8 | _byte_at(data, pos + 1)) == sport
                and (_byte_at(data, pos + 2) << 8 | _byte_at(data, pos + 3)) == dport
                and _byte_at(data, pos + 13) == flags):
            return ((_byte_at(data, pos + 4) << 24 | _byte_at(data, pos + 5) << 16
                     | _byte_at(data, pos + 6) << 8 | _byte_at(data, pos + 7)),
                    (_byte_at(data, pos + 8) << 24 | _byte_at(data, pos + 9) << 16
                     | _byte_at(data, pos + 10) << 8 | _byte_at(data, pos + 11)), True)
    return np.int64(0), np.int64(0), False


@njit
def _seq_ack_kernel(data, offset, sport, dport, flags):
    n = offset.shape[0]
    seq = np.zeros(n, dtype=np.int64)
    ack = np.zeros(n, dtype=np.int64)
    found = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        seq[i], ack[i], found[i] = _seq_ack_row(data, np.int64(offset[i]), np.int64(sport[i]),
                                                np.int64(dport[i]), np.int64(flags[i]))
    return seq, ack, found


@njit(inline="always")  # no call, no reference counting per row
def _mix_one(x):
    """_mix of one uint64."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(inline="always")  # no call, no reference counting per row
def _endpoint_hash(ip_high, ip_low, port):
    """flow_hash_column's hash of one endpoint (the address as its two uint64 halves)."""
    h = _mix_one(ip_high ^ np.uint64(0x9E3779B97F4A7C15))
    h = _mix_one(h ^ ip_low)
    return _mix_one(h ^ np.uint64(port))


# The intrinsic's name carries its pointer type: "p0" once LLVM has only opaque pointers
# (17 on; numba 0.68's llvmlite has 22), "p0i8" for the typed i8* of older LLVMs.
_PREFETCH_NAME = ("llvm.prefetch.p0" if llvm_version_info[0] >= 17
                  else "llvm.prefetch.p0i8")


def check_span(context: numba.core.base.BaseContext, builder: ir.IRBuilder,
               array_type: types.Array, array: ir.Value, at: ir.Value, count: ir.Value) -> None:
    """Under NUMBA_BOUNDSCHECK only (tests/test_sensor_bounds.py compiles every kernel so):
    an IndexError, as numba's own check raises, unless array[at : at + count] lies inside the
    1-D `array` (count <= 0: nothing read). For the raw loads and copies of intrinsics, which
    that flag does not see. Without the flag nothing is emitted: the same machine code."""
    if not numba.config.BOUNDSCHECK:
        return
    size = builder.extract_value(context.make_array(array_type)(context, builder, array).shape,
                                 0)
    with builder.if_then(builder.icmp_signed(">", count, count.type(0))):
        cgutils.do_boundscheck(context, builder, at, size)
        cgutils.do_boundscheck(context, builder, builder.sub(builder.add(at, count),
                                                             count.type(1)), size)


@intrinsic
def prefetch(typingctx, array, at):
    """A hint to the CPU to start loading the cache line of array[at] (1-D; nothing when
    not C-contiguous; the caller keeps `at` inside the array). No effect on results:
    llvm.prefetch never faults and changes no memory. Why: a kernel reading one packet per
    row of a batch (~20 MB, past the caches) waits for every row's line in turn (a
    data-dependent header walk gives the CPU no loads of later rows to overlap); a hint
    issued some rows ahead overlaps those waits."""
    if not (isinstance(array, types.Array) and array.ndim == 1):
        return None  # not typed: the call does not compile
    sig = types.void(array, types.int64)
    contiguous = array.layout == "C"  # else no hint (the address would need the stride)

    def codegen(context, builder, signature, args):
        if not contiguous:
            return context.get_dummy_value()
        array_value, index = args
        data = context.make_array(signature.args[0])(context, builder, array_value)
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]),
            _PREFETCH_NAME)
        # read access, high temporal locality, data cache
        builder.call(hint, [builder.bitcast(builder.gep(data.data, [index]), byte_ptr),
                            i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def borrowed(typingctx, array):  # noqa: ARG001 (numba's intrinsic signature)
    """`array` without its owner (meminfo and parent NULL). The reference count operations
    numba emits for it (an atomic increment and decrement per array each time an inlined
    helper takes it, when LLVM cannot prune them: ~40 ns a direction in http_kernel's
    header walk, a third of parse_flows on short flows) then return at once. The caller
    keeps the owned array alive while the borrowed one is used, and borrows again after
    reassigning it. (Shared by http_kernel and tls, which import this module.)"""
    if not isinstance(array, types.Array):
        return None  # not typed: the call does not compile
    sig = array(array)

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, value=args[0])
        view.meminfo = ir.Constant(view.meminfo.type, None)
        view.parent = ir.Constant(view.parent.type, None)
        return view._getvalue()

    return sig, codegen


PREFETCH_ROWS = 16  # how many candidate rows ahead _candidate_kernel asks for a packet's lines


@njit
def _candidate_kernel(data, rows, offset, length, sport, dport, flags, src_ip, dst_ip, vlan,
                      width):
    """Per row of `rows`, one pass over the capture: its flow hash (flow_hash_column's),
    seq/ack/found (tcp_seq_ack's) and, for the rows with payload, the first `width` payload
    bytes (payload_heads'). One pass because the TCP header and the payload's first bytes
    share cache lines: the header walk and the heads each missed the cache on every row.
    src_ip/dst_ip: (packets, 2) uint64 halves of the addresses; every packet column is
    indexed by rows (which the caller takes from the batch) only."""
    n = rows.shape[0]
    size = data.shape[0]
    hashes = np.empty(n, dtype=np.uint64)
    seq = np.zeros(n, dtype=np.int64)
    ack = np.zeros(n, dtype=np.int64)
    found = np.zeros(n, dtype=np.bool_)
    n_heads = 0
    for i in range(n):
        if length[rows[i]] > 0:
            n_heads += 1
    heads = np.zeros((n_heads, width), dtype=np.uint8)
    at_head = 0
    view = borrowed(data)  # for _seq_ack_row: no reference counting per row
    for i in range(n):
        if i + PREFETCH_ROWS < n and size > 0:
            # the lines of a later row's TCP header and payload head (see prefetch): the
            # scan was waiting on memory, one row at a time (21 -> 8 ms per 300k packets)
            ahead = np.int64(offset[rows[i + PREFETCH_ROWS]])
            prefetch(data, min(max(ahead - 32, 0), size - 1))
            prefetch(data, min(max(ahead + 8, 0), size - 1))
        r = rows[i]
        # scalars, not row views (a view per row costs reference counting)
        both = (_endpoint_hash(src_ip[r, 0], src_ip[r, 1], sport[r])
                + _endpoint_hash(dst_ip[r, 0], dst_ip[r, 1], dport[r]))
        v = np.uint64(vlan[r])
        h = both ^ (v << np.uint64(48))
        if vlan.itemsize > 2:  # a keyed view's segments (flow_hash_column); a compile-time
            h ^= (v >> np.uint64(16)) * np.uint64(0xD6E8FEB86659FD93)  # constant: no cost
        hashes[i] = _mix_one(h)
        off = np.int64(offset[r])
        seq[i], ack[i], found[i] = _seq_ack_row(view, off, np.int64(sport[r]),
                                                np.int64(dport[r]), np.int64(flags[r]))
        size_r = np.int64(length[r])
        if size_r > 0:
            if (width == PREFIX_BYTES and size_r >= PREFIX_BYTES and off >= 0
                    and off + PREFIX_BYTES <= size):
                # the usual row: a fixed count of bytes, all inside (an unrolled copy, no
                # test per byte; ~0.6 of ~5.4 ms per 300k packets)
                for j in range(PREFIX_BYTES):
                    heads[at_head, j] = data[off + j]
            else:
                for j in range(min(width, size_r)):
                    if 0 <= off + j < size:
                        heads[at_head, j] = data[off + j]
            at_head += 1
    return hashes, seq, ack, found, heads


def candidate_scan(packets: DecodedPackets, rows: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(flow hashes, seq, ack, found, payload heads of the rows with payload) of `rows`
    (in range of the batch): flow_hash_column, tcp_seq_ack and payload_heads in one
    compiled pass."""
    rows = np.asarray(rows, dtype=np.int64)
    return _candidate_kernel(
        np.ascontiguousarray(np.asarray(packets.data).reshape(-1)), rows, packets.payload_offset,
        packets.payload_len, packets.src_port, packets.dst_port, packets.tcp_flags,
        np.ascontiguousarray(packets.src_ip).view(np.uint64).reshape(-1, 2),
        np.ascontiguousarray(packets.dst_ip).view(np.uint64).reshape(-1, 2), packets.vlan,
        PREFIX_BYTES)


@intrinsic
def _copy_bytes(typingctx, dst, dst_at, src, src_at, count):
    """dst[dst_at : dst_at + count] = src[src_at : src_at + count] as one memcpy, for 1-D
    C-contiguous arrays of one-byte items; the caller keeps both ranges inside the arrays.
    Why: numba compiles a slice assignment to an element loop (~1.6 GB/s on this machine,
    ~0.9 ns per payload byte in _spans_kernel); memcpy runs at memory speed."""
    for array in (dst, src):
        if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
                and array.dtype.bitwidth == 8):
            return None  # not typed: the call does not compile
    sig = types.void(dst, types.int64, src, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        dst_value, dst_offset, src_value, src_offset, n = args
        check_span(context, builder, signature.args[0], dst_value, dst_offset, n)
        check_span(context, builder, signature.args[2], src_value, src_offset, n)
        dst_array = context.make_array(signature.args[0])(context, builder, dst_value)
        src_array = context.make_array(signature.args[2])(context, builder, src_value)
        cgutils.raw_memcpy(builder, builder.gep(dst_array.data, [dst_offset]),
                           builder.gep(src_array.data, [src_offset]), n, 1)
        return context.get_dummy_value()

    return sig, codegen


SPAN_PREFETCH = 4  # how many non-empty spans ahead _spans_kernel asks for a span's lines
SPAN_PREFETCH_LINES = 12  # how many of its first 64-byte lines


@njit
def _spans_kernel(data, start, size, out):
    """data[start[i] : start[i] + size[i]] for every i, back to back into `out` (uint8, its
    whole length: spans past its end are cut, what they leave unfilled is zero; bytes
    outside `data` are zero). Each span is clipped to `data` and copied by one memcpy."""
    total = out.shape[0]
    limit = data.shape[0]
    at = 0
    n = start.shape[0]
    ahead = 0  # the next span to prefetch
    queued = 0  # non-empty spans prefetched, not copied yet
    for i in range(n):
        if at >= total:
            break
        # the lines of the non-empty spans a few ahead (see prefetch): each span's first
        # line waited on memory, and the hardware's prefetch starts only after a span's
        # first misses. Empty spans (a third: cut by the consumer's trim) are skipped, so
        # the distance is in spans copied. ~0.5 ms of ~4.6 per 300k v2, caches cold
        if ahead <= i:
            ahead = i + 1
            queued = 0
        while ahead < n and queued < SPAN_PREFETCH:
            if size[ahead] > 0:
                first = start[ahead]
                end = first + min(size[ahead], 64 * SPAN_PREFETCH_LINES)
                for line in range(first, end, 64):
                    if 0 <= line < limit:
                        prefetch(data, line)
                queued += 1
            ahead += 1
        if size[i] > 0 and queued > 0:
            queued -= 1
        take = min(max(size[i], 0), total - at)
        lo = start[i]
        inside_lo = min(max(lo, 0), limit)  # the part of [lo, lo + take) inside data
        inside_hi = min(max(lo + take, 0), limit)
        head = min(max(inside_lo - lo, 0), take)  # bytes before data (lo < 0): zero
        # the zero fills only when there is something to fill: an empty slice assignment
        # still costs a view (a third of the spans are empty; ~0.8 ms per 300k packets)
        if head > 0:
            out[at : at + head] = 0
        copied = max(inside_hi - inside_lo, 0)
        if copied > 0:  # inside both arrays by the clipping above
            _copy_bytes(out, at + head, data, inside_lo, copied)
        if head + copied < take:
            out[at + head + copied : at + take] = 0  # bytes past the end of data: zero
        at += take
    out[at:] = 0


@njit
def _flow_groups_kernel(hashes):
    """(group of each row, hash of each group): rows of one hash share a group, numbered in
    the order their first row appears, for a whole batch's candidate rows (~8 per flow).
    The table holds group numbers (int32, -1 empty; a slot's hash is its group's): a table
    sized by the rows and holding the hashes (the former _group_kernel, now the tests'
    reference in tests/stream_select_reference.py) is ~1 MB of fresh pages per batch there
    (page faults) where this one is ~64 KB.

    The table starts at 4 slots per row up to 4,096 rows (a batch's ~3k flows fill a
    sixth of it) and doubles when half full, between runs of _group_run: a table
    reassigned inside the row loop (the growth) made every probe ~4x slower, and at a
    third full probes were ~2x slower than at a sixth (1.95 -> 0.42 ms per 300k v2)."""
    n = hashes.shape[0]
    size = 64
    while size < 4 * min(n, 4096):
        size *= 2
    slots = np.full(size, -1, dtype=np.int32)
    group_hash = np.empty(n, dtype=np.uint64)
    group_of = np.empty(n, dtype=np.int64)
    groups = 0
    i = 0
    while i < n:
        i, groups = _group_run(hashes, i, slots, group_hash, group_of, groups)
        if 2 * groups > slots.shape[0]:  # grow: the groups' (distinct) hashes, twice as large
            size = 2 * slots.shape[0]
            mask = size - 1
            slots = np.full(size, -1, dtype=np.int32)
            for k in range(groups):
                at = np.int64(group_hash[k] & np.uint64(mask))
                while slots[at] >= 0:
                    at = (at + 1) & mask
                slots[at] = k
    return group_of, group_hash[:groups]


@njit
def _group_run(hashes, start, slots, group_hash, group_of, groups):
    """_flow_groups_kernel's rows from `start` on, until the table is more than half full:
    (the next row, the number of groups)."""
    n = hashes.shape[0]
    mask = slots.shape[0] - 1
    limit = slots.shape[0] // 2
    for i in range(start, n):
        value = hashes[i]
        slot = np.int64(value & np.uint64(mask))
        group = slots[slot]
        while group >= 0 and group_hash[group] != value:
            slot = (slot + 1) & mask
            group = slots[slot]
        if group < 0:
            group = groups
            group_hash[group] = value
            groups += 1
            slots[slot] = group
            if groups > limit:
                group_of[i] = group
                return i + 1, groups
        group_of[i] = group
    return n, groups


@njit
def _hash_table(keys):
    """Open-addressing table of uint64 `keys` (already mixed: low bits index it):
    (slots, used, mask); duplicates take one slot."""
    size = 16
    while size < 2 * keys.shape[0]:
        size *= 2
    mask = size - 1
    table = np.zeros(size, dtype=np.uint64)
    used = np.zeros(size, dtype=np.bool_)
    for key in keys:
        slot = _slot_of(table, used, mask, key)
        table[slot] = key
        used[slot] = True
    return table, used, mask


@njit(inline="always")  # no call per probe
def _slot_of(table, used, mask, value):
    """The slot of `value` in an open-addressing table of uint64 (linear probing from
    value & mask): the one holding it, else the empty slot where its probe ends."""
    slot = np.int64(value & np.uint64(mask))
    while used[slot] and table[slot] != value:
        slot = (slot + 1) & mask
    return slot


@njit
def _in_table(table, used, mask, value):
    return used[_slot_of(table, used, mask, value)]


@njit
def _set_member(table, used, values):
    """values[i] in the open-addressing table (see _in_table)."""
    mask = table.shape[0] - 1
    out = np.zeros(values.shape[0], dtype=np.bool_)
    for i in range(values.shape[0]):
        out[i] = _in_table(table, used, mask, values[i])
    return out


@njit
def _lru_rehash(table, used, stamps, size):
    """The entries of an open-addressing table of (mixed) uint64 hashes and their stamps, in
    a new table of `size` slots (a power of two larger than twice the entries)."""
    mask = size - 1
    new_table = np.zeros(size, dtype=np.uint64)
    new_used = np.zeros(size, dtype=np.bool_)
    new_stamps = np.zeros(size, dtype=np.int64)
    for old in range(table.shape[0]):
        if used[old]:
            value = table[old]
            slot = np.int64(value & np.uint64(mask))
            while new_used[slot]:
                slot = (slot + 1) & mask
            new_table[slot] = value
            new_used[slot] = True
            new_stamps[slot] = stamps[old]
    return new_table, new_used, new_stamps


@njit(inline="always")  # no call per removal
def _lru_delete(table, used, stamps, slot, mask):
    """Empty `slot` of the table: the entries after it shift back (no tombstones)."""
    hole = slot
    at = slot
    while True:
        at = (at + 1) & mask
        if not used[at]:
            break
        home = np.int64(table[at] & np.uint64(mask))
        # the entry at `at` may move into the hole when the hole is on its probe path
        if ((at - home) & mask) >= ((at - hole) & mask):
            table[hole] = table[at]
            stamps[hole] = stamps[at]
            hole = at
    used[hole] = False


@njit
def _lru_touch(table, used, stamps, log_hash, log_stamp, state, values, cap):
    """Each of `values` in turn becomes the most recent entry (added, or moved to the end),
    then the least recent entries go until at most `cap` are left. state: [entries, next
    stamp, log head, log tail]; the log lists (hash, stamp) touches oldest first, an entry
    whose stamp is no longer its hash's is stale (touched again later, or removed). The
    caller makes room: the table stays at most half full, the log holds the new touches."""
    mask = table.shape[0] - 1
    count = state[0]
    stamp = state[1]
    tail = state[3]
    for i in range(values.shape[0]):
        value = values[i]
        slot = _slot_of(table, used, mask, value)
        if not used[slot]:
            table[slot] = value
            used[slot] = True
            count += 1
        stamps[slot] = stamp
        log_hash[tail] = value
        log_stamp[tail] = stamp
        tail += 1
        stamp += 1
    head = state[2]
    while count > cap:
        value = log_hash[head]
        old = log_stamp[head]
        head += 1
        slot = _slot_of(table, used, mask, value)
        if used[slot] and stamps[slot] == old:
            _lru_delete(table, used, stamps, slot, mask)
            count -= 1
    state[0] = count
    state[1] = stamp
    state[2] = head
    state[3] = tail


@njit
def _lru_remove(table, used, stamps, state, values):
    """Remove `values` (those present) from the table; their log entries become stale."""
    mask = table.shape[0] - 1
    count = state[0]
    for i in range(values.shape[0]):
        value = values[i]
        slot = _slot_of(table, used, mask, value)
        if used[slot]:
            _lru_delete(table, used, stamps, slot, mask)
            count -= 1
    state[0] = count


@njit
def _lru_compact(table, used, stamps, log_hash, log_stamp, state):
    """Move the log's live entries (oldest first) to its front; drop the stale ones."""
    mask = table.shape[0] - 1
    out = 0
    for j in range(state[2], state[3]):
        value = log_hash[j]
        slot = _slot_of(table, used, mask, value)
        if used[slot] and stamps[slot] == log_stamp[j]:
            log_hash[out] = value
            log_stamp[out] = log_stamp[j]
            out += 1
    state[2] = 0
    state[3] = out


@njit
def _lru_order(table, used, stamps, log_hash, log_stamp, head, tail):
    """The held hashes, least recent first (the log's live entries)."""
    mask = table.shape[0] - 1
    out = np.empty(tail - head, dtype=np.uint64)
    n = 0
    for j in range(head, tail):
        value = log_hash[j]
        slot = _slot_of(table, used, mask, value)
        if used[slot] and stamps[slot] == log_stamp[j]:
            out[n] = value
            n += 1
    return out[:n]


@njit
def _lru_member(table, used, value):
    return _in_table(table, used, table.shape[0] - 1, value)


class _HashLru:
    """An LRU set of uint64 flow hashes (StreamCollector._ignored: released/closed flows, at
    most `cap`) as an open-addressing table the kernels read, kept from batch to batch.

    Why: an OrderedDict of Python ints plus a table rebuilt from a change log cost ~2.5 ms
    per 300k v2 mix for ~1,400 closed flows per batch and collector (the update, the lists
    of changes turned into arrays). Here a batch's closed hashes go in as their array, by
    one kernel call: each touch gets a new stamp, logged; eviction walks the log from its
    oldest entry and skips the stale ones (the same order as the OrderedDict's)."""

    __slots__ = ("cap", "table", "used", "stamps", "log_hash", "log_stamp", "state", "version")

    def __init__(self, cap: int) -> None:
        self.cap = int(cap)
        self.table = np.zeros(16, dtype=np.uint64)
        self.used = np.zeros(16, dtype=bool)
        self.stamps = np.zeros(16, dtype=np.int64)
        self.log_hash = np.zeros(64, dtype=np.uint64)
        self.log_stamp = np.zeros(64, dtype=np.int64)
        self.state = np.zeros(4, dtype=np.int64)  # see _lru_touch
        self.version = 0  # counts touch/remove calls (StreamCollector._selection_stamp)

    def __len__(self) -> int:
        return int(self.state[0])

    def __contains__(self, value: int) -> bool:
        return bool(_lru_member(self.table, self.used, np.uint64(value)))

    def __iter__(self) -> Iterator[int]:
        """The held hashes, least recent first (tests, debugging)."""
        order = _lru_order(self.table, self.used, self.stamps, self.log_hash, self.log_stamp,
                           int(self.state[2]), int(self.state[3]))
        return iter(order.tolist())

    def touch(self, values: np.ndarray) -> None:
        """Each of the uint64 `values` becomes the most recent, in order; then the least
        recent go while more than `cap` are held."""
        n = values.shape[0]
        if n == 0:
            return
        self.version += 1
        size = self.table.size
        while size < 2 * (int(self.state[0]) + n):  # at most half full, always
            size *= 2
        if size != self.table.size:
            self.table, self.used, self.stamps = _lru_rehash(self.table, self.used,
                                                             self.stamps, size)
        if int(self.state[3]) + n > self.log_hash.size:
            _lru_compact(self.table, self.used, self.stamps, self.log_hash, self.log_stamp,
                         self.state)
            live = int(self.state[3])
            if 2 * (live + n) > self.log_hash.size:  # grow: compactions stay O(1) a touch
                grown = max(2 * self.log_hash.size, 2 * (live + n))
                log_hash = np.zeros(grown, dtype=np.uint64)
                log_stamp = np.zeros(grown, dtype=np.int64)
                log_hash[:live] = self.log_hash[:live]
                log_stamp[:live] = self.log_stamp[:live]
                self.log_hash, self.log_stamp = log_hash, log_stamp
        _lru_touch(self.table, self.used, self.stamps, self.log_hash, self.log_stamp,
                   self.state, values, self.cap)

    def remove(self, values: np.ndarray) -> None:
        """Remove the uint64 `values` that are held."""
        if values.shape[0] and self.state[0]:
            self.version += 1
            _lru_remove(self.table, self.used, self.stamps, self.state, values)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(table, used): the open-addressing table of the held hashes (see _in_table)."""
        return self.table, self.used


@njit
def _reopened_at_kernel(at, hashes, table, used):
    """The hashes (row order, repeats kept) of the pure-SYN rows (SYN without ACK) at
    positions `at` of `hashes` (the candidates' syn_at) whose flow is in the open-addressing
    table of released/closed hashes (see _HashLru): read through `at`, no gathered copies of
    flags and hashes (the former _reopened_kernel: tests/stream_select_reference.py)."""
    mask = table.shape[0] - 1
    hits = 0
    n = at.shape[0]
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        if i + 8 < n:
            # the table slot of the SYN 8 ahead (see prefetch): the table is up to a few MB,
            # the probes were waiting on memory one at a time
            ahead = np.int64(hashes[at[i + 8]] & np.uint64(mask))
            prefetch(used, ahead)
            prefetch(table, ahead)
        value = hashes[at[i]]
        if _in_table(table, used, mask, value):
            out[hits] = value
            hits += 1
    return out[:hits]


@njit
def _select_rows_kernel(rows, group_of, group_hash, seq, ack, found, plen, flags, sport,
                        dport, head_matched, port_table, any_ports, it, iu, any_ignored, held,
                        src_port, dst_port, vlan, tcp_flags, ts_ns, payload_offset, src_ip,
                        dst_ip):
    """StreamCollector._select after the reopening test, in one kernel: the per-row opening
    flags, the flow tests, and the columns of the kept candidate rows (the steps it
    replaced are the tests' reference: tests/stream_select_reference.py).

    The flow tests are per flow, not per row: the candidate rows come grouped by flow hash
    (`group_of`, `group_hash`: _flow_groups_kernel's, computed once per batch and shared by
    the collectors), so the ignored table is probed once per flow, and only for flows with
    a row that may open one (the others' answer is never read: a kept row is held, or of a
    flow a non-ignored row opens), the held table once per flow, and the rows' tests are
    lookups in per-flow flags (a few KB) where there were one to three hash probes per row
    (~35 ns per candidate row, per collector). (Probing every flow before the row loop,
    slots prefetched 8 flows ahead, won with caches flushed but lost in place: the table
    is mostly cached there. The kept columns packed as rows of a few 2-D arrays, to box
    fewer returned arrays, lost too: 4.4 -> 5.6 ms per 300k packets.)

    rows/seq/ack/found/plen/flags/sport/dport: the candidate rows (positions into the
    batch) and their columns; head_matched: the client predicate's answer per row with
    payload (empty: none matched); it/iu: the ignored hashes' table; held: held hashes;
    src_port..dst_ip: the batch's packet columns (addresses as (packets, 2) uint64).
    Returns (positions of the kept rows, positions of the handshake rows, fresh, and the
    kept rows' columns: hash, may_open, predicate, seq, ack, found, settled, then
    _gather_kernel's nine)."""
    n = group_of.shape[0]
    n_groups = group_hash.shape[0]
    im = it.shape[0] - 1
    # per flow: bit 0 ignore-tested, 1 ignored, 2 opened by a row of this batch, 3 held
    state = _held_state(group_hash, held)
    # per row: bit 0 may open (port or predicate), bit 1 the predicate matched
    row_code = np.empty(n, dtype=np.uint8)
    opened_order = np.empty(n_groups, dtype=np.int64)  # flows in the order a row opens them
    n_opened = 0
    n_match = head_matched.shape[0]
    use_match = n_match > 0
    all_ports = not any_ports
    at = 0
    # the per-row tests as 0/1 values, only the once-per-flow cases as branches: as
    # branches they mispredicted (rows of flows that open and of flows that do not
    # interleave), ~0.8 ms of ~7 per 300k packets for both collectors
    for i in range(n):
        has = plen[i] > 0
        matched = False
        if use_match:  # head_matched has one entry per row with payload
            # (unsigned indices: no negative-index fix-up per lookup, ~0.4 ms per 300k)
            matched = head_matched[np.uint64(min(at, n_match - 1))] & has
            at += has
        opens = (all_ports | port_table[np.uint64(sport[i])] | port_table[np.uint64(dport[i])]
                 | matched)
        row_code[i] = np.uint8(opens) | (np.uint8(matched) << np.uint8(1))
        act = opens & (has | ((flags[i] & SYN) != 0))  # opening or a handshake: ignored?
        g = group_of[i]
        s = state[g]
        if act and any_ignored and (s & 1) == 0:
            s |= 1
            if _in_table(it, iu, im, group_hash[g]):
                s |= 2
        if act and has and (s & 6) == 0:  # the first opening row of a flow not ignored
            s |= 4
            opened_order[n_opened] = g
            n_opened += 1
        state[g] = s
    keep_at = np.empty(n, dtype=np.int64)
    handshake_at = np.empty(n, dtype=np.int64)
    n_keep = 0
    n_handshake = 0
    for i in range(n):
        s = state[group_of[i]]
        kept = (s & 12) != 0  # opened or held
        keep_at[n_keep] = i  # a slot past the kept ones is overwritten by the next
        n_keep += kept
        handshake_at[n_handshake] = i
        n_handshake += ((not kept) & ((flags[i] & SYN) != 0) & (plen[i] <= 0)
                        & ((row_code[i] & 1) != 0) & ((s & 2) == 0))
    # (a flow is listed in opened_order only when it opens and is not ignored: bit 4 set)
    fresh = _fresh_flows(opened_order, n_opened, state, group_hash)
    return (keep_at[:n_keep], handshake_at[:n_handshake], fresh) + _kept_columns(
        keep_at[:n_keep], row_code, np.uint8(0), state, rows, group_of, group_hash, seq, ack,
        found, plen, src_port, dst_port, vlan, tcp_flags, ts_ns, payload_offset, src_ip, dst_ip)


@njit
def _held_state(group_hash, held):
    """Per flow group: 8 (_select_rows_kernel's "held" bit) if its hash is in `held`."""
    state = np.zeros(group_hash.shape[0], dtype=np.uint8)
    if held.shape[0] > 0:
        ht, hu, hm = _hash_table(held)
        for g in range(group_hash.shape[0]):
            if _in_table(ht, hu, hm, group_hash[g]):
                state[g] = 8
    return state


@njit
def _drop_ignored(state, group_hash, it, iu):
    """The flows with bit 0 in `state` (a row that opens or a handshake) that are in the
    ignored table it/iu get bit 1 (ignored) and lose bit 2 (opened). One probe per flow
    after the row loop, the slots of the flow 8 ahead prefetched (the table is up to a few
    MB: its lines miss the cache), where the row loop probed in line."""
    n_groups = state.shape[0]
    mask = it.shape[0] - 1
    todo = np.empty(n_groups, dtype=np.int64)
    k = 0
    for g in range(n_groups):
        todo[k] = g  # a slot past the listed ones is overwritten by the next
        k += (state[g] & 1) != 0
    for j in range(k):
        if j + 8 < k:
            ahead = np.int64(group_hash[todo[j + 8]] & np.uint64(mask))
            prefetch(it, ahead)
            prefetch(iu, ahead)
        g = todo[j]
        if _in_table(it, iu, mask, group_hash[g]):
            state[g] = (state[g] | np.uint8(2)) & np.uint8(0xFB)


@njit(inline="always")  # no call
def _fresh_flows(opened, n_opened, state, group_hash):
    """The opening flows (not ignored) not held, each once, in first-seen order."""
    fresh = np.empty(n_opened, dtype=np.uint64)
    n_fresh = 0
    for k in range(n_opened):
        g = opened[k]
        if (state[g] & 12) == 4:
            fresh[n_fresh] = group_hash[g]
            n_fresh += 1
    return fresh[:n_fresh]


@njit
def _select_pair_kernel(rows, group_of, group_hash, seq, ack, found, plen, flags, sport, dport,
                        match_a, ports_a, port_mode_a, it_a, iu_a, any_ignored_a, held_a,
                        match_b, ports_b, port_mode_b, it_b, iu_b, any_ignored_b, held_b,
                        src_port, dst_port, vlan, tcp_flags, ts_ns, payload_offset, src_ip,
                        dst_ip):
    """_select_rows_kernel for two collectors fed the same batch (a: the one fed first, b:
    the next; HTTP and TLS), the per-row tests and the keep pass in one pass over the
    candidate rows for both (the shared candidate columns read once, one call), then a's
    kept columns. b's are gathered at b's own feed (_kept_columns on the returned row codes
    and flow states): gathered here, they were out of the cache by the time b reads them.

    Per collector: match (its client predicate's answer per row with payload), ports (its
    port table) with port_mode 0 (every port opens), 1 (the table's ports) or 2 (none: an
    empty table, not read), its ignored table it/iu (any_ignored) and held hashes.
    Returns a's 19 answers as _select_rows_kernel's, then b's keep_at, handshake_at, fresh,
    the row codes (bits 2/3: b's may-open/matched) and b's flow states."""
    n = group_of.shape[0]
    n_groups = group_hash.shape[0]
    state_a = _held_state(group_hash, held_a)  # bits as _select_rows_kernel's
    state_b = _held_state(group_hash, held_b)
    # per row: bits 0/1 a's may-open/predicate matched, 2/3 b's
    row_code = np.empty(n, dtype=np.uint8)
    opened_a = np.empty(n_groups, dtype=np.int64)
    opened_b = np.empty(n_groups, dtype=np.int64)
    n_opened_a = 0
    n_opened_b = 0
    n_match_a = match_a.shape[0]
    n_match_b = match_b.shape[0]
    use_a = n_match_a > 0
    use_b = n_match_b > 0
    all_a = port_mode_a == 0
    all_b = port_mode_b == 0
    table_a = port_mode_a == 1
    table_b = port_mode_b == 1
    # rows per flow and bare SYNs: the kept and handshake lists at their sizes (fresh
    # pages of n-row lists cost page faults)
    flow_rows = np.zeros(n_groups, dtype=np.int64)
    n_bare = 0
    at = 0
    for i in range(n):
        has = plen[i] > 0
        syn = (flags[i] & SYN) != 0
        n_bare += syn & (not has)
        matched_a = False
        matched_b = False
        # (unsigned indices: no negative-index fix-up per lookup)
        if use_a:
            matched_a = match_a[np.uint64(min(at, n_match_a - 1))] & has
        if use_b:
            matched_b = match_b[np.uint64(min(at, n_match_b - 1))] & has
        at += has
        lo = np.uint64(sport[i])
        hi = np.uint64(dport[i])
        opens_a = all_a | matched_a
        if table_a:  # (the same for every row: no misprediction)
            opens_a |= ports_a[lo] | ports_a[hi]
        opens_b = all_b | matched_b
        if table_b:
            opens_b |= ports_b[lo] | ports_b[hi]
        row_code[i] = (np.uint8(opens_a) | (np.uint8(matched_a) << np.uint8(1))
                       | (np.uint8(opens_b) << np.uint8(2))
                       | (np.uint8(matched_b) << np.uint8(3)))
        g = group_of[i]
        flow_rows[g] += 1
        # each collector's flow marks (written out twice: arrays passed to an inlined
        # helper cost reference counting per call): bit 0 a row opens or is a handshake
        # (its flow's ignored test is read), bit 2 a row opens (unless the flow is ignored:
        # tested after the loop, _drop_ignored); the flows in the order a row opens them
        act = opens_a & (has | syn)
        s = state_a[g]
        if act & has & ((s & 4) == 0):
            opened_a[n_opened_a] = g
            n_opened_a += 1
        state_a[g] = s | np.uint8(act) | (np.uint8(act & has) << np.uint8(2))
        act = opens_b & (has | syn)
        s = state_b[g]
        if act & has & ((s & 4) == 0):
            opened_b[n_opened_b] = g
            n_opened_b += 1
        state_b[g] = s | np.uint8(act) | (np.uint8(act & has) << np.uint8(2))
    if any_ignored_a:
        _drop_ignored(state_a, group_hash, it_a, iu_a)
    if any_ignored_b:
        _drop_ignored(state_b, group_hash, it_b, iu_b)
    n_kept_a = 0
    n_kept_b = 0
    for g in range(n_groups):
        n_kept_a += flow_rows[g] if (state_a[g] & 12) != 0 else 0
        n_kept_b += flow_rows[g] if (state_b[g] & 12) != 0 else 0
    # (one spare slot each: a slot past the kept ones is written, then overwritten)
    keep_a = np.empty(n_kept_a + 1, dtype=np.int64)
    keep_b = np.empty(n_kept_b + 1, dtype=np.int64)
    handshake_a = np.empty(n_bare + 1, dtype=np.int64)
    handshake_b = np.empty(n_bare + 1, dtype=np.int64)
    n_keep_a = 0
    n_keep_b = 0
    n_handshake_a = 0
    n_handshake_b = 0
    for i in range(n):
        g = group_of[i]
        sa = state_a[g]
        sb = state_b[g]
        code = row_code[i]
        bare_syn = ((flags[i] & SYN) != 0) & (plen[i] <= 0)
        kept_a = (sa & 12) != 0  # opened or held
        kept_b = (sb & 12) != 0
        keep_a[n_keep_a] = i  # a slot past the kept ones is overwritten by the next
        n_keep_a += kept_a
        keep_b[n_keep_b] = i
        n_keep_b += kept_b
        handshake_a[n_handshake_a] = i
        n_handshake_a += (not kept_a) & bare_syn & ((code & 1) != 0) & ((sa & 2) == 0)
        handshake_b[n_handshake_b] = i
        n_handshake_b += (not kept_b) & bare_syn & ((code & 4) != 0) & ((sb & 2) == 0)
    fresh_a = _fresh_flows(opened_a, n_opened_a, state_a, group_hash)
    fresh_b = _fresh_flows(opened_b, n_opened_b, state_b, group_hash)
    return ((keep_a[:n_keep_a], handshake_a[:n_handshake_a], fresh_a)
            + _kept_columns(keep_a[:n_keep_a], row_code, np.uint8(0), state_a, rows, group_of,
                            group_hash, seq, ack, found, plen, src_port, dst_port, vlan,
                            tcp_flags, ts_ns, payload_offset, src_ip, dst_ip)
            + (keep_b[:n_keep_b], handshake_b[:n_handshake_b], fresh_b, row_code, state_b))


@njit
def _kept_columns(keep_at, row_code, shift, state, rows, group_of, group_hash, seq, ack, found,
                  plen, src_port, dst_port, vlan, tcp_flags, ts_ns, payload_offset, src_ip,
                  dst_ip):
    """The columns of the kept candidate rows `keep_at` of one collector, as
    _select_rows_kernel's gather (its row codes: row_code >> shift; its flow states)."""
    m = keep_at.shape[0]
    k_hash = np.empty(m, dtype=np.uint64)
    k_may_open = np.empty(m, dtype=np.bool_)
    k_predicate = np.empty(m, dtype=np.bool_)
    k_seq = np.empty(m, dtype=np.int64)
    k_ack = np.empty(m, dtype=np.int64)
    k_found = np.empty(m, dtype=np.bool_)
    k_settled = np.empty(m, dtype=np.bool_)
    k_sport = np.empty(m, dtype=src_port.dtype)
    k_dport = np.empty(m, dtype=dst_port.dtype)
    k_vlan = np.empty(m, dtype=vlan.dtype)
    k_flags = np.empty(m, dtype=tcp_flags.dtype)
    k_ts = np.empty(m, dtype=ts_ns.dtype)
    k_off = np.empty(m, dtype=np.int64)
    k_plen = np.empty(m, dtype=np.int64)
    k_src = np.empty((m, 2), dtype=np.uint64)
    k_dst = np.empty((m, 2), dtype=np.uint64)
    src_flat = src_ip.reshape(-1)
    dst_flat = dst_ip.reshape(-1)
    for j in range(m):
        if j + PREFETCH_ROWS < m:
            # the packet columns' lines of a kept row some rows ahead (see prefetch): the
            # kept rows are ~1 in 6 of a batch, so each row's columns miss the cache
            ahead = rows[keep_at[j + PREFETCH_ROWS]]
            prefetch(src_flat, 2 * ahead)
            prefetch(dst_flat, 2 * ahead)
            prefetch(ts_ns, ahead)
            prefetch(payload_offset, ahead)
            prefetch(src_port, ahead)
            prefetch(tcp_flags, ahead)
        i = keep_at[j]
        r = rows[i]
        g = group_of[i]
        s = state[g]
        code = row_code[i] >> shift
        k_hash[j] = group_hash[g]
        # a kept row's flow is held (settled) or opened by a row that is not ignored
        k_may_open[j] = (code & 1) != 0 and (s & 4) != 0
        k_predicate[j] = (code & 2) != 0
        k_seq[j] = seq[i]
        k_ack[j] = ack[i]
        k_found[j] = found[i]
        k_settled[j] = (s & 8) != 0
        k_sport[j] = src_port[r]
        k_dport[j] = dst_port[r]
        k_vlan[j] = vlan[r]
        k_flags[j] = tcp_flags[r]
        k_ts[j] = ts_ns[r]
        k_off[j] = payload_offset[r]
        k_plen[j] = plen[i]
        k_src[j, 0] = src_ip[r, 0]
        k_src[j, 1] = src_ip[r, 1]
        k_dst[j, 0] = dst_ip[r, 0]
        k_dst[j, 1] = dst_ip[r, 1]
    return (k_hash, k_may_open, k_predicate, k_seq, k_ack, k_found, k_settled, k_sport,
            k_dport, k_vlan, k_flags, k_ts, k_off, k_plen, k_src, k_dst)


@njit
def _member_kernel(values, keys):
    """values[i] in keys, by an open-addressing table of `keys` (hashes are already mixed,
    so their low bits index the table): O(n + m) where np.isin sorts."""
    table, used, _ = _hash_table(keys)
    return _set_member(table, used, values)


def hash_member(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """np.isin(values, keys) for uint64 flow hashes (one compiled pass, no sort)."""
    return _member_kernel(np.ascontiguousarray(values, dtype=np.uint64),
                          np.ascontiguousarray(keys, dtype=np.uint64))


def tcp_seq_ack(packets: DecodedPackets, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]:
    """(seq, ack, found) for `rows`, read from the TCP header before each payload.

    The header is located by trying every legal header length (20..60): the right one has
    the row's ports at its start, its own length in the data-offset nibble and the row's
    flags (the shortest such length wins). Rows where no length fits (damaged) have found
    False. One compiled pass; bytes outside the capture buffer read as zero.
    """
    rows = np.asarray(rows, dtype=np.int64)
    return _seq_ack_kernel(np.asarray(packets.data).reshape(-1),
                           packets.payload_offset[rows].astype(np.int64),
                           packets.src_port[rows].astype(np.int64),
                           packets.dst_port[rows].astype(np.int64),
                           packets.tcp_flags[rows].astype(np.int64))


@njit
def _prefix_kernel(head, payload_len, words, bits, sizes):
    """Per row: its 8 head bytes, as one little-endian word, masked by bits[k], equal
    words[k] with payload_len >= sizes[k], for some pattern k. One pass over the rows
    instead of two whole-column operations per pattern."""
    n = head.shape[0]
    width = min(head.shape[1], 8)
    out = np.zeros(n, dtype=np.bool_)
    n_patterns = words.shape[0]
    for i in range(n):
        row = np.uint64(0)
        if width == 8:  # the usual head: a fixed count, unrolled
            for j in range(8):
                row |= np.uint64(head[i, j]) << np.uint64(8 * j)
        else:
            for j in range(width):
                row |= np.uint64(head[i, j]) << np.uint64(8 * j)
        size = payload_len[i]
        # every pattern, no early exit: a branch per pattern mispredicted (0.5 -> 0.27 ms
        # per 300k packets for HTTP's 14)
        hit = False
        for k in range(n_patterns):
            hit |= ((row & bits[k]) == words[k]) & (size >= sizes[k])
        out[i] = hit
    return out


def prefix_predicate(prefixes: Iterable[bytes]) -> ClientPredicate:
    """A client_predicate: payload starts with one of `prefixes` (each <= PREFIX_BYTES)."""
    patterns = [bytes(p) for p in prefixes if 0 < len(p) <= PREFIX_BYTES]
    # each pattern as one 8-byte word and mask: a row's 8 head bytes are one uint64
    words = np.array([int(np.frombuffer(p.ljust(PREFIX_BYTES, b"\0"), dtype="<u8")[0])
                      for p in patterns], dtype=np.uint64)
    bits = np.array([int(np.frombuffer(b"\xff" * len(p) + b"\0" * (PREFIX_BYTES - len(p)),
                                       dtype="<u8")[0]) for p in patterns], dtype=np.uint64)
    sizes = np.array([len(p) for p in patterns], dtype=np.int64)

    def predicate(head: np.ndarray, payload_len: np.ndarray) -> np.ndarray:
        if head.shape[0] == 0:
            return np.zeros(0, dtype=bool)
        shown = sizes <= head.shape[1]  # a pattern longer than the head shows: never
        return _prefix_kernel(np.ascontiguousarray(head, dtype=np.uint8),
                              np.ascontiguousarray(payload_len), words[shown], bits[shown],
                              sizes[shown])

    return predicate


@dataclass
class _Finished:
    """Flows the fast path finished in a batch, in closing order: the index (into the
    batch's selected segments) of each one's closing segment, its flow hash, its final
    chunk and its close reason."""

    close_at: np.ndarray
    hashes: np.ndarray  # uint64
    chunks: list[StreamChunk]
    reasons: list[str]

    @staticmethod
    def empty() -> _Finished:
        return _Finished(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64), [], [])


# The candidate rows of the last batch seen, with their flow hashes, payload heads and
# sequence numbers: (weak reference to the batch, rows, hashes, heads, seq, ack, found,
# {name: what _shared computed from them: gathered columns, flow groups}). Every collector of
# a sensor (HTTP, TLS) is fed the same DecodedPackets object and starts from the same
# candidates; the second one takes them from here. A weak reference: the memo never keeps a
# batch alive, and a dead one never matches a new batch that happens to reuse its id.
_last_candidates: tuple | None = None
_NO_CANDIDATES = (np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64),
                  np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool),
                  np.zeros((0, PREFIX_BYTES), dtype=np.uint8))


def _candidates(packets: DecodedPackets) -> tuple[np.ndarray, ...]:
    """(rows, flow hashes, payload heads of the rows with payload, seq, ack, found) of the
    TCP segments of `packets` that carry payload or SYN/FIN/RST (candidate_scan): the same
    for every collector, so computed once per batch object (module memo, see above)."""
    global _last_candidates
    memo = _last_candidates
    if memo is not None and memo[0]() is packets:
        return memo[1:7]
    tcp = (packets.transport == TCP) & (packets.ip_version != 0)
    control = (packets.tcp_flags & (SYN | FIN | RST)) != 0
    rows = np.flatnonzero(tcp & ((packets.payload_len > 0) | control))
    hashes, seq, ack, found, heads = (candidate_scan(packets, rows) if rows.size
                                      else _NO_CANDIDATES)
    try:
        _last_candidates = (weakref.ref(packets), rows, hashes, heads, seq, ack, found, {})
    except TypeError:  # a batch type without weak references: no memo
        _last_candidates = None
    return rows, hashes, heads, seq, ack, found


def known_heads(packets: DecodedPackets) -> tuple[np.ndarray, np.ndarray] | None:
    """(candidate rows, payload heads of those with payload) of `packets` if a collector
    already scanned this batch object (the memo above), else None: never scans."""
    memo = _last_candidates
    if memo is not None and memo[0]() is packets:
        return memo[1], memo[3]
    return None


# (weak reference to a batch, its latest timestamp): see batch_clock
_last_clock: tuple | None = None


def batch_clock(packets: DecodedPackets) -> int:
    """packets.ts_ns.max() (len(packets) > 0), computed once per batch object: every
    collector fed the batch (HTTP, TLS, the prefiltered ones' clock) advances to it, and
    the column is out of the cache by the later ones."""
    global _last_clock
    memo = _last_clock
    if memo is not None and memo[0]() is packets:
        return memo[1]
    value = int(packets.ts_ns.max())
    try:
        _last_clock = (weakref.ref(packets), value)
    except TypeError:  # a batch type without weak references: nothing remembered
        _last_clock = None
    return value


def _candidate_columns(packets: DecodedPackets, rows: np.ndarray
                       ) -> tuple[np.ndarray, ...]:
    """(payload_len, tcp_flags, src_port, dst_port, the payload lengths of the rows with
    payload, the positions of the pure-SYN rows) of the candidate `rows` (from
    _candidates): gathered once per batch object and shared like the candidates."""
    return _shared(packets, rows, "columns", lambda: _candidate_columns_kernel(
        rows, packets.payload_len, packets.tcp_flags, packets.src_port, packets.dst_port))


@njit
def _candidate_columns_kernel(rows, payload_len, tcp_flags, src_port, dst_port):
    """_candidate_columns' gathers in one pass (the ports as int64), with the lengths of the
    rows with payload (the client predicate's input) and the pure-SYN rows' positions (the
    reopening test's): four fancy indexes, two casts, a boolean index (~0.1 ms a batch) and
    a mask + flatnonzero were ten passes over the rows."""
    n = rows.shape[0]
    plen = np.empty(n, dtype=payload_len.dtype)
    flags = np.empty(n, dtype=tcp_flags.dtype)
    sport = np.empty(n, dtype=np.int64)
    dport = np.empty(n, dtype=np.int64)
    with_payload = np.empty(n, dtype=payload_len.dtype)
    pure_syn = np.empty(n, dtype=np.int64)
    n_payload = 0
    n_syn = 0
    for i in range(n):
        r = rows[i]
        size = payload_len[r]
        f = tcp_flags[r]
        plen[i] = size
        flags[i] = f
        sport[i] = src_port[r]
        dport[i] = dst_port[r]
        # a slot past the kept ones is overwritten by the next (0/1 steps, no branches)
        with_payload[n_payload] = size
        n_payload += size > 0
        pure_syn[n_syn] = i
        n_syn += (f & (SYN | ACK)) == SYN
    return plen, flags, sport, dport, with_payload[:n_payload], pure_syn[:n_syn]


def _candidate_groups(packets: DecodedPackets, rows: np.ndarray, hashes: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(group of each candidate row, hash of each group) of the candidate `rows` and their
    `hashes` (from _candidates; _flow_groups_kernel): computed once per batch object and
    shared like the candidates (every collector's selection tests flows, not rows)."""
    return _shared(packets, rows, "groups", lambda: _flow_groups_kernel(hashes))


def _shared(packets: DecodedPackets, rows: np.ndarray, name: str,
            compute: Callable[[], tuple]) -> tuple:
    """compute(), kept under `name` in the candidates' memo while it holds `rows` of
    `packets` (else computed for this call only)."""
    memo = _last_candidates
    if memo is None or memo[0]() is not packets or memo[1] is not rows:
        return compute()
    extras = memo[7]
    if name not in extras:
        extras[name] = compute()
    return extras[name]



def _packet_columns(packets: DecodedPackets) -> tuple[np.ndarray, ...]:
    """The packet columns the selection gathers at the kept rows (addresses as (packets, 2)
    uint64)."""
    return (packets.src_port, packets.dst_port, packets.vlan, packets.tcp_flags, packets.ts_ns,
            packets.payload_offset,
            np.ascontiguousarray(packets.src_ip).view(np.uint64).reshape(-1, 2),
            np.ascontiguousarray(packets.dst_ip).view(np.uint64).reshape(-1, 2))


def _memo_holds(packets: DecodedPackets, rows: np.ndarray) -> bool:
    """The candidates' memo is of `packets` and holds `rows` (see _shared)."""
    memo = _last_candidates
    return memo is not None and memo[0]() is packets and memo[1] is rows


# (batch, collector) of the last selection (weak references): a collector fed the same batch
# right after another becomes that one's successor, and a collector fed a batch makes its
# successor's selection too (HTTP, then TLS) if that one is not fed the batch yet
# (_select_pair_kernel). Collectors fed other batch objects in between (SSH's and the logins'
# prefiltered subsets) leave the link as it is.
_last_fed: tuple = (None, None)


def _next_collector(packets: DecodedPackets, collector: StreamCollector
                    ) -> StreamCollector | None:
    """Log that `collector` is fed `packets`; its successor if alive and not fed `packets`
    yet, else None."""
    global _last_fed
    try:
        batch = weakref.ref(packets)
    except TypeError:  # a batch type without weak references: no pairs
        return None
    last_batch, last = _last_fed
    if last_batch is not None and last_batch() is packets:
        before = last()
        if before is not None and before is not collector:
            before._successor = weakref.ref(collector)
    _last_fed = (batch, weakref.ref(collector))
    collector._fed = batch
    nxt = None if collector._successor is None else collector._successor()
    if nxt is None or nxt is collector or (nxt._fed is not None and nxt._fed() is packets):
        return None
    return nxt


def _leave_share(packets: DecodedPackets, collector: StreamCollector, share: tuple) -> None:
    """Keep `collector`'s selection answers of `packets` (made by the collector fed before
    it) in the candidates' memo, with what they depend on (_selection_stamp)."""
    _last_candidates[7]["pair"] = (weakref.ref(collector), collector._selection_stamp(), share)


def _pair_share(packets: DecodedPackets, rows: np.ndarray, collector: StreamCollector
                ) -> tuple | None:
    """`collector`'s selection answers left for it by _leave_share, if they are of this
    batch's candidate `rows` and nothing they depend on changed since (else None: the
    collector makes its own)."""
    if not _memo_holds(packets, rows):
        return None
    extras = _last_candidates[7]
    entry = extras.get("pair")
    if entry is None or entry[0]() is not collector:
        return None
    del extras["pair"]
    (objects, counts), (objects_then, counts_then) = collector._selection_stamp(), entry[1]
    if counts != counts_then or any(
            a is not b for a, b in zip(objects, objects_then, strict=True)):
        return None
    return entry[2]


_NO_MATCH = np.zeros(0, dtype=bool)


@njit
def _gather_kernel(rows, src_port, dst_port, vlan, tcp_flags, ts_ns, payload_offset,
                   payload_len, src_ip, dst_ip):
    """StreamCollector._columns' packet columns at `rows`, in one pass: each in its own
    dtype, but the payload offset and length as int64; the addresses as (rows, 2) uint64
    halves of src_ip/dst_ip ((packets, 2) uint64)."""
    m = rows.shape[0]
    sport = np.empty(m, dtype=src_port.dtype)
    dport = np.empty(m, dtype=dst_port.dtype)
    vlan_out = np.empty(m, dtype=vlan.dtype)
    flags = np.empty(m, dtype=tcp_flags.dtype)
    ts = np.empty(m, dtype=ts_ns.dtype)
    off = np.empty(m, dtype=np.int64)
    plen = np.empty(m, dtype=np.int64)
    src = np.empty((m, 2), dtype=np.uint64)
    dst = np.empty((m, 2), dtype=np.uint64)
    for i in range(m):
        r = rows[i]
        sport[i] = src_port[r]
        dport[i] = dst_port[r]
        vlan_out[i] = vlan[r]
        flags[i] = tcp_flags[r]
        ts[i] = ts_ns[r]
        off[i] = payload_offset[r]
        plen[i] = payload_len[r]
        src[i, 0] = src_ip[r, 0]
        src[i, 1] = src_ip[r, 1]
        dst[i, 0] = dst_ip[r, 0]
        dst[i, 1] = dst_ip[r, 1]
    return sport, dport, vlan_out, flags, ts, off, plen, src, dst


@njit
def _fast_walk_kernel(starts, rows, flags_col, plen_col, seq_col, ack_col, sport_col,
                      dport_col, vlan_col, src_col, dst_col, may_open_col, predicate_col,
                      ts_col, port_table, any_ports, cap, max_meta):
    """The fast path's test, one walk per flow (rows grouped by flow hash, time order within;
    a group runs from starts[g] to the next start). Per flow: its opening row (the first that
    may open it and is no RST), the sender's role (as StreamCollector._open), each row's
    direction, the base sequence number per direction (as _segment sets it), running byte,
    FIN and payload-segment counts, and the closing row (FIN from both sides, RST, or both
    directions done with the segment list full). The flow is fast when it closes in the batch
    and nothing needs the loop: every row up to the close belongs to it (not self-talk, not a
    hash collision), carries no payload with a SYN, no second SYN per direction, no pure SYN
    after the opening row (also none after the close), and each payload continues its
    direction exactly where its bytes end, before any FIN of that side.

    The rows are positions `rows` of the selected segments' columns (*_col; src_col and
    dst_col as (segments, 2) uint64 halves), read through `rows`; whether the opening row's
    source/destination port is selected comes from `port_table` when `any_ports` (else
    neither is: every port is selected).

    Returns per row (direction, before = bytes of its direction before it, upto = part of
    the flow up to its close), per group (first_open, close: row positions or len(rows) + 1
    when none; fast; never = no row may open it) and a (groups, 8) int64 table per group:
    client is the opening row's sender, how (CLIENT_BY index), FIN/RST seen per direction
    at the close, cap reached per direction at the close, RST on the closing row, the
    latest time of the rows from the opening row to the close (the chunk's last_ts, taken
    here where those rows are read anyway: a pass of its own in _fast_rows_kernel read
    them again, ~0.8 of ~3 ms per 300k packets, caches cold). Only indexes inside
    [0, len(rows)) are read."""
    m = rows.shape[0]
    # the columns are read through `rows` where needed, not gathered first: the selected
    # rows' columns are fresh from the selection, and eight gather passes (~1 MB written
    # and read back per batch) cost more than the indirect reads (1.72 -> 1.44 ms per 300k
    # packets, caches flushed)
    n_groups = starts.shape[0]
    big = m + 1
    direction = np.zeros(m, dtype=np.int64)
    before = np.zeros(m, dtype=np.int64)
    upto = np.zeros(m, dtype=np.bool_)
    first_open = np.full(n_groups, big, dtype=np.int64)
    close = np.full(n_groups, big, dtype=np.int64)
    fast = np.zeros(n_groups, dtype=np.bool_)
    never = np.zeros(n_groups, dtype=np.bool_)
    per_group = np.zeros((n_groups, 8), dtype=np.int64)
    for g in range(n_groups):
        lo = starts[g]
        hi = starts[g + 1] if g + 1 < n_groups else m
        o = big
        for p in range(lo, hi):
            if may_open_col[rows[p]] and (flags_col[rows[p]] & RST) == 0:
                o = p
                break
        first_open[g] = o
        if o == big:
            never[g] = True
            continue
        ro = rows[o]
        of = np.int64(flags_col[ro])
        o_sport = np.int64(sport_col[ro])
        o_dport = np.int64(dport_col[ro])
        o_vlan = np.int64(vlan_col[ro])
        o_pure = (of & (SYN | ACK)) == SYN
        if o_pure:
            client, how = True, 0
        elif (of & SYN) != 0:
            client, how = False, 1
        elif predicate_col[ro]:
            client, how = True, 2
        elif any_ports and port_table[o_sport] != port_table[o_dport]:
            client, how = port_table[o_dport], 3
        else:
            client, how = o_sport > o_dport, 4
        # first pass: directions, per-row faults, first rows and SYNs per direction
        bad = False
        first_row0, first_row1 = big, big
        first_ack0, first_ack1 = big, big  # first row with ACK from the other direction
        syns0, syns1 = 0, 0
        for p in range(o, hi):
            r = rows[p]
            # (short-circuit tests on the rows' own columns: o's fields hoisted into locals
            # and tested branch-free measured slower)
            same = (src_col[r, 0] == src_col[ro, 0] and src_col[r, 1] == src_col[ro, 1]
                    and dst_col[r, 0] == dst_col[ro, 0] and dst_col[r, 1] == dst_col[ro, 1]
                    and sport_col[r] == o_sport and dport_col[r] == o_dport
                    and vlan_col[r] == o_vlan)
            rev = (src_col[r, 0] == dst_col[ro, 0] and src_col[r, 1] == dst_col[ro, 1]
                   and dst_col[r, 0] == src_col[ro, 0] and dst_col[r, 1] == src_col[ro, 1]
                   and sport_col[r] == o_dport and dport_col[r] == o_sport
                   and vlan_col[r] == o_vlan)
            d = 1 if same != client else 0
            direction[p] = d
            f = np.int64(flags_col[r])
            if d == 0:
                if first_row0 == big:
                    first_row0 = p
                if (f & ACK) != 0 and first_ack1 == big:
                    first_ack1 = p
                if (f & SYN) != 0:
                    syns0 += 1
            else:
                if first_row1 == big:
                    first_row1 = p
                if (f & ACK) != 0 and first_ack0 == big:
                    first_ack0 = p
                if (f & SYN) != 0:
                    syns1 += 1
            # a fault of this row spoils the flow if the row is up to the close or is a
            # pure SYN (checked in the second pass); note it in `before` meanwhile
            before[p] = 1 if (same == rev or ((f & SYN) != 0 and plen_col[r] > 0)
                              or ((f & (SYN | ACK)) == SYN and p > o)) else 0
        base0, base1 = 0, 0
        if first_row0 != big:
            f0 = first_row0
            syn0 = 1 if (flags_col[rows[f0]] & SYN) != 0 else 0
            if f0 < first_ack0 or syn0 == 1:
                base0 = (np.int64(seq_col[rows[f0]]) + syn0) % SEQ_MOD
            else:
                base0 = ack_col[rows[first_ack0]] % SEQ_MOD
        if first_row1 != big:
            f1 = first_row1
            syn1 = 1 if (flags_col[rows[f1]] & SYN) != 0 else 0
            if f1 < first_ack1 or syn1 == 1:
                base1 = (np.int64(seq_col[rows[f1]]) + syn1) % SEQ_MOD
            else:
                base1 = ack_col[rows[first_ack1]] % SEQ_MOD
        # second pass, in time order: running counts, faults up to the close, the close
        sent0, sent1, fins0, fins1, meta = 0, 0, 0, 0, 0
        latest = _INT64_MIN
        c = big
        for p in range(o, hi):
            d = direction[p]
            r = rows[p]
            f = np.int64(flags_col[r])
            row_bad = before[p] == 1 or (syns0 if d == 0 else syns1) > 1
            pure_syn = (f & (SYN | ACK)) == SYN
            if c != big:  # after the close: only a faulty pure SYN spoils the flow
                if pure_syn and row_bad:
                    bad = True
                before[p] = 0
                continue
            upto[p] = True
            latest = max(latest, np.int64(ts_col[r]))
            ended = (f & (FIN | RST)) != 0
            n = np.int64(plen_col[r])
            if d == 0:
                own_before, base = sent0, base0
                fin_before = fins0 > 0
                sent0 += n
                if ended:
                    fins0 += 1
            else:
                own_before, base = sent1, base1
                fin_before = fins1 > 0
                sent1 += n
                if ended:
                    fins1 += 1
            if n > 0:
                meta += 1
                rel = (np.int64(seq_col[r]) - base) % SEQ_MOD
                if rel != own_before or own_before + n >= SEQ_HALF or fin_before:
                    row_bad = True
            if row_bad:
                bad = True
            before[p] = own_before
            fin0, fin1 = fins0 > 0, fins1 > 0
            full0, full1 = sent0 >= cap, sent1 >= cap
            rst = (f & RST) != 0
            if (fin0 and fin1) or rst or ((fin0 or full0) and (fin1 or full1)
                                          and meta >= max_meta):
                c = p
                per_group[g, 2] = fin0
                per_group[g, 3] = fin1
                per_group[g, 4] = full0
                per_group[g, 5] = full1
                per_group[g, 6] = rst
        close[g] = c
        per_group[g, 0] = client
        per_group[g, 1] = how
        per_group[g, 7] = latest
        fast[g] = c != big and not bad
    return direction, before, upto, first_open, close, fast, never, per_group


_CLOSE_REASON_OBJECTS = np.array(CLOSE_REASONS, dtype=object)  # reason code -> str
# int64 bounds for the kernels, as module constants (numba freezes them into the code)
_INT64_MAX = np.int64(np.iinfo(np.int64).max)
_INT64_MIN = np.int64(np.iinfo(np.int64).min)


@njit
def _fast_groups_kernel(flow_of, found, settled, excluded):
    """The rows the fast path may take (found, not settled, not excluded: `excluded` empty
    for none) by flow (numbered in first-seen order), time order within:
    (rows, group of each, each group's first position in them). One pass where a mask,
    a gather, two permutations, a bincount and a cumsum were seven. `flow_of`: each row's
    flow as the batch's grouping numbers it (_candidate_groups' group_of; -1 for replayed
    rows, which are never taken), so flows are renumbered by a lookup, not a hash table
    (~1 ms per 300k packets)."""
    n = flow_of.shape[0]
    any_excluded = excluded.shape[0] > 0
    n_flows = 0
    for i in range(n):
        n_flows = max(n_flows, flow_of[i] + 1)
    number = np.full(n_flows, -1, dtype=np.int64)  # batch flow -> fast-path group
    picked = np.empty(n, dtype=np.int64)
    group_of = np.empty(n, dtype=np.int64)
    m = 0
    n_groups = 0
    for i in range(n):
        if found[i] and not settled[i] and not (any_excluded and excluded[i]):
            f = flow_of[i]
            g = number[f]
            if g < 0:
                g = n_groups
                number[f] = g
                n_groups += 1
            picked[m] = i
            group_of[m] = g
            m += 1
    first = np.zeros(n_groups + 1, dtype=np.int64)  # counting sort by group (stable)
    for i in range(m):
        first[group_of[i] + 1] += 1
    for g in range(n_groups):
        first[g + 1] += first[g]
    starts = first[:n_groups].copy()
    rows = np.empty(m, dtype=np.int64)
    gid = np.empty(m, dtype=np.int64)
    for i in range(m):
        g = group_of[i]
        j = first[g]
        first[g] += 1
        rows[j] = picked[i]
        gid[j] = g
    return rows, gid, starts


@njit
def _loop_rows_kernel(n, rows, gid, never, fast):
    """The positions of the n selected rows the loop still sees: all but the rows of
    groups that never open (the loop would skip every one) or that the fast path
    finished."""
    loop_rows = np.ones(n, dtype=np.bool_)
    for p in range(rows.shape[0]):
        g = gid[p]
        if never[g] or fast[g]:
            loop_rows[rows[p]] = False
    looped = 0
    for i in range(n):
        looped += loop_rows[i]
    looped_at = np.empty(looped, dtype=np.int64)
    looped = 0
    for i in range(n):
        if loop_rows[i]:
            looped_at[looped] = i
            looped += 1
    return looped_at


@njit
def _fast_segments_kernel(gid, direction, before, upto, fast, plen_col, off_col, rows, n_keys,
                          cap):
    """_fast_chunks' first pass. Rows (positions p into `rows`, grouped by flow, time order
    within) up to their fast flow's close that carry payload are `carried`; grouped by
    key = 2 * flow + direction (stable: time order kept) they are the segments to copy:
    their key, how many bytes each adds below the cap (`take`) and where its payload is
    (`at`); key k's segments are bounds[k]:bounds[k + 1], and whole[k] is their `take`
    (the key's length before a consumer's trim). `upto` is narrowed to the fast flows'
    rows, in place. plen_col/off_col: columns of the selected segments, read at rows[p]."""
    m = rows.shape[0]
    n_carried = 0
    for p in range(m):
        upto[p] = upto[p] and fast[gid[p]]
        if upto[p] and plen_col[rows[p]] > 0:
            n_carried += 1
    carried = np.empty(n_carried, dtype=np.int64)
    first = np.zeros(n_keys + 1, dtype=np.int64)  # counting sort by key
    at_c = 0
    for p in range(m):
        if upto[p] and plen_col[rows[p]] > 0:
            carried[at_c] = p
            at_c += 1
            first[2 * gid[p] + direction[p] + 1] += 1
    for k in range(n_keys):
        first[k + 1] += first[k]
    bounds = first.copy()
    key_seg = np.empty(n_carried, dtype=np.int64)
    take = np.empty(n_carried, dtype=np.int64)
    at = np.empty(n_carried, dtype=np.int64)
    whole = np.zeros(n_keys, dtype=np.int64)
    for c in range(n_carried):
        p = carried[c]
        k = 2 * gid[p] + direction[p]
        j = first[k]
        first[k] += 1
        key_seg[j] = k
        size = np.int64(plen_col[rows[p]])
        part = min(max(cap - before[p], 0), size)
        take[j] = part
        whole[k] += part
        at[j] = off_col[rows[p]]
    return carried, key_seg, take, at, bounds, whole


@njit
def _cut_kernel(take, bounds, wanted):
    """`take` cut so that each key k (segments bounds[k]:bounds[k + 1], in sequence order)
    keeps only its first wanted[k] bytes (a new array)."""
    out = np.empty_like(take)
    for k in range(bounds.shape[0] - 1):
        left = wanted[k]
        for j in range(bounds[k], bounds[k + 1]):
            part = min(max(left, 0), take[j])
            out[j] = part
            left -= take[j]
    return out


@njit
def _fast_rows_kernel(take, key_seg, carried, gid, direction, fast, starts, first_open,
                      close, per_group, rows, plen_col, ts_col, sport_col, dport_col,
                      vlan_col, hash_col, src_ip, dst_ip, max_meta):
    """_fast_chunks' second pass: the StreamBatch columns of the fast flows, one row per
    flow in closing order (the order of their closing rows), as the loop would emit them.
    Per (flow, direction) key its bytes are [key_start, key_end) of the copied segments
    (in key order); packets are the first max_meta payload segments of each flow, listed
    in flow order (packet_start/stop index them); times, ports, addresses and flags as
    StreamCollector._chunk gives them. src_ip/dst_ip: (segments, 2) uint64 halves.
    Returns the columns packed by type, seven arrays where there were 21 (each array a
    kernel returns costs ~1.5 us to box; _fast_chunks takes their rows): int64 (11, n)
    close_at, packet_start, packet_stop, last_ts, client_port, server_port, vlan,
    client_by, start_ts, reason code, group; the hashes; spans (n, 4); first_ts (n, 2);
    packets (3, listed): ts, direction, length; addresses (2, n, 2) uint64: client,
    server; flags (2, n, 2) bool: ended, capped."""
    n_groups = starts.shape[0]
    n_keys = 2 * n_groups
    big = _INT64_MAX
    key_end = np.zeros(n_keys, dtype=np.int64)
    for j in range(take.shape[0]):
        key_end[key_seg[j]] += take[j]
    total = 0
    for k in range(n_keys):
        total += key_end[k]
        key_end[k] = total
    # first payload row per key (carried is in row order), payload rows per flow
    first_data = np.full(n_keys, big, dtype=np.int64)
    per_flow = np.zeros(n_groups, dtype=np.int64)
    for c in range(carried.shape[0]):
        p = carried[c]
        k = 2 * gid[p] + direction[p]
        if first_data[k] == big:
            first_data[k] = p
        per_flow[gid[p]] += 1
    meta_stop_g = np.empty(n_groups, dtype=np.int64)
    listed_total = 0
    for g in range(n_groups):
        listed_total += min(per_flow[g], max_meta)
        meta_stop_g[g] = listed_total
    packets = np.empty((3, listed_total), dtype=np.int64)  # packet_ts, packet_dir, packet_len
    seen = np.zeros(n_groups, dtype=np.int64)
    at_l = 0
    for c in range(carried.shape[0]):  # grouped by flow: each flow's first max_meta rows
        p = carried[c]
        g = gid[p]
        if seen[g] < max_meta:
            packets[0, at_l] = ts_col[rows[p]]
            packets[1, at_l] = direction[p]
            packets[2, at_l] = plen_col[rows[p]]
            at_l += 1
        seen[g] += 1
    # the fast flows, in closing order (their closing rows are distinct)
    n = 0
    for g in range(n_groups):
        if fast[g]:
            n += 1
    groups = np.empty(n, dtype=np.int64)
    close_key = np.empty(n, dtype=np.int64)
    n = 0
    for g in range(n_groups):
        if fast[g]:
            groups[n] = g
            close_key[n] = rows[close[g]]
            n += 1
    groups = groups[np.argsort(close_key, kind="mergesort")]
    # the columns packed by type: rows of 2-D arrays (each a C-contiguous column)
    ints = np.empty((11, n), dtype=np.int64)
    hash_values = np.empty(n, dtype=np.uint64)
    spans = np.empty((n, 4), dtype=np.int64)
    first_ts = np.empty((n, 2), dtype=np.int64)
    addresses = np.empty((2, n, 2), dtype=np.uint64)  # client, server
    flags = np.empty((2, n, 2), dtype=np.bool_)  # ended, capped
    ints[10, :] = groups
    for i in range(n):
        g = groups[i]
        o = rows[first_open[g]]
        ints[0, i] = rows[close[g]]  # close_at
        hash_values[i] = hash_col[o]
        for d in range(2):
            k = 2 * g + d
            lo = key_end[k - 1] if k > 0 else 0
            spans[i, 2 * d] = lo
            spans[i, 2 * d + 1] = key_end[k] - lo
            first_ts[i, d] = ts_col[rows[first_data[k]]] if first_data[k] != big else -1
        ints[2, i] = meta_stop_g[g]  # meta_stop
        ints[1, i] = meta_stop_g[g] - min(per_flow[g], max_meta)  # meta_start
        ints[3, i] = per_group[g, 7]  # last_ts: the walk's, over the rows up to the close
        client = per_group[g, 0] != 0
        sport = np.int64(sport_col[o])
        dport = np.int64(dport_col[o])
        for h in range(2):
            addresses[0, i, h] = src_ip[o, h] if client else dst_ip[o, h]
            addresses[1, i, h] = dst_ip[o, h] if client else src_ip[o, h]
        ints[4, i] = sport if client else dport  # client_port
        ints[5, i] = dport if client else sport  # server_port
        ints[6, i] = vlan_col[o]
        ints[7, i] = per_group[g, 1]  # how
        ints[8, i] = ts_col[o]  # start_ts
        flags[0, i, 0] = per_group[g, 2] != 0  # ended
        flags[0, i, 1] = per_group[g, 3] != 0
        flags[1, i, 0] = per_group[g, 4] != 0  # capped
        flags[1, i, 1] = per_group[g, 5] != 0
        if per_group[g, 2] != 0 and per_group[g, 3] != 0:
            ints[9, i] = 0  # reason code: fin
        elif per_group[g, 6] != 0:
            ints[9, i] = 1  # rst
        else:
            ints[9, i] = 2  # capped
    return ints, hash_values, spans, first_ts, packets, addresses, flags


class StreamCollector:
    """Per-flow, per-direction bounded reassembly of selected TCP flows (see module doc).

    `feed(packets)` returns a chunk for every flow that changed in the batch (new bytes,
    packets, FIN/RST) or became final; `flush()` returns every held flow, final. A consumer
    that has what it needs calls `release(chunk.key)`: the flow's state is dropped and its
    later segments are skipped column-wise. `trim` (optional): how much of a flow the
    consumer reads (StreamTrim); the fast path copies no bytes past it.
    """

    def __init__(
        self,
        ports: set[int] | None,
        max_bytes_per_dir: int = 16384,
        max_flows: int = 10000,
        idle_timeout_s: float = 300.0,
        *,
        client_predicate: ClientPredicate | None = None,
        max_bytes_total: int = 64 << 20,
        max_packets_meta: int = 64,
        max_ooo_segments: int = 64,
        fast_path: bool = True,
        trim: StreamTrim | None = None,
    ) -> None:
        self.ports = None if ports is None else frozenset(int(p) for p in ports)
        # port -> selected (a lookup per row, where np.isin sorts)
        self._port_table = np.zeros(65536, dtype=bool)
        if self.ports is not None:
            self._port_table[[p for p in self.ports if 0 <= p < 65536]] = True
        self.max_bytes_per_dir = max(int(max_bytes_per_dir), 1)
        self.max_flows = max(int(max_flows), 1)
        self.idle_ns = int(float(idle_timeout_s) * NS)
        self.client_predicate = client_predicate
        self.max_bytes_total = int(max_bytes_total)
        self.max_packets_meta = int(max_packets_meta)
        self.max_ooo_segments = int(max_ooo_segments)
        self.fast_path = bool(fast_path)  # False: every selected segment goes through the loop
        self.trim = trim
        self.max_ignored = 4 * self.max_flows
        self.flows: OrderedDict[FlowKey, _Flow] = OrderedDict()  # least recently active first
        self._by_hash: dict[int, list[FlowKey]] = {}
        self._ignored = _HashLru(self.max_ignored)  # released/closed flow hashes, LRU
        self._held_version = 0  # counts changes of _by_hash (see _selection_stamp)
        # the collector fed the same batches right after this one, the last batch fed (weak
        # references; see _next_collector)
        self._successor: weakref.ref | None = None
        self._fed: weakref.ref | None = None
        self.held_bytes = 0
        self.clock = np.iinfo(np.int64).min
        # SYN/SYN-ACK rows of flows not held yet (columns as the loop reads them)
        self._handshakes: dict[str, np.ndarray] | None = None
        self._scratch = np.zeros(0, dtype=np.uint8)  # see _spans
        self._batch_buf = np.zeros(0, dtype=np.uint8)  # see _batch_buffer
        # during feed_joined: the fast path's payload spans, copied once the batch is done
        self._joined_spans: list | None = None
        self.stats: dict[str, int] = {}

    # --- public -------------------------------------------------------------------------------

    def feed(self, packets: DecodedPackets) -> list[StreamChunk]:
        """Add a decoded batch; chunks of the flows that changed or ended."""
        if len(packets):
            self.clock = max(self.clock, batch_clock(packets))
        out: list[StreamChunk] = []
        columns = self._select(packets)
        if columns["hash"].size:
            self._segments(packets, columns, out)
        self._expire_idle(out)
        self._enforce_bounds(out)
        for flow in list(self.flows.values()):
            if flow.changed:
                flow.changed = False
                out.append(self._chunk(flow, final=False, reason=""))
        return out

    def feed_joined(self, packets: DecodedPackets) -> StreamBatch:
        """feed(packets), with every chunk's bytes in one buffer (StreamBatch): the fast
        path's payload is copied once, straight from the capture into that buffer, and its
        chunks make their `data` bytes only if asked for."""
        self._joined_spans = []
        try:
            chunks = self.feed(packets)
            return self._join(chunks, self._joined_spans)
        finally:
            self._joined_spans = None

    def flush_joined(self) -> StreamBatch:
        """flush(), as a StreamBatch (see feed_joined)."""
        return self._join(self.flush(), [])

    def flush(self) -> list[StreamChunk]:
        """End of input: every held flow, final (reason "flush")."""
        out: list[StreamChunk] = []
        for key in list(self.flows):
            out.append(self._close(key, "flush"))
        return out

    def release(self, key: FlowKey) -> None:
        """The consumer needs nothing more of this flow: drop it, skip its later segments."""
        flow = self.flows.pop(key, None)
        if flow is not None:
            self._forget(flow)
            self._ignore(flow.hash)

    @property
    def held_flows(self) -> int:
        """Flows currently held (no __len__: a collector must not be falsy when empty)."""
        return len(self.flows)

    # --- selection (column-wise) --------------------------------------------------------------

    def _select(self, packets: DecodedPackets) -> dict[str, np.ndarray]:
        """Columns of the segments the loop must see (replayed handshake rows first).

        Only a segment with payload opens a flow (a SYN flood must cost no Python and no
        state): its flow's other rows of the batch are kept too, so a flow opened by the
        predicate gets its later segments of the same batch. A SYN/SYN-ACK of a flow not
        held is remembered in a bounded column store and replayed when payload opens its
        flow in a later batch, so orientation and base sequence numbers stay exact.
        """
        rows, hashes, head, seq, ack, found = _candidates(packets)
        partner = _next_collector(packets, self)
        if rows.size == 0:
            columns = self._columns(packets, rows, np.zeros(0, dtype=np.uint64),
                                    np.zeros(0, dtype=bool), np.zeros(0, dtype=bool))
            columns["replayed"] = np.zeros(0, dtype=bool)
            columns["settled"] = np.zeros(0, dtype=bool)
            columns["flow"] = np.zeros(0, dtype=np.int64)
            return columns
        group_of, group_hash = _candidate_groups(packets, rows, hashes)
        # the selection's answers: taken from the collector fed this batch before this one
        # (HTTP's selection also makes TLS's: _select_pair_kernel), else computed here
        share = _pair_share(packets, rows, self)
        if share is None:
            picked = self._select_rows(packets, rows, hashes, head, seq, ack, found,
                                       (group_of, group_hash), partner)
        else:  # (keep_at, handshake_at, fresh, row codes, flow states)
            picked = share[:3] + _kept_columns(
                share[0], share[3], np.uint8(2), share[4], rows, group_of, group_hash, seq,
                ack, found, _candidate_columns(packets, rows)[0], *_packet_columns(packets))
        (keep_at, handshake_at, fresh, k_hash, k_may_open, k_predicate, k_seq, k_ack, k_found,
         k_settled, k_sport, k_dport, k_vlan, k_flags, k_ts, k_off, k_plen, k_src,
         k_dst) = picked
        if handshake_at.size:
            at = handshake_at
            self._remember_handshakes(packets, rows[at], hashes[at], (seq[at], ack[at], found[at]))
        self.stats["segments_selected"] = (self.stats.get("segments_selected", 0)
                                           + int(keep_at.size))
        m = keep_at.size
        columns = {"hash": k_hash, "may_open": k_may_open, "predicate": k_predicate,
                   "seq": k_seq, "ack": k_ack, "found": k_found, "sport": k_sport,
                   "dport": k_dport, "vlan": k_vlan, "flags": k_flags, "ts": k_ts,
                   "off": k_off, "plen": k_plen,
                   "src_ip": k_src.view(packets.src_ip.dtype).reshape(m, *packets.src_ip.shape[1:]),
                   "dst_ip": k_dst.view(packets.dst_ip.dtype).reshape(m, *packets.dst_ip.shape[1:]),
                   "replayed": np.zeros(m, dtype=bool),
                   "settled": k_settled,  # held or ignored: left to the loop
                   # the batch's flow numbers (fast path); written by the kernel as one
                   # more kept column it cost ~0.4 ms more than this fancy index per 300k
                   "flow": group_of[keep_at]}
        replay = self._take_handshakes(fresh)
        if replay is not None:
            replay["replayed"] = np.ones(replay["hash"].size, dtype=bool)
            replay["settled"] = np.ones(replay["hash"].size, dtype=bool)
            replay["flow"] = np.full(replay["hash"].size, -1, dtype=np.int64)
            columns = {name: np.concatenate([replay[name], columns[name]]) for name in columns}
        return columns

    def _select_rows(self, packets: DecodedPackets, rows: np.ndarray, hashes: np.ndarray,
                     head: np.ndarray, seq: np.ndarray, ack: np.ndarray, found: np.ndarray,
                     groups: tuple[np.ndarray, np.ndarray], partner: StreamCollector | None
                     ) -> tuple[np.ndarray, ...]:
        """_select_rows_kernel's answers for this collector. With a `partner` (the collector
        fed after this one last batch, not fed this batch yet) whose released/closed flows no
        SYN of the batch reopens, its answers are made in the same pass
        (_select_pair_kernel) and left in the batch's memo for its own feed (_pair_share)."""
        # (with_payload, syn_at: the lengths of the rows with payload and the pure-SYN rows'
        # positions, shared by the collectors like plen)
        plen, row_flags, sport, dport, with_payload, syn_at = _candidate_columns(packets, rows)
        group_of, group_hash = groups  # (_candidate_groups)
        head_matched = self._matched(head, with_payload)
        table, used = self._ignored.arrays()
        if len(self._ignored):
            # a SYN on a released/closed flow's ports is a new connection: forget the old one
            # (only a pure SYN reopens)
            reopened = _reopened_at_kernel(syn_at, hashes, table, used)
            if reopened.size:
                self._ignored.remove(reopened)
                table, used = self._ignored.arrays()
        # per row: may it open a flow (its port or the predicate); the flows this batch may
        # open, the rows to keep (theirs and the held flows'), SYNs to remember, and the kept
        # rows' columns: one compiled pass
        held = np.fromiter(self._by_hash, dtype=np.uint64, count=len(self._by_hash))
        packet_columns = _packet_columns(packets)
        theirs = None
        if partner is not None and _memo_holds(packets, rows):
            theirs = partner._pair_inputs(head, with_payload, syn_at, hashes)
        if theirs is None:
            return _select_rows_kernel(
                rows, group_of, group_hash, seq, ack, found, plen, row_flags, sport, dport,
                head_matched, self._port_table, self.ports is not None, table, used,
                len(self._ignored) > 0, held, *packet_columns)
        answers = _select_pair_kernel(
            rows, group_of, group_hash, seq, ack, found, plen, row_flags, sport, dport,
            head_matched, self._port_table, self._port_mode(), table, used,
            len(self._ignored) > 0, held, *theirs, *packet_columns)
        # the partner's kept columns are gathered at its feed (_kept_columns), where it reads
        # them: gathered here, they were out of the cache by then
        _leave_share(packets, partner, answers[19:])
        return answers[:19]

    def _matched(self, head: np.ndarray, with_payload: np.ndarray) -> np.ndarray:
        """Per candidate row with payload: the client predicate's answer (empty: none)."""
        if self.client_predicate is not None and head.shape[0]:
            return np.asarray(self.client_predicate(head, with_payload), dtype=bool)
        return _NO_MATCH

    def _port_mode(self) -> int:
        """_select_pair_kernel's port_mode: 0 every port opens, 1 the table's, 2 none."""
        if self.ports is None:
            return 0
        return 1 if self._port_table.any() else 2

    def _pair_inputs(self, head: np.ndarray, with_payload: np.ndarray, syn_at: np.ndarray,
                     hashes: np.ndarray) -> tuple | None:
        """This collector's inputs of _select_pair_kernel, as its own _select would make
        them, or None when a SYN of the batch reopens one of its released/closed flows (its
        own feed removes those first: left to it)."""
        table, used = self._ignored.arrays()
        if len(self._ignored) and _reopened_at_kernel(syn_at, hashes, table, used).size:
            return None
        held = np.fromiter(self._by_hash, dtype=np.uint64, count=len(self._by_hash))
        return (self._matched(head, with_payload), self._port_table, self._port_mode(), table,
                used, len(self._ignored) > 0, held)

    def _selection_stamp(self) -> tuple:
        """What a selection of this collector depends on besides the batch: (its settings
        and flow tables, compared by identity; the versions of its held and released/closed
        flows, compared by value)."""
        return ((self._ignored, self.client_predicate, self._port_table, self.ports),
                (self._ignored.version, self._held_version, len(self._by_hash)))

    @staticmethod
    def _columns(packets: DecodedPackets, rows: np.ndarray, hashes: np.ndarray,
                 may_open: np.ndarray, predicate: np.ndarray,
                 seq_ack: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                 ) -> dict[str, np.ndarray]:
        """The per-segment columns the loop reads, for `rows` (`seq_ack`: their (seq, ack,
        found) when already known, else read here)."""
        seq, ack, found = tcp_seq_ack(packets, rows) if seq_ack is None else seq_ack
        rows = np.asarray(rows, dtype=np.int64)
        # one compiled gather of the nine packet columns (a numpy call each cost more)
        sport, dport, vlan, flags, ts, off, plen, src_ip, dst_ip = _gather_kernel(
            rows, packets.src_port, packets.dst_port, packets.vlan, packets.tcp_flags,
            packets.ts_ns, packets.payload_offset, packets.payload_len,
            np.ascontiguousarray(packets.src_ip).view(np.uint64).reshape(-1, 2),
            np.ascontiguousarray(packets.dst_ip).view(np.uint64).reshape(-1, 2))
        return {"hash": hashes, "may_open": may_open, "predicate": predicate, "seq": seq,
                "ack": ack, "found": found, "sport": sport, "dport": dport, "vlan": vlan,
                "flags": flags, "ts": ts, "off": off, "plen": plen,
                "src_ip": src_ip.view(packets.src_ip.dtype).reshape(rows.size,
                                                                    *packets.src_ip.shape[1:]),
                "dst_ip": dst_ip.view(packets.dst_ip.dtype).reshape(rows.size,
                                                                    *packets.dst_ip.shape[1:])}

    @staticmethod
    def _first_retransmission_times(store: dict[str, np.ndarray], is_synack: np.ndarray) -> None:
        """store["first_ts"] = the smallest first_ts of the rows that repeat the same handshake
        packet (same flow, kind, seq and ack: retransmissions), for each row. A SYN with a new
        ISN is a new attempt, and so a flow of its own when one batch holds them all.

        Rows are grouped by one sort of a 64-bit key mixing the four (a lexsort of them cost
        ~20x more under a SYN flood's 75k remembered rows per batch); a run counts as one packet
        only where the four columns are equal too, so a key collision never merges two."""
        n = store["hash"].size
        if n < 2:
            return
        seq = store["seq"].astype(np.uint64)
        ack = store["ack"].astype(np.uint64)
        with np.errstate(over="ignore"):  # wrapping multiply: a mix, not a number
            key = store["hash"] ^ (((seq << np.uint64(32)) | ack) * np.uint64(0x9E3779B97F4A7C15)
                                   + is_synack.astype(np.uint64))
        order = np.argsort(key)  # (runs are reduced with min: no stable order needed)
        same = np.zeros(n, dtype=bool)  # row order[i] repeats row order[i - 1]
        same[1:] = key[order[1:]] == key[order[:-1]]
        if not same.any():
            return  # no retransmission remembered (a spoofed flood): nothing to carry
        for column in (store["hash"], is_synack, seq, ack):
            ranked = column[order]
            same[1:] &= ranked[1:] == ranked[:-1]
        starts = np.flatnonzero(~same)
        earliest = np.minimum.reduceat(store["first_ts"][order], starts)
        first_ts = np.empty_like(store["first_ts"])
        first_ts[order] = np.repeat(earliest, np.diff(np.append(starts, n)))
        store["first_ts"] = first_ts

    def _remember_handshakes(self, packets: DecodedPackets, rows: np.ndarray,
                             hashes: np.ndarray,
                             seq_ack: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """Keep SYN/SYN-ACK rows of flows not held (the latest of each kind per flow,
        at most max_flows, none older than the idle timeout; first_ts: the earliest time
        of its retransmissions remembered): all column-wise."""
        if rows.size == 0:
            return
        fresh = self._columns(packets, rows, hashes, np.ones(rows.size, dtype=bool),
                              np.zeros(rows.size, dtype=bool), seq_ack)
        fresh["off"][:] = 0
        fresh["plen"][:] = 0
        fresh["first_ts"] = fresh["ts"].copy()
        store = fresh if self._handshakes is None else {
            name: np.concatenate([self._handshakes[name], fresh[name]]) for name in fresh}
        # the latest row per (flow, SYN or SYN-ACK): first index in the reversed order
        pick_parts = []
        repeated = False  # some flow has several rows of a kind (retransmissions?)
        is_synack = (store["flags"] & ACK) != 0
        for kind in (~is_synack, is_synack):
            where = np.flatnonzero(kind)[::-1]
            _, first, count = np.unique(store["hash"][where], return_index=True,
                                        return_counts=True)
            pick_parts.append(where[first])
            repeated = repeated or bool(count.max(initial=1) > 1)
        if repeated:
            self._first_retransmission_times(store, is_synack)
        pick = np.sort(np.concatenate(pick_parts))
        pick = pick[store["found"][pick] & (store["ts"][pick] >= self.clock - self.idle_ns)]
        pick = pick[-self.max_flows:]
        self._handshakes = {name: column[pick] for name, column in store.items()}
        self.stats["handshakes_held"] = int(pick.size)  # a level, not a counter

    def _take_handshakes(self, hashes: np.ndarray) -> dict[str, np.ndarray] | None:
        """Remove and return the remembered handshake rows of flows `hashes` (time order)."""
        if self._handshakes is None or hashes.size == 0:
            return None
        store = self._handshakes
        take = hash_member(store["hash"], hashes)
        if not take.any():
            return None
        taken = {name: column[take] for name, column in store.items()}
        self._handshakes = {name: column[~take] for name, column in store.items()}
        # each at its first retransmission's time: the flow opens where, and as, it would
        # have with every handshake packet in the batch of its payload
        taken["ts"] = taken["first_ts"]
        order = np.argsort(taken["ts"], kind="stable")
        return {name: column[order] for name, column in taken.items()}

    def _ignore(self, flow_hash: int) -> None:
        self._ignored.touch(np.array([flow_hash], dtype=np.uint64))

    def _unignore(self, flow_hash: int) -> None:
        self._ignored.remove(np.array([flow_hash], dtype=np.uint64))

    # --- the per-segment loop (selected rows only) --------------------------------------------

    def _segments(self, packets: DecodedPackets, cols: dict[str, np.ndarray],
                  out: list[StreamChunk]) -> None:
        found = cols["found"]
        bad = int((~found).sum())
        if bad:
            self.stats["no_tcp_header"] = self.stats.get("no_tcp_header", 0) + bad
        flat = np.ascontiguousarray(packets.data).reshape(-1)
        if self.fast_path:
            looped_at, finished = self._fast_flows(flat, cols)
        else:
            looped_at, finished = np.arange(found.size), _Finished.empty()
        looped = looped_at.size
        self.stats["segments_looped"] = self.stats.get("segments_looped", 0) + looped
        if looped < found.size:
            self.stats["segments_fast"] = (self.stats.get("segments_fast", 0) + found.size
                                           - looped)
            # (a take of the few looped rows: a boolean mask reads every row per column)
            cols = {name: column[looped_at] for name, column in cols.items()}
            found = cols["found"]
        # Flows finished column-wise are emitted where the loop would have closed them:
        # before the first looped segment that follows their closing segment.
        n_finished = len(finished.chunks)
        emit_before = np.searchsorted(looped_at, finished.close_at).tolist()
        pending = 0
        next_emit = emit_before[0] if n_finished else found.size
        # A memoryview slice copies one payload far cheaper than a numpy slice + tobytes.
        data = memoryview(flat)
        # Addresses as bytes in one call per column (V16 .tolist() gives bytes objects).
        src_ips = np.ascontiguousarray(cols["src_ip"]).view(IP_DTYPE).reshape(-1).tolist()
        dst_ips = np.ascontiguousarray(cols["dst_ip"]).view(IP_DTYPE).reshape(-1).tolist()
        columns = zip(cols["hash"].tolist(), cols["may_open"].tolist(),
                      cols["predicate"].tolist(), cols["seq"].tolist(), cols["ack"].tolist(),
                      found.tolist(), cols["sport"].tolist(), cols["dport"].tolist(),
                      cols["vlan"].tolist(), cols["flags"].tolist(), cols["ts"].tolist(),
                      cols["off"].tolist(), cols["plen"].tolist(), src_ips, dst_ips,
                      strict=True)
        ignored = self._ignored
        flows = self.flows
        flow_of = flows.get
        to_end = flows.move_to_end
        segment = self._segment
        close = self._close
        max_meta = self.max_packets_meta
        for i, (fhash, may_open, predicate, s, a, ok, sport, dport, vlan, flags, ts, off,
                plen, sip, dip) in enumerate(columns):
            if i >= next_emit:  # finished flows closing before this segment, as one run
                stop = bisect_right(emit_before, i, pending)
                self._finish_fast(finished, pending, stop, out)
                pending = stop
                next_emit = emit_before[stop] if stop < n_finished else found.size
            if not ok:
                continue
            fwd: FlowKey = (vlan, sip, sport, dip, dport)
            flow = flow_of(fwd)
            direction = 0
            if flow is None:
                flow = flow_of((vlan, dip, dport, sip, sport))
                direction = 1
            pure_syn = (flags & (SYN | ACK)) == SYN
            if flow is not None and pure_syn and flow.dirs[direction].base not in (
                    None, (s + 1) % SEQ_MOD):
                out.append(close(flow.key, "fin"))  # port reuse: a new connection
                flow = None
            if flow is None:
                if fhash in ignored:
                    if not pure_syn:
                        continue
                    self._unignore(fhash)  # port reuse after a close in this batch
                if not may_open or (flags & RST):
                    continue
                flow, direction = self._open(fwd, (vlan, dip, dport, sip, sport), fhash, flags,
                                             predicate, sport, dport, ts)
            to_end(flow.key)
            if ts > flow.last_ts:
                flow.last_ts = ts
            segment(flow, direction, flags, s, a, data[off : off + plen].tobytes() if plen > 0
                    else b"", ts)
            d0, d1 = flow.dirs
            if d0.fin and d1.fin:
                out.append(close(flow.key, "fin"))
            elif flags & RST:
                out.append(close(flow.key, "rst"))
            elif d0.done and d1.done and len(flow.packets) >= max_meta:
                out.append(close(flow.key, "capped"))  # nothing more to collect
        self._finish_fast(finished, pending, n_finished, out)

    # --- flows finished column-wise -----------------------------------------------------------

    def _finish_fast(self, finished: _Finished, lo: int, hi: int, out: list[StreamChunk]
                     ) -> None:
        """Emit the flows finished[lo:hi] (`_fast_flows`, in closing order) with the loop's
        side effects of their closes: their hashes remembered (in order, as `_ignore` one by
        one would; they are new hashes) and the flows/closed_<reason> counters."""
        if hi <= lo:
            return
        out.extend(finished.chunks[lo:hi])
        # one kernel call: in order, each as _ignore would (most recent, oldest evicted)
        self._ignored.touch(finished.hashes[lo:hi])
        stats = self.stats
        stats["flows"] = stats.get("flows", 0) + hi - lo
        reasons = finished.reasons[lo:hi]
        for why in dict.fromkeys(reasons):  # first-appearance order, as one by one
            name = f"closed_{why}"
            stats[name] = stats.get(name, 0) + reasons.count(why)

    def _fast_flows(self, data: np.ndarray, cols: dict[str, np.ndarray]
                    ) -> tuple[np.ndarray, _Finished]:
        """Column-wise reassembly of the flows that open and close within this batch with
        nothing for the loop's special cases: each direction's payload is in order and
        contiguous from its base, at most one SYN per direction and no SYN after the one
        that opened the flow, no payload after a side's FIN (the test is one walk per flow,
        `_fast_walk_kernel`). Their chunks equal what the loop would give (see
        tests/test_tcp_stream.py and tests/test_tcp_stream_kernels.py, fast path against
        loop), they cost column operations plus one chunk object per flow, and their rows
        skip the loop.

        Returns (positions of the rows the loop must still see, the finished flows in
        closing order). Rows of flows that never open (no segment may open them) are dropped too:
        the loop would skip every one.
        """
        hashes = cols["hash"]
        n = hashes.size
        # not for the fast path: flows held or ignored (_select's "settled") and flows
        # whose remembered handshake is replayed
        replayed = cols["replayed"]
        excluded = hash_member(hashes, hashes[replayed]) if replayed.any() else _NO_MATCH
        # by flow (numbered in first-seen order), then time order
        rows, gid, starts = _fast_groups_kernel(cols["flow"], cols["found"], cols["settled"],
                                                excluded)
        if rows.size == 0:
            return np.arange(n), _Finished.empty()
        walk = _fast_walk_kernel(
            starts, rows, cols["flags"], cols["plen"], cols["seq"],
            cols["ack"], cols["sport"], cols["dport"], cols["vlan"],
            np.ascontiguousarray(cols["src_ip"]).view(np.uint64).reshape(-1, 2),
            np.ascontiguousarray(cols["dst_ip"]).view(np.uint64).reshape(-1, 2),
            cols["may_open"], cols["predicate"], cols["ts"], self._port_table,
            self.ports is not None,
            self.max_bytes_per_dir, self.max_packets_meta)
        direction, before, upto, first_open, close, fast, never, per_group = walk
        looped_at = _loop_rows_kernel(n, rows, gid, never, fast)
        if not fast.any():
            return looped_at, _Finished.empty()
        return looped_at, self._fast_chunks(
            data, cols, rows, gid, starts, fast, first_open, close, upto, direction, before,
            per_group)

    def _fast_chunks(self, data: np.ndarray, cols: dict[str, np.ndarray], rows: np.ndarray,
                     gid: np.ndarray, starts: np.ndarray, fast: np.ndarray,
                     first_open: np.ndarray, close: np.ndarray, upto: np.ndarray,
                     direction: np.ndarray, before: np.ndarray, per_group: np.ndarray
                     ) -> _Finished:
        """The final chunks of the flows `_fast_flows` finished (groups where `fast`);
        `per_group` is `_fast_walk_kernel`'s (groups, 8) table. Two compiled passes (the
        consumer's trim between them) where there were ~40 whole-column numpy calls."""
        n_keys = 2 * starts.size
        # payload bytes of each (flow, direction), gathered in one go, cut at the cap
        carried, key_seg, take, at, bounds, whole = _fast_segments_kernel(
            gid, direction, before, upto, fast, cols["plen"], cols["off"], rows, n_keys,
            self.max_bytes_per_dir)
        if self.trim is not None:  # the consumer reads only so far: copy no more
            # (whole: each (flow, direction)'s length before the cut, StreamBatch.whole)
            take = self._trimmed(data, at, take, bounds)
        else:
            whole = None
        ints, hash_values, spans, first_ts, packets, addresses, flags = _fast_rows_kernel(
            take, key_seg, carried, gid, direction, fast, starts, first_open, close,
            per_group, rows, cols["plen"], cols["ts"], cols["sport"], cols["dport"],
            cols["vlan"], cols["hash"],
            np.ascontiguousarray(cols["src_ip"]).view(np.uint64).reshape(-1, 2),
            np.ascontiguousarray(cols["dst_ip"]).view(np.uint64).reshape(-1, 2),
            self.max_packets_meta)
        (close_at, meta_start, meta_stop, last_ts, client_port, server_port, vlan, how,
         start_ts, reason_code, groups) = ints
        client_ip, server_ip = addresses
        ended, capped = flags
        packet_ts, packet_dir, packet_len = packets
        reason = _CLOSE_REASON_OBJECTS[reason_code]
        n = close_at.size
        columns = {
            "client_ip": client_ip.view(IP_DTYPE).reshape(-1),
            "server_ip": server_ip.view(IP_DTYPE).reshape(-1),
            "client_port": client_port, "server_port": server_port, "vlan": vlan,
            "client_by": how, "start_ts": start_ts, "last_ts": last_ts, "first_ts": first_ts,
            "ended": ended, "capped": capped,
            "gap": np.zeros((n, 2), dtype=bool), "final": np.ones(n, dtype=bool),
            "reason": reason, "packet_start": meta_start, "packet_stop": meta_stop,
            "packet_ts": packet_ts, "packet_dir": packet_dir, "packet_len": packet_len,
            "whole": spans[:, 1::2] if whole is None else whole.reshape(-1, 2)[groups],
        }
        hashes = hash_values
        if self._joined_spans is not None:
            # feed_joined: no objects; the bytes are copied once, into the batch's buffer,
            # when the batch is complete (_join). The chunks are placeholders: their index
            self._joined_spans.append((data, at, take, columns, spans))
            return _Finished(close_at, hashes, list(range(n)), reason.tolist())
        # every (flow, direction)'s bytes back to back, copied by one compiled loop
        # (sliced through a memoryview: each chunk's bytes are copied once, from it)
        blob = memoryview(self._spans(data, at, take))
        lo0, hi0 = spans[:, 0], spans[:, 0] + spans[:, 1]
        lo1, hi1 = spans[:, 2], spans[:, 2] + spans[:, 3]
        data0 = [blob[a:b].tobytes() for a, b in zip(lo0.tolist(), hi0.tolist(), strict=True)]
        data1 = [blob[a:b].tobytes() for a, b in zip(lo1.tolist(), hi1.tolist(), strict=True)]
        data_pairs = zip(data0, data1, strict=True)
        chunks = _chunks_from_columns(columns.__getitem__, None, data_pairs)
        return _Finished(close_at, hashes, chunks, reason.tolist())

    def _join(self, out: list, pending: list) -> StreamBatch:
        """The StreamBatch of feed's `out`: the fast path's rows (`pending`, at most one
        entry per feed; their places in `out` hold their index) and the loop's chunk
        objects, merged column by column in `out`'s order; the fast path's spans copied by
        `_spans_kernel` to the front of the buffer, the other chunks' bytes after them."""
        n = len(out)
        fast_columns = spans = None
        n_fast = 0
        if pending:
            data, at, take, fast_columns, spans = pending[0]
            n_fast = spans.shape[0]
        # the placeholders are 0 .. n_fast - 1 in order, so out[n_fast - 1] == n_fast - 1
        # means every fast row comes first (the usual case: the loop's chunks, ~1 a batch,
        # are the held flows that changed, appended last); columns are then concatenated
        fast_first = n_fast == 0 or (out[n_fast - 1].__class__ is int
                                     and out[n_fast - 1] == n_fast - 1)
        if fast_first:
            fast_rows = slice(0, n_fast)
            plain_rows = slice(n_fast, n)
            plain_list = list(range(n_fast, n))
        else:
            fast = np.fromiter(map(isinstance, out, repeat(int)), dtype=bool, count=n)
            fast_rows = np.flatnonzero(fast)
            plain_rows = np.flatnonzero(~fast)
            plain_list = plain_rows.tolist()
        fast_total = int(take.sum()) if pending else 0
        plain = [out[i] for i in plain_list]
        parts = [part for chunk in plain for part in chunk.data]
        sizes = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)).reshape(-1, 2)
        if fast_columns is not None and not plain:
            # only the fast path's rows (4 feeds in 10 on the v2 mix): its columns are the
            # batch's as they are (fresh contiguous arrays of this feed), with no empty
            # loop columns built and concatenated (~0.1 ms a call)
            columns = {name: fast_columns[name].astype(dtype, casting="unsafe", copy=False)
                       for name, (dtype, _) in _BATCH_COLUMNS.items()}
            for name in _PACKET_COLUMNS:
                columns[name] = fast_columns[name].astype(np.int64, copy=False)
        else:
            columns = self._merged_columns(fast_columns, _columns_of(plain), fast_first,
                                           fast_rows, plain_rows, n)
        start = np.zeros((n, 2), dtype=np.int64)
        length = np.zeros((n, 2), dtype=np.int64)
        whole = length
        if spans is not None:
            start[fast_rows] = spans[:, 0::2]
            length[fast_rows] = spans[:, 1::2]
            whole = np.empty((n, 2), dtype=np.int64)
            whole[fast_rows] = fast_columns["whole"]
            whole[plain_rows] = sizes
        length[plain_rows] = sizes
        start[plain_rows] = fast_total + (np.cumsum(sizes) - sizes.reshape(-1)).reshape(-1, 2)
        buf = self._batch_buffer(fast_total + int(sizes.sum()))
        if parts:
            buf[fast_total:] = np.frombuffer(b"".join(parts), dtype=np.uint8)
        if pending:
            _spans_kernel(data, at, take, buf[:fast_total])
        return StreamBatch(columns, buf, start, length, dict(zip(plain_list, plain,
                                                                 strict=True)), whole)

    @staticmethod
    def _merged_columns(fast_columns: dict[str, np.ndarray] | None,
                        plain_columns: dict[str, np.ndarray], fast_first: bool,
                        fast_rows: slice | np.ndarray, plain_rows: slice | np.ndarray, n: int
                        ) -> dict[str, np.ndarray]:
        """_join's columns: the fast path's rows and the loop's chunks', in `out`'s order."""
        columns: dict[str, np.ndarray] = {}
        fast_packets = 0 if fast_columns is None else fast_columns["packet_ts"].size
        for name, (dtype, shape) in _BATCH_COLUMNS.items():
            plain_column = plain_columns[name]
            if name in ("packet_start", "packet_stop"):
                plain_column = plain_column + fast_packets  # after the fast rows' packets
            if fast_columns is None:
                columns[name] = plain_column.astype(dtype, copy=False)
            elif fast_first:  # assignment's casting, as the scatter below
                columns[name] = np.concatenate([fast_columns[name], plain_column],
                                               dtype=dtype, casting="unsafe")
            else:
                column = np.empty((n, *shape), dtype=dtype)
                column[fast_rows] = fast_columns[name]
                column[plain_rows] = plain_column
                columns[name] = column
        for name in _PACKET_COLUMNS:
            columns[name] = plain_columns[name] if fast_columns is None else np.concatenate(
                [fast_columns[name].astype(np.int64), plain_columns[name]])
        return columns

    def _batch_buffer(self, size: int) -> np.ndarray:
        """An uninitialized uint8 buffer of `size` for a StreamBatch (which writes all of
        it): the previous batch's when nothing refers to it or to a view of it any more,
        else a new one, kept for the next batch. Why: a fresh buffer of megabytes is a
        fresh mmap of glibc's (above its mmap threshold, which other allocations move), one
        page fault per 4 KB, about as much CPU as the copy into it."""
        kept = self._batch_buf
        # references: the attribute, `kept` and getrefcount's argument; a view adds one
        if kept.size >= size and sys.getrefcount(kept) == 3:
            return kept[:size]
        if size > MAX_SCRATCH_BYTES:
            return np.empty(size, dtype=np.uint8)  # too large to keep: this batch only
        # twice what is asked (or the old size): pages never written cost nothing, and a
        # somewhat larger next batch then fits (each new buffer is paged in again as it is
        # written: ~1,100 page faults for TLS's ~4.5 MB a batch of the v2 mix)
        self._batch_buf = np.empty(max(size, min(2 * max(size, kept.size), MAX_SCRATCH_BYTES)),
                                   dtype=np.uint8)
        return self._batch_buf[:size]

    def _trimmed(self, data: np.ndarray, start: np.ndarray, size: np.ndarray,
                 bounds: np.ndarray) -> np.ndarray:
        """`size` cut so that each (flow, direction) key k (segments bounds[k] ..
        bounds[k + 1] - 1, in sequence order) keeps only the bytes the consumer's `trim`
        says it reads."""
        if size.size == 0:
            return size
        wanted = np.asarray(self.trim(data, start, size, bounds[:-1].reshape(-1, 2),
                                      bounds[1:].reshape(-1, 2)), dtype=np.int64).reshape(-1)
        return _cut_kernel(size, bounds, wanted)

    def _spans(self, data: np.ndarray, start: np.ndarray, size: np.ndarray) -> np.ndarray:
        """The spans' bytes back to back (`_spans_kernel`), in a scratch buffer kept from
        batch to batch (its pages are already mapped: a fresh buffer of megabytes costs
        as much in page faults as the copy). Valid until the next call."""
        total = int(size.sum())
        if self._scratch.size < total:
            scratch = np.empty(max(total, 2 * self._scratch.size), dtype=np.uint8)
            if scratch.size > MAX_SCRATCH_BYTES:
                scratch = np.empty(total, dtype=np.uint8)  # too large to keep: this call only
            else:
                self._scratch = scratch
        else:
            scratch = self._scratch
        out = scratch[:total]
        _spans_kernel(data, start, size, out)
        return out

    def _open(self, fwd: FlowKey, rev: FlowKey, fhash: int, flags: int, predicate: bool,
              sport: int, dport: int, ts: int) -> tuple[_Flow, int]:
        """New flow for a segment sent by fwd's first endpoint; returns (flow, its direction)."""
        if (flags & (SYN | ACK)) == SYN:
            sender_is_client, how = True, "syn"
        elif flags & SYN:
            sender_is_client, how = False, "synack"
        elif predicate:
            sender_is_client, how = True, "predicate"
        else:
            sport_selected = self.ports is not None and sport in self.ports
            dport_selected = self.ports is not None and dport in self.ports
            if sport_selected != dport_selected:
                sender_is_client, how = dport_selected, "port"
            else:
                sender_is_client, how = sport > dport, "heuristic"
        key = fwd if sender_is_client else rev
        flow = _Flow(key, how, ts, fhash)
        self.flows[key] = flow
        self._by_hash.setdefault(fhash, []).append(key)
        self._held_version += 1
        self.stats["flows"] = self.stats.get("flows", 0) + 1
        return flow, 0 if sender_is_client else 1

    def _segment(self, flow: _Flow, direction: int, flags: int, seq: int, ack: int,
                 payload: bytes, ts: int) -> None:
        this, peer = flow.dirs[direction], flow.dirs[1 - direction]
        if flags & SYN:
            seq = (seq + 1) % SEQ_MOD  # the SYN takes one sequence number
            if this.base is None or (not this.buf and this.ooo is None):
                this.base = seq  # a SYN overrides a base guessed from the peer's ACK
        elif this.base is None:
            this.base = seq
        if peer.base is None and flags & ACK:
            peer.base = ack  # the next byte the peer will send
        rel = (seq - this.base) % SEQ_MOD
        if rel >= SEQ_HALF:
            rel -= SEQ_MOD  # before the base: (part of) an old segment
        end = rel + len(payload)
        if payload:
            if end > this.max_end:
                if this.first_ts < 0:
                    this.first_ts = ts
                this.max_end = end
                if len(flow.packets) < self.max_packets_meta:
                    flow.packets.append((ts, direction, len(payload)))
                    flow.changed = True
            else:
                self.stats["late_or_retransmitted"] = self.stats.get("late_or_retransmitted", 0) + 1
            if not this.done:
                self._place(flow, this, rel, payload)
        if flags & (FIN | RST):
            if not this.fin:
                flow.changed = True
            this.fin = True
            self._end_direction(flow, this)

    def _place(self, flow: _Flow, this: _Direction, rel: int, payload: bytes) -> None:
        """Put payload at relative offset `rel`; first copy of a byte wins."""
        cap = self.max_bytes_per_dir
        have = len(this.buf)
        if rel < 0:
            payload = payload[-rel:]
            rel = 0
        if rel >= cap:
            return  # wholly beyond what this consumer keeps
        end = min(rel + len(payload), cap)
        if end <= have:
            return
        if rel <= have and this.ooo is None:  # the common, in-order case
            this.buf += payload[have - rel : end - rel]
            flow.changed = True
            self.held_bytes += end - have
            if end >= cap:
                this.capped = this.done = True
            return
        before = this.held_bytes()
        if this.ooo is None:
            this.ooo = np.zeros((2, cap), dtype=np.uint8)
            this.ooo[0, :have] = np.frombuffer(bytes(this.buf), dtype=np.uint8)
            this.ooo[1, :have] = 1
            this.ooo_segments = 0
            self.stats["out_of_order"] = self.stats.get("out_of_order", 0) + 1
        seg = np.frombuffer(payload, dtype=np.uint8)[: end - rel]
        held, filled = this.ooo[0, rel:end], this.ooo[1, rel:end]
        held[:] = np.where(filled != 0, held, seg)
        filled[:] = 1
        holes = np.flatnonzero(this.ooo[1] == 0)
        contiguous = int(holes[0]) if holes.size else cap
        if contiguous > have:
            this.buf = bytearray(this.ooo[0, :contiguous].tobytes())
            flow.changed = True
        if contiguous >= cap or not this.ooo[1, contiguous:].any():
            this.ooo = None  # hole filled (or cap reached): back to the fast path
        else:
            this.ooo_segments += 1
            if this.ooo_segments > self.max_ooo_segments or int(
                    np.flatnonzero(this.ooo[1])[-1]) + 1 >= cap:
                self._mark_gap(flow, this)
        if len(this.buf) >= cap:
            this.capped = this.done = True
            this.ooo = None
        self.held_bytes += this.held_bytes() - before

    def _mark_gap(self, flow: _Flow, this: _Direction) -> None:
        before = this.held_bytes()
        this.ooo = None
        this.gap = this.done = True
        flow.changed = True
        self.held_bytes += this.held_bytes() - before
        self.stats["gaps"] = self.stats.get("gaps", 0) + 1

    def _end_direction(self, flow: _Flow, this: _Direction) -> None:
        if this.ooo is not None:
            self._mark_gap(flow, this)
        this.done = True

    # --- closing and bounds -------------------------------------------------------------------

    def _forget(self, flow: _Flow) -> None:
        self._held_version += 1
        keys = self._by_hash.get(flow.hash)
        if keys is not None:
            if flow.key in keys:
                keys.remove(flow.key)
            if not keys:
                del self._by_hash[flow.hash]
        self.held_bytes -= flow.dirs[0].held_bytes() + flow.dirs[1].held_bytes()

    def _close(self, key: FlowKey, reason: str) -> StreamChunk:
        flow = self.flows.pop(key)
        for this in flow.dirs:
            if this.ooo is not None:
                self._mark_gap(flow, this)
        chunk = self._chunk(flow, final=True, reason=reason)
        self._forget(flow)
        self._ignore(flow.hash)
        self.stats[f"closed_{reason}"] = self.stats.get(f"closed_{reason}", 0) + 1
        return chunk

    def _expire_idle(self, out: list[StreamChunk]) -> None:
        horizon = self.clock - self.idle_ns
        # flows are ordered by last activity in arrival order; stop at the first fresh one
        while self.flows:
            key, flow = next(iter(self.flows.items()))
            if flow.last_ts >= horizon:
                break
            out.append(self._close(key, "idle"))

    def _enforce_bounds(self, out: list[StreamChunk]) -> None:
        while self.flows and (len(self.flows) > self.max_flows
                              or self.held_bytes > self.max_bytes_total):
            key = next(iter(self.flows))
            self.stats["evicted"] = self.stats.get("evicted", 0) + 1
            out.append(self._close(key, "evicted"))

    @staticmethod
    def _chunk(flow: _Flow, final: bool, reason: str) -> StreamChunk:
        (vlan, cip, cport, sip, sport) = flow.key
        d0, d1 = flow.dirs
        return StreamChunk(
            key=flow.key, client_ip=cip, server_ip=sip, client_port=cport, server_port=sport,
            vlan=vlan, client_by=flow.client_by, start_ts=flow.start_ts, last_ts=flow.last_ts,
            first_ts=(d0.first_ts, d1.first_ts), data=(bytes(d0.buf), bytes(d1.buf)),
            ended=(d0.fin, d1.fin), capped=(d0.capped, d1.capped), gap=(d0.gap, d1.gap),
            packets=list(flow.packets), final=final, reason=reason,
        )


def endpoint_columns(chunks: list[StreamChunk], timestamps: list[int], observer_name: str,
                     ingress_zone: str) -> dict[str, np.ndarray]:
    """The COMMON + ENDPOINTS event columns for events of `chunks` (client = source).

    One event per list entry (a chunk may appear several times, e.g. pipelined HTTP).
    """
    n = len(chunks)
    return tcp_endpoint_columns(
        timestamps, np.array([c.client_ip for c in chunks], dtype=IP_DTYPE).reshape(n),
        np.array([c.server_ip for c in chunks], dtype=IP_DTYPE).reshape(n),
        np.array([c.client_port for c in chunks], dtype=np.uint16),
        np.array([c.server_port for c in chunks], dtype=np.uint16),
        plain_vlan(np.array([c.vlan for c in chunks], dtype=np.int64)), observer_name,
        ingress_zone)


def tcp_endpoint_columns(timestamps, src_ip: np.ndarray, dst_ip: np.ndarray,
                         src_port: np.ndarray, dst_port: np.ndarray, vlan: np.ndarray,
                         observer_name: str, ingress_zone: str,
                         protocol: int = TCP) -> dict[str, np.ndarray]:
    """COMMON + ENDPOINTS event columns of TCP events (or of another IP `protocol`: QUIC's
    are UDP) from their endpoint columns (uint16 ports and VLAN, IP_DTYPE addresses),
    Community ID included."""
    n = src_ip.shape[0]
    transport = np.full(n, protocol, dtype=np.uint8)
    return {
        "timestamp": np.asarray(timestamps, dtype=np.int64).reshape(n),
        "observer_name": constant_text(n, observer_name),
        "ingress_zone": constant_text(n, ingress_zone),
        "src_ip": src_ip,
        "dst_ip": dst_ip,
        "src_port": src_port,
        "dst_port": dst_port,
        "transport": transport,
        "vlan": vlan,
        "community_id": community_id_column(src_ip, dst_ip, transport, src_port, dst_port),
    }


def kind_columns(kind: EventKind, rows: list[dict], skip: Mapping = ()) -> dict[str, np.ndarray]:
    """Per-event dicts -> the kind's remaining columns (names in `skip` are left out)."""
    columns: dict[str, np.ndarray] = {}
    for spec in kind.fields:
        if spec.column in skip:
            continue
        values = [row[spec.column] for row in rows]
        if spec.dtype.kind == "O":
            col = np.empty(len(values), dtype=object)  # element-wise: lists stay lists
            for i, value in enumerate(values):
                col[i] = value
        else:
            col = np.asarray(values, dtype=spec.dtype)
        columns[spec.column] = col
    return columns
