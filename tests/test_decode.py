"""Header decoder (sensors/decode.py): crafted packets with exact expectations, truncations,
damaged headers, and an oracle comparison with scapy's dissection of real captures."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import shared_pcap
from packet_builders import batch_from_frames, batch_from_scapy
from scapy.config import conf
from scapy.contrib.mpls import MPLS  # binds MPLS to its ethertype, so scapy dissects it too
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    _ICMPv6,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.utils import RawPcapReader

from sensors.decode import decode
from sensors.packets import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    DecodedPackets,
    ip_column_to_str,
)

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def eth(*layers):
    pkt = Ether(**MAC)
    for layer in layers:
        pkt = pkt / layer
    return pkt


def tcp_v4(payload: bytes = b"", **tcp) -> IP:
    return IP(src="192.0.2.1", dst="198.51.100.7") / TCP(sport=40000, dport=443, **tcp) / payload


def row(decoded: DecodedPackets, i: int) -> dict:
    """One decoded packet as a dict (addresses as text) for readable assertions."""
    return {
        "vlan": int(decoded.vlan[i]),
        "ethertype": int(decoded.ethertype[i]),
        "ip_version": int(decoded.ip_version[i]),
        "src_ip": ip_column_to_str(decoded.src_ip[i : i + 1])[0],
        "dst_ip": ip_column_to_str(decoded.dst_ip[i : i + 1])[0],
        "transport": int(decoded.transport[i]),
        "src_port": int(decoded.src_port[i]),
        "dst_port": int(decoded.dst_port[i]),
        "tcp_flags": int(decoded.tcp_flags[i]),
        "icmp_type": int(decoded.icmp_type[i]),
        "icmp_code": int(decoded.icmp_code[i]),
        "ip_total_len": int(decoded.ip_total_len[i]),
        "payload_offset": int(decoded.payload_offset[i]),
        "payload_len": int(decoded.payload_len[i]),
    }


def payload_bytes(decoded: DecodedPackets, i: int) -> bytes:
    start = int(decoded.payload_offset[i])
    return decoded.data[start : start + int(decoded.payload_len[i])].tobytes()


def assert_column_dtypes(decoded: DecodedPackets, n: int) -> None:
    expected = {
        "ts_ns": np.int64, "wirelen": np.uint32, "caplen": np.uint32, "interface": np.uint16,
        "vlan": np.uint16, "ethertype": np.uint16, "ip_version": np.uint8,
        "transport": np.uint8, "src_port": np.uint16, "dst_port": np.uint16,
        "tcp_flags": np.uint8, "icmp_type": np.uint8, "icmp_code": np.uint8,
        "ip_total_len": np.uint32, "payload_offset": np.int64, "payload_len": np.int32,
    }
    for name, dtype in expected.items():
        column = getattr(decoded, name)
        assert column.dtype == dtype, name
        assert column.shape == (n,), name
    assert decoded.src_ip.dtype == np.dtype("V16") and decoded.src_ip.shape == (n,)
    assert decoded.dst_ip.dtype == np.dtype("V16") and decoded.dst_ip.shape == (n,)


# --- link types -------------------------------------------------------------------------


def test_ethernet_tcp_fields_and_payload():
    pkt = eth(tcp_v4(b"hello", flags="PA"))
    batch = batch_from_scapy([pkt])
    decoded = decode(batch)
    assert_column_dtypes(decoded, 1)
    r = row(decoded, 0)
    assert r == {
        "vlan": 0, "ethertype": 0x0800, "ip_version": 4,
        "src_ip": "192.0.2.1", "dst_ip": "198.51.100.7", "transport": 6,
        "src_port": 40000, "dst_port": 443, "tcp_flags": 0x18, "icmp_type": 0, "icmp_code": 0,
        "ip_total_len": 45, "payload_offset": 54, "payload_len": 5,
    }
    assert payload_bytes(decoded, 0) == b"hello"
    assert decoded.data is batch.data
    assert decoded.weird == {}
    assert decoded.ts_ns[0] == batch.ts_ns[0] and decoded.wirelen[0] == len(pkt)


def _loopback_frames(l3: bytes, family_v4: bool) -> list[tuple[bytes, int]]:
    """The same datagram behind BSD NULL (both host byte orders) and OpenBSD LOOP headers."""
    families = [2] if family_v4 else [24, 28, 30]
    frames = []
    for af in families:
        frames.append((struct.pack("<I", af) + l3, LINKTYPE_NULL))
        frames.append((struct.pack(">I", af) + l3, LINKTYPE_NULL))
        frames.append((struct.pack(">I", af) + l3, LINKTYPE_LOOP))
    return frames


def test_every_link_type_in_one_mixed_batch():
    v4 = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5353, dport=53) / (b"q" * 7)
    v6 = IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=1, dport=22, flags="S")
    cases: list[tuple[bytes, int]] = [
        (bytes(eth(v4)), LINKTYPE_ETHERNET),
        (bytes(CookedLinux(proto=0x0800) / v4), LINKTYPE_LINUX_SLL),
        (bytes(CookedLinuxV2(proto=0x86DD) / v6), LINKTYPE_LINUX_SLL2),
        (bytes(v4), LINKTYPE_RAW),
        (bytes(v6), LINKTYPE_RAW),
        (bytes(v4), LINKTYPE_IPV4),
        (bytes(v6), LINKTYPE_IPV6),
        *_loopback_frames(bytes(v4), family_v4=True),
        *_loopback_frames(bytes(v6), family_v4=False),
    ]
    frames = [frame for frame, _ in cases]
    decoded = decode(batch_from_frames(frames, linktype=[lt for _, lt in cases]))
    assert decoded.weird == {}
    for i, (frame, linktype) in enumerate(cases):
        r = row(decoded, i)
        link_len = {1: 14, 113: 16, 276: 20, 0: 4, 108: 4}.get(linktype, 0)
        is_v6 = frame[link_len] >> 4 == 6
        assert r["ip_version"] == (6 if is_v6 else 4), (i, linktype)
        assert r["ethertype"] == (0x86DD if is_v6 else 0x0800)
        if is_v6:
            assert (r["src_ip"], r["dst_ip"], r["dst_port"], r["tcp_flags"]) == (
                "2001:db8::1", "2001:db8::2", 22, 0x02)
            assert r["payload_len"] == 0 and r["payload_offset"] == decoded_start(i, frames) + (
                link_len + 40 + 20)
        else:
            assert (r["src_ip"], r["dst_ip"], r["transport"], r["src_port"], r["dst_port"]) == (
                "10.0.0.1", "10.0.0.2", 17, 5353, 53)
            assert payload_bytes(decoded, i) == b"q" * 7


def decoded_start(i: int, frames: list[bytes]) -> int:
    return sum(len(f) for f in frames[:i])


def test_linux_cooked_with_vlan_tag_and_arp():
    frame = bytes(CookedLinux(proto=0x8100)) + struct.pack(">HH", 42, 0x0800) + bytes(tcp_v4())
    arp = bytes(CookedLinux(proto=0x0806) / ARP())
    decoded = decode(batch_from_frames([frame, arp], linktype=LINKTYPE_LINUX_SLL))
    assert row(decoded, 0)["vlan"] == 42 and row(decoded, 0)["dst_port"] == 443
    assert row(decoded, 1)["ethertype"] == 0x0806 and row(decoded, 1)["ip_version"] == 0


def test_unknown_linktype_is_counted_not_decoded():
    frames = [bytes(eth(tcp_v4())), bytes(eth(tcp_v4()))]
    decoded = decode(batch_from_frames(frames, linktype=[LINKTYPE_ETHERNET, 147]))
    assert row(decoded, 0)["ip_version"] == 4
    assert row(decoded, 1)["ip_version"] == 0 and row(decoded, 1)["ethertype"] == 0
    assert row(decoded, 1)["payload_len"] == 0
    assert decoded.weird == {"unknown_linktype": 1}


def test_null_with_unknown_family_is_not_ip():
    decoded = decode(batch_from_frames([struct.pack("<I", 7) + bytes(tcp_v4())], linktype=0))
    assert row(decoded, 0)["ip_version"] == 0 and row(decoded, 0)["ethertype"] == 0


# --- VLAN -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "innermost"),
    [
        ([Dot1Q(vlan=100)], 100),
        ([Dot1AD(vlan=10), Dot1Q(vlan=200)], 200),  # 802.1ad QinQ
        ([Dot1Q(vlan=7), Dot1Q(vlan=8), Dot1Q(vlan=4095)], 4095),
    ],
)
def test_vlan_stacks_report_innermost_id(tags, innermost):
    pkt = eth(*tags, tcp_v4(b"xyz"))
    decoded = decode(batch_from_scapy([pkt]))
    r = row(decoded, 0)
    assert (r["vlan"], r["ethertype"], r["dst_port"]) == (innermost, 0x0800, 443)
    assert r["payload_offset"] == 14 + 4 * len(tags) + 40 and payload_bytes(decoded, 0) == b"xyz"


def test_legacy_qinq_tpid_0x9100():
    frame = bytes(Ether(**MAC, type=0x9100)) + struct.pack(">HH", 0x2000 | 33, 0x8100)
    frame += struct.pack(">HH", 34, 0x86DD) + bytes(IPv6() / UDP(sport=7, dport=9))
    r = row(decode(batch_from_frames([frame])), 0)
    assert (r["vlan"], r["ip_version"], r["src_port"], r["dst_port"]) == (34, 6, 7, 9)


def test_absurd_vlan_stack_is_weird():
    frame = bytes(Ether(**MAC, type=0x8100)) + struct.pack(">HH", 1, 0x8100) * 12
    frame += struct.pack(">HH", 1, 0x0800) + bytes(tcp_v4())
    decoded = decode(batch_from_frames([frame]))
    assert row(decoded, 0)["ip_version"] == 0
    assert decoded.weird == {"too_many_vlan_tags": 1}


# --- IPv4 -------------------------------------------------------------------------------


def test_ipv4_options_move_the_transport_header():
    pkt = eth(IP(src="192.0.2.9", dst="192.0.2.10", options=[IPOption_RR(routers=["1.2.3.4"])])
              / UDP(sport=1000, dport=2000) / b"data")
    decoded = decode(batch_from_scapy([pkt]))
    r = row(decoded, 0)
    ihl = Ether(bytes(pkt))[IP].ihl * 4
    assert ihl > 20
    assert (r["src_port"], r["dst_port"]) == (1000, 2000)
    assert r["payload_offset"] == 14 + ihl + 8 and payload_bytes(decoded, 0) == b"data"


def test_ipv4_fragments_only_first_has_ports():
    big = IP(src="192.0.2.1", dst="192.0.2.2", id=77) / UDP(sport=123, dport=456) / (b"A" * 3000)
    frags = fragment(big, fragsize=1000)
    assert len(frags) >= 3
    decoded = decode(batch_from_scapy([eth(f) for f in frags]))
    assert (decoded.transport == 17).all() and (decoded.ip_version == 4).all()
    assert (decoded.src_port[0], decoded.dst_port[0]) == (123, 456)
    assert (decoded.src_port[1:] == 0).all() and (decoded.dst_port[1:] == 0).all()
    assert decoded.weird == {"ip_fragment": len(frags) - 1}
    # Non-first fragments expose the fragment data; all pieces add up to the UDP datagram.
    assert int(decoded.payload_len[0]) + 8 + int(decoded.payload_len[1:].sum()) == 3008


def test_ethernet_padding_is_not_payload():
    syn = eth(tcp_v4(flags="S"))
    assert len(syn) == 54
    small_udp = eth(IP() / UDP(sport=1, dport=2) / b"hi")
    frames = [bytes(syn) + bytes(6), bytes(small_udp) + bytes(60 - len(small_udp))]
    decoded = decode(batch_from_frames(frames))
    assert len(frames[0]) == 60 and row(decoded, 0)["payload_len"] == 0
    assert row(decoded, 0)["ip_total_len"] == 40
    assert row(decoded, 1)["payload_len"] == 2 and payload_bytes(decoded, 1) == b"hi"


def test_snaplen_cut_keeps_headers_and_caps_payload():
    frame = bytes(eth(tcp_v4(b"P" * 1000)))
    cut = frame[:96]  # typical snaplen: headers complete, payload cut
    decoded = decode(batch_from_frames([cut]))
    r = row(decoded, 0)
    assert (r["ip_version"], r["dst_port"], r["ip_total_len"]) == (4, 443, 1040)
    assert r["payload_len"] == 96 - 54
    assert decoded.weird == {}


def _with_ip_header_bytes(pkt, **fields) -> bytes:
    raw = bytearray(bytes(pkt))
    for offset, value in fields.values():
        raw[14 + offset : 14 + offset + len(value)] = value
    return bytes(raw)


def test_damaged_ipv4_headers_are_weird():
    base = eth(tcp_v4(b"abc"))
    frames = [
        _with_ip_header_bytes(base, ihl=(0, b"\x44")),  # IHL 4 words
        _with_ip_header_bytes(base, total=(2, struct.pack(">H", 12))),  # total < header
        _with_ip_header_bytes(base, version=(0, b"\x55")),  # says v5 under ethertype IPv4
        _with_ip_header_bytes(base, ihl=(0, b"\x4f"), total=(2, struct.pack(">H", 60))),
        _with_ip_header_bytes(base, total=(2, b"\x00\x00")),  # zeroed by TCP offload
    ]
    decoded = decode(batch_from_frames(frames))
    assert (decoded.ip_version == 0).all()
    assert (decoded.src_port == 0).all()
    assert decoded.weird == {
        "bogus_IP_header_len": 1,
        "truncated_IP_len": 1,
        "bogus_IP_version": 1,
        "truncated_IP": 1,  # IHL 15: options run past the 43 captured bytes
        "ip_hdr_len_zero": 1,
    }


def test_tcp_with_bad_data_offset_keeps_ports_but_no_payload():
    raw = bytearray(bytes(eth(tcp_v4(b"abcd"))))
    raw[14 + 20 + 12] = 0x30  # data offset 3 words
    decoded = decode(batch_from_frames([bytes(raw)]))
    r = row(decoded, 0)
    assert (r["src_port"], r["dst_port"], r["payload_len"]) == (40000, 443, 0)
    assert decoded.weird == {"bad_TCP_header_len": 1}


# --- IPv6 -------------------------------------------------------------------------------


V6 = {"src": "2001:db8:0:1::10", "dst": "2001:db8:0:2::20"}


@pytest.mark.parametrize(
    "extensions",
    [
        [],
        [IPv6ExtHdrHopByHop()],
        [IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(addresses=["2001:db8::99"]), IPv6ExtHdrDestOpt()],
        [IPv6ExtHdrFragment(offset=0, m=1, id=5)],
        [IPv6ExtHdrDestOpt(), AH(nh=17, payloadlen=4, spi=1, icv=b"\x00" * 12)],
    ],
    ids=["none", "hbh", "hbh-routing-dst", "first-fragment", "dst-ah"],
)
def test_ipv6_extension_chain(extensions):
    pkt = IPv6(**V6)
    for ext in extensions:
        pkt = pkt / ext
    pkt = eth(pkt / UDP(sport=5000, dport=53) / b"query")
    decoded = decode(batch_from_scapy([pkt]))
    r = row(decoded, 0)
    assert (r["ip_version"], r["src_ip"], r["dst_ip"]) == (6, V6["src"], V6["dst"])
    assert (r["transport"], r["src_port"], r["dst_port"]) == (17, 5000, 53)
    assert payload_bytes(decoded, 0) == b"query"
    assert r["ip_total_len"] == len(pkt) - 14
    assert decoded.weird == {}


def test_ipv6_later_fragment_has_no_ports():
    pkt = eth(IPv6(**V6) / IPv6ExtHdrFragment(offset=100, m=0, nh=6) / (b"F" * 24))
    decoded = decode(batch_from_scapy([pkt]))
    r = row(decoded, 0)
    assert (r["transport"], r["src_port"], r["dst_port"]) == (6, 0, 0)
    assert payload_bytes(decoded, 0) == b"F" * 24
    assert decoded.weird == {"ip_fragment": 1}


def test_ipv6_endless_extension_chain_is_weird():
    pkt = IPv6(**V6)
    for _ in range(12):
        pkt = pkt / IPv6ExtHdrDestOpt()
    decoded = decode(batch_from_scapy([eth(pkt / UDP())]))
    assert row(decoded, 0)["ip_version"] == 6 and row(decoded, 0)["src_port"] == 0
    assert decoded.weird == {"ipv6_ext_chain_too_long": 1}


# --- ICMP, ARP --------------------------------------------------------------------------


def test_icmp_and_icmpv6_type_code_in_ports():
    packets = [
        eth(IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(type=3, code=13) / b"orig"),
        eth(IPv6(**V6) / ICMPv6EchoRequest(data=b"ping")),
    ]
    decoded = decode(batch_from_scapy(packets))
    r0, r1 = row(decoded, 0), row(decoded, 1)
    assert (r0["transport"], r0["src_port"], r0["dst_port"], r0["icmp_type"], r0["icmp_code"]) == (
        1, 3, 13, 3, 13)
    assert payload_bytes(decoded, 0) == b"orig"
    assert (r1["transport"], r1["src_port"], r1["dst_port"], r1["icmp_type"]) == (58, 128, 0, 128)
    assert payload_bytes(decoded, 1) == b"ping"


def test_arp_is_not_ip_and_exposes_its_header():
    pkt = eth(ARP(op=1, psrc="192.0.2.1", pdst="192.0.2.2"))
    decoded = decode(batch_from_scapy([pkt]))
    r = row(decoded, 0)
    assert (r["ethertype"], r["ip_version"], r["transport"], r["src_port"]) == (0x0806, 0, 0, 0)
    assert r["src_ip"] == "::"
    assert payload_bytes(decoded, 0) == bytes(pkt[ARP])


# --- truncation at every length -------------------------------------------------------------


# (packet, linktype, link header, IP base header, IP header incl. extensions,
#  transport bytes needed for ports, full transport header, protocol)
TRUNCATION_CASES = [
    (eth(tcp_v4(b"0123456789", options=[("MSS", 1460)])), LINKTYPE_ETHERNET,
     14, 20, 20, 20, 24, 6),
    (eth(Dot1Q(vlan=3), IP() / UDP(sport=1, dport=2) / b"abcdef"), LINKTYPE_ETHERNET,
     18, 20, 20, 8, 8, 17),
    (eth(IPv6(**V6) / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest(data=b"zz")), LINKTYPE_ETHERNET,
     14, 40, 48, 8, 8, 58),
    (CookedLinux(proto=0x0800) / IP() / ICMP() / b"pp", LINKTYPE_LINUX_SLL, 16, 20, 20, 8, 8, 1),
    (IPv6(**V6) / TCP(), LINKTYPE_RAW, 0, 40, 40, 20, 20, 6),
]


@pytest.mark.parametrize(
    ("pkt", "linktype", "link_len", "ip_base", "ip_len", "l4_min", "l4_len", "proto"),
    TRUNCATION_CASES,
)
def test_every_truncation_length(pkt, linktype, link_len, ip_base, ip_len, l4_min, l4_len, proto):
    """Slice a valid frame to 0..len-1 bytes: each cut decodes as far as its bytes allow."""
    frame = bytes(pkt)
    cuts = [frame[:k] for k in range(len(frame))]
    decoded = decode(batch_from_frames(cuts, linktype=linktype))
    full = row(decode(batch_from_frames([frame], linktype=linktype)), 0)
    assert full["src_port"] or full["dst_port"]
    ports_at = link_len + ip_len + l4_min
    payload_at = link_len + ip_len + l4_len
    expected_weird = 0
    for k in range(len(frame)):
        r = row(decoded, k)
        assert 0 <= r["payload_len"]
        assert r["payload_offset"] + r["payload_len"] <= decoded_start(k, cuts) + k
        if k < link_len + ip_base:
            assert r["ip_version"] == 0 and r["src_ip"] == "::", k
        else:
            assert r["ip_version"] == (6 if frame[link_len] >> 4 == 6 else 4), k
        if k < ports_at:
            assert r["src_port"] == 0 and r["dst_port"] == 0 and r["tcp_flags"] == 0, k
        else:
            assert r["transport"] == proto, k
            assert (r["src_port"], r["dst_port"]) == (full["src_port"], full["dst_port"]), k
        if k < payload_at:
            expected_weird += 1
            if k >= link_len + ip_len:
                assert r["payload_len"] == 0, k
        else:
            assert r["payload_len"] == k - payload_at, k
    assert sum(decoded.weird.values()) == expected_weird, decoded.weird
    assert set(decoded.weird) <= {
        "truncated_link", "truncated_IP", "truncated_tcp", "truncated_udp", "truncated_icmp",
    }


def test_empty_batch_and_empty_buffer():
    decoded = decode(batch_from_frames([]))
    assert len(decoded) == 0 and decoded.weird == {}
    assert_column_dtypes(decoded, 0)
    decoded = decode(batch_from_frames([b"", b""], linktype=[LINKTYPE_ETHERNET, LINKTYPE_RAW]))
    assert (decoded.ip_version == 0).all() and (decoded.payload_len == 0).all()
    assert decoded.weird == {"truncated_link": 1, "truncated_IP": 1}


# --- oracle: scapy's dissection of real captures ---------------------------------------------

IPV6_EXT_LAYERS = (IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt, AH)


def read_frames(path, limit: int | None = None) -> tuple[list[bytes], list[int]]:
    frames, linktypes = [], []
    reader = RawPcapReader(str(path))
    with reader:
        for raw, meta in reader:
            frames.append(bytes(raw))
            linktypes.append(getattr(meta, "linktype", None) or reader.linktype)
            if limit is not None and len(frames) >= limit:
                break
    return frames, linktypes


def scapy_expectation(frame: bytes, linktype: int) -> dict | None:
    """What scapy says the decoder should produce; None when scapy cannot dissect it."""
    try:
        pkt = conf.l2types[linktype](frame)
    except Exception:
        return None
    vlan = 0
    layer = pkt
    while layer:
        if isinstance(layer, Dot1Q | Dot1AD):
            vlan = layer.vlan
        layer = layer.payload
    ip = pkt.getlayer(IP) if pkt.haslayer(IP) else None
    ip6 = pkt.getlayer(IPv6) if pkt.haslayer(IPv6) else None
    if ip is not None and ip6 is not None:  # tunnel: the outer header is the one we decode
        ip = ip if _depth(pkt, ip) < _depth(pkt, ip6) else None
        ip6 = None if ip is not None else ip6
    exp = {"vlan": vlan, "ip_version": 0, "src_port": 0, "dst_port": 0, "tcp_flags": 0}
    if ip is None and ip6 is None:
        return exp
    if ip is not None:
        if ip.ihl is None or ip.ihl < 5 or ip.len < ip.ihl * 4 or len(ip.original) < ip.ihl * 4:
            return None
        exp.update(ip_version=4, src_ip=ip.src, dst_ip=ip.dst, transport=ip.proto)
        l4 = ip.payload if ip.frag == 0 else None
    else:
        if len(ip6.original) < 40:
            return None
        exp.update(ip_version=6, src_ip=ip6.src, dst_ip=ip6.dst)
        l4 = ip6.payload
        while isinstance(l4, IPV6_EXT_LAYERS):
            l4 = l4.payload
        if isinstance(l4, IPv6ExtHdrFragment):
            exp["transport"] = l4.nh
            l4 = l4.payload if l4.offset == 0 else None
            while isinstance(l4, IPV6_EXT_LAYERS):
                l4 = l4.payload
        if l4 is None or not isinstance(l4, TCP | UDP | _ICMPv6 | ICMP):
            return exp  # other or unparsed protocol: compare addresses only
        exp["transport"] = {TCP: 6, UDP: 17, ICMP: 1}.get(type(l4), 58)
    if isinstance(l4, TCP):
        if len(l4.original) < 20 or l4.dataofs < 5:
            return None
        exp.update(src_port=l4.sport, dst_port=l4.dport, tcp_flags=int(l4.flags) & 0xFF)
        exp["payload_len"] = max(len(l4.original) - l4.dataofs * 4, 0)
    elif isinstance(l4, UDP):
        if len(l4.original) < 8:
            return None
        exp.update(src_port=l4.sport, dst_port=l4.dport, payload_len=len(l4.original) - 8)
    elif isinstance(l4, ICMP | _ICMPv6) and exp["transport"] in (1, 58):
        if len(l4.original) < 8:
            return None
        # Not every scapy ICMPv6 message class has a `code` field: take it from the bytes.
        exp.update(src_port=l4.type, dst_port=l4.original[1], payload_len=len(l4.original) - 8)
    return exp


def _depth(pkt, layer) -> int:
    depth, current = 0, pkt
    while current is not layer and current:
        current, depth = current.payload, depth + 1
    return depth


ORACLE_CAPTURES = [
    ("benign/zeek__wikipedia.pcap", None),
    ("benign/tcpreplay__test.pcap", None),
    ("benign/zeek__workshop_2011_browse.pcap", None),
    ("dns_tunneling/ndpi__dns2tcp_tunnel.pcap", None),  # Linux SLL
    ("web_attacks/ndpi__log4j-webapp-exploit.pcap", None),  # Linux SLL
    ("large/ndpi__1kxun.pcap", 5000),
    ("icmp_sweep/sgr__hs-icmpScan.pcap", None),
    ("exfiltration/ndpi__icmp-tunnel.pcap", None),
    ("arp_spoofing/slips__test8-malicious.pcap", None),
    ("pcapng/zeek__pcapng-multi-interface.pcapng", None),
    ("benign/ndpi__dns.pcap", None),  # pcapng, 802.1Q tagged
    ("port_scan/simplescan__445_scan.pcap", None),  # 802.1Q tagged
    ("known_bad_ioc/suricata-verify__datasets-http-dns.pcap", None),  # 802.1Q tagged
    ("brute_force/ndpi__ftp_failed.pcap", None),  # IPv6
    ("benign/zeek__var-services-std-ports.pcap", None),  # IPv6 incl. ICMPv6
    ("c2_beaconing/zeek__merlinc2_quic.pcapng", None),
    ("malformed/zeek__icmp-header-trunc.pcap", None),
]


@pytest.mark.parametrize(
    ("name", "weird", "ip_version"),
    [
        ("malformed/zeek__trunc-hdr.pcap", {"truncated_link": 1}, 0),
        ("malformed/zeek__ip4-trunc.pcap", {"truncated_IP": 1}, 0),
        ("malformed/zeek__icmp-header-trunc.pcap", {"truncated_icmp": 2}, 4),
        ("malformed/zeek__ipv4-truncated-broken-header.pcap", {"truncated_IP_len": 1}, 0),
        ("malformed/zeek__ip-bogus-header-len.pcap", {"ip_hdr_len_zero": 1}, 0),
        ("malformed/zeek__arp-leak.pcap", {}, 0),  # corrupt ARP bodies are not this layer
    ],
)
def test_damaged_real_packets_are_counted(name, weird, ip_version):
    """Zeek's truncation traces (its btest baseline names the same conditions)."""
    frames, linktypes = read_frames(shared_pcap(name))
    decoded = decode(batch_from_frames(frames, linktype=linktypes))
    assert decoded.weird == weird
    assert (decoded.ip_version == ip_version).all()
    assert (decoded.src_port == 0).all() and (decoded.dst_port == 0).all()


