"""Compiled DNS message walker: every DNS message of a batch parsed in one call.

`parse_messages` reads the header, the first question and the answer section (at most
MAX_ANSWERS records) of many messages lying in one uint8 buffer (the batch's packet bytes;
each message = an offset and a length) and returns numbers only: per-message and per-answer
columns, plus one text buffer holding every name and rendered rdata, each followed by
TEXT_SEP (short texts that repeat within the batch are kept once: see _intern; repeated
plain names and A/AAAA addresses are not even rendered again: see _plain_name_length and
_address_key). The caller turns the whole text buffer into str objects with one
decode + split, so no Python object is made per byte, label or record field.

`split_tcp_segments` cuts TCP/53 segments into their length-prefixed messages (no stream
reassembly: a segment must carry whole messages).

`parse_messages_into` (texts) and `global_answers` (records, answer lists) number equal
texts, answer records and answer lists in tables kept across batches, and `flow_groups`
equal flow tuples (optionally both directions as one), so that sensors/dns.py makes one
Python object per distinct value rather than one per event.

The rules (the text form of names and rdata, what is malformed, what only damages the
answer section) are those of the pure-Python reference parser the tests compare against
(tests/dns_reference.py) and are documented in sensors/dns.py. Every read is checked
against its message's length: hostile bytes never make the kernel read outside the message
(the caller guarantees each message lies inside the buffer), and every write is checked
against reserved room in the text buffer (grown when needed).
"""

from __future__ import annotations

import numpy as np

from pipeline.jit import njit
from sensors.tcp_stream import prefetch

HEADER_LEN = 12
PROTO_TCP = 6
PROTO_UDP = 17
MAX_ANSWERS = 64  # answer records kept per message
MAX_NAME_WIRE_LEN = 255  # RFC 1035 2.3.4
MAX_POINTER_JUMPS = 64
MAX_TCP_MESSAGES = 16  # length-prefixed messages parsed from one TCP segment
MAX_TEXT_BYTES = 512  # TXT rdata bytes rendered before "..."
MAX_HEX_BYTES = 128  # rdata bytes rendered as hex before "..."
PREFETCH_MESSAGES = 16  # how many messages ahead parse_messages asks for a message's lines
PREFETCH_LINES = 8  # at most this many lines of a message asked for (512 bytes)

TEXT_SEP = 0x0A  # "\n" ends every text; never part of one (escaped as \010 in names/TXT)
# Room reserved in the text buffer before one question or one answer is rendered. The
# longest answer: owner name (254 label bytes, each at most 4 characters "\\DDD": < 1017)
# + SOA data (two such names, five 10-digit numbers and spaces: < 2090) + separators.
TEXT_RESERVE = 4096

# Per-message status.
MALFORMED, OK, DAMAGED = 0, 1, 2

TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_PTR, TYPE_MX, TYPE_TXT = 1, 2, 5, 6, 12, 15, 16
TYPE_AAAA, TYPE_SRV, TYPE_DNAME = 28, 33, 39
NAME_TYPES = (TYPE_NS, TYPE_CNAME, TYPE_PTR, TYPE_DNAME, 3, 4, 7, 8, 9)  # + MD MF MB MG MR

_BACKSLASH, _DOT, _SPACE, _COLON = 0x5C, 0x2E, 0x20, 0x3A
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8).copy()


@njit
def _grown(buf: np.ndarray, used: int, wanted: int) -> np.ndarray:
    """A copy of buf[:used] with room for at least `wanted` more bytes."""
    grown = np.empty(max(2 * buf.shape[0], used + wanted), dtype=np.uint8)
    grown[:used] = buf[:used]
    return grown


