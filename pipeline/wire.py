"""The Kafka wire format: one message carries one whole columnar EventBatch.

Layout (little-endian, documented byte by byte in docs/wire-format.md):

    header    magic "CSAB", format version, schema version, row count, kind, column count
    directory one entry per column: name, encoding, numpy dtype string, payload length
    payloads  8-byte aligned, in directory order

Numeric and 16-byte address columns travel as their raw buffers and decode zero-copy
(`np.frombuffer`, read-only views into the message). Text columns travel either as a
*dictionary* (the distinct values once + one small integer code per row: observer name,
zone, connection state...) or as the rows' UTF-8 text joined by NUL bytes (community ids,
query names): both decode without a per-row Python step of ours (one `str.split`, one numpy
take). Nested object columns (DNS answers) and text that contains NUL travel as a JSON
array (orjson). The choice is measured in bench/wire_format.py.

Decoding trusts nothing: every length is checked against the buffer before anything is
allocated, so a damaged or hostile message costs at most a small multiple of its own size
and ends in a `WireError` with a one-line reason (for the dead-letter topic), never another
exception. Format version 1 messages (JSON for every object column) are still read.
"""

from __future__ import annotations

import ctypes
import itertools
import struct
from dataclasses import dataclass

import numpy as np
import orjson

from pipeline.heap import gc_paused
from pipeline.schema import KINDS, SCHEMA_VERSION, EventBatch, EventKind, Field

MAGIC = b"CSAB"  # cirt-sa batch
FORMAT_VERSION = 2  # what we write
READABLE_FORMATS = (1, 2)  # 1: object columns only as JSON (no dictionary/NUL-joined text)
ALIGN = 8

ENC_RAW = 0  # fixed-width little-endian buffer, rows * itemsize bytes
ENC_JSON = 1  # UTF-8 JSON array with one element per row
ENC_TEXT = 2  # (format 2) the rows' UTF-8 text joined by NUL bytes
ENC_DICT = 3  # (format 2) distinct values (NUL-joined) + one code per row
_ENCODING_NAMES = {ENC_RAW: "raw", ENC_JSON: "JSON", ENC_TEXT: "text", ENC_DICT: "dictionary"}

# magic, format version, flags (reserved, 0), schema version, row count, column count,
# kind name length
_HEADER = struct.Struct("<4sBBHIHB")
_ENTRY = struct.Struct("<BQ")  # encoding, payload length (after name and dtype strings)
_DICT_HEAD = struct.Struct("<IB3x")  # distinct values, code width (1, 2 or 4 bytes)

# Object columns whose rows are lists of dicts with exactly these keys; every other object
# column holds str.
_NESTED_COLUMNS = {"answers": frozenset({"name", "type", "class", "ttl", "data"})}

_SEP = "\x00"
_SAMPLE = 256  # rows looked at to guess whether a text column repeats few values
_MAX_IDENTITY_VALUES = 16  # distinct objects tried by the identity test (one pass each)


class WireError(ValueError):
    """A message is not a valid encoded batch/alert; the text is a one-line reason."""


@dataclass(frozen=True)
class WireHeader:
    kind: str
    rows: int
    schema_version: int
    format_version: int


# --- encode ---------------------------------------------------------------------------------

def _optional(field: Field) -> bool:
    # A column added to a kind after its schema version shipped (pipeline/schema.py): a
    # message may lack it and EventBatch fills it. getattr: schemas without the flag.
    return bool(getattr(field, "optional", False))


def _padding(size: int) -> bytes:
    return bytes(-size % ALIGN)


def _little_endian(column: np.ndarray) -> np.ndarray:
    """The column as a contiguous little-endian buffer (no copy on little-endian hosts)."""
    dtype = column.dtype
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and not np.little_endian):
        column = column.astype(dtype.newbyteorder("<"))
    return np.ascontiguousarray(column)


def _dtype_code(dtype: np.dtype) -> str:
    # numpy's array-interface type string with explicit little-endian order ("<i8", "|V16",
    # "|b1", "|O"): readable by numpy, Arrow and by hand.
    return dtype.newbyteorder("<").str


