"""Reference DNS message parser in plain Python: the implementation sensors/dns.py had
before its compiled kernel (sensors/dns_kernel.py), kept as the oracle the kernel is
property-tested against (tests/test_dns_kernels.py, tests/test_dns_fuzz.py). Not used by
the sensor.

Same rules as documented in sensors/dns.py; it works on one message (bytes) at a time and
raises MalformedDNS where the kernel reports a message as malformed.
"""

from __future__ import annotations

import ipaddress
import struct

from pipeline.schema import DNS_CLASS_NAMES, dns_type_name

# The reference parses independently but within the same documented bounds as the kernel.
from sensors.dns_kernel import (
    HEADER_LEN,
    MAX_ANSWERS,
    MAX_HEX_BYTES,
    MAX_NAME_WIRE_LEN,
    MAX_POINTER_JUMPS,
    MAX_TCP_MESSAGES,
    MAX_TEXT_BYTES,
)

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


def ipv6_text(raw: bytes) -> str:
    """RFC 5952 text with hex groups only: str(IPv6Address), except that IPv4-mapped
    addresses stay hex (::ffff:c000:201) whatever the Python version prints for them."""
    address = ipaddress.IPv6Address(raw)
    if address.ipv4_mapped is None:
        return str(address)
    return f"::ffff:{int.from_bytes(raw[12:14], 'big'):x}:{int.from_bytes(raw[14:16], 'big'):x}"


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
            return ipv6_text(msg[start:stop])
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


def tcp_messages(payload: bytes) -> tuple[list[bytes], bool]:
    """Whole length-prefixed messages at the start of one TCP segment (no reassembly),
    and whether the walk stopped at an incomplete one."""
    out: list[bytes] = []
    pos = 0
    while pos + 2 <= len(payload) and len(out) < MAX_TCP_MESSAGES:
        length = (payload[pos] << 8) | payload[pos + 1]
        if length < HEADER_LEN or pos + 2 + length > len(payload):
            return out, True
        out.append(payload[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return out, False
