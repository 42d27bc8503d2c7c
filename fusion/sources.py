"""Where external records come from: files (plain or gzip), directories, growing files
(--follow), Kafka topics. A source yields `AdapterResult` chunks (a few thousand lines each),
so memory stays bounded whatever the file size.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fusion.adapters import ZEEK_LOGS, AdapterResult, EveAdapter, ZeekAdapter, columns_from_tsv

CHUNK_LINES = 8192


def open_lines(path: str | os.PathLike):
    """Binary line iterator; gzip detected by magic bytes, not by name."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _chunks(lines, size: int = CHUNK_LINES) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def eve_file(path: str | os.PathLike, adapter: EveAdapter) -> Iterator[AdapterResult]:
    with open_lines(path) as fh:
        for chunk in _chunks(fh):
            yield adapter.convert(chunk)


def zeek_log_type(path: str | os.PathLike) -> str | None:
    """conn.log, conn.00:00:00-01:00:00.log.gz, elastic-conn.json -> 'conn'."""
    name = Path(path).name.lower()
    stem = name.split(".", 1)[0]
    if stem in ZEEK_LOGS:
        return stem
    for log in ZEEK_LOGS:
        if stem.endswith(("-" + log, "_" + log)):
            return log
    return None


def zeek_file(path: str | os.PathLike, adapter: ZeekAdapter) -> Iterator[AdapterResult]:
    """One Zeek log, JSON or TSV (told apart by a leading '#separator' header)."""
    log = zeek_log_type(path)
    with open_lines(path) as fh:
        first = fh.readline()
        if first.startswith(b"#separator"):
            yield from _zeek_tsv(first, fh, adapter, log)
            return
        for chunk in _chunks(_prepend(first, fh)):
            yield adapter.convert(chunk, log)


def _prepend(first: bytes, rest) -> Iterator[bytes]:
    yield first
    yield from rest


def _zeek_tsv(first: bytes, fh, adapter: ZeekAdapter, log: str | None) -> Iterator[AdapterResult]:
    sep = first.split(b" ", 1)[1].strip().decode("unicode_escape") if b" " in first else "\t"
    meta = {"set_separator": ",", "empty_field": "(empty)", "unset_field": "-"}
    fields: list[str] = []
    types: list[str] | None = None
    # data lines of the chunk, CR/LF stripped: split into rows only by the general path
    originals: list[bytes] = []

    def flush() -> AdapterResult:
        result = adapter.convert_tsv(originals, fields, types, meta, sep, log)
        if result is None:
            result = _tsv_general(originals, sep, fields, types, meta, adapter, log)
        originals.clear()
        return result

    for raw in fh:
        if raw[:1] == b"#":  # a header line (the general path decoded it the same way)
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            key, _, value = line[1:].partition(sep)
            if key in meta:
                meta[key] = value
            elif key == "fields":
                if originals:
                    yield flush()
                fields = value.split(sep)
            elif key == "types":
                types = value.split(sep)
            elif key == "path":
                log = value
            continue
        line = raw.rstrip(b"\r\n")
        if not line:
            continue
        originals.append(line)
        if len(originals) >= CHUNK_LINES:
            yield flush()
    if originals:
        yield flush()


def _tsv_general(originals: list[bytes], sep: str, fields: list[str], types: list[str] | None,
                 meta: dict[str, str], adapter: ZeekAdapter, log: str | None) -> AdapterResult:
    """The general TSV path: rows split in Python, converted to Zeek-JSON-shaped records
    (columns_from_tsv) and mapped by ZeekAdapter.convert_records; defines every result."""
    result = AdapterResult(records=len(originals))
    good_rows, good_orig = [], []
    for orig in originals:
        row = orig.decode("utf-8", "replace").split(sep)
        if len(row) != len(fields):
            result.reasons["TSV: wrong column count"] += 1
            result.deadletter.append({"stage": "fusion", "source": "zeek", "kind": None,
                                      "reason": "TSV: wrong column count",
                                      "original": orig.decode("utf-8", "replace")})
        else:
            good_rows.append(row)
            good_orig.append(orig)
    records = columns_from_tsv(fields, good_rows, meta["set_separator"],
                               meta["empty_field"], meta["unset_field"], types)
    adapter.convert_records(records, good_orig, log, result)
    return result


def zeek_paths(path: str | os.PathLike) -> list[str]:
    """A file, or a directory's Zeek logs with x509/files first (their certificate SHA1s
    are joined to ssl records by file id)."""
    p = Path(path)
    if not p.is_dir():
        return [str(p)]
    files = sorted(str(f) for f in p.iterdir() if f.is_file() and zeek_log_type(f))
    order = {"x509": 0, "files": 1}
    return sorted(files, key=lambda f: (order.get(zeek_log_type(f) or "", 2), f))


def follow_lines(path: str | os.PathLike, stop: Callable[[], bool], poll_s: float = 0.2,
                 idle_chunk_s: float = 1.0) -> Iterator[list[bytes]]:
    """Tail a growing file: yield chunks of complete lines as they are appended (a partial
    last line waits for its newline); stops when `stop()` says so. Follows truncation
    (log rotation by copy-truncate) by starting over."""
    pending = b""
    chunk: list[bytes] = []
    last_yield = time.monotonic()
    with open(path, "rb") as fh:
        while True:
            data = fh.read(1 << 20)
            if data:
                pending += data
                *lines, pending = pending.split(b"\n")
                chunk += lines
            if chunk and (len(chunk) >= CHUNK_LINES or not data
                          or time.monotonic() - last_yield >= idle_chunk_s):
                yield chunk
                chunk = []
                last_yield = time.monotonic()
            if not data:
                if stop():
                    return
                if os.path.getsize(path) < fh.tell():  # truncated: read from the start
                    fh.seek(0)
                    pending = b""
                time.sleep(poll_s)


def kafka_eve_records(consumer, adapter: EveAdapter, stop: Callable[[], bool],
                      timeout_s: float = 1.0) -> Iterator[tuple[AdapterResult, list]]:
    """EVE lines from a Kafka topic (one JSON object per message, what Suricata's and
    Filebeat's Kafka outputs write). Yields (result, records) so the caller commits the
    records once the result's events are delivered (at-least-once)."""
    while not stop():
        records = consumer.poll_batch(timeout_s)
        if records:
            yield adapter.convert([r.value for r in records]), records
