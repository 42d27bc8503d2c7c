"""DNS events: one event per DNS message (query or response) seen on port 53.

Packets are selected column-wise (UDP or TCP, port 53, enough payload). For UDP, the
header and a first question made of plain labels (nearly every message) are read
column-wise over the whole batch; names become text through a bounded cache (names repeat),
and only responses with answer records are parsed per message in Python. Anything else
(compression pointers or odd label types in the question, several questions, damage) and
TCP goes through `parse_message`, one message at a time; both paths give the same events.

What is parsed: the header, the first question, and the answer section (at most
MAX_ANSWERS records). Authority and additional sections are not read.

Names are rendered as text, lower case (ASCII letters only), without the trailing dot, "" for
the root. Label bytes outside printable ASCII, and space, are written as `\\DDD` (decimal,
RFC 1035 master-file / dig style), a '.' inside a label as `\\.`, a backslash as `\\\\`, so
the text maps back to the exact wire labels.

Robustness (a sensor sees hostile input):
- compression pointers must point strictly before the start of the labels run they
  interrupt, so every jump goes further back and pointer loops cannot exist; jumps are also
  capped (MAX_POINTER_JUMPS);
- a name longer than 255 bytes in wire form (RFC 1035 limit) is malformed;
- a message whose header or question cannot be read yields no event
  (stats["dns_malformed"]); one whose answer section is damaged yields an event with the
  answers read so far (stats["dns_answers_damaged"]);
- rdata that does not fit its type's layout (A with 5 bytes, a name running past rdlength...)
  is shown as hex instead; it does not end the parse, since rdlength still delimits it.

TCP: a segment is parsed only when it starts with a length prefix and carries whole
messages (possibly several). There is no stream reassembly yet: a message split over
segments is skipped (stats["dns_tcp_incomplete"]), and a segment that continues an earlier
message but happens to look like a whole prefixed message would be misread (rare: the
prefix must match the segment's length exactly or leave room for another message).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

import numpy as np

from pipeline.schema import DNS, DNS_CLASS_NAMES, EventBatch, dns_type_name
from sensors.analyzer import Analyzer
from sensors.community_id import community_id_column
from sensors.packets import DecodedPackets

DNS_PORT = 53
PROTO_TCP = 6
PROTO_UDP = 17
HEADER_LEN = 12

MAX_ANSWERS = 64  # answer records kept per message
MAX_NAME_WIRE_LEN = 255  # RFC 1035 2.3.4
MAX_POINTER_JUMPS = 64
MAX_TCP_MESSAGES = 16  # length-prefixed messages parsed from one TCP segment
MAX_TEXT_BYTES = 512  # TXT rdata bytes rendered before "..."
MAX_HEX_BYTES = 128  # rdata bytes rendered as hex before "..."

TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_PTR, TYPE_MX, TYPE_TXT = 1, 2, 5, 6, 12, 15, 16
TYPE_AAAA, TYPE_SRV, TYPE_DNAME = 28, 33, 39
NAME_TYPES = frozenset({TYPE_NS, TYPE_CNAME, TYPE_PTR, TYPE_DNAME, 3, 4, 7, 8, 9})  # MD MF MB MG MR

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_QUESTION_FIXED = struct.Struct("!HH")
_SOA_FIXED = struct.Struct("!IIIII")
_MX_FIXED = struct.Struct("!H")
_SRV_FIXED = struct.Struct("!HHH")

# Bytes a label may show as is; everything else goes through _escape_label.
_PLAIN_BYTES = bytes(b for b in range(0x21, 0x7F) if b not in b".\\")
_TEXT_PLAIN_BYTES = bytes(b for b in range(0x20, 0x7F) if b != 0x5C)


def _escape_table(plain: bytes) -> list[str]:
    table = [f"\\{b:03d}" for b in range(256)]
    for b in plain:
        table[b] = chr(b)
    table[0x5C] = "\\\\"
    return table


_LABEL_ESCAPES = _escape_table(_PLAIN_BYTES)
_LABEL_ESCAPES[0x2E] = "\\."
_TEXT_ESCAPES = _escape_table(_TEXT_PLAIN_BYTES)


class MalformedDNS(ValueError):
    """The message cannot be parsed at this point (truncated, bad pointer, name too long)."""


def _escape(raw: bytes, plain: bytes, table: list[str]) -> str:
    """Bytes -> text; the common all-plain case is one C-level check and decode."""
    if not raw.translate(None, plain):
        return raw.decode("ascii")
    return "".join([table[b] for b in raw])


def read_name(msg: bytes, pos: int) -> tuple[str, int]:
    """Domain name at `pos` -> (text, offset just past the name where it started).

    Lower-cased (ASCII), escaped, no trailing dot. Raises MalformedDNS.
    """
    labels: list[bytes] = []
    wire_len = 1  # the root label's length byte
    end = -1  # where the name ends in the original position (set at the first pointer)
    run_start = pos  # a pointer must target an offset before this
    jumps = 0
    size = len(msg)
    while True:
        if pos >= size:
            raise MalformedDNS("name runs past the message")
        length = msg[pos]
        if length == 0:
            pos += 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= size:
                raise MalformedDNS("truncated compression pointer")
            target = ((length & 0x3F) << 8) | msg[pos + 1]
            if target >= run_start:
                raise MalformedDNS("compression pointer does not point backwards")
            jumps += 1
            if jumps > MAX_POINTER_JUMPS:
                raise MalformedDNS("too many compression pointers")
            if end < 0:
                end = pos + 2
            pos = run_start = target
            continue
        if kind:
            raise MalformedDNS("reserved label type")  # 0x40 / 0x80 (EDNS0 ext. labels)
        wire_len += length + 1
        if wire_len > MAX_NAME_WIRE_LEN:
            raise MalformedDNS("name longer than 255 bytes")
        stop = pos + 1 + length
        if stop > size:
            raise MalformedDNS("label runs past the message")
        labels.append(msg[pos + 1 : stop])
        pos = stop
    if end < 0:
        end = pos
    if not labels:
        return "", end
    if not b"".join(labels).translate(None, _PLAIN_BYTES):  # common case: nothing to escape
        return b".".join(labels).lower().decode("ascii"), end  # bytes.lower(): ASCII only
    return ".".join([_escape(label.lower(), _PLAIN_BYTES, _LABEL_ESCAPES) for label in labels]), end


def _hex(raw: bytes) -> str:
    if len(raw) > MAX_HEX_BYTES:
        return raw[:MAX_HEX_BYTES].hex() + "..."
    return raw.hex()


def _txt(rdata: bytes) -> str:
    """TXT character-strings joined without separator (how SPF/DKIM split records read)."""
    parts: list[bytes] = []
    pos = 0
    while pos < len(rdata):
        length = rdata[pos]
        if pos + 1 + length > len(rdata):
            raise MalformedDNS("TXT string runs past rdata")
        parts.append(rdata[pos + 1 : pos + 1 + length])
        pos += 1 + length
    raw = b"".join(parts)
    suffix = ""
    if len(raw) > MAX_TEXT_BYTES:
        raw, suffix = raw[:MAX_TEXT_BYTES], "..."
    return _escape(raw, _TEXT_PLAIN_BYTES, _TEXT_ESCAPES) + suffix


def _name_in_rdata(msg: bytes, pos: int, stop: int) -> tuple[str, int]:
    name, after = read_name(msg, pos)
    if after > stop:
        raise MalformedDNS("name runs past rdata")
    return name, after


def rdata_text(msg: bytes, rtype: int, start: int, rdlength: int) -> str:
    """Text form of one record's data; hex when it does not fit its type's layout."""
    stop = start + rdlength
    try:
        if rtype == TYPE_A and rdlength == 4:
            return ".".join(map(str, msg[start:stop]))
        if rtype == TYPE_AAAA and rdlength == 16:
            return str(ipaddress.IPv6Address(msg[start:stop]))
        if rtype in NAME_TYPES:
            name, after = _name_in_rdata(msg, start, stop)
            if after == stop:
                return name
        elif rtype == TYPE_MX and rdlength >= 3:
            (pref,) = _MX_FIXED.unpack_from(msg, start)
            name, after = _name_in_rdata(msg, start + 2, stop)
            if after == stop:
                return f"{pref} {name}"
        elif rtype == TYPE_TXT:
            return _txt(msg[start:stop])
        elif rtype == TYPE_SOA:
            mname, pos = _name_in_rdata(msg, start, stop)
            rname, pos = _name_in_rdata(msg, pos, stop)
            if pos + _SOA_FIXED.size == stop:
                serial, refresh, retry, expire, minimum = _SOA_FIXED.unpack_from(msg, pos)
                return f"{mname} {rname} {serial} {refresh} {retry} {expire} {minimum}"
        elif rtype == TYPE_SRV and rdlength >= 7:
            prio, weight, port = _SRV_FIXED.unpack_from(msg, start)
            name, after = _name_in_rdata(msg, start + 6, stop)
            if after == stop:
                return f"{prio} {weight} {port} {name}"
    except MalformedDNS:
        pass  # rdlength still delimits the record: show it raw
    return _hex(msg[start:stop])


def _class_name(number: int) -> str:
    return DNS_CLASS_NAMES.get(number, f"CLASS{number}")


def parse_message(msg: bytes) -> tuple[tuple[int, int, str, int, int, list[dict]], bool]:
    """One DNS message -> ((id, flags, qname, qtype, qclass, answers), answers_damaged).

    Raises MalformedDNS when the header or the first question cannot be read. A message
    without a question (qdcount 0) has qname "" and qtype/qclass 0.
    """
    if len(msg) < HEADER_LEN:
        raise MalformedDNS("shorter than a DNS header")
    dns_id, flags, qdcount, ancount, _nscount, _arcount = _HEADER.unpack_from(msg, 0)
    pos = HEADER_LEN
    qname, qtype, qclass = "", 0, 0
    if qdcount:
        qname, pos = read_name(msg, pos)
        if pos + 4 > len(msg):
            raise MalformedDNS("question truncated")
        qtype, qclass = _QUESTION_FIXED.unpack_from(msg, pos)
        pos += 4
        # Further questions (nearly never sent) only need skipping to reach the answers.
        try:
            for _ in range(qdcount - 1):
                _, pos = read_name(msg, pos)
                pos += 4
                if pos > len(msg):
                    raise MalformedDNS("question truncated")
        except MalformedDNS:
            return (dns_id, flags, qname, qtype, qclass, []), bool(ancount)
    answers, damaged = read_answers(msg, pos, ancount)
    return (dns_id, flags, qname, qtype, qclass, answers), damaged


def read_answers(msg: bytes, pos: int, ancount: int) -> tuple[list[dict], bool]:
    """The answer section starting at `pos` -> (answers, damaged): at most MAX_ANSWERS
    records; damaged when a record could not be read (the ones before it are kept)."""
    answers: list[dict] = []
    damaged = False
    try:
        for _ in range(min(ancount, MAX_ANSWERS)):
            name, pos = read_name(msg, pos)
            if pos + 10 > len(msg):
                raise MalformedDNS("record header truncated")
            rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(msg, pos)
            pos += 10
            if pos + rdlength > len(msg):
                raise MalformedDNS("rdata truncated")
            answers.append({"name": name, "type": dns_type_name(rtype),
                            "class": _class_name(rclass), "ttl": ttl,
                            "data": rdata_text(msg, rtype, pos, rdlength)})
            pos += rdlength
    except MalformedDNS:
        damaged = True
    return answers, damaged


def _candidate_rows(packets: DecodedPackets) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of UDP and TCP packets to/from port 53 with room for a DNS header."""
    port53 = (packets.src_port == DNS_PORT) | (packets.dst_port == DNS_PORT)
    has_ip = packets.ip_version != 0
    udp = np.flatnonzero(has_ip & port53 & (packets.transport == PROTO_UDP)
                         & (packets.payload_len >= HEADER_LEN))
    tcp = np.flatnonzero(has_ip & port53 & (packets.transport == PROTO_TCP)
                         & (packets.payload_len >= HEADER_LEN + 2))
    return udp, tcp


