"""Rotating-file input: follow a directory of captures written by a ring-buffer capture tool.

Typical writer: `dumpcap -i eth1 -b duration:60 -w /data/ring/eth1.pcapng`, which writes
eth1_00001_20240101120000.pcapng, eth1_00002_20240101120100.pcapng, ... (tcpdump -G / -C
and netsniff-ng rotate similarly). Rules:

- order: file names sorted as text (dumpcap, tcpdump -G with strftime names and -C suffixes
  sort chronologically), ties broken by modification time;
- a file is read only when complete: a later file exists (the writer moved on), or its size
  and mtime have not changed for `settle_s` and no process has it open for writing
  (checked in /proc/*/fd when permitted; otherwise the size rule alone decides);
- progress: after a file's last batch has been processed, its name goes to a small JSON
  state file (written atomically: temp file + rename), so a restart resumes with the next
  file and never re-ingests a finished one. A file interrupted by a crash is read again from
  its start (at-least-once: events of its first part may be sent twice);
- batches of all files go to the caller's one Sensor, so flows span rotations (the flow
  table is not reset between files);
- damaged files (the writer crashed mid-record) are read up to the damage, reported, and
  counted as done; unreadable files are reported and skipped.

`batches()` yields PacketBatch objects; when no file is ready it yields an empty batch every
`poll_s`, so the caller's wall-clock duties (health, flushing) keep running.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sensors.packets import PacketBatch
from sensors.pcap_reader import CaptureError, CaptureReader

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class FileReport:
    """One finished (or skipped) file, for logs and health."""

    path: str
    packets: int = 0
    error: str | None = None  # unreadable: skipped
    damage: str | None = None  # read up to here
    warnings: list[str] = field(default_factory=list)


def empty_batch() -> PacketBatch:
    """A batch without packets (a heartbeat for the caller's clocks)."""
    zero = np.zeros(0, dtype=np.int64)
    return PacketBatch(data=np.zeros(1, dtype=np.uint8), offset=zero,
                       caplen=zero.astype(np.uint32), wirelen=zero.astype(np.uint32), ts_ns=zero,
                       linktype=zero.astype(np.uint16), interface=zero.astype(np.uint16))


def _open_for_writing(path: Path) -> bool | None:
    """True if some process holds `path` open for writing, False if none, None if unknown
    (no /proc, or other users' processes cannot be inspected)."""
    target = os.path.realpath(path)
    unknown = False
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            unknown = True
            continue
        except OSError:
            continue  # the process ended meanwhile
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") != target:
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    flags = next((int(line.split()[1], 8) for line in info
                                  if line.startswith("flags:")), 0)
            except OSError:
                continue
            if flags & (os.O_WRONLY | os.O_RDWR):
                return True
    return None if unknown else False


class RotatingDirectory:
    """Complete capture files of `directory`, in order, once each (see module docstring)."""

    def __init__(self, directory: str | os.PathLike, state_file: str | os.PathLike,
                 pattern: str = "*.pcap*", settle_s: float = 2.0, poll_s: float = 0.5,
                 batch_packets: int = 65536, exit_idle_s: float | None = None,
                 check_writers: bool = True) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(2, "not a directory", str(directory))
        self.state_file = Path(state_file)
        self.pattern = pattern
        self.settle_s = float(settle_s)
        self.poll_s = float(poll_s)
        self.batch_packets = int(batch_packets)
        self.exit_idle_s = exit_idle_s
        self.check_writers = check_writers
        self.done_files: list[FileReport] = []  # finished in this run
        self.last_done: str | None = self._load_state()
        self._seen: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, since)
        self._stopping = False

    # -- state --

    def _load_state(self) -> str | None:
        try:
            state = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.state_file}: unreadable progress state: {exc}") from None
        if state.get("directory") not in (None, str(self.directory.resolve())):
            log.warning("%s: progress state was for %s; starting from the first file",
                        self.state_file, state.get("directory"))
            return None
        return state.get("last_done")

    def _save_state(self, name: str) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        state = {"version": STATE_VERSION, "directory": str(self.directory.resolve()),
                 "last_done": name, "updated": time.time()}
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_file)  # atomic: a crash leaves the old or the new state
        self.last_done = name

    # -- files --

    def pending(self) -> list[Path]:
        """Capture files after the last finished one, in processing order."""
        entries = []
        with os.scandir(self.directory) as scan:
            for entry in scan:
                if (entry.name.startswith(".") or not fnmatch.fnmatch(entry.name, self.pattern)
                        or not entry.is_file()):
                    continue
                if self.last_done is not None and entry.name <= self.last_done:
                    continue
                entries.append((entry.name, entry.stat().st_mtime_ns))
        entries.sort()
        return [self.directory / name for name, _ in entries]

    def is_complete(self, path: Path, later_exists: bool) -> bool:
        """A later file exists, or size/mtime stable for settle_s and no writer has it open."""
        if later_exists:
            return True
        try:
            info = path.stat()
        except FileNotFoundError:
            return False
        now = time.monotonic()
        seen = self._seen.get(path.name)
        if seen is None or seen[:2] != (info.st_size, info.st_mtime_ns):
            self._seen[path.name] = (info.st_size, info.st_mtime_ns, now)
            return False
        if now - seen[2] < self.settle_s:
            return False
        return not (self.check_writers and _open_for_writing(path))

    def stop(self) -> None:
        """End `batches()` after the current batch (safe from a signal handler)."""
        self._stopping = True

    def batches(self) -> Iterator[PacketBatch]:
        idle_since = time.monotonic()
        while not self._stopping:
            files = self.pending()
            ready = [f for i, f in enumerate(files) if self.is_complete(f, i + 1 < len(files))]
            # Only a prefix may be read: never skip ahead of an incomplete file.
            prefix = []
            for f in files:
                if f not in ready:
                    break
                prefix.append(f)
            for path in prefix:
                yield from self._read(path)
                if self._stopping:
                    return
                idle_since = time.monotonic()
            if prefix:
                continue
            if self.exit_idle_s is not None and time.monotonic() - idle_since >= self.exit_idle_s:
                return
            time.sleep(self.poll_s)
            yield empty_batch()

    def _read(self, path: Path) -> Iterator[PacketBatch]:
        report = FileReport(str(path))
        finished = True  # False: stopped inside the file, which is then read again next time
        try:
            with CaptureReader(path, batch_packets=self.batch_packets) as reader:
                for batch in reader.batches():
                    yield batch  # resumes once the caller has processed it
                    if self._stopping:
                        finished = False
                        break
                report.packets = reader.packets
                report.damage = str(reader.damage) if reader.damage else None
                report.warnings = list(reader.warnings)
        except CaptureError as exc:
            report.error = str(exc)
        except FileNotFoundError:  # removed by the ring writer before we got to it
            report.error = f"{path}: removed before it was read"
        if finished:
            self._save_state(path.name)
            self._seen.pop(path.name, None)
            self.done_files.append(report)
            if report.error:
                log.warning("%s", report.error)
            if report.damage:
                log.warning("%s", report.damage)
