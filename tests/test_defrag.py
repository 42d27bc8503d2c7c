"""IP fragment reassembly (sensors/defrag.py, the decoder's FragmentRows): fragmented DNS
and HTTP give the events of the unfragmented traffic, whatever the fragment order,
duplication, overlap or batch size; the flow table counts every fragment on the wire under
its datagram's flow; bounds (timeout, eviction, size) are counted; tshark as the oracle."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from packet_builders import batch_from_frames
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import GRE, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.utils import wrpcap
from test_core_fused_decode import assert_same

from pipeline.config import ConfigError, load_config
from sensors.decode import decode, decode_columnwise
from sensors.defrag import WAIT_PER_DATAGRAM, DefragConfig, Defragmenter
from sensors.packets import ip_column_to_str
from sensors.pcap_reader import CaptureReader
from sensors.sensor import Sensor

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
CLIENT, RESOLVER, SERVER = "10.1.1.1", "10.3.3.3", "10.2.2.2"
CLIENT6, RESOLVER6 = "2001:db8::1", "2001:db8::53"
SECOND = 1_000_000_000


def dns_response(answers: int = 60, qname: str = "big.example.org") -> DNS:
    """A DNS response of ~3.5 KB: `answers` A records with distinct TTLs and addresses."""
    records = [DNSRR(rrname=f"host-{i:03d}.fragmentation-test.{qname}", type="A", ttl=60 + i,
                     rdata=f"192.0.2.{i}") for i in range(answers)]
    return DNS(id=4242, qr=1, rd=1, ra=1, rcode=0, qd=DNSQR(qname=qname), an=records)


def v4_response(ident: int = 777) -> IP:
    return IP(src=RESOLVER, dst=CLIENT, id=ident) / UDP(sport=53, dport=33333) / dns_response()


def v6_response(ident: int = 0x1234567) -> IPv6:
    return (IPv6(src=RESOLVER6, dst=CLIENT6) / IPv6ExtHdrFragment(id=ident)
            / UDP(sport=53, dport=33333) / dns_response())


def frames_of(packets: list, vlan: int | None = None) -> list[bytes]:
    link = Ether(**MAC) / Dot1Q(vlan=vlan) if vlan is not None else Ether(**MAC)
    return [bytes(link.copy() / p) for p in packets]


def v4_fragments(ident: int = 777, size: int = 1480) -> list[bytes]:
    return frames_of(fragment(v4_response(ident), size))


def v6_fragments(ident: int = 0x1234567) -> list[bytes]:
    return frames_of(fragment6(v6_response(ident), 1500))


def run(frames: list[bytes], batch: int | None = None, ts: list[int] | None = None,
        defrag: dict | None = None) -> tuple[dict, Sensor]:
    """Events by kind (columns concatenated) of `frames` through a Sensor, in batches."""
    config = load_config(None)["sensor"]
    if defrag is not None:
        config["defrag"] = {**config["defrag"], **defrag}
    sensor = Sensor(config)
    ts = ts if ts is not None else [i * 1_000_000 for i in range(len(frames))]
    batch = batch or max(len(frames), 1)
    events: dict = {}
    for lo in range(0, len(frames), batch):
        piece = batch_from_frames(frames[lo:lo + batch], ts_ns=ts[lo:lo + batch])
        for event in sensor.process(piece):
            events.setdefault(event.kind, []).append(event)
    for event in sensor.flush():
        events.setdefault(event.kind, []).append(event)
    return {kind: {name: np.concatenate([e.columns[name] for e in parts])
                   for name in parts[0].columns} for kind, parts in events.items()}, sensor


def dns_view(events: dict) -> list[tuple]:
    """What the DNS analyzer made of the messages (all but time and community id)."""
    dns = events.get("dns")
    if dns is None:
        return []
    skip = {"timestamp", "community_id"}
    names = sorted(n for n in dns if n not in skip)
    return sorted(repr(tuple(dns[n][i] for n in names)) for i in range(len(dns["qname"])))


def flow_view(events: dict) -> list[tuple]:
    flows = events.get("flow", {})
    if not flows:
        return []
    return sorted(zip(ip_column_to_str(flows["src_ip"]), flows["src_port"].tolist(),
                      ip_column_to_str(flows["dst_ip"]), flows["dst_port"].tolist(),
                      flows["transport"].tolist(), flows["src_packets"].tolist(),
                      flows["src_bytes"].tolist(), strict=True))


@pytest.fixture(scope="module")
def whole_v4() -> dict:
    return run(frames_of([v4_response()]))[0]


@pytest.fixture(scope="module")
def whole_v6() -> dict:
    return run(frames_of([IPv6(src=RESOLVER6, dst=CLIENT6) / UDP(sport=53, dport=33333)
                          / dns_response()]))[0]


# --- the decoder lists the fragment rows ---------------------------------------------------

def test_decoder_lists_fragments_like_the_columnwise_path():
    frames = v4_fragments() + v6_fragments() + frames_of([IP() / UDP() / b"whole"])
    batch = batch_from_frames(frames)
    fast, slow = decode(batch), decode_columnwise(batch)
    assert_same(fast, slow)
    for name in ("row", "frag_offset", "more", "ident", "data_start", "data_end", "protocol"):
        assert np.array_equal(getattr(fast.fragments, name), getattr(slow.fragments, name))
    assert fast.fragments.row.tolist() == [0, 1, 2, 3, 4, 5]
    assert fast.fragments.more.tolist() == [True, True, False] * 2
    assert fast.fragments.ident.tolist() == [777] * 3 + [0x1234567] * 3
    assert fast.src_port[0] == 53 and fast.src_port[1] == 0  # first fragment: ports
    assert decode(batch_from_frames(frames_of([IP() / UDP()]))).fragments is None


def test_ipv6_atomic_fragment_is_a_whole_packet():
    frame = frames_of([IPv6() / IPv6ExtHdrFragment(offset=0, m=0) / UDP(dport=53) / b"x"])
    assert decode(batch_from_frames(frame)).fragments is None


# --- reassembly through the Sensor ----------------------------------------------------------

def test_ipv4_dns_response_in_fragments(whole_v4):
    frames = v4_fragments()
    assert len(frames) == 3
    events, sensor = run(frames)
    assert dns_view(events) == dns_view(whole_v4)
    answers = events["dns"]["answers"][0]
    assert len(answers) == 60 and answers[5]["ttl"] == 65
    assert sensor.defrag_counts() == {"datagrams": 1, "fragments": 3, "timeouts": 0,
                                      "evicted": 0, "overlaps": 0}
    assert sensor.stats["weird.ip_fragment"] == 2  # kept as it was


def test_ipv6_dns_response_in_fragments(whole_v6):
    frames = v6_fragments()
    assert len(frames) == 3
    events, sensor = run(frames)
    assert dns_view(events) == dns_view(whole_v6)
    assert sensor.defrag_counts()["datagrams"] == 1


def test_vlan_of_the_fragments_is_kept():
    events, _ = run(frames_of(fragment(v4_response(), 1400), vlan=12))
    assert events["dns"]["vlan"].tolist() == [12]
    assert events["flow"]["vlan"].tolist() == [12]


def http_session(fragment_size: int) -> list[bytes]:
    syn = TCP(sport=40000, dport=80, flags="S", seq=100)
    request = (b"GET /fragmented HTTP/1.1\r\nHost: frag.example\r\nUser-Agent: "
               + b"a" * 1500 + b"\r\n\r\n")
    packets = [IP(src=CLIENT, dst=SERVER) / syn,
               IP(src=SERVER, dst=CLIENT) / TCP(sport=80, dport=40000, flags="SA", seq=500,
                                                ack=101),
               IP(src=CLIENT, dst=SERVER) / TCP(sport=40000, dport=80, flags="A", seq=101,
                                                ack=501)]
    data = IP(src=CLIENT, dst=SERVER, id=9) / TCP(sport=40000, dport=80, flags="PA", seq=101,
                                                  ack=501) / request
    packets += fragment(data, fragment_size) if fragment_size else [data]
    reply = (IP(src=SERVER, dst=CLIENT) / TCP(sport=80, dport=40000, flags="PA", seq=501,
                                              ack=101 + len(request))
             / b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    return frames_of([*packets, reply])


def test_http_request_in_fragments():
    whole, _ = run(http_session(0))
    events, sensor = run(http_session(600))
    assert sensor.defrag_counts()["datagrams"] == 1
    assert events["http"]["uri"].tolist() == whole["http"]["uri"].tolist() == ["/fragmented"]
    assert events["http"]["host"].tolist() == ["frag.example"]
    assert events["http"]["status"].tolist() == whole["http"]["status"].tolist()


# --- order, duplicates, overlaps, batches ---------------------------------------------------

@pytest.mark.parametrize("order", [[2, 1, 0], [1, 0, 2], [0, 0, 1, 2, 2], [2, 0, 1, 1]])
def test_any_order_and_duplicates(whole_v4, order):
    frames = v4_fragments()
    events, sensor = run([frames[i] for i in order])
    assert dns_view(events) == dns_view(whole_v4)
    assert sensor.defrag_counts()["datagrams"] == 1


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 7])
def test_results_do_not_depend_on_the_batch_size(whole_v4, batch):
    frames = v4_fragments(1) + v6_fragments(2) + v4_fragments(3) + http_session(500)
    reference, _ = run(frames)
    events, sensor = run(frames, batch=batch)
    assert dns_view(events) == dns_view(reference)
    assert flow_view(events) == flow_view(reference)
    assert events["http"]["uri"].tolist() == reference["http"]["uri"].tolist()
    assert sensor.defrag_counts()["datagrams"] == 4


def overlapping(consistent: bool) -> tuple[list[bytes], bytes]:
    """A UDP datagram in 3 fragments plus a 4th overlapping the 2nd (same or other bytes);
    returns the frames and the datagram's UDP payload."""
    payload = bytes(range(256)) * 8
    datagram = IP(src=CLIENT, dst=SERVER, id=5) / UDP(sport=1000, dport=2000) / payload
    pieces = fragment(datagram, 800)
    raw = bytes(datagram[IP].payload)
    second = pieces[1]
    start = second.frag * 8
    data = raw[start:start + 400]
    if not consistent:
        data = bytes(b ^ 0xFF for b in data)
    extra = IP(src=CLIENT, dst=SERVER, id=5, flags="MF", frag=second.frag, proto=17) / Raw(data)
    return frames_of([pieces[0], pieces[1], extra, pieces[2]]), payload


