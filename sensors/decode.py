"""Vectorized header decoder: PacketBatch -> DecodedPackets (link, IP, transport headers).

How it works: every packet gets a cursor (an int64 offset into the batch's `data`) that walks
down the layers. Each layer is read for all packets at once by gathering a fixed-width chunk
of bytes at every cursor (one fancy-index into an unaligned strided view of `data`) and
slicing header fields out of the resulting (n, width) byte matrix. A field counts only where
its bytes lie inside the packet (`cursor + need <= end`); elsewhere it is masked to 0, so a
damaged packet can never leak bytes of its neighbour into its columns. The only Python
loops run over header *depth* (VLAN tags, IPv6 extension headers), never over packets.
The common case (Ethernet, raw IP or Linux cooked SLL/SLL2 with at most one VLAN tag,
IPv4/IPv6 without extensions or fragments, whole TCP/UDP/ICMP headers, plain non-IP frames)
is decoded first by one compiled pass (_decode_common); a second one (_decode_tunnel_rows)
opens the well-formed tunnels of common-case outer packets and decodes their inner frame
with the first. Only the other rows take the column-wise path, which therefore also does
all the weird counting. decode_columnwise() is the column-wise path for every row.

Damaged packets are counted in `weird` (Zeek weird.log style names):
  unknown_linktype, truncated_link, too_many_vlan_tags, truncated_IP, bogus_IP_version,
  bogus_IP_header_len, truncated_IP_len, ip_hdr_len_zero, ipv6_ext_chain_too_long, truncated_tcp,
  bad_TCP_header_len, truncated_udp, truncated_icmp, and (informational) ip_fragment for
  non-first fragments, which carry no transport header (ports 0). Tunnels (see _decapsulate):
  truncated_GRE, unknown_gre_version, gre_pptp_not_decapsulated, gre_routing,
  unknown_gre_flags, unknown_gre_protocol, unknown_erspan_version, truncated_VXLAN,
  truncated_Geneve, geneve_invalid_version, unknown_geneve_protocol, truncated_GTPU,
  gtpu_invalid_version, gtpu_ext_chain_too_long, truncated_inner_IP, invalid_inner_IP_version,
  exceeded_tunnel_max_depth.

Tunnels: a tunnel row (IP-in-IP, GRE/ERSPAN, VXLAN, Geneve, GTP-U) is decoded again from its
inner frame and its columns describe the innermost packet; `tunnel` says the outermost kind.

Fragments: IPv4 rows with MF or an offset and IPv6 rows with a Fragment header (not atomic)
are listed in DecodedPackets.fragments (FragmentRows: key, offset, MF, data range) for the
sensor's Defragmenter (sensors/defrag.py); None when a batch has none. A fragment inside a
tunnel is listed as the inner packet's; an outer fragment of a tunnel packet as the outer's.

Payload convention: `payload_offset`/`payload_len` describe the payload of the innermost layer
that decoded: the L4 payload for TCP/UDP/ICMP, the IP payload for other protocols and for
non-first fragments, the L3 bytes after the link header for non-IP packets (e.g. ARP, so its
parser finds the ARP header there), and an empty range at the packet start when even the
link layer is unreadable. The range never leaves the packet's captured bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import ConfigError
from pipeline.jit import njit
from sensors.packets import (
    IP_DTYPE,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    SEGMENT_ID_MASK,
    SEGMENT_KIND_SHIFT,
    SEGMENT_NESTED,
    DecodedPackets,
    FragmentRows,
    PacketBatch,
    Tunnel,
)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_ARP = 0x0806
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad, legacy QinQ
MAX_VLAN_TAGS = 6
# BSD loopback address families: AF_INET is 2 everywhere, AF_INET6 differs per BSD flavour.
AF_INET = 2
AF_INET6_VALUES = (24, 28, 30)  # NetBSD/OpenBSD, FreeBSD, Darwin

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
# IPv6 extension headers walked to find the transport header: Hop-by-Hop, Routing,
# Fragment, AH, Destination Options. ESP (50) ends the chain: its payload is encrypted.
IPV6_EXT_FRAGMENT = 44
IPV6_EXT_AH = 51
IPV6_EXT_HEADERS = (0, 43, 44, 51, 60)
MAX_IPV6_EXT_HEADERS = 8

_TAIL = 64  # bytes of buffer tail kept zero-padded so wide gathers near the end stay in bounds


class _ByteGather:
    """Reads a fixed-width chunk of `data` at many positions with one fancy-index.

    A strided view with a 1-byte stride and an itemsize of `width` makes row i the bytes
    data[i:i+width]; indexing it with the position array copies all chunks at once.
    Positions whose chunk would run past the buffer end are served from a zero-padded
    copy of the last _TAIL bytes; their out-of-packet bytes are masked by the caller.
    """

    def __init__(self, data: np.ndarray) -> None:
        buf = np.asarray(data)
        if buf.dtype != np.uint8 or buf.ndim != 1 or not buf.flags.c_contiguous:
            buf = np.ascontiguousarray(buf, dtype=np.uint8).reshape(-1)
        self.buf = buf
        self.size = int(buf.shape[0])
        self.tail_start = max(self.size - _TAIL, 0)
        self.tail = np.concatenate([buf[self.tail_start :], np.zeros(_TAIL, dtype=np.uint8)])

    def chunks(self, pos: np.ndarray, width: int) -> np.ndarray:
        """(len(pos), width) uint8 matrix of data[pos:pos+width] (zeros past the buffer end)."""
        in_buffer = (pos >= 0) & (pos <= self.size - width)
        if self.size >= width:
            view = np.ndarray(
                shape=(self.size - width + 1,),
                dtype=np.dtype(f"V{width}"),
                buffer=self.buf,
                strides=(1,),
            )
            out = view[np.where(in_buffer, pos, 0)].view(np.uint8).reshape(-1, width)
        else:
            out = np.zeros((pos.shape[0], width), dtype=np.uint8)
        near_end = np.flatnonzero(~in_buffer)
        if near_end.size:
            rel = np.clip(pos[near_end] - self.tail_start, 0, self.tail.shape[0] - width)
            out[near_end] = self.tail[rel[:, None] + np.arange(width)]
        return out


def _field_view(chunk: np.ndarray, at: int, dtype: str) -> np.ndarray:
    """View of the multi-byte field at byte `at` of every row of a chunk matrix (no copy)."""
    chunk = np.ascontiguousarray(chunk)
    if chunk.shape[0] == 0:
        return np.zeros(0, dtype=dtype)
    return np.ndarray(
        shape=(chunk.shape[0],), dtype=dtype, buffer=chunk, offset=at, strides=(chunk.shape[1],)
    )


def _field(chunk: np.ndarray, at: int, dtype: str) -> np.ndarray:
    """Multi-byte field at byte `at` of every row of a chunk matrix, widened to int64."""
    return _field_view(chunk, at, dtype).astype(np.int64)


def _be16(chunk: np.ndarray, at: int) -> np.ndarray:
    return _field(chunk, at, ">u2")


def _count(weird: dict[str, int], reason: str, mask: np.ndarray) -> None:
    """Add the True rows of a boolean mask to weird[reason]."""
    hits = int(np.count_nonzero(mask))
    if hits:
        weird[reason] = weird.get(reason, 0) + hits


def _count_rows(weird: dict[str, int], reason: str, rows: np.ndarray) -> None:
    """Add the rows of an index array to weird[reason]."""
    if rows.size:
        weird[reason] = weird.get(reason, 0) + int(rows.size)


def _is_any(values: np.ndarray, choices: tuple[int, ...]) -> np.ndarray:
    hit = values == choices[0]
    for choice in choices[1:]:
        hit |= values == choice
    return hit


@dataclass
class _Link:
    l3: np.ndarray  # int64 cursor: first byte after link header and VLAN tags
    ethertype: np.ndarray  # int64
    vlan: np.ndarray  # uint16
    ok: np.ndarray  # bool: link layer fully decoded


# Link types with an ethertype field: link header length, offset of the 2-byte ethertype.
_FRAMED_LINKS = {
    LINKTYPE_ETHERNET: (14, 12),
    LINKTYPE_LINUX_SLL: (16, 14),
    LINKTYPE_LINUX_SLL2: (20, 0),
}
_LOOPBACK_LINKS = (LINKTYPE_NULL, LINKTYPE_LOOP)
_RAW_LINKS = (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6)


def _link_fields(linktype: int, head: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(link header length, ethertype column) of packets of one link type; None if unknown."""
    if linktype in _FRAMED_LINKS:
        header_len, ethertype_at = _FRAMED_LINKS[linktype]
        return header_len, _be16(head, ethertype_at)
    if linktype in _LOOPBACK_LINKS:
        # BSD NULL stores the family in the writer's byte order: the order whose value fits
        # in 16 bits is the right one (same test as tcpdump). LOOP is network order, which
        # the same test also accepts.
        family_be = _field(head, 0, ">u4")
        family = np.where(family_be <= 0xFFFF, family_be, _field(head, 0, "<u4"))
        ethertype = np.where(
            family == AF_INET,
            ETHERTYPE_IPV4,
            np.where(_is_any(family, AF_INET6_VALUES), ETHERTYPE_IPV6, 0),
        )
        return 4, ethertype
    if linktype in _RAW_LINKS:
        version = head[:, 0] >> 4
        ethertype = np.where(
            version == 4, ETHERTYPE_IPV4, np.where(version == 6, ETHERTYPE_IPV6, 0)
        )
        return 0, ethertype
    return None


