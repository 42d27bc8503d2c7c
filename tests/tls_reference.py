"""The pure-Python TLS handshake parser the analyzer used before its numba kernels, kept as
the oracle of the kernel tests (tests/test_tls_kernels.py) and the "before" of
bench/bench_tls.py. Behaviour, not speed, is what it is for: do not optimize it.

`ReferenceTlsAnalyzer` is sensors.tls.TlsAnalyzer with the old per-flow event path.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from pipeline.schema import TLS, EventBatch
from sensors.tcp_stream import StreamBatch, StreamChunk, endpoint_columns, kind_columns
from sensors.tls import (
    CONTENT_ALERT,
    CONTENT_APPDATA,
    CONTENT_CCS,
    CONTENT_HANDSHAKE,
    EXT_ALPN,
    EXT_GROUPS,
    EXT_KEY_SHARE,
    EXT_POINT_FORMATS,
    EXT_PRE_SHARED_KEY,
    EXT_SESSION_TICKET,
    EXT_SIG_ALGS,
    EXT_SNI,
    EXT_SUPPORTED_VERSIONS,
    HRR_RANDOM,
    HS_CERTIFICATE,
    HS_CLIENT_HELLO,
    HS_CLIENT_KEY_EXCHANGE,
    HS_SERVER_HELLO,
    HS_SERVER_KEY_EXCHANGE,
    MAX_LIST,
    MAX_RECORDS,
    ClientHello,
    Handshake,
    MalformedTLS,
    ServerHello,
    TlsAnalyzer,
    certificate_names,
    cipher_name,
    curve_name,
    ja3_string,
    ja3s_string,
    ja4,
    md5_hex,
)


@dataclass
class Direction:
    """What one direction's bytes show: handshake messages and the record types seen."""

    messages: list[tuple[int, bytes]] = field(default_factory=list)  # (type, body), complete
    record_types: list[int] = field(default_factory=list)  # content types, in order
    truncated: bool = False  # the handshake bytes end inside a message or record
    # the message the handshake bytes end inside: (type, the body bytes there), if any
    partial: tuple[int, bytes] | None = None


_RECORD_TYPES = frozenset({CONTENT_CCS, CONTENT_ALERT, CONTENT_HANDSHAKE, CONTENT_APPDATA})


def read_direction(data: bytes, server: bool = False) -> Direction:
    """Records of one direction -> complete handshake messages (cleartext part only). A
    server's ChangeCipherSpec right after its HelloRetryRequest (TLS 1.3 middlebox
    compatibility) does not end the cleartext: the real ServerHello follows."""
    out = Direction()
    record_types = out.record_types
    parts: list[bytes] = []  # cleartext handshake record bodies
    size = len(data)
    pos = 0
    cleartext = True
    while pos + 5 <= size and len(record_types) < MAX_RECORDS:
        ctype = data[pos]
        if ctype not in _RECORD_TYPES or data[pos + 1] != 3:
            break  # not TLS (any more): stop reading
        stop = pos + 5 + ((data[pos + 3] << 8) | data[pos + 4])
        record_types.append(ctype)  # the header is visible: the type counts
        if stop > size:
            out.truncated = cleartext and ctype == CONTENT_HANDSHAKE
            break
        if ctype != CONTENT_HANDSHAKE:
            if ctype != CONTENT_ALERT and not (server and ctype == CONTENT_CCS
                                               and _retry_alone(b"".join(parts))):
                cleartext = False
        elif cleartext:
            parts.append(data[pos + 5 : stop])
        pos = stop
    handshake = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
    size = len(handshake)
    pos = 0
    while pos + 4 <= size:
        stop = pos + 4 + int.from_bytes(handshake[pos + 1 : pos + 4], "big")
        if stop > size:
            out.truncated = True
            out.partial = (handshake[pos], handshake[pos + 4 :])
            break
        out.messages.append((handshake[pos], handshake[pos + 4 : stop]))
        pos = stop
    else:
        if pos != size:
            out.truncated = True
    return out


