"""Zeek TSV rows -> the JSON scanner's span shape, in one compiled pass over a chunk.

Why: turning every TSV row into a list of str, converting each field and building a dict
per row costs more than the per-line budget (docs/performance.md, Fusion). `scan_tsv` walks
the joined bytes of a chunk of data lines once, splits the fields at the #separator byte and
records, for the fields fusion.zeek_scan reads, the span, type and integer value in the same
layout `fusion.json_scan.scan_lines` produces. The zeek_scan column builders (`COLUMNS`) then
build the columns from these spans unchanged.

Exactness: a field takes the type the TSV general path (fusion.adapters.columns_from_tsv)
gives its value: the #unset_field text -> ABSENT (the key is left out), the #empty_field text
of a text field -> an empty STR, count/int/port text -> INT, time/interval text -> INT or
FLOAT (its span, parsed later by parse_decimal_us). The scan is conservative: a line with a
wrong column count, a backslash (Zeek's \\x.. escapes), a byte >= 0x80, or a number field
that is not plain `-?digits[.digits]` (JSON number grammar, at most 18 digits) is flagged,
and the caller converts the chunk with the general path, which defines every result and
dead-letter reason.
"""

from __future__ import annotations

import numpy as np

from fusion.json_scan import ABSENT, ARR, FALSE, FLOAT, INT, STR, TRUE
from pipeline.jit import njit

# What a header field is to the scan (per field of the #fields line).
SKIP, TEXT, INTEGER, NUMBER, BOOL, VECTOR = 0, 1, 2, 3, 4, 5
# #types value -> field kind, for the types whose general-path conversion the scan mirrors.
KIND_OF_TYPE = {"string": TEXT, "enum": TEXT, "addr": TEXT, "subnet": TEXT,
                "count": INTEGER, "int": INTEGER, "port": INTEGER,
                "time": NUMBER, "interval": NUMBER, "bool": BOOL}
MAX_DIGITS = 18  # int64 holds any 18-digit integer


@njit
def _equals(buf, s, e, text):
    if e - s != text.shape[0]:
        return False
    for j in range(e - s):
        if buf[s + j] != text[j]:
            return False
    return True


@njit
def _integer(buf, s, e):
    """'-?[0-9]{1,18}' (what int() takes after isdecimal(), ASCII only) -> (ok, value)."""
    p = s
    neg = False
    if p < e and buf[p] == 45:
        neg = True
        p += 1
    if p >= e or e - p > MAX_DIGITS:
        return False, 0
    v = 0
    while p < e:
        c = buf[p]
        if c < 48 or c > 57:
            return False, 0
        v = v * 10 + (c - 48)
        p += 1
    return True, -v if neg else v


@njit
def _number(buf, s, e):
    """JSON number grammar without exponent, at most 18 digits: (type or -1, int value)."""
    p = s
    if p < e and buf[p] == 45:
        p += 1
    if p >= e or buf[p] < 48 or buf[p] > 57:
        return -1, 0
    if buf[p] == 48 and p + 1 < e and 48 <= buf[p + 1] <= 57:
        return -1, 0  # leading zero: not JSON (and not what epoch_times accepts)
    digits = 0
    dot = -1
    while p < e:
        c = buf[p]
        if c == 46 and dot < 0:
            dot = p
        elif 48 <= c <= 57:
            digits += 1
        else:
            return -1, 0
        p += 1
    if digits > MAX_DIGITS or dot == e - 1:
        return -1, 0
    if dot >= 0:
        return FLOAT, 0
    ok, v = _integer(buf, s, e)
    return (INT, v) if ok else (-1, 0)


@njit
def scan_tsv(buf, starts, ends, sep, unset, empty, field_key, field_kind, nkeys):
    """Split each line buf[starts[i]:ends[i]] at byte `sep` and locate the wanted fields.

    field_key[f]: row of the output arrays for header field f (-1: not wanted); field_kind[f]:
    TEXT/INTEGER/NUMBER/BOOL/VECTOR. Returns (value start, value end, type, integer
    value) per (key, line), as json_scan.scan_lines, and a bad flag per line (see the
    module doc); vt is ABSENT where a key is unset or not in the header."""
    n = starts.shape[0]
    nf = field_key.shape[0]
    vs = np.zeros((nkeys, n), np.int64)
    ve = np.zeros((nkeys, n), np.int64)
    vt = np.full((nkeys, n), ABSENT, np.int8)
    iv = np.zeros((nkeys, n), np.int64)
    bad = np.zeros(n, np.bool_)
    blen = buf.shape[0]
    for li in range(n):
        s = starts[li]
        end = ends[li]
        if s < 0 or end > blen or s > end:
            bad[li] = True
            continue
        f = 0
        fs = s
        p = s
        while True:
            if p < end:
                c = buf[p]
                if c >= 128 or c == 92:  # non-ASCII or an escape: the general path
                    bad[li] = True
                    break
                if c != sep:
                    p += 1
                    continue
            # a field ends at fs..p
            if f >= nf:
                bad[li] = True  # too many columns
                break
            k = field_key[f]
            if k >= 0 and not _equals(buf, fs, p, unset):
                kind = field_kind[f]
                if kind == TEXT:
                    vt[k, li] = STR
                    vs[k, li] = fs
                    ve[k, li] = fs if _equals(buf, fs, p, empty) else p
                elif kind == BOOL or kind == VECTOR:
                    # bool: T/F, other text stays text; vector: the raw TSV text (made
                    # JSON by vectors_as_json)
                    t = ARR if kind == VECTOR else STR
                    if kind == BOOL and p - fs == 1 and (buf[fs] == 84 or buf[fs] == 70):
                        t = TRUE if buf[fs] == 84 else FALSE
                    vt[k, li] = t
                    vs[k, li] = fs
                    ve[k, li] = p
                else:
                    if kind == INTEGER:
                        ok, v = _integer(buf, fs, p)
                        t = INT if ok else -1
                    else:
                        t, v = _number(buf, fs, p)
                    if t < 0:
                        bad[li] = True
                        break
                    vt[k, li] = t
                    vs[k, li] = fs
                    ve[k, li] = p
                    iv[k, li] = v
            f += 1
            if p >= end:
                break
            p += 1
            fs = p
        if f != nf:
            bad[li] = True  # too few (or too many) columns
    return vs, ve, vt, iv, bad


def field_plan(fields: list[str], types: list[str] | None, index: dict[str, int]
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """Header -> (field_key, field_kind) for scan_tsv, or None when the scan cannot mirror
    the general path for this header: no #types, a wanted field of another type (set,
    vector, bool, double ...), a duplicate field name, or a `_path` column."""
    if types is None or len(types) != len(fields) or len(set(fields)) != len(fields) \
            or "_path" in fields:
        return None
    keys = np.full(len(fields), -1, dtype=np.int64)
    kinds = np.zeros(len(fields), dtype=np.int8)
    for f, (name, zeek_type) in enumerate(zip(fields, types, strict=True)):
        k = index.get(name)
        if k is None:
            continue
        kind = KIND_OF_TYPE.get(zeek_type)
        if zeek_type.startswith(("set[", "vector[")) and zeek_type.endswith("]"):
            kind = VECTOR
        if kind is None:
            return None
        keys[f] = k
        kinds[f] = kind
    return keys, kinds


def text_bytes(text: str) -> np.ndarray | None:
    """A header value as the uint8 array the kernel compares with (None: not ASCII)."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    return np.frombuffer(raw, dtype=np.uint8) if raw else np.zeros(0, dtype=np.uint8)