@njit
def _put_decimal3(out: np.ndarray, o: int, value: int) -> int:
    """"\\DDD" escape of one byte."""
    out[o] = _BACKSLASH
    out[o + 1] = 48 + value // 100
    out[o + 2] = 48 + (value // 10) % 10
    out[o + 3] = 48 + value % 10
    return o + 4


@njit
def _put_label_byte(out: np.ndarray, o: int, value: int) -> int:
    """One label byte as name text: lower case, '.' and '\\' backslashed, bytes outside
    printable ASCII (and space) as \\DDD."""
    if 65 <= value <= 90:
        out[o] = value + 32
        return o + 1
    if value == _DOT or value == _BACKSLASH:
        out[o] = _BACKSLASH
        out[o + 1] = value
        return o + 2
    if 0x21 <= value <= 0x7E:
        out[o] = value
        return o + 1
    return _put_decimal3(out, o, value)


def _label_chars() -> np.ndarray:
    """Per byte value, its one-character name text (_put_label_byte: ASCII letters lower
    cased, other printable bytes as they are), 0 for the bytes written escaped ('.', '\\',
    space, non-printable). Why a table: label bytes of long names (tunnels) were three
    range tests each."""
    table = np.zeros(256, dtype=np.uint8)
    for value in range(0x21, 0x7F):
        if value not in (_DOT, _BACKSLASH):
            table[value] = value + 32 if 65 <= value <= 90 else value
    return table


_LABEL_CHARS = _label_chars()
# Per byte value, its one-character TXT text (_put_text_byte: printable ASCII and space as
# they are), 0 for the bytes written escaped.
_TEXT_CHARS = np.array([value if 0x20 <= value <= 0x7E and value != _BACKSLASH else 0
                        for value in range(256)], dtype=np.uint8)


@njit
def _put_text_byte(out: np.ndarray, o: int, value: int) -> int:
    """One TXT byte: printable ASCII and space as is (case kept), '\\' doubled, else \\DDD."""
    if value == _BACKSLASH:
        out[o] = _BACKSLASH
        out[o + 1] = _BACKSLASH
        return o + 2
    if 0x20 <= value <= 0x7E:
        out[o] = value
        return o + 1
    return _put_decimal3(out, o, value)


@njit
def _put_uint(out: np.ndarray, o: int, value: int) -> int:
    """Decimal digits of value >= 0."""
    digits = 1
    rest = value
    while rest >= 10:
        rest //= 10
        digits += 1
    for k in range(digits - 1, -1, -1):
        out[o + k] = 48 + value % 10
        value //= 10
    return o + digits


@njit
def _put_hex_group(out: np.ndarray, o: int, value: int) -> int:
    """A 16-bit group in lower-case hex without leading zeros ("0" for zero)."""
    started = False
    for shift in (12, 8, 4, 0):
        nibble = (value >> shift) & 0xF
        if nibble or started or shift == 0:
            out[o] = _HEX_DIGITS[nibble]
            o += 1
            started = True
    return o


@njit
def _word(data: np.ndarray, at: int) -> int:
    q = np.uint64(at)  # unsigned: no negative-index fix-up (every caller reads inside data)
    return (np.int64(data[q]) << 8) | np.int64(data[q + np.uint64(1)])


@njit(inline="always")
def _u64(data: np.ndarray, q: np.uint64) -> np.uint64:
    """The 8 bytes data[q:q+8] as one little-endian word. LLVM turns the eight loads and
    shifts into one load, so equal-byte runs compare a word at a time (_same_bytes)."""
    w = np.uint64(0)
    for j in range(8):
        w |= np.uint64(data[q + np.uint64(j)]) << np.uint64(8 * j)
    return w


@njit(inline="always")
def _same_bytes(a: np.ndarray, p: np.uint64, b: np.ndarray, q: np.uint64, length: int) -> bool:
    """a[p:p+length] == b[q:q+length], 8 bytes at a time (the last word overlapping the one
    before it), reading nothing outside the two runs. Why: names are compared byte by byte
    a few times per message (memo hits, answer owners), ~20 bytes each. Not
    http_kernel.equal_bytes: its word loads are an intrinsic, which this module's uncompiled
    bounds check (NUMBA_DISABLE_JIT, tests/test_dns_kernels.py) cannot run."""
    n = np.uint64(length)
    if n < np.uint64(8):
        for k in range(n):
            if a[p + k] != b[q + k]:
                return False
        return True
    k = np.uint64(0)
    while k + np.uint64(8) < n:
        if _u64(a, p + k) != _u64(b, q + k):
            return False
        k += np.uint64(8)
    last = n - np.uint64(8)
    return _u64(a, p + last) == _u64(b, q + last)


@njit
def read_name(data: np.ndarray, base: int, size: int, pos: int, out: np.ndarray,
              o: int) -> tuple[int, int]:
    """Domain name at message offset `pos` -> (end, o'): rendered into out[o:o'] and `end`,
    the offset just past the name where it started; end = -1 when malformed (out[o:] is
    then scratch). The message is data[base:base+size].

    Compression pointers must point strictly before the labels run they interrupt (every
    jump goes further back: no loops), at most MAX_POINTER_JUMPS; at most 255 wire bytes;
    label types 0x40/0x80 are malformed. The caller reserves TEXT_RESERVE bytes at `o`.
    """
    wire_len = 1  # the root label's length byte
    end = -1  # where the name ends in its original position (set at the first pointer)
    run_start = pos  # a pointer must target an offset before this
    jumps = 0
    first = True
    while True:
        if pos >= size:
            return -1, o
        length = np.int64(data[base + pos])
        if length == 0:
            pos += 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= size:
                return -1, o
            target = ((length & 0x3F) << 8) | np.int64(data[base + pos + 1])
            if target >= run_start:
                return -1, o
            jumps += 1
            if jumps > MAX_POINTER_JUMPS:
                return -1, o
            if end < 0:
                end = pos + 2
            pos = target
            run_start = target
            continue
        if kind != 0:
            return -1, o  # reserved label type (0x40 / 0x80)
        wire_len += length + 1
        if wire_len > MAX_NAME_WIRE_LEN:
            return -1, o
        stop = pos + 1 + length
        if stop > size:
            return -1, o
        if not first:
            out[o] = _DOT
            o += 1
        first = False
        # unsigned: no negative-index fix-up per byte
        for i in range(np.uint64(base + pos + 1), np.uint64(base + stop)):
            char = _LABEL_CHARS[data[i]]
            if char:  # the usual byte: one table load, a branch that predicts well
                out[o] = char
                o += 1
            else:
                o = _put_label_byte(out, o, np.int64(data[i]))
        pos = stop
    if end < 0:
        end = pos
    return end, o


@njit
def _put_hex(data: np.ndarray, start: int, length: int, out: np.ndarray, o: int) -> int:
    """rdata as hex, the first MAX_HEX_BYTES bytes then "..."."""
    shown = min(length, MAX_HEX_BYTES)
    for i in range(start, start + shown):
        value = np.int64(data[i])
        out[o] = _HEX_DIGITS[value >> 4]
        out[o + 1] = _HEX_DIGITS[value & 0xF]
        o += 2
    if length > MAX_HEX_BYTES:
        for _ in range(3):
            out[o] = _DOT
            o += 1
    return o


@njit
def _put_ipv6(data: np.ndarray, start: int, out: np.ndarray, o: int) -> int:
    """16 bytes as RFC 5952 text (longest run of two or more zero groups, the first one on
    a tie, as "::"; hex groups only, also for IPv4-mapped addresses)."""
    best_start, best_len, run_start, run_len = -1, 0, -1, 0
    for g in range(8):
        if _word(data, start + 2 * g) == 0:
            if run_start < 0:
                run_start = g
            run_len += 1
            if run_len > best_len:
                best_start, best_len = run_start, run_len
        else:
            run_start, run_len = -1, 0
    if best_len < 2:
        best_start, best_len = -1, 0
    g = 0
    while g < 8:
        if g == best_start:
            out[o] = _COLON
            out[o + 1] = _COLON
            o += 2
            g += best_len
            continue
        if g > 0 and g != best_start + best_len:
            out[o] = _COLON
            o += 1
        o = _put_hex_group(out, o, _word(data, start + 2 * g))
        g += 1
    return o


@njit
def _put_txt(data: np.ndarray, base: int, start: int, stop: int, out: np.ndarray,
             o: int) -> int:
    """TXT character-strings joined without separator, MAX_TEXT_BYTES then "..."; -1 when
    a string runs past the rdata."""
    pos = start
    while pos < stop:
        pos += 1 + np.int64(data[base + pos])
    if pos > stop:
        return -1
    shown = 0
    pos = start
    while pos < stop:
        length = np.int64(data[base + pos])
        for i in range(base + pos + 1, base + pos + 1 + length):
            if shown == MAX_TEXT_BYTES:
                for _ in range(3):
                    out[o] = _DOT
                    o += 1
                return o
            char = _TEXT_CHARS[data[i]]
            if char:  # as for names (_LABEL_CHARS): TXT tunnels carry long strings
                out[o] = char
                o += 1
            else:
                o = _put_text_byte(out, o, np.int64(data[i]))
            shown += 1
        pos += 1 + length
    return o


@njit
def _is_name_type(rtype: int) -> bool:
    """Whether the record data of this type is one domain name (NAME_TYPES)."""
    for t in NAME_TYPES:
        if rtype == t:
            return True
    return False


@njit
def _put_rdata(data: np.ndarray, base: int, size: int, rtype: int, start: int,
               rdlength: int, out: np.ndarray, o: int) -> int:
    """Text form of one record's data (start/rdlength: message offsets, inside the message);
    hex when it does not fit its type's layout."""
    stop = start + rdlength
    at = base + start
    if rtype == TYPE_A and rdlength == 4:
        for k in range(4):
            if k:
                out[o] = _DOT
                o += 1
            o = _put_uint(out, o, np.int64(data[at + k]))
        return o
    if rtype == TYPE_AAAA and rdlength == 16:
        return _put_ipv6(data, at, out, o)
    if _is_name_type(rtype):
        end, o2 = read_name(data, base, size, start, out, o)
        if end == stop:
            return o2
    elif rtype == TYPE_MX and rdlength >= 3:
        o2 = _put_uint(out, o, _word(data, at))
        out[o2] = _SPACE
        end, o2 = read_name(data, base, size, start + 2, out, o2 + 1)
        if end == stop:
            return o2
    elif rtype == TYPE_TXT:
        o2 = _put_txt(data, base, start, stop, out, o)
        if o2 >= 0:
            return o2
    elif rtype == TYPE_SOA:
        end, o2 = read_name(data, base, size, start, out, o)
        if 0 <= end <= stop:
            out[o2] = _SPACE
            end, o2 = read_name(data, base, size, end, out, o2 + 1)
            if 0 <= end and end + 20 == stop:
                for k in range(5):
                    out[o2] = _SPACE
                    at_k = base + end + 4 * k
                    o2 = _put_uint(out, o2 + 1, (_word(data, at_k) << 16) | _word(data, at_k + 2))
                return o2
    elif rtype == TYPE_SRV and rdlength >= 7:
        o2 = o
        for k in range(3):
            o2 = _put_uint(out, o2, _word(data, at + 2 * k))
            out[o2] = _SPACE
            o2 += 1
        end, o2 = read_name(data, base, size, start + 6, out, o2)
        if end == stop:
            return o2
    return _put_hex(data, at, rdlength, out, o)


@njit
def _grown_rows(rows: np.ndarray, used: int, wanted: int) -> np.ndarray:
    """A copy of rows[:used] with room for at least `wanted` more rows."""
    grown = np.empty((max(2 * rows.shape[0], used + wanted), rows.shape[1]), dtype=rows.dtype)
    grown[:used] = rows[:used]
    return grown


_MIX2 = np.uint64(0xC2B2AE3D27D4EB4F)  # an odd multiplier (xxhash's)
INTERN_MAX_LEN = 64  # texts up to this long are shared within a batch (see _intern)
_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing multiplier


@njit
def _intern(text: np.ndarray, start: int, stop: int, slots: np.ndarray, slot_hash: np.ndarray,
            slot_start: np.ndarray, count: int) -> tuple[int, int, int]:
    """text[start:stop] was just rendered -> (index, text bytes used, texts): the index of an
    equal earlier text of the batch (the new bytes are dropped), or a new index (the text
    is kept and ended with TEXT_SEP). Names and answers repeat a lot within a batch: one
    str per distinct text. Texts longer than INTERN_MAX_LEN (tunnel names, hex, TXT) are
    nearly always unique and costly to hash: they are kept as they are. Open addressing
    over `slots` (-1: free; at most half full: see _rehashed), with each slot's text's
    hash and start in `slot_hash` and `slot_start`."""
    length = stop - start
    if length > INTERN_MAX_LEN:
        text[stop] = TEXT_SEP
        return count, stop + 1, count + 1
    h = _FNV_OFFSET
    for k in range(np.uint64(start), np.uint64(stop)):  # unsigned: no negative-index fix-up
        h = (h ^ np.uint64(text[k])) * _FNV_PRIME
    mask = slots.shape[0] - 1
    slot = np.int64(h & np.uint64(mask))
    while slots[slot] >= 0:
        k = slots[slot]
        earlier = np.uint64(slot_start[slot])
        if (slot_hash[slot] == h and text[earlier + np.uint64(length)] == TEXT_SEP
                and _same_bytes(text, earlier, text, np.uint64(start), length)):
            return k, start, count
        slot = (slot + 1) & mask
    slots[slot] = count
    slot_hash[slot] = h
    slot_start[slot] = start
    text[stop] = TEXT_SEP
    return count, stop + 1, count + 1


INTERN_FIRST_SLOTS = 1024  # a batch's table starts this small: most have few distinct texts
ADDRESS_MEMO_BITS = 11
ADDRESS_MEMO_SLOTS = 2 << ADDRESS_MEMO_BITS  # A-record addresses remembered (_address_key), 2 a set
_NO_ADDRESS = np.uint64(1) << np.uint64(32)  # a memo key no 4-byte address has


NAME_MEMO_BITS = 10
NAME_MEMO_SLOTS = 2 << NAME_MEMO_BITS  # plain names remembered (_plain_name_length), 2 a set
NAME_MEMO_BYTES = 64  # longest wire form remembered


@njit(inline="always")
def _plain_name_length(data: np.ndarray, base: int, size: int, pos: int) -> int:
    """Wire length of the name at message offset `pos` when it has no compression pointer
    and read_name reads it without error (labels below 64 bytes, at most
    MAX_NAME_WIRE_LEN bytes, inside the message); else -1.

    Why (parse_messages' name memo, 2-way set-associative, NAME_MEMO_SLOTS of names up to
    NAME_MEMO_BYTES, kept across batches by parse_messages_into): traffic asks for the
    same names again and again, and rendering a name (a branch per byte) and interning it
    (hash, probe, compare) were most of a query's walk; the memo serves question names,
    answer owners other than the question and name-type record data (CNAME ...) written
    out without pointers. Such a name's text is a function of its wire bytes alone, so a name
    whose bytes equal a remembered one has that one's text; the text is remembered only
    when it was interned (at most INTERN_MAX_LEN characters), so the index is the one
    _intern would return for it again and a hit changes nothing else (_intern drops a
    repeated text's bytes): the output is the same with or without the memo."""
    wire = 1
    while True:
        if pos >= size:
            return -1
        length = np.int64(data[np.uint64(base + pos)])  # unsigned: no negative-index fix-up
        if length == 0:
            return wire
        if length & 0xC0:
            return -1  # a pointer (read_name's job) or a reserved label type
        wire += length + 1
        pos += 1 + length
        if wire > MAX_NAME_WIRE_LEN or pos > size:
            return -1


@njit(inline="always")
def _name_slot(data: np.ndarray, at: int, wire: int) -> int:
    """Memo slot of the name data[at:at+wire]: its first 8 bytes and length, hashed."""
    h = np.uint64(wire)
    start = np.uint64(at)  # unsigned: no negative-index fix-up per byte
    for k in range(np.uint64(min(wire, 8))):
        h = (h << np.uint64(8)) | np.uint64(data[start + k])
    return np.int64(((h ^ (np.uint64(wire) << np.uint64(56))) * _GOLDEN)
                    >> np.uint64(64 - NAME_MEMO_BITS))


@njit(inline="always")
def _memo_lookup(memo: np.ndarray, memo_len: np.ndarray, memo_text: np.ndarray,
                 data: np.ndarray, at: int, wire: int) -> int:
    """The text index the name memo holds for the bytes data[at:at+wire], or -1. The memo
    is 2-way set-associative: set s (_name_slot) is rows 2s (the newer name) and 2s + 1,
    so two names of one set do not evict each other in turn (names sharing their first 8
    bytes, "www..." of one length, share a set)."""
    first = np.uint64(2 * _name_slot(data, at, wire))
    start = np.uint64(at)  # unsigned: no negative-index fix-up per byte
    for row in (first, first + np.uint64(1)):
        if memo_len[row] == wire:
            same = True
            for k in range(np.uint64(wire)):
                if memo[row, k] != data[start + k]:
                    same = False
                    break
            if same:
                return memo_text[row]
    return -1


@njit
def _memo_put(memo: np.ndarray, memo_len: np.ndarray, memo_text: np.ndarray,
              data: np.ndarray, at: int, wire: int, index: int) -> None:
    """Remember that the name data[at:at+wire] has text index `index`: it becomes its set's
    newer row, the newer one before it the older (the older one is forgotten)."""
    first = 2 * _name_slot(data, at, wire)
    older = first + 1
    for k in range(np.uint64(memo_len[first])):  # unsigned: no negative-index fix-up
        memo[older, k] = memo[first, k]
    memo_len[older] = memo_len[first]
    memo_text[older] = memo_text[first]
    start = np.uint64(at)
    for k in range(np.uint64(wire)):
        memo[first, k] = data[start + k]
    memo_len[first] = wire
    memo_text[first] = index


@njit
def _address_key(data: np.ndarray, at: int) -> np.uint64:
    """The 4 address bytes of an A record at data[at:at+4] as a memo key.

    Why a memo (parse_messages' memo_key/memo_text, ADDRESS_MEMO_SLOTS, 2-way: see
    _parse_run):
    rendering a dotted quad (four decimal conversions) and interning it (hash, probe,
    compare) cost ~40 % of the walk on a batch whose answers are mostly A records.
    The text (at most 15 characters) is always interned, so the remembered index is the
    one _intern would return for the same address again, and a hit changes nothing else
    (_intern drops a repeated text's bytes): the output is the same with or without it.
    AAAA addresses (memo6_key: two words of two keys each) are remembered the same way:
    their text (at most 39 characters) is always interned too. The memos are kept across
    batches (parse_messages_into)."""
    q = np.uint64(at)  # unsigned: no negative-index fix-up
    return ((np.uint64(data[q]) << np.uint64(24))
            | (np.uint64(data[q + np.uint64(1)]) << np.uint64(16))
            | (np.uint64(data[q + np.uint64(2)]) << np.uint64(8))
            | np.uint64(data[q + np.uint64(3)]))


@njit
def _address_slot(key: np.uint64) -> int:
    """Memo set of an address key: the top bits of a Fibonacci hash."""
    return np.int64((key * _GOLDEN) >> np.uint64(64 - ADDRESS_MEMO_BITS))


@njit
def _rehashed(slots: np.ndarray, slot_hash: np.ndarray, slot_start: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The intern table (see _intern) moved into one twice the size. Why grown, not sized
    for the worst case up front: that table (two texts per possible answer record) was
    zeroed on every batch, ~0.5 MB per 6,000 messages, for a few dozen distinct texts."""
    size = 2 * slots.shape[0]
    mask = np.uint64(size - 1)
    new_slots = np.full(size, -1, dtype=np.int64)
    new_hash = np.empty(size, dtype=np.uint64)
    new_start = np.empty(size, dtype=np.int64)
    for old in range(slots.shape[0]):
        if slots[old] >= 0:
            slot = np.int64(slot_hash[old] & mask)
            while new_slots[slot] >= 0:
                slot = (slot + 1) & (size - 1)
            new_slots[slot] = slots[old]
            new_hash[slot] = slot_hash[old]
            new_start[slot] = slot_start[old]
    return new_slots, new_hash, new_start


@njit(inline="always")
def _repeats_question(data: np.ndarray, base: int, size: int, pos: int, q_end: int) -> bool:
    """The bytes at message offset `pos` are those of the question name, [12, q_end)."""
    length = q_end - HEADER_LEN
    if pos + length > size:
        return False
    # unsigned: no negative-index fix-up per byte
    return _same_bytes(data, np.uint64(base + pos), data, np.uint64(base + HEADER_LEN), length)


@njit
def parse_messages(data: np.ndarray, msg_start: np.ndarray, msg_len: np.ndarray):
    """DNS messages data[msg_start[i] : msg_start[i] + msg_len[i]] -> columns.

    Returns (msg, answers, text, text_used):
    - msg: (n, 8) int64 per message: status (MALFORMED: header or first question
      unreadable, no event; OK; DAMAGED: answer section cut short, the records read so
      far kept), id, flags, qtype, qclass, qname text index, first answer row, answers;
    - answers: (m, 5) int64 per answer record: owner name text index, type, class, TTL,
      data text index (rows of a message are contiguous, in wire order);
    - text[:text_used]: every distinct text of the batch followed by TEXT_SEP; text index
      k = the k-th of them (equal texts share one index).
    A message without a question has qname "" and qtype/qclass 0. Further questions are
    only skipped; when that fails the answers are not read (DAMAGED if ancount > 0).
    The caller guarantees 0 <= msg_start and msg_start + msg_len <= data.size, and passes
    `data` read-only (as the capture reader maps files): one compiled variant.
    """
    n = msg_start.shape[0]
    (text, o, slots, slot_hash, slot_start, texts, memo_key, memo_text, memo6_key, memo6_text,
     name_memo, name_len, name_text) = new_parse_state(max(TEXT_RESERVE, 64 * n))
    msg, answers, text, o = parse_messages_into(
        data, msg_start, msg_len, text, o, slots, slot_hash, slot_start, texts, memo_key,
        memo_text, memo6_key, memo6_text, name_memo, name_len, name_text)[:4]
    return msg, answers, text, o


@njit
def new_parse_state(text_bytes: int):
    """The empty tables parse_messages_into starts from (its arguments after msg_len): a
    text buffer of `text_bytes`, no texts, empty intern table and memos."""
    text = np.empty(text_bytes, dtype=np.uint8)
    slots = np.full(INTERN_FIRST_SLOTS, -1, dtype=np.int64)
    slot_hash = np.empty(INTERN_FIRST_SLOTS, dtype=np.uint64)
    slot_start = np.empty(INTERN_FIRST_SLOTS, dtype=np.int64)
    # A-record address -> its text index (_address_key); the key no address has = empty
    memo_key = np.full(ADDRESS_MEMO_SLOTS, _NO_ADDRESS, dtype=np.uint64)
    memo_text = np.empty(ADDRESS_MEMO_SLOTS, dtype=np.int64)
    # AAAA-record address (two words) -> its text index; text -1 = empty
    memo6_key = np.empty((1 << ADDRESS_MEMO_BITS, 2), dtype=np.uint64)  # direct-mapped
    memo6_text = np.full(1 << ADDRESS_MEMO_BITS, -1, dtype=np.int64)
    # plain name wire bytes -> its text index (_plain_name_length); length 0 = empty
    name_memo = np.empty((NAME_MEMO_SLOTS, NAME_MEMO_BYTES), dtype=np.uint8)
    name_len = np.zeros(NAME_MEMO_SLOTS, dtype=np.int64)
    name_text = np.empty(NAME_MEMO_SLOTS, dtype=np.int64)
    # np.int64(): plain literals would make numba compile the helpers once more for
    # Literal[int] arguments (compile time, not speed).
    return (text, np.int64(0), slots, slot_hash, slot_start, np.int64(0), memo_key, memo_text,
            memo6_key, memo6_text, name_memo, name_len, name_text)


WARM_MESSAGES = 256  # batches with fewer messages do not warm the tables (_warm)
WARM_MAX_BYTES = 1 << 18  # nor any table larger than this


@njit
def _warm(array: np.ndarray, stop: int) -> None:
    """Ask for every cache line of array[:stop] (1-D) ahead of a batch's lookups. Why: the
    memos and hash tables are kept across batches, and the other analyzers evict them in
    between, so each batch's first probes of a line missed in turn (perf: the memo and
    intern probes were a third of the walk); a sequential sweep brings them in at memory
    bandwidth. A few messages, or a table past the caches' share (tunnel traffic grows the
    intern table and text to megabytes), would not repay the sweep."""
    if stop * array.itemsize > WARM_MAX_BYTES:
        return
    step = max(64 // array.itemsize, 1)
    for i in range(0, stop, step):
        prefetch(array, i)


@njit
def parse_messages_into(data: np.ndarray, msg_start: np.ndarray, msg_len: np.ndarray,
                        text: np.ndarray, o: int, slots: np.ndarray, slot_hash: np.ndarray,
                        slot_start: np.ndarray, texts: int, memo_key: np.ndarray,
                        memo_text: np.ndarray, memo6_key: np.ndarray, memo6_text: np.ndarray,
                        name_memo: np.ndarray, name_len: np.ndarray, name_text: np.ndarray):
    """parse_messages continuing from earlier batches' texts, intern table and memos
    (new_parse_state's tuple, as this returned it last): text indexes then number the texts
    of every batch so far, and the new texts are text[o_before:o]. Returns (msg, answers,
    text, o, slots, slot_hash, slot_start, texts), the last six to pass back next time
    (grown arrays are new ones). Why: a resolver's names and answers repeat from batch to
    batch, so their texts are rendered and made into Python objects once (sensors/dns.py,
    DnsObjects), and the memos keep hitting."""
    n = msg_start.shape[0]
    if n >= WARM_MESSAGES:
        for table in (slots, slot_start, name_len, name_text, memo_text, memo6_text):
            _warm(table, table.shape[0])
        for table in (slot_hash, memo_key, memo6_key.reshape(-1)):
            _warm(table, table.shape[0])
        _warm(name_memo.reshape(-1), name_memo.size)
        _warm(text, o)
    # Not zeroed: _parse_run writes every row (a malformed one as zeros, _malformed), and
    # zeroing ~300 KB a batch first was a second pass over lines the walk writes anyway.
    msg = np.empty((n, 8), dtype=np.int64)
    # The outputs start small and grow between runs of _parse_run (which stops before a
    # message that might not fit), rather than being sized for the worst case up front:
    # that needed each message's ancount (a pass over the batch's messages, each a cache
    # miss) and zeroed a text table sized for two texts per possible record.
    answers = np.empty((n + 64, 5), dtype=np.int64)
    i = np.int64(0)  # next message
    rows = np.int64(0)  # answer rows used
    while True:
        i, o, texts, rows = _parse_run(data, msg_start, msg_len, i, msg, answers, rows, text,
                                       o, slots, slot_hash, slot_start, texts, memo_key,
                                       memo_text, memo6_key, memo6_text, name_memo, name_len,
                                       name_text)
        if i == n:
            return msg, answers[:rows], text, o, slots, slot_hash, slot_start, texts
        # Message i might not fit: grow whatever is short for its worst case.
        records = min(_word(data, msg_start[i] + 6), MAX_ANSWERS)
        if o + TEXT_RESERVE * (1 + records) > text.shape[0]:
            text = _grown(text, o, TEXT_RESERVE * (1 + records))
        if rows + records > answers.shape[0]:
            answers = _grown_rows(answers, rows, records)
        while 2 * (texts + 1 + 2 * records) > slots.shape[0]:  # at most half full
            slots, slot_hash, slot_start = _rehashed(slots, slot_hash, slot_start)


@njit(inline="always")
def _malformed(msg: np.ndarray, i: int) -> None:
    """Message i yields no event: its row all zeros (status MALFORMED)."""
    for c in range(msg.shape[1]):
        msg[i, c] = 0


@njit
def _parse_run(data: np.ndarray, msg_start: np.ndarray, msg_len: np.ndarray, first: int,
               msg: np.ndarray, answers: np.ndarray, rows: int, text: np.ndarray, o: int,
               slots: np.ndarray, slot_hash: np.ndarray, slot_start: np.ndarray,
               texts: int, memo_key: np.ndarray, memo_text: np.ndarray,
               memo6_key: np.ndarray, memo6_text: np.ndarray, name_memo: np.ndarray,
               name_len: np.ndarray, name_text: np.ndarray) -> tuple[int, int, int, int]:
    """parse_messages' walk from message `first` on, up to a message whose worst case might
    not fit the room left in answers, text or the intern table (returned: its index; n
    when all were parsed), with the counts (text bytes, texts, answer rows) reached.

    Why the room is checked per message here and made in parse_messages: an array variable
    that the loop can reassign (grow) costs reference counting (two atomic operations) on
    every pass, a fifth of this walk's time.
    """
    n = msg_start.shape[0]
    size_of_data = data.shape[0]
    for i in range(first, n):
        if i + PREFETCH_MESSAGES < n:
            # the lines of a later message (see tcp_stream.prefetch): the walk of one
            # message gives the CPU no loads of the next to overlap, so each waited for
            # memory in turn
            ahead = msg_start[i + PREFETCH_MESSAGES]
            if 0 <= ahead < size_of_data:
                # every line the message spans, up to PREFETCH_LINES (a response often
                # spans three: first and last alone left the middle one to wait for)
                stop = min(ahead + msg_len[i + PREFETCH_MESSAGES], size_of_data) - 1
                line = ahead - (ahead & 63)
                for _ in range(PREFETCH_LINES):
                    if line > stop:
                        break
                    prefetch(data, max(line, ahead))
                    line += 64
        row = np.uint64(i)  # unsigned row indexes: no negative-index fix-up per read/write
        base = msg_start[row]
        size = msg_len[row]
        if size < HEADER_LEN:
            _malformed(msg, i)
            continue
        qdcount = _word(data, base + 4)
        ancount = _word(data, base + 6)
        # Room for the worst case: TEXT_RESERVE text bytes for the question and for each
        # record (further questions are rendered as scratch within the question's), a row
        # per record, and the table at most half full after a text per name and data.
        records = min(ancount, MAX_ANSWERS)
        if (o + TEXT_RESERVE * (1 + records) > text.shape[0]
                or rows + records > answers.shape[0]
                or 2 * (texts + 1 + 2 * records) > slots.shape[0]):
            return i, o, texts, rows
        pos = np.int64(HEADER_LEN)
        qtype = qclass = 0
        q_end = np.int64(HEADER_LEN)  # wire end of the question name (offset 12 on)
        q_stop = o
        wire = 0  # wire length of a question name the memo can hold (_plain_name_length)
        known = -1  # its text index when the memo holds it
        if qdcount:
            wire = _plain_name_length(data, base, size, pos)
            if not 0 < wire <= NAME_MEMO_BYTES:
                wire = 0
            else:
                known = _memo_lookup(name_memo, name_len, name_text, data, base + pos, wire)
            if known >= 0:
                end = pos + wire
            else:
                end, q_stop = read_name(data, base, size, pos, text, o)
            if end < 0 or end + 4 > size:
                _malformed(msg, i)
                continue
            qtype = _word(data, base + end)
            qclass = _word(data, base + end + 2)
            q_end = end
            pos = end + 4
        if known >= 0:
            qname = known
        else:
            q_start = o
            qname, o, texts = _intern(text, o, q_stop, slots, slot_hash, slot_start, texts)
            if wire and q_stop - q_start <= INTERN_MAX_LEN:  # interned: shared, memo it
                _memo_put(name_memo, name_len, name_text, data, base + HEADER_LEN, wire,
                          qname)
        msg[row, 1] = _word(data, base)
        msg[row, 2] = _word(data, base + 2)
        msg[row, 3] = qtype
        msg[row, 4] = qclass
        msg[row, 5] = qname
        msg[row, 6] = rows
        damaged = False
        # Further questions (nearly never sent) are only walked to reach the answers.
        for _ in range(qdcount - 1):
            end, _scratch = read_name(data, base, size, pos, text, o)
            if end < 0 or end + 4 > size:
                damaged = ancount > 0
                records = 0
                break
            pos = end + 4
        for _ in range(records):
            # The usual owner is the question name: as a pointer to it, or written out again.
            # read_name would render the text already interned as `qname`, so it is skipped.
            owner_wire = 0
            if (qdcount and pos + 1 < size and data[np.uint64(base + pos)] == 0xC0
                    and data[np.uint64(base + pos + 1)] == HEADER_LEN):
                # read_name would follow the pointer to the name read at offset 12: one
                # jump more, still far below the cap (that name's own pointers can only go
                # into the 12-byte header, each further back).
                end, o2, name = pos + 2, o, qname
            elif qdcount and _repeats_question(data, base, size, pos, q_end):
                # The same bytes read the same way: the same labels, and any pointer among
                # them has the same target (< 12 < pos, so allowed here too).
                end, o2, name = pos + q_end - HEADER_LEN, o, qname
            else:
                # Other owners (a CNAME target's records, uncompressed answers): the name
                # memo, when the owner is a plain name (see _plain_name_length).
                owner_wire = _plain_name_length(data, base, size, pos)
                name = -1
                if 0 < owner_wire <= NAME_MEMO_BYTES:
                    name = _memo_lookup(name_memo, name_len, name_text, data, base + pos,
                                        owner_wire)
                else:
                    owner_wire = 0
                if name >= 0:
                    end, o2 = pos + owner_wire, o
                else:
                    end, o2 = read_name(data, base, size, pos, text, o)
            if end < 0 or end + 10 > size:
                damaged = True
                break
            owner = pos
            rtype = _word(data, base + end)
            rclass = _word(data, base + end + 2)
            ttl = (_word(data, base + end + 4) << 16) | _word(data, base + end + 6)
            rdlength = _word(data, base + end + 8)
            pos = end + 10
            if pos + rdlength > size:
                damaged = True
                break
            if name < 0:
                name_start = o
                name, o, texts = _intern(text, o, o2, slots, slot_hash, slot_start, texts)
                if owner_wire and o2 - name_start <= INTERN_MAX_LEN:  # interned: memo it
                    _memo_put(name_memo, name_len, name_text, data, base + owner, owner_wire,
                              name)
            # Most answers are A records, and a batch repeats few addresses: a memo of
            # address -> text index skips rendering and interning a repeat (_address_key).
            # AAAA addresses and names (CNAME ...) have memos of their own.
            rdata = -1
            memo = 0  # which memo the data's text goes to when rendered: 1 A, 2 AAAA, 3 name
            slot = 0
            key = key0 = key1 = np.uint64(0)
            data_wire = 0
            if rtype == TYPE_A and rdlength == 4:
                memo = 1
                key = _address_key(data, base + pos)
                # 2-way: set s is slots 2s (the newer address) and 2s + 1, so two
                # addresses of one set do not evict each other in turn (direct-mapped, the
                # mix's 1,554 addresses hit 82 %, 2-way with as many slots 92 %)
                slot = 2 * _address_slot(key)
                if memo_key[slot] == key:
                    rdata = memo_text[slot]
                elif memo_key[slot + 1] == key:
                    rdata = memo_text[slot + 1]
                    memo_key[slot + 1] = memo_key[slot]  # it becomes the newer one
                    memo_text[slot + 1] = memo_text[slot]
                    memo_key[slot] = key
                    memo_text[slot] = rdata
            elif rtype == TYPE_AAAA and rdlength == 16:
                key0 = _address_key(data, base + pos) << np.uint64(32) \
                    | _address_key(data, base + pos + 4)
                key1 = _address_key(data, base + pos + 8) << np.uint64(32) \
                    | _address_key(data, base + pos + 12)
                memo = 2
                slot = _address_slot(key0 ^ (key1 * _GOLDEN))
                if memo6_text[slot] >= 0 and memo6_key[slot, 0] == key0 \
                        and memo6_key[slot, 1] == key1:
                    rdata = memo6_text[slot]
            elif _is_name_type(rtype):
                data_wire = _plain_name_length(data, base, size, pos)
                if data_wire == rdlength and data_wire <= NAME_MEMO_BYTES:
                    memo = 3
                    rdata = _memo_lookup(name_memo, name_len, name_text, data, base + pos,
                                         data_wire)
            if rdata < 0:
                data_start = o
                o2 = _put_rdata(data, base, size, rtype, pos, rdlength, text, o)
                rdata, o, texts = _intern(text, o, o2, slots, slot_hash, slot_start, texts)
                if memo == 1:
                    memo_key[slot + 1] = memo_key[slot]
                    memo_text[slot + 1] = memo_text[slot]
                    memo_key[slot] = key
                    memo_text[slot] = rdata
                elif memo == 2:
                    memo6_key[slot, 0] = key0
                    memo6_key[slot, 1] = key1
                    memo6_text[slot] = rdata
                elif memo == 3 and o2 - data_start <= INTERN_MAX_LEN:
                    _memo_put(name_memo, name_len, name_text, data, base + pos, data_wire,
                              rdata)
            r = np.uint64(rows)
            answers[r, 0] = name
            answers[r, 1] = rtype
            answers[r, 2] = rclass
            answers[r, 3] = ttl
            answers[r, 4] = rdata
            rows += 1
            pos += rdlength
        msg[row, 7] = rows - msg[row, 6]
        msg[row, 0] = DAMAGED if damaged else OK
    return n, o, texts, rows


@njit
def kept_messages(msg: np.ndarray):
    """parse_messages' msg -> the columns of the messages that make an event (status not
    MALFORMED), in one pass: (index, msg, dns_id, flags, qtype, qclass, is_response, rcode),
    index the kept rows, msg the kept rows (msg itself when all are), the rest typed event
    columns (rcode 0 for queries). Why one pass: as numpy this was a compare, a
    flatnonzero, a row gather and six strided casts of msg's columns per batch."""
    n = msg.shape[0]
    k = 0
    for i in range(n):
        if msg[i, 0] != MALFORMED:
            k += 1
    index = np.empty(k, dtype=np.int64)
    kept = msg if k == n else np.empty((k, msg.shape[1]), dtype=np.int64)
    dns_id = np.empty(k, dtype=np.uint16)
    flags = np.empty(k, dtype=np.uint16)
    qtype = np.empty(k, dtype=np.uint16)
    qclass = np.empty(k, dtype=np.uint16)
    is_response = np.empty(k, dtype=np.bool_)
    rcode = np.empty(k, dtype=np.uint8)
    j = 0
    for i in range(n):
        if msg[i, 0] == MALFORMED:
            continue
        index[j] = i
        if k != n:
            for c in range(msg.shape[1]):
                kept[j, c] = msg[i, c]
        word = msg[i, 2]
        dns_id[j] = msg[i, 1]
        flags[j] = word
        qtype[j] = msg[i, 3]
        qclass[j] = msg[i, 4]
        is_response[j] = (word & 0x8000) != 0
        rcode[j] = word & 0x000F if word & 0x8000 else 0
        j += 1
    return index, kept, dns_id, flags, qtype, qclass, is_response, rcode


