"""DNS events: one event per DNS message (query or response) seen on port 53.

Packets are selected column-wise (UDP or TCP, port 53, enough payload). Every selected
message of a batch (one per UDP datagram; the whole length-prefixed messages of a TCP
segment) is then parsed by one compiled kernel (sensors/dns_kernel.py) that returns
per-message and per-answer columns and one buffer with every name and rendered rdata;
Python objects are made only for what the events carry (one decode + split for all texts,
one dict per distinct answer record and one list per distinct answer set of the batch:
rows with equal answers share them, see _parsed_columns).

What is parsed: the header, the first question, and the answer section (at most
MAX_ANSWERS records). Authority and additional sections are not read.

Names are rendered as text, lower case (ASCII letters only), without the trailing dot, "" for
the root. Label bytes outside printable ASCII, and space, are written as `\\DDD` (decimal,
RFC 1035 master-file / dig style), a '.' inside a label as `\\.`, a backslash as `\\\\`, so
the text maps back to the exact wire labels.

Record data as text: A dotted quad; AAAA RFC 5952 (hex groups, longest zero run as "::");
NS/CNAME/PTR/DNAME/MD/MF/MB/MG/MR the name; MX "pref name"; SRV "prio weight port name";
SOA "mname rname serial refresh retry expire minimum"; TXT the character-strings joined
without separator (printable ASCII as is, '\\' doubled, other bytes \\DDD; the first
MAX_TEXT_BYTES bytes then "..."); anything else, or data that does not fit its type's
layout (A with 5 bytes, a name running past rdlength...), hex (MAX_HEX_BYTES bytes then
"..."): rdlength still delimits the record, so that does not end the parse.

Robustness (a sensor sees hostile input):
- compression pointers must point strictly before the start of the labels run they
  interrupt, so every jump goes further back and pointer loops cannot exist; jumps are also
  capped (MAX_POINTER_JUMPS);
- a name longer than 255 bytes in wire form (RFC 1035 limit) is malformed;
- a message whose header or question cannot be read yields no event
  (stats["dns_malformed"]); one whose answer section is damaged yields an event with the
  answers read so far (stats["dns_answers_damaged"]);
- the kernel checks every index against its message's length.

TCP: a segment is parsed only when it starts with a length prefix and carries whole
messages (possibly several). There is no stream reassembly yet: a message split over
segments is skipped (stats["dns_tcp_incomplete"]), and a segment that continues an earlier
message but happens to look like a whole prefixed message would be misread (rare: the
prefix must match the segment's length exactly or leave room for another message).
"""

from __future__ import annotations

from itertools import chain

import numpy as np

from pipeline.schema import DNS, DNS_CLASS_NAMES, EventBatch, dns_type_name
from sensors import dns_kernel
from sensors.analyzer import Analyzer
from sensors.community_id import community_id_column
from sensors.dns_kernel import (
    MAX_ANSWERS,
    MAX_HEX_BYTES,
    MAX_NAME_WIRE_LEN,
    MAX_POINTER_JUMPS,
    MAX_TCP_MESSAGES,
    MAX_TEXT_BYTES,
)
from sensors.packets import DecodedPackets, constant_text

__all__ = ["MAX_ANSWERS", "MAX_HEX_BYTES", "MAX_NAME_WIRE_LEN", "MAX_POINTER_JUMPS",
           "MAX_TCP_MESSAGES", "MAX_TEXT_BYTES", "DnsAnalyzer", "MalformedDNS", "dns_events",
           "parse_message"]

DNS_PORT = 53


class MalformedDNS(ValueError):
    """The message cannot be parsed (truncated header or question, bad name)."""


def _read_only_bytes(buffer: np.ndarray) -> np.ndarray:
    """The batch buffer as a flat read-only uint8 view: the kernels are compiled for
    read-only input only (file captures are read-only maps), so writable buffers (live
    capture, tests) do not cost a second compilation."""
    flat = np.ascontiguousarray(buffer).reshape(-1).view(np.uint8)
    if flat.flags.writeable:
        flat = flat.view()
        flat.flags.writeable = False
    return flat


def _bump(stats: dict[str, int] | None, key: str, count: int = 1) -> None:
    if stats is not None and count:
        stats[key] = stats.get(key, 0) + count


