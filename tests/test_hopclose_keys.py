"""correlation/close_keys.py: the hop close's one-pass key grouping, and the brute_force /
port_scan_vertical paths that use it (issue #4, task K1).

pair_key_groups must give exactly what the numpy path gives: pair_candidates' rows,
combine_codes of (src, dst[, extra]), distinct units per key >= threshold, the kept keys'
dense ranks. Checked against a plain reference on random codes, and the detectors' findings
and evidence on coded columns (fast path) against plain columns (numpy path).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import correlation.close_keys as close_keys
from correlation.brute_force import BruteForceDetector
from correlation.close_keys import as_range, pair_key_groups
from correlation.detector import Groups, WindowRange, factorize_ip
from correlation.engine import _SharedBuffer
from correlation.port_scan import VerticalScanDetector


def _reference(src, dst, extra, units, threshold):
    """pair_candidates' two filters, then (src, dst, extra) keys with >= threshold distinct
    units, numbered in key order; kept rows ascending."""
    n = src.shape[0]
    rows = np.arange(n)
    ok = np.bincount(src, minlength=1)[src] >= threshold if n else np.zeros(0, bool)
    rows = rows[ok]
    ok = np.bincount(dst[rows], minlength=1)[dst[rows]] >= threshold if rows.size else ok[:0]
    rows = rows[ok]
    ex = np.zeros(n, np.int64) if extra is None else extra
    keys = [(int(src[r]), int(dst[r]), int(ex[r])) for r in rows]
    distinct: dict = {}
    for key, r in zip(keys, rows, strict=True):
        distinct.setdefault(key, set()).add(int(units[r]))
    reached = sorted(k for k, s in distinct.items() if len(s) >= threshold)
    number = {k: g for g, k in enumerate(reached)}
    kept = [(r, number[k]) for k, r in zip(keys, rows, strict=True) if k in number]
    return (np.array([r for r, _ in kept], np.int64), np.array([g for _, g in kept], np.int64),
            len(reached))


def _as_groups(found):
    """(kept rows, group of each, group count) of pair_key_groups' (kept rows, Groups),
    checking Groups is Groups.counted of those group ids."""
    if found is None:
        return None
    keep, groups = found
    n_groups = groups.bounds.shape[0] - 1
    group = np.empty(keep.shape[0], np.int64)
    for g in range(n_groups):
        group[groups.rows(g)] = g
    want = Groups.counted(group, n_groups)
    np.testing.assert_array_equal(groups.order, want.order)
    np.testing.assert_array_equal(groups.bounds, want.bounds)
    return keep, group, n_groups


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 3000), st.integers(1, 40), st.integers(1, 40), st.integers(1, 6),
       st.integers(1, 30), st.integers(1, 12), st.booleans(), st.integers(0, 2**32 - 1))
def test_pair_key_groups_equal_the_numpy_path(n, n_src, n_dst, n_extra, n_units, threshold,
                                              with_extra, seed):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n_src, n) * 3  # codes: order-preserving, not dense
    dst = rng.integers(0, n_dst, n) * 5 + 1
    extra = rng.integers(0, n_extra, n) * 7 if with_extra else None
    units = rng.integers(0, n_units, n).astype(np.uint16 if seed % 2 else np.int64)
    got = _as_groups(pair_key_groups(src, dst, extra, units, threshold))
    if got is None:  # gave up: only with more than 1/64 distinct keys among the rows
        assert n_src * n_dst * n_extra * 64 > max(n, 1)
        return
    want = _reference(src, dst, extra, units, threshold)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2]


_PATHS = {"direct": {"_DIRECT_SHARE": 1, "_DIRECT_MIN": 10**9},  # every key space direct
          "hashed": {"_DIRECT_SHARE": 10**12, "_DIRECT_MIN": 0}}  # none


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(sorted(_PATHS)), st.integers(0, 2000), st.integers(1, 30),
       st.integers(1, 30), st.integers(1, 5), st.integers(1, 40), st.integers(-1, 14),
       st.booleans(), st.booleans(), st.sampled_from([1, 37, 600]),
       st.integers(0, 2**32 - 1))
def test_both_key_id_paths_equal_the_numpy_path(path, n, n_src, n_dst, n_extra, n_units,
                                                threshold, with_extra, paired, unit_step,
                                                seed):
    """Key ids by index into the ranks' space and by hash give the reference's groups;
    paired: each src talks to one dst (a sparse key space: most indices hold no key);
    unit_step: units one bit block apart or more (_BLOCK_UNITS)."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n_src, n) * 3 + 2
    dst = (src * 7 + 1) % 61 if paired else rng.integers(0, n_dst, n) * 5
    extra = rng.integers(0, n_extra, n).astype(np.uint16) * 11 if with_extra else None
    units = (rng.integers(0, n_units, n) * unit_step).astype(
        np.uint16 if seed % 2 else np.int64)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _PATHS[path].items():
            patch.setattr(close_keys, name, value)
        got = _as_groups(pair_key_groups(src, dst, extra, units, threshold))
    if got is None:  # gave up: only with more than 1/64 distinct keys among the rows
        assert len(set(zip(src.tolist(), dst.tolist(), [0] * n if extra is None
                           else extra.tolist(), strict=True))) > max(n // 64, 1)
        return
    want = _reference(src, dst, extra, units, threshold)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2]


