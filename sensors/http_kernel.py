"""Compiled HTTP/1.x message walker: the numba twin of sensors.http.parse_messages.

`parse_flows` walks the client and the server bytes of many flows, all concatenated in one
uint8 buffer, in one call and returns offsets and numbers only (no Python objects): per
message its start, the request line / status fields, the body size and the (start, end)
of the few header values the HTTP events carry. The analyzer builds str objects only for
the messages it emits.

It follows parse_messages byte for byte (regular expressions, `bytes.strip`, first header
occurrence wins, chunked walk, MAX_HEADER_BYTES / MAX_MESSAGES). Where Python semantics
are not plain ASCII, the kernel does not guess: a flow whose Content-Length or
Transfer-Encoding value has a non-ASCII byte (str.isdecimal accepts other scripts' digits,
str.lower() maps the Kelvin sign to "k"), whose Content-Length has more than 18 digits,
or whose chunk size is anything but 1..15 hex digits (int(x, 16) also takes "0x", "+",
"_") is marked `fallback` and parsed by parse_messages instead. Every index is checked
against the direction's end: hostile bytes never read outside the buffer.
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import types
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

from pipeline.jit import njit
from sensors.tcp_stream import borrowed, check_span, prefetch

MAX_HEADER_BYTES = 16384
MAX_MESSAGES = 256  # requests (and responses) parsed per direction
PREFETCH_FLOWS = 8  # how many flows ahead _parse_flows asks for their first lines
PREFETCH_LINES = 3  # cache lines asked for at each direction's start (a header block's)
MAX_CHUNKS = 100000  # chunks walked per chunked body (as _chunked_length)

# message table columns (int64; -1 = absent)
M_FLOW, M_START, M_A0, M_A1, M_B0, M_B1, M_C0, M_C1, M_STATUS, M_BODY = range(10)
# header value (start, end) pairs follow: host, user-agent, referer, authorization,
# content-type (the fields of an event), then content-length and transfer-encoding
H_HOST, H_UA, H_REFERER, H_AUTH, H_CTYPE, H_CLEN, H_TE = range(7)
N_HEADERS = 7
M_HEADERS = 10
N_COLUMNS = M_HEADERS + 2 * N_HEADERS
# per-flow result columns
F_REQ_FIRST, F_REQ_COUNT, F_RESP_FIRST, F_RESP_COUNT, F_BAD_REQ, F_BAD_RESP, F_FALLBACK = \
    range(7)

_NAMES = (b"host", b"user-agent", b"referer", b"authorization", b"content-type",
          b"content-length", b"transfer-encoding")
# header names as one padded table for the kernel (lower case ASCII)
_NAME_LEN = np.array([len(n) for n in _NAMES], dtype=np.int64)
_NAME_TABLE = np.zeros((N_HEADERS, max(len(n) for n in _NAMES)), dtype=np.uint8)
for _i, _n in enumerate(_NAMES):
    _NAME_TABLE[_i, : len(_n)] = np.frombuffer(_n, dtype=np.uint8)
# the wanted name of each length (the seven lengths differ): a header line's name is
# compared with one wanted name at most, not seven
_SLOT_OF_LEN = np.full(int(_NAME_LEN.max()) + 1, -1, dtype=np.int64)
_SLOT_OF_LEN[_NAME_LEN] = np.arange(N_HEADERS)
assert len(set(_NAME_LEN.tolist())) == N_HEADERS

_FAIL, _OK, _FALLBACK = 0, 1, 2

# byte patterns of _walk: module arrays are compile-time constants for numba (made in the
# kernel, they were four allocations per flow direction)
_CRLF = np.array([13, 10], dtype=np.uint8)
_LFLF = np.array([10, 10], dtype=np.uint8)
_CHUNKED = np.frombuffer(b"chunked", dtype=np.uint8).copy()
# _byte_mask's bit j is the vector's element j: the first byte in the low bit on a
# little-endian machine (else _find_byte walks bytes)
_LITTLE_ENDIAN = sys.byteorder == "little"
_LF, _COLON = np.uint8(10), np.uint8(58)
_MASK_BYTES = 64  # bytes compared at once by _byte_mask (one AVX-512 compare; two AVX2)


@njit
def _is_space(c: int) -> bool:
    """bytes.strip() whitespace: space, \\t, \\n, \\r, \\v, \\f."""
    return c == 32 or 9 <= c <= 13


@njit
def _find(buf, lo, hi, pattern):
    """bytes.find(pattern, lo, hi) over buf (absolute offsets, hi clamped by the caller)."""
    m = pattern.shape[0]
    last = hi - m
    i = lo
    while i <= last:
        if buf[i] == pattern[0]:
            j = 1
            while j < m and buf[i + j] == pattern[j]:
                j += 1
            if j == m:
                return i
        i += 1
    return -1


@njit
def _find_crlf2(buf, lo, hi):
    """bytes.find(b"\\r\\n\\r\\n", lo, hi) over buf: Horspool's skip on the byte under the
    pattern's last position (most header bytes are neither CR nor LF: 4 bytes a step rather
    than one; the header block is the kernel's main scan)."""
    i = lo
    last = hi - 4
    while i <= last:
        c = buf[i + 3]
        if c == 10:
            if buf[i + 2] == 13 and buf[i + 1] == 10 and buf[i] == 13:
                return i
            i += 2  # LF's other place in the pattern is 1: align it
        elif c == 13:
            i += 1  # CR at 2
        else:
            i += 4
    return -1


@njit
def _strip(buf, lo, hi):
    while lo < hi and _is_space(buf[lo]):
        lo += 1
    while hi > lo and _is_space(buf[hi - 1]):
        hi -= 1
    return lo, hi


@njit
def _header_slot(buf, lo, hi):
    """Index of the wanted header whose name is buf[lo:hi] (ASCII case-insensitive), or -1.
    Module tables (globals are constants for numba; as arguments they cost per call)."""
    size = hi - lo
    if size >= _SLOT_OF_LEN.shape[0]:
        return -1
    k = _SLOT_OF_LEN[size]
    if k < 0:
        return -1
    for j in range(size):
        c = buf[lo + j]
        if 65 <= c <= 90:
            c += 32
        if c != _NAME_TABLE[k, j]:
            return -1
    return k


