"""TLS handshake events: ClientHello / ServerHello / Certificate on any TCP port.

Flows are picked column-wise by their opening payload (a TLS handshake record, 0x16 0x03
0x00-0x04, carrying a ClientHello), then reassembled by sensors.tcp_stream up to
`max_bytes_per_dir` per direction. Per direction, the handshake messages are the
concatenated bodies of the handshake records (content type 22) that come before the first
ChangeCipherSpec (20) or application-data (23) record: after those, handshake records are
encrypted.

One "tls" event per flow (the first handshake; renegotiations are not read), emitted when
the handshake is known to be complete (`established`) or when the flow ends (FIN/RST, idle,
eviction, end of input); then the flow is released from reassembly.

- version: the server's supported_versions extension (TLS 1.3), else the ServerHello
  version; without a ServerHello, the client's highest offered version.
- JA3 / JA3S (salesforce/ja3): decimal fields joined by '-' and ','; GREASE values
  (RFC 8701: 0x?A?A with equal bytes) are removed from every list; MD5 in the event.
- JA4 (FoxIO JA4 spec, TCP "t" variant), see `ja4`.
- Certificate (TLS <= 1.2, where it is not encrypted): SHA1 of the leaf (first) certificate,
  upper-case hex; subject and issuer DN (RFC 4514) with the `cryptography` package when it
  is installed (else left empty).
- established: ServerHello seen and, for TLS <= 1.2, ChangeCipherSpec from both sides or
  application data after the client's ChangeCipherSpec; for TLS 1.3, an encrypted record
  (its Finished) from the client after the ServerHello.

Hostile input never raises: parse errors are counted (stats["tls_malformed"]) and the
flow yields no event (a ClientHello that cannot be read) or an event with what was read.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from pipeline.schema import TLS, EventBatch
from sensors.analyzer import Analyzer
from sensors.packets import DecodedPackets
from sensors.tcp_stream import StreamChunk, StreamCollector, endpoint_columns, kind_columns
from sensors.tls_ciphers import CIPHER_SUITE_NAMES

CONTENT_CCS, CONTENT_ALERT, CONTENT_HANDSHAKE, CONTENT_APPDATA = 20, 21, 22, 23
HS_CLIENT_HELLO, HS_SERVER_HELLO, HS_CERTIFICATE = 1, 2, 11
EXT_SNI, EXT_GROUPS, EXT_POINT_FORMATS, EXT_SIG_ALGS, EXT_ALPN = 0, 10, 11, 13, 16
EXT_SUPPORTED_VERSIONS = 43
MAX_RECORDS = 256  # records scanned per direction
MAX_LIST = 512  # entries read from one list (ciphers, extensions ...)

VERSION_NAMES = {0x0300: "3.0", 0x0301: "1.0", 0x0302: "1.1", 0x0303: "1.2", 0x0304: "1.3"}
JA4_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3",
                0x0002: "s2", 0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}


class MalformedTLS(ValueError):
    """A handshake message does not fit its declared layout."""


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values: 0x0A0A, 0x1A1A ... 0xFAFA."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def tls_client_predicate(head: np.ndarray, payload_len: np.ndarray) -> np.ndarray:
    """Vectorized: payload starts a handshake record (0x16 03 0x) holding a ClientHello."""
    return ((head[:, 0] == CONTENT_HANDSHAKE) & (head[:, 1] == 3) & (head[:, 2] <= 4)
            & (head[:, 5] == HS_CLIENT_HELLO) & (payload_len >= 6))


# --- record and handshake layers -----------------------------------------------------------


@dataclass
class Direction:
    """What one direction's bytes show: handshake messages and the record types seen."""

    messages: list[tuple[int, bytes]] = field(default_factory=list)  # (type, body), complete
    record_types: list[int] = field(default_factory=list)  # content types, in order
    truncated: bool = False  # the handshake bytes end inside a message or record


_RECORD_TYPES = frozenset({CONTENT_CCS, CONTENT_ALERT, CONTENT_HANDSHAKE, CONTENT_APPDATA})


