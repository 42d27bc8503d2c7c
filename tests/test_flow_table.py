"""FlowTable: crafted TCP/UDP/ICMP sequences, timeouts, port reuse, eviction, and batch-size
independence against a plain per-packet reference model (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from flow_end_reason_reference import end_reason_reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.schema import concat_batches, validate_batch
from sensors.community_id import ICMP4_COUNTER_TYPE, community_id_v1
from sensors.flow_table import FlowTable, conn_state
from sensors.packets import IP_DTYPE, DecodedPackets, ip_column_to_str, ip_to_bytes16

S = 1_000_000_000
T0 = 1_700_000_000 * S
CFG = {"idle_timeout_s": 60, "tcp_idle_timeout_s": 120, "active_timeout_s": 200,
       "closed_linger_s": 5, "max_flows": 100_000}
A, B, C = "10.0.0.1", "10.0.0.2", "192.0.2.7"
FLAG = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}


@dataclass
class Pkt:
    t: float  # seconds after T0
    src: str = A
    dst: str = B
    sport: int = 1234
    dport: int = 80
    flags: str = ""
    proto: int = 6
    payload: int = 0
    vlan: int = 0
    ip: bool = True
    wirelen: int = field(default=0)

    def frame_len(self) -> int:
        return self.wirelen or 54 + self.payload


def tcp_flags(text: str) -> int:
    return sum(FLAG[c] for c in text)


def make_packets(pkts: list[Pkt]) -> DecodedPackets:
    n = len(pkts)
    z = np.zeros(n, dtype=np.uint8)
    ipv = np.array([4 if p.ip else 0 for p in pkts], dtype=np.uint8)
    src = np.array([ip_to_bytes16(p.src) if p.ip else bytes(16) for p in pkts], dtype=IP_DTYPE)
    dst = np.array([ip_to_bytes16(p.dst) if p.ip else bytes(16) for p in pkts], dtype=IP_DTYPE)
    icmp = np.array([p.proto == 1 for p in pkts])
    sport = np.array([p.sport if p.ip else 0 for p in pkts], dtype=np.uint16)
    dport = np.array([p.dport if p.ip else 0 for p in pkts], dtype=np.uint16)
    return DecodedPackets(
        ts_ns=np.array([T0 + round(p.t * S) for p in pkts], dtype=np.int64),
        wirelen=np.array([p.frame_len() for p in pkts], dtype=np.uint32),
        caplen=np.array([p.frame_len() for p in pkts], dtype=np.uint32),
        interface=np.zeros(n, dtype=np.uint16),
        vlan=np.array([p.vlan for p in pkts], dtype=np.uint16),
        ethertype=np.where(ipv > 0, 0x0800, 0x0806).astype(np.uint16),
        ip_version=ipv,
        src_ip=src,
        dst_ip=dst,
        transport=np.array([p.proto if p.ip else 0 for p in pkts], dtype=np.uint8),
        src_port=sport,
        dst_port=dport,
        tcp_flags=np.array([tcp_flags(p.flags) if p.proto == 6 else 0 for p in pkts],
                           dtype=np.uint8),
        icmp_type=np.where(icmp, sport, 0).astype(np.uint8),
        icmp_code=np.where(icmp, dport, 0).astype(np.uint8),
        ip_total_len=np.array([p.frame_len() - 14 for p in pkts], dtype=np.uint32),
        payload_offset=np.zeros(n, dtype=np.int64),
        payload_len=np.array([p.payload for p in pkts], dtype=np.int32),
        data=z[:0],
    )


def slice_packets(d: DecodedPackets, lo: int, hi: int) -> DecodedPackets:
    cols = {k: (v[lo:hi] if isinstance(v, np.ndarray) and k != "data" else v)
            for k, v in d.__dict__.items()}
    return DecodedPackets(**cols)


def run(pkts: list[Pkt] | DecodedPackets, cfg: dict = CFG, cuts: list[int] | None = None,
        table: FlowTable | None = None) -> list[dict]:
    """Feed packets (split at `cuts`), flush, return flow records as dicts."""
    d = pkts if isinstance(pkts, DecodedPackets) else make_packets(pkts)
    table = table or FlowTable(cfg, "sensor-t", "zone-t")
    bounds = [0, *(cuts or []), len(d)]
    results = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if hi > lo:
            results.append(table.update(slice_packets(d, lo, hi)))
    results.append(table.flush())
    batch = concat_batches(results)
    if batch is None:
        return []
    validate_batch(batch)
    cols = dict(batch.columns)
    cols["src_ip"] = np.array(ip_column_to_str(cols["src_ip"]), dtype=object)
    cols["dst_ip"] = np.array(ip_column_to_str(cols["dst_ip"]), dtype=object)
    rows = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in cols.items()}
            for i in range(len(batch))]
    return sorted(rows, key=_sort_key)


def _sort_key(r: dict) -> tuple:
    return (r["timestamp"], r["src_ip"], r["dst_ip"], r["src_port"], r["dst_port"],
            r["transport"], r["vlan"], r["end"])


def only(rows: list[dict]) -> dict:
    rows = [r for r in rows if r["src_ip"] != CLOCK_HOST]
    assert len(rows) == 1, rows
    return rows[0]


CLOCK_HOST = "198.51.100.1"


def tick(t: float) -> Pkt:
    """A packet of an unrelated flow: only moves the event-time clock."""
    return Pkt(t, CLOCK_HOST, C, 9, 9, proto=17)


# --- conn_state, one crafted TCP sequence per state ------------------------------------

def tcp(t, flags, fwd=True, payload=0, **kw) -> Pkt:
    if fwd:
        return Pkt(t, A, B, 1234, 80, flags, payload=payload, **kw)
    return Pkt(t, B, A, 80, 1234, flags, payload=payload, **kw)


HANDSHAKE = [tcp(0, "S"), tcp(0.1, "SA", False), tcp(0.2, "A")]

CONN_STATE_CASES = {
    "S0": [tcp(0, "S"), tcp(1, "S")],
    "S1": HANDSHAKE + [tcp(0.3, "PA", payload=10), tcp(0.4, "A", False)],
    "SF": HANDSHAKE + [tcp(1, "FA"), tcp(1.1, "FA", False), tcp(1.2, "A")],
    "REJ": [tcp(0, "S"), tcp(0.1, "RA", False)],
    "S2": HANDSHAKE + [tcp(1, "FA")],
    "S3": HANDSHAKE + [tcp(1, "FA", False)],
    "RSTO": HANDSHAKE + [tcp(0.3, "PA", payload=5), tcp(1, "R")],
    "RSTR": HANDSHAKE + [tcp(0.3, "PA", payload=5), tcp(1, "RA", False)],
    "RSTOS0": [tcp(0, "S"), tcp(0.5, "R")],
    "RSTRH": [tcp(0, "SA", False), tcp(0.5, "R", False)],
    "SH": [tcp(0, "S"), tcp(0.5, "F")],
    "SHR": [tcp(0, "SA", False), tcp(0.5, "FA", False)],
    "OTH": [tcp(0, "PA", payload=100), tcp(0.1, "A", False)],
}


@pytest.mark.parametrize("state", sorted(CONN_STATE_CASES))
def test_conn_state_per_zeek(state):
    rec = only(run(CONN_STATE_CASES[state]))
    assert rec["conn_state"] == state


def test_syn_ack_first_makes_the_other_side_originator():
    rec = only(run(CONN_STATE_CASES["RSTRH"]))
    # SYN-ACK was sent by B:80, so A:1234 is the originator even though it sent nothing.
    assert (rec["src_ip"], rec["src_port"], rec["dst_ip"], rec["dst_port"]) == (A, 1234, B, 80)
    assert rec["src_packets"] == 0 and rec["dst_packets"] == 2
    assert rec["dst_tcp_flags"] == FLAG["S"] | FLAG["A"] | FLAG["R"]


def test_full_tcp_flow_counters_and_community_id():
    pkts = HANDSHAKE + [tcp(0.3, "PA", payload=100), tcp(0.4, "PA", False, payload=1000),
                        tcp(1, "FA"), tcp(1.1, "FA", False), tcp(1.2, "A"), tick(30)]
    rec = only(run(pkts))
    fwd = [p for p in pkts if p.src == A]
    rev = [p for p in pkts if p.src == B]
    assert rec["src_packets"] == len(fwd) and rec["dst_packets"] == len(rev)
    assert rec["src_bytes"] == sum(p.frame_len() for p in fwd)
    assert rec["dst_bytes"] == sum(p.frame_len() for p in rev)
    assert (rec["src_payload_bytes"], rec["dst_payload_bytes"]) == (100, 1000)
    assert rec["src_tcp_flags"] == FLAG["S"] | FLAG["A"] | FLAG["P"] | FLAG["F"]
    assert rec["timestamp"] == T0 and rec["end"] == T0 + round(1.2 * S)
    assert rec["end_reason"] == "fin"
    assert rec["community_id"] == community_id_v1(ip_to_bytes16(A), ip_to_bytes16(B), 6, 1234, 80)


def test_udp_states_and_direction():
    one_way = only(run([Pkt(0, A, C, 5000, 53, proto=17, payload=30)]))
    assert one_way["conn_state"] == "S0"
    both = only(run([Pkt(0, A, C, 5000, 53, proto=17, payload=30),
                     Pkt(0.01, C, A, 53, 5000, proto=17, payload=90)]))
    assert both["conn_state"] == "SF"
    assert (both["src_ip"], both["src_port"]) == (A, 5000)
    assert (both["src_payload_bytes"], both["dst_payload_bytes"]) == (30, 90)


def test_icmp_echo_pairs_into_one_flow():
    rec = only(run([Pkt(0, A, B, 8, 0, proto=1), Pkt(0.01, B, A, 0, 0, proto=1),
                    Pkt(1, A, B, 8, 0, proto=1), Pkt(1.01, B, A, 0, 0, proto=1)]))
    assert (rec["src_port"], rec["dst_port"]) == (8, 0)
    assert (rec["src_packets"], rec["dst_packets"]) == (2, 2)
    assert rec["conn_state"] == "SF"
    # Spec vector: 1.2.3.4 -> 5.6.7.8 echo is 1:crodRHL2FEsHjbv3UkRrfbs4bZ0=; same mapping here
    assert rec["community_id"] == community_id_v1(ip_to_bytes16(A), ip_to_bytes16(B), 1, 8, 0)


def test_icmp_one_way_type_keeps_type_and_code():
    rec = only(run([Pkt(0, C, A, 3, 1, proto=1)]))
    assert (rec["src_ip"], rec["src_port"], rec["dst_port"]) == (C, 3, 1)


def test_portless_protocol_has_zero_ports():
    rec = only(run([Pkt(0, A, B, 7, 9, proto=47), Pkt(0.1, B, A, 9, 7, proto=47)]))
    assert (rec["src_port"], rec["dst_port"]) == (0, 0)
    assert (rec["src_packets"], rec["dst_packets"]) == (1, 1)


def test_vlans_are_separate_flows():
    rows = run([tcp(0, "S", vlan=10), tcp(0.1, "S", vlan=20), tcp(0.2, "SA", False, vlan=20)])
    assert [(r["vlan"], r["conn_state"]) for r in rows] == [(10, "S0"), (20, "OTH")]


def test_non_ip_rows_are_counted_not_flowed():
    table = FlowTable(CFG, "s", "z")
    rows = run([Pkt(0, ip=False), tcp(0.1, "S"), Pkt(0.2, ip=False)], table=table)
    assert len(rows) == 1
    assert table.stats["packets_non_ip"] == 2 and table.stats["flows_created"] == 1


# --- timeouts, closing, reuse, eviction ------------------------------------------------

def test_idle_timeout_splits_tcp_and_udp_with_their_own_timeouts():
    udp = [Pkt(0, A, C, 5000, 53, proto=17), Pkt(61, A, C, 5000, 53, proto=17)]
    tcp_pkts = [tcp(0, "PA"), tcp(61, "PA"), tcp(182, "PA")]
    rows = run(sorted(udp + tcp_pkts, key=lambda p: p.t))
    udp_rows = [r for r in rows if r["transport"] == 17]
    tcp_rows = [r for r in rows if r["transport"] == 6]
    # UDP idle is 60 s: 61 s apart -> two flows; the TCP packet at 182 s expires the second.
    assert [(r["src_packets"], r["end_reason"]) for r in udp_rows] == [(1, "idle"), (1, "idle")]
    # TCP idle is 120 s: 0 and 61 stay together, 182 (121 s later) starts a new flow.
    assert [(r["src_packets"], r["end_reason"]) for r in tcp_rows] == [(2, "idle"), (1, "eof")]


def test_idle_expiry_driven_by_other_traffic_clock():
    table = FlowTable(CFG, "s", "z")
    first = table.update(make_packets([Pkt(0, A, C, 5000, 53, proto=17)]))
    assert first is None
    later = table.update(make_packets([Pkt(60.5, B, C, 1, 2, proto=17),
                                       Pkt(61.5, B, C, 1, 2, proto=17)]))
    assert later is not None and later.columns["end_reason"].tolist() == ["idle"]


def test_active_timeout_emits_pieces_of_one_flow():
    pkts = [tcp(t, "PA" if t else "S", fwd=(t % 20 == 0)) for t in range(0, 500, 10)]
    rows = run(pkts)
    assert [r["end_reason"] for r in rows] == ["active", "active", "eof"]
    assert sum(r["src_packets"] + r["dst_packets"] for r in rows) == len(pkts)
    # Pieces follow the 200 s grid from the flow start and keep the originator.
    assert [r["timestamp"] - T0 for r in rows] == [0, 200 * S, 400 * S]
    assert all((r["src_ip"], r["src_port"]) == (A, 1234) for r in rows)


def test_closed_flow_waits_for_stragglers_then_ends():
    # retransmitted FIN/ACK within the 5 s linger still counts
    pkts = CONN_STATE_CASES["SF"] + [tcp(4, "FA", False), tick(30)]
    rec = only(run(pkts))
    assert rec["dst_packets"] == 3 and rec["end_reason"] == "fin" and rec["conn_state"] == "SF"
    # without later traffic the closed flow is still live at end of input
    assert only(run(CONN_STATE_CASES["SF"]))["end_reason"] == "eof"
    late = run(CONN_STATE_CASES["SF"] + [tcp(7, "A")])  # after the 5 s linger: new flow
    assert [(r["end_reason"], r["conn_state"]) for r in late] == [("fin", "SF"), ("eof", "OTH")]


def test_rst_closes_and_is_the_end_reason():
    table = FlowTable(CFG, "s", "z")
    out = table.update(make_packets(CONN_STATE_CASES["RSTR"] + [Pkt(20, A, C, 1, 2, proto=17)]))
    assert out is not None
    assert out.columns["end_reason"].tolist() == ["rst"]


@pytest.mark.parametrize("cuts", [[], [1], [2], [3], [1, 2, 3]])
def test_port_reuse_syn_after_close_starts_new_flow(cuts):
    pkts = [tcp(0, "S"), tcp(0.1, "RA", False), tcp(0.5, "S"), tcp(0.6, "SA", False),
            tcp(0.7, "A")]
    rows = run(pkts, cuts=cuts)
    assert [(r["conn_state"], r["end_reason"], r["src_packets"] + r["dst_packets"])
            for r in rows] == [("REJ", "rst", 2), ("S1", "eof", 3)]


def test_eviction_keeps_table_bounded_and_evicts_least_recently_seen():
    cfg = dict(CFG, max_flows=3)
    table = FlowTable(cfg, "s", "z")
    pkts = [Pkt(i, A, C, 1000 + i, 53, proto=17) for i in range(5)]
    pkts.append(Pkt(5, A, C, 1000, 53, proto=17))  # port 1000 again, after its eviction
    first = table.update(make_packets(pkts[:4]))  # 4 flows > 3: the oldest (1000) goes
    assert first is not None and first.columns["src_port"].tolist() == [1000]
    second = table.update(make_packets(pkts[4:]))  # 1004 and a new 1000: 1001, 1002 go
    out = concat_batches([first, second])
    assert out is not None
    assert out.columns["end_reason"].tolist() == ["evicted", "evicted", "evicted"]
    assert sorted(out.columns["src_port"].tolist()) == [1000, 1001, 1002]
    assert table.stats["flows_evicted"] == 3
    assert int(table._live.sum()) <= 3
    rest = table.flush()
    assert rest is not None and len(rest) == 3


# --- reference model and batch-size independence ---------------------------------------

def reference_flows(pkts: list[Pkt], cfg: dict = CFG) -> list[tuple]:
    """Straightforward per-packet implementation of the module's documented semantics."""
    idle = {True: cfg["tcp_idle_timeout_s"] * S, False: cfg["idle_timeout_s"] * S}
    active, linger = cfg["active_timeout_s"] * S, cfg["closed_linger_s"] * S
    flows: dict[tuple, dict] = {}
    out: list[tuple] = []
    clock = -(2**62)

    def emit(f: dict, reason: str) -> None:
        if f["pk"][0] + f["pk"][1] == 0:
            return
        o = 0 if f["orig_lo"] else 1
        r = 1 - o
        state = conn_state(np.array([f["proto"]]), np.array([f["st"][o]]), np.array([f["st"][r]]),
                           np.array([f["cpk"][o]]), np.array([f["cpk"][r]]),
                           np.array([f["cpay"][o]]), np.array([f["cpay"][r]]))[0]
        ep = f["ep"]
        out.append((f["first"], ep[o][0], ep[r][0], ep[o][1], ep[r][1], f["proto"], f["vlan"],
                    f["end"], f["pk"][o], f["pk"][r], f["by"][o], f["by"][r], f["pay"][o],
                    f["pay"][r], f["fl"][o], f["fl"][r], state, reason))

    def reset_piece(f: dict) -> None:
        f.update(pk=[0, 0], by=[0, 0], pay=[0, 0], fl=[0, 0], first=None, end=None)

    def closed_reason(f: dict) -> str:
        return "rst" if (f["st"][0] | f["st"][1]) & FLAG["R"] else "fin"

    for p in pkts:
        ts = T0 + round(p.t * S)
        clock = max(clock, ts)
        for key in sorted(flows):
            f = flows[key]
            ended = clock > f["last"] + idle[f["proto"] == 6] or (
                f["closed_at"] is not None and clock > f["closed_at"] + linger)
            if ended:
                emit(f, closed_reason(f) if f["closed_at"] is not None else "idle")
                del flows[key]
            elif f["pk"][0] + f["pk"][1] and clock >= f["start"] + (f["piece"] + 1) * active:
                emit(f, "active")
                reset_piece(f)
        if not p.ip:
            continue
        sport, dport = p.sport, p.dport
        if p.proto == 1 and sport in ICMP4_COUNTER_TYPE:
            dport = ICMP4_COUNTER_TYPE[sport]
        if p.proto not in (1, 6, 17, 58, 132):
            sport = dport = 0
        src, dst = (ip_to_bytes16(p.src), sport), (ip_to_bytes16(p.dst), dport)
        lo, hi = min(src, dst), max(src, dst)
        d = 0 if src == lo and (src != dst or True) else 1  # 0: lo -> hi
        if src == dst:
            d = 0
        key = (p.vlan, p.proto, lo, hi)
        flags = tcp_flags(p.flags) if p.proto == 6 else 0
        f = flows.get(key)
        syn_only = flags & (FLAG["S"] | FLAG["A"]) == FLAG["S"]
        if f is not None and f["closed_at"] is not None and syn_only:
            emit(f, closed_reason(f))
            del flows[key]
            f = None
        if f is None:
            syn_ack = flags & (FLAG["S"] | FLAG["A"]) == FLAG["S"] | FLAG["A"]
            f = {"proto": p.proto, "vlan": p.vlan, "orig_lo": (d == 0) != syn_ack,
                 "ep": [(ip_column_to_str(np.array([lo[0]], dtype=IP_DTYPE))[0], lo[1]),
                        (ip_column_to_str(np.array([hi[0]], dtype=IP_DTYPE))[0], hi[1])],
                 "start": ts, "piece": 0, "closed_at": None, "st": [0, 0], "cpk": [0, 0],
                 "cpay": [0, 0]}
            reset_piece(f)
            flows[key] = f
        f["piece"] = max(f["piece"], (clock - f["start"]) // active)
        f["pk"][d] += 1
        f["by"][d] += p.frame_len()
        f["pay"][d] += p.payload
        f["fl"][d] |= flags
        f["first"] = ts if f["first"] is None else min(f["first"], ts)
        f["end"] = ts if f["end"] is None else max(f["end"], ts)
        f["st"][d] |= flags
        f["cpk"][d] += 1
        f["cpay"][d] += p.payload
        f["last"] = ts
        closed = (f["st"][0] & f["st"][1] & FLAG["F"]) or ((f["st"][0] | f["st"][1]) & FLAG["R"])
        if closed and f["closed_at"] is None:
            f["closed_at"] = clock
    for key in sorted(flows):
        emit(flows[key], "eof")
    return sorted(out)


def as_tuples(rows: list[dict]) -> list[tuple]:
    return sorted((r["timestamp"], r["src_ip"], r["dst_ip"], r["src_port"], r["dst_port"],
                   r["transport"], r["vlan"], r["end"], r["src_packets"], r["dst_packets"],
                   r["src_bytes"], r["dst_bytes"], r["src_payload_bytes"], r["dst_payload_bytes"],
                   r["src_tcp_flags"], r["dst_tcp_flags"], r["conn_state"], r["end_reason"])
                  for r in rows)


HOSTS = [A, B, C]
FLAG_CHOICES = ["S", "SA", "A", "PA", "FA", "R", "RA", "F", ""]
GAPS = [0, 0.001, 0.5, 3, 6, 61, 121, 250]


@st.composite
def packet_sequences(draw):
    n = draw(st.integers(1, 60))
    t = 0.0
    pkts = []
    for _ in range(n):
        t += draw(st.sampled_from(GAPS))
        src, dst = draw(st.sampled_from([(A, B), (B, A), (A, C), (C, B)]))
        proto = draw(st.sampled_from([6, 6, 6, 17, 1, 47]))
        if proto == 1:
            sport, dport = draw(st.sampled_from([(8, 0), (0, 0), (3, 1)]))
        else:
            sport, dport = draw(st.sampled_from([(1234, 80), (80, 1234), (5000, 53)]))
        pkts.append(Pkt(t, src, dst, sport, dport, draw(st.sampled_from(FLAG_CHOICES)), proto,
                        payload=draw(st.sampled_from([0, 0, 10, 1400])),
                        vlan=draw(st.sampled_from([0, 0, 0, 7])),
                        ip=draw(st.sampled_from([True] * 9 + [False]))))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=6))))
    return pkts, [c for c in cuts if 0 < c < n]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet_sequences())
