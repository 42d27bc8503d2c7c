"""exfil_upload's per-slice byte sums kept on arrival (correlation/exfil_sketch.py): the sums
against plain Python, the closes they rule out, and the alerts against the exact path
(every close grouping the held rows) through the engine."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from network_builders import flows

from correlation.detector import WindowRange, WindowSpec
from correlation.engine import CorrelationEngine, default_config, merge_config
from correlation.exfil_sketch import SliceSums, source_buckets
from correlation.exfiltration import UploadDetector, _address_words
from sensors.packets import ip_to_bytes16

HOP = 100
SOURCES = ["10.0.0.1", "10.0.0.2", "10.0.1.1", "192.168.5.9", "fd00::7", "172.16.0.3"]
DESTINATIONS = ["203.0.113.7", "198.51.100.9", "2001:db8::5"]


def words_of(hosts: list[str]) -> np.ndarray:
    column = np.frombuffer(b"".join(ip_to_bytes16(h) for h in hosts), "V16")
    return _address_words(column) if hosts else np.zeros((0, 2), np.uint64)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12 * HOP - 1), st.sampled_from(SOURCES),
                          st.integers(0, 2**40), st.booleans()), max_size=200),
       st.integers(1, 4), st.integers(0, 8))
def test_slice_sums_equal_the_dict_pass(rows, batches, first) -> None:
    """Per (slice, bucket) sums and per-slice counts of the kept rows, whatever the
    batching; hot_buckets = the buckets some window's slices bring to the threshold."""
    sums = SliceSums(HOP, bits=3)  # 8 buckets: sources share them
    want_sums: dict = {}
    want_rows: dict = {}
    for part in np.array_split(np.arange(len(rows)), batches):
        chunk = [rows[i] for i in part.tolist()]
        times = np.array([r[0] for r in chunk], np.int64)
        words = words_of([r[1] for r in chunk])
        values = np.array([r[2] for r in chunk], np.uint64)
        keep = np.array([r[3] for r in chunk], bool)
        sums.add_rows(keep, times, words, values)
        buckets = source_buckets(words, 3) if chunk else np.zeros(0, np.int64)
        for r, b in zip(chunk, buckets.tolist(), strict=True):
            if r[3]:
                key = (r[0] // HOP, b)
                want_sums[key] = want_sums.get(key, 0.0) + float(r[2])
                want_rows[r[0] // HOP] = want_rows.get(r[0] // HOP, 0) + 1
    got = {(s, b): float(v) for s, table in sums.sums.items()
           for b, v in enumerate(table.tolist()) if v}
    assert got == {k: v for k, v in want_sums.items() if v}
    assert {s: c for s, c in sums.counts.items() if c} == want_rows
    # windows of 3 slices hopping by one: the hot buckets of windows first..first+2
    windows = WindowRange(WindowSpec(3 * HOP, HOP), first, first + 2)
    threshold = 2.0**40
    # (one-sided: a bucket within a relative 1e-9 below the threshold counts as hot)
    want_hot = {b for b in range(8) if any(
        sum(want_sums.get((s, b), 0.0) for s in range(k, k + 3)) >= threshold * (1 - 1e-9)
        for k in range(first, first + 3))}
    assert set(sums.hot_buckets(windows, threshold).tolist()) == want_hot


def test_source_buckets_match_the_kernel() -> None:
    """The close recomputes buckets with numpy: they must be the ones select added to."""
    words = words_of(SOURCES)
    sums = SliceSums(HOP, bits=6)
    sums.add(np.zeros(len(SOURCES), np.int64), words, np.arange(1, len(SOURCES) + 1))
    table = sums.sums[0]
    for i, b in enumerate(source_buckets(words, 6).tolist()):
        assert table[b] >= i + 1


def test_covers_needs_every_held_row_added() -> None:
    sums = SliceSums(HOP)
    windows = WindowRange(WindowSpec(2 * HOP, HOP), 0, 0)
    sums.add(np.array([10, 20, 150], np.int64), words_of(SOURCES[:3]), np.ones(3))
    assert sums.covers(windows, 3)
    assert sums.covers(windows, 2)  # rows the engine dropped: sums only larger
    assert not sums.covers(windows, 4)  # a row select never saw
    assert not sums.covers(windows, None)  # columns without a count (a plain dict)
    far = WindowRange(WindowSpec(2 * HOP, HOP), 0, 5000)  # the watermark jumped a gap
    assert not sums.covers(far, 3)
    sums.add(np.array([0, 100 * HOP * 4096], np.int64), words_of(SOURCES[:2]), np.ones(2))
    assert not sums.covers(windows, 3)  # a batch of too many slices: not summed


# --- through the engine: the same alerts as the exact path -------------------------------

SECTION = {"min_upload_bytes": 5_000_000, "window_s": 600, "hop_s": 100}


def engine_with(use_arrivals: bool) -> tuple[CorrelationEngine, UploadDetector]:
    config = merge_config(default_config(), {"detectors": {"exfil_upload": SECTION}})
    detector = UploadDetector(config["detectors"]["exfil_upload"])
    detector.use_arrivals = use_arrivals
    return CorrelationEngine(config, detectors=[detector]), detector


def alerts_of(engine: CorrelationEngine, batches: list) -> list[tuple]:
    out = []
    for batch in batches:
        out += engine.push(batch)
    out += engine.flush()
    return [(a["event"]["id"], a["rule"]["id"], a["cirtsa"]["alert"]["key"],
             a["cirtsa"]["alert"]["window"]["start"], a["cirtsa"]["evidence"]) for a in out]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.sampled_from(SOURCES),
                          st.sampled_from(DESTINATIONS), st.integers(1, 4_000_000),
                          st.integers(0, 200_000)), min_size=1, max_size=40),
       st.integers(1, 6))
