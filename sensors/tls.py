"""TLS handshake events: ClientHello / ServerHello / Certificate on any TCP port.

Flows are picked column-wise by their opening payload (a TLS handshake record, 0x16 0x03
0x00-0x04, carrying a ClientHello), then reassembled by sensors.tcp_stream up to
`max_bytes_per_dir` per direction; for flows reassembled column-wise (the fast path, nearly
all), only up to the record header after which nothing read can change (`needed_lengths`,
the collector's `trim`): application data is not copied. Per direction, the handshake
messages are the concatenated bodies of the handshake records (content type 22) that come
before the first ChangeCipherSpec (20) or application-data (23) record: after those,
handshake records are encrypted.

One "tls" event per flow (the first handshake; renegotiations are not read), emitted when
the handshake is known to be complete (`established`) or when the flow ends (FIN/RST, idle,
eviction, end of input); then the flow is released from reassembly.

- version: the server's supported_versions extension (TLS 1.3), else the ServerHello
  version; without a ServerHello, the client's highest offered version.
- After a HelloRetryRequest (TLS 1.3: a ServerHello with RFC 8446's fixed random), the
  ServerHello facts (version, cipher, chosen ALPN, JA3S, curve, resumed) are those of the
  real ServerHello that follows it, when it comes (Zeek's ssl.log keeps the last
  ServerHello's); the server's middlebox-compatibility ChangeCipherSpec between the two
  does not end its cleartext. The ClientHello facts (SNI, ALPN offered, JA3, JA4) stay the
  first ClientHello's: the retried one repeats it but for the share, cookie and PSK binders
  (RFC 8446 4.1.2), and is not read.
- JA3 / JA3S (salesforce/ja3): decimal fields joined by '-' and ','; GREASE values
  (RFC 8701: 0x?A?A with equal bytes) are removed from every list; MD5 in the event.
- JA4 (FoxIO JA4 spec, TCP "t" variant), see `ja4`.
- Certificate (TLS <= 1.2, where it is not encrypted): SHA1 of the leaf (first) certificate,
  upper-case hex; subject and issuer DN (RFC 4514) with the `cryptography` package when it
  is installed (else left empty).
- curve (Zeek's ssl.log `curve`): the ServerHello's key_share group (TLS 1.3; a
  HelloRetryRequest's is the group it asks for), else the named curve of an ECDHE suite's
  ServerKeyExchange (TLS <= 1.2: its first 3 body bytes, the only ones of it copied); names
  as Zeek's (GROUP_NAMES), else 0x hex. resumed (Zeek's rules, _parse_directions): the
  client's session id echoed before TLS 1.3, a PSK offered and accepted (TLS 1.3), or a ticket
  offered without session id and the client's CCS with no ClientKeyExchange before it. Both
  read in the existing walks (ClientHello, server flight), no pass of their own.
- established: ServerHello seen and, for TLS <= 1.2, ChangeCipherSpec from both sides or
  application data after the client's ChangeCipherSpec; for TLS 1.3, an encrypted record
  (its Finished) from the client after the ServerHello.

How: all flows of a batch are parsed at once by numba kernels over the collector's joined
buffer (`feed_joined`'s StreamBatch: every direction's bytes in one buffer, the flow fields
as columns, no StreamChunk object made; `parse_joined`): record framing, and right after
each direction's framing its ClientHello or the server's flight, located as offsets
(`_parse_directions`). A kernel also writes each ClientHello's fingerprint fields (version,
ciphers, extension types, groups, point formats, signature algorithms, supported versions,
ALPN) as one canonical byte string, the "client key": JA3/JA4 strings are built in Python
only once per distinct key (a network's clients share a few TLS stacks). The JA3S server
key (version, cipher, extension types) is cached the same way. Equal keys (and leaf
certificates, SNIs, ALPN names) are numbered by a kernel against a table the analyzer keeps
across batches (`KnownValues`), so a bytes or str object is made per distinct value ever
seen, not per event or batch; version and cipher names per distinct code. The offered ALPN
list is one list per distinct client key, shared by the events that have it (as DNS answer
lists are): consumers only read it, and one that wants to change it must copy it first.

Hostile input never raises: parse errors are counted (stats["tls_malformed"]) and the
flow yields no event (a ClientHello that cannot be read) or an event with what was read.
Every kernel index is checked against its direction's end before it is read (numba does
not bounds-check).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.jit import njit
from pipeline.schema import TLS, EventBatch
from sensors.analyzer import Analyzer
from sensors.http_kernel import (
    _load_u64,
    _slice_hash,
    clip_slice,
    copy_bytes,
    equal_bytes,
)
from sensors.packets import DecodedPackets
from sensors.stream_columns import (
    ChunkColumns,
    StreamColumns,
    endpoint_columns_at,
    read_only,
    stream_columns,
)
from sensors.tcp_stream import StreamChunk, StreamCollector, borrowed, prefetch
from sensors.tls_ciphers import CIPHER_SUITE_NAMES

CONTENT_CCS, CONTENT_ALERT, CONTENT_HANDSHAKE, CONTENT_APPDATA = 20, 21, 22, 23
HS_CLIENT_HELLO, HS_SERVER_HELLO, HS_CERTIFICATE = 1, 2, 11
HS_SERVER_KEY_EXCHANGE, HS_CLIENT_KEY_EXCHANGE = 12, 16
EXT_SNI, EXT_GROUPS, EXT_POINT_FORMATS, EXT_SIG_ALGS, EXT_ALPN = 0, 10, 11, 13, 16
EXT_SESSION_TICKET, EXT_PRE_SHARED_KEY, EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE = 35, 41, 43, 51
# Of a ServerKeyExchange body, the bytes kept: an ECDHE suite's ECParameters start with
# curve_type (3 = named_curve) and the 2-byte NamedCurve (RFC 8422 section 5.4).
SKE_KEPT = 3
CURVE_TYPE_NAMED = 3
# A ServerHello with this random is a HelloRetryRequest (RFC 8446 section 4.1.3): the
# handshake goes on with a second ClientHello and the real ServerHello.
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")
_HRR = np.frombuffer(HRR_RANDOM, np.uint8).copy()  # a constant of the compiled kernels
MAX_RECORDS = 256  # records scanned per direction
MAX_LIST = 512  # entries read from one list (ciphers, extensions ...)
PREFETCH_FLOWS = 8  # how many flows (directions) ahead the kernels ask for their first lines
MAX_HS_BUFFER = 32 << 20  # the largest handshake byte buffer an analyzer keeps between batches
PREFETCH_DIRECTION_BYTES = 4096  # of a direction, how many first bytes frame_records asks for

VERSION_NAMES = {0x0300: "3.0", 0x0301: "1.0", 0x0302: "1.1", 0x0303: "1.2", 0x0304: "1.3"}
# TLS Supported Groups (IANA registry) by the names Zeek's ssl.log `curve` uses.
GROUP_NAMES = {
    **dict(enumerate([
        "sect163k1", "sect163r1", "sect163r2", "sect193r1", "sect193r2", "sect233k1",
        "sect233r1", "sect239k1", "sect283k1", "sect283r1", "sect409k1", "sect409r1",
        "sect571k1", "sect571r1", "secp160k1", "secp160r1", "secp160r2", "secp192k1",
        "secp192r1", "secp224k1", "secp224r1", "secp256k1", "secp256r1", "secp384r1",
        "secp521r1", "brainpoolP256r1", "brainpoolP384r1", "brainpoolP512r1", "x25519", "x448",
        "brainpoolP256r1tls13", "brainpoolP384r1tls13", "brainpoolP512r1tls13", "GC256A",
        "GC256B", "GC256C", "GC256D", "GC512A", "GC512B", "GC512C", "curveSM2"], start=1)),
    **{0x0100 + i: f"ffdhe{bits}" for i, bits in enumerate([2048, 3072, 4096, 6144, 8192])},
    0x0200: "MLKEM512", 0x0201: "MLKEM768", 0x0202: "MLKEM1024",
    0x11EB: "SecP256r1MLKEM768", 0x11EC: "X25519MLKEM768", 0x11ED: "SecP384r1MLKEM1024",
    0x11EE: "curveSM2MLKEM768", 0x4138: "CECPQ2", 0x6399: "X25519Kyber768Draft00",
    0x639A: "SecP256r1Kyber768Draft00", 0xFF01: "arbitrary_explicit_prime_curves",
    0xFF02: "arbitrary_explicit_char2_curves",
    **{0x0A0A + 0x1010 * i: f"grease_0x{0x0A0A + 0x1010 * i:04X}" for i in range(16)},
}
JA4_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3",
                0x0002: "s2", 0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}

# What the record layer of one direction showed (frame_records' flags, a bit mask).
SEEN_CCS = 1  # a ChangeCipherSpec record
SEEN_APPDATA = 2  # an application-data record
APPDATA_AFTER_FIRST = 4  # an application-data record that is not the direction's first
RECORD_TRUNCATED = 8  # the bytes end inside a cleartext handshake record

# The ClientHello of a flow (client_hellos' status).
HELLO_OK, HELLO_INCOMPLETE, HELLO_MALFORMED = 0, 1, 2

# What a ClientHello offers for resumption (_client_hello's `offers`, a bit mask).
CLIENT_TICKET = 1  # a non-empty SessionTicket extension (RFC 5077)
CLIENT_PSK = 2  # a pre_shared_key extension (TLS 1.3)

# Bytes a client key may need beyond its ClientHello body: the 2-byte version and seven
# 4-byte section lengths. Every section copies bytes of a distinct part of the body (or, for
# the extension types, 2 of the 4 header bytes), so body length + this bounds the key.
CLIENT_KEY_SLACK = 32
# Same for the server key: 4 bytes of version + cipher, then 2 per extension (whose headers
# take 4 bytes of a body of at least 38).
SERVER_KEY_SLACK = 8


class MalformedTLS(ValueError):
    """A handshake message does not fit its declared layout."""


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values: 0x0A0A, 0x1A1A ... 0xFAFA."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def tls_client_predicate(head: np.ndarray, payload_len: np.ndarray) -> np.ndarray:
    """Vectorized: payload starts a handshake record (0x16 03 0x) holding a ClientHello."""
    return _client_openings(head, payload_len)


@njit
def _client_openings(head: np.ndarray, payload_len: np.ndarray) -> np.ndarray:
    """tls_client_predicate in one pass over the rows (five numpy column passes and four
    ANDs cost ~0.3 ms per 300k packets of the mix)."""
    n = head.shape[0]
    if payload_len.shape[0] != n or (n and head.shape[1] < 6):
        raise ValueError("head and payload_len do not match")
    out = np.empty(n, np.bool_)
    for i in range(n):
        out[i] = (head[i, 0] == CONTENT_HANDSHAKE) & (head[i, 1] == 3) & (head[i, 2] <= 4) \
            & (head[i, 5] == HS_CLIENT_HELLO) & (payload_len[i] >= 6)
    return out


@dataclass
class ClientHello:
    version: int
    ciphers: list[int]
    extensions: list[int]  # types, in order
    server_name: str = ""
    has_sni: bool = False
    alpn: list[bytes] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    point_formats: list[int] = field(default_factory=list)
    sig_algs: list[int] = field(default_factory=list)
    supported_versions: list[int] = field(default_factory=list)


@dataclass
class ServerHello:
    version: int
    cipher: int
    extensions: list[int]
    alpn: bytes = b""
    selected_version: int = 0


@dataclass
class Handshake:
    """What a flow's bytes tell about its TLS handshake (the event's columns)."""

    client: ClientHello
    server: ServerHello | None = None
    cert_der: bytes = b""
    established: bool = False
    malformed: bool = False  # something after the ClientHello could not be read
    curve: int = -1  # the key exchange group (key_share / ServerKeyExchange), -1: none
    resumed: bool = False

    def version(self) -> str:
        if self.server is not None:
            v = self.server.selected_version or self.server.version
        else:
            v = offered_version(self.client)
        return version_name(v)


def offered_version(hello: ClientHello) -> int:
    """The client's highest non-GREASE supported_versions entry, else its hello version."""
    offered = [v for v in hello.supported_versions if not is_grease(v)]
    return max(offered) if offered else hello.version


