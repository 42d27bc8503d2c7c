"""The compiled fast paths of sensors/decode.py beyond plain Ethernet: raw-IP and Linux
cooked (SLL/SLL2) link types in the common case, and the compiled tunnel pass
(_decode_tunnel_rows). decode() equals decode_columnwise() -- weird counts and fragment rows
included -- for every tunnel kind over every outer link type, at every cut length, in mixed
batches of any size, with and without the capture reader's headers; and the well-formed
rows really are done by the kernels (not handed to the column-wise path)."""

from __future__ import annotations

import dataclasses
import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from packet_builders import batch_from_frames
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from test_core_fused_decode import check_batches, pcap_file
from test_decode_fuzz import check_invariants, check_rows_independent, check_same_as_columnwise
from test_decode_tunnels import WRAPPERS, frames_of

from sensors.decode import (
    DEFAULT_TUNNELS,
    TunnelConfig,
    _bounds,
    _ByteGather,
    _decode_common,
    _decode_tunnels,
    decode,
    decode_columnwise,
)
from sensors.packets import PacketBatch, Tunnel
from sensors.pcap_reader import CaptureReader

MAC = {"dst": "02:00:00:00:00:02", "src": "02:00:00:00:00:01"}  # (no ARP lookups by scapy)
LINKS = {"ethernet": 1, "raw": 101, "ipv4": 228, "sll": 113, "sll2": 276}
# what the compiled pass leaves to the column-wise path by design
COLUMNWISE_KINDS = {"gtpu_extension"}


def relink(frame: bytes, linktype: int) -> bytes:
    """An Ethernet frame as a frame of another link type (same L3 bytes; a cooked header
    keeps a VLAN tag, raw IP drops it)."""
    if linktype == 1:
        return frame
    ethertype, l3 = frame[12:14], frame[14:]
    if linktype in (101, 228, 229):
        return l3[4:] if ethertype == b"\x81\x00" else l3
    if linktype == 113:  # packet type, ARPHRD, address length, address (8), protocol
        return b"\x00\x04\x00\x01\x00\x06" + frame[6:12] + b"\x00\x00" + ethertype + l3
    # SLL2: protocol, reserved, interface index, ARPHRD, packet type, address length, address
    return ethertype + b"\x00\x00\x00\x00\x00\x02\x00\x01\x04\x06" + frame[6:12] + b"\x00\x00" + l3


def kernel_done(batch: PacketBatch, tunnels: TunnelConfig = DEFAULT_TUNNELS) -> tuple:
    """(done mask, tunnel column) of the compiled passes alone, as decode() runs them."""
    gather = _ByteGather(batch.data)
    start, end = _bounds(batch, gather)
    out = _decode_common(gather.buf, start, end, np.asarray(batch.linktype).astype(np.int64))
    tunnel = np.zeros(len(batch), dtype=np.uint8)
    tunnel_id = np.zeros(len(batch), dtype=np.uint64)
    if tunnels.enabled:
        _decode_tunnels(gather, out, tunnel, tunnel_id, tunnels)
    return out[0], tunnel