@pytest.mark.parametrize("consistent", [True, False])
def test_overlaps_are_counted_and_the_first_bytes_win(consistent):
    frames, payload = overlapping(consistent)
    sensor = Sensor(load_config(None)["sensor"])
    decoded = decode(batch_from_frames(frames))
    _, _, datagrams = sensor.defrag.process(decoded)
    assert len(datagrams) == 1
    got = datagrams[0]
    start = int(got.payload_offset[0])
    assert got.data[start:start + int(got.payload_len[0])].tobytes() == payload
    assert sensor.defrag.counts()["overlaps"] == 1
    name = "fragment_overlap" if consistent else "fragment_inconsistency"
    assert dict(sensor.defrag.weird) == {name: 1}


# --- flow accounting ------------------------------------------------------------------------

def test_flow_counts_every_fragment_on_the_wire():
    frames = v4_fragments()
    events, _ = run(frames)
    flows = flow_view(events)
    assert flows == [(RESOLVER, 53, CLIENT, 33333, 17, 3, sum(len(f) for f in frames))]


def test_without_the_first_fragment_later_ones_stay_a_ports0_flow():
    frames = v4_fragments()
    events, sensor = run(frames[1:])
    assert [f[1:4:2] for f in flow_view(events)] == [(0, 0)]
    assert "dns" not in events
    assert sensor.stats["weird.fragment_timeout"] == 0  # still pending at the end


