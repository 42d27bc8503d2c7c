"""DNS events: one event per DNS message (query or response) seen on port 53.

Packets are selected column-wise (UDP or TCP, port 53, enough payload). Every selected
message of a batch (one per UDP datagram; the whole length-prefixed messages of a TCP
segment) is then parsed by one compiled kernel (sensors/dns_kernel.py) that returns
per-message and per-answer columns and one buffer with every name and rendered rdata;
Python objects are made only for what the events carry, and only once per distinct value
for as long as the analyzer runs (DnsObjects: one str per text, one dict per answer record
and one list per answer list; rows with equal answers share them, also across batches).

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

from collections.abc import Mapping

import numpy as np

from pipeline.heap import gc_paused
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
from sensors.packets import DecodedPackets, constant_text, plain_vlan

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
    rows = dns_kernel.port_rows(packets.src_port, packets.dst_port, DNS_PORT)
    if rows.shape[0] == 0:  # many batches of a busy link: nothing else computed
        return rows, rows, rows
    rows, start, length, tcp_rows = dns_kernel.port_candidates(
        rows, packets.ip_version, packets.transport, packets.payload_len,
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
    objects: DnsObjects | None = None,
) -> EventBatch | None:
    """DNS messages in a decoded batch -> a "dns" EventBatch (None when there are none).

    `stats`, when given, is incremented: dns_messages (events), dns_malformed (messages
    dropped: header/question unreadable), dns_answers_damaged (events whose answer section
    was cut short), dns_tcp_incomplete (TCP segments without a whole message).
    `objects`: the caller's DnsObjects, kept across its batches (see _kept_columns).
    """
    data = _read_only_bytes(packets.data)
    rows, start, length = _messages(packets, data, stats)
    if rows.size == 0:
        return None
    if objects is None:
        objects = DnsObjects()
    msg, records = objects.parse(data, start, length)
    kept, answers = _kept_columns(msg, records, objects)
    _bump(stats, "dns_malformed", int(rows.size - kept["status"].size))
    if kept["status"].size == 0:
        return None
    _bump(stats, "dns_answers_damaged", int((kept["status"] == dns_kernel.DAMAGED).sum()))
    _bump(stats, "dns_messages", int(kept["status"].size))
    return _build_batch(packets, rows[kept["index"]], kept, answers, observer_name,
                        ingress_zone)


def _parsed_columns(msg: np.ndarray, records: np.ndarray, text: np.ndarray,
                    text_used: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """parse_messages' output (one call, its own texts) -> _kept_columns."""
    objects = DnsObjects()
    objects.add_texts(text, 0, text_used)
    return _kept_columns(msg, records, objects)