def version_name(version: int) -> str:
    return VERSION_NAMES.get(version, f"0x{version:04X}")


def curve_name(group: int) -> str:
    """A key exchange group as Zeek's ssl.log names it (IANA TLS Supported Groups), else 0x
    hex; "" for -1 (none)."""
    if group < 0:
        return ""
    return GROUP_NAMES.get(group) or f"0x{group:04X}"


def is_retry(server_hello: bytes) -> bool:
    """A ServerHello body (after its 4-byte header) is a HelloRetryRequest."""
    return server_hello[2:34] == HRR_RANDOM


def _ecdhe_suites() -> np.ndarray:
    """Per cipher suite code: its ServerKeyExchange starts with ECParameters (ECDHE and
    ECDH_anon suites; static ECDH sends none). ECDHE_PSK suites put a PSK identity hint
    first: their curve is not read."""
    table = np.zeros(0x10000, np.bool_)
    for code, name in CIPHER_SUITE_NAMES.items():
        if "_ECDH" in name and "PSK" not in name:
            table[code] = True
    return table


ECDHE_SUITES = _ecdhe_suites()  # a constant of the compiled kernels


# --- kernels: record layer, ClientHello, server flight -------------------------------------
# Positions are int64 offsets into one uint8 array; a (start, stop) pair is a slice. A helper
# that finds a length-prefixed vector returns stop = -1 when it does not fit its container:
# the caller then gives up on the message (the pure-Python parser raised MalformedTLS).


@njit
def _u16(buf: np.ndarray, pos: int) -> int:
    """Big-endian 16-bit value at pos (the caller checked pos + 2 <= its end)."""
    return (np.int64(buf[pos]) << 8) | np.int64(buf[pos + 1])


@njit
def _u24(buf: np.ndarray, pos: int) -> int:
    """Big-endian 24-bit value at pos (the caller checked pos + 3 <= its end)."""
    return (np.int64(buf[pos]) << 16) | (np.int64(buf[pos + 1]) << 8) | np.int64(buf[pos + 2])


@njit
def _span(buf: np.ndarray, pos: int, end: int, len_bytes: int) -> tuple[int, int]:
    """(start, stop) of the vector at pos with a len_bytes length prefix; stop = -1 when the
    prefix or the vector runs past `end`."""
    start = pos + len_bytes
    if start > end:
        return start, -1
    size = np.int64(0)
    for i in range(len_bytes):
        size = (size << 8) | np.int64(buf[pos + i])
    if start + size > end:
        return start, -1
    return start, start + size


@njit
def _put_section(out: np.ndarray, at: int, src: np.ndarray, start: int, stop: int) -> int:
    """Write src[start:stop] to `out` at `at` after its 4-byte length; returns the end."""
    _put_length(out, at, stop - start)
    return copy_bytes(out, at + 4, src, start, stop)


@njit
def _put_length(out: np.ndarray, at: int, size: int) -> None:
    out[at] = (size >> 24) & 0xFF
    out[at + 1] = (size >> 16) & 0xFF
    out[at + 2] = (size >> 8) & 0xFF
    out[at + 3] = size & 0xFF


@njit
def _server_messages(hs: np.ndarray, out: int, buf: np.ndarray, p: int, stop: int, left: int,
                     keep: int, head: int) -> tuple[int, int, int, int]:
    """Append the handshake record body buf[p:stop] of a server direction to hs[out:] as
    messages: a ServerHello's or Certificate's whole, a ServerKeyExchange's first SKE_KEPT
    bytes (its named curve) with its length set to that, any other message's header alone
    with its length set to 0 (server_flights reads nothing else: it steps over those
    messages, and one whose body runs past the bytes has only body bytes after it). `left`
    body bytes of the current message are still to come, the first `keep` of them copied;
    `head` bytes of the next header are already in hs (a header may span records). Returns
    (out, left, keep, head)."""
    while p < stop:
        if left > 0:
            take = min(left, stop - p)
            if keep > 0:
                copied = min(take, keep)
                out = copy_bytes(hs, out, buf, p, p + copied)
                keep -= copied
            left -= take
            p += take
            continue
        hs[out] = buf[p]
        out += 1
        p += 1
        head += 1
        if head == 4:  # a whole header: hs[out - 4 : out]
            head = 0
            left = _u24(hs, out - 3)
            msg_type = hs[out - 4]
            if msg_type == HS_SERVER_HELLO or msg_type == HS_CERTIFICATE:
                keep = left
            else:
                keep = min(left, SKE_KEPT) if msg_type == HS_SERVER_KEY_EXCHANGE else 0
                hs[out - 3] = 0
                hs[out - 2] = 0
                hs[out - 1] = keep
    return out, left, keep, head


