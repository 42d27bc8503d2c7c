"""Private spool directories of the Kafka services that are given no `spool_dir`.

Fusion, correlation and the health shipper spool only outputs whose inputs are not committed
yet: after a crash the next owner of the partitions derives them again from Kafka, so their
spool may be private to a process and go with it. A process that stops normally removes its
own directory; one that was killed (SIGKILL, OOM killer, power cut) cannot, and before this
each such death left a directory with segment files in the temp directory for good.

Every private directory therefore holds an exclusive `flock` on its `.owner` file for the
life of the process. The next service to make a private spool removes every sibling whose
lock it can take: its owner is gone. A lock, not a pid check, because the kernel drops the
lock when the owner dies whatever pid namespace (container) it ran in, and a recycled pid
cannot keep an orphan alive.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import threading
from pathlib import Path

_OWNER_FILE = ".owner"
_held: dict[str, int] = {}  # directory -> descriptor holding its lock (this process's)
_lock = threading.Lock()


def spool_parent() -> Path:
    """The per-user directory under the temp directory that holds the private spools."""
    parent = Path(tempfile.gettempdir()) / f"cirtsa-spool-{os.getuid()}"
    parent.mkdir(mode=0o700, exist_ok=True)
    return parent


def private_spool_dir(service: str) -> str:
    """A new private spool directory for `service`, locked by this process; orphans of dead
    processes are removed first."""
    parent = spool_parent()
    remove_orphans(parent)
    path = tempfile.mkdtemp(prefix=f"{service}-", dir=parent)
    # locked before it is named .owner: a cleaner never sees this owner file unlocked
    claiming = os.path.join(path, ".claiming")
    descriptor = os.open(claiming, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(claiming, os.path.join(path, _OWNER_FILE))
    with _lock:
        _held[path] = descriptor
    return path


def remove_private_spool(path: str) -> None:
    """Remove a directory made by private_spool_dir (its process is done with it)."""
    shutil.rmtree(path, ignore_errors=True)
    with _lock:
        descriptor = _held.pop(path, None)
    if descriptor is not None:
        os.close(descriptor)


def remove_orphans(parent: Path) -> list[str]:
    """Remove the spool directories under `parent` whose owner lock is free (their process
    is gone); the names removed. A directory without an owner file is one being made right
    now (mkdtemp, then the lock) or not ours: left alone."""
    removed = []
    for entry in parent.iterdir():
        # this process's own are locked by their own descriptors: a second one is refused
        if _owner_gone(entry / _OWNER_FILE):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _owner_gone(owner: Path) -> bool:
    try:
        descriptor = os.open(owner, os.O_RDWR)
    except OSError:  # no owner file (being made, or not a spool), or not readable
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # held: its process is alive
    finally:
        os.close(descriptor)  # also releases the lock taken, if it was
    return True
