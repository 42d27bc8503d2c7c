"""Tunnel decapsulation (sensors/decode.py _decapsulate): IP-in-IP, GRE, ERSPAN I/II/III,
VXLAN, Geneve and GTP-U rows describe their inner packet, end to end through the Sensor, as
tshark dissects them; damaged tunnel headers leave the outer packet and count a weird."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from packet_builders import batch_from_frames
from scapy.contrib.erspan import ERSPAN_I, ERSPAN_II, ERSPAN_III, ERSPAN_PlatformSpecific
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, GRE, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.utils import wrpcap
from test_core_fused_decode import check_batches
from test_decode_fuzz import COLUMNS, check_invariants, check_rows_independent
from test_tls import GREASE_HELLO

from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from sensors.decode import DEFAULT_TUNNELS, TunnelConfig, decode, decode_columnwise
from sensors.packets import Tunnel, ip_column_to_str
from sensors.pcap_reader import CaptureReader
from sensors.sensor import Sensor
from tests.conftest import shared_pcap

CLIENT, SERVER, RESOLVER = "10.1.1.1", "10.2.2.2", "10.3.3.3"
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
OUTER = Ether(**MAC) / Dot1Q(vlan=7) / IP(src="192.0.2.1", dst="192.0.2.2")
INNER_VLAN = 42


def inner_packets() -> list:
    """A TCP handshake with an HTTP request, and a DNS query with its response."""
    syn = TCP(sport=40000, dport=80, flags="S", seq=100)
    return [
        IP(src=CLIENT, dst=SERVER) / syn,
        IP(src=SERVER, dst=CLIENT) / TCP(sport=80, dport=40000, flags="SA", seq=500, ack=101),
        IP(src=CLIENT, dst=SERVER) / TCP(sport=40000, dport=80, flags="A", seq=101, ack=501),
        IP(src=CLIENT, dst=SERVER) / TCP(sport=40000, dport=80, flags="PA", seq=101, ack=501)
        / b"GET /inner HTTP/1.1\r\nHost: inner.example\r\n\r\n",
        IP(src=CLIENT, dst=RESOLVER) / UDP(sport=5353, dport=53)
        / DNS(id=7, rd=1, qd=DNSQR(qname="tunnel.example.org")),
        IP(src=RESOLVER, dst=CLIENT) / UDP(sport=53, dport=5353)
        / DNS(id=7, qr=1, qd=DNSQR(qname="tunnel.example.org"),
              an=DNSRR(rrname="tunnel.example.org", rdata="10.9.9.9")),
    ]


def framed(ip) -> Ether:
    """An inner IP packet as an Ethernet frame with its own VLAN tag."""
    return Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04") / Dot1Q(vlan=INNER_VLAN) / ip


def geneve_with_options(protocol: int) -> bytes:
    """Geneve header with 8 bytes of options (option length 2), built by hand."""
    return bytes([0x02, 0x00]) + struct.pack(">H", protocol) + b"\x00\x00\x05\x00" + bytes(8)


def gtpu_with_extension(ip) -> bytes:
    """GTP-U T-PDU with E set and one 4-byte extension header (PDU session container)."""
    payload = bytes(ip)
    ext = b"\x01\x00\x01\x00"  # length 1 (4 bytes), content, next type 0
    body = b"\x00\x01" + b"\x00" + b"\x85" + ext + payload  # seq, N-PDU, next type
    return bytes([0x34, 0xFF]) + struct.pack(">HI", len(body), 9) + body


# kind name -> (outer frame builder, Tunnel code, inner frame has the inner VLAN tag)
WRAPPERS = {
    "ipip": (lambda ip: OUTER / ip, Tunnel.IPIP, False),
    "ip4in6": (lambda ip: Ether(**MAC) / IPv6(src="2001:db8::1", dst="2001:db8::2", nh=4) / ip,
               Tunnel.IPIP, False),
    "gre": (lambda ip: OUTER / GRE() / ip, Tunnel.GRE, False),
    "gre_csum_key_seq": (lambda ip: OUTER / GRE(chksum_present=1, key_present=1, key=5,
                                                seqnum_present=1, sequence_number=9) / ip,
                         Tunnel.GRE, False),
    "gre_teb": (lambda ip: OUTER / GRE(proto=0x6558) / framed(ip), Tunnel.GRE, True),
    "erspan1": (lambda ip: OUTER / GRE() / ERSPAN_I() / framed(ip), Tunnel.ERSPAN, True),
    "erspan2": (lambda ip: OUTER / GRE(seqnum_present=1) / ERSPAN_II(session_id=3) / framed(ip),
                Tunnel.ERSPAN, True),
    "erspan3": (lambda ip: OUTER / GRE() / ERSPAN_III(session_id=3) / framed(ip),
                Tunnel.ERSPAN, True),
    "erspan3_platform": (lambda ip: OUTER / GRE() / ERSPAN_III(o=1) / ERSPAN_PlatformSpecific()
                         / framed(ip), Tunnel.ERSPAN, True),
    "vxlan": (lambda ip: OUTER / UDP(sport=5555, dport=4789) / VXLAN(vni=5) / framed(ip),
              Tunnel.VXLAN, True),
    "geneve": (lambda ip: OUTER / UDP(sport=5555, dport=6081) / GENEVE(vni=5, proto=0x6558)
               / framed(ip), Tunnel.GENEVE, True),
    "geneve_ip_options": (lambda ip: OUTER / UDP(sport=5555, dport=6081)
                          / Raw(geneve_with_options(0x0800)) / ip, Tunnel.GENEVE, False),
    "gtpu": (lambda ip: OUTER / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=9) / ip,
             Tunnel.GTPU, False),
    "gtpu_seq": (lambda ip: OUTER / UDP(sport=2152, dport=2152)
                 / GTP_U_Header(teid=9, S=1, seq=3) / ip, Tunnel.GTPU, False),
    "gtpu_extension": (lambda ip: OUTER / UDP(sport=2152, dport=2152)
                       / Raw(gtpu_with_extension(ip)), Tunnel.GTPU, False),
}


def frames_of(kind: str) -> list[bytes]:
    wrap = WRAPPERS[kind][0]
    return [bytes(wrap(ip)) for ip in inner_packets()]


def write_capture(tmp_path: Path, kind: str) -> Path:
    packets = [Ether(frame) for frame in frames_of(kind)]
    for i, packet in enumerate(packets):
        packet.time = 1_700_000_000 + i * 0.01
    path = tmp_path / f"{kind}.pcap"
    wrpcap(str(path), packets)
    return path


@pytest.mark.parametrize("kind", sorted(WRAPPERS))
def test_inner_columns(kind):
    _, code, tagged = WRAPPERS[kind]
    batch = batch_from_frames(frames_of(kind))
    decoded = decode(batch)
    inner = inner_packets()
    assert decoded.weird == {}
    assert (decoded.tunnel == code).all()
    assert ip_column_to_str(decoded.src_ip) == [p[IP].src for p in inner]
    assert ip_column_to_str(decoded.dst_ip) == [p[IP].dst for p in inner]
    assert decoded.transport.tolist() == [6, 6, 6, 6, 17, 17]
    assert decoded.src_port.tolist() == [40000, 80, 40000, 40000, 5353, 53]
    assert decoded.tcp_flags[:4].tolist() == [0x02, 0x12, 0x10, 0x18]
    assert (decoded.vlan == (INNER_VLAN if tagged else 0)).all()  # the traffic's own tag
    assert (decoded.ethertype == 0x0800).all() and (decoded.ip_version == 4).all()
    assert decoded.ip_total_len.tolist() == [len(p) for p in inner]
    assert decoded.wirelen.tolist() == [len(f) for f in frames_of(kind)]  # the frame's
    http = decoded.data[decoded.payload_offset[3]:][:decoded.payload_len[3]].tobytes()
    assert http == bytes(inner[3][TCP].payload)
    reference = decode_columnwise(batch)
    for name in [*COLUMNS, "payload_offset", "tunnel"]:
        assert np.array_equal(getattr(decoded, name), getattr(reference, name)), name


def test_mixed_batch():
    """Kinds, damaged tunnels and plain packets in one batch: each row as alone."""
    kinds = ["vxlan", "gre", "gtpu", "erspan3"]
    frames = [f for kind in kinds for f in frames_of(kind)[:2]]
    frames += [bytes(OUTER / UDP(dport=4789) / b"\x08\x00"), bytes(framed(inner_packets()[4]))]
    decoded = decode(batch_from_frames(frames))
    codes = [WRAPPERS[k][1] for k in kinds for _ in range(2)] + [0, 0]
    assert decoded.tunnel.tolist() == codes
    assert decoded.weird == {"truncated_VXLAN": 1}
    for i, frame in enumerate(frames):
        alone = decode(batch_from_frames([frame]))
        for name in [*COLUMNS, "tunnel"]:
            assert getattr(alone, name)[0] == getattr(decoded, name)[i], (i, name)


def test_inner_ipv6_in_gre():
    inner = IPv6(src="2001:db8:1::1", dst="2001:db8:2::2") / TCP(sport=1, dport=443, flags="S")
    decoded = decode(batch_from_frames([bytes(OUTER / GRE(proto=0x86DD) / inner)]))
    assert decoded.tunnel[0] == Tunnel.GRE and decoded.ip_version[0] == 6
    assert ip_column_to_str(decoded.src_ip) == ["2001:db8:1::1"]
    assert decoded.dst_port[0] == 443 and decoded.ethertype[0] == 0x86DD


def test_inner_arp_frame():
    arp = ARP(psrc="10.0.0.1", pdst="10.0.0.2")
    frame = bytes(OUTER / UDP(sport=5, dport=4789) / VXLAN() / Ether(**MAC) / arp)
    decoded = decode(batch_from_frames([frame]))
    assert decoded.tunnel[0] == Tunnel.VXLAN and decoded.ethertype[0] == 0x0806
    assert decoded.ip_version[0] == 0 and decoded.vlan[0] == 0
    start = decoded.payload_offset[0]
    assert decoded.data[start:start + decoded.payload_len[0]].tobytes() == bytes(arp)


def test_nested_tunnels_and_the_depth_bound():
    tcp = IP(src=CLIENT, dst=SERVER) / TCP(sport=1, dport=2, flags="S")
    two = (OUTER / UDP(dport=4789) / VXLAN() / Ether(**MAC) / IP(src="1.1.1.1", dst="2.2.2.2")
           / GRE() / tcp)
    four = (OUTER / UDP(dport=4789) / VXLAN() / Ether(**MAC) / IP() / UDP(dport=6081)
            / GENEVE(proto=0x0800) / IP(src="3.3.3.3", dst="4.4.4.4") / GRE() / IP() / tcp)
    decoded = decode(batch_from_frames([bytes(two), bytes(four)]))
    assert decoded.tunnel.tolist() == [Tunnel.VXLAN, Tunnel.VXLAN]  # the outermost kind
    assert ip_column_to_str(decoded.src_ip) == [CLIENT, "127.0.0.1"]  # 3 opened, 4th not
    assert decoded.transport.tolist() == [6, 4]
    assert decoded.weird == {"exceeded_tunnel_max_depth": 1}
    shallow = decode(batch_from_frames([bytes(two)]), TunnelConfig(max_depth=1))
    assert ip_column_to_str(shallow.src_ip) == ["1.1.1.1"] and shallow.transport[0] == 47


def test_config_off_keeps_the_outer_packets():
    batch = batch_from_frames(frames_of("vxlan") + frames_of("gre"))
    off = TunnelConfig(enabled=False)
    decoded = decode(batch, off)
    assert (decoded.tunnel == 0).all() and decoded.weird == {}
    assert set(ip_column_to_str(decoded.src_ip)) == {"192.0.2.1"}
    assert decoded.transport.tolist() == [17] * 6 + [47] * 6
    assert (decoded.vlan == 7).all()
    reference = decode_columnwise(batch, off)
    for name in [*COLUMNS, "payload_offset", "tunnel"]:
        assert np.array_equal(getattr(decoded, name), getattr(reference, name)), name


def test_udp_to_the_vxlan_port_without_the_i_bit_stays_outer():
    frame = OUTER / UDP(sport=5555, dport=4789) / VXLAN(flags=0) / framed(inner_packets()[0])
    decoded = decode(batch_from_frames([bytes(frame)]))
    assert decoded.tunnel[0] == 0 and decoded.weird == {}
    assert decoded.transport[0] == 17 and decoded.dst_port[0] == 4789 and decoded.vlan[0] == 7
    gtp_echo = OUTER / UDP(sport=2152, dport=2152) / GTP_U_Header(gtp_type=1) / b"\x00\x00"
    echo = decode(batch_from_frames([bytes(gtp_echo)]))
    assert echo.tunnel[0] == 0 and echo.weird == {}  # signalling, not a tunnelled packet


def test_configured_ports():
    frames = [bytes(OUTER / UDP(sport=5555, dport=8472) / VXLAN(vni=1) / framed(ip))
              for ip in inner_packets()]
    batch = batch_from_frames(frames)
    assert (decode(batch).tunnel == 0).all()
    flannel = TunnelConfig.from_config({"vxlan_ports": [4789, 8472]})
    decoded = decode(batch, flannel)  # the kernel does not know 8472: decode() hands it over
    assert (decoded.tunnel == Tunnel.VXLAN).all()
    assert ip_column_to_str(decoded.src_ip)[0] == CLIENT
    reference = decode_columnwise(batch, flannel)
    for name in [*COLUMNS, "payload_offset", "tunnel"]:
        assert np.array_equal(getattr(decoded, name), getattr(reference, name)), name
    no_vxlan = decode(batch_from_frames(frames_of("vxlan")), TunnelConfig(vxlan_ports=()))
    assert (no_vxlan.tunnel == 0).all()


@pytest.mark.parametrize("section", [
    {"enabled": "yes"}, {"max_depth": 0}, {"vxlan_ports": [0]}, {"gtpu_ports": "2152"},
    {"geneve_ports": [4789]},  # in two lists
])
def test_config_is_checked(section):
    with pytest.raises(ConfigError, match="sensor.tunnels"):
        TunnelConfig.from_config(section)


def test_bad_config_is_a_usage_error(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("sensor: {tunnels: {vxlan_ports: [70000]}}\n")
    path = write_capture(tmp_path, "vxlan")
    assert main(["events", str(path), "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "sensor.tunnels.vxlan_ports" in capsys.readouterr().err


def test_default_config_is_the_decoder_default():
    assert TunnelConfig.from_config(load_config(None)["sensor"]["tunnels"]) == DEFAULT_TUNNELS


# The tunnel header's first byte and the weird a cut inside the header counts.
CUTS = {
    "gre": (len(OUTER), len(OUTER / GRE()), "truncated_GRE"),
    "gre_csum_key_seq": (len(OUTER), len(OUTER / GRE(chksum_present=1, key_present=1,
                                                     seqnum_present=1)), "truncated_GRE"),
    "gre_teb": (len(OUTER), len(OUTER / GRE()) + 14, "truncated_GRE"),
    "erspan2": (len(OUTER), len(OUTER / GRE(seqnum_present=1)) + 8 + 14, "truncated_GRE"),
    "erspan3_platform": (len(OUTER), len(OUTER / GRE()) + 20 + 14, "truncated_GRE"),
    "vxlan": (len(OUTER) + 8, len(OUTER) + 8 + 8 + 14, "truncated_VXLAN"),
    "geneve": (len(OUTER) + 8, len(OUTER) + 8 + 8 + 14, "truncated_Geneve"),
    "geneve_ip_options": (len(OUTER) + 8, len(OUTER) + 8 + 16, "truncated_Geneve"),
    "gtpu_seq": (len(OUTER) + 8, len(OUTER) + 8 + 12, "truncated_GTPU"),
    "gtpu_extension": (len(OUTER) + 8, len(OUTER) + 8 + 16, "truncated_GTPU"),
}


@pytest.mark.parametrize("kind", sorted(CUTS))
def test_truncated_tunnel_headers(kind):
    """Every cut inside the tunnel header: the outer packet, the kind's weird; every cut at
    all: no exception, nothing read past the packet (alone == in a batch)."""
    first, end, reason = CUTS[kind]
    frame = frames_of(kind)[3]
    cuts = [frame[:n] for n in range(len(frame))]
    batch = batch_from_frames(cuts)
    decoded = decode(batch)
    check_invariants(batch, decoded)
    check_rows_independent(cuts, [1] * len(cuts), decoded)
    reference = decode_columnwise(batch)
    for name in [*COLUMNS, "payload_offset", "tunnel"]:
        assert np.array_equal(getattr(decoded, name), getattr(reference, name)), name
    assert decoded.weird == reference.weird
    for n in range(first, end):
        alone = decode(batch_from_frames([frame[:n]]))
        assert alone.weird == {reason: 1}, n
        assert alone.tunnel[0] == 0 and alone.src_ip[0] == decoded.src_ip[first]


@pytest.mark.parametrize(("payload", "reason"), [
    (GRE(version=1, proto=0x880B) / bytes(8), "gre_pptp_not_decapsulated"),
    (GRE(version=3) / bytes(20), "unknown_gre_version"),
    (GRE(routing_present=1) / bytes(20), "gre_routing"),
    (GRE(proto=0x8847) / bytes(20), "unknown_gre_protocol"),
    (GRE(seqnum_present=1, proto=0x88BE) / bytes([0x20]) / bytes(30), "unknown_erspan_version"),
    (Raw(b"\x65" * 20), "invalid_inner_IP_version"),  # IP-in-IP (protocol 4) with IPv6
    (GRE(proto=0x0800) / (b"\x55" * 20), "invalid_inner_IP_version"),
    (UDP(dport=6081) / bytes([0x40, 0, 0x65, 0x58]) / bytes(30), "geneve_invalid_version"),
    (UDP(dport=6081) / bytes([0x00, 0, 0x88, 0x47]) / bytes(30), "unknown_geneve_protocol"),
    (UDP(dport=2152) / bytes([0x50, 0xFF]) / bytes(30), "gtpu_invalid_version"),
    (UDP(dport=2152) / (bytes([0x34, 0xFF, 0, 20, 0, 0, 0, 1, 0, 0, 0, 0x85])
                        + b"\x00" * 8), "truncated_GTPU"),  # an extension header of length 0
])
def test_damaged_tunnel_headers_stay_outer(payload, reason):
    outer = OUTER.copy()
    if isinstance(payload, Raw):
        outer[IP].proto = 4
    frame = bytes(outer / payload)
    decoded = decode(batch_from_frames([frame]))
    assert decoded.weird == {reason: 1}
    assert decoded.tunnel[0] == 0 and ip_column_to_str(decoded.src_ip) == ["192.0.2.1"]
    assert decoded.vlan[0] == 7


def test_gtpu_extension_chain_is_bounded():
    ext = b"\x01\x00\x00\x85" * 6  # every extension names another
    body = b"\x00\x00\x00\x85" + ext + bytes(IP() / TCP())
    gtp = bytes([0x34, 0xFF]) + struct.pack(">HI", len(body), 1) + body
    decoded = decode(batch_from_frames([bytes(OUTER / UDP(dport=2152) / gtp)]))
    assert decoded.weird == {"gtpu_ext_chain_too_long": 1} and decoded.tunnel[0] == 0


def test_geneve_truncated_capture_is_counted():
    path = shared_pcap("malformed/zeek__geneve-truncated.pcapng")
    sensor = Sensor(load_config(None)["sensor"])
    with CaptureReader(path) as reader:
        for batch in reader.batches():
            sensor.process(batch)
    sensor.flush()
    assert sensor.stats["weird.truncated_Geneve"] == 1
    assert sensor.tunnel_counts() == {}


def sensor_events(path: Path, tunnels: dict | None = None) -> tuple[dict, Sensor]:
    config = load_config(None)["sensor"]
    if tunnels is not None:
        config["tunnels"] = {**config["tunnels"], **tunnels}
    sensor = Sensor(config)
    events: dict = {}
    with CaptureReader(path) as reader:
        for batch in reader.batches():
            for event in sensor.process(batch):
                events.setdefault(event.kind, []).append(event)
    for event in sensor.flush():
        events.setdefault(event.kind, []).append(event)
    return {kind: {name: np.concatenate([e.columns[name] for e in parts])
                   for name in parts[0].columns} for kind, parts in events.items()}, sensor


@pytest.mark.parametrize("kind", sorted(WRAPPERS))
def test_sensor_emits_the_inner_traffic(tmp_path, kind):
    path = write_capture(tmp_path, kind)
    events, sensor = sensor_events(path)
    flows = events["flow"]
    pairs = sorted(zip(ip_column_to_str(flows["src_ip"]), flows["src_port"].tolist(),
                       ip_column_to_str(flows["dst_ip"]), flows["dst_port"].tolist(),
                       flows["transport"].tolist(), strict=True))
    assert pairs == [(CLIENT, 5353, RESOLVER, 53, 17), (CLIENT, 40000, SERVER, 80, 6)]
    tagged = WRAPPERS[kind][2]
    assert (flows["vlan"] == (INNER_VLAN if tagged else 0)).all()
    assert set(events["dns"]["qname"].tolist()) == {"tunnel.example.org"}
    assert events["http"]["uri"].tolist() == ["/inner"]
    assert events["http"]["host"].tolist() == ["inner.example"]
    assert sensor.tunnel_counts() == {WRAPPERS[kind][1].label: 6}
    assert not any(k.startswith("weird.") for k in sensor.stats)


@pytest.mark.parametrize("kind", ["erspan2", "gre_teb", "gtpu", "ip4in6", "vxlan"])
def test_sensor_emits_the_inner_tls_client_hello(tmp_path, kind):
    wrap = WRAPPERS[kind][0]
    hello = [IP(src=CLIENT, dst=SERVER) / TCP(sport=41000, dport=8443, flags="S", seq=1),
             IP(src=SERVER, dst=CLIENT) / TCP(sport=8443, dport=41000, flags="SA", seq=9, ack=2),
             IP(src=CLIENT, dst=SERVER) / TCP(sport=41000, dport=8443, flags="A", seq=2, ack=10),
             IP(src=CLIENT, dst=SERVER) / TCP(sport=41000, dport=8443, flags="PA", seq=2, ack=10)
             / GREASE_HELLO]
    packets = [Ether(bytes(wrap(ip))) for ip in hello]
    for i, packet in enumerate(packets):
        packet.time = 1_700_000_000 + i * 0.01
    path = tmp_path / "tls.pcap"
    wrpcap(str(path), packets)
    events, _ = sensor_events(path)
    assert events["tls"]["server_name"].tolist() == ["example.org"]
    assert ip_column_to_str(events["tls"]["src_ip"]) == [CLIENT]


def test_sensor_with_tunnels_off_sees_the_tunnel_flow(tmp_path):
    events, sensor = sensor_events(write_capture(tmp_path, "vxlan"), {"enabled": False})
    flows = events["flow"]
    assert ip_column_to_str(flows["src_ip"]) == ["192.0.2.1"] and flows["dst_port"][0] == 4789
    assert "dns" not in events and "http" not in events and sensor.tunnel_counts() == {}


@pytest.mark.parametrize("kind", sorted(WRAPPERS))
def test_reader_headers_equal_the_decoder(tmp_path, kind):
    """The capture walk's compiled decode hands tunnel rows over like decode() does."""
    assert check_batches(write_capture(tmp_path, kind), 4) == 6


