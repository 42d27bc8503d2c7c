"""SSH events: one "ssh" event per SSH connection, with both identification strings and the
authentication outcome inferred from encrypted packet sizes, the way Zeek's SSH analyzer does.

Input: sensors.tcp_stream.StreamCollector (bounded reassembly) over flows on `ports`
(default 22) or opened by a payload starting with "SSH-" (SSH on any port). For each flow:

1. Clear-text phase, per direction: optional lines before the banner (servers only), the
   identification line "SSH-2.0-..." / "SSH-1.99-...", then binary packets
   (uint32 length, padding length, payload; no MAC before keys are in use) up to and
   including SSH_MSG_NEWKEYS (21): everything after it in that direction is encrypted.
   KEXINIT (20) name-lists give the negotiated compression; KEX messages give the roles:
   the client sends KEXDH_INIT/ECDH_INIT (30), GEX_REQUEST (34, 30 old) and GEX_INIT (32),
   the server KEXDH_REPLY (31) and GEX_REPLY (33). When they contradict the collector's
   guess (a flow on a non-standard port opened by the server's banner), roles are swapped.
2. Encrypted phase: the collector's per-segment list (ts, direction, payload_len, in
   arrival order, retransmissions left out) is turned into encrypted bytes per segment
   (segment offsets from cumulative lengths; a segment straddling NEWKEYS counts its
   encrypted part) and run through Zeek's heuristic (SSH.cc ProcessEncrypted):
   - server segments are ignored until the client has sent encrypted data;
   - the first server segment is SERVICE_ACCEPT: its size is the reference `accept`;
   - a server segment of size accept - 16 is USERAUTH_SUCCESS (8 bytes decrypted vs 24):
     an attempt, success, decision made;
   - otherwise the first other server segment is USERAUTH_FAILURE (a segment more than
     256 bytes larger than `accept` is skipped once: a pre-auth banner); its size is the
     failure size, and every later server segment of that size is a failed attempt.
   Zeek's script then reports: success if a success was seen, failure if attempts > 0 and
   no success, unknown otherwise; no inference when zlib compression is negotiated or
   either side is not SSH-2 (SSH-1.99 counts as 2).

Limits (as Zeek's): the heuristic assumes one SSH packet per TCP segment in the auth
phase and ciphers whose sizes follow the 16-byte rule (it works for the common AES-CTR/GCM
and chacha20 modes with OpenSSH); the first USERAUTH_FAILURE (answer to the "none" probe)
is not counted as an attempt. Beyond the collector's per-flow segment list
(`max_packets_meta`) nothing more is inferred. A gap in the clear-text phase leaves the
outcome unknown.

An event is emitted when the outcome is success (the flow is then released: nothing more
is needed), when the flow ends (FIN/RST/idle/eviction) or at flush. Flows whose first
bytes are not SSH are released without an event (stats["ssh_not_ssh"]).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from pipeline.schema import SSH, EventBatch
from sensors.analyzer import Analyzer
from sensors.community_id import community_id_column
from sensors.packets import IP_DTYPE, DecodedPackets, constant_text, plain_vlan
from sensors.stream_prefilter import PortPrefilter
from sensors.tcp_stream import StreamChunk, StreamCollector, prefix_predicate

MSG_KEXINIT = 20
MSG_NEWKEYS = 21
CLIENT_KEX_MESSAGES = frozenset({30, 32, 34})
SERVER_KEX_MESSAGES = frozenset({31, 33})
COMPRESSION_ALGORITHMS = frozenset({"zlib", "zlib@openssh.com"})  # Zeek's default set
MAX_BANNER = 255  # RFC 4253 4.2: identification line at most 255 bytes incl. CR LF
MAX_PRE_BANNER_LINES = 32
MAX_PACKET_LEN = 35000  # RFC 4253 6.1: implementations must handle 35000-byte packets
BANNER_SKIP = 256  # Zeek: a first failure-sized packet this much bigger is a pre-auth banner
SUCCESS_DELTA = 16  # USERAUTH_SUCCESS is 16 bytes shorter than SERVICE_ACCEPT
SSH_PREFIX = b"SSH-"  # a payload starting so opens a flow on any port

_U32 = struct.Struct("!I")


@dataclass
class ClearText:
    """What the clear-text start of one direction says."""

    banner: str = ""
    newkeys_end: int = -1  # stream offset where encryption starts; -1 not (yet) seen
    messages: list[int] = field(default_factory=list)  # message numbers before NEWKEYS
    kexinit: bytes = b""  # payload of the KEXINIT message
    not_ssh: bool = False  # bytes that cannot be SSH


def _banner_text(raw: bytes) -> str:
    return raw.rstrip(b"\r").decode("utf-8", "replace")


def parse_clear_text(data: bytes, may_have_preamble: bool) -> ClearText:
    """Banner and binary packets up to NEWKEYS of one direction's first bytes."""
    out = ClearText()
    pos = 0
    for _ in range(MAX_PRE_BANNER_LINES + 1):
        nl = data.find(b"\n", pos, pos + MAX_BANNER + 1)
        if nl < 0:
            if len(data) - pos > MAX_BANNER or (data[pos:pos + 4] and
                                                 not b"SSH-".startswith(data[pos:pos + 4])
                                                 and not may_have_preamble):
                out.not_ssh = True
            return out
        line = data[pos:nl]
        pos = nl + 1
        if line.startswith(b"SSH-"):
            out.banner = _banner_text(line)
            break
        if not may_have_preamble:  # RFC 4253: only the server may send other lines first
            out.not_ssh = True
            return out
    else:
        out.not_ssh = True
        return out
    while pos + 6 <= len(data):
        (length,) = _U32.unpack_from(data, pos)
        if length < 2 or length > MAX_PACKET_LEN:
            out.not_ssh = True  # not a clear-text binary packet: cannot follow further
            return out
        end = pos + 4 + length
        if end > len(data):
            return out
        padding = data[pos + 4]
        message = data[pos + 5]
        out.messages.append(message)
        if message == MSG_KEXINIT and not out.kexinit:
            out.kexinit = data[pos + 5:max(pos + 5, end - padding)]
        pos = end
        if message == MSG_NEWKEYS:
            out.newkeys_end = pos
            return out
    return out


