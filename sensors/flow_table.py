"""Bidirectional flow table: decoded packets in, ended flow records (event kind "flow") out.

Flows are keyed by (vlan, tunnel segment, transport, {(ip, port), (ip, port)} unordered);
the segment is DecodedPackets.tunnel_id (0 for untunnelled rows). Only rows with
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

Implementation: per batch, one compiled pass in capture order (_batch_keys) canonicalizes
each packet's key and finds the batch's distinct keys in a per-batch open-addressing table
(keys compared exactly), each with its _mix64 hash; keys are ordered by that hash (exact
key order when two share its high bits), and one compiled walk over the packets in capture
order (_walk_flows, one state row per key) finds flow boundaries (idle, close linger, port
reuse), pieces and per-piece totals, continuing the table's live flow of the key (read from
its table row at the key's first packet). The table is numpy columns for the key, last_ts
and a kept deadline, plus one 104-byte row per slot of the fields the walk reads and
writes (_HOT_DTYPE; the table's columns for them are views): ~170 bytes a flow with the
index (compact dtypes, cumulative counters kept as the booleans conn_state needs), an
open-addressing hash index key -> slot (_SlotIndex) and a numpy stack of free slots, so no
Python object exists per flow; expiry scans the deadline column in one compiled pass
(_scan_deadlines) and the key -> slot index probes are compiled loops too, as is the
live-flow write-back after the walk (_scatter_group, a row a key). Emitted records are
FLOW's numeric columns built by kernels straight from table slots or the walk's groups
(_slot_records, _group_records: originator picks, conn_state code, end reason from a
bucketed search of the batch clock when the piece ends first, _clock_index / _positions);
flow_batch adds the object
columns. Python loops run only over chunks and table columns.
Memory under a flood: a filling table takes big batches in sub-batches, records are built
in chunks, and flush() hands the table's pages back while it builds the last records.
"""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Iterator

import numpy as np

from pipeline.jit import njit
from pipeline.schema import FLOW, EventBatch
from sensors.community_id import _ICMP4_TABLE, _ICMP6_TABLE, community_id_column
from sensors.packets import IP_DTYPE, DecodedPackets, constant_text, segment_columns
from sensors.tcp_stream import prefetch

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
TCP = 6
NS = 1_000_000_000
NEVER = np.iinfo(np.int64).max // 4  # "no deadline"; headroom so adding timeouts cannot overflow

CONN_STATES = np.array(["OTH", "REJ", "RSTRH", "RSTR", "RSTOS0", "RSTO", "SF", "SH", "S2",
                        "SHR", "S3", "S0", "S1"], dtype=object)
(_CS_OTH, _CS_REJ, _CS_RSTRH, _CS_RSTR, _CS_RSTOS0, _CS_RSTO, _CS_SF, _CS_SH, _CS_S2, _CS_SHR,
 _CS_S3, _CS_S0, _CS_S1) = range(len(CONN_STATES))
REASONS = np.array(["fin", "rst", "idle", "active", "eof", "evicted"], dtype=object)
R_FIN, R_RST, R_IDLE, R_ACTIVE, R_EOF, R_EVICTED = range(6)

# Zeek endpoint states
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)

_FLUSH_CHUNK = 65536  # flows per piece of flush_chunks()
_UPDATE_CHUNK = 16384  # packets per internal update step once the table is filling
_SUB_BATCH_FILL = 0.5  # "filling": live flows >= this fraction of max_flows
_MAPPED_MIN = 1 << 20  # table columns at least this large live in their own mapping
_RECORD_CHUNK = 16384  # rows per community_id_column call (bounds its temporaries)
_GROW_HEADROOM = 65536  # slots above max_flows before growth falls back to exact sizes
_SCAN_CHUNK = 262144  # slots per step when scanning the whole table (bounds temporaries)
_KEPT_STATE = 1 << 19  # words of walk state kept across batches (4 MB: 20k keys)
_AHEAD = 16  # rows ahead whose lines the grouping and the walk ask for (tcp_stream.prefetch)

