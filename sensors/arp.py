"""ARP events: one "arp" event per well-formed Ethernet/IPv4 ARP packet, parsed column-wise.

The decoder leaves ARP frames with ethertype 0x0806 and `payload_offset` at the ARP header
(RFC 826): hrd(2) pro(2) hln(1) pln(1) op(2) sha(hln) spa(pln) tha(hln) tpa(pln). Every field
is gathered for all ARP rows at once (one fancy-index of a 28-byte window per row); there is
no per-packet Python loop.

What is emitted: hardware type Ethernet (1) or IEEE 802 (6) with hln 6, protocol IPv4
(0x0800) with pln 4, any operation code (1 request, 2 reply; RARP/InARP codes pass through as
numbers). Everything else is counted in `stats` and not emitted, with Zeek's ARP analyzer
names: arp_truncated (fewer than 28 bytes captured), arp_corrupt_header (Ethernet with
hln != 6, or IPv4 with pln != 4 - what zeek__arp-leak.pcap is made of),
arp_unknown_hw_address (other hardware types), arp_unknown_proto_address (other protocols).

Ethernet source address of the frame (`eth_src_mac`): DecodedPackets carries no frame start
or link type, so it is found by walking back from the ARP header: the 2-byte ethertype, then
any 802.1Q/802.1ad tags (a tag is recognized by its TPID, for rows the decoder saw as tagged),
then the 6-byte source address. This assumes Ethernet framing (+ VLAN tags). For Linux cooked
captures (SLL/SLL2) the value read is not the frame's link address; it is 0 when the walk
would leave the buffer. A priority-tagged frame (802.1p tag with VLAN id 0) is read as
untagged, so its eth_src_mac is off by one tag.
"""

from __future__ import annotations

import numpy as np

from pipeline.schema import ARP, EventBatch
from sensors.analyzer import Analyzer
from sensors.packets import IP_DTYPE, IPV4_MAPPED_PREFIX, DecodedPackets, constant_text, plain_vlan

ETHERTYPE_ARP = 0x0806
ARP_HEADER_LEN = 28  # fixed part (8) + 2 * (6 + 4) for Ethernet/IPv4
HRD_ETHERNET, HRD_IEEE802 = 1, 6
PRO_IPV4 = 0x0800
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
MAX_VLAN_TAGS = 6  # the decoder's own limit


