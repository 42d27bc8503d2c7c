"""The flow table's batch clock (_running_max) against the numpy formula it replaced, and its
bucketed clock search (_clock_index + _position) against np.searchsorted(side="right"):
clocks with repeats, bursts and long gaps, thresholds before, on, between and past the
values."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import sensors.flow_table as ft

_steps = st.lists(st.one_of(st.just(0), st.integers(0, 3), st.integers(0, 10**6),
                            st.integers(0, 10**15)), min_size=1, max_size=300)


@settings(max_examples=150, deadline=None)
@given(_steps, st.integers(-(10**15), 10**15), st.lists(st.integers(-5, 5), max_size=60),
       st.lists(st.integers(-(10**16), 10**17), max_size=20))
def test_position_equals_searchsorted(steps, start, offsets, anywhere):
    clock = np.cumsum(np.array(steps, dtype=np.int64)) + start
    shift, starts = ft._clock_index(clock)
    picks = [int(clock[k % clock.size]) + d for k, d in enumerate(offsets)]
    for threshold in picks + anywhere + [int(clock[0]) - 1, int(clock[-1]), ft.NEVER]:
        expected = int(np.searchsorted(clock, threshold, side="right"))
        assert ft._position(clock, starts, shift, threshold) == expected


def test_empty_clock_has_no_crossing():
    clock = np.zeros(0, dtype=np.int64)
    shift, starts = ft._clock_index(clock)
    assert ft._position(clock, starts, shift, 5) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-(10**18), 10**18), max_size=200),
       st.integers(-(2**63), 10**18))
def test_running_max_is_the_numpy_clock(times, start):
    """The batch clock kernel equals the numpy formula it replaced (times going back too)."""
    ts = np.array(times, dtype=np.int64)
    expected = np.maximum(np.maximum.accumulate(ts), start) if ts.size else ts
    assert ft._running_max(ts, start).tolist() == expected.tolist()
