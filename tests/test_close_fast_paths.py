"""Hop-close fast paths (issue #4, task CA): each must give what the general path gives.

- evidence of the described (kept) hits only: LazyEvidence.expect, announced by
  alerts.build_alerts (evidence_rows.expect_described);
- one closing window: detector.one_window_groups instead of assign + combine_codes, and
  brute_force / port_scan skipping the per-window regrouping;
- Groups.counted (counting sort) instead of Groups.of (argsort);
- ip_pair_codes ranking few distinct pairs by a hash pass (detector._dense_few);
- distinct_per_group's bit table for wide values (kernels.distinct_counts_in_bits);
- detector.take: a column read at rows only.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

import correlation.brute_force as brute_force_module
import correlation.port_scan as port_scan_module
from correlation.alerts import build_alerts
from correlation.brute_force import BruteForceDetector
from correlation.detector import (
    Evidence,
    Finding,
    Groups,
    WindowRange,
    WindowSpec,
    _dense,
    _dense_few,
    combine_codes,
    distinct_per_group,
    ip_pair_codes,
    one_window_groups,
    take,
)
from correlation.engine import default_config
from correlation.evidence_rows import LazyEvidence, expect_described
from correlation.port_scan import VERTICAL_RULE, VerticalScanDetector

try:
    from test_engine import flow_batch
except ImportError:  # tests/ imported as a package
    from tests.test_engine import flow_batch

NS = 1_000_000_000


def _recording_lazy(window_of_hit: list[int]) -> tuple[LazyEvidence, list[list[int]]]:
    made: list[list[int]] = []

    def make(members: np.ndarray):
        made.append(members.tolist())
        return lambda position: (members.tolist(), position)

    return LazyEvidence(np.array(window_of_hit), make), made


def test_expected_hits_are_computed_alone_and_others_still_described() -> None:
    lazy, made = _recording_lazy([3, 3, 3, 3, 4])
    lazy.expect(np.array([1, 3]))
    assert lazy.describe(3) == ([1, 3], 1)
    assert lazy.describe(1) == ([1, 3], 0)
    assert made == [[1, 3]]  # hits 0 and 2 of window 3 (suppressed repeats) never computed
    assert lazy.describe(0) == ([0, 2], 0)  # not announced: the rest of its window
    assert lazy.describe(2) == ([0, 2], 1)
    assert made == [[1, 3], [0, 2]]


def test_build_alerts_announces_the_described_hits() -> None:
    lazy, _ = _recording_lazy([7] * 10)
    spec = WindowSpec(300 * NS, 60 * NS)

    def evidence(members: list[int], position: int) -> Evidence:
        return Evidence(first_seen=0, last_seen=1, source_ip="10.0.0.1",
                        message=f"{members} {position}", details={})

    lazy._make = lambda members: partial(evidence, members.tolist())
    kept = [Finding(rule=VERTICAL_RULE, key=f"k{i}", window_start=spec.start(7),
                    window_end=spec.end(7), describe=partial(lazy.describe, i))
            for i in (2, 5, 6, 8, 9, 1, 0, 3, 4)]  # >= 8: the gc-paused path
    docs = build_alerts(kept[:8])
    assert [d["message"] for d in docs] == [f"[0, 1, 2, 3, 5, 6, 8, 9] {p}"
                                           for p in (2, 4, 5, 6, 7, 1, 0, 3)]
    # a later close's hit gets its own evidence; an unannounced hit the rest of its window
    assert build_alerts(kept[8:])[0]["message"] == "[4] 0"
    assert lazy.describe(7).message == "[7] 0"


def test_expect_described_ignores_other_callables() -> None:
    lazy, made = _recording_lazy([1, 1])
    expect_described([lambda: None, partial(print, 1), partial(lazy.describe, 1)])
    assert lazy.describe(1) == ([1], 0)
    assert made == [[1]]


@pytest.mark.parametrize("seed", range(5))
def test_one_window_groups_equal_assign_and_combine(seed: int) -> None:
    rng = np.random.default_rng(seed)
    spec = WindowSpec(300 * NS, 60 * NS)
    windows = WindowRange(spec, 10, 10)
    n = int(rng.integers(1, 3000))
    times = rng.integers(spec.start(10), spec.end(10), n)
    key = rng.integers(0, int(rng.integers(1, 500)), n).astype(np.int64)
    copy_rows, k = windows.assign(times)
    group, n_groups = combine_codes(k, key[copy_rows])
    got = one_window_groups(windows, key)
    assert got is not None and got[3] == n_groups
    # the same copies (assign lists them by window offset, then row: sort both by row)
    by_row = np.argsort(copy_rows, kind="stable")
    for a, b in zip(got[:3], (copy_rows[by_row], k[by_row], group[by_row]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert one_window_groups(WindowRange(spec, 10, 11), key) is None


@pytest.mark.parametrize("seed", range(5))
def test_counted_groups_hold_the_same_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_groups = int(rng.integers(1, 50))
    group = rng.integers(0, n_groups, int(rng.integers(0, 2000)))
    want, got = Groups.of(group, n_groups), Groups.counted(group, n_groups)
    np.testing.assert_array_equal(got.bounds, want.bounds)
    for g in range(n_groups):
        rows = got.rows(g)
        np.testing.assert_array_equal(rows, np.sort(want.rows(g)))  # ascending in a group


def test_counted_groups_reject_ids_out_of_range() -> None:
    with pytest.raises(IndexError):
        Groups.counted(np.array([0, 3]), 3)


@pytest.mark.parametrize("distinct", [3, 500, 5000, 200_000])
def test_few_distinct_pairs_rank_as_the_sort_does(distinct: int) -> None:
    rng = np.random.default_rng(distinct)
    values = rng.integers(0, distinct, 200_000).astype(np.int64) * 7919 + 13
    want = _dense(values, hashed=False)
    got = _dense_few(values)
    if distinct * 64 > values.size:
        assert got is None  # mostly distinct: the hash attempt gives up
    else:
        assert got is not None and got[1] == want[1]
        np.testing.assert_array_equal(got[0], want[0])


class _CodedColumns(dict):
    """Columns carrying the engine's order-preserving pair codes (address_codes)."""

    def __init__(self, codes: np.ndarray) -> None:
        super().__init__()
        self.codes = codes

    def address_codes(self, names, idx):
        return self.codes[idx]


