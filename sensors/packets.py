"""Columnar packet containers shared by the capture reader, the decoder and the analyzers.

A batch never holds one Python object per packet: packet bytes stay in one uint8 buffer
(for files, the memory-mapped file itself) and every per-packet attribute is a numpy column
of the same length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from pipeline.jit import njit

# Link types (tcpdump.org LINKTYPE_* values) the decoder understands.
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6, version from the first nibble
LINKTYPE_LOOP = 108  # OpenBSD loopback: 4-byte address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

# 16-byte address column: IPv6 as is, IPv4 as the IPv4-mapped IPv6 address ::ffff:a.b.c.d.
# One dtype for both families lets flows and detectors group, sort and compare addresses
# without branching on the family.
IP_DTYPE = np.dtype("V16")
IPV4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


class Tunnel(IntEnum):
    """DecodedPackets.tunnel: the kind of the outermost tunnel a packet was decapsulated
    from (sensors/decode.py; docs/schema.md and docs/sensor.md list the same codes)."""

    NONE = 0
    IPIP = 1  # IPv4/IPv6 in IPv4/IPv6 (IP protocols 4 and 41)
    GRE = 2  # GRE version 0 carrying IPv4, IPv6 or Ethernet (0x6558)
    ERSPAN = 3  # ERSPAN type I, II or III mirror sessions (GRE 0x88BE / 0x22EB)
    VXLAN = 4
    GENEVE = 5
    GTPU = 6

    @property
    def label(self) -> str:
        """The lower-case name used in stats and health documents ("vxlan" ...)."""
        return self.name.lower()


# DecodedPackets.tunnel_id, the tunnel segment a row came out of (0: none), which every
# connection key includes: kind << 56 | id for one tunnel level (exact: ids are <= 32
# bits); tunnels in tunnels set bit 63 and hold the outermost kind and a 56-bit digest of
# every level's one-level value (sensors/decode.py _segment_keys; two different segments
# share a digest with probability ~2^-56, and only matters for the same inner 5-tuple).
SEGMENT_KIND_SHIFT = 56
SEGMENT_NESTED = np.uint64(1 << 63)
SEGMENT_ID_MASK = np.uint64((1 << 56) - 1)
_TUNNEL_LABELS = np.array([""] + [Tunnel(code).label for code in range(1, len(Tunnel))],
                          dtype=object)


def segment_columns(segment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Event columns (tunnel_type, tunnel_id) of tunnel_id values: the outermost kind's
    label ("" for 0) and the segment id (VNI, GRE key, ERSPAN session id; 0 for IP-in-IP
    and GTP-U; for tunnels in tunnels the 56-bit digest)."""
    segment = np.asarray(segment, dtype=np.uint64)
    kind = ((segment >> np.uint64(SEGMENT_KIND_SHIFT)) & np.uint64(0x7F)).astype(np.int64)
    kind = np.where(kind < _TUNNEL_LABELS.size, kind, 0)
    return _TUNNEL_LABELS[kind], segment & SEGMENT_ID_MASK


VLAN_BITS = 16  # keyed_vlan: the VLAN id stays in the low 16 bits
_NESTED_DIGEST_BITS = 43


def keyed_vlan(vlan: np.ndarray, tunnel_id: np.ndarray) -> np.ndarray:
    """int64 `vlan | segment << 16`: the VLAN and the tunnel segment in one value, for the
    analyzers, which key their connections (TCP streams, QUIC) by the VLAN. segment is
    tunnel_id compacted to 47 bits: kind << 32 | id for one level (exact), for tunnels in
    tunnels 1 << 46 | kind << 43 | 43 bits of the digest. Signed and below 2^63: compiled
    code compares it with int64 values exactly (uint64 against int64 compares as floats).
    The VLAN is `value & 0xFFFF` (a cast to uint16 keeps it)."""
    vlan = np.ascontiguousarray(vlan)
    out = np.empty(vlan.shape[0], dtype=np.int64)
    _keyed_vlan(vlan, np.ascontiguousarray(tunnel_id, dtype=np.uint64), out)
    return out


@njit
def _keyed_vlan(vlan: np.ndarray, tunnel_id: np.ndarray, out: np.ndarray) -> None:
    """keyed_vlan in one pass (numpy's seven passes cost ~6 ns a packet of a mirror feed)."""
    for i in range(vlan.shape[0]):
        tid = tunnel_id[i]
        kind = (tid >> np.uint64(SEGMENT_KIND_SHIFT)) & np.uint64(0x7F)
        ident = tid & SEGMENT_ID_MASK
        if tid & SEGMENT_NESTED:
            segment = (np.uint64(1 << 46) | (kind << np.uint64(_NESTED_DIGEST_BITS))
                       | (ident & np.uint64((1 << _NESTED_DIGEST_BITS) - 1)))
        else:
            segment = (kind << np.uint64(32)) | ident
        out[i] = np.int64(np.uint64(vlan[i]) | (segment << np.uint64(VLAN_BITS)))