def _json_payload(values: list, name: str) -> bytes:
    try:
        return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise WireError(f"column {name}: value not JSON-serializable: {exc}") from None


def _joined(values: list | dict) -> bytes | None:
    """The values' UTF-8 text joined by NUL; None when one is not a str, holds a NUL or is
    not encodable (those columns go as JSON, which reports the bad value)."""
    try:
        text = _SEP.join(values)
        if text.count(_SEP) != max(len(values) - 1, 0):
            return None
        return text.encode("utf-8")
    except (TypeError, UnicodeEncodeError):
        return None


def _object_pointers(column: np.ndarray) -> np.ndarray:
    """The object addresses a contiguous object array holds, as integers (CPython's id()).
    Only compared, never dereferenced: an identity test at numpy speed."""
    size = column.shape[0] * column.itemsize
    if not size:
        return np.empty(0, np.uintp)
    raw = (ctypes.c_char * size).from_address(column.ctypes.data)
    return np.frombuffer(raw, dtype=np.uintp)


def _code_dtype(values: int) -> np.dtype:
    return np.dtype(np.uint8 if values <= 1 << 8 else np.uint16 if values <= 1 << 16
                    else "<u4")


def _identity_dictionary(column: np.ndarray) -> tuple[np.ndarray, list] | None:
    """(codes, values) when the column holds at most a few distinct *objects* (a sensor's
    vocabulary lookups, a decoded dictionary column, np.full): vectorized, no hashing.
    Equal values held by distinct objects just become repeated dictionary entries."""
    pointers = _object_pointers(column)
    candidates, first = np.unique(pointers[:_SAMPLE], return_index=True)
    if len(candidates) > _MAX_IDENTITY_VALUES or len(candidates) * 2 > len(pointers):
        return None  # many objects, or too few rows for a dictionary to pay
    codes = np.zeros(len(pointers), np.uint8)
    matched = pointers == candidates[0]
    for code in range(1, len(candidates)):
        hit = pointers == candidates[code]
        codes[hit] = code
        matched |= hit
    if not matched.all():
        return None
    return codes, column[first].tolist()


def _value_dictionary(values: list) -> tuple[np.ndarray, list] | None:
    """(codes, distinct values) when few distinct values repeat (by value, hashed)."""
    try:
        sample = values[:_SAMPLE]
        if len(set(sample)) * 4 > len(sample):
            return None
        index = {v: i for i, v in enumerate(dict.fromkeys(values))}
    except TypeError:  # unhashable values (lists): not text
        return None
    if len(index) * 2 > len(values):
        return None
    codes = np.fromiter(map(index.__getitem__, values), _code_dtype(len(index)),
                        count=len(values))
    return codes, list(index)


class _TextDictionary:
    """A text column as distinct values + codes, for encoding any subset of its rows."""

    __slots__ = ("codes", "values", "blob")

    def __init__(self, codes: np.ndarray, values: list, blob: bytes) -> None:
        self.codes = codes.astype(_code_dtype(len(values)), copy=False)
        self.values = values
        self.blob = blob

    def payload(self, rows: np.ndarray | None) -> bytes:
        codes = self.codes if rows is None else self.codes[rows]
        head = _DICT_HEAD.pack(len(self.values), self.codes.itemsize)
        raw = memoryview(_little_endian(codes).view(np.uint8))
        return b"".join((head, raw, _padding(len(raw)), self.blob))

    def size(self, rows: int) -> int:
        raw = rows * self.codes.itemsize
        return _DICT_HEAD.size + raw + (-raw % ALIGN) + len(self.blob)