def test_matches_reference_for_any_batch_split(seq):
    pkts, cuts = seq
    expected = reference_flows(pkts)
    assert as_tuples(run(pkts)) == expected
    assert as_tuples(run(pkts, cuts=cuts)) == expected


@pytest.mark.parametrize("batch", [1, 13, 1000, None])
def test_batch_sizes_give_identical_flows(batch):
    rng = np.random.default_rng(7)
    pkts, t = [], 0.0
    for _ in range(1500):
        t += float(rng.choice([0.0, 0.01, 0.3, 2.0, 7.0, 70.0], p=[.3, .3, .2, .1, .05, .05]))
        h = int(rng.integers(0, 12))
        fwd = bool(rng.random() < 0.5)
        proto = int(rng.choice([6, 17, 1]))
        ports = (1000 + h, 80) if proto != 1 else (8 if fwd else 0, 0)
        src, dst = (A, f"10.1.0.{h}") if fwd else (f"10.1.0.{h}", A)
        sp, dp = ports if fwd or proto == 1 else ports[::-1]
        pkts.append(Pkt(t, src, dst, sp, dp, str(rng.choice(FLAG_CHOICES)), proto,
                        payload=int(rng.integers(0, 500))))
    d = make_packets(pkts)
    whole = run(d)
    cuts = None if batch is None else list(range(batch, len(pkts), batch))
    assert as_tuples(run(d, cuts=cuts)) == as_tuples(whole)
    assert as_tuples(whole) == reference_flows(pkts)


