"""Keep the start-up heap out of the cyclic garbage collector's full passes.

Why: a pipeline process imports numpy, numba, scapy and the compiled kernels - over 100k
long-lived container objects that never become garbage. Every full (generation-2)
collection walks them all again: ~60 ms each, about 15 % of the sensor's CPU on a
300k-packet mix. `gc.freeze()` moves the objects alive at that moment into a permanent
generation the collector skips; anything allocated afterwards is collected as usual.
Called once per process, after the first batch, when the kernels are loaded.
"""

from __future__ import annotations

import gc

_frozen = False


def freeze_startup_heap() -> None:
    """Freeze the objects alive now, the first time it is called in this process."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.freeze()