def check_same(batch: PacketBatch, tunnels: TunnelConfig = DEFAULT_TUNNELS) -> None:
    decoded = decode(batch, tunnels)
    reference = decode_columnwise(batch, tunnels)
    for name in ("tunnel", "tunnel_id", "vlan", "ethertype", "ip_version", "src_ip", "dst_ip",
                 "transport", "src_port", "dst_port", "tcp_flags", "icmp_type", "icmp_code",
                 "ip_total_len", "payload_offset", "payload_len"):
        got, want = getattr(decoded, name), getattr(reference, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    assert decoded.weird == reference.weird
    if tunnels == DEFAULT_TUNNELS:  # fragment rows too
        check_same_as_columnwise(batch, decoded)


PLAIN = [
    Ether(**MAC) / IP(src="192.0.2.1", dst="192.0.2.2") / TCP(sport=1, dport=2, flags="S"),
    Ether(**MAC) / Dot1Q(vlan=9) / IP(options=[]) / UDP(sport=53, dport=5353) / b"dns",
    Ether(**MAC) / IPv6() / TCP(dport=443, flags="PA") / b"tls",
    Ether(**MAC) / IPv6() / ICMPv6EchoRequest(),
    Ether(**MAC) / IP() / ICMP() / b"ping",
]


@pytest.mark.parametrize("link", sorted(LINKS))
def test_common_case_link_types_are_done_by_the_kernel(link):
    linktype = LINKS[link]
    frames = [relink(bytes(p), linktype) for p in PLAIN]
    if linktype == 228:  # LINKTYPE_IPV4 still takes the version from the first nibble
        frames = frames[:2] + frames[4:]
    if linktype in (113, 276):  # a cooked capture also has non-IP frames
        frames.append(relink(bytes(Ether(**MAC) / ARP()), linktype))
    batch = batch_from_frames(frames, linktype=linktype)
    done, _ = kernel_done(batch)
    assert done.all()
    check_same(batch)


@pytest.mark.parametrize("linktype", [101, 113, 276])
def test_link_edges_stay_columnwise_where_they_count(linktype):
    """Cut link headers, empty raw packets, stacked tags after a cooked header, a raw
    packet of no IP version: the same columns and weirds as the column-wise decoder."""
    tagged = bytes(Ether(**MAC) / Dot1Q(vlan=1) / Dot1Q(vlan=2) / IP() / TCP())
    frames = [relink(tagged, linktype), b"", b"\x55" * 30, relink(bytes(PLAIN[0]), linktype)]
    frames += [frames[-1][:n] for n in range(len(frames[-1]))]
    check_same(batch_from_frames(frames, linktype=linktype))


@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize("kind", sorted(WRAPPERS))
def test_tunnel_kinds_are_done_by_the_kernel(kind, link):
    linktype = LINKS[link]
    if linktype == 228 and kind == "ip4in6":
        linktype = 229
    batch = batch_from_frames([relink(f, linktype) for f in frames_of(kind)],
                              linktype=linktype)
    done, tunnel = kernel_done(batch)
    if kind in COLUMNWISE_KINDS:
        assert not done.any()
    else:
        assert done.all() and (tunnel == int(WRAPPERS[kind][1])).all()
    check_same(batch)


@pytest.mark.parametrize("link", ["ethernet", "raw", "sll2"])
@pytest.mark.parametrize("kind", sorted(WRAPPERS))
def test_every_cut_length(kind, link):
    """Each cut of each tunnel frame (outer headers, tunnel header, inner headers, payload):
    the column-wise result, alone and in one batch and in batches of 1, 7 and 97 rows."""
    linktype = LINKS[link]
    frames = []
    for frame in frames_of(kind)[3:5]:
        whole = relink(frame, linktype)
        frames += [whole[:n] for n in range(len(whole) + 1)]
    batch = batch_from_frames(frames, linktype=linktype)
    decoded = decode(batch)
    check_invariants(batch, decoded)
    check_rows_independent(frames, [linktype] * len(frames), decoded)
    check_same(batch)
    for size in (1, 7, 97):
        for at in range(0, len(frames), size * 5):
            check_same(batch_from_frames(frames[at:at + size], linktype=linktype))


def mixed_frames(seed: int) -> tuple[list[bytes], list[int]]:
    """Every tunnel kind, plain traffic, cuts and single-byte damage, over every link type."""
    rng = random.Random(seed)
    frames, linktypes = [], []
    pool = [f for kind in sorted(WRAPPERS) for f in frames_of(kind)] + [bytes(p) for p in PLAIN]
    for _ in range(400):
        frame = bytearray(rng.choice(pool))
        linktype = rng.choice([1, 1, 101, 113, 276])
        if rng.random() < 0.2:
            frame = frame[:rng.randrange(len(frame) + 1)]
        if rng.random() < 0.2 and frame:
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        frames.append(relink(bytes(frame), linktype) if len(frame) >= 14 else bytes(frame))
        linktypes.append(linktype)
    return frames, linktypes


@pytest.mark.parametrize("seed", range(4))
def test_mixed_batches(seed):
    frames, linktypes = mixed_frames(seed)
    batch = batch_from_frames(frames, linktype=linktypes)
    check_invariants(batch, decode(batch))
    check_same(batch)
    for size in (3, 64):
        for at in range(0, len(frames), size):
            check_same(batch_from_frames(frames[at:at + size], linktype=linktypes[at:at + size]))


CONFIGS = [TunnelConfig(enabled=False), TunnelConfig(max_depth=1),
           TunnelConfig(vxlan_ports=(8472,)), TunnelConfig(vxlan_ports=(4789, 8472)),
           TunnelConfig(vxlan_ports=(8472,), geneve_ports=(4789,)),
           TunnelConfig(gtpu_ports=(2152, 2153), geneve_ports=(6081, 4790))]


def vxlan(inner: bytes, dport: int = 4789) -> bytes:
    return bytes(Ether(**MAC) / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=9, dport=dport)
                 / VXLAN(vni=1) / Raw(inner))


@pytest.mark.parametrize("tunnels", CONFIGS)
def test_tunnel_config_is_respected(tunnels):
    """Config off, one level, other and extra ports, nested tunnels (also to an extra port
    inside an IANA one): the column-wise result under the same config."""
    inner = bytes(PLAIN[0])
    frames = [vxlan(inner), vxlan(vxlan(inner)), vxlan(vxlan(inner, 8472)),
              vxlan(inner, 8472), *(f for kind in sorted(WRAPPERS) for f in frames_of(kind))]
    batch = batch_from_frames(frames)
    check_same(batch, tunnels)
    done, tunnel = kernel_done(batch, tunnels)
    if not tunnels.enabled:
        assert not tunnel.any()
    if tunnels == TunnelConfig(max_depth=1):  # one level still opened by the kernel
        assert done[0] and tunnel[0] == Tunnel.VXLAN and not done[1]
        assert decode(batch, tunnels).weird == {"exceeded_tunnel_max_depth": 1}