def test_decoded_scapy_frames_end_to_end(tmp_path):
    decode = pytest.importorskip("sensors.decode").decode
    builders = pytest.importorskip("tests.packet_builders")
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Dot1Q, Ether

    frames = [
        Ether() / IP(src=A, dst=B) / TCP(sport=40000, dport=443, flags="S"),
        Ether() / IP(src=B, dst=A) / TCP(sport=443, dport=40000, flags="SA"),
        Ether() / IP(src=A, dst=B) / TCP(sport=40000, dport=443, flags="A"),
        Ether() / IP(src=A, dst=B) / TCP(sport=40000, dport=443, flags="PA") / (b"x" * 20),
        Ether() / Dot1Q(vlan=42) / IP(src=A, dst=C) / UDP(sport=5353, dport=53) / b"q",
    ]
    batch = builders.batch_from_frames([bytes(f) for f in frames],
                                       ts_ns=[T0 + i * S // 10 for i in range(len(frames))])
    rows = run(decode(batch))
    assert [(r["transport"], r["vlan"], r["conn_state"]) for r in rows] == [
        (6, 0, "S1"), (17, 42, "S0")]
    assert rows[0]["src_payload_bytes"] == 20
    assert rows[0]["src_bytes"] == sum(len(bytes(f)) for f in frames[:4] if f[IP].src == A)


def test_hash_collisions_fall_back_to_exact_grouping(monkeypatch):
    import sensors.flow_table as ft

    monkeypatch.setattr(ft, "_mix64", lambda words: np.zeros(words.shape[0], dtype=np.uint64))
    pkts = [tcp(0, "S"), Pkt(0.1, A, C, 5000, 53, proto=17), tcp(0.2, "SA", False),
            tcp(0.3, "A"), Pkt(0.4, C, A, 53, 5000, proto=17), tcp(0.5, "FA")]
    assert as_tuples(run(pkts)) == reference_flows(pkts)
    assert len(reference_flows(pkts)) == 2


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_internal_chunking_gives_identical_flows(monkeypatch, chunk):
    """update() splits big batches, flush() and record building work in chunks: shrink the
    chunk sizes so a small input goes through every chunked path."""
    import sensors.flow_table as ft

    rng = np.random.default_rng(11)
    pkts, t = [], 0.0
    for _ in range(600):
        t += float(rng.choice([0.0, 0.01, 0.5, 3.0, 80.0], p=[.3, .3, .2, .15, .05]))
        h = int(rng.integers(0, 40))
        fwd = bool(rng.random() < 0.5)
        src, dst = (A, f"10.2.0.{h}") if fwd else (f"10.2.0.{h}", A)
        sp, dp = (2000 + h, 443) if fwd else (443, 2000 + h)
        pkts.append(Pkt(t, src, dst, sp, dp, str(rng.choice(FLAG_CHOICES)), 6,
                        payload=int(rng.integers(0, 300))))
    expected = reference_flows(pkts)
    for name in ("_UPDATE_CHUNK", "_RECORD_CHUNK", "_FLUSH_CHUNK"):
        monkeypatch.setattr(ft, name, chunk)
    monkeypatch.setattr(ft, "_SUB_BATCH_FILL", 0)  # sub-batch whatever the table's fill
    assert as_tuples(run(make_packets(pkts))) == expected


class _Keys:
    """Stand-in for the table's key columns (flow_table.KeyColumns) over `capacity` slots."""

    def __init__(self, capacity: int) -> None:
        self.vlan = np.zeros(capacity, dtype=np.uint16)
        self.transport = np.zeros(capacity, dtype=np.uint8)
        self.lo_port = np.zeros(capacity, dtype=np.uint16)
        self.hi_port = np.zeros(capacity, dtype=np.uint16)
        self.lo_ip = np.zeros((capacity, 16), dtype=np.uint8)
        self.hi_ip = np.zeros((capacity, 16), dtype=np.uint8)
        self.segment = np.zeros(capacity, dtype=np.uint64)

    def set(self, slots: np.ndarray, words: np.ndarray) -> None:
        """Write (n, 6) key words (meta bits 32-39 zero, as in every real key) to slots."""
        meta = words[:, 0]
        self.vlan[slots] = meta >> np.uint64(48)
        self.transport[slots] = (meta >> np.uint64(40)) & np.uint64(0xFF)
        self.lo_port[slots] = (meta >> np.uint64(16)) & np.uint64(0xFFFF)
        self.hi_port[slots] = meta & np.uint64(0xFFFF)
        self.lo_ip[slots] = words[:, 1:3].astype(">u8").view(np.uint8).reshape(-1, 16)
        self.hi_ip[slots] = words[:, 3:5].astype(">u8").view(np.uint8).reshape(-1, 16)
        self.segment[slots] = words[:, 5]

    @property
    def columns(self) -> tuple:
        return (self.vlan, self.transport, self.lo_port, self.hi_port, self.lo_ip, self.hi_ip,
                self.segment)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "remove"]),
                          st.lists(st.integers(0, 300), max_size=40, unique=True)),
                max_size=25),
       st.sampled_from([None, 0, 3]))