def _decode_link(
    gather: _ByteGather,
    start: np.ndarray,
    end: np.ndarray,
    linktype: np.ndarray,
    weird: dict[str, int],
) -> _Link:
    n = start.shape[0]
    head = gather.chunks(start, 24)
    lt = np.asarray(linktype)
    if lt.dtype != np.uint16:  # the contract says uint16; out-of-range values are unknown
        lt = lt.astype(np.int64)
        lt = np.where((lt >= 0) & (lt <= 0xFFFF), lt, 0xFFFF)
    present = np.flatnonzero(np.bincount(lt, minlength=1)) if n else []
    header_len = np.zeros(n, dtype=np.int64)
    ethertype = np.zeros(n, dtype=np.int64)
    known = np.zeros(n, dtype=bool)
    raw = np.zeros(n, dtype=bool)
    # One pass per link type present (usually one: then rows is a plain slice, no copies).
    for value in present:
        rows = slice(None) if len(present) == 1 else lt == value
        fields = _link_fields(int(value), head[rows])
        if fields is None:
            continue
        header_len[rows], ethertype[rows] = fields
        known[rows] = True
        raw[rows] = fields[0] == 0
    _count(weird, "unknown_linktype", ~known)

    ok = known & (start + header_len <= end)
    _count(weird, "truncated_link", known & ~raw & ~ok)
    # A raw packet has no link header; an empty one has no IP header either.
    empty_raw = raw & (start >= end)
    _count(weird, "truncated_IP", empty_raw)
    ok &= ~empty_raw
    ethertype = np.where(ok, ethertype, 0)

    l3 = start + header_len
    vlan = np.zeros(n, dtype=np.uint16)
    _strip_vlan_tags(gather, end, l3, ethertype, vlan, ok, weird)
    _strip_pppoe_session(gather, end, l3, ethertype, ok, weird)
    _strip_mpls_labels(gather, end, l3, ethertype, ok, weird)
    if _strip_pseudowire_ethernet(gather, end, l3, ethertype, ok, weird):
        _strip_vlan_tags(gather, end, l3, ethertype, vlan, ok, weird)  # tags of the inner frame
    return _Link(l3=l3, ethertype=ethertype, vlan=vlan, ok=ok)


def _strip_vlan_tags(
    gather: _ByteGather,
    end: np.ndarray,
    l3: np.ndarray,
    ethertype: np.ndarray,
    vlan: np.ndarray,
    ok: np.ndarray,
    weird: dict[str, int],
) -> None:
    """Pop stacked 802.1Q/802.1ad tags in place, one depth level per iteration.

    The tag sits where L3 would start (TCI, then the next ethertype), for Ethernet and
    Linux cooked headers alike. Only tagged rows are touched, so untagged batches cost one
    comparison.
    """
    for depth in range(MAX_VLAN_TAGS + 1):
        rows = np.flatnonzero(ok & _is_any(ethertype, VLAN_TPIDS))
        if rows.size == 0:
            return
        if depth == MAX_VLAN_TAGS:
            _count_rows(weird, "too_many_vlan_tags", rows)
            ok[rows] = False
            ethertype[rows] = 0
            return
        pos = l3[rows]
        fits = pos + 4 <= end[rows]
        cut = rows[~fits]
        _count_rows(weird, "truncated_link", cut)
        ok[cut] = False
        ethertype[cut] = 0
        tag = gather.chunks(pos[fits], 4)
        good = rows[fits]
        vlan[good] = _be16(tag, 0) & 0x0FFF
        ethertype[good] = _be16(tag, 2)
        l3[good] += 4


ETHERTYPE_PPPOE_SESSION = 0x8864
PPP_IPV4, PPP_IPV6 = 0x0021, 0x0057
ETHERTYPE_MPLS = (0x8847, 0x8848)  # unicast, multicast
MAX_MPLS_LABELS = 8


def _strip_pppoe_session(
    gather: _ByteGather,
    end: np.ndarray,
    l3: np.ndarray,
    ethertype: np.ndarray,
    ok: np.ndarray,
    weird: dict[str, int],
) -> None:
    """PPPoE session frames (access networks): 6-byte PPPoE header, 2-byte PPP protocol.

    IPv4/IPv6 inside are mapped to their ethertypes; other PPP protocols (LCP, IPCP ...)
    keep ethertype 0x8864 and are not decoded further.
    """
    rows = np.flatnonzero(ok & (ethertype == ETHERTYPE_PPPOE_SESSION))
    if rows.size == 0:
        return
    pos = l3[rows]
    fits = pos + 8 <= end[rows]
    cut = rows[~fits]
    _count_rows(weird, "truncated_link", cut)
    ok[cut] = False
    ethertype[cut] = 0
    good = rows[fits]
    ppp = _be16(gather.chunks(pos[fits], 8), 6)
    mapped = np.where(ppp == PPP_IPV4, ETHERTYPE_IPV4,
                      np.where(ppp == PPP_IPV6, ETHERTYPE_IPV6, ETHERTYPE_PPPOE_SESSION))
    ethertype[good] = mapped
    l3[good] += np.where(mapped != ETHERTYPE_PPPOE_SESSION, 8, 0)


def _strip_mpls_labels(
    gather: _ByteGather,
    end: np.ndarray,
    l3: np.ndarray,
    ethertype: np.ndarray,
    ok: np.ndarray,
    weird: dict[str, int],
) -> None:
    """MPLS label stacks (provider cores): pop 4-byte labels up to bottom-of-stack, then take
    the IP version from the first nibble of the payload (MPLS carries no payload type)."""
    active = np.flatnonzero(ok & _is_any(ethertype, ETHERTYPE_MPLS))
    for _depth in range(MAX_MPLS_LABELS):
        if active.size == 0:
            return
        pos = l3[active]
        fits = pos + 5 <= end[active]  # the label plus the first payload byte
        cut = active[~fits]
        _count_rows(weird, "truncated_link", cut)
        ok[cut] = False
        ethertype[cut] = 0
        active = active[fits]
        label = gather.chunks(pos[fits], 5)
        l3[active] += 4
        bottom = (label[:, 2] & 0x01) == 1
        version = label[:, 4] >> 4
        done = active[bottom]
        v = version[bottom]
        # First nibble 0: a pseudowire control word, then an Ethernet frame (RFC 4448).
        ethertype[done] = np.where(v == 4, ETHERTYPE_IPV4, np.where(
            v == 6, ETHERTYPE_IPV6, np.where(v == 0, ETHERTYPE_TEB, 0)))
        active = active[~bottom]
    _count_rows(weird, "too_many_mpls_labels", active)
    ok[active] = False
    ethertype[active] = 0


ETHERTYPE_TEB = 0x6558  # transparent Ethernet bridging: an Ethernet frame follows


def _strip_pseudowire_ethernet(
    gather: _ByteGather,
    end: np.ndarray,
    l3: np.ndarray,
    ethertype: np.ndarray,
    ok: np.ndarray,
    weird: dict[str, int],
) -> bool:
    """Ethernet over MPLS: skip the 4-byte control word and the inner Ethernet header.
    Returns whether any row had one (the caller then strips the inner VLAN tags)."""
    rows = np.flatnonzero(ok & (ethertype == ETHERTYPE_TEB))
    if rows.size == 0:
        return False
    pos = l3[rows]
    fits = pos + 4 + 14 <= end[rows]
    cut = rows[~fits]
    _count_rows(weird, "truncated_link", cut)
    ok[cut] = False
    ethertype[cut] = 0
    good = rows[fits]
    ethertype[good] = _be16(gather.chunks(pos[fits] + 4, 14), 12)
    l3[good] += 4 + 14
    return True


@dataclass
class _Network:
    version: np.ndarray  # int64: 0, 4 or 6
    src_ip: np.ndarray  # IP_DTYPE
    dst_ip: np.ndarray  # IP_DTYPE
    transport: np.ndarray  # int64 protocol number (after IPv6 extension headers)
    total_len: np.ndarray  # int64, IP datagram length from the header
    l4: np.ndarray  # int64 cursor to the transport header
    l4_end: np.ndarray  # int64, end of the IP datagram's bytes in `data` (capped by caplen)
    no_transport_header: np.ndarray  # bool: non-first fragment or unparsable ext chain
    fragments: list[dict[str, np.ndarray]]  # _fragment_part()s of these rows (local rows)


def _decode_ip(
    gather: _ByteGather, link: _Link, end: np.ndarray, weird: dict[str, int]
) -> _Network:
    l3 = link.l3
    header = gather.chunks(l3, 40)  # the IPv4 base header and the whole IPv6 header
    room = end - l3
    first_nibble = header[:, 0] >> 4

    is4 = link.ok & (link.ethertype == ETHERTYPE_IPV4)
    base4 = is4 & (room >= 20)
    _count(weird, "truncated_IP", is4 & ~base4)
    version4 = base4 & (first_nibble == 4)
    _count(weird, "bogus_IP_version", base4 & ~version4)
    ihl = (header[:, 0] & 0x0F).astype(np.int64) * 4
    ihl_ok = version4 & (ihl >= 20)
    _count(weird, "bogus_IP_header_len", version4 & ~ihl_ok)
    total4 = _be16(header, 2)
    len_ok = ihl_ok & (total4 >= ihl)
    # Total length 0 is what TCP segmentation offload leaves in captures taken on the sender;
    # like Zeek (with checksum checks on) we name it apart and do not guess a length.
    _count(weird, "ip_hdr_len_zero", ihl_ok & (total4 == 0))
    _count(weird, "truncated_IP_len", ihl_ok & ~len_ok & (total4 != 0))
    ip4 = len_ok & (ihl <= room)  # options cut by the snaplen
    _count(weird, "truncated_IP", len_ok & ~ip4)
    flags_offset = _be16(header, 6)
    later_fragment = ip4 & ((flags_offset & 0x1FFF) != 0)

    is6 = link.ok & (link.ethertype == ETHERTYPE_IPV6)
    base6 = is6 & (room >= 40)
    _count(weird, "truncated_IP", is6 & ~base6)
    ip6 = base6 & (first_nibble == 6)
    _count(weird, "bogus_IP_version", base6 & ~ip6)
    total6 = 40 + _be16(header, 4)

    version = np.where(ip4, 4, np.where(ip6, 6, 0))
    transport = np.where(ip4, header[:, 9], np.where(ip6, header[:, 6], 0)).astype(np.int64)
    total_len = np.where(ip4, total4, np.where(ip6, total6, 0))
    l4 = np.where(ip4, l3 + ihl, np.where(ip6, l3 + 40, l3))
    # The datagram ends where its header says, so Ethernet padding is never payload.
    l4_end = np.where(ip4 | ip6, np.minimum(l3 + total_len, end), l3)
    no_transport_header = later_fragment.copy()
    # fragments (first ones too: MF set), for the Defragmenter; usually none
    frag4 = np.flatnonzero(ip4 & ((flags_offset & 0x3FFF) != 0))
    fragments = [_fragment_part(
        frag4, 4, _be16(header[frag4], 4), (flags_offset[frag4] & 0x1FFF) * 8,
        (flags_offset[frag4] & 0x2000) != 0, header[frag4, 9], l3[frag4], l4[frag4],
        l4_end[frag4], l3[frag4] + total4[frag4])] if frag4.size else []
    _walk_ipv6_extensions(gather, ip6, transport, l4, l4_end, no_transport_header, weird,
                          (l3, l3 + total_len, fragments))
    _count(weird, "ip_fragment", later_fragment)

    src_ip, dst_ip = _address_columns(header, ip4, ip6)
    for part in fragments:  # the key fields of the fragment's own header
        part["vlan"] = link.vlan[part["row"]]
        part["src_ip"], part["dst_ip"] = src_ip[part["row"]], dst_ip[part["row"]]
    return _Network(
        version=version,
        src_ip=src_ip,
        dst_ip=dst_ip,
        transport=transport,
        total_len=total_len,
        l4=l4,
        l4_end=l4_end,
        no_transport_header=no_transport_header,
        fragments=fragments,
    )