def compare_with_scapy(frames: list[bytes], linktypes: list[int]) -> int:
    """Assert decoder == scapy on every frame scapy dissects; returns how many were compared."""
    decoded = decode(batch_from_frames(frames, linktype=linktypes))
    src = ip_column_to_str(decoded.src_ip)
    dst = ip_column_to_str(decoded.dst_ip)
    compared = 0
    for i, (frame, linktype) in enumerate(zip(frames, linktypes, strict=True)):
        exp = scapy_expectation(frame, linktype)
        if exp is None:
            continue
        compared += 1
        got = row(decoded, i)
        got["src_ip"], got["dst_ip"] = src[i], dst[i]
        mismatch = {k: (got[k], v) for k, v in exp.items() if got[k] != v}
        assert not mismatch, f"packet {i}: (decoder, scapy) differ: {mismatch}"
    return compared


@pytest.mark.parametrize(("name", "limit"), ORACLE_CAPTURES, ids=[c[0] for c in ORACLE_CAPTURES])
def test_matches_scapy_on_real_captures(name, limit):
    frames, linktypes = read_frames(shared_pcap(name), limit)
    assert frames
    compared = compare_with_scapy(frames, linktypes)
    assert compared >= 0.9 * len(frames)


def test_matches_scapy_on_a_mixed_linktype_batch():
    """Frames of an Ethernet and a Linux SLL capture interleaved in one batch."""
    eth_frames, eth_types = read_frames(shared_pcap("benign/zeek__http_get.pcap"))
    sll_frames, sll_types = read_frames(shared_pcap("dns_tunneling/ndpi__dns2tcp_tunnel.pcap"))
    assert set(eth_types) == {LINKTYPE_ETHERNET} and set(sll_types) == {LINKTYPE_LINUX_SLL}
    frames, linktypes = [], []
    for i in range(max(len(eth_frames), len(sll_frames))):
        for src_frames, src_types in ((eth_frames, eth_types), (sll_frames, sll_types)):
            if i < len(src_frames):
                frames.append(src_frames[i])
                linktypes.append(src_types[i])
    assert compare_with_scapy(frames, linktypes) == len(frames)


def test_pppoe_and_mpls_are_decoded():
    """Access (PPPoE) and provider-core (MPLS) framing: the IP inside is decoded."""
    inner = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53) / (b"x" * 12)
    frames = [
        bytes(Ether(type=0x8864) / PPPoE(sessionid=7) / PPP(proto=0x0021) / inner),
        bytes(Ether(type=0x8847) / MPLS(label=100, s=0) / MPLS(label=200, s=1) / inner),
        bytes(Ether(type=0x8864) / PPPoE(sessionid=7) / PPP(proto=0xC021) / b"lcp!"),
        bytes(Ether(type=0x8847) / MPLS(label=100, s=0))[:20],  # label stack cut short
    ]
    decoded = decode(batch_from_frames(frames))
    for i in (0, 1):
        r = row(decoded, i)
        assert (r["ip_version"], r["transport"], r["dst_port"], r["payload_len"]) == (4, 17, 53, 12)
    assert row(decoded, 2)["ip_version"] == 0 and row(decoded, 2)["ethertype"] == 0x8864
    assert row(decoded, 3)["ip_version"] == 0
    assert decoded.weird.get("truncated_link") == 1
