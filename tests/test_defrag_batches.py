"""Flow accounting of IP fragments does not depend on where batches were cut (docs/sensor.md
"IP fragments", Flows): a later fragment that came before its datagram's first fragment is
counted under the datagram's flow whichever batch that first fragment is in, and one whose
first fragment never comes is a ports-0 packet (at the timeout, or at the end of input)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packet_builders import batch_from_frames
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrFragment,
    fragment6,
)
from scapy.packet import Raw
from test_defrag import (
    CLIENT,
    CLIENT6,
    RESOLVER,
    RESOLVER6,
    SECOND,
    SERVER,
    frames_of,
    v4_response,
    v6_response,
)

from pipeline.config import load_config
from sensors.sensor import Sensor

MS = 1_000_000


def flow_records(frames: list[bytes], ts: list[int], cuts: list[int]) -> list[str]:
    """Every column of every flow record of `frames` through a Sensor fed batches of the
    sizes in `cuts` (the last one repeated), then flushed; sorted, as text."""
    sensor = Sensor(load_config(None)["sensor"])
    events = []
    lo = k = 0
    while lo < len(frames):
        size = cuts[min(k, len(cuts) - 1)]
        events += sensor.process(batch_from_frames(frames[lo:lo + size], ts_ns=ts[lo:lo + size]))
        lo, k = lo + size, k + 1
    events += sensor.flush()
    rows = []
    for batch in (e for e in events if e.kind == "flow"):
        names = sorted(batch.columns)
        rows += [repr([(n, batch.columns[n][i]) for n in names]) for i in range(len(batch))]
    return sorted(rows)


def icmp_echo(ident: int) -> list:
    """A 4000-byte ICMP echo request and its reply, each in fragments."""
    data = Raw(bytes(range(256)) * 16)
    return [fragment(IP(src=CLIENT, dst=SERVER, id=ident) / ICMP(id=7, seq=1) / data, 1400),
            fragment(IP(src=SERVER, dst=CLIENT, id=ident + 1) / ICMP(type=0, id=7, seq=1)
                     / data, 1400)]


def icmp6_echo(ident: int) -> list:
    data = Raw(bytes(range(256)) * 16)
    return [fragment6(IPv6(src=CLIENT6, dst=RESOLVER6) / IPv6ExtHdrFragment(id=ident)
                      / ICMPv6EchoRequest(id=9, seq=1) / data, 1400),
            fragment6(IPv6(src=RESOLVER6, dst=CLIENT6) / IPv6ExtHdrFragment(id=ident + 1)
                      / ICMPv6EchoReply(id=9, seq=1) / data, 1400)]


def query(sport: int) -> object:
    return IP(src=CLIENT, dst=RESOLVER) / UDP(sport=sport, dport=53) / DNS(
        id=4242, qd=DNSQR(qname="big.example.org"))


def out_of_order_capture() -> tuple[list[bytes], list[int]]:
    """Out-of-order fragments of IPv4 and IPv6, UDP and ICMP datagrams among other packets:
    reversed, shuffled, straddling the cuts of every batch size tested; a datagram whose
    first fragment never comes and times out (30 s) in the capture, and one still pending
    at its end. Times 10 ms apart, with a 40 s gap (the timeout passes in it)."""
    rng = random.Random(7)
    v4 = fragment(v4_response(101), 600)  # 6 fragments, DNS response to the query below
    v6 = fragment6(v6_response(0x2002), 700)
    echo, reply = icmp_echo(301)
    echo6, reply6 = icmp6_echo(401)
    orphan = fragment(IP(src=SERVER, dst=CLIENT, id=501) / UDP(sport=5000, dport=6000)
                      / Raw(b"x" * 3000), 800)[1:]  # its first fragment never comes
    late = fragment(IP(src=RESOLVER, dst=CLIENT, id=502) / UDP(sport=5001, dport=6001)
                    / Raw(b"y" * 2000), 800)[1:]  # nor this one's: pending at the end
    other = [IP(src=CLIENT, dst=SERVER) / UDP(sport=1000 + i, dport=9) / Raw(b"z" * 10)
             for i in range(40)]
    filler = [IP(src=CLIENT, dst=SERVER) / UDP(sport=1000 + i % 5, dport=9) / Raw(b"f")
              for i in range(100)]
    big = fragment(IP(src=RESOLVER, dst=CLIENT, id=103) / UDP(sport=53, dport=44444)
                   / Raw(b"b" * 3000), 600)  # reversed across the cut at 97
    shuffled6 = list(v6)
    rng.shuffle(shuffled6)
    shuffled_reply = list(reply)
    rng.shuffle(shuffled_reply)
    packets = ([query(33333)] + other[:3] + v4[::-1][:3] + other[3:6] + v4[::-1][3:]
               + other[6:9] + orphan[:1] + shuffled6[:2] + other[9:12] + shuffled6[2:]
               + echo[::-1] + other[12:14] + shuffled_reply + orphan[1:] + echo6[::-1]
               + other[14:20] + reply6[1:] + other[20:25] + reply6[:1])
    packets += filler[:94 - len(packets)] + big[::-1] + filler[-3:]
    gap_at = len(packets)  # the orphan's datagram times out in the gap
    packets += other[25:32] + late[::-1] + other[32:]
    frames = frames_of(packets)
    ts = [1_000 * SECOND + i * 10 * MS + (40 * SECOND if i >= gap_at else 0)
          for i in range(len(frames))]
    return frames, ts


@pytest.fixture(scope="module")
def capture() -> tuple[list[bytes], list[int], list[str]]:
    frames, ts = out_of_order_capture()
    return frames, ts, flow_records(frames, ts, [65536])


@pytest.mark.parametrize("batch", [97, 7, 3, 1])
def test_flow_records_do_not_depend_on_the_batch_size(capture, batch):
    frames, ts, whole = capture
    assert len(frames) > 97  # (97 cuts it too)
    assert flow_records(frames, ts, [batch]) == whole


def test_out_of_order_fragments_are_counted_in_their_datagrams_flow():
    """The flows themselves (batch size 1: every later fragment in an earlier batch than
    its first fragment): no ports-0 flow but the two datagrams without a first fragment,
    each datagram's flow with all its fragments, starting at its earliest fragment."""
    frames, ts = out_of_order_capture()
    sensor = Sensor(load_config(None)["sensor"])
    events = []
    for k in range(len(frames)):
        events += sensor.process(batch_from_frames(frames[k:k + 1], ts_ns=ts[k:k + 1]))
    assert sensor.defrag.waiting > 0  # the last datagram's fragments, at the end
    events += sensor.flush()
    flows = [e for e in events if e.kind == "flow"]
    col = {n: np.concatenate([f.columns[n] for f in flows]) for n in flows[0].columns}
    by_ports = {(int(s), int(d), int(t)): i for i, (s, d, t) in enumerate(zip(
        col["src_port"], col["dst_port"], col["transport"], strict=True))}
    zero = sorted(int(col["src_packets"][i] + col["dst_packets"][i])
                  for i in np.flatnonzero((col["src_port"] == 0) & (col["dst_port"] == 0)))
    assert zero == [2, 3]  # the datagram still pending at the end, and the timed-out one
    for ident in (501, 502):  # each ports-0 flow has its fragments' own times
        times = [t for f, t in zip(frames, ts, strict=True)
                 if f[14 + 4:14 + 6] == ident.to_bytes(2, "big")]
        i = next(i for i in range(len(col["end"]))
                 if col["src_port"][i] == 0 and col["timestamp"][i] == min(times))
        assert int(col["end"][i]) == max(times)
    dns = by_ports[(33333, 53, 17)]  # query + the 6 fragments of the reversed response
    assert (int(col["src_packets"][dns]), int(col["dst_packets"][dns])) == (1, 6)
    response_times = [t for f, t in zip(frames, ts, strict=True)
                      if f[14 + 4:14 + 6] == (101).to_bytes(2, "big")]
    assert int(col["end"][dns]) == max(response_times)
    # a flow whose first packet is a later fragment (sent first): it starts then, and its
    # first fragment (the last of them) is the end
    big = by_ports[(53, 44444, 17)]
    big_times = [t for f, t in zip(frames, ts, strict=True)
                 if f[14 + 4:14 + 6] == (103).to_bytes(2, "big")]
    assert int(col["src_packets"][big]) == len(big_times) == 6
    assert (int(col["timestamp"][big]), int(col["end"][big])) == (big_times[0], big_times[-1])
    echo = by_ports[(8, 0, 1)]
    assert (int(col["src_packets"][echo]), int(col["dst_packets"][echo])) == (3, 3)
    echo6 = by_ports[(128, 129, 58)]
    assert (int(col["src_packets"][echo6]), int(col["dst_packets"][echo6])) == (4, 4)
    assert sensor.defrag_counts()["datagrams"] == 7
    assert sensor.defrag_counts()["timeouts"] == 1