def test_slot_index_matches_a_dict(ops, hash_bits):
    """The compiled hash index against a dict, with tombstones, rebuilds and (hash_bits set)
    forced hash collisions: every lookup finds exactly the live keys."""
    import sensors.flow_table as ft

    def key_words(keys: list[int]) -> np.ndarray:
        k = np.asarray(keys, dtype=np.uint64).reshape(-1)
        # keys >= 200 have a tunnel segment (SEGMENT_FLAG in the vlan bits of meta): groups
        # of 20 keys share their other five words and differ in the segment word only
        tunnelled = k >= 200
        base = np.where(tunnelled, np.uint64(200) + (k - np.uint64(200)) % np.uint64(20), k)
        segment = np.where(tunnelled, (k - np.uint64(200)) // np.uint64(20) + np.uint64(1),
                           np.uint64(0))
        flag = np.where(tunnelled, np.uint64(ft.SEGMENT_FLAG << 48), np.uint64(0))
        return np.column_stack([base | flag, base * np.uint64(3), base ^ np.uint64(0xFF), base,
                                base, segment])

    def hashes(words: np.ndarray) -> np.ndarray:
        h = real_mix64(words)
        return h if hash_bits is None else h & np.uint64((1 << hash_bits) - 1)

    real_mix64 = ft._mix64
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft, "_mix64", hashes)  # the index rehashes with it when rebuilding
        _slot_index_run(ops, ft._SlotIndex(), key_words, hashes, ft)


