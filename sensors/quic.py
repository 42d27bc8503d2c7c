"""QUIC Initial packets -> "tls" events: SNI, ALPN, JA3/JA4 and the ServerHello of QUIC
(HTTP/3, and C2 frameworks that run over it) on any UDP port.

A QUIC connection's first packets (Initial, RFC 9000 section 17.2.2) carry the TLS
ClientHello and ServerHello in CRYPTO frames, protected with keys every observer can derive
from the Destination Connection ID of the client's first Initial (RFC 9001 section 5.2;
QUIC version 2, RFC 9369, has its own salt, labels and Initial type bits). So the sensor:

1. picks, in one compiled pass over the batch's columns, the UDP datagrams of at least
   1200 bytes (RFC 9000 section 14.1: every datagram carrying a client Initial, or a
   server Initial with CRYPTO data, is padded to that) whose payload starts a long-header
   packet (form and fixed bits set) of version 1 or 2 and type Initial (`initial_rows`); a
   batch without QUIC costs that pass and nothing else;
2. per selected datagram (Python: a connection sends a few Initials), walks the coalesced
   packets by their Length field and, for each Initial, removes header protection
   (AES-128-ECB mask over a 16-byte sample) and decrypts the payload (AES-128-GCM, the
   header as associated data) with the `cryptography` package; 0-RTT/Handshake packets are
   skipped (counted), a Retry or a short-header packet ends the datagram;
3. reads the frames (PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE; any other frame ends
   that packet's parse, counted) and reassembles each direction's CRYPTO stream by offset
   (Chrome splits a large ClientHello over two Initials and sends CRYPTO frames out of
   order), up to `max_bytes_per_conn` bytes per direction;
4. parses the ClientHello and ServerHello with sensors/tls.py (the same JA3, JA3S, JA4 --
   with JA4's "q" transport character -- ALPN and version names as TLS over TCP). After a
   HelloRetryRequest the server's CRYPTO stream goes on with the real ServerHello (the
   client's with its second ClientHello, same keys): the event waits for it and gives its
   facts, the first ClientHello's fingerprints, as TLS over TCP does.

A connection is its UDP 5-tuple (and VLAN) while its Initials are exchanged; the client is
the sender of the first Initial that decrypts with keys of its own DCID. The server's
Initials carry the client's Source Connection ID as DCID and are protected with the server
keys of the client's ORIGINAL DCID, which the connection keeps. A client Initial that
decrypts only with keys of its own (new) DCID starts the connection over (after a Retry, or
a new connection from the same port).

One "tls" event per connection whose ClientHello was read, emitted after the datagram in
which the ServerHello (after a retry: the real one) or a CONNECTION_CLOSE frame is read, or
when the connection idles (`idle_timeout_s`, event time), is evicted
(`max_connections`, `max_bytes_total`; oldest activity first, counted) or the input ends.
`established` is False: the handshake's end (Finished) is in Handshake packets, which an
observer cannot decrypt (Zeek's ssl.log says F for QUIC too); `next_protocol` is empty for
TLS 1.3 (ALPN is in EncryptedExtensions). The QUIC columns (`quic_version`,
`quic_client_initial_dcid`, `quic_client_scid`, `quic_server_scid`, hex as in Zeek's
quic.log) tell these events from TLS over TCP; their `network.protocol` is "quic".
`quic_history` has Zeek's quic.log `history` letters (client's capitalized) of what the
sensor reads up to the event: I (Initial that decrypts), S (a complete hello), H and Z
(Handshake / 0-RTT packets coalesced after an Initial), C (CONNECTION_CLOSE in an Initial);
Retry, short-header and other-version packets are not read (no R, O, U, X letters).

Hostile input never raises: truncated packets, AEAD tag mismatches (wrong keys, damage) and
unreadable frames or hellos are counted in `stats` and yield no event.
"""

from __future__ import annotations