def test_a_datagram_first_fragment_last_starts_its_flow_at_its_first_arrival():
    """A datagram alone, last fragment first, one packet a batch: one flow, from the time
    of the fragment that came first to that of the first fragment."""
    frames = frames_of(fragment(v4_response(9), 600)[::-1])
    ts = [5 * SECOND + k * MS for k in range(len(frames))]
    records = flow_records(frames, ts, [1])
    assert records == flow_records(frames, ts, [65536])
    sensor = Sensor(load_config(None)["sensor"])
    events = []
    for k in range(len(frames)):
        events += sensor.process(batch_from_frames(frames[k:k + 1], ts_ns=ts[k:k + 1]))
    events += sensor.flush()
    flows = [e for e in events if e.kind == "flow"]
    assert sum(len(f) for f in flows) == 1
    f = flows[0].columns
    assert (int(f["src_port"][0]), int(f["dst_port"][0])) == (53, 33333)
    assert int(f["src_packets"][0]) == len(frames)
    assert int(f["timestamp"][0]) == ts[0] and int(f["end"][0]) == ts[-1]


def test_waiting_fragments_are_bounded():
    """Later fragments of never-completed datagrams wait at most WAIT_PER_DATAGRAM x
    max_datagrams in all (beyond, counted where they are, ports-0)."""
    frames = [bytes(frames_of([IP(src=CLIENT, dst=SERVER, id=i, flags="MF", frag=100,
                                  proto=17) / Raw(b"w" * 64)])[0]) for i in range(400)]
    config = {**load_config(None)["sensor"], "defrag": {"max_datagrams": 10}}
    sensor = Sensor(config)
    sensor.process(batch_from_frames(frames, ts_ns=[k * MS for k in range(len(frames))]))
    assert sensor.defrag.waiting <= 8 * 10
    assert sensor.defrag.pending == 10


