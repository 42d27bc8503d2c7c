"""The Kafka wire format: one message carries one whole columnar EventBatch.

Layout (little-endian, documented byte by byte in docs/wire-format.md):

    header    magic "CSAB", format version, schema version, row count, kind, column count
    directory one entry per column: name, encoding, numpy dtype string, payload length
    payloads  8-byte aligned, in directory order

Numeric and 16-byte address columns travel as their raw buffers and decode zero-copy
(`np.frombuffer`, read-only views into the message). Object columns (text, DNS answers)
travel as one JSON array each (orjson). The choice is measured in bench/wire_format.py.

Decoding trusts nothing: every length is checked against the buffer before anything is
allocated, so a damaged or hostile message costs at most its own size and ends in a
`WireError` with a one-line reason (for the dead-letter topic), never another exception.
"""

from __future__ import annotations

import gc
import itertools
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import orjson

from pipeline.schema import KINDS, SCHEMA_VERSION, EventBatch, EventKind

MAGIC = b"CSAB"  # cirt-sa batch
FORMAT_VERSION = 1
ALIGN = 8

ENC_RAW = 0  # fixed-width little-endian buffer, rows * itemsize bytes
ENC_JSON = 1  # UTF-8 JSON array with one element per row

# magic, format version, flags (reserved, 0), schema version, row count, column count,
# kind name length
_HEADER = struct.Struct("<4sBBHIHB")
_ENTRY = struct.Struct("<BQ")  # encoding, payload length (after name and dtype strings)

# Object columns whose rows are lists of dicts with exactly these keys; every other object
# column holds str.
_NESTED_COLUMNS = {"answers": frozenset({"name", "type", "class", "ttl", "data"})}


class WireError(ValueError):
    """A message is not a valid encoded batch/alert; the text is a one-line reason."""


@dataclass(frozen=True)
class WireHeader:
    kind: str
    rows: int
    schema_version: int
    format_version: int


# --- encode ---------------------------------------------------------------------------------

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


def _json_payload(column: np.ndarray, name: str) -> bytes:
    try:
        return orjson.dumps(column.tolist(), option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise WireError(f"column {name}: value not JSON-serializable: {exc}") from None


def encode(batch: EventBatch) -> bytes:
    """EventBatch -> one message. The batch must match its kind's schema (columns, dtypes)."""
    spec = KINDS.get(batch.kind)
    if spec is None:
        raise WireError(f"cannot encode unknown event kind {batch.kind!r}")
    rows = len(batch)
    kind_name = spec.name.encode("ascii")
    directory: list[bytes] = []
    payloads: list[bytes | memoryview] = []
    for field in spec.fields:
        column = batch.columns.get(field.column)
        if column is None or column.dtype != field.dtype or column.shape != (rows,):
            raise WireError(f"cannot encode {spec.name}.{field.column}: missing, wrong dtype "
                            f"or wrong length (run schema.validate_batch first)")
        if field.dtype.kind == "O":
            encoding, payload = ENC_JSON, _json_payload(column, field.column)
        else:
            encoding, payload = ENC_RAW, memoryview(_little_endian(column).view(np.uint8))
        name, code = field.column.encode("ascii"), _dtype_code(field.dtype).encode("ascii")
        directory.append(bytes([len(name)]) + name + bytes([len(code)]) + code
                         + _ENTRY.pack(encoding, len(payload)))
        payloads.append(payload)
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, SCHEMA_VERSION, rows, len(spec.fields),
                        len(kind_name)) + kind_name + b"".join(directory)
    parts: list[bytes | memoryview] = [head, _padding(len(head))]
    for payload in payloads:
        parts += (payload, _padding(len(payload)))
    return b"".join(parts)  # the single copy of the column buffers