def _retry_alone(handshake: bytes) -> bool:
    """The bytes are one whole ServerHello that is a HelloRetryRequest."""
    return len(handshake) >= 4 and handshake[0] == HS_SERVER_HELLO \
        and 4 + int.from_bytes(handshake[1:4], "big") == len(handshake) \
        and is_retry(handshake[4:])


def is_retry(body: bytes) -> bool:
    """A ServerHello body is a HelloRetryRequest (RFC 8446 section 4.1.3)."""
    return len(body) >= 34 and body[2:34] == HRR_RANDOM


_U16S = [struct.Struct(f"!{n}H") for n in range(MAX_LIST + 1)]


class _Reader:
    """Bounds-checked big-endian reads; raises MalformedTLS past the end."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf, self.pos = buf, pos
        self.end = len(buf) if end is None else end

    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise MalformedTLS("runs past its container")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vec(self, len_bytes: int) -> _Reader:
        n = int.from_bytes(self.take(len_bytes), "big")
        start = self.pos
        self.take(n)
        return _Reader(self.buf, start, start + n)

    def u16_list(self) -> list[int]:
        left = self.end - self.pos
        if left % 2:
            raise MalformedTLS("odd length for a list of 16-bit values")
        count = min(left // 2, MAX_LIST)
        values = list(_U16S[count].unpack_from(self.buf, self.pos))  # one C call per list
        self.pos = self.end
        return values


def _extensions(r: _Reader) -> list[tuple[int, bytes]]:
    if r.left() == 0:
        return []  # no extensions block (SSLv3 / old clients)
    block = r.vec(2)
    out = []
    while block.left() and len(out) < MAX_LIST:
        ext_type = block.u16()
        out.append((ext_type, _all(block.vec(2))))
    return out


def _span(buf: bytes, pos: int, end: int, len_bytes: int) -> tuple[int, int]:
    """(start, stop) of the length-prefixed vector at `pos`, which must end by `end`."""
    start = pos + len_bytes
    if start > end:
        raise MalformedTLS("runs past its container")
    stop = start + int.from_bytes(buf[pos:start], "big")
    if stop > end:
        raise MalformedTLS("runs past its container")
    return start, stop


def _u16s(buf: bytes, start: int, stop: int) -> list[int]:
    """The 16-bit values of buf[start:stop] (at most MAX_LIST)."""
    if (stop - start) % 2:
        raise MalformedTLS("odd length for a list of 16-bit values")
    return list(_U16S[min((stop - start) // 2, MAX_LIST)].unpack_from(buf, start))


def parse_client_hello(body: bytes) -> ClientHello:
    # Offsets into `body` rather than reader objects: this runs once per TLS flow.
    end = len(body)
    if end < 34:
        raise MalformedTLS("runs past its container")
    version = (body[0] << 8) | body[1]
    _, pos = _span(body, 34, end, 1)  # session id (after version and the 32-byte random)
    start, pos = _span(body, pos, end, 2)
    ciphers = _u16s(body, start, pos)
    _, pos = _span(body, pos, end, 1)  # compression methods
    hello = ClientHello(version, ciphers, [])
    if pos == end:
        return hello  # no extensions block (SSLv3 / old clients)
    pos, block_end = _span(body, pos, end, 2)
    extensions: list[tuple[int, int, int]] = []
    while pos < block_end and len(extensions) < MAX_LIST:
        if pos + 2 > block_end:
            raise MalformedTLS("runs past its container")
        ext_type = (body[pos] << 8) | body[pos + 1]
        start, pos = _span(body, pos + 2, block_end, 2)
        extensions.append((ext_type, start, pos))
    for ext_type, start, stop in extensions:
        hello.extensions.append(ext_type)
        if ext_type == EXT_SNI:
            hello.has_sni = True
            at, names_end = _span(body, start, stop, 2)
            while at < names_end:
                if at + 1 > names_end:
                    raise MalformedTLS("runs past its container")
                name_type = body[at]
                name_start, at = _span(body, at + 1, names_end, 2)
                if name_type == 0 and not hello.server_name:
                    hello.server_name = body[name_start:at].decode("ascii", "replace").lower()
        elif ext_type == EXT_ALPN:
            at, list_end = _span(body, start, stop, 2)
            while at < list_end and len(hello.alpn) < MAX_LIST:
                item_start, at = _span(body, at, list_end, 1)
                hello.alpn.append(bytes(body[item_start:at]))
        elif ext_type == EXT_GROUPS:
            hello.groups = _u16s(body, *_span(body, start, stop, 2))
        elif ext_type == EXT_POINT_FORMATS:
            at, list_end = _span(body, start, stop, 1)
            hello.point_formats = list(body[at:list_end])
        elif ext_type == EXT_SIG_ALGS:
            hello.sig_algs = _u16s(body, *_span(body, start, stop, 2))
        elif ext_type == EXT_SUPPORTED_VERSIONS:
            hello.supported_versions = _u16s(body, *_span(body, start, stop, 1))
    return hello


def _all(r: _Reader) -> bytes:
    return r.take(r.left())


def parse_server_hello(body: bytes) -> ServerHello:
    r = _Reader(body)
    version = r.u16()
    r.take(32)
    r.vec(1)
    cipher = r.u16()
    r.u8()  # compression
    hello = ServerHello(version, cipher, [])
    for ext_type, data in _extensions(r):
        hello.extensions.append(ext_type)
        e = _Reader(data)
        if ext_type == EXT_ALPN:
            protocols = e.vec(2)
            if protocols.left():
                hello.alpn = _all(protocols.vec(1))
        elif ext_type == EXT_SUPPORTED_VERSIONS and e.left() >= 2:
            hello.selected_version = e.u16()
    return hello


def server_hello_resumption(body: bytes) -> tuple[bytes, int, bool]:
    """Of a readable ServerHello body: (session id, key_share group (-1: none), whether it
    carries pre_shared_key)."""
    r = _Reader(body)
    r.take(34)
    session_id = _all(r.vec(1))
    r.take(3)
    group, psk = -1, False
    for ext_type, data in _extensions(r):
        if ext_type == EXT_KEY_SHARE and len(data) >= 2:
            group = int.from_bytes(data[:2], "big")
        elif ext_type == EXT_PRE_SHARED_KEY:
            psk = True
    return session_id, group, psk


def client_hello_resumption(body: bytes) -> tuple[bytes, bool, bool]:
    """Of a readable ClientHello body: (session id as Zeek keeps it -- empty for 32 zero
    bytes --, a non-empty SessionTicket offered, pre_shared_key offered)."""
    session_id = body[35 : 35 + body[34]]
    if session_id == bytes(32):
        session_id = b""
    r = _Reader(body, 35 + body[34])
    r.vec(2)
    r.vec(1)
    ticket = psk = False
    for ext_type, data in _extensions(r):
        ticket |= ext_type == EXT_SESSION_TICKET and len(data) > 0
        psk |= ext_type == EXT_PRE_SHARED_KEY
    return session_id, ticket, psk


def _ecdhe(cipher: int) -> bool:
    """The suite's ServerKeyExchange starts with ECParameters (by its IANA name)."""
    name = cipher_name(cipher)
    return "_ECDH" in name and "PSK" not in name