@njit
def _request_line(buf, lo, hi):
    """_REQUEST_LINE on buf[lo:hi] -> (match, method start, end, uri start, end, version
    digits start, end; -1 when absent). Values, not writes to a table row: a kernel that
    writes to an array argument pays a reference count increment and decrement per call."""
    i = lo
    if i >= hi or not 65 <= buf[i] <= 90:
        return False, 0, 0, 0, 0, 0, 0
    while i < hi and (65 <= buf[i] <= 90 or buf[i] == 95 or buf[i] == 45):
        i += 1
    if i - lo > 20 or i >= hi or buf[i] != 32:
        return False, 0, 0, 0, 0, 0, 0
    a1 = i
    while i < hi and buf[i] == 32:
        i += 1
    u = i
    while i < hi and not _is_space(buf[i]):
        i += 1
    if i == u:
        return False, 0, 0, 0, 0, 0, 0
    b1 = i
    if i == hi:
        return True, lo, a1, u, b1, -1, -1
    if buf[i] != 32:
        return False, 0, 0, 0, 0, 0, 0
    while i < hi and buf[i] == 32:
        i += 1
    if i == hi:
        return True, lo, a1, u, b1, -1, -1
    if (hi - i >= 8 and buf[i] == 72 and buf[i + 1] == 84 and buf[i + 2] == 84
            and buf[i + 3] == 80 and buf[i + 4] == 47 and 48 <= buf[i + 5] <= 57
            and buf[i + 6] == 46 and 48 <= buf[i + 7] <= 57):
        c0 = i + 5
        i += 8
        while i < hi and buf[i] == 32:
            i += 1
        return i == hi, lo, a1, u, b1, c0, c0 + 3
    return False, 0, 0, 0, 0, 0, 0


@njit
def _status_line(buf, lo, hi):
    """_STATUS_LINE on buf[lo:hi] -> (match, status); the version is buf[lo + 5 : lo + 8]."""
    if not (hi - lo >= 9 and buf[lo] == 72 and buf[lo + 1] == 84 and buf[lo + 2] == 84
            and buf[lo + 3] == 80 and buf[lo + 4] == 47 and 48 <= buf[lo + 5] <= 57
            and buf[lo + 6] == 46 and 48 <= buf[lo + 7] <= 57 and buf[lo + 8] == 32):
        return False, 0
    i = lo + 8
    while i < hi and buf[i] == 32:
        i += 1
    if hi - i < 3:
        return False, 0
    status = 0
    for j in range(3):
        c = buf[i + j]
        if not 48 <= c <= 57:
            return False, 0
        status = status * 10 + (c - 48)
    i += 3
    if i < hi and buf[i] != 32 and buf[i] != 9:
        return False, 0
    return True, status


@njit
def _line_may_match(buf, lo, hi, requests):
    """False when the first bytes at `lo` already rule out a request (status) line,
    wherever the line ends: a method of 1-20 [A-Z_-] then a space ("HTTP/d.d ")."""
    if requests:
        i = lo
        if i >= hi or not 65 <= buf[i] <= 90:
            return False
        while i < hi and i - lo <= 20 and (65 <= buf[i] <= 90 or buf[i] == 95 or buf[i] == 45):
            i += 1
        return i < hi and i - lo <= 20 and buf[i] == 32
    if hi - lo < 9:
        return False
    return (buf[lo] == 72 and buf[lo + 1] == 84 and buf[lo + 2] == 84 and buf[lo + 3] == 80
            and buf[lo + 4] == 47 and 48 <= buf[lo + 5] <= 57 and buf[lo + 6] == 46
            and 48 <= buf[lo + 7] <= 57 and buf[lo + 8] == 32)


@njit
def _headers(buf, lo, hi, table, at):
    """First occurrence of each wanted header in the lines of buf[lo:hi] -> table[at]
    (_walk's LFLF header blocks; CRLF ones are read in _walk's own line walk)."""
    for k in range(N_HEADERS):
        table[at, M_HEADERS + 2 * k] = -1
        table[at, M_HEADERS + 2 * k + 1] = -1
    i = lo
    while i <= hi:
        # one pass for the first ':' and the line's end (two scans of every line before)
        colon = -1
        eol = i
        while eol < hi:
            c = buf[eol]
            if c == 10:
                break
            if c == 58 and colon < 0:
                colon = eol
            eol += 1
        if colon >= 0:
            n0, n1 = _strip(buf, i, colon)
            k = _header_slot(buf, n0, n1)
            if k >= 0 and table[at, M_HEADERS + 2 * k] < 0:
                v0, v1 = _strip(buf, colon + 1, eol)
                table[at, M_HEADERS + 2 * k] = v0
                table[at, M_HEADERS + 2 * k + 1] = v1
        i = eol + 1


@njit(inline="always")
def _lf_bits(buf, at, hi):
    """Bit j set where buf[at + j] is LF, at + j < hi, j < 64 (at < hi)."""
    if at + _MASK_BYTES <= buf.shape[0] and _LITTLE_ENDIAN:
        bits = _byte_mask(buf, at, _LF)
    else:  # the buffer's last bytes
        bits = _U0
        for j in range(min(_MASK_BYTES, buf.shape[0] - at)):
            if buf[at + j] == 10:
                bits |= _U1 << np.uint64(j)
    if hi - at < _MASK_BYTES:
        bits &= (_U1 << np.uint64(hi - at)) - _U1
    return bits


@njit
def _find_byte(buf, i, hi, byte):
    """bytes.find(bytes([byte]), i, hi) over buf (-1: none): 64 bytes a step (one vector
    compare, _byte_mask), the buffer's last bytes one by one; header lines average ~31
    bytes, so most searches are one step. Reads up to 63 bytes past hi (inside buf): the
    mask of those is dropped by the bound test."""
    last = buf.shape[0] - _MASK_BYTES if _LITTLE_ENDIAN else -1
    while i < hi and i <= last:
        m = _byte_mask(buf, i, byte)
        if m != _U0:
            p = i + np.int64(trailing_zeros(m))
            return p if p < hi else -1
        i += _MASK_BYTES
    while i < hi:
        if buf[i] == byte:
            return i
        i += 1
    return -1


@njit
def _content_length(buf, lo, hi):
    """(code, value) of the Content-Length value buf[lo:hi] (lo -1: absent): code _OK with the
    value, _FAIL when not decimal, _FALLBACK if unsure."""
    if lo < 0 or lo == hi:
        return _FAIL, 0
    value = 0
    decimal = True
    for i in range(lo, hi):
        c = buf[i]
        if c >= 128:
            return _FALLBACK, 0  # other scripts' digits are decimal for Python
        if not 48 <= c <= 57:
            decimal = False
        else:
            value = value * 10 + (c - 48)
    if not decimal:
        return _FAIL, 0
    if hi - lo > 18:
        return _FALLBACK, 0  # would overflow int64: leave it to Python's int
    return _OK, value


@njit
def _chunked(buf, lo, hi, te):
    """Is 'chunked' in the Transfer-Encoding value (lower case)? -1 when unsure (non-ASCII)."""
    if lo < 0:
        return 0
    for i in range(lo, hi):
        if buf[i] >= 128:
            return -1
    for i in range(lo, hi - 6):
        j = 0
        while j < 7:
            c = buf[i + j]
            if 65 <= c <= 90:
                c += 32
            if c != te[j]:
                break
            j += 1
        if j == 7:
            return 1
    return 0