def plain_vlan(values: np.ndarray) -> np.ndarray:
    """The uint16 VLAN ids of keyed_vlan values (a uint16 column as it is)."""
    values = np.asarray(values)
    if values.dtype == np.uint16:
        return values
    return (values & 0xFFFF).astype(np.uint16)


@dataclass
class PacketBatch:
    """Raw packets as read from a capture: where each one's bytes are, plus its pcap header.

    `data` is the buffer all offsets point into (for files, the whole mapped file).
    """

    data: np.ndarray  # uint8 buffer
    offset: np.ndarray  # int64, start of packet bytes in `data`
    caplen: np.ndarray  # uint32, bytes captured (available in `data`)
    wirelen: np.ndarray  # uint32, original length on the wire
    ts_ns: np.ndarray  # int64, capture time in nanoseconds since the Unix epoch
    linktype: np.ndarray  # uint16, LINKTYPE_* of the interface the packet came from
    interface: np.ndarray  # uint16, interface index (pcapng IDB order; 0 for classic pcap)
    first_index: int = 0  # index of the first packet of this batch in its capture (for errors)
    # Headers the capture reader decoded while walking the records (see CommonHeaders).
    common_headers: CommonHeaders | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.offset.shape[0])


@dataclass
class CommonHeaders:
    """The common-case header columns of a batch's packets (sensors.decode._common_columns:
    done mask, the kernel columns, src and dst address bytes), decoded by the capture reader
    while each record was in the caches. sensors.decode.decode uses them instead of decoding
    again only while the batch still holds the very arrays they were decoded from (`data`,
    `offset`, `caplen`, `linktype`): replacing any of those columns drops them (changing
    them in place is not detected: do not)."""

    data: np.ndarray
    offset: np.ndarray
    caplen: np.ndarray
    linktype: np.ndarray
    columns: tuple

    def decoded_from(self, batch: PacketBatch) -> bool:
        """Whether these headers were decoded from `batch`'s current columns."""
        return (batch.data is self.data and batch.offset is self.offset
                and batch.caplen is self.caplen and batch.linktype is self.linktype)


@dataclass
class FragmentRows:
    """The IP fragment rows of a DecodedPackets (sensors/decode.py finds them; the
    Defragmenter, sensors/defrag.py, reassembles them). One entry per fragment row, in row
    order. The key and header fields are the fragment's own IP header's: for an outer
    fragment of a tunnel packet they stay the outer ones even where decapsulation made the
    row's columns describe the inner packet. IPv6 atomic fragments (offset 0, no M flag,
    RFC 6946) are whole packets and not listed."""

    row: np.ndarray  # int64, the row in the batch
    version: np.ndarray  # uint8: 4 or 6
    vlan: np.ndarray  # uint16, the VLAN of the frame the fragment came in
    src_ip: np.ndarray  # IP_DTYPE
    dst_ip: np.ndarray  # IP_DTYPE
    protocol: np.ndarray  # uint8, protocol of the datagram (IPv6: the Fragment header's)
    ident: np.ndarray  # uint32, identification (IPv4 16 bits, IPv6 32 bits)
    frag_offset: np.ndarray  # int64, offset of this fragment's data in the datagram (bytes)
    more: np.ndarray  # bool, the MF / M flag
    header_offset: np.ndarray  # int64, start of the IP header in `data`
    data_start: np.ndarray  # int64, the fragment's data in `data`: [data_start, data_end)
    data_end: np.ndarray  # int64, capped by the captured bytes
    claimed_end: np.ndarray  # int64, where the header says the data ends (may be > data_end)
    tunnel: np.ndarray  # uint8 Tunnel code of the tunnel around the fragment (0: none)
    # uint64 segment of the tunnel around the fragment (DecodedPackets.tunnel_id; 0: none):
    # part of the reassembly key, so two tenants' datagrams are never joined
    tunnel_id: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.tunnel_id is None:
            self.tunnel_id = np.zeros(self.row.shape[0], dtype=np.uint64)

    def __len__(self) -> int:
        return int(self.row.shape[0])


