"""Private spool directories: a killed service's directory is removed by the next service
that makes one; a live one's never (pipeline/private_spool.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.private_spool import private_spool_dir, remove_orphans, remove_private_spool

REPO = Path(__file__).resolve().parent.parent

# A service in another process: makes its private spool, says where, then waits.
_CHILD = ("import sys; from pipeline.private_spool import private_spool_dir; "
          "print(private_spool_dir('correlation'), flush=True); sys.stdin.read()")


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _child(temp_root: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "TMPDIR": str(temp_root), "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    path = Path(child.stdout.readline().strip())
    assert path.is_dir() and path.parent.parent == temp_root
    (path / "00000000000000000001.seg").write_bytes(b"spooled")  # what a spool holds
    return child, path


def test_killed_owner_directory_removed_live_one_kept(temp_root: Path) -> None:
    killed, killed_dir = _child(temp_root)
    alive, alive_dir = _child(temp_root)
    try:
        killed.send_signal(signal.SIGKILL)  # no finally runs: the directory stays behind
        killed.wait(30)
        assert killed_dir.is_dir()
        mine = Path(private_spool_dir("fusion"))
        assert not killed_dir.exists()  # its lock was free: removed
        assert alive_dir.is_dir() and mine.is_dir()  # locks held: kept
        assert (alive_dir / "00000000000000000001.seg").read_bytes() == b"spooled"
        # this process's own directory survives a sweep of this process
        assert remove_orphans(mine.parent) == []
        remove_private_spool(str(mine))
        assert not mine.exists()
    finally:
        alive.stdin.close()
        alive.wait(30)
    # the child ended normally without removing its directory (as a crash would): swept
    assert remove_orphans(alive_dir.parent) == [alive_dir.name]


def test_directory_without_owner_file_left_alone(temp_root: Path) -> None:
    mine = Path(private_spool_dir("health"))
    stranger = mine.parent / "not-a-spool"
    stranger.mkdir()
    assert remove_orphans(mine.parent) == []
    assert stranger.is_dir()
    remove_private_spool(str(mine))