@njit
def _chunked_length(buf, pos, hi):
    """_chunked_length: (code, body bytes, end offset); code _FAIL = malformed chunk size,
    _FALLBACK = a size Python's int() might read differently; (-1, -1) if not all visible."""
    total = 0
    for _ in range(MAX_CHUNKS):
        eol = _find(buf, pos, min(pos + 1024, hi), _CRLF)
        if eol < 0:
            return _OK, -1, -1
        stop = pos
        while stop < eol and buf[stop] != 59:  # ';' starts chunk extensions
            stop += 1
        a, b = _strip(buf, pos, stop)
        if a == b:
            return _FAIL, 0, 0
        if b - a > 15:
            return _FALLBACK, 0, 0
        size = 0
        for i in range(a, b):
            c = buf[i]
            if 48 <= c <= 57:
                size = size * 16 + (c - 48)
            elif 97 <= c <= 102:
                size = size * 16 + (c - 87)
            elif 65 <= c <= 70:
                size = size * 16 + (c - 55)
            else:
                return _FALLBACK, 0, 0
        pos = eol + 2
        if size == 0:
            end = _find_crlf2(buf, pos - 2, hi)
            return (_OK, total, end + 4) if end >= 0 else (_OK, total, -1)
        total += size
        pos += size + 2
        if pos > hi:
            return _OK, -1, -1
    return _OK, -1, -1


@njit(inline="always")  # a call per direction cost ~10% of the walk (reference counts)
def _walk(buf, lo, hi, whole, requests, ended, flow, heads, n_heads, table, count):
    """parse_messages over buf[lo:hi] -> (count, malformed, fallback, n_heads): the messages
    are table[count_in:count]; `table` has room for MAX_MESSAGES more rows (the caller
    grows it: a table reassigned in the walk cost reference counts per message).
    `whole`: the direction's length before the collector's trim (parse_messages' `whole`).

    Requests fill `heads` (is the i-th request a HEAD); responses read it. 1xx responses
    are not stored (the analyzer drops them). The message's fields are written as
    table[count, column], never through a row view or by a helper given the table: either
    costs reference counting (two atomic operations) per message, a third of the walk."""
    lflf, te = _LFLF, _CHUNKED  # constants: no allocation per call
    pos = lo
    parsed = 0
    answered = 0
    while pos < hi and parsed < MAX_MESSAGES:
        while pos + 1 < hi and buf[pos] == 13 and buf[pos + 1] == 10:
            pos += 2
        if pos >= hi:
            break
        if lo + whole - pos >= MAX_HEADER_BYTES and not _line_may_match(buf, pos, hi,
                                                                         requests):
            # parse_messages would call this malformed whether or not the headers end in
            # the window: skip the window scan (bulk data on an HTTP port)
            return count, True, False, n_heads
        window = min(pos + MAX_HEADER_BYTES, hi)
        for k in range(N_HEADERS):
            table[count, M_HEADERS + 2 * k] = -1
            table[count, M_HEADERS + 2 * k + 1] = -1
        # The header block in one walk from LF to LF: its end (the first CRLFCRLF before
        # the window, as bytes.find: that holds the first LF whose neighbours make one),
        # the first line's LF (nl) and each header line, so the lines walked are exactly
        # the block's (before: a search for the end, then a second scan of the lines).
        end = -1
        nl = -1
        i = pos
        # the LFs of 64 bytes at a time as bits, taken lowest first (one vector compare
        # per block, not one search per line)
        block = pos
        bits = _lf_bits(buf, block, window)
        while True:
            while bits == _U0 and block + _MASK_BYTES < window:
                block += _MASK_BYTES
                bits = _lf_bits(buf, block, window)
            if bits == _U0:
                break
            p = block + np.int64(trailing_zeros(bits))
            bits &= bits - _U1
            last = (p > pos and p + 3 <= window and buf[p - 1] == 13 and buf[p + 1] == 13
                    and buf[p + 2] == 10)
            if nl < 0:
                nl = p - 1 if last else p  # no LF before the end: the line ends there
            else:  # header line buf[i:stop] (_headers' body)
                stop = p - 1 if last else p
                colon = _find_byte(buf, i, stop, _COLON)
                if colon >= 0:
                    n0, n1 = _strip(buf, i, colon)
                    k = _header_slot(buf, n0, n1)
                    if k >= 0 and table[count, M_HEADERS + 2 * k] < 0:
                        v0, v1 = _strip(buf, colon + 1, stop)
                        table[count, M_HEADERS + 2 * k] = v0
                        table[count, M_HEADERS + 2 * k + 1] = v1
            if last:
                end = p - 1
                break
            i = p + 1
        sep = 4
        if end < 0:  # no CRLFCRLF in the window: an LFLF end, its headers read apart (rare)
            end = _find(buf, pos, window, lflf)
            sep = 2
            if end < 0:
                if lo + whole - pos >= MAX_HEADER_BYTES:
                    return count, True, False, n_heads
                break
            nl = pos
            while nl < end and buf[nl] != 10:
                nl += 1
            _headers(buf, nl + 1, end, table, count)
        table[count, M_FLOW] = flow
        table[count, M_START] = pos - lo
        line_end = nl
        while line_end > pos and buf[line_end - 1] == 13:
            line_end -= 1
        if requests:
            ok, a0, a1, b0, b1, c0, c1 = _request_line(buf, pos, line_end)
            if not ok:
                return count, True, False, n_heads
            table[count, M_A0] = a0
            table[count, M_A1] = a1
            table[count, M_B0] = b0
            table[count, M_B1] = b1
            table[count, M_C0] = c0
            table[count, M_C1] = c1
            table[count, M_STATUS] = 0
        else:
            ok, status = _status_line(buf, pos, line_end)
            if not ok:
                return count, True, False, n_heads
            table[count, M_A0] = pos + 5
            table[count, M_A1] = pos + 8
            table[count, M_B0] = -1  # a status line has no uri or request version: the
            table[count, M_B1] = -1  # table's rows are then the same from run to run
            table[count, M_C0] = -1
            table[count, M_C1] = -1
            table[count, M_STATUS] = status
        body_start = end + sep
        chunked = _chunked(buf, table[count, M_HEADERS + 2 * H_TE],
                           table[count, M_HEADERS + 2 * H_TE + 1], te)
        if chunked < 0:
            return count, False, True, n_heads
        interim = False
        no_body = False
        if requests:
            a0 = table[count, M_A0]
            is_head = (table[count, M_A1] - a0 == 4 and buf[a0] == 72 and buf[a0 + 1] == 69
                       and buf[a0 + 2] == 65 and buf[a0 + 3] == 68)
            heads[n_heads] = is_head
            n_heads += 1
        else:
            status = table[count, M_STATUS]
            interim = 100 <= status < 200
            is_head = answered < n_heads and heads[answered]
            no_body = interim or status == 204 or status == 304 or is_head
        if no_body:
            body = 0
            next_pos = body_start
        elif chunked == 1:
            code, body, next_pos = _chunked_length(buf, body_start, hi)
            if code == _FALLBACK:
                return count, False, True, n_heads
            if code == _FAIL:
                table[count, M_BODY] = -1
                if not interim:
                    count += 1
                return count, True, False, n_heads
        else:
            code, length = _content_length(buf, table[count, M_HEADERS + 2 * H_CLEN],
                                           table[count, M_HEADERS + 2 * H_CLEN + 1])
            if code == _FALLBACK:
                return count, False, True, n_heads
            if code == _OK:
                body = length
                next_pos = body_start + length
            elif requests:
                body = 0
                next_pos = body_start
            else:
                body = hi - body_start if ended else -1
                next_pos = -1
        table[count, M_BODY] = body
        parsed += 1
        if not interim:
            count += 1
            if not requests:
                answered += 1
        if next_pos < 0 or next_pos > hi:
            break
        pos = next_pos
    return count, False, False, n_heads


