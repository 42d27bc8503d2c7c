"""Community ID v1 flow hashing (https://github.com/corelight/community-id-spec).

Hash input, all network byte order, then SHA1 and base64 with a "1:" prefix:

    seed (2) . addr_a (4|16) . addr_b (4|16) . proto (1) . 0 (1) [. port_a (2) . port_b (2)]

- Endpoints are ordered so the numerically smaller (address, port) comes first, which makes
  the ID the same in both directions.
- Only TCP, UDP, SCTP, ICMP and ICMPv6 carry ports; for every other protocol the ports are
  left out of the hash entirely (not hashed as zeros).
- ICMP/ICMPv6 map (type, code) to ports as Zeek does: for request/reply types the "ports"
  are (type, counter-type) and the tuple may be flipped like TCP; every other type is
  one-way: ports (type, code) and the tuple is never flipped.
- IPv4 addresses (including IPv4-mapped 16-byte addresses, our column form) hash as 4 bytes.
"""

from __future__ import annotations

import numpy as np

from pipeline.jit import njit
from sensors.packets import IP_DTYPE, IPV4_MAPPED_PREFIX

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMP6 = 58
PROTO_SCTP = 132
PORT_PROTOS = frozenset({PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMP6, PROTO_SCTP})

# Request/reply ICMP types -> their counterpart (Zeek's ICMP "counter type"); any type not
# listed is one-way.
ICMP4_COUNTER_TYPE = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
ICMP6_COUNTER_TYPE = {128: 129, 129: 128, 130: 131, 131: 130, 133: 134, 134: 133, 135: 136,
                      136: 135, 139: 140, 140: 139, 144: 145, 145: 144}


def _counter_table(mapping: dict[int, int]) -> np.ndarray:
    """256-entry lookup: counter type, or -1 for one-way types."""
    table = np.full(256, -1, dtype=np.int32)
    for mtype, counter in mapping.items():
        table[mtype] = counter
    return table


_ICMP4_TABLE = _counter_table(ICMP4_COUNTER_TYPE)
_ICMP6_TABLE = _counter_table(ICMP6_COUNTER_TYPE)