# Per-slot table columns. "lo"/"hi" are the canonical endpoints (smaller (ip, port) first);
# records are turned into originator/responder terms only when emitted.
SLOT_FIELDS: dict[str, np.dtype] = {
    "vlan": np.dtype(np.uint16),  # | SEGMENT_FLAG when the flow has a tunnel segment
    "segment": np.dtype(np.uint64),  # the tunnel segment (DecodedPackets.tunnel_id) if flagged
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

# The fields the walk reads and writes per key (a live flow it continues, the live tail it
# writes back) live in one row per slot of a structured array, the int64 ones first
# (8-aligned), padded to 104 bytes; the table's columns for them are strided views of it. A
# key's seed read, write-back and record then touch 2-3 cache lines instead of one line per
# column (20).
# last_ts stays a column of its own: eviction reads it for every live slot (strided in
# 104-byte rows, a 1M-flow flood read a line per slot per sub-batch: +28% CPU).
_HOT_NAMES = ("closed_at", "flow_start", "piece", "p_first", "p_end", "p_pk_lo",
              "p_pk_hi", "p_by_lo", "p_by_hi", "p_pay_lo", "p_pay_hi", "orig_is_lo",
              "st_fl_lo", "st_fl_hi", "cum_pk_lo", "cum_pk_hi", "cum_pay_lo", "cum_pay_hi",
              "p_fl_lo", "p_fl_hi")


def _hot_dtype() -> np.dtype:
    offsets, at = [], 0
    for name in _HOT_NAMES:
        offsets.append(at)
        at += SLOT_FIELDS[name].itemsize
    return np.dtype({"names": list(_HOT_NAMES), "formats": [SLOT_FIELDS[n] for n in _HOT_NAMES],
                     "offsets": offsets, "itemsize": (at + 7) // 8 * 8})


_HOT_DTYPE = _hot_dtype()
# The kernels' view of a hot row (_hot_views): int64 words 0.._HOT_WORDS-1, then one byte a
# field from byte _HOT_BYTE0 on; where the walk reads a live flow's fields (_HW_*: word,
# _HB_*: byte; runs of fields the walk reads in a loop are consecutive).
_HOT_WORDS = sum(SLOT_FIELDS[name].itemsize == 8 for name in _HOT_NAMES)
_HOT_BYTE0 = 8 * _HOT_WORDS
(_HW_CLOSED_AT, _HW_FLOW_START, _HW_PIECE, _HW_P_FIRST, _HW_P_END, _HW_P_PK_LO) = (
    _HOT_NAMES.index(name) for name in ("closed_at", "flow_start", "piece", "p_first", "p_end",
                                        "p_pk_lo"))
(_HB_ORIG_IS_LO, _HB_ST_FL_LO, _HB_P_FL_LO) = (
    _HOT_BYTE0 + _HOT_NAMES.index(name) - _HOT_WORDS
    for name in ("orig_is_lo", "st_fl_lo", "p_fl_lo"))
assert _HOT_NAMES[_HW_P_PK_LO:_HW_P_PK_LO + 6] == ("p_pk_lo", "p_pk_hi", "p_by_lo", "p_by_hi",
                                                   "p_pay_lo", "p_pay_hi")
assert _HOT_NAMES[_HB_ST_FL_LO - _HOT_BYTE0 + _HOT_WORDS:][:6] == (
    "st_fl_lo", "st_fl_hi", "cum_pk_lo", "cum_pk_hi", "cum_pay_lo", "cum_pay_hi")
assert _HOT_NAMES[_HB_P_FL_LO - _HOT_BYTE0 + _HOT_WORDS:][:2] == ("p_fl_lo", "p_fl_hi")
_COLD_NAMES = tuple(name for name in SLOT_FIELDS if name not in _HOT_NAMES)  # own columns
_HOT_ROW_WORDS = _HOT_DTYPE.itemsize // 8


# --- small column helpers ---------------------------------------------------------------


def _raw16(column: np.ndarray) -> np.ndarray:
    """IP_DTYPE column -> (n, 16) uint8 address bytes (a view when contiguous)."""
    return np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16)


def _words16(column: np.ndarray) -> np.ndarray:
    """IP_DTYPE column -> (n, 2) native uint64 words (a view when contiguous)."""
    return np.ascontiguousarray(column).view("<u8").reshape(-1, 2)  # little-endian words


def _mix64(words: np.ndarray) -> np.ndarray:
    """Hash (n, k) uint64 words to uint64 (splitmix-style); collisions are checked by caller.
    A sixth word (a flow key's segment) that is 0 is left out, as _key_hash does."""
    return _mix64_rows(np.ascontiguousarray(words, dtype=np.uint64))


@njit(inline="always")
def _mix_step(x: np.uint64, word: np.uint64) -> np.uint64:
    """One word into the running hash of _mix64_rows."""
    x ^= word
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(31)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(29)
    return x


@njit
def _mix64_rows(words: np.ndarray) -> np.ndarray:
    h = np.empty(words.shape[0], dtype=np.uint64)
    for i in range(words.shape[0]):
        x = np.uint64(0x9E3779B97F4A7C15)
        for j in range(words.shape[1]):
            if j != 5 or words[i, j] != 0:
                x = _mix_step(x, words[i, j])
        h[i] = x
    return h


@njit
def _be_word(raw: np.ndarray, i: int, at: int) -> np.uint64:
    """Bytes raw[i, at:at+8] as a big-endian uint64 (numeric order = byte order)."""
    w = np.uint64(0)
    for j in range(8):
        w = (w << np.uint64(8)) | np.uint64(raw[i, at + j])
    return w


@njit(inline="always")
def _bswap(x: np.uint64) -> np.uint64:
    """Byte-reversed x (LLVM turns the pattern into one bswap): an address's 8 bytes
    loaded as one little-endian word -> their big-endian value, as _be_word."""
    x = (((x & np.uint64(0x00FF00FF00FF00FF)) << np.uint64(8))
         | ((x >> np.uint64(8)) & np.uint64(0x00FF00FF00FF00FF)))
    x = (((x & np.uint64(0x0000FFFF0000FFFF)) << np.uint64(16))
         | ((x >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF)))
    return (x << np.uint64(32)) | (x >> np.uint64(32))


# The tunnel segment (DecodedPackets.tunnel_id) is a sixth key word. A flow that has one
# sets SEGMENT_FLAG in its vlan (VLAN ids are 12 bits): the word is compared (and the slot's
# segment column read) only for flagged keys, and unflagged keys hash and order as before.
SEGMENT_FLAG_BIT = 12
SEGMENT_FLAG = 1 << SEGMENT_FLAG_BIT
VLAN_MASK = 0x0FFF


@njit(inline="always")
def _packet_key(r, src, dst, sport, dport, transport, vlan, segment):
    """Flow key of packet row r: (meta, lo_ip words (2), hi_ip words (2), segment, fwd,
    hash).

    fwd: the packet travels lo -> hi, lo being the smaller (ip, port) endpoint; the hash is
    _key_hash of the six words. meta = (vlan | SEGMENT_FLAG if segment) << 48 | transport
    << 40 | lo_port << 16 | hi_port.
    Ports are Zeek's: ICMP request/reply types get the counter-type as "port"
    (community_id's 256-entry tables, -1 for one-way types, read as globals: frozen
    constants, cheaper than array arguments) and protocols without ports (not in
    PORT_PROTOS) get 0. src/dst are the (N, 2) native uint64 words of the addresses
    (_words16); r < N (a row of the batch)."""
    t = np.int64(transport[r])
    sp = np.int64(sport[r])
    dp = np.int64(dport[r])
    if t == 1 or t == 58:
        counter = (_ICMP4_TABLE[min(max(sp, 0), 255)] if t == 1
                   else _ICMP6_TABLE[min(max(sp, 0), 255)])
        if counter >= 0:
            dp = np.int64(counter)
    if not (t == 1 or t == 6 or t == 17 or t == 58 or t == 132):
        sp = 0
        dp = 0
    sp &= 0xFFFF
    dp &= 0xFFFF
    s0, s1 = _bswap(src[r, 0]), _bswap(src[r, 1])
    d0, d1 = _bswap(dst[r, 0]), _bswap(dst[r, 1])
    src_greater = s0 > d0 or (s0 == d0 and (s1 > d1 or (s1 == d1 and sp > dp)))
    if src_greater:
        s0, s1, d0, d1, sp, dp = d0, d1, s0, s1, dp, sp
    # segment: empty for a batch without tunnelled rows (no load, no sixth word)
    seg = np.uint64(0) if segment is None else np.uint64(segment[r])
    v = np.uint64(vlan[r]) | (np.uint64(seg != 0) << np.uint64(SEGMENT_FLAG_BIT))
    meta = ((v << np.uint64(48)) | (np.uint64(t) << np.uint64(40))
            | (np.uint64(sp) << np.uint64(16)) | np.uint64(dp))
    # the batch table's probe hash: independent multiplies (no serial chain); the flow
    # hash (_key_hash) is made once per key
    x = ((meta * np.uint64(0x9E3779B97F4A7C15)) ^ (s0 * np.uint64(0xBF58476D1CE4E5B9))
         ^ (s1 * np.uint64(0x94D049BB133111EB)) ^ (d0 * np.uint64(0xD6E8FEB86659FD93))
         ^ (d1 * np.uint64(0xC2B2AE3D27D4EB4F)) ^ (seg * np.uint64(0x9FB21C651E98DF25)))
    # (x is a bijection of the segment for given other words: the XOR of an odd multiple,
    # then shifts-XOR and an odd multiply, each invertible. _batch_keys_in relies on it.)
    # one multiply after the fold: bits that differ only high in a word (addresses that
    # differ only in their first bytes) reach the low bits the table position uses (without
    # it such keys shared a few positions: quadratic probing, 65 ms for 16k keys)
    x ^= x >> np.uint64(32)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(32)
    return meta, s0, s1, d0, d1, seg, not src_greater, x


@njit(inline="always")
def _key_hash(meta, s0, s1, d0, d1, seg):
    """_mix64 of a flow key's six words (the segment word only when it is set)."""
    x = _mix_step(np.uint64(0x9E3779B97F4A7C15), meta)
    x = _mix_step(_mix_step(_mix_step(_mix_step(x, s0), s1), d0), d1)
    if seg != 0:
        x = _mix_step(x, seg)
    return x




@njit
def _batch_keys(rows: np.ndarray, src: np.ndarray, dst: np.ndarray, sport: np.ndarray,
                dport: np.ndarray, transport: np.ndarray, vlan: np.ndarray,
                segment: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct flow keys of the packets at `rows`, in one pass in capture order.

    Returns (key_of: each packet's key id, fwd: the packet travels lo -> hi, key_words:
    (keys, 6) uint64 [meta, lo_ip (2), hi_ip (2), segment] (_packet_key), key_hash:
    _key_hash of them);
    key ids count keys in order of their first packet. A per-batch open-addressing table
    (hash -> key id, keys compared exactly) finds them: it replaced a sort of every
    packet's hash plus a grouping pass that read the packets' key words in hash order
    (random rows), and the (rows, 5) per-packet words. rows are rows of the batch, so < N.
    """
    return _batch_keys_in(rows, src, dst, sport, dport, transport, vlan, segment,
                          np.empty(_keys_table_size(rows.shape[0]), dtype=np.int32),
                          np.empty(_KEYS_SCRATCH * rows.shape[0], dtype=np.uint64))


_KEYS_SCRATCH = 8  # scratch words a packet for _batch_keys_in


@njit(inline="always")
def _keys_table_size(n: int) -> int:
    """_batch_keys' table entries for n packets: a power of two >= 2n (<= half full)."""
    size = 16
    while size < 2 * n:
        size *= 2
    return size


@njit
def _batch_keys_in(rows, src, dst, sport, dport, transport, vlan, segment, table, scratch):
    """_batch_keys in the caller's buffers, which may hold anything: table (int32, at least
    _keys_table_size(n) entries) and scratch (uint64, at least 8n words: the key words,
    hashes and probe hashes; key_words and key_hash are views of it). FlowTable keeps them
    across batches: fresh ones faulted their pages in again now and then (~2 us a page)."""
    n = rows.shape[0]
    size = _keys_table_size(n)
    mask = np.uint64(size - 1)
    table = table[:size]
    table[:] = -1
    key_of = np.empty(n, dtype=np.int32)
    fwd = np.empty(n, dtype=np.bool_)
    words = scratch[:6 * n].reshape((n, 6))  # at most one key a packet
    key_hash = scratch[6 * n:7 * n]
    probe = scratch[7 * n:8 * n]  # each key's probe hash
    n_keys = 0
    # unsigned indices: rows, table entries and positions are >= 0 by construction, and
    # numba adds no negative-index fix-up for an unsigned index
    for i in range(n):
        meta, s0, s1, d0, d1, seg, forward, x = _packet_key(
            np.uint64(rows[i]), src, dst, sport, dport, transport, vlan, segment)
        fwd[i] = forward
        pos = x & mask
        while True:  # the table is at most half full: an EMPTY entry ends every probe
            e = table[pos]
            if e < 0:
                table[pos] = n_keys
                words[n_keys, 0] = meta
                words[n_keys, 1] = s0
                words[n_keys, 2] = s1
                words[n_keys, 3] = d0
                words[n_keys, 4] = d1
                words[n_keys, 5] = seg
                probe[n_keys] = x
                key_hash[n_keys] = _key_hash(meta, s0, s1, d0, d1, seg)
                e = n_keys
                n_keys += 1
                break
            u = np.uint32(e)
            if (probe[u] == x and words[u, 0] == meta and words[u, 1] == s0
                    and words[u, 2] == s1 and words[u, 3] == d0 and words[u, 4] == d1):
                # the segment word need not be compared: with the other five equal, equal
                # probe hashes mean equal segments (see _packet_key; reading it here made
                # this loop ~2x slower)
                break
            pos = (pos + np.uint64(1)) & mask
        key_of[i] = e
    return key_of, fwd, words[:n_keys], key_hash[:n_keys]


def _key_order(key_hash: np.ndarray, key_words: np.ndarray, n_packets: int) -> np.ndarray:
    """The batch's keys in key order (it decides output row order and slot allocation):
    by their hash's bits above the bits a packet index of the batch needs, as the sort of
    (hash high bits | packet index) that grouped packets before gave; by the exact key
    words when two keys share those bits."""
    index_bits = max(n_packets.bit_length(), 1)
    order, shared = _high_order(np.ascontiguousarray(key_hash, dtype=np.uint64),
                                np.uint64(~((1 << index_bits) - 1) & (2**64 - 1)))
    if shared:
        order = np.lexsort(key_words.T[::-1])
    return order


@njit
def _high_order(key_hash: np.ndarray, mask: np.uint64) -> tuple[np.ndarray, bool]:
    """Positions of key_hash sorted by key_hash & mask, and whether two share that value
    (then the order among them is arbitrary). Hashes are uniform, so a counting pass on
    the top bits leaves ~1 key a bucket and an insertion pass finishes it: ~3x faster
    than np.argsort for a batch's ~6k keys."""
    n = key_hash.shape[0]
    bits = 1
    while (1 << bits) < n and bits < 16:
        bits += 1
    shift = np.uint64(64 - bits)
    start = np.zeros((1 << bits) + 1, dtype=np.int64)
    for i in range(n):
        start[np.int64((key_hash[i] & mask) >> shift) + 1] += 1
    for b in range(1 << bits):
        start[b + 1] += start[b]
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        b = np.int64((key_hash[i] & mask) >> shift)
        order[start[b]] = i
        start[b] += 1
    shared = False
    for i in range(1, n):  # buckets are in order: only moves inside a bucket
        v = order[i]
        h = key_hash[v] & mask
        j = i
        while j > 0 and (key_hash[order[j - 1]] & mask) > h:
            order[j] = order[j - 1]
            j -= 1
        order[j] = v
        shared |= j > 0 and (key_hash[order[j - 1]] & mask) == h
    return order, shared


def _zeros(n: int, dtype: np.dtype, itemsize: int = 0) -> np.ndarray:
    """np.zeros, in its own anonymous mapping when large, so its pages go back to the OS
    when the column is dropped (memory from malloc's heap can stay resident). Large: n
    items of `itemsize` bytes (dtype's by default) would take _MAPPED_MIN or more."""
    nbytes = n * np.dtype(dtype).itemsize
    if n * (itemsize or np.dtype(dtype).itemsize) < _MAPPED_MIN:
        return np.zeros(n, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=n)


# Slot key columns: (vlan, transport, lo_port, hi_port, lo_ip, hi_ip, segment) of the
# table, the IP columns as (n, 16) uint8 views; the index compares a probed slot's key
# through them.
KeyColumns = tuple


@njit
def _slot_word(slot: int, j: int, vlan: np.ndarray, transport: np.ndarray,
               lo_port: np.ndarray, hi_port: np.ndarray, lo_ip: np.ndarray,
               hi_ip: np.ndarray) -> np.uint64:
    """Word j < 5 of a slot's flow key, the layout _packet_key builds (caller bounds slot);
    the segment word is _slot_segment's. Why apart: a sixth branch here kept LLVM from
    inlining this into its callers (~100x slower lookups and key reads: a call per word)."""
    if j == 0:
        return ((np.uint64(vlan[slot]) << np.uint64(48))
                | (np.uint64(transport[slot]) << np.uint64(40))
                | (np.uint64(lo_port[slot]) << np.uint64(16)) | np.uint64(hi_port[slot]))
    if j <= 2:
        return _be_word(lo_ip, slot, 8 * (j - 1))
    return _be_word(hi_ip, slot, 8 * (j - 3))


@njit
def _slot_key_words(slots: np.ndarray, vlan: np.ndarray, transport: np.ndarray,
                    lo_port: np.ndarray, hi_port: np.ndarray, lo_ip: np.ndarray,
                    hi_ip: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """(n, 6) uint64 flow keys of table slots (every slot < the columns' length)."""
    words = np.empty((slots.shape[0], 6), dtype=np.uint64)
    for i in range(slots.shape[0]):
        for j in range(5):
            words[i, j] = _slot_word(np.uint64(slots[i]), j, vlan, transport, lo_port,
                                     hi_port, lo_ip, hi_ip)
        words[i, 5] = _slot_segment(np.uint64(slots[i]), vlan, segment)
    return words


@njit(inline="always")
def _slot_segment(slot: int, vlan: np.ndarray, segment: np.ndarray) -> np.uint64:
    """A slot's segment word: its segment column holds a value only when flagged."""
    return np.uint64(segment[slot]) if vlan[slot] & SEGMENT_FLAG else np.uint64(0)


@njit
def _index_lookup(table: np.ndarray, key_hash: np.ndarray, key_words: np.ndarray,
                  vlan: np.ndarray, transport: np.ndarray, lo_port: np.ndarray,
                  hi_port: np.ndarray, lo_ip: np.ndarray, hi_ip: np.ndarray,
                  segment: np.ndarray) -> np.ndarray:
    """Slot of each key (-1 when absent): linear probing from hash & mask until the key's
    slot or an EMPTY entry (at most one pass over the table). The segment word is compared
    only for keys flagged as having one (word 0, equal by then, says so)."""
    size = table.shape[0]
    n_slots = vlan.shape[0]
    n = key_hash.shape[0]
    found = np.full(n, -1, dtype=np.int64)
    lo_flat = lo_ip.reshape(lo_ip.size)
    hi_flat = hi_ip.reshape(hi_ip.size)
    for i in range(n):
        # Hints (the index and the key columns outgrow the caches on a big table): the
        # index entry of the key _AHEAD on, and the key columns of the slot in the entry of
        # the key _AHEAD // 2 on (asked for _AHEAD // 2 keys ago; a guess: probing may go on).
        prefetch(table, np.int64(key_hash[min(i + _AHEAD, n - 1)] & np.uint64(size - 1)))
        guess = np.int64(table[np.int64(key_hash[min(i + _AHEAD // 2, n - 1)]
                                        & np.uint64(size - 1))])
        if 0 <= guess < n_slots:
            prefetch(vlan, guess)
            prefetch(transport, guess)
            prefetch(lo_port, guess)
            prefetch(hi_port, guess)
            prefetch(lo_flat, 16 * guess)
            prefetch(hi_flat, 16 * guess)
        pos = np.int64(key_hash[i] & np.uint64(size - 1))
        for _ in range(size):
            entry = np.int64(table[pos])
            if entry == -1:  # EMPTY: the key is absent
                break
            if 0 <= entry < n_slots:
                same = True
                for j in range(5):
                    if _slot_word(entry, j, vlan, transport, lo_port, hi_port, lo_ip,
                                  hi_ip) != key_words[i, j]:
                        same = False
                        break
                if same and key_words[i, 0] & np.uint64(SEGMENT_FLAG << 48):
                    same = np.uint64(segment[entry]) == key_words[i, 5]
                if same:
                    found[i] = entry
                    break
            pos = (pos + 1) & (size - 1)
    return found


@njit
def _index_insert(table: np.ndarray, key_hash: np.ndarray, slots: np.ndarray) -> int:
    """Index slots at the first free (EMPTY or tombstone) entry of their keys' probe
    sequences. Returns the EMPTY entries taken, or -1 if the table had no free entry."""
    size = table.shape[0]
    taken = 0
    for i in range(key_hash.shape[0]):
        pos = np.int64(key_hash[i] & np.uint64(size - 1))
        placed = False
        for _ in range(size):
            if table[pos] < 0:
                taken += table[pos] == -1
                table[pos] = slots[i]
                placed = True
                break
            pos = (pos + 1) & (size - 1)
        if not placed:
            return -1
    return taken


@njit
def _index_remove(table: np.ndarray, key_hash: np.ndarray, slots: np.ndarray) -> None:
    """Replace each slot's entry (found along its key's probe sequence) by a tombstone."""
    size = table.shape[0]
    for i in range(key_hash.shape[0]):
        pos = np.int64(key_hash[i] & np.uint64(size - 1))
        for _ in range(size):
            if table[pos] == slots[i]:
                table[pos] = -2  # TOMB
                break
            pos = (pos + 1) & (size - 1)


_NO_ENTRIES = np.zeros(0, dtype=np.int32)  # a _SlotIndex table between two sizes


class _SlotIndex:
    """Open-addressing hash index flow key -> table slot.

    Linear probing over an int32 array (EMPTY, TOMB or a slot); the keys themselves live in
    the flow table's columns (KeyColumns), so an entry costs 4 bytes (~15 bytes per flow at
    the load kept here) instead of a dict entry plus a bytes key (~150 bytes). Lookups,
    inserts and removals are compiled loops over the keys (_index_*).
    Deletions leave tombstones; the index is rebuilt from the live slots when live entries
    plus tombstones pass _MAX_LOAD.
    """

    EMPTY, TOMB = -1, -2
    _MAX_LOAD = 0.7
    _SIZE_FACTOR = 2.5  # capacity >= this x table slots: load <= 0.4 right after a rebuild

    def __init__(self) -> None:
        self.table = np.full(1024, self.EMPTY, dtype=np.int32)
        self.used = 0  # entries that are not EMPTY (live + tombstones)

    def lookup(self, key_hash: np.ndarray, key_words: np.ndarray,
               key_columns: KeyColumns) -> np.ndarray:
        """Slot of each key (int64), -1 when absent."""
        return _index_lookup(self.table, np.ascontiguousarray(key_hash, dtype=np.uint64),
                             np.ascontiguousarray(key_words, dtype=np.uint64), *key_columns)

    def insert(self, key_hash: np.ndarray, slots: np.ndarray) -> None:
        """Index new keys (known absent, distinct) at their slots."""
        taken = _index_insert(self.table, np.ascontiguousarray(key_hash, dtype=np.uint64),
                              np.ascontiguousarray(slots, dtype=np.int64))
        if taken < 0:  # cannot happen while needs_rebuild() is honoured; never loop forever
            raise RuntimeError("flow slot index full")
        self.used += int(taken)

    def remove(self, key_hash: np.ndarray, slots: np.ndarray) -> None:
        """Unindex slots (each present) whose keys hash to key_hash."""
        _index_remove(self.table, np.ascontiguousarray(key_hash, dtype=np.uint64),
                      np.ascontiguousarray(slots, dtype=np.int64))

    def needs_rebuild(self) -> bool:
        return self.used > self._MAX_LOAD * self.table.size

    def resize(self, n_slots: int, live_slots: np.ndarray, key_columns: KeyColumns) -> None:
        """Rebuild for a table of n_slots slots from its live slots (drops tombstones)."""
        capacity = 1024
        while capacity < self._SIZE_FACTOR * n_slots:
            capacity *= 2
        # the old entries go before the new array exists (the rebuild reads the key columns):
        # both at once were the 10M SYN flood's peak RSS (+16 MB for 4M entries)
        self.table = _NO_ENTRIES
        self.table = np.full(capacity, self.EMPTY, dtype=np.int32)
        self.used = 0
        for lo in range(0, live_slots.size, _SCAN_CHUNK):
            chunk = live_slots[lo:lo + _SCAN_CHUNK].astype(np.int64)
            self.insert(_mix64(_slot_key_words(chunk, *key_columns)), chunk)


def conn_state(
    transport: np.ndarray,
    orig_flags: np.ndarray,
    resp_flags: np.ndarray,
    orig_packets: np.ndarray,
    resp_packets: np.ndarray,
    orig_payload: np.ndarray,
    resp_payload: np.ndarray,
) -> np.ndarray:
    """Zeek conn_state labels from cumulative per-direction flags, packets and payload.

    Codes into CONN_STATES (one compiled pass, _conn_state_codes), so the object column
    holds shared str objects (8 bytes a row), not one new string per flow."""
    codes = _conn_state_codes(
        np.asarray(transport) == TCP, np.asarray(orig_flags).astype(np.uint8, copy=False),
        np.asarray(resp_flags).astype(np.uint8, copy=False), np.asarray(orig_packets) > 0,
        np.asarray(resp_packets) > 0,
        (np.asarray(orig_payload) == 0) & (np.asarray(resp_payload) == 0))
    return CONN_STATES[codes]


@njit
def _endpoint_state(flags: int, sent: bool, established: bool, syn_state: int) -> int:
    """Zeek endpoint state: RESET > CLOSED > INACTIVE > ESTABLISHED > syn_state > PARTIAL."""
    if flags & RST:
        return RESET
    if flags & FIN:
        return CLOSED
    if not sent:
        return INACTIVE
    if established:
        return ESTABLISHED
    if flags & SYN:
        return syn_state
    return PARTIAL


@njit
def _conn_state_codes(is_tcp: np.ndarray, orig_flags: np.ndarray, resp_flags: np.ndarray,
                      o_sent: np.ndarray, r_sent: np.ndarray,
                      no_payload: np.ndarray) -> np.ndarray:
    """Per row, the CONN_STATES index of Zeek's conn_state table (TCP) or the UDP rule."""
    n = is_tcp.shape[0]
    codes = np.empty(n, dtype=np.intp)
    for i in range(n):
        codes[i] = _conn_code(is_tcp[i], np.int64(orig_flags[i]), np.int64(resp_flags[i]),
                              o_sent[i], r_sent[i], no_payload[i])
    return codes


@njit(inline="always")
def _conn_code(is_tcp: bool, of: int, rf: int, o_sent: bool, r_sent: bool,
               no_payload: bool) -> int:
    """The CONN_STATES index of one flow (see _conn_state_codes)."""
    if not is_tcp:
        if o_sent and r_sent:
            return _CS_SF
        if o_sent:
            return _CS_S0
        if r_sent:
            return _CS_SHR
        return _CS_OTH
    established = (of & SYN) != 0 and (rf & SYN) != 0 and (of & ACK) != 0
    os_ = _endpoint_state(of, o_sent, established, SYN_SENT)
    rs = _endpoint_state(rf, r_sent, established, SYN_ACK_SENT)
    o_inactive = os_ == INACTIVE or os_ == PARTIAL
    r_inactive = rs == INACTIVE or rs == PARTIAL
    if rs == RESET:
        if os_ == SYN_SENT or os_ == SYN_ACK_SENT or (os_ == RESET and no_payload):
            return _CS_REJ
        if o_inactive:
            return _CS_RSTRH
        return _CS_RSTR
    if os_ == RESET:
        if r_inactive:
            # RSTOS0 (Zeek: ^S[^HAFGIQ]*R) approximated: originator SYN and no FIN
            return _CS_RSTOS0 if (of & SYN) != 0 and (of & FIN) == 0 else _CS_OTH
        return _CS_RSTO
    if os_ == CLOSED:
        if rs == CLOSED:
            return _CS_SF
        if r_inactive:
            return _CS_SH
        return _CS_S2
    if rs == CLOSED:
        return _CS_SHR if o_inactive else _CS_S3
    if os_ == SYN_SENT and rs == INACTIVE:
        return _CS_S0
    if os_ == ESTABLISHED and rs == ESTABLISHED:
        return _CS_S1
    return _CS_OTH


# --- the per-key walk, compiled ---------------------------------------------------------------
# Columns of one emitted group (a piece of a flow), in the order _walk_flows writes them.
_GROUP_FIELDS = ("p_first", "p_end", "p_pk_lo", "p_pk_hi", "p_by_lo", "p_by_hi", "p_pay_lo",
                 "p_pay_hi", "p_fl_lo", "p_fl_hi", "st_fl_lo", "st_fl_hi", "cum_pk_lo",
                 "cum_pk_hi", "cum_pay_lo", "cum_pay_hi", "closed_at", "orig_is_lo",
                 "flow_start", "last_ts", "piece")
# Piece columns an expiry empties besides p_pk_lo/p_pk_hi (_expired_flows' order).
_PIECE_SUMS = ("p_by_lo", "p_by_hi", "p_pay_lo", "p_pay_hi", "p_fl_lo", "p_fl_hi")
_GROUP_MID, _GROUP_ENDED = 0, 1  # an emitted group: the piece moved on / the flow ended
_EMIT_NONE, _EMIT_MOVED, _EMIT_ENDED = 0, 1, 2  # what happens to a key's table piece


# Per-key walk state columns after the group row's 21 (_GROUP_FIELDS): previous packet
# time, "closed" (0/1), the smallest piece index, "seen in this batch", the key's idle timeout.
_W_PREV, _W_CLOSED, _W_PIECE_MIN, _W_SEEN, _W_IDLE = range(21, 26)


@njit(inline="always")
def _copy_group(dst: np.ndarray, at: int, st: np.ndarray, k: int) -> None:
    """dst[at] = the open group of key k (its state row's first 21 columns)."""
    for j in range(21):
        dst[at, j] = st[k, j]


@njit
def _walk_flows(key_of, rank_of, rows, fwd, ts, cm, flags, wire, pay, transport, has_slot,
                slot_at, hw, hb, last_col, idle_ns, tcp_idle_ns, active_ns, linger_ns, state):
    """Flows and pieces of one batch's IP packets, walked in capture order.

    IP row i is packet rows[i] (the index of the batch columns ts, cm, flags, wire, pay,
    transport) of key rank_of[key_of[i]] (keys numbered in the caller's key order; every
    index in range by construction). Each key keeps its open group and walk state in a row
    of `st`, so the packets are read in capture order (sequential lines) instead of one key
    after the other (random rows of the batch).

    Per key, packets are walked in order, continuing the table's live flow when there is
    one (has_slot; slot slot_at[k], its hot row read through the _hot_views hw/hb and
    last_col, the table's last_ts, at the key's first packet). A packet starts a new flow
    of its key when the clock passed the previous packet + idle timeout, or, on a closed
    flow, passed close time + linger or the packet is a SYN without ACK (port reuse). A new
    piece (group) starts when the packet's clock leaves the current piece of the
    active-timeout grid. Returns per emitted group
    (the groups before each key's live tail; in key order, a key's in capture order) its
    int64 columns (_GROUP_FIELDS), key, kind (_GROUP_MID/_GROUP_ENDED) and the clock value
    of the packet that ended its flow (kind ENDED); the keys' state rows, whose first 21
    columns are their live tails' group columns; per key what happens to its table piece
    (_EMIT_*) and that clock; the number of flows created; and the deadline (_deadline_of)
    of each key's live flow (the tail) as written back to the table, and their minimum.
    The state rows are the first 26 x keys words of `state` (1-D int64, at least that
    long; the caller's buffer, kept across batches).
    """
    n = rows.shape[0]
    n_keys = has_slot.shape[0]
    flat = state[:n_keys * 26]
    flat[:] = 0
    st = flat.reshape((n_keys, 26))
    side = np.empty((n, 21), dtype=np.int64)  # groups before a key's tail (few)
    side_key = np.empty(n, dtype=np.int64)
    side_kind = np.empty(n, dtype=np.int8)
    side_clock = np.empty(n, dtype=np.int64)
    key_emit = np.zeros(n_keys, dtype=np.int8)
    key_clock = np.zeros(n_keys, dtype=np.int64)
    n_side = 0
    created = 0
    for i in range(n):
        # unsigned indices (>= 0 by construction): no negative-index fix-ups on the ~40
        # state-row and column accesses of a packet
        k = np.uint64(rank_of[np.uint32(key_of[i])])
        row = np.uint64(rows[i])
        # the state row of a later packet's key (random rows of `st`, which outgrows the
        # caches): hints, so the walk does not wait on each key's lines in turn
        ahead = rank_of[key_of[min(i + _AHEAD, n - 1)]] * 26
        prefetch(flat, ahead)
        prefetch(flat, ahead + 8)
        prefetch(flat, ahead + 16)
        prefetch(flat, ahead + 25)
        is_tcp = transport[row] == TCP
        fl = np.int64(flags[row]) if is_tcp else 0
        t = ts[row]
        c = cm[row]
        forward = fwd[i]
        bytes_ = np.int64(wire[row])
        payload = max(np.int64(pay[row]), 0)
        idle = tcp_idle_ns if is_tcp else idle_ns
        first = st[k, _W_SEEN] == 0
        slot = has_slot[k]
        s = np.uint64(slot_at[k])  # its table slot (placeholder 0 when none: only read
        # with `slot`)
        prev_ts = last_col[s] if first else st[k, _W_PREV]
        split = (not first or slot) and c > prev_ts + idle
        st[k, _W_PREV] = t
        if not split and (not first or slot):
            # closed before this packet: linger passed or SYN without ACK -> new flow
            closed_before = st[k, _W_CLOSED] != 0 if not first else hw[s, _HW_CLOSED_AT] < NEVER
            if closed_before:
                closed_at = st[k, 16] if not first else hw[s, _HW_CLOSED_AT]
                if c > closed_at + linger_ns or (fl & (SYN | ACK)) == SYN:
                    split = True
        if first or split:
            if not first:  # the key's previous flow ended at this packet
                _copy_group(side, n_side, st, k)
                side_key[n_side] = k
                side_kind[n_side] = _GROUP_ENDED
                side_clock[n_side] = c
                n_side += 1
            else:
                st[k, _W_SEEN] = 1
                st[k, _W_IDLE] = idle
                if split:  # the table's flow ended at the key's first packet
                    key_emit[k] = _EMIT_ENDED
                    key_clock[k] = c
            cont = first and slot and not split
            if cont:
                for j in range(6):
                    st[k, 10 + j] = np.int64(hb[s, _HB_ST_FL_LO + j])
                st[k, 16] = hw[s, _HW_CLOSED_AT]
                st[k, 17] = np.int64(hb[s, _HB_ORIG_IS_LO])
                st[k, 18] = hw[s, _HW_FLOW_START]
                piece_min = hw[s, _HW_PIECE]
                st[k, _W_CLOSED] = 1 if st[k, 16] < NEVER else 0
            else:
                for j in range(6):
                    st[k, 10 + j] = 0
                st[k, 16] = NEVER
                syn_ack = (fl & (SYN | ACK)) == (SYN | ACK)
                st[k, 17] = 1 if forward != syn_ack else 0
                st[k, 18] = t
                piece_min = 0
                st[k, _W_CLOSED] = 0
                created += 1
            st[k, _W_PIECE_MIN] = piece_min
            piece = max(max((c - st[k, 18]) // active_ns, 0), piece_min)
            for j in range(2, 10):
                st[k, j] = 0
            st[k, 0] = t
            st[k, 1] = t
            if cont:
                t_pk = hw[s, _HW_P_PK_LO] + hw[s, _HW_P_PK_LO + 1]
                if t_pk > 0 and piece == hw[s, _HW_PIECE]:  # same piece: merge into it
                    st[k, 0] = min(t, hw[s, _HW_P_FIRST])
                    st[k, 1] = max(t, hw[s, _HW_P_END])
                    for j in range(6):  # packets, bytes, payload: words
                        st[k, 2 + j] = hw[s, _HW_P_PK_LO + j]
                    for j in range(2):  # flags: bytes
                        st[k, 8 + j] = np.int64(hb[s, _HB_P_FL_LO + j])
                elif t_pk > 0:
                    key_emit[k] = _EMIT_MOVED
            st[k, 20] = piece
        elif c - st[k, 18] >= (st[k, 20] + 1) * active_ns:
            # The clock left the piece: it is emitted. The clock never goes back, so the
            # piece max((c - start) // active, 0, piece_min) changes only when c passes the
            # piece's end, and then it is (c - start) // active: no division per packet.
            _copy_group(side, n_side, st, k)
            side_key[n_side] = k
            side_kind[n_side] = _GROUP_MID
            side_clock[n_side] = 0
            n_side += 1
            for j in range(2, 10):
                st[k, j] = 0
            st[k, 0] = t
            st[k, 1] = t
            st[k, 20] = (c - st[k, 18]) // active_ns
        # the packet's share of the piece and of the flow's cumulative state
        st[k, 0] = min(st[k, 0], t)
        st[k, 1] = max(st[k, 1], t)
        d = 0 if forward else 1
        st[k, 2 + d] += 1
        st[k, 4 + d] += bytes_
        st[k, 6 + d] += payload
        st[k, 8 + d] |= fl
        st[k, 10 + d] |= fl
        st[k, 12 + d] += 1
        st[k, 14 + d] += payload
        st[k, 19] = t
        if st[k, _W_CLOSED] == 0 and (((st[k, 10] & st[k, 11] & FIN) != 0)
                                      or (((st[k, 10] | st[k, 11]) & RST) != 0)):
            st[k, _W_CLOSED] = 1
            st[k, 16] = c
    # Emitted groups in key order, a key's in capture order (a stable counting sort); the
    # live tails stay in `st` (rank order), whose first 21 columns are group rows too.
    at = np.zeros(n_keys + 1, dtype=np.int64)  # first group row of each key
    for s in range(n_side):
        at[side_key[s] + 1] += 1
    for k in range(n_keys):
        at[k + 1] += at[k]
    g = np.empty((n_side, 21), dtype=np.int64)
    g_key = np.empty(n_side, dtype=np.int64)
    g_kind = np.empty(n_side, dtype=np.int8)
    g_clock = np.empty(n_side, dtype=np.int64)
    for s in range(n_side):
        k = side_key[s]
        to = at[k]
        at[k] += 1
        for j in range(21):
            g[to, j] = side[s, j]
        g_key[to] = k
        g_kind[to] = side_kind[s]
        g_clock[to] = side_clock[s]
    tail_deadline = NEVER
    key_deadline = np.empty(n_keys, dtype=np.int64)
    for k in range(n_keys):
        # _deadline_of of this live flow as the table will hold it (saves a gather later)
        deadline = min(st[k, 19] + st[k, _W_IDLE], min(st[k, 16] + linger_ns, NEVER))
        if st[k, 2] != 0 or st[k, 3] != 0:
            deadline = min(deadline, st[k, 18] + (st[k, 20] + 1) * active_ns - 1)
        key_deadline[k] = deadline
        tail_deadline = min(tail_deadline, deadline)
    return (g, g_key, g_kind, g_clock, st, key_emit, key_clock, created, key_deadline,
            tail_deadline)


@njit
def _running_max(ts: np.ndarray, start: int) -> np.ndarray:
    """The event clock: running maximum of the packet times, starting from `start` (one
    pass; np.maximum.accumulate and np.maximum took two, the first ~3 ns a value)."""
    clock = np.empty(ts.shape[0], dtype=np.int64)
    c = start
    for i in range(ts.shape[0]):
        c = max(c, ts[i])
        clock[i] = c
    return clock


@njit
def _clock_index(clock: np.ndarray) -> tuple[int, np.ndarray]:
    """Bucket index of a non-empty non-decreasing clock for _position: ~2 values a bucket
    on average, bucket b holding the values v with (v - clock[0]) >> shift == b; starts[b]
    is the first index whose value is in bucket b or later (starts[-1] = len(clock))."""
    n = clock.shape[0]
    buckets = max(n // 2, 1)
    if n == 0:
        return 0, np.zeros(buckets + 1, dtype=np.int64)
    span = clock[n - 1] - clock[0]
    shift = 0
    while (span >> shift) >= buckets:
        shift += 1
    # Without branches (a bucket change per value was a branch miss per value): each
    # bucket gets its smallest index (written last, walking down), then empty buckets take
    # the next bucket's start.
    starts = np.full(buckets + 1, n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        starts[(clock[i] - clock[0]) >> shift] = i
    for b in range(buckets - 1, -1, -1):
        starts[b] = min(starts[b], starts[b + 1])
    return shift, starts


@njit(inline="always")
def _bucket_bounds(clock: np.ndarray, starts: np.ndarray, shift: int, threshold: int
                   ) -> tuple[int, int]:
    """[lo, hi]: where _position's answer for `threshold` lies (lo == hi: it is lo). The
    threshold's bucket (_clock_index) bounds the search to a few values: values before
    starts[b] are below the bucket (<= threshold); the value at starts[b + 1] (if any) is
    above it (> threshold)."""
    n = clock.shape[0]
    if n == 0 or clock[n - 1] <= threshold:
        return n, n
    if threshold < clock[0]:
        return 0, 0
    b = (threshold - clock[0]) >> shift  # < len(starts) - 1, as threshold < clock[n - 1]
    return starts[b], min(starts[b + 1], n - 1)


@njit(inline="always")
def _search_right(clock: np.ndarray, threshold: int, lo: int, hi: int) -> int:
    """The first index in [lo, hi] whose clock value is > threshold (hi if none before it)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if clock[mid] <= threshold:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit
def _position(clock: np.ndarray, starts: np.ndarray, shift: int, threshold: int) -> int:
    """Index of the first value of the non-decreasing clock > threshold, len(clock) if none
    (as np.searchsorted(side="right")). The bucket bounds (_bucket_bounds) keep the binary
    search to a few values: random thresholds made a whole-clock search ~80 ns of branch
    misses and dependent loads. Every index probed is in [0, len)."""
    lo, hi = _bucket_bounds(clock, starts, shift, threshold)
    return _search_right(clock, threshold, lo, hi)


@njit(inline="always")
def _end_threshold(is_tcp, last_ts, closed_at, idle_ns, tcp_idle_ns, linger_ns):
    """The clock value whose first crossing ends a flow: last packet + idle, or close +
    linger when that is earlier."""
    threshold = last_ts + (tcp_idle_ns if is_tcp else idle_ns)
    if closed_at < NEVER:
        threshold = min(threshold, min(closed_at + linger_ns, NEVER))
    return threshold


@njit(inline="always")
def _reason_at(at, clock, starts, shift, closed, st_fl, flow_start, piece, split_clock,
               active_ns):
    """The reason code of one emitted row (see _reason_of) given `at`, the position of
    its _end_threshold in the clock (_position); st_fl: both sides' flags."""
    m = clock.shape[0]
    # at: the first index with clock >= c_end, or -1 when not known
    c_end = clock[at] if at < m else NEVER
    if at == m:
        at = -1
    if split_clock < c_end:
        c_end = split_clock
        at = -1
    piece_end = flow_start + (piece + 1) * active_ns - 1
    active = False
    if piece_end < c_end:
        if at < 0:
            at = _position(clock, starts, shift, c_end - 1)
        active = at > 0 and clock[at - 1] > piece_end
    return R_ACTIVE if active else _closed_reason(closed, st_fl)


@njit(inline="always")
def _closed_reason(closed, st_fl):
    """The reason of a row that did not end on the active grid: R_RST / R_FIN when closed,
    else R_IDLE."""
    if closed:
        return R_RST if (st_fl & RST) != 0 else R_FIN
    return R_IDLE


@njit(inline="always")
def _needs_clock(threshold, flow_start, piece, active_ns) -> bool:
    """Whether a row's reason needs the clock (a search): only when its piece ends before
    its end threshold. Otherwise no clock value lies in (piece end, threshold], so the
    clock cannot have left the piece before the flow ended, whatever the split clock (most
    rows: the active timeout is long), and the reason is _closed_reason."""
    return flow_start + (piece + 1) * active_ns - 1 < threshold


@njit
def _search_index(clock: np.ndarray, shift: int, starts: np.ndarray, needed: bool
                  ) -> tuple[int, np.ndarray]:
    """(shift, starts) of the clock's bucket index: the given one, or built now when a row
    needs it and none was given (empty starts): most batches need none (_needs_clock)."""
    if needed and starts.shape[0] == 0:
        return _clock_index(clock)
    return shift, starts


@njit(inline="always")
def _reason_of(clock, starts, shift, is_tcp, last_ts, closed_at, st_fl, flow_start, piece,
               split_clock, idle_ns, tcp_idle_ns, active_ns, linger_ns):
    """The reason code of one emitted row (st_fl: both sides' flags): R_ACTIVE when the
    clock left the piece (grid end) strictly before the flow ended (first crossing of last
    packet + idle, close + linger, or the row's split clock); else R_RST / R_FIN when
    closed, R_IDLE otherwise.

    One search per row where three were: the first crossing of the smaller of the idle and
    close thresholds is the earlier of the two crossings (crossings are monotone in the
    threshold), and "the clock crossed the piece end before c_end" is "the value just before
    the first clock value >= c_end is > piece end", read at the crossing's position (a
    crossing at position p has clock[p - 1] < clock[p]). Only a split clock earlier than the
    crossing needs a search for that position."""
    threshold = _end_threshold(is_tcp, last_ts, closed_at, idle_ns, tcp_idle_ns, linger_ns)
    if not _needs_clock(threshold, flow_start, piece, active_ns):
        return _closed_reason(closed_at < NEVER, st_fl)
    return _reason_at(_position(clock, starts, shift, threshold), clock, starts, shift,
                      closed_at < NEVER, st_fl, flow_start, piece, split_clock, active_ns)


@njit
def _positions(clock: np.ndarray, starts: np.ndarray, shift: int,
               thresholds: np.ndarray) -> np.ndarray:
    """_position of each threshold, in passes whose rows do not wait on each other (bucket
    bounds, then the short searches): one row at a time, each search waited on its two
    dependent cache misses (~60 ns a row over a 65k clock)."""
    k = thresholds.shape[0]
    lo = np.empty(k, dtype=np.int64)
    hi = np.empty(k, dtype=np.int64)
    for i in range(k):
        lo[i], hi[i] = _bucket_bounds(clock, starts, shift, thresholds[i])
    for i in range(k):
        lo[i] = _search_right(clock, thresholds[i], lo[i], hi[i])
    return lo


@njit
def _deadline_of(s, transport, last_ts, closed_at, pk_lo, pk_hi, flow_start, piece, idle_ns,
                 tcp_idle_ns, active_ns, linger_ns) -> int:
    """Clock value after which slot s must be looked at: idle, close + linger, piece end."""
    idle = tcp_idle_ns if transport[s] == TCP else idle_ns
    deadline = min(last_ts[s] + idle, min(closed_at[s] + linger_ns, NEVER))
    # a non-empty piece ends on the active grid (a select, not a branch: scans vectorize)
    piece_end = flow_start[s] + (piece[s] + 1) * active_ns - 1
    return min(deadline, piece_end) if (pk_lo[s] | pk_hi[s]) != 0 else deadline


@njit
def _scan_deadlines(live: np.ndarray, due: np.ndarray, now: int) -> tuple[np.ndarray, int]:
    """One pass over the table: live slots whose deadline (due, _deadline_of as kept at
    each write) is < now (ascending), and the smallest deadline of the other live slots
    (NEVER when none).

    Two branch-free passes (count, then fill an array of that size) instead of one that
    appended to a growing array: the append loop ran at ~28 ns a slot (it reassigned an
    array, so it could not be vectorized and paid reference counting), these ~1 ns. The
    kept deadline column makes it 9 bytes a slot (the 7 fields _deadline_of reads were
    ~50, strided in the hot rows)."""
    count = 0
    earliest = NEVER
    for s in range(live.shape[0]):
        hit = live[s] and due[s] < now
        count += 1 if hit else 0
        earliest = min(earliest, due[s] if live[s] and not hit else NEVER)
    expired = np.empty(count, dtype=np.int64)
    if count:
        at = 0
        for s in range(live.shape[0]):
            if live[s] and due[s] < now:
                expired[at] = s
                at += 1
    return expired, earliest


@njit
def _expired_flows(slots, now, due, transport, last_ts, closed_at, pk_lo, pk_hi, flow_start,
                   piece, idle_ns, tcp_idle_ns, active_ns, linger_ns, p_by_lo, p_by_hi,
                   p_pay_lo, p_pay_hi, p_fl_lo, p_fl_hi) -> tuple[np.ndarray, int]:
    """After expired slots were emitted: the slots whose flow is over (idle or close +
    linger crossed; in order) and, for the others (only their piece was emitted), their
    piece emptied, their new deadline written to `due` and the smallest of those (NEVER
    when none)."""
    over = np.empty(slots.shape[0], dtype=np.int64)
    n_over = 0
    earliest = NEVER
    for i in range(slots.shape[0]):
        s = np.uint64(slots[i])  # unsigned: no negative-index fix-ups
        idle = tcp_idle_ns if transport[s] == TCP else idle_ns
        if now > last_ts[s] + idle or (closed_at[s] < NEVER and now > closed_at[s] + linger_ns):
            over[n_over] = s
            n_over += 1
            continue
        pk_lo[s] = 0
        pk_hi[s] = 0
        p_by_lo[s] = 0
        p_by_hi[s] = 0
        p_pay_lo[s] = 0
        p_pay_hi[s] = 0
        p_fl_lo[s] = 0
        p_fl_hi[s] = 0
        due[s] = _deadline_of(s, transport, last_ts, closed_at, pk_lo, pk_hi, flow_start, piece,
                              idle_ns, tcp_idle_ns, active_ns, linger_ns)
        earliest = min(earliest, due[s])
    return over[:n_over], earliest


def _kernel_view(column: np.ndarray) -> np.ndarray:
    """A table column as the kernels take it: bool columns as uint8 (0/1) views."""
    return column.view(np.uint8) if column.dtype == np.bool_ else column


# Per hot word / byte, its column in a walk group row (_GROUP_FIELDS). Module globals:
# numba freezes them (an array argument cost ~50 ns a row even unused).
_HOT_GROUP_COL = np.array([_GROUP_FIELDS.index(name) for name in _HOT_NAMES], dtype=np.int64)
_G_LAST = _GROUP_FIELDS.index("last_ts")
_HOT_IS_BOOL = np.array([SLOT_FIELDS[name] == np.bool_ for name in _HOT_NAMES])


def _hot_views(hot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hot rows as (slots, words) int64 and (slots, itemsize) uint8 views."""
    n = hot.shape[0]
    return (hot.view(np.int64).reshape(n, _HOT_DTYPE.itemsize // 8),
            hot.view(np.uint8).reshape(n, _HOT_DTYPE.itemsize))


@njit
def _scatter_group(words: np.ndarray, bytes_: np.ndarray, last_ts: np.ndarray,
                   due: np.ndarray, slots: np.ndarray, g: np.ndarray,
                   deadlines: np.ndarray) -> None:
    """The hot row and last_ts of table slot slots[i] = group row g[i] (_GROUP_FIELDS), cast
    like numpy's astype to the fields' dtypes: int64/uint64 keep their bits, bool fields get
    nonzero -> 1, uint8 fields wrap; its deadline due[slots[i]] = deadlines[i]. slots are
    table slots, so in range."""
    n = slots.shape[0]
    flat = words.reshape(words.size)
    for i in range(n):
        # hints _AHEAD keys on: slots are scattered over a table that outgrows the caches
        ahead = slots[min(i + _AHEAD, n - 1)]
        prefetch(flat, ahead * _HOT_ROW_WORDS)
        prefetch(flat, ahead * _HOT_ROW_WORDS + _HOT_ROW_WORDS // 2)
        prefetch(flat, ahead * _HOT_ROW_WORDS + _HOT_ROW_WORDS - 1)
        prefetch(last_ts, ahead)
        prefetch(due, ahead)
        s = np.uint64(slots[i])  # unsigned: no negative-index fix-ups
        due[s] = deadlines[i]
        last_ts[s] = g[i, _G_LAST]
        for c in range(_HOT_WORDS):
            words[s, c] = g[i, _HOT_GROUP_COL[c]]
        for c in range(_HOT_WORDS, len(_HOT_GROUP_COL)):
            v = g[i, _HOT_GROUP_COL[c]]
            b = c - _HOT_WORDS
            bytes_[s, _HOT_BYTE0 + b] = (1 if v != 0 else 0) if _HOT_IS_BOOL[c] else v & 0xFF


# --- emitted records, compiled -------------------------------------------------------------
# A part of a batch's output is FLOW's numeric columns in originator/responder terms, built
# in one pass straight from table slots (_slot_records) or the walk's groups
# (_group_records): the row dicts, 27 gathers, ~20 np.where picks and astypes a part were
# ~40 ns a row. Order: _RECORD_COLUMNS; the addresses as (n, 2) native uint64 words (their
# 16 bytes), conn_state and end_reason as codes into CONN_STATES / REASONS.
_RECORD_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "src_port", "dst_port", "transport",
                   "vlan", "src_packets", "dst_packets", "src_bytes", "dst_bytes",
                   "src_payload_bytes", "dst_payload_bytes", "src_tcp_flags", "dst_tcp_flags",
                   "conn_state", "end_reason", "segment")
_NO_CLOCK = (np.zeros(0, dtype=np.int64), 0, np.zeros(1, dtype=np.int64))  # fixed reasons
_NO_INDEX = np.zeros(0, dtype=np.int64)  # a clock bucket index not built (yet)
_NO_SPLIT = np.zeros(0, dtype=np.int64)  # no split clock: NEVER for every row
# table columns _slot_records reads after the key columns, in its argument order
_RECORD_SOURCES = ("orig_is_lo", "flow_start", "last_ts", "closed_at", "piece", "st_fl_lo",
                   "st_fl_hi", "cum_pk_lo", "cum_pk_hi", "cum_pay_lo", "cum_pay_hi", "p_first",
                   "p_end", "p_pk_lo", "p_pk_hi", "p_by_lo", "p_by_hi", "p_pay_lo", "p_pay_hi",
                   "p_fl_lo", "p_fl_hi")


@njit
def _new_records(n: int) -> tuple:
    """Empty record columns for n rows (_RECORD_COLUMNS)."""
    return (np.empty(n, np.int64), np.empty(n, np.int64), np.empty((n, 2), np.uint64),
            np.empty((n, 2), np.uint64), np.empty(n, np.uint16), np.empty(n, np.uint16),
            np.empty(n, np.uint8), np.empty(n, np.uint16), np.empty(n, np.uint64),
            np.empty(n, np.uint64), np.empty(n, np.uint64), np.empty(n, np.uint64),
            np.empty(n, np.uint64), np.empty(n, np.uint64), np.empty(n, np.uint8),
            np.empty(n, np.uint8), np.empty(n, np.intp), np.empty(n, np.uint8),
            np.empty(n, np.uint64))


@njit(inline="always")
def _put_record(rec, r, o, transport, vlan, lo0, lo1, hi0, hi1, lo_port, hi_port, first, end,
                pk_lo, pk_hi, by_lo, by_hi, pay_lo, pay_hi, fl_lo, fl_hi, st_lo, st_hi,
                sent_lo, sent_hi, no_payload, reason, segment) -> None:
    """Record row r of a flow piece given in lo/hi terms; o: the originator is lo; vlan
    as the key holds it (SEGMENT_FLAG dropped here), segment 0 for none."""
    # selects, not branches: which side originated is unpredictable row to row
    rec[0][r] = first
    rec[1][r] = end
    rec[2][r, 0] = lo0 if o else hi0
    rec[2][r, 1] = lo1 if o else hi1
    rec[3][r, 0] = hi0 if o else lo0
    rec[3][r, 1] = hi1 if o else lo1
    rec[4][r] = lo_port if o else hi_port
    rec[5][r] = hi_port if o else lo_port
    rec[8][r] = pk_lo if o else pk_hi
    rec[9][r] = pk_hi if o else pk_lo
    rec[10][r] = by_lo if o else by_hi
    rec[11][r] = by_hi if o else by_lo
    rec[12][r] = pay_lo if o else pay_hi
    rec[13][r] = pay_hi if o else pay_lo
    rec[14][r] = fl_lo if o else fl_hi
    rec[15][r] = fl_hi if o else fl_lo
    of = st_lo if o else st_hi
    rf = st_hi if o else st_lo
    o_sent = sent_lo if o else sent_hi
    r_sent = sent_hi if o else sent_lo
    rec[6][r] = transport
    rec[7][r] = vlan & VLAN_MASK
    rec[18][r] = segment
    rec[16][r] = _conn_code(transport == TCP, of, rf, o_sent, r_sent, no_payload)
    rec[17][r] = reason


@njit(inline="always")
def _prefetch_slot(s, hot, vlan, transport, lo_ip, hi_ip, lo_port, hi_port, last_ts,
                   cold: bool) -> None:
    """Ask for the lines of table slot s a record reads: its hot row (104 bytes: up to 3
    lines), last_ts and transport; with `cold`, its other key columns too."""
    w = s * _HOT_ROW_WORDS
    prefetch(hot, w)
    prefetch(hot, w + _HOT_ROW_WORDS // 2)
    prefetch(hot, w + _HOT_ROW_WORDS - 1)
    prefetch(last_ts, s)
    prefetch(transport, s)
    if cold:
        prefetch(vlan, s)
        prefetch(lo_port, s)
        prefetch(hi_port, s)
        prefetch(lo_ip, 2 * s)
        prefetch(hi_ip, 2 * s)


@njit
def _slot_records(slots, reason, split_clock, clock, starts, shift, idle_ns, tcp_idle_ns,
                  active_ns, linger_ns, hot_words, vlan, transport, lo_ip, hi_ip, lo_port,
                  hi_port, segment, orig_is_lo, flow_start, last_ts, closed_at, piece, st_fl_lo,
                  st_fl_hi, cum_pk_lo, cum_pk_hi, cum_pay_lo, cum_pay_hi, p_first, p_end,
                  p_pk_lo, p_pk_hi, p_by_lo, p_by_hi, p_pay_lo, p_pay_hi, p_fl_lo, p_fl_hi):
    """Records of the table slots whose current piece holds packets, in the slots' order.
    reason < 0: each row's end reason (as _reason_of; split clock split_clock[i] of
    slots[i], NEVER when split_clock is empty); else that code for every row. hot_words:
    the hot rows as (slots, words) (_hot_views), for prefetch hints only; lo_ip/hi_ip:
    (slots, 2) native words; bool columns as uint8 views; slots are table slots, so in
    range. Returns the records and the clock's bucket index (starts empty: none given or
    needed, _search_index)."""
    # the end reasons' clock searches in passes of their own (_positions): between the
    # record stores, each row waited on its searches' cache misses
    n = slots.shape[0]
    kept = np.empty(n, dtype=np.int64)
    split = np.empty(n, dtype=np.int64)
    thresholds = np.empty(n, dtype=np.int64)
    # Expired / evicted slots are scattered over a table that outgrows the caches (~70 ns
    # a row on the 2M mix, waiting on each slot's lines in turn): hints _AHEAD slots ahead.
    hot = hot_words.reshape(hot_words.size)
    lo_flat = lo_ip.reshape(lo_ip.size)
    hi_flat = hi_ip.reshape(hi_ip.size)
    m = 0
    for i in range(n):
        s = np.uint64(slots[i])  # unsigned: no negative-index fix-ups on ~30 columns
        _prefetch_slot(slots[min(i + _AHEAD, n - 1)], hot, vlan, transport, lo_flat, hi_flat,
                       lo_port, hi_port, last_ts, False)
        if p_pk_lo[s] + p_pk_hi[s] == 0:  # an empty piece emits no record
            continue
        kept[m] = s
        split[m] = split_clock[i] if split_clock.shape[0] else NEVER
        thresholds[m] = _end_threshold(transport[s] == TCP, last_ts[s], closed_at[s], idle_ns,
                                       tcp_idle_ns, linger_ns)
        m += 1
    codes = np.full(m, reason, dtype=np.int64)
    if reason < 0:
        # only rows whose piece ends before their end threshold search the clock
        need = np.empty(m, dtype=np.int64)
        n_need = 0
        for i in range(m):
            s = kept[i]
            if _needs_clock(thresholds[i], flow_start[s], piece[s], active_ns):
                need[n_need] = i
                n_need += 1
            else:
                codes[i] = _closed_reason(closed_at[s] < NEVER,
                                          np.int64(st_fl_lo[s] | st_fl_hi[s]))
        shift, starts = _search_index(clock, shift, starts, n_need > 0)
        if n_need:
            at = _positions(clock, starts, shift, thresholds[need[:n_need]])
            for j in range(n_need):
                i = need[j]
                s = kept[i]
                codes[i] = _reason_at(at[j], clock, starts, shift, closed_at[s] < NEVER,
                                      np.int64(st_fl_lo[s] | st_fl_hi[s]), flow_start[s],
                                      piece[s], split[i], active_ns)
    rec = _new_records(m)
    for i in range(m):
        s = np.uint64(kept[i])
        _prefetch_slot(kept[min(i + _AHEAD, m - 1)], hot, vlan, transport, lo_flat, hi_flat,
                       lo_port, hi_port, last_ts, True)
        _put_record(rec, i, orig_is_lo[s] != 0, np.int64(transport[s]), vlan[s], lo_ip[s, 0],
                    lo_ip[s, 1], hi_ip[s, 0], hi_ip[s, 1], lo_port[s], hi_port[s], p_first[s],
                    p_end[s], p_pk_lo[s], p_pk_hi[s], p_by_lo[s], p_by_hi[s], p_pay_lo[s],
                    p_pay_hi[s], p_fl_lo[s], p_fl_hi[s], np.int64(st_fl_lo[s]),
                    np.int64(st_fl_hi[s]), cum_pk_lo[s] != 0, cum_pk_hi[s] != 0,
                    cum_pay_lo[s] == 0 and cum_pay_hi[s] == 0, codes[i],
                    segment[s] if vlan[s] & SEGMENT_FLAG else np.uint64(0))
    return rec, shift, starts


@njit
def _group_records(chosen, g, g_key, g_clock, key_words, reason, clock, starts, shift,
                   idle_ns, tcp_idle_ns, active_ns, linger_ns):
    """Records of the walk's group rows `chosen` (int64 rows, _GROUP_FIELDS) of keys g_key
    (rows of key_words, _packet_key's layout). reason < 0: each row's end reason (split clock
    g_clock[row]); else that code. Casts as the astypes of the columns' table dtypes did.
    Returns the records and the clock's bucket index (starts empty: none given or needed)."""
    n = chosen.shape[0]
    if reason < 0:
        needed = False
        for i in range(n):
            row = chosen[i]
            t = (key_words[g_key[row], 0] >> np.uint64(40)) & np.uint64(0xFF)
            needed |= _needs_clock(_end_threshold(t == TCP, g[row, 19], g[row, 16], idle_ns,
                                                  tcp_idle_ns, linger_ns),
                                   g[row, 18], g[row, 20], active_ns)
        shift, starts = _search_index(clock, shift, starts, needed)
    rec = _new_records(n)
    for i in range(n):
        row = np.uint64(chosen[i])  # unsigned: no negative-index fix-ups
        k = np.uint64(g_key[row])
        meta = key_words[k, 0]
        t = np.int64((meta >> np.uint64(40)) & np.uint64(0xFF))
        code = np.int64(reason)
        if reason < 0:
            code = _reason_of(clock, starts, shift, t == TCP, g[row, 19], g[row, 16],
                              (g[row, 10] | g[row, 11]) & 0xFF, g[row, 18], g[row, 20],
                              g_clock[row], idle_ns, tcp_idle_ns, active_ns, linger_ns)
        _put_record(rec, i, g[row, 17] != 0, t, np.uint16(meta >> np.uint64(48)),
                    _bswap(key_words[k, 1]), _bswap(key_words[k, 2]), _bswap(key_words[k, 3]),
                    _bswap(key_words[k, 4]),
                    np.uint16((meta >> np.uint64(16)) & np.uint64(0xFFFF)),
                    np.uint16(meta & np.uint64(0xFFFF)), g[row, 0], g[row, 1],
                    np.uint64(g[row, 2]), np.uint64(g[row, 3]), np.uint64(g[row, 4]),
                    np.uint64(g[row, 5]), np.uint64(g[row, 6]), np.uint64(g[row, 7]),
                    np.uint8(g[row, 8] & 0xFF), np.uint8(g[row, 9] & 0xFF),
                    g[row, 10] & 0xFF, g[row, 11] & 0xFF, g[row, 12] > 0, g[row, 13] > 0,
                    g[row, 14] == 0 and g[row, 15] == 0, code, key_words[k, 5])
    return rec, shift, starts


@njit
def _write_keys(slots, key_words, keys, vlan, transport, lo_ip, hi_ip, lo_port, hi_port,
                segment) -> None:
    """Key columns of table slots[i] from key_words[keys[i]] (_packet_key's layout); lo_ip /
    hi_ip as (slots, 2) native words (the address bytes). Indices are in range by
    construction (new slots, keys of the batch)."""
    for i in range(slots.shape[0]):
        s = np.uint64(slots[i])  # unsigned: no negative-index fix-ups
        k = np.uint64(keys[i])
        meta = key_words[k, 0]
        vlan[s] = np.uint16(meta >> np.uint64(48))
        transport[s] = np.uint8((meta >> np.uint64(40)) & np.uint64(0xFF))
        lo_port[s] = np.uint16((meta >> np.uint64(16)) & np.uint64(0xFFFF))
        hi_port[s] = np.uint16(meta & np.uint64(0xFFFF))
        lo_ip[s, 0] = _bswap(key_words[k, 1])
        lo_ip[s, 1] = _bswap(key_words[k, 2])
        hi_ip[s, 0] = _bswap(key_words[k, 3])
        hi_ip[s, 1] = _bswap(key_words[k, 4])
        if meta & np.uint64(SEGMENT_FLAG << 48):  # (unflagged slots never read theirs)
            segment[s] = key_words[k, 5]


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
            "flows_emitted": 0, "flows_evicted": 0, "flows_live": 0,
        }
        self._clock = np.iinfo(np.int64).min  # running max of packet times
        self._clock_index: tuple = (None,)  # (clock, shift, starts) of the latest batch
        # kept buffers of _walk_state and _keys_buffers
        self._state = np.empty(0, dtype=np.int64)
        self._keys = (np.empty(0, dtype=np.int32), np.empty(0, dtype=np.uint64))
        self._reset()

    def _reset(self) -> None:
        """An empty table (at construction and after flush)."""
        # Live flows: slot columns + an open-addressing hash index key -> slot, and a stack
        # of free slots (no per-flow Python object anywhere).
        self._index = _SlotIndex()
        self._free = np.zeros(0, dtype=np.int32)
        self._n_free = 0
        self._segments_seen = False  # a tunnelled row was ingested: segment column in use
        self._live = np.zeros(0, dtype=bool)
        self._hot = np.zeros(0, dtype=_HOT_DTYPE)
        self._due = np.zeros(0, dtype=np.int64)  # each live slot's _deadline_of, kept
        self._cols: Rows = {name: np.zeros(0, dtype=SLOT_FIELDS[name]) for name in _COLD_NAMES}
        self._cols.update({name: self._hot[name] for name in _HOT_NAMES})
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
        clock = _running_max(ts_all, self._clock)
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

    def flush_chunks(self, chunk_flows: int = _FLUSH_CHUNK) -> Iterator[EventBatch]:
        """End of input, in pieces: the records of flush(), in the same order, as batches of
        at most `chunk_flows` flows. The table's memory is released when the last piece has
        been taken; a consumer that hands each piece on before asking for the next never
        holds the table and all its records at once (a full 1M-flow table is ~160 MB, its
        records ~220 MB). Abandoning the iterator leaves the table as it was."""
        slots = np.flatnonzero(self._live)
        for lo in range(0, slots.size, chunk_flows):
            batch = self._to_batch([self._slot_records(slots[lo:lo + chunk_flows], R_EOF)])
            if batch is not None and len(batch):
                yield batch
        self._reset()

    def flush(self) -> EventBatch | None:
        """End of input: emit every remaining flow (end_reason "eof") in one batch (a
        consumer that can take them in pieces uses flush_chunks and holds less)."""
        return _join_batches(list(self.flush_chunks()))

    # -- batch ingestion --

    def _ingest(self, packets: DecodedPackets, rows: np.ndarray, clock_all: np.ndarray) -> list:
        transport = np.asarray(packets.transport).astype(np.uint8, copy=False)
        vlan = np.asarray(packets.vlan).astype(np.uint16, copy=False)
        # Each packet's flow key (lo = smaller (ip, port) endpoint), the distinct keys and
        # their hashes, in one compiled pass in capture order (_batch_keys).
        segment = _segments(packets)
        self._segments_seen |= segment is not None
        key_of, fwd, words, row_hash = _batch_keys_in(
            rows, _words16(packets.src_ip), _words16(packets.dst_ip), np.asarray(packets.src_port),
            np.asarray(packets.dst_port), transport, vlan, segment,
            *self._keys_buffers(int(rows.size)))
        key_order = _key_order(row_hash, words, int(rows.size))
        rank_of = np.empty(key_order.size, dtype=np.int64)
        rank_of[key_order] = np.arange(key_order.size)

        # The walk reads each packet's columns in capture order.
        p = _Packets(
            key_of=key_of, rank_of=rank_of, rows=rows, fwd=fwd,
            ts=np.asarray(packets.ts_ns, dtype=np.int64), cm=clock_all,
            flags=np.asarray(packets.tcp_flags), wire=np.asarray(packets.wirelen),
            pay=np.asarray(packets.payload_len), transport=np.asarray(packets.transport))
        key_words = np.take(words, key_order, axis=0)  # (a fancy index on rows: ~4x slower)
        key_hash = row_hash[key_order]
        slot_k = self._index.lookup(key_hash, key_words, self._key_columns())
        return self._apply(p, slot_k, (key_words, key_hash), clock_all)

    def _apply(self, p: _Packets, slot_k: np.ndarray, keys: tuple,
               clock_all: np.ndarray) -> list:
        """Walk each key's packets (compiled, _walk_flows): flow boundaries, pieces, per-piece
        totals; then emit ended pieces and write each key's live flow back to the table."""
        cols = self._cols
        has_slot = slot_k >= 0
        # the walk reads a key's live flow (if any) from its table row at its first packet
        slot_at = np.where(has_slot, slot_k, 0)
        (g_int, g_key, g_kind, g_clock, tails, key_emit, key_clock, created, key_deadline,
         tail_deadline) = _walk_flows(
            p.key_of, p.rank_of, p.rows, p.fwd, p.ts, p.cm, p.flags, p.wire, p.pay,
            p.transport, has_slot, slot_at, *_hot_views(self._hot), cols["last_ts"],
            self.idle_ns, self.tcp_idle_ns, self.active_ns, self.linger_ns,
            self._walk_state(slot_k.size))
        self.stats["flows_created"] += int(created)

        out: list[tuple] = []
        # 1. Table pieces that do not merge: the flow moved to a later piece ("active") or
        #    ended at the key's first packet in this batch (split).
        moved = np.flatnonzero(key_emit == _EMIT_MOVED)
        if moved.size:
            out.append(self._slot_records(slot_k[moved], R_ACTIVE))
        ended_keys = np.flatnonzero(key_emit == _EMIT_ENDED)
        if ended_keys.size:
            out.append(self._slot_records(slot_k[ended_keys], -1, key_clock[ended_keys],
                                          clock_all))

        # 2. Groups that are not the live tail of their key (few: most keys have one group),
        #    records straight from the walk's rows, per kind.
        for kind in (_GROUP_MID, _GROUP_ENDED):
            chosen = np.flatnonzero(g_kind == kind)
            if not chosen.size:
                continue
            mid = kind == _GROUP_MID
            clock, shift, starts = _NO_CLOCK if mid else self._batch_clock(clock_all)
            rec, shift, starts = _group_records(chosen, g_int, g_key, g_clock, keys[0],
                                                R_ACTIVE if mid else -1, clock, starts, shift,
                                                self.idle_ns, self.tcp_idle_ns,
                                                self.active_ns, self.linger_ns)
            if not mid:
                self._keep_index(clock, shift, starts)
            out.append(rec)

        # 3. The key's last group becomes (or stays) the live flow in the table, written
        #    column by column from the walk's int64 rows by a kernel. Key columns are written
        #    for new slots only: a found slot's key columns already hold its (exact) key.
        slots = slot_k.copy()  # every key has one live tail, its row of `tails`
        need = np.flatnonzero(~has_slot)
        if need.size:
            new_slots = self._allocate(keys[1][need])
            slots[need] = new_slots
            _write_keys(new_slots, keys[0], need, cols["vlan"], cols["transport"],
                        _words16(cols["lo_ip"]), _words16(cols["hi_ip"]), cols["lo_port"],
                        cols["hi_port"], cols["segment"])
        _scatter_group(*_hot_views(self._hot), cols["last_ts"], self._due, slots, tails,
                       key_deadline)
        self._live[slots] = True
        self._deadline = min(self._deadline, int(tail_deadline))
        return out

    def _keys_buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """_batch_keys_in's table and scratch for n packets: kept across batches when small
        enough (as _walk_state; a 65536-packet batch needs 4.2 MB)."""
        table, scratch = self._keys
        size = _keys_table_size(n)
        if table.size >= size and scratch.size >= _KEYS_SCRATCH * n:
            return table, scratch
        table = np.empty(size, dtype=np.int32)
        scratch = np.empty(_KEYS_SCRATCH * n, dtype=np.uint64)
        if 8 * scratch.size + 4 * table.size <= 8 * _KEPT_STATE + (1 << 20):
            self._keys = (table, scratch)
        return table, scratch

    def _walk_state(self, n_keys: int) -> np.ndarray:
        """A buffer for _walk_flows' state rows (26 words a key). Kept across batches up to
        _KEPT_STATE words: a fresh one each batch faulted its pages in again now and then
        (~300 faults of ~2 us a batch when malloc had handed its heap back); larger ones
        (floods of new keys) are not kept, so they do not stay resident."""
        need = 26 * n_keys
        if self._state.size >= need:
            return self._state
        # room to grow: the batches' key counts creep up while a table fills (pages past
        # the rows a batch zeroes are never touched)
        state = np.empty(max(need, min(max(2 * self._state.size, _KEPT_STATE // 2),
                                       _KEPT_STATE)), dtype=np.int64)
        if need <= _KEPT_STATE:
            self._state = state
        return state

    # -- expiry, eviction, slots --

    def _deadline_columns(self) -> tuple:
        cols = self._cols
        return (cols["transport"], cols["last_ts"], cols["closed_at"], cols["p_pk_lo"],
                cols["p_pk_hi"], cols["flow_start"], cols["piece"], self.idle_ns,
                self.tcp_idle_ns, self.active_ns, self.linger_ns)

    def _clock_search(self, clock_all: np.ndarray) -> tuple:
        """(clock, shift, starts): the batch clock and its bucket index (_clock_index),
        built once per batch clock."""
        clock, shift, starts = self._batch_clock(clock_all)
        if not starts.size:
            self._clock_index = (clock, *_clock_index(clock))
        return self._clock_index

    def _batch_clock(self, clock_all: np.ndarray) -> tuple:
        """(clock, shift, starts) as _clock_search, but starts empty when the index was not
        built yet: the record kernels build it only if a row needs it (_search_index)."""
        clock = np.ascontiguousarray(clock_all, dtype=np.int64)
        if self._clock_index[0] is not clock:
            self._clock_index = (clock, 0, _NO_INDEX)
        return self._clock_index

    def _keep_index(self, clock: np.ndarray, shift: int, starts: np.ndarray) -> None:
        """Keep a bucket index a record kernel built for the batch clock."""
        if starts.size:
            self._clock_index = (clock, int(shift), starts)

    def _slot_records(self, slots: np.ndarray, reason: int,
                      split_clock: np.ndarray = _NO_SPLIT,
                      clock_all: np.ndarray | None = None) -> tuple:
        """Records (_RECORD_COLUMNS) of the slots whose current piece holds packets (an
        empty piece emits none), in order: reason `reason`, or when it is -1 each row's end
        reason (split clocks split_clock, one a slot, none when empty; clock_all the batch
        clock)."""
        clock, shift, starts = _NO_CLOCK if reason >= 0 else self._batch_clock(clock_all)
        cols = self._cols
        rec, shift, starts = _slot_records(
            np.ascontiguousarray(slots, dtype=np.int64), reason,
            np.asarray(split_clock, dtype=np.int64), clock, starts, shift, self.idle_ns,
            self.tcp_idle_ns, self.active_ns, self.linger_ns, _hot_views(self._hot)[0],
            cols["vlan"], cols["transport"],
            _words16(cols["lo_ip"]), _words16(cols["hi_ip"]), cols["lo_port"], cols["hi_port"],
            cols["segment"], *(_kernel_view(cols[name]) for name in _RECORD_SOURCES))
        if reason < 0:
            self._keep_index(clock, shift, starts)
        return rec

    def _expire(self, clock_all: np.ndarray) -> list:
        now = int(clock_all[-1])
        if now <= self._deadline:
            return []
        cols = self._cols
        slots, rest_deadline = _scan_deadlines(self._live, self._due, now)
        # The new earliest deadline: the slots not expired keep theirs (min from the same
        # scan); the kept expired ones get theirs recomputed below (no second table scan).
        self._deadline = int(rest_deadline)
        if not slots.size:
            return []
        out = [self._slot_records(slots, -1, _NO_SPLIT, clock_all)]
        # The flow itself ends when idle/close crossed; otherwise only the piece was emitted.
        over, kept_deadline = _expired_flows(slots, now, self._due, *self._deadline_columns(),
                                             *(cols[name] for name in _PIECE_SUMS))
        self._release(over)
        self._deadline = min(self._deadline, int(kept_deadline))
        return out

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
        n_live = int(live.size)
        # two arrays a live slot, gone before the records and the release (whose index
        # rebuild allocates its own): together they were the 10M SYN flood's peak RSS
        del live, last
        victims = np.concatenate([below, at_cut])
        victims = victims[np.lexsort((victims, self._cols["last_ts"][victims]))]
        rows = self._slot_records(victims, R_EVICTED)
        self._release(victims)
        self.stats["flows_evicted"] += int(victims.size)
        self.stats["flows_live"] = n_live - excess
        return [rows]

    def _allocate(self, key_hash: np.ndarray) -> np.ndarray:
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
        for name in _COLD_NAMES:
            grown = _zeros(new, self._cols[name].dtype)
            # untunnelled traffic never writes the segment column: copying its zeros would
            # only make its pages resident (8 bytes a slot: +8 MB under a 1M-flow flood)
            if name != "segment" or self._segments_seen:
                grown[:old] = self._cols[name]
            self._cols[name] = grown
        # mapped from the table size where its 8-byte columns were (a fresh mapping's
        # first touches fault: 1-2 MB of hot rows made growth ~0.5 ms dearer)
        hot = _zeros(new, _HOT_DTYPE, 8)
        # as raw words: numpy copies a padded structured dtype field by field (~3x slower)
        _hot_views(hot)[0][:old] = _hot_views(self._hot)[0]
        self._hot = hot
        due = _zeros(new, np.int64)
        due[:old] = self._due
        self._due = due
        self._cols.update({name: hot[name] for name in _HOT_NAMES})
        live = np.zeros(new, dtype=bool)
        live[:old] = self._live
        self._live = live
        free = np.zeros(new, dtype=np.int32)
        free[:self._n_free] = self._free[:self._n_free]
        free[self._n_free:self._n_free + new - old] = np.arange(new - 1, old - 1, -1)
        self._free = free
        self._n_free += new - old
        self._index.resize(new, np.flatnonzero(self._live), self._key_columns())

    def _release(self, slots: np.ndarray) -> None:
        if not slots.size:
            return
        self._live[slots] = False
        self._index.remove(_mix64(self._slot_words(slots)), slots)
        top = self._n_free
        self._free[top:top + slots.size] = slots
        self._n_free = top + slots.size
        if self._index.needs_rebuild():
            self._index.resize(self._live.size, np.flatnonzero(self._live),
                               self._key_columns())

    def _key_columns(self) -> KeyColumns:
        cols = self._cols
        return (cols["vlan"], cols["transport"], cols["lo_port"], cols["hi_port"],
                cols["lo_ip"].view(np.uint8).reshape(-1, 16),
                cols["hi_ip"].view(np.uint8).reshape(-1, 16), cols["segment"])

    def _slot_words(self, slots: np.ndarray) -> np.ndarray:
        """(n, 6) uint64 flow keys of table slots, the layout _ingest builds."""
        return _slot_key_words(slots.astype(np.int64, copy=False), *self._key_columns())

    # -- output --

    def _to_batch(self, parts: list) -> EventBatch | None:
        """One FLOW batch from record parts (_RECORD_COLUMNS), in order."""
        parts = [r for r in parts if r[0].size]
        if not parts:
            return None
        # One part (the usual case) is used as it is: its arrays are this batch's own.
        rec = parts[0] if len(parts) == 1 else tuple(
            np.concatenate(columns) for columns in zip(*parts, strict=True))
        batch = flow_batch(rec, self.observer_name, self.ingress_zone, self.community_id_seed)
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
    """Rows lo:hi of a batch (views; the shared buffer and weird counts are not sliced, and
    the fragment list, which the flow table does not read, is left out)."""
    columns = {f.name: getattr(packets, f.name) for f in dataclasses.fields(packets)
               if f.name != "fragments"}
    return DecodedPackets(**{name: value if name in ("data", "weird") else value[lo:hi]
                             for name, value in columns.items()})


def _segments(packets: DecodedPackets) -> np.ndarray | None:
    """The batch's tunnel_id column for _batch_keys_in, None when no row is tunnelled
    (tunnel_id != 0 exactly where tunnel != 0: a scan of the byte column decides). None
    compiles a version of the key loop of its own, with the segment a constant 0."""
    if not packets.tunnel.any():
        return None
    return np.asarray(packets.tunnel_id).astype(np.uint64, copy=False)


class _Packets:
    """A batch's packet columns and the IP rows' keys: IP row i is packet rows[i] of key
    rank_of[key_of[i]] (keys in key order); fwd is per IP row."""

    __slots__ = ("key_of", "rank_of", "rows", "fwd", "ts", "cm", "flags", "wire", "pay",
                 "transport")

    def __init__(self, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            setattr(self, name, values)


def flow_batch(rec: tuple, observer_name: str, ingress_zone: str, seed: int = 0) -> EventBatch:
    """Record columns (_RECORD_COLUMNS, the batch's own arrays) -> FLOW EventBatch."""
    cols = dict(zip(_RECORD_COLUMNS, rec, strict=True))
    n = cols["timestamp"].size
    cols["src_ip"] = cols["src_ip"].view(IP_DTYPE).reshape(n)
    cols["dst_ip"] = cols["dst_ip"].view(IP_DTYPE).reshape(n)
    cols["observer_name"] = constant_text(n, observer_name)
    cols["ingress_zone"] = constant_text(n, ingress_zone)
    cols["conn_state"] = CONN_STATES[cols["conn_state"]]
    cols["end_reason"] = REASONS[cols["end_reason"]]
    # in chunks: the text kernel's temporaries are ~130 bytes a row
    ids = [community_id_column(cols["src_ip"][lo:lo + _RECORD_CHUNK],
                               cols["dst_ip"][lo:lo + _RECORD_CHUNK],
                               cols["transport"][lo:lo + _RECORD_CHUNK],
                               cols["src_port"][lo:lo + _RECORD_CHUNK],
                               cols["dst_port"][lo:lo + _RECORD_CHUNK], seed)
           for lo in range(0, n, _RECORD_CHUNK)] or [np.empty(0, dtype=object)]
    cols["community_id"] = ids[0] if len(ids) == 1 else np.concatenate(ids)
    out = {f.column: cols[f.column] for f in FLOW.fields if not f.optional}
    # optional columns (observer_names: fusion's) hold their fill value, after the others
    # as EventBatch would add them; made here: its np.full(n, "", dtype=object) converts
    # the fill once per row (~5 ns a row, constant_text)
    out.update({f.column: constant_text(n, f.fill) if f.dtype == object
                else np.full(n, f.fill, dtype=f.dtype) for f in FLOW.fields if f.optional})
    segment = cols["segment"]
    if segment.any():  # tunnelled flows (the constant fills above stand otherwise)
        out["tunnel_type"], out["tunnel_id"] = segment_columns(segment)
    return EventBatch(FLOW.name, out)