def _bump(stats: dict[str, int] | None, key: str) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + 1


def _tcp_messages(payload: bytes, stats: dict[str, int] | None) -> list[bytes]:
    """Whole length-prefixed messages at the start of one TCP segment (no reassembly)."""
    out: list[bytes] = []
    pos = 0
    while pos + 2 <= len(payload) and len(out) < MAX_TCP_MESSAGES:
        length = (payload[pos] << 8) | payload[pos + 1]
        if length < HEADER_LEN or pos + 2 + length > len(payload):
            _bump(stats, "dns_tcp_incomplete")
            break
        out.append(payload[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return out


def _gather(data: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """(len(pos), width) int64 bytes data[pos:pos+width] (callers keep pos+width inside)."""
    return data[pos[:, None] + np.arange(width, dtype=np.int64)].astype(np.int64)


def _question_ends(data: np.ndarray, start: np.ndarray, length: np.ndarray,
                   qdcount: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise walk of the first question's labels of UDP messages -> (ok, end).

    ok: the message has one question (or none) whose name is plain labels (no compression
    pointer) of legal length, and the question's type/class fit in the message; `end` is
    then the offset just past the name's terminating zero (12 when there is no question).
    Every other message is left to `parse_message` (which also raises on the bad ones).
    """
    n = start.shape[0]
    end = np.full(n, HEADER_LEN, dtype=np.int64)
    ok = qdcount <= 1
    walking = np.flatnonzero(qdcount == 1)
    for _ in range(MAX_NAME_WIRE_LEN // 2 + 1):  # 1-byte labels: at most 127, then the root
        if walking.size == 0:
            break
        pos = end[walking]
        inside = pos < length[walking]
        label = np.where(inside, data[start[walking] + np.where(inside, pos, 0)], 0xFF)
        bad = ~inside | (label >= 0x40)  # past the end, pointer or reserved label type
        ok[walking[bad]] = False
        end[walking] = pos + label + 1  # for the root label: just past it
        more = ~bad & (label != 0)
        too_long = more & (end[walking] - HEADER_LEN + 1 > MAX_NAME_WIRE_LEN)
        ok[walking[too_long]] = False
        walking = walking[more & ~too_long]
    ok[walking] = False  # still inside the name after the longest legal one
    ok &= (qdcount == 0) | (end + 4 <= length)  # type and class present
    return ok, end


_NAME_CACHE: dict[bytes, str] = {}  # wire labels (no root byte) -> text; names repeat a lot
MAX_CACHED_NAMES = 65536  # the cache is emptied when it reaches this size


def _name_text(wire: bytes) -> str:
    """Text of plain labels `wire` (already checked by _question_ends), cached."""
    text = _NAME_CACHE.get(wire)
    if text is None:
        if len(_NAME_CACHE) >= MAX_CACHED_NAMES:
            _NAME_CACHE.clear()
        text = _NAME_CACHE[wire] = read_name(wire + b"\x00", 0)[0]
    return text


@dataclass
class _Messages:
    """Parsed messages as columns (one entry per message; `rows` = its packet row)."""

    rows: list[np.ndarray] = field(default_factory=list)
    dns_id: list[np.ndarray] = field(default_factory=list)
    flags: list[np.ndarray] = field(default_factory=list)
    qname: list[list[str]] = field(default_factory=list)
    qtype: list[np.ndarray] = field(default_factory=list)
    qclass: list[np.ndarray] = field(default_factory=list)
    answers: list[list[list[dict]]] = field(default_factory=list)

    def add(self, rows, dns_id, flags, qname, qtype, qclass, answers) -> None:
        self.rows.append(np.asarray(rows, dtype=np.int64))
        self.dns_id.append(np.asarray(dns_id, dtype=np.uint16))
        self.flags.append(np.asarray(flags, dtype=np.uint16))
        self.qname.append(list(qname))
        self.qtype.append(np.asarray(qtype, dtype=np.uint16))
        self.qclass.append(np.asarray(qclass, dtype=np.uint16))
        self.answers.append(list(answers))


def _fast_udp(packets: DecodedPackets, rows: np.ndarray, buffer: memoryview,
              out: _Messages, stats: dict[str, int] | None) -> np.ndarray:
    """UDP messages with a plain first question: header and question column-wise, names
    through the cache, answers (responses only) parsed per message. Returns the rows
    left for the per-message parser."""
    data = np.asarray(packets.data).reshape(-1)
    start = packets.payload_offset[rows].astype(np.int64)
    length = packets.payload_len[rows].astype(np.int64)
    header = _gather(data, start, HEADER_LEN)
    words = header[:, 0::2] << 8 | header[:, 1::2]  # id, flags, qd, an, ns, ar
    qdcount, ancount = words[:, 2], words[:, 3]
    ok, end = _question_ends(data, start, length, qdcount)
    fast = np.flatnonzero(ok)
    if fast.size:
        f_start, f_end, f_qd = start[fast], end[fast], qdcount[fast] == 1
        at = f_start + np.where(f_qd, f_end, 0)
        fixed = _gather(data, at, 4) * f_qd[:, None]  # zeros: no question
        names = [_name_text(buffer[s + HEADER_LEN : s + e - 1].tobytes()) if q else ""
                 for s, e, q in zip(f_start.tolist(), f_end.tolist(), f_qd.tolist(),
                                    strict=True)]
        answers: list[list[dict]] = [[] for _ in range(fast.size)]
        f_an = ancount[fast]
        for i in np.flatnonzero(f_an).tolist():  # responses with records: parsed in Python
            s, e = int(f_start[i]), int(f_end[i])
            msg = buffer[s : s + int(length[fast[i]])].tobytes()
            try:
                answers[i], damaged = read_answers(msg, e + 4 if f_qd[i] else e, int(f_an[i]))
            except Exception:  # noqa: BLE001 - a parser bug: parse_message counts it
                ok[fast[i]] = False
                continue
            if damaged:
                _bump(stats, "dns_answers_damaged")
        keep = ok[fast]
        out.add(rows[fast[keep]], words[fast[keep], 0], words[fast[keep], 1],
                [name for name, k in zip(names, keep.tolist(), strict=True) if k],
                (fixed[:, 0] << 8 | fixed[:, 1])[keep], (fixed[:, 2] << 8 | fixed[:, 3])[keep],
                [a for a, k in zip(answers, keep.tolist(), strict=True) if k])
    return rows[~ok]


def dns_events(
    packets: DecodedPackets,
    observer_name: str,
    ingress_zone: str,
    stats: dict[str, int] | None = None,
) -> EventBatch | None:
    """DNS messages in a decoded batch -> a "dns" EventBatch (None when there are none).

    `stats`, when given, is incremented: dns_messages (events), dns_malformed (messages
    dropped: header/question unreadable), dns_answers_damaged (events whose answer section
    was cut short), dns_tcp_incomplete (TCP segments without a whole message),
    dns_parser_error (a parser bug caught so the sensor keeps running; should stay 0).

    UDP messages whose first question is plain labels (nearly all) have their header and
    question read column-wise; the rest, and TCP, go through `parse_message` one by one.
    """
    udp_rows, tcp_rows = _candidate_rows(packets)
    if udp_rows.size == 0 and tcp_rows.size == 0:
        return None
    buffer = memoryview(np.ascontiguousarray(packets.data).reshape(-1)).cast("B")
    starts = packets.payload_offset
    lengths = packets.payload_len
    out = _Messages()
    slow_rows = _fast_udp(packets, udp_rows, buffer, out, stats) if udp_rows.size else udp_rows

    rows: list[int] = []
    parsed: list[tuple[int, int, str, int, int, list[dict]]] = []

    def parse_into(row: int, msg: bytes) -> None:
        try:
            fields, damaged = parse_message(msg)
        except MalformedDNS:
            _bump(stats, "dns_malformed")
            return
        except Exception:  # a parser bug must not stop the sensor; counted to be seen
            _bump(stats, "dns_parser_error")
            return
        if damaged:
            _bump(stats, "dns_answers_damaged")
        rows.append(row)
        parsed.append(fields)

    for row, start, length in zip(slow_rows.tolist(), starts[slow_rows].tolist(),
                                  lengths[slow_rows].tolist(), strict=True):
        parse_into(row, bytes(buffer[start : start + length]))
    for row, start, length in zip(tcp_rows.tolist(), starts[tcp_rows].tolist(),
                                  lengths[tcp_rows].tolist(), strict=True):
        for msg in _tcp_messages(bytes(buffer[start : start + length]), stats):
            parse_into(row, msg)
    if rows:
        out.add(rows, *zip(*parsed, strict=True))
    count = sum(r.size for r in out.rows)
    if not count:
        return None
    if stats is not None:
        stats["dns_messages"] = stats.get("dns_messages", 0) + count
    return _build_batch(packets, out, observer_name, ingress_zone)


def _build_batch(packets: DecodedPackets, parsed: _Messages, observer_name: str,
                 ingress_zone: str) -> EventBatch:
    rows = np.concatenate(parsed.rows)
    # Fast UDP, other UDP and TCP messages were parsed apart; restore capture order so
    # events follow packet time (stable: several messages of one TCP segment keep theirs).
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    n = rows.shape[0]
    qname = [name for part in parsed.qname for name in part]
    answers = [records for part in parsed.answers for records in part]
    order_list = order.tolist()
    flags_col = np.concatenate(parsed.flags)[order]
    is_response = (flags_col & 0x8000) != 0
    src_ip = packets.src_ip[rows]
    dst_ip = packets.dst_ip[rows]
    transport = packets.transport[rows].astype(np.uint8)
    src_port = packets.src_port[rows].astype(np.uint16)
    dst_port = packets.dst_port[rows].astype(np.uint16)
    columns = {
        "timestamp": packets.ts_ns[rows].astype(np.int64),
        "observer_name": np.full(n, observer_name, dtype=object),
        "ingress_zone": np.full(n, ingress_zone, dtype=object),
        "src_ip": src_ip,
        "dst_ip": dst_ip,
        "src_port": src_port,
        "dst_port": dst_port,
        "transport": transport,
        "vlan": packets.vlan[rows].astype(np.uint16),
        "community_id": community_id_column(src_ip, dst_ip, transport, src_port, dst_port),
        "dns_id": np.concatenate(parsed.dns_id)[order],
        "is_response": is_response,
        "qname": _object_column([qname[i] for i in order_list]),
        "qtype": np.concatenate(parsed.qtype)[order],
        "qclass": np.concatenate(parsed.qclass)[order],
        "rcode": np.where(is_response, flags_col & 0x000F, 0).astype(np.uint8),
        "flags": flags_col,
        "answers": _object_column([answers[i] for i in order_list]),
    }
    return EventBatch(DNS.name, columns)


def _object_column(values: list) -> np.ndarray:
    # Filled element by element: np.array() would turn a list of equal-length answer lists
    # into a 2-d array.
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


class DnsAnalyzer(Analyzer):
    """DNS over UDP/53 and single-segment TCP/53 (see `dns_events`)."""

    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        batch = dns_events(packets, self.observer_name, self.ingress_zone, stats=self.stats)
        return [batch] if batch is not None and len(batch) else []
