"""IP fragment reassembly (IPv4 and IPv6) for the sensor, like Zeek, Suricata and Snort do.

A fragmented datagram (a large DNSSEC/EDNS response, a fragmentation-based evasion) is
analysed only once all its fragments are in: the decoder lists the fragment rows of a batch
(DecodedPackets.fragments, sensors/decode.py), the Defragmenter copies their bytes per
(version, vlan, src, dst, protocol, identification) and hands back the datagrams that
complete, rebuilt as whole raw IP packets and decoded by the same decode() (tunnels
included: an outer fragmented tunnel packet is opened once reassembled).

What each consumer sees (Sensor.process):
- the flow table: every fragment as the packet it is on the wire (packets, bytes, its own
  time); a later fragment takes its datagram's first fragment's flow key (its ports). One
  that came before that first fragment waits for it, across batches, and is counted just
  before it; one whose first fragment never comes is counted as the ports-0 packet it is
  when its datagram times out or is evicted (or at the end of input). Where batches were
  cut does not change the flow records ("waiting rows" below);
- the protocol analyzers: the batch with its fragment rows hidden (no transport, ports or
  payload), then each reassembled datagram once, after the batch's other rows.

Policy and bounds (docs/sensor.md "IP fragments"): overlapping data keeps the bytes that
arrived first (counted: fragment_overlap when the bytes agree, fragment_inconsistency when
they differ, Zeek's names); a datagram that would exceed 65535 bytes is not reassembled
(excessively_large_fragment: the "ping of death"); a datagram not complete `timeout_s` of
event time after its first fragment is dropped (fragment_timeout counts its fragments); at
most `max_datagrams` pending datagrams and `max_bytes` of fragment data are held, beyond that
the oldest is dropped (counted `evicted`). The per-fragment work is compiled (the kernels
below, one pass over a batch's fragments in arrival order), so a fragment flood costs about
what the rest of the sensor pays per packet; Python runs per batch (and decodes the rebuilt
packets as one batch). An unfragmented batch costs one test.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipeline.config import ConfigError
from pipeline.jit import njit
from sensors.decode import DEFAULT_TUNNELS, TunnelConfig, decode, nest_segments
from sensors.packets import LINKTYPE_RAW, DecodedPackets, FragmentRows, PacketBatch
from sensors.tcp_stream import prefetch

NS = 1_000_000_000
MAX_DATAGRAM = 65535  # IPv4 total length / IPv6 payload length limit
MAX_NESTING = 2  # rounds of reassembly per batch (fragments inside a reassembled tunnel packet)
# Fragments held per datagram: each new one is compared with those held (overlaps), so this
# bounds the Python work a datagram of tiny fragments can cause (~50 ms at the bound). A
# 64 KB datagram at the IPv4 minimum MTU of 576 takes ~120 fragments.
MAX_FRAGMENTS = 512
# Columns the analyzers must not read for a fragment row (its reassembled datagram stands
# for it): zeroed in the analyzers' view.
_HIDDEN = ("transport", "src_port", "dst_port", "tcp_flags", "icmp_type", "icmp_code",
           "payload_len")
# The flow key columns a later fragment takes from its datagram's first fragment.
_FLOW_KEY = ("src_ip", "dst_ip", "transport", "src_port", "dst_port", "vlan")


@dataclass(frozen=True)
class DefragConfig:
    """Config `sensor.defrag` (docs/configuration.md)."""

    enabled: bool = True
    timeout_s: float = 30.0  # event time; Linux ipfrag_time 30 s, Suricata 60 s
    max_datagrams: int = 8192  # pending (incomplete) datagrams
    max_bytes: int = 32 << 20  # fragment data held for them

    @classmethod
    def from_config(cls, section: dict | None) -> DefragConfig:
        """The `sensor.defrag` section (None or {}: the defaults); ConfigError if malformed."""
        section = section or {}
        unknown = set(section) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"sensor.defrag: unknown key(s) {sorted(unknown)}")
        enabled = section.get("enabled", cls.enabled)
        timeout = section.get("timeout_s", cls.timeout_s)
        datagrams = section.get("max_datagrams", cls.max_datagrams)
        max_bytes = section.get("max_bytes", cls.max_bytes)
        if not isinstance(enabled, bool):
            raise ConfigError(f"sensor.defrag.enabled: true or false, got {enabled!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(f"sensor.defrag.timeout_s: seconds > 0, got {timeout!r}")
        if isinstance(datagrams, bool) or not isinstance(datagrams, int) or datagrams < 1:
            raise ConfigError(f"sensor.defrag.max_datagrams: an integer >= 1, got {datagrams!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) \
                or max_bytes < 2 * MAX_DATAGRAM:
            raise ConfigError(f"sensor.defrag.max_bytes: an integer >= {2 * MAX_DATAGRAM} "
                              f"(two whole datagrams), got {max_bytes!r}")
        return cls(enabled, float(timeout), datagrams, max_bytes)



# --- state layout ---------------------------------------------------------------------------
# Every pending datagram is a slot: a row of `meta` (int64 fields below), its key words
# (`keys`), the flow key of its first fragment (`flow_ip` + meta) and the IP header of its
# offset-0 fragment (`header`). Its fragments' data are pieces (rows of `pieces`, a linked
# list per slot in arrival order). During a batch a piece's bytes stay in the batch's
# buffer; only those of datagrams still pending at its end are copied into one `arena`
# (appended, compacted when its end is reached). Under a flood that copies the last
# max_datagrams fragments of a batch, not all of them, and a datagram completed within a
# batch is never copied but once, into its rebuilt packet. No Python object per datagram
# or fragment.
S_FIRST_TS, S_SIZE, S_HELD, S_FRAGS, S_PIECES, S_BAD, S_HDR_LEN, S_HASH, S_PREV, S_NEXT, \
    S_HEAD, S_NWAIT, S_TAIL, S_WAIT, S_VLAN, S_TUNNEL, S_HAS_FLOW, S_TRANSPORT, S_SPORT, \
    S_DPORT, S_FLOW_VLAN, S_UNSORTED, S_OVERLAPPED, S_FLOW_SEGMENT = range(24)
SLOT_FIELDS = 24
# (S_UNSORTED: a piece came at a lower offset than the one before it; S_OVERLAPPED: pieces
# overlap. Neither, the usual case: completion and rebuilding walk the pieces as they are.)
# S_WAIT / S_NWAIT: the later fragments that came before the datagram's first fragment and
# wait for its flow key (flow accounting, "waiting rows" below), a list across batches
# (S_NWAIT next to the fields a removal touches anyway: a flood's evictions read it from
# the oldest slot's row, a cache miss if it were on a line of its own).
HEADER_MAX = 64  # an IPv4 header is at most 60 bytes, the IPv6 base header 40
# a piece: the fragment's offset in the datagram, its length, where its bytes are (in the
# arena, or in the batch's buffer while P_BATCH is 1), the next piece of the datagram (-1:
# none; also links the free pieces)
P_OFF, P_LEN, P_POS, P_NEXT, P_BATCH = range(5)
PIECE_FIELDS = 5
# `glob`: the pending queue (oldest first: a doubly linked list over slots), sizes, limits,
# the batch's output cursor, then the counters a batch adds to stats / weird
G_HEAD, G_TAIL, G_COUNT, G_HELD, G_ARENA_END, G_PIECE_FREE, G_SLOT_FREE, G_MAX_DATAGRAMS, \
    G_MAX_BYTES, G_TIMEOUT, G_DONE, G_OUT_END, N_DATAGRAMS, N_TIMEOUTS, N_EVICTED, \
    N_OVERLAPS, W_LARGE, W_LIMIT, W_OVERLAP, W_INCONSISTENCY, W_TIMEOUT, G_NWAIT, \
    G_MAX_WAIT, G_BATCH_WAIT, G_REL, G_STORE_FREE, G_STORE_NFREE, G_NDROPS = range(28)
GLOB_FIELDS = 28
COUNTERS = {N_DATAGRAMS: ("stats", "datagrams"), N_TIMEOUTS: ("stats", "timeouts"),
            N_EVICTED: ("stats", "evicted"), N_OVERLAPS: ("stats", "overlaps"),
            W_LARGE: ("weird", "excessively_large_fragment"),
            W_LIMIT: ("weird", "fragment_limit"), W_OVERLAP: ("weird", "fragment_overlap"),
            W_INCONSISTENCY: ("weird", "fragment_inconsistency"),
            W_TIMEOUT: ("weird", "fragment_timeout")}
# a batch's fragment columns (`cols`, one int64 row per fragment)
I_ROW, I_TS, I_VERSION, I_PROTOCOL, I_VLAN, I_OFFSET, I_MORE, I_HEAD_AT, I_START, I_END, \
    I_CLAIMED, I_TUNNEL, I_TRANSPORT, I_SPORT, I_DPORT, I_FLOW_VLAN, I_FLOW_SEGMENT = range(17)
INPUT_FIELDS = 17  # (I_FLOW_SEGMENT: the row's tunnel_id, its uint64 bits as int64)
# a datagram's key words: src (2), dst (2), version|vlan|protocol|ident, the segment of the
# tunnel around it (DecodedPackets.tunnel_id)
KEY_WORDS, KEY_SEGMENT = 6, 5
# why the kernel stopped before a fragment: done, or an array to grow first
DONE, NEED_PIECES, NEED_OUT = range(3)
# room kept in the output buffer: the largest rebuilt packet (IPv6 base header + 65535)
OUT_ROOM = MAX_DATAGRAM + HEADER_MAX
AHEAD = 8  # fragments between a prefetch and the use

# --- waiting rows (flow accounting of later fragments that came before their first one) ---
# Such a fragment is not counted by the flow table where it arrived: it waits in its
# datagram's list until the first fragment comes (then it is counted just before that
# fragment's row, with its own time, under the first fragment's flow key), or until the
# datagram times out or is evicted without it (then just before the row at which the clock
# passed the deadline, or the fragment that evicted it, under its own ports-0 key). Both
# places are rows of the capture, not of a batch: the flow records do not depend on where
# batches were cut. A list entry e >= 0 is fragment e of the current batch (next: wait[e]);
# e <= -2 a row parked in the store at a batch's end (store row -e-2; next: store_next);
# -1 ends a list. Bounded: at most MAX_FRAGMENTS per datagram and WAIT_PER_DATAGRAM x
# max_datagrams in all; beyond, a later fragment is counted where it is, ports-0.
WAIT_PER_DATAGRAM = 8
HELD = -2  # place[i]: fragment i waits past the batch's end (parked); -1: counted in place
# a release (`rel` row): the store row, the capture row it goes before (of the current
# batch), 1 if it takes the flow key that follows (transport, ports, vlan, tunnel segment;
# rel_ip: addresses)
R_STORE, R_POS, R_GIVEN, R_TRANSPORT, R_SPORT, R_DPORT, R_VLAN, R_SEGMENT = range(8)
REL_FIELDS = 8
# `where`: the current row (the end of a batch), a fixed row for every release (-1: none;
# the rounds of reassembled packets and the end of input), 1 if later fragments may wait
W_ROW, W_FIXED, W_COUNT = range(3)
# a drop row (`meta` rows max_datagrams.., G_NDROPS of them): the waiting list of a datagram
# dropped incomplete, not yet counted (its first entry, 1 for a timeout, its deadline, the
# row it was dropped at)
D_HEAD, D_TIMEOUT, D_DEADLINE, D_ROW = range(4)


# --- the key index: open addressing over slots (linear probing, backward-shift removal) -----

@njit(inline="always")
def _hash(key: np.ndarray) -> int:
    """The key's words mixed (splitmix64 steps), kept to 62 bits (an int64 column); the
    tunnel segment word only when set (untunnelled keys hash as before it existed)."""
    x = np.uint64(0x9E3779B97F4A7C15)
    for j in range(KEY_WORDS):
        if j == KEY_SEGMENT and key[j] == 0:
            break
        x ^= key[j]
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(31)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(29)
    return np.int64(x & np.uint64(0x3FFFFFFFFFFFFFFF))


@njit(inline="always")
def _same_key(keys: np.ndarray, slot: int, key: np.ndarray) -> bool:
    for j in range(KEY_WORDS):
        if keys[slot, j] != key[j]:
            return False
    return True


@njit(inline="always")
def _find(index: np.ndarray, keys: np.ndarray, meta: np.ndarray, key: np.ndarray,
          h: int) -> tuple[int, int]:
    """(the key's slot or -1, the index position it is at or would go to)."""
    mask = index.size - 1
    at = h & mask
    while True:
        slot = index[at] - 1  # 0: an empty position
        if slot < 0:
            return -1, at
        if meta[slot, S_HASH] == h and _same_key(keys, slot, key):
            return slot, at
        at = (at + 1) & mask


@njit(inline="always")
def _unindex(index: np.ndarray, meta: np.ndarray, slot: int) -> None:
    """Take the slot out of the index; later entries of its probe run move back into the
    hole (no tombstones: a flood's churn never fills the index)."""
    mask = index.size - 1
    hole = meta[slot, S_HASH] & mask
    while index[hole] - 1 != slot:
        hole = (hole + 1) & mask
    at = hole
    while True:
        at = (at + 1) & mask
        other = index[at] - 1
        if other < 0:
            break
        home = meta[other, S_HASH] & mask
        # it may move back unless its home lies cyclically in (hole, at]
        stays = (hole < home <= at) if hole <= at else (home > hole or home <= at)
        if not stays:
            index[hole] = index[at]
            hole = at
    index[hole] = 0


# --- pending datagrams: open, remove (completed, timed out, evicted) -----------------------

@njit(inline="always")
def _free_pieces(meta: np.ndarray, pieces: np.ndarray, glob: np.ndarray, slot: int) -> None:
    """The slot's pieces back to the free list (their arena bytes are reclaimed by the next
    compaction); its held bytes leave the total."""
    piece = meta[slot, S_HEAD]
    while piece >= 0:
        after = pieces[piece, P_NEXT]
        pieces[piece, P_NEXT] = glob[G_PIECE_FREE]
        glob[G_PIECE_FREE] = piece
        piece = after
    meta[slot, S_HEAD] = meta[slot, S_TAIL] = -1
    meta[slot, S_PIECES] = 0
    glob[G_HELD] -= meta[slot, S_HELD]
    meta[slot, S_HELD] = 0


@njit(inline="always")
def _remove(meta: np.ndarray, index: np.ndarray, pieces: np.ndarray, free_slots: np.ndarray,
            glob: np.ndarray, slot: int) -> None:
    """A datagram leaves the pending ones: index, queue, pieces, slot."""
    _unindex(index, meta, slot)
    before, after = meta[slot, S_PREV], meta[slot, S_NEXT]
    if before >= 0:
        meta[before, S_NEXT] = after
    else:
        glob[G_HEAD] = after
    if after >= 0:
        meta[after, S_PREV] = before
    else:
        glob[G_TAIL] = before
    _free_pieces(meta, pieces, glob, slot)
    free_slots[glob[G_SLOT_FREE]] = slot
    glob[G_SLOT_FREE] += 1
    glob[G_COUNT] -= 1


@njit
def _release_list(meta: np.ndarray, flow_ip: np.ndarray, glob: np.ndarray, acct: tuple,
                  entry: int, slot: int, position: int, given: bool) -> None:
    """A waiting list (from `entry`) is counted before capture row `position` of the batch,
    under slot `slot`'s flow key when `given` (its first fragment came), else under the
    rows' own. Store rows are listed in `rel` (Python frees them afterwards). Not inlined,
    as the callers below: the per-fragment path only tests for waiting rows (a tuple of
    arrays passed inline costs reference counts on every fragment)."""
    place, wait, store_next, rel, rel_ip = acct[0], acct[1], acct[2], acct[3], acct[4]
    attr_ip, attr = acct[7], acct[8]
    while entry != -1:
        if entry >= 0:
            after = wait[entry]
            place[entry] = position
            if given:
                _give_flow(meta, flow_ip, slot, entry, attr_ip, attr)
            glob[G_BATCH_WAIT] -= 1
        else:
            row = -entry - 2
            after = store_next[row]
            k = glob[G_REL]
            glob[G_REL] += 1
            rel[k, R_STORE], rel[k, R_POS], rel[k, R_GIVEN] = row, position, given
            if given:
                rel[k, R_TRANSPORT] = meta[slot, S_TRANSPORT]
                rel[k, R_SPORT], rel[k, R_DPORT] = meta[slot, S_SPORT], meta[slot, S_DPORT]
                rel[k, R_VLAN] = meta[slot, S_FLOW_VLAN]
                rel[k, R_SEGMENT] = meta[slot, S_FLOW_SEGMENT]
                for j in range(4):
                    rel_ip[k, j] = flow_ip[slot, j]
        entry = after


@njit
def _release(meta: np.ndarray, flow_ip: np.ndarray, glob: np.ndarray, acct: tuple,
             slot: int, position: int, given: bool) -> None:
    """The slot's waiting rows are counted (_release_list); its list is empty after."""
    _release_list(meta, flow_ip, glob, acct, meta[slot, S_WAIT], slot, position, given)
    glob[G_NWAIT] -= meta[slot, S_NWAIT]
    meta[slot, S_NWAIT] = 0
    meta[slot, S_WAIT] = -1


@njit
def _apply_drops(meta: np.ndarray, flow_ip: np.ndarray, glob: np.ndarray,
                 acct: tuple) -> None:
    """The waiting lists of the datagrams dropped incomplete since the last call (`drops`),
    counted under their own keys: a timeout's before the first row at which the clock (the
    running maximum of the times) passed the deadline, at the latest the row it was
    dropped at; an eviction's before that row; in a round of reassembled packets, all at
    its fixed row."""
    runmax, where = acct[5], acct[6]
    for k in range(glob[G_MAX_DATAGRAMS], glob[G_MAX_DATAGRAMS] + glob[G_NDROPS]):
        position = meta[k, D_ROW]
        if meta[k, D_TIMEOUT] and where[W_FIXED] < 0:
            position = min(np.searchsorted(runmax, meta[k, D_DEADLINE], side="right"),
                           position)
        _release_list(meta, flow_ip, glob, acct, meta[k, D_HEAD], -1, position, False)
    glob[G_NDROPS] = 0


@njit(inline="always")
def _drop(meta: np.ndarray, index: np.ndarray, pieces: np.ndarray, free_slots: np.ndarray,
          glob: np.ndarray, slot: int, timeout: bool, row: int) -> None:
    """A datagram leaves incomplete (timed out, evicted at capture row `row`): its waiting
    list, if any, is noted in a drop row (counted by _apply_drops before the list is read
    again: the entries stay linked), and the waiting count drops now."""
    if meta[slot, S_NWAIT]:
        k = glob[G_MAX_DATAGRAMS] + glob[G_NDROPS]
        glob[G_NDROPS] += 1
        meta[k, D_HEAD], meta[k, D_TIMEOUT], meta[k, D_ROW] = meta[slot, S_WAIT], timeout, row
        meta[k, D_DEADLINE] = meta[slot, S_FIRST_TS] + glob[G_TIMEOUT]
        glob[G_NWAIT] -= meta[slot, S_NWAIT]
    _remove(meta, index, pieces, free_slots, glob, slot)


@njit(inline="always")
def _open(meta: np.ndarray, keys: np.ndarray, index: np.ndarray, pieces: np.ndarray,
          free_slots: np.ndarray, glob: np.ndarray, row: int, key: np.ndarray, h: int,
          at: int, ts: int, vlan: int, tunnel: int) -> int:
    """A new pending datagram at the queue's end (the oldest are evicted to make room, at
    capture row `row`); `at`: its index position found by _find (evictions may move
    entries: found again)."""
    evicted = False
    while glob[G_COUNT] >= glob[G_MAX_DATAGRAMS]:
        _drop(meta, index, pieces, free_slots, glob, glob[G_HEAD], False, row)
        glob[N_EVICTED] += 1
        evicted = True
    if evicted:
        at = _find(index, keys, meta, key, h)[1]
    glob[G_SLOT_FREE] -= 1
    slot = free_slots[glob[G_SLOT_FREE]]
    for j in range(SLOT_FIELDS):
        meta[slot, j] = 0
    meta[slot, S_FIRST_TS] = ts
    meta[slot, S_SIZE] = meta[slot, S_HDR_LEN] = -1
    meta[slot, S_HEAD] = meta[slot, S_TAIL] = meta[slot, S_WAIT] = -1
    meta[slot, S_HASH] = h
    meta[slot, S_VLAN] = vlan
    meta[slot, S_TUNNEL] = tunnel
    for j in range(KEY_WORDS):
        keys[slot, j] = key[j]
    index[at] = slot + 1
    meta[slot, S_PREV], meta[slot, S_NEXT] = glob[G_TAIL], -1
    if glob[G_TAIL] >= 0:
        meta[glob[G_TAIL], S_NEXT] = slot
    else:
        glob[G_HEAD] = slot
    glob[G_TAIL] = slot
    glob[G_COUNT] += 1
    return slot


@njit(inline="always")
def _expire(meta: np.ndarray, index: np.ndarray, pieces: np.ndarray, free_slots: np.ndarray,
            glob: np.ndarray, now: int, row: int) -> None:
    """Drop datagrams whose first fragment is more than the timeout older than `now`
    (oldest first; the queue is in arrival order)."""
    limit = now - glob[G_TIMEOUT]
    while glob[G_HEAD] >= 0 and meta[glob[G_HEAD], S_FIRST_TS] < limit:
        slot = glob[G_HEAD]
        glob[N_TIMEOUTS] += 1
        glob[W_TIMEOUT] += meta[slot, S_FRAGS]
        _drop(meta, index, pieces, free_slots, glob, slot, True, row)


@njit(inline="always")
def _shed_bytes(meta: np.ndarray, index: np.ndarray, pieces: np.ndarray,
                free_slots: np.ndarray, glob: np.ndarray, keep: int, row: int) -> None:
    """Drop the oldest other datagrams while more than max_bytes are held."""
    while glob[G_HELD] > glob[G_MAX_BYTES]:
        victim = glob[G_HEAD]
        if victim == keep:
            victim = meta[victim, S_NEXT]
        if victim < 0:
            return
        _drop(meta, index, pieces, free_slots, glob, victim, False, row)
        glob[N_EVICTED] += 1


# --- fragment data: the arena -------------------------------------------------------------

@njit(inline="always")
def _copy(target: np.ndarray, at: int, source: np.ndarray, start: int, length: int) -> None:
    """target[at:at+length] = source[start:start+length], forward, as a plain loop: numba's
    slice assignment costs ~300 ns whatever the length (it checks for overlap and takes a
    generic path; loops below copy rows for the same reason); a forward copy is also safe
    when moving bytes down within one array."""
    into, taken = target[at:at + length], source[start:start + length]
    for b in range(length):  # (indices from 0: no negative-index test, the loop vectorizes)
        into[b] = taken[b]

@njit
def _compact(meta: np.ndarray, pieces: np.ndarray, arena: np.ndarray,
             glob: np.ndarray) -> None:
    """Move the held pieces' bytes to the arena's start, in arena order (each moves down
    or stays: a forward copy is safe). Pieces still in the batch's buffer are not moved."""
    count = 0
    slot = glob[G_HEAD]
    while slot >= 0:
        count += meta[slot, S_PIECES]
        slot = meta[slot, S_NEXT]
    held = np.empty(count, dtype=np.int64)
    count = 0
    slot = glob[G_HEAD]
    while slot >= 0:
        piece = meta[slot, S_HEAD]
        while piece >= 0:
            if not pieces[piece, P_BATCH]:
                held[count] = piece
                count += 1
            piece = pieces[piece, P_NEXT]
        slot = meta[slot, S_NEXT]
    held = held[:count]
    held = held[np.argsort(pieces[held, P_POS], kind="mergesort")]
    end = 0
    for piece in held:
        source, length = pieces[piece, P_POS], pieces[piece, P_LEN]
        _copy(arena, end, arena, source, length)
        pieces[piece, P_POS] = end
        end += length
    glob[G_ARENA_END] = end


@njit
def _arena_room(meta: np.ndarray, pieces: np.ndarray, arena: np.ndarray, glob: np.ndarray,
                length: int) -> bool:
    """Room for `length` more bytes, compacting if needed; False: grow the arena first
    (also when compacting would free less than a quarter of it: compactions stay rare)."""
    if glob[G_ARENA_END] + length <= arena.size:
        return True
    _compact(meta, pieces, arena, glob)
    return (glob[G_ARENA_END] + length) * 2 <= arena.size


@njit(inline="always")
def _overlap(meta: np.ndarray, pieces: np.ndarray, arena: np.ndarray, slot: int,
             offset: int, data: np.ndarray, start: int, end: int) -> int:
    """How new data at `offset` meets the pieces held: 0 no overlap, 1 overlapping bytes
    all agree, 2 some differ (compared with every held piece, not only the kept bytes)."""
    last = offset + end - start
    found = 0
    piece = meta[slot, S_HEAD]
    while piece >= 0:
        held_at, length = pieces[piece, P_OFF], pieces[piece, P_LEN]
        lo, hi = max(held_at, offset), min(held_at + length, last)
        if lo < hi:
            found = 1
            mine = pieces[piece, P_POS] - held_at
            theirs = start - offset
            if pieces[piece, P_BATCH]:
                for b in range(lo, hi):
                    if data[mine + b] != data[theirs + b]:
                        return 2
            else:
                for b in range(lo, hi):
                    if arena[mine + b] != data[theirs + b]:
                        return 2
        piece = pieces[piece, P_NEXT]
    return found


@njit(inline="always")
def _add_piece(meta: np.ndarray, pieces: np.ndarray, glob: np.ndarray, slot: int,
               offset: int, start: int, end: int) -> None:
    """Append the fragment's piece to the slot's list (its bytes stay in the batch)."""
    piece = glob[G_PIECE_FREE]
    glob[G_PIECE_FREE] = pieces[piece, P_NEXT]
    length = end - start
    pieces[piece, P_OFF], pieces[piece, P_LEN] = offset, length
    pieces[piece, P_POS], pieces[piece, P_NEXT] = start, -1
    pieces[piece, P_BATCH] = 1
    if meta[slot, S_TAIL] >= 0 and offset < pieces[meta[slot, S_TAIL], P_OFF]:
        meta[slot, S_UNSORTED] = 1
    if meta[slot, S_TAIL] >= 0:
        pieces[meta[slot, S_TAIL], P_NEXT] = piece
    else:
        meta[slot, S_HEAD] = piece
    meta[slot, S_TAIL] = piece
    meta[slot, S_PIECES] += 1
    meta[slot, S_HELD] += length
    glob[G_HELD] += length


@njit(inline="always")
def _slot_pieces(meta: np.ndarray, pieces: np.ndarray, slot: int) -> np.ndarray:
    """The slot's piece rows in arrival order."""
    out = np.empty(meta[slot, S_PIECES], dtype=np.int64)
    piece = meta[slot, S_HEAD]
    for k in range(out.size):
        out[k] = piece
        piece = pieces[piece, P_NEXT]
    return out


@njit(inline="always")
def _complete(meta: np.ndarray, pieces: np.ndarray, slot: int) -> bool:
    """All data from 0 to the size is in (and the first fragment's header). Cheap tests
    first: the size is known only once the last fragment came, and the pieces must hold at
    least that many bytes."""
    size = meta[slot, S_SIZE]
    if size < 0 or meta[slot, S_HDR_LEN] < 0 or meta[slot, S_HELD] < size:
        return False
    held = _slot_pieces(meta, pieces, slot)
    if meta[slot, S_UNSORTED]:
        held = held[np.argsort(pieces[held, P_OFF], kind="mergesort")]
    covered = 0
    for piece in held:
        if pieces[piece, P_OFF] > covered:
            return False
        covered = max(covered, pieces[piece, P_OFF] + pieces[piece, P_LEN])
        if covered >= size:
            return True
    return covered >= size


# --- a completed datagram: the rebuilt packet ----------------------------------------------

@njit
def _rebuild(meta: np.ndarray, keys: np.ndarray, header: np.ndarray, pieces: np.ndarray,
             arena: np.ndarray, data: np.ndarray, slot: int, out: np.ndarray, at: int) -> int:
    """Write the whole IP packet at out[at:]; its length. The first fragment's header with
    the datagram's length, MF and offset cleared (IPv4; checksum recomputed); for IPv6 the
    base header with the fragment's next header. The payload: later pieces first, earlier
    ones over them (the first-arrived bytes win)."""
    head, size = meta[slot, S_HDR_LEN], meta[slot, S_SIZE]
    _copy(out, at, header[slot], 0, head)
    body = at + head
    held = _slot_pieces(meta, pieces, slot)
    # later pieces first (without overlaps the order does not matter: arrival order)
    last = held.size - 1 if meta[slot, S_OVERLAPPED] else 0
    for k in range(held.size):
        piece = held[abs(last - k)]
        offset, source = pieces[piece, P_OFF], pieces[piece, P_POS]
        length = min(pieces[piece, P_LEN], max(size - offset, 0))
        if pieces[piece, P_BATCH]:
            _copy(out, body + offset, data, source, length)
        else:
            _copy(out, body + offset, arena, source, length)
    version = np.int64(keys[slot, 4] >> np.uint64(56))
    if version == 4:
        total = head + size
        out[at + 2], out[at + 3] = total >> 8, total & 0xFF
        out[at + 6] &= 0x40  # keep DF only
        out[at + 7] = 0
        out[at + 10] = out[at + 11] = 0
        checksum = 0
        for j in range(0, head - 1, 2):
            checksum += (np.int64(out[at + j]) << 8) | np.int64(out[at + j + 1])
        while checksum >> 16:
            checksum = (checksum & 0xFFFF) + (checksum >> 16)
        checksum = ~checksum & 0xFFFF
        out[at + 10], out[at + 11] = checksum >> 8, checksum & 0xFF
    else:
        out[at + 4], out[at + 5] = size >> 8, size & 0xFF
        out[at + 6] = (keys[slot, 4] >> np.uint64(32)) & np.uint64(0xFF)  # the protocol
    return head + size


@njit
def _finish(meta: np.ndarray, keys: np.ndarray, header: np.ndarray, index: np.ndarray,
            pieces: np.ndarray, arena: np.ndarray, data: np.ndarray, free_slots: np.ndarray,
            glob: np.ndarray, slot: int, fragment: int, done: np.ndarray,
            out: np.ndarray) -> None:
    """A complete datagram leaves the pending ones; its packet is added to the batch's
    output unless too large (a first fragment with a longer IPv4 header than the fragment
    checked)."""
    version = np.int64(keys[slot, 4] >> np.uint64(56))
    limit = MAX_DATAGRAM + (40 if version == 6 else 0)
    if meta[slot, S_HDR_LEN] + meta[slot, S_SIZE] > limit:
        glob[W_LARGE] += 1
    else:
        at = glob[G_OUT_END]
        glob[G_OUT_END] += _rebuild(meta, keys, header, pieces, arena, data, slot, out, at)
        k = glob[G_DONE]
        done[k, 0], done[k, 1] = fragment, at
        done[k, 2], done[k, 3] = meta[slot, S_VLAN], meta[slot, S_TUNNEL]
        glob[G_DONE] += 1
        glob[N_DATAGRAMS] += 1
    _remove(meta, index, pieces, free_slots, glob, slot)


# --- flow attribution of later fragments ---------------------------------------------------

@njit(inline="always")
def _give_flow(meta: np.ndarray, flow_ip: np.ndarray, slot: int, fragment: int,
               attr_ip: np.ndarray, attr: np.ndarray) -> None:
    """Fragment `fragment` takes its datagram's first fragment's flow key."""
    for j in range(4):
        attr_ip[fragment, j] = flow_ip[slot, j]
    attr[fragment, 0] = 1
    attr[fragment, 1] = meta[slot, S_TRANSPORT]
    attr[fragment, 2] = meta[slot, S_SPORT]
    attr[fragment, 3] = meta[slot, S_DPORT]
    attr[fragment, 4] = meta[slot, S_FLOW_VLAN]
    attr[fragment, 5] = meta[slot, S_FLOW_SEGMENT]


@njit(inline="always")
def _take_first(meta: np.ndarray, flow_ip: np.ndarray, header: np.ndarray, slot: int,
                i: int, cols: np.ndarray, fips: np.ndarray, data: np.ndarray) -> None:
    """The first offset-0 fragment of a datagram: its IP header and flow key are kept
    (the later fragments that came before it take that flow: the caller)."""
    head_at = cols[i, I_HEAD_AT]
    end = cols[i, I_START] if cols[i, I_VERSION] == 4 else head_at + 40
    length = max(min(end, data.size) - head_at, 0)
    length = min(length, HEADER_MAX)
    _copy(header[slot], 0, data, head_at, length)
    meta[slot, S_HDR_LEN] = length
    for j in range(4):
        flow_ip[slot, j] = fips[i, j]
    meta[slot, S_TRANSPORT] = cols[i, I_TRANSPORT]
    meta[slot, S_SPORT], meta[slot, S_DPORT] = cols[i, I_SPORT], cols[i, I_DPORT]
    meta[slot, S_FLOW_VLAN] = cols[i, I_FLOW_VLAN]
    meta[slot, S_FLOW_SEGMENT] = cols[i, I_FLOW_SEGMENT]
    meta[slot, S_HAS_FLOW] = 1


# --- one batch's fragments, in arrival order -----------------------------------------------

@njit
def _take_fragments(state: tuple, acct: tuple, first: int, cols: np.ndarray,
                    fkeys: np.ndarray, fips: np.ndarray, data: np.ndarray,
                    hashes: np.ndarray, done: np.ndarray, out: np.ndarray) -> tuple[int, int]:
    """Fragments first.. of a batch into the pending datagrams: (DONE, n) or (NEED_*, i):
    fragment i needs a larger array first (nothing of it is done yet; call again from i).
    Completed datagrams go to `done` (fragment, packet start in `out`, vlan, tunnel); later
    fragments that get their first fragment's flow key are marked in `attr` (+ `attr_ip`),
    those that wait for it in `place` (see "waiting rows")."""
    meta, keys, flow_ip, header, index, free_slots, pieces, arena, glob = state
    place, wait, _store_next, _rel, _rel_ip, _runmax, where, attr_ip, attr = acct
    n = cols.shape[0]
    for i in range(first, n):
        hashes[i] = _hash(fkeys[i])
    for i in range(first, n):
        # a fragment's packet (~100 MB batches: past the caches) and its index position are
        # requested some fragments ahead, so that those waits overlap
        if i + AHEAD < n:
            prefetch(data, cols[i + AHEAD, I_HEAD_AT])
            prefetch(index, hashes[i + AHEAD] & (index.size - 1))
        start, end, offset = cols[i, I_START], cols[i, I_END], cols[i, I_OFFSET]
        if glob[G_NDROPS]:  # (before anything returns or reads a list)
            _apply_drops(meta, flow_ip, glob, acct)
        if glob[G_PIECE_FREE] < 0:
            return NEED_PIECES, i
        if glob[G_OUT_END] + OUT_ROOM > out.size:
            return NEED_OUT, i
        row = where[W_FIXED] if where[W_FIXED] >= 0 else cols[i, I_ROW]
        _expire(meta, index, pieces, free_slots, glob, cols[i, I_TS], row)
        key = fkeys[i]
        h = hashes[i]
        slot, at = _find(index, keys, meta, key, h)
        if slot < 0:
            slot = _open(meta, keys, index, pieces, free_slots, glob, row, key, h, at,
                         cols[i, I_TS], cols[i, I_VLAN], cols[i, I_TUNNEL])
        meta[slot, S_FRAGS] += 1
        if offset == 0:
            if meta[slot, S_HDR_LEN] < 0:
                _take_first(meta, flow_ip, header, slot, i, cols, fips, data)
                if meta[slot, S_NWAIT]:  # those that came before it: counted before it
                    _release(meta, flow_ip, glob, acct, slot, row, True)
        elif meta[slot, S_HAS_FLOW]:  # (also of a dropped datagram: wire accounting)
            _give_flow(meta, flow_ip, slot, i, attr_ip, attr)
        elif where[W_COUNT] and meta[slot, S_NWAIT] < MAX_FRAGMENTS \
                and glob[G_NWAIT] < glob[G_MAX_WAIT]:  # it waits for its first fragment
            wait[i] = meta[slot, S_WAIT]
            meta[slot, S_WAIT] = i
            place[i] = HELD
            meta[slot, S_NWAIT] += 1
            glob[G_NWAIT] += 1
            glob[G_BATCH_WAIT] += 1
        if meta[slot, S_BAD]:
            continue
        header_len = start - cols[i, I_HEAD_AT] if cols[i, I_VERSION] == 4 else 0
        extent = offset + cols[i, I_CLAIMED] - start
        if extent + header_len > MAX_DATAGRAM or meta[slot, S_PIECES] >= MAX_FRAGMENTS:
            # too large, or too many fragments: the key stays (its other fragments are
            # dropped too), the data goes
            glob[W_LARGE if extent + header_len > MAX_DATAGRAM else W_LIMIT] += 1
            meta[slot, S_BAD] = 1
            _free_pieces(meta, pieces, glob, slot)
            continue
        found = _overlap(meta, pieces, arena, slot, offset, data, start, end)
        if found:
            meta[slot, S_OVERLAPPED] = 1
            glob[N_OVERLAPS] += 1
            glob[W_OVERLAP if found == 1 else W_INCONSISTENCY] += 1
        _add_piece(meta, pieces, glob, slot, offset, start, end)
        if not cols[i, I_MORE]:
            meta[slot, S_SIZE] = max(meta[slot, S_SIZE], extent)
        if _complete(meta, pieces, slot):
            _finish(meta, keys, header, index, pieces, arena, data, free_slots, glob, slot,
                    i, done, out)
        else:
            _shed_bytes(meta, index, pieces, free_slots, glob, slot, row)
    if glob[G_NDROPS]:
        _apply_drops(meta, flow_ip, glob, acct)
    return DONE, n


@njit
def _park(state: tuple, acct: tuple, parked: np.ndarray) -> None:
    """End of a batch: its fragments still waiting move to store rows (from the free
    list; Python made room), listed in `parked` as (fragment, store row) for Python to
    copy their columns."""
    meta, _keys, _flow_ip, _header, _index, _free_slots, _pieces, _arena, glob = state
    wait, store_next = acct[1], acct[2]
    k = 0
    slot = glob[G_HEAD]
    while slot >= 0 and k < parked.shape[0]:
        if meta[slot, S_NWAIT]:
            entry = meta[slot, S_WAIT]
            kept = -1
            while entry != -1:
                if entry >= 0:
                    after = wait[entry]
                    row = glob[G_STORE_FREE]
                    glob[G_STORE_FREE] = store_next[row]
                    glob[G_STORE_NFREE] -= 1
                    parked[k, 0], parked[k, 1] = entry, row
                    k += 1
                    entry = -row - 2
                else:
                    after = store_next[-entry - 2]
                store_next[-entry - 2] = kept
                kept = entry
                entry = after
            meta[slot, S_WAIT] = kept
        slot = meta[slot, S_NEXT]
    glob[G_BATCH_WAIT] = 0


@njit
def _release_all(state: tuple, acct: tuple) -> None:
    """End of input: every waiting row is counted (its own key: no first fragment came)."""
    meta, _keys, flow_ip, _header, _index, _free_slots, _pieces, _arena, glob = state
    slot = glob[G_HEAD]
    while slot >= 0:
        if meta[slot, S_NWAIT]:
            _release(meta, flow_ip, glob, acct, slot, 0, False)
        slot = meta[slot, S_NEXT]


@njit
def _settle(state: tuple, data: np.ndarray) -> int:
    """End of a batch: copy the bytes of the pending datagrams' pieces still in the batch's
    buffer into the arena. 0 when done, else the length of a piece that needs a larger
    arena first (call again: settled pieces are skipped)."""
    meta, _keys, _flow_ip, _header, _index, _free_slots, pieces, arena, glob = state
    slot = glob[G_HEAD]
    while slot >= 0:
        piece = meta[slot, S_HEAD]
        while piece >= 0:
            if pieces[piece, P_BATCH]:
                length = pieces[piece, P_LEN]
                if not _arena_room(meta, pieces, arena, glob, length):
                    return max(length, 1)
                at = glob[G_ARENA_END]
                _copy(arena, at, data, pieces[piece, P_POS], length)
                glob[G_ARENA_END] = at + length
                pieces[piece, P_POS], pieces[piece, P_BATCH] = at, 0
            piece = pieces[piece, P_NEXT]
        slot = meta[slot, S_NEXT]
    return 0


@njit
def _expire_all(state: tuple, acct: tuple, now: int) -> None:
    """_expire for the end of a batch."""
    meta, _keys, flow_ip, _header, index, free_slots, pieces, _arena, glob = state
    where = acct[6]
    _expire(meta, index, pieces, free_slots, glob, now,
            where[W_FIXED] if where[W_FIXED] >= 0 else where[W_ROW])
    if glob[G_NDROPS]:
        _apply_drops(meta, flow_ip, glob, acct)


class _State:
    """The Defragmenter's arrays (see the layout above); grown by Python when a kernel asks."""

    def __init__(self, config: DefragConfig, timeout_ns: int) -> None:
        slots = config.max_datagrams
        # rows of the slots, then the drop rows (at most every pending datagram is
        # dropped at one fragment; in `meta`, not an array of their own: one more array
        # handed to the per-fragment functions costs its reference counts every time)
        self.meta = np.zeros((2 * slots + 1, SLOT_FIELDS), dtype=np.int64)
        self.keys = np.zeros((slots, KEY_WORDS), dtype=np.uint64)
        self.flow_ip = np.zeros((slots, 4), dtype=np.uint64)
        self.header = np.zeros((slots, HEADER_MAX), dtype=np.uint8)
        # at most half full: probe runs stay short
        self.index = np.zeros(1 << max(4, (2 * slots - 1).bit_length()), dtype=np.int64)
        self.free_slots = np.arange(slots - 1, -1, -1, dtype=np.int64)
        self.pieces = self._free_list(np.zeros((0, PIECE_FIELDS), dtype=np.int64), 1024, -1)
        self.arena = np.empty(1 << 20, dtype=np.uint8)
        self.glob = np.zeros(GLOB_FIELDS, dtype=np.int64)
        self.glob[[G_HEAD, G_TAIL]] = -1
        self.glob[G_SLOT_FREE] = slots
        self.glob[G_MAX_DATAGRAMS] = slots
        self.glob[G_MAX_BYTES] = config.max_bytes
        self.glob[G_TIMEOUT] = timeout_ns
        self.glob[G_MAX_WAIT] = WAIT_PER_DATAGRAM * slots
        self.glob[G_STORE_FREE] = -1
        self.store = _Store()

    @staticmethod
    def _free_list(old: np.ndarray, rows: int, free: int) -> np.ndarray:
        """`old` with `rows` more piece rows, linked in front of the free list `free`."""
        grown = np.empty((len(old) + rows, PIECE_FIELDS), dtype=np.int64)
        grown[:len(old)] = old
        grown[len(old):, P_NEXT] = np.arange(len(old) + 1, len(grown) + 1)
        grown[-1, P_NEXT] = free
        return grown

    def arrays(self) -> tuple:
        return (self.meta, self.keys, self.flow_ip, self.header, self.index, self.free_slots,
                self.pieces, self.arena, self.glob)

    def grow_pieces(self) -> None:
        free = int(self.glob[G_PIECE_FREE]) if len(self.pieces) else -1
        self.glob[G_PIECE_FREE] = len(self.pieces)
        self.pieces = self._free_list(self.pieces, len(self.pieces), free)

    def grow_arena(self, length: int) -> None:
        """Half again what is held (just compacted) and the next fragment: the next
        compaction is a third of the arena away."""
        end = int(self.glob[G_ARENA_END])
        grown = np.empty(max(3 * (end + length), 1 << 20), dtype=np.uint8)
        grown[:end] = self.arena[:end]
        self.arena = grown


# DecodedPackets' per-row columns: all but the buffer, the weird counts and the fragments
_ROW_COLUMNS = tuple(f.name for f in dataclasses.fields(DecodedPackets)
                     if f.name not in ("data", "weird", "fragments"))
_NO_ROWS = np.zeros(0, dtype=np.int64)


class _Store:
    """The waiting rows parked at a batch's end ("waiting rows" above): their columns as
    decoded (ports 0), arrival numbers (`seq`: the order they are counted in), the kernel's
    links (free rows linked from G_STORE_FREE) and the releases of a batch (`rel`, `rel_ip`:
    at most one per store row). Grown by Python; rows kept up to the waiting bound."""

    def __init__(self) -> None:
        self.columns: dict[str, np.ndarray] = {}
        self.seq = _NO_ROWS
        self.next = _NO_ROWS
        self.rel = np.zeros((0, REL_FIELDS), dtype=np.int64)
        self.rel_ip = np.zeros((0, 4), dtype=np.uint64)

    def grow(self, glob: np.ndarray, need: int, like: DecodedPackets) -> None:
        """At least `need` more free rows (linked in front of the free list); doubling,
        up to the waiting bound."""
        old = len(self.next)
        rows = max(min(2 * old, int(glob[G_MAX_WAIT])), old + need, 1024)

        def grown(array: np.ndarray, shape: tuple, dtype: np.dtype) -> np.ndarray:
            out = np.zeros(shape, dtype=dtype)
            out[:len(array)] = array
            return out

        for name in _ROW_COLUMNS:
            column = getattr(like, name)
            self.columns[name] = grown(self.columns.get(name, column[:0]),
                                       (rows,) + column.shape[1:], column.dtype)
        self.seq = grown(self.seq, (rows,), np.int64)
        self.rel = grown(self.rel, (rows, REL_FIELDS), np.int64)
        self.rel_ip = grown(self.rel_ip, (rows, 4), np.uint64)
        self.next = grown(self.next, (rows,), np.int64)
        self.next[old:] = np.arange(old + 1, rows + 1)
        self.next[-1] = glob[G_STORE_FREE]
        glob[G_STORE_FREE] = old
        glob[G_STORE_NFREE] += rows - old

    def put(self, parked: np.ndarray, packets: DecodedPackets, rows: np.ndarray,
            seq_base: int) -> None:
        """Copy the parked fragments' rows ((fragment, store row) pairs) into the store."""
        at, taken = parked[:, 1], rows[parked[:, 0]]
        for name in _ROW_COLUMNS:
            self.columns[name][at] = getattr(packets, name)[taken]
        self.columns["payload_offset"][at] = 0  # (their batch's buffer is gone)
        self.seq[at] = seq_base + parked[:, 0]

    def released(self, count: int, like: DecodedPackets | None
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The first `count` releases: their positions and rows (columns like `like`'s),
        those given a flow key with it."""
        rel = self.rel[:count]
        ids = rel[:, R_STORE]
        if not count and like is not None:
            return rel[:, R_POS], {name: getattr(like, name)[:0] for name in _ROW_COLUMNS}
        columns = {name: self.columns[name][ids] for name in _ROW_COLUMNS}
        given = np.flatnonzero(rel[:, R_GIVEN])
        if given.size:
            for name, words in (("src_ip", self.rel_ip[given, :2]),
                                ("dst_ip", self.rel_ip[given, 2:])):
                columns[name].view(np.uint64).reshape(-1, 2)[given] = words
            for name, field in (("transport", R_TRANSPORT), ("src_port", R_SPORT),
                                ("dst_port", R_DPORT), ("vlan", R_VLAN),
                                ("tunnel_id", R_SEGMENT)):
                columns[name][given] = rel[given, field].astype(columns[name].dtype)
        return rel[:, R_POS].copy(), columns

    def free(self, glob: np.ndarray, count: int) -> None:
        """The store rows of the first `count` releases back to the free list."""
        ids = self.rel[:count, R_STORE]
        if ids.size:
            self.next[ids] = np.append(ids[1:], glob[G_STORE_FREE])
            glob[G_STORE_FREE] = ids[0]
            glob[G_STORE_NFREE] += ids.size


class _Scratch:
    """A batch's work arrays, kept from batch to batch: fresh ones for 64k fragments are
    ~20 MB of new pages a batch, whose faults cost a flood ~50-90 ns per fragment."""

    def __init__(self) -> None:
        self.rows = 0
        self.arrays: tuple = ()

    def take(self, n: int) -> tuple:
        """(cols, key words, flow addresses, hashes, attr_ip, attr, wait, done, place)
        for n fragments (views of the first n rows)."""
        if n > self.rows:
            rows = self.rows = max(n, 2 * self.rows, 1024)
            self.arrays = (np.empty((rows, INPUT_FIELDS), dtype=np.int64),
                           np.empty((rows, KEY_WORDS), dtype=np.uint64),
                           np.empty((rows, 4), dtype=np.uint64),
                           np.empty(rows, dtype=np.int64),
                           np.empty((rows, 4), dtype=np.uint64),
                           np.empty((rows, 6), dtype=np.int64),
                           np.empty(rows, dtype=np.int64),
                           np.empty((rows, 4), dtype=np.int64),
                           np.empty(rows, dtype=np.int64))
        return tuple(array[:n] for array in self.arrays)


class _Completed:
    """The datagrams a kernel pass completed: rebuilt packets in `out`, and per datagram
    (the fragment that completed it, packet start, vlan, tunnel) in `done`."""

    def __init__(self, done: np.ndarray, out: np.ndarray) -> None:
        self.done = done
        self.out = out

    def grow_out(self) -> None:
        grown = np.empty(2 * len(self.out), dtype=np.uint8)
        grown[:len(self.out)] = self.out
        self.out = grown


class _Holder:
    array: np.ndarray


def _unshared_count() -> int:
    """sys.getrefcount of an array only an attribute refers to (the interpreter's own
    counting of the call's argument included, whatever the Python version)."""
    holder = _Holder()
    holder.array = np.empty(1, dtype=np.uint8)
    return sys.getrefcount(holder.array)


_UNSHARED = _unshared_count()


class Defragmenter:
    """Reassembles the IP fragments of a sensor's batches (one per Sensor: its state spans
    batches). `stats`: datagrams (reassembled), fragments (taken in), timeouts, evicted
    (datagrams dropped), overlaps; weird counts are collected for the sensor in `weird`."""

    def __init__(self, config: DefragConfig | None = None,
                 tunnels: TunnelConfig = DEFAULT_TUNNELS) -> None:
        self.config = config or DefragConfig()
        self.tunnels = tunnels
        self.timeout_ns = int(self.config.timeout_s * NS)
        self.stats: Counter[str] = Counter()
        self.weird: Counter[str] = Counter()
        self._state: _State | None = None  # made at the first fragment
        self._scratch = _Scratch()
        self._spare_out: np.ndarray | None = None  # the last rebuilt packets' buffer
        self._clock = np.iinfo(np.int64).min  # see _runmax

    @property
    def pending(self) -> int:
        """Datagrams waiting for fragments."""
        return int(self._state.glob[G_COUNT]) if self._state is not None else 0

    @property
    def waiting(self) -> int:
        """Later fragments not yet counted by the flow table: they wait for their
        datagram's first fragment (or its timeout)."""
        return int(self._state.glob[G_NWAIT]) if self._state is not None else 0

    @property
    def held_bytes(self) -> int:
        """Fragment data held for them."""
        return int(self._state.glob[G_HELD]) if self._state is not None else 0

    def counts(self) -> dict[str, int]:
        """The stats as a plain dict (health documents, run reports)."""
        keys = ("datagrams", "fragments", "timeouts", "evicted", "overlaps")
        return {key: int(self.stats.get(key, 0)) for key in keys}

    def process(self, packets: DecodedPackets
                ) -> tuple[DecodedPackets, DecodedPackets, list[DecodedPackets]]:
        """(the analyzers' view of the batch, the flow table's view, the reassembled
        datagrams decoded). Off, or a batch without fragments (and no waiting rows
        released): the batch itself twice. The flow table's view may leave out later
        fragments that wait for their first one and hold earlier batches' ones that stop
        waiting (in their place: "waiting rows"); `flush` hands over those left at the end."""
        if not self.config.enabled:
            return packets, packets, []
        if packets.fragments is None and not (self.pending and len(packets)):
            return packets, packets, []
        if self._state is None:
            self._state = _State(self.config, self.timeout_ns)
        self._state.glob[G_REL] = 0  # (the releases of this batch)
        n = len(packets)
        if packets.fragments is None:  # timeouts only; the clock only if rows wait
            runmax = self._runmax(packets.ts_ns) if self._state.glob[G_NWAIT] else _NO_ROWS
            self._expire(int(packets.ts_ns[-1]), runmax, n)
            return packets, self._released(packets, None), []
        runmax = self._runmax(packets.ts_ns)
        analyzed, (base, moves), done = self._take(packets, runmax)
        datagrams = []
        source = packets
        for _ in range(MAX_NESTING):  # a reassembled tunnel packet may hold fragments
            if done is None:
                break
            source = decoded = self._decode(done, source)
            done = None
            if decoded.fragments is not None:  # (its releases go at the batch's end)
                decoded, _, done = self._take(decoded, _NO_ROWS, fixed=n)
            datagrams.append(decoded)
        self._expire(int(packets.ts_ns[-1]), runmax, n)
        return analyzed, self._released(base, moves), datagrams

    def flush(self) -> DecodedPackets | None:
        """End of input: the later fragments still waiting for their first fragment, as
        the ports-0 packets they are (arrival order), for the flow table; None if none."""
        state = self._state
        if state is None or not state.glob[G_NWAIT]:
            return None
        state.glob[G_REL] = 0
        _release_all(state.arrays(), self._acct(_NO_ROWS, np.array([0, 0, 0])))
        count = int(state.glob[G_REL])
        _, columns = state.store.released(count, None)
        order = np.argsort(state.store.seq[state.store.rel[:count, R_STORE]], kind="stable")
        state.store.free(state.glob, count)
        return DecodedPackets(**{name: column[order] for name, column in columns.items()},
                              data=np.zeros(0, dtype=np.uint8))

    def _runmax(self, ts: np.ndarray) -> np.ndarray:
        """The clock at each row (running maximum of the times, continued from the last
        batch that needed it): where a timed-out datagram's waiting rows go."""
        clock = np.maximum.accumulate(np.asarray(ts, dtype=np.int64))
        np.maximum(clock, self._clock, out=clock)
        if clock.size:
            self._clock = int(clock[-1])
        return clock

    def _acct(self, runmax: np.ndarray, where: np.ndarray, work: tuple | None = None
              ) -> tuple:
        """The kernels' flow accounting arrays (see "waiting rows"); without a batch's
        fragments (`work`), empty ones: only store rows are then in the lists."""
        store = self._state.store
        if work is None:
            place = wait = _NO_ROWS
            attr_ip, attr = np.zeros((0, 4), dtype=np.uint64), np.zeros((0, 6), dtype=np.int64)
        else:
            attr_ip, attr, wait, place = work[4], work[5], work[6], work[8]
        return (place, wait, store.next, store.rel, store.rel_ip, runmax, where, attr_ip,
                attr)

    def _expire(self, now: int, runmax: np.ndarray, n: int) -> None:
        assert self._state is not None
        _expire_all(self._state.arrays(), self._acct(runmax, np.array([n, -1, 0])), now)
        self._harvest()

    def _released(self, base: DecodedPackets, moves: tuple | None) -> DecodedPackets:
        """The flow table's view: `base` without its rows that wait past its end, its rows
        released this batch moved before the rows they go before, and the store rows
        released this batch inserted there (in arrival order where they meet)."""
        state = self._state
        count = int(state.glob[G_REL])
        if moves is None and not count:
            return base
        n = len(base)
        position = np.arange(n, dtype=np.int64)
        after = np.ones(n, dtype=np.int8)  # a row's own place: after the rows moved before it
        seq = np.zeros(n, dtype=np.int64)
        keep = np.ones(n, dtype=bool)
        if moves is not None:
            place, rows, seq_base = moves
            keep[rows[place == HELD]] = False
            moved = np.flatnonzero(place >= 0)
            position[rows[moved]] = place[moved]
            after[rows[moved]] = 0
            seq[rows[moved]] = seq_base + moved
        kept = np.flatnonzero(keep)
        inserted_at, inserted = state.store.released(count, base)
        order = np.lexsort((
            np.concatenate([seq[kept], state.store.seq[state.store.rel[:count, R_STORE]]]),
            np.concatenate([after[kept], np.zeros(count, dtype=np.int8)]),
            np.concatenate([position[kept], inserted_at])))
        state.store.free(state.glob, count)
        changed = {name: np.concatenate([getattr(base, name)[kept], inserted[name]])[order]
                   for name in _ROW_COLUMNS}
        return dataclasses.replace(base, **changed, fragments=None)

    def _harvest(self) -> None:
        """The kernels' counters into stats / weird (only those that moved)."""
        glob = self._state.glob
        for at, (where, name) in COUNTERS.items():
            if glob[at]:
                getattr(self, where)[name] += int(glob[at])
                glob[at] = 0

    # -- one batch's fragments, in arrival order --

    def _take(self, packets: DecodedPackets, runmax: np.ndarray, fixed: int = -1
              ) -> tuple[DecodedPackets, tuple, tuple | None]:
        """The analyzers' view, the flow table's (the batch with its in-batch attributions,
        and its rows' moves for _released or None), and the completed datagrams
        ((fragment row, start, vlan, tunnel) rows, packet bytes, their tunnel segments) or
        None. `fixed` >= 0: a
        round of reassembled packets (not counted by the flow table: none waits; releases
        go before that row of the captured batch)."""
        frag = packets.fragments
        assert frag is not None
        state = self._state
        n = len(frag)
        work = self._scratch.take(n)
        cols, fkeys, fips, hashes, attr_ip, attr, wait, done_rows, place = work
        _columns(packets, frag, cols, fkeys, fips)
        data = np.ascontiguousarray(packets.data)
        seq_base = self.stats["fragments"]  # (arrival numbers of this batch's fragments)
        self.stats["fragments"] += n
        attr[:, 0] = 0  # (the other columns are read only where this flag is set)
        place[:] = -1
        acct = self._acct(runmax, np.array([0, fixed, int(fixed < 0)]), work)
        state.glob[[G_DONE, G_OUT_END]] = 0
        need = int((frag.data_end - frag.data_start).sum()) + n * HEADER_MAX + OUT_ROOM
        completed = _Completed(done_rows, self._out_buffer(need))
        first = 0
        while True:  # until done: grow what the kernel ran out of, then go on from there
            status, first = _take_fragments(state.arrays(), acct, first, cols, fkeys, fips,
                                            data, hashes, completed.done, completed.out)
            if status == DONE:
                break
            if status == NEED_PIECES:
                state.grow_pieces()
            else:
                completed.grow_out()
        self._spare_out = completed.out
        while need := _settle(state.arrays(), data):  # the pending pieces' bytes kept
            state.grow_arena(need)
        self._harvest()
        waiting = int(state.glob[G_BATCH_WAIT])
        if waiting:  # this batch's fragments still waiting: into the store
            if state.glob[G_STORE_NFREE] < waiting:
                state.store.grow(state.glob, waiting, packets)
            parked = np.empty((waiting, 2), dtype=np.int64)
            _park(state.arrays(), self._acct(runmax, acct[6], work), parked)
            state.store.put(parked, packets, frag.row, seq_base)
        given = attr[:, 0] == 1
        counted = self._attributed(packets, frag.row[given], attr_ip[given], attr[given])
        moved = fixed < 0 and bool((place != -1).any())
        moves = (place.copy(), frag.row, seq_base) if moved else None
        count = int(state.glob[G_DONE])
        done = None
        if count:
            rows = completed.done[:count].copy()
            segment = frag.tunnel_id[rows[:, 0]]  # (the datagram's: a key word)
            rows[:, 0] = frag.row[rows[:, 0]]
            done = rows, completed.out[:int(state.glob[G_OUT_END])], segment
        return self._hidden(packets), (counted, moves), done

    def _out_buffer(self, size: int) -> np.ndarray:
        """A buffer for a batch's rebuilt packets: the last one again when nothing refers
        to it any more (the analyzers let go of those packets; a second round's input
        is still referred to), so that its pages fault once, not every batch (a page
        fault costs ~0.3 us per KB written here: most of a completed datagram's cost)."""
        if self._spare_out is not None and len(self._spare_out) >= size \
                and sys.getrefcount(self._spare_out) == _UNSHARED:  # (no local name for it)
            return self._spare_out
        return np.empty(size, dtype=np.uint8)

    # -- the views and the reassembled batch --

    @staticmethod
    def _hidden(packets: DecodedPackets) -> DecodedPackets:
        """The batch with its fragment rows' transport, ports and payload zeroed: analyzers
        see a fragmented datagram only as its reassembled packet."""
        assert packets.fragments is not None
        rows = packets.fragments.row
        changed = {}
        for name in _HIDDEN:
            column = np.array(getattr(packets, name))
            column[rows] = 0
            changed[name] = column
        return dataclasses.replace(packets, **changed)

    @staticmethod
    def _attributed(packets: DecodedPackets, rows: np.ndarray, ips: np.ndarray,
                    attr: np.ndarray) -> DecodedPackets:
        """The batch with later fragments given their first fragment's flow key."""
        if not rows.size:
            return packets
        changed = {}
        for name, words in (("src_ip", ips[:, :2]), ("dst_ip", ips[:, 2:])):
            column = np.array(getattr(packets, name))
            column.view(np.uint64).reshape(-1, 2)[rows] = words
            changed[name] = column
        for k, name in enumerate(("transport", "src_port", "dst_port", "vlan", "tunnel_id"),
                                 start=1):
            column = np.array(getattr(packets, name))
            column[rows] = attr[:, k].astype(column.dtype)
            changed[name] = column
        return dataclasses.replace(packets, **changed)

    def _decode(self, done: tuple[np.ndarray, np.ndarray, np.ndarray],
                source: DecodedPackets) -> DecodedPackets:
        """The completed datagrams as a raw-IP batch (its own buffer; each at the time of
        the fragment that completed it, `source`'s row), decoded; rows not opened as
        tunnels here take the VLAN and the tunnel kind their fragments came in; the segment
        their fragments came in goes around the one opened here (if any)."""
        rows, out, segment = done
        lengths = np.diff(np.append(rows[:, 1], len(out)))
        batch = PacketBatch(
            data=out, offset=rows[:, 1].copy(), caplen=lengths.astype(np.uint32),
            wirelen=lengths.astype(np.uint32), ts_ns=source.ts_ns[rows[:, 0]],
            linktype=np.full(len(rows), LINKTYPE_RAW, dtype=np.uint16),
            interface=source.interface[rows[:, 0]])
        decoded = decode(batch, self.tunnels)
        vlan, tunnel = rows[:, 2].astype(np.uint16), rows[:, 3].astype(np.uint8)
        plain = decoded.tunnel == 0
        decoded.vlan = np.where(plain, vlan, decoded.vlan).astype(np.uint16)
        decoded.tunnel = np.where(tunnel != 0, tunnel, decoded.tunnel).astype(np.uint8)
        if segment.any():
            decoded.tunnel_id = np.where(segment == 0, decoded.tunnel_id,
                                         nest_segments(segment, decoded.tunnel_id))
        return decoded


def _words(addresses: np.ndarray) -> np.ndarray:
    """An IP_DTYPE column as (n, 2) uint64 words (the 16 bytes as they are)."""
    return np.ascontiguousarray(addresses).view(np.uint64).reshape(-1, 2)


def _columns(packets: DecodedPackets, frag: FragmentRows, cols: np.ndarray,
             fkeys: np.ndarray, fips: np.ndarray) -> None:
    """The kernel's inputs, column-wise, into the arrays given: the fragment columns (+ time
    and the row's flow key columns) as int64 rows, the key words (src, dst,
    version|vlan|protocol|ident) and the rows' flow addresses."""
    rows = frag.row
    for at, column in ((I_ROW, rows), (I_TS, packets.ts_ns[rows]), (I_VERSION, frag.version),
                       (I_PROTOCOL, frag.protocol), (I_VLAN, frag.vlan),
                       (I_OFFSET, frag.frag_offset), (I_MORE, frag.more),
                       (I_HEAD_AT, frag.header_offset), (I_START, frag.data_start),
                       (I_END, frag.data_end), (I_CLAIMED, frag.claimed_end),
                       (I_TUNNEL, frag.tunnel), (I_TRANSPORT, packets.transport[rows]),
                       (I_SPORT, packets.src_port[rows]), (I_DPORT, packets.dst_port[rows]),
                       (I_FLOW_VLAN, packets.vlan[rows]),
                       (I_FLOW_SEGMENT, packets.tunnel_id[rows].view(np.int64))):
        cols[:, at] = column
    fkeys[:, :2], fkeys[:, 2:4] = _words(frag.src_ip), _words(frag.dst_ip)
    fkeys[:, 4] = ((frag.version.astype(np.uint64) << np.uint64(56))
                   | (frag.vlan.astype(np.uint64) << np.uint64(40))
                   | (frag.protocol.astype(np.uint64) << np.uint64(32))
                   | frag.ident.astype(np.uint64))
    fkeys[:, KEY_SEGMENT] = frag.tunnel_id
    fips[:, :2], fips[:, 2:] = _words(packets.src_ip[rows]), _words(packets.dst_ip[rows])