def test_config_off_is_todays_behaviour():
    events, sensor = run(v4_fragments(), defrag={"enabled": False})
    # the cut first fragment parses as far as it goes
    assert len(events["dns"]["answers"][0]) < 60
    assert sorted(f[1] for f in flow_view(events)) == [0, 53]  # a ports-0 flow
    assert sensor.defrag_counts()["fragments"] == 0


def test_unfragmented_traffic_is_unchanged():
    frames = frames_of([IP(src=CLIENT, dst=RESOLVER) / UDP(sport=5, dport=53)
                        / DNS(id=1, qd=DNSQR(qname="a.example"))]) + http_session(0)
    on, sensor = run(frames)
    off, _ = run(frames, defrag={"enabled": False})
    assert dns_view(on) == dns_view(off) and flow_view(on) == flow_view(off)
    assert on["http"]["uri"].tolist() == off["http"]["uri"].tolist()
    assert not sensor.defrag.stats


# --- bounds ---------------------------------------------------------------------------------

def test_timeout_in_event_time():
    frames = v4_fragments()
    ts = [0, 1 * SECOND, 40 * SECOND]  # the last comes after the 30 s timeout
    events, sensor = run(frames, ts=ts)
    assert "dns" not in events
    assert sensor.defrag_counts()["timeouts"] == 1
    assert sensor.stats["weird.fragment_timeout"] == 2  # the two fragments held
    events, _ = run(frames, ts=ts, defrag={"timeout_s": 60})
    assert len(events["dns"]["qname"]) == 1


def test_flood_of_first_fragments_is_bounded():
    first = [bytes(Ether(**MAC) / IP(src=CLIENT, dst=SERVER, id=i, flags="MF")
                   / UDP(sport=1, dport=2) / (b"z" * 992)) for i in range(3000)]
    sensor = Sensor({**load_config(None)["sensor"],
                     "defrag": {"max_datagrams": 1000, "max_bytes": 600_000}})
    for lo in range(0, len(first), 500):
        sensor.process(batch_from_frames(first[lo:lo + 500]))
        assert sensor.defrag.pending <= 1000 and sensor.defrag.held_bytes <= 600_000
    counts = sensor.defrag_counts()
    assert counts["fragments"] == 3000
    assert counts["evicted"] == 3000 - sensor.defrag.pending > 2000
    # a later, complete datagram still reassembles
    events = [e for b in [batch_from_frames(v4_fragments())] for e in sensor.process(b)]
    assert [e.kind for e in events] == ["dns"]


