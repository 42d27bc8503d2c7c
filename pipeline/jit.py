"""Compiled kernels for the hot loops, in one place.

Some per-packet and per-row work cannot be expressed as whole-array numpy operations without
many passes (walking pcap records, probing a hash table, parsing variable-length protocol
fields). Those loops are written in plain Python syntax and compiled with numba. Every kernel
uses `njit` from here so that they all cache their machine code (first call in a fresh
checkout compiles; later processes load it from __pycache__) and release the GIL.

Why a cache stamp of our own: numba keys a cached kernel to the text of the file that defines
it only. A kernel that calls (and so inlines) a kernel of another module kept its old machine
code after an edit of that other module, e.g. the capture reader's record walk after a change
of the decoder it fuses in: silently wrong results in any checkout with a warm cache (a
`git pull`, an editable install). Here the stamp of a project module's kernels also covers
every project module it imports, transitively (`dependency_files`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba

# The project's top-level packages; imports of anything else do not enter a stamp.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("sensors", "pipeline", "fusion", "correlation")

# `from a.b import c, d`, `from a.b import (c,\n d)` or `import a.b`: module, names, module
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+([\w.]+)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)"
                     r"|import[ \t]+([\w.]+))", re.MULTILINE)


def njit(*args: Any, **kwargs: Any) -> Callable:
    """numba.njit with the project's defaults: cache=True, nogil=True."""
    kwargs.setdefault("cache", True)
    kwargs.setdefault("nogil", True)
    return numba.njit(*args, **kwargs)


def _module_file(root: Path, dotted: str) -> Path | None:
    """The source file of module `dotted` under `root` (a package's __init__.py), if any."""
    base = root.joinpath(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_files(path: Path, root: Path, packages: tuple[str, ...]) -> set[Path]:
    """Project source files that `path` imports (`from a.b import c` may name module c)."""
    found: set[Path] = set()
    for source, names, plain in _IMPORT.findall(path.read_text(encoding="utf-8")):
        module = source or plain
        if module.split(".")[0] not in packages:
            continue
        for dotted in (module, *(f"{module}.{name}" for name in re.findall(r"\w+", names))):
            target = _module_file(root, dotted)
            if target is not None:
                found.add(target)
    return found


def dependency_files(path: Path, root: Path = PROJECT_ROOT,
                     packages: tuple[str, ...] = PROJECT_PACKAGES) -> list[Path]:
    """`path` and every project source file it imports, directly or not, sorted."""
    seen = {path}
    todo = [path]
    while todo:
        for target in _imported_files(todo.pop(), root, packages):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return sorted(seen)


@functools.cache
def _stamp(path: Path, root: Path, packages: tuple[str, ...]) -> bytes:
    """SHA-256 over the names and contents of `path`'s dependency files (once a process: a
    module edited while a process runs is not reloaded either)."""
    digest = hashlib.sha256()
    for dep in dependency_files(path, root, packages):
        digest.update(str(dep.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(dep.read_bytes()).digest())
    return digest.digest()


def _in_project(py_file: str) -> bool:
    try:
        relative = Path(py_file).resolve().relative_to(PROJECT_ROOT)
    except ValueError:
        return False
    return relative.parts[0] in PROJECT_PACKAGES


def _install_dependency_stamps() -> None:
    """Put locators whose stamp covers the dependencies first in numba's list, for the
    project's files only (numba's own locators serve everything else). A numba without
    these internals keeps its default behaviour."""
    try:
        from numba.core import caching
        bases = (caching.UserProvidedCacheLocator, caching.InTreeCacheLocator,
                 caching.UserWideCacheLocator)
        locators = caching.CacheImpl._locator_classes
    except AttributeError:  # pragma: no cover - another numba layout
        return
    ours = []
    for base in bases:
        def get_source_stamp(self: Any) -> tuple:
            path = Path(self._py_file).resolve()
            return (os.path.basename(path), _stamp(path, PROJECT_ROOT, PROJECT_PACKAGES))

        def from_function(cls: Any, py_func: Callable, py_file: str) -> Any:
            if not _in_project(py_file):
                return None
            return super(cls, cls).from_function(py_func, py_file)

        ours.append(type(f"Project{base.__name__}", (base,), {
            "get_source_stamp": get_source_stamp,
            "from_function": classmethod(from_function)}))
    if not any(getattr(k, "__name__", "").startswith("Project") for k in locators):
        locators[:0] = ours


_install_dependency_stamps()
