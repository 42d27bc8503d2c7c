"""Synthetic capture generator for the sensor benchmark and the flood memory test.

Two captures, both classic pcap (Ethernet, microsecond timestamps), written column-wise with
numpy (a 2M-packet file takes a few seconds):

- mixed: a realistic mix of conversations between ~65k clients (10.x.y.z) and 500 servers
  (192.0.2.0/24 ... 198.51.100.0/24), each built from a template conversation made once
  and replicated with per-conversation addresses, ports and timing:
    http   12 exchanges: GET/POST, varied hosts, URIs, user agents, statuses (200, 201,
           301, 302, 304, 404) and bodies up to 14 KB over several segments  (10-28 packets)
    tls    16 server names: a browser-like ClientHello (SNI, ALPN, groups, signature
           algorithms), the server's flight (ServerHello with ALPN, a real DER leaf + CA
           certificate chain, ServerKeyExchange, ServerHelloDone), key exchange and
           Finished both ways, application data                                (~22 packets)
    bulk   TCP handshake, 16 data segments + ACKs, FIN close                  (~38 packets)
    dns    768 distinct lookups: A and AAAA, 1-4 addresses, CNAME chains, NXDOMAIN,
           varied TTLs, names of two to five labels                          (2 packets)
    ntp    UDP 123 request + reply                                            (2 packets)
    icmp   echo request + reply                                               (2 packets)
    rej    SYN answered by RST/ACK (closed port)                              (2 packets)
  Until 2026-11-29 (MIX_VERSION 1) the mix had 3 HTTP and 3 TLS templates and 4 DNS names,
  and the TLS server flight was one opaque record: parsers met the same few names over and
  over, and no ServerHello or certificate. Version 2 is the one above.
  Packets of all conversations are interleaved in time order. IP header checksums are
  correct; TCP checksums are those of the template (wrong after patching: no tool used here
  verifies them by default) and UDP checksums are 0 ("none").
- flood: a spoofed-source SYN flood: random source address and port -> one victim:80.

Either can be written wrapped (--wrap, wrap_records()): mirrored in VXLAN, ERSPAN II or GRE
(every packet tunnelled, as a sensor fed by a mirror session gets it), or as a raw-IP or
Linux cooked (SLL2) capture.

Usage: python bench/gen_capture.py mixed OUT.pcap [--packets 2000000] [--seed 1]
                                                  [--wrap vxlan|erspan|gre|raw|sll2]
       python bench/gen_capture.py flood OUT.pcap [--packets 10000000] [--seed 1]
The module also offers `flood_batches()` (in-memory PacketBatch objects, no file) for tests.
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
RECORD = np.dtype([("sec", "<u4"), ("usec", "<u4"), ("caplen", "<u4"), ("wirelen", "<u4")])
# Ethernet + IPv4 without options: where the fields patched per conversation sit.
IP_AT, SRC_AT, DST_AT, SPORT_AT, DPORT_AT = 14, 26, 30, 34, 36
T0 = 1_700_000_000  # capture start, seconds since the epoch
MIX_VERSION = 2  # part of the benchmark's cached file name: bump when the mix changes


@dataclass
class Frame:
    data: bytes
    from_client: bool
    offset_s: float  # time after the conversation start (scaled per conversation)


_SEGMENT = 1448  # TCP payload bytes per segment (Ethernet MTU, timestamps off)


def _segments(from_client: bool, payload: bytes) -> list[tuple[bool, bytes]]:
    """One exchange item per MSS-sized segment of `payload`."""
    return [(from_client, payload[at:at + _SEGMENT]) for at in range(0, len(payload), _SEGMENT)]


def _filler(size: int, seed: int) -> bytes:
    """Deterministic incompressible-looking bytes (bodies, certificates, ciphertext)."""
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


# HTTP: (method, host, URI, status, response body bytes); varied hosts, paths, query
# strings, statuses and body sizes (bodies above one segment span several).
_HTTP_EXCHANGES = [
    ("GET", "www.example.com", "/index.html", 200, 900),
    ("GET", "intranet.example.org", "/portal/home?user=4711&lang=en", 200, 5200),
    ("GET", "cdn.example.net", "/static/js/app.3f9a1c.js", 200, 14300),
    ("GET", "cdn.example.net", "/img/logo.png", 304, 0),
    ("POST", "api.example.gov", "/v2/reports/submit", 201, 120),
    ("GET", "news.example.com", "/2026/11/28/national-cirt-exercise", 200, 9800),
    ("GET", "www.example.com", "/missing/page.php?id=17", 404, 310),
    ("GET", "example.org", "/", 301, 0),
    ("GET", "updates.example.net", "/pkg/dists/stable/InRelease", 200, 2900),
    ("POST", "login.example.org", "/session", 302, 0),
    ("GET", "wiki.example.edu", "/wiki/Situational_awareness", 200, 7600),
    ("GET", "shop.example.com", "/search?q=router&page=2", 200, 4100),
]
_USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "curl/8.5.0",
    "Debian APT-HTTP/1.3 (2.6.1)",
]
_REASONS = {200: "OK", 201: "Created", 301: "Moved Permanently", 302: "Found",
            304: "Not Modified", 404: "Not Found"}


def _http_exchange(method: str, host: str, uri: str, status: int, size: int,
                   index: int) -> list[tuple[bool, bytes]]:
    body = b"user=analyst&report=weekly" if method == "POST" else b""
    request = (f"{method} {uri} HTTP/1.1\r\nHost: {host}\r\n"
               f"User-Agent: {_USER_AGENTS[index % len(_USER_AGENTS)]}\r\n"
               "Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n")
    if body:
        request += ("Content-Type: application/x-www-form-urlencoded\r\n"
                    f"Content-Length: {len(body)}\r\n")
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nServer: nginx/1.24.0\r\n"
            "Date: Sat, 28 Nov 2026 10:00:00 GMT\r\n")
    if status in (301, 302):
        head += f"Location: https://{host}/\r\n"
    if status != 304:
        head += f"Content-Type: text/html; charset=utf-8\r\nContent-Length: {size}\r\n"
    response = head.encode() + b"\r\n" + _filler(size, 100 + index)
    return [(True, request.encode() + b"\r\n" + body), *_segments(False, response)]


_TLS_NAMES = [
    "api.example.com", "mail.example.org", "login.example.net", "www.example.gov",
    "cdn.example.net", "update.example.com", "telemetry.example.org", "auth.example.edu",
    "chat.example.com", "files.example.net", "video.example.com", "pay.bank.example",
    "vpn.ministry.example", "portal.example.gov", "static.example.org", "ocsp.example.net",
]


def _tls_record(content_type: int, body: bytes) -> bytes:
    return bytes([content_type]) + b"\x03\x03" + struct.pack("!H", len(body)) + body


def _handshake(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def _extension(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def _alpn(*protocols: bytes) -> bytes:
    names = b"".join(bytes([len(p)]) + p for p in protocols)
    return _extension(0x0010, struct.pack("!H", len(names)) + names)


_CIPHERS = bytes.fromhex("c02bc02fc02cc030cca9cca8c013c014009c009d002f0035")


def _tls_client_hello(server_name: str, index: int = 0) -> bytes:
    """A TLS 1.2 ClientHello record as browsers send it: SNI, groups, point formats,
    signature algorithms, ALPN (h2, http/1.1), extended master secret, renegotiation."""
    name = server_name.encode()
    extensions = (
        _extension(0x0000, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)
        + _extension(0x0017, b"") + _extension(0xFF01, b"\x00")
        + _extension(0x000A, bytes.fromhex("0008001d001700180019"))
        + _extension(0x000B, b"\x01\x00")
        + _extension(0x000D, bytes.fromhex("0012040305030603080408050806040105010601"))
        + _alpn(b"h2", b"http/1.1"))
    body = (b"\x03\x03" + _filler(32, 300 + index) + b"\x20" + _filler(32, 400 + index)
            + struct.pack("!H", len(_CIPHERS)) + _CIPHERS + b"\x01\x00"
            + struct.pack("!H", len(extensions)) + extensions)
    return _tls_record(0x16, _handshake(0x01, body))


def _certificate_chain(server_name: str) -> list[bytes]:
    """DER leaf certificate for `server_name` and its issuing CA, as a server sends them.
    Ed25519 keys derived from the names and fixed dates: signatures are deterministic, so
    the capture is the same at every generation (the sensor's certificate SHA1 included)."""
    import datetime
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def key(label: str) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Trust Services"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    ca_key, leaf_key = key("bench-ca"), key(server_name)
    ca_name = name("Example Issuing CA 2")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(name("Example Root CA"))
          .public_key(ca_key.public_key()).serial_number(0x1000)
          .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(key("bench-root"), None))
    zone = server_name.split(".", 1)[1]
    leaf = (x509.CertificateBuilder().subject_name(name(server_name)).issuer_name(ca_name)
            .public_key(leaf_key.public_key())
            .serial_number(int.from_bytes(hashlib.sha1(server_name.encode()).digest()[:8], "big"))
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=398))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(server_name), x509.DNSName(zone), x509.DNSName(f"*.{zone}")]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier("http://crl.example-trust.example/ca2.crl")],
                None, None, None)]), critical=False)
            .sign(ca_key, None))
    from cryptography.hazmat.primitives.serialization import Encoding

    return [leaf.public_bytes(Encoding.DER), ca.public_bytes(Encoding.DER)]