import hmac
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.jit import njit
from pipeline.schema import TLS, EventBatch
from sensors.analyzer import Analyzer
from sensors.packets import IP_DTYPE, DecodedPackets, plain_vlan
from sensors.tcp_stream import kind_columns, tcp_endpoint_columns
from sensors.tls import (
    HS_CLIENT_HELLO,
    HS_SERVER_HELLO,
    MalformedTLS,
    cipher_name,
    curve_name,
    is_retry,
    ja3_string,
    ja3s_string,
    ja4,
    md5_hex,
    parse_handshake,
)

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF
UDP = 17
MAX_CID = 20  # RFC 9000 section 17.2: connection IDs of versions 1 and 2 are at most 20 bytes
SAMPLE = 16  # header protection sample bytes (AES)
MAX_PACKETS_PER_DATAGRAM = 8  # coalesced packets read from one datagram
MAX_HISTORY = 100  # letters of `quic_history` kept (Zeek's QUIC::max_history_length)
# The smallest IP datagram (IPv4 header + UDP header + 1200 bytes) a datagram with an Initial
# comes in (RFC 9000 section 14.1; see initial_rows).
MIN_IP_DATAGRAM = 20 + 8 + 1200


@dataclass(frozen=True)
class Version:
    """What differs between QUIC versions for Initial protection."""

    number: int
    name: str  # as Zeek's quic.log writes it
    salt: bytes
    labels: tuple[bytes, bytes, bytes]  # key, iv, hp
    initial_type: int  # long-header type bits of an Initial packet
    retry_type: int
    zero_rtt_type: int
    handshake_type: int


VERSIONS = {
    QUIC_V1: Version(QUIC_V1, "1", bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
                     (b"quic key", b"quic iv", b"quic hp"), 0, 3, 1, 2),
    QUIC_V2: Version(QUIC_V2, "2", bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
                     (b"quicv2 key", b"quicv2 iv", b"quicv2 hp"), 1, 0, 2, 3),
}


# --- prefilter ----------------------------------------------------------------------------


@njit
def initial_rows(transport: np.ndarray, ip_total_len: np.ndarray, payload_offset: np.ndarray,
                 payload_len: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, int]:
    """(rows whose UDP payload starts a v1/v2 long-header Initial, count of rows that start
    another v1/v2 long-header packet: 0-RTT, Handshake, Retry).

    Only datagrams of at least 1200 bytes on the wire are read: a client pads every datagram
    that carries an Initial to 1200 bytes and a server every one whose Initial carries
    CRYPTO data (RFC 9000 section 14.1; a server drops smaller client Initials). So the
    first pass reads two columns per row, branch-free (such datagrams are rare and come at
    random), and only those few rows' payload bytes are read: reading the first byte of
    every UDP payload (DNS, mostly) missed the cache on nearly each one."""
    n = transport.shape[0]
    big = np.empty(n, np.int64)
    k = 0
    for i in range(n):
        big[k] = i
        k += (transport[i] == UDP) & (ip_total_len[i] >= MIN_IP_DATAGRAM)
    out = np.empty(k, np.int64)
    m = 0
    other = 0
    size = data.shape[0]
    for j in range(k):
        i = big[j]
        at = payload_offset[i]
        if payload_len[i] < 7 or at < 0 or at + 5 > size:
            continue  # cut by the capture's snap length before the version
        first = data[at]
        if first & 0xC0 != 0xC0:
            continue
        version = ((np.int64(data[at + 1]) << 24) | (np.int64(data[at + 2]) << 16)
                   | (np.int64(data[at + 3]) << 8) | np.int64(data[at + 4]))
        kind = (first >> 4) & 3
        if version == QUIC_V1:
            initial = kind == 0
        elif version == QUIC_V2:
            initial = kind == 1
        else:
            continue
        if initial:
            out[m] = i
            m += 1
        else:
            other += 1
    return out[:m], other


# --- keys and packet protection ---------------------------------------------------------------


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context, SHA-256; one HMAC block suffices for
    every Initial secret and key (<= 32 bytes)."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", "sha256")[:length]


def initial_secrets(dcid: bytes, version: Version) -> tuple[bytes, bytes]:
    """(client, server) Initial secrets of a client's first DCID (RFC 9001 section 5.2)."""
    initial = hmac.digest(version.salt, dcid, "sha256")  # HKDF-Extract
    return _expand_label(initial, b"client in", 32), _expand_label(initial, b"server in", 32)


