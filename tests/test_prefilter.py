"""correlation/prefilter.py and the detectors that use it.

The prefilters drop rows before a detector ranks its keys; they must drop only rows the
ranked path would drop anyway. Checked two ways: the helpers against brute force on random
codes, and every detector that prefilters (scans, brute force, strobe, upload, beaconing,
DNS tunnel) on the engine's shared-buffer columns (which carry the address codes the
prefilters use) against the same rows as a plain dict (no codes: no prefilter). Findings
and their evidence must be identical.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation.detector import WindowRange, factorize_ip
from correlation.engine import _SharedBuffer, build_detectors
from correlation.prefilter import pack_codes, pair_candidates, reaching
from pipeline.config import deep_merge, load_config

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.correlation_stream import bench_config, make_stream  # noqa: E402


class CodedColumns(dict):
    """Plain columns that also hand out equality codes of address tuples (as the engine's
    views do), here from factorize_ip."""

    def address_codes(self, names: tuple[str, ...], idx: np.ndarray) -> np.ndarray:
        codes = np.zeros(idx.size, np.int64)
        for name in names:
            c = factorize_ip(self[name][idx])[0]
            codes = codes * (int(c.max()) + 1 if c.size else 1) + c
        return codes


def _addresses(rng: np.random.Generator, n: int, distinct: int) -> np.ndarray:
    v4 = rng.integers(0, distinct, n).astype(np.uint32)
    raw = np.zeros((n, 16), np.uint8)
    raw[:, 10:12] = 0xFF
    raw[:, 12:] = v4.astype(">u4").view(np.uint8).reshape(n, 4)
    return raw.view("V16").reshape(n)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 400), st.integers(1, 30), st.integers(1, 30), st.integers(1, 12),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_pair_candidates_keep_every_row_of_a_reaching_pair(n: int, n_src: int, n_dst: int,
                                                           threshold: int, weighted: bool,
                                                           seed: int) -> None:
    rng = np.random.default_rng(seed)
    cols = CodedColumns(src_ip=_addresses(rng, n, n_src), dst_ip=_addresses(rng, n, n_dst))
    idx = np.flatnonzero(rng.random(n) < 0.8)
    weights = rng.integers(0, 5, idx.size).astype(np.float64) if weighted else None
    got = pair_candidates(cols, idx, threshold, weights=weights)
    assert np.isin(got, idx).all() and np.all(np.diff(got) > 0)
    pairs = [(a.tobytes(), b.tobytes()) for a, b in zip(cols["src_ip"][idx],
                                                         cols["dst_ip"][idx], strict=True)]
    total: dict = {}
    for i, p in enumerate(pairs):
        total[p] = total.get(p, 0) + (1 if weights is None else weights[i])
    must = idx[[total[p] >= threshold for p in pairs]] if idx.size else idx
    assert np.isin(must, got).all()
    # and `reaching` is exactly the per-pair threshold
    want = np.array([total[p] >= threshold for p in pairs], bool)
    assert np.array_equal(reaching(cols.address_codes(("src_ip", "dst_ip"), idx),
                                   threshold, weights), want)


def test_pack_codes_refuses_overflow_and_plain_columns_pass_through() -> None:
    assert pack_codes(np.array([2**40]), np.array([2**30])) is None
    assert pack_codes(np.array([3, 1]), np.array([0, 4])).tolist() == [15, 9]
    plain = {"src_ip": _addresses(np.random.default_rng(1), 10, 3)}
    idx = np.arange(10)
    assert pair_candidates(plain, idx, 5) is idx  # no address codes: nothing dropped


# --- detectors: shared-buffer view (prefiltered) vs plain columns (not) ----------------------


OVERRIDES = {"strobe": {"min_connections": 40}}  # the default 3600 never fires on a small stream


@pytest.fixture(scope="module")
def stream():
    return make_stream(40_000)


def _findings(detector, rows, windows) -> list:
    out = []
    for f in detector.detect(rows, windows):
        evidence = dataclasses.asdict(f.describe())
        out.append((f.rule.id, f.key, f.window_start, f.window_end, repr(evidence)))
    return sorted(out)


@pytest.mark.parametrize("name", ["port_scan_vertical", "port_scan_horizontal", "brute_force",
                                  "strobe", "exfil_upload", "beaconing", "dns_tunnel"])
def test_prefiltered_detect_equals_the_unfiltered_one(stream, name: str) -> None:
    config = deep_merge(dict(load_config()["correlation"]), bench_config())
    sections = {n: {"enabled": n == name} for n in config["detectors"]}
    sections[name] = {"enabled": True, **OVERRIDES.get(name, {})}
    config = deep_merge(config, {"detectors": sections})

    def fresh():
        return [d for d in build_detectors(config) if d.name == name][0]

    detector = fresh()
    views, plains, times = {}, {}, []
    for spec in detector.inputs:
        batches = [b for b in stream.batches if b.kind == spec.kind]
        if not batches:
            continue
        columns = {c: np.concatenate([b.columns[c] for b in batches]) for c in spec.columns}
        mask = np.concatenate([detector.select(b) for b in batches])
        store = _SharedBuffer(spec.columns, 1)
        store.append(columns, [np.flatnonzero(mask)])
        views[spec.kind] = store.view(0, spec.columns)
        plains[spec.kind] = {c: v[mask] for c, v in columns.items()}
        times.append(plains[spec.kind]["timestamp"])
    t = np.concatenate(times)
    spec = detector.window
    windows = WindowRange(spec, int(spec.first_index(int(t.min()))),
                          int(spec.last_index(int(t.max()))))
    with_codes = _findings(detector, views, windows)
    without = _findings(fresh(), plains, windows)
    assert with_codes == without
    if name in ("port_scan_vertical", "port_scan_horizontal", "beaconing", "dns_tunnel"):
        assert with_codes  # the planted attacks: the comparison is not vacuous