@pytest.mark.parametrize("tunnels", CONFIGS)
def test_walk_tunnel_rows_under_any_config(tmp_path: Path, tunnels):
    """The capture walk opens tunnels to the IANA ports; decode() under another config
    (fewer ports, tunnels off) decodes the batch afresh: the column-wise result."""
    inner = bytes(PLAIN[0])
    frames = [vxlan(inner), vxlan(vxlan(inner)), vxlan(inner, 8472), bytes(PLAIN[1]),
              *(f for kind in sorted(WRAPPERS) for f in frames_of(kind))]
    for only_plain in (False, True):  # a batch the walk opened no tunnel in, too
        path = pcap_file(tmp_path, frames[3:4] * 3 if only_plain else frames, 65535)
        with CaptureReader(path) as reader:
            for batch in reader.batches():
                reference = decode_columnwise(dataclasses.replace(batch, common_headers=None),
                                              tunnels)
                decoded = decode(batch, tunnels)
                assert decoded.weird == reference.weird
                for name in ("tunnel", "src_ip", "dst_ip", "src_port", "dst_port", "vlan",
                             "transport", "payload_offset", "payload_len", "ip_total_len"):
                    assert np.array_equal(getattr(decoded, name), getattr(reference, name)), name


def test_fragments_around_tunnels_stay_listed():
    """An outer fragment of a VXLAN packet and inner fragments inside VXLAN over cooked and
    raw links: listed exactly as the column-wise decoder lists them, never done."""
    datagram = IP(src="192.0.2.1", dst="192.0.2.9", id=7) / UDP(dport=53) / (b"d" * 300)
    inner = [bytes(Ether(**MAC) / p) for p in fragment(datagram, 96)]
    outer = fragment(IP(id=9) / UDP(sport=1, dport=4789) / VXLAN() / Ether(**MAC) / datagram, 120)
    frames = [vxlan(f) for f in inner] + [bytes(Ether(**MAC) / p) for p in outer]
    for linktype in (1, 113, 276, 101):
        batch = batch_from_frames([relink(f, linktype) for f in frames], linktype=linktype)
        done, _ = kernel_done(batch)
        assert not done.any()
        decoded = decode(batch)
        assert decoded.fragments is not None and len(decoded.fragments.row) == len(frames)
        check_same(batch)


@pytest.mark.parametrize("link", ["raw", "sll", "sll2"])
@pytest.mark.parametrize("batch_packets", [1, 5, 4096])
def test_capture_reader_walk(tmp_path: Path, link, batch_packets):
    """Through the capture reader's fused walk: its headers, decode() with them and
    without them and the column-wise decoder agree on tunnels, plain rows and cuts."""
    linktype = LINKS[link]
    frames, _ = mixed_frames(7)
    frames = [relink(f, linktype) if len(f) >= 14 else f for f in frames[:150]]
    frames += [relink(f, linktype) for kind in sorted(WRAPPERS) for f in frames_of(kind)]
    for snaplen in (0, 60, 65535):
        path = pcap_file(tmp_path, frames, snaplen, linktype)
        assert check_batches(path, batch_packets) == len(frames)


def test_relink_builds_the_link_headers_the_decoder_reads():
    frame = bytes(PLAIN[0])
    assert struct.unpack(">H", relink(frame, 113)[14:16])[0] == 0x0800
    assert struct.unpack(">H", relink(frame, 276)[:2])[0] == 0x0800
    assert relink(frame, 113)[16:] == relink(frame, 276)[20:] == relink(frame, 101)


def test_bench_wrapped_mix_decodes_to_the_plain_mix(tmp_path: Path):
    """bench/gen_capture.wrap_records (the bench's --mirror captures): every wrapped packet
    decodes, in the compiled passes, to the plain mix's packet (addresses, ports, payload)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import gen_capture

    plain_path = tmp_path / "plain.pcap"
    gen_capture.write_mixed(plain_path, 3000)
    with CaptureReader(plain_path) as reader:
        (plain,) = [decode(b) for b in reader.batches()]
    kinds = {"vxlan": Tunnel.VXLAN, "erspan": Tunnel.ERSPAN, "gre": Tunnel.GRE,
             "raw": Tunnel.NONE, "sll2": Tunnel.NONE}
    for wrap, kind in kinds.items():
        path = tmp_path / f"{wrap}.pcap"
        gen_capture.write_wrapped(plain_path, path, wrap)
        with CaptureReader(path) as reader:
            (batch,) = list(reader.batches())
        assert kernel_done(batch)[0].all(), wrap
        decoded = decode(batch)
        assert decoded.weird == {} and (decoded.tunnel == kind).all(), wrap
        for name in ("src_ip", "dst_ip", "src_port", "dst_port", "transport", "tcp_flags",
                     "payload_len", "ip_total_len"):
            assert np.array_equal(getattr(decoded, name), getattr(plain, name)), (wrap, name)
        check_same(dataclasses.replace(batch, common_headers=None))