def packet_keys(secret: bytes, version: Version) -> tuple[bytes, bytes, bytes]:
    """(AEAD key, IV, header protection key) of an Initial secret."""
    key_label, iv_label, hp_label = version.labels
    return (_expand_label(secret, key_label, 16), _expand_label(secret, iv_label, 12),
            _expand_label(secret, hp_label, 16))


class Keys:
    """One direction's Initial packet protection (the cipher objects made once)."""

    __slots__ = ("aead", "hp", "iv", "largest_pn")

    def __init__(self, secret: bytes, version: Version) -> None:
        key, self.iv, hp_key = packet_keys(secret, version)
        self.aead = AESGCM(key)
        self.hp = Cipher(algorithms.AES(hp_key), modes.ECB()).encryptor()
        self.largest_pn = -1

    def mask(self, sample: bytes) -> bytes:
        return self.hp.update(sample)[:5]


def connection_keys(dcid: bytes, version: Version) -> tuple[Keys, Keys]:
    """(client, server) Keys of a connection whose client's first DCID is `dcid`."""
    client, server = initial_secrets(dcid, version)
    return Keys(client, version), Keys(server, version)


def decode_packet_number(largest: int, truncated: int, bits: int) -> int:
    """The full packet number closest to largest + 1 (RFC 9000 appendix A.3)."""
    expected = largest + 1
    window = 1 << bits
    half = window // 2
    candidate = (expected & ~(window - 1)) | truncated
    if candidate <= expected - half and candidate < (1 << 62) - window:
        return candidate + window
    if candidate > expected + half and candidate >= window:
        return candidate - window
    return candidate


def unprotect(packet: bytes, pn_offset: int, keys: Keys) -> tuple[bytes, bytes, int] | None:
    """(plain header, payload, packet number) of one protected long-header packet
    (`packet` ends where its Length says); None when the AEAD tag does not match. The
    caller has checked that the packet holds a sample (pn_offset + 4 + 16 bytes) and a tag."""
    mask = keys.mask(packet[pn_offset + 4 : pn_offset + 4 + SAMPLE])
    first = packet[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 3) + 1
    pn_bytes = bytes(b ^ m for b, m in zip(packet[pn_offset : pn_offset + pn_len], mask[1:],
                                           strict=False))
    header = bytes([first]) + packet[1:pn_offset] + pn_bytes
    pn = decode_packet_number(keys.largest_pn, int.from_bytes(pn_bytes, "big"), 8 * pn_len)
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    try:
        payload = keys.aead.decrypt(nonce, packet[pn_offset + pn_len :], header)
    except InvalidTag:
        return None
    keys.largest_pn = max(keys.largest_pn, pn)
    return header, payload, pn


# --- headers and frames ---------------------------------------------------------------------


