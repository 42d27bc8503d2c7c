"""The reader maps a capture's pages in ahead of each batch (a read per fault-around
window, pcap_reader._map_in): the packets, damage and warnings are the same with it, with a
first span shorter than a batch and without it (span 0)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from sensors import pcap_reader
from sensors.pcap_reader import CaptureReader


def _pcap(path: Path, sizes: list[int], cut: int = 0) -> Path:
    """A classic pcap of frames of the given sizes, its last `cut` bytes cut off."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for n, size in enumerate(sizes):
        frame = bytes((n * 7 + i) % 256 for i in range(size))
        out.append(struct.pack("<IIII", 1_700_000_000 + n, n, size, size) + frame)
    content = b"".join(out)
    path.write_bytes(content[:len(content) - cut] if cut else content)
    return path


def _read(path: Path, batch_packets: int) -> tuple[list[tuple], str, list[str], list[int]]:
    with CaptureReader(path, batch_packets=batch_packets) as reader:
        spans = []
        rows = []
        for batch in reader.batches():
            spans.append(reader._populate_span)
            for i in range(len(batch)):
                start, caplen = int(batch.offset[i]), int(batch.caplen[i])
                rows.append((batch.data[start:start + caplen].tobytes(), int(batch.ts_ns[i]),
                             int(batch.wirelen[i])))
        return rows, str(reader.damage), list(reader.warnings), spans


@pytest.mark.parametrize("cut", [0, 5, 20])
@pytest.mark.parametrize("batch_packets", [1, 7, 300])
def test_populate_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: int,
                                  batch_packets: int) -> None:
    rng = np.random.default_rng(cut * 1000 + batch_packets)
    path = _pcap(tmp_path / "a.pcap", rng.integers(40, 3000, 500).tolist(), cut)
    with_populate = _read(path, batch_packets)
    # the first populate span smaller than a batch: the walk runs past the populated part
    monkeypatch.setattr(pcap_reader, "_POPULATE_FIRST", 4096)
    small = _read(path, batch_packets)
    monkeypatch.setattr(pcap_reader, "_POPULATE_FIRST", 0)
    without = _read(path, batch_packets)
    assert with_populate[:3] == small[:3] == without[:3]
    assert with_populate[0]
    assert set(without[3]) == {0}


@pytest.mark.parametrize(("begin", "stop"), [(0, 0), (0, 1), (5, 70000), (0, 200000),
                                             (131072, 300000), (299999, 400000)])
def test_map_in_reads_a_byte_per_fault_window_and_the_last(begin: int, stop: int) -> None:
    data = np.random.default_rng(begin).integers(0, 256, 300000).astype(np.uint8)
    end = min(stop, data.size)
    reads = list(range(begin, end, pcap_reader._FAULT_AROUND)) + ([end - 1] if end > begin else [])
    assert pcap_reader._map_in(data, begin, stop) == int(data[reads].astype(np.int64).sum())