def test_a_close_of_few_attackers_takes_direct_key_ids():
    """The p99 close's shape (thousands of sources, one target, one port): key ids are
    indices in (src, dst, port) order, not hashed (see close_keys._direct_ids); and with
    the key space too big for it, hashed ids (first seen) give the same groups."""
    rng = np.random.default_rng(11)
    n = 300_000
    src = rng.integers(0, 4000, n) * 3
    dst = np.full(n, 12_001)
    port = np.full(n, 22, np.uint16)
    units = rng.integers(1024, 65_024, n).astype(np.uint16)
    args = (src, dst, port, units, 10, n // 64, 128 * n)
    ids, per_key, counts, key_hi, key_lo, m = close_keys._key_groups(*args, 4000)
    assert m == 4000 and ids.dtype == np.int32
    np.testing.assert_array_equal(key_hi, np.arange(4000))
    np.testing.assert_array_equal(ids, np.unique(src, return_inverse=True)[1].ravel())
    hashed = close_keys._key_groups(*args, 3999)
    assert hashed[5] == 4000 and not np.array_equal(hashed[0], ids)
    want = _reference(src, dst, port, units, 10)
    for direct_min in (4096, 0):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(close_keys, "_DIRECT_MIN", direct_min)
            patch.setattr(close_keys, "_DIRECT_SHARE", 10**12)
            got = _as_groups(pair_key_groups(src, dst, port, units, 10))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("path", sorted(_PATHS))
def test_rows_of_a_short_destination_stay_out_when_every_source_reaches(path):
    """Every src code reaches but dst 9 has 2 rows (< threshold): its rows are no
    candidates (pair_candidates' second filter), whichever way the key ids are taken."""
    src = np.repeat([1, 2], 150)  # (300 rows: up to 4 keys before pair_key_groups gives up)
    dst = np.full(300, 7)
    dst[[200, 250]] = 9
    units = np.arange(300, dtype=np.uint16)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _PATHS[path].items():
            patch.setattr(close_keys, name, value)
        got = _as_groups(pair_key_groups(src, dst, None, units, 5))
    want = _reference(src, dst, None, units, 5)
    assert got[2] == want[2] == 2
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_distinct_units_count_only_keys_that_can_reach():
    """Keys of fewer rows than the threshold get no bits (0 distinct), the others their
    distinct units up to the threshold (units in several bit blocks: 1030 and 1031 are in
    one, 5 and 2 in another); bits of the reachable keys only decide whether the kernel
    counts (a key space whose bits would not fit counts them in the caller)."""
    ids = np.array([0, 1, 1, 1, 2, 2, -1, 1, 2, 3, 3, 3, 3, 3], np.int32)
    units = np.array([5, 1, 1, 2, 7, 7, 3, 9, 8, 1030, 1031, 1030, 5, 2], np.uint16)
    per_key = np.bincount(ids[ids >= 0], minlength=4).astype(np.int64)
    counts = close_keys._distinct_units(ids, units, per_key, 3, 1040, 10**6)
    np.testing.assert_array_equal(counts, [0, 3, 2, 3])  # (key 3: 4 distinct, counted to 3)
    counts = close_keys._distinct_units(ids, units, per_key, 5, 1040, 10**6)
    np.testing.assert_array_equal(counts, [0, 0, 0, 4])
    # units a block apart share no bit: 0, 512 and 1024 are three units, not one or two
    spread = np.array([0, 512, 1024, 512], np.uint16)
    counts = close_keys._distinct_units(np.zeros(4, np.int32), spread,
                                        np.array([4], np.int64), 4, 1025, 10**6)
    np.testing.assert_array_equal(counts, [3])
    assert close_keys._distinct_units(ids, units, per_key, 3, 10, 29).size == 0
    assert close_keys._distinct_units(ids[:9], units[:9], per_key[:3], 3, 10, 20).size == 3


def test_pair_key_groups_gives_up_on_many_keys_and_bad_codes():
    rng = np.random.default_rng(3)
    n = 100_000
    distinct = rng.permutation(n).astype(np.int64)  # every row its own pair
    assert pair_key_groups(distinct, distinct, None, np.zeros(n, np.int64), 1) is None
    few = rng.integers(0, 50, n)
    assert pair_key_groups(few, few, None, np.zeros(n, np.int64), 1) is not None
    assert pair_key_groups(few - 1, few, None, np.zeros(n, np.int64), 1) is None  # negative
    with pytest.raises(ValueError):
        pair_key_groups(few, few[:-1], None, few, 1)


@pytest.mark.parametrize("unit_span", [200, 65_536])  # bit table in the kernel / too big
def test_pair_key_groups_of_many_rows_of_few_keys(unit_span):
    rng = np.random.default_rng(5)
    n = 200_000
    src = rng.integers(0, 30, n) * 11
    dst = rng.integers(0, 20, n) * 13
    port = rng.choice([22, 21, 3389], n)
    units = rng.integers(0, unit_span, n)  # client ports: wide units
    threshold = 85 if unit_span == 200 else 111  # (~111 rows per key: about half reach)
    got = _as_groups(pair_key_groups(src, dst, port, units, threshold))
    want = _reference(src, dst, port, units, threshold)
    assert got is not None and 0 < want[2] < 1800
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2]


