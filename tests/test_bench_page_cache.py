"""bench/sensor.py puts every capture in the page cache as read from storage before timing it
(settle_page_cache) and prints a probe of the cache's state (page_map_ms): both must leave
the capture as it was and work on a file this user cannot write (../shared is read-only)."""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench_sensor():
    # bench/ on sys.path only while loading: bench/elasticsearch.py would shadow the client
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_sensor_under_test",
                                                      BENCH / "sensor.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture
def capture(tmp_path) -> tuple[Path, bytes]:
    body = os.urandom(3 * 1024 * 1024 + 123)  # not a whole number of pages or read chunks
    path = tmp_path / "capture.pcap"
    path.write_bytes(body)
    return path, body


def test_settle_keeps_the_bytes_and_reads_to_the_end(bench_sensor, capture):
    path, body = capture
    bench_sensor.settle_page_cache(path, chunk=1 << 16)
    assert path.read_bytes() == body


def test_settle_and_probe_work_on_a_read_only_file(bench_sensor, capture, monkeypatch):
    path, body = capture
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    # root may open a read-only file for writing anyway: check the flags asked for too
    asked = []
    real_open = os.open

    def recording_open(file, flags, *args, **kwargs):
        asked.append(flags)
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    try:
        bench_sensor.settle_page_cache(path)
        assert bench_sensor.page_map_ms(path) >= 0.0
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert asked and all(flags & (os.O_WRONLY | os.O_RDWR) == 0 for flags in asked)
    assert path.read_bytes() == body


def test_probe_releases_its_mapping(bench_sensor, capture):
    path, body = capture
    for _ in range(3):  # a mapping left open would keep the file busy: no error, same bytes
        assert bench_sensor.page_map_ms(path) >= 0.0
    assert path.read_bytes() == body
