"""The compiled passes of correlation/exfiltration.py against plain Python: exfil_volume's
(window, host) grouping and its baseline insertion order, exfil_upload's range sum."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from network_builders import flows

from correlation.detector import WindowRange
from correlation.exfiltration import (
    VolumeBaselineDetector,
    _address_words,
    _host_window_sums,
    _sum_in_range,
)
from pipeline.config import load_config
from sensors.packets import ip_to_bytes16

HOP = 100
ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.1.1", "192.168.5.9", "fd00::7", "172.16.0.3"]


def reference_groups(idx, times, hosts, sent, received, hop):
    """{(window, host): [first row, sum sent, sum received]} in first-seen order."""
    out: dict = {}
    for r in idx:
        key = (times[r] // hop, hosts[r])
        entry = out.setdefault(key, [r, 0.0, 0.0])
        entry[1] += float(sent[r])
        entry[2] += float(received[r])
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5 * HOP - 1), st.sampled_from(ADDRESSES),
                          st.integers(0, 2**40), st.integers(0, 2**40)), max_size=300),
       st.data())
def test_host_window_sums_equal_the_dict_pass(rows, data) -> None:
    times = np.array([r[0] for r in rows], np.int64)
    hosts = [r[1] for r in rows]
    column = np.frombuffer(b"".join(ip_to_bytes16(h) for h in hosts), "V16")
    sent = np.array([r[2] for r in rows], np.uint64)
    received = np.array([r[3] for r in rows], np.uint64)
    idx = np.array(sorted(data.draw(st.sets(st.integers(0, max(len(rows) - 1, 0)))
                                    if rows else st.just(set()))), np.int64)
    words = _address_words(column) if rows else np.zeros((0, 2), np.uint64)
    group_k, group_row, got_sent, got_received = _host_window_sums(
        idx, times, words, sent, received, HOP, 0, 4)
    want = reference_groups(idx.tolist(), times.tolist(), hosts, sent.tolist(),
                            received.tolist(), HOP)
    assert [(int(k), hosts[r]) for k, r in zip(group_k, group_row, strict=True)] == list(want)
    assert group_row.tolist() == [v[0] for v in want.values()]
    assert got_sent.tolist() == [v[1] for v in want.values()]
    assert got_received.tolist() == [v[2] for v in want.values()]
    if idx.size and len(set((times[idx] // HOP).tolist())) == 1:  # one window: no division
        k = int(times[idx[0]] // HOP)
        one = _host_window_sums(idx, times, words, sent, received, HOP, k, k)
        assert all(np.array_equal(a, b) for a, b in zip(one, (group_k, group_row, got_sent,
                                                               got_received),
                                                     strict=True))


def test_host_window_sums_grow_their_table() -> None:
    n = 5000  # distinct hosts: the table starts at 1,024 slots and doubles
    column = np.frombuffer(b"".join(ip_to_bytes16(f"10.{i // 250}.{i % 250}.1")
                                    for i in range(n)), "V16")
    idx = np.arange(2 * n)
    rows = np.concatenate([np.arange(n), np.arange(n)])
    words = _address_words(column[rows])
    group_k, group_row, sent, _ = _host_window_sums(
        idx, np.zeros(2 * n, np.int64), words, np.ones(2 * n, np.uint64),
        np.ones(2 * n, np.uint64), HOP, 0, 0)
    assert group_k.tolist() == [0] * n
    assert sent.tolist() == [2.0] * n
    assert group_row.tolist() == list(range(n))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 2**50)), max_size=200),
       st.integers(0, 1000), st.integers(0, 1000))
def test_sum_in_range_equals_numpy(rows, start, end) -> None:
    times = np.array([r[0] for r in rows], np.int64)
    values = np.array([r[1] for r in rows], np.uint64)
    inside = (times >= start) & (times < end)
    assert _sum_in_range(times, values, start, end) == float(values[inside].sum())


def test_volume_inserts_new_hosts_in_window_then_address_order() -> None:
    # The baseline's insertion numbers decide eviction among equally recent hosts: new hosts
    # of a close enter window by window, each window's in address-word order (the order of
    # the ranked codes the grouping replaced), not in order of arrival.
    config = {**load_config()["correlation"]["detectors"]["exfil_volume"], "window_s": 100,
              "hop_s": 100}
    detector = VolumeBaselineDetector(config)
    hosts = ["10.0.0.9", "10.0.0.2", "192.168.0.1", "10.0.0.5", "10.0.0.2", "172.16.0.1"]
    times = [150, 120, 130, 20, 10, 160]  # windows 1, 1, 1, 0, 0, 1 (of the builder's base)
    batch = flows([dict(src=h, dst="203.0.113.1", t=t, spay=100, dpay=10)
                   for h, t in zip(hosts, times, strict=True)])
    cols = {name: batch.columns[name] for name in detector.input_spec("flow").columns}
    order = np.argsort(cols["timestamp"], kind="stable")
    cols = {name: column[order] for name, column in cols.items()}
    first = int(cols["timestamp"].min()) // detector.window.hop_ns  # (the builder's epoch)
    assert int(cols["timestamp"].max()) // detector.window.hop_ns == first + 1
    detector.detect({"flow": cols}, WindowRange(detector.window, first, first + 1))
    b = detector.baseline
    inserted = sorted(range(b.n), key=lambda e: b.seq[e])
    words = [(int(b.hi[e]), int(b.lo[e])) for e in inserted]
    want = []
    for k in (0, 1):
        new = {h for h, t in zip(hosts, times, strict=True) if t // 100 == k}
        new -= {h for h, t in zip(hosts, times, strict=True) if t // 100 < k}
        want += sorted(tuple(_address_words(np.frombuffer(ip_to_bytes16(h), "V16"))[0]
                             .tolist()) for h in new)
    assert words == want
    assert (b.first[inserted] - first).tolist() == [0, 0, 1, 1, 1]