class Truncated(ValueError):
    """A packet or frame runs past its container."""


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of a QUIC variable-length integer (RFC 9000 section 16)."""
    if pos >= len(buf):
        raise Truncated("varint")
    size = 1 << (buf[pos] >> 6)
    if pos + size > len(buf):
        raise Truncated("varint")
    value = int.from_bytes(buf[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, pos + size


@dataclass
class LongHeader:
    """A long-header packet of version 1 or 2 inside a datagram."""

    version: Version
    kind: int  # long-header type bits
    dcid: bytes
    scid: bytes
    pn_offset: int  # inside the packet
    end: int  # the packet's end inside the datagram (Length); -1: to the datagram's end


def read_long_header(dgram: bytes, pos: int) -> LongHeader | None:
    """The long header at `pos`, None when that is not a v1/v2 long-header packet (a
    short-header packet or padding after coalesced packets). Raises Truncated."""
    if pos + 7 > len(dgram) or dgram[pos] & 0xC0 != 0xC0:
        return None
    version = VERSIONS.get(int.from_bytes(dgram[pos + 1 : pos + 5], "big"))
    if version is None:
        return None
    kind = (dgram[pos] >> 4) & 3
    at = pos + 5
    dcid_len = dgram[at]
    if dcid_len > MAX_CID or at + 1 + dcid_len + 1 > len(dgram):
        raise Truncated("dcid")
    dcid = dgram[at + 1 : at + 1 + dcid_len]
    at += 1 + dcid_len
    scid_len = dgram[at]
    if scid_len > MAX_CID or at + 1 + scid_len > len(dgram):
        raise Truncated("scid")
    scid = dgram[at + 1 : at + 1 + scid_len]
    at += 1 + scid_len
    if kind == version.retry_type:
        return LongHeader(version, kind, dcid, scid, at - pos, -1)
    if kind == version.initial_type:
        token_len, at = read_varint(dgram, at)
        at += token_len
    length, at = read_varint(dgram, at)
    if at + length > len(dgram):
        raise Truncated("length")
    return LongHeader(version, kind, dcid, scid, at - pos, at + length)


FRAME_PADDING, FRAME_PING, FRAME_ACK, FRAME_ACK_ECN, FRAME_CRYPTO = 0x00, 0x01, 0x02, 0x03, 0x06
FRAME_CLOSE, FRAME_CLOSE_APP = 0x1C, 0x1D
_NOT_ZERO = re.compile(b"[^\x00]")


def crypto_frames(payload: bytes) -> tuple[list[tuple[int, bytes]], bool]:
    """((offset, data) of every CRYPTO frame, whether the parse stopped early: a frame type
    an Initial does not carry, or a frame that runs past the payload)."""
    frames, stopped, _ = read_frames(payload)
    return frames, stopped


def read_frames(payload: bytes) -> tuple[list[tuple[int, bytes]], bool, bool]:
    """crypto_frames' (frames, stopped), and whether a CONNECTION_CLOSE frame was read."""
    out: list[tuple[int, bytes]] = []
    pos, end = 0, len(payload)
    closed = False
    try:
        while pos < end:
            ftype, pos = read_varint(payload, pos)
            if ftype == FRAME_PADDING:  # a run of them fills most of a client Initial: skip
                found = _NOT_ZERO.search(payload, pos)  # it at C speed
                pos = found.start() if found else end
                continue
            if ftype == FRAME_PING:
                continue
            if ftype == FRAME_CRYPTO:
                offset, pos = read_varint(payload, pos)
                size, pos = read_varint(payload, pos)
                if pos + size > end:
                    return out, True, closed
                out.append((offset, payload[pos : pos + size]))
                pos += size
            elif ftype in (FRAME_ACK, FRAME_ACK_ECN):
                pos = _skip_ack(payload, pos, ftype == FRAME_ACK_ECN)
            elif ftype in (FRAME_CLOSE, FRAME_CLOSE_APP):
                _, pos = read_varint(payload, pos)  # error code
                if ftype == FRAME_CLOSE:
                    _, pos = read_varint(payload, pos)  # frame type
                size, pos = read_varint(payload, pos)
                if pos + size > end:
                    return out, True, closed
                pos += size
                closed = True
            else:
                return out, True, closed
    except Truncated:
        return out, True, closed
    return out, False, closed


def _skip_ack(payload: bytes, pos: int, ecn: bool) -> int:
    """The position after an ACK frame's fields (RFC 9000 section 19.3)."""
    _, pos = read_varint(payload, pos)  # largest acknowledged
    _, pos = read_varint(payload, pos)  # delay
    ranges, pos = read_varint(payload, pos)
    _, pos = read_varint(payload, pos)  # first range
    if ranges > len(payload):  # each range takes at least two bytes
        raise Truncated("ack ranges")
    for _ in range(2 * ranges + (3 if ecn else 0)):
        _, pos = read_varint(payload, pos)
    return pos


