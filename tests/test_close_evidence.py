"""The hop close's evidence and documents (issue #4, task V6): same alerts, fewer reads.

- brute_force and port_scan read the observer and zone columns at the hit rows only
  (detector.take), never the whole object column (a gathered object per buffered row);
- finding keys and evidence addresses are formatted for all hits at once and shared;
- the per-hit session median comes from the two middle values (alert_kernels), not a sort;
- the horizontal scan drops sources of too few distinct hosts before coding its keys.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation.alert_kernels import middle_and_last, sources_reaching
from correlation.alerts import build_alerts
from correlation.brute_force import BruteForceDetector, _session_lengths
from correlation.detector import NS_PER_S, Groups, WindowRange, factorize_ip
from correlation.engine import default_config
from correlation.evidence_rows import HitRows, sorted_pair
from correlation.port_scan import HorizontalScanDetector, VerticalScanDetector

try:
    from test_engine import flow_batch
except ImportError:  # tests/ imported as a package
    from tests.test_engine import flow_batch

OBJECT_COLUMNS = ("observer_name", "ingress_zone")


class TakeOnlyColumns(dict):
    """Plain columns whose object columns may only be read at rows (take), as the engine's
    columns are read without a whole-column gather; each take is recorded."""

    def __init__(self, columns: dict, codes: bool) -> None:
        super().__init__(columns)
        self.taken: list[tuple[str, int]] = []
        if codes:  # the engine's order-preserving address codes (hop-close paths)
            self.address_codes = self._address_codes

    def __getitem__(self, name: str) -> np.ndarray:
        if name in OBJECT_COLUMNS:
            raise AssertionError(f"whole object column {name} gathered")
        return dict.__getitem__(self, name)

    def take(self, name: str, rows) -> np.ndarray:
        column = dict.__getitem__(self, name)[rows]
        self.taken.append((name, column.shape[0]))
        return column

    def _address_codes(self, names: tuple[str, ...], idx=None) -> np.ndarray:
        codes = [factorize_ip(dict.__getitem__(self, n))[0] for n in names]
        combined = codes[0]
        for c in codes[1:]:
            combined = combined * (int(c.max()) + 1) + c
        return combined if idx is None else combined[idx]


def _traffic() -> list[dict]:
    """Guessing, vertical and horizontal scans (some below the thresholds) seen by two
    sensors in two zones, and unrelated short sessions and failed attempts."""
    rows = []
    for a in range(10):
        src = f"10.1.{a}.1"
        sensor = dict(observer=f"sensor-{a % 2}", zone="dmz" if a % 3 else "lan")
        other = dict(observer="sensor-9", zone="wan")  # a second sensor in some rows
        for i in range(6 + a):
            seen = other if i == 3 and a % 2 else sensor
            rows.append(dict(src=src, dst="10.9.0.2", dport=22, sport=40000 + i,
                             t=5.0 + a + i * 0.5, dur=0.25 * (i % 5 + 1), state="SF",
                             src_payload=900, dst_payload=1200, **seen))
            rows.append(dict(src=src, dst="10.9.0.3", dport=100 + i, t=5.0 + a + i * 0.1,
                             state="S0" if i % 3 else "REJ", **seen))
            rows.append(dict(src=f"10.2.{a}.1", dst=f"10.8.{i}.{a}", dport=445,
                             t=6.0 + a + i * 0.2, state="S0", **seen))
        rows.append(dict(src=f"10.3.{a}.1", dst="10.9.0.4", dport=80, t=7.0 + a,
                         state="S0", **sensor))  # one attempt: no key
    return rows


def _columns(detector) -> dict:
    batch = flow_batch(_traffic())
    keep = detector.select(batch)
    return {name: column[keep] for name, column in batch.columns.items()}


def _one_window(detector, cols: dict) -> WindowRange:
    k = int(detector.window.last_index(int(cols["timestamp"].max())))
    return WindowRange(detector.window, k, k)


def _alerts(detector, cols, windows) -> list[dict]:
    return build_alerts(detector.detect({"flow": cols}, windows))


DETECTORS = [BruteForceDetector, VerticalScanDetector, HorizontalScanDetector]


@pytest.mark.parametrize("codes", [True, False], ids=["hop-close", "general"])
@pytest.mark.parametrize("detector_class", DETECTORS)
def test_object_columns_are_read_at_the_hit_rows_only(detector_class, codes: bool) -> None:
    detector = detector_class(default_config()["detectors"][detector_class.name])
    plain = _columns(detector)
    windows = _one_window(detector, plain)
    want = _alerts(detector, plain, windows)
    assert want  # the fixture raises findings
    assert {o for a in want for o in a["cirtsa"]["observers"]["name"]} >= {
        "sensor-0", "sensor-1", "sensor-9"}  # several sensors, some per finding
    reader = TakeOnlyColumns(plain, codes)
    # (a whole-column access of an object column raises in TakeOnlyColumns.__getitem__)
    assert _alerts(detector, reader, windows) == want
    object_takes = [n for name, n in reader.taken if name in OBJECT_COLUMNS]
    assert len(object_takes) == 2  # observer and zone, once each
    assert max(object_takes) < plain["observer_name"].shape[0]  # hit rows only


@pytest.mark.parametrize("detector_class", DETECTORS)
def test_overlapping_windows_give_the_same_alerts_through_take(detector_class) -> None:
    detector = detector_class(default_config()["detectors"][detector_class.name])
    plain = _columns(detector)
    last = int(detector.window.last_index(int(plain["timestamp"].max())))
    windows = WindowRange(detector.window, last - detector.window.copies + 1, last)
    want = _alerts(detector, plain, windows)
    assert want
    assert _alerts(detector, TakeOnlyColumns(plain, codes=False), windows) == want


def _many_attempts() -> list[dict]:
    """Failed attempts of 12 sources, 120 each (enough rows per source for close_keys'
    hash pass): sources of one host (vertical scans), of a few hosts, and horizontal
    scans of many hosts on one or two ports."""
    rows = []
    for a in range(12):
        for i in range(120):
            hosts = (1, 3, 60)[a % 3]
            rows.append(dict(src=f"10.4.{a}.1", dst=f"10.7.{a}.{i % hosts}",
                             dport=445 if a % 2 else 100 + i % 2 * 3389,
                             t=5.0 + a + i * 0.01, state="S0" if i % 4 else "REJ",
                             observer=f"sensor-{i % 2}", zone="dmz"))
    return rows


def _horizontal() -> tuple[HorizontalScanDetector, dict]:
    detector = HorizontalScanDetector(default_config()["detectors"]["port_scan_horizontal"])
    batch = flow_batch(_many_attempts())
    keep = detector.select(batch)
    return detector, {name: column[keep] for name, column in batch.columns.items()}


def test_horizontal_scan_drops_sources_of_few_hosts_first(monkeypatch) -> None:
    detector, plain = _horizontal()
    reader = TakeOnlyColumns(plain, codes=True)
    idx = np.arange(plain["timestamp"].shape[0])
    kept = detector._reaching_sources(reader, idx)
    src = plain["src_ip"].tolist()
    hosts: dict[bytes, set] = {}
    for s, d in zip(src, plain["dst_ip"].tolist(), strict=True):
        hosts.setdefault(s, set()).add(d)
    want = [i for i, s in enumerate(src) if len(hosts[s]) >= detector.threshold]
    assert kept.tolist() == want
    assert 0 < len(want) < idx.size
    # without address codes, or codes too wide for a table per source: every row stays
    assert detector._reaching_sources(plain, idx) is idx
    wide = reader._address_codes
    monkeypatch.setattr(reader, "address_codes", lambda names, at: wide(names, at) * 10**6)
    assert detector._reaching_sources(reader, idx) is idx


@pytest.mark.parametrize("overlapping", [False, True])
def test_horizontal_prefilter_keeps_the_alerts(monkeypatch, overlapping: bool) -> None:
    detector, plain = _horizontal()
    windows = _one_window(detector, plain)
    if overlapping:
        windows = WindowRange(detector.window, windows.last - 3, windows.last)
    reader = TakeOnlyColumns(plain, codes=True)
    fast = _alerts(detector, reader, windows)
    # 4 sources of 60 hosts, two of them on two ports
    assert len({a["cirtsa"]["alert"]["key"] for a in fast}) == 6
    monkeypatch.setattr(HorizontalScanDetector, "_reaching_sources",
                        lambda self, cols, idx: idx)
    assert _alerts(detector, reader, windows) == fast


def test_keys_and_evidence_addresses_agree() -> None:
    detector = BruteForceDetector(default_config()["detectors"]["brute_force"])
    plain = _columns(detector)
    alerts = _alerts(detector, plain, _one_window(detector, plain))
    for a in alerts:
        assert a["cirtsa"]["alert"]["key"] == (
            f"{a['source']['ip']}|{a['destination']['ip']}|tcp/{a['destination']['port']}")
        assert a["related"]["ip"] == sorted({a["source"]["ip"], a["destination"]["ip"]})


@pytest.mark.parametrize("a,b", [("10.0.0.9", "10.0.0.10"), ("10.0.0.10", "10.0.0.9"),
                                 ("::1", "::1"), ("2001:db8::1", "10.0.0.1")])
def test_sorted_pair_is_sorted_set(a: str, b: str) -> None:
    assert sorted_pair(a, b) == sorted({a, b})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-2**62, 2**62), min_size=1, max_size=40), max_size=12),
       st.booleans())
def test_middle_and_last_equal_a_sort_per_hit(hits: list[list[int]], narrow: bool) -> None:
    if narrow:  # repeats
        hits = [[v % 7 for v in h] for h in hits]
    bounds = np.zeros(len(hits) + 1, np.int64)
    np.cumsum([len(h) for h in hits], out=bounds[1:])
    values = np.array([v for h in hits for v in h], np.int64)
    before = values.copy()
    lower, upper, largest = middle_and_last(bounds, values)
    np.testing.assert_array_equal(values, before)  # not reordered
    for i, h in enumerate(hits):
        s = sorted(h)
        assert (lower[i], upper[i], largest[i]) == (s[(len(s) - 1) // 2], s[len(s) // 2],
                                                     s[-1])


def test_session_lengths_equal_np_median() -> None:
    rng = np.random.default_rng(3)
    n_hits = 50
    group = rng.integers(0, n_hits, 2000)
    lengths = rng.integers(0, 300 * NS_PER_S, 2000)
    lengths[:5] = 2**60 + np.arange(5)  # beyond float precision: the exact division
    groups = Groups.counted(group, n_hits)
    hit_rows = HitRows(groups, np.arange(n_hits), np.arange(2000))
    longest, median = _session_lengths(hit_rows, lengths[hit_rows.rows])
    for h in range(n_hits):
        r = lengths[group == h].tolist()
        exact = sorted(v / NS_PER_S for v in r)
        assert longest[h] == exact[-1]
        if any(v >= 2**53 for v in r):
            assert median[h] == float(np.median(np.array(exact)))
        else:
            assert median[h] == float(np.median(np.array(r) / NS_PER_S))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 12)), max_size=200),
       st.integers(1, 8))
def test_sources_reaching_count_distinct_hosts(rows: list[tuple[int, int]],
                                               threshold: int) -> None:
    src = np.array([r[0] for r in rows], np.int64)
    dst = np.array([r[1] for r in rows], np.int64)
    hosts: dict[int, set] = {}
    for s_, d in rows:
        hosts.setdefault(s_, set()).add(d)
    want = [len(hosts[s_]) >= threshold for s_, _ in rows]
    assert sources_reaching(src, dst, threshold, 10).tolist() == want


def test_udp_scan_reads_object_columns_at_the_hit_rows_only() -> None:
    """The UDP vertical scan's evidence names its sensors and zones from the hit rows, as
    the TCP scans' does (no whole-column gather of an engine object column)."""
    from correlation.udp_scan import UdpVerticalScanDetector

    detector = UdpVerticalScanDetector(default_config()["detectors"]["udp_scan_vertical"])
    rows = [dict(src="10.4.0.1", dst="10.9.0.5", dport=1000 + i, sport=45000, proto=17,
                 t=5.0 + i * 0.01, state="S0", observer=f"sensor-{i % 2}", zone="dmz")
            for i in range(200)]
    rows += [dict(src="10.4.0.2", dst="10.9.0.6", dport=53, sport=45001 + i, proto=17,
                  t=6.0 + i, state="S0", observer="sensor-9", zone="wan")
             for i in range(5)]  # unanswered, one port: no finding
    batch = flow_batch(rows)
    keep = detector.select(batch)
    plain = {name: column[keep] for name, column in batch.columns.items()}
    windows = _one_window(detector, plain)
    want = _alerts(detector, plain, windows)
    assert len(want) == 1 and want[0]["cirtsa"]["observers"]["name"] == ["sensor-0",
                                                                            "sensor-1"]
    reader = TakeOnlyColumns(plain, codes=False)
    assert _alerts(detector, reader, windows) == want
    object_takes = [n for name, n in reader.taken if name in OBJECT_COLUMNS]
    assert object_takes == [200, 200]  # observer and zone, at the hit rows only
