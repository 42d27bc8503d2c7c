"""Tunnelled traffic is keyed by its tunnel segment (DecodedPackets.tunnel_id): the same inner
5-tuple in two VXLAN/Geneve VNIs, GRE keys or ERSPAN sessions is two flows, two TCP streams,
two DNS/QUIC/ICMP pairings; one segment's conversation stays one flow. GTP-U keys by kind
only (a bearer's TEIDs differ by direction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from packet_builders import batch_from_frames
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.l2 import GRE, Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import wrpcap
from test_decode_tunnels import INNER_VLAN, OUTER, framed, sensor_events
from test_tls import GREASE_HELLO

from sensors.decode import decode, decode_columnwise
from sensors.packets import Tunnel, segment_columns

CLIENT, SERVER = "10.0.0.5", "10.0.0.9"


# segment kind -> (wrap(inner IP packet, segment number, client -> server?), Tunnel code,
# the segment id the events carry for segment number n)
SEGMENTS = {
    "vxlan": (lambda ip, n, up: OUTER / UDP(sport=5555, dport=4789) / VXLAN(vni=100 + n)
              / framed(ip), Tunnel.VXLAN, lambda n: 100 + n),
    "geneve": (lambda ip, n, up: OUTER / UDP(sport=5555, dport=6081)
               / GENEVE(vni=200 + n, proto=0x6558) / framed(ip), Tunnel.GENEVE,
               lambda n: 200 + n),
    "gre_key": (lambda ip, n, up: OUTER / GRE(key_present=1, key=300 + n) / ip, Tunnel.GRE,
                lambda n: 300 + n),
    "erspan2": (lambda ip, n, up: OUTER / GRE(seqnum_present=1) / ERSPAN_II(session_id=n + 1)
                / framed(ip), Tunnel.ERSPAN, lambda n: n + 1),
    "erspan3": (lambda ip, n, up: OUTER / GRE() / ERSPAN_III(session_id=n + 5) / framed(ip),
                Tunnel.ERSPAN, lambda n: n + 5),
}


def conversation(host: str, sport: int = 40000) -> list[tuple[bool, object]]:
    """(client -> server?, inner packet) of one HTTP exchange with a close."""
    request = f"GET /{host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    c2s = IP(src=CLIENT, dst=SERVER)
    s2c = IP(src=SERVER, dst=CLIENT)
    return [
        (True, c2s / TCP(sport=sport, dport=80, flags="S", seq=100)),
        (False, s2c / TCP(sport=80, dport=sport, flags="SA", seq=500, ack=101)),
        (True, c2s / TCP(sport=sport, dport=80, flags="A", seq=101, ack=501)),
        (True, c2s / TCP(sport=sport, dport=80, flags="PA", seq=101, ack=501) / request),
        (False, s2c / TCP(sport=80, dport=sport, flags="PA", seq=501, ack=101 + len(request))
         / response),
        (True, c2s / TCP(sport=sport, dport=80, flags="FA", seq=101 + len(request),
                         ack=501 + len(response))),
        (False, s2c / TCP(sport=80, dport=sport, flags="FA", seq=501 + len(response),
                          ack=102 + len(request))),
    ]


def interleaved(kind: str, hosts: list[str]) -> list[bytes]:
    """Each segment n carries the conversation with hosts[n]; packets alternate."""
    wrap = SEGMENTS[kind][0]
    talks = [conversation(host) for host in hosts]
    frames = []
    for i in range(len(talks[0])):
        for n, talk in enumerate(talks):
            up, ip = talk[i]
            frames.append(bytes(wrap(ip, n, up)))
    return frames


def write(tmp_path: Path, frames: list[bytes], name: str = "segments.pcap") -> Path:
    packets = [Ether(frame) for frame in frames]
    for i, packet in enumerate(packets):
        packet.time = 1_700_000_000 + i * 0.01
    path = tmp_path / name
    wrpcap(str(path), packets)
    return path


@pytest.mark.parametrize("kind", sorted(SEGMENTS))
def test_decoders_agree_on_the_segment(kind):
    batch = batch_from_frames(interleaved(kind, ["a.example", "b.example"]))
    fast, reference = decode(batch), decode_columnwise(batch)
    assert np.array_equal(fast.tunnel_id, reference.tunnel_id)
    code, ident = SEGMENTS[kind][1], SEGMENTS[kind][2]
    labels, ids = segment_columns(fast.tunnel_id)
    assert set(labels.tolist()) == {code.label}
    assert ids.tolist() == [ident(n) for n in (0, 1)] * (len(batch) // 2)


@pytest.mark.parametrize("kind", sorted(SEGMENTS))
def test_two_segments_are_two_flows(tmp_path, kind):
    events, _ = sensor_events(write(tmp_path, interleaved(kind, ["a.example", "b.example"])))
    flows = events["flow"]
    ident = SEGMENTS[kind][2]
    assert sorted(flows["tunnel_id"].tolist()) == [ident(0), ident(1)]
    assert set(flows["tunnel_type"].tolist()) == {SEGMENTS[kind][1].label}
    assert flows["src_packets"].tolist() == [4, 4] and flows["dst_packets"].tolist() == [3, 3]
    assert flows["conn_state"].tolist() == ["SF", "SF"]


@pytest.mark.parametrize("kind", sorted(SEGMENTS))
def test_one_segment_stays_one_flow(tmp_path, kind):
    wrap = SEGMENTS[kind][0]
    frames = [bytes(wrap(ip, 0, up)) for up, ip in conversation("a.example")]
    events, _ = sensor_events(write(tmp_path, frames))
    flows = events["flow"]
    assert len(flows["timestamp"]) == 1 and flows["conn_state"].tolist() == ["SF"]
    assert flows["tunnel_id"].tolist() == [SEGMENTS[kind][2](0)]


def test_untunnelled_flows_have_no_segment(tmp_path):
    frames = [bytes(Ether() / ip) for _, ip in conversation("a.example")]
    events, _ = sensor_events(write(tmp_path, frames))
    flows = events["flow"]
    assert flows["tunnel_type"].tolist() == [""] and flows["tunnel_id"].tolist() == [0]


def test_gtpu_bearer_directions_stay_one_flow(tmp_path):
    """Uplink and downlink of a bearer carry different TEIDs: still one flow."""
    frames = [bytes(OUTER / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=7 if up else 9)
                    / ip) for up, ip in conversation("a.example")]
    events, _ = sensor_events(write(tmp_path, frames))
    flows = events["flow"]
    assert len(flows["timestamp"]) == 1 and flows["conn_state"].tolist() == ["SF"]
    assert flows["tunnel_type"].tolist() == ["gtpu"] and flows["tunnel_id"].tolist() == [0]


def test_nested_tunnels_key_every_level(tmp_path):
    """VXLAN in VXLAN: the inner VNI and the outer VNI both split flows."""
    def wrap(ip, outer_vni, inner_vni):
        inner = Ether() / IP(src="192.0.2.7", dst="192.0.2.8") / UDP(sport=6000, dport=4789) \
            / VXLAN(vni=inner_vni) / framed(ip)
        return bytes(OUTER / UDP(sport=5555, dport=4789) / VXLAN(vni=outer_vni) / inner)
    frames = [wrap(ip, o, i) for o, i in ((1, 1), (1, 2), (2, 1))
              for _, ip in conversation("a.example")]
    batch = batch_from_frames(frames)
    fast, reference = decode(batch), decode_columnwise(batch)
    assert np.array_equal(fast.tunnel_id, reference.tunnel_id)
    events, _ = sensor_events(write(tmp_path, frames))
    flows = events["flow"]
    assert len(flows["timestamp"]) == 3 and set(flows["tunnel_type"].tolist()) == {"vxlan"}
    assert len(set(flows["tunnel_id"].tolist())) == 3


@pytest.mark.parametrize("kind", sorted(SEGMENTS))
def test_two_segments_are_two_http_streams(tmp_path, kind):
    """Interleaved packets of two tenants' HTTP exchanges on the same inner 5-tuple: one
    request and response each, with its own host (merged, the streams were one garbled
    conversation)."""
    events, _ = sensor_events(write(tmp_path, interleaved(kind, ["a.example", "b.example"])))
    http = events["http"]
    assert sorted(zip(http["host"].tolist(), http["uri"].tolist(), strict=True)) == [
        ("a.example", "/a.example"), ("b.example", "/b.example")]
    assert http["status"].tolist() == [200, 200]
    assert http["vlan"].tolist() == [0 if kind == "gre_key" else INNER_VLAN] * 2


def test_two_segments_are_two_tls_hellos(tmp_path):
    """The same for TLS: each VNI's ClientHello is read whole (merged, the second SYN
    and the interleaved records broke both)."""
    def talk(sni_port: int) -> list:
        c2s, s2c = IP(src=CLIENT, dst=SERVER), IP(src=SERVER, dst=CLIENT)
        return [c2s / TCP(sport=41000, dport=443, flags="S", seq=1),
                s2c / TCP(sport=443, dport=41000, flags="SA", seq=9, ack=2),
                c2s / TCP(sport=41000, dport=443, flags="A", seq=2, ack=10),
                c2s / TCP(sport=41000, dport=443, flags="PA", seq=2, ack=10) / GREASE_HELLO]
    wrap = SEGMENTS["vxlan"][0]
    frames = [bytes(wrap(ip, n, True)) for pair in zip(talk(0), talk(1), strict=True)
              for n, ip in enumerate(pair)]
    events, _ = sensor_events(write(tmp_path, frames))
    assert events["tls"]["server_name"].tolist() == ["example.org", "example.org"]
    assert len(events["flow"]["timestamp"]) == 2


def test_two_segments_fragments_reassemble_apart(tmp_path):
    """Two tenants' DNS responses with the same addresses, ports and IP identification,
    fragmented inside two VNIs, fragments interleaved: each datagram is rebuilt from its
    own segment's fragments (keyed by the segment, they were joined: one garbled answer
    and an overlap)."""
    def response(name: str) -> list:
        ip = IP(src=SERVER, dst=CLIENT, id=4242) / UDP(sport=53, dport=5353) / DNS(
            id=7, qr=1, qd=DNSQR(qname=name),
            an=[DNSRR(rrname=name, type="TXT", rdata="x" * 200) for _ in range(3)])
        return fragment(ip, fragsize=256)
    wrap = SEGMENTS["vxlan"][0]
    parts = [response("a.example"), response("b.example")]
    assert len(parts[0]) == len(parts[1]) > 1
    frames = [bytes(wrap(piece, n, False)) for pair in zip(*parts, strict=True)
              for n, piece in enumerate(pair)]
    events, sensor = sensor_events(write(tmp_path, frames))
    assert sorted(events["dns"]["qname"].tolist()) == ["a.example", "b.example"]
    assert sensor.defrag_counts()["datagrams"] == 2
    assert not any(k.startswith("weird.fragment") for k in sensor.stats)
    flows = events["flow"]
    assert sorted(flows["tunnel_id"].tolist()) == [100, 101]


def test_segments_kept_when_the_table_grows_around_untunnelled_traffic():
    """The flow table copies its segment column on growth only once a tunnelled row came
    (untunnelled traffic never writes it: copying its zeros made 8 bytes a slot resident
    under a flood). Growth during untunnelled batches, tunnelled flows, growth again: every
    tunnelled flow keeps its segment, and the same inner 5-tuple in two VNIs stays two
    flows."""
    from test_flow_table import Pkt, make_packets, run

    def udp(i: int, net: int) -> Pkt:
        return Pkt(t=0.001 * i, src=f"10.{net}.{i // 250}.{i % 250 + 1}", dst=SERVER,
                   sport=1024 + i % 60000, dport=53, proto=17)

    plain = [udp(i, 1) for i in range(3000)]  # grows the table (1024 slots first)
    # 2 x 1500 tunnelled flows: the same inner 5-tuples in VNI 7 and in VNI 8
    tunnelled = [udp(i, 2) for i in range(1500)] * 2
    more = [udp(i, 3) for i in range(3000)]  # grows it again, with segments in it
    packets = make_packets(plain + tunnelled + more)
    vni = np.zeros(len(packets.ts_ns), dtype=np.uint64)
    vni[3000:4500], vni[4500:6000] = 7, 8
    packets.tunnel = np.where(vni > 0, Tunnel.VXLAN, 0).astype(np.uint8)
    packets.tunnel_id = np.where(vni > 0, (np.uint64(Tunnel.VXLAN) << np.uint64(56)) | vni,
                                 np.uint64(0))
    flows = run(packets, cuts=[3000, 6000])
    assert len(flows) == 9000
    by_segment = {}
    for flow in flows:
        by_segment.setdefault((flow["tunnel_type"], flow["tunnel_id"]), []).append(flow)
    assert sorted((k, len(v)) for k, v in by_segment.items()) == [
        (("", 0), 6000), (("vxlan", 7), 1500), (("vxlan", 8), 1500)]
    assert {f["src_ip"] for f in by_segment["vxlan", 7]} == {
        f["src_ip"] for f in by_segment["vxlan", 8]}
