"""One-pass JSON line scanner: validate every line and locate a fixed set of key paths.

Why: decoding every JSON line into Python objects and then mapping them costs more than
the whole per-line budget of the fusion path (docs/performance.md, Fusion). This module
walks a whole chunk of lines once, in a compiled kernel, over the joined bytes: it checks
each line is one valid JSON object (strings incl. escapes and UTF-8 validity, numbers,
literals, nesting) and records, for a table of wanted key paths (top-level keys and keys of
wanted top-level objects, e.g. `src_ip`, `flow.bytes_toserver`), the span and type of each
value per line. Columns are then built from the spans by small kernels (integers are parsed
here, timestamps, IPv4 text, text factorization) - Python objects are created only once per
distinct text value.

The scanner is deliberately conservative: a line it is not sure about (invalid JSON,
duplicate wanted key, escaped key, number with an exponent or too many digits, a `\\u`
escape of a surrogate, nesting deeper than MAX_DEPTH, not an object) is flagged, and the
caller sends it through the general decoder, which defines the results.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.jit import njit

# Value types recorded per (line, key).
ABSENT, STR, STR_ESC, INT, FLOAT, TRUE, FALSE, NULL, OBJ, ARR = range(10)
MAX_DEPTH = 64
MAX_KEY = 32  # longest wanted key name
# Flag bits per line
FLAG_INVALID = 1  # not valid JSON (or not an object)
FLAG_UNSURE = 2  # valid or not, the general decoder decides (see module doc)
FLAG_BLANK = 4  # only whitespace (bytes.strip() empties it): not a record


class KeyTable:
    """Wanted key paths: 'name' (top level) or 'parent.name' (a key of a top-level object
    'parent', which must itself be listed). Index i of `paths` = column i of the spans."""

    def __init__(self, paths: Sequence[str], flat: bool = False) -> None:
        """flat: every path is one top-level key name, dots included (Zeek's 'id.orig_h')."""
        self.paths = list(paths)
        self.index = {p: i for i, p in enumerate(self.paths)}
        names = []
        parents = []
        for p in self.paths:
            parent, _, name = ("", "", p) if flat else p.rpartition(".")
            if parent and "." in parent:
                raise ValueError(f"key path deeper than two levels: {p}")
            parents.append(self.index[parent] if parent else -1)
            names.append(name.encode())
        self.parent = np.array(parents, dtype=np.int64)
        self.offsets = np.zeros(len(names) + 1, dtype=np.int64)
        self.offsets[1:] = np.cumsum([len(n) for n in names])
        self.names = np.frombuffer(b"".join(names) or b"\0", dtype=np.uint8).copy()
        # Candidates by (parent + 1, key length, first byte): most keys of a line are not
        # wanted and miss at once; equal slots chain through `next`.
        self.first = np.full((len(names) + 1, MAX_KEY + 1, 256), -1, dtype=np.int16)
        self.next = np.full(len(names), -1, dtype=np.int16)
        for k in reversed(range(len(names))):
            if not 0 < len(names[k]) <= MAX_KEY:
                raise ValueError(f"key name length out of 1..{MAX_KEY}: {self.paths[k]}")
            slot = (self.parent[k] + 1, len(names[k]), names[k][0])
            self.next[k] = self.first[slot]
            self.first[slot] = k

    def __len__(self) -> int:
        return len(self.paths)


_PLAIN = np.zeros(256, dtype=np.bool_)
_PLAIN[32:128] = True
_PLAIN[[34, 92]] = False


# The scanner's helpers are inlined into scan_lines at the numba IR level (inline="always"):
# measured 13-17 % less kernel time than leaving it to LLVM, at ~5 s more first compile.
# The hot paths (whitespace, key lookup, plain strings, plain numbers, literals) are
# written out in scan_lines itself: each inlined call still increfs and decrefs its array
# arguments (atomic operations, ~35 % of the kernel's time measured with perf); the
# helpers remain for the rare paths (escapes and UTF-8, minus signs, exponents).
@njit(inline="always")
def _ws(buf, p, end):
    while p < end:
        c = buf[p]
        if c != 32 and c != 9 and c != 10 and c != 13:
            break
        p += 1
    return p


@njit(inline="always")
def _hex4(buf, p, end):
    """Value of 4 hex digits at p, -1 if not."""
    if p + 4 > end:
        return -1
    v = 0
    for k in range(4):
        c = buf[p + k]
        if 48 <= c <= 57:
            d = c - 48
        elif 97 <= c <= 102:
            d = c - 87
        elif 65 <= c <= 70:
            d = c - 55
        else:
            return -1
        v = v * 16 + d
    return v


@njit(inline="always")
def _string(buf, p, end):
    """p at the byte after the opening quote. Returns (index of the closing quote or a
    negative status, has-escape). -1 invalid, -2 unsure (surrogate escape)."""
    esc = False
    while p < end:
        c = buf[p]
        if _PLAIN[c]:  # the common case: printable ASCII other than '"' and '\\'
            p += 1
            continue
        if c == 34:
            return p, esc
        if c == 92:
            esc = True
            if p + 1 >= end:
                return -1, esc
            e = buf[p + 1]
            if e == 117:  # \uXXXX
                v = _hex4(buf, p + 2, end)
                if v < 0:
                    return -1, esc
                if 0xD800 <= v <= 0xDFFF:
                    return -2, esc
                p += 6
            elif (e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110
                  or e == 114 or e == 116):
                p += 2
            else:
                return -1, esc
        elif c < 32:
            return -1, esc
        elif c < 128:
            p += 1
        else:  # UTF-8 sequence, validated as RFC 3629 (no overlongs, no surrogates)
            if 0xC2 <= c <= 0xDF:
                n, lo, hi = 1, 0x80, 0xBF
            elif c == 0xE0:
                n, lo, hi = 2, 0xA0, 0xBF
            elif 0xE1 <= c <= 0xEC or c == 0xEE or c == 0xEF:
                n, lo, hi = 2, 0x80, 0xBF
            elif c == 0xED:
                n, lo, hi = 2, 0x80, 0x9F
            elif c == 0xF0:
                n, lo, hi = 3, 0x90, 0xBF
            elif 0xF1 <= c <= 0xF3:
                n, lo, hi = 3, 0x80, 0xBF
            elif c == 0xF4:
                n, lo, hi = 3, 0x80, 0x8F
            else:
                return -1, esc
            if p + n >= end:
                return -1, esc
            b1 = buf[p + 1]
            if b1 < lo or b1 > hi:
                return -1, esc
            for k in range(2, n + 1):
                b = buf[p + k]
                if b < 0x80 or b > 0xBF:
                    return -1, esc
            p += n + 1
    return -1, esc


@njit(inline="always")
def _number(buf, p, end):
    """JSON number at p. Returns (end index or negative status, is-int, int value,
    int-ok). -1 invalid; -2 unsure (exponent, or over 300 digits). int-ok is False when
    the integer does not fit 18 digits (the caller decides)."""
    q = p
    neg = False
    if q < end and buf[q] == 45:
        neg = True
        q += 1
    if q >= end:
        return -1, False, 0, False
    c = buf[q]
    if c == 48:
        q += 1
        if q < end and 48 <= buf[q] <= 57:
            return -1, False, 0, False  # leading zero
    elif 49 <= c <= 57:
        pass
    else:
        return -1, False, 0, False
    v = 0
    digits = 0
    while q < end and 48 <= buf[q] <= 57:
        if digits < 18:
            v = v * 10 + (buf[q] - 48)
        digits += 1
        q += 1
    is_int = True
    if q < end and buf[q] == 46:
        is_int = False
        q += 1
        fd = 0
        while q < end and 48 <= buf[q] <= 57:
            q += 1
            fd += 1
        if fd == 0:
            return -1, False, 0, False
        digits += fd
    if q < end and (buf[q] == 101 or buf[q] == 69):
        return -2, False, 0, False
    if digits > 300:
        return -2, False, 0, False
    return q, is_int, -v if neg else v, digits <= 18


@njit
def scan_lines(buf, starts, ends, names, offsets, first, nxt):
    """Validate each line buf[starts[i]:ends[i]] and locate the wanted keys.

    Returns (value start, value end, type, integer value) per (key, line) - strings span
    their content without the quotes - and a flag per line (FLAG_* bits; a flagged line's
    spans are meaningless). Only `vt` is initialized everywhere (ABSENT): read the others
    where the type says a value is there."""
    n = starts.shape[0]
    nk = nxt.shape[0]
    vs = np.empty((nk, n), np.int64)
    ve = np.empty((nk, n), np.int64)
    vt = np.zeros((nk, n), np.int8)
    iv = np.empty((nk, n), np.int64)
    flag = np.zeros(n, np.uint8)
    ctype = np.zeros(MAX_DEPTH + 2, np.int8)  # 1 object, 2 array
    owner = np.zeros(MAX_DEPTH + 2, np.int64)  # wanted key id of the container, or -1
    blen = buf.shape[0]
    for li in range(n):
        p = starts[li]
        end = ends[li]
        if p < 0 or end > blen or p > end:
            flag[li] = FLAG_INVALID
            continue
        while p < end and (buf[p] == 32 or buf[p] == 9 or buf[p] == 10 or buf[p] == 13):
            p += 1
        if p >= end or buf[p] != 123:
            flag[li] = FLAG_INVALID
            while p < end and (buf[p] == 11 or buf[p] == 12):  # bytes.strip() whitespace
                p = _ws(buf, p + 1, end)
            if p == end:
                flag[li] = FLAG_BLANK
            continue
        depth = 1
        ctype[1] = 1
        owner[1] = -1
        p += 1
        state = 0  # 0 object start, 1 key expected, 2 array start, 3 value, 4 after value
        cur = -1
        status = 0
        while True:
            while p < end and (buf[p] == 32 or buf[p] == 9 or buf[p] == 10 or buf[p] == 13):
                p += 1
            if p >= end:
                status = FLAG_INVALID
                break
            c = buf[p]
            if state == 0 or state == 1:
                if c == 125 and state == 0:
                    state = 5  # close
                elif c == 34:
                    q = p + 1  # plain ASCII runs here, the rest (escapes, UTF-8) in _string
                    while q < end and _PLAIN[buf[q]]:
                        q += 1
                    esc = False
                    if q >= end or buf[q] != 34:
                        q, esc = _string(buf, q, end)
                    if q < 0:
                        status = FLAG_INVALID if q == -1 else FLAG_UNSURE
                        break
                    # is this key among the wanted ones? top level, or in a wanted object
                    parent = -2
                    if depth == 1:
                        parent = -1
                    elif depth == 2 and owner[2] >= 0:
                        parent = owner[2]
                    cur = -1
                    if parent != -2:
                        if esc:
                            status = FLAG_UNSURE
                            break
                        # the wanted key id of buf[p + 1:q], or -1 (written out here, not a
                        # helper call: passing arrays to a helper costs atomic refcounts)
                        ks = p + 1
                        kn = q - ks
                        if 0 < kn <= MAX_KEY:
                            cur = first[parent + 1, kn, buf[ks]]
                            while cur >= 0:
                                o = offsets[cur]
                                j = 1
                                while j < kn and names[o + j] == buf[ks + j]:
                                    j += 1
                                if j == kn:
                                    break
                                cur = nxt[cur]
                        if cur >= 0 and vt[cur, li] != ABSENT:
                            status = FLAG_UNSURE  # duplicate wanted key
                            break
                    p = q + 1
                    while p < end and (buf[p] == 32 or buf[p] == 9 or buf[p] == 10
                                       or buf[p] == 13):
                        p += 1
                    if p >= end or buf[p] != 58:
                        status = FLAG_INVALID
                        break
                    p += 1
                    state = 3
                    continue
                else:
                    status = FLAG_INVALID
                    break
            elif state == 2:
                if c == 93:
                    state = 5
                else:
                    cur = -1
                    state = 3
                    continue
            if state == 3:
                if c == 123 or c == 91:
                    if depth >= MAX_DEPTH:
                        status = FLAG_UNSURE
                        break
                    depth += 1
                    ctype[depth] = 1 if c == 123 else 2
                    owner[depth] = cur
                    if cur >= 0:
                        vs[cur, li] = p
                        vt[cur, li] = OBJ if c == 123 else ARR
                    state = 0 if c == 123 else 2
                    p += 1
                    continue
                if c == 34:
                    q = p + 1
                    while q < end and _PLAIN[buf[q]]:
                        q += 1
                    esc = False
                    if q >= end or buf[q] != 34:
                        q, esc = _string(buf, q, end)
                    if q < 0:
                        status = FLAG_INVALID if q == -1 else FLAG_UNSURE
                        break
                    if cur >= 0:
                        vs[cur, li] = p + 1
                        ve[cur, li] = q
                        vt[cur, li] = STR_ESC if esc else STR
                    p = q + 1
                elif c == 45 or 48 <= c <= 57:
                    # digits[.digits] read here; anything else (a minus, a leading zero,
                    # an exponent, long numbers) by _number from the start
                    q = p
                    v = 0
                    nd = 0
                    while q < end and 48 <= buf[q] <= 57:
                        if nd < 18:
                            v = v * 10 + (buf[q] - 48)
                        nd += 1
                        q += 1
                    fast = c != 45 and nd <= 18 and not (c == 48 and nd > 1)
                    is_int = True
                    int_ok = True
                    if fast and q < end and buf[q] == 46:
                        is_int = False
                        q += 1
                        fd = 0
                        while q < end and 48 <= buf[q] <= 57:
                            q += 1
                            fd += 1
                        fast = fd > 0 and nd + fd <= 300
                    if fast and q < end and (buf[q] == 101 or buf[q] == 69):
                        fast = False
                    if not fast:
                        q, is_int, v, int_ok = _number(buf, p, end)
                    if q < 0:
                        status = FLAG_INVALID if q == -1 else FLAG_UNSURE
                        break
                    if is_int and not int_ok:
                        status = FLAG_UNSURE  # may not fit int64: the decoder decides
                        break
                    if cur >= 0:
                        vs[cur, li] = p
                        ve[cur, li] = q
                        vt[cur, li] = INT if is_int else FLOAT
                        iv[cur, li] = v
                    p = q
                elif (c == 116 and p + 4 <= end and buf[p + 1] == 114
                      and buf[p + 2] == 117 and buf[p + 3] == 101):
                    if cur >= 0:
                        vt[cur, li] = TRUE
                    p += 4
                elif (c == 102 and p + 5 <= end and buf[p + 1] == 97 and buf[p + 2] == 108
                      and buf[p + 3] == 115 and buf[p + 4] == 101):
                    if cur >= 0:
                        vt[cur, li] = FALSE
                    p += 5
                elif (c == 110 and p + 4 <= end and buf[p + 1] == 117
                      and buf[p + 2] == 108 and buf[p + 3] == 108):
                    if cur >= 0:
                        vt[cur, li] = NULL
                    p += 4
                else:
                    status = FLAG_INVALID
                    break
                if cur >= 0 and vt[cur, li] >= TRUE:
                    vs[cur, li] = p - (4 if vt[cur, li] != FALSE else 5)
                    ve[cur, li] = p
                state = 4
                continue
            if state == 4:
                if c == 44:
                    p += 1
                    if ctype[depth] == 1:
                        state = 1
                    else:
                        cur = -1
                        state = 3
                    continue
                if (c == 125 and ctype[depth] == 1) or (c == 93 and ctype[depth] == 2):
                    state = 5
                else:
                    status = FLAG_INVALID
                    break
            if state == 5:  # close the container at p
                k = owner[depth]
                if k >= 0:
                    ve[k, li] = p + 1
                depth -= 1
                p += 1
                if depth == 0:
                    while p < end and (buf[p] == 32 or buf[p] == 9 or buf[p] == 10
                                       or buf[p] == 13):
                        p += 1
                    if p != end:
                        status = FLAG_INVALID  # trailing content
                    break
                state = 4
        flag[li] = status
    return vs, ve, vt, iv, flag


def join_lines(lines: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
    """Bytes lines -> (buffer as uint8, line starts, line ends, joined bytes)."""
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    joined = b"".join(lines)
    return np.frombuffer(joined, dtype=np.uint8), starts, ends, joined


# --- column kernels ----------------------------------------------------------------------------

@njit
def factorize_spans(buf, vs, ve, rows):
    """Distinct byte strings among buf[vs[r]:ve[r]] for r in rows: (code per row in
    first-appearance order, one representative row per code). Exact (bytes compared)."""
    n = rows.shape[0]
    size = 16
    while size < 2 * n:
        size *= 2
    table = np.full(size, -1, np.int64)
    hashes = np.zeros(n, np.uint64)
    codes = np.empty(n, np.int64)
    reps = np.empty(n, np.int64)
    nuniq = 0
    mask = size - 1
    for i in range(n):
        r = rows[i]
        s = vs[r]
        e = ve[r]
        h = np.uint64(14695981039346656037)
        for p in range(s, e):
            h = (h ^ np.uint64(buf[p])) * np.uint64(1099511628211)
        slot = np.int64(h & np.uint64(mask))
        while True:
            t = table[slot]
            if t < 0:
                table[slot] = i
                hashes[i] = h
                codes[i] = nuniq
                reps[nuniq] = r
                nuniq += 1
                break
            if hashes[t] == h:
                rt = rows[t]
                st = vs[rt]
                if ve[rt] - st == e - s:
                    same = True
                    for j in range(e - s):
                        if buf[st + j] != buf[s + j]:
                            same = False
                            break
                    if same:
                        codes[i] = codes[t]
                        break
            slot = (slot + 1) & mask
    return codes, reps[:nuniq]


@njit
def gather_ascii(buf, starts, ends, skip, fold):
    """Copy the ASCII spans buf[starts[i]:ends[i]] end to end, for one bytes.decode() of
    them all instead of one per span: (bytes, offsets (n + 1), ok per span). A span with
    a byte >= 128, or where skip[i], is left empty with ok False (the caller decodes it).
    fold: drop trailing dots and lower-case A-Z, which is str.rstrip('.').lower() for
    ASCII text (DNS names)."""
    n = starts.shape[0]
    total = 0
    for i in range(n):
        if ends[i] > starts[i]:
            total += ends[i] - starts[i]
    out = np.empty(total, np.uint8)
    offs = np.zeros(n + 1, np.int64)
    ok = np.zeros(n, np.bool_)
    blen = buf.shape[0]
    o = 0
    for i in range(n):
        s = starts[i]
        e = ends[i]
        offs[i] = o
        if skip[i] or s < 0 or e > blen or s > e:
            continue
        good = True
        for p in range(s, e):
            if buf[p] >= 128:
                good = False
                break
        if not good:
            continue
        if fold:
            while e > s and buf[e - 1] == 46:
                e -= 1
        for p in range(s, e):
            c = buf[p]
            if fold and 65 <= c <= 90:
                c += 32
            out[o] = c
            o += 1
        ok[i] = True
    offs[n] = o
    return out[:o], offs, ok


@njit
def parse_ipv4(buf, vs, ve, rows, out):
    """Dotted-quad text -> IPv4-mapped 16-byte rows of `out` (n, 16); True where parsed.
    Accepts exactly what inet_pton(AF_INET) accepts (4 decimal parts 0-255, no leading
    zeros); anything else is left to the caller."""
    n = rows.shape[0]
    ok = np.zeros(n, np.bool_)
    for i in range(n):
        r = rows[i]
        p = vs[r]
        e = ve[r]
        part = 0
        val = 0
        digits = 0
        good = True
        while p < e:
            c = buf[p]
            if 48 <= c <= 57:
                if digits > 0 and val == 0:
                    good = False
                    break
                val = val * 10 + (c - 48)
                digits += 1
                if val > 255:
                    good = False
                    break
            elif c == 46 and digits > 0 and part < 3:
                out[i, 12 + part] = val
                part += 1
                val = 0
                digits = 0
            else:
                good = False
                break
            p += 1
        if good and part == 3 and digits > 0:
            out[i, 12 + 3] = val
            for k in range(10):
                out[i, k] = 0
            out[i, 10] = 255
            out[i, 11] = 255
            ok[i] = True
    return ok


@njit
def _days_from_civil(y, m, d):
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


# parse_iso31: which of the 31 bytes are digits (the others are checked one by one)
_ISO31_DIGIT = np.ones(31, dtype=np.bool_)
_ISO31_DIGIT[[4, 7, 10, 13, 16, 19, 26]] = False
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


@njit
def parse_iso31(buf, vs, ve, rows):
    """'YYYY-MM-DDTHH:MM:SS.ffffff+hhmm' (Suricata's layout, 31 bytes) -> epoch ns; ok
    False for any other text or an out-of-range field (the caller then takes the general
    path, which defines the result)."""
    n = rows.shape[0]
    out = np.zeros(n, np.int64)
    ok = np.zeros(n, np.bool_)
    for i in range(n):
        r = rows[i]
        s = vs[r]
        if ve[r] - s != 31:
            continue
        if (buf[s + 4] != 45 or buf[s + 7] != 45 or buf[s + 10] != 84 or buf[s + 13] != 58
                or buf[s + 16] != 58 or buf[s + 19] != 46):
            continue
        sign = buf[s + 26]
        if sign != 43 and sign != 45:
            continue
        good = True
        for k in range(31):  # a constant array, not a tuple: numba indexes tuples slowly
            c = buf[s + k]
            if _ISO31_DIGIT[k] and (c < 48 or c > 57):
                good = False
                break
        if not good:
            continue
        y = 0
        for k in range(4):
            y = y * 10 + (buf[s + k] - 48)
        mo = (buf[s + 5] - 48) * 10 + buf[s + 6] - 48
        d = (buf[s + 8] - 48) * 10 + buf[s + 9] - 48
        hh = (buf[s + 11] - 48) * 10 + buf[s + 12] - 48
        mi = (buf[s + 14] - 48) * 10 + buf[s + 15] - 48
        ss = (buf[s + 17] - 48) * 10 + buf[s + 18] - 48
        us = 0
        for k in range(20, 26):
            us = us * 10 + (buf[s + k] - 48)
        oh = (buf[s + 27] - 48) * 10 + buf[s + 28] - 48
        om = (buf[s + 29] - 48) * 10 + buf[s + 30] - 48
        if y < 1900 or y > 2200 or mo < 1 or mo > 12 or d < 1 or hh > 23 or mi > 59 \
                or ss > 59 or oh > 23 or om > 59:
            continue
        leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
        dim = _MONTH_DAYS[mo - 1] + (1 if (mo == 2 and leap) else 0)
        if d > dim:
            continue
        days = _days_from_civil(np.int64(y), np.int64(mo), np.int64(d))
        secs = days * 86400 + hh * 3600 + mi * 60 + ss
        off = (oh * 3600 + om * 60) * (1 if sign == 43 else -1)
        out[i] = ((secs - off) * 1_000_000 + us) * 1000
        ok[i] = True
    return out, ok


@njit
def parse_decimal_us(buf, vs, ve, vt, iv, max_int):
    """Non-negative JSON numbers -> exact microseconds (Zeek `ts` and `duration`).

    Row i is buf[vs[i]:ve[i]] of type vt[i] (iv[i]: its value if INT). Taken: an INT in
    0..max_int-1, or a FLOAT 'digits.digits' with an integer part below max_int and 1-6
    fractional digits (the scanner already rejected exponents). ok False for anything
    else (negative, more digits, other types): the caller falls back. For max_int <= 2**32
    (timestamps) the result equals rint(float(text) * 1e6), for max_int <= 2**21
    (durations) also rint(float(text) * 1e9) / 1000: float(text) is within half an ulp of
    the decimal, which scaled is below 0.25 us (ns), so the rounding lands on the exact
    decimal (tests/test_zeek_scan.py checks it against the float conversion)."""
    n = vs.shape[0]
    out = np.zeros(n, np.int64)
    ok = np.zeros(n, np.bool_)
    for i in range(n):
        t = vt[i]
        if t == INT:
            v = iv[i]
            if 0 <= v < max_int:
                out[i] = v * 1_000_000
                ok[i] = True
            continue
        if t != FLOAT:
            continue
        p = vs[i]
        e = ve[i]
        if p < 0 or e > buf.shape[0] or p >= e or buf[p] == 45:
            continue
        whole = 0
        start = p
        while p < e and 48 <= buf[p] <= 57 and whole < max_int:
            whole = whole * 10 + (buf[p] - 48)
            p += 1
        if p == start or whole >= max_int or p >= e or buf[p] != 46:
            continue
        p += 1
        digits = 0
        frac = 0
        while p < e and 48 <= buf[p] <= 57 and digits <= 6:
            frac = frac * 10 + (buf[p] - 48)
            digits += 1
            p += 1
        if digits == 0 or digits > 6 or p != e:
            continue
        while digits < 6:
            frac *= 10
            digits += 1
        out[i] = whole * 1_000_000 + frac
        ok[i] = True
    return out, ok