def read_direction(data: bytes) -> Direction:
    """Records of one direction -> complete handshake messages (cleartext part only)."""
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
            if ctype != CONTENT_ALERT:
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
            break
        out.messages.append((handshake[pos], handshake[pos + 4 : stop]))
        pos = stop
    else:
        if pos != size:
            out.truncated = True
    return out


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


def leaf_certificate(body: bytes) -> bytes:
    """DER of the first certificate of a (TLS <= 1.2) Certificate message."""
    r = _Reader(body)
    chain = r.vec(3)
    return _all(chain.vec(3))


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


def ja4_parts(hello: ClientHello) -> tuple[str, str, str]:
    """(JA4_a, JA4_r cipher list, JA4_r extension_sigalg list) for TLS over TCP."""
    versions = [v for v in hello.supported_versions if not is_grease(v)]
    version = max(versions) if versions else hello.version
    ciphers = [c for c in hello.ciphers if not is_grease(c)]
    extensions = [e for e in hello.extensions if not is_grease(e)]
    a = "t{}{}{:02d}{:02d}{}".format(JA4_VERSIONS.get(version, "00"), "d" if hello.has_sni else "i",
                                     min(len(ciphers), 99), min(len(extensions), 99),
                                     ja4_alpn(hello.alpn))
    cipher_list = ",".join(sorted(f"{c:04x}" for c in ciphers))
    ext_list = ",".join(sorted(f"{e:04x}" for e in extensions if e not in (EXT_SNI, EXT_ALPN)))
    sig_algs = [s for s in hello.sig_algs if not is_grease(s)]
    if sig_algs:
        ext_list += "_" + ",".join(f"{s:04x}" for s in sig_algs)
    return a, cipher_list, ext_list


def ja4(hello: ClientHello) -> str:
    """FoxIO JA4 (TLS over TCP): a_b_c; b/c are 12-hex sha256 prefixes, 000000000000 if empty."""
    a, cipher_list, ext_list = ja4_parts(hello)
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


@dataclass
class Handshake:
    """What a flow's bytes tell about its TLS handshake (the event's columns)."""

    client: ClientHello
    server: ServerHello | None = None
    cert_der: bytes = b""
    established: bool = False
    malformed: bool = False  # something after the ClientHello could not be read

    def version(self) -> str:
        if self.server is not None:
            v = self.server.selected_version or self.server.version
        else:
            offered = [v for v in self.client.supported_versions if not is_grease(v)]
            v = max(offered) if offered else self.client.version
        return VERSION_NAMES.get(v, f"0x{v:04X}")


def parse_handshake(client_data: bytes, server_data: bytes) -> Handshake | None:
    """Both directions' bytes -> Handshake; None while the ClientHello is incomplete.

    Raises MalformedTLS when the ClientHello cannot be read.
    """
    client = read_direction(client_data)
    if not client.messages:
        if client.truncated or len(client_data) < 9:
            return None
        raise MalformedTLS("no ClientHello")
    msg_type, body = client.messages[0]
    if msg_type != HS_CLIENT_HELLO:
        raise MalformedTLS("first handshake message is not a ClientHello")
    hs = Handshake(parse_client_hello(body))
    server = read_direction(server_data)
    try:
        for msg_type, body in server.messages:
            if msg_type == HS_SERVER_HELLO and hs.server is None:
                hs.server = parse_server_hello(body)
            elif msg_type == HS_CERTIFICATE and not hs.cert_der and hs.server is not None:
                hs.cert_der = leaf_certificate(body)
    except MalformedTLS:
        hs.malformed = True
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
    }


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
        )

    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        return self._events(self.streams.feed(packets))

    def flush(self) -> list[EventBatch]:
        return self._events(self.streams.flush())

    def _events(self, chunks: list[StreamChunk]) -> list[EventBatch]:
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
        columns.update(kind_columns(TLS, [row for _, row in done], skip=columns))
        return [EventBatch(TLS.name, columns)]

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n
