"""A bounded on-disk FIFO spool: what a producer holds while the broker is unreachable.

DESIGN.md §3: a sensor spools to disk (bounded; oldest-first drop only with a counted,
logged metric) while the broker is unreachable, and drains on recovery.

Layout of the spool directory:
    00000000000000000001.seg ...  append-only segment files of records, in order
    HEAD                          "<segment number> <byte offset>": the first record not yet
                                  acknowledged (written atomically: temp file + rename)

Record: u32 body length, u32 CRC-32 of the body, body = u16 topic length, topic (UTF-8),
i32 key length (-1: no key), key, value. A record whose length or CRC does not check out
ends its segment: a torn write at the tail (crash mid-append) is truncated away on open,
and everything before it is kept.

Draining is peek/ack: `peek()` hands out the oldest records without removing them, `ack()`
removes a record once the broker has acknowledged it. Acks may come out of order; the HEAD
only moves over a contiguous acknowledged prefix, so after a crash the records after the
HEAD are delivered again (at-least-once). The bound counts the bytes from HEAD to the end
of the last segment; on disk the spool can take up to `max_bytes` plus one segment, since
space is reclaimed a segment at a time.

Thread-safe: the producer's delivery callbacks run on the Kafka client's I/O thread.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "interval", "never"]

_RECORD = struct.Struct("<II")  # body length, crc32(body)
_TOPIC = struct.Struct("<H")
_KEY = struct.Struct("<i")
_SEGMENT_SUFFIX = ".seg"
_HEAD_FILE = "HEAD"
MAX_RECORD_BYTES = 1 << 30  # a length field above this is damage, not data


@dataclass(frozen=True)
class SpoolItem:
    seq: int  # position in this process's view of the spool (renumbered on reopen)
    topic: str
    key: bytes | None
    value: bytes


@dataclass
class _Entry:
    seq: int
    segment: int
    offset: int
    size: int  # record bytes including its 8-byte frame
    acked: bool = False


@dataclass
class SpoolStats:
    put: int = 0
    acked: int = 0
    dropped_oldest: int = 0
    dropped_bytes: int = 0
    recovered_truncated_bytes: int = 0  # torn/corrupt bytes cut away on open


def _encode_body(topic: str, key: bytes | None, value: bytes) -> bytes:
    topic_raw = topic.encode("utf-8")
    key_len = -1 if key is None else len(key)
    return b"".join((_TOPIC.pack(len(topic_raw)), topic_raw, _KEY.pack(key_len), key or b"",
                     value))


def _decode_body(body: bytes) -> tuple[str, bytes | None, bytes]:
    (topic_len,) = _TOPIC.unpack_from(body, 0)
    pos = _TOPIC.size + topic_len
    topic = body[_TOPIC.size:pos].decode("utf-8")
    (key_len,) = _KEY.unpack_from(body, pos)
    pos += _KEY.size
    if key_len < 0:
        return topic, None, body[pos:]
    return topic, body[pos:pos + key_len], body[pos + key_len:]


class Spool:
    """Bounded FIFO of (topic, key, value) records in `directory`."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int = 1 << 30,
                 segment_bytes: int = 64 << 20, fsync: FsyncPolicy = "interval",
                 fsync_interval_s: float = 1.0) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync policy must be always, interval or never, not {fsync!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.stats = SpoolStats()
        self._lock = threading.RLock()
        self._entries: deque[_Entry] = deque()
        self._by_seq: dict[int, _Entry] = {}
        self._next_seq = 0
        self._bytes = 0  # from HEAD to the end of the last segment
        self._readers: dict[int, int] = {}  # segment number -> read fd
        self._writer: int | None = None  # fd of the active (last) segment
        self._active = 0
        self._active_size = 0
        self._last_sync = 0.0
        self._open()

    # --- paths and files --------------------------------------------------------------------

    def _segment_path(self, number: int) -> Path:
        return self.directory / f"{number:020d}{_SEGMENT_SUFFIX}"

    def _segments(self) -> list[int]:
        numbers = []
        for path in self.directory.glob(f"*{_SEGMENT_SUFFIX}"):
            try:
                numbers.append(int(path.stem))
            except ValueError:
                continue
        return sorted(numbers)

    def _read_head(self) -> tuple[int, int]:
        path = self.directory / _HEAD_FILE
        try:
            segment, offset = (int(x) for x in path.read_text().split())
            return segment, offset
        except FileNotFoundError:
            return 0, 0
        except (ValueError, OSError) as exc:
            log.warning("spool %s: unreadable HEAD (%s); draining from the oldest segment "
                        "(records may be delivered twice)", self.directory, exc)
            return 0, 0

    def _write_head(self) -> None:
        if self._entries:
            segment, offset = self._entries[0].segment, self._entries[0].offset
        else:
            segment, offset = self._active, self._active_size
        tmp = self.directory / (_HEAD_FILE + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(f"{segment} {offset}\n")
            if self.fsync == "always":
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, self.directory / _HEAD_FILE)

    def _reader(self, segment: int) -> int:
        fd = self._readers.get(segment)
        if fd is None:
            fd = os.open(self._segment_path(segment), os.O_RDONLY)
            self._readers[segment] = fd
        return fd

    # --- recovery ---------------------------------------------------------------------------

    def _scan_segment(self, number: int, head_offset: int) -> None:
        """Index the records of one segment at or after `head_offset`; cut a damaged tail
        away. Scanning starts at 0 so records are framed from the segment's start even if
        HEAD were damaged."""
        path = self._segment_path(number)
        data = path.read_bytes()
        pos = 0
        while pos + _RECORD.size <= len(data):
            length, crc = _RECORD.unpack_from(data, pos)
            end = pos + _RECORD.size + length
            if length > MAX_RECORD_BYTES or end > len(data) or \
                    zlib.crc32(data[pos + _RECORD.size:end]) != crc:
                break
            if pos >= head_offset:
                self._add_entry(number, pos, end - pos)
            pos = end
        if pos < len(data):
            cut = len(data) - pos
            self.stats.recovered_truncated_bytes += cut
            log.warning("spool %s: segment %s has %d damaged bytes at offset %d (torn write); "
                        "truncated, %d earlier records kept", self.directory, path.name, cut,
                        pos, len(self._entries))
            with open(path, "r+b") as fh:
                fh.truncate(pos)

    def _add_entry(self, segment: int, offset: int, size: int) -> _Entry:
        entry = _Entry(self._next_seq, segment, offset, size)
        self._next_seq += 1
        self._entries.append(entry)
        self._by_seq[entry.seq] = entry
        self._bytes += size
        return entry

    def _open(self) -> None:
        head_segment, head_offset = self._read_head()
        segments = self._segments()
        for number in segments:
            if number < head_segment:
                self._segment_path(number).unlink(missing_ok=True)  # fully drained earlier
                continue
            self._scan_segment(number, head_offset if number == head_segment else 0)
        live = [n for n in segments if n >= head_segment]
        self._first_segment = live[0] if live else max(head_segment, 1)
        self._active = live[-1] if live else self._first_segment
        self._active_size = self._segment_path(self._active).stat().st_size if live else 0
        self._writer = os.open(self._segment_path(self._active),
                               os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._write_head()  # HEAD now names a record boundary that exists
        if self._entries:
            log.info("spool %s: %d records (%d bytes) to drain", self.directory,
                     len(self._entries), self._bytes)

    # --- public API -------------------------------------------------------------------------

    def put(self, value: bytes, key: bytes | None, topic: str) -> int:
        """Append a record; returns its seq. Drops the oldest records when over the bound."""
        body = _encode_body(topic, key, value)
        record = _RECORD.pack(len(body), zlib.crc32(body)) + body
        if len(record) > self.max_bytes:
            raise ValueError(f"record of {len(record)} bytes exceeds the spool bound "
                             f"({self.max_bytes} bytes)")
        with self._lock:
            if self._writer is None:
                raise ValueError(f"spool {self.directory} is closed")
            self._make_room(len(record))
            if self._active_size and self._active_size + len(record) > self.segment_bytes:
                self._rotate()
            os.write(self._writer, record)
            entry = self._add_entry(self._active, self._active_size, len(record))
            self._active_size += len(record)
            self.stats.put += 1
            self._maybe_sync()
            return entry.seq

    def peek(self, max_items: int = 1, exclude: Collection[int] = ()) -> list[SpoolItem]:
        """The oldest unacknowledged records (not removed), skipping seqs in `exclude`
        (e.g. those already in flight). Empty once the spool is closed."""
        with self._lock:
            if self._writer is None:
                return []
            picked = []
            for entry in self._entries:
                if len(picked) >= max_items:
                    break
                if not entry.acked and entry.seq not in exclude:
                    picked.append(entry)
            return [self._read(entry) for entry in picked]

    def ack(self, seq: int) -> None:
        """Remove a delivered record. Unknown seqs (already dropped or acked) are ignored, and
        so are acks after close (the record is delivered again by the next run)."""
        with self._lock:
            if self._writer is None:
                return
            entry = self._by_seq.pop(seq, None)
            if entry is None:
                return
            entry.acked = True
            self.stats.acked += 1
            if entry is self._entries[0]:
                self._advance_head()

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_seq)

    @property
    def bytes(self) -> int:
        """Bytes from HEAD to the tail (what the bound counts)."""
        return self._bytes

    def sync(self) -> None:
        with self._lock:
            if self._writer is not None:
                os.fsync(self._writer)
                self._last_sync = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self._writer is None:
                return
            if self.fsync != "never":
                os.fsync(self._writer)
            os.close(self._writer)
            self._writer = None
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------

    def _read(self, entry: _Entry) -> SpoolItem:
        raw = os.pread(self._reader(entry.segment), entry.size, entry.offset)
        topic, key, value = _decode_body(raw[_RECORD.size:])
        return SpoolItem(entry.seq, topic, key, value)

    def _make_room(self, size: int) -> None:
        dropped = dropped_bytes = 0
        while self._entries and self._bytes + size > self.max_bytes:
            entry = self._entries.popleft()
            self._bytes -= entry.size
            if self._by_seq.pop(entry.seq, None) is not None:
                dropped += 1
                dropped_bytes += entry.size
        if dropped:
            self.stats.dropped_oldest += dropped
            self.stats.dropped_bytes += dropped_bytes
            log.warning("spool %s full (%d bytes): dropped the %d oldest records (%d bytes); "
                        "%d dropped in total", self.directory, self.max_bytes, dropped,
                        dropped_bytes, self.stats.dropped_oldest)
            self._advance_head()

    def _advance_head(self) -> None:
        while self._entries and self._entries[0].acked:
            self._bytes -= self._entries.popleft().size
        self._write_head()
        first_live = self._entries[0].segment if self._entries else self._active
        for number in [n for n in self._readers if n < first_live]:
            os.close(self._readers.pop(number))
        while self._first_segment < first_live:
            self._segment_path(self._first_segment).unlink(missing_ok=True)
            self._first_segment += 1

    def _rotate(self) -> None:
        if self.fsync != "never":
            os.fsync(self._writer)
        os.close(self._writer)
        self._active += 1
        self._active_size = 0
        self._writer = os.open(self._segment_path(self._active),
                               os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _maybe_sync(self) -> None:
        if self.fsync == "always" or (
                self.fsync == "interval"
                and time.monotonic() - self._last_sync >= self.fsync_interval_s):
            self.sync()