def _tls_exchange(server_name: str, index: int) -> list[tuple[bool, bytes]]:
    """ClientHello; the server's flight (ServerHello with ALPN, a two-certificate chain,
    ServerKeyExchange, ServerHelloDone) in one record over several segments; the client's
    key exchange, ChangeCipherSpec and Finished; the server's; then application data."""
    server_hello = (b"\x03\x03" + _filler(32, 500 + index) + b"\x20" + _filler(32, 600 + index)
                    + b"\xc0\x2f\x00")
    extensions = _extension(0xFF01, b"\x00") + _extension(0x0017, b"") + _alpn(b"h2")
    server_hello += struct.pack("!H", len(extensions)) + extensions
    ders = _certificate_chain(server_name)
    certificates = b"".join(len(der).to_bytes(3, "big") + der for der in ders)
    key_exchange = b"\x03\x00\x1d\x20" + _filler(32, 800 + index) + b"\x04\x01\x01\x00" + _filler(
        256, 900 + index)
    flight = (_handshake(0x02, server_hello)
              + _handshake(0x0B, len(certificates).to_bytes(3, "big") + certificates)
              + _handshake(0x0C, key_exchange) + _handshake(0x0E, b""))
    client_keys = (_tls_record(0x16, _handshake(0x10, b"\x20" + _filler(32, 1000 + index)))
                   + _tls_record(0x14, b"\x01") + _tls_record(0x16, _filler(40, 1100 + index)))
    server_finish = _tls_record(0x14, b"\x01") + _tls_record(0x16, _filler(40, 1200 + index))
    return [(True, _tls_client_hello(server_name, index)),
            *_segments(False, _tls_record(0x16, flight)),
            (True, client_keys), (False, server_finish),
            (True, _tls_record(0x17, _filler(420, 1300 + index))),
            *_segments(False, _tls_record(0x17, _filler(2600 + 113 * index, 1400 + index)))]


