"""arp_spoof's quiet-range exit (correlation/arp_spoof.py ArpSpoofDetector._quiet): a close
it ends must be one the full grouping finds nothing in, and the findings and evidence of
every other close are the full path's."""

from __future__ import annotations

import numpy as np
import pytest
from event_builders import make_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation.arp_spoof import ArpSpoofDetector, _some_ip_has_two_macs
from correlation.detector import WindowRange
from correlation.engine import default_config, merge_config
from sensors.packets import ip_to_bytes16

IPS = ["192.168.1.1", "192.168.1.50", "192.168.1.66", "10.0.0.7", "fe80::1"]
MACS = ["d8:58:d7:00:67:11", "44:8a:5b:2d:8b:33", "50:ed:3c:39:bc:d9"]


def detector(**section) -> ArpSpoofDetector:
    config = merge_config(default_config(), {"detectors": {"arp_spoof": section}})
    return ArpSpoofDetector(config["detectors"]["arp_spoof"])


def described(findings: list) -> list[tuple]:
    return sorted((f.rule.id, f.key, f.window_start, f.window_end, repr(f.describe()))
                  for f in findings)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 900), st.sampled_from(IPS), st.sampled_from(MACS),
                          st.booleans()), min_size=1, max_size=60),
       st.integers(2, 3), st.integers(1, 6), st.booleans())
def test_quiet_exit_changes_no_finding(rows, min_macs, min_gratuitous, gateway) -> None:
    section = {"min_macs": min_macs, "min_gratuitous": min_gratuitous}
    if gateway:
        section["gateways"] = [{"ip": IPS[0], "mac": MACS[0]}]
    fast = detector(**section)
    full = detector(**section)
    full._quiet = lambda cols, idx: False  # the grouping on every close
    batch = make_batch("arp", [
        {"t": t, "src": ip, "dst": IPS[1], "operation": 2, "src_mac": mac,
         "eth_src_mac": mac, "gratuitous": grat} for t, ip, mac, grat in rows])
    cols = batch.columns
    spec = fast.window
    times = cols["timestamp"]
    first = int(spec.first_index(int(times.min())))
    last = int(spec.last_index(int(times.max())))
    for k in range(first, last + 1, 3):  # ranges of up to three windows
        windows = WindowRange(spec, k, min(k + 2, last))
        got = fast.detect({"arp": cols}, windows)
        assert described(got) == described(full.detect({"arp": cols}, windows))
        if got:
            assert not fast._quiet(cols, np.arange(len(rows)))


def test_quiet_on_ordinary_resolution_not_on_a_conflict() -> None:
    det = detector()
    ordinary = make_batch("arp", [
        {"t": i, "src": ip, "dst": IPS[0], "operation": 1, "src_mac": mac,
         "eth_src_mac": mac} for i, (ip, mac) in enumerate(zip(IPS[1:3], MACS[1:3],
                                                               strict=True))])
    assert det._quiet(ordinary.columns, np.arange(2))
    conflict = make_batch("arp", [
        {"t": i, "src": IPS[0], "dst": IPS[1], "operation": 2, "src_mac": mac,
         "eth_src_mac": mac} for i, mac in enumerate(MACS[:2])])
    assert not det._quiet(conflict.columns, np.arange(2))


def test_some_ip_has_two_macs_grows_past_small_tables() -> None:
    n = 5000  # distinct addresses: the table is sized from the rows
    words = np.zeros((n, 2), np.uint64)
    words[:, 1] = np.arange(n, dtype=np.uint64) * np.uint64(0x100000001)
    macs = np.arange(n, dtype=np.int64)
    none = np.zeros((0, 2), np.uint64)
    idx = np.arange(n, dtype=np.int64)
    assert not _some_ip_has_two_macs(idx, words, macs, none)
    words[n - 1] = words[3]  # the last row claims row 3's address with another MAC
    assert _some_ip_has_two_macs(idx, words, macs, none)
    gateway = np.frombuffer(ip_to_bytes16("10.9.9.9"), np.uint64).reshape(1, 2).copy()
    assert not _some_ip_has_two_macs(idx[:10], words, macs, gateway)
    words[5] = gateway[0]
    assert _some_ip_has_two_macs(idx[:10], words, macs, gateway)


def test_min_macs_below_two_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="min_macs must be >= 2"):
        detector(min_macs=1)