def _slot_index_run(ops, index, key_words, hashes, ft) -> None:
    index._MAX_LOAD = 0.1  # rebuild often
    columns = _Keys(512)
    live: dict[int, int] = {}
    free = list(range(511, -1, -1))
    for op, keys in ops:
        if op == "add":
            new = [k for k in keys if k not in live]
            slots = np.array([free.pop() for _ in new], dtype=np.int64)
            columns.set(slots, key_words(new))
            # the compiled key read-back gives the words just written
            assert (ft._slot_key_words(slots, *columns.columns) == key_words(new)).all()
            index.insert(hashes(key_words(new)), slots)
            live.update(zip(new, slots.tolist(), strict=True))
        else:
            gone = [k for k in keys if k in live]
            slots = np.array([live.pop(k) for k in gone], dtype=np.int64)
            index.remove(hashes(key_words(gone)), slots)
            free.extend(slots.tolist())
            if index.needs_rebuild():
                index.resize(512, np.array(sorted(live.values()), dtype=np.int64),
                             columns.columns)
        probe = list(range(0, 301, 7)) + keys
        found = index.lookup(hashes(key_words(probe)), key_words(probe), columns.columns)
        assert found.tolist() == [live.get(k, -1) for k in probe]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**64 - 1), min_size=5, max_size=5), max_size=30))