def test_datagram_over_65535_bytes_is_not_reassembled():
    """The ping of death: a last fragment at offset 65528 with 100 bytes."""
    head = IP(src=CLIENT, dst=SERVER, id=66, flags="MF", proto=1) / Raw(b"\x08\0" + bytes(1478))
    tail = IP(src=CLIENT, dst=SERVER, id=66, frag=65528 // 8, proto=1) / Raw(bytes(100))
    events, sensor = run(frames_of([head, tail]))
    assert sensor.stats["weird.excessively_large_fragment"] == 1
    assert sensor.defrag_counts()["datagrams"] == 0
    assert "icmp" not in events


def test_config_is_validated():
    assert DefragConfig.from_config(None) == DefragConfig()
    for bad in ({"enabled": "yes"}, {"timeout_s": 0}, {"max_datagrams": 0},
                {"max_bytes": 1000}, {"max_datagram": 5}):
        with pytest.raises(ConfigError):
            DefragConfig.from_config(bad)


# --- tunnels --------------------------------------------------------------------------------

def test_fragments_inside_a_tunnel_are_the_inner_packets():
    outer = Ether(**MAC) / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=999, dport=4789) \
        / VXLAN(vni=5)
    frames = [bytes(outer.copy() / Ether(**MAC) / p) for p in fragment(v4_response(), 1400)]
    events, sensor = run(frames)
    assert len(events["dns"]["qname"]) == 1 and events["dns"]["answers"][0][0]["ttl"] == 60
    assert flow_view(events)[0][:5] == (RESOLVER, 53, CLIENT, 33333, 17)
    assert sensor.tunnel_counts() == {"vxlan": 3}


def test_fragmented_tunnel_packet_is_opened_once_reassembled():
    gre = IP(src="192.0.2.1", dst="192.0.2.2", id=31) / GRE() / v4_response()
    frames = frames_of(fragment(gre, 1400))
    events, sensor = run(frames)
    assert len(events["dns"]["qname"]) == 1
    assert sensor.defrag_counts()["datagrams"] == 1
    # wire accounting: every outer fragment in one flow (the inner one of the first)
    assert [(f[0], f[1], f[5]) for f in flow_view(events)] == [(RESOLVER, 53, len(frames))]


@pytest.mark.parametrize("linktype", [1, 101, 113, 276])
def test_tunnel_fragments_are_listed_as_columnwise_on_every_link(linktype):
    """Inner fragments in VXLAN and ERSPAN and outer fragments of a GRE packet, on Ethernet,
    raw-IP and Linux cooked captures: the compiled passes leave them all (the column-wise
    path lists them), unfragmented tunnel packets beside them are decoded alike."""
    vxlan = Ether(**MAC) / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(dport=4789) / VXLAN()
    erspan = Ether(**MAC) / IP() / GRE(seqnum_present=1, proto=0x88BE) / Raw(b"\x10" + bytes(7))
    inner = [Ether(**MAC) / p for p in fragment(v4_response(), 1400)]
    frames = [bytes(vxlan / p) for p in inner] + [bytes(erspan / p) for p in inner]
    frames += frames_of(fragment(IP(id=31) / GRE() / v4_response(), 1400))
    frames += [bytes(vxlan / Ether(**MAC) / IP() / UDP() / b"whole")]
    if linktype != 1:  # the same L3 bytes behind a raw or cooked link header
        head = {101: b"", 113: bytes(14) + b"\x08\x00", 276: b"\x08\x00" + bytes(18)}[linktype]
        frames = [head + f[14:] for f in frames]
    batch = batch_from_frames(frames, linktype=linktype)
    fast, slow = decode(batch), decode_columnwise(batch)
    assert_same(fast, slow)
    for name in ("row", "frag_offset", "more", "ident", "data_start", "data_end", "tunnel"):
        assert np.array_equal(getattr(fast.fragments, name), getattr(slow.fragments, name))
    assert fast.fragments.row.tolist() == list(range(len(frames) - 1))
    assert fast.tunnel[-1] == 4