def _resumption(hs: Handshake, client: Direction, server: Direction, hello_body: bytes,
                completed: bool, hellos: list[int]) -> None:
    """hs.curve and hs.resumed as Zeek decides them (ssl/main.zeek): the curve of the
    ServerHello's key_share, or later of an ECDHE ServerKeyExchange (named_curve), read from
    its first 3 body bytes even when the rest did not come (`completed`: the server's
    messages were all read); resumed: session id echoed before TLS 1.3, a PSK offered and
    accepted, or a ticket offered without session id and the client's CCS with no
    ClientKeyExchange before it. `hellos`: the indexes of the ServerHellos read (the
    first; after a HelloRetryRequest, the real one too, whose facts win: its key_share, else
    the retry's, as Zeek keeps the last one seen)."""
    session_id, ticket, psk_offered = client_hello_resumption(hello_body)
    after_hello = [t for t, _ in client.messages[1:]] + \
        ([client.partial[0]] if client.partial else [])
    hs.resumed = bool(ticket and not session_id and CONTENT_CCS in client.record_types
                      and HS_CLIENT_KEY_EXCHANGE not in after_hello)
    if hs.server is None:
        return
    messages = list(server.messages)
    later = messages + ([server.partial] if server.partial and completed else [])
    curve, cipher, exchanged = -1, 0, False
    for at in range(hellos[0], len(later)):  # in order: what comes last wins
        kind, body = later[at]
        if at in hellos:
            echoed, group, psk = server_hello_resumption(body)
            curve = group if group >= 0 or at == hellos[0] else curve
            cipher = parse_server_hello(body).cipher
        elif kind == HS_SERVER_KEY_EXCHANGE and len(body) >= 3 and not exchanged:
            exchanged = True
            if _ecdhe(cipher) and body[0] == 3:
                curve = int.from_bytes(body[1:3], "big")
    hs.curve = curve
    version = hs.server.selected_version or hs.server.version
    before_13 = version != 0x0304 and version // 0xFF != 0x7F
    hs.resumed |= (bool(session_id) and echoed == session_id and before_13) \
        or (psk and psk_offered)