TSHARK_FIELDS = ["ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "tcp.srcport", "tcp.dstport",
                 "udp.srcport", "udp.dstport", "dns.qry.name"]


def tshark_innermost(path: Path) -> list[tuple[str, ...]]:
    """tshark's innermost occurrence of each field (-E occurrence=l), per packet."""
    command = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=l",
               "-E", "separator=|"]
    for name in TSHARK_FIELDS:
        command += ["-e", name]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines()]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize("kind", sorted(WRAPPERS))
def test_matches_tshark(tmp_path, kind):
    path = write_capture(tmp_path, kind)
    with CaptureReader(path) as reader:
        decoded = decode(next(iter(reader.batches())))
    src, dst = ip_column_to_str(decoded.src_ip), ip_column_to_str(decoded.dst_ip)
    rows = tshark_innermost(path)
    assert len(rows) == len(decoded)
    for i, row in enumerate(rows):
        fields = dict(zip(TSHARK_FIELDS, row, strict=True))
        assert (src[i], dst[i]) == (fields["ip.src"], fields["ip.dst"]), i
        proto = "tcp" if decoded.transport[i] == 6 else "udp"
        ports = (int(fields[f"{proto}.srcport"]), int(fields[f"{proto}.dstport"]))
        assert ports == (decoded.src_port[i], decoded.dst_port[i]), i
    events, _ = sensor_events(path)
    assert set(events["dns"]["qname"].tolist()) == {r[-1] for r in rows if r[-1]}
