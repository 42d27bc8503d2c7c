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

import base64
import hashlib

import numpy as np

from sensors.packets import IP_DTYPE, IPV4_MAPPED_PREFIX

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMP6 = 58
PROTO_SCTP = 132
# From this many rows on, IDs are hashed column-wise (sha1_rows: ~1.4 us a row vs ~1.8 for
# hashlib + base64 per row, measured here); below it the ufunc-call overhead dominates.
VECTOR_SHA1_MIN_ROWS = 8192
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


def _address_words(column: np.ndarray) -> np.ndarray:
    """16-byte address column -> (n, 2) big-endian uint64 words, comparable numerically."""
    raw = np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16)
    return raw.view(">u8").astype(np.uint64)


def community_id_column(
    src_ip: np.ndarray,
    dst_ip: np.ndarray,
    transport: np.ndarray,
    src_port: np.ndarray,
    dst_port: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """Community IDs for columns of flow tuples (IP_DTYPE addresses) -> object column.

    Ordering, ICMP mapping and byte packing are column-wise; only SHA1 runs per row.
    """
    n = int(np.asarray(transport).shape[0])
    out = np.empty(n, dtype=object)
    if n == 0:
        return out
    transport = np.asarray(transport).astype(np.uint8)
    sport, dport, one_way = icmp_port_equivalents(transport, src_port, dst_port)
    has_ports = np.isin(transport, list(PORT_PROTOS))
    sport = np.where(has_ports, sport, 0)
    dport = np.where(has_ports, dport, 0)

    src_words = _address_words(src_ip)
    dst_words = _address_words(dst_ip)
    # Spec: ordered if one-way, or saddr < daddr, or equal addresses and sport < dport.
    src_less = (src_words[:, 0] < dst_words[:, 0]) | (
        (src_words[:, 0] == dst_words[:, 0]) & (src_words[:, 1] < dst_words[:, 1]))
    same_addr = (src_words == dst_words).all(axis=1)
    ordered = one_way | src_less | (same_addr & (sport < dport))
    a_raw = np.where(ordered[:, None], _raw16(src_ip), _raw16(dst_ip))
    b_raw = np.where(ordered[:, None], _raw16(dst_ip), _raw16(src_ip))
    port_a = np.where(ordered, sport, dport).astype(">u2")
    port_b = np.where(ordered, dport, sport).astype(">u2")

    # Both endpoints of one tuple share a family; IPv4-mapped rows hash 4-byte addresses.
    is_v4 = (a_raw[:, :12] == np.frombuffer(IPV4_MAPPED_PREFIX, np.uint8)).all(axis=1)
    # Fixed-width rows (the IPv6 layout, 40 bytes), each filled for its own layout; `length`
    # says how much of the row is hash input.
    buf = np.zeros((n, 40), dtype=np.uint8)
    buf[:, 0:2] = np.frombuffer(int(seed).to_bytes(2, "big"), np.uint8)
    addr_len = np.where(is_v4, 4, 16)
    v4 = np.flatnonzero(is_v4)
    v6 = np.flatnonzero(~is_v4)
    buf[v4, 2:6] = a_raw[v4, 12:16]
    buf[v4, 6:10] = b_raw[v4, 12:16]
    buf[v6, 2:18] = a_raw[v6]
    buf[v6, 18:34] = b_raw[v6]
    proto_at = 2 + 2 * addr_len
    rows = np.arange(n)
    buf[rows, proto_at] = transport
    # buf[rows, proto_at + 1] stays 0 (padding byte)
    ports = np.stack([port_a.view(np.uint8).reshape(n, 2), port_b.view(np.uint8).reshape(n, 2)],
                     axis=1).reshape(n, 4)
    for k in range(4):
        buf[rows, proto_at + 2 + k] = ports[:, k]
    length = proto_at + 2 + np.where(has_ports, 4, 0)
    if n < VECTOR_SHA1_MIN_ROWS:  # per-row hashlib: cheaper than 1,600 ufunc calls here
        flat = buf.tobytes()
        sha1, b64 = hashlib.sha1, base64.b64encode
        for i, ln in enumerate(length.tolist()):
            out[i] = "1:" + b64(sha1(flat[i * 40:i * 40 + ln]).digest()).decode("ascii")
        return out
    text = np.empty((n, 30), dtype=np.uint8)
    text[:, :2] = np.frombuffer(b"1:", np.uint8)
    text[:, 2:] = _b64_20(sha1_rows(buf, length))
    out[:] = text.view("S30").ravel().astype("U30")
    return out


# --- SHA1 of short rows, column-wise ---------------------------------------------------------
# Community ID inputs are at most 40 bytes, so each is one 64-byte SHA1 block. Hashing a
# column of them with numpy uint32 ops (80 rounds over n-element arrays) replaces n hashlib
# calls and n base64 calls, the bulk of the cost of building flow records.

_K = (0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xCA62C1D6)
_H0 = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0)