def test_ip_pair_codes_of_many_rows_of_few_pairs() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 3000, 100_000).astype(np.int64) * 100_003
    idx = np.arange(100_000)
    got_codes, got_n = ip_pair_codes(_CodedColumns(codes), idx)
    want_codes, want_n = _dense(codes, hashed=False)
    assert got_n == want_n
    np.testing.assert_array_equal(got_codes, want_codes)


@pytest.mark.parametrize("seed", range(4))
def test_distinct_per_group_of_wide_values(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, n_groups = 20_000, int(rng.integers(2, 20))
    group = rng.integers(0, n_groups, n)
    values = rng.integers(0, 65_536, n)  # client ports: many distinct pairs, wide span
    values[: n // 2] = values[n // 2:]  # repeats
    got = distinct_per_group(group, n_groups, values)
    want = np.zeros(n_groups, np.int64)
    for g, _ in set(zip(group.tolist(), values.tolist(), strict=True)):
        want[g] += 1
    np.testing.assert_array_equal(got, want)


def test_take_reads_through_the_columns_reader() -> None:
    plain = {"a": np.arange(10) * 2}
    np.testing.assert_array_equal(take(plain, "a", np.array([3, 1])), [6, 2])

    class Reader(dict):
        def take(self, name, rows):
            return ("read", name, rows.tolist())

    assert take(Reader(a=np.arange(3)), "a", np.array([2])) == ("read", "a", [2])


# --- detect: the one-window path equals the general one ----------------------------------------


def _guessing_and_scans(t0_s: float) -> list[dict]:
    rows = []
    for a in range(12):
        src = f"10.1.{a}.1"
        for i in range(8 + a):  # some below, most above the thresholds
            rows.append(dict(src=src, dst="10.9.0.2", dport=22, sport=40000 + i,
                             t=t0_s + a + i * 0.5, dur=1.0, state="SF",
                             src_payload=900, dst_payload=1200))
            rows.append(dict(src=src, dst="10.9.0.3", dport=100 + i, t=t0_s + a + i * 0.1,
                             state="S0" if i % 3 else "REJ"))
    return rows


def _alerts(detector, cols, windows) -> list[dict]:
    return sorted(build_alerts(detector.detect({"flow": cols}, windows)),
                  key=lambda d: d["event"]["id"])


@pytest.mark.parametrize("module,detector_class", [
    (brute_force_module, BruteForceDetector), (port_scan_module, VerticalScanDetector)])
def test_one_window_detect_equals_the_general_path(monkeypatch, module,
                                                   detector_class) -> None:
    config = default_config()["detectors"][detector_class.name]
    detector = detector_class(config)
    cols = dict(flow_batch(_guessing_and_scans(5.0)).columns)
    keep = detector.select(flow_batch(_guessing_and_scans(5.0)))
    cols = {name: column[keep] for name, column in cols.items()}
    k = int(detector.window.last_index(int(cols["timestamp"].max())))
    windows = WindowRange(detector.window, k, k)
    fast = _alerts(detector, cols, windows)
    assert fast  # the fixture raises findings
    monkeypatch.setattr(module, "one_window_groups", lambda windows, key: None)
    assert _alerts(detector, cols, windows) == fast
