"""Property tests for the capture reader on hostile input: random bytes and mutated valid
captures. Only CaptureError may escape; batches must be self-consistent and bounded by the
file's size; a truncated file reads as a prefix of the whole one."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensors.decode import WALK_TUNNEL_PORTS, _decode_common, _decode_tunnel_rows
from sensors.pcap_reader import CaptureError, CaptureReader

_PCAP_MAGICS = [b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"]
_SHB_START = b"\x0a\x0d\x0d\x0a"
_MIN_RECORD = 12  # smallest pcap record header / pcapng block: bounds packets per byte
_FUZZ = settings(max_examples=250, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def _block(e: str, btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack(e + "II", btype, len(body) + 12) + body + struct.pack(e + "I",
                                                                               len(body) + 12)


def _valid_pcap() -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 1)]
    for i in range(6):
        data = bytes(range(i, i + 40 + 7 * i))
        out.append(struct.pack("<IIII", 1_700_000_000 + i, i, len(data), len(data) + i) + data)
    return b"".join(out)


def _valid_pcapng() -> bytes:
    def section(e: str) -> bytes:
        shb = _block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))
        tsresol = struct.pack(e + "HH", 9, 1) + b"\x94\0\0\0" + bytes(4)  # 2^-20, endofopt
        idbs = (_block(e, 1, struct.pack(e + "HHI", 1, 0, 0) + tsresol)
                + _block(e, 1, struct.pack(e + "HHI", 101, 0, 64)))
        epbs = b"".join(_block(e, 6, struct.pack(e + "IIIII", i % 2, 0, 1 << 20 | i, 30 + i,
                                                 30 + i) + bytes(30 + i)) for i in range(3))
        spb = _block(e, 3, struct.pack(e + "I", 50) + bytes(50))
        unknown = _block(e, 0x0BAD, b"skip me")
        return shb + idbs + epbs + unknown + spb
    return section("<") + section(">")


VALID = {"pcap": _valid_pcap(), "pcapng": _valid_pcapng()}
_counter = itertools.count()


def check_file(folder: Path, content: bytes,
               batch_packets: int = 4) -> tuple[list[tuple], CaptureReader] | None:
    """Read `content` as a capture and check every invariant; return the packets read and
    the (closed) reader, or None when the file was rejected with CaptureError."""
    path = folder / f"f{next(_counter)}.cap"  # a fresh name: never rewrite a mapped file
    path.write_bytes(content)
    size = len(content)
    try:
        reader = CaptureReader(path, batch_packets=batch_packets)
    except CaptureError as exc:
        text = str(exc)
        assert "\n" not in text and text.startswith(f"{path}: ") and text.endswith(")")
        assert 0 <= exc.offset <= size
        return None
    packets: list[tuple] = []
    with reader:
        for batch in reader.batches():
            n = len(batch)
            assert 0 < n <= batch_packets and batch.first_index == len(packets)
            columns = (batch.offset, batch.caplen, batch.wirelen, batch.ts_ns, batch.linktype,
                       batch.interface)
            assert all(c.shape == (n,) for c in columns)
            assert batch.data.shape == (size,) and batch.data.dtype == np.uint8
            end = batch.offset.astype(np.int64) + batch.caplen
            assert (batch.offset >= 0).all() and (end <= size).all()
            # Memory per batch is bounded by the file: no packet without its own header bytes.
            assert n * _MIN_RECORD <= size
            assert sum(c.nbytes for c in columns) <= 3 * size
            for i in range(n):
                start = int(batch.offset[i])
                packets.append((content[start:start + int(batch.caplen[i])],
                                int(batch.ts_ns[i]), int(batch.wirelen[i]),
                                int(batch.linktype[i]), int(batch.interface[i])))
    assert reader.packets == len(packets)
    if reader.damage is not None:
        assert reader.damage.packets_before == len(packets)
        assert 0 <= reader.damage.offset <= size and "\n" not in str(reader.damage)
    assert all("\n" not in w and w.startswith(f"{path}: ") for w in reader.warnings)
    return packets, reader


@_FUZZ
@given(prefix=st.sampled_from([b""] + _PCAP_MAGICS + [_SHB_START]),
       body=st.binary(max_size=600), batch_packets=st.integers(1, 5))
def test_random_bytes_only_capture_error(tmp_path: Path, prefix: bytes, body: bytes,
                                         batch_packets: int) -> None:
    check_file(tmp_path, prefix + body, batch_packets)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(VALID)))
    data = bytearray(VALID[kind])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:  # extreme values make length fields implausible
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
    return kind, bytes(data)


@_FUZZ
@given(case=mutated(), batch_packets=st.integers(1, 5))
def test_mutated_captures_only_capture_error(tmp_path: Path, case: tuple[str, bytes],
                                             batch_packets: int) -> None:
    check_file(tmp_path, case[1], batch_packets)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_truncation_reads_a_prefix(tmp_path: Path, kind: str) -> None:
    """Cut the valid capture at every byte: either CaptureError (header cut) or a prefix of
    the whole capture's packets; damage exactly when the cut is not at a record boundary."""
    content = VALID[kind]
    whole, reader = check_file(tmp_path, content)
    assert reader.damage is None and len(whole) == (6 if kind == "pcap" else 8)
    boundaries = set()
    for cut in range(len(content) + 1):
        result = check_file(tmp_path, content[:cut], batch_packets=3)
        if result is None:
            continue
        got, reader = result
        # SPBs carry no timestamp and take the last one seen: compare without it.
        assert [p[:1] + p[2:] for p in got] == [p[:1] + p[2:] for p in whole[:len(got)]]
        if reader.damage is None:
            boundaries.add(cut)
    assert len(content) in boundaries and len(boundaries) >= len(whole)