def sha1_rows(buf: np.ndarray, length: np.ndarray) -> np.ndarray:
    """SHA1 digests ((n, 20) uint8) of row i's first length[i] bytes of buf ((n, w), w <= 55)."""
    n, width = buf.shape
    if width > 55:
        raise ValueError("rows must fit one SHA1 block (<= 55 bytes)")
    block = np.zeros((n, 64), dtype=np.uint8)
    block[:, :width] = buf
    rows = np.arange(n)
    length = np.asarray(length, dtype=np.int64)
    block[:, :width][np.arange(width) >= length[:, None]] = 0  # bytes past the message
    block[rows, length] = 0x80
    bits = (length * 8).astype(">u8").view(np.uint8).reshape(n, 8)
    block[:, 56:64] = bits
    w = [np.ascontiguousarray(col) for col in block.view(">u4").astype(np.uint32).T]
    a, b, c, d, e = (np.full(n, h, dtype=np.uint32) for h in _H0)
    f = np.empty(n, dtype=np.uint32)
    t = np.empty(n, dtype=np.uint32)
    for i in range(80):
        if i >= 16:  # message schedule, kept as a 16-word ring
            x = w[(i - 3) & 15] ^ w[(i - 8) & 15] ^ w[(i - 14) & 15] ^ w[i & 15]
            w[i & 15] = (x << np.uint32(1)) | (x >> np.uint32(31))
        if i < 20:
            np.bitwise_xor(c, d, out=f)
            f &= b
            f ^= d  # (b & c) | (~b & d)
        elif i < 40 or i >= 60:
            np.bitwise_xor(b, c, out=f)
            f ^= d
        else:
            np.bitwise_or(b, c, out=f)
            f &= d
            f |= b & c  # majority
        np.left_shift(a, np.uint32(5), out=t)
        t |= a >> np.uint32(27)
        t += f
        t += e
        t += np.uint32(_K[i // 20])
        t += w[i & 15]
        e = d
        d = c
        c = (b << np.uint32(30)) | (b >> np.uint32(2))
        b = a
        a, t = t, np.empty(n, dtype=np.uint32)  # b holds the old a now: fresh scratch
    digest = np.column_stack([a + np.uint32(_H0[0]), b + np.uint32(_H0[1]),
                              c + np.uint32(_H0[2]), d + np.uint32(_H0[3]),
                              e + np.uint32(_H0[4])])
    return digest.astype(">u4").view(np.uint8).reshape(n, 20)


_B64 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                     dtype=np.uint8)


def _b64_20(digest: np.ndarray) -> np.ndarray:
    """(n, 20) bytes -> (n, 28) standard base64 ASCII (one '=' of padding)."""
    n = digest.shape[0]
    padded = np.zeros((n, 21), dtype=np.uint8)
    padded[:, :20] = digest
    g = padded.reshape(n, 7, 3).astype(np.uint32)
    triple = (g[:, :, 0] << 16) | (g[:, :, 1] << 8) | g[:, :, 2]
    sextets = np.stack([(triple >> s) & 63 for s in (18, 12, 6, 0)], axis=2).reshape(n, 28)
    text = _B64[sextets]
    text[:, 27] = ord("=")
    return text


def _raw16(column: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16)
