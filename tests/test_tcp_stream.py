"""Bounded TCP reassembly (sensors/tcp_stream.py) on crafted scapy sessions."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packet_builders import batch_from_frames, batch_from_scapy
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from sensors.decode import decode
from sensors.packets import ip_to_bytes16
from sensors.tcp_stream import (
    StreamCollector,
    hash_member,
    payload_heads,
    prefix_predicate,
    tcp_seq_ack,
)

SYN_FLAG = 0x02
CLIENT = ("10.0.0.1", 40000)
SERVER = ("10.0.0.2", 80)


def seg(src, dst, flags, seq, ack=0, data=b"", t=0.0):
    pkt = Ether() / IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags=flags,
                                                     seq=seq, ack=ack) / data
    pkt.time = t
    return pkt


def handshake(t=1.0, cseq=1000, sseq=5000):
    return [seg(CLIENT, SERVER, "S", cseq, 0, t=t), seg(SERVER, CLIENT, "SA", sseq, cseq + 1, t=t),
            seg(CLIENT, SERVER, "A", cseq + 1, sseq + 1, t=t)]


def run(packets, collector=None, batches=1):
    if collector is None:
        collector = StreamCollector({80}, 64, 100, 60)
    chunks = []
    size = max(1, -(-len(packets) // batches))
    for i in range(0, len(packets), size):
        chunks += collector.feed(decode(batch_from_scapy(packets[i : i + size])))
    chunks += collector.flush()
    return collector, chunks


def last(chunks):
    assert chunks
    return chunks[-1]


def test_seq_ack_read_back_with_options():
    pkts = [Ether() / IP() / TCP(seq=123456789, ack=987654321, flags="PA",
                                 options=[("MSS", 1460), ("NOP", None), ("SAckOK", b"")]) / b"x",
            Ether() / IP() / TCP(seq=7, ack=8, flags="S")]
    d = decode(batch_from_scapy(pkts))
    seq, ack, found = tcp_seq_ack(d, np.arange(2))
    assert found.tolist() == [True, True]
    assert seq.tolist() == [123456789, 7] and ack.tolist() == [987654321, 8]


def test_in_order_session_both_directions_and_fin():
    pkts = handshake() + [
        seg(CLIENT, SERVER, "PA", 1001, 5001, b"GET / ", t=1.1),
        seg(CLIENT, SERVER, "PA", 1007, 5001, b"HTTP/1.0\r\n\r\n", t=1.2),
        seg(SERVER, CLIENT, "PA", 5001, 1019, b"HTTP/1.0 200 OK\r\n\r\n", t=1.3),
        seg(CLIENT, SERVER, "FA", 1019, 5020, t=1.4), seg(SERVER, CLIENT, "FA", 5020, 1020, t=1.5)]
    _, chunks = run(pkts)
    c = last(chunks)
    assert c.final and c.reason == "fin"
    assert c.client_data == b"GET / HTTP/1.0\r\n\r\n"
    assert c.server_data == b"HTTP/1.0 200 OK\r\n\r\n"
    assert c.client_ip == ip_to_bytes16("10.0.0.1") and c.server_port == 80
    assert c.client_by == "syn" and c.ended == (True, True) and c.gap == (False, False)
    assert [(d, n) for _, d, n in c.packets] == [(0, 6), (0, 12), (1, 19)]
    assert c.first_ts == (1_100_000_000, 1_300_000_000)


def test_out_of_order_retransmission_and_overlap_first_wins():
    pkts = handshake() + [
        seg(CLIENT, SERVER, "PA", 1005, 5001, b"EFGH", t=1.1),  # ahead of a hole
        seg(CLIENT, SERVER, "PA", 1001, 5001, b"ABCD", t=1.2),  # fills it
        seg(CLIENT, SERVER, "PA", 1001, 5001, b"ABCD", t=1.3),  # retransmission
        seg(CLIENT, SERVER, "PA", 1007, 5001, b"xxYZ", t=1.4),  # overlaps "GH": first copy wins
    ]
    for batches in (1, 4):
        collector, chunks = run(pkts, batches=batches)
        assert last(chunks).client_data == b"ABCDEFGHYZ"
        assert collector.stats["late_or_retransmitted"] >= 2


def test_gap_stops_data_and_is_marked():
    pkts = handshake() + [seg(CLIENT, SERVER, "PA", 1001, 5001, b"ABCD", t=1.1),
                          seg(CLIENT, SERVER, "PA", 1009, 5001, b"IJKL", t=1.2),  # 4 bytes lost
                          seg(CLIENT, SERVER, "FA", 1013, 5001, t=1.3)]
    collector, chunks = run(pkts)
    c = last(chunks)
    assert c.client_data == b"ABCD" and c.gap[0] and collector.stats["gaps"] == 1


def test_cap_per_direction():
    data = bytes(range(200))
    pkts = handshake() + [seg(CLIENT, SERVER, "PA", 1001 + i, 5001, data[i : i + 50], t=1.1)
                          for i in range(0, 200, 50)]
    _, chunks = run(pkts, StreamCollector({80}, 64, 100, 60))
    c = last(chunks)
    assert c.client_data == data[:64] and c.capped[0]


def test_midstream_flow_uses_ports_and_peer_ack():
    pkts = [seg(SERVER, CLIENT, "PA", 7000, 3000, b"HTTP/1.1 200 OK\r\n", t=1.0),
            seg(CLIENT, SERVER, "PA", 3000, 7017, b"GET /", t=1.1)]
    _, chunks = run(pkts)
    c = last(chunks)
    assert c.client_port == 40000 and c.client_by == "port"
    assert c.server_data.startswith(b"HTTP/1.1") and c.client_data == b"GET /"


def test_predicate_selects_flow_on_any_port_and_sets_client():
    a, b = ("10.0.0.5", 5555), ("10.0.0.6", 1234)  # neither port selected
    pkts = [seg(a, b, "PA", 1, 1, b"GET /x HTTP/1.1\r\n", t=1.0),
            seg(b, a, "PA", 1, 18, b"HTTP/1.1 200 OK\r\n", t=1.1),
            seg(("10.0.0.7", 5), ("10.0.0.8", 6), "PA", 1, 1, b"noise", t=1.2)]
    collector = StreamCollector(set(), 64, 100, 60, client_predicate=prefix_predicate([b"GET "]))
    _, chunks = run(pkts, collector)
    assert {c.client_port for c in chunks} == {5555}
    c = last(chunks)
    assert c.client_by == "predicate" and c.server_data.startswith(b"HTTP/1.1")


def test_idle_timeout_uses_event_time():
    collector = StreamCollector({80}, 64, 100, idle_timeout_s=10)
    first = collector.feed(decode(batch_from_scapy(handshake(t=1.0) + [
        seg(CLIENT, SERVER, "PA", 1001, 5001, b"GET", t=1.1)])))
    assert first and not any(c.final for c in first)
    other = (("10.0.0.9", 41000), ("10.0.0.2", 80))
    later = collector.feed(decode(batch_from_scapy([seg(*other, "S", 1, t=20.0)])))
    finals = [c for c in later if c.final]
    assert len(finals) == 1 and finals[0].reason == "idle" and finals[0].client_data == b"GET"


def test_bounds_evict_oldest_and_count():
    collector = StreamCollector({80}, 64, max_flows=3, idle_timeout_s=600)
    pkts = []
    for i in range(10):
        c = (f"10.0.1.{i}", 40000 + i)
        pkts += [seg(c, SERVER, "S", 10, t=1.0 + i), seg(c, SERVER, "PA", 11, 1, b"GET", t=1.0 + i)]
    chunks = []
    for p in pkts:
        chunks += collector.feed(decode(batch_from_scapy([p])))
        assert collector.held_flows <= 3
    assert collector.stats["evicted"] == 7
    evicted = [c for c in chunks if c.reason == "evicted"]
    assert sorted(c.client_port for c in evicted) == list(range(40000, 40007))


def test_byte_bound_evicts():
    collector = StreamCollector({80}, 1000, max_flows=100, idle_timeout_s=600,
                                max_bytes_total=2500)
    for i in range(5):
        c = (f"10.0.2.{i}", 40000 + i)
        collector.feed(decode(batch_from_scapy([seg(c, SERVER, "S", 10, t=1.0 + i),
                                                seg(c, SERVER, "PA", 11, 1, b"x" * 900, t=1 + i)])))
        assert collector.held_bytes <= 2500
    assert collector.stats["evicted"] == 3


def test_release_skips_later_segments_until_new_syn():
    collector = StreamCollector({80}, 64, 100, 60)
    chunks = collector.feed(decode(batch_from_scapy(handshake() + [
        seg(CLIENT, SERVER, "PA", 1001, 5001, b"GET", t=1.1)])))
    collector.release(chunks[-1].key)
    assert collector.held_flows == 0
    assert collector.feed(decode(batch_from_scapy([
        seg(CLIENT, SERVER, "PA", 1004, 5001, b"more", t=1.2)]))) == []
    again = collector.feed(decode(batch_from_scapy(handshake(t=2.0, cseq=90000) + [
        seg(CLIENT, SERVER, "PA", 90001, 5001, b"NEW", t=2.1)])))
    assert again and again[-1].client_data == b"NEW"


def test_port_reuse_starts_a_new_flow():
    pkts = handshake() + [seg(CLIENT, SERVER, "PA", 1001, 5001, b"ONE", t=1.1)] + \
        handshake(t=2.0, cseq=777777) + [seg(CLIENT, SERVER, "PA", 777778, 5001, b"TWO", t=2.1)]
    _, chunks = run(pkts)
    finals = [c for c in chunks if c.final]
    assert [c.client_data for c in finals] == [b"ONE", b"TWO"]


def test_out_of_order_segment_beyond_the_cap_is_ignored():
    """A segment that starts past the per-direction cap, arriving before the hole below it
    is filled (seen on large/ndpi__1kxun.pcap), must neither crash nor be kept."""
    pkts = handshake() + [seg(CLIENT, SERVER, "PA", 1001, 5001, b"ABCD", t=1.1),
                          seg(CLIENT, SERVER, "PA", 1101, 5001, b"far" * 40, t=1.2),  # > cap
                          seg(CLIENT, SERVER, "PA", 1301, 5001, b"beyond" * 40, t=1.3)]
    for batches in (1, 3):
        _, chunks = run(pkts, StreamCollector({80}, 64, 100, 60), batches=batches)
        assert last(chunks).client_data == b"ABCD"


def spoofed_syn_frames(n: int, dport: int = 80) -> list[bytes]:
    """n Ethernet/IPv4/TCP SYNs (no payload) from distinct source addresses and ports."""
    eth = bytes(12) + b"\x08\x00"
    frames = []
    for i in range(n):
        ip = struct.pack("!BBHHHBBHII", 0x45, 0, 40, 0, 0, 64, 6, 0, 0x0B000000 + i, 0x0A000002)
        tcp = struct.pack("!HHIIBBHHH", 1024 + i % 60000, dport, i * 7919, 0, 0x50, SYN_FLAG,
                          65535, 0, 0)
        frames.append(eth + ip + tcp)
    return frames


def test_syn_flood_creates_no_flow_state_and_no_python_loop():
    n = 50_000
    collector = StreamCollector({80}, 64, max_flows=1000, idle_timeout_s=60)
    batch = batch_from_frames(spoofed_syn_frames(n), np.arange(n, dtype=np.int64) * 1000 + 10**18)
    decoded = decode(batch)
    assert int((decoded.dst_port == 80).sum()) == n  # the frames are what the test means
    assert collector.feed(decoded) == [] and collector.flush() == []
    assert collector.held_flows == 0
    assert collector.stats.get("segments_looped", 0) == 0
    assert collector.stats.get("flows", 0) == 0
    assert collector.stats["handshakes_held"] <= 1000  # remembered SYNs stay bounded


def test_syn_in_an_earlier_batch_still_orients_and_bases_the_flow():
    pkts = handshake() + [seg(CLIENT, SERVER, "PA", 1005, 5001, b"EFGH", t=1.1),  # hole first
                          seg(CLIENT, SERVER, "FA", 1009, 5001, t=1.2)]
    results = []
    for size in (1, 3, len(pkts)):
        collector = StreamCollector({80}, 64, 100, 60)
        chunks = []
        for i in range(0, len(pkts), size):
            chunks += collector.feed(decode(batch_from_scapy(pkts[i : i + size])))
        chunks += collector.flush()
        c = last(chunks)
        results.append((c.client_by, c.client_data, c.gap, c.start_ts))
    # the SYN fixed the base: the data before "EFGH" is known to be missing
    assert results[0] == ("syn", b"", (True, False), 1_000_000_000)
    assert results.count(results[0]) == len(results)


def _final_chunks(pkts, size, make):
    collector = make()
    chunks = []
    for i in range(0, len(pkts), size):
        chunks += collector.feed(decode(batch_from_scapy(pkts[i : i + size])))
    chunks += collector.flush()
    finals = [c for c in chunks if c.final]
    return sorted(((c.key, c.client_by, c.start_ts, c.data, c.ended, c.gap, c.capped,
                    c.packets, c.reason) for c in finals), key=repr)


def test_flows_opened_by_the_predicate_see_the_rest_of_the_same_batch():
    banner_side, other = ("10.0.0.5", 2222), ("10.0.0.6", 51000)  # neither port selected
    pkts = [seg(other, banner_side, "S", 100, t=1.0),
            seg(banner_side, other, "SA", 900, 101, t=1.0),
            seg(other, banner_side, "A", 101, 901, t=1.0),
            seg(banner_side, other, "PA", 901, 101, b"SSH-2.0-srv\r\n", t=1.01)]
    server_seq, client_seq = 914, 101
    for i in range(60):  # an exchange long enough to straddle batches of 1, 7 and 64
        t = 1.02 + i * 0.01
        if i % 2:
            body = bytes([65 + i % 26]) * (3 + i % 5)
            pkts.append(seg(banner_side, other, "PA", server_seq, client_seq, body, t=t))
            server_seq += len(body)
        else:
            body = b"SSH-2.0-cli\r\n" if i == 0 else bytes([97 + i % 26]) * (2 + i % 4)
            pkts.append(seg(other, banner_side, "PA", client_seq, server_seq, body, t=t))
            client_seq += len(body)
        if i % 9 == 4:  # a port-80 flow interleaved, its handshake in earlier packets
            c = ("10.0.1.1", 40000 + i)
            pkts += [seg(c, SERVER, "S", 10, t=t), seg(SERVER, c, "SA", 70, 11, t=t),
                     seg(c, SERVER, "PA", 11, 71, b"GET / HTTP/1.0\r\n\r\n", t=t + 0.001)]
    pkts.append(seg(other, banner_side, "RA", client_seq, server_seq, t=2.0))

    def make():
        return StreamCollector({80}, 4096, 100, 60, client_predicate=prefix_predicate([b"SSH-"]))

    expected = _final_chunks(pkts, len(pkts), make)
    ssh = [c for c in expected if c[0][2] == 2222 or c[0][4] == 2222]
    assert len(ssh) == 1 and ssh[0][1] == "predicate" and ssh[0][-1] == "rst"
    assert len(ssh[0][3][0]) + len(ssh[0][3][1]) == server_seq - 901 + client_seq - 101
    assert all(c[1] == "syn" for c in expected if c[0][4] == 80) and len(expected) == 8
    for size in (1, 7, 64):
        assert _final_chunks(pkts, size, make) == expected, size


# --- the column-wise fast path against the per-segment loop ----------------------------------

def _feed_all(pkts, cuts, collector):
    chunks, bounds = [], [0, *cuts, len(pkts)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if hi > lo:
            chunks.append(collector.feed(decode(batch_from_scapy(pkts[lo:hi]))))
    chunks.append(collector.flush())
    return chunks


def _loop_stats(collector):
    return {k: v for k, v in collector.stats.items()
            if k not in ("segments_looped", "segments_fast")}


@st.composite
def tcp_sessions(draw):
    """1-3 interleaved sessions with the things the fast path must leave to the loop:
    missing handshakes, retransmitted/reordered/dropped segments, payload after FIN, RST,
    port reuse, SYN-ACK retransmission; plus batch cut points."""
    pkts = []
    t = 1.0
    for flow in range(draw(st.integers(1, 3))):
        client = (f"10.0.0.{flow + 1}", 40000 + flow)
        server = ("10.0.9.9", draw(st.sampled_from([80, 81, 2222])))
        cseq, sseq = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
        segs = []
        for _ in range(draw(st.integers(1, 2))):  # a second round = port reuse
            if draw(st.booleans()):
                segs += [seg(client, server, "S", cseq), seg(server, client, "SA", sseq,
                                                             (cseq + 1) % 2**32)]
                if draw(st.integers(0, 5)) == 0:
                    segs.append(seg(server, client, "SA", sseq, (cseq + 1) % 2**32))
                cseq, sseq = (cseq + 1) % 2**32, (sseq + 1) % 2**32
            for _ in range(draw(st.integers(0, 6))):
                from_client = draw(st.booleans())
                body = draw(st.sampled_from([b"GET / HTTP/1.0\r\n\r\n", b"SSH-2.0-x\r\n",
                                             b"x" * 7, b"y" * 40, b"z"]))
                src, dst, s, a = ((client, server, cseq, sseq) if from_client
                                  else (server, client, sseq, cseq))
                segs.append(seg(src, dst, "PA", s, a, body))
                if from_client:
                    cseq = (cseq + len(body)) % 2**32
                else:
                    sseq = (sseq + len(body)) % 2**32
            ending = draw(st.sampled_from(["fin", "fin", "rst", "open", "half"]))
            if ending in ("fin", "half"):
                segs.append(seg(client, server, "FA", cseq, sseq))
            if ending == "fin":
                segs.append(seg(server, client, "FA", sseq, cseq))
            if ending == "rst":
                segs.append(seg(server, client, "RA", sseq, cseq))
            cseq = (cseq + 100000) % 2**32
        for _ in range(draw(st.integers(0, 2))):  # damage: swap, duplicate or drop
            if len(segs) < 2:
                break
            i = draw(st.integers(0, len(segs) - 2))
            op = draw(st.sampled_from(["swap", "dup", "drop"]))
            if op == "swap":
                segs[i], segs[i + 1] = segs[i + 1], segs[i]
            elif op == "dup":
                segs.insert(i + 1, segs[i].copy())
            else:
                del segs[i]
        pkts.append(segs)
    merged = []
    while any(pkts):  # interleave the sessions in a drawn order
        live = [s for s in pkts if s]
        merged.append(live[draw(st.integers(0, len(live) - 1))].pop(0))
    for pkt in merged:
        pkt.time = t
        t += 0.001
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(merged) - 1)), max_size=3)))
    return merged, cuts


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tcp_sessions(), st.sampled_from([{80}, None, set()]), st.integers(4, 64),
       st.integers(0, 4), st.booleans())
def test_fast_path_gives_what_the_loop_gives(session, ports, cap, meta, predicate):
    pkts, cuts = session

    def make(fast):
        return StreamCollector(ports, cap, 100, 60, max_packets_meta=meta, fast_path=fast,
                               client_predicate=prefix_predicate([b"GET ", b"SSH-"])
                               if predicate else None)

    fast, loop = make(True), make(False)
    assert _feed_all(pkts, cuts, fast) == _feed_all(pkts, cuts, loop)
    assert _loop_stats(fast) == _loop_stats(loop)
    assert list(fast._ignored) == list(loop._ignored)


def test_fast_path_takes_plain_sessions_without_the_loop():
    pkts = handshake() + [
        seg(CLIENT, SERVER, "PA", 1001, 5001, b"GET / HTTP/1.0\r\n\r\n", t=1.1),
        seg(SERVER, CLIENT, "PA", 5001, 1019, b"HTTP/1.0 200 OK\r\n\r\nhi", t=1.2),
        seg(CLIENT, SERVER, "FA", 1019, 5022, t=1.3),
        seg(SERVER, CLIENT, "FA", 5022, 1020, t=1.3)]
    collector = StreamCollector({80}, 64, 100, 60)
    chunk = last(collector.feed(decode(batch_from_scapy(pkts))))
    assert collector.stats.get("segments_looped", 0) == 0 and collector.stats["segments_fast"]
    assert chunk.final and chunk.reason == "fin" and chunk.client_by == "syn"
    assert chunk.data == (b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nhi")
    assert chunk.packets == [(1_100_000_000, 0, 18), (1_200_000_000, 1, 21)]


def test_fast_path_leaves_odd_sessions_to_the_loop():
    # Each session has one thing only the loop handles; fast path and loop must agree.
    data_after_fin = handshake() + [
        seg(CLIENT, SERVER, "FA", 1001, 5001, t=1.1),
        seg(CLIENT, SERVER, "PA", 1001, 5001, b"late", t=1.2),
        seg(SERVER, CLIENT, "FA", 5001, 1002, t=1.3)]
    port_reuse = handshake() + [
        seg(CLIENT, SERVER, "PA", 1001, 5001, b"one", t=1.1),
        seg(SERVER, CLIENT, "RA", 5001, 1004, t=1.2),
        seg(CLIENT, SERVER, "S", 7000, 0, t=1.3),
        seg(CLIENT, SERVER, "PA", 7001, 0, b"two", t=1.4),
        seg(CLIENT, SERVER, "RA", 7004, 0, t=1.5)]
    new_synack = handshake() + [
        seg(SERVER, CLIENT, "SA", 9000, 1001, t=1.05),
        seg(SERVER, CLIENT, "PA", 9001, 1001, b"hello", t=1.1),
        seg(CLIENT, SERVER, "RA", 1001, 9006, t=1.2)]
    for pkts in (data_after_fin, port_reuse, new_synack):
        results = []
        for fast in (True, False):
            collector = StreamCollector({80}, 64, 100, 60, fast_path=fast)
            results.append((_feed_all(pkts, [], collector), _loop_stats(collector)))
        assert results[0] == results[1]


# --- compiled kernels against the numpy code they replaced -----------------------------------

def _gather_reference(data, pos, width):
    idx = pos[:, None] + np.arange(width, dtype=np.int64)
    inside = (idx >= 0) & (idx < data.shape[0])
    out = np.zeros(idx.shape, dtype=np.uint8)
    out[inside] = data[idx[inside]]
    return out


def _seq_ack_reference(data, offset, sport, dport, flags):
    """The former whole-column tcp_seq_ack: every header length tried on every row."""
    n = offset.shape[0]
    seq, ack, found = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, bool)
    for header_len in range(20, 64, 4):
        todo = ~found
        pos = offset - header_len
        head = _gather_reference(data, pos, 14).astype(np.int64)
        ok = (todo & (pos >= 0) & ((head[:, 0] << 8 | head[:, 1]) == sport)
              & ((head[:, 2] << 8 | head[:, 3]) == dport)
              & ((head[:, 12] >> 4) * 4 == header_len) & (head[:, 13] == flags))
        seq = np.where(ok, head[:, 4] << 24 | head[:, 5] << 16 | head[:, 6] << 8 | head[:, 7], seq)
        ack = np.where(ok, head[:, 8] << 24 | head[:, 9] << 16 | head[:, 10] << 8 | head[:, 11],
                       ack)
        found |= ok
    return seq, ack, found


def _fake_packets(data, offset, sport, dport, flags, plen=None):
    from types import SimpleNamespace

    return SimpleNamespace(data=data, payload_offset=offset, src_port=sport, dst_port=dport,
                           tcp_flags=flags,
                           payload_len=plen if plen is not None else np.zeros_like(offset))


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.lists(st.integers(-80, 400), max_size=30),
       st.integers(0, 2**32 - 1))
def test_seq_ack_kernel_equals_the_column_version(blob, offsets, salt):
    """Random bytes with real headers planted at some offsets; offsets anywhere (also past
    the buffer): same (seq, ack, found) as the numpy version, no read outside the buffer."""
    rng = np.random.default_rng(salt)
    data = bytearray(blob)
    n = len(offsets)
    sport = rng.integers(0, 65536, n).astype(np.uint16)
    dport = rng.integers(0, 65536, n).astype(np.uint16)
    flags = rng.integers(0, 256, n).astype(np.uint8)
    for i, off in enumerate(offsets):
        header_len = int(rng.integers(5, 16)) * 4
        at = off - header_len
        if rng.random() < 0.7 and at >= 0 and off <= len(data):
            data[at : at + 14] = struct.pack("!HHIIBB", int(sport[i]), int(dport[i]),
                                             int(rng.integers(0, 2**32)),
                                             int(rng.integers(0, 2**32)), header_len // 4 << 4,
                                             int(flags[i]))
    arr = np.frombuffer(bytes(data), dtype=np.uint8)
    offset = np.array(offsets, dtype=np.int64)
    packets = _fake_packets(arr, offset, sport, dport, flags)
    got = tcp_seq_ack(packets, np.arange(n))
    want = _seq_ack_reference(arr, offset, sport.astype(np.int64), dport.astype(np.int64),
                              flags)
    for g, w in zip(got, want, strict=True):
        assert g.tolist() == w.tolist()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200), st.lists(st.tuples(st.integers(-20, 250), st.integers(-2, 20)),
                                         max_size=20))
def test_payload_heads_and_predicate_equal_the_per_byte_versions(blob, rows):
    arr = np.frombuffer(blob, dtype=np.uint8)
    offset = np.array([r[0] for r in rows], dtype=np.int64)
    plen = np.array([r[1] for r in rows], dtype=np.int64)
    zeros = np.zeros(len(rows), dtype=np.int64)
    head = payload_heads(_fake_packets(arr, offset, zeros, zeros, zeros, plen),
                         np.arange(len(rows)), 8)
    want = _gather_reference(arr, offset, 8)
    want[np.arange(8)[None, :] >= plen[:, None]] = 0
    assert head.tolist() == want.tolist()
    prefixes = [b"GET ", b"POST ", b"G", b"SSH-", b"\x16\x03", b"ABCDEFGH", blob[:3]]
    got = prefix_predicate(prefixes)(head, plen)
    expect = [any(len(p) and h[: len(p)].tobytes() == p and n >= len(p) for p in prefixes)
              for h, n in zip(head, plen, strict=True)]
    assert got.tolist() == expect


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=60), st.lists(st.integers(0, 40), max_size=60),
       st.lists(st.integers(0, 2**64 - 1), max_size=60))
def test_hash_member_equals_isin(keys, picks, others):
    keys_arr = np.array(keys, dtype=np.uint64)
    present = [keys[i % len(keys)] for i in picks] if keys else []
    values = np.concatenate([np.array(present, dtype=np.uint64), np.array(others, dtype=np.uint64),
                             np.arange(20, dtype=np.uint64)])  # low-bit collisions too
    keys_arr = np.concatenate([keys_arr, np.arange(0, 64, 4, dtype=np.uint64)])
    assert hash_member(values, keys_arr).tolist() == np.isin(values, keys_arr).tolist()