def test_compiled_mix64_equals_the_column_formula(rows):
    """The compiled key hash against the splitmix-style formula written with numpy columns
    (the index, the batch grouping and the collision test all rely on the same function)."""
    import sensors.flow_table as ft

    words = np.array(rows, dtype=np.uint64).reshape(-1, 5)
    h = np.full(words.shape[0], 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(5):
            h ^= words[:, j]
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
            h *= np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(29)
    assert np.array_equal(ft._mix64(words), h)


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_flush_chunks_equal_flush_in_order(chunk):
    # flush_chunks hands out flush()'s records, same order, a chunk at a time, then resets
    rng = np.random.default_rng(11)
    pkts = [Pkt(float(i) * 0.01, f"10.2.{i % 7}.{i % 200}", B, 2000 + i % 300,
                int(rng.choice([22, 80, 443])), str(rng.choice(["S", "SA", "A", "PA", "F"])),
                int(rng.choice([6, 17])), payload=int(rng.integers(0, 300)))
            for i in range(900)]
    d = make_packets(pkts)
    whole, pieces = FlowTable(CFG, "s", "z"), FlowTable(CFG, "s", "z")
    whole.update(d)
    pieces.update(d)
    expected = whole.flush()
    got = list(pieces.flush_chunks(chunk))
    assert expected is not None and len(expected) > 100
    assert all(0 < len(b) <= chunk for b in got)
    joined = concat_batches(got)
    for name, col in expected.columns.items():
        assert np.array_equal(joined.columns[name], col), name
    assert pieces.flush() is None  # the table was reset after the last piece
    assert pieces.stats == whole.stats


# --- conn_state: the compiled table against the numpy np.select formulation it replaced ---


def _conn_state_reference(transport, of, rf, o_pk, r_pk, o_pay, r_pay) -> list[str]:
    """The former column-wise conn_state (np.select over Zeek's table, in its order)."""
    import sensors.flow_table as ft

    of, rf = of.astype(np.uint8), rf.astype(np.uint8)
    o_sent, r_sent = o_pk > 0, r_pk > 0
    established = ((of & ft.SYN) > 0) & ((rf & ft.SYN) > 0) & ((of & ft.ACK) > 0)

    def endpoint_state(flags: np.ndarray, sent: np.ndarray, syn_state: int) -> np.ndarray:
        return np.select(
            [(flags & ft.RST) > 0, (flags & ft.FIN) > 0, ~sent, established,
             (flags & ft.SYN) > 0],
            [ft.RESET, ft.CLOSED, ft.INACTIVE, ft.ESTABLISHED, syn_state], default=ft.PARTIAL)

    os_ = endpoint_state(of, o_sent, ft.SYN_SENT)
    rs = endpoint_state(rf, r_sent, ft.SYN_ACK_SENT)
    o_inactive = (os_ == ft.INACTIVE) | (os_ == ft.PARTIAL)
    r_inactive = (rs == ft.INACTIVE) | (rs == ft.PARTIAL)
    no_payload = (o_pay == 0) & (r_pay == 0)
    rstos0 = ((of & ft.SYN) > 0) & ((of & ft.FIN) == 0)
    tcp = np.select(
        [(rs == ft.RESET) & ((os_ == ft.SYN_SENT) | (os_ == ft.SYN_ACK_SENT)
                             | ((os_ == ft.RESET) & no_payload)),
         (rs == ft.RESET) & o_inactive, rs == ft.RESET,
         (os_ == ft.RESET) & r_inactive & rstos0, (os_ == ft.RESET) & r_inactive,
         os_ == ft.RESET, (rs == ft.CLOSED) & (os_ == ft.CLOSED),
         (os_ == ft.CLOSED) & r_inactive, os_ == ft.CLOSED, (rs == ft.CLOSED) & o_inactive,
         rs == ft.CLOSED, (os_ == ft.SYN_SENT) & (rs == ft.INACTIVE),
         (os_ == ft.ESTABLISHED) & (rs == ft.ESTABLISHED)],
        ["REJ", "RSTRH", "RSTR", "RSTOS0", "OTH", "RSTO", "SF", "SH", "S2", "SHR", "S3", "S0",
         "S1"], default="OTH")
    other = np.select([o_sent & r_sent, o_sent, r_sent], ["SF", "S0", "SHR"], default="OTH")
    return np.where(transport == ft.TCP, tcp, other).tolist()


_flag_bytes = st.integers(0, 255) | st.sampled_from([0x02, 0x12, 0x10, 0x11, 0x14, 0x04, 0x01])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([6, 17, 1, 58, 132]), _flag_bytes, _flag_bytes,
                          st.integers(0, 3), st.integers(0, 3), st.integers(0, 2),
                          st.integers(0, 2)), min_size=1, max_size=60),
       st.booleans())