# --- tshark as the oracle -------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize("make", [v4_fragments, v6_fragments])
def test_matches_tshark(tmp_path, make):
    frames = make() + make(ident=4321)[::-1]  # a second datagram, out of order
    path = tmp_path / "frag.pcap"
    wrpcap(str(path), [Ether(f) for f in frames])
    out = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "fields", "-E",
                          "separator=|", "-e", "dns.qry.name", "-e", "dns.a", "-e", "dns.resp.ttl",
                          "-Y", "dns"], capture_output=True, text=True, check=True).stdout
    theirs = [line.split("|") for line in out.splitlines()]
    events = {}
    with CaptureReader(path) as reader:
        sensor = Sensor(load_config(None)["sensor"])
        for batch in reader.batches():
            for e in sensor.process(batch) + sensor.flush():
                events.setdefault(e.kind, []).append(e)
    dns = events["dns"]
    ours = [(q, ",".join(a["data"] for a in ans), ",".join(str(a["ttl"]) for a in ans))
            for e in dns for q, ans in zip(e.columns["qname"], e.columns["answers"],
                                           strict=True)]
    assert sorted(ours) == sorted(tuple(t) for t in theirs) and len(ours) == 2
    out = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=|",
                          "-e", "udp.srcport", "-e", "udp.dstport", "-Y", "udp"],
                         capture_output=True, text=True, check=True).stdout
    tuples = {tuple(int(x) for x in line.split("|")) for line in out.splitlines()}
    flows = [e for e in events["flow"]]
    ports = {(int(s), int(d)) for e in flows
             for s, d in zip(e.columns["src_port"], e.columns["dst_port"], strict=True)}
    assert ports == tuples == {(53, 33333)}


# --- properties -----------------------------------------------------------------------------

def reassemble(frames: list[bytes]) -> list[bytes]:
    """The reassembled datagrams' IP payloads (Defragmenter on its own)."""
    defrag = Defragmenter()
    _, _, datagrams = defrag.process(decode(batch_from_frames(frames)))
    out = []
    for d in datagrams:
        for i in range(len(d)):  # duplicates after completion may complete it again
            start = int(d.payload_offset[i])
            out.append(d.data[start - 8:start + int(d.payload_len[i])].tobytes())
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(min_size=1, max_size=3000), size=st.integers(8, 1400),
       version=st.sampled_from([4, 6]), seed=st.integers(0, 2**32 - 1),
       duplicates=st.integers(0, 3))
@example(payload=b"x" * 1500, size=8, version=4, seed=1, duplicates=2)
def test_any_permutation_reassembles_the_datagram(payload, size, version, seed, duplicates):
    udp = UDP(sport=7, dport=9) / payload
    if version == 4:
        datagram = IP(bytes(IP(src=CLIENT, dst=SERVER, id=1) / udp))
        pieces = fragment(datagram, size)
    else:
        datagram = IPv6(bytes(IPv6(src=CLIENT6, dst=RESOLVER6) / IPv6ExtHdrFragment(id=3)
                              / udp))
        pieces = fragment6(datagram, max(size, 56) + 48 + 8)
    frames = frames_of(pieces)
    rng = random.Random(seed)
    frames += [rng.choice(frames) for _ in range(duplicates)]
    rng.shuffle(frames)
    want = bytes(datagram[UDP])
    if len(pieces) == 1:  # it fit: not fragmented
        return
    got = reassemble(frames)
    assert got[:1] == [want]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_fragment_headers_never_raise(data):
    frames = v4_fragments(size=400)[:4] + v6_fragments()[:2]
    mutated = []
    for frame in frames:
        raw = bytearray(frame)
        for _ in range(data.draw(st.integers(0, 4))):
            at = data.draw(st.integers(14, min(len(raw) - 1, 14 + 56)))
            raw[at] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(14, len(raw)))
        mutated.append(bytes(raw[:cut]))
    batch = batch_from_frames(mutated)
    decoded = decode(batch)
    assert_same(decoded, decode_columnwise(batch))
    frag = decoded.fragments
    if frag is not None:  # every listed range lies inside its packet
        start = batch.offset[frag.row]
        end = start + batch.caplen[frag.row]
        assert np.all((frag.data_start >= start) & (frag.data_start <= frag.data_end)
                      & (frag.data_end <= end) & (frag.header_offset >= start))
    sensor = Sensor(load_config(None)["sensor"])
    sensor.process(batch)
    sensor.flush()


def test_datagram_of_too_many_fragments_is_dropped():
    """Tiny fragments are compared with those held: at most MAX_FRAGMENTS per datagram."""
    from sensors.defrag import MAX_FRAGMENTS

    pieces = fragment(IP(src=CLIENT, dst=SERVER, id=8) / UDP(sport=1, dport=2)
                      / bytes(8 * (MAX_FRAGMENTS + 10)), 8)
    events, sensor = run(frames_of(pieces))
    assert sensor.defrag_counts()["datagrams"] == 0
    assert sensor.stats["weird.fragment_limit"] == 1  # once per datagram
    assert [f[1] for f in flow_view(events)] == [1]  # still counted on the wire, one flow


