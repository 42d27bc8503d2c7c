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
from sensors.packets import DecodedPackets, constant_text
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


def _icmp_scan(packets: DecodedPackets) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    return _scan(packets.ip_version, packets.transport, packets.payload_offset,
                 packets.icmp_type, packets.icmp_code,
                 np.asarray(packets.data).reshape(-1).view(np.uint8))


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
    transport = packets.transport[rows].astype(np.uint8)
    icmp_type = packets.icmp_type[rows].astype(np.uint8)
    icmp_code = packets.icmp_code[rows].astype(np.uint8)
    src_ip = packets.src_ip[rows]
    dst_ip = packets.dst_ip[rows]
    columns = {
        "timestamp": packets.ts_ns[rows].astype(np.int64),
        "observer_name": constant_text(n, observer_name),
        "ingress_zone": constant_text(n, ingress_zone),
        "src_ip": src_ip,
        "dst_ip": dst_ip,
        "transport": transport,
        "vlan": packets.vlan[rows].astype(np.uint16),
        "community_id": community_id_column(src_ip, dst_ip, transport, icmp_type, icmp_code),
        "icmp_type": icmp_type,
        "icmp_code": icmp_code,
        "echo_id": echo_id,
        "echo_seq": echo_seq,
        "payload_bytes": packets.payload_len[rows].astype(np.uint32),
    }
    return EventBatch(ICMP.name, columns)


class IcmpAnalyzer(Analyzer):
    """ICMP and ICMPv6 messages (see `icmp_events`)."""

    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        batch = icmp_events(packets, self.observer_name, self.ingress_zone, stats=self.stats)
        return [batch] if batch is not None else []
