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

import ctypes
import platform
import sys

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

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
    kernel = _community_id_text_ni if _SHA_NI else _community_id_text
    text = kernel(_raw16(src_ip), _raw16(dst_ip),
                              np.asarray(transport).astype(np.uint8, copy=False),
                              np.asarray(src_port).astype(np.int32, copy=False),
                              np.asarray(dst_port).astype(np.int32, copy=False), int(seed))
    return _str_column(text)


def _str_column(text: np.ndarray) -> np.ndarray:
    """(n, 30) ASCII rows -> object column of n str (one str object per row is the column's
    contract). On CPython a kernel makes each str itself (_str_objects: ~10 ns a row, ~38
    when the strs stay alive); else numpy reads the rows as "U30" and makes each str with
    astype(object) (~25 / ~58 ns: UCS4 rows scanned for their widest character and
    narrowed). Rows hold no NUL, so nothing is stripped."""
    n = text.shape[0]
    if _STR_DATA < 0:
        return text.astype(np.uint32).view(np.dtype("U30")).reshape(n).astype(object)
    column = np.empty(n, dtype=object)  # n references to None, replaced one by one
    if _str_objects(text, column.ctypes.data) < n:
        raise MemoryError("Community ID column")
    return column


# --- Community ID text of one tuple per row, compiled --------------------------------------
# Each hash input is at most 40 bytes, so each is one 64-byte SHA1 block: ordering, packing,
# SHA1 and base64 run per row in one kernel pass instead of ~1,600 column-wise numpy calls
# (or one hashlib + base64 call per row).

_K = (0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xCA62C1D6)
_H0 = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0)
_B64 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                     dtype=np.uint8).copy()


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


@njit(inline="always")
def _be64(raw: np.ndarray, i: int, at: int) -> np.uint64:
    """Bytes raw[i, at:at+8] as a big-endian uint64 (one load + byte swap once compiled)."""
    w = np.uint64(0)
    for j in range(8):
        w = (w << np.uint64(8)) | np.uint64(raw[i, at + j])
    return w


@njit(inline="always")
def _put_be(block: np.ndarray, at: int, value: np.uint64, nbytes: int) -> None:
    """block[at:at+nbytes] = the low nbytes of value, big-endian."""
    for j in range(nbytes):
        block[at + j] = np.uint8((value >> np.uint64(8 * (nbytes - 1 - j))) & np.uint64(0xFF))


@njit(inline="always")
def _hash_input(src: np.ndarray, dst: np.ndarray, transport: np.ndarray, src_port: np.ndarray,
                dst_port: np.ndarray, seed: int, i: int, block: np.ndarray,
                prev_length: int) -> int:
    """Row i's spec hash input, padded, into the 64-byte SHA1 block; returns its length.

    The block is reused across rows: it must be all zeros before the first row, and
    prev_length is the length the previous row returned (0 for the first), so only the
    bytes that row left behind are cleared (the length field's upper 6 bytes stay 0).
    src/dst: (n, 16) address bytes (IPv4-mapped rows hash as 4 bytes); src_port/dst_port
    hold ICMP type/code for ICMP rows, mapped here as icmp_port_equivalents does, with its
    256-entry counter-type tables read as globals: numba freezes them into the code, and
    the same lookups on array arguments made every row ~50 ns slower (measured).
    Table indexes are clipped to 0..255 and the input is at most 40 bytes: every index is
    bounded by construction."""
    proto = np.int64(transport[i])
    sport, dport = np.int64(src_port[i]), np.int64(dst_port[i])
    one_way = False
    if proto == PROTO_ICMP or proto == PROTO_ICMP6:
        counter = np.int64(_ICMP4_TABLE[min(max(sport, 0), 255)] if proto == PROTO_ICMP
                           else _ICMP6_TABLE[min(max(sport, 0), 255)])
        if counter >= 0:
            dport = counter
        else:
            one_way = True
    has_ports = (proto == PROTO_ICMP or proto == PROTO_TCP or proto == PROTO_UDP
                 or proto == PROTO_ICMP6 or proto == PROTO_SCTP)
    if not has_ports:
        sport, dport = 0, 0
    # Addresses as two big-endian words each: numeric order is the spec's byte order.
    s0, s1, d0, d1 = _be64(src, i, 0), _be64(src, i, 8), _be64(dst, i, 0), _be64(dst, i, 8)
    # Spec: ordered if one-way, or saddr < daddr, or equal addresses and sport < dport.
    ordered = one_way or s0 < d0 or (s0 == d0 and (s1 < d1 or (s1 == d1 and sport < dport)))
    if not ordered:
        s0, s1, d0, d1, sport, dport = d0, d1, s0, s1, dport, sport
    block[0] = (seed >> 8) & 0xFF
    block[1] = seed & 0xFF
    if s0 == 0 and (s1 >> np.uint64(32)) == np.uint64(0xFFFF):  # IPv4-mapped: 4 bytes
        _put_be(block, 2, s1, 4)
        _put_be(block, 6, d1, 4)
        at = 10
    else:
        _put_be(block, 2, s0, 8)
        _put_be(block, 10, s1, 8)
        _put_be(block, 18, d0, 8)
        _put_be(block, 26, d1, 8)
        at = 34
    block[at] = proto
    block[at + 1] = 0
    at += 2
    if has_ports:
        block[at] = (sport >> 8) & 0xFF
        block[at + 1] = sport & 0xFF
        block[at + 2] = (dport >> 8) & 0xFF
        block[at + 3] = dport & 0xFF
        at += 4
    # SHA1 padding: 0x80, zeros, the bit length (< 2**16: its last two bytes).
    block[at] = 0x80
    for j in range(at + 1, prev_length + 1):
        block[j] = 0
    block[62] = (at * 8) >> 8
    block[63] = (at * 8) & 0xFF
    return at


