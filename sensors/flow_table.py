"""Bidirectional flow table: decoded packets in, ended flow records (event kind "flow") out.

Flows are keyed by (vlan, transport, {(ip, port), (ip, port)} unordered). Only rows with
ip_version != 0 enter flows. Ports are kept for TCP, UDP, SCTP, ICMP and ICMPv6 (the
protocols Community ID gives ports) and are 0 for every other protocol. ICMP/ICMPv6 use
Zeek's port equivalents: sender "port" = type, peer "port" = counter-type for request/reply
types (so an echo request and its reply share one flow, orig_p 8 / resp_p 0) or the code
for one-way types.

Originator = sender of the flow's first packet, except when that packet is a TCP SYN+ACK
(then the other side), as Zeek does.

Timeouts run on event time: the clock is the running maximum of packet timestamps (all
packets, IP or not), never the wall clock. A flow ends when the clock passes
- last packet + idle timeout (tcp_idle_timeout_s for TCP, idle_timeout_s otherwise): "idle";
- close time + closed_linger_s, where close time is the packet that completed the close
  (FIN seen from both sides, or any RST): "fin" / "rst" (stragglers within the linger, e.g.
  retransmitted FIN/ACKs, still count). A TCP SYN without ACK on a closed flow starts a new
  flow at once (port reuse); the old one ends "fin"/"rst".
Long flows are emitted in pieces on a fixed grid: piece k covers clock values in
[start + k*active, start + (k+1)*active); a piece is emitted ("active") as soon as the clock
leaves it, the flow (originator, state) continues. If the clock passes both a piece end and
a flow end at once, the flow end wins. At end of input `flush` emits what is left ("eof").
When more than max_flows flows are live after a batch, the least recently seen are emitted
"evicted". Emitted records (except evictions) do not depend on how the packets were split
into batches, for captures whose timestamps do not go backwards within a flow.

conn_state follows Zeek's conn_state() from the per-direction OR of TCP flags, payload
sizes and packet counts (cumulative over the flow up to the record's end):
- endpoint state: RESET (sent RST) > CLOSED (sent FIN) > INACTIVE (sent nothing) >
  ESTABLISHED (originator SYN, responder SYN, originator ACK) > SYN_SENT (originator SYN) /
  SYN_ACK_SENT (responder SYN) > PARTIAL (no SYN: midstream);
- then Zeek's table: S0, S1, SF, REJ, S2, S3, RSTO, RSTR, RSTOS0, RSTRH, SH, SHR, OTH.
  RSTOS0 (Zeek: history ^S[^HAFGIQ]*R) is approximated as "originator sent SYN and no FIN".
- UDP and every other non-TCP protocol (ICMP included) use Zeek's UDP rule: both sides sent
  -> "SF", only the originator -> "S0", only the responder -> "SHR". (Zeek itself labels ICMP
  "OTH"; we use the UDP rule because "was there a reply" is what detectors need.)

Implementation: per batch, keys are canonicalized column-wise and hashed to uint64, packets
are grouped by one stable argsort, flow boundaries (idle, port reuse, close linger) and
piece boundaries are found with segmented cumulative sums, and per-piece totals with
ufunc.reduceat. The table is struct-of-arrays numpy columns (~160 bytes a flow with the
index: compact dtypes, cumulative counters kept as the booleans conn_state needs) plus an
open-addressing hash index key -> slot (_SlotIndex) and a numpy stack of free slots, so no
Python object exists per flow. Python loops run only over hash-probe rounds, over chunks,
and over close/reuse refinement rounds (one per port reuse of the same key in one batch).
Memory under a flood: a filling table takes big batches in sub-batches, records are built
in chunks, and flush() hands the table's pages back while it builds the last records.
"""

from __future__ import annotations

import dataclasses
import mmap

import numpy as np

from pipeline.schema import FLOW, EventBatch
from sensors.community_id import PORT_PROTOS, community_id_column, icmp_port_equivalents
from sensors.packets import IP_DTYPE, DecodedPackets

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
TCP = 6
NS = 1_000_000_000
NEVER = np.iinfo(np.int64).max // 4  # "no deadline"; headroom so adding timeouts cannot overflow

CONN_STATES = np.array(["OTH", "REJ", "RSTRH", "RSTR", "RSTOS0", "RSTO", "SF", "SH", "S2",
                        "SHR", "S3", "S0", "S1"], dtype=object)
_CS = {name: i for i, name in enumerate(CONN_STATES)}
REASONS = np.array(["fin", "rst", "idle", "active", "eof", "evicted"], dtype=object)
R_FIN, R_RST, R_IDLE, R_ACTIVE, R_EOF, R_EVICTED = range(6)

# Zeek endpoint states
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)

_FLUSH_CHUNK = 65536  # flows per flow_records call in flush()
_UPDATE_CHUNK = 16384  # packets per internal update step once the table is filling
_SUB_BATCH_FILL = 0.5  # "filling": live flows >= this fraction of max_flows
_MAPPED_MIN = 1 << 20  # table columns at least this large live in their own mapping
_RECORD_CHUNK = 16384  # rows per flow_records call (its temporaries are ~0.5 KB a row)
_GROW_HEADROOM = 65536  # slots above max_flows before growth falls back to exact sizes
_SCAN_CHUNK = 262144  # slots per step when scanning the whole table (bounds temporaries)

# Per-slot table columns. "lo"/"hi" are the canonical endpoints (smaller (ip, port) first);
# records are turned into originator/responder terms only when emitted.
SLOT_FIELDS: dict[str, np.dtype] = {
    "vlan": np.dtype(np.uint16),
    "transport": np.dtype(np.uint8),
    "lo_ip": IP_DTYPE,
    "hi_ip": IP_DTYPE,
    "lo_port": np.dtype(np.uint16),
    "hi_port": np.dtype(np.uint16),
    "orig_is_lo": np.dtype(bool),
    "flow_start": np.dtype(np.int64),  # first packet time of the flow (piece grid origin)
    "last_ts": np.dtype(np.int64),  # time of the flow's latest packet (capture order)
    "closed_at": np.dtype(np.int64),  # clock when the close completed, NEVER if open
    "piece": np.dtype(np.int64),  # grid index of the current piece
    # cumulative over the flow (for conn_state and close detection)
    "st_fl_lo": np.dtype(np.uint8),
    "st_fl_hi": np.dtype(np.uint8),
    # conn_state only asks "did this side send packets / payload": one bool each, not a
    # counter (rows built from a batch carry counts; both read the same through "> 0")
    "cum_pk_lo": np.dtype(bool),
    "cum_pk_hi": np.dtype(bool),
    "cum_pay_lo": np.dtype(bool),
    "cum_pay_hi": np.dtype(bool),
    # current piece (what the next record reports); empty when p_pk_lo + p_pk_hi == 0
    "p_first": np.dtype(np.int64),
    "p_end": np.dtype(np.int64),
    "p_pk_lo": np.dtype(np.uint64),
    "p_pk_hi": np.dtype(np.uint64),
    "p_by_lo": np.dtype(np.uint64),
    "p_by_hi": np.dtype(np.uint64),
    "p_pay_lo": np.dtype(np.uint64),
    "p_pay_hi": np.dtype(np.uint64),
    "p_fl_lo": np.dtype(np.uint8),
    "p_fl_hi": np.dtype(np.uint8),
}

