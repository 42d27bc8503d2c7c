"""ICMP events: one "icmp" event per ICMP/ICMPv6 message, built column-wise.

The decoder reads the 8-byte ICMP header (type, code, checksum, rest-of-header) and points
`payload_offset` just after it. Echo request/reply (ICMP 8/0, ICMPv6 128/129) carry the
identifier and sequence number in the rest-of-header, read here for all rows at once;
other types get 0 in echo_id/echo_seq.

`payload_bytes` is the ICMP payload as captured (after the 8-byte header, within the IP
datagram's length, so Ethernet padding is not counted; shorter than on the wire when the
capture's snap length cut the packet).

Which rows carry an ICMP header: DecodedPackets has no "transport header decoded" flag, and
rows without one (non-first fragments, headers cut short, stats["icmp_no_header"]) also have
transport 1/58 and type 0 (= echo reply). A decoded header is recognised by its own bytes:
the type/code columns equal the two bytes 8 and 7 before `payload_offset`. For a non-first
IPv4 fragment those bytes are the first two bytes of the source address, so a fragment from
0.0.0.0/16 with matching bytes would still pass (such sources are not routable).
"""

from __future__ import annotations

import numpy as np

from pipeline.jit import njit
from pipeline.schema import ICMP, EventBatch
from sensors.analyzer import Analyzer
from sensors.community_id import community_id_column
from sensors.packets import IP_DTYPE, DecodedPackets, constant_text
from sensors.tcp_stream import prefetch

PROTO_ICMP = 1
PROTO_ICMPV6 = 58
ICMP_HEADER_LEN = 8
ECHO_TYPES_V4 = (0, 8)
ECHO_TYPES_V6 = (128, 129)
PREFETCH_ROWS = 8  # how many ICMP rows ahead _scan asks for a header's line


@njit
def _scan(ip_version: np.ndarray, transport: np.ndarray, payload_offset: np.ndarray,
          icmp_type: np.ndarray, icmp_code: np.ndarray, data: np.ndarray):
    """icmp_rows and the echo fields in one compiled pass: (rows with a decoded ICMP/ICMPv6
    header, count of ICMP rows without one, echo_id, echo_seq of those rows).

    A header is recognised as in the module doc: its first two bytes (8 before
    payload_offset) equal the type/code columns. Echo request/reply rows get the identifier
    and sequence (the 4 bytes before payload_offset), others 0. Why compiled: the numpy
    version made ~10 passes over the whole batch for the ~2 % of ICMP rows, then gathered
    their header bytes from the capture three times (each a cache miss per row, the
    packets long out of the caches); here each row's line is asked for PREFETCH_ROWS rows
    ahead and read once."""
    n = transport.shape[0]
    size = data.shape[0]
    candidates = np.empty(n, dtype=np.int64)
    found = 0
    for i in range(n):
        proto = transport[i]
        if (proto == PROTO_ICMP or proto == PROTO_ICMPV6) and ip_version[i] != 0:
            candidates[found] = i
            found += 1
    rows = np.empty(found, dtype=np.int64)
    echo_id = np.zeros(found, dtype=np.uint16)
    echo_seq = np.zeros(found, dtype=np.uint16)
    kept = 0
    for k in range(found):
        if k + 2 * PREFETCH_ROWS < found:  # the row's columns, then (below) its header
            later = candidates[k + 2 * PREFETCH_ROWS]
            prefetch(payload_offset, later)
            prefetch(icmp_type, later)
            prefetch(icmp_code, later)
            prefetch(transport, later)
        if k + PREFETCH_ROWS < found:
            ahead = np.int64(payload_offset[candidates[k + PREFETCH_ROWS]]) - ICMP_HEADER_LEN
            if 0 <= ahead < size:
                prefetch(data, ahead)
        i = candidates[k]
        at = np.int64(payload_offset[i]) - ICMP_HEADER_LEN
        if at < 0 or at >= size:
            continue
        if data[at] != icmp_type[i] or data[min(at + 1, size - 1)] != icmp_code[i]:
            continue
        rows[kept] = i
        kind = icmp_type[i]
        if transport[i] == PROTO_ICMP:
            echo = kind == ECHO_TYPES_V4[0] or kind == ECHO_TYPES_V4[1]
        else:
            echo = kind == ECHO_TYPES_V6[0] or kind == ECHO_TYPES_V6[1]
        if echo and at + ICMP_HEADER_LEN <= size:
            echo_id[kept] = (np.uint16(data[at + 4]) << 8) | np.uint16(data[at + 5])
            echo_seq[kept] = (np.uint16(data[at + 6]) << 8) | np.uint16(data[at + 7])
        kept += 1
    return rows[:kept], found - kept, echo_id[:kept], echo_seq[:kept]