def encode_chunks(batch: EventBatch, max_bytes: int) -> list[bytes]:
    """Encode `batch` as one or more messages of at most `max_bytes` each (row ranges, in
    order), for brokers with a message size limit (Kafka's default is 1 MiB)."""
    data = encode(batch)
    rows = len(batch)
    if len(data) <= max_bytes or rows <= 1:
        if len(data) > max_bytes:
            raise WireError(f"one {batch.kind} event encodes to {len(data)} bytes, "
                            f"over the {max_bytes}-byte message limit")
        return [data]
    # Split proportionally to the overshoot, then recurse on any piece still too big.
    pieces = min(rows, -(-len(data) // max_bytes) + 1)
    bounds = np.linspace(0, rows, pieces + 1).astype(np.int64)
    out: list[bytes] = []
    for start, stop in itertools.pairwise(bounds.tolist()):
        if stop > start:
            out += encode_chunks(batch.take(np.arange(start, stop)), max_bytes)
    return out


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
    if fmt != FORMAT_VERSION:
        raise WireError(f"unsupported wire format version {fmt} (this reader: {FORMAT_VERSION})")
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


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Building tens of thousands of small dicts/lists triggers repeated cyclic-GC passes that
    # find nothing (the objects are acyclic) and can double decode time; msgpack recommends
    # the same. The previous state is restored.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _object_column(payload: memoryview, rows: int, name: str) -> np.ndarray:
    try:
        with _gc_paused():
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


def _read_directory(reader: _Reader, ncols: int) -> list[tuple[str, int, str, int]]:
    entries = []
    for _ in range(ncols):
        name = reader.text("column name")
        code = reader.text("dtype")
        encoding, length = _ENTRY.unpack(reader.take(_ENTRY.size, "column entry"))
        entries.append((name, encoding, code, length))
    reader.take(-reader.pos % ALIGN, "header padding")
    return entries


def _check_entries(spec: EventKind, rows: int, entries: list[tuple[str, int, str, int]]) -> None:
    """Names, dtypes, encodings and raw lengths against the schema, before any decoding."""
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
        expected = ENC_JSON if field.dtype.kind == "O" else ENC_RAW
        if encoding != expected:
            raise WireError(f"{spec.name}.{name}: encoding {encoding}, expected {expected}")
        if expected == ENC_RAW and length != rows * field.dtype.itemsize:
            raise WireError(f"{spec.name}.{name}: {length} bytes for {rows} rows of "
                            f"{field.dtype.itemsize} bytes")


def decode(data: bytes | bytearray | memoryview) -> EventBatch:
    """One message -> EventBatch. Raw columns are read-only views into `data`.
    Raises WireError (only) when the message is not a valid batch of a known kind."""
    view = _as_view(data)
    reader = _Reader(view)
    header, ncols, spec = _read_header(reader)
    rows = header.rows
    if ncols != len(spec.fields):
        raise WireError(f"{spec.name}: {ncols} columns, schema has {len(spec.fields)}")
    entries = _read_directory(reader, ncols)
    # The whole layout is checked before anything is allocated: a lying length or row count
    # must not cost memory (raw lengths must equal rows * itemsize, and all must fit).
    expected_total = reader.pos + sum(length + (-length % ALIGN) for *_, length in entries)
    if expected_total != len(view):
        raise WireError(f"lengths do not add up: directory describes {expected_total} bytes, "
                        f"message has {len(view)}")
    _check_entries(spec, rows, entries)
    columns: dict[str, np.ndarray] = {}
    for name, _encoding, _code, length in entries:
        field = spec.field(name)
        payload = reader.take(length, f"column {name}")
        reader.take(-length % ALIGN, f"column {name} padding")
        if field.dtype.kind == "O":
            columns[name] = _object_column(payload, rows, name)
            continue
        column = np.frombuffer(payload, dtype=field.dtype.newbyteorder("<"), count=rows)
        if field.dtype.kind == "b" and (column.view(np.uint8) > 1).any():
            raise WireError(f"{spec.name}.{name}: boolean bytes other than 0/1")
        # Native dtype on big-endian hosts (a copy there; a view on little-endian ones).
        columns[name] = column if column.dtype == field.dtype else column.astype(field.dtype)
    return EventBatch(spec.name, {f.column: columns[f.column] for f in spec.fields})


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