# --- the detectors: fast path (coded columns) == numpy path (plain columns) ---------------------


class _CodedColumns(dict):
    """Plain columns that hand out order-preserving address codes (factorize_ip of one
    column), as the engine's views do; pair codes as combine_codes would order them."""

    def address_codes(self, names, idx):
        idx = np.arange(len(self["timestamp"]))[idx]  # (a slice too, as the engine's)
        codes = np.zeros(idx.size, np.int64)
        for name in names:
            c = factorize_ip(self[name][idx])[0]
            codes = codes * (int(c.max()) + 1 if c.size else 1) + c
        return codes


def _ips(values: np.ndarray) -> np.ndarray:
    raw = np.zeros((values.size, 16), np.uint8)
    raw[:, 10:12] = 0xFF
    raw[:, 12:] = (values.astype(np.uint32) + 0x0A000001).astype(">u4").view(
        np.uint8).reshape(values.size, 4)
    return raw.view("V16").reshape(values.size)


def _flows(seed: int, scan: bool, n: int = 6000) -> dict:
    """Flows of 12 attackers and 4 victims among noise; scan: random destination ports
    (vertical scans), else a few login ports (brute force keys)."""
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000 * 10**9
    ts = np.sort(rng.integers(t0, t0 + 300 * 10**9, n))
    attackers = rng.integers(0, 12, n)
    noise = rng.random(n) < 0.3
    src = np.where(noise, rng.integers(100, 5000, n), attackers)
    dst = np.where(noise, rng.integers(100, 5000, n), attackers % 4 + 50)
    return {
        "timestamp": ts, "end": ts + rng.integers(0, 3 * 10**9, n),
        "src_ip": _ips(src), "dst_ip": _ips(dst),
        "src_port": rng.integers(1024, 65_536, n).astype(np.uint16),
        "dst_port": (rng.integers(1, 1024, n) if scan else rng.choice([22, 21, 445, 80], n)
                     ).astype(np.uint16),
        "src_payload_bytes": rng.integers(1, 900, n).astype(np.uint64),
        "dst_payload_bytes": rng.integers(1, 900, n).astype(np.uint64),
        "dst_tcp_flags": rng.choice([0, 0x12, 0x04, 0x14], n).astype(np.uint8),
        "observer_name": np.array(["s1", "s2"], object)[rng.integers(0, 2, n)],
        "ingress_zone": np.array(["z1", "z2"], object)[rng.integers(0, 2, n)],
    }


