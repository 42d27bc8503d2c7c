"""Sort-free grouping of the DoS detectors (correlation/dos.py): the per-(group, second) peak,
the direct (window, victim) group ids, and SynFloodDetector / VolumetricFloodDetector
findings against a per-window, per-victim brute-force reference (single and multiple
closing windows, table and sparse peak paths)."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from correlation.detector import WindowRange, WindowSpec
from correlation.dos import (
    SynFloodDetector,
    VolumetricFloodDetector,
    _peak_per_group,
    _window_victim_groups,
)
from correlation.network_common import WindowGroups
from sensors.packets import IP_DTYPE, ip_to_bytes16

NS = 10**9


def reference_peak(group: np.ndarray, n_groups: int, second: np.ndarray) -> np.ndarray:
    peak = np.zeros(n_groups, np.int64)
    cells, counts = np.unique(np.stack([group, second], axis=1), axis=0, return_counts=True)
    np.maximum.at(peak, cells[:, 0], counts)
    return peak


@pytest.mark.parametrize("radix", [5, 300, 100_000])  # table path, table, sparse cells
@pytest.mark.parametrize("n", [700, 5000])  # sparse cells: sorted (few rows), hashed
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_peak_per_group_matches_unique_counts(radix: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_groups = 40
    group = rng.integers(0, n_groups, n)
    # clustered seconds so that peaks well above 1 occur on the sparse path too
    second = rng.integers(0, radix, n) // 7 * 7 % radix
    got = _peak_per_group(group, n_groups, second, radix)
    assert got.tolist() == reference_peak(group, n_groups, second).tolist()


def test_peak_per_group_of_no_rows_and_absent_groups() -> None:
    empty = np.empty(0, np.int64)
    assert _peak_per_group(empty, 3, empty, 10).tolist() == [0, 0, 0]
    got = _peak_per_group(np.array([2, 2, 2]), 4, np.array([9, 9, 1]), 10)
    assert got.tolist() == [0, 0, 2, 0]


@pytest.mark.parametrize("order_free", [False, True])
@pytest.mark.parametrize("first,last", [(7, 7), (5, 9)])
@pytest.mark.parametrize("n_victims", [3, 50_000])  # direct ids; dense ranks (many pairs)
def test_window_victim_groups_group_like_window_groups(first: int, last: int,
                                                       n_victims: int,
                                                       order_free: bool) -> None:
    rng = np.random.default_rng(3)
    spec = WindowSpec(60 * NS, 10 * NS)
    windows = WindowRange(spec, first, last)
    times = rng.integers(spec.start(first), spec.end(last), 4000)
    idx = np.flatnonzero(rng.random(times.size) < 0.8)
    victim = rng.integers(0, n_victims, idx.size)
    got, copy_rows = _window_victim_groups(windows, times, idx, victim, n_victims,
                                           order_free=order_free)
    want = WindowGroups.of(windows, times, idx, victim)
    assert got.idx.tolist() == idx[copy_rows].tolist()
    if not order_free:  # the copies in assign's order (float sums over them stay equal)
        assert got.idx.tolist() == want.idx.tolist()
        assert got.k.tolist() == want.k.tolist()
    got_copies = sorted(zip(got.idx.tolist(), got.k.tolist(), got.group.tolist(), strict=True))
    want_copies = sorted(zip(want.idx.tolist(), want.k.tolist(), want.group.tolist(), strict=True))
    assert [c[:2] for c in got_copies] == [c[:2] for c in want_copies]
    # the same partition, numbered in the same (window, victim) order
    pairs = {}
    for (_, _, g), (_, _, w) in zip(got_copies, want_copies, strict=True):
        assert pairs.setdefault(g, w) == w
    ordered = sorted(pairs)
    assert [pairs[g] for g in ordered] == sorted(pairs.values())
    assert got.n_groups >= want.n_groups


def _ips(texts: list[str]) -> np.ndarray:
    return np.frombuffer(b"".join(ip_to_bytes16(t) for t in texts), IP_DTYPE)


def _columns(rng: np.random.Generator, n: int, n_victims: int, t0: int, span_s: int) -> dict:
    victims = [str(ipaddress.ip_address("198.51.100.0") + i) for i in range(n_victims)]
    times = np.sort(t0 + rng.integers(0, span_s * NS, n))
    # bursts: half of the rows of a victim fall into a few seconds
    burst = rng.random(n) < 0.5
    times[burst] = t0 + (rng.integers(0, 4, burst.sum()) * span_s // 4) * NS + rng.integers(
        0, NS // 2, burst.sum())
    vic = rng.integers(0, n_victims, n)
    return {
        "timestamp": times.astype(np.int64),
        "end": times.astype(np.int64) + rng.integers(0, 3 * NS, n),
        "src_ip": _ips([f"192.0.2.{int(i)}" for i in rng.integers(1, 200, n)]),
        "dst_ip": _ips([victims[i] for i in vic]),
        "src_port": rng.integers(1024, 65535, n).astype(np.uint16),
        "dst_port": rng.choice(np.array([80, 443, 22], np.uint16), n),
        "dst_tcp_flags": rng.choice(np.array([0, 0x12, 0x04], np.uint8), n),
        "transport": rng.choice(np.array([6, 17, 1], np.uint8), n),
        "src_packets": rng.integers(1, 400, n).astype(np.uint64),
        "src_bytes": rng.integers(40, 60_000, n).astype(np.uint64),
        "observer_name": np.array(["s1"] * n, dtype=object),
        "ingress_zone": np.array(["z"] * n, dtype=object),
    }


def _reference_syn(cols: dict, windows: WindowRange, min_rate: int, per_port: float):
    t = cols["timestamp"]
    out = []
    for k in range(windows.first, windows.last + 1):
        inside = (t >= windows.spec.start(k)) & (t < windows.spec.end(k))
        for v, text in _victims_in_code_order(cols["dst_ip"], inside):
            r = _rows_of(cols["dst_ip"], inside, v)
            _, per_s = np.unique(t[r] // NS, return_counts=True)
            ports = np.unique(cols["dst_port"][r]).size
            if per_s.max() >= min_rate and r.size >= per_port * max(ports, 1):
                out.append((text, int(windows.spec.start(k)), int(per_s.max())))
    return out


def _reference_flood(cols: dict, windows: WindowRange, min_pps: float):
    t = cols["timestamp"]
    window_s = windows.spec.size_ns / NS
    out = []
    for k in range(windows.first, windows.last + 1):
        inside = (t >= windows.spec.start(k)) & (t < windows.spec.end(k))
        for v, text in _victims_in_code_order(cols["dst_ip"], inside):
            r = _rows_of(cols["dst_ip"], inside, v)
            dur = np.maximum(cols["end"][r] - t[r], 1)
            share = np.clip((windows.spec.end(k) - t[r]) / dur, 0.0, 1.0)
            packets = float((cols["src_packets"][r] * share).sum())
            if packets >= min_pps * window_s:
                out.append((text, int(windows.spec.start(k))))
    return out


def _key_text(text: str) -> str:
    return text.replace("::ffff:", "")


def _victims_in_code_order(dst: np.ndarray, inside: np.ndarray) -> list[tuple[bytes, str]]:
    """(16 bytes, text) of the victims of rows `inside`, in the detectors' key order
    (factorize_ip: native (upper, lower) uint64 order)."""
    raw = {bytes(v) for v in dst[inside].view(np.uint8).reshape(-1, 16)}
    ordered = sorted(raw, key=lambda b: tuple(np.frombuffer(b, np.uint64).tolist()))
    return [(b, str(ipaddress.IPv6Address(b).ipv4_mapped or ipaddress.IPv6Address(b)))
            for b in ordered]


def _rows_of(dst: np.ndarray, inside: np.ndarray, victim: bytes) -> np.ndarray:
    raw = dst.view(np.uint8).reshape(-1, 16)
    return np.flatnonzero(inside & (raw == np.frombuffer(victim, np.uint8)).all(axis=1))


@pytest.mark.parametrize("first,last,span_s", [(30, 30, 60), (30, 36, 120), (30, 30, 7200)])
@pytest.mark.parametrize("seed", [0, 1])
def test_syn_flood_findings_match_per_window_reference(first: int, last: int, span_s: int,
                                                       seed: int) -> None:
    rng = np.random.default_rng(seed)
    spec_window_s, hop_s = (60, 10) if span_s <= 120 else (7200, 600)
    spec = WindowSpec(spec_window_s * NS, hop_s * NS)
    windows = WindowRange(spec, first, last)
    t0 = int(spec.start(first))
    span = int(spec.end(last) - t0) // NS
    cols = _columns(rng, 6000, 25, t0, span)
    det = SynFloodDetector({"window_s": spec_window_s, "hop_s": hop_s, "min_syn_per_s": 40,
                            "min_attempts_per_port": 5, "spoofed_min_sources": 50})
    found = det.detect({"flow": cols}, windows)
    want = _reference_syn(cols, windows, 40, 5)
    assert want, "the synthetic stream must hold floods"
    got = [(_key_text(f.key), f.window_start, f.describe().details["peak_per_s"])
           for f in found]
    assert got == want


@pytest.mark.parametrize("first,last", [(30, 30), (30, 36)])
def test_volumetric_flood_findings_match_per_window_reference(first: int, last: int) -> None:
    rng = np.random.default_rng(5)
    spec = WindowSpec(60 * NS, 10 * NS)
    windows = WindowRange(spec, first, last)
    t0 = int(spec.start(first))
    cols = _columns(rng, 6000, 25, t0, int(spec.end(last) - t0) // NS)
    quiet = cols["dst_ip"].view(np.uint8).reshape(-1, 16)[:, 15] % 2 == 0
    cols["src_packets"][quiet] //= 10  # half of the victims well below the rate
    det = VolumetricFloodDetector({"window_s": 60, "hop_s": 10, "min_pps": 300})
    found = det.detect({"flow": cols}, windows)
    want = _reference_flood(cols, windows, 300)
    assert want and len(want) < 25 * (last - first + 1), "some victims flooded, not all"
    assert [(_key_text(f.key), f.window_start) for f in found] == want