KERNEL_CAPTURE = Path(__file__).parent / "data" / "defrag" / "linux-fragmented-dns.pcapng"


def test_fragments_made_by_a_real_ip_stack():
    """Linux's own fragmentation (data/defrag/README.md): one DNS event per family with all
    60 answers, one flow of 3 packets per family, no ports-0 flow."""
    events: dict = {}
    sensor = Sensor(load_config(None)["sensor"])
    with CaptureReader(KERNEL_CAPTURE) as reader:
        for batch in reader.batches():
            for e in sensor.process(batch):
                events.setdefault(e.kind, []).append(e)
    for e in sensor.flush():
        events.setdefault(e.kind, []).append(e)
    answers = [len(a) for e in events["dns"] for a in e.columns["answers"]]
    assert answers == [60, 60]
    flows = sorted((int(p), int(s), int(d)) for e in events["flow"] for p, s, d in zip(
        e.columns["src_packets"], e.columns["src_port"], e.columns["dst_port"], strict=True))
    assert flows == [(1, 133, 134), (1, 133, 134), (3, 53, 33333), (3, 53, 33333)]
    assert sensor.defrag_counts()["datagrams"] == 2
    if shutil.which("tshark"):
        out = subprocess.run(["tshark", "-n", "-r", str(KERNEL_CAPTURE), "-T", "fields",
                              "-e", "dns.count.answers", "-Y", "dns"],
                             capture_output=True, text=True, check=True).stdout
        assert [int(n) for n in out.split()] == answers


# --- differential: the Defragmenter against a plain reference of the documented policy -----