@njit
def _grown(table, count):
    """table with twice the rows, its first `count` rows copied."""
    grown = np.empty((2 * table.shape[0], table.shape[1]), dtype=np.int64)
    grown[:count] = table[:count]
    return grown


@njit
def _parse_flows(buf, starts, lengths, wholes, complete):
    n = starts.shape[0] // 2
    flows = np.zeros((n, 7), dtype=np.int64)
    table = np.empty((2 * n + MAX_MESSAGES, N_COLUMNS), dtype=np.int64)
    heads = np.zeros(MAX_MESSAGES, dtype=np.bool_)
    count = 0
    size = buf.shape[0]
    # the walk's arrays without reference counts (see tcp_stream.borrowed); owners kept here
    view = borrowed(buf)
    rows = borrowed(table)
    answers = borrowed(heads)
    for f in range(n):
        if f + PREFETCH_FLOWS < n and size > 0:
            # both directions' header lines of a later flow: each walk starts with a wait for
            # its headers otherwise (the flows lie apart in a buffer past the L2 cache); three
            # lines, not one: a header block spans ~3 (parse_flows 2.5 -> 2.1 ms per 300k)
            for d in range(2):
                at = starts[2 * (f + PREFETCH_FLOWS) + d]
                for line in range(PREFETCH_LINES):
                    prefetch(buf, min(max(at + 64 * line, 0), size - 1))
        lo, hi = starts[2 * f], starts[2 * f] + lengths[2 * f]
        if lo < 0 or hi > buf.shape[0] or lo > hi:
            flows[f, F_FALLBACK] = 1  # not a valid slice of buf: let Python decide
            continue
        if count + 2 * MAX_MESSAGES > table.shape[0]:
            table = _grown(table, count)
            rows = borrowed(table)
        first = count
        count, bad, fallback, n_heads = _walk(
            view, lo, hi, max(wholes[2 * f], hi - lo), True, complete[2 * f], f, answers, 0,
            rows, count)
        flows[f, F_REQ_FIRST] = first
        flows[f, F_REQ_COUNT] = count - first
        flows[f, F_BAD_REQ] = bad
        if fallback:
            flows[f, F_FALLBACK] = 1
            count = first
            continue
        lo, hi = starts[2 * f + 1], starts[2 * f + 1] + lengths[2 * f + 1]
        if lo < 0 or hi > buf.shape[0] or lo > hi:
            flows[f, F_FALLBACK] = 1
            count = first
            continue
        second = count
        count, bad, fallback, n_heads = _walk(
            view, lo, hi, max(wholes[2 * f + 1], hi - lo), False, complete[2 * f + 1], f,
            answers, n_heads, rows, count)
        flows[f, F_RESP_FIRST] = second
        flows[f, F_RESP_COUNT] = count - second
        flows[f, F_BAD_RESP] = bad
        if fallback:
            flows[f, F_FALLBACK] = 1
            count = first
    return flows, table[:count]