def kexinit_lists(payload: bytes) -> list[list[str]] | None:
    """The ten name-lists of a KEXINIT payload (message byte, 16-byte cookie, lists...)."""
    pos = 17
    lists: list[list[str]] = []
    for _ in range(10):
        if pos + 4 > len(payload):
            return None
        (length,) = _U32.unpack_from(payload, pos)
        pos += 4
        if pos + length > len(payload):
            return None
        text = payload[pos:pos + length].decode("ascii", "replace")
        lists.append(text.split(",") if text else [])
        pos += length
    return lists


def negotiated(client: list[str], server: list[str]) -> str:
    """RFC 4253 7.1: the first client algorithm the server also supports."""
    server_set = set(server)
    return next((name for name in client if name in server_set), "")


def compression_in_use(client_kexinit: bytes, server_kexinit: bytes) -> bool:
    """True when zlib compression is negotiated in either direction (Zeek: no inference)."""
    client = kexinit_lists(client_kexinit)
    server = kexinit_lists(server_kexinit)
    if client is None or server is None:
        return False
    return any(negotiated(client[i], server[i]) in COMPRESSION_ALGORITHMS for i in (6, 7))


def is_ssh2(banner: str) -> bool:
    return banner.startswith("SSH-2.") or banner.startswith("SSH-1.99")


def encrypted_segments(packets: list[tuple[int, int, int]], newkeys_end: tuple[int, int]
                       ) -> list[tuple[int, int]]:
    """(direction, encrypted bytes) per segment after NEWKEYS, in arrival order."""
    out: list[tuple[int, int]] = []
    offset = [0, 0]
    for _ts, direction, length in packets:
        start = offset[direction]
        end = start + length
        offset[direction] = end
        enc_start = newkeys_end[direction]
        if enc_start < 0:
            continue
        encrypted = end - max(start, enc_start)
        if encrypted > 0:
            out.append((direction, encrypted))
    return out


def infer_auth(segments: list[tuple[int, int]]) -> tuple[int, bool]:
    """Zeek's size heuristic -> (attempts, success seen)."""
    attempts = 0
    saw_client = False
    accept_size = 0
    failure_size = 0
    skipped_banner = False
    for direction, size in segments:
        if direction == 0:
            saw_client = True
            continue
        if not saw_client:
            continue
        if not accept_size:
            accept_size = size
            continue
        if not failure_size and size + SUCCESS_DELTA == accept_size:
            return attempts + 1, True  # success with the "none" method
        if not failure_size:
            if not skipped_banner and size - accept_size > BANNER_SKIP:
                skipped_banner = True
                continue
            failure_size = size
            continue
        if size == failure_size:
            attempts += 1
            continue
        if size + SUCCESS_DELTA == accept_size:
            return attempts + 1, True
    return attempts, False


@dataclass
class SshSession:
    """The analysis of one flow so far."""

    is_ssh: bool | None  # None: not enough bytes to tell
    swapped: bool  # roles opposite to the collector's guess
    client_banner: str
    server_banner: str
    attempts: int
    outcome: int  # 1 success, 0 failure, -1 unknown