def _fragment_part(rows: np.ndarray, version: int, ident: np.ndarray, offset: np.ndarray,
                   more: np.ndarray, protocol: np.ndarray, header_offset: np.ndarray,
                   data_start: np.ndarray, data_end: np.ndarray,
                   claimed_end: np.ndarray) -> dict[str, np.ndarray]:
    """FragmentRows columns of some fragment rows (the key's vlan and addresses are added
    by _decode_ip, the tunnel and its segment by _decapsulate)."""
    return {"row": rows.astype(np.int64), "version": np.full(rows.size, version, np.uint8),
            "protocol": protocol.astype(np.uint8), "ident": ident.astype(np.uint32),
            "frag_offset": offset.astype(np.int64), "more": more.astype(bool),
            "header_offset": header_offset.astype(np.int64),
            "data_start": data_start.astype(np.int64), "data_end": data_end.astype(np.int64),
            "claimed_end": claimed_end.astype(np.int64),
            "tunnel": np.zeros(rows.size, dtype=np.uint8),
            "tunnel_id": np.zeros(rows.size, dtype=np.uint64)}


def _walk_ipv6_extensions(
    gather: _ByteGather,
    ip6: np.ndarray,
    transport: np.ndarray,
    l4: np.ndarray,
    l4_end: np.ndarray,
    no_transport_header: np.ndarray,
    weird: dict[str, int],
    fragment_out: tuple[np.ndarray, np.ndarray, list] | None = None,
) -> None:
    """Advance `transport`/`l4` past IPv6 extension headers in place, one level per loop.
    `fragment_out` (IP header start and claimed datagram end per row, a list): the
    Fragment headers met are appended to the list as _fragment_part()s."""
    rows = np.flatnonzero(ip6 & _is_any(transport, IPV6_EXT_HEADERS))
    for _ in range(MAX_IPV6_EXT_HEADERS):
        if rows.size == 0:
            return
        pos = l4[rows]
        kind = transport[rows]
        fits = pos + 8 <= l4_end[rows]  # every extension header is at least 8 bytes
        cut = rows[~fits]
        _count_rows(weird, "truncated_IP", cut)
        no_transport_header[cut] = True
        ext = gather.chunks(pos, 8)
        length_field = ext[:, 1].astype(np.int64)
        ext_len = np.where(
            kind == IPV6_EXT_FRAGMENT,
            8,
            np.where(kind == IPV6_EXT_AH, (length_field + 2) * 4, (length_field + 1) * 8),
        )
        offset_flags = _be16(ext, 2)
        later_fragment = fits & (kind == IPV6_EXT_FRAGMENT) & ((offset_flags >> 3) != 0)
        # atomic fragments (offset 0, no M flag: RFC 6946) are whole packets
        fragment = np.flatnonzero(fits & (kind == IPV6_EXT_FRAGMENT)
                                  & ((offset_flags & 0xFFF9) != 0))
        if fragment.size and fragment_out is not None:
            at, head_at, claimed_end = rows[fragment], fragment_out[0], fragment_out[1]
            fragment_out[2].append(_fragment_part(
                at, 6, _field(ext[fragment], 4, ">u4"), offset_flags[fragment] & 0xFFF8,
                (offset_flags[fragment] & 1) != 0, ext[fragment, 0], head_at[at],
                pos[fragment] + 8, l4_end[at], claimed_end[at]))
        moved = rows[fits]
        transport[moved] = ext[fits, 0]
        l4[moved] += ext_len[fits]
        no_transport_header[rows[later_fragment]] = True
        _count(weird, "ip_fragment", later_fragment)
        go_on = fits & ~later_fragment & _is_any(ext[:, 0].astype(np.int64), IPV6_EXT_HEADERS)
        rows = rows[go_on]
    if rows.size:
        _count_rows(weird, "ipv6_ext_chain_too_long", rows)
        no_transport_header[rows] = True


def _address_columns(
    header: np.ndarray, ip4: np.ndarray, ip6: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """16-byte source/destination columns: IPv6 as is, IPv4 as ::ffff:a.b.c.d.

    Built as two native uint64 halves per address (byte order preserved by reading and
    writing both halves in the same order), which keeps every step a 1-D column operation.
    """
    n = header.shape[0]
    # Second half of an IPv4-mapped address: bytes 00 00 ff ff a b c d.
    mapped_marker = np.frombuffer(b"\x00\x00\xff\xff\x00\x00\x00\x00", dtype=np.uint64)[0]
    shift = np.uint64(32 if np.little_endian else 0)
    columns = []
    for v4_at, v6_at in ((12, 8), (16, 24)):
        v4_half = (_field_view(header, v4_at, "=u4").astype(np.uint64) << shift) | mapped_marker
        halves = np.zeros((n, 2), dtype=np.uint64)
        halves[:, 0] = np.where(ip6, _field_view(header, v6_at, "=u8"), 0)
        halves[:, 1] = np.where(
            ip6, _field_view(header, v6_at + 8, "=u8"), np.where(ip4, v4_half, 0)
        )
        columns.append(halves.view(IP_DTYPE).reshape(n))
    return columns[0], columns[1]


@dataclass
class _Transport:
    src_port: np.ndarray
    dst_port: np.ndarray
    tcp_flags: np.ndarray
    icmp_type: np.ndarray
    icmp_code: np.ndarray
    payload_offset: np.ndarray  # int64, before the final clamp to the packet
    payload_len: np.ndarray  # int64, before the final clamp


def _decode_transport(
    gather: _ByteGather, net: _Network, weird: dict[str, int]
) -> _Transport:
    l4, proto = net.l4, net.transport
    segment = gather.chunks(l4, 16)  # ports .. TCP flags; UDP and ICMP need only 8
    room = net.l4_end - l4
    has_l4 = (net.version != 0) & ~net.no_transport_header
    tcp = has_l4 & (proto == IPPROTO_TCP)
    udp = has_l4 & (proto == IPPROTO_UDP)
    icmp = has_l4 & ((proto == IPPROTO_ICMP) | (proto == IPPROTO_ICMPV6))
    tcp_ok = tcp & (room >= 20)
    udp_ok = udp & (room >= 8)
    icmp_ok = icmp & (room >= 8)
    _count(weird, "truncated_tcp", tcp & ~tcp_ok)
    _count(weird, "truncated_udp", udp & ~udp_ok)
    _count(weird, "truncated_icmp", icmp & ~icmp_ok)

    ports_ok = tcp_ok | udp_ok
    zero = np.zeros(1, dtype=np.uint8)
    icmp_type = np.where(icmp_ok, segment[:, 0], zero)
    icmp_code = np.where(icmp_ok, segment[:, 1], zero)
    src_port = np.where(ports_ok, _be16(segment, 0), icmp_type)
    dst_port = np.where(ports_ok, _be16(segment, 2), icmp_code)
    tcp_flags = np.where(tcp_ok, segment[:, 13], zero)

    tcp_header_len = (segment[:, 12] >> 4).astype(np.int64) * 4
    bad_offset = tcp_ok & (tcp_header_len < 20)
    _count(weird, "bad_TCP_header_len", bad_offset)
    options_cut = tcp_ok & ~bad_offset & (tcp_header_len > room)
    _count(weird, "truncated_tcp", options_cut)
    tcp_payload = tcp_ok & ~bad_offset & ~options_cut

    ip_rows = net.version != 0
    # IP payload as is: other protocols and non-first fragments (no transport header).
    opaque = ip_rows & ~(tcp | udp | icmp)
    header_len = np.select([tcp_payload, udp_ok | icmp_ok], [tcp_header_len, 8], 0)
    payload_offset = l4 + header_len
    payload_len = np.where(tcp_payload | udp_ok | icmp_ok | opaque, room - header_len, 0)
    return _Transport(
        src_port=src_port.astype(np.uint16),
        dst_port=dst_port.astype(np.uint16),
        tcp_flags=tcp_flags.astype(np.uint8),
        icmp_type=icmp_type.astype(np.uint8),
        icmp_code=icmp_code.astype(np.uint8),
        payload_offset=payload_offset,
        payload_len=payload_len,
    )


# --- tunnels ------------------------------------------------------------------------------
# Mirrored traffic (ERSPAN, VXLAN) and carrier tunnels (GRE, IP-in-IP, Geneve, GTP-U) carry
# the packets worth analysing inside another packet. A tunnel row is decoded a second time,
# by _decode_rows itself, from the start of its inner frame (Ethernet or raw IP), so the
# inner link layer gets the same VLAN/MPLS/... stripping; the row then describes the inner
# packet. Header layouts: RFC 2003/2473 (IP-in-IP), RFC 2784/2890 (GRE),
# draft-foschiano-erspan-03 (ERSPAN I/II/III), RFC 7348 (VXLAN), RFC 8926 (Geneve),
# 3GPP TS 29.281 (GTP-U). A damaged tunnel header leaves the row the outer packet, counted.

VXLAN_PORT, GENEVE_PORT, GTPU_PORT = 4789, 6081, 2152  # IANA; also the compiled hand-off
MAX_TUNNEL_DEPTH = 3
MAX_GTPU_EXTENSIONS = 4  # extension headers walked per GTP-U packet (5G uses one or two)
ETHER_HEADER_LEN = 14
GRE_TEB, GRE_ERSPAN_2, GRE_ERSPAN_3 = 0x6558, 0x88BE, 0x22EB
GRE_FLAG_C, GRE_FLAG_R, GRE_FLAG_K, GRE_FLAG_S = 0x8000, 0x4000, 0x2000, 0x1000
GRE_RESERVED = 0x00F8  # RFC 2784 Reserved0 bits after the 5 defined flags (A is PPTP's)
IPPROTO_IPIP, IPPROTO_IPV6_ENCAP, IPPROTO_GRE = 4, 41, 47


def _ports(section: dict, key: str, default: int) -> tuple[int, ...]:
    value = section.get(key, [default])
    values = [value] if isinstance(value, int) else value
    if not isinstance(values, list | tuple) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p <= 0xFFFF for p in values):
        raise ConfigError(f"sensor.tunnels.{key}: a list of UDP ports (1-65535), got {value!r}")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class TunnelConfig:
    """Which tunnels the decoder opens (config `sensor.tunnels`, docs/configuration.md)."""

    enabled: bool = True
    vxlan_ports: tuple[int, ...] = (VXLAN_PORT,)
    geneve_ports: tuple[int, ...] = (GENEVE_PORT,)
    gtpu_ports: tuple[int, ...] = (GTPU_PORT,)
    max_depth: int = MAX_TUNNEL_DEPTH

    @classmethod
    def from_config(cls, section: dict | None) -> TunnelConfig:
        """The `sensor.tunnels` section (None or {}: the defaults); ConfigError if malformed."""
        section = section or {}
        enabled = section.get("enabled", True)
        depth = section.get("max_depth", MAX_TUNNEL_DEPTH)
        if not isinstance(enabled, bool):
            raise ConfigError(f"sensor.tunnels.enabled: true or false, got {enabled!r}")
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 8:
            raise ConfigError(f"sensor.tunnels.max_depth: 1-8 tunnel levels, got {depth!r}")
        config = cls(enabled, _ports(section, "vxlan_ports", VXLAN_PORT),
                     _ports(section, "geneve_ports", GENEVE_PORT),
                     _ports(section, "gtpu_ports", GTPU_PORT), depth)
        sets = (config.vxlan_ports, config.geneve_ports, config.gtpu_ports)
        if sum(len(p) for p in sets) != len(set().union(*sets)):
            raise ConfigError("sensor.tunnels: a UDP port is in more than one tunnel port list")
        return config

    def extra_ports(self) -> np.ndarray:
        """Configured tunnel ports the compiled common case does not hand off (it knows
        only the IANA ones): decode() hands those rows to the column-wise path itself."""
        ports = set(self.vxlan_ports + self.geneve_ports + self.gtpu_ports) if self.enabled \
            else set()
        return np.array(sorted(ports - {VXLAN_PORT, GENEVE_PORT, GTPU_PORT}), dtype=np.int64)