class BatchEncoder:
    """One batch prepared for encoding: text columns factorized (or joined) once, then any
    subset of rows (fusion's per-partition sub-batches, size-limited chunks) is encoded
    from that without redoing the per-value work."""

    def __init__(self, batch: EventBatch, format_version: int = FORMAT_VERSION) -> None:
        """`format_version` 1 writes every object column as JSON, for readers of the
        previous release during an upgrade (docs/wire-format.md, Versioning)."""
        spec = KINDS.get(batch.kind)
        if spec is None:
            raise WireError(f"cannot encode unknown event kind {batch.kind!r}")
        if format_version not in READABLE_FORMATS:
            raise WireError(f"cannot write wire format version {format_version}")
        self.format_version = format_version
        self.spec = spec
        self.kind = batch.kind
        self.rows = rows = len(batch)
        # per column: (name, directory prefix, encoding, prepared data, full payload or None)
        self._columns: list[tuple[str, bytes, int, object, bytes | None]] = []
        for field in spec.fields:
            column = batch.columns.get(field.column)
            if column is None and _optional(field):
                continue  # written before the column existed: readers fill it
            if column is None or column.dtype != field.dtype or column.shape != (rows,):
                raise WireError(f"cannot encode {spec.name}.{field.column}: missing, wrong "
                                f"dtype or wrong length (run schema.validate_batch first)")
            name, code = field.column.encode("ascii"), _dtype_code(field.dtype).encode("ascii")
            prefix = bytes([len(name)]) + name + bytes([len(code)]) + code
            if field.dtype.kind == "O" and format_version == 1:
                self._columns.append((field.column, prefix, ENC_JSON, column,
                                      _json_payload(column.tolist(), field.column)))
            elif field.dtype.kind == "O":
                self._columns.append((field.column, prefix,
                                      *self._prepare_object(field, column)))
            else:
                self._columns.append((field.column, prefix, ENC_RAW, _little_endian(column),
                                      None))

    @staticmethod
    def _prepare_object(field: Field, column: np.ndarray) -> tuple[int, object, bytes | None]:
        column = np.ascontiguousarray(column)
        if field.column not in _NESTED_COLUMNS and not len(column):
            return ENC_TEXT, column, b""
        if field.column not in _NESTED_COLUMNS:
            found = _identity_dictionary(column)
            values = None
            if found is None:
                values = column.tolist()
                found = _value_dictionary(values)
            if found is not None:
                codes, distinct = found
                blob = _joined(distinct)
                if blob is not None:
                    return ENC_DICT, _TextDictionary(codes, distinct, blob), None
            text = _joined(values if values is not None else column.tolist())
            if text is not None:
                return ENC_TEXT, column, text
        return ENC_JSON, column, _json_payload(column.tolist(), field.column)

    @staticmethod
    def _payload(name: str, encoding: int, data, full: bytes | None,
                 rows: np.ndarray | None) -> bytes | memoryview:
        if encoding == ENC_RAW:
            part = data if rows is None else data[rows]
            return memoryview(part.view(np.uint8))
        if rows is None and full is not None:
            return full
        if encoding == ENC_DICT:
            if rows is None or len(data.values) <= len(rows):
                return data.payload(rows)
            # a few rows of a column with many distinct values: their text is smaller
            return _SEP.join([data.values[c] for c in data.codes[rows].tolist()]).encode()
        values = data[rows].tolist()
        if encoding == ENC_TEXT:
            return _SEP.join(values).encode("utf-8")  # checked for the whole column
        return _json_payload(values, name)

    @staticmethod
    def _encoding_for(encoding: int, data, rows: np.ndarray | None) -> int:
        if encoding == ENC_DICT and rows is not None and len(data.values) > len(rows):
            return ENC_TEXT
        return encoding

    def encode(self, rows: np.ndarray | None = None) -> bytes:
        """The message of `rows` (an integer index, in that order), all rows when None."""
        count = self.rows if rows is None else len(rows)
        kind_name = self.spec.name.encode("ascii")
        directory: list[bytes] = []
        payloads: list[bytes | memoryview] = []
        for name, prefix, encoding, data, full in self._columns:
            payload = self._payload(name, encoding, data, full, rows)
            directory.append(prefix + _ENTRY.pack(self._encoding_for(encoding, data, rows),
                                                  len(payload)))
            payloads.append(payload)
        head = _HEADER.pack(MAGIC, self.format_version, 0, SCHEMA_VERSION, count,
                            len(directory), len(kind_name)) + kind_name + b"".join(directory)
        parts: list[bytes | memoryview] = [head, _padding(len(head))]
        for payload in payloads:
            parts += (payload, _padding(len(payload)))
        return b"".join(parts)  # the single copy of the column buffers

    def estimate(self, rows: int) -> int:
        """About the encoded size of `rows` rows: exact for raw and dictionary columns,
        text and JSON columns in proportion to the whole batch's."""
        size = _HEADER.size + len(self.kind) + sum(len(c[1]) + _ENTRY.size
                                                   for c in self._columns)
        size += -size % ALIGN
        for _name, _prefix, encoding, data, full in self._columns:
            if encoding == ENC_RAW:
                payload = rows * data.itemsize
            elif encoding == ENC_DICT:
                payload = data.size(rows)
            else:
                payload = len(full) * rows // max(self.rows, 1)
            size += payload + (-payload % ALIGN)
        return size

    def encode_chunks(self, max_bytes: int, rows: np.ndarray | None = None) -> list[bytes]:
        """Messages of at most `max_bytes` each for `rows` (all rows when None): consecutive
        row ranges, in order."""
        count = self.rows if rows is None else len(rows)
        estimate = self.estimate(count)
        if count > 1 and estimate > max_bytes * 1.25:  # clearly too big: cut before encoding
            pieces = min(count, -(-estimate // max_bytes) + 1)
        else:
            data = self.encode(rows)
            if len(data) <= max_bytes:
                return [data]
            if count <= 1:
                raise WireError(f"one {self.kind} event encodes to {len(data)} bytes, "
                                f"over the {max_bytes}-byte message limit")
            pieces = min(count, -(-len(data) // max_bytes) + 1)
        index = np.arange(count) if rows is None else np.asarray(rows)
        bounds = np.linspace(0, count, pieces + 1).astype(np.int64)
        out: list[bytes] = []
        for start, stop in itertools.pairwise(bounds.tolist()):
            if stop > start:
                out += self.encode_chunks(max_bytes, index[start:stop])
        return out


def encode(batch: EventBatch, format_version: int = FORMAT_VERSION) -> bytes:
    """EventBatch -> one message. The batch must match its kind's schema (columns, dtypes)."""
    return BatchEncoder(batch, format_version).encode()


def encode_chunks(batch: EventBatch, max_bytes: int) -> list[bytes]:
    """Encode `batch` as one or more messages of at most `max_bytes` each (row ranges, in
    order), for brokers with a message size limit (Kafka's default is 1 MiB)."""
    return BatchEncoder(batch).encode_chunks(max_bytes)


# --- decode ---------------------------------------------------------------------------------

class _Reader:
    """Bounds-checked cursor over the message."""

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.pos = 0

    def take(self, size: int, what: str) -> memoryview:
        end = self.pos + size
        if end > len(self.view):
            raise WireError(f"truncated message: {what} needs {size} bytes at offset "
                            f"{self.pos}, {len(self.view) - self.pos} left")
        out = self.view[self.pos:end]
        self.pos = end
        return out

    def text(self, what: str) -> str:
        size = self.take(1, what)[0]
        raw = bytes(self.take(size, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise WireError(f"{what} is not ASCII: {raw[:40]!r}") from None


def _as_view(data: bytes | bytearray | memoryview) -> memoryview:
    try:
        view = memoryview(data)
    except TypeError:
        raise WireError(f"message is {type(data).__name__}, not bytes") from None
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _read_header(reader: _Reader) -> tuple[WireHeader, int, EventKind]:
    if len(reader.view) < 4 or bytes(reader.view[:4]) != MAGIC:
        raise WireError(f"bad magic {bytes(reader.view[:4])!r}, expected {MAGIC!r} "
                        f"(not a cirt-sa batch)")
    magic, fmt, _flags, schema, rows, ncols, kind_len = _HEADER.unpack(
        reader.take(_HEADER.size, "header"))
    if fmt not in READABLE_FORMATS:
        raise WireError(f"unsupported wire format version {fmt} (this reader: "
                        f"{', '.join(map(str, READABLE_FORMATS))})")
    if schema != SCHEMA_VERSION:
        raise WireError(f"unsupported schema version {schema} (this reader: {SCHEMA_VERSION})")
    kind_raw = bytes(reader.take(kind_len, "kind name"))
    spec = KINDS.get(kind_raw.decode("ascii", "replace"))
    if spec is None:
        raise WireError(f"unknown event kind {kind_raw[:40]!r}")
    return WireHeader(spec.name, rows, schema, fmt), ncols, spec


def read_header(data: bytes | bytearray | memoryview) -> WireHeader:
    """Kind and row count of a message without decoding its columns (for routing)."""
    header, _, _ = _read_header(_Reader(_as_view(data)))
    return header


def _json_column(payload: memoryview, rows: int, name: str) -> np.ndarray:
    try:
        with gc_paused():
            values = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"column {name}: invalid JSON: {exc}") from None
    if type(values) is not list or len(values) != rows:
        raise WireError(f"column {name}: expected a JSON array of {rows} values")
    if name in _NESTED_COLUMNS:
        items = list(itertools.chain.from_iterable(values)) \
            if set(map(type, values)) <= {list} else [None]
        keys = _NESTED_COLUMNS[name]
        ok = set(map(type, items)) <= {dict} and set(map(frozenset, items)) <= {keys}
        expected = f"lists of objects with keys {sorted(keys)}"
    else:
        ok = set(map(type, values)) <= {str}
        expected = "strings"
    if not ok:
        raise WireError(f"column {name}: values must be {expected}")
    # fromiter keeps each row's list as one object (np.array would build a 2-d array).
    return np.fromiter(values, dtype=object, count=rows)


def _split_text(payload: memoryview, count: int, name: str, what: str) -> list[str]:
    """`count` strings from NUL-joined UTF-8 (none from an empty payload when count is 0)."""
    try:
        text = str(payload, "utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"column {name}: {what} not UTF-8: {exc}") from None
    if not count:
        if text:
            raise WireError(f"column {name}: {what} holds text, expected no values")
        return []
    values = text.split(_SEP)
    if len(values) != count:
        raise WireError(f"column {name}: {what} holds {len(values)} values, expected {count}")
    return values


def _text_column(payload: memoryview, rows: int, name: str) -> np.ndarray:
    return np.fromiter(_split_text(payload, rows, name, "text"), dtype=object, count=rows)


def _dict_column(payload: memoryview, rows: int, name: str) -> np.ndarray:
    if len(payload) < _DICT_HEAD.size:
        raise WireError(f"column {name}: dictionary header needs {_DICT_HEAD.size} bytes")
    count, width = _DICT_HEAD.unpack_from(payload)
    if width not in (1, 2, 4):
        raise WireError(f"column {name}: dictionary code width {width}, expected 1, 2 or 4")
    codes_end = _DICT_HEAD.size + rows * width
    values_at = codes_end + (-codes_end % ALIGN)
    if values_at > len(payload):
        raise WireError(f"column {name}: {len(payload)} bytes cannot hold {rows} codes")
    if rows and not count:
        raise WireError(f"column {name}: {rows} codes into an empty dictionary")
    codes = np.frombuffer(payload, dtype=f"<u{width}", count=rows, offset=_DICT_HEAD.size)
    if rows and int(codes.max()) >= count:
        raise WireError(f"column {name}: code {int(codes.max())} beyond {count} values")
    values = np.fromiter(_split_text(payload[values_at:], count, name, "dictionary"),
                         dtype=object, count=count)
    return values.take(codes)


_OBJECT_DECODERS = {ENC_JSON: _json_column, ENC_TEXT: _text_column, ENC_DICT: _dict_column}


def _read_directory(reader: _Reader, ncols: int) -> list[tuple[str, int, str, int]]:
    entries = []
    for _ in range(ncols):
        name = reader.text("column name")
        code = reader.text("dtype")
        encoding, length = _ENTRY.unpack(reader.take(_ENTRY.size, "column entry"))
        entries.append((name, encoding, code, length))
    reader.take(-reader.pos % ALIGN, "header padding")
    return entries


def _allowed_encodings(field: Field, fmt: int) -> tuple[int, ...]:
    if field.dtype.kind != "O":
        return (ENC_RAW,)
    if fmt == 1 or field.column in _NESTED_COLUMNS:
        return (ENC_JSON,)
    return (ENC_JSON, ENC_TEXT, ENC_DICT)


def _check_entries(spec: EventKind, header: WireHeader,
                   entries: list[tuple[str, int, str, int]]) -> None:
    """Names, dtypes, encodings and raw lengths against the schema, before any decoding."""
    rows = header.rows
    seen: set[str] = set()
    for name, encoding, code, length in entries:
        try:
            field = spec.field(name)
        except KeyError:
            raise WireError(f"{spec.name}: unexpected column {name[:40]!r}") from None
        if name in seen:
            raise WireError(f"{spec.name}: column {name!r} appears twice")
        seen.add(name)
        if code != _dtype_code(field.dtype):
            raise WireError(f"{spec.name}.{name}: dtype {code!r}, schema says "
                            f"{_dtype_code(field.dtype)!r}")
        allowed = _allowed_encodings(field, header.format_version)
        if encoding not in allowed:
            raise WireError(f"{spec.name}.{name}: encoding {encoding}, expected "
                            f"{' or '.join(str(e) for e in allowed)} in format "
                            f"{header.format_version}")
        if encoding == ENC_RAW and length != rows * field.dtype.itemsize:
            raise WireError(f"{spec.name}.{name}: {length} bytes for {rows} rows of "
                            f"{field.dtype.itemsize} bytes")
    missing = [f.column for f in spec.fields if f.column not in seen and not _optional(f)]
    if missing:
        raise WireError(f"{spec.name}: missing columns {missing[:5]}")


def decode(data: bytes | bytearray | memoryview) -> EventBatch:
    """One message -> EventBatch. Raw columns are read-only views into `data`.
    Raises WireError (only) when the message is not a valid batch of a known kind."""
    view = _as_view(data)
    reader = _Reader(view)
    header, ncols, spec = _read_header(reader)
    rows = header.rows
    required = sum(not _optional(f) for f in spec.fields)
    if not required <= ncols <= len(spec.fields):
        raise WireError(f"{spec.name}: {ncols} columns, schema has {len(spec.fields)}"
                        + (f" ({required} required)" if required != len(spec.fields) else ""))
    entries = _read_directory(reader, ncols)
    # The whole layout is checked before anything is allocated: a lying length or row count
    # must not cost memory (raw lengths must equal rows * itemsize, and all must fit).
    expected_total = reader.pos + sum(length + (-length % ALIGN) for *_, length in entries)
    if expected_total != len(view):
        raise WireError(f"lengths do not add up: directory describes {expected_total} bytes, "
                        f"message has {len(view)}")
    _check_entries(spec, header, entries)
    columns: dict[str, np.ndarray] = {}
    for name, encoding, _code, length in entries:
        field = spec.field(name)
        payload = reader.take(length, f"column {name}")
        reader.take(-length % ALIGN, f"column {name} padding")
        if field.dtype.kind == "O":
            columns[name] = _OBJECT_DECODERS[encoding](payload, rows, name)
            continue
        column = np.frombuffer(payload, dtype=field.dtype.newbyteorder("<"), count=rows)
        if field.dtype.kind == "b" and (column.view(np.uint8) > 1).any():
            raise WireError(f"{spec.name}.{name}: boolean bytes other than 0/1")
        # Native dtype on big-endian hosts (a copy there; a view on little-endian ones).
        columns[name] = column if column.dtype == field.dtype else column.astype(field.dtype)
    # Schema order; an optional column the writer did not know is filled by EventBatch.
    return EventBatch(spec.name, {f.column: columns[f.column] for f in spec.fields
                                  if f.column in columns})


# --- alerts (sa.alerts): plain ECS JSON, one per message --------------------------------------

def encode_alert(alert: dict) -> bytes:
    """ECS alert dict -> UTF-8 JSON (numpy scalars allowed)."""
    if not isinstance(alert, dict):
        raise WireError(f"alert must be a dict, got {type(alert).__name__}")
    try:
        return orjson.dumps(alert, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise WireError(f"alert not JSON-serializable: {exc}") from None


def decode_alert(data: bytes | bytearray | memoryview) -> dict:
    """UTF-8 JSON object -> dict; anything else is a WireError."""
    try:
        alert = orjson.loads(data)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise WireError(f"alert is not valid JSON: {exc}") from None
    if not isinstance(alert, dict):
        raise WireError(f"alert must be a JSON object, got {type(alert).__name__}")
    return alert