def test_conn_state_equals_the_column_formula(rows, as_bools):
    """Every combination of flags, packets and payload (counts, or the table's booleans)."""
    cols = [np.array(c) for c in zip(*rows, strict=True)]
    transport = cols[0].astype(np.uint8)
    of, rf = cols[1].astype(np.uint8), cols[2].astype(np.uint8)
    counts = [c.astype(bool) if as_bools else c.astype(np.uint64) for c in cols[3:]]
    got = conn_state(transport, of, rf, *counts).tolist()
    assert got == _conn_state_reference(transport, of, rf, *counts)


# --- end reason: the compiled per-row reason against the numpy searchsorted formulation it
# replaced (tests/flow_end_reason_reference.py) ---


_small_times = st.integers(0, 60)


@settings(max_examples=200, deadline=None)
@given(st.lists(_small_times, min_size=1, max_size=40),
       st.lists(st.tuples(st.sampled_from([6, 17, 1]), _small_times, _small_times | st.just(-1),
                          _flag_bytes, _flag_bytes, _small_times, st.integers(0, 6),
                          _small_times | st.just(-1)), min_size=1, max_size=40))
def test_end_reasons_equal_the_searchsorted_formula(clock_steps, rows):
    """Random non-decreasing clocks (repeats included), thresholds before, inside, on and
    past the clock values, closed or open flows, with or without a split clock."""
    import sensors.flow_table as ft

    clock = np.cumsum(np.array(clock_steps, dtype=np.int64) % 4) + int(clock_steps[0])
    table = FlowTable({**CFG, "idle_timeout_s": 1e-8, "tcp_idle_timeout_s": 2e-8,
                       "active_timeout_s": 5e-9, "closed_linger_s": 3e-9}, "s", "z")
    cols = [np.array(c, dtype=np.int64) for c in zip(*rows, strict=True)]
    closed_at = np.where(cols[2] < 0, ft.NEVER, cols[2])
    split = np.where(cols[7] < 0, ft.NEVER, cols[7])
    table_rows = {"transport": cols[0].astype(np.uint8), "last_ts": cols[1],
                  "closed_at": closed_at, "st_fl_lo": cols[3].astype(np.uint8),
                  "st_fl_hi": cols[4].astype(np.uint8), "flow_start": cols[5],
                  "piece": cols[6]}
    clock, shift, starts = table._clock_search(clock)
    got = [ft._reason_of(clock, starts, shift, t == ft.TCP, last, closed, np.int64(lo | hi),
                         start, piece, cut, table.idle_ns, table.tcp_idle_ns, table.active_ns,
                         table.linger_ns)
           for t, last, closed, lo, hi, start, piece, cut in zip(
               cols[0], cols[1], closed_at, cols[3], cols[4], cols[5], cols[6], split,
               strict=True)]
    assert got == end_reason_reference(table, table_rows, clock, split).tolist()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.data())