Rows = dict[str, np.ndarray]  # SLOT_FIELDS columns (+ "reason" for emitted rows)


# --- small column helpers ---------------------------------------------------------------


def _seg_cumsum(values: np.ndarray, starts: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum restarting at each segment start (starts: first positions)."""
    total = np.cumsum(values, dtype=np.int64)
    base = total[starts] - values[starts]
    return total - base[seg]


def _seg_cum_or(values: np.ndarray, starts: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Inclusive cumulative OR of uint8 values, restarting at each segment start."""
    if starts.size == values.size:  # every segment has one element (the common case)
        return values.astype(np.uint8)
    bits = np.unpackbits(values.astype(np.uint8)[:, None], axis=1).astype(np.int64)
    total = np.cumsum(bits, axis=0)
    base = total[starts] - bits[starts]
    seen = (total - base[seg]) > 0
    return np.packbits(seen, axis=1)[:, 0]


def _first_crossing(clock: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """First value of the (non-decreasing) clock column > threshold; NEVER if none."""
    pos = np.searchsorted(clock, threshold, side="right")
    found = pos < clock.shape[0]
    return np.where(found, clock[np.minimum(pos, clock.shape[0] - 1)], NEVER)


def _address_words(raw16: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 addresses -> (n, 2) uint64 big-endian words (numeric order = byte order)."""
    return np.ascontiguousarray(raw16).view(">u8").astype(np.uint64)


def _mix64(words: np.ndarray) -> np.ndarray:
    """Hash (n, k) uint64 words to uint64 (splitmix-style); collisions are checked by caller."""
    h = np.full(words.shape[0], 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            h ^= words[:, j]
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
            h *= np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(29)
    return h


def _zeros(n: int, dtype: np.dtype) -> np.ndarray:
    """np.zeros, in its own anonymous mapping when large, so _drop_tail can hand pages
    back to the OS (memory from malloc's heap stays resident after a shrink)."""
    nbytes = n * np.dtype(dtype).itemsize
    if nbytes < _MAPPED_MIN or not hasattr(mmap.mmap, "madvise"):
        return np.zeros(n, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=n)


def _drop_tail(column: np.ndarray, keep: int) -> None:
    """Give the pages of column[keep:] back to the OS (they read as zeros afterwards)."""
    buf = column.base.obj if isinstance(column.base, memoryview) else column.base
    if not isinstance(buf, mmap.mmap):
        return
    start = -(-keep * column.itemsize // mmap.PAGESIZE) * mmap.PAGESIZE
    if start < len(buf):
        buf.madvise(mmap.MADV_DONTNEED, start, len(buf) - start)


def _ip_words(column: np.ndarray) -> np.ndarray:
    """IP_DTYPE column -> (n, 2) uint64 big-endian words."""
    return _address_words(np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16))


class _SlotIndex:
    """Open-addressing hash index flow key -> table slot, all operations column-wise.

    Linear probing over an int32 array (EMPTY, TOMB or a slot); the keys themselves live in
    the flow table's columns, so an entry costs 4 bytes (~15 bytes per flow at the load
    kept here) instead of a dict entry plus a bytes key (~150 bytes). Lookups and inserts
    run in rounds: each round probes the next position of every key still pending.
    Deletions leave tombstones; the index is rebuilt from the live slots when live entries
    plus tombstones pass _MAX_LOAD.
    """

    EMPTY, TOMB = -1, -2
    _MAX_LOAD = 0.7
    _SIZE_FACTOR = 2.5  # capacity >= this x table slots: load <= 0.4 right after a rebuild

    def __init__(self) -> None:
        self.table = np.full(1024, self.EMPTY, dtype=np.int32)
        self.used = 0  # entries that are not EMPTY (live + tombstones)

    @property
    def mask(self) -> np.uint64:
        return np.uint64(self.table.size - 1)

    def lookup(self, key_hash: np.ndarray, key_words: np.ndarray, slot_words) -> np.ndarray:
        """Slot of each key (int64), -1 when absent. slot_words(slots) -> (n, 5) keys."""
        found = np.full(key_hash.size, -1, dtype=np.int64)
        pending = np.arange(key_hash.size)
        pos = (key_hash & self.mask).astype(np.int64)
        mask = int(self.mask)
        while pending.size:
            entry = self.table[pos]
            occupied = entry >= 0
            hit = np.zeros(pending.size, dtype=bool)
            cand = np.flatnonzero(occupied)
            if cand.size:
                same = (slot_words(entry[cand]) == key_words[pending[cand]]).all(axis=1)
                hit[cand[same]] = True
                found[pending[cand[same]]] = entry[cand[same]]
            more = ~hit & (entry != self.EMPTY)
            pending = pending[more]
            pos = (pos[more] + 1) & mask
        return found

    def insert(self, key_hash: np.ndarray, slots: np.ndarray) -> None:
        """Index new keys (known absent, distinct) at their slots."""
        pending = np.arange(key_hash.size)
        pos = (key_hash & self.mask).astype(np.int64)
        mask = int(self.mask)
        while pending.size:
            entry = self.table[pos]
            free = np.flatnonzero(entry < 0)
            # Two keys probing the same free position in one round: the first takes it.
            _, first = np.unique(pos[free], return_index=True)
            take = free[first]
            self.used += int((entry[take] == self.EMPTY).sum())
            self.table[pos[take]] = slots[pending[take]]
            more = np.ones(pending.size, dtype=bool)
            more[take] = False
            pending = pending[more]
            pos = (pos[more] + 1) & mask

    def remove(self, key_hash: np.ndarray, slots: np.ndarray) -> None:
        """Unindex slots (each present) whose keys hash to key_hash."""
        pending = np.arange(key_hash.size)
        pos = (key_hash & self.mask).astype(np.int64)
        mask = int(self.mask)
        while pending.size:
            hit = self.table[pos] == slots[pending]
            self.table[pos[hit]] = self.TOMB
            pending = pending[~hit]
            pos = (pos[~hit] + 1) & mask

    def needs_rebuild(self) -> bool:
        return self.used > self._MAX_LOAD * self.table.size

    def resize(self, n_slots: int, live_slots: np.ndarray, slot_words) -> None:
        """Rebuild for a table of n_slots slots from its live slots (drops tombstones)."""
        capacity = 1024
        while capacity < self._SIZE_FACTOR * n_slots:
            capacity *= 2
        self.table = np.full(capacity, self.EMPTY, dtype=np.int32)
        self.used = 0
        for lo in range(0, live_slots.size, _SCAN_CHUNK):
            chunk = live_slots[lo:lo + _SCAN_CHUNK].astype(np.int64)
            self.insert(_mix64(slot_words(chunk)), chunk)


def conn_state(
    transport: np.ndarray,
    orig_flags: np.ndarray,
    resp_flags: np.ndarray,
    orig_packets: np.ndarray,
    resp_packets: np.ndarray,
    orig_payload: np.ndarray,
    resp_payload: np.ndarray,
) -> np.ndarray:
    """Zeek conn_state labels from cumulative per-direction flags, packets and payload."""
    of = orig_flags.astype(np.uint8)
    rf = resp_flags.astype(np.uint8)
    o_sent = orig_packets > 0
    r_sent = resp_packets > 0
    established = ((of & SYN) > 0) & ((rf & SYN) > 0) & ((of & ACK) > 0)

    def endpoint_state(flags: np.ndarray, sent: np.ndarray, syn_state: int) -> np.ndarray:
        return np.select(
            [(flags & RST) > 0, (flags & FIN) > 0, ~sent, established, (flags & SYN) > 0],
            [RESET, CLOSED, INACTIVE, ESTABLISHED, syn_state],
            default=PARTIAL,
        )

    os_ = endpoint_state(of, o_sent, SYN_SENT)
    rs = endpoint_state(rf, r_sent, SYN_ACK_SENT)
    o_inactive = (os_ == INACTIVE) | (os_ == PARTIAL)
    r_inactive = (rs == INACTIVE) | (rs == PARTIAL)
    no_payload = (orig_payload == 0) & (resp_payload == 0)
    rstos0 = ((of & SYN) > 0) & ((of & FIN) == 0)
    # Codes into CONN_STATES, so the object column holds shared str objects (8 bytes a
    # row), not one new string per flow.
    tcp = np.select(
        [
            (rs == RESET) & ((os_ == SYN_SENT) | (os_ == SYN_ACK_SENT)
                             | ((os_ == RESET) & no_payload)),
            (rs == RESET) & o_inactive,
            rs == RESET,
            (os_ == RESET) & r_inactive & rstos0,
            (os_ == RESET) & r_inactive,
            os_ == RESET,
            (rs == CLOSED) & (os_ == CLOSED),
            (os_ == CLOSED) & r_inactive,
            os_ == CLOSED,
            (rs == CLOSED) & o_inactive,
            rs == CLOSED,
            (os_ == SYN_SENT) & (rs == INACTIVE),
            (os_ == ESTABLISHED) & (rs == ESTABLISHED),
        ],
        [_CS[name] for name in ("REJ", "RSTRH", "RSTR", "RSTOS0", "OTH", "RSTO", "SF", "SH",
                                "S2", "SHR", "S3", "S0", "S1")],
        default=_CS["OTH"],
    )
    other = np.select([o_sent & r_sent, o_sent, r_sent], [_CS["SF"], _CS["S0"], _CS["SHR"]],
                      default=_CS["OTH"])
    return CONN_STATES[np.where(transport == TCP, tcp, other)]


# --- the table ----------------------------------------------------------------------------


class FlowTable:
    """Bidirectional flow table over DecodedPackets batches (see module docstring)."""

    def __init__(
        self, config: dict, observer_name: str, ingress_zone: str, community_id_seed: int = 0
    ) -> None:
        self.idle_ns = int(float(config["idle_timeout_s"]) * NS)
        self.tcp_idle_ns = int(float(config["tcp_idle_timeout_s"]) * NS)
        self.active_ns = max(int(float(config["active_timeout_s"]) * NS), 1)
        self.linger_ns = int(float(config["closed_linger_s"]) * NS)
        self.max_flows = int(config["max_flows"])
        self.observer_name = observer_name
        self.ingress_zone = ingress_zone
        self.community_id_seed = community_id_seed
        self.stats: dict[str, int] = {
            "packets": 0, "packets_ip": 0, "packets_non_ip": 0, "flows_created": 0,
            "flows_emitted": 0, "flows_evicted": 0, "flows_live": 0, "close_refine_rounds": 0,
        }
        self._clock = np.iinfo(np.int64).min  # running max of packet times
        self._reset()

    def _reset(self) -> None:
        """An empty table (at construction and after flush)."""
        # Live flows: slot columns + an open-addressing hash index key -> slot, and a stack
        # of free slots (no per-flow Python object anywhere).
        self._index = _SlotIndex()
        self._free = np.zeros(0, dtype=np.int32)
        self._n_free = 0
        self._live = np.zeros(0, dtype=bool)
        self._cols: Rows = {name: np.zeros(0, dtype=dt) for name, dt in SLOT_FIELDS.items()}
        self._deadline = NEVER  # lower bound of the earliest expiry time of any live slot
        self.stats["flows_live"] = 0
        self._grow(1)  # never empty, so gathers with placeholder slot 0 are always in bounds

    # -- public API --

    @property
    def capacity(self) -> int:
        """Flow slots allocated (live + free): bounded by max_flows plus one growth step."""
        return int(self._live.size)

    def update(self, packets: DecodedPackets) -> EventBatch | None:
        """Add a batch of decoded packets (capture order); return the flows that ended."""
        n = len(packets)
        if n > _UPDATE_CHUNK and self.stats["flows_live"] >= _SUB_BATCH_FILL * self.max_flows:
            # A filling table takes big batches in sub-batches: that bounds the per-batch
            # temporaries (~1 KB per packet) where memory matters, at ~35% more flow-table
            # time (per-call overhead), so only then. Records do not depend on the split
            # (module docstring); evictions run per sub-batch.
            parts = [self._update(_slice_packets(packets, lo, lo + _UPDATE_CHUNK))
                     for lo in range(0, n, _UPDATE_CHUNK)]
            return _join_batches([b for b in parts if b is not None])
        return self._update(packets)

    def _update(self, packets: DecodedPackets) -> EventBatch | None:
        n = len(packets)
        if n == 0:
            return None
        ts_all = np.asarray(packets.ts_ns, dtype=np.int64)
        clock = np.maximum(np.maximum.accumulate(ts_all), self._clock)
        ip_rows = np.flatnonzero(np.asarray(packets.ip_version) != 0)
        self.stats["packets"] += n
        self.stats["packets_ip"] += int(ip_rows.size)
        self.stats["packets_non_ip"] += n - int(ip_rows.size)
        out: list[Rows] = []
        if ip_rows.size:
            out.extend(self._ingest(packets, ip_rows, clock))
        self._clock = int(clock[-1])
        out.extend(self._expire(clock))
        out.extend(self._evict())
        return self._to_batch(out)

    def advance(self, now_ns: int) -> EventBatch | None:
        """Move the clock to `now_ns` without packets and return the flows that ended.

        For live capture on a quiet link, whose packet times are the wall clock: flows
        still time out when no packet comes. The clock never moves backwards."""
        if self._clock >= now_ns:
            return None
        clock = np.array([int(now_ns)], dtype=np.int64)
        self._clock = int(now_ns)
        return self._to_batch(self._expire(clock))

    def flush(self) -> EventBatch | None:
        """End of input: emit every remaining flow (end_reason "eof")."""
        slots = np.flatnonzero(self._live)
        # Records are built a chunk of slots at a time, from the highest slots down, and
        # the table's columns are cut below each chunk as it is done: the records of a full
        # table (~220 bytes a flow) replace the table's memory instead of adding to it.
        # Chunks go straight into preallocated output columns: joining chunk batches at the
        # end would hold every record twice (malloc keeps the freed chunks resident).
        out: dict[str, np.ndarray] | None = None
        filled = slots.size
        self._index = _SlotIndex()  # not needed to read the slots out; _reset() rebuilds
        for hi in range(slots.size, 0, -_FLUSH_CHUNK):
            chunk = slots[max(hi - _FLUSH_CHUNK, 0):hi]
            batch = self._to_batch([self._slot_rows(chunk, R_EOF)])
            for col in self._cols.values():
                _drop_tail(col, int(chunk[0]))
            if batch is None:
                continue
            if out is None:
                out = {name: _zeros(slots.size, col.dtype) if col.dtype != object
                       else np.empty(slots.size, dtype=object)
                       for name, col in batch.columns.items()}
            for name, col in batch.columns.items():
                out[name][filled - col.size:filled] = col
            filled -= len(batch)
        self._reset()
        if out is None:
            return None
        # Flows without packets in their last piece emit nothing: the filled tail only.
        return EventBatch(FLOW.name, {name: col[filled:] for name, col in out.items()})

    # -- batch ingestion --

    def _ingest(self, packets: DecodedPackets, rows: np.ndarray, clock_all: np.ndarray) -> list:
        transport = np.asarray(packets.transport)[rows].astype(np.uint8)
        sport, dport, _ = icmp_port_equivalents(
            transport, np.asarray(packets.src_port)[rows], np.asarray(packets.dst_port)[rows])
        has_ports = np.isin(transport, list(PORT_PROTOS))
        sport = np.where(has_ports, sport, 0).astype(np.uint16)
        dport = np.where(has_ports, dport, 0).astype(np.uint16)
        src = np.ascontiguousarray(np.asarray(packets.src_ip)[rows]).view(np.uint8).reshape(-1, 16)
        dst = np.ascontiguousarray(np.asarray(packets.dst_ip)[rows]).view(np.uint8).reshape(-1, 16)
        vlan = np.asarray(packets.vlan)[rows].astype(np.uint16)

        # Canonical endpoint order: lo = smaller (ip, port). fwd: packet travels lo -> hi.
        sw, dw = _address_words(src), _address_words(dst)
        src_greater = (sw[:, 0] > dw[:, 0]) | ((sw[:, 0] == dw[:, 0]) & (
            (sw[:, 1] > dw[:, 1]) | ((sw[:, 1] == dw[:, 1]) & (sport > dport))))
        fwd = ~src_greater
        lo_w = np.where(fwd[:, None], sw, dw)
        hi_w = np.where(fwd[:, None], dw, sw)
        lo_port = np.where(fwd, sport, dport).astype(np.uint64)
        hi_port = np.where(fwd, dport, sport).astype(np.uint64)
        meta = ((vlan.astype(np.uint64) << np.uint64(48))
                | (transport.astype(np.uint64) << np.uint64(40))
                | (lo_port << np.uint64(16)) | hi_port)
        words = np.column_stack([meta, lo_w, hi_w])  # (n, 5) uint64: the full key

        # Group by key with one stable sort on a 64-bit hash, then verify no collision.
        # The low bits of the sort key carry the row index, so a plain (unstable, faster)
        # sort keeps capture order inside each key; equal high hash bits of two different
        # keys would interleave them, which the exact check below catches.
        index_bits = max(int(words.shape[0]).bit_length(), 1)
        low_mask = np.uint64((1 << index_bits) - 1)
        sort_key = (_mix64(words) & ~low_mask) | np.arange(words.shape[0], dtype=np.uint64)
        sort_key.sort()
        order = (sort_key & low_mask).astype(np.int64)
        hs = sort_key & ~low_mask
        new_key = np.empty(order.size, dtype=bool)
        new_key[0] = True
        np.not_equal(hs[1:], hs[:-1], out=new_key[1:])
        key_id = np.cumsum(new_key) - 1
        key_first = np.flatnonzero(new_key)
        ws = np.take(words, order, axis=0)
        if not (ws == ws[key_first][key_id]).all():  # hash collision: group by exact key
            order = np.lexsort(words.T[::-1])
            ws = words[order]
            new_key[1:] = (ws[1:] != ws[:-1]).any(axis=1)
            key_id = np.cumsum(new_key) - 1
            key_first = np.flatnonzero(new_key)

        batch_rows = rows[order]  # one gather per column, straight into key order
        sorted_transport = transport[order]
        p = _Packets(
            ts=np.asarray(packets.ts_ns, dtype=np.int64)[batch_rows],
            cm=clock_all[batch_rows],
            fwd=fwd[order],
            flags=np.where(sorted_transport == TCP, np.asarray(packets.tcp_flags)[batch_rows], 0)
            .astype(np.uint8),
            wire=np.asarray(packets.wirelen)[batch_rows].astype(np.uint64),
            pay=np.maximum(np.asarray(packets.payload_len)[batch_rows], 0).astype(np.uint64),
            transport=sorted_transport,
            key=key_id,
            key_first=key_first,
        )
        key_words = ws[key_first]
        key_hash = _mix64(key_words)
        slot_k = self._index.lookup(key_hash, key_words, self._slot_words)
        endpoints = {
            "vlan": vlan[order][key_first], "transport": transport[order][key_first],
            "lo_ip": np.ascontiguousarray(lo_w[order][key_first].astype(">u8")).view(IP_DTYPE)
            .ravel(),
            "hi_ip": np.ascontiguousarray(hi_w[order][key_first].astype(">u8")).view(IP_DTYPE)
            .ravel(),
            "lo_port": lo_port[order][key_first].astype(np.uint16),
            "hi_port": hi_port[order][key_first].astype(np.uint16),
        }
        return self._apply(p, slot_k, (key_words, key_hash), endpoints, clock_all)

    def _apply(self, p: _Packets, slot_k: np.ndarray, keys: tuple, endpoints: Rows,
               clock_all: np.ndarray) -> list:
        cols = self._cols
        n = p.ts.size
        first_in_key = np.zeros(n, dtype=bool)
        first_in_key[p.key_first] = True
        pkt_slot = np.where(first_in_key, slot_k[p.key], -1)
        has_slot_pkt = pkt_slot >= 0

        # Idle split: the clock passed (previous packet of the same key) + idle timeout.
        prev_ts = np.empty(n, dtype=np.int64)
        prev_ts[1:] = p.ts[:-1]
        prev_ts[first_in_key] = np.where(has_slot_pkt[first_in_key],
                                         cols["last_ts"][np.maximum(pkt_slot[first_in_key], 0)],
                                         0)
        has_prev = ~first_in_key | has_slot_pkt
        idle_ns = np.where(p.transport == TCP, self.tcp_idle_ns, self.idle_ns)
        idle_split = has_prev & (p.cm > prev_ts + idle_ns)
        start = first_in_key | idle_split
        split = idle_split.copy()  # segment starts that end an earlier flow of the same key

        # Close refinement: a flow closed before a packet ends at that packet when the
        # linger has passed or the packet is a SYN without ACK. Each round adds the first
        # such packet per segment (later ones depend on the new segment's own state).
        syn_only = (p.flags & (SYN | ACK)) == SYN
        has_close_flags = (p.flags & (FIN | RST)) > 0
        key_closing = np.zeros(p.key_first.size, dtype=bool)
        key_closing[p.key[has_close_flags]] = True
        slot_closed = slot_k >= 0
        slot_closed[slot_closed] = cols["closed_at"][slot_k[slot_closed]] < NEVER
        key_closing |= slot_closed
        sub = np.flatnonzero(key_closing[p.key])
        while sub.size:
            self.stats["close_refine_rounds"] += 1
            seg_info = self._segments(p, sub, start, split, has_slot_pkt, pkt_slot, syn_only)
            viol = seg_info["violation"]
            if not viol.size:
                break
            start[viol] = True
            split[viol] = True
            again = np.zeros(p.key_first.size, dtype=bool)
            again[p.key[viol]] = True
            sub = np.flatnonzero(again[p.key])

        everything = np.arange(n)
        seg_info = self._segments(p, everything, start, split, has_slot_pkt, pkt_slot, syn_only)
        return self._records(p, slot_k, keys, endpoints, clock_all, start, split,
                             pkt_slot, seg_info)

    def _segments(self, p: _Packets, sub: np.ndarray, start: np.ndarray, split: np.ndarray,
                  has_slot_pkt: np.ndarray, pkt_slot: np.ndarray, syn_only: np.ndarray) -> dict:
        """Close state of the flow segments covering positions `sub` (whole keys only)."""
        cols = self._cols
        st = start[sub]
        seg = np.cumsum(st) - 1
        seg_pos = np.flatnonzero(st)  # index into sub
        first = sub[seg_pos]
        cont = has_slot_pkt[first] & ~split[first]  # continues the flow held in the table
        slot = np.where(cont, pkt_slot[first], 0)
        seed_lo = np.where(cont, cols["st_fl_lo"][slot], 0).astype(np.uint8)
        seed_hi = np.where(cont, cols["st_fl_hi"][slot], 0).astype(np.uint8)
        seed_closed_at = np.where(cont, cols["closed_at"][slot], NEVER)
        seed_closed = seed_closed_at < NEVER

        flags, fwd = p.flags[sub], p.fwd[sub]
        fin_lo = ((flags & FIN) > 0) & fwd
        fin_hi = ((flags & FIN) > 0) & ~fwd
        rst = (flags & RST) > 0
        c_fin_lo = _seg_cumsum(fin_lo.astype(np.int64), seg_pos, seg) + ((seed_lo & FIN) > 0)[seg]
        c_fin_hi = _seg_cumsum(fin_hi.astype(np.int64), seg_pos, seg) + ((seed_hi & FIN) > 0)[seg]
        c_rst = _seg_cumsum(rst.astype(np.int64), seg_pos, seg) + (
            ((seed_lo | seed_hi) & RST) > 0)[seg]
        closed_incl = ((c_fin_lo > 0) & (c_fin_hi > 0)) | (c_rst > 0)
        closed_excl = np.empty_like(closed_incl)
        closed_excl[1:] = closed_incl[:-1]
        closed_excl[seg_pos] = seed_closed
        cm = p.cm[sub]
        became = np.flatnonzero(closed_incl & ~closed_excl)
        closed_at_seg = seed_closed_at.copy()
        closed_at_seg[seg[became]] = cm[became]
        # A segment start cannot split again, except the first packet continuing a table flow.
        can_split = ~st
        can_split[seg_pos[cont]] = True
        viol = closed_excl & can_split & (
            (cm > closed_at_seg[seg] + self.linger_ns) | syn_only[sub])
        vi = np.flatnonzero(viol)
        if vi.size:
            _, first_per_seg = np.unique(seg[vi], return_index=True)
            vi = vi[first_per_seg]
        return {"violation": sub[vi], "seg": seg, "seg_first": first, "cont": cont,
                "closed_at": closed_at_seg}

    def _records(self, p: _Packets, slot_k: np.ndarray, keys: tuple,
                 endpoints: Rows, clock_all: np.ndarray, start: np.ndarray, split: np.ndarray,
                 pkt_slot: np.ndarray, seg_info: dict) -> list:
        cols = self._cols
        seg, seg_first, cont = seg_info["seg"], seg_info["seg_first"], seg_info["cont"]
        n_seg = seg_first.size
        seg_slot = np.where(cont, pkt_slot[seg_first], -1)
        cslot = np.maximum(seg_slot, 0)
        first_syn_ack = (p.flags[seg_first] & (SYN | ACK)) == (SYN | ACK)
        orig_is_lo = np.where(cont, cols["orig_is_lo"][cslot], p.fwd[seg_first] ^ first_syn_ack)
        flow_start = np.where(cont, cols["flow_start"][cslot], p.ts[seg_first])
        self.stats["flows_created"] += int(n_seg - cont.sum())

        # Pieces on the active-timeout grid; groups = (segment, piece) runs.
        piece = np.maximum((p.cm - flow_start[seg]) // self.active_ns, 0)
        piece = np.maximum(piece, np.where(cont, cols["piece"][cslot], 0)[seg])
        gstart = start.copy()
        gstart[1:] |= piece[1:] != piece[:-1]
        g_first = np.flatnonzero(gstart)
        g_last = np.r_[g_first[1:] - 1, p.ts.size - 1]
        g_seg = seg[g_first]
        g_seg_start = np.flatnonzero(start[g_first])  # first group of each segment
        g_is_seg_last = np.r_[g_seg[1:] != g_seg[:-1], True]

        fwd_u = p.fwd.astype(np.uint64)
        cnt = np.diff(np.r_[g_first, p.ts.size]).astype(np.uint64)
        pk_lo = np.add.reduceat(fwd_u, g_first)
        by_all = np.add.reduceat(p.wire, g_first)
        by_lo = np.add.reduceat(p.wire * fwd_u, g_first)
        pay_all = np.add.reduceat(p.pay, g_first)
        pay_lo = np.add.reduceat(p.pay * fwd_u, g_first)
        fl_lo = np.bitwise_or.reduceat(np.where(p.fwd, p.flags, 0).astype(np.uint8), g_first)
        fl_hi = np.bitwise_or.reduceat(np.where(p.fwd, 0, p.flags).astype(np.uint8), g_first)
        g = {
            "p_first": np.minimum.reduceat(p.ts, g_first),
            "p_end": np.maximum.reduceat(p.ts, g_first),
            # copies: the table piece is merged into these in place below, while the
            # in-batch values feed the cumulative flow state
            "p_pk_lo": pk_lo.copy(), "p_pk_hi": cnt - pk_lo,
            "p_by_lo": by_lo, "p_by_hi": by_all - by_lo,
            "p_pay_lo": pay_lo.copy(), "p_pay_hi": pay_all - pay_lo,
            "p_fl_lo": fl_lo.copy(), "p_fl_hi": fl_hi.copy(),
        }

        # The table's current piece merges into the first group when it is the same piece.
        g_cont = np.zeros(g_first.size, dtype=bool)
        g_cont[g_seg_start] = cont
        g_slot = np.where(g_cont, seg_slot[g_seg], -1)
        tslot = np.maximum(g_slot, 0)
        t_nonempty = g_cont & ((cols["p_pk_lo"][tslot] + cols["p_pk_hi"][tslot]) > 0)
        merge = t_nonempty & (piece[g_first] == cols["piece"][tslot])
        m = np.flatnonzero(merge)
        ms = g_slot[m]
        g["p_first"][m] = np.minimum(g["p_first"][m], cols["p_first"][ms])
        g["p_end"][m] = np.maximum(g["p_end"][m], cols["p_end"][ms])
        for name in ("p_pk_lo", "p_pk_hi", "p_by_lo", "p_by_hi", "p_pay_lo", "p_pay_hi"):
            g[name][m] += cols[name][ms]
        for name in ("p_fl_lo", "p_fl_hi"):
            g[name][m] |= cols[name][ms]

        # Flow-level cumulative state through each group (seeded from the table).
        seed = {name: np.where(cont, cols[name][cslot], 0) for name in
                ("st_fl_lo", "st_fl_hi", "cum_pk_lo", "cum_pk_hi", "cum_pay_lo", "cum_pay_hi")}
        gs_seg = g_seg
        g["st_fl_lo"] = _seg_cum_or(fl_lo, g_seg_start, gs_seg) | seed["st_fl_lo"][gs_seg].astype(
            np.uint8)
        g["st_fl_hi"] = _seg_cum_or(fl_hi, g_seg_start, gs_seg) | seed["st_fl_hi"][gs_seg].astype(
            np.uint8)
        for name, vals in (("cum_pk_lo", pk_lo), ("cum_pk_hi", cnt - pk_lo),
                           ("cum_pay_lo", pay_lo), ("cum_pay_hi", pay_all - pay_lo)):
            g[name] = (_seg_cumsum(vals.astype(np.int64), g_seg_start, gs_seg)
                       + seed[name][gs_seg].astype(np.int64)).astype(np.uint64)
        closed_now = ((g["st_fl_lo"] & g["st_fl_hi"] & FIN) > 0) | (
            ((g["st_fl_lo"] | g["st_fl_hi"]) & RST) > 0)
        g["closed_at"] = np.where(closed_now, seg_info["closed_at"][gs_seg], NEVER)
        g["orig_is_lo"] = orig_is_lo[gs_seg]
        g["flow_start"] = flow_start[gs_seg]
        g["last_ts"] = p.ts[g_last]
        g["piece"] = piece[g_first]
        g_key = p.key[g_first]
        for name, values in endpoints.items():
            g[name] = values[g_key]

        out: list[Rows] = []
        # 1. Table pieces that do not merge: the flow moved to a later piece ("active") or
        #    ended at the key's first packet in this batch (split).
        touched = slot_k >= 0
        key_seg0_split = split[p.key_first]
        ended_slots = slot_k[touched & key_seg0_split]
        moved = np.flatnonzero(t_nonempty & ~merge)
        out.append(self._slot_rows(g_slot[moved], R_ACTIVE))
        if ended_slots.size:
            split_clock = p.cm[p.key_first[touched & key_seg0_split]]
            rows = self._slot_rows(ended_slots, None)
            rows["reason"] = self._end_reason(rows, clock_all, split_clock)
            out.append(_nonempty(rows))

        # 2. Groups that are not the live tail of their key.
        g_is_key_last = np.r_[g_key[1:] != g_key[:-1], True]
        mid = ~g_is_seg_last
        ended = g_is_seg_last & ~g_is_key_last
        mid_rows = {k: v[mid] for k, v in g.items()}
        mid_rows["reason"] = np.full(int(mid.sum()), R_ACTIVE, dtype=np.uint8)
        out.append(mid_rows)
        if ended.any():
            e = np.flatnonzero(ended)
            rows = {k: v[e] for k, v in g.items()}
            next_first = g_first[e + 1]  # the split packet starting the key's next flow
            rows["reason"] = self._end_reason(rows, clock_all, p.cm[next_first])
            out.append(rows)

        # 3. The key's last group becomes (or stays) the live flow in the table.
        tail = np.flatnonzero(g_is_key_last)
        tail_key = g_key[tail]
        slots = slot_k[tail_key].copy()
        need = np.flatnonzero(slots < 0)
        if need.size:
            new_keys = tail_key[need]
            slots[need] = self._allocate(keys[0][new_keys], keys[1][new_keys])
        for name in SLOT_FIELDS:
            cols[name][slots] = g[name][tail]
        self._live[slots] = True
        self._deadline = min(self._deadline, int(self._deadlines(slots).min()))
        return out

    # -- expiry, eviction, slots --

    def _deadlines(self, slots: np.ndarray) -> np.ndarray:
        """Clock value after which each slot must be looked at (idle, close, piece end)."""
        cols = self._cols
        idle = np.where(cols["transport"][slots] == TCP, self.tcp_idle_ns, self.idle_ns)
        nonempty = (cols["p_pk_lo"][slots] + cols["p_pk_hi"][slots]) > 0
        active_end = np.where(
            nonempty, cols["flow_start"][slots] + (cols["piece"][slots] + 1) * self.active_ns - 1,
            NEVER)
        closed = np.minimum(cols["closed_at"][slots] + self.linger_ns, NEVER)
        return np.minimum(np.minimum(cols["last_ts"][slots] + idle, closed), active_end)

    def _end_reason(self, rows: Rows, clock_all: np.ndarray, split_clock: np.ndarray) -> np.ndarray:
        """Why a flow piece is emitted: the first threshold the clock crossed.

        A piece end ("active") that comes strictly before the flow end wins; otherwise the
        flow end: "fin"/"rst" when closed, else "idle".
        """
        idle = np.where(rows["transport"] == TCP, self.tcp_idle_ns, self.idle_ns)
        c_idle = _first_crossing(clock_all, rows["last_ts"] + idle)
        closed = rows["closed_at"] < NEVER
        c_close = np.where(closed, _first_crossing(
            clock_all, np.minimum(rows["closed_at"] + self.linger_ns, NEVER)), NEVER)
        c_active = _first_crossing(
            clock_all, rows["flow_start"] + (rows["piece"] + 1) * self.active_ns - 1)
        c_end = np.minimum(np.minimum(c_idle, c_close), split_clock)
        had_rst = ((rows["st_fl_lo"] | rows["st_fl_hi"]) & RST) > 0
        end_reason = np.where(closed, np.where(had_rst, R_RST, R_FIN), R_IDLE)
        return np.where(c_active < c_end, R_ACTIVE, end_reason).astype(np.uint8)

    def _expire(self, clock_all: np.ndarray) -> list:
        now = int(clock_all[-1])
        if now <= self._deadline:
            return []
        cols = self._cols
        slots = np.flatnonzero(self._live)
        slots = np.concatenate([chunk[self._deadlines(chunk) < now] for chunk in
                                np.array_split(slots, max(slots.size // _SCAN_CHUNK, 1))])
        if not slots.size:
            self._deadline = self._min_deadline()
            return []
        rows = self._slot_rows(slots, None)
        rows["reason"] = self._end_reason(rows, clock_all, np.full(slots.size, NEVER))
        out = [_nonempty(rows)]
        # The flow itself ends when idle/close crossed; otherwise only the piece was emitted.
        idle = np.where(rows["transport"] == TCP, self.tcp_idle_ns, self.idle_ns)
        flow_over = (now > rows["last_ts"] + idle) | (
            (rows["closed_at"] < NEVER) & (now > rows["closed_at"] + self.linger_ns))
        self._release(slots[flow_over])
        keep = slots[~flow_over]
        for name in ("p_pk_lo", "p_pk_hi", "p_by_lo", "p_by_hi", "p_pay_lo", "p_pay_hi",
                     "p_fl_lo", "p_fl_hi"):
            cols[name][keep] = 0
        self._deadline = self._min_deadline()
        return out

    def _min_deadline(self) -> int:
        live = np.flatnonzero(self._live)
        if not live.size:
            return NEVER
        return min(int(self._deadlines(live[lo:lo + _SCAN_CHUNK]).min())
                   for lo in range(0, live.size, _SCAN_CHUNK))

    def _evict(self) -> list:
        live = np.flatnonzero(self._live)
        excess = live.size - self.max_flows
        if excess <= 0:
            self.stats["flows_live"] = int(live.size)
            return []
        # Least recently seen first; ties by slot for determinism. A partition finds the
        # cut-off time in O(live) (a full sort of 1M flows per batch dominated a flood).
        last = self._cols["last_ts"][live]
        cut = np.partition(last, excess - 1)[excess - 1]
        below = live[last < cut]
        at_cut = live[last == cut][:excess - below.size]  # live is in slot order
        victims = np.concatenate([below, at_cut])
        victims = victims[np.lexsort((victims, self._cols["last_ts"][victims]))]
        rows = self._slot_rows(victims, R_EVICTED)
        self._release(victims)
        self.stats["flows_evicted"] += int(victims.size)
        self.stats["flows_live"] = int(live.size - excess)
        return [_nonempty(rows)]

    def _slot_rows(self, slots: np.ndarray, reason: int | None) -> Rows:
        rows = {name: col[slots] for name, col in self._cols.items()}
        if reason is not None:
            rows["reason"] = np.full(slots.size, reason, dtype=np.uint8)
            rows = _nonempty(rows)
        return rows

    def _allocate(self, key_words: np.ndarray, key_hash: np.ndarray) -> np.ndarray:
        """Slots for new keys (absent from the index): popped from the free stack, indexed."""
        k = key_hash.size
        need = k - self._n_free
        if need > 0:
            self._grow(need)
        top = self._n_free
        slots = self._free[top - k:top][::-1].astype(np.int64)  # lowest free slot first
        self._n_free = top - k
        # The caller writes the key columns right after; the index only needs the slots.
        self._index.insert(key_hash, slots)
        return slots

    def _grow(self, need: int) -> None:
        old = self._live.size
        # Doubling, but not far past the bound: live flows never exceed max_flows plus one
        # batch's new keys, so a full table of 1M flows needs ~1.1M slots, not 2M (a flood
        # otherwise doubles the table's memory for nothing).
        new = max(old + need, min(max(old * 2, 1024), self.max_flows + _GROW_HEADROOM))
        for name, col in self._cols.items():
            grown = _zeros(new, col.dtype)
            grown[:old] = col
            self._cols[name] = grown
        live = np.zeros(new, dtype=bool)
        live[:old] = self._live
        self._live = live
        free = np.zeros(new, dtype=np.int32)
        free[:self._n_free] = self._free[:self._n_free]
        free[self._n_free:self._n_free + new - old] = np.arange(new - 1, old - 1, -1)
        self._free = free
        self._n_free += new - old
        self._index.resize(new, np.flatnonzero(self._live), self._slot_words)

    def _release(self, slots: np.ndarray) -> None:
        if not slots.size:
            return
        self._live[slots] = False
        self._index.remove(_mix64(self._slot_words(slots)), slots)
        top = self._n_free
        self._free[top:top + slots.size] = slots
        self._n_free = top + slots.size
        if self._index.needs_rebuild():
            self._index.resize(self._live.size, np.flatnonzero(self._live), self._slot_words)

    def _slot_words(self, slots: np.ndarray) -> np.ndarray:
        """(n, 5) uint64 flow keys of table slots, the layout _ingest builds."""
        cols = self._cols
        meta = ((cols["vlan"][slots].astype(np.uint64) << np.uint64(48))
                | (cols["transport"][slots].astype(np.uint64) << np.uint64(40))
                | (cols["lo_port"][slots].astype(np.uint64) << np.uint64(16))
                | cols["hi_port"][slots].astype(np.uint64))
        return np.column_stack([meta, _ip_words(cols["lo_ip"][slots]),
                                _ip_words(cols["hi_ip"][slots])])

    # -- output --

    def _to_batch(self, parts: list) -> EventBatch | None:
        parts = [r for r in parts if r and r["reason"].size]
        if not parts:
            return None
        rows = {k: np.concatenate([r[k] for r in parts]) for k in parts[0]}
        n = rows["reason"].size
        batch = _join_batches([
            flow_records({k: v[lo:lo + _RECORD_CHUNK] for k, v in rows.items()},
                         self.observer_name, self.ingress_zone, self.community_id_seed)
            for lo in range(0, n, _RECORD_CHUNK)])
        self.stats["flows_emitted"] += len(batch)
        return batch


def _join_batches(parts: list[EventBatch]) -> EventBatch | None:
    """concat_batches, one column at a time, dropping the parts' column as it goes (peak =
    the result plus one column, not twice the result)."""
    if len(parts) <= 1:
        return parts[0] if parts else None
    names = list(parts[0].columns)
    joined: dict[str, np.ndarray] = {}
    for name in names:
        joined[name] = np.concatenate([b.columns.pop(name) for b in parts])
    return EventBatch(parts[0].kind, joined)


def _slice_packets(packets: DecodedPackets, lo: int, hi: int) -> DecodedPackets:
    """Rows lo:hi of a batch (views; the shared buffer and weird counts are not sliced)."""
    return DecodedPackets(**{
        f.name: value[lo:hi] if f.name not in ("data", "weird") else value
        for f in dataclasses.fields(packets) for value in (getattr(packets, f.name),)})


class _Packets:
    """IP packets of one batch sorted by flow key (then capture order)."""

    __slots__ = ("ts", "cm", "fwd", "flags", "wire", "pay", "transport", "key", "key_first")

    def __init__(self, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            setattr(self, name, values)


def _nonempty(rows: Rows) -> Rows:
    keep = (rows["p_pk_lo"] + rows["p_pk_hi"]) > 0
    return {k: v[keep] for k, v in rows.items()}


def flow_records(rows: Rows, observer_name: str, ingress_zone: str, seed: int = 0) -> EventBatch:
    """Table rows (lo/hi terms) -> FLOW EventBatch in originator/responder terms."""
    o = rows["orig_is_lo"]

    def pick(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.where(o, lo, hi), np.where(o, hi, lo)

    src_ip, dst_ip = pick(rows["lo_ip"], rows["hi_ip"])
    src_port, dst_port = pick(rows["lo_port"], rows["hi_port"])
    n = src_ip.shape[0]
    cols: dict[str, np.ndarray] = {
        "timestamp": rows["p_first"].astype(np.int64),
        "observer_name": np.full(n, observer_name, dtype=object),
        "ingress_zone": np.full(n, ingress_zone, dtype=object),
        "src_ip": src_ip.astype(IP_DTYPE),
        "dst_ip": dst_ip.astype(IP_DTYPE),
        "src_port": src_port.astype(np.uint16),
        "dst_port": dst_port.astype(np.uint16),
        "transport": rows["transport"].astype(np.uint8),
        "vlan": rows["vlan"].astype(np.uint16),
        "end": rows["p_end"].astype(np.int64),
    }
    for ours, lo, hi in (("packets", "p_pk_lo", "p_pk_hi"), ("bytes", "p_by_lo", "p_by_hi"),
                         ("payload_bytes", "p_pay_lo", "p_pay_hi")):
        s, d = pick(rows[lo], rows[hi])
        cols[f"src_{ours}"] = s.astype(np.uint64)
        cols[f"dst_{ours}"] = d.astype(np.uint64)
    s, d = pick(rows["p_fl_lo"], rows["p_fl_hi"])
    cols["src_tcp_flags"], cols["dst_tcp_flags"] = s.astype(np.uint8), d.astype(np.uint8)
    of, rf = pick(rows["st_fl_lo"], rows["st_fl_hi"])
    opk, rpk = pick(rows["cum_pk_lo"], rows["cum_pk_hi"])
    opay, rpay = pick(rows["cum_pay_lo"], rows["cum_pay_hi"])
    cols["conn_state"] = conn_state(cols["transport"], of, rf, opk, rpk, opay, rpay)
    cols["end_reason"] = REASONS[rows["reason"].astype(np.intp)]
    cols["community_id"] = community_id_column(src_ip, dst_ip, cols["transport"], src_port,
                                               dst_port, seed)
    return EventBatch(FLOW.name, {f.column: cols[f.column] for f in FLOW.fields})