@njit
def port_rows(src_port: np.ndarray, dst_port: np.ndarray, port: int) -> np.ndarray:
    """Rows whose source or destination port is `port`, in order. Branch-free (every row
    is written, the count advances on a match): a few % of a batch's rows are DNS, at
    random, so a branch per row would mispredict; numpy's mask + flatnonzero took ~2.5x
    as long on a 65k-row batch of the mix."""
    n = src_port.shape[0]
    out = np.empty(n, dtype=np.int64)
    k = 0
    for i in range(n):
        out[k] = i
        k += (src_port[i] == port) | (dst_port[i] == port)
    return out[:k]


@njit
def port_candidates(rows: np.ndarray, ip_version: np.ndarray, transport: np.ndarray,
                    payload_len: np.ndarray, payload_offset: np.ndarray, data_size: int):
    """The packets of `rows` (those to/from the DNS port) that may carry DNS, in one pass:
    (udp_rows, udp_start, udp_len, tcp_rows), IP packets only. UDP rows have at least a
    DNS header of payload, their payload span (start, length) cut to lie inside the buffer
    of `data_size` bytes (length 0 for a start outside it); TCP rows have room for a
    length prefix too. Why compiled: as boolean masks and gathers this took ten numpy
    calls per batch (~0.1 ms per 6,000 rows, ~5x this)."""
    n = rows.shape[0]
    udp_rows = np.empty(n, dtype=np.int64)
    udp_start = np.empty(n, dtype=np.int64)
    udp_len = np.empty(n, dtype=np.int64)
    tcp_rows = np.empty(n, dtype=np.int64)
    udp = 0
    tcp = 0
    for k in range(n):
        i = rows[k]
        if ip_version[i] == 0:
            continue
        length = np.int64(payload_len[i])
        if transport[i] == PROTO_UDP and length >= HEADER_LEN:
            start = np.int64(payload_offset[i])
            room = 0 if start < 0 else max(data_size - start, 0)
            udp_rows[udp] = i
            udp_start[udp] = start
            udp_len[udp] = min(length, room)
            udp += 1
        elif transport[i] == PROTO_TCP and length >= HEADER_LEN + 2:
            tcp_rows[tcp] = i
            tcp += 1
    return udp_rows[:udp], udp_start[:udp], udp_len[:udp], tcp_rows[:tcp]