@njit(inline="always")
def _text_row(text: np.ndarray, i: int, digest: np.ndarray) -> None:
    """text[i] = "1:" + base64 of digest[:20] (digest[20] must be 0), as ASCII bytes."""
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


@njit
def _community_id_text(src: np.ndarray, dst: np.ndarray, transport: np.ndarray,
                       src_port: np.ndarray, dst_port: np.ndarray, seed: int) -> np.ndarray:
    """(n, 30) rows "1:<base64 SHA1>" of the spec's hash input per row (_hash_input), as
    ASCII bytes (community_id_column makes them str, _str_column). Portable scalar SHA1."""
    n = src.shape[0]
    text = np.empty((n, 30), dtype=np.uint8)
    block = np.zeros(64, dtype=np.uint8)
    w = np.empty(80, dtype=np.uint32)
    digest = np.zeros(21, dtype=np.uint8)
    length = 0
    for i in range(n):
        length = _hash_input(src, dst, transport, src_port, dst_port, seed, i, block, length)
        _sha1_block(block, w, digest)
        _text_row(text, i, digest)
    return text


@njit
def _community_id_text_ni(src: np.ndarray, dst: np.ndarray, transport: np.ndarray,
                          src_port: np.ndarray, dst_port: np.ndarray, seed: int) -> np.ndarray:
    """_community_id_text with SHA1 on the CPU's SHA extensions: only called when _SHA_NI
    says the compile target has them. Rows go SHA_LANES at a time through _sha1_ni_lanes,
    whose independent round chains overlap (one chain waits on each sha1rnds4's latency:
    ~36 ns a row alone); a last short group repeats its last row in the spare lanes."""
    n = src.shape[0]
    text = np.empty((n, 30), dtype=np.uint8)
    blocks = np.zeros((SHA_LANES, 64), dtype=np.uint8)
    digests = np.zeros((SHA_LANES, _DIGEST_ROW), dtype=np.uint8)
    lengths = np.zeros(SHA_LANES, dtype=np.int64)
    for first in range(0, n, SHA_LANES):
        for lane in range(SHA_LANES):
            i = min(first + lane, n - 1)
            lengths[lane] = _hash_input(src, dst, transport, src_port, dst_port, seed, i,
                                        blocks[lane], lengths[lane])
        _sha1_ni_lanes(blocks, digests)
        for lane in range(min(SHA_LANES, n - first)):
            _text_row(text, first + lane, digests[lane])
    return text


# --- SHA1 on the SHA extensions (x86 SHA-NI), for CPUs that have them -----------------------
# One 64-byte block per row is ~50 ns with sha1rnds4 & co. against ~150 ns of scalar rounds.
# numba has no vector types, so the whole compression is emitted as LLVM IR (Intel's
# published SHA-NI schedule). numba's on-disk cache is keyed by the CPU name and features, so
# code compiled here is never loaded on a CPU without them.