def _messages(packets: DecodedPackets, data: np.ndarray, stats: dict[str, int] | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, buffer offset, length) of every message, in capture order: one per UDP
    packet to/from port 53 with room for a DNS header, the whole length-prefixed messages
    at the start of each TCP/53 segment. Every span lies inside `data`."""
    port53 = (packets.src_port == DNS_PORT) | (packets.dst_port == DNS_PORT)
    if not port53.any():  # many batches of a busy link: nothing else computed
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    rows, start, length, tcp_rows = dns_kernel.port_candidates(
        np.flatnonzero(port53), packets.ip_version, packets.transport, packets.payload_len,
        packets.payload_offset, data.shape[0])
    if tcp_rows.size:
        seg_start = packets.payload_offset[tcp_rows].astype(np.int64)
        seg_len = _inside(seg_start, packets.payload_len[tcp_rows].astype(np.int64), data)
        segment, t_start, t_len, incomplete = dns_kernel.split_tcp_segments(
            data, seg_start, seg_len)
        _bump(stats, "dns_tcp_incomplete", int(incomplete.sum()))
        rows = np.concatenate([rows, tcp_rows[segment]])
        start = np.concatenate([start, t_start])
        length = np.concatenate([length, _inside(t_start, t_len, data)])
        # Restore capture order; stable, so several messages of one segment keep theirs.
        order = np.argsort(rows, kind="stable")
        rows, start, length = rows[order], start[order], length[order]
    return rows, start, length


def _inside(start: np.ndarray, length: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Lengths cut so that every span lies inside `data` (0 for a span starting outside):
    the decoder never gives such a payload, but the kernels read unchecked within a span."""
    room = np.where(start < 0, 0, np.maximum(data.shape[0] - start, 0))
    return np.clip(length, 0, room)


def dns_events(
    packets: DecodedPackets,
    observer_name: str,
    ingress_zone: str,
    stats: dict[str, int] | None = None,
) -> EventBatch | None:
    """DNS messages in a decoded batch -> a "dns" EventBatch (None when there are none).

    `stats`, when given, is incremented: dns_messages (events), dns_malformed (messages
    dropped: header/question unreadable), dns_answers_damaged (events whose answer section
    was cut short), dns_tcp_incomplete (TCP segments without a whole message).
    """
    data = _read_only_bytes(packets.data)
    rows, start, length = _messages(packets, data, stats)
    if rows.size == 0:
        return None
    parsed = dns_kernel.parse_messages(data, start, length)
    kept, answers = _parsed_columns(*parsed)
    _bump(stats, "dns_malformed", int(rows.size - kept["status"].size))
    if kept["status"].size == 0:
        return None
    _bump(stats, "dns_answers_damaged", int((kept["status"] == dns_kernel.DAMAGED).sum()))
    _bump(stats, "dns_messages", int(kept["status"].size))
    return _build_batch(packets, rows[kept["index"]], kept, answers, observer_name,
                        ingress_zone)