draws = st.lists(st.sampled_from(["v4", "v6", "icmp", "icmp6", "orphan", "other"]),
                 min_size=1, max_size=6)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kinds=draws, seed=st.integers(0, 2**32 - 1),
       cuts=st.lists(st.integers(1, 9), min_size=1, max_size=8))
def test_any_order_and_any_cuts_give_the_records_of_one_batch(kinds, seed, cuts):
    rng = random.Random(seed)
    packets = []
    for n, kind in enumerate(kinds):
        if kind == "v4":
            packets += fragment(v4_response(10 + n), rng.choice([500, 900, 1480]))
        elif kind == "v6":
            packets += fragment6(v6_response(0x3000 + n), rng.choice([600, 1500]))
        elif kind == "icmp":
            packets += [p for d in icmp_echo(20 + 2 * n) for p in d]
        elif kind == "icmp6":
            packets += [p for d in icmp6_echo(0x4000 + 2 * n) for p in d]
        elif kind == "orphan":
            packets += fragment(IP(src=SERVER, dst=CLIENT, id=40 + n) / UDP(sport=7, dport=8)
                                / Raw(b"o" * 2000), 600)[1:]
        else:
            packets += [query(2000 + n)]
    rng.shuffle(packets)
    frames = frames_of(packets)
    ts, now = [], 0
    for _ in frames:  # gaps of up to 20 s: some datagrams time out
        now += rng.choice([MS, MS, 100 * MS, 20 * SECOND])
        ts.append(now)
    assert flow_records(frames, ts, cuts) == flow_records(frames, ts, [65536])


def test_many_waiting_fragments_across_batches():
    """1100 datagrams whose later fragments all come first (the store of waiting rows grows
    while it holds rows), their first fragments in later batches: one flow each with both."""
    datagrams = [fragment(IP(src=SERVER, dst=CLIENT, id=i) / UDP(sport=10000 + i, dport=53)
                          / Raw(b"d" * 1000), 600) for i in range(1100)]
    frames = frames_of([d[1] for d in datagrams] + [d[0] for d in datagrams])
    ts = [k * MS for k in range(len(frames))]
    records = flow_records(frames, ts, [500])
    assert records == flow_records(frames, ts, [65536])
    assert len(records) == 1100
    assert all("('src_packets', np.uint64(2))" in r and "('src_port', np.uint16(0))" not in r
               for r in records)