def _gather(data: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """(len(pos), width) bytes of data[pos:pos+width]; callers guarantee the range fits."""
    return data[pos[:, None] + np.arange(width)]


def _be16(chunk: np.ndarray, at: int) -> np.ndarray:
    return (chunk[:, at].astype(np.int64) << 8) | chunk[:, at + 1]


def _mac(chunk: np.ndarray, at: int) -> np.ndarray:
    """6 bytes at `at` of every row -> 48-bit value in uint64 (network order)."""
    out = np.zeros(chunk.shape[0], dtype=np.uint64)
    for k in range(6):
        out = (out << np.uint64(8)) | chunk[:, at + k].astype(np.uint64)
    return out


def _ipv4(chunk: np.ndarray, at: int) -> np.ndarray:
    """4 bytes at `at` of every row -> 16-byte IPv4-mapped address column."""
    n = chunk.shape[0]
    raw = np.zeros((n, 16), dtype=np.uint8)
    raw[:, :12] = np.frombuffer(IPV4_MAPPED_PREFIX, dtype=np.uint8)
    raw[:, 12:16] = chunk[:, at:at + 4]
    return raw.view(IP_DTYPE).reshape(n)


def _ethernet_source(data: np.ndarray, arp_start: np.ndarray, tagged: np.ndarray) -> np.ndarray:
    """Ethernet source MAC of each frame, walking back over the ethertype and VLAN tags."""
    cursor = arp_start - 2  # the ethertype 0x0806
    active = tagged.copy()
    for _ in range(MAX_VLAN_TAGS):
        rows = np.flatnonzero(active & (cursor >= 4))
        if rows.size == 0:
            break
        tpid = _be16(_gather(data, cursor[rows] - 4, 2), 0)
        is_tag = np.isin(tpid, VLAN_TPIDS)
        cursor[rows[is_tag]] -= 4
        active[:] = False
        active[rows[is_tag]] = True
    src_at = cursor - 6
    ok = src_at >= 0
    out = np.zeros(arp_start.shape[0], dtype=np.uint64)
    if ok.any():
        out[ok] = _mac(_gather(data, src_at[ok], 6), 0)
    return out


def arp_events(
    packets: DecodedPackets,
    observer_name: str,
    ingress_zone: str,
    stats: dict[str, int] | None = None,
) -> EventBatch | None:
    """ARP packets of a decoded batch -> an "arp" EventBatch (None when there are none)."""
    rows = np.flatnonzero(packets.ethertype == ETHERTYPE_ARP)
    if rows.size == 0:
        return None
    stats = stats if stats is not None else {}
    data = np.asarray(packets.data).reshape(-1)
    start = packets.payload_offset[rows].astype(np.int64)
    room = packets.payload_len[rows].astype(np.int64)

    # Fixed part first (8 bytes): it says whether the 28-byte Ethernet/IPv4 layout applies.
    has_fixed = (room >= 8) & (start + 8 <= data.shape[0])
    fixed = np.zeros((rows.size, 8), dtype=np.uint8)
    fixed[has_fixed] = _gather(data, start[has_fixed], 8)
    hrd, pro = _be16(fixed, 0), _be16(fixed, 2)
    hln, pln = fixed[:, 4], fixed[:, 5]
    hw_ok = (hrd == HRD_ETHERNET) | (hrd == HRD_IEEE802)
    pro_ok = pro == PRO_IPV4
    corrupt = has_fixed & ((hw_ok & (hln != 6)) | (pro_ok & (pln != 4)))
    unknown_hw = has_fixed & ~corrupt & ~hw_ok
    unknown_pro = has_fixed & ~corrupt & hw_ok & ~pro_ok
    layout_ok = has_fixed & hw_ok & pro_ok & ~corrupt
    whole = layout_ok & (room >= ARP_HEADER_LEN)
    truncated = ~has_fixed | (layout_ok & ~whole)
    for name, mask in (("arp_truncated", truncated), ("arp_corrupt_header", corrupt),
                       ("arp_unknown_hw_address", unknown_hw),
                       ("arp_unknown_proto_address", unknown_pro)):
        if hits := int(np.count_nonzero(mask)):
            stats[name] = stats.get(name, 0) + hits
    keep = rows[whole]
    if keep.size == 0:
        return None
    stats["arp_packets"] = stats.get("arp_packets", 0) + int(keep.size)

    header = _gather(data, start[whole], ARP_HEADER_LEN)
    src_ip = _ipv4(header, 14)
    dst_ip = _ipv4(header, 24)
    n = keep.size
    vlan = plain_vlan(packets.vlan[keep])
    columns = {
        "timestamp": packets.ts_ns[keep].astype(np.int64),
        "observer_name": constant_text(n, observer_name),
        "ingress_zone": constant_text(n, ingress_zone),
        "src_ip": src_ip,
        "dst_ip": dst_ip,
        "vlan": vlan,
        "operation": _be16(header, 6).astype(np.uint16),
        "src_mac": _mac(header, 8),
        "dst_mac": _mac(header, 18),
        "eth_src_mac": _ethernet_source(data, start[whole], vlan != 0),
        "gratuitous": (header[:, 14:18] == header[:, 24:28]).all(axis=1),
    }
    return EventBatch(ARP.name, columns)


class ArpAnalyzer(Analyzer):
    """Ethernet/IPv4 ARP requests and replies (see `arp_events`)."""

    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        batch = arp_events(packets, self.observer_name, self.ingress_zone, stats=self.stats)
        return [batch] if batch is not None else []