# --- the compiled record walks against the per-record Python walks they replaced ----------


def _reference_walk_pcap(buf: bytes, pos: int, end: int, endian: str, lengths: int,
                         max_records: int, max_caplen: int, frac_to_ns: int
                         ) -> tuple[list[tuple[int, int, int, int]], int, int]:
    """The former pure-Python _walk_pcap (struct per record header), with each record's
    (start, caplen, wire length, ns timestamp) as the former column decode read them."""
    records: list[tuple[int, int, int, int]] = []
    for _ in range(max_records):
        if pos > end - 16:
            break
        sec, frac, len8, len12 = struct.unpack_from(endian + "IIII", buf, pos)
        caplen, wirelen = ((len8, len12), (len12, len8),
                           (min(len8, len12), max(len8, len12)))[lengths]
        if caplen > max_caplen:
            return records, pos, caplen
        records.append((pos, caplen, wirelen, sec * 1_000_000_000 + frac * frac_to_ns))
        pos += 16 + caplen
    return records, pos, -1


def _reference_walk_pcapng(buf: bytes, pos: int, end: int, endian: str,
                           max_records: int) -> tuple[list[int], int]:
    """The former pure-Python _walk_pcapng."""
    starts: list[int] = []
    for _ in range(max_records):
        if pos > end - 12:
            break
        btype, blen = struct.unpack_from(endian + "II", buf, pos)
        if blen < 12 or btype not in (2, 3, 6):
            break
        starts.append(pos)
        pos += blen
    return starts, pos


def _record_stream(draw: st.DrawFn, endian: str) -> bytes:
    """Plausible records/blocks mixed with hostile lengths and random tails."""
    out = b""
    for _ in range(draw(st.integers(0, 8))):
        length = draw(st.one_of(st.integers(0, 40), st.sampled_from([2**31, 2**32 - 1, 262145])))
        btype = draw(st.sampled_from([2, 3, 6, 1, 0x0BAD]))
        out += struct.pack(endian + "IIII", btype, length, length, length // 2)
        out += draw(st.binary(max_size=40))
    return out


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data(), st.sampled_from(["<", ">"]), st.integers(0, 2), st.integers(1, 6),
       st.sampled_from([0, 30, 262144]), st.integers(0, 20), st.sampled_from([1, 1000]))
def test_compiled_pcap_walk_equals_python_walk(data, endian, lengths, max_records,
                                               max_caplen, pos, frac_to_ns):
    from sensors import pcap_reader

    buf = _record_stream(data.draw, endian)
    end = data.draw(st.integers(0, len(buf)))  # an end inside the buffer, as after a cut
    arr = np.frombuffer(buf, dtype=np.uint8)
    snaplen = data.draw(st.sampled_from([0, 14, 40]))
    linktype = data.draw(st.sampled_from([1, 101, 113, 276]))
    offset, caplen, wirelen, ts_ns, new_pos, bad, linktypes, headers = pcap_reader._walk_pcap(
        arr, pos, end, endian == ">", lengths, max_records, max_caplen, frac_to_ns, snaplen,
        linktype)
    starts = offset - 16  # the walk returns the packets' offsets (record start + header)
    records = list(zip(starts.tolist(), caplen.tolist(), wirelen.tolist(), ts_ns.tolist(),
                       strict=True))
    ref = _reference_walk_pcap(buf, pos, end, endian, lengths, max_records, max_caplen,
                               frac_to_ns)
    assert (records, int(new_pos), int(bad)) == ref
    # The headers decoded on the way are the decoder's kernel on the same packet bounds
    # (caplen clipped to the snaplen, as the reader clips it, and to the buffer).
    assert linktypes.tolist() == [linktype] * len(records)
    start = starts + 16
    clipped = np.minimum(caplen, snaplen) if snaplen else caplen
    stop = np.minimum(start + clipped.astype(np.int64), arr.size)
    expected = _decode_common(arr, start, stop, linktypes.astype(np.int64))
    tunnel = np.zeros(len(records), dtype=np.uint8)
    tunnel_id = np.zeros(len(records), dtype=np.uint64)
    _decode_tunnel_rows(arr, WALK_TUNNEL_PORTS, expected, tunnel, tunnel_id)  # its tunnel pass
    assert np.array_equal(headers[4], tunnel) and np.array_equal(headers[5], tunnel_id)
    _assert_same_headers(headers[:4], expected)


def _assert_same_headers(got: tuple, expected: tuple) -> None:
    """Equal _common_columns outputs: done mask, every kernel column, src and dst."""
    (done, columns, src, dst), (e_done, e_columns, e_src, e_dst) = got, expected
    assert np.array_equal(done, e_done)
    # Rows not done are partial by contract (the column-wise path overwrites them).
    for column, e_column in zip(columns, e_columns, strict=True):
        assert column.dtype == e_column.dtype
        assert np.array_equal(column[done], e_column[done])
    assert np.array_equal(src[done], e_src[done]) and np.array_equal(dst[done], e_dst[done])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data(), st.sampled_from(["<", ">"]), st.integers(1, 6), st.integers(0, 20))
def test_compiled_pcapng_walk_equals_python_walk(data, endian, max_records, pos):
    from sensors import pcap_reader

    buf = _record_stream(data.draw, endian)
    end = data.draw(st.integers(0, len(buf)))
    arr = np.frombuffer(buf, dtype=np.uint8)
    starts, new_pos = pcap_reader._walk_pcapng(arr, pos, end, endian == ">", max_records)
    assert (starts.tolist(), int(new_pos)) == _reference_walk_pcapng(buf, pos, end, endian,
                                                                     max_records)