_V4 = ir.VectorType(ir.IntType(32), 4)
_B16 = ir.VectorType(ir.IntType(8), 16)
_REVERSE16 = ir.Constant(ir.VectorType(ir.IntType(32), 16), list(range(15, -1, -1)))


def _sha_ni_target() -> bool:
    """True when kernels compile for this host's CPU (numba's default) and it has SHA-NI;
    an explicit NUMBA_CPU_NAME/NUMBA_CPU_FEATURES (portable caches) keeps the scalar code."""
    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:
        return False
    return bool(features.get("sha") and features.get("ssse3"))


_SHA_NI = _sha_ni_target()


SHA_LANES = 4  # rows hashed together by _community_id_text_ni
_DIGEST_ROW = 24  # bytes per lane of its digests: 20, a zero for _text_row, 3 unused


def _emit_sha1(builder: ir.IRBuilder, src: ir.Value, out: ir.Value, lanes: int) -> None:
    """SHA1 of `lanes` padded 64-byte blocks (src + 64 * lane) into out + _DIGEST_ROW * lane
    (20 bytes each), the lanes' instructions interleaved group by group."""
    module = builder.module

    def declare(name: str) -> ir.Function:
        full = f"llvm.x86.{name}"
        if full in module.globals:
            return module.globals[full]
        extra = [ir.IntType(8)] if name == "sha1rnds4" else []
        return ir.Function(module, ir.FunctionType(_V4, [_V4, _V4] + extra), full)

    rnds4, nexte, msg1, msg2 = (declare(n) for n in ("sha1rnds4", "sha1nexte", "sha1msg1",
                                                     "sha1msg2"))
    i32 = ir.IntType(32)
    undef = ir.Constant(_B16, ir.Undefined)

    def load_words(at: int) -> ir.Value:
        """Bytes at..at+16 as 4 big-endian words, word 0 in lane 3 (one pshufb)."""
        raw = builder.load(builder.bitcast(builder.gep(src, [ir.Constant(i32, at)]),
                                           _B16.as_pointer()), align=1)
        return builder.bitcast(builder.shuffle_vector(raw, undef, _REVERSE16), _V4)

    abcd = [ir.Constant(_V4, list(reversed(_H0[:4])))] * lanes  # a in lane 3
    e = [[ir.Constant(_V4, [0, 0, 0, _H0[4]]), None] for _ in range(lanes)]
    m = [[load_words(64 * lane + 16 * q) for q in range(4)] for lane in range(lanes)]
    for g in range(20):  # 4 rounds each; the message schedule runs 1-3 groups ahead
        cur = g % 2
        for k in range(lanes):
            if g == 0:
                e[k][0] = builder.add(e[k][0], m[k][0])
            else:
                e[k][cur] = builder.call(nexte, [e[k][cur], m[k][g % 4]])
            e[k][1 - cur] = abcd[k]
            if 3 <= g <= 18:
                m[k][(g + 1) % 4] = builder.call(msg2, [m[k][(g + 1) % 4], m[k][g % 4]])
            if 1 <= g <= 16:
                m[k][(g + 3) % 4] = builder.call(msg1, [m[k][(g + 3) % 4], m[k][g % 4]])
            if 2 <= g <= 17:
                m[k][(g + 2) % 4] = builder.xor(m[k][(g + 2) % 4], m[k][g % 4])
            abcd[k] = builder.call(rnds4, [abcd[k], e[k][cur], ir.Constant(ir.IntType(8), g // 5)])
    for k in range(lanes):
        # group 19 left the last ABCD in e[0]: e = rotl(that a, 30) + H0's e, in lane 3
        e_out = builder.call(nexte, [e[k][0], ir.Constant(_V4, [0, 0, 0, _H0[4]])])
        final = builder.add(abcd[k], ir.Constant(_V4, list(reversed(_H0[:4]))))
        # a..d big-endian from lanes 3..0 is the byte-reversed vector; e: its lane 3 bytes
        dest = builder.gep(out, [ir.Constant(i32, _DIGEST_ROW * k)])
        builder.store(builder.shuffle_vector(builder.bitcast(final, _B16), undef, _REVERSE16),
                      builder.bitcast(dest, _B16.as_pointer()), align=1)
        e_bytes = builder.shuffle_vector(builder.bitcast(e_out, _B16), undef,
                                         ir.Constant(ir.VectorType(i32, 4), [15, 14, 13, 12]))
        builder.store(e_bytes, builder.bitcast(builder.gep(dest, [ir.Constant(i32, 16)]),
                                               ir.VectorType(ir.IntType(8), 4).as_pointer()),
                      align=1)


@intrinsic
def _sha1_ni_lanes(typingctx, blocks, digests):  # noqa: ARG001 (numba's intrinsic signature)
    """digests[k, :20] = SHA1 of padded block blocks[k] for k < SHA_LANES, interleaved
    (blocks: C-contiguous (SHA_LANES, 64) uint8, digests: (SHA_LANES, _DIGEST_ROW) uint8)."""
    for array in (blocks, digests):
        if not (isinstance(array, types.Array) and array.ndim == 2 and array.layout == "C"):
            return None
    sig = types.void(blocks, digests)

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0]).data
        out = context.make_array(signature.args[1])(context, builder, args[1]).data
        _emit_sha1(builder, src, out, SHA_LANES)
        return context.get_dummy_value()

    return sig, codegen


def _raw16(column: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16)


# --- str objects made by a kernel (CPython) -------------------------------------------------
# A compact ASCII str is one allocation: the object header, then its characters and a NUL.
# PyUnicode_New(30, 127) makes one (hash unset, NUL written) whose characters the caller
# writes before anyone sees it, as CPython's own encoders do.


def _str_data_offset() -> int:
    """Bytes from a compact ASCII str's address to its characters; -1 when that cannot be
    relied on (not CPython, or a layout this check does not recognise)."""
    if platform.python_implementation() != "CPython":
        return -1
    probe = "".join(chr(48 + (7 * i) % 75) for i in range(30))  # ASCII, no NUL
    at = ctypes.string_at(id(probe), 256).find(probe.encode())
    # sizeof(PyASCIIObject): the empty str is the header plus its NUL
    return at if at == sys.getsizeof("") - 1 else -1


_STR_DATA = _str_data_offset()
_I8P = ir.IntType(8).as_pointer()
_I64 = ir.IntType(64)


@intrinsic
def _put_ascii_str(typingctx, text, i, column):  # noqa: ARG001 (numba's intrinsic signature)
    """column[i] = a new str of row text[i] (C-contiguous (n, 30) uint8 ASCII; column: the
    address of an object array's data), releasing the reference it held; False (with the
    Python error cleared) when the str could not be allocated. The GIL must be held."""
    if not (isinstance(text, types.Array) and text.ndim == 2 and text.layout == "C"):
        return None
    sig = types.boolean(text, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        text_arg, row, column_at = args
        data = context.make_array(signature.args[0])(context, builder, text_arg).data
        new = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I8P, [_I64, ir.IntType(32)]), "PyUnicode_New")
        obj = builder.call(new, [_I64(30), ir.IntType(32)(127)])
        made = cgutils.is_not_null(builder, obj)
        with builder.if_else(made) as (then, otherwise):
            with then:
                src = builder.gep(builder.bitcast(data, _I8P), [builder.mul(row, _I64(30))])
                dst = builder.gep(obj, [_I64(_STR_DATA)])
                cgutils.raw_memcpy(builder, dst, src, _I64(30), 1)
                slot = builder.inttoptr(builder.add(column_at, builder.mul(row, _I64(8))),
                                        _I8P.as_pointer())
                old = builder.load(slot)
                builder.store(obj, slot)
                release = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ir.VoidType(), [_I8P]), "Py_DecRef")
                builder.call(release, [old])  # None (or NULL: Py_DecRef accepts it)
            with otherwise:
                clear = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ir.VoidType(), []), "PyErr_Clear")
                builder.call(clear, [])
        return made

    return sig, codegen


@njit(nogil=False)  # it calls the C API: with the GIL
def _str_objects(text: np.ndarray, column: int) -> int:
    """Rows of text (n, 30) ASCII -> str objects in the object array whose data starts at
    address `column` (n references, replaced). Returns the rows done (< n: out of
    memory)."""
    for i in range(text.shape[0]):
        if not _put_ascii_str(text, i, column):
            return i
    return text.shape[0]
