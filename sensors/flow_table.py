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
ufunc.reduceat. The table is struct-of-arrays numpy columns plus a dict key bytes -> slot;
Python loops run only over the unique keys of a batch (dict look-ups) and over close/reuse
refinement rounds (one per port reuse of the same key inside one batch).
"""

from __future__ import annotations

import numpy as np

from pipeline.schema import FLOW, EventBatch, concat_batches
from sensors.community_id import PORT_PROTOS, community_id_column, icmp_port_equivalents
from sensors.packets import IP_DTYPE, DecodedPackets

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
TCP = 6
NS = 1_000_000_000
NEVER = np.iinfo(np.int64).max // 4  # "no deadline"; headroom so adding timeouts cannot overflow

REASONS = np.array(["fin", "rst", "idle", "active", "eof", "evicted"], dtype=object)
R_FIN, R_RST, R_IDLE, R_ACTIVE, R_EOF, R_EVICTED = range(6)

# Zeek endpoint states
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)

_FLUSH_CHUNK = 65536  # flows per flow_records call in flush()
_GROW_HEADROOM = 65536  # slots above max_flows before growth falls back to exact sizes
KEY_BYTES = 40  # vlan 2, transport 1, pad 1, lo ip 16, lo port 2, hi ip 16, hi port 2

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
    "cum_pk_lo": np.dtype(np.uint64),
    "cum_pk_hi": np.dtype(np.uint64),
    "cum_pay_lo": np.dtype(np.uint64),
    "cum_pay_hi": np.dtype(np.uint64),
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
        ["REJ", "RSTRH", "RSTR", "RSTOS0", "OTH", "RSTO", "SF", "SH", "S2", "SHR", "S3", "S0",
         "S1"],
        default="OTH",
    )
    other = np.select([o_sent & r_sent, o_sent, r_sent], ["SF", "S0", "SHR"], default="OTH")
    return np.where(transport == TCP, tcp, other).astype(object)


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
        self._slot_of: dict[bytes, int] = {}
        self._key_of_slot: list[bytes | None] = []
        self._free: list[int] = []
        self._live = np.zeros(0, dtype=bool)
        self._cols: Rows = {name: np.zeros(0, dtype=dt) for name, dt in SLOT_FIELDS.items()}
        self._deadline = NEVER  # lower bound of the earliest expiry time of any live slot
        self._grow(1)  # never empty, so gathers with placeholder slot 0 are always in bounds

    # -- public API --

    def update(self, packets: DecodedPackets) -> EventBatch | None:
        """Add a batch of decoded packets (capture order); return the flows that ended."""
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
        rows = self._slot_rows(slots, R_EOF)
        self._release(slots)
        self._deadline = NEVER
        self.stats["flows_live"] = 0
        # Records are built a chunk at a time: flow_records' temporaries (Community ID
        # buffers, text columns) for a full table of 1M flows at once cost ~0.8 GB.
        n = rows["reason"].size
        return concat_batches([self._to_batch([{k: v[i:i + _FLUSH_CHUNK] for k, v in rows.items()}])
                             for i in range(0, n, _FLUSH_CHUNK)])

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

        p = _Packets(
            ts=np.asarray(packets.ts_ns, dtype=np.int64)[rows][order],
            cm=clock_all[rows][order],
            fwd=fwd[order],
            flags=np.where(transport == TCP, np.asarray(packets.tcp_flags)[rows], 0)
            .astype(np.uint8)[order],
            wire=np.asarray(packets.wirelen)[rows].astype(np.uint64)[order],
            pay=np.maximum(np.asarray(packets.payload_len)[rows], 0).astype(np.uint64)[order],
            transport=transport[order],
            key=key_id,
            key_first=key_first,
        )
        key_bytes = np.ascontiguousarray(ws[key_first]).view(f"V{KEY_BYTES}").ravel()
        slot_of = self._slot_of
        slot_k = np.fromiter((slot_of.get(k, -1) for k in key_bytes.tolist()), dtype=np.int64,
                             count=key_first.size)
        endpoints = {
            "vlan": vlan[order][key_first], "transport": transport[order][key_first],
            "lo_ip": np.ascontiguousarray(lo_w[order][key_first].astype(">u8")).view(IP_DTYPE)
            .ravel(),
            "hi_ip": np.ascontiguousarray(hi_w[order][key_first].astype(">u8")).view(IP_DTYPE)
            .ravel(),
            "lo_port": lo_port[order][key_first].astype(np.uint16),
            "hi_port": hi_port[order][key_first].astype(np.uint16),
        }
        return self._apply(p, slot_k, key_bytes, endpoints, clock_all)

    def _apply(self, p: _Packets, slot_k: np.ndarray, key_bytes: np.ndarray, endpoints: Rows,
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
        return self._records(p, slot_k, key_bytes, endpoints, clock_all, start, split,
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

    def _records(self, p: _Packets, slot_k: np.ndarray, key_bytes: np.ndarray,
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
            slots[need] = self._allocate(key_bytes[tail_key[need]].tolist())
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
        due = self._deadlines(slots) < now
        slots = slots[due]
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
        return int(self._deadlines(live).min()) if live.size else NEVER

    def _evict(self) -> list:
        live = np.flatnonzero(self._live)
        excess = live.size - self.max_flows
        if excess <= 0:
            self.stats["flows_live"] = int(live.size)
            return []
        # Least recently seen first; ties by slot for determinism.
        order = np.lexsort((live, self._cols["last_ts"][live]))
        victims = live[order[:excess]]
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

    def _allocate(self, keys: list[bytes]) -> np.ndarray:
        need = len(keys) - len(self._free)
        if need > 0:
            self._grow(need)
        slots = np.array([self._free.pop() for _ in keys], dtype=np.int64)
        for key, slot in zip(keys, slots.tolist(), strict=True):
            self._slot_of[key] = slot
            self._key_of_slot[slot] = key
        return slots

    def _grow(self, need: int) -> None:
        old = self._live.size
        # Doubling, but not far past the bound: live flows never exceed max_flows plus one
        # batch's new keys, so a full table of 1M flows needs ~1.1M slots, not 2M (a flood
        # otherwise doubles the table's memory for nothing).
        new = max(old + need, min(max(old * 2, 1024), self.max_flows + _GROW_HEADROOM))
        for name, col in self._cols.items():
            grown = np.zeros(new, dtype=col.dtype)
            grown[:old] = col
            self._cols[name] = grown
        live = np.zeros(new, dtype=bool)
        live[:old] = self._live
        self._live = live
        self._key_of_slot.extend([None] * (new - old))
        self._free.extend(range(new - 1, old - 1, -1))

    def _release(self, slots: np.ndarray) -> None:
        self._live[slots] = False
        for slot in slots.tolist():
            key = self._key_of_slot[slot]
            self._key_of_slot[slot] = None
            del self._slot_of[key]
            self._free.append(slot)

    # -- output --

    def _to_batch(self, parts: list) -> EventBatch | None:
        parts = [r for r in parts if r and r["reason"].size]
        if not parts:
            return None
        rows = {k: np.concatenate([r[k] for r in parts]) for k in parts[0]}
        batch = flow_records(rows, self.observer_name, self.ingress_zone, self.community_id_seed)
        self.stats["flows_emitted"] += len(batch)
        return batch


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
