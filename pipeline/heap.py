"""Keep long-lived and freshly built acyclic objects out of the cyclic garbage collector.

Why: a pipeline process imports numpy, numba, scapy and the compiled kernels - over 100k
long-lived container objects that never become garbage. Every full (generation-2)
collection walks them all again: ~60 ms each, about 15 % of the sensor's CPU on a
300k-packet mix. `gc.freeze()` moves the objects alive at that moment into a permanent
generation the collector skips; anything allocated afterwards is collected as usual.
Called after every batch (sensor) or push (correlation engine); it freezes at the first
call, when most kernels are loaded, and again after a call if numba loaded or compiled
code since the last freeze: kernels of paths a later batch takes first (held and released
flows, ...) are long-lived objects too, and a first batch can be small (a live capture).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from numba.core import event

_code_loaded = True  # numba loaded or compiled code since the last freeze (or none yet)


class _CodeLoads(event.Listener):
    """Notes that numba took its compiler lock: it does to compile a kernel and to load one
    from the on-disk cache, not to call compiled code."""

    def on_start(self, happened: event.Event) -> None:  # noqa: ARG002 (numba's signature)
        global _code_loaded
        _code_loaded = True

    def on_end(self, happened: event.Event) -> None:  # noqa: ARG002 (numba's signature)
        pass


event.register("numba:compiler_lock", _CodeLoads())


def freeze_startup_heap() -> None:
    """Freeze the objects alive now, at the first call in this process and after any call
    before which numba loaded or compiled code (gc.freeze only moves the collector's lists,
    so a call costs nothing when there is nothing new)."""
    global _code_loaded
    if _code_loaded:
        _code_loaded = False
        gc.freeze()


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (the previous state is restored, also on error).

    Why: code that builds many small acyclic objects at once (alert documents in a burst,
    decoded wire columns, a 1M-row indicator feed) triggers generation scans of the whole
    heap that find nothing: up to a third of a burst's cost, 3 of 4 s of a 1M-row CSV.
    Nothing built inside may form a cycle; reference counting frees it all the same.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