class ReferenceDefrag:
    """docs/sensor.md "IP fragments", written plainly for IPv4 (one dict entry per pending
    datagram, oldest first): first-arrived bytes win, overlaps compared with every piece
    held, event-time timeout from the first fragment, oldest-first eviction by count (on
    opening) and by bytes (after adding to a datagram left incomplete), > 65535 bytes
    dropped, at most 512 pieces."""

    def __init__(self, config: DefragConfig) -> None:
        self.config = config
        self.pending: dict[tuple, dict] = {}
        self.held = 0
        # flow accounting: a later fragment before its first one waits (bounded) for the
        # first fragment's ports, else (dropped, end of input) keeps none
        self.ports: dict[int, tuple | None] = {}
        self.waiting = 0
        self.counts = {"datagrams": 0, "fragments": 0, "timeouts": 0, "evicted": 0,
                       "overlaps": 0}
        self.weird: dict[str, int] = {}

    def _count(self, name: str, n: int = 1) -> None:
        self.weird[name] = self.weird.get(name, 0) + n

    def _drop(self, key: tuple) -> dict:
        entry = self.pending.pop(key)
        self.held -= sum(len(data) for _, data in entry["pieces"])
        self._release(entry, None)
        return entry

    def _release(self, entry: dict, ports: tuple | None) -> None:
        for k in entry["waiting"]:
            self.ports[k] = ports
        self.waiting -= len(entry["waiting"])
        entry["waiting"] = []

    def finish(self) -> None:
        """End of input: the later fragments still waiting are counted without ports."""
        for entry in self.pending.values():
            self._release(entry, None)

    def expire(self, now: int) -> None:
        limit = now - int(self.config.timeout_s * SECOND)
        for key in list(self.pending):
            if self.pending[key]["ts"] >= limit:
                return
            entry = self._drop(key)
            self.counts["timeouts"] += 1
            self._count("fragment_timeout", entry["fragments"])

    def _complete(self, entry: dict) -> bool:
        if entry["size"] < 0 or entry["header"] is None:
            return False
        covered = 0  # data past the size (a longer fragment than the last) does not count
        for start, data in sorted(entry["pieces"]):
            if covered >= entry["size"] or start > covered:
                break
            covered = max(covered, start + len(data))
        return covered >= entry["size"]

    def _packet(self, entry: dict) -> bytes:
        payload = bytearray(entry["size"])
        for start, data in reversed(entry["pieces"]):
            part = data[:max(entry["size"] - start, 0)]
            payload[start:start + len(part)] = part
        head = bytearray(entry["header"])
        head[2:4] = (len(head) + len(payload)).to_bytes(2, "big")
        head[6] &= 0x40
        head[7] = 0
        head[10:12] = b"\0\0"
        total = sum(int.from_bytes(head[k:k + 2], "big") for k in range(0, len(head), 2))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        head[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
        return bytes(head) + bytes(payload)

    def take(self, key: tuple, ts: int, offset: int, more: bool, data: bytes, header: bytes,
             ports: tuple, k: int = -1) -> tuple[dict, bytes | None]:
        """One fragment (the k-th): (its datagram's entry, the rebuilt packet if it
        completed it)."""
        self.counts["fragments"] += 1
        self.expire(ts)
        if key not in self.pending:
            while len(self.pending) >= self.config.max_datagrams:
                self._drop(next(iter(self.pending)))
                self.counts["evicted"] += 1
            self.pending[key] = {"ts": ts, "pieces": [], "size": -1, "fragments": 0,
                                 "header": None, "ports": None, "bad": False, "waiting": []}
        entry = self.pending[key]
        entry["fragments"] += 1
        if offset == 0 and entry["header"] is None:
            entry["header"], entry["ports"] = header, ports
            self._release(entry, ports)
        elif offset and entry["ports"] is not None:
            self.ports[k] = entry["ports"]
        elif offset and len(entry["waiting"]) < 512 \
                and self.waiting < WAIT_PER_DATAGRAM * self.config.max_datagrams:
            entry["waiting"].append(k)
            self.waiting += 1
        elif offset:
            self.ports[k] = None  # beyond the bounds: counted where it is
        if entry["bad"]:
            return entry, None
        too_large = offset + len(data) + len(header) > 65535
        if too_large or len(entry["pieces"]) >= 512:
            self._count("excessively_large_fragment" if too_large else "fragment_limit")
            self.held -= sum(len(d) for _, d in entry["pieces"])
            entry["pieces"], entry["bad"] = [], True
            return entry, None
        self._overlaps(entry, offset, data)
        entry["pieces"].append((offset, data))
        self.held += len(data)
        if not more:
            entry["size"] = max(entry["size"], offset + len(data))
        if self._complete(entry):
            self._drop(key)
            self.counts["datagrams"] += 1
            return entry, self._packet(entry)
        while self.held > self.config.max_bytes:
            victim = next((k for k in self.pending if k != key), None)
            if victim is None:
                break
            self._drop(victim)
            self.counts["evicted"] += 1
        return entry, None

    def _overlaps(self, entry: dict, offset: int, data: bytes) -> None:
        end = offset + len(data)
        met = [(max(s, offset), min(s + len(d), end), s, d) for s, d in entry["pieces"]]
        met = [m for m in met if m[0] < m[1]]
        if met:
            self.counts["overlaps"] += 1
            same = all(d[lo - s:hi - s] == data[lo - offset:hi - offset]
                       for lo, hi, s, d in met)
            self._count("fragment_overlap" if same else "fragment_inconsistency")


def datagram_bytes(ident: int, pattern: int, lo: int, hi: int) -> bytes:
    """Bytes [lo, hi) of datagram `ident` as a fragment of `pattern` carries them (the same
    pattern: overlaps agree; another: they differ); bytes 0-7 are its UDP header."""
    head = (1000 + ident).to_bytes(2, "big") + b"\x07\xd0\x00\x00\x00\x00"
    return bytes(head[p] if p < 8 else (p * 31 + pattern * 101 + ident) & 0xFF
                 for p in range(lo, hi))


fragment_draws = st.lists(st.tuples(
    st.integers(1, 3),  # identification: up to 3 datagrams at once
    st.sampled_from([0, 0, 1, 2, 3, 5, 8, 8189]),  # offset / 8 (8189: past 65535)
    st.integers(0, 40),  # data bytes (a first fragment: 8 more, its UDP header)
    st.booleans(),  # MF
    st.sampled_from([0, 0, 0, 1]),  # byte pattern
    st.sampled_from([1, 1, 1, 40_000])), min_size=1, max_size=40)  # ms since the last


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draws=fragment_draws, batch=st.integers(1, 9), max_datagrams=st.sampled_from([1, 2, 8]),
       max_bytes=st.sampled_from([40, 100, 1 << 20]))
@example(draws=[(1, 0, 8, True, 0, 1), (1, 1, 8, False, 0, 1)], batch=1, max_datagrams=8,
         max_bytes=1 << 20)