def leaf_certificate(body: bytes) -> bytes:
    """DER of the first certificate of a (TLS <= 1.2) Certificate message."""
    r = _Reader(body)
    chain = r.vec(3)
    return _all(chain.vec(3))


def parse_handshake(client_data: bytes, server_data: bytes) -> Handshake | None:
    """Both directions' bytes -> Handshake; None while the ClientHello is incomplete.

    Raises MalformedTLS when the ClientHello cannot be read.
    """
    client = read_direction(client_data)
    if not client.messages:
        if client.truncated or len(client_data) < 9:
            return None
        raise MalformedTLS("no ClientHello")
    msg_type, body_of_hello = client.messages[0]
    if msg_type != HS_CLIENT_HELLO:
        raise MalformedTLS("first handshake message is not a ClientHello")
    hs = Handshake(parse_client_hello(body_of_hello))
    server = read_direction(server_data, server=True)
    read = 0  # server messages read (the walk stops at a malformed one)
    hellos: list[int] = []  # the ServerHellos read: the first, the real one after a retry
    retry = False
    try:
        for msg_type, body in server.messages:
            if msg_type == HS_SERVER_HELLO and (hs.server is None or retry):
                hello = parse_server_hello(body)
                retry = hs.server is None and is_retry(body)
                hs.server = hello
                hellos.append(read)
            elif msg_type == HS_CERTIFICATE and not hs.cert_der and hs.server is not None:
                hs.cert_der = leaf_certificate(body)
            read += 1
    except MalformedTLS:
        hs.malformed = True
    server.messages = server.messages[:read]
    _resumption(hs, client, server, body_of_hello, not hs.malformed, hellos)
    if hs.server is not None:
        if hs.server.selected_version == 0x0304:
            after_hello = client.record_types[1:]
            hs.established = CONTENT_APPDATA in after_hello
        else:
            client_ccs = CONTENT_CCS in client.record_types
            server_ccs = CONTENT_CCS in server.record_types
            client_app = client_ccs and CONTENT_APPDATA in client.record_types
            hs.established = (client_ccs and server_ccs) or client_app \
                or CONTENT_APPDATA in server.record_types
    return hs


