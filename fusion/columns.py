"""Column builders for external records: raw values -> schema columns + per-row validity.

External input (Suricata EVE, Zeek logs) arrives as records. An adapter pulls each schema
column out of a group of records of one kind as a plain Python list (one list per column,
not one dict per event), and `build_batch` turns those lists into typed numpy columns,
checking every row on the way: a row with a missing required field, a wrong type or an
absurd value (port 70000, a timestamp in year 9999) is cut out and dead-lettered with its
reason and original record; the rest of the group becomes one valid EventBatch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from socket import AF_INET, AF_INET6, inet_pton

import numpy as np

from pipeline.schema import KINDS, EventBatch, validate_batch
from sensors.community_id import community_id_column
from sensors.packets import IP_DTYPE, IPV4_MAPPED_PREFIX

NS = 1_000_000_000
# Plausible event-time range. Outside it a timestamp is absurd (year 9999) or relative
# (Zeek run on a trace with `ts` counted from capture start) and would break event-time
# windows: such rows are dead-lettered. Configurable (fusion.validate).
DEFAULT_MIN_TIME_NS = int(np.datetime64("1990-01-01", "ns").astype(np.int64))
DEFAULT_MAX_TIME_NS = int(np.datetime64("2100-01-01", "ns").astype(np.int64))

# Defaults of columns an external source does not fill (0 / "" otherwise).
_COLUMN_DEFAULTS = {"request_body_bytes": -1, "response_body_bytes": -1, "auth_success": -1,
                    "outcome": -1}
_LIST_COLUMNS = {"answers", "client_alpn"}
# Columns that must be present (besides timestamp and addresses) for a row to be usable.
REQUIRED = {"ids_alert": ("rule_id",), "dns": (), "flow": (), "http": (), "tls": (),
            "ssh": ()}


@dataclass
class Bounds:
    min_time_ns: int = DEFAULT_MIN_TIME_NS
    max_time_ns: int = DEFAULT_MAX_TIME_NS


@dataclass
class BuildResult:
    batch: EventBatch | None
    deadletter: list[dict] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)


class _Rows:
    """First failure reason per row (later failures of a bad row are not reported)."""

    def __init__(self, n: int) -> None:
        self.reason = np.empty(n, dtype=object)
        self.bad = np.zeros(n, dtype=bool)

    def fail(self, mask: np.ndarray, reason: str) -> None:
        new = mask & ~self.bad
        if new.any():
            self.reason[new] = reason
            self.bad |= new


# --- converters (list of raw values -> column, bad-row mask) --------------------------------

_ip_cache: dict[str, bytes] = {}


def _ip16(text: str) -> bytes | None:
    raw = _ip_cache.get(text)
    if raw is None:
        # inet_pton is C: ~10x faster than ipaddress; it takes canonical text only, and
        # rejects what ipaddress rejects (octets > 255, leading garbage).
        try:
            raw = IPV4_MAPPED_PREFIX + inet_pton(AF_INET, text)
        except OSError:
            try:
                raw = inet_pton(AF_INET6, text)
            except (OSError, ValueError):
                return None
        except (TypeError, ValueError):  # ValueError: an embedded NUL character
            return None
        if len(_ip_cache) > 1_000_000:  # bound the cache (hostile input: all-unique addresses)
            _ip_cache.clear()
        _ip_cache[text] = raw
    return raw


def ip_column(values: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Address text -> 16-byte column; None/unparsable rows are flagged.

    Per row, but in C where it can be: addresses repeat, so most rows are a dict hit
    looked up by map(); the misses go through inet_pton (and are cached). A vectorized
    dotted-quad parser over the UCS-4 code points was tried and measured slower than
    inet_pton (about 2x per address here) - it needs ~40 whole-array passes."""
    n = len(values)
    try:
        packed = list(map(_ip_cache.get, values))
    except TypeError:  # an unhashable JSON value (list, object): the careful path
        packed = [None] * n
    if None in packed:
        packed = [p if p is not None else (_ip16(v) if isinstance(v, str) else None)
                  for p, v in zip(packed, values, strict=True)]
    if None not in packed:
        return np.frombuffer(b"".join(packed), dtype=IP_DTYPE).copy(), np.zeros(n, bool)
    zero = bytes(16)
    bad = np.fromiter((p is None for p in packed), dtype=bool, count=n)
    buf = b"".join(zero if p is None else p for p in packed)
    return np.frombuffer(buf, dtype=IP_DTYPE).copy(), bad


