"""The kernel cache stamp covers a kernel's project imports (pipeline/jit.py).

numba alone keys a cached kernel to its own file's text: a kernel that calls a kernel of
another module kept stale machine code after that module changed. These tests build a tiny
project tree (a copy of pipeline/jit.py plus two modules) and check both the dependency walk
and, in fresh processes, that an edit of the called module reaches the caller.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pipeline.jit as jit
from pipeline.jit import dependency_files

CALLER = """\
from pipeline.jit import njit
from sensors.callee import (
    step,
)


@njit
def run(x):
    return step(x)
"""

CALLEE = """\
from pipeline.jit import njit


@njit
def step(x):
    return x + {amount}
"""


def _tree(root: Path, amount: int) -> None:
    for package in ("pipeline", "sensors"):
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
    shutil.copy(jit.__file__, root / "pipeline" / "jit.py")
    (root / "sensors" / "caller.py").write_text(CALLER)
    (root / "sensors" / "callee.py").write_text(CALLEE.format(amount=amount))


def _run(root: Path) -> int:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = str(root)
    out = subprocess.run([sys.executable, "-c", "from sensors.caller import run; print(run(1))"],
                         cwd=root, env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_dependency_files_follow_project_imports(tmp_path: Path) -> None:
    _tree(tmp_path, 1)
    (tmp_path / "sensors" / "other.py").write_text("import numpy\nimport os.path\n")
    (tmp_path / "sensors" / "callee.py").write_text(
        CALLEE.format(amount=1) + "import sensors.other\n")
    deps = dependency_files(tmp_path / "sensors" / "caller.py", tmp_path, ("sensors", "pipeline"))
    names = [str(p.relative_to(tmp_path)) for p in deps]
    # the parenthesised import, the callee's plain import (transitive), not numpy or os
    assert names == ["pipeline/jit.py", "sensors/callee.py", "sensors/caller.py",
                     "sensors/other.py"]


def test_dependency_files_of_a_package_import(tmp_path: Path) -> None:
    _tree(tmp_path, 1)
    (tmp_path / "sensors" / "user.py").write_text("from sensors import callee\n")
    deps = dependency_files(tmp_path / "sensors" / "user.py", tmp_path, ("sensors", "pipeline"))
    assert tmp_path / "sensors" / "callee.py" in deps
    assert tmp_path / "sensors" / "__init__.py" in deps


def test_edit_of_a_called_module_reaches_the_cached_caller(tmp_path: Path) -> None:
    _tree(tmp_path, 1)
    assert _run(tmp_path) == 2
    assert _run(tmp_path) == 2  # loaded from the cache
    assert any(tmp_path.joinpath("sensors", "__pycache__").glob("caller.run-*.nbi"))
    (tmp_path / "sensors" / "callee.py").write_text(CALLEE.format(amount=100))
    assert _run(tmp_path) == 101  # numba's own stamp would have kept 2


def test_project_kernels_get_the_dependency_stamp() -> None:
    from sensors import pcap_reader

    locator = pcap_reader._walk_pcap._cache._impl._locator
    assert type(locator).__name__.startswith("Project")
    deps = dependency_files(Path(pcap_reader.__file__).resolve())
    assert Path(jit.__file__).resolve().parent.parent / "sensors" / "decode.py" in deps