def _kept_columns(msg: np.ndarray, records: np.ndarray, objects: DnsObjects
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Kernel output -> columns of the messages that make an event, and their answers
    (an object array: one list of record dicts per message).

    `objects` (whose texts the text indexes of msg and records number) makes one str per
    distinct text, one dict per distinct answer record and one list per distinct answer
    list, shared by every event that has them: a busy resolver answers the same names over
    and over, and every query has the empty list. Consumers only read these values (ECS
    documents, wire format, detectors); anything that wants to change one must copy it
    first.
    """
    index, msg, dns_id, flags, qtype, qclass, is_response, rcode = \
        dns_kernel.kept_messages(msg)
    qname, answers = objects.columns(msg, records)
    kept = {"index": index, "status": msg[:, 0], "dns_id": dns_id, "flags": flags,
            "qtype": qtype, "qclass": qclass, "qname": qname, "is_response": is_response,
            "rcode": rcode}
    return kept, answers


def _grown_objects(column: np.ndarray, used: int, wanted: int) -> np.ndarray:
    """An object array holding column[:used] with room for `wanted` more."""
    if used + wanted <= column.shape[0]:
        return column
    grown = np.empty(max(2 * column.shape[0], used + wanted), dtype=object)
    grown[:used] = column[:used]
    return grown


class DnsObjects:
    """The texts and Python objects of a DNS analyzer's events, kept across batches: each
    distinct text (name, rendered rdata), answer record and answer list is rendered and
    made once, when first seen, and numbered in dns_kernel's lasting tables
    (parse_messages_into, global_answers). Everything is dropped when a table
    passes its cap (tunnels and changing TTLs make many values that never repeat), so
    memory stays bounded."""

    MAX_TEXTS = 1 << 16
    MAX_TEXT_BYTES = 1 << 22
    MAX_RECORDS = 1 << 16
    MAX_SETS = 1 << 16

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every value (the next batch makes its objects anew)."""
        size = dns_kernel.INTERN_FIRST_SLOTS
        self.parse_state = dns_kernel.new_parse_state(1 << 14)
        self.texts = np.empty(size, dtype=object)
        self.text_count = 0
        self.record_keys = np.empty((size, 5), dtype=np.int64)
        self.record_slots = np.full(size, -1, dtype=np.int64)
        self.dicts: list[dict] = []
        self.set_rows = np.empty((size, 5), dtype=np.int64)
        self.members = np.empty(size, dtype=np.int64)
        self.bounds = np.zeros(size, dtype=np.int64)
        self.set_slots = np.full(size, -1, dtype=np.int64)
        self.lists = np.empty(size, dtype=object)
        self.lists[0] = []  # list 0: the one empty list of every message without answers
        self.set_count = 1

    def parse(self, data: np.ndarray, start: np.ndarray, length: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """parse_messages_into over the kept tables -> (msg, answers); the new texts are
        made into str objects."""
        text_used, text_count = int(self.parse_state[1]), int(self.parse_state[5])
        if (text_count > self.MAX_TEXTS or text_used > self.MAX_TEXT_BYTES
                or len(self.dicts) > self.MAX_RECORDS or self.set_count > self.MAX_SETS):
            self.reset()
            text_used = 0
        msg, answers, *state = dns_kernel.parse_messages_into(data, start, length,
                                                              *self.parse_state)
        self.parse_state = (*state, *self.parse_state[6:])
        self.add_texts(state[0], text_used, int(state[1]))
        return msg, answers

    def add_texts(self, text: np.ndarray, start: int, stop: int) -> None:
        """The texts text[start:stop] (each ended by TEXT_SEP) are the next ones."""
        if stop > start:
            # One decode + split makes every new text at C speed; ASCII by construction.
            # str() decodes the array's buffer in place (tobytes() copied it first).
            new = str(text[start:stop - 1], "ascii").split("\n")
            self.texts = _grown_objects(self.texts, self.text_count, len(new))
            self.texts[self.text_count:self.text_count + len(new)] = new
            self.text_count += len(new)

    def columns(self, msg: np.ndarray, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(qname, answers) object columns of the kept messages `msg` (malformed rows
        dropped) from their answer rows."""
        set_ids = self._answers(msg[:, 6], msg[:, 7], records)
        return self.texts.take(msg[:, 5]), self.lists.take(set_ids)

    def _answers(self, first_row: np.ndarray, count: np.ndarray, records: np.ndarray
                 ) -> np.ndarray:
        """The lasting answer-list id of each message (global_answers); the new records'
        dicts and the new lists are made here."""
        old_records, old_sets = len(self.dicts), self.set_count
        (ids, self.record_keys, self.record_slots, record_count, self.set_rows, self.members,
         self.bounds, self.set_slots, self.set_count) = dns_kernel.global_answers(
            first_row, count, records, self.record_keys, self.record_slots, old_records,
            self.set_rows, self.members, self.bounds, self.set_slots, old_sets)
        if self.set_count > old_sets:  # (records are new only in new lists)
            with gc_paused():  # see _new_lists
                self._new_lists(old_records, record_count, old_sets)
        return ids

    def _new_lists(self, old_records: int, record_count: int, old_sets: int) -> None:
        """The dicts of records old_records..record_count and the lists of answer lists
        old_sets..set_count, new in this batch. Why without cyclic garbage collection: a
        list is a container the collector tracks, and hostile traffic (a tunnel: every
        answer new) makes one per response, so its generation counts trigger scans of
        the whole heap that find nothing (~0.2 s of 0.55 s per 300k such messages when the
        start-up heap is not frozen). Dicts of str and int are untracked; no cycle is
        made here."""
        if record_count > old_records:
            self.dicts.extend(_answer_dicts(self.record_keys[old_records:record_count],
                                            self.texts))
        bounds = self.bounds[old_sets:self.set_count + 1].tolist()
        members = list(map(self.dicts.__getitem__,
                           self.members[bounds[0]:bounds[-1]].tolist()))
        first = bounds[0]
        self.lists = _grown_objects(self.lists, old_sets, self.set_count - old_sets)
        # One list per new answer list, sliced in C (map over slice objects).
        self.lists[old_sets:self.set_count] = np.fromiter(
            map(members.__getitem__, map(slice, [b - first for b in bounds[:-1]],
                                         [b - first for b in bounds[1:]])),
            dtype=object, count=self.set_count - old_sets)


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
        "vlan": plain_vlan(packets.vlan[rows]),
        "community_id": flow_community_ids(src_ip, dst_ip, transport, src_port, dst_port,
                                           both_directions=True),
        "dns_id": kept["dns_id"],
        "is_response": kept["is_response"],
        "qname": kept["qname"],
        "qtype": kept["qtype"],
        "qclass": kept["qclass"],
        "rcode": kept["rcode"],
        "flags": kept["flags"],
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

    def __init__(self, config: Mapping, observer_name: str, ingress_zone: str) -> None:
        super().__init__(config, observer_name, ingress_zone)
        self.objects = DnsObjects()

    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        batch = dns_events(packets, self.observer_name, self.ingress_zone, stats=self.stats,
                           objects=self.objects)
        return [batch] if batch is not None and len(batch) else []
