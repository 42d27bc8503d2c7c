"""pipeline.heap.freeze_startup_heap: the collector's permanent generation grows at the first
call and again only after numba loaded or compiled code (a kernel a later batch needs
first), not on every call."""

from __future__ import annotations

import gc

import numba
import numpy as np

from pipeline import heap


def test_freezes_again_only_after_numba_loads_code() -> None:
    heap.freeze_startup_heap()  # whatever was pending (the first call, or earlier loads)
    frozen = gc.get_freeze_count()
    kept = [[i] for i in range(1000)]  # tracked containers, alive across the calls
    heap.freeze_startup_heap()
    assert gc.get_freeze_count() == frozen  # nothing loaded since: no freeze

    @numba.njit(cache=False)
    def twice(values):  # a fresh dispatcher: its first call compiles
        return values * 2

    assert twice(np.arange(3)).tolist() == [0, 2, 4]
    heap.freeze_startup_heap()
    assert gc.get_freeze_count() >= frozen + len(kept)  # the kept lists are frozen now
    heap.freeze_startup_heap()
    after = gc.get_freeze_count()
    twice(np.arange(3))  # compiled code called again: no lock, no freeze
    heap.freeze_startup_heap()
    assert gc.get_freeze_count() == after