def parse_flows(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                complete: np.ndarray, wholes: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Parse flows whose direction d bytes are buf[starts[2f+d] : starts[2f+d]+lengths[2f+d]]
    (d 0 = client requests, 1 = server responses; `complete[2f+d]`: the direction ended with
    all its bytes, as parse_messages' `ended`; `wholes[2f+d]`: its length before the
    collector's trim cut it, as parse_messages' `whole`; None: not cut).

    Returns (flows, messages): flows (n, 7) int64 with columns F_* (first row and count of
    its requests / final responses in `messages`, malformed flags, fallback), messages
    (m, N_COLUMNS) int64 with columns M_* and the header (start, end) pairs at
    M_HEADERS + 2 * H_* (absolute offsets into buf; -1 absent). Offsets of the request
    line: M_A* method, M_B* uri, M_C* version digits; of a status line: M_A* version.
    """
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    return _parse_flows(np.ascontiguousarray(buf, dtype=np.uint8),
                        np.ascontiguousarray(starts, dtype=np.int64), lengths,
                        lengths if wholes is None else np.ascontiguousarray(wholes,
                                                                            dtype=np.int64),
                        np.ascontiguousarray(complete, dtype=np.bool_))


@njit
def _ready_events(flows, messages, done, tracked, final, server_stuck):
    """ready_events' pass: the events counted, then written (one pass each)."""
    n = done.shape[0]
    total = 0
    for f in range(n):
        if done[f] >= 0:
            total += max(flows[f, F_REQ_COUNT] - done[f], 0)
    flow = np.empty(total, np.int64)
    requests = np.empty(total, np.int64)
    responses = np.empty(total, np.int64)
    offsets = np.empty(total, np.int64)
    upto_of = np.empty(n, np.int64)
    e = 0
    malformed = 0
    for f in range(n):
        d = done[f]
        if d < 0:  # the caller's: parse_messages' flows, repeated keys
            upto_of[f] = d
            continue
        first, n_req = flows[f, F_REQ_FIRST], flows[f, F_REQ_COUNT]
        resp_first, n_resp = flows[f, F_RESP_FIRST], flows[f, F_RESP_COUNT]
        if final[f]:
            upto = n_req
            if not tracked[f] and (flows[f, F_BAD_REQ] != 0 or flows[f, F_BAD_RESP] != 0):
                malformed += 1
        else:  # http._ready: a request waits for its response and a known body size
            upto = min(n_req, n_resp)
            if not server_stuck[f]:
                for i in range(d, upto):
                    if messages[resp_first + i, M_BODY] < 0:
                        upto = i
                        break
        for i in range(d, upto):
            flow[e] = f
            requests[e] = first + i
            responses[e] = resp_first + i if i < n_resp else -1
            offsets[e] = messages[first + i, M_START]
            e += 1
        upto_of[f] = max(upto, d)
    return malformed, flow[:e], requests[:e], responses[:e], offsets[:e], upto_of


def ready_events(flows: np.ndarray, messages: np.ndarray, done: np.ndarray,
                 tracked: np.ndarray, final: np.ndarray, server_stuck: np.ndarray
                 ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The requests each flow of parse_flows' (flows, messages) emits now, column-wise, in
    flow order (each flow's in request order): requests done[f].. of flow f, up to every
    request when final[f], else up to the first whose response is missing or has a body
    size still to come (unless server_stuck[f]: the server direction hit its cap or a gap),
    as http._ready; done[f] < 0: the flow is left to the caller (no event, upto -1).
    One pass for every flow of a batch, whatever was emitted of it before: the analyzer
    visits in Python only the few flows whose `emitted` state changes.

    Returns how many final flows not `tracked` (no request emitted before) stopped at a
    malformed request or response, then per event (flow, request row, response row or -1,
    request start offset), and per flow the requests emitted so far (max(upto, done))."""
    n = done.shape[0]
    if not (flows.shape[0] == tracked.shape[0] == final.shape[0] == server_stuck.shape[0]
            == n):
        raise ValueError("ready_events: per-flow columns differ in length")
    return _ready_events(np.ascontiguousarray(flows, dtype=np.int64),
                         np.ascontiguousarray(messages, dtype=np.int64),
                         np.ascontiguousarray(done, dtype=np.int64),
                         np.ascontiguousarray(tracked, dtype=np.bool_),
                         np.ascontiguousarray(final, dtype=np.bool_),
                         np.ascontiguousarray(server_stuck, dtype=np.bool_))


@njit
def _rows_with_ports(column, rows, ports):
    out = np.empty(column.shape[0], np.int64)
    m = 0
    for i in range(column.shape[0]):
        if rows[i]:
            j = np.searchsorted(ports, column[i])  # ports sorted: few or many, log time
            if j < ports.shape[0] and ports[j] == column[i]:
                out[m] = i
                m += 1
    return out[:m]


def rows_with_ports(column: np.ndarray, rows: np.ndarray, ports: np.ndarray) -> np.ndarray:
    """Positions i where rows[i] (bool) and column[i] is one of the few `ports`, ascending:
    np.flatnonzero(rows & np.isin(column, ports)) in one pass (np.isin cost ~28 us a call
    on a batch's ~1.3k flows and a few ports, most of it set-up)."""
    if column.shape != rows.shape:
        raise ValueError("rows_with_ports: column and rows differ in shape")
    return _rows_with_ports(np.ascontiguousarray(column, dtype=np.int64),
                            np.ascontiguousarray(rows, dtype=np.bool_),
                            np.sort(np.asarray(ports, dtype=np.int64)))


# the text fields of an HTTP event, in event_fields' column order (sensors.http reads them)
T_METHOD, T_HOST, T_URI, T_VERSION, T_UA, T_REFERER, T_MIME, T_AUTH = range(8)
N_TEXTS = 8


@njit
def _event_fields(messages, requests, responses):
    n = requests.shape[0]
    starts = np.zeros((n, N_TEXTS), np.int64)
    stops = np.zeros((n, N_TEXTS), np.int64)
    status = np.zeros(n, np.int64)
    request_body = np.empty(n, np.int64)
    response_body = np.full(n, -1, np.int64)
    for e in range(n):
        q = requests[e]
        for t, lo, hi in ((T_METHOD, M_A0, M_A1), (T_HOST, M_HEADERS + 2 * H_HOST, -1),
                          (T_URI, M_B0, M_B1), (T_VERSION, M_C0, M_C1),
                          (T_UA, M_HEADERS + 2 * H_UA, -1),
                          (T_REFERER, M_HEADERS + 2 * H_REFERER, -1),
                          (T_AUTH, M_HEADERS + 2 * H_AUTH, -1)):
            a = messages[q, lo]
            if a >= 0:  # absent (-1): an empty slice
                starts[e, t] = a
                stops[e, t] = messages[q, lo + 1 if hi < 0 else hi]
        request_body[e] = messages[q, M_BODY]
        r = responses[e]
        if r >= 0:
            a = messages[r, M_HEADERS + 2 * H_CTYPE]
            if a >= 0:
                starts[e, T_MIME] = a
                stops[e, T_MIME] = messages[r, M_HEADERS + 2 * H_CTYPE + 1]
            status[e] = messages[r, M_STATUS]
            response_body[e] = messages[r, M_BODY]
    return starts, stops, status, request_body, response_body


def event_fields(messages: np.ndarray, requests: np.ndarray, responses: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The event fields of request rows `requests` of parse_flows' `messages` with their
    response rows `responses` (-1: none): (starts, stops) (n, N_TEXTS) of the text fields in
    T_* order (absent: the empty slice 0:0; MIME type absent without a response), status
    (0 without a response), request and response body sizes (-1 without a response)."""
    requests = np.ascontiguousarray(requests, dtype=np.int64)
    responses = np.ascontiguousarray(responses, dtype=np.int64)
    m = messages.shape[0]
    if requests.size and (requests.min() < 0 or requests.max() >= m
                          or responses.max() >= m or responses.size != requests.size):
        raise IndexError("event_fields: a row outside the message table")
    return _event_fields(np.ascontiguousarray(messages, dtype=np.int64), requests, responses)


@njit
def copy_bytes(dst, at, src, lo, hi):
    """dst[at : at + hi - lo] = src[lo:hi] (the caller checked both ranges); returns the end
    in dst. Unsigned indexes: numba then drops its negative-index wraparound and LLVM turns
    the loop into a memcpy (numba's own slice assignment, and a loop over signed absolute
    indexes, copy a byte at a time). No array views either: a view of an argument costs an
    atomic reference count increment and decrement, ~25 ns a call, most of a ClientHello's
    parse when called per key section."""
    if hi <= lo:
        return at
    to = np.uint64(at)
    from_ = np.uint64(lo)
    for j in range(np.uint64(hi - lo)):
        dst[to + j] = src[from_ + j]
    return at + (hi - lo)


@njit
def _join_slices(src, starts, stops, sep):
    total = 0
    for i in range(starts.shape[0]):
        lo, hi = max(starts[i], 0), min(stops[i], src.shape[0])
        total += max(hi - lo, 0) + 1
    out = np.empty(total, dtype=np.uint8)
    at = 0
    for i in range(starts.shape[0]):
        lo, hi = max(starts[i], 0), min(stops[i], src.shape[0])
        at = copy_bytes(out, at, src, lo, hi)
        out[at] = sep
        at += 1
    return out


def join_slices(src: np.ndarray, starts: np.ndarray, stops: np.ndarray, sep: int) -> np.ndarray:
    """src[starts[i]:stops[i]] + bytes([sep]) for every i, concatenated (uint8). Slices are
    clipped to src (empty when start < 0 or stop <= start): one buffer to decode at once."""
    return _join_slices(src, np.ascontiguousarray(starts, dtype=np.int64),
                        np.ascontiguousarray(stops, dtype=np.int64), np.uint8(sep))


PREFETCH_SLICE_BYTES = 4096  # of a slice, how many first bytes _distinct_table asks for
MEMO_SLOTS = 256  # _distinct_table's last numbers per column (a power of 2 up to 256)
_FNV_PRIME = np.uint64(1099511628211)  # column salt of _distinct_table's hashes
# XXH64's primes: _slice_hash is XXH64's structure (seed 0) over unaligned word loads
_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)
_U0, _U1, _U29 = np.uint64(0), np.uint64(1), np.uint64(29)
_U32, _U33, _U64 = np.uint64(32), np.uint64(33), np.uint64(64)
_R1, _R7, _R11, _R12 = np.uint64(1), np.uint64(7), np.uint64(11), np.uint64(12)
_R18, _R23, _R27, _R31 = np.uint64(18), np.uint64(23), np.uint64(27), np.uint64(31)


@intrinsic
def _load_u64(typingctx, array, at):  # noqa: ARG001 (numba's intrinsic signature)
    """The 8 bytes array[at : at + 8] as one uint64 (native byte order, one unaligned load;
    1-D C-contiguous uint8 arrays only; the caller keeps at + 8 <= size). Why: a word built
    from 8 byte loads and shifts made _slice_hash run at ~0.9 GB/s on certificates."""
    if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and array.dtype.bitwidth == 8):
        return None  # not typed: the call does not compile
    sig = types.uint64(array, types.int64)

    def codegen(context, builder, signature, args):
        check_span(context, builder, signature.args[0], args[0], args[1], ir.IntType(64)(8))
        data = context.make_array(signature.args[0])(context, builder, args[0])
        word = builder.bitcast(builder.gep(data.data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(word, align=1)

    return sig, codegen


@njit
def _rotl(x: np.uint64, r: np.uint64) -> np.uint64:
    return (x << r) | (x >> (_U64 - r))


@njit
def _round(acc: np.uint64, word: np.uint64) -> np.uint64:
    return _rotl(acc + word * _P2, _R31) * _P1


@njit
def _slice_hash(src: np.ndarray, lo: int, hi: int) -> np.uint64:
    """A 64-bit hash of src[lo:hi] (lo <= hi inside src) for distinct_slice_ids' table:
    XXH64's rounds, four independent lanes over 32-byte stripes, so the multiplications of
    the lanes overlap (FNV over words is one chain of multiplies: ~0.9 GB/s on the leaf
    certificates that dominate TLS's distinct bytes), then its avalanche, which mixes every
    byte into the low bits the slot is taken from. Every byte is hashed (no sampling: slices
    that differ only in unhashed bytes would chain)."""
    n = hi - lo
    j = lo
    if n >= 32:
        v1 = _P1 + _P2
        v2 = _P2
        v3 = _U0
        v4 = _U0 - _P1
        while j + 32 <= hi:
            v1 = _round(v1, _load_u64(src, j))
            v2 = _round(v2, _load_u64(src, j + 8))
            v3 = _round(v3, _load_u64(src, j + 16))
            v4 = _round(v4, _load_u64(src, j + 24))
            j += 32
        h = _rotl(v1, _R1) + _rotl(v2, _R7) + _rotl(v3, _R12) + _rotl(v4, _R18)
        h = (h ^ _round(_U0, v1)) * _P1 + _P4
        h = (h ^ _round(_U0, v2)) * _P1 + _P4
        h = (h ^ _round(_U0, v3)) * _P1 + _P4
        h = (h ^ _round(_U0, v4)) * _P1 + _P4
    else:
        h = _P5
    h += np.uint64(n)
    while j + 8 <= hi:
        h = _rotl(h ^ _round(_U0, _load_u64(src, j)), _R27) * _P1 + _P4
        j += 8
    while j < hi:
        h = _rotl(h ^ (np.uint64(src[j]) * _P5), _R11) * _P1
        j += 1
    h ^= h >> _U33
    h *= _P2
    h ^= h >> _U29
    h *= _P3
    h ^= h >> _U32
    return h


@njit
def equal_bytes(a: np.ndarray, i: int, b: np.ndarray, j: int, n: int) -> bool:
    """a[i : i + n] == b[j : j + n] (both inside their arrays; a and b may be the same array):
    32 bytes a step as four word compares with one branch (a byte loop took as long as
    hashing the bytes). Shared by the distinct-slice tables here and TLS's kept values."""
    k = 0
    while k + 32 <= n:
        diff = ((_load_u64(a, i + k) ^ _load_u64(b, j + k))
                | (_load_u64(a, i + k + 8) ^ _load_u64(b, j + k + 8))
                | (_load_u64(a, i + k + 16) ^ _load_u64(b, j + k + 16))
                | (_load_u64(a, i + k + 24) ^ _load_u64(b, j + k + 24)))
        if diff != _U0:
            return False
        k += 32
    while k + 8 <= n:
        if _load_u64(a, i + k) != _load_u64(b, j + k):
            return False
        k += 8
    if k < n and n >= 8:  # the tail as the last 8 bytes (overlapping): no byte loop
        return _load_u64(a, i + n - 8) == _load_u64(b, j + n - 8)
    while k < n:
        if a[i + k] != b[j + k]:
            return False
        k += 1
    return True


@njit
def clip_slice(size: int, start: int, stop: int) -> tuple[int, int]:
    """[start, stop) clipped to [0, size), empty (lo == hi) when stop <= start."""
    lo = min(max(start, 0), size)
    return lo, max(min(stop, size), lo)


@njit
def _distinct_table(src, starts, stops, hints):
    """distinct_slice_table's kernel (starts, stops: (n, k) int64, C order)."""
    n, k = starts.shape
    size = 64
    while size < 2 * n * k:
        size *= 2
    mask = size - 1
    slots = np.full(size, -1, np.int64)
    slot_hash = np.zeros(size, np.uint64)
    ids = np.empty((n, k), np.int64)
    first = np.empty(n * k, np.int64)
    # each number's column and clipped bytes, so a probe needs no division and no re-clip
    first_col = np.empty(n * k, np.int64)
    first_lo = np.empty(n * k, np.int64)
    first_hi = np.empty(n * k, np.int64)
    # per column, the number last given to a slice of each memo slot (by the slice's
    # length): a slice equal to it is numbered by one compare, without hashing (a request's
    # host or user agent repeats flow after flow). A wrong guess costs at most one compare
    # of the slice.
    memo = np.full((k, MEMO_SLOTS), -1, np.int64)
    count = 0
    for i in range(n):
        if hints and i + PREFETCH_FLOWS < n and src.size > 0:
            # a later row's slices, every line of them: HTTP's rows lie apart in a large
            # buffer, and so do TLS's slices of `hs` (a flow's flight apart); the hardware
            # prefetcher did not follow from one leaf certificate to the next (hashing them
            # ran at ~3 GB/s, 8.5 GB/s with these hints)
            for c in range(k):
                a, b = clip_slice(src.size, starts[i + PREFETCH_FLOWS, c],
                                  stops[i + PREFETCH_FLOWS, c])
                for at in range(a, min(b, a + PREFETCH_SLICE_BYTES), 64):
                    prefetch(src, at)
        for c in range(k):  # a row's slices one after the other: their bytes are close
            lo, hi = clip_slice(src.size, starts[i, c], stops[i, c])
            memo_at = (hi - lo) & (MEMO_SLOTS - 1)
            guess = memo[c, memo_at]
            if (guess >= 0 and first_hi[guess] - first_lo[guess] == hi - lo
                    and equal_bytes(src, lo, src, first_lo[guess], hi - lo)):
                ids[i, c] = guess
                continue
            h = _slice_hash(src, lo, hi) ^ (np.uint64(c) * _FNV_PRIME)
            slot = np.int64(h & np.uint64(mask))
            while True:
                m = slots[slot]
                if m < 0:
                    slots[slot] = count
                    slot_hash[slot] = h
                    first[count] = i * k + c
                    first_col[count] = c
                    first_lo[count] = lo
                    first_hi[count] = hi
                    ids[i, c] = count
                    count += 1
                    break
                if (slot_hash[slot] == h and first_col[m] == c
                        and first_hi[m] - first_lo[m] == hi - lo
                        and equal_bytes(src, lo, src, first_lo[m], hi - lo)):
                    ids[i, c] = m
                    break
                slot = (slot + 1) & mask
            memo[c, memo_at] = ids[i, c]
    return ids, first[:count]


def distinct_slice_table(src: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                         hints: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Equal byte slices src[starts[i, c]:stops[i, c]] (clipped to src) of each column c of
    (n, k) starts/stops, numbered in first-seen order (row by row): (ids, first) with
    ids[i, c] the number of slice (i, c) and first[m] the flat index i * k + c of the first
    slice numbered m (its column: first[m] % k). Slices of different columns are never the
    same number. An open-addressing table of hashes; equal hashes are confirmed by comparing
    the bytes, so the numbering is exact. A row's k slices are read one after the other:
    over a large buffer (HTTP's reassembled bytes), one pass per column would miss the
    cache on every row in every pass. `hints`: ask for a later row's bytes ahead (prefetch);
    False when they are in cache already (HTTP's, just walked by parse_flows: the hints
    then only cost, ~0.1 ms of ~0.4 per 300k v2). Before hashing, a slice is compared with
    the slice last numbered in its memo slot, which is chosen by its length (a key of length
    and last bytes measured ~12% slower on HTTP's short texts)."""
    return _distinct_table(np.ascontiguousarray(src, dtype=np.uint8),
                           np.ascontiguousarray(starts, dtype=np.int64),
                           np.ascontiguousarray(stops, dtype=np.int64), bool(hints))


def distinct_slice_ids(src: np.ndarray, starts: np.ndarray, stops: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Equal byte slices src[starts[i]:stops[i]] (clipped to src) numbered in first-seen
    order: (ids, first) with ids[i] the number of slice i and first[k] the first slice
    numbered k (distinct_slice_table of one column)."""
    ids, first = distinct_slice_table(src, np.reshape(starts, (-1, 1)),
                                      np.reshape(stops, (-1, 1)))
    return ids.reshape(-1), first



NOT_MESSAGE_BYTES = 32  # what needed_lengths keeps of a direction that opens with no message
# a direction shorter than this is kept whole without a look: the copy saved would not pay
# for _lone_cut's header walk (~160 ns a direction against ~0.037 ns a byte copied: even
# at ~4.3 KB per 300k v2, /tmp/y3)
CUT_MIN_BYTES = 4096
TRIM_BLOCK = 256  # flows whose lines _needed_lengths asks for at once, a block ahead


@njit(inline="always")  # its arrays borrowed by the caller: no reference counts
def _lone_cut(data, a, seg_end, total, requests, table, heads):
    """Where a direction whose first segment is data[a:seg_end] (`total` bytes in all) can be
    cut after its headers, or 0: when its first (final) message's header block ends
    (CRLFCRLF) in that segment and its Content-Length body reaches the direction's end, both
    parsers stop after that message without reading its body (next_pos >= the whole end),
    so the bytes kept need only run to the body's start (parsed with the whole lengths).

    The segment is parsed by _walk itself, so the decision is the parser's: a walk that
    stores other than one message, or whose message is chunked or has no positive
    Content-Length (a response without length, 204 / 304, malformed, fallback), cuts
    nothing. The body starts after the first CRLFCRLF from the Content-Length value: the
    header block's end when the walk found a CRLFCRLF (the parsers' header end); an
    LF-only block has none in the window and is not cut (the whole direction might hold a
    CRLFCRLF past this segment). HEAD answers: the caller does not cut a response when the
    request direction may open with HEAD. `table` (MAX_MESSAGES, N_COLUMNS) and `heads`
    (MAX_MESSAGES,): the walk's scratch, made once per call of the trim (a segment may hold
    up to MAX_MESSAGES messages: the walk stores each before this call can look at them)."""
    if data[a] == 13:
        return 0  # a stray CRLF first: the parsers skip it, keep the plain case only
    window = min(a + MAX_HEADER_BYTES, seg_end)
    count, bad, fallback, _ = _walk(data, a, window, total, requests, False, 0, heads, 0,
                                    table, 0)
    if count != 1 or bad or fallback:
        return 0
    body = table[0, M_BODY]
    if body <= 0 or _chunked(data, table[0, M_HEADERS + 2 * H_TE],
                             table[0, M_HEADERS + 2 * H_TE + 1], _CHUNKED) != 0:
        return 0
    end = _find_crlf2(data, table[0, M_HEADERS + 2 * H_CLEN + 1], window)
    if end < 0:
        return 0
    body_start = end + 4
    if body_start - a + body < total:
        return 0  # more bytes follow the body: a next message would be read
    return body_start - a


@njit(inline="always")
def _ask_trim_lines(data, seg_start, seg_size, seg_end, first_seg, end_seg, lo_f, hi_f):
    """Prefetch what _needed_lengths reads of flows lo_f..hi_f-1: the line of a request's
    first byte (the HEAD test reads it for every flow) and the header lines of each long
    direction (_lone_cut's walk). Segments lie apart in the capture: one wait per flow
    otherwise, where a few flows ahead (the old hint, long directions only) hid few."""
    m = seg_size.shape[0]
    size_all = data.shape[0]
    if size_all == 0:
        return
    for f in range(lo_f, hi_f):
        for d in range(2):
            lo = min(max(first_seg[f, d], 0), m)
            hi = min(max(end_seg[f, d], 0), m)
            if hi <= lo:
                continue
            at = min(max(seg_start[lo], 0), size_all - 1)
            if seg_end[hi - 1] - seg_end[lo] + seg_size[lo] >= CUT_MIN_BYTES:
                for line in range(PREFETCH_LINES):
                    prefetch(data, min(at + 64 * line, size_all - 1))
            elif d == 0:
                prefetch(data, at)


@njit
def _needed_lengths(data, seg_start, seg_size, first_seg, end_seg):
    n = first_seg.shape[0]
    m = seg_size.shape[0]
    seg_size = np.maximum(seg_size, 0)
    seg_end = np.cumsum(seg_size)
    out = np.zeros((n, 2), np.int64)
    table = np.empty((MAX_MESSAGES, N_COLUMNS), dtype=np.int64)
    heads = np.zeros(MAX_MESSAGES, dtype=np.bool_)
    # _lone_cut's arrays without reference counts (tcp_stream.borrowed); the owners live on here
    view, rows, answers = borrowed(data), borrowed(table), borrowed(heads)
    for f in range(n):
        if f % TRIM_BLOCK == 0:
            # the lines the flows of the next block read, asked for a block ahead (~40 KB:
            # they stay in cache); the first block's too at the start
            if f == 0:
                _ask_trim_lines(data, seg_start, seg_size, seg_end, first_seg, end_seg, 0,
                                min(TRIM_BLOCK, n))
            _ask_trim_lines(data, seg_start, seg_size, seg_end, first_seg, end_seg,
                            f + TRIM_BLOCK, min(f + 2 * TRIM_BLOCK, n))
        may_head = True  # the request direction may open with HEAD (or a stray CRLF)
        for d in range(2):
            lo = min(max(first_seg[f, d], 0), m)
            hi = min(max(end_seg[f, d], 0), m)
            if hi <= lo:
                if d == 0:
                    may_head = False  # no request: no response answers a HEAD
                continue
            total = seg_end[hi - 1] - (seg_end[lo] - seg_size[lo])
            out[f, d] = total
            a, size = seg_start[lo], seg_size[lo]
            inside = 0 <= a and a + size <= data.shape[0] and size > 0
            if d == 0:
                if total == 0:
                    may_head = False
                elif inside:
                    may_head = data[a] == 72 or data[a] == 13  # "H" or CR
            if total < CUT_MIN_BYTES or not inside:
                continue  # the usual case: whole, and its bytes are not read here
            # the first segment holds the bytes _line_may_match reads (at most 22) and no
            # stray CRLF comes first (the parsers would skip it)
            if (total >= MAX_HEADER_BYTES and size >= NOT_MESSAGE_BYTES and data[a] != 13
                    and not _line_may_match(data, a, a + size, d == 0)):
                out[f, d] = NOT_MESSAGE_BYTES
                continue
            if d == 1 and may_head:
                continue
            cut = _lone_cut(view, a, a + size, total, d == 0, rows, answers)
            if cut > 0:
                out[f, d] = cut
    return out


def needed_lengths(data: np.ndarray, seg_start: np.ndarray, seg_size: np.ndarray,
                   first_seg: np.ndarray, end_seg: np.ndarray) -> np.ndarray:
    """How many bytes of each flow's directions parse_flows needs: the HTTP analyzer's
    `trim` for its stream collector (tcp_stream.StreamTrim: direction d of flow f is
    data[seg_start[i] : seg_start[i] + seg_size[i]] for i in first_seg[f, d] ..
    end_seg[f, d] - 1, back to back).

    Two cuts; both parsers give the same answer on the cut bytes parsed with the whole
    lengths (StreamBatch.whole: parse_flows' `wholes`, parse_messages' `whole`) as on the
    whole bytes:
    - a direction at least MAX_HEADER_BYTES long whose first bytes rule out a request
      (status) line (bulk data on an HTTP port) is cut after NOT_MESSAGE_BYTES: both parsers
      call it malformed, with no message, from those bytes and its whole length alone
      (_walk's early test; parse_messages finds no header end in the window, or one after a
      line that does not match);
    - a direction that is one message whose Content-Length body runs to its end (the usual
      response, an upload) is cut after the message's headers (_lone_cut): the parsers skip
      a body by its length and never read it.
    Directions shorter than CUT_MIN_BYTES are kept whole without reading their bytes."""
    return _needed_lengths(np.ascontiguousarray(data, dtype=np.uint8),
                           np.ascontiguousarray(seg_start, dtype=np.int64),
                           np.ascontiguousarray(seg_size, dtype=np.int64),
                           np.ascontiguousarray(first_seg, dtype=np.int64),
                           np.ascontiguousarray(end_seg, dtype=np.int64))


_V64 = ir.VectorType(ir.IntType(8), 64)


@intrinsic
def _byte_mask(typingctx, array, at, byte):  # noqa: ARG001 (numba's intrinsic signature)
    """Bit j set where array[at + j] == byte, j < 64 (one unaligned 64-byte vector load and
    compare: a single vpcmpeqb + kmov with AVX-512; the caller keeps at + 64 <= size).
    Why: header walks spent most of their time in byte loops and word loops whose exits
    mispredict once a line; a mask finds a line's LF or ':' in one step."""
    if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and array.dtype.bitwidth == 8):
        return None  # not typed: the call does not compile
    sig = types.uint64(array, types.int64, types.uint8)

    def codegen(context, builder, signature, args):
        check_span(context, builder, signature.args[0], args[0], args[1], ir.IntType(64)(64))
        data = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(data.data, [args[1]]), _V64.as_pointer())
        vec = builder.load(ptr, align=1)
        one = builder.insert_element(ir.Constant(_V64, ir.Undefined), args[2],
                                     ir.IntType(32)(0))
        splat = builder.shuffle_vector(one, ir.Constant(_V64, ir.Undefined),
                                       ir.Constant(ir.VectorType(ir.IntType(32), 64), [0] * 64))
        bits = builder.icmp_unsigned("==", vec, splat)
        return builder.bitcast(bits, ir.IntType(64))

    return sig, codegen