DEFAULT_TUNNELS = TunnelConfig()


def _drop(weird: dict[str, int], reason: str, ok: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """ok & ~bad, counting the rows still ok that are bad as `reason`."""
    _count(weird, reason, ok & bad)
    return ok & ~bad


@dataclass
class _Inner:
    """Where a tunnel's inner frame starts, for the candidate rows of one tunnel kind."""

    ok: np.ndarray  # bool: the tunnel header decoded
    start: np.ndarray  # int64: first byte of the inner frame
    ethernet: np.ndarray  # bool: an Ethernet frame (else a raw IPv4/IPv6 packet)
    kind: np.ndarray  # int64 Tunnel code
    ident: np.ndarray  # uint64: the segment id (VNI, GRE key, ERSPAN session; 0: none)


def _ipip_inner(gather: _ByteGather, pos: np.ndarray, end: np.ndarray, proto: np.ndarray,
                weird: dict[str, int]) -> _Inner:
    """IP-in-IP: the IP payload is the inner packet, of the version the protocol names."""
    ok = _drop(weird, "truncated_inner_IP", np.ones(pos.shape[0], dtype=bool), pos >= end)
    version = gather.chunks(pos, 1)[:, 0] >> 4
    wanted = np.where(proto == IPPROTO_IPIP, 4, 6)
    ok = _drop(weird, "invalid_inner_IP_version", ok, version != wanted)
    return _Inner(ok, pos, np.zeros_like(ok), np.full(pos.shape[0], _KIND_IPIP),
                  np.zeros(pos.shape[0], dtype=np.uint64))


def _gre_inner(gather: _ByteGather, pos: np.ndarray, end: np.ndarray, proto: np.ndarray,
               weird: dict[str, int]) -> _Inner:
    """GRE version 0 (RFC 2784 + the key and sequence fields of RFC 2890) with IPv4, IPv6,
    Ethernet or ERSPAN inside. ERSPAN (draft-foschiano-erspan): 0x88BE with the S bit is
    type II (8-byte header), without it type I (none); 0x22EB is type III (12 bytes, then an
    8-byte platform sub-header when its last bit O is set); an Ethernet frame follows."""
    room = end - pos
    head = gather.chunks(pos, 4)
    flags, protocol = _be16(head, 0), _be16(head, 2)
    ok = _drop(weird, "truncated_GRE", np.ones(pos.shape[0], dtype=bool), room < 4)
    version = flags & 0x7
    ok = _drop(weird, "unknown_gre_version", ok, version >= 2)
    ok = _drop(weird, "gre_pptp_not_decapsulated", ok, version == 1)  # PPP inside: not opened
    ok = _drop(weird, "gre_routing", ok, (flags & GRE_FLAG_R) != 0)  # RFC 1701, deprecated
    ok = _drop(weird, "unknown_gre_flags", ok, (flags & GRE_RESERVED) != 0)
    header = (4 + np.where(flags & GRE_FLAG_C, 4, 0) + np.where(flags & GRE_FLAG_K, 4, 0)
              + np.where(flags & GRE_FLAG_S, 4, 0))
    ok = _drop(weird, "truncated_GRE", ok, header > room)
    ip = (protocol == ETHERTYPE_IPV4) | (protocol == ETHERTYPE_IPV6)
    erspan2, erspan3 = protocol == GRE_ERSPAN_2, protocol == GRE_ERSPAN_3
    ethernet = (protocol == GRE_TEB) | erspan2 | erspan3
    ok = _drop(weird, "unknown_gre_protocol", ok, ~(ip | ethernet))

    span = gather.chunks(pos + header, 12)
    span_len = np.where(erspan3, 12, np.where(erspan2 & ((flags & GRE_FLAG_S) != 0), 8, 0))
    ok = _drop(weird, "truncated_GRE", ok, header + span_len > room)
    span_version = span[:, 0] >> 4  # 1: type II, 2: type III
    ok = _drop(weird, "unknown_erspan_version", ok,
               ((span_len == 8) & (span_version != 1)) | (erspan3 & (span_version != 2)))
    span_len = span_len + np.where(erspan3 & ((span[:, 11] & 0x01) != 0), 8, 0)
    inner = pos + header + span_len
    ok = _drop(weird, "truncated_GRE", ok, ethernet & (inner + ETHER_HEADER_LEN > end))
    kind = np.where(erspan2 | erspan3, _KIND_ERSPAN, _KIND_GRE)
    # the segment: ERSPAN II/III's session id (10 bits), else the GRE key (RFC 2890)
    key = _field(gather.chunks(pos + 4 + np.where(flags & GRE_FLAG_C, 4, 0), 4), 0, ">u4")
    ident = np.where(span_len >= 8, _be16(span, 2) & 0x3FF,
                     np.where((flags & GRE_FLAG_K) != 0, key, 0)).astype(np.uint64)
    return _Inner(ok, inner, ethernet, kind, ident)


def _vxlan_inner(gather: _ByteGather, pos: np.ndarray, end: np.ndarray, proto: np.ndarray,
                 weird: dict[str, int]) -> _Inner:
    """VXLAN: 8-byte header whose flags have the I bit (a valid VNI), then Ethernet. UDP to
    the port without the I bit is some other protocol: left as it is, not counted."""
    room = end - pos
    ok = _drop(weird, "truncated_VXLAN", np.ones(pos.shape[0], dtype=bool), room < 8)
    ok &= (gather.chunks(pos, 1)[:, 0] & 0x08) != 0
    ok = _drop(weird, "truncated_VXLAN", ok, room < 8 + ETHER_HEADER_LEN)
    return _Inner(ok, pos + 8, np.ones_like(ok), np.full(pos.shape[0], _KIND_VXLAN),
                  _vni(gather, pos))


def _geneve_inner(gather: _ByteGather, pos: np.ndarray, end: np.ndarray, proto: np.ndarray,
                  weird: dict[str, int]) -> _Inner:
    """Geneve: version 0, 8-byte header plus 4 * option length, then the protocol type's
    frame (0x6558 Ethernet, or IPv4/IPv6)."""
    room = end - pos
    head = gather.chunks(pos, 4)
    ok = _drop(weird, "truncated_Geneve", np.ones(pos.shape[0], dtype=bool), room < 8)
    ok = _drop(weird, "geneve_invalid_version", ok, (head[:, 0] >> 6) != 0)
    header = 8 + (head[:, 0] & 0x3F).astype(np.int64) * 4
    ok = _drop(weird, "truncated_Geneve", ok, header > room)
    protocol = _be16(head, 2)
    ethernet = protocol == GRE_TEB
    ip = (protocol == ETHERTYPE_IPV4) | (protocol == ETHERTYPE_IPV6)
    ok = _drop(weird, "unknown_geneve_protocol", ok, ~(ip | ethernet))
    ok = _drop(weird, "truncated_Geneve", ok, ethernet & (header + ETHER_HEADER_LEN > room))
    return _Inner(ok, pos + header, ethernet, np.full(pos.shape[0], _KIND_GENEVE),
                  _vni(gather, pos))


def _gtpu_inner(gather: _ByteGather, pos: np.ndarray, end: np.ndarray, proto: np.ndarray,
                weird: dict[str, int]) -> _Inner:
    """GTP-U (version 1, PT 1): T-PDUs (message type 0xFF) carry an IP packet after the
    8-byte header, the 4 optional bytes when any of E/S/PN is set, and the extension
    headers the E bit chains (length in 4-byte units, next type in the last byte). Other
    messages (echo, error indication, end marker) are signalling: left as they are."""
    room = end - pos
    head = gather.chunks(pos, 12)
    ok = _drop(weird, "truncated_GTPU", np.ones(pos.shape[0], dtype=bool), room < 8)
    flags = head[:, 0].astype(np.int64)
    ok = _drop(weird, "gtpu_invalid_version", ok, (flags >> 4) != 0x3)  # version 1, PT 1
    ok &= head[:, 1] == 0xFF
    optional = (flags & 0x07) != 0
    ok = _drop(weird, "truncated_GTPU", ok, optional & (room < 12))
    header = np.where(optional, 12, 8)
    chained = np.flatnonzero(ok & ((flags & 0x04) != 0) & (head[:, 11] != 0))
    for _ in range(MAX_GTPU_EXTENSIONS):
        if chained.size == 0:
            break
        at = pos[chained] + header[chained]
        length = gather.chunks(at, 1)[:, 0].astype(np.int64) * 4
        bad = (at >= end[chained]) | (length == 0) | (at + length > end[chained])
        _count_rows(weird, "truncated_GTPU", chained[bad])
        ok[chained[bad]] = False
        chained, at, length = chained[~bad], at[~bad], length[~bad]
        header[chained] += length
        chained = chained[gather.chunks(at + length - 1, 1)[:, 0] != 0]
    _count_rows(weird, "gtpu_ext_chain_too_long", chained)
    ok[chained] = False
    # no segment id: a bearer's TEIDs differ by direction (each end picks the TEID it
    # receives on, 3GPP TS 23.401 5.3.4), so a TEID would split every connection in two
    return _Inner(ok, pos + header, np.zeros_like(ok), np.full(pos.shape[0], _KIND_GTPU),
                  np.zeros(pos.shape[0], dtype=np.uint64))


def _vni(gather: _ByteGather, pos: np.ndarray) -> np.ndarray:
    """The 24-bit VNI at bytes 4-6 of a VXLAN or Geneve header at `pos`."""
    head = gather.chunks(pos + 4, 3).astype(np.uint64)
    return (head[:, 0] << np.uint64(16)) | (head[:, 1] << np.uint64(8)) | head[:, 2]


def _segment_keys(kind: np.ndarray, ident: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """tunnel_id values of rows opened at one level (kind, ident) whose inner packet has
    tunnel_id `inner` (0: no tunnel inside)."""
    level = (kind.astype(np.uint64) << np.uint64(SEGMENT_KIND_SHIFT)) | ident.astype(np.uint64)
    return nest_segments(level, inner)


def nest_segments(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """tunnel_id of packets that came out of segment `outer` (a tunnel_id value) and then
    out of segment `inner` inside it (0: none): `outer` itself when inner is 0, else the
    nested form (bit 63, outer's kind, a digest of both)."""
    outer = np.asarray(outer, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = outer * np.uint64(0x9E3779B97F4A7C15) ^ inner  # (a splitmix64 finaliser)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    kind = (outer >> np.uint64(SEGMENT_KIND_SHIFT)) & np.uint64(0x7F)
    nested = SEGMENT_NESTED | (kind << np.uint64(SEGMENT_KIND_SHIFT)) | (x & SEGMENT_ID_MASK)
    return np.where(inner == 0, outer, nested)


def _decapsulate(gather: _ByteGather, columns: dict[str, np.ndarray],
                 no_transport_header: np.ndarray, weird: dict[str, int],
                 tunnels: TunnelConfig, depth: int,
                 fragments: list[dict[str, np.ndarray]]) -> None:
    """Replace the columns of tunnel rows with those of their inner packet, in place.

    `fragments` (this level's _fragment_part()s) gets the inner packets' fragments of
    decapsulated rows that are not themselves outer fragments: a first fragment of a tunnel
    packet stays listed as the outer fragment (its datagram is reassembled first, then
    decoded again, tunnels included: sensors/defrag.py).

    Candidates are whole IP datagrams (or first fragments) of protocol 4/41/47 and UDP to a
    configured tunnel port; the tunnel payload is the outer payload range. A row is replaced
    when its tunnel header decodes and its inner frame decodes to IP or to a non-IP frame
    (ARP ...); otherwise it stays the outer packet (the inner decode counts its damage)."""
    if not tunnels.enabled or columns["tunnel"].shape[0] == 0:
        return
    proto = columns["transport"]
    whole = (columns["ip_version"] != 0) & ~no_transport_header
    dst_port = np.where(whole & (proto == IPPROTO_UDP), columns["dst_port"], 0)
    kinds = (
        (_ipip_inner, whole & ((proto == IPPROTO_IPIP) | (proto == IPPROTO_IPV6_ENCAP))),
        (_gre_inner, whole & (proto == IPPROTO_GRE)),
        (_vxlan_inner, np.isin(dst_port, tunnels.vxlan_ports)),
        (_geneve_inner, np.isin(dst_port, tunnels.geneve_ports)),
        (_gtpu_inner, np.isin(dst_port, tunnels.gtpu_ports)),
    )
    pay_start = columns["payload_offset"]
    pay_end = pay_start + columns["payload_len"]
    parts = []
    for parse, candidate in kinds:
        rows = np.flatnonzero(candidate)
        if rows.size:
            inner = parse(gather, pay_start[rows], pay_end[rows], proto[rows], weird)
            parts.append((rows[inner.ok], inner.start[inner.ok], inner.ethernet[inner.ok],
                          inner.kind[inner.ok], inner.ident[inner.ok]))
    if not parts:
        return
    rows, start, ethernet, kind, ident = (np.concatenate(p) for p in zip(*parts, strict=True))
    if rows.size == 0:
        return
    if depth >= tunnels.max_depth:
        _count_rows(weird, "exceeded_tunnel_max_depth", rows)
        return
    linktype = np.where(ethernet, LINKTYPE_ETHERNET, LINKTYPE_RAW).astype(np.uint16)
    end = pay_end[rows]
    inner_fragments: list[dict[str, np.ndarray]] = []
    inner = _decode_rows(gather, start, end, linktype, weird, tunnels, depth + 1,
                         inner_fragments)
    ethertype = inner["ethertype"].astype(np.int64)
    decoded = (inner["ip_version"] != 0) | ~_is_any(ethertype, (0, ETHERTYPE_IPV4, ETHERTYPE_IPV6))
    # a raw inner packet whose first nibble is no IP version counts nothing in the decode
    _count(weird, "invalid_inner_IP_version", ~ethernet & (ethertype == 0) & (start < end))
    good = rows[decoded]
    segment = _segment_keys(kind, ident, inner["tunnel_id"])
    _lift_fragments(inner_fragments, rows, decoded, kind, segment, fragments)
    if len(parts) == 1 and good.size == pay_start.shape[0]:  # rows are 0..n-1, all decoded
        columns.update(inner)  # (a sensor fed by one mirror session: no scatter)
        columns["tunnel"] = kind.astype(np.uint8)
        columns["tunnel_id"] = segment
        return
    for name, values in inner.items():
        columns[name][good] = values[decoded]
    columns["tunnel"][good] = kind[decoded]  # the outermost kind: overwrites the inner's
    columns["tunnel_id"][good] = segment[decoded]


def _lift_fragments(inner: list[dict[str, np.ndarray]], rows: np.ndarray, decoded: np.ndarray,
                    kind: np.ndarray, segment: np.ndarray,
                    fragments: list[dict[str, np.ndarray]]) -> None:
    """Append the inner decode's fragment parts (rows local to `rows`) to `fragments` as
    rows of this level: only rows whose inner packet replaced the row (`decoded`) and that
    are no outer fragment; their tunnel is this level's kind (the outermost), their
    segment the row's (this level's and those inside it)."""
    if not inner:
        return
    outer = np.concatenate([p["row"] for p in fragments]) if fragments else np.zeros(0, np.int64)
    for part in inner:
        local = part["row"]
        keep = decoded[local] & ~np.isin(rows[local], outer)
        if keep.any():
            lifted = {name: values[keep] for name, values in part.items()}
            lifted["row"] = rows[local[keep]]
            lifted["tunnel"] = kind[local[keep]].astype(np.uint8)
            lifted["tunnel_id"] = segment[local[keep]]
            fragments.append(lifted)


def _fragment_rows(parts: list[dict[str, np.ndarray]],
                   rows: np.ndarray | None = None) -> FragmentRows | None:
    """The FragmentRows of a decode's fragment parts (None when there are none), in row
    order, one entry per row (a second Fragment header in one chain is ignored); `rows`
    maps the parts' local rows to batch rows."""
    if not parts:
        return None
    merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    _, first = np.unique(merged["row"], return_index=True)  # sorted by row
    merged = {name: values[first] for name, values in merged.items()}
    if rows is not None:
        merged["row"] = rows[merged["row"]]
    return FragmentRows(**merged)


def _decode_rows(gather: _ByteGather, start: np.ndarray, end: np.ndarray, linktype: np.ndarray,
                 weird: dict[str, int], tunnels: TunnelConfig | None = None,
                 depth: int = 0,
                 fragments: list[dict[str, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    """The column-wise decoder: packets data[start:end] of the given link types -> the
    per-packet DecodedPackets columns (damage counted in `weird`). Tunnel rows are
    decoded again from their inner frame (_decapsulate) unless `tunnels` is off; `depth`
    is the number of tunnels already opened around these rows. The IP fragments among
    the rows are appended to `fragments` (if given) as _fragment_part()s."""
    link = _decode_link(gather, start, end, linktype, weird)
    net = _decode_ip(gather, link, end, weird)
    l4 = _decode_transport(gather, net, weird)

    ip_rows = net.version != 0
    # Non-IP packets expose their L3 bytes (ARP header ...); undecodable links nothing.
    payload_offset = np.where(ip_rows, l4.payload_offset, np.where(link.ok, link.l3, start))
    payload_len = np.where(ip_rows, l4.payload_len, np.where(link.ok, end - link.l3, 0))
    payload_offset = np.clip(payload_offset, start, end)
    payload_len = np.clip(np.minimum(payload_len, end - payload_offset), 0, None)
    columns = {
        "vlan": link.vlan,
        "ethertype": link.ethertype.astype(np.uint16),
        "ip_version": net.version.astype(np.uint8),
        "src_ip": net.src_ip,
        "dst_ip": net.dst_ip,
        "transport": np.where(ip_rows, net.transport, 0).astype(np.uint8),
        "src_port": l4.src_port,
        "dst_port": l4.dst_port,
        "tcp_flags": l4.tcp_flags,
        "icmp_type": l4.icmp_type,
        "icmp_code": l4.icmp_code,
        "ip_total_len": net.total_len.astype(np.uint32),
        "payload_offset": payload_offset.astype(np.int64),
        "payload_len": payload_len.astype(np.int32),
        "tunnel": np.zeros(start.shape[0], dtype=np.uint8),
        "tunnel_id": np.zeros(start.shape[0], dtype=np.uint64),
    }
    _decapsulate(gather, columns, net.no_transport_header, weird,
                 DEFAULT_TUNNELS if tunnels is None else tunnels, depth, net.fragments)
    if fragments is not None:
        fragments.extend(net.fragments)
    return columns


# DecodedPackets columns the kernel fills, in the order it returns them.
_KERNEL_COLUMNS = ("vlan", "ethertype", "ip_version", "transport", "src_port", "dst_port",
                   "tcp_flags", "icmp_type", "icmp_code", "ip_total_len", "payload_offset",
                   "payload_len")


def _bounds(batch: PacketBatch, gather: _ByteGather,
            rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each packet's bytes (of `rows` only, if given) in the buffer."""
    offset, caplen = np.asarray(batch.offset), np.asarray(batch.caplen)
    if rows is not None:
        offset, caplen = offset[rows], caplen[rows]
    # Clamp to the buffer so a reader bug can't make us index outside `data`.
    start = np.clip(offset.astype(np.int64), 0, gather.size)
    end = np.minimum(start + caplen.astype(np.int64), gather.size)
    return start, end


def _packets(batch: PacketBatch, columns: dict[str, np.ndarray], weird: dict[str, int],
             fragments: FragmentRows | None = None) -> DecodedPackets:
    return DecodedPackets(
        ts_ns=np.asarray(batch.ts_ns).astype(np.int64, copy=False),
        wirelen=np.asarray(batch.wirelen).astype(np.uint32, copy=False),
        caplen=np.asarray(batch.caplen).astype(np.uint32, copy=False),
        interface=np.asarray(batch.interface).astype(np.uint16, copy=False),
        data=batch.data, weird=weird, fragments=fragments, **columns)


def decode_columnwise(batch: PacketBatch,
                      tunnels: TunnelConfig = DEFAULT_TUNNELS) -> DecodedPackets:
    """decode() with the column-wise decoder for every row (the reference for the kernel)."""
    gather = _ByteGather(batch.data)
    start, end = _bounds(batch, gather)
    weird: dict[str, int] = {}
    parts: list[dict[str, np.ndarray]] = []
    columns = _decode_rows(gather, start, end, batch.linktype, weird, tunnels, 0, parts)
    return _packets(batch, columns, weird, _fragment_rows(parts))


def _decode_tunnels(gather: _ByteGather, out: tuple, tunnel: np.ndarray,
                    tunnel_id: np.ndarray, tunnels: TunnelConfig) -> None:
    """The compiled tunnel pass (_decode_tunnel_rows) over the rows the common case left."""
    if not out[0].all():
        _decode_tunnel_rows(gather.buf, _kernel_ports(tunnels), out, tunnel, tunnel_id)


def decode(batch: PacketBatch, tunnels: TunnelConfig = DEFAULT_TUNNELS) -> DecodedPackets:
    """Decode link, IP and transport headers of every packet in `batch`, column-wise.

    Never raises on packet content: damaged packets get ip_version 0 (or zero ports) and a
    count in `weird`. Common-case rows are decoded by a compiled kernel (_decode_common),
    or were already decoded by the capture reader (batch.common_headers), common-case
    tunnel rows by a second one (_decode_tunnel_rows), the rest column-wise; the result
    equals decode_columnwise(batch, tunnels). Tunnel rows (see
    _decapsulate; `tunnels` says which) describe their inner packet.
    """
    gather = _ByteGather(batch.data)
    headers = batch.common_headers
    ports = _kernel_ports(tunnels) if tunnels.enabled else 0
    if headers is not None and headers.decoded_from(batch):  # the reader decoded them
        # Taken, not shared: the columns below are completed in place and become this
        # result's own (a second decode of the batch decodes afresh).
        batch.common_headers = None
        done, fast, src, dst, tunnel, tunnel_id = headers.columns
        # the walk also opened the tunnels to WALK_TUNNEL_PORTS: under another config,
        # rows it opened are decoded afresh
        if ports != WALK_TUNNEL_PORTS and tunnel.any():
            headers = None
    else:
        headers = None
    if headers is None:
        start, end = _bounds(batch, gather)
        linktype = np.asarray(batch.linktype).astype(np.int64)
        done, fast, src, dst = _decode_common(gather.buf, start, end, linktype)
        tunnel = np.zeros(done.shape[0], dtype=np.uint8)
        tunnel_id = np.zeros(done.shape[0], dtype=np.uint64)
        if tunnels.enabled:
            _decode_tunnels(gather, (done, fast, src, dst), tunnel, tunnel_id, tunnels)
    columns = dict(zip(_KERNEL_COLUMNS, fast, strict=True))
    columns["src_ip"] = src.view(IP_DTYPE).reshape(-1)
    columns["dst_ip"] = dst.view(IP_DTYPE).reshape(-1)
    columns["tunnel"] = tunnel
    columns["tunnel_id"] = tunnel_id
    extra_ports = tunnels.extra_ports()
    if extra_ports.size:  # tunnel ports the kernels do not know (outer or inner packet):
        # hand those rows over too
        done = done & ~((columns["transport"] == IPPROTO_UDP) & (columns["ip_version"] != 0)
                        & np.isin(columns["dst_port"], extra_ports))
    weird: dict[str, int] = {}
    parts: list[dict[str, np.ndarray]] = []
    rest = np.flatnonzero(~done)
    if rest.size:  # only these rows can count weirds (and be fragments)
        lt = np.asarray(batch.linktype)[rest]
        start, end = _bounds(batch, gather, rest)
        slow = _decode_rows(gather, start, end, lt, weird, tunnels, 0, parts)
        if rest.size == done.shape[0]:  # all rows (a sensor fed by ERSPAN/VXLAN): no merge
            columns = slow
        else:
            for name, values in slow.items():
                columns[name][rest] = values
    return _packets(batch, columns, weird, _fragment_rows(parts, rest))


# --- the common case, compiled ------------------------------------------------------------
# Most traffic is well-formed Ethernet (or raw IP, or Linux cooked: tun devices, `tcpdump
# -i any`; at most one 802.1Q tag) carrying IPv4 without fragments or IPv6 without extension
# headers, with a whole TCP/UDP/ICMP header. One kernel pass decodes those rows (and plain
# non-IP frames such as ARP); every other row -- BSD loopback and other link types, stacked
# tags, PPPoE, MPLS, IPv6 extensions, fragments, anything truncated or malformed, i.e.
# every row that could count a weird -- goes through the column-wise decoder above (tunnel
# rows first through the compiled tunnel pass below), so the result is the same as
# decoding the whole batch with it.



@njit
def _byte(data: np.ndarray, p: int) -> int:
    """data[p] for p >= 0. Why unsigned: numba adds a negative-index fix-up to every
    access with a signed index, which LLVM cannot drop here (~30 % of the common-case
    decode's time); the decode's positions are never negative."""
    return data[np.uint64(p)]


@njit
def _be16_at(data: np.ndarray, p: int) -> int:
    return (np.int64(_byte(data, p)) << 8) | np.int64(_byte(data, p + 1))


@njit
def _decode_common(data: np.ndarray, start: np.ndarray, end: np.ndarray,
                   linktype: np.ndarray) -> tuple:
    """Decode the common-case rows; returns (done mask, the DecodedPackets columns in
    _KERNEL_COLUMNS order, src and dst as (n, 16) address bytes). Rows not done are left
    for the column-wise path (their values here are partial and get overwritten)."""
    n = start.shape[0]
    out = _common_columns(n)
    _decode_common_range(data, start, end, linktype, 0, n, out)
    return out


@njit
def _common_columns(n: int) -> tuple:
    """Output of the common-case decoder for n rows: (done mask, the DecodedPackets columns
    in _KERNEL_COLUMNS order, src and dst as (n, 16) address bytes). All zero but src and
    dst, which are not initialised: the decoder writes all 16 bytes of every done row, and
    the column-wise path overwrites the other rows (no 2 MB memset per 65536 rows)."""
    return (np.zeros(n, dtype=np.bool_),
            (np.zeros(n, dtype=np.uint16), np.zeros(n, dtype=np.uint16),
             np.zeros(n, dtype=np.uint8), np.zeros(n, dtype=np.uint8),
             np.zeros(n, dtype=np.uint16), np.zeros(n, dtype=np.uint16),
             np.zeros(n, dtype=np.uint8), np.zeros(n, dtype=np.uint8),
             np.zeros(n, dtype=np.uint8), np.zeros(n, dtype=np.uint32),
             np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int32)),
            np.empty((n, 16), dtype=np.uint8), np.empty((n, 16), dtype=np.uint8))


_U1, _U2 = np.uint64(1), np.uint64(2)
_LITTLE_ENDIAN = np.little_endian


@njit
def _mapped_ipv4_low(data: np.ndarray, p: int) -> np.uint64:
    """Bytes 8..15 of the IPv4-mapped form of the IPv4 address at data[p:p+4]
    (00 00 ff ff a b c d) as the native-order word holding them."""
    a, b = np.uint64(_byte(data, p)), np.uint64(_byte(data, p + 1))
    c, d = np.uint64(_byte(data, p + 2)), np.uint64(_byte(data, p + 3))
    if _LITTLE_ENDIAN:
        return (np.uint64(0xFFFF0000) | (a << np.uint64(32)) | (b << np.uint64(40))
                | (c << np.uint64(48)) | (d << np.uint64(56)))
    return (np.uint64(0xFFFF00000000) | (a << np.uint64(24)) | (b << np.uint64(16))
            | (c << np.uint64(8)) | d)


@njit
def _other_link(data: np.ndarray, s: int, e: int, linktype: int) -> tuple[int, int]:
    """(l3, ethertype) of the link header of a common-case row of a link type other than
    Ethernet, as _decode_link reads it; l3 -1 when the row is not common case. Raw IP:
    the version from the first nibble (ethertype 0 for any other nibble, a non-IP frame);
    Linux cooked SLL: 16 bytes, ethertype at 14; SLL2: 20 bytes, ethertype at 0 (a VLAN tag
    after a cooked header is popped like Ethernet's: _strip_vlan_tags)."""
    if linktype == LINKTYPE_RAW or linktype == LINKTYPE_IPV4 or linktype == LINKTYPE_IPV6:
        if s >= e:  # empty: truncated_IP
            return -1, 0
        nibble = _byte(data, s) >> 4
        return s, ETHERTYPE_IPV4 if nibble == 4 else ETHERTYPE_IPV6 if nibble == 6 else 0
    if linktype == LINKTYPE_LINUX_SLL:
        return (s + 16, _be16_at(data, s + 14)) if s + 16 <= e else (-1, 0)
    if linktype == LINKTYPE_LINUX_SLL2:
        return (s + 20, _be16_at(data, s)) if s + 20 <= e else (-1, 0)
    return -1, 0


@njit
def _decode_common_range(data: np.ndarray, start: np.ndarray, end: np.ndarray,
                         linktype: np.ndarray, lo: int, hi: int, out: tuple,
                         ethernet_only: bool = False) -> int:
    """Decode the common-case rows lo..hi-1 into `out` (_common_columns), whose rows must
    be zero (as _common_columns makes them) except in src and dst: only non-zero bytes are
    written, but all 16 address bytes of each done row.

    A tunnel row (IP protocol 4/41/47, UDP to an IANA tunnel port) whose outer headers are
    common case is left not done with its transport, dst_port and payload range set: the
    candidates of the compiled tunnel pass (_decode_tunnel_rows). Other rows not done have
    transport 0. Returns the number of candidates, so that a caller can skip the tunnel
    pass on untunnelled rows (the capture reader's walk: its call per chunk of records
    cost ~9 % of read + decode on the bench mix).

    `ethernet_only` (pass the constant True, for its own compiled version): every row is
    Ethernet, `linktype` is not read and the other link types' branch is compiled out.
    The capture walk of an Ethernet pcap passes it: the branch cost ~20 instructions a
    packet there (callgrind) and ~1.3 ms of read + decode per 300k mix packets.

    Every byte read is below `end[i]` (checked before each read), and end <= len(data)."""
    done, columns, src, dst = out
    candidates = 0  # tunnel rows left for the tunnel pass
    # the address rows as two native 8-byte words each (word stores for IPv4-mapped rows)
    src_words = src.reshape(-1).view(np.uint64)
    dst_words = dst.reshape(-1).view(np.uint64)
    (vlan_col, ethertype_col, version_col, transport_col, sport_col, dport_col, flags_col,
     icmp_type_col, icmp_code_col, total_col, payload_offset_col, payload_len_col) = columns
    for i in range(lo, hi):
        row = np.uint64(i)  # unsigned: no negative-index fix-up (see _byte)
        s, e = start[row], end[row]
        if ethernet_only or linktype[row] == LINKTYPE_ETHERNET:  # first: the hot path
            if s + 14 > e:
                continue
            ethertype = _be16_at(data, s + 12)
            l3 = s + 14
        else:
            l3, ethertype = _other_link(data, s, e, linktype[row])
            if l3 < 0:
                continue
        vlan = 0
        if ethertype == 0x8100:
            if l3 + 4 > e:
                continue
            vlan = _be16_at(data, l3) & 0x0FFF
            ethertype = _be16_at(data, l3 + 2)
            l3 += 4
        # stacked tags, PPPoE, MPLS, Ethernet over MPLS: the column-wise path
        if ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100 \
                or ethertype == 0x8864 or ethertype == 0x8847 or ethertype == 0x8848 \
                or ethertype == 0x6558:
            continue
        vlan_col[row] = vlan
        ethertype_col[row] = ethertype
        if ethertype == ETHERTYPE_IPV4:
            if l3 + 20 > e or (_byte(data, l3) >> 4) != 4:
                continue
            ihl = np.int64(_byte(data, l3) & 0x0F) * 4
            total = _be16_at(data, l3 + 2)
            # fragments (offset or MF set): the column-wise path lists them for reassembly
            if ihl < 20 or total < ihl or l3 + ihl > e or (_be16_at(data, l3 + 6) & 0x3FFF) != 0:
                continue
            proto = np.int64(_byte(data, l3 + 9))
            l4 = l3 + ihl
            # ::ffff:a.b.c.d as two word stores per address (loads first: the stores
            # may alias `data` for the compiler)
            src_low, dst_low = _mapped_ipv4_low(data, l3 + 12), _mapped_ipv4_low(data, l3 + 16)
            src_words[row * _U2] = 0
            src_words[row * _U2 + _U1] = src_low
            dst_words[row * _U2] = 0
            dst_words[row * _U2 + _U1] = dst_low
            version = 4
        elif ethertype == ETHERTYPE_IPV6:
            if l3 + 40 > e or (_byte(data, l3) >> 4) != 6:
                continue
            proto = np.int64(_byte(data, l3 + 6))
            if proto == 0 or proto == 43 or proto == 44 or proto == 51 or proto == 60:
                continue
            total = 40 + _be16_at(data, l3 + 4)
            l4 = l3 + 40
            for j in range(16):
                src[row, np.uint64(j)] = _byte(data, l3 + 8 + j)
                dst[row, np.uint64(j)] = _byte(data, l3 + 24 + j)
            version = 6
        else:  # not IP: the L3 bytes are the payload (ARP ...)
            src_words[row * _U2] = 0
            src_words[row * _U2 + _U1] = 0
            dst_words[row * _U2] = 0
            dst_words[row * _U2 + _U1] = 0
            payload_offset_col[row] = l3
            payload_len_col[row] = e - l3
            done[row] = True
            continue
        l4_end = min(l3 + total, e)
        room = l4_end - l4
        if proto == 4 or proto == 41 or proto == 47:  # IP-in-IP, GRE: the tunnel pass
            transport_col[row] = proto
            payload_offset_col[row] = l4
            payload_len_col[row] = room
            candidates += 1
            continue
        header_len = 0
        if proto == 6:
            if room < 20:
                continue
            header_len = np.int64(_byte(data, l4 + 12) >> 4) * 4
            if header_len < 20 or header_len > room:
                continue
            sport_col[row] = _be16_at(data, l4)
            dport_col[row] = _be16_at(data, l4 + 2)
            flags_col[row] = _byte(data, l4 + 13)
        elif proto == 17:
            if room < 8:
                continue
            dport = _be16_at(data, l4 + 2)
            # VXLAN, Geneve, GTP-U (the IANA ports; decode() hands over other configured
            # ones): the tunnel pass
            if dport == VXLAN_PORT or dport == GENEVE_PORT or dport == GTPU_PORT:
                transport_col[row] = proto
                dport_col[row] = dport
                payload_offset_col[row] = l4 + 8
                payload_len_col[row] = room - 8
                candidates += 1
                continue
            header_len = 8
            sport_col[row] = _be16_at(data, l4)
            dport_col[row] = dport
        elif proto == 1 or proto == 58:
            if room < 8:
                continue
            header_len = 8
            sport_col[row] = _byte(data, l4)
            dport_col[row] = _byte(data, l4 + 1)
            icmp_type_col[row] = _byte(data, l4)
            icmp_code_col[row] = _byte(data, l4 + 1)
        version_col[row] = version
        transport_col[row] = proto
        total_col[row] = total
        payload_offset_col[row] = l4 + header_len
        payload_len_col[row] = room - header_len
        done[row] = True
    return candidates


# --- tunnels, compiled ------------------------------------------------------------------
# A sensor fed by a mirror session (ERSPAN, VXLAN) gets nothing but tunnel rows, which the
# common case leaves. This pass takes the rows it left whose outer packet is common case
# (as _common_link/_common_ip read it) and whose tunnel header is well formed, finds the
# inner frame as _gre_inner ... _gtpu_inner would, and decodes that frame with
# _decode_common_range itself. A row is done only if the inner frame is done too (and is IP
# or a non-IP frame with an ethertype: what _decapsulate calls decoded); everything else --
# damaged or cut headers, fragments, GTP-U extension chains, tunnels in tunnels -- stays for
# the column-wise path, so the weird counts and fragment rows are its.

_PORT_VXLAN, _PORT_GENEVE, _PORT_GTPU = 1, 2, 4  # bits of the `ports` argument
# Tunnel codes as plain module constants (compile-time constants in the kernels)
_KIND_IPIP, _KIND_GRE, _KIND_ERSPAN = int(Tunnel.IPIP), int(Tunnel.GRE), int(Tunnel.ERSPAN)
_KIND_VXLAN, _KIND_GENEVE, _KIND_GTPU = int(Tunnel.VXLAN), int(Tunnel.GENEVE), int(Tunnel.GTPU)


def _kernel_ports(tunnels: TunnelConfig) -> int:
    """Bits of the IANA tunnel ports the compiled pass may open: configured for its own
    kind only (any other configured port leaves its rows to the column-wise path)."""
    configured = tunnels.vxlan_ports + tunnels.geneve_ports + tunnels.gtpu_ports
    bits = 0
    for ports, port, bit in ((tunnels.vxlan_ports, VXLAN_PORT, _PORT_VXLAN),
                             (tunnels.geneve_ports, GENEVE_PORT, _PORT_GENEVE),
                             (tunnels.gtpu_ports, GTPU_PORT, _PORT_GTPU)):
        if port in ports and configured.count(port) == 1:
            bits |= bit
    return bits


@njit
def _gre_payload(data: np.ndarray, p: int, e: int) -> tuple[int, int, int, int]:
    """(kind, inner start, inner link type, segment id) of the GRE packet at data[p:e] (as
    _gre_inner); kind 0 when _gre_inner would not open it cleanly."""
    if p + 4 > e:
        return 0, 0, 0, 0
    flags, protocol = _be16_at(data, p), _be16_at(data, p + 2)
    if (flags & 0x7) != 0 or (flags & GRE_FLAG_R) != 0 or (flags & GRE_RESERVED) != 0:
        return 0, 0, 0, 0
    header = 4
    if flags & GRE_FLAG_C:
        header += 4
    key = 0
    if flags & GRE_FLAG_K:
        if p + header + 4 <= e:
            key = (_be16_at(data, p + header) << 16) | _be16_at(data, p + header + 2)
        header += 4
    if flags & GRE_FLAG_S:
        header += 4
    if p + header > e:
        return 0, 0, 0, 0
    if protocol == ETHERTYPE_IPV4 or protocol == ETHERTYPE_IPV6:
        return _KIND_GRE, p + header, LINKTYPE_RAW, key
    kind, span = _KIND_ERSPAN, 0
    if protocol == GRE_TEB:
        kind = _KIND_GRE
    elif protocol == GRE_ERSPAN_2:
        span = 8 if flags & GRE_FLAG_S else 0  # type II; type I has no header
    elif protocol == GRE_ERSPAN_3:
        span = 12
    else:
        return 0, 0, 0, 0
    at = p + header
    if at + span > e:
        return 0, 0, 0, 0
    if span == 8 and (_byte(data, at) >> 4) != 1:
        return 0, 0, 0, 0
    if span >= 8:  # ERSPAN II/III: the session id is the segment, not the GRE key
        key = _be16_at(data, at + 2) & 0x3FF
    if span == 12:
        if (_byte(data, at) >> 4) != 2:
            return 0, 0, 0, 0
        if _byte(data, at + 11) & 0x01:  # O: an 8-byte platform sub-header follows
            span += 8
    if at + span + ETHER_HEADER_LEN > e:
        return 0, 0, 0, 0
    return kind, at + span, LINKTYPE_ETHERNET, key


@njit
def _udp_tunnel_payload(data: np.ndarray, p: int, e: int, dport: int,
                        ports: int) -> tuple[int, int, int, int]:
    """(kind, inner start, inner link type, segment id) of a VXLAN, Geneve or GTP-U header
    at data[p:e] (as _vxlan_inner, _geneve_inner, _gtpu_inner) to an IANA port in `ports`;
    kind 0 when that would not open it cleanly or the port is none of these."""
    room = e - p
    if room < 8:
        return 0, 0, 0, 0
    first = np.int64(_byte(data, p))
    vni = (np.int64(_byte(data, p + 4)) << 16) | _be16_at(data, p + 5)
    if dport == VXLAN_PORT and ports & _PORT_VXLAN:
        if (first & 0x08) == 0 or room < 8 + ETHER_HEADER_LEN:
            return 0, 0, 0, 0
        return _KIND_VXLAN, p + 8, LINKTYPE_ETHERNET, vni
    if dport == GENEVE_PORT and ports & _PORT_GENEVE:
        header = 8 + (first & 0x3F) * 4
        protocol = _be16_at(data, p + 2)
        if (first >> 6) != 0 or header > room:
            return 0, 0, 0, 0
        if protocol == ETHERTYPE_IPV4 or protocol == ETHERTYPE_IPV6:
            return _KIND_GENEVE, p + header, LINKTYPE_RAW, vni
        if protocol != GRE_TEB or header + ETHER_HEADER_LEN > room:
            return 0, 0, 0, 0
        return _KIND_GENEVE, p + header, LINKTYPE_ETHERNET, vni
    if dport == GTPU_PORT and ports & _PORT_GTPU:  # (no segment id: see _gtpu_inner)
        if (first >> 4) != 0x3 or _byte(data, p + 1) != 0xFF:  # version 1 PT 1, T-PDU
            return 0, 0, 0, 0
        if (first & 0x07) == 0:
            return _KIND_GTPU, p + 8, LINKTYPE_RAW, 0
        # optional fields; an extension header chain goes column-wise
        if room < 12 or ((first & 0x04) != 0 and _byte(data, p + 11) != 0):
            return 0, 0, 0, 0
        return _KIND_GTPU, p + 12, LINKTYPE_RAW, 0
    return 0, 0, 0, 0


@njit
def _tunnel_payload(data: np.ndarray, p: int, e: int, proto: int, dport: int,
                    ports: int) -> tuple[int, int, int, int]:
    """(kind, inner start, inner link type, segment id) of the tunnel an outer payload
    data[p:e] of IP protocol `proto` carries (UDP: the payload after the UDP header, to
    `dport`); kind 0 when none is opened cleanly (see above)."""
    if proto == IPPROTO_IPIP or proto == IPPROTO_IPV6_ENCAP:
        if p >= e or (_byte(data, p) >> 4) != (4 if proto == IPPROTO_IPIP else 6):
            return 0, 0, 0, 0
        return _KIND_IPIP, p, LINKTYPE_RAW, 0
    if proto == IPPROTO_GRE:
        return _gre_payload(data, p, e)
    return _udp_tunnel_payload(data, p, e, dport, ports)


@njit
def _clear_row(columns: tuple, row: np.uint64) -> None:
    """Zero one row of the kernel columns (_decode_common_range writes only non-zeros)."""
    (vlan_col, ethertype_col, version_col, transport_col, sport_col, dport_col, flags_col,
     icmp_type_col, icmp_code_col, total_col, payload_offset_col, payload_len_col) = columns
    vlan_col[row] = 0
    ethertype_col[row] = 0
    version_col[row] = 0
    transport_col[row] = 0
    sport_col[row] = 0
    dport_col[row] = 0
    flags_col[row] = 0
    icmp_type_col[row] = 0
    icmp_code_col[row] = 0
    total_col[row] = 0
    payload_offset_col[row] = 0
    payload_len_col[row] = 0


_TUNNEL_CHUNK = 128  # rows per inner decode run in decode(): their bytes are still cached
# The IANA ports the capture reader's walk opens tunnels to (_kernel_ports of the default
# config): decode() keeps the walk's tunnel rows only under a config with the same bits.
WALK_TUNNEL_PORTS = _kernel_ports(DEFAULT_TUNNELS)


@njit
def _tunnel_range(data: np.ndarray, lo: int, hi: int, ports: int, out: tuple,
                  tunnel: np.ndarray, tunnel_id: np.ndarray, scratch: tuple) -> None:
    """Decode the tunnel candidates among rows lo..hi-1 of `out` (_common_columns, after
    _decode_common_range) as their inner packet, their kind into `tunnel` and their
    segment (one level: kind << 56 | id, as _segment_keys) into `tunnel_id`.

    The inner frames are decoded by one run of _decode_common_range over the range, on the
    inner bounds in `scratch` (three int64 arrays as long as `out`); rows that are no
    candidate get an unknown link type there, which it skips. Why not a run per row: a call
    cost ~300 ns in its array arguments' reference counts."""
    done, columns, _src, _dst = out
    inner_start, inner_end, inner_linktype = scratch
    ethertype_col, transport_col, dport_col = columns[1], columns[3], columns[5]
    payload_offset_col, payload_len_col = columns[10], columns[11]
    candidates = False  # any at all? (a branch-free scan: the untunnelled batch's only cost)
    for i in range(lo, hi):
        row = np.uint64(i)
        candidates |= (not done[row]) & (transport_col[row] != 0)
    if not candidates:
        return
    first, last = -1, -1  # the rows opened lie in first..last
    for i in range(lo, hi):
        row = np.uint64(i)
        proto = transport_col[row]
        kind, inner, inner_link, e, ident = 0, 0, 0, 0, 0
        if not done[row] and proto != 0:  # transport 0: no candidate (_decode_common_range)
            p = payload_offset_col[row]
            e = p + payload_len_col[row]
            kind, inner, inner_link, ident = _tunnel_payload(data, p, e, proto, dport_col[row],
                                                             ports)
        if kind == 0:
            if first >= 0:  # (rows before the first opened one are outside the inner run)
                inner_linktype[row] = -1
            continue
        tunnel[row] = kind
        tunnel_id[row] = (np.uint64(kind) << np.uint64(SEGMENT_KIND_SHIFT)) | np.uint64(ident)
        inner_start[row], inner_end[row], inner_linktype[row] = inner, e, inner_link
        _clear_row(columns, row)
        if first < 0:
            first = i
        last = i
    if first < 0:  # no tunnel opened here
        return
    _decode_common_range(data, inner_start, inner_end, inner_linktype, first, last + 1, out)
    for i in range(first, last + 1):
        row = np.uint64(i)
        # an inner frame of ethertype 0 (or a raw one of no IP version) is not decoded
        if inner_linktype[row] >= 0 and not (done[row] and ethertype_col[row] != 0):
            done[row] = False
            tunnel[row] = 0
            tunnel_id[row] = 0


@njit
def _tunnel_scratch(n: int) -> tuple:
    """The inner bounds _tunnel_range works in, for n rows."""
    return (np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64),
            np.empty(n, dtype=np.int64))


@njit
def _decode_tunnel_rows(data: np.ndarray, ports: int, out: tuple, tunnel: np.ndarray,
                        tunnel_id: np.ndarray) -> None:
    """_tunnel_range over all rows of `out`, in chunks of _TUNNEL_CHUNK rows."""
    n = out[0].shape[0]
    scratch = _tunnel_scratch(n)
    for lo in range(0, n, _TUNNEL_CHUNK):
        _tunnel_range(data, lo, min(lo + _TUNNEL_CHUNK, n), ports, out, tunnel, tunnel_id,
                      scratch)