def analyze(chunk: StreamChunk) -> SshSession:
    """SSH banners and authentication outcome of one collected flow."""
    first = parse_clear_text(chunk.data[0], may_have_preamble=True)
    second = parse_clear_text(chunk.data[1], may_have_preamble=True)
    # Roles: the KEX messages tell who the client is, whatever opened the flow.
    swapped = bool(CLIENT_KEX_MESSAGES.intersection(second.messages)
                   or SERVER_KEX_MESSAGES.intersection(first.messages))
    client, server = (second, first) if swapped else (first, second)
    banners = bool(client.banner or server.banner)
    if (first.not_ssh and not first.banner) or (second.not_ssh and not second.banner):
        is_ssh: bool | None = False
    elif banners:
        is_ssh = True
    else:
        is_ssh = None
    attempts, success = 0, False
    if (is_ssh and is_ssh2(client.banner) and is_ssh2(server.banner)
            and not compression_in_use(client.kexinit, server.kexinit)):
        packets = chunk.packets
        if swapped:
            packets = [(ts, 1 - d, n) for ts, d, n in packets]
        attempts, success = infer_auth(
            encrypted_segments(packets, (client.newkeys_end, server.newkeys_end)))
    outcome = 1 if success else (0 if attempts else -1)
    return SshSession(is_ssh, swapped, client.banner, server.banner, attempts, outcome)


class SshAnalyzer(Analyzer):
    """SSH connections on `ports` or any port (banner), one event each (see module doc).

    Settings: ports (list, default [22]), max_flows, max_bytes_per_dir (clear-text bytes
    kept per direction), max_packets (segments listed per flow for the size heuristic),
    idle_timeout_s.
    """

    def __init__(self, config, observer_name: str, ingress_zone: str) -> None:
        super().__init__(config, observer_name, ingress_zone)
        ports = set(int(p) for p in config.get("ports", [22]))
        self.collector = StreamCollector(
            ports,
            max_bytes_per_dir=int(config.get("max_bytes_per_dir", 16384)),
            max_flows=int(config.get("max_flows", 10000)),
            idle_timeout_s=float(config.get("idle_timeout_s", 300)),
            client_predicate=prefix_predicate([SSH_PREFIX]),
            max_packets_meta=int(config.get("max_packets", 128)),
        )
        # The collector sees only rows on SSH ports or of flows opened by "SSH-" (the
        # same chunks, without hashing every TCP packet of the link); None: every row.
        self.prefilter: PortPrefilter | None = PortPrefilter(ports, (SSH_PREFIX,))

    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        if self.prefilter is None:
            return self._events(self.collector.feed(packets))
        return self._events(self.prefilter.feed(self.collector, packets))

    def flush(self) -> list[EventBatch]:
        out = self._events(self.collector.flush())
        for key, value in self.collector.stats.items():
            self.stats[f"ssh_stream_{key}"] = value
        return out

    def _events(self, chunks: list[StreamChunk]) -> list[EventBatch]:
        done: list[tuple[StreamChunk, SshSession]] = []
        for chunk in chunks:
            session = analyze(chunk)
            if session.is_ssh is False:
                self._bump("ssh_not_ssh")
                if not chunk.final:
                    self.collector.release(chunk.key)
                continue
            if chunk.final or session.outcome == 1:
                if session.is_ssh:
                    done.append((chunk, session))
                if not chunk.final:
                    self.collector.release(chunk.key)  # decided: nothing more needed
        if not done:
            return []
        self.stats["ssh_sessions"] = self.stats.get("ssh_sessions", 0) + len(done)
        return [self._batch(done)]

    def _bump(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    def _batch(self, done: list[tuple[StreamChunk, SshSession]]) -> EventBatch:
        n = len(done)
        src, dst, sport, dport = [], [], [], []
        for chunk, session in done:
            ends = ((chunk.client_ip, chunk.client_port), (chunk.server_ip, chunk.server_port))
            if session.swapped:
                ends = ends[::-1]
            src.append(ends[0][0])
            sport.append(ends[0][1])
            dst.append(ends[1][0])
            dport.append(ends[1][1])
        src_ip = np.frombuffer(b"".join(src), dtype=IP_DTYPE)
        dst_ip = np.frombuffer(b"".join(dst), dtype=IP_DTYPE)
        transport = np.full(n, 6, dtype=np.uint8)
        src_port = np.asarray(sport, dtype=np.uint16)
        dst_port = np.asarray(dport, dtype=np.uint16)
        columns = {
            "timestamp": np.asarray([c.start_ts for c, _ in done], dtype=np.int64),
            "observer_name": constant_text(n, self.observer_name),
            "ingress_zone": constant_text(n, self.ingress_zone),
            "src_ip": src_ip,
            "dst_ip": dst_ip,
            "src_port": src_port,
            "dst_port": dst_port,
            "transport": transport,
            "vlan": plain_vlan(np.asarray([c.vlan for c, _ in done], dtype=np.int64)),
            "community_id": community_id_column(src_ip, dst_ip, transport, src_port, dst_port),
            "client_banner": _objects([s.client_banner for _, s in done]),
            "server_banner": _objects([s.server_banner for _, s in done]),
            "auth_attempts": np.asarray([min(s.attempts, 0xFFFF) for _, s in done],
                                        dtype=np.uint16),
            "auth_success": np.asarray([s.outcome for _, s in done], dtype=np.int8),
        }
        order = np.argsort(columns["timestamp"], kind="stable")
        return EventBatch(SSH.name, {k: v[order] for k, v in columns.items()})


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
