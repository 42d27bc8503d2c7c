"""backscatter.classify (one compiled pass, optionally over some rows) equals the
whole-array numpy reference classify_numpy, class by class and sender by sender."""

from __future__ import annotations

import numpy as np
import pytest

from correlation.backscatter import CLASS_NAMES, classify, classify_numpy


def _columns(rng: np.random.Generator, n: int) -> dict:
    return {"transport": rng.choice(np.array([1, 6, 17, 58, 47], np.uint8), n),
            "src_tcp_flags": rng.integers(0, 64, n).astype(np.uint8),
            "dst_tcp_flags": rng.integers(0, 64, n).astype(np.uint8),
            "src_port": rng.choice(np.array([0, 1, 3, 11, 19, 53, 123, 1900, 4444], np.uint16), n),
            "dst_port": rng.choice(np.array([0, 1, 3, 53, 123, 5555], np.uint16), n),
            "src_packets": rng.integers(0, 3, n).astype(np.uint64),
            "dst_packets": rng.integers(0, 3, n).astype(np.uint64),
            "src_bytes": rng.integers(0, 5000, n).astype(np.uint64),
            "dst_bytes": rng.choice(np.array([0, 1, 100, 999, 1000, 5000], np.uint64), n),
            "src_payload_bytes": rng.integers(0, 2, n).astype(np.uint64)}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ratio", [1.0, 5.0, 10.0])
def test_classify_equals_numpy_reference(seed: int, ratio: float) -> None:
    rng = np.random.default_rng(seed)
    c = _columns(rng, 4000)
    ports = np.array([19, 53, 123, 1900], np.uint16)
    want_cls, want_sender = classify_numpy(c, ports, ratio)
    got_cls, got_sender = classify(c, ports, ratio)
    assert got_cls.dtype == want_cls.dtype and got_sender.dtype == want_sender.dtype
    assert np.array_equal(got_cls, want_cls)
    assert np.array_equal(got_sender, want_sender)
    assert set(np.unique(want_cls).tolist()) == {-1, *range(len(CLASS_NAMES))}  # all covered
    rows = np.flatnonzero(rng.random(4000) < 0.3)
    sub_cls, sub_sender = classify(c, ports, ratio, rows=rows)
    assert np.array_equal(sub_cls, want_cls[rows])
    assert np.array_equal(sub_sender, want_sender[rows])


def test_classify_of_int64_ports_takes_the_numpy_path() -> None:
    c = _columns(np.random.default_rng(9), 300)
    c["src_port"] = c["src_port"].astype(np.int64)
    ports = np.array([53, 123], np.uint16)
    rows = np.arange(0, 300, 3)
    for got, want in zip(classify(c, ports, 5.0, rows=rows),
                         classify_numpy({k: v[rows] for k, v in c.items()}, ports, 5.0),
                         strict=True):
        assert np.array_equal(got, want)