_DNS_WORDS = ["www", "api", "mail", "cdn", "static", "img", "login", "update", "ws", "edge",
              "auth", "app", "portal", "docs", "news", "shop", "video", "m", "support",
              "files", "time", "vpn", "owa", "sso", "telemetry", "assets", "media", "git"]
_DNS_ZONES = ["example.com", "example.org", "example.net", "example.gov", "example.edu",
              "bank.example", "ministry.example", "univ.example", "isp.example",
              "cloud.example.net", "co.example", "health.example"]


def _dns_lookups(count: int = 768) -> list[tuple[str, str, int, list]]:
    """(query name, type, rcode, answers) of `count` distinct lookups: names of two to five
    labels, A (most) and AAAA queries, one to four addresses, CNAME chains to a CDN name,
    some NXDOMAIN, varied TTLs. A segment's resolver traffic repeats popular names and
    sees many others once; the mix draws lookups uniformly from this set."""
    lookups = []
    for i in range(count):
        word, zone = _DNS_WORDS[i % len(_DNS_WORDS)], _DNS_ZONES[(i // 3) % len(_DNS_ZONES)]
        serial = i // len(_DNS_WORDS)
        name = f"{word}{serial or ''}.{zone}" if i % 4 else f"{word}.host{serial}.eu.{zone}"
        qtype = "AAAA" if i % 7 == 3 else "A"
        if i % 19 == 5:
            lookups.append((name, qtype, 3, []))
            continue
        ttl = (60, 300, 3600, 86400)[i % 4]
        owner, answers = name, []
        if i % 5 == 0:
            owner = f"{word}{serial}.edge{i % 9}.cdn-provider.example"
            answers.append((name, "CNAME", ttl, owner))
        for k in range(1 + i % 4 if qtype == "A" else 1 + i % 2):
            data = (f"198.18.{(i * 7 + k) % 256}.{(i * 13 + k * 31) % 254 + 1}" if qtype == "A"
                    else f"2001:db8:{i % 4096:x}::{k + 1:x}")
            answers.append((owner, qtype, 60 if owner != name else ttl, data))
        lookups.append((name, qtype, 0, answers))
    return lookups


def _templates() -> dict[str, list[Frame]]:
    """One template conversation per kind, client 10.0.0.1:40000, server 192.0.2.1."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    cmac, smac = "02:00:00:00:00:01", "02:00:00:00:00:02"
    c, s = "10.0.0.1", "192.0.2.1"

    def tcp_conv(dport: int, exchange: list[tuple[bool, bytes]]) -> list[Frame]:
        frames: list[Frame] = []
        cseq, sseq, t = 1000, 5000, 0.0

        def add(from_client: bool, flags: str, payload: bytes = b"") -> None:
            nonlocal cseq, sseq, t
            if from_client:
                pkt = Ether(src=cmac, dst=smac) / IP(src=c, dst=s) / TCP(
                    sport=40000, dport=dport, flags=flags, seq=cseq, ack=sseq)
            else:
                pkt = Ether(src=smac, dst=cmac) / IP(src=s, dst=c) / TCP(
                    sport=dport, dport=40000, flags=flags, seq=sseq, ack=cseq)
            if payload:
                pkt = pkt / Raw(payload)
            frames.append(Frame(bytes(pkt), from_client, t))
            step = len(payload) + (1 if ("S" in flags or "F" in flags) else 0)
            if from_client:
                cseq += step
            else:
                sseq += step
            t += 0.002

        add(True, "S")
        add(False, "SA")
        add(True, "A")
        for from_client, payload in exchange:
            add(from_client, "PA", payload)
            add(not from_client, "A")
        add(True, "FA")
        add(False, "FA")
        add(True, "A")
        return frames

    def udp_pair(sport: int, dport: int, query: bytes, answer: bytes) -> list[Frame]:
        q = Ether(src=cmac, dst=smac) / IP(src=c, dst=s) / UDP(sport=sport, dport=dport) / query
        a = Ether(src=smac, dst=cmac) / IP(src=s, dst=c) / UDP(sport=dport, dport=sport) / answer
        frames = [Frame(bytes(q), True, 0.0), Frame(bytes(a), False, 0.015)]
        for f in frames:  # UDP checksum 0 = none (stays valid after address patching)
            raw = bytearray(f.data)
            raw[40:42] = b"\x00\x00"
            f.data = bytes(raw)
        return frames

    templates: dict[str, list[Frame]] = {}
    for i, (method, host, uri, status, size) in enumerate(_HTTP_EXCHANGES):
        templates[f"http{i}"] = tcp_conv(80, _http_exchange(method, host, uri, status, size, i))
    for i, name in enumerate(_TLS_NAMES):
        templates[f"tls{i}"] = tcp_conv(443, _tls_exchange(name, i))
    templates["bulk"] = tcp_conv(8080, [(False, b"d" * 1448)] * 16)
    for i, (name, qtype, rcode, answers) in enumerate(_dns_lookups()):
        query = bytes(DNS(id=(0x1234 + i) & 0xFFFF, rd=1, qd=DNSQR(qname=name, qtype=qtype)))
        records = [DNSRR(rrname=owner, type=kind, ttl=ttl, rdata=data)
                   for owner, kind, ttl, data in answers]
        answer = bytes(DNS(id=(0x1234 + i) & 0xFFFF, qr=1, rd=1, ra=1, rcode=rcode,
                           qd=DNSQR(qname=name, qtype=qtype), an=records))
        templates[f"dns{i}"] = udp_pair(53000, 53, query, answer)
    templates["ntp"] = udp_pair(40123, 123, b"\x23" + bytes(47), b"\x24" + bytes(47))
    echo_q = Ether(src=cmac, dst=smac) / IP(src=c, dst=s) / ICMP(type=8, id=7, seq=1) / (b"p" * 56)
    echo_r = Ether(src=smac, dst=cmac) / IP(src=s, dst=c) / ICMP(type=0, id=7, seq=1) / (b"p" * 56)
    templates["icmp"] = [Frame(bytes(echo_q), True, 0.0), Frame(bytes(echo_r), False, 0.01)]
    syn = Ether(src=cmac, dst=smac) / IP(src=c, dst=s) / TCP(sport=40000, dport=3389, flags="S")
    rst = Ether(src=smac, dst=cmac) / IP(src=s, dst=c) / TCP(sport=3389, dport=40000, flags="RA")
    templates["rej"] = [Frame(bytes(syn), True, 0.0), Frame(bytes(rst), False, 0.001)]
    return templates


# Share of conversations per kind (before the per-kind packet counts): mostly DNS and short
# web sessions, a few bulk transfers, some ICMP/NTP/rejected probes.
MIX = {"http": 0.18, "tls": 0.22, "bulk": 0.03, "dns": 0.38, "ntp": 0.07, "icmp": 0.07,
       "rej": 0.05}


def _strided(buf: np.ndarray, width: int) -> np.ndarray:
    """View of `buf` where item i is buf[i:i+width] (for scattered fixed-width writes)."""
    return np.ndarray(shape=(buf.size - width + 1,), dtype=np.dtype(f"V{width}"), buffer=buf,
                      strides=(1,))


def _ip_checksums(buf: np.ndarray, ip_at: np.ndarray) -> None:
    """Recompute the IPv4 header checksum of the 20-byte headers at ip_at (in place)."""
    header = buf[ip_at[:, None] + np.arange(20)].astype(np.uint32)
    header[:, 10:12] = 0
    words = (header[:, 0::2] << 8) | header[:, 1::2]
    total = words.sum(axis=1)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    checksum = (~total & 0xFFFF).astype(">u2")
    _strided(buf, 2)[ip_at + 10] = checksum.view("V2")


def _render(frames: list[bytes], frame_of: np.ndarray, ts_us: np.ndarray,
            patches: dict[int, np.ndarray]) -> bytes:
    """pcap records (no file header) of packets in row order.

    frames: distinct frame templates; frame_of[i]: template of row i; ts_us[i]: time;
    patches: byte offset in the frame -> (n,) void column written there (addresses, ports).
    """
    lengths = np.array([len(f) for f in frames], dtype=np.int64)[frame_of]
    starts = np.zeros(frame_of.size, dtype=np.int64)
    np.cumsum(16 + lengths[:-1], out=starts[1:])
    buf = np.zeros(int(starts[-1] + 16 + lengths[-1]) if frame_of.size else 0, dtype=np.uint8)
    records = np.zeros(frame_of.size, dtype=RECORD)
    records["sec"] = ts_us // 1_000_000
    records["usec"] = ts_us % 1_000_000
    records["caplen"] = lengths
    records["wirelen"] = np.maximum(lengths, 60)  # Ethernet minimum frame (FCS not counted)
    _strided(buf, 16)[starts] = records.view("V16")
    by_frame = np.argsort(frame_of, kind="stable")  # rows of each template, one sort
    bounds = np.searchsorted(frame_of[by_frame], np.arange(len(frames) + 1))
    for index, frame in enumerate(frames):  # loop over templates, not packets
        rows = by_frame[bounds[index]:bounds[index + 1]]
        if rows.size:
            _strided(buf, len(frame))[starts[rows] + 16] = np.frombuffer(frame, f"V{len(frame)}")
    for at, column in patches.items():
        _strided(buf, column.dtype.itemsize)[starts + 16 + at] = column
    ip_rows = starts + 16 + IP_AT
    for lo in range(0, ip_rows.size, 1 << 20):  # bounded temporaries
        _ip_checksums(buf, ip_rows[lo:lo + (1 << 20)])
    return buf.tobytes()


def _be(values: np.ndarray, dtype: str) -> np.ndarray:
    return values.astype(dtype).view(f"V{np.dtype(dtype).itemsize}")


def mixed_records(packets: int, seed: int = 1, duration_s: float = 600.0) -> bytes:
    """pcap records of about `packets` packets of the mixed traffic (see module doc)."""
    rng = np.random.default_rng(seed)
    templates = _templates()
    kinds = {k: [name for name in templates if name.rstrip("0123456789") == k] for k in MIX}
    mean_len = sum(MIX[k] * np.mean([len(templates[n]) for n in kinds[k]]) for k in MIX)
    conversations = max(int(packets / mean_len), 1)
    names = list(templates)
    weights = np.array([MIX[name.rstrip("0123456789")] / len(kinds[name.rstrip("0123456789")])
                        for name in names])
    conv_kind = rng.choice(len(names), size=conversations, p=weights / weights.sum())
    conv_client = (0x0A000000 | rng.integers(1, 1 << 16, conversations)).astype(np.uint32)
    server_pool = np.concatenate([0xC0000200 + np.arange(1, 251), 0xC6336400 + np.arange(1, 251)])
    conv_server = server_pool[rng.integers(0, server_pool.size, conversations)].astype(np.uint32)
    conv_port = rng.integers(1024, 65535, conversations).astype(np.uint16)
    conv_start = rng.uniform(0, duration_s, conversations)
    conv_scale = rng.uniform(0.5, 4.0, conversations)  # per-conversation RTT / pacing

    frames: list[bytes] = []
    parts = {name: [] for name in ("frame", "conv", "ts", "from_client")}
    for k, name in enumerate(names):
        convs = np.flatnonzero(conv_kind == k)
        for frame in templates[name]:
            parts["frame"].append(np.full(convs.size, len(frames), dtype=np.int64))
            parts["conv"].append(convs)
            parts["ts"].append(conv_start[convs] + frame.offset_s * conv_scale[convs])
            parts["from_client"].append(np.full(convs.size, frame.from_client))
            frames.append(frame.data)
    frame_of, conv, ts, from_client = (np.concatenate(parts[n]) for n in
                                       ("frame", "conv", "ts", "from_client"))
    order = np.argsort(ts, kind="stable")
    frame_of, conv, from_client = frame_of[order], conv[order], from_client[order]
    ts_us = (T0 * 1_000_000 + (ts[order] * 1e6)).astype(np.int64)
    client, server, port = conv_client[conv], conv_server[conv], conv_port[conv]
    is_icmp = np.isin(frame_of, [i for i, f in enumerate(frames) if f[23] == 1])
    patches = {
        SRC_AT: _be(np.where(from_client, client, server), ">u4"),
        DST_AT: _be(np.where(from_client, server, client), ">u4"),
    }
    # Client port: TCP/UDP source port from the client, destination port to it. ICMP keeps
    # its type/code bytes (the address pair separates its conversations).
    template_sport = np.array([int.from_bytes(f[34:36], "big") for f in frames])[frame_of]
    template_dport = np.array([int.from_bytes(f[36:38], "big") for f in frames])[frame_of]
    sport = np.where(from_client & ~is_icmp, port, template_sport)
    dport = np.where(~from_client & ~is_icmp, port, template_dport)
    patches[SPORT_AT] = _be(sport, ">u2")
    patches[DPORT_AT] = _be(dport, ">u2")
    return _render(frames, frame_of, ts_us, patches)


def flood_records(packets: int, seed: int = 1, start_s: float = 0.0,
                  rate_pps: float = 1_000_000.0, dport: int = 80) -> bytes:
    """pcap records of a spoofed-source SYN flood: random source ip:port -> 192.0.2.10:dport."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    syn = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                / IP(src="10.0.0.1", dst="192.0.2.10") / TCP(sport=40000, dport=dport, flags="S"))
    rng = np.random.default_rng(seed)
    src = rng.integers(1 << 24, 0xE0000000, packets, dtype=np.uint32)  # unicast-looking
    sport = rng.integers(1024, 65535, packets).astype(np.uint16)
    ts_us = (T0 * 1_000_000 + (start_s + np.arange(packets) / rate_pps) * 1e6).astype(np.int64)
    return _render([syn], np.zeros(packets, dtype=np.int64), ts_us,
                   {SRC_AT: _be(src, ">u4"), SPORT_AT: _be(sport, ">u2")})


def write_mixed(path: str | Path, packets: int = 2_000_000, seed: int = 1) -> int:
    body = mixed_records(packets, seed)
    Path(path).write_bytes(PCAP_HEADER + body)
    return len(PCAP_HEADER) + len(body)


def write_flood(path: str | Path, packets: int = 10_000_000, seed: int = 1,
                chunk: int = 1_000_000, dport: int = 80) -> int:
    """Written in chunks so the generator itself stays small."""
    size = len(PCAP_HEADER)
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        for lo in range(0, packets, chunk):
            n = min(chunk, packets - lo)
            body = flood_records(n, seed + lo, start_s=lo / 1_000_000.0, dport=dport)
            fh.write(body)
            size += len(body)
    return size


def flood_batches(packets: int, batch_packets: int = 65536, seed: int = 1,
                  dport: int = 80) -> Iterator:
    """The flood as in-memory PacketBatch objects (no file), for tests."""
    from sensors.packets import PacketBatch

    for lo in range(0, packets, batch_packets):
        n = min(batch_packets, packets - lo)
        body = np.frombuffer(flood_records(n, seed + lo, start_s=lo / 1_000_000.0, dport=dport),
                             np.uint8)
        records_at = np.arange(n, dtype=np.int64) * (16 + 54)
        head = body[records_at[:, None] + np.arange(16)].copy().view(RECORD)[:, 0]
        yield PacketBatch(
            data=body, offset=records_at + 16, caplen=head["caplen"].astype(np.uint32),
            wirelen=head["wirelen"].astype(np.uint32),
            ts_ns=head["sec"].astype(np.int64) * 1_000_000_000 + head["usec"] * 1000,
            linktype=np.ones(n, dtype=np.uint16), interface=np.zeros(n, dtype=np.uint16),
            first_index=lo)


# --- mirrored and other-link variants of a capture --------------------------------------
# A sensor fed by a mirror session sees every packet inside a tunnel; tun devices and
# `tcpdump -i any` give raw-IP and Linux cooked captures. wrap_records() rewrites Ethernet
# pcap records into those: each frame keeps its bytes from `cut` on behind a fixed prefix,
# whose length fields (outer IPv4 total length, UDP length) and IPv4 checksum are patched
# per record, column-wise (a loop over distinct frame lengths, never over packets).

_MAC = bytes.fromhex("020000000002020000000001")
_OUTER_IP = bytes.fromhex("4500000000004000ff00000000c0000201c0000202")[:20]  # 192.0.2.1 -> .2


def _outer_ipv4(protocol: int) -> bytes:
    header = bytearray(_OUTER_IP)
    header[9] = protocol
    return _MAC + b"\x08\x00" + bytes(header)


# name -> (prefix, bytes of the original frame cut off its front, link type, UDP length at)
WRAPS = {
    # VXLAN (UDP 4789, I flag, VNI 5) around the whole Ethernet frame
    "vxlan": (_outer_ipv4(17) + struct.pack(">HHHH", 49152, 4789, 0, 0)
              + bytes.fromhex("0800000000000500"), 0, 1, 38),
    # ERSPAN type II (GRE with the S bit, 0x88BE; version 1, session 3) around the frame
    "erspan": (_outer_ipv4(47) + bytes.fromhex("100088be00000000") + bytes.fromhex(
        "1000000300000000"), 0, 1, None),
    # GRE (0x0800) around the IPv4 packet
    "gre": (_outer_ipv4(47) + bytes.fromhex("00000800"), 14, 1, None),
    # the IPv4 packet alone (LINKTYPE_RAW) / behind a Linux cooked v2 header
    "raw": (b"", 14, 101, None),
    "sll2": (bytes.fromhex("0800000000000002000100060200000000010000"), 14, 276, None),
}


def record_starts(body: bytes) -> np.ndarray:
    """Offsets of the records of a pcap body (little-endian headers, no file header)."""
    view = memoryview(body)
    starts, pos, size = [], 0, len(body)
    while pos + 16 <= size:
        starts.append(pos)
        pos += 16 + int.from_bytes(view[pos + 8:pos + 12], "little")
    return np.array(starts, dtype=np.int64)


def wrap_records(body: bytes, wrap: str) -> bytes:
    """The pcap records of `body` (Ethernet, IPv4) rewritten as WRAPS[wrap] says."""
    prefix, cut, _linktype, udp_at = WRAPS[wrap]
    src = np.frombuffer(body, dtype=np.uint8)
    starts = record_starts(body)
    head = src[starts[:, None] + np.arange(16)].copy().view(RECORD)[:, 0]
    kept = np.maximum(head["caplen"].astype(np.int64) - cut, 0)
    lengths = kept + len(prefix)
    out_starts = np.zeros(starts.size, dtype=np.int64)
    np.cumsum(16 + lengths[:-1], out=out_starts[1:])
    out = np.zeros(int(out_starts[-1] + 16 + lengths[-1]) if starts.size else 0, np.uint8)
    records = head.copy()
    records["caplen"] = lengths
    records["wirelen"] = np.maximum(head["wirelen"].astype(np.int64) + len(prefix) - cut,
                                    lengths)
    _strided(out, 16)[out_starts] = records.view("V16")
    if prefix:
        _strided(out, len(prefix))[out_starts + 16] = np.frombuffer(prefix, f"V{len(prefix)}")
    for size in np.unique(kept):  # frames of one length at a time
        rows = np.flatnonzero(kept == size)
        if size:
            _strided(out, int(size))[out_starts[rows] + 16 + len(prefix)] = \
                _strided(src, int(size))[starts[rows] + 16 + cut]
    if prefix[12:14] == b"\x08\x00":  # an outer IPv4 header: lengths and checksum
        total = lengths - 14
        _strided(out, 2)[out_starts + 16 + 16] = _be(total, ">u2")
        if udp_at is not None:
            _strided(out, 2)[out_starts + 16 + udp_at] = _be(total - 20, ">u2")
        ip_rows = out_starts + 16 + 14
        for lo in range(0, ip_rows.size, 1 << 20):  # bounded temporaries
            _ip_checksums(out, ip_rows[lo:lo + (1 << 20)])
    return out.tobytes()


def pcap_header(linktype: int = 1) -> bytes:
    return PCAP_HEADER[:-4] + struct.pack("<I", linktype)


def write_wrapped(source: str | Path, path: str | Path, wrap: str) -> int:
    """Rewrite the Ethernet capture `source` (written by this module) as WRAPS[wrap]."""
    body = Path(source).read_bytes()[len(PCAP_HEADER):]
    out = pcap_header(WRAPS[wrap][2]) + wrap_records(body, wrap)
    Path(path).write_bytes(out)
    return len(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("mixed", "flood"))
    parser.add_argument("out")
    parser.add_argument("--packets", type=int)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dport", type=int, default=80, help="flood: victim port")
    parser.add_argument("--wrap", choices=sorted(WRAPS),
                        help="write the capture mirrored in a tunnel / as another link type")
    args = parser.parse_args(argv)
    if args.kind == "mixed":
        size = write_mixed(args.out, args.packets or 2_000_000, args.seed)
    else:
        size = write_flood(args.out, args.packets or 10_000_000, args.seed, dport=args.dport)
    if args.wrap:
        size = write_wrapped(args.out, args.out, args.wrap)
    print(f"{args.out}: {size / 1e6:.1f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