class CryptoStream:
    """One direction's CRYPTO bytes in order: the contiguous prefix from offset 0, plus the
    fragments that arrived ahead of it; nothing at or past `limit` is kept."""

    __slots__ = ("ahead", "ahead_bytes", "capped", "data", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.ahead: dict[int, bytes] = {}
        self.ahead_bytes = 0
        self.capped = False

    @property
    def held(self) -> int:
        return len(self.data) + self.ahead_bytes

    def add(self, offset: int, chunk: bytes) -> None:
        if offset + len(chunk) > self.limit:
            self.capped = True
            chunk = chunk[: max(0, self.limit - offset)]
        if not chunk:
            return
        if offset > len(self.data):
            if len(chunk) > len(self.ahead.get(offset, b"")):  # a repeat keeps the longer
                self.ahead_bytes += len(chunk) - len(self.ahead.get(offset, b""))
                self.ahead[offset] = chunk
            return
        self._extend(offset, chunk)
        while self.ahead:  # fragments that now touch the prefix
            ready = [o for o in self.ahead if o <= len(self.data)]
            if not ready:
                break
            for o in sorted(ready):
                piece = self.ahead.pop(o)
                self.ahead_bytes -= len(piece)
                self._extend(o, piece)

    def _extend(self, offset: int, chunk: bytes) -> None:
        new = offset + len(chunk) - len(self.data)
        if new > 0:
            self.data += chunk[len(chunk) - new :]

    def messages(self) -> list[tuple[int, int, int]]:
        """(type, start, end) of the complete handshake messages at the stream's start, in
        order (a few: the stream holds at most `limit` bytes)."""
        out = []
        data, pos = self.data, 0
        while pos + 4 <= len(data):
            end = pos + 4 + int.from_bytes(data[pos + 1 : pos + 4], "big")
            if end > len(data):
                break
            out.append((data[pos], pos, end))
            pos = end
        return out

    def release(self) -> None:
        self.data = bytearray()
        self.ahead.clear()
        self.ahead_bytes = 0


# --- connections ----------------------------------------------------------------------------


@dataclass
class Connection:
    """A QUIC connection's Initial-phase state (client = the first Initial's sender)."""

    version: Version
    odcid: bytes  # the DCID of the client's first Initial: every Initial key derives from it
    client_scid: bytes
    client: Keys
    server_secret: bytes
    streams: tuple[CryptoStream, CryptoStream]  # client, server
    first_ts: int
    last_ts: int
    vlan: int
    client_ip: bytes
    client_port: int
    server_ip: bytes
    server_port: int
    server_scid: bytes = b""
    server_seen: bool = False
    done: bool = False  # its event is out (or it can give none): later Initials are skipped
    due: bool = False  # its event is to be made once the current datagram is read
    server_done: bool = False  # the ServerHello is read (after a retry: the real one)
    history: list[str] = field(default_factory=list)  # Zeek's quic.log letters, see add
    hellos: list[int] = field(default_factory=lambda: [0, 0])  # complete hellos each way
    held: int = 0  # CRYPTO bytes held (both directions)
    client_hello: bytes = field(default=b"", repr=False)
    server_hello: bytes = field(default=b"", repr=False)
    _server: Keys | None = field(default=None, repr=False)

    def add(self, letter: str, from_client: bool) -> None:
        """A history letter (Zeek's quic.log `history`: client-sent capitalized), up to
        MAX_HISTORY of them."""
        if len(self.history) < MAX_HISTORY:
            self.history.append(letter.upper() if from_client else letter)

    @property
    def server(self) -> Keys:
        """The server's Initial keys, made when its first Initial comes."""
        if self._server is None:
            self._server = Keys(self.server_secret, self.version)
        return self._server


def handshake_record(message: bytes) -> bytes:
    """A handshake message as TLS records (what sensors.tls parses), split at 16 KB."""
    out = bytearray()
    for at in range(0, len(message), 1 << 14):
        piece = message[at : at + (1 << 14)]
        out += b"\x16\x03\x03" + len(piece).to_bytes(2, "big") + piece
    return bytes(out)


def event_fields(conn: Connection) -> dict[str, object] | None:
    """The TLS-specific event columns of a connection whose ClientHello was read; None when
    the ClientHello cannot be parsed."""
    try:
        hs = parse_handshake(handshake_record(conn.client_hello),
                             handshake_record(conn.server_hello) if conn.server_hello else b"")
    except MalformedTLS:
        return None
    if hs is None:
        return None
    hello, server = hs.client, hs.server
    return {
        "version": hs.version(), "server_name": hello.server_name,
        "client_alpn": [p.decode("ascii", "replace") for p in hello.alpn],
        "next_protocol": server.alpn.decode("ascii", "replace") if server else "",
        "cipher": cipher_name(server.cipher) if server else "",
        "ja3": md5_hex(ja3_string(hello)), "ja4": ja4(hello, "q"),
        "ja3s": md5_hex(ja3s_string(server)) if server else "",
        "cert_sha1": "", "cert_subject": "", "cert_issuer": "",
        "established": False, "curve": curve_name(hs.curve), "resumed": hs.resumed,
        "quic_version": conn.version.name, "quic_client_initial_dcid": conn.odcid.hex(),
        "quic_client_scid": conn.client_scid.hex(), "quic_server_scid": conn.server_scid.hex(),
        "quic_history": "".join(conn.history),
    }


class QuicAnalyzer(Analyzer):
    """QUIC v1/v2 Initials on any UDP port (see the module doc). Settings (all optional):
    max_bytes_per_conn, max_connections, max_bytes_total, idle_timeout_s."""

    def __init__(self, config: Mapping, observer_name: str, ingress_zone: str) -> None:
        super().__init__(config, observer_name, ingress_zone)
        self.max_bytes_per_conn = int(config.get("max_bytes_per_conn", 16384))
        self.max_connections = int(config.get("max_connections", 20000))
        self.max_bytes_total = int(config.get("max_bytes_total", 64 << 20))
        self.idle_timeout_ns = int(float(config.get("idle_timeout_s", 60)) * 1e9)
        # key (vlan, client ip, client port, server ip, server port) -> Connection, oldest
        # activity first
        self.connections: OrderedDict[tuple, Connection] = OrderedDict()
        self.held = 0  # CRYPTO bytes held over all connections
        self._ready: list[Connection] = []  # connections whose event is due
        self._due: list[Connection] = []  # ... once the current datagram is read

    # -- the Analyzer interface --

    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        if not len(packets):
            return []
        data = packets.data.reshape(-1)
        rows, other = initial_rows(packets.transport, packets.ip_total_len,
                                   packets.payload_offset, packets.payload_len, _read_only(data))
        self._count("quic_other_long_header", int(other))
        for row in rows.tolist():
            self._datagram(packets, row, data)
        if self.connections:
            self._expire(int(packets.ts_ns[-1]))
        return self._events()

    def flush(self) -> list[EventBatch]:
        while self.connections:
            _, conn = self.connections.popitem(last=False)
            self._finish(conn)
        self.held = 0
        return self._events()

    # -- one datagram --

    def _datagram(self, packets: DecodedPackets, row: int, data: np.ndarray) -> None:
        self._walk(packets, row, data)
        if self._due:  # after the whole datagram: its later packets are in their history
            due, self._due = self._due, []
            for conn in due:
                self._finish(conn)

    def _walk(self, packets: DecodedPackets, row: int, data: np.ndarray) -> None:
        start = int(packets.payload_offset[row])
        dgram = data[start : start + int(packets.payload_len[row])].tobytes()
        ts = int(packets.ts_ns[row])
        src, dst = packets.src_ip[row].tobytes(), packets.dst_ip[row].tobytes()
        sport, dport = int(packets.src_port[row]), int(packets.dst_port[row])
        vlan = int(packets.vlan[row])
        forward, reverse = (vlan, src, sport, dst, dport), (vlan, dst, dport, src, sport)
        pos = 0
        for _ in range(MAX_PACKETS_PER_DATAGRAM):
            try:
                header = read_long_header(dgram, pos)
            except Truncated:
                self._count("quic_truncated")
                return
            if header is None:
                return
            if header.end < 0:  # Retry: no Length, the rest of the datagram
                self._count("quic_retry")
                return
            if header.kind == header.version.initial_type:
                self._initial(dgram[pos : header.end], header, ts, forward, reverse)
            else:
                self._count("quic_other_long_header")
                self._other_packet(header, forward, reverse)
            pos = header.end

    def _other_packet(self, header: LongHeader, forward: tuple, reverse: tuple) -> None:
        """A Handshake or 0-RTT packet after an Initial in a datagram: its history letter."""
        letter = {header.version.handshake_type: "h",
                  header.version.zero_rtt_type: "z"}.get(header.kind)
        conn = self.connections.get(forward)
        from_client = conn is not None
        if conn is None:
            conn = self.connections.get(reverse)
        if letter and conn is not None and not conn.done and conn.version is header.version:
            conn.add(letter, from_client)

    def _initial(self, packet: bytes, header: LongHeader, ts: int, forward: tuple,
                 reverse: tuple) -> None:
        if len(packet) < header.pn_offset + 4 + SAMPLE:  # no sample: cannot be unprotected
            self._count("quic_truncated")
            return
        conn = self.connections.get(forward)
        from_client = conn is not None
        if conn is None:
            conn = self.connections.get(reverse)
        if conn is not None and conn.version is not header.version:
            conn = None  # another version on the same ports: a new connection
        if conn is not None and not from_client:
            self._server_initial(conn, packet, header, ts, reverse)
            return
        if conn is not None and (not conn.done or header.dcid in (conn.odcid, conn.server_scid)):
            if conn.done:
                self._touch(forward, conn, ts)
                return
            plain = unprotect(packet, header.pn_offset, conn.client)
            if plain is not None:
                self._count("quic_initials_decrypted")
                self._touch(forward, conn, ts)
                conn.add("i", True)
                self._frames(conn, 0, plain[1])
                return
        self._new_connection(packet, header, ts, forward)

    def _new_connection(self, packet: bytes, header: LongHeader, ts: int, forward: tuple
                        ) -> None:
        """A client Initial of a connection not held (or started over): decrypts with keys
        of its own DCID, else it is counted and dropped (a server Initial whose client was
        not seen, damage, or not QUIC at all)."""
        client_secret, server_secret = initial_secrets(header.dcid, header.version)
        client = Keys(client_secret, header.version)  # the server's when it answers: most
        plain = unprotect(packet, header.pn_offset, client)  # of the cost is making them
        if plain is None:
            self._count("quic_decrypt_failed")
            return
        self._count("quic_initials_decrypted")
        old = self.connections.pop(forward, None)
        if old is not None:  # started over: its state is replaced
            self._count("quic_restarted")
            self._release(old)
        vlan, cip, cport, sip, sport = forward
        limit = self.max_bytes_per_conn
        conn = Connection(header.version, header.dcid, header.scid, client, server_secret,
                          (CryptoStream(limit), CryptoStream(limit)), ts, ts, vlan, cip, cport,
                          sip, sport)
        self._count("quic_connections")
        self._make_room(1)
        self.connections[forward] = conn
        conn.add("i", True)
        self._frames(conn, 0, plain[1])

    def _server_initial(self, conn: Connection, packet: bytes, header: LongHeader, ts: int,
                        key: tuple) -> None:
        self._touch(key, conn, ts)
        if conn.done:
            return
        plain = unprotect(packet, header.pn_offset, conn.server)
        if plain is None:
            self._count("quic_decrypt_failed")
            return
        self._count("quic_initials_decrypted")
        if not conn.server_seen:
            conn.server_seen = True
            conn.server_scid = header.scid
        conn.add("i", False)
        self._frames(conn, 1, plain[1])

    def _frames(self, conn: Connection, direction: int, payload: bytes) -> None:
        frames, stopped, closed = read_frames(payload)
        if stopped:
            self._count("quic_frames_unreadable")
        stream = conn.streams[direction]
        before = stream.held
        for offset, chunk in frames:
            stream.add(offset, chunk)
        grown = stream.held - before
        conn.held += grown
        self.held += grown
        if stream.capped:
            self._count("quic_crypto_capped")
            stream.capped = False
        if frames and not conn.due:
            self._hellos(conn, direction, stream)
        if closed:  # the handshake ends here (Zeek logs the connection at its close)
            conn.add("c", direction == 0)
            self._make_due(conn)
        if conn.due:
            return
        if self.held > self.max_bytes_total:
            self._make_room(0)

    def _hellos(self, conn: Connection, direction: int, stream: CryptoStream) -> None:
        """The hellos complete in a direction's CRYPTO stream: their history letters, the
        ClientHello, the ServerHello -- after a HelloRetryRequest, the bytes up to the real
        ServerHello that follows it, whose facts the event then gives (as over TCP) -- and
        whether the event is due."""
        messages = stream.messages()
        wanted = HS_CLIENT_HELLO if direction == 0 else HS_SERVER_HELLO
        ends = [end for kind, _, end in messages if kind == wanted]
        for _ in range(len(ends) - conn.hellos[direction]):
            conn.add("s", direction == 0)
        conn.hellos[direction] = len(ends)
        if not messages or messages[0][0] != wanted:
            return
        if direction == 0:
            conn.client_hello = conn.client_hello or bytes(stream.data[: messages[0][2]])
        else:
            retry = is_retry(bytes(stream.data[4:messages[0][2]]))
            end = ends[1] if retry and len(ends) > 1 else ends[0]
            conn.server_hello = bytes(stream.data[:end])  # the retry alone while waiting
            conn.server_done = not retry or len(ends) > 1
        if conn.client_hello and conn.server_hello and conn.server_done:
            self._make_due(conn)

    def _make_due(self, conn: Connection) -> None:
        if not conn.due:
            conn.due = True
            self._due.append(conn)

    # -- bounds and events --

    def _touch(self, key: tuple, conn: Connection, ts: int) -> None:
        conn.last_ts = max(conn.last_ts, ts)
        self.connections.move_to_end(key)

    def _make_room(self, coming: int) -> None:
        """Evict the least recently active connections while over a bound (with `coming`
        more connections)."""
        while self.connections and (len(self.connections) + coming > self.max_connections
                                    or self.held > self.max_bytes_total):
            _, conn = self.connections.popitem(last=False)
            if not conn.done:
                self._count("quic_evicted")
            self._finish(conn)

    def _expire(self, now: int) -> None:
        """Connections idle for idle_timeout_s of event time: their events, then gone."""
        while self.connections:
            key, conn = next(iter(self.connections.items()))
            if now - conn.last_ts < self.idle_timeout_ns:
                return
            del self.connections[key]
            self._finish(conn)

    def _finish(self, conn: Connection) -> None:
        """The connection's event is due (once); its CRYPTO bytes are released."""
        if not conn.done and conn.client_hello:
            self._ready.append(conn)
        conn.done = True
        self._release(conn)

    def _release(self, conn: Connection) -> None:
        self.held -= conn.held
        conn.held = 0
        for stream in conn.streams:
            stream.release()

    def _events(self) -> list[EventBatch]:
        ready, self._ready = self._ready, []
        rows = []
        for conn in ready:
            fields = event_fields(conn)
            if fields is None:
                self._count("quic_tls_malformed")
            else:
                rows.append((conn, fields))
            conn.client_hello = conn.server_hello = b""
        if not rows:
            return []
        self._count("quic_handshakes", len(rows))
        return [self._batch(rows)]

    def _batch(self, rows: list[tuple[Connection, dict]]) -> EventBatch:
        conns = [c for c, _ in rows]
        columns = tcp_endpoint_columns(
            [c.first_ts for c in conns],
            np.frombuffer(b"".join(c.client_ip for c in conns), IP_DTYPE),
            np.frombuffer(b"".join(c.server_ip for c in conns), IP_DTYPE),
            np.array([c.client_port for c in conns], np.uint16),
            np.array([c.server_port for c in conns], np.uint16),
            plain_vlan(np.array([c.vlan for c in conns], np.int64)), self.observer_name,
            self.ingress_zone, protocol=UDP)
        columns.update(kind_columns(TLS, [f for _, f in rows], skip=columns))
        return EventBatch(TLS.name, columns)

    def _count(self, key: str, n: int = 1) -> None:
        if n:
            self.stats[key] = self.stats.get(key, 0) + n


def _read_only(buf: np.ndarray) -> np.ndarray:
    """A read-only view: numba compiles a kernel per array type (readonly is part of it);
    captures are read-only maps, so tests' writable buffers get the same type."""
    if not buf.flags.writeable:
        return buf
    view = buf.view()
    view.flags.writeable = False
    return view