def test_upload_alerts_equal_the_exact_path(rows, batches) -> None:
    rows = sorted(rows)
    built = [dict(src=s, dst=d, t=t, dport=443, spay=up, dpay=down, spk=10, dpk=10)
             for t, s, d, up, down in rows]
    parts = [p for p in np.array_split(np.arange(len(built)), batches) if p.size]
    fast, fast_detector = engine_with(True)
    exact, _ = engine_with(False)
    got = alerts_of(fast, [flows([built[i] for i in p.tolist()]) for p in parts])
    want = alerts_of(exact, [flows([built[i] for i in p.tolist()]) for p in parts])
    assert got == want


def test_quiet_closes_are_ruled_out_and_uploads_still_found() -> None:
    # a host uploading 6 MB to one destination in 5 minutes among small benign flows
    benign = [dict(src=SOURCES[i % 4], dst=DESTINATIONS[i % 3], t=i * 7.0, spay=20_000,
                   dpay=50_000) for i in range(400)]
    upload = [dict(src="10.0.0.9", dst="203.0.113.77", t=1500 + i * 30.0, spay=1_000_000,
                   dpay=1_000) for i in range(6)]
    rows = sorted(benign + upload, key=lambda r: r["t"])
    batches = [flows(rows[i:i + 50]) for i in range(0, len(rows), 50)]
    engine, detector = engine_with(True)
    got = alerts_of(engine, batches)
    assert {(rule, key) for _, rule, key, _, _ in got} == {
        ("cirtsa.exfil.upload", "10.0.0.9|203.0.113.77")}
    assert detector.stats["closes_ruled_out_on_arrival_sums"] > 0
    exact, _ = engine_with(False)
    assert alerts_of(exact, [flows(rows[i:i + 50]) for i in range(0, len(rows), 50)]) == got


def test_detect_on_rows_select_never_saw_takes_the_exact_path() -> None:
    """Rows buffered without this detector's select (no sums added for them) must not be
    ruled out: the held-row count exceeds the added rows, so the close groups the rows."""
    rows = [dict(src="10.0.0.9", dst="203.0.113.77", t=i * 30.0, spay=1_000_000, dpay=0)
            for i in range(6)]
    engine, detector = engine_with(True)
    batch = flows(rows)
    store = engine._stores["flow"]
    store.append(batch.columns, [np.arange(len(rows))])  # buffered, never selected
    view = store.view(engine._states[0].users["flow"], detector.inputs[0].columns)
    t = batch.columns["timestamp"]
    found = []
    for k in range(int(detector.window.first_index(int(t.min()))),
                   int(detector.window.last_index(int(t.max()))) + 1):
        found += detector.detect({"flow": view}, WindowRange(detector.window, k, k))
    assert {f.key for f in found} == {"10.0.0.9|203.0.113.77"}
    assert detector.stats["closes_ruled_out_on_arrival_sums"] == 0