def icmp_port_equivalents(
    transport: np.ndarray, src_port: np.ndarray, dst_port: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map ICMP/ICMPv6 (type, code) held in the port columns to Zeek's port equivalents.

    Returns (src_port, dst_port, one_way) as int32/int32/bool columns; non-ICMP rows pass
    through unchanged with one_way False.
    """
    transport = np.asarray(transport)
    sport = np.asarray(src_port).astype(np.int32)
    dport = np.asarray(dst_port).astype(np.int32)
    is_icmp4 = transport == PROTO_ICMP
    is_icmp6 = transport == PROTO_ICMP6
    type_index = np.clip(sport, 0, 255)  # ICMP types are one byte
    counter = np.where(is_icmp4, _ICMP4_TABLE[type_index],
                       np.where(is_icmp6, _ICMP6_TABLE[type_index], -1))
    is_icmp = is_icmp4 | is_icmp6
    two_way = is_icmp & (counter >= 0)
    dport = np.where(two_way, counter, dport)
    one_way = is_icmp & (counter < 0)
    return sport, dport, one_way


def _as_16(addr: bytes) -> bytes:
    if len(addr) == 4:
        return IPV4_MAPPED_PREFIX + addr
    if len(addr) == 16:
        return addr
    raise ValueError(f"address must be 4 or 16 bytes, got {len(addr)}")


def community_id_v1(
    src_ip: bytes, dst_ip: bytes, transport: int, src_port: int, dst_port: int, seed: int = 0
) -> str:
    """Community ID of one flow tuple. Addresses are packed 4- or 16-byte (IPv4-mapped -> v4).

    For ICMP/ICMPv6 pass the type as src_port and the code as dst_port.
    """
    src = np.frombuffer(_as_16(src_ip), dtype=IP_DTYPE)
    dst = np.frombuffer(_as_16(dst_ip), dtype=IP_DTYPE)
    return str(
        community_id_column(src, dst, np.array([transport], dtype=np.uint8),
                            np.array([src_port], dtype=np.int64),
                            np.array([dst_port], dtype=np.int64), seed)[0]
    )


def community_id_column(
    src_ip: np.ndarray,
    dst_ip: np.ndarray,
    transport: np.ndarray,
    src_port: np.ndarray,
    dst_port: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """Community IDs for columns of flow tuples (IP_DTYPE addresses) -> object column.

    The ICMP port mapping, ordering, byte packing, SHA1 and base64 run per row in one
    compiled pass (_community_id_text); Python only converts the columns and makes the str
    objects.
    """
    n = int(np.asarray(transport).shape[0])
    if n == 0:
        return np.empty(0, dtype=object)
    int(seed).to_bytes(2, "big")  # the spec's seed is 16 bits: OverflowError otherwise
    # Ports as int32, as icmp_port_equivalents reads them (a wider value wraps the same way).
    text = _community_id_text(_raw16(src_ip), _raw16(dst_ip),
                              np.asarray(transport).astype(np.uint8, copy=False),
                              np.asarray(src_port).astype(np.int32, copy=False),
                              np.asarray(dst_port).astype(np.int32, copy=False),
                              _ICMP4_TABLE, _ICMP6_TABLE, int(seed))
    # One str object per row is the column's contract (object dtype). The rows are UCS4
    # code points, so numpy reads them as a native "U30" array and makes each str in one
    # step (astype(object)): ~50 ns a row against ~100-150 ns for 30-byte bytes rows
    # decoded in a map (two objects a row). Rows hold no NUL, so nothing is stripped.
    return text.view(np.dtype("U30")).reshape(n).astype(object)


# --- Community ID text of one tuple per row, compiled --------------------------------------
# Each hash input is at most 40 bytes, so each is one 64-byte SHA1 block: ordering, packing,
# SHA1 and base64 run per row in one kernel pass instead of ~1,600 column-wise numpy calls
# (or one hashlib + base64 call per row).

_K = (0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xCA62C1D6)
_H0 = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0)
_B64 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                     dtype=np.uint8).copy()
_MAPPED = np.frombuffer(IPV4_MAPPED_PREFIX, dtype=np.uint8).copy()
_MASK32 = 0xFFFFFFFF


@njit
def _rotl(x: np.uint32, bits: int) -> np.uint32:
    """32-bit left rotation."""
    return np.uint32((x << np.uint32(bits)) | (x >> np.uint32(32 - bits)))


@njit
def _sha1_block(block: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
    """SHA1 of one padded 64-byte block (message + 0x80 + zeros + bit length) into out[:20].

    uint32 arithmetic throughout (every sum is cast back to uint32, which wraps it); `w`
    is an 80-word uint32 scratch array."""
    for i in range(16):
        w[i] = ((np.uint32(block[4 * i]) << np.uint32(24))
                | (np.uint32(block[4 * i + 1]) << np.uint32(16))
                | (np.uint32(block[4 * i + 2]) << np.uint32(8)) | np.uint32(block[4 * i + 3]))
    for i in range(16, 80):
        w[i] = _rotl(np.uint32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]), 1)
    a, b, c, d, e = (np.uint32(_H0[0]), np.uint32(_H0[1]), np.uint32(_H0[2]),
                     np.uint32(_H0[3]), np.uint32(_H0[4]))
    # Four loops of 20 rounds (one round function each) instead of a branch per round.
    for i in range(20):
        t = np.uint32(_rotl(a, 5) + ((b & c) | (~b & d)) + e + np.uint32(_K[0]) + w[i])
        a, b, c, d, e = t, a, _rotl(b, 30), c, d
    for i in range(20, 40):
        t = np.uint32(_rotl(a, 5) + (b ^ c ^ d) + e + np.uint32(_K[1]) + w[i])
        a, b, c, d, e = t, a, _rotl(b, 30), c, d
    for i in range(40, 60):
        t = np.uint32(_rotl(a, 5) + ((b & c) | (b & d) | (c & d)) + e + np.uint32(_K[2])
                      + w[i])
        a, b, c, d, e = t, a, _rotl(b, 30), c, d
    for i in range(60, 80):
        t = np.uint32(_rotl(a, 5) + (b ^ c ^ d) + e + np.uint32(_K[3]) + w[i])
        a, b, c, d, e = t, a, _rotl(b, 30), c, d
    h = (np.uint32(a + np.uint32(_H0[0])), np.uint32(b + np.uint32(_H0[1])),
         np.uint32(c + np.uint32(_H0[2])), np.uint32(d + np.uint32(_H0[3])),
         np.uint32(e + np.uint32(_H0[4])))
    for j in range(5):
        v = h[j]
        out[4 * j] = (v >> np.uint32(24)) & np.uint32(0xFF)
        out[4 * j + 1] = (v >> np.uint32(16)) & np.uint32(0xFF)
        out[4 * j + 2] = (v >> np.uint32(8)) & np.uint32(0xFF)
        out[4 * j + 3] = v & np.uint32(0xFF)


@njit
def _pad_block(block: np.ndarray, length: int) -> None:
    """SHA1 padding after a `length`-byte message (<= 55) already in block[:length]."""
    block[length] = 0x80
    for j in range(length + 1, 64):
        block[j] = 0
    bits = length * 8
    for j in range(8):
        block[63 - j] = (bits >> (8 * j)) & 0xFF


@njit
def _sha1_rows(buf: np.ndarray, length: np.ndarray) -> np.ndarray:
    n = buf.shape[0]
    digest = np.empty((n, 20), dtype=np.uint8)
    block = np.zeros(64, dtype=np.uint8)
    w = np.empty(80, dtype=np.uint32)
    for i in range(n):
        ln = min(max(length[i], 0), buf.shape[1])
        for j in range(ln):
            block[j] = buf[i, j]
        _pad_block(block, ln)
        _sha1_block(block, w, digest[i])
    return digest


def sha1_rows(buf: np.ndarray, length: np.ndarray) -> np.ndarray:
    """SHA1 digests ((n, 20) uint8) of row i's first length[i] bytes of buf ((n, w), w <= 55)."""
    buf = np.ascontiguousarray(buf, dtype=np.uint8)
    if buf.ndim != 2 or buf.shape[1] > 55:
        raise ValueError("rows must fit one SHA1 block (<= 55 bytes)")
    return _sha1_rows(buf, np.asarray(length, dtype=np.int64))


@njit
def _community_id_text(src: np.ndarray, dst: np.ndarray, transport: np.ndarray,
                       src_port: np.ndarray, dst_port: np.ndarray, icmp4: np.ndarray,
                       icmp6: np.ndarray, seed: int) -> np.ndarray:
    """(n, 30) rows "1:<base64 SHA1>" of the spec's hash input per row, as uint32 code
    points (community_id_column reads them as str).

    src/dst: (n, 16) address bytes (IPv4-mapped rows hash as 4 bytes); src_port/dst_port
    hold ICMP type/code for ICMP rows, mapped here as icmp_port_equivalents does (icmp4/
    icmp6: its 256-entry counter-type tables). Fixed-size row buffers and table indexes
    clipped to 0..255: every index is bounded by construction."""
    n = src.shape[0]
    text = np.empty((n, 30), dtype=np.uint32)
    block = np.zeros(64, dtype=np.uint8)
    w = np.empty(80, dtype=np.uint32)
    digest = np.empty(21, dtype=np.uint8)
    for i in range(n):
        proto = np.int64(transport[i])
        sport, dport = np.int64(src_port[i]), np.int64(dst_port[i])
        one_way = False
        if proto == PROTO_ICMP or proto == PROTO_ICMP6:
            table = icmp4 if proto == PROTO_ICMP else icmp6
            counter = np.int64(table[min(max(sport, 0), 255)])
            if counter >= 0:
                dport = counter
            else:
                one_way = True
        has_ports = (proto == PROTO_ICMP or proto == PROTO_TCP or proto == PROTO_UDP
                     or proto == PROTO_ICMP6 or proto == PROTO_SCTP)
        if not has_ports:
            sport, dport = 0, 0
        # Spec: ordered if one-way, or saddr < daddr, or equal addresses and sport < dport.
        cmp = 0
        for j in range(16):
            if src[i, j] != dst[i, j]:
                cmp = -1 if src[i, j] < dst[i, j] else 1
                break
        ordered = one_way or cmp < 0 or (cmp == 0 and sport < dport)
        port_a, port_b = (sport, dport) if ordered else (dport, sport)
        is_v4 = True
        for j in range(12):
            if (src[i, j] if ordered else dst[i, j]) != _MAPPED[j]:
                is_v4 = False
                break
        first = 12 if is_v4 else 0
        width = 16 - first
        block[0] = (seed >> 8) & 0xFF
        block[1] = seed & 0xFF
        at_a, at_b = (2, 2 + width) if ordered else (2 + width, 2)
        for j in range(width):
            block[at_a + j] = src[i, first + j]
            block[at_b + j] = dst[i, first + j]
        at = 2 + 2 * width
        block[at] = proto
        block[at + 1] = 0
        at += 2
        if has_ports:
            block[at] = (port_a >> 8) & 0xFF
            block[at + 1] = port_a & 0xFF
            block[at + 2] = (port_b >> 8) & 0xFF
            block[at + 3] = port_b & 0xFF
            at += 4
        _pad_block(block, at)
        _sha1_block(block, w, digest)
        digest[20] = 0
        text[i, 0] = 49  # "1"
        text[i, 1] = 58  # ":"
        for g in range(7):  # 21 bytes (20 + one zero) -> 28 characters, the last one "="
            v = (np.int64(digest[3 * g]) << 16) | (np.int64(digest[3 * g + 1]) << 8) \
                | np.int64(digest[3 * g + 2])
            text[i, 2 + 4 * g] = _B64[(v >> 18) & 63]
            text[i, 3 + 4 * g] = _B64[(v >> 12) & 63]
            text[i, 4 + 4 * g] = _B64[(v >> 6) & 63]
            text[i, 5 + 4 * g] = _B64[v & 63]
        text[i, 29] = 61  # "="
    return text


def _raw16(column: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16)
