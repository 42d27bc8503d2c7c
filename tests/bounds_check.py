"""Test code run under NUMBA_BOUNDSCHECK (numba checks no index by default): a fresh process
with its own numba cache dir, so the unchecked machine code cached in __pycache__ is not
reused and every kernel is compiled there with the checks on. Used by the bounds tests of
the TLS kernels (test_tls_kernels) and of the whole sensor (test_sensor_bounds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

TESTS = Path(__file__).parent


def run_checked(script: str, args: list[str], tmp_path: Path,
                timeout_s: float) -> subprocess.CompletedProcess:
    """`python -c script *args` in tmp_path with the checks on (faulthandler: a crash in a
    kernel prints where); tests/ and the repo on its path."""
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "numba"),
               PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO),
                                           os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", script, *args],
                          env=env, capture_output=True, text=True, timeout=timeout_s,
                          cwd=tmp_path)


def require_checks_on() -> None:
    """In the checked process: a kernel compiled there raises on an out-of-range read (the
    flag took effect; a run without it would test nothing)."""
    from pipeline.jit import njit

    @njit(cache=False)  # compiled here, under the checks
    def probe(a: np.ndarray, i: int) -> int:
        return a[i]

    with pytest.raises(IndexError):
        probe(np.zeros(1, np.uint8), 3)
