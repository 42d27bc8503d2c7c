"""Compiled kernels for the hot loops, in one place.

Some per-packet and per-row work cannot be expressed as whole-array numpy operations without
many passes (walking pcap records, probing a hash table, parsing variable-length protocol
fields). Those loops are written in plain Python syntax and compiled with numba. Every kernel
uses `njit` from here so that they all cache their machine code (first call in a fresh
checkout compiles; later processes load it from __pycache__) and release the GIL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba


def njit(*args: Any, **kwargs: Any) -> Callable:
    """numba.njit with the project's defaults: cache=True, nogil=True."""
    kwargs.setdefault("cache", True)
    kwargs.setdefault("nogil", True)
    return numba.njit(*args, **kwargs)
