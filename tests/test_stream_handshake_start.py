"""A flow's start_ts does not depend on batch boundaries when its handshake was
retransmitted (task W8): the stream collector remembers the SYN / SYN-ACK rows of flows it
does not hold yet (the latest of each), and replays them when payload opens the flow in a
later batch; the first replayed row carries the flow's earliest remembered handshake time,
so the flow starts at its first SYN, as when one batch holds every packet
(large/zeek__ssh.pcap: three SYN / SYN-ACK pairs, then the SSH banners)."""

from __future__ import annotations

from packet_builders import batch_from_scapy
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from sensors.decode import decode
from sensors.tcp_stream import StreamCollector

CLIENT = ("10.0.0.1", 51489)
SERVER = ("10.0.0.2", 22)
NS = 1_000_000_000


def seg(src, dst, flags, seq, ack=0, data=b"", t=0.0):
    pkt = Ether() / IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags=flags,
                                                     seq=seq, ack=ack) / data
    pkt.time = t
    return pkt


def session(first_isn: int = 1000) -> list:
    """Three SYN / SYN-ACK pairs (the last SYN's ISN may differ: a new attempt), then the
    handshake's ACK, banners both ways and FINs."""
    c, s = 1000, 5000
    pkts = []
    for i in range(3):
        isn = first_isn if i < 2 else c
        pkts += [seg(CLIENT, SERVER, "S", isn, 0, t=1.0 + i * 0.1),
                 seg(SERVER, CLIENT, "SA", s, isn + 1, t=1.0 + i * 0.1 + 0.01)]
    pkts += [seg(CLIENT, SERVER, "A", c + 1, s + 1, t=1.25),
             seg(SERVER, CLIENT, "PA", s + 1, c + 1, b"SSH-2.0-server\r\n", t=1.3),
             seg(CLIENT, SERVER, "PA", c + 1, s + 17, b"SSH-2.0-client\r\n", t=1.4),
             seg(CLIENT, SERVER, "FA", c + 17, s + 17, t=1.5),
             seg(SERVER, CLIENT, "FA", s + 17, c + 18, t=1.6)]
    return pkts


def chunks_of(pkts, cuts: list[int]) -> list:
    collector = StreamCollector({22}, 4096, 100, 60, max_packets_meta=16)
    out = []
    bounds = [0, *cuts, len(pkts)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if hi > lo:
            out += collector.feed(decode(batch_from_scapy(pkts[lo:hi])))
    out += collector.flush()
    return [c for c in out if c.final]


def data_chunks(pkts, cuts: list[int]) -> list[tuple]:
    """(start_ts, client_by, client port, data, packets) of the final chunks with data."""
    return [(c.start_ts, c.client_by, c.client_port, c.data, c.packets)
            for c in chunks_of(pkts, cuts) if c.data != (b"", b"")]


CUTS = ([1], [2], [5], [6], [7], [1, 3, 5], [2, 4, 6], [1, 2, 3, 4, 5, 6, 7])


def test_a_retransmitted_handshake_starts_at_the_first_syn_whatever_the_batches() -> None:
    pkts = session()
    whole = data_chunks(pkts, [])
    assert len(whole) == 1 and whole[0][:2] == (1 * NS, "syn")
    for cuts in CUTS:
        assert data_chunks(pkts, cuts) == whole, cuts


def test_a_new_attempt_starts_at_its_own_syn_whatever_the_batches() -> None:
    """The first two SYNs carry another ISN: an abandoned attempt (a flow of its own when
    one batch holds everything), so the connection starts at the third SYN."""
    pkts = session(first_isn=700)
    whole = data_chunks(pkts, [])
    assert len(whole) == 1 and whole[0][:2] == (1_200_000_000, "syn")
    for cuts in CUTS:
        assert data_chunks(pkts, cuts) == whole, cuts