@njit
def split_tcp_segments(data: np.ndarray, seg_start: np.ndarray, seg_len: np.ndarray):
    """TCP/53 segments -> their whole length-prefixed messages (at most MAX_TCP_MESSAGES
    per segment, from the segment's start).

    Returns (segment, start, length) of each message (start: buffer offset past the prefix)
    and `incomplete`: per segment, 1 when it held a prefix not followed by a whole message
    of at least a DNS header (the walk stops there), else 0.
    """
    n = seg_start.shape[0]
    capacity = 0
    for i in range(n):
        capacity += min(MAX_TCP_MESSAGES, seg_len[i] // (HEADER_LEN + 2))
    segment = np.empty(capacity, dtype=np.int64)
    start = np.empty(capacity, dtype=np.int64)
    length = np.empty(capacity, dtype=np.int64)
    incomplete = np.zeros(n, dtype=np.int64)
    count = 0
    for i in range(n):
        base = seg_start[i]
        size = seg_len[i]
        pos = 0
        found = 0
        while pos + 2 <= size and found < MAX_TCP_MESSAGES:
            prefix = _word(data, base + pos)
            if prefix < HEADER_LEN or pos + 2 + prefix > size or count >= capacity:
                incomplete[i] = 1
                break
            segment[count] = i
            start[count] = base + pos + 2
            length[count] = prefix
            count += 1
            found += 1
            pos += 2 + prefix
    return segment[:count], start[:count], length[:count], incomplete


_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier: spreads keys over the table
_GOLDEN_ODD = np.uint64(0x165667B19E3779F9)


@njit
def _table_size(count: int) -> int:
    """A power of two at least twice `count` (open addressing stays at most half full)."""
    size = 64
    while size < 2 * count:
        size *= 2
    return size


@njit
def _finish(h: np.uint64) -> np.uint64:
    """High bits folded into the low ones, which pick the slot (a product's low bits depend
    only on its operands' low bits: IPv4 addresses sit in the high half of a uint64 view)."""
    h ^= h >> np.uint64(33)
    h *= _MIX
    return h ^ (h >> np.uint64(29))


@njit
def _row_hash(rows: np.ndarray, i: int) -> np.uint64:
    h = _FNV_OFFSET
    for k in range(rows.shape[1]):
        h = (h ^ np.uint64(rows[i, k])) * _MIX
    return _finish(h)


@njit
def flow_groups(src: np.ndarray, dst: np.ndarray, transport: np.ndarray,
                src_port: np.ndarray, dst_port: np.ndarray, both_directions: bool):
    """Rows numbered by flow tuple: (first, group), first[g] the first row of flow g,
    group[i] the flow of row i. src/dst: (n, 2) uint64 views of the 16-byte addresses.
    With both_directions, (a, b, pa, pb) and (b, a, pb, pa) are one flow (a query and its
    response); otherwise each direction is its own tuple.

    Numbered in first-seen order (open addressing, full compare on a probe), without
    materialising every row's key: only the distinct flows' canonical tuples are
    kept, and the hash multiplies the tuple's words independently (no serial chain)."""
    n = transport.shape[0]
    group = np.empty(n, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    key = np.empty((n, 6), dtype=np.uint64)  # canonical tuple of each distinct flow
    size = _table_size(n)
    mask = np.uint64(size - 1)
    slots = np.full(size, -1, dtype=np.int64)
    distinct = 0
    for i in range(n):
        a0, a1, pa = src[i, 0], src[i, 1], np.uint64(src_port[i])
        b0, b1, pb = dst[i, 0], dst[i, 1], np.uint64(dst_port[i])
        if both_directions and (a0 > b0 or (a0 == b0 and (a1 > b1 or (a1 == b1 and pa > pb)))):
            a0, a1, pa, b0, b1, pb = b0, b1, pb, a0, a1, pa
        # ports below 2**32 and one byte of protocol: one word for the three
        ports = (pa << np.uint64(32)) ^ pb ^ (np.uint64(transport[i]) << np.uint64(56))
        h = (a0 * _MIX) ^ (a1 * _FNV_PRIME) ^ ((b0 ^ ports) * _GOLDEN_ODD) ^ (b1 * _MIX2)
        slot = np.int64(_finish(h ^ ports) & mask)
        while True:
            g = slots[slot]
            if g < 0:
                slots[slot] = distinct
                first[distinct] = i
                key[distinct, 0], key[distinct, 1], key[distinct, 2] = a0, a1, pa
                key[distinct, 3], key[distinct, 4], key[distinct, 5] = b0, b1, pb
                group[i] = distinct
                distinct += 1
                break
            if (key[g, 0] == a0 and key[g, 1] == a1 and key[g, 2] == pa and key[g, 3] == b0
                    and key[g, 4] == b1 and key[g, 5] == pb
                    and transport[first[g]] == transport[i]):
                group[i] = g
                break
            slot = (slot + 1) & (size - 1)
    return first[:distinct], group


# --- Objects kept across batches ------------------------------------------------------------
# A resolver's traffic repeats names, answers and whole answer lists from batch to batch, and
# making their Python objects (str, one dict per record, one list per answer list) again in
# every batch cost more than parsing the messages. parse_messages_into numbers texts, and
# global_answers records and answer lists, in tables that live as long as the analyzer
# (sensors/dns.py, DnsObjects), so Python objects are made only for values not seen before.
# Each kernel grows its tables before its loop (see _parse_run on why not inside).


@njit
def _grown_table(slots: np.ndarray, wanted: int) -> np.ndarray:
    """slots, or an empty table (all -1) of at least twice `wanted` slots when it is
    smaller (open addressing stays at most half full); the caller refills it."""
    if 2 * wanted <= slots.shape[0]:
        return slots
    size = slots.shape[0]
    while 2 * wanted > size:
        size *= 2
    return np.full(size, -1, dtype=np.int64)


@njit
def global_answers(first_row: np.ndarray, count: np.ndarray, records: np.ndarray,
                   keys: np.ndarray, record_slots: np.ndarray, record_count: int,
                   set_rows: np.ndarray, members: np.ndarray, bounds: np.ndarray,
                   set_slots: np.ndarray, sets: int):
    """Each message's answer list (its rows first_row..+count of parse_messages_into's
    answers, whose text indexes hold across batches) -> a lasting list id, 0 for the empty
    list of every message without answers.

    Lists are looked up by their rows' values (set_rows[bounds[s]:bounds[s + 1]] are list
    s's rows), so a list seen before costs one probe, not one per record. A new list's
    records are numbered in the record table (keys[r]: record r's five numbers) and kept
    as members[bounds[s]:bounds[s + 1]]; bounds[0] = bounds[1] = 0.

    Returns (ids, keys, record_slots, record_count, set_rows, members, bounds, set_slots,
    sets); the arrays are returned grown when they had to be (tables refilled)."""
    n = first_row.shape[0]
    m = records.shape[0]
    used = bounds[sets]
    if record_count + m > keys.shape[0]:
        keys = _grown_rows(keys, record_count, m)
    if used + m > set_rows.shape[0]:
        set_rows = _grown_rows(set_rows, used, m)
        grown = np.empty(set_rows.shape[0], dtype=np.int64)
        grown[:used] = members[:used]
        members = grown
    if sets + n + 1 > bounds.shape[0]:
        grown = np.empty(max(2 * bounds.shape[0], sets + n + 1), dtype=np.int64)
        grown[:sets + 1] = bounds[:sets + 1]
        bounds = grown
    new_slots = _grown_table(record_slots, record_count + m)
    if new_slots.shape[0] != record_slots.shape[0]:
        record_slots = new_slots
        for r in range(record_count):
            _number_key(keys, r, record_slots, r)
    new_slots = _grown_table(set_slots, sets + n)
    if new_slots.shape[0] != set_slots.shape[0]:
        set_slots = new_slots
        for s in range(1, sets):
            _number_set(set_rows, bounds[s], bounds[s + 1] - bounds[s], set_rows, bounds,
                        set_slots, s)
    if n >= WARM_MESSAGES:  # (see _warm)
        _warm(set_slots, set_slots.shape[0])
        _warm(bounds, sets + 1)
        _warm(set_rows.reshape(-1), 5 * bounds[sets])
    ids = np.empty(n, dtype=np.int64)
    record_count, sets = _global_answers_run(first_row, count, records, ids, keys,
                                             record_slots, record_count, set_rows, members,
                                             bounds, set_slots, sets)
    return ids, keys, record_slots, record_count, set_rows, members, bounds, set_slots, sets


@njit
def _number_key(keys: np.ndarray, r: int, slots: np.ndarray, count: int) -> int:
    """The id of keys[r]'s record among keys[:count] (open addressing over `slots`), or
    `count` after taking a free slot for it."""
    mask = slots.shape[0] - 1
    slot = np.int64(_row_hash(keys, r) & np.uint64(mask))
    while True:
        g = slots[slot]
        if g < 0:
            slots[slot] = count
            return count
        if (keys[g, 0] == keys[r, 0] and keys[g, 1] == keys[r, 1] and keys[g, 2] == keys[r, 2]
                and keys[g, 3] == keys[r, 3] and keys[g, 4] == keys[r, 4]):
            return g
        slot = (slot + 1) & mask


@njit
def _number_set(rows: np.ndarray, a: int, c: int, set_rows: np.ndarray, bounds: np.ndarray,
                slots: np.ndarray, sets: int) -> int:
    """The id of the list of rows[a:a+c] among the `sets` lists of set_rows/bounds (equal
    when every row is), or `sets` after taking a free slot for it (the caller then stores
    it)."""
    h = np.uint64(c) * _MIX
    ua, uc = np.uint64(a), np.uint64(c)  # unsigned row indexes: no negative-index fix-ups
    for k in range(ua, ua + uc):
        # the five numbers multiplied independently, one chained step per row
        h = (h ^ (np.uint64(rows[k, 0]) * _MIX) ^ (np.uint64(rows[k, 1]) * _MIX2)
             ^ (np.uint64(rows[k, 2]) << np.uint64(48)) ^ (np.uint64(rows[k, 3]) * _GOLDEN_ODD)
             ^ (np.uint64(rows[k, 4]) * _FNV_PRIME)) * _MIX
    mask = slots.shape[0] - 1
    slot = np.int64(_finish(h) & np.uint64(mask))
    while True:
        s = slots[slot]
        if s < 0:
            slots[slot] = sets
            return sets
        us = np.uint64(s)
        b = np.uint64(bounds[us])
        if bounds[us + np.uint64(1)] - bounds[us] == c:
            same = True
            for k in range(uc):
                p, q = b + k, ua + k
                if (set_rows[p, 0] != rows[q, 0] or set_rows[p, 1] != rows[q, 1]
                        or set_rows[p, 2] != rows[q, 2] or set_rows[p, 3] != rows[q, 3]
                        or set_rows[p, 4] != rows[q, 4]):
                    same = False
                    break
            if same:
                return s
        slot = (slot + 1) & mask


@njit
def _global_answers_run(first_row: np.ndarray, count: np.ndarray, records: np.ndarray,
                        ids: np.ndarray, keys: np.ndarray, record_slots: np.ndarray,
                        record_count: int, set_rows: np.ndarray, members: np.ndarray,
                        bounds: np.ndarray, set_slots: np.ndarray, sets: int
                        ) -> tuple[int, int]:
    """global_answers' loop over tables with room for every row and list of the batch."""
    for i in range(first_row.shape[0]):
        c = count[i]
        if c == 0:
            ids[i] = 0
            continue
        a = first_row[i]
        s = _number_set(records, a, c, set_rows, bounds, set_slots, sets)
        if s == sets:  # a new list: its rows kept, its records numbered
            used = bounds[sets]
            for k in range(c):
                for j in range(5):
                    set_rows[used + k, j] = records[a + k, j]
                    keys[record_count, j] = records[a + k, j]
                g = _number_key(keys, record_count, record_slots, record_count)
                members[used + k] = g
                if g == record_count:
                    record_count += 1
            bounds[sets + 1] = used + c
            sets += 1
        ids[i] = s
    return record_count, sets