def _config(**thresholds) -> dict:
    return {"window_s": 300, "hop_s": 60, **thresholds}


def _findings(detector, cols, windows):
    out = []
    for f in detector.detect({"flow": cols}, windows):
        out.append((f.rule.id, f.key, f.window_start, f.window_end, repr(f.describe())))
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("make, scan", [
    (lambda: BruteForceDetector(_config(ports=[22, 21], min_sessions=20, max_session_s=30,
                                        max_client_payload_bytes=4096,
                                        max_server_payload_bytes=4096)), False),
    (lambda: VerticalScanDetector(_config(vertical_ports=25)), True),
])
def test_hop_close_findings_equal_the_numpy_path(make, scan, seed, monkeypatch):
    flows = _flows(seed, scan)
    spec = make().window
    k = int(flows["timestamp"][-1] - spec.size_ns) // spec.hop_ns + 1
    calls = []
    real = close_keys.pair_key_groups

    def counted(*args):
        found = real(*args)
        calls.append(found is not None)
        return found

    for mod in ("correlation.brute_force", "correlation.port_scan"):
        monkeypatch.setattr(f"{mod}.pair_key_groups", counted)
    for windows in (WindowRange(spec, k, k), WindowRange(spec, k - 2, k)):
        plain = _findings(make(), dict(flows), windows)
        coded = _findings(make(), _CodedColumns(flows), windows)
        assert coded == plain
        if windows.first == windows.last:
            assert plain, "the data must make findings"
    assert calls == [True]  # the one-window close of coded columns took the fast path


def test_as_range_is_a_slice_only_for_one_run():
    assert as_range(np.arange(3, 9)) == slice(3, 9)
    gap = np.array([1, 2, 4])
    assert as_range(gap) is gap
    empty = np.zeros(0, np.int64)
    assert as_range(empty) is empty


@pytest.mark.parametrize("make, scan", [
    (lambda: BruteForceDetector(_config(ports=[22, 21], min_sessions=20, max_session_s=30,
                                        max_client_payload_bytes=4096,
                                        max_server_payload_bytes=4096)), False),
    (lambda: VerticalScanDetector(_config(vertical_ports=25)), True),
])
def test_hop_close_on_the_engines_shared_buffer(make, scan, monkeypatch):
    """The engine's views (address ids, positions read at a slice) against plain columns;
    a second user holds other rows, so the detector's positions are not one run."""
    calls = []

    def counted(*args):
        found = pair_key_groups(*args)
        calls.append(found is not None)
        return found

    for mod in ("correlation.brute_force", "correlation.port_scan"):
        monkeypatch.setattr(f"{mod}.pair_key_groups", counted)
    flows = _flows(7, scan)
    names = tuple(flows)
    n = flows["timestamp"].shape[0]
    store = _SharedBuffer(names, 2)
    mine = np.flatnonzero(np.arange(n) % 5 != 0)
    store.append(flows, [mine, np.arange(0, n, 2)])
    spec = make().window
    k = int(flows["timestamp"][-1] - spec.size_ns) // spec.hop_ns + 1
    windows = WindowRange(spec, k, k)
    plain = _findings(make(), {c: v[mine] for c, v in flows.items()}, windows)
    assert plain
    assert _findings(make(), store.view(0, names), windows) == plain
    assert calls == [True]  # (the plain columns: the numpy path)