@dataclass
class DecodedPackets:
    """Header fields of a PacketBatch, decoded column-wise. One row per packet.

    Unset values are 0. `ip_version` 0 marks a packet without a decodable IP header (ARP,
    other ethertypes, damaged packets); those rows carry no address/port data.
    For ICMP/ICMPv6, `src_port` holds the type and `dst_port` the code (Zeek and Community ID
    convention); `icmp_type`/`icmp_code` hold them too, explicitly.
    """

    ts_ns: np.ndarray  # int64
    wirelen: np.ndarray  # uint32, frame length on the wire (what tshark/argus count as bytes)
    caplen: np.ndarray  # uint32
    interface: np.ndarray  # uint16
    vlan: np.ndarray  # uint16, innermost 802.1Q VLAN id, 0 when untagged
    ethertype: np.ndarray  # uint16, after VLAN tags (0x0800 IPv4, 0x86DD IPv6, 0x0806 ARP ...)
    ip_version: np.ndarray  # uint8: 0, 4 or 6
    src_ip: np.ndarray  # IP_DTYPE
    dst_ip: np.ndarray  # IP_DTYPE
    transport: np.ndarray  # uint8, IANA protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6)
    src_port: np.ndarray  # uint16
    dst_port: np.ndarray  # uint16
    tcp_flags: np.ndarray  # uint8 (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20)
    icmp_type: np.ndarray  # uint8
    icmp_code: np.ndarray  # uint8
    ip_total_len: np.ndarray  # uint32, IP datagram length from its header (IPv6: 40 + payload)
    payload_offset: np.ndarray  # int64, start of the L4 payload in the batch's `data`
    payload_len: np.ndarray  # int32, L4 payload bytes available in `data` (capped by caplen)
    data: np.ndarray  # the batch's uint8 buffer, for payload parsers
    weird: dict[str, int] = field(default_factory=dict)  # damaged-packet counts by reason
    # uint8 Tunnel code of the outermost tunnel the row was decapsulated from (0: none);
    # all the columns above then describe the innermost packet (but wirelen/caplen). A
    # default (all 0) keeps builders of synthetic batches working unchanged.
    tunnel: np.ndarray = None  # type: ignore[assignment]
    # uint64 tunnel segment the row came out of (0: none): kind << 56 | VXLAN/Geneve VNI,
    # GRE key or ERSPAN session id for one tunnel level; tunnels in tunnels set bit 63 and
    # keep a digest of every level (sensors/decode.py _segment_keys). Every connection key
    # (flows, TCP streams, DNS, QUIC, ICMP, fragments) includes it. Default all 0.
    tunnel_id: np.ndarray = None  # type: ignore[assignment]
    # The fragment rows (FragmentRows), None when the batch has none (most batches).
    fragments: FragmentRows | None = None

    def __post_init__(self) -> None:
        if self.tunnel is None:
            self.tunnel = np.zeros(self.ts_ns.shape[0], dtype=np.uint8)
        if self.tunnel_id is None:
            self.tunnel_id = np.zeros(self.ts_ns.shape[0], dtype=np.uint64)

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])


def ip_to_bytes16(text: str) -> bytes:
    """'192.0.2.1' or '2001:db8::1' -> the 16-byte column form."""
    import ipaddress

    addr = ipaddress.ip_address(text)
    if addr.version == 4:
        return IPV4_MAPPED_PREFIX + addr.packed
    return addr.packed


def ip_column_to_str(column: np.ndarray) -> list[str]:
    """16-byte address column -> text ('192.0.2.1' for IPv4-mapped, RFC 5952 for IPv6)."""
    import ipaddress

    raw = np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16)
    out: list[str] = []
    for row in raw:
        b = row.tobytes()
        if b[:12] == IPV4_MAPPED_PREFIX:
            out.append(f"{b[12]}.{b[13]}.{b[14]}.{b[15]}")
        else:
            out.append(str(ipaddress.IPv6Address(b)))
    return out


def ipv4_column(addresses: np.ndarray) -> np.ndarray:
    """uint32 IPv4 addresses (host order) -> 16-byte column."""
    n = addresses.shape[0]
    raw = np.zeros((n, 16), dtype=np.uint8)
    raw[:, 10] = 0xFF
    raw[:, 11] = 0xFF
    raw[:, 12:16] = addresses.astype(">u4").view(np.uint8).reshape(n, 4)
    return raw.view(IP_DTYPE).reshape(n)


def constant_text(n: int, text: str) -> np.ndarray:
    """An object column of n references to one str.

    Why not np.full(n, text, dtype=object): it converts the str to a numpy string scalar and
    back once per row, a new Python str each time (~30x slower at 60k rows).
    """
    column = np.empty(n, dtype=object)
    column.fill(text)
    return column