_FINGERPRINTS: dict[tuple, tuple[str, str]] = {}  # ClientHello fields -> (JA3 MD5, JA4)
MAX_FINGERPRINTS = 4096  # distinct client stacks are few; the cache is cleared when full


def client_fingerprints(hello: ClientHello) -> tuple[str, str]:
    """(JA3 MD5, JA4) of a ClientHello, cached: a network's clients share a few TLS stacks,
    so the hashing and string building is done once per distinct set of offered values."""
    key = (hello.version, tuple(hello.ciphers), tuple(hello.extensions), tuple(hello.groups),
           tuple(hello.point_formats), tuple(hello.sig_algs), tuple(hello.supported_versions),
           tuple(hello.alpn), hello.has_sni)
    found = _FINGERPRINTS.get(key)
    if found is None:
        if len(_FINGERPRINTS) >= MAX_FINGERPRINTS:
            _FINGERPRINTS.clear()
        found = _FINGERPRINTS[key] = (md5_hex(ja3_string(hello)), ja4(hello))
    return found


def _row(hs: Handshake) -> dict:
    client, server = hs.client, hs.server
    ja3_hash, ja4_text = client_fingerprints(client)
    subject = issuer = cert_sha1 = ""
    if hs.cert_der:
        cert_sha1 = hashlib.sha1(hs.cert_der, usedforsecurity=False).hexdigest().upper()
        subject, issuer = certificate_names(hs.cert_der)
    return {
        "version": hs.version(),
        "server_name": client.server_name,
        "client_alpn": [p.decode("ascii", "replace") for p in client.alpn],
        "next_protocol": server.alpn.decode("ascii", "replace") if server else "",
        "cipher": cipher_name(server.cipher) if server else "",
        "ja3": ja3_hash,
        "ja4": ja4_text,
        "ja3s": md5_hex(ja3s_string(server)) if server else "",
        "cert_sha1": cert_sha1,
        "cert_subject": subject,
        "cert_issuer": issuer,
        "established": hs.established,
        "curve": curve_name(hs.curve),
        "resumed": hs.resumed,
    }


class ReferenceTlsAnalyzer(TlsAnalyzer):
    """TlsAnalyzer with the old per-flow event path (parse_handshake + _row per chunk)."""

    def _events(self, source: StreamBatch | list[StreamChunk]) -> list[EventBatch]:
        chunks = source if isinstance(source, list) else source.chunks  # the chunk objects
        done: list[tuple[StreamChunk, dict]] = []
        for chunk in chunks:
            try:
                hs = parse_handshake(chunk.client_data, chunk.server_data)
            except MalformedTLS:
                self._count("tls_malformed")
                self.streams.release(chunk.key)
                continue
            except Exception:  # noqa: BLE001 - never let hostile bytes stop the sensor
                self._count("tls_malformed")
                self.streams.release(chunk.key)
                continue
            if hs is None:
                if chunk.final:
                    self._count("tls_incomplete")
                elif chunk.capped[0] or chunk.gap[0] or chunk.ended[0]:
                    self._count("tls_incomplete")
                    self.streams.release(chunk.key)
                continue
            if not (hs.established or chunk.final):
                continue
            if hs.malformed:
                self._count("tls_malformed")
            done.append((chunk, _row(hs)))
            if not chunk.final:
                self.streams.release(chunk.key)
        for key, value in self.streams.stats.items():
            self.stats[f"tls_stream.{key}"] = value
        if not done:
            return []
        self._count("tls_handshakes", len(done))
        chunks_done = [c for c, _ in done]
        ts = [c.first_ts[0] if c.first_ts[0] >= 0 else c.start_ts for c in chunks_done]
        columns = endpoint_columns(chunks_done, ts, self.observer_name, self.ingress_zone)
        # EventBatch fills the QUIC ones
        skip = columns | dict.fromkeys(c for c in TLS.optional_columns if c.startswith("quic_"))
        columns.update(kind_columns(TLS, [row for _, row in done], skip=skip))
        return [EventBatch(TLS.name, columns)]