def _parsed_columns(msg: np.ndarray, records: np.ndarray, text: np.ndarray,
                    text_used: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Kernel output -> columns of the messages that make an event, and their answers
    (an object array: one list of record dicts per message).

    Equal answer records of the batch share one dict, and messages with equal answers
    share one list (a busy resolver answers the same names over and over; every query has
    the empty list): Python objects are made per distinct record and list, not per event.
    Consumers only read these values (ECS documents, wire format, detectors); anything
    that wants to change one must copy it first.
    """
    index = np.flatnonzero(msg[:, 0] != dns_kernel.MALFORMED)
    if index.shape[0] < msg.shape[0]:
        msg = np.take(msg, index, axis=0)  # take: ~4x faster than msg[index] here
    # One decode + split makes every text at C speed; they are ASCII by construction.
    texts = np.array(text[:text_used].tobytes().decode("ascii").split("\n"), dtype=object)
    kept = {"index": index, "status": msg[:, 0], "dns_id": msg[:, 1].astype(np.uint16),
            "flags": msg[:, 2].astype(np.uint16), "qtype": msg[:, 3].astype(np.uint16),
            "qclass": msg[:, 4].astype(np.uint16), "qname": texts[msg[:, 5]]}
    return kept, _answer_column(msg[:, 6], msg[:, 7], records, texts)


def _answer_column(first_row: np.ndarray, count: np.ndarray, records: np.ndarray,
                   texts: np.ndarray) -> np.ndarray:
    """The answers object column: per message the list of its records' dicts."""
    record_first, _, set_of_msg, set_records, set_bounds = dns_kernel.answer_sets(
        first_row, count, records)
    sets = set_bounds.shape[0] - 1
    dicts = _answer_dicts(records[record_first], texts)
    members = list(map(dicts.__getitem__, set_records.tolist()))
    bounds = set_bounds.tolist()
    # One list per distinct answer set, sliced in C (map over slice objects), then one
    # empty list that every message without answers (every query) shares: a list per row
    # cost more than the rest of this function (allocation and the collections it
    # triggers).
    lists = np.fromiter(chain(map(members.__getitem__, map(slice, bounds[:-1], bounds[1:])),
                              ([],)), dtype=object, count=sets + 1)
    # One take for the whole column: boolean-mask assignments of object arrays cost ~3x.
    return lists.take(np.where(set_of_msg >= 0, set_of_msg, sets))


def _names(numbers: np.ndarray, name_of) -> list[str]:
    """Text of each type/class number, one lookup per distinct number (a dict: records
    are few per batch once equal ones are shared, so np.unique's sort cost more)."""
    values = numbers.tolist()
    names = {value: name_of(value) for value in set(values)}
    return list(map(names.__getitem__, values))


def _class_name(number: int) -> str:
    return DNS_CLASS_NAMES.get(number, f"CLASS{number}")


def _answer_dicts(records: np.ndarray, texts: np.ndarray) -> list[dict]:
    """One {"name", "type", "class", "ttl", "data"} dict per answer record."""
    if records.shape[0] == 0:
        return []
    return [{"name": name, "type": rtype, "class": rclass, "ttl": ttl, "data": data}
            for name, rtype, rclass, ttl, data in zip(
                texts[records[:, 0]].tolist(), _names(records[:, 1], dns_type_name),
                _names(records[:, 2], _class_name), records[:, 3].tolist(),
                texts[records[:, 4]].tolist(), strict=True)]


def _build_batch(packets: DecodedPackets, rows: np.ndarray, kept: dict[str, np.ndarray],
                 answers: np.ndarray, observer_name: str, ingress_zone: str) -> EventBatch:
    n = rows.shape[0]
    flags = kept["flags"]
    is_response = (flags & 0x8000) != 0
    src_ip = packets.src_ip[rows]
    dst_ip = packets.dst_ip[rows]
    # copy=False: these gathers are fresh arrays, mostly of the column's dtype already
    transport = packets.transport[rows].astype(np.uint8, copy=False)
    src_port = packets.src_port[rows].astype(np.uint16, copy=False)
    dst_port = packets.dst_port[rows].astype(np.uint16, copy=False)
    columns = {
        "timestamp": packets.ts_ns[rows].astype(np.int64, copy=False),
        "observer_name": constant_text(n, observer_name),
        "ingress_zone": constant_text(n, ingress_zone),
        "src_ip": src_ip,
        "dst_ip": dst_ip,
        "src_port": src_port,
        "dst_port": dst_port,
        "transport": transport,
        "vlan": packets.vlan[rows].astype(np.uint16, copy=False),
        "community_id": flow_community_ids(src_ip, dst_ip, transport, src_port, dst_port,
                                           both_directions=True),
        "dns_id": kept["dns_id"],
        "is_response": is_response,
        "qname": kept["qname"],
        "qtype": kept["qtype"],
        "qclass": kept["qclass"],
        "rcode": np.where(is_response, flags & 0x000F, 0).astype(np.uint8),
        "flags": flags,
        "answers": answers,
    }
    return EventBatch(DNS.name, columns)


def _uint64_pairs(addresses: np.ndarray) -> np.ndarray:
    """(n, 2) uint64 view of a 16-byte address column (a contiguous copy if needed)."""
    return np.ascontiguousarray(addresses).view(np.uint64).reshape(-1, 2)


def flow_community_ids(src_ip: np.ndarray, dst_ip: np.ndarray, transport: np.ndarray,
                       src_port: np.ndarray, dst_port: np.ndarray, *,
                       both_directions: bool) -> np.ndarray:
    """community_id_column for event rows, computed once per distinct flow tuple: rows of
    one tuple share one str (about half the DNS rows of a batch are repeats).

    both_directions=True: (a, b, pa, pb) and (b, a, pb, pa) are one tuple, so a query and
    its response share the ID computed from the first row seen. Only for protocols whose
    ID does not depend on the direction: the spec orders the endpoints for TCP/UDP/SCTP,
    not for ICMP types without a counterpart. False: exact tuples, any protocol."""
    first, flow = dns_kernel.flow_groups(_uint64_pairs(src_ip), _uint64_pairs(dst_ip),
                                         transport, src_port, dst_port, both_directions)
    if first.shape[0] == flow.shape[0]:
        return community_id_column(src_ip, dst_ip, transport, src_port, dst_port)
    distinct = community_id_column(src_ip[first], dst_ip[first], transport[first],
                                   src_port[first], dst_port[first])
    return distinct[flow]


def parse_message(msg: bytes) -> tuple[tuple[int, int, str, int, int, list[dict]], bool]:
    """One DNS message -> ((id, flags, qname, qtype, qclass, answers), answers_damaged),
    through the same kernel as `dns_events` (for tools and tests; not a hot path).

    Raises MalformedDNS when the header or the first question cannot be read. A message
    without a question has qname "" and qtype/qclass 0.
    """
    data = np.frombuffer(bytes(msg), dtype=np.uint8)  # read-only, as _read_only_bytes
    parsed = dns_kernel.parse_messages(data, np.zeros(1, dtype=np.int64),
                                       np.array([data.size], dtype=np.int64))
    kept, answers = _parsed_columns(*parsed)
    if kept["status"].size == 0:
        raise MalformedDNS("header or first question unreadable")
    fields = (int(kept["dns_id"][0]), int(kept["flags"][0]), kept["qname"][0],
              int(kept["qtype"][0]), int(kept["qclass"][0]), answers[0])
    return fields, bool(kept["status"][0] == dns_kernel.DAMAGED)


class DnsAnalyzer(Analyzer):
    """DNS over UDP/53 and single-segment TCP/53 (see `dns_events`)."""

    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        batch = dns_events(packets, self.observer_name, self.ingress_zone, stats=self.stats)
        return [batch] if batch is not None and len(batch) else []