def test_table_write_back_casts_like_numpy(n, data):
    """The kernel that writes walk groups into the table's hot rows (and last_ts, deadline)
    casts like the numpy astype/fancy-index assignments of per-field columns it replaced
    (bool: nonzero -> True, uint8 wraps), field by field."""
    import sensors.flow_table as ft

    values = st.lists(st.integers(-2**63, 2**63 - 1), min_size=n, max_size=n)
    g = np.array([data.draw(values) for _ in ft._GROUP_FIELDS], dtype=np.int64).T.copy()
    deadlines = np.array(data.draw(values), dtype=np.int64)
    slots = np.array(data.draw(st.permutations(range(n))), dtype=np.int64)
    hot = np.zeros(n, dtype=ft._HOT_DTYPE)
    last_ts = np.zeros(n, dtype=np.int64)
    due = np.zeros(n, dtype=np.int64)
    ft._scatter_group(*ft._hot_views(hot), last_ts, due, slots, g, deadlines)
    expected = {}
    for j, name in enumerate(ft._GROUP_FIELDS):
        expected[name] = np.zeros(n, dtype=ft.SLOT_FIELDS[name])
        expected[name][slots] = g[:, j].astype(ft.SLOT_FIELDS[name])
        got = last_ts if name == "last_ts" else hot[name]
        assert got.tolist() == expected[name].tolist(), name
    assert due[slots].tolist() == deadlines.tolist()

