"""Headers decoded during the capture walk (pcap_reader._walk_pcap -> PacketBatch.common_headers
-> decode): decode() of a batch as read equals the column-wise decoder and the decoder's own
kernel, on crafted, cut and mutated frames (with snaplen clipping), on real captures, and
the reader's headers are used only for the very columns they were decoded from."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_decode_fuzz import COLUMNS, TEMPLATES

from sensors.decode import decode, decode_columnwise
from sensors.packets import DecodedPackets, PacketBatch
from sensors.pcap_reader import CaptureReader

PCAPS = Path(__file__).resolve().parents[2] / "shared" / "pcaps"
ALL_COLUMNS = [*COLUMNS, "payload_offset", "ts_ns", "wirelen", "caplen", "interface"]


def pcap_file(tmp_path: Path, frames: list[bytes], snaplen: int, linktype: int = 1) -> Path:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)]
    for i, frame in enumerate(frames):
        out.append(struct.pack("<IIII", 1_700_000_000 + i, i, len(frame), len(frame) + 4)
                   + frame)
    path = tmp_path / f"f{len(list(tmp_path.iterdir()))}.pcap"
    path.write_bytes(b"".join(out))
    return path


def assert_same(got: DecodedPackets, want: DecodedPackets) -> None:
    for name in ALL_COLUMNS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert got.weird == want.weird


def without_headers(batch: PacketBatch) -> PacketBatch:
    return dataclasses.replace(batch, common_headers=None)


def check_batches(path: Path, batch_packets: int) -> int:
    """Every batch read: the reader's headers are there and decode with them equals the
    decoder without them and the column-wise decoder. Returns the packets checked."""
    checked = 0
    with CaptureReader(path, batch_packets=batch_packets) as reader:
        for batch in reader.batches():
            assert batch.common_headers is not None and batch.common_headers.decoded_from(batch)
            reference = decode_columnwise(without_headers(batch))
            own_kernel = decode(without_headers(batch))
            fused = decode(batch)
            assert_same(fused, reference)
            assert_same(fused, own_kernel)
            checked += len(batch)
    return checked


mutation = st.tuples(st.integers(0, 200), st.integers(0, 255))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(range(len(TEMPLATES))), st.integers(0, 200),
                          st.lists(mutation, max_size=4)), min_size=1, max_size=12),
       st.sampled_from([0, 20, 38, 54, 65535]), st.integers(1, 5))
def test_walk_headers_equal_the_decoder_on_cut_and_mutated_frames(tmp_path, specs, snaplen,
                                                                   batch_packets):
    frames = []
    for index, cut, mutations in specs:
        frame = bytearray(TEMPLATES[index][0][:cut])
        for at, value in mutations:
            if at < len(frame):
                frame[at] = value
        frames.append(bytes(frame))
    # Ethernet frames (the common case), and the same bytes as raw-IP and Linux cooked
    # (SLL, SLL2) files, which the walk decodes too
    for linktype in (1, 101, 113, 276):
        path = pcap_file(tmp_path, frames, snaplen, linktype)
        assert check_batches(path, batch_packets) == len(frames)


def test_snaplen_clipping_is_applied_before_the_walk_decodes(tmp_path):
    """caplen above the header snaplen: the reader clips it; the walk's headers are those of
    the clipped packet (a TCP header cut by the snaplen is not a common-case row)."""
    frame = TEMPLATES[0][0]
    path = pcap_file(tmp_path, [frame, frame], snaplen=40)
    with CaptureReader(path) as reader:
        (batch,) = list(reader.batches())
    assert batch.caplen.tolist() == [40, 40]
    fused = decode(batch)
    assert_same(fused, decode_columnwise(without_headers(batch)))
    assert fused.weird == {"truncated_tcp": 2}


def test_headers_are_taken_once_and_only_for_their_own_columns(tmp_path):
    frames = [TEMPLATES[0][0], TEMPLATES[12][0], TEMPLATES[13][0]]
    path = pcap_file(tmp_path, frames, snaplen=65535)
    with CaptureReader(path) as reader:
        (batch,) = list(reader.batches())
    first = decode(batch)
    assert batch.common_headers is None  # taken: the result owns those columns
    assert_same(decode(batch), first)  # a second decode decodes afresh, the same

    with CaptureReader(path) as reader:
        (batch,) = list(reader.batches())
    headers = batch.common_headers
    # A replaced caplen column (shorter packets) must not reuse the headers of the old one.
    batch.caplen = np.full(3, 30, dtype=np.uint32)
    assert not headers.decoded_from(batch)
    shortened = decode(batch)
    assert_same(shortened, decode_columnwise(without_headers(batch)))
    # 30 bytes: no whole IP header left (the reader's headers had all three as IP rows)
    assert (shortened.ip_version == 0).all() and shortened.weird == {"truncated_IP": 3}
    for name in ("offset", "linktype", "data"):
        with CaptureReader(path) as reader:
            (batch,) = list(reader.batches())
        headers = batch.common_headers
        setattr(batch, name, getattr(batch, name).copy())
        assert not headers.decoded_from(batch), name


REAL = ["benign/zeek__http_get.pcap", "port_scan/simplescan__backscatter.pcap",
        "exfiltration/ndpi__icmp-tunnel.pcap", "dns_tunneling/ndpi__dns2tcp_tunnel.pcap",
        "malformed/suricata-verify__nfs3-pcap-v2.1-bigendian.pcap"]


@pytest.mark.parametrize("name", REAL)
def test_real_captures_decode_the_same_with_the_walk_headers(name):
    path = PCAPS / name
    if not path.is_file():
        pytest.skip(f"{path} not available (tests need the shared captures beside the repo)")
    assert check_batches(path, 777) > 0


@pytest.mark.parametrize("batch_packets", [255, 256, 600, 4095, 4096, 65536])
@pytest.mark.parametrize(("count", "padding"), [(1300, 3000), (4500, 0)])
def test_walk_headers_across_decode_chunks(tmp_path, batch_packets, count, padding):
    """The walk decodes the records walked since its last decode once they span
    _DECODE_BYTES (256 KB: the padded frames) or number _DECODE_RECORDS (4096): rows on both
    sides of each chunk edge and of batch edges decode like the decoder."""
    frames = [TEMPLATES[i % len(TEMPLATES)][0][:max(0, 90 - i % 97)] if i % 5 == 0
              else TEMPLATES[(i * 7) % len(TEMPLATES)][0] + bytes(padding * (i % 3 == 1))
              for i in range(count)]
    for snaplen in (0, 54, 65535):
        path = pcap_file(tmp_path, frames, snaplen)
        assert check_batches(path, batch_packets) == len(frames)