def test_matches_a_reference_reassembler(draws, batch, max_datagrams, max_bytes):
    """Rebuilt packets (in order), counts, weirds and the later fragments' flow keys (in
    the flow table's view, the end of input's included) are the reference's, for any
    fragment set, bounds and batch size."""
    config = DefragConfig(True, 30.0, max_datagrams, max_bytes)  # (no 2 x 65535 floor here)
    frames, ts, now = [], [], 0
    for ident, offset8, length, more, pattern, step in draws:
        offset = offset8 * 8
        length += 8 if offset == 0 else 0
        if offset == 0 and not more:
            more = True  # (offset 0 without MF is a whole packet, not a fragment)
        ip = IP(src=CLIENT, dst=SERVER, id=ident, flags="MF" if more else 0, frag=offset8,
                proto=17)
        frames.append(bytes(Ether(**MAC) / ip / Raw(datagram_bytes(ident, pattern, offset,
                                                                   offset + length))))
        now += step * 1_000_000
        ts.append(now)
    reference = ReferenceDefrag(config)
    want_packets = []
    for lo in range(0, len(frames), batch):
        for k in range(lo, min(lo + batch, len(frames))):
            frame = frames[k]
            flags_offset = int.from_bytes(frame[20:22], "big")
            key, offset = frame[18:20], (flags_offset & 0x1FFF) * 8
            ports = (int.from_bytes(frame[34:36], "big"), 2000) if offset == 0 else None
            _, packet = reference.take(key, ts[k], offset, bool(flags_offset & 0x2000),
                                       frame[34:], frame[14:34], ports, k)
            if packet is not None:
                want_packets.append(packet)
        reference.expire(ts[min(lo + batch, len(frames)) - 1])
    assert reference.waiting == sum(len(e["waiting"]) for e in reference.pending.values())
    waiting = reference.waiting
    reference.finish()
    defrag = Defragmenter(config)
    got_packets, counted_rows = [], []
    for lo in range(0, len(frames), batch):
        decoded = decode(batch_from_frames(frames[lo:lo + batch], ts_ns=ts[lo:lo + batch]))
        _, counted, datagrams = defrag.process(decoded)
        for d in datagrams:
            ends = np.cumsum(d.caplen.astype(np.int64))
            got_packets += [d.data[e - n:e].tobytes() for e, n in zip(ends, d.caplen,
                                                                       strict=True)]
        counted_rows.append(counted)
    assert defrag.waiting == waiting
    late = defrag.flush()
    counted_rows += [late] if late is not None else []
    assert defrag.waiting == 0 and defrag.flush() is None
    # every packet counted once (times are distinct), later fragments with the ports
    row_of = {t: k for k, t in enumerate(ts)}
    got_ports, seen = {}, []
    for counted in counted_rows:
        for t, sport, dport in zip(counted.ts_ns.tolist(), counted.src_port.tolist(),
                                   counted.dst_port.tolist(), strict=True):
            seen.append(row_of[t])
            if row_of[t] in reference.ports:
                got_ports[row_of[t]] = (sport, dport) if (sport, dport) != (0, 0) else None
    assert sorted(seen) == list(range(len(frames)))
    assert got_packets == want_packets
    assert defrag.counts() == reference.counts
    assert dict(defrag.weird) == reference.weird
    assert got_ports == reference.ports
    assert defrag.pending == len(reference.pending) and defrag.held_bytes == reference.held


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), batch=st.sampled_from([1, 7, 500, 4000]))
def test_flood_memory_stays_bounded(seed, batch):
    """Never-completed fragments of random sizes and keys: pending <= max_datagrams, held
    bytes <= max_bytes after every batch, and the arrays behind them stay bounded."""
    rng = np.random.default_rng(seed)
    count = 4000
    sizes = rng.integers(8, 1400, count)
    frames = [bytes(Ether(**MAC) / IP(src=f"10.9.{i % 250}.{i // 250 % 250}", dst=SERVER,
                                      id=int(rng.integers(0, 65536)), flags="MF",
                                      frag=int(rng.integers(0, 3)) * 200, proto=17)
                    / Raw(bytes(int(sizes[i])))) for i in range(count)]
    config = DefragConfig(True, 30.0, 300, 200_000)
    defrag = Defragmenter(config)
    for lo in range(0, count, batch):
        defrag.process(decode(batch_from_frames(frames[lo:lo + batch])))
        assert defrag.pending <= 300 and defrag.held_bytes <= 200_000
    state = defrag._state
    assert len(state.arena) <= 3 * (200_000 + 65_536) + (1 << 20)
    assert len(state.pieces) <= 2 * 300 * 4 + 1024
    assert defrag.counts()["fragments"] == count


def test_rebuilt_packets_are_not_overwritten_while_referred_to():
    """The buffer of a batch's rebuilt packets is reused for a later batch only once
    nothing refers to them any more."""
    defrag = Defragmenter()
    _, _, kept = defrag.process(decode(batch_from_frames(v4_fragments(ident=1))))
    before = kept[0].data[:int(kept[0].caplen[0])].tobytes()
    _, _, later = defrag.process(decode(batch_from_frames(v4_fragments(ident=2))))
    assert kept[0].data[:len(before)].tobytes() == before
    assert later[0].data[:len(before)].tobytes() != before  # (another identification)
    del kept, later
    spare = id(defrag._spare_out)
    defrag.process(decode(batch_from_frames(v4_fragments(ident=3))))
    assert id(defrag._spare_out) == spare  # no one referred to it: reused