@njit
def hs_capacity(buf: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> int:
    """The bytes frame_records may write to `hs` for directions buf[starts[d]:stops[d]]:
    their sizes, clipped to buf (a direction's cleartext bodies are never longer)."""
    total = 0
    for d in range(starts.size):
        size = min(stops[d], buf.size) - max(starts[d], 0)
        if size > 0:
            total += size
    return total


@njit
def frame_records(buf: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                  servers_from: int = -1
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Record layer of each direction buf[starts[d]:stops[d]].

    Returns (hs, hs_start, hs_stop, flags): hs holds the bodies of every direction's
    cleartext handshake records, concatenated (direction d's are hs[hs_start[d]:hs_stop[d]]);
    flags are the SEEN_* / APPDATA_AFTER_FIRST / RECORD_TRUNCATED bits of its first
    MAX_RECORDS records. Reading stops at the first byte pair that is not a TLS record header.
    Directions from `servers_from` on (>= 0) are servers': of their messages only what
    server_flights reads is copied (see _server_messages), not e.g. key exchange bodies
    (but their named curve).
    """
    hs = np.empty(hs_capacity(buf, starts, stops), np.uint8)
    hs_start, hs_stop, flags = frame_records_into(hs, buf, starts, stops, servers_from)
    return hs, hs_start, hs_stop, flags


@njit
def frame_records_into(hs: np.ndarray, buf: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                       servers_from: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """frame_records writing to a given `hs` of at least hs_capacity bytes (ValueError
    otherwise; what no direction's hs_start..hs_stop covers is left as it was): (hs_start,
    hs_stop, flags)."""
    n = starts.size
    if hs.size < hs_capacity(buf, starts, stops):
        raise ValueError("hs is smaller than hs_capacity")
    hs_start = np.empty(n, np.int64)
    hs_stop = np.empty(n, np.int64)
    flags = np.zeros(n, np.uint8)
    out = 0  # bytes copied <= the direction's size: `hs` cannot overflow
    # the helpers' arrays without reference counts (tcp_stream.borrowed: two atomic
    # operations per array and call otherwise); the owners live on here
    src, dst = borrowed(buf), borrowed(hs)
    for d in range(n):
        _prefetch_direction(src, starts, stops, d)
        hs_start[d] = out
        out, flags[d] = _frame_direction(dst, out, src, starts[d], stops[d],
                                         0 <= servers_from <= d)
        hs_stop[d] = out
    return hs_start, hs_stop, flags


@njit(inline="always")
def _prefetch_direction(buf: np.ndarray, starts: np.ndarray, stops: np.ndarray, d: int) -> None:
    """Ask for the first lines of direction d + PREFETCH_FLOWS (see tcp_stream.prefetch): the
    directions lie apart in `buf`, and the walk of each one started with waits for its lines
    (a record header gives the CPU no loads of the next direction to overlap)."""
    if d + PREFETCH_FLOWS < starts.size and buf.size > 0:
        ahead = min(max(starts[d + PREFETCH_FLOWS], 0), buf.size)
        for at in range(ahead, min(stops[d + PREFETCH_FLOWS], buf.size,
                                   ahead + PREFETCH_DIRECTION_BYTES), 64):
            prefetch(buf, at)


@njit(inline="always")
def _frame_direction(hs: np.ndarray, out: int, buf: np.ndarray, start: int, stop_at: int,
                     messages: bool) -> tuple[int, np.uint8]:
    """frame_records' walk of the direction buf[start:stop_at] (clipped), its cleartext
    handshake bodies appended to hs[out:] (`messages`: a server's, see _server_messages):
    (the end in hs, its flags)."""
    pos = max(start, 0)
    end = min(stop_at, buf.size)
    first = out  # the direction's first byte in hs
    records = 0
    cleartext = True
    seen = 0
    left = 0  # (messages) body bytes of the current message still to come
    keep = 0  # (messages) of those, how many are copied
    head = 0  # (messages) bytes of the next message header seen
    while pos + 5 <= end and records < MAX_RECORDS:
        ctype = buf[pos]
        if ctype < CONTENT_CCS or ctype > CONTENT_APPDATA or buf[pos + 1] != 3:
            break  # not TLS (any more): stop reading
        stop = pos + 5 + _u16(buf, pos + 3)
        records += 1  # the header is visible: the type counts
        if ctype == CONTENT_CCS:
            seen |= SEEN_CCS
        elif ctype == CONTENT_APPDATA:
            seen |= SEEN_APPDATA
            if records > 1:
                seen |= APPDATA_AFTER_FIRST
        if stop > end:
            if cleartext and ctype == CONTENT_HANDSHAKE:
                seen |= RECORD_TRUNCATED
            break
        if ctype != CONTENT_HANDSHAKE:
            # after CCS / application data: encrypted; but a TLS 1.3 server's compatibility
            # CCS right after its HelloRetryRequest (RFC 8446 D.4) comes before the real
            # ServerHello, in cleartext
            if ctype != CONTENT_ALERT and not (
                    messages and ctype == CONTENT_CCS and left == 0 and head == 0
                    and _retry_alone(hs, first, out)):
                cleartext = False
        elif cleartext:
            if messages:
                out, left, keep, head = _server_messages(hs, out, buf, pos + 5, stop, left,
                                                         keep, head)
            else:
                out = copy_bytes(hs, out, buf, pos + 5, stop)
        pos = stop
    return out, np.uint8(seen)


@njit(inline="always")
def _is_retry(hs: np.ndarray, pos: int, end: int) -> bool:
    """The ServerHello body hs[pos:end] is a HelloRetryRequest (its random, after the
    2-byte version, is HRR_RANDOM)."""
    if pos + 34 > end:
        return False
    for i in range(32):
        if hs[pos + 2 + i] != _HRR[i]:
            return False
    return True


@njit(inline="always")
def _retry_alone(hs: np.ndarray, first: int, out: int) -> bool:
    """A server direction's messages hs[first:out] are one whole HelloRetryRequest."""
    return out - first >= 4 and hs[first] == HS_SERVER_HELLO \
        and first + 4 + _u24(hs, first + 1) == out and _is_retry(hs, first + 4, out)



@njit
def _byte_at(data: np.ndarray, seg_start: np.ndarray, seg_size: np.ndarray,
             seg_end: np.ndarray, i: int, v: int) -> tuple[int, int]:
    """(byte, segment) of position v of the concatenation of all segments (seg_end: the
    cumulative ends of seg_size), looked up from segment i onwards (reads go forward, so
    the caller passes back the segment it got; it checked v < the end of its last segment);
    zero outside `data`."""
    while seg_end[i] <= v:
        i += 1
    at = seg_start[i] + v - (seg_end[i] - seg_size[i])
    if 0 <= at < data.size:
        return np.int64(data[at]), i
    return np.int64(0), i


@njit
def _settled_at(data: np.ndarray, seg_start: np.ndarray, seg_size: np.ndarray,
                seg_end: np.ndarray, lo: int, hi: int, want: int) -> int:
    """frame_records' walk of one direction (the segments lo..hi-1 back to back), up to the
    header of the ChangeCipherSpec or application-data record with which the direction has
    shown every flag of `want`: returns that header's end, else -1 (not settled)."""
    if hi <= lo:
        return -1
    base = seg_end[lo] - seg_size[lo]
    end = seg_end[hi - 1] - base
    size = data.shape[0]
    i = lo
    pos = 0
    records = 0
    seen = 0
    while pos + 5 <= end and records < MAX_RECORDS:
        v = base + pos
        while seg_end[i] <= v:
            i += 1
        at = seg_start[i] + v - (seg_end[i] - seg_size[i])
        if v + 5 <= seg_end[i] and 0 <= at and at + 5 <= size:
            # the whole header in one segment (nearly always): read in place, not by
            # _byte_at's per-byte segment lookup (twice as fast)
            ctype = np.int64(data[at])
            major = np.int64(data[at + 1])
            high = np.int64(data[at + 3])
            low = np.int64(data[at + 4])
        else:  # the header spans segments (or leaves `data`)
            ctype, i = _byte_at(data, seg_start, seg_size, seg_end, i, v)
            major, i = _byte_at(data, seg_start, seg_size, seg_end, i, v + 1)
            high, j = _byte_at(data, seg_start, seg_size, seg_end, i, v + 3)
            low, j = _byte_at(data, seg_start, seg_size, seg_end, j, v + 4)
        if ctype < CONTENT_CCS or ctype > CONTENT_APPDATA or major != 3:
            return -1
        records += 1
        if ctype == CONTENT_CCS:
            seen |= SEEN_CCS
        elif ctype == CONTENT_APPDATA:
            seen |= SEEN_APPDATA
            if records > 1:
                seen |= APPDATA_AFTER_FIRST
        if (seen & want) == want and (ctype == CONTENT_CCS or ctype == CONTENT_APPDATA):
            return pos + 5
        pos += 5 + ((high << 8) | low)
    return -1


PREFETCH_SEGMENTS = 4  # of how many of each direction's segments


@njit
def needed_lengths(data: np.ndarray, seg_start: np.ndarray, seg_size: np.ndarray,
                   first_seg: np.ndarray, end_seg: np.ndarray) -> np.ndarray:
    """How many bytes of each flow parse_flows needs (the TLS analyzer's `trim` for its
    stream collector: a flow's application data, most of its bytes, is never copied).

    Direction d of flow f (d = 0 client -> server, 1 server -> client) is the concatenation
    of data[seg_start[i] : seg_start[i] + seg_size[i]] for i in first_seg[f, d] ..
    end_seg[f, d] - 1 (bytes outside `data` read as zero). Returns (n, 2) lengths: the
    prefix of each direction that gives parse_flows exactly what the whole gives (its whole
    length when nothing can be cut).

    The walk is frame_records' own; a direction is cut after the header of the
    ChangeCipherSpec / application-data record that settles it. That header alone gives the
    same flags; cleartext ends with it, so the direction's `hs` bytes are the same, and
    RECORD_TRUNCATED (cleartext handshake records only) stays unset in both. So
    server_flights and client_hellos read the same bytes (client_hellos' `data_len < 9`
    test too: a settled client keeps two records, >= 10 bytes).
    - Server: settled at its first application-data record. Of its flags only SEEN_CCS and
      SEEN_APPDATA are read, in `established`, where server SEEN_APPDATA alone makes it true
      before TLS 1.3 (so a later CCS changes nothing); TLS 1.3 reads neither.
    - Client: settled once it has shown APPDATA_AFTER_FIRST (so SEEN_APPDATA) plus, unless
      the server's bytes show application data (then its other flags are not read, as
      above), SEEN_CCS: all client flags parse_flows reads.
    """
    n = first_seg.shape[0]
    seg_size = np.maximum(seg_size, 0)
    seg_end = np.cumsum(seg_size)
    out = np.zeros((n, 2), np.int64)
    m = seg_size.size
    first_seg = np.minimum(np.maximum(first_seg, 0), m)  # segment indexes inside the arrays
    end_seg = np.minimum(np.maximum(end_seg, 0), m)
    size = data.shape[0]
    # _settled_at's arrays without reference counts (tcp_stream.borrowed: 8 atomic
    # operations a call otherwise); the owners live on here
    view, starts, sizes, ends = (borrowed(data), borrowed(seg_start), borrowed(seg_size),
                                 borrowed(seg_end))
    for f in range(n):
        if f + PREFETCH_FLOWS < n and size > 0:
            # the first record header of a later flow's directions (see tcp_stream.prefetch:
            # each walk starts with a wait for the capture's line otherwise)
            # every segment's first line, not only the first: a record header that settles a
            # direction (CCS, application data) opens a later packet of the flow, as far from
            # the first as any other flow's
            for d in range(2):
                ahead = first_seg[f + PREFETCH_FLOWS, d]
                stop = min(end_seg[f + PREFETCH_FLOWS, d], ahead + PREFETCH_SEGMENTS)
                for s in range(ahead, stop):
                    prefetch(data, min(max(seg_start[s], 0), size - 1))
        for d in range(2):
            lo, hi = first_seg[f, d], end_seg[f, d]
            if hi > lo:
                out[f, d] = seg_end[hi - 1] - (seg_end[lo] - seg_size[lo])
        lo, hi = first_seg[f, 1], end_seg[f, 1]
        at = _settled_at(view, starts, sizes, ends, lo, hi, SEEN_APPDATA)
        if at >= 0:
            out[f, 1] = at
        want = APPDATA_AFTER_FIRST | SEEN_APPDATA
        if at < 0:
            want |= SEEN_CCS
        lo, hi = first_seg[f, 0], end_seg[f, 0]
        at = _settled_at(view, starts, sizes, ends, lo, hi, want)
        if at >= 0:
            out[f, 0] = at
    return out


@njit
def _client_hello(hs: np.ndarray, pos: int, end: int, key: np.ndarray, at: int
                  ) -> tuple[bool, int, int, int, int]:
    """Read the ClientHello body hs[pos:end]; write its client key to key[at:].

    Returns (ok, sni_start, sni_stop, key_stop, offers): offers has CLIENT_TICKET (a
    non-empty SessionTicket extension) and CLIENT_PSK (pre_shared_key) set. The key:
    version (2 bytes), then seven sections of a 4-byte length and bytes: cipher suites,
    extension types (2 bytes each, in order), ALPN names (1-byte length + name each, over
    every ALPN extension), and the raw lists of the last supported_groups,
    ec_point_formats, signature_algorithms and supported_versions extensions. Lists stop at
    MAX_LIST entries. The SNI is the first non-empty host_name entry.
    """
    if end - pos < 34:
        return False, 0, 0, at, 0
    key[at] = hs[pos]
    key[at + 1] = hs[pos + 1]
    _, p = _span(hs, pos + 34, end, 1)  # session id (after version and the 32-byte random)
    if p < 0:
        return False, 0, 0, at, 0
    cipher_start, p = _span(hs, p, end, 2)
    if p < 0 or (p - cipher_start) % 2:
        return False, 0, 0, at, 0
    k = _put_section(key, at + 2, hs, cipher_start,
                     cipher_start + min(p - cipher_start, 2 * MAX_LIST))
    _, p = _span(hs, p, end, 1)  # compression methods
    if p < 0:
        return False, 0, 0, at, 0
    if p == end:  # no extensions block (SSLv3 / old clients): six empty sections
        for _ in range(6):
            _put_length(key, k, 0)
            k += 4
        return True, 0, 0, k, 0
    first, block_end = _span(hs, p, end, 2)
    if block_end < 0:
        return False, 0, 0, at, 0
    # Pass 1: frame the extensions (all must fit), write their types.
    types_at = k
    k += 4
    count = 0
    p = first
    while p < block_end and count < MAX_LIST:
        if p + 2 > block_end:
            return False, 0, 0, at, 0
        _, p_next = _span(hs, p + 2, block_end, 2)
        if p_next < 0:
            return False, 0, 0, at, 0
        key[k] = hs[p]
        key[k + 1] = hs[p + 1]
        k += 2
        count += 1
        p = p_next
    _put_length(key, types_at, k - types_at - 4)
    # Pass 2: their contents (framing checked above).
    alpn_at = k
    k += 4
    alpn_count = 0
    sni_start = sni_stop = 0
    groups_start = groups_stop = formats_start = formats_stop = 0
    sigs_start = sigs_stop = versions_start = versions_stop = 0
    offers = 0
    p = first
    for _ in range(count):
        ext_type = _u16(hs, p)
        start = p + 4
        stop = start + _u16(hs, p + 2)
        p = stop
        if ext_type == EXT_SNI:
            at_name, names_end = _span(hs, start, stop, 2)
            if names_end < 0:
                return False, 0, 0, at, 0
            while at_name < names_end:
                name_type = hs[at_name]
                name_start, name_stop = _span(hs, at_name + 1, names_end, 2)
                if name_stop < 0:
                    return False, 0, 0, at, 0
                if name_type == 0 and sni_stop == sni_start:
                    sni_start, sni_stop = name_start, name_stop
                at_name = name_stop
        elif ext_type == EXT_ALPN:
            at_item, list_end = _span(hs, start, stop, 2)
            if list_end < 0:
                return False, 0, 0, at, 0
            while at_item < list_end and alpn_count < MAX_LIST:
                item_start, item_stop = _span(hs, at_item, list_end, 1)
                if item_stop < 0:
                    return False, 0, 0, at, 0
                key[k] = item_stop - item_start
                k = copy_bytes(key, k + 1, hs, item_start, item_stop)
                alpn_count += 1
                at_item = item_stop
        elif ext_type == EXT_GROUPS or ext_type == EXT_SIG_ALGS:
            list_start, list_stop = _span(hs, start, stop, 2)
            if list_stop < 0 or (list_stop - list_start) % 2:
                return False, 0, 0, at, 0
            list_stop = list_start + min(list_stop - list_start, 2 * MAX_LIST)
            if ext_type == EXT_GROUPS:
                groups_start, groups_stop = list_start, list_stop
            else:
                sigs_start, sigs_stop = list_start, list_stop
        elif ext_type == EXT_POINT_FORMATS:
            formats_start, formats_stop = _span(hs, start, stop, 1)
            if formats_stop < 0:
                return False, 0, 0, at, 0
        elif ext_type == EXT_SUPPORTED_VERSIONS:
            list_start, list_stop = _span(hs, start, stop, 1)
            if list_stop < 0 or (list_stop - list_start) % 2:
                return False, 0, 0, at, 0
            versions_start = list_start
            versions_stop = list_start + min(list_stop - list_start, 2 * MAX_LIST)
        elif ext_type == EXT_SESSION_TICKET:
            if stop > start:
                offers |= CLIENT_TICKET
        elif ext_type == EXT_PRE_SHARED_KEY:
            offers |= CLIENT_PSK
    _put_length(key, alpn_at, k - alpn_at - 4)
    k = _put_section(key, k, hs, groups_start, groups_stop)
    k = _put_section(key, k, hs, formats_start, formats_stop)
    k = _put_section(key, k, hs, sigs_start, sigs_stop)
    k = _put_section(key, k, hs, versions_start, versions_stop)
    return True, sni_start, sni_stop, k, offers


@njit
def client_hellos(hs: np.ndarray, hs_start: np.ndarray, hs_stop: np.ndarray,
                  flags: np.ndarray, data_len: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                             np.ndarray]:
    """The ClientHello of each flow: its client direction is hs[hs_start[f]:hs_stop[f]]
    (frame_records' output with its flags) of data_len[f] bytes on the wire.

    Returns (status, sni_start, sni_stop, keys, key_start, key_stop): status HELLO_OK, or
    HELLO_INCOMPLETE while no complete handshake message has arrived (the bytes end inside
    one, or fewer than 9 bytes came), else HELLO_MALFORMED (the first message is not a
    ClientHello, or does not fit its layout). The SNI is hs[sni_start:sni_stop]; the client
    key (see _client_hello) is keys[key_start:key_stop].
    """
    n = hs_start.size
    capacity = 0
    for f in range(n):
        capacity += hs_stop[f] - hs_start[f] + CLIENT_KEY_SLACK
    keys = np.empty(capacity, np.uint8)
    status = np.empty(n, np.int8)
    sni_start = np.zeros(n, np.int64)
    sni_stop = np.zeros(n, np.int64)
    key_start = np.empty(n, np.int64)
    key_stop = np.empty(n, np.int64)
    at = 0
    # _client_hello's arrays without reference counts (see frame_records_into)
    src, dst = borrowed(hs), borrowed(keys)
    for f in range(n):
        key_start[f] = at
        status[f], sni_start[f], sni_stop[f], at, _, _ = _client_row(
            src, hs_start[f], hs_stop[f], flags[f], data_len[f], dst, at)
        key_stop[f] = at  # the next key right after this one (see server_flights)
    return status, sni_start, sni_stop, keys, key_start, key_stop


@njit(inline="always")
def _client_row(hs: np.ndarray, start: int, end: int, flags: int, data_len: int,
                key: np.ndarray, at: int) -> tuple[np.int8, int, int, int, int, int]:
    """client_hellos of one flow (client direction hs[start:end]): (status, sni_start,
    sni_stop, key_stop, offers, body_stop); its key from key[at]; offers: _client_hello's;
    body_stop: the end of the ClientHello (when HELLO_OK)."""
    body_stop = -1
    if start + 4 <= end:
        body_stop = start + 4 + _u24(hs, start + 1)
    if body_stop < 0 or body_stop > end:  # no complete message
        truncated = (flags & RECORD_TRUNCATED) != 0 or end > start
        return (np.int8(HELLO_INCOMPLETE if truncated or data_len < 9 else HELLO_MALFORMED),
                0, 0, at, 0, body_stop)
    if hs[start] != HS_CLIENT_HELLO:
        return np.int8(HELLO_MALFORMED), 0, 0, at, 0, body_stop
    ok, sni_start, sni_stop, key_stop, offers = _client_hello(hs, start + 4, body_stop, key, at)
    if not ok:
        return np.int8(HELLO_MALFORMED), sni_start, sni_stop, key_stop, 0, body_stop
    return np.int8(HELLO_OK), sni_start, sni_stop, key_stop, offers, body_stop


@njit(inline="always")
def _session_word(hs: np.ndarray, at: int, size: int) -> np.uint64:
    """The first (up to 8) bytes of the session id hs[at:at + size] and its size as one word:
    a server's session id is compared with the client's by it first (the client's bytes are
    far behind in hs by then, a cache miss; they are read only when the words match)."""
    if size >= 8:  # one load (session ids are 32 bytes, nearly always)
        return _load_u64(hs, at) ^ np.uint64(size)
    word = np.uint64(size)
    for j in range(at, at + size):
        word = (word << np.uint64(8)) | np.uint64(hs[j])
    return word


@njit(inline="always")
def _client_session(hs: np.ndarray, start: int, body_stop: int, end: int, offers: int,
                    flags: int) -> tuple[int, int, np.uint64, bool]:
    """What the readable ClientHello at hs[start:body_stop] (its direction ends at `end`)
    brings to resumption, as Zeek's ssl analyzer decides it: (session id start, its length
    (0: none -- empty, or 32 zero bytes), its _session_word, ticket resumption). Ticket
    resumption: a non-empty SessionTicket offered with no session id, then the client's
    ChangeCipherSpec with no ClientKeyExchange before it (an abbreviated handshake)."""
    sid_at = start + 4 + 35  # header, version, random, then the 1-byte length
    size = np.int64(hs[sid_at - 1])  # the ClientHello was read: it fits
    if size == 32 and (_load_u64(hs, sid_at) | _load_u64(hs, sid_at + 8)
                       | _load_u64(hs, sid_at + 16) | _load_u64(hs, sid_at + 24)) == 0:
        size = 0
    ticket = False
    if (offers & CLIENT_TICKET) != 0 and size == 0 and (flags & SEEN_CCS) != 0:
        # the client's cleartext messages after its ClientHello (before its CCS)
        ticket = True
        pos = body_stop
        while pos + 4 <= end:
            if hs[pos] == HS_CLIENT_KEY_EXCHANGE:
                ticket = False
                break
            pos += 4 + _u24(hs, pos + 1)
    return sid_at, size, _session_word(hs, sid_at, size), ticket


@njit
def _server_hello(hs: np.ndarray, pos: int, end: int, key: np.ndarray, at: int
                  ) -> tuple[bool, int, int, int, int, int, int, int, bool]:
    """Read the ServerHello body hs[pos:end]; write its server key (version, cipher and the
    extension types, 2 bytes each) to key[at:].

    Returns (ok, version, cipher, selected_version, alpn_start, alpn_stop, key_stop, group,
    psk); the ALPN protocol is the first name of the last ALPN extension with a non-empty
    list; group: the key_share extension's (-1: none) -- a HelloRetryRequest's is the group
    alone, a ServerHello's a KeyShareEntry, which starts with it; psk: a pre_shared_key
    extension (the server accepted a PSK: TLS 1.3 resumption).
    """
    p = pos + 2 + 32  # version, random
    if p > end:
        return False, 0, 0, 0, -1, -1, at, -1, False
    _, p = _span(hs, p, end, 1)  # session id
    if p < 0 or p + 3 > end:  # cipher suite, compression method
        return False, 0, 0, 0, -1, -1, at, -1, False
    version = _u16(hs, pos)
    cipher = _u16(hs, p)
    key[at] = hs[pos]  # byte stores: a slice makes two views (see copy_bytes)
    key[at + 1] = hs[pos + 1]
    key[at + 2] = hs[p]
    key[at + 3] = hs[p + 1]
    k = at + 4
    p += 3
    selected = 0
    alpn_start = alpn_stop = -1
    group = -1
    psk = False
    if p == end:
        return True, version, cipher, selected, alpn_start, alpn_stop, k, group, psk
    p, block_end = _span(hs, p, end, 2)
    if block_end < 0:
        return False, 0, 0, 0, -1, -1, at, -1, False
    count = 0
    while p < block_end and count < MAX_LIST:
        if p + 2 > block_end:
            return False, 0, 0, 0, -1, -1, at, -1, False
        ext_type = _u16(hs, p)
        start, stop = _span(hs, p + 2, block_end, 2)
        if stop < 0:
            return False, 0, 0, 0, -1, -1, at, -1, False
        key[k] = hs[p]
        key[k + 1] = hs[p + 1]
        k += 2
        count += 1
        p = stop
        if ext_type == EXT_ALPN:
            names_start, names_stop = _span(hs, start, stop, 2)
            if names_stop < 0:
                return False, 0, 0, 0, -1, -1, at, -1, False
            if names_stop > names_start:
                name_start, name_stop = _span(hs, names_start, names_stop, 1)
                if name_stop < 0:
                    return False, 0, 0, 0, -1, -1, at, -1, False
                alpn_start, alpn_stop = name_start, name_stop
        elif ext_type == EXT_SUPPORTED_VERSIONS and stop - start >= 2:
            selected = _u16(hs, start)
        elif ext_type == EXT_KEY_SHARE and stop - start >= 2:
            group = _u16(hs, start)
        elif ext_type == EXT_PRE_SHARED_KEY:
            psk = True
    return True, version, cipher, selected, alpn_start, alpn_stop, k, group, psk


@njit
def server_flights(hs: np.ndarray, hs_start: np.ndarray, hs_stop: np.ndarray
                   ) -> tuple[np.ndarray, ...]:
    """The server's cleartext handshake messages of each flow, hs[hs_start[f]:hs_stop[f]].

    Reads the first ServerHello (after a HelloRetryRequest: the next one too, whose facts
    replace the retry's, see _server_row) and, after it, the leaf (first) certificate of
    the first Certificate message with a non-empty one and the named curve of the first
    ServerKeyExchange; stops at the first message that does not fit its layout
    (`malformed`). Returns (found, malformed, version, cipher, selected_version,
    alpn_start, alpn_stop, cert_start, cert_stop, keys, key_start, key_stop, curve, psk):
    found = a ServerHello was read; the ALPN name and the certificate DER are hs slices (-1:
    none); the server key (see _server_hello) is keys[key_start:key_stop]; curve and psk
    as _server_row gives them (without a client: no session id is echoed).
    """
    n = hs_start.size
    capacity = 0
    for f in range(n):
        capacity += hs_stop[f] - hs_start[f] + SERVER_KEY_SLACK
    keys = np.empty(capacity, np.uint8)
    found = np.zeros(n, np.bool_)
    malformed = np.zeros(n, np.bool_)
    version = np.zeros(n, np.int64)
    cipher = np.zeros(n, np.int64)
    selected = np.zeros(n, np.int64)
    alpn_start = np.full(n, -1, np.int64)
    alpn_stop = np.full(n, -1, np.int64)
    cert_start = np.full(n, -1, np.int64)
    cert_stop = np.full(n, -1, np.int64)
    key_start = np.empty(n, np.int64)
    key_stop = np.empty(n, np.int64)
    curve = np.full(n, -1, np.int64)
    psk = np.zeros(n, np.bool_)
    at = 0
    # the helpers' arrays without reference counts (see frame_records_into)
    src, dst = borrowed(hs), borrowed(keys)
    for f in range(n):
        key_start[f] = at
        (found[f], malformed[f], version[f], cipher[f], selected[f], alpn_start[f],
         alpn_stop[f], cert_start[f], cert_stop[f], at, curve[f], psk[f],
         _) = _server_row(src, hs_start[f], hs_stop[f], dst, at, 0, 0, np.uint64(0))
        # the next key right after this one: keys are a few bytes, regions of a flight's
        # size apart made every page of `keys` fault in (~1 page fault per flow)
        key_stop[f] = at
    return (found, malformed, version, cipher, selected, alpn_start, alpn_stop, cert_start,
            cert_stop, keys, key_start, key_stop, curve, psk)


@njit(inline="always")
def _server_row(hs: np.ndarray, pos: int, end: int, key: np.ndarray, at: int, sid_at: int,
                sid_size: int, sid_word: np.uint64
                ) -> tuple[bool, bool, int, int, int, int, int, int, int, int, int, bool, bool]:
    """server_flights of one flow (server messages hs[pos:end]): (found, malformed,
    version, cipher, selected, alpn_start, alpn_stop, cert_start, cert_stop, key_stop,
    curve, psk, echo); its key from key[at].

    curve: the group of the ServerHello's key_share, or (later in the flight, so it wins,
    as in Zeek) the named curve of an ECDHE suite's ServerKeyExchange, read when its first
    SKE_KEPT body bytes are there; -1: none. psk: the ServerHello's pre_shared_key. echo:
    before TLS 1.3, the ServerHello's session id is the client's (hs[sid_at:sid_at +
    sid_size], word sid_word, see _client_session; size 0: none). After a
    HelloRetryRequest, the next ServerHello gives all of these (curve: the retry's group
    when it has no key_share); one that cannot be read leaves the retry's (malformed)."""
    found = malformed = psk = echo = exchanged = retry = False
    version = cipher = selected = 0
    alpn_start = alpn_stop = cert_start = cert_stop = curve = -1
    key_stop = at
    while pos + 4 <= end:
        msg_type = hs[pos]
        size = _u24(hs, pos + 1)
        stop = pos + 4 + size
        if (msg_type == HS_SERVER_KEY_EXCHANGE and found and not exchanged
                and size >= SKE_KEPT and pos + 4 + SKE_KEPT <= end):
            # before the `stop > end` test: the curve is in the body's first bytes, which a
            # server direction keeps of this message (see _server_messages)
            exchanged = True
            if ECDHE_SUITES[cipher] and hs[pos + 4] == CURVE_TYPE_NAMED:
                curve = _u16(hs, pos + 5)
        if stop > end:
            break  # the flight continues past the reassembled bytes
        if msg_type == HS_SERVER_HELLO and (not found or retry):
            # the first ServerHello, or the real one after a HelloRetryRequest (whose values
            # it replaces, as in Zeek's ssl.log); its key is written after the retry's, so
            # that a malformed one leaves the retry's whole
            k = key_stop if found else at
            ok, v, c, sv, a0, a1, k_stop, group, accepted = _server_hello(hs, pos + 4, stop,
                                                                          key, k)
            if not ok:
                malformed = True
                break
            if found:
                for j in range(k_stop - k):  # overlapping: not copy_bytes' memcpy
                    key[at + j] = key[k + j]
                k_stop = at + k_stop - k
                if group < 0:  # Zeek keeps the last key_share seen
                    group = curve
            retry = not found and _is_retry(hs, pos + 4, stop)
            found = True
            version, cipher, selected, alpn_start, alpn_stop = v, c, sv, a0, a1
            key_stop, curve, psk = k_stop, group, accepted
            # its session id (the hello was read: it fits) against the client's; not in TLS
            # 1.3, where servers echo it always (and the client's bytes are not read: far
            # behind in hs by now, a cache miss)
            echo = sid_size > 0 and _before_13(selected if selected != 0 else version) \
                and np.int64(hs[pos + 4 + 34]) == sid_size \
                and _session_word(hs, pos + 4 + 35, sid_size) == sid_word \
                and equal_bytes(hs, pos + 4 + 35, hs, sid_at, sid_size)
        elif msg_type == HS_CERTIFICATE and found and cert_stop <= cert_start:
            chain_start, chain_stop = _span(hs, pos + 4, stop, 3)
            if chain_stop < 0:
                malformed = True
                break
            leaf_start, leaf_stop = _span(hs, chain_start, chain_stop, 3)
            if leaf_stop < 0:
                malformed = True
                break
            cert_start, cert_stop = leaf_start, leaf_stop
        pos = stop
    return (found, malformed, version, cipher, selected, alpn_start, alpn_stop, cert_start,
            cert_stop, key_stop, curve, psk, echo)


@njit
def _parse_directions(hs: np.ndarray, buf: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                      n: int, client_len: np.ndarray) -> tuple[np.ndarray, ...]:
    """frame_records_into(hs, buf, starts, stops, n), then client_hellos of directions 0..n-1
    and server_flights of n..2n-1, in one pass: each direction is read right after it is
    framed, while its bytes are in the nearest caches (a second pass over `hs`, megabytes a
    batch, read them back from L3). Returns (hs_start, hs_stop, flags, client_hellos'
    six, server_flights' first twelve results, curve, resumed).

    resumed (Zeek's ssl.log): ticket resumption (see _client_session); or a ServerHello
    that echoes the client's session id before TLS 1.3, or that accepts a pre_shared_key
    the client offered (TLS 1.3); see _server_row."""
    m = starts.size
    if hs.size < hs_capacity(buf, starts, stops):
        raise ValueError("hs is smaller than hs_capacity")
    hs_start = np.empty(m, np.int64)
    hs_stop = np.empty(m, np.int64)
    flags = np.zeros(m, np.uint8)
    # keys: a direction's hs bytes are at most its size (see client_hellos / server_flights)
    client_room = server_room = 0
    for d in range(m):
        size = max(min(stops[d], buf.size) - max(starts[d], 0), 0)
        if d < n:
            client_room += size + CLIENT_KEY_SLACK
        else:
            server_room += size + SERVER_KEY_SLACK
    ckeys = np.empty(client_room, np.uint8)
    status = np.empty(n, np.int8)
    sni_start = np.zeros(n, np.int64)
    sni_stop = np.zeros(n, np.int64)
    ck_start = np.empty(n, np.int64)
    ck_stop = np.empty(n, np.int64)
    skeys = np.empty(server_room, np.uint8)
    found = np.zeros(n, np.bool_)
    malformed = np.zeros(n, np.bool_)
    version = np.zeros(n, np.int64)
    cipher = np.zeros(n, np.int64)
    selected = np.zeros(n, np.int64)
    alpn_start = np.full(n, -1, np.int64)
    alpn_stop = np.full(n, -1, np.int64)
    cert_start = np.full(n, -1, np.int64)
    cert_stop = np.full(n, -1, np.int64)
    sk_start = np.empty(n, np.int64)
    sk_stop = np.empty(n, np.int64)
    curve = np.full(n, -1, np.int64)
    resumed = np.zeros(n, np.bool_)
    # a client's resumption facts (_client_session), for its server's direction
    offers = np.zeros(n, np.int64)
    sid_at = np.zeros(n, np.int64)
    sid_size = np.zeros(n, np.int64)
    sid_word = np.zeros(n, np.uint64)
    ticket = np.zeros(n, np.bool_)
    out = ca = sa = 0
    # the helpers' arrays without reference counts (see frame_records_into)
    src, dst, ck, sk = borrowed(buf), borrowed(hs), borrowed(ckeys), borrowed(skeys)
    for d in range(m):
        _prefetch_direction(src, starts, stops, d)
        hs_start[d] = out
        out, flags[d] = _frame_direction(dst, out, src, starts[d], stops[d], d >= n)
        hs_stop[d] = out
        if d < n:
            ck_start[d] = ca
            status[d], sni_start[d], sni_stop[d], ca, offers[d], body_stop = _client_row(
                dst, hs_start[d], out, flags[d], client_len[d], ck, ca)
            ck_stop[d] = ca
            if status[d] == HELLO_OK:
                sid_at[d], sid_size[d], sid_word[d], ticket[d] = _client_session(
                    dst, hs_start[d], body_stop, out, offers[d], flags[d])
        else:
            f = d - n
            sk_start[f] = sa
            (found[f], malformed[f], version[f], cipher[f], selected[f], alpn_start[f],
             alpn_stop[f], cert_start[f], cert_stop[f], sa, curve[f], psk,
             echo) = _server_row(dst, hs_start[d], out, sk, sa, sid_at[f], sid_size[f],
                                 sid_word[f])
            sk_stop[f] = sa
            resumed[f] = ticket[f] or echo or (psk and (offers[f] & CLIENT_PSK) != 0)
    return (hs_start, hs_stop, flags, status, sni_start, sni_stop, ckeys, ck_start, ck_stop,
            found, malformed, version, cipher, selected, alpn_start, alpn_stop, cert_start,
            cert_stop, skeys, sk_start, sk_stop, curve, resumed)


@njit(inline="always")
def _before_13(version: int) -> bool:
    """A negotiated version before TLS 1.3 and its drafts (0x7Fxx), as Zeek tells them."""
    return version != 0x0304 and version // 0xFF != 0x7F


# --- all flows of a batch at once -------------------------------------------------------------


@dataclass
class ParsedFlows:
    """The kernels' findings for n flows (columns indexed by flow; slices are into `hs`)."""

    hs: np.ndarray  # uint8: every direction's cleartext handshake bytes, concatenated (a
    # server's: its messages as server_flights reads them, see frame_records)
    status: np.ndarray  # int8: HELLO_OK / HELLO_INCOMPLETE / HELLO_MALFORMED
    sni_start: np.ndarray
    sni_stop: np.ndarray
    client_keys: np.ndarray  # uint8: client keys (see _client_hello), one region per flow
    client_key_start: np.ndarray
    client_key_stop: np.ndarray
    server_found: np.ndarray  # bool: a ServerHello was read
    server_malformed: np.ndarray  # bool: a server message after the ClientHello was unreadable
    server_version: np.ndarray
    cipher: np.ndarray
    selected_version: np.ndarray  # supported_versions in the ServerHello (0: none)
    alpn_start: np.ndarray  # -1: no ALPN protocol chosen
    alpn_stop: np.ndarray
    cert_start: np.ndarray  # -1: no certificate read
    cert_stop: np.ndarray
    server_keys: np.ndarray  # uint8: server keys (see _server_hello)
    server_key_start: np.ndarray
    server_key_stop: np.ndarray
    established: np.ndarray  # bool
    curve: np.ndarray  # int64: the key exchange group (see _server_row), -1: none
    resumed: np.ndarray  # bool: a resumed session (see _parse_directions)


def parse_flows(client_data: Sequence[bytes], server_data: Sequence[bytes]) -> ParsedFlows:
    """Both directions' reassembled bytes of n flows -> what their handshakes show."""
    n = len(client_data)
    parts = [*client_data, *server_data]
    sizes = np.fromiter(map(len, parts), np.int64, len(parts))
    stops = np.cumsum(sizes)
    buf = np.frombuffer(b"".join(parts), np.uint8)
    return parse_joined(buf, np.stack([stops[:n] - sizes[:n], stops[n:] - sizes[n:]], axis=1),
                        np.stack([sizes[:n], sizes[n:]], axis=1))


@njit
def _direction_bounds(buf_size: int, start: np.ndarray, length: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(starts, stops, client_len, hs capacity) of the 2n directions of (n, 2) start/length
    columns: clients' (side 0) first, then servers'; client_len = length[:, 0]; the capacity
    is hs_capacity's (sizes clipped to a buffer of buf_size bytes)."""
    n = start.shape[0]
    starts = np.empty(2 * n, np.int64)
    stops = np.empty(2 * n, np.int64)
    client_len = np.empty(n, np.int64)
    need = 0
    for side in range(2):
        for i in range(n):
            a = np.int64(start[i, side])
            size = np.int64(length[i, side])
            starts[side * n + i] = a
            stops[side * n + i] = a + size
            if side == 0:
                client_len[i] = size
            clipped = min(a + size, buf_size) - max(a, 0)
            if clipped > 0:
                need += clipped
    return starts, stops, client_len, need


@njit
def _established(found: np.ndarray, selected: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Per flow (flags: n clients' then n servers'): handshake complete. TLS 1.3: the
    client's Finished (an encrypted record after its first); before 1.3: ChangeCipherSpec
    both ways, or the client's application data after its CCS, or the server's application
    data. Only with a ServerHello (`found`)."""
    n = found.size
    out = np.empty(n, np.bool_)
    for i in range(n):
        client = flags[i]
        server = flags[n + i]
        if selected[i] == 0x0304:
            done = (client & APPDATA_AFTER_FIRST) != 0
        else:
            done = ((client & SEEN_CCS) != 0
                    and ((server & SEEN_CCS) != 0 or (client & SEEN_APPDATA) != 0)) \
                or (server & SEEN_APPDATA) != 0
        out[i] = found[i] and done
    return out


def parse_joined(buf: np.ndarray, start: np.ndarray, length: np.ndarray,
                 hs_buffer: np.ndarray | None = None) -> ParsedFlows:
    """parse_flows of n flows whose direction d (0 client, 1 server) is buf[start[i, d] :
    start[i, d] + length[i, d]] (a StreamBatch's buffer: no bytes object per flow, no join).
    frame_records clips every direction to `buf`.

    hs_buffer: an array to write `hs` to when it is large enough, else a new one is made
    with a quarter to spare; the result's hs is that array, overwritten by the next call
    given it. The analyzer passes the previous batch's: a fresh multi-MB `hs` per batch
    faulted in a page per 4 KB written (~1,800 faults per 300k packets of the mix)."""
    n = start.shape[0]
    buf = read_only(buf)
    # (clients, then servers: one kernel instead of ~8 numpy passes and copies)
    starts, stops, client_len, need = _direction_bounds(
        buf.size, np.ascontiguousarray(start), np.ascontiguousarray(length))
    hs = hs_buffer
    if hs is None or hs.size < need:
        hs = np.empty(need if hs is None else need + need // 4, np.uint8)
    (_, _, flags, status, sni_start, sni_stop, ckeys, ck_start, ck_stop, found, malformed,
     version, cipher, selected, alpn_start, alpn_stop, cert_start, cert_stop, skeys, sk_start,
     sk_stop, curve, resumed) = _parse_directions(hs, buf, starts, stops, n, client_len)
    established = _established(found, selected, flags)
    return ParsedFlows(hs, status, sni_start, sni_stop, ckeys, ck_start, ck_stop, found,
                       malformed, version, cipher, selected, alpn_start, alpn_stop, cert_start,
                       cert_stop, skeys, sk_start, sk_stop, established, curve, resumed)


# --- Python objects of one flow (tests, tools; not the event path) ----------------------------

_LENGTH = struct.Struct("!I")


def _key_sections(key: bytes, start: int, count: int) -> list[bytes]:
    """`count` 4-byte-length-prefixed sections of key from `start`."""
    sections = []
    for _ in range(count):
        (size,) = _LENGTH.unpack_from(key, start)
        sections.append(key[start + 4 : start + 4 + size])
        start += 4 + size
    return sections


def _u16_list(data: bytes) -> list[int]:
    return list(struct.unpack(f"!{len(data) // 2}H", data))


def hello_from_key(key: bytes, server_name: str = "") -> ClientHello:
    """The ClientHello a client key (see _client_hello) was written from."""
    ciphers, types, alpn_raw, groups, formats, sigs, versions = _key_sections(key, 2, 7)
    alpn = []
    pos = 0
    while pos < len(alpn_raw):
        alpn.append(alpn_raw[pos + 1 : pos + 1 + alpn_raw[pos]])
        pos += 1 + alpn_raw[pos]
    extensions = _u16_list(types)
    return ClientHello(
        int.from_bytes(key[:2], "big"), _u16_list(ciphers), extensions, server_name=server_name,
        has_sni=EXT_SNI in extensions, alpn=alpn, groups=_u16_list(groups),
        point_formats=list(formats), sig_algs=_u16_list(sigs),
        supported_versions=_u16_list(versions))


def _server_name(hs: bytes, start: int, stop: int) -> str:
    return hs[start:stop].decode("ascii", "replace").lower() if stop > start else ""


def handshake_of(parsed: ParsedFlows, i: int) -> Handshake | None:
    """Flow i of `parsed` as objects; None while its ClientHello is incomplete.

    Raises MalformedTLS when the ClientHello cannot be read."""
    if parsed.status[i] == HELLO_INCOMPLETE:
        return None
    if parsed.status[i] == HELLO_MALFORMED:
        raise MalformedTLS("no readable ClientHello")
    hs = parsed.hs.tobytes()
    key = parsed.client_keys[parsed.client_key_start[i] : parsed.client_key_stop[i]].tobytes()
    hello = hello_from_key(key, _server_name(hs, parsed.sni_start[i], parsed.sni_stop[i]))
    out = Handshake(hello, established=bool(parsed.established[i]),
                    malformed=bool(parsed.server_malformed[i]), curve=int(parsed.curve[i]),
                    resumed=bool(parsed.resumed[i]))
    if parsed.server_found[i]:
        skey = parsed.server_keys[parsed.server_key_start[i] : parsed.server_key_stop[i]]
        alpn = hs[parsed.alpn_start[i] : parsed.alpn_stop[i]] if parsed.alpn_start[i] >= 0 \
            else b""
        out.server = ServerHello(int(parsed.server_version[i]), int(parsed.cipher[i]),
                                 _u16_list(skey[4:].tobytes()), alpn,
                                 int(parsed.selected_version[i]))
    if parsed.cert_start[i] >= 0:
        out.cert_der = hs[parsed.cert_start[i] : parsed.cert_stop[i]]
    return out


def parse_handshake(client_data: bytes, server_data: bytes) -> Handshake | None:
    """Both directions' bytes -> Handshake; None while the ClientHello is incomplete.

    Raises MalformedTLS when the ClientHello cannot be read.
    """
    return handshake_of(parse_flows([client_data], [server_data]), 0)


def parse_client_hello(body: bytes) -> ClientHello:
    """A ClientHello message body (after the 4-byte handshake header) -> ClientHello.

    Raises MalformedTLS when it does not fit its layout."""
    if len(body) >= 1 << 24:
        raise MalformedTLS("longer than a handshake message can be")
    message = bytes([HS_CLIENT_HELLO]) + len(body).to_bytes(3, "big") + body
    hs = np.frombuffer(bytearray(message), np.uint8)  # writable, as in parse_flows: one compile
    bounds = np.array([0], np.int64), np.array([len(message)], np.int64)
    status, sni_start, sni_stop, keys, key_start, key_stop = client_hellos(
        hs, *bounds, np.zeros(1, np.uint8), np.array([len(message)], np.int64))
    if status[0] != HELLO_OK:
        raise MalformedTLS("runs past its container")
    return hello_from_key(keys[key_start[0] : key_stop[0]].tobytes(),
                          _server_name(message, sni_start[0], sni_stop[0]))


# --- fingerprints ---------------------------------------------------------------------------


def _dash(values: list[int]) -> str:
    return "-".join(str(v) for v in values if not is_grease(v))


def ja3_string(hello: ClientHello) -> str:
    return ",".join([str(hello.version), _dash(hello.ciphers), _dash(hello.extensions),
                     _dash(hello.groups), _dash(hello.point_formats)])


def ja3s_string(hello: ServerHello) -> str:
    return ",".join([str(hello.version), str(hello.cipher), _dash(hello.extensions)])


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode("ascii"), usedforsecurity=False).hexdigest()


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def _alnum(byte: int) -> bool:
    return 0x30 <= byte <= 0x39 or 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def ja4_alpn(alpn: list[bytes]) -> str:
    """First and last character of the first ALPN value ("00" when none); hex when either
    end byte is not alphanumeric (JA4 spec)."""
    if not alpn or not alpn[0]:
        return "00"
    first = alpn[0]
    if _alnum(first[0]) and _alnum(first[-1]):
        return chr(first[0]) + chr(first[-1])
    text = first.hex()
    return text[0] + text[-1]


def ja4_parts(hello: ClientHello, transport: str = "t") -> tuple[str, str, str]:
    """(JA4_a, JA4_r cipher list, JA4_r extension_sigalg list); `transport` is JA4's first
    character: "t" TLS over TCP, "q" QUIC."""
    versions = [v for v in hello.supported_versions if not is_grease(v)]
    version = max(versions) if versions else hello.version
    ciphers = [c for c in hello.ciphers if not is_grease(c)]
    extensions = [e for e in hello.extensions if not is_grease(e)]
    a = "{}{}{}{:02d}{:02d}{}".format(transport, JA4_VERSIONS.get(version, "00"),
                                      "d" if hello.has_sni else "i",
                                      min(len(ciphers), 99), min(len(extensions), 99),
                                      ja4_alpn(hello.alpn))
    cipher_list = ",".join(sorted(f"{c:04x}" for c in ciphers))
    ext_list = ",".join(sorted(f"{e:04x}" for e in extensions if e not in (EXT_SNI, EXT_ALPN)))
    sig_algs = [s for s in hello.sig_algs if not is_grease(s)]
    if sig_algs:
        ext_list += "_" + ",".join(f"{s:04x}" for s in sig_algs)
    return a, cipher_list, ext_list


def ja4(hello: ClientHello, transport: str = "t") -> str:
    """FoxIO JA4: a_b_c; b/c are 12-hex sha256 prefixes, 000000000000 if empty. `transport`:
    "t" TLS over TCP, "q" QUIC."""
    a, cipher_list, ext_list = ja4_parts(hello, transport)
    has_extensions = any(e not in (EXT_SNI, EXT_ALPN) and not is_grease(e)
                         for e in hello.extensions)
    b = _sha12(cipher_list) if cipher_list else "000000000000"
    c = _sha12(ext_list) if has_extensions else "000000000000"
    return f"{a}_{b}_{c}"


# --- cipher names and certificates ------------------------------------------------------------

def cipher_name(number: int) -> str:
    """IANA name of a cipher suite, else 0x hex."""
    return CIPHER_SUITE_NAMES.get(number) or f"0x{number:04X}"


def certificate_names(der: bytes) -> tuple[str, str]:
    """(subject, issuer) RFC 4514 strings of a DER certificate; ("", "") when unreadable."""
    try:
        from cryptography import x509
    except ImportError:
        return "", ""
    try:
        cert = x509.load_der_x509_certificate(der)
        return cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
    except Exception:  # noqa: BLE001 - hostile DER: any parse error means "no names"
        return "", ""


# --- one flow -> one event ------------------------------------------------------------------


# --- per distinct ClientHello / ServerHello / certificate: cached ------------------------------

MAX_FINGERPRINTS = 4096  # distinct client stacks are few; a cache is cleared when full
MAX_CERTIFICATES = 1024  # distinct leaf certificates kept with their names
_CLIENT_SUMMARIES: dict[bytes, tuple[str, str, tuple[str, ...], int]] = {}
_SERVER_JA3S: dict[bytes, str] = {}
_CERTIFICATES: dict[bytes, tuple[str, str, str]] = {}


def client_summary(key: bytes) -> tuple[str, str, tuple[str, ...], int]:
    """(JA3 MD5, JA4, ALPN names offered, offered version) of a client key, cached: a
    network's clients share a few TLS stacks, so the hashing and string building is done
    once per distinct set of offered values."""
    found = _CLIENT_SUMMARIES.get(key)
    if found is None:
        if len(_CLIENT_SUMMARIES) >= MAX_FINGERPRINTS:
            _CLIENT_SUMMARIES.clear()
        hello = hello_from_key(key)
        found = _CLIENT_SUMMARIES[key] = (
            md5_hex(ja3_string(hello)), ja4(hello),
            tuple(p.decode("ascii", "replace") for p in hello.alpn), offered_version(hello))
    return found


def server_ja3s(key: bytes) -> str:
    """JA3S MD5 of a server key (version, cipher, extension types), cached."""
    found = _SERVER_JA3S.get(key)
    if found is None:
        if len(_SERVER_JA3S) >= MAX_FINGERPRINTS:
            _SERVER_JA3S.clear()
        hello = ServerHello(int.from_bytes(key[:2], "big"), int.from_bytes(key[2:4], "big"),
                            _u16_list(key[4:]))
        found = _SERVER_JA3S[key] = md5_hex(ja3s_string(hello))
    return found


def certificate(der: bytes) -> tuple[str, str, str]:
    """(SHA1 upper-case hex, subject, issuer) of a leaf certificate, cached: servers present
    the same one to every client."""
    found = _CERTIFICATES.get(der)
    if found is None:
        if len(_CERTIFICATES) >= MAX_CERTIFICATES:
            _CERTIFICATES.clear()
        sha1 = hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()
        found = _CERTIFICATES[der] = (sha1, *certificate_names(der))
    return found


@njit
def _event_bounds(at: np.ndarray, found: np.ndarray, ck_start: np.ndarray, ck_stop: np.ndarray,
                  sk_start: np.ndarray, sk_stop: np.ndarray, sni_start: np.ndarray,
                  sni_stop: np.ndarray, alpn_start: np.ndarray, alpn_stop: np.ndarray,
                  cert_start: np.ndarray, cert_stop: np.ndarray, selected: np.ndarray,
                  server_version: np.ndarray, cipher: np.ndarray, curve: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What event_columns reads of flows `at`, in one pass (was ~20 numpy takes and
    masks): (lo, hi, codes). lo/hi (5, m): the slice bounds of each row's client key,
    server key, SNI, chosen ALPN and leaf certificate (_EVENT_KINDS' order); codes (3, m):
    the negotiated version, the cipher and the curve (-1: none). Without a ServerHello
    (`found`): an empty server key and ALPN, codes -1; without a certificate: an empty
    slice."""
    m = at.size
    lo = np.zeros((N_KINDS, m), np.int64)
    hi = np.zeros((N_KINDS, m), np.int64)
    codes = np.full((N_CODES, m), -1, np.int64)
    for e in range(m):
        f = at[e]
        lo[KIND_CLIENT, e] = ck_start[f]
        hi[KIND_CLIENT, e] = ck_stop[f]
        lo[KIND_SNI, e] = sni_start[f]
        hi[KIND_SNI, e] = sni_stop[f]
        if cert_stop[f] > cert_start[f]:
            lo[KIND_LEAF, e] = cert_start[f]
            hi[KIND_LEAF, e] = cert_stop[f]
        if found[f]:
            lo[KIND_SERVER, e] = sk_start[f]
            hi[KIND_SERVER, e] = sk_stop[f]
            lo[KIND_ALPN, e] = alpn_start[f]
            hi[KIND_ALPN, e] = alpn_stop[f]
            codes[0, e] = selected[f] if selected[f] != 0 else server_version[f]
            codes[1, e] = cipher[f]
            codes[2, e] = curve[f]
    return lo, hi, codes


# --- distinct values known across batches ---------------------------------------------------

# What a known value is: a client key, a server key, an SNI, a chosen ALPN name, a leaf
# certificate (also the rows of event_columns' slice bounds, in this order).
KIND_CLIENT, KIND_SERVER, KIND_SNI, KIND_ALPN, KIND_LEAF = 0, 1, 2, 3, 4
N_KINDS = 5
# The codes an event's names are made from (KnownValues.code_columns): version, cipher, curve.
N_CODES = 3
# Which array a column's slices are of (_number_known's ckeys, skeys, hs).
SOURCE_CKEYS, SOURCE_SKEYS, SOURCE_HS = 0, 1, 2
_EVENT_SOURCES = np.array([SOURCE_CKEYS, SOURCE_SKEYS, SOURCE_HS, SOURCE_HS, SOURCE_HS], np.int64)
_EVENT_KINDS = np.arange(N_KINDS, dtype=np.int64)
MAX_KNOWN_VALUES = 1 << 16  # a KnownValues over this many values starts over
MAX_KNOWN_BYTES = 16 << 20  # ... or over this many bytes of them
KNOWN_MEMO_SLOTS = 256  # per kind, the value last seen with each memo key (power of 2)
_KNOWN_MIX = np.uint64(0x9E3779B97F4A7C15)  # spreads a memo key's bits into its top byte
_KIND_SALT = np.uint64(1099511628211)  # equal bytes of two kinds hash apart
# KnownValues.texts: per kind, the event columns a value of it gives
_KIND_TEXTS = {KIND_CLIENT: ("ja3", "ja4", "client_alpn"), KIND_SERVER: ("ja3s",),
               KIND_SNI: ("server_name",), KIND_ALPN: ("next_protocol",),
               KIND_LEAF: ("cert_sha1", "cert_subject", "cert_issuer")}


@njit
def _memo_key(src: np.ndarray, lo: int, hi: int) -> int:
    """A slice's memo slot, from its length and last 8 bytes (one word load): TLS's values
    repeat flow after flow, and a leaf certificate's last bytes (its signature) tell the
    leaves of equal length apart (the mix's 16 leaves have 7 lengths)."""
    n = hi - lo
    key = np.uint64(n)
    if n >= 8:
        key ^= _load_u64(src, hi - 8)
    else:
        for j in range(lo, hi):
            key = (key << np.uint64(8)) | np.uint64(src[j])
    return np.int64((key * _KNOWN_MIX) >> np.uint64(56)) & (KNOWN_MEMO_SLOTS - 1)


@njit
def _number_known(ckeys: np.ndarray, skeys: np.ndarray, hs: np.ndarray, sources: np.ndarray,
                  kinds: np.ndarray, lo: np.ndarray, hi: np.ndarray, state: np.ndarray,
                  slots: np.ndarray, value_hash: np.ndarray, value_kind: np.ndarray,
                  value_lo: np.ndarray, value_hi: np.ndarray, memo: np.ndarray,
                  arena: np.ndarray) -> tuple[bool, int, np.ndarray]:
    """KnownValues.number's kernel: (ok, room, ids). Column c's slices are of the array
    sources[c] picks, their values of kind kinds[c]; ids (k, m). ok False (nothing
    numbered): the arrays have no room for every slice being new (room: the arena bytes
    that takes). state = [values, arena bytes used], updated."""
    k, m = lo.shape
    ids = np.empty((k, m), np.int64)
    room = 0
    for c in range(k):
        size = ckeys.size if sources[c] == SOURCE_CKEYS else (
            skeys.size if sources[c] == SOURCE_SKEYS else hs.size)
        for i in range(m):
            a, b = clip_slice(size, lo[c, i], hi[c, i])
            room += b - a
    count, used = state[0], state[1]
    if (used + room > arena.size or count + k * m > value_lo.size
            or 2 * (count + k * m) > slots.size):
        return False, room, ids
    mask = slots.size - 1
    # the helpers' arrays without reference counts (see frame_records_into)
    a0, a1, a2, known = borrowed(ckeys), borrowed(skeys), borrowed(hs), borrowed(arena)
    # column by column: a column's source and kind are fixed in its loop (row by row,
    # choosing them per slice cost ~25% more)
    for c in range(k):
        src = a0 if sources[c] == SOURCE_CKEYS else (a1 if sources[c] == SOURCE_SKEYS else a2)
        kind = kinds[c]
        ahead = sources[c] == SOURCE_HS
        for i in range(m):
            if ahead and i + PREFETCH_FLOWS < m:
                # a later row's slice (a leaf certificate: its first 4 KB): hs slices lie a
                # flow's flight apart, and the hardware prefetcher does not follow (see
                # http_kernel._distinct_table); keys lie back to back, no hints needed
                a, b = clip_slice(src.size, lo[c, i + PREFETCH_FLOWS], hi[c, i + PREFETCH_FLOWS])
                for at in range(a, min(b, a + PREFETCH_DIRECTION_BYTES), 64):
                    prefetch(src, at)
            start, stop = clip_slice(src.size, lo[c, i], hi[c, i])
            n = stop - start
            slot_of_memo = _memo_key(src, start, stop)
            # the value last seen with this memo key: one compare, no hash (a wrong guess
            # costs that compare only)
            v = memo[kind, slot_of_memo]
            if not (v >= 0 and value_hi[v] - value_lo[v] == n
                    and equal_bytes(src, start, known, value_lo[v], n)):
                h = _slice_hash(src, start, stop) ^ (np.uint64(kind) * _KIND_SALT)
                slot = np.int64(h & np.uint64(mask))
                while True:
                    v = slots[slot]
                    if v < 0:  # new: its bytes kept in the arena (src is the batch's)
                        v = count
                        count += 1
                        slots[slot] = v
                        value_hash[v] = h
                        value_kind[v] = kind
                        value_lo[v] = used
                        used = copy_bytes(known, used, src, start, stop)
                        value_hi[v] = used
                        break
                    if (value_hash[v] == h and value_kind[v] == kind
                            and value_hi[v] - value_lo[v] == n
                            and equal_bytes(src, start, known, value_lo[v], n)):
                        break
                    slot = (slot + 1) & mask
                memo[kind, slot_of_memo] = v
            ids[c, i] = v
    state[0] = count
    state[1] = used
    return True, room, ids


@njit
def _rehash(slots: np.ndarray, value_hash: np.ndarray, count: int) -> None:
    """Every known value's slot in a new (larger) table `slots`."""
    slots[:] = -1
    mask = slots.size - 1
    for v in range(count):
        slot = np.int64(value_hash[v] & np.uint64(mask))
        while slots[slot] >= 0:
            slot = (slot + 1) & mask
        slots[slot] = v


@njit
def _code_rows(codes: np.ndarray, offered: np.ndarray, client: np.ndarray,
               code_row: np.ndarray, state: np.ndarray) -> tuple[bool, np.ndarray, np.ndarray]:
    """Each event's rows in KnownValues.names: (ok, rows (k, m), new (j, 3)). Codes: of
    table 0 the version, codes[0], else (-1: no ServerHello) the offered version of the
    row's client key (offered[client]); of table 1 the cipher, codes[1]; of table 2 (when
    given) the curve, codes[2]. code_row[t, c + 1] is the row of code c of table t (0: none
    yet; the code -1 has row 1, ""). new: (row, table, code) of the codes given a row here
    (state[0]: rows in use, updated). ok False (nothing changed): a code outside
    -1..0xFFFF, or more tables than code_row has."""
    k, m = codes.shape
    rows = np.empty((k, m), np.int64)
    if k > code_row.shape[0]:
        return False, rows, np.empty((0, 3), np.int64)
    for e in range(m):
        for t in range(k):
            code = codes[t, e]
            if t == 0 and code < 0:
                code = offered[client[e]]
            if code < -1 or code > 0xFFFF:
                return False, rows, np.empty((0, 3), np.int64)
            rows[t, e] = code + 1
    new = np.empty((k * m, 3), np.int64)
    j = 0
    count = state[0]
    for e in range(m):
        for t in range(k):
            at = rows[t, e]
            row = code_row[t, at]
            if row == 0:
                row = code_row[t, at] = count
                count += 1
                new[j, 0] = row
                new[j, 1] = t
                new[j, 2] = at - 1
                j += 1
            rows[t, e] = row
    state[0] = count
    return True, rows, new[:j]


class KnownValues:
    """The distinct client keys, server keys, SNIs, chosen ALPN names and leaf certificates
    an analyzer has seen, numbered across batches, with the event texts of each (JA3 / JA4 /
    offered ALPN list and version, JA3S, SNI lower-cased, ALPN, certificate SHA1 / subject /
    issuer): a batch's rows are numbered by one kernel (_number_known: an open-addressing
    table of hashes, equal hashes confirmed against the value's kept bytes, so exact; a memo
    per kind guesses first), and Python runs only for values never seen before. Numbering
    per batch (a table per column, then a bytes object, a dict lookup and a text per distinct
    value, every batch) cost ~0.3 ms a batch of 65,536 packets of the mix, most of it for the
    ~16 leaf certificates. Bounded: over max_values values or max_bytes bytes it starts over.
    Texts are shared by every row and batch with the value (the offered-ALPN lists too, as
    DNS shares answer lists: consumers only read them)."""

    def __init__(self, max_values: int = MAX_KNOWN_VALUES, max_bytes: int = MAX_KNOWN_BYTES
                 ) -> None:
        self.max_values, self.max_bytes = max_values, max_bytes
        # version, cipher and curve names, made once per code (_code_rows): numbering the
        # codes of every batch and making their names and column per batch cost ~0.3 ms per
        # 300k packets of the mix. Bounded by the codes (3 x 2**16): never cleared. code_row
        # is zeros (calloc: only pages written to are mapped)
        self.code_row = np.zeros((N_CODES, 0x10001), np.int64)
        self.code_row[:, 0] = 1  # the code -1: ""
        self.names = np.array([None, ""], dtype=object)
        self.name_count = np.array([2], np.int64)
        self.clear()

    def clear(self) -> None:
        self.state = np.zeros(2, np.int64)  # values, arena bytes used
        self.slots = np.full(64, -1, np.int64)
        self.value_hash = np.empty(0, np.uint64)
        self.value_kind = np.empty(0, np.int64)
        self.value_lo = np.empty(0, np.int64)
        self.value_hi = np.empty(0, np.int64)
        self.memo = np.full((N_KINDS, KNOWN_MEMO_SLOTS), -1, np.int64)
        self.arena = np.empty(0, np.uint8)
        self.offered = np.empty(0, np.int64)  # a client key's offered version
        self.texts = {name: np.empty(0, dtype=object)
                      for names in _KIND_TEXTS.values() for name in names}

    def number(self, ckeys: np.ndarray, skeys: np.ndarray, hs: np.ndarray,
               sources: np.ndarray, kinds: np.ndarray, lo: np.ndarray, hi: np.ndarray
               ) -> np.ndarray:
        """ids (k, m) of the values of slices [lo[c, i], hi[c, i]) (clipped) of the arrays
        sources[c] picks (SOURCE_*), of kinds[c]; new values get their texts."""
        if self.state[0] > self.max_values or self.state[1] > self.max_bytes:
            self.clear()
        count = int(self.state[0])
        lo = np.ascontiguousarray(lo, dtype=np.int64)
        hi = np.ascontiguousarray(hi, dtype=np.int64)
        while True:
            ok, room, ids = _number_known(ckeys, skeys, hs, sources, kinds, lo, hi, self.state,
                                          self.slots, self.value_hash, self.value_kind,
                                          self.value_lo, self.value_hi, self.memo, self.arena)
            if ok:
                break
            self._reserve(lo.size, room)
        if self.state[0] > count:
            self._describe(count, int(self.state[0]))
        return ids

    def code_columns(self, codes: np.ndarray, client: np.ndarray) -> tuple[np.ndarray, ...]:
        """(version, cipher[, curve]) name columns of codes (2 or 3, m) (see _code_rows;
        `client`: each row's client key number). ValueError when a code is not 16-bit."""
        ok, rows, new = _code_rows(codes, self.offered, client, self.code_row, self.name_count)
        if not ok:
            raise ValueError("a code is not 16-bit (or too many code tables)")
        if new.size:
            count = int(self.name_count[0])
            if self.names.size < count:
                names = np.empty(2 * count, dtype=object)
                names[: self.names.size] = self.names
                self.names = names
            for row, table, code in new.tolist():
                # module globals looked up per call (tests count the calls)
                self.names[row] = (version_name, cipher_name, curve_name)[table](code)
        return tuple(self.names[r] for r in rows)

    def _reserve(self, values: int, room: int) -> None:
        """Room for `values` more values of `room` more bytes (a quarter to spare)."""
        count, used = int(self.state[0]), int(self.state[1])
        if self.arena.size < used + room:
            arena = np.empty(used + room + (used + room) // 4, np.uint8)
            arena[:used] = self.arena[:used]
            self.arena = arena
        need = count + values
        if self.value_lo.size < need:
            size = need + need // 4
            for name in ("value_hash", "value_kind", "value_lo", "value_hi", "offered"):
                old = getattr(self, name)
                new = np.empty(size, old.dtype)
                new[:count] = old[:count]
                setattr(self, name, new)
            for name, old in self.texts.items():
                new = np.empty(size, dtype=object)
                new[:count] = old[:count]
                self.texts[name] = new
        if self.slots.size < 2 * need:
            size = self.slots.size
            while size < 4 * need:
                size *= 2
            self.slots = np.empty(size, np.int64)
            _rehash(self.slots, self.value_hash, count)

    def _describe(self, first: int, stop: int) -> None:
        """The texts of values first..stop-1 (new)."""
        texts, arena = self.texts, self.arena
        for v, kind, a, b in zip(range(first, stop), self.value_kind[first:stop].tolist(),
                                 self.value_lo[first:stop].tolist(),
                                 self.value_hi[first:stop].tolist(), strict=True):
            value = arena[a:b].tobytes()
            if kind == KIND_CLIENT:
                ja3, ja4_text, alpn, offered = client_summary(value)
                texts["ja3"][v], texts["ja4"][v] = ja3, ja4_text
                texts["client_alpn"][v] = list(alpn)
                self.offered[v] = offered
            elif kind == KIND_SERVER:
                texts["ja3s"][v] = server_ja3s(value) if value else ""
            elif kind == KIND_SNI:
                texts["server_name"][v] = value.decode("ascii", "replace").lower()
            elif kind == KIND_ALPN:
                texts["next_protocol"][v] = value.decode("ascii", "replace")
            else:
                found = certificate(value) if value else ("", "", "")
                texts["cert_sha1"][v], texts["cert_subject"][v], texts["cert_issuer"][v] = found


def event_columns(parsed: ParsedFlows, rows: Sequence[int] | np.ndarray,
                  known: KnownValues | None = None) -> dict[str, np.ndarray]:
    """The TLS-specific event columns of flows `rows` (with a readable ClientHello).

    Per distinct client key / server key / SNI / ALPN name / certificate (`known`, the
    analyzer's across batches; else a new one) and per distinct cipher / version: the
    (cached) strings; no Python object per row. Rows without a ServerHello have "" JA3S,
    cipher, chosen ALPN and curve."""
    at = np.asarray(rows, dtype=np.int64)
    lo, hi, codes = _event_bounds(
        at, parsed.server_found, parsed.client_key_start, parsed.client_key_stop,
        parsed.server_key_start, parsed.server_key_stop, parsed.sni_start, parsed.sni_stop,
        parsed.alpn_start, parsed.alpn_stop, parsed.cert_start, parsed.cert_stop,
        parsed.selected_version, parsed.server_version, parsed.cipher, parsed.curve)
    known = KnownValues() if known is None else known
    client, server, sni, alpn, leaf = known.number(
        parsed.client_keys, parsed.server_keys, parsed.hs, _EVENT_SOURCES, _EVENT_KINDS, lo, hi)
    texts = known.texts
    version, cipher, curve = known.code_columns(codes, client)
    return {
        "version": version, "server_name": texts["server_name"][sni],
        "client_alpn": texts["client_alpn"][client],
        "next_protocol": texts["next_protocol"][alpn], "cipher": cipher,
        "ja3": texts["ja3"][client], "ja4": texts["ja4"][client], "ja3s": texts["ja3s"][server],
        "cert_sha1": texts["cert_sha1"][leaf], "cert_subject": texts["cert_subject"][leaf],
        "cert_issuer": texts["cert_issuer"][leaf],
        "established": parsed.established[at].astype(np.bool_),
        "curve": curve, "resumed": parsed.resumed[at].astype(np.bool_),
    }


# --- the analyzer ---------------------------------------------------------------------------


@njit
def _decide(status: np.ndarray, established: np.ndarray, server_malformed: np.ndarray,
            final: np.ndarray, capped: np.ndarray, gap: np.ndarray, ended: np.ndarray,
            first_ts: np.ndarray, start_ts: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, int, int, np.ndarray]:
    """What to do with each flow of a batch, in one pass (was ~25 numpy calls):
    (rows to emit, rows to release, malformed count, incomplete count, each emitted row's
    time: its first client packet's, else its start).

    Emit: a readable ClientHello and the handshake complete or the flow ended. Release:
    the flow is done with (emitted and still held, or malformed) or can never show a
    ClientHello (incomplete while the client side can bring no more bytes: capped, gap or
    ended). Counted malformed: the ClientHello, or a server message of an emitted flow."""
    n = status.size
    emit = np.empty(n, np.bool_)
    release = np.empty(n, np.bool_)
    n_emit = n_release = n_malformed = n_incomplete = 0
    for i in range(n):
        stalled = capped[i, 0] or gap[i, 0] or ended[i, 0]
        bad = status[i] == HELLO_MALFORMED
        waiting = status[i] == HELLO_INCOMPLETE
        out = status[i] == HELLO_OK and (established[i] or final[i])
        gone = bad or (waiting and stalled and not final[i]) or (out and not final[i])
        emit[i] = out
        release[i] = gone
        if out:
            n_emit += 1
        if gone:
            n_release += 1
        if bad:
            n_malformed += 1
        if out and server_malformed[i]:
            n_malformed += 1
        if waiting and (final[i] or stalled):
            n_incomplete += 1
    at = np.empty(n_emit, np.int64)
    released = np.empty(n_release, np.int64)
    ts = np.empty(n_emit, np.int64)
    e = r = 0
    for i in range(n):
        if emit[i]:
            at[e] = i
            ts[e] = first_ts[i, 0] if first_ts[i, 0] >= 0 else start_ts[i]
            e += 1
        if release[i]:
            released[r] = i
            r += 1
    return at, released, n_malformed, n_incomplete, ts


def _keys_at(batch: StreamColumns, rows: np.ndarray) -> list:
    """batch.keys[i] for i in rows, made for those rows only: a StreamBatch builds its keys
    for every row (five tolist calls and a zip, ~0.7 ms per 300k packets of the mix), while
    the analyzer releases few (its fast-path flows end in their batch)."""
    if isinstance(batch, ChunkColumns):  # keys already made, from the chunks
        keys = batch.keys
        return [keys[i] for i in rows.tolist()]
    return list(zip(batch.vlan[rows].tolist(), batch.client_ip[rows].tolist(),
                    batch.client_port[rows].tolist(), batch.server_ip[rows].tolist(),
                    batch.server_port[rows].tolist(), strict=True))



class TlsAnalyzer(Analyzer):
    """TLS handshakes on any TCP port (see the module doc). Settings (all optional):
    max_bytes_per_dir, max_flows, max_bytes_total, idle_timeout_s."""

    def __init__(self, config: Mapping, observer_name: str, ingress_zone: str) -> None:
        super().__init__(config, observer_name, ingress_zone)
        self.streams = StreamCollector(
            set(config.get("ports", [])),
            max_bytes_per_dir=int(config.get("max_bytes_per_dir", 16384)),
            max_flows=int(config.get("max_flows", 20000)),
            idle_timeout_s=float(config.get("idle_timeout_s", 300)),
            client_predicate=tls_client_predicate,
            max_bytes_total=int(config.get("max_bytes_total", 128 << 20)),
            max_packets_meta=0,
            trim=needed_lengths,  # application data after the handshake is not copied
        )
        self._hs_buffer = np.empty(0, np.uint8)  # parse_joined's hs, reused batch to batch
        self._known = KnownValues()  # event_columns' distinct values, kept batch to batch

    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        return self._events(self.streams.feed_joined(packets))

    def flush(self) -> list[EventBatch]:
        return self._events(self.streams.flush_joined())

    def _events(self, source: StreamColumns | list[StreamChunk]) -> list[EventBatch]:
        """Events of a StreamBatch (or of a list of chunks: tests, tools), read from its
        columns: no StreamChunk object is made."""
        batch = stream_columns(source)
        events = self._handshake_events(batch) if len(batch) else []
        for key, value in self.streams.stats.items():
            self.stats[f"tls_stream.{key}"] = value
        return events

    def _handshake_events(self, batch: StreamColumns) -> list[EventBatch]:
        """One event per flow whose handshake is complete (or whose flow ended); flows that
        are done with, or can never show a ClientHello, are released from reassembly."""
        parsed = parse_joined(batch.buf, batch.start, batch.length, self._hs_buffer)
        # kept for the next batch (see parse_joined): no event column holds a view of it
        if parsed.hs.size <= MAX_HS_BUFFER:
            self._hs_buffer = parsed.hs
        at, released, malformed, incomplete, ts = _decide(
            parsed.status, parsed.established, parsed.server_malformed,
            np.asarray(batch.final, dtype=np.bool_), batch.capped, batch.gap, batch.ended,
            batch.first_ts, batch.start_ts)
        self._count("tls_malformed", malformed)
        self._count("tls_incomplete", incomplete)
        if released.size:
            for key in _keys_at(batch, released):
                self.streams.release(key)
        if not at.size:
            return []
        self._count("tls_handshakes", int(at.size))
        columns = endpoint_columns_at(batch, at, ts, self.observer_name, self.ingress_zone)
        tls_columns = event_columns(parsed, at, self._known)
        for spec in TLS.fields:  # the schema's column order; EventBatch fills the QUIC ones
            if spec.column not in columns and spec.column in tls_columns:
                columns[spec.column] = tls_columns[spec.column]
        return [EventBatch(TLS.name, columns)]

    def _count(self, key: str, n: int = 1) -> None:
        if n:
            self.stats[key] = self.stats.get(key, 0) + n