def int_column(values: Sequence, dtype, lo: int, hi: int,
               default: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integers (None -> default) -> (column, wrong-type mask, out-of-range mask)."""
    n = len(values)
    try:  # fast path: every value a JSON integer or None
        types = set(map(type, values))  # one C-level pass
        # bool is an int subclass: a JSON true in a count field is a wrong type
        if not types <= {int, type(None)}:
            raise TypeError
        if type(None) in types:
            values = [default if v is None else v for v in values]
        arr = np.array(values, dtype=np.int64)
        wrong = np.zeros(n, dtype=bool)
    except (TypeError, ValueError, OverflowError):
        conv = []
        wrong = np.zeros(n, dtype=bool)
        for i, v in enumerate(values):
            if v is None:
                conv.append(default)
            elif type(v) is int and -(1 << 63) <= v < (1 << 63):
                conv.append(v)
            elif type(v) is float and v.is_integer() and abs(v) < 2**63:
                conv.append(int(v))
            elif type(v) is str and v.lstrip("-").isdecimal() and len(v) < 19:
                conv.append(int(v))  # Zeek TSV and some EVE fields carry numbers as text
            else:
                conv.append(default)
                wrong[i] = True
        arr = np.array(conv, dtype=np.int64)
    out_of_range = (arr < lo) | (arr > hi)
    arr = np.where(out_of_range | wrong, default, arr)
    return arr.astype(dtype), wrong, out_of_range


def str_column(values: Sequence, lower: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Text (None -> "") -> object column, non-text rows flagged."""
    out = np.empty(len(values), dtype=object)
    bad = np.zeros(len(values), dtype=bool)
    types = set(map(type, values))  # one C-level pass decides the path
    if types <= {str, type(None)}:
        if type(None) in types:
            values = ["" if v is None else v for v in values]
        out[:] = list(map(str.lower, values)) if lower else values
        return out, bad
    conv = []
    for i, v in enumerate(values):
        if v is None:
            conv.append("")
        elif type(v) is str:
            conv.append(v.lower() if lower else v)
        else:
            conv.append("")
            bad[i] = True
    out[:] = conv
    return out, bad


def bool_column(values: Sequence) -> tuple[np.ndarray, np.ndarray]:
    bad = np.fromiter((v is not None and type(v) is not bool for v in values), dtype=bool,
                      count=len(values))
    return np.fromiter((v is True for v in values), dtype=bool, count=len(values)), bad


def iso_times(values: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """RFC 3339 / ISO 8601 text (Suricata: '2018-07-05T15:01:09.820360-0400'; no offset =
    UTC) -> int64 ns, unparsable rows flagged."""
    n = len(values)
    out = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    # Fast path: one fixed layout with a +hhmm offset; numpy parses the local part in C.
    try:  # the layout is checked column-wise: one C-level pass per check, no row loop
        if n == 0 or set(map(type, values)) != {str} or set(map(len, values)) != {31}:
            raise ValueError
        text = np.array(values, dtype="U31")
        codes = text.view(np.uint32).reshape(n, 31)
        sign_code = codes[:, 26]
        digits = codes[:, 27:] - ord("0")
        if not (((sign_code == ord("+")) | (sign_code == ord("-"))).all()
                and (digits <= 9).all()):
            raise ValueError
        local = text.astype("U26").astype("datetime64[us]").astype(np.int64)
        hours = digits[:, 0].astype(np.int64) * 10 + digits[:, 1]
        minutes = digits[:, 2].astype(np.int64) * 10 + digits[:, 3]
        sign = np.where(sign_code == ord("+"), 1, -1)
        offset_us = sign * (hours * 3600 + minutes * 60) * 1_000_000
        return (local - offset_us) * 1000, bad
    except ValueError:
        pass
    for i, v in enumerate(values):
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
            if dt.tzinfo is None:
                epoch_us = (dt - datetime(1970, 1, 1)) // _ONE_US
            else:
                epoch_us = (dt - _EPOCH_UTC) // _ONE_US
            out[i] = epoch_us * 1000
        except (ValueError, TypeError, AttributeError, OverflowError):
            bad[i] = True
    return out, bad


_EPOCH_UTC = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
_ONE_US = datetime(1970, 1, 1, 0, 0, 0, 1) - datetime(1970, 1, 1)


def epoch_times(values: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Zeek `ts`: seconds since the epoch as a JSON number or TSV text -> int64 ns.

    Text is split at the dot so no precision is lost; a float keeps microseconds
    (what Zeek writes) exactly because 1.7e15 us < 2**53."""
    n = len(values)
    types = set(map(type, values))  # one C-level pass decides the path
    if n and types <= {float, int} and all(abs(v) <= 9.2e9 for v in (min(values), max(values))):
        # Zeek JSON: every ts a number (the common case), column-wise. float64 of an int
        # and rint (round half to even) are what float(v) and round() give per value.
        secs = np.asarray(values, dtype=np.float64)
        if not np.isnan(secs).any():
            return np.rint(secs * 1e6).astype(np.int64) * 1000, np.zeros(n, dtype=bool)
    return _epoch_times_each(values)


def _epoch_times_each(values: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """epoch_times value by value (any shape; the reference of the column-wise path)."""
    n = len(values)
    out = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    for i, v in enumerate(values):
        t = type(v)
        if t is float or t is int:
            if v != v or abs(v) > 9.2e9:  # NaN or beyond int64 ns
                bad[i] = True
            else:
                out[i] = int(round(v * 1e6)) * 1000
        elif t is str:
            sec, _, frac = v.partition(".")
            if sec.lstrip("-").isdecimal() and (not frac or frac.isdecimal()) and len(sec) < 11:
                out[i] = int(sec) * NS + int((frac + "000000000")[:9])
            else:
                bad[i] = True
        else:
            bad[i] = True
    return out, bad


def duration_ns(values: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Zeek `duration` (seconds, number or text; unset -> 0) -> int64 ns."""
    n = len(values)
    types = set(map(type, values))
    if n and types <= {float, int, type(None)}:  # Zeek JSON: numbers, unset -> absent
        if type(None) in types:
            values = [0.0 if v is None else v for v in values]
        secs = np.array(values, dtype=np.float64)  # a copy: zeroed below
        bad = ~((secs >= 0) & (secs < 1e8))  # negative, > 3 years or NaN
        secs[bad] = 0  # before scaling: absurd values must not overflow
        return np.rint(secs * 1e9).astype(np.int64), bad
    return _duration_each(values)


def _duration_each(values: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """duration_ns value by value (any shape; the reference of the column-wise path)."""
    n = len(values)
    out = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            bad[i] = True
            continue
        if not (0 <= f < 1e8):  # negative or > 3 years
            bad[i] = True
        else:
            out[i] = int(round(f * 1e9))
    return out, bad


# --- batch assembly ---------------------------------------------------------------------------

_INT_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.uint16): (0, 65535),
               np.dtype(np.uint32): (0, 2**32 - 1), np.dtype(np.int8): (-128, 127),
               np.dtype(np.uint64): (0, 2**63 - 1), np.dtype(np.int64): (-(2**62), 2**62)}


def build_batch(kind: str, n: int, raw: dict[str, Sequence], originals: Sequence,
                source: str, ready: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                bounds: Bounds | None = None) -> BuildResult:
    """Rows of one kind -> one valid EventBatch plus dead-letter records for bad rows.

    `raw` holds a Python list per column (None where the record lacks the field);
    `ready` holds columns the adapter already converted, each with its bad-row mask
    (timestamps, durations). Missing columns get their kind's default value."""
    spec = KINDS[kind]
    bounds = bounds or Bounds()
    ready = dict(ready or {})
    rows = _Rows(n)
    cols: dict[str, np.ndarray] = {}
    ts, ts_bad = ready.pop("timestamp")
    rows.fail(ts_bad, "timestamp: unparsable")
    rows.fail(~ts_bad & ((ts < bounds.min_time_ns) | (ts >= bounds.max_time_ns)),
              "timestamp: out of range")
    cols["timestamp"] = ts
    for f in spec.fields:
        c = f.column
        if c == "timestamp":
            continue
        if c in ready:
            col, bad = ready[c]
            rows.fail(bad, f"{c}: invalid")
            cols[c] = col
            continue
        values = raw.get(c)
        if f.dtype == IP_DTYPE:
            if values is None:
                rows.fail(np.ones(n, dtype=bool), f"{c}: missing")
                cols[c] = np.zeros(n, dtype=IP_DTYPE)
                continue
            col, bad = ip_column(values)
            if bad.any():
                missing = np.fromiter((v is None for v in values), dtype=bool, count=n)
                rows.fail(missing, f"{c}: missing")
                rows.fail(bad, f"{c}: not an IP address")
        elif f.dtype == np.dtype(object):
            if c in _LIST_COLUMNS:
                col = np.empty(n, dtype=object)
                col[:] = [list(v) if isinstance(v, list) else [] for v in
                          (values if values is not None else [None] * n)]
                cols[c] = col
                continue
            if values is None:
                col = np.full(n, "", dtype=object)
            else:
                col, bad = str_column(values)
                rows.fail(bad, f"{c}: not text")
                if c in REQUIRED.get(kind, ()):
                    rows.fail(col == "", f"{c}: missing")
        elif f.dtype == np.dtype(np.bool_):
            if values is None:
                col = np.zeros(n, dtype=bool)
            else:
                col, bad = bool_column(values)
                rows.fail(bad, f"{c}: not a boolean")
        else:
            default = _COLUMN_DEFAULTS.get(c, 0)
            if values is None:
                col = np.full(n, default, dtype=f.dtype)
            else:
                lo, hi = _INT_RANGES[f.dtype]
                if c in ("request_body_bytes", "response_body_bytes"):
                    lo = -1
                col, wrong, out = int_column(values, f.dtype, lo, hi, default)
                rows.fail(wrong, f"{c}: not an integer")
                rows.fail(out, f"{c}: out of range")
        cols[c] = col
    if "community_id" in cols:
        _fill_community_id(cols, ~rows.bad)
    good = ~rows.bad
    result = BuildResult(None)
    if rows.bad.any():
        for i in np.flatnonzero(rows.bad).tolist():
            reason = rows.reason[i]
            result.reasons[reason] += 1
            result.deadletter.append({"stage": "fusion", "source": source, "kind": kind,
                                      "reason": reason, "original": _text(originals[i])})
        cols = {k: v[good] for k, v in cols.items()}
    if good.any():
        batch = EventBatch(kind, cols)
        validate_batch(batch)  # the row checks above must make this hold; fail loudly if not
        result.batch = batch
    return result


def _fill_community_id(cols: dict[str, np.ndarray], valid: np.ndarray) -> None:
    """Compute Community ID v1 where the source did not give one (Zeek without the
    community-id package, older Suricata)."""
    need = valid & (cols["community_id"] == "")
    if need.any():
        idx = np.flatnonzero(need)
        cols["community_id"][idx] = community_id_column(
            cols["src_ip"][idx], cols["dst_ip"][idx], cols["transport"][idx],
            cols["src_port"][idx].astype(np.int64), cols["dst_port"][idx].astype(np.int64))


def _text(original) -> str:
    if isinstance(original, bytes | bytearray | memoryview):
        return bytes(original).decode("utf-8", "replace")
    return original if isinstance(original, str) else repr(original)


def deadletter_record(source: str, reason: str, original) -> dict:
    return {"stage": "fusion", "source": source, "kind": None, "reason": reason,
            "original": _text(original)}