@njit
def _event_rows(rows: np.ndarray, ts_ns: np.ndarray, vlan: np.ndarray, payload_len: np.ndarray,
                transport: np.ndarray, icmp_type: np.ndarray, icmp_code: np.ndarray,
                src: np.ndarray, dst: np.ndarray):
    """The event columns of `rows` (ts_ns, vlan, payload_len as uint32, transport, type,
    code, and the (k, 16) address bytes) in one pass. Why: ten numpy gathers each read their
    column at the ~2 % ICMP rows, out of the caches by this stage; here each row's lines are
    asked for PREFETCH_ROWS rows ahead."""
    k = rows.shape[0]
    out_ts = np.empty(k, dtype=np.int64)
    out_vlan = np.empty(k, dtype=np.uint16)
    out_len = np.empty(k, dtype=np.uint32)
    out_transport = np.empty(k, dtype=np.uint8)
    out_type = np.empty(k, dtype=np.uint8)
    out_code = np.empty(k, dtype=np.uint8)
    out_src = np.empty((k, 16), dtype=np.uint8)
    out_dst = np.empty((k, 16), dtype=np.uint8)
    flat_src = src.reshape(-1)
    flat_dst = dst.reshape(-1)
    for j in range(k):
        if j + PREFETCH_ROWS < k:
            later = rows[j + PREFETCH_ROWS]
            prefetch(ts_ns, later)
            prefetch(vlan, later)
            prefetch(payload_len, later)
            prefetch(flat_src, later * 16)
            prefetch(flat_dst, later * 16)
        i = rows[j]
        out_ts[j] = ts_ns[i]
        out_vlan[j] = vlan[i]  # (a keyed view's value: its low 16 bits, packets.keyed_vlan)
        out_len[j] = np.uint32(payload_len[i])
        out_transport[j] = transport[i]
        out_type[j] = icmp_type[i]
        out_code[j] = icmp_code[i]
        for b in range(16):
            out_src[j, b] = src[i, b]
            out_dst[j, b] = dst[i, b]
    return out_ts, out_vlan, out_len, out_transport, out_type, out_code, out_src, out_dst


def _icmp_scan(packets: DecodedPackets) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    return _scan(packets.ip_version, packets.transport, packets.payload_offset,
                 packets.icmp_type, packets.icmp_code,
                 np.asarray(packets.data).reshape(-1).view(np.uint8))


def _address_bytes(column: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16)


def icmp_rows(packets: DecodedPackets) -> tuple[np.ndarray, int]:
    """Rows with a decoded ICMP/ICMPv6 header, and the count of ICMP rows without one."""
    rows, without_header, _, _ = _icmp_scan(packets)
    return rows, int(without_header)


def icmp_events(
    packets: DecodedPackets,
    observer_name: str,
    ingress_zone: str,
    stats: dict[str, int] | None = None,
) -> EventBatch | None:
    """ICMP/ICMPv6 messages of a decoded batch -> an "icmp" EventBatch (None if none)."""
    rows, without_header, echo_id, echo_seq = _icmp_scan(packets)
    without_header = int(without_header)
    if stats is not None:
        if without_header:
            stats["icmp_no_header"] = stats.get("icmp_no_header", 0) + without_header
        if rows.size:
            stats["icmp_messages"] = stats.get("icmp_messages", 0) + int(rows.size)
    if rows.size == 0:
        return None
    n = rows.size
    timestamp, vlan, payload_bytes, transport, icmp_type, icmp_code, src, dst = _event_rows(
        rows, packets.ts_ns, packets.vlan, packets.payload_len, packets.transport,
        packets.icmp_type, packets.icmp_code, _address_bytes(packets.src_ip),
        _address_bytes(packets.dst_ip))
    src_ip = src.view(IP_DTYPE).reshape(n)
    dst_ip = dst.view(IP_DTYPE).reshape(n)
    columns = {
        "timestamp": timestamp,
        "observer_name": constant_text(n, observer_name),
        "ingress_zone": constant_text(n, ingress_zone),
        "src_ip": src_ip,
        "dst_ip": dst_ip,
        "transport": transport,
        "vlan": vlan,
        "community_id": community_id_column(src_ip, dst_ip, transport, icmp_type, icmp_code),
        "icmp_type": icmp_type,
        "icmp_code": icmp_code,
        "echo_id": echo_id,
        "echo_seq": echo_seq,
        "payload_bytes": payload_bytes,
    }
    return EventBatch(ICMP.name, columns)


class IcmpAnalyzer(Analyzer):
    """ICMP and ICMPv6 messages (see `icmp_events`)."""

    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        batch = icmp_events(packets, self.observer_name, self.ingress_zone, stats=self.stats)
        return [batch] if batch is not None else []
