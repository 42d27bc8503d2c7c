"""Capture file reader: real captures against independent readers (scapy, tshark), crafted
pcap/pcapng files written byte by byte, every malformed capture's documented outcome, and
batch boundaries."""

from __future__ import annotations

import csv
import mmap
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scapy.utils import RawPcapNgReader, RawPcapReader

from sensors.packets import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW, PacketBatch
from sensors.pcap_reader import CaptureDamage, CaptureError, CaptureReader, read_capture

SHARED = Path(__file__).resolve().parents[2] / "shared"
PCAPS = SHARED / "pcaps"

# One real capture per format variant (MANIFEST names).
REAL_CAPTURES = [
    "port_scan/simplescan__port_scan.pcap",  # pcap, microseconds, little-endian
    "benign/zeek__http_get.pcap",  # pcap, microseconds, little-endian
    "malformed/suricata-verify__nfs3-pcap-v2.1-bigendian.pcap",  # big-endian, version 2.1
    "pcapng/pcapng-testgen__le_test001.pcapng",  # pcapng little-endian
    "pcapng/pcapng-testgen__be_test001.pcapng",  # pcapng big-endian
    "pcapng/zeek__pcapng-multi-interface.pcapng",  # 2 interfaces, ns and us resolutions
    "dns_tunneling/ndpi__dns2tcp_tunnel.pcap",  # Linux SLL link type
    "benign/ndpi__dns.pcap",  # pcapng behind a .pcap name
]


def shared_capture(name: str) -> Path:
    path = PCAPS / name
    if not path.is_file():
        pytest.skip(f"{path} not available (tests need ../shared/pcaps beside the repo)")
    return path


def manifest() -> dict[str, dict[str, str]]:
    path = PCAPS / "MANIFEST.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not available (tests need ../shared/pcaps beside the repo)")
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["file"]: row for row in csv.DictReader(fh, delimiter="\t")}


def rows(batches: list[PacketBatch]) -> list[tuple[bytes, int, int, int, int, int]]:
    """(packet bytes, ts_ns, caplen, wirelen, linktype, interface) per packet."""
    out = []
    for b in batches:
        for i in range(len(b)):
            start, caplen = int(b.offset[i]), int(b.caplen[i])
            out.append((b.data[start:start + caplen].tobytes(), int(b.ts_ns[i]), caplen,
                        int(b.wirelen[i]), int(b.linktype[i]), int(b.interface[i])))
    return out


def read_all(path: Path, batch_packets: int = 65536) -> tuple[list[PacketBatch], CaptureReader]:
    with CaptureReader(path, batch_packets=batch_packets) as reader:
        return list(reader.batches()), reader


def scapy_rows(path: Path) -> list[tuple[bytes, int, int, int]]:
    """(bytes, ts_ns, wirelen, linktype) per packet as scapy's raw readers give them."""
    with open(path, "rb") as fh:
        is_ng = fh.read(4) == b"\x0a\x0d\x0d\x0a"
    reader = (RawPcapNgReader if is_ng else RawPcapReader)(str(path))
    out = []
    with reader:
        for data, meta in reader:
            if is_ng:
                units = (meta.tshigh << 32) | meta.tslow
                ts_ns, linktype = units * 10**9 // meta.tsresol, meta.linktype
            else:
                ts_ns = meta.sec * 10**9 + meta.usec * (1 if reader.nano else 1000)
                linktype = reader.linktype
            out.append((data, ts_ns, meta.wirelen, linktype))
    return out


def tshark_rows(path: Path) -> list[tuple[int, int, int, str]]:
    """(ts_ns, frame.len, frame.cap_len, frame.interface_id) per frame, from tshark."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e",
         "frame.len", "-e", "frame.cap_len", "-e", "frame.interface_id"],
        capture_output=True, text=True, check=True, timeout=120).stdout
    result = []
    for line in out.splitlines():
        epoch, wirelen, caplen, interface = line.split("\t")
        seconds, _, fraction = epoch.partition(".")
        ts_ns = int(seconds) * 10**9 + int(fraction.ljust(9, "0")[:9])
        result.append((ts_ns, int(wirelen), int(caplen), interface))
    return result


# ---------------------------------------------------------------------------------------
# Crafted files
# ---------------------------------------------------------------------------------------


def pcap_bytes(records: list[tuple[int, int, bytes, int]], *, endian: str = "<",
               nano: bool = False, version: tuple[int, int] = (2, 4), snaplen: int = 65535,
               linktype: int = LINKTYPE_ETHERNET) -> bytes:
    """Classic pcap: records are (ts seconds, ts fraction, packet bytes, wire length)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, *version, 0, 0, snaplen, linktype)]
    for sec, frac, data, wirelen in records:
        out.append(struct.pack(endian + "IIII", sec, frac, len(data), wirelen) + data)
    return b"".join(out)


def block(e: str, btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    total = len(body) + 12
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total)


def shb(e: str) -> bytes:
    return block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def option(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + bytes(-len(value) % 4)


def idb(e: str, linktype: int, snaplen: int = 0, tsresol: int | None = None,
        tsoffset: int | None = None) -> bytes:
    options = b""
    if tsresol is not None:
        options += option(e, 9, bytes([tsresol]))
    if tsoffset is not None:
        options += option(e, 14, struct.pack(e + "q", tsoffset))
    if options:
        options += option(e, 0, b"")
    return block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + options)


def epb(e: str, interface: int, units: int, data: bytes, wirelen: int | None = None) -> bytes:
    wirelen = len(data) if wirelen is None else wirelen
    return block(e, 6, struct.pack(e + "IIIII", interface, units >> 32, units & 0xFFFFFFFF,
                                   len(data), wirelen) + data)


def spb(e: str, data: bytes, wirelen: int) -> bytes:
    return block(e, 3, struct.pack(e + "I", wirelen) + data)


def packet_block(e: str, interface: int, units: int, data: bytes) -> bytes:
    return block(e, 2, struct.pack(e + "HHIIII", interface, 0, units >> 32, units & 0xFFFFFFFF,
                                   len(data), len(data)) + data)


def frame(n: int, size: int = 60) -> bytes:
    """A distinct dummy frame so packets can be told apart by their bytes."""
    return bytes((n + i) % 256 for i in range(size))


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------------------
# Real captures against scapy and tshark
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_CAPTURES)
def test_real_capture_matches_scapy(name: str) -> None:
    path = shared_capture(name)
    batches, reader = read_all(path)
    ours = rows(batches)
    theirs = scapy_rows(path)
    assert reader.damage is None
    assert len(ours) == len(theirs) == reader.packets > 0
    for i, ((data, ts_ns, caplen, wirelen, linktype, _), expected) in enumerate(
            zip(ours, theirs, strict=True)):
        assert (data, ts_ns, wirelen, linktype) == expected, f"packet {i}"
        assert caplen == len(expected[0])


@pytest.mark.parametrize("name", REAL_CAPTURES)
def test_real_capture_matches_tshark(name: str) -> None:
    path = shared_capture(name)
    batches, _ = read_all(path)
    ours = rows(batches)
    theirs = tshark_rows(path)
    assert len(ours) == len(theirs) > 0
    for i, ((_, ts_ns, caplen, wirelen, _, interface), expected) in enumerate(
            zip(ours, theirs, strict=True)):
        assert (ts_ns, wirelen, caplen) == expected[:3], f"packet {i}"
        if expected[3]:  # tshark numbers pcapng interfaces
            assert interface == int(expected[3]), f"packet {i}"


def test_formats_and_link_types_detected() -> None:
    with CaptureReader(shared_capture("dns_tunneling/ndpi__dns2tcp_tunnel.pcap")) as reader:
        assert reader.format == "pcap"
        linktypes = np.concatenate([b.linktype for b in reader.batches()])
    assert set(linktypes.tolist()) == {LINKTYPE_LINUX_SLL}
    with CaptureReader(shared_capture("benign/ndpi__dns.pcap")) as reader:
        assert reader.format == "pcapng"  # decided by the magic, not the file name


def test_multi_interface_pcapng_keeps_each_interface() -> None:
    batches, _ = read_all(shared_capture("pcapng/zeek__pcapng-multi-interface.pcapng"))
    interfaces = np.concatenate([b.interface for b in batches])
    assert set(interfaces.tolist()) == {0, 1}
    assert interfaces.dtype == np.uint16


def test_big_endian_legacy_version_is_read_with_a_warning() -> None:
    path = shared_capture("malformed/suricata-verify__nfs3-pcap-v2.1-bigendian.pcap")
    _, reader = read_all(path)
    assert reader.damage is None
    assert any("legacy pcap version 2.1" in w and str(path) in w for w in reader.warnings)


def test_batch_data_is_the_mapped_file_and_columns_have_contract_dtypes() -> None:
    path = shared_capture("benign/zeek__http_get.pcap")
    reader = CaptureReader(path, batch_packets=5)
    batches = list(reader.batches())
    reader.close()
    size = path.stat().st_size
    for b in batches:
        assert b.data is batches[0].data  # one buffer for the whole file, never copied
        owner = getattr(b.data.base, "obj", b.data.base)  # numpy wraps it in a memoryview
        assert isinstance(owner, mmap.mmap) and b.data.shape == (size,)
        assert not b.data.flags.writeable
        assert b.offset.dtype == np.int64 and b.ts_ns.dtype == np.int64
        assert b.caplen.dtype == b.wirelen.dtype == np.uint32
        assert b.linktype.dtype == b.interface.dtype == np.uint16
    # Batches outlive the reader: the mapping stays while they reference it.
    first = rows(batches[:1])[0]
    assert first[0] == scapy_rows(path)[0][0]


@pytest.mark.parametrize("name", [
    "syn_flood_dos/suricata-verify__dhcp-request-flood.pcap",
    "pcapng/zeek__pcapng-multi-interface.pcapng",
    "c2_beaconing/zeek__merlinc2_quic.pcapng",
])
def test_batch_boundaries_do_not_change_the_packets(name: str) -> None:
    path = shared_capture(name)
    reference = None
    for batch_packets in (1, 7, 65536):
        batches, reader = read_all(path, batch_packets)
        sizes = [len(b) for b in batches]
        assert all(size == batch_packets for size in sizes[:-1])
        assert 0 < sizes[-1] <= batch_packets
        assert [b.first_index for b in batches] == np.cumsum([0] + sizes[:-1]).tolist()
        assert reader.packets == sum(sizes)
        got = rows(batches)
        reference = got if reference is None else reference
        assert got == reference, f"batch_packets={batch_packets}"


# ---------------------------------------------------------------------------------------
# Every malformed capture: the outcome its MANIFEST row documents
# ---------------------------------------------------------------------------------------


def malformed_files() -> list[str]:
    folder = PCAPS / "malformed"
    if not folder.is_dir():
        return []
    return sorted(f"malformed/{p.name}" for p in folder.glob("*.pcap*") if p.is_file())


@pytest.mark.parametrize("name", malformed_files() or ["malformed/(absent)"])
def test_malformed_capture_documented_outcome(name: str) -> None:
    path = shared_capture(name)
    row = manifest()[name]
    status, truth = row["parse_status"], row["ground_truth"]
    offset = re.search(r"at offset (\d+)", status)
    try:
        reader = CaptureReader(path)
    except CaptureError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(f"{path}: ")
        assert message.endswith(f"(at byte {exc.offset})")
        # Unusable per libpcap (its TESTrun expects an error), except the reserved link-type
        # bits, which we read on with a warning.
        assert ("libpcap TESTrun errstr" in truth or status.startswith("empty file")
                ), f"{name} ({status}) should be readable: {message}"
        assert not status.startswith("reserved linktype")
        if offset:
            assert exc.offset == int(offset.group(1))
        version = re.search(r"version (\d+\.\d+)", status)
        if version:
            assert f"version {version.group(1)}" in exc.reason
        if status.startswith("empty file"):
            assert exc.reason == "empty file"
        return
    with reader:
        batches = list(reader.batches())
    count = sum(len(b) for b in batches)
    assert count == reader.packets == int(row["packets"] or 0)
    assert "libpcap TESTrun errstr" not in truth or status.startswith("reserved linktype")
    if status.startswith(("implausible incl_len", "truncated record header")):
        assert reader.damage is not None and reader.damage.packets_before == count
        assert reader.damage.offset == int(offset.group(1))
        if status.startswith("implausible"):
            length = status.split()[2]
            assert reader.damage.reason.startswith(f"implausible record length {length}")
        else:
            assert reader.damage.reason.startswith("truncated record header")
        # The packets before the damage are exactly what scapy reads there.
        assert [r[0] for r in rows(batches)] == [r[0] for r in scapy_rows(path)[:count]]
    elif status.startswith("reserved linktype"):
        assert reader.damage is None
        assert any("0x00300000" in w for w in reader.warnings)
    elif status.startswith("unusual version"):
        assert reader.damage is None
        assert any(f"legacy pcap version {status.split()[-1]}" in w for w in reader.warnings)
    else:
        assert status.startswith("ok"), f"no expectation for parse_status {status!r}"
        assert reader.damage is None


def test_damage_report_is_one_line_with_file_offset_reason_and_count() -> None:
    path = shared_capture("malformed/suricata-verify__bug-6875-fuzz.pcap")
    _, reader = read_all(path)
    damage = reader.damage
    assert damage == CaptureDamage(str(path), 228, damage.reason, 1)
    assert "implausible record length 1409179648" in damage.reason
    text = str(damage)
    assert "\n" not in text
    assert all(part in text for part in (str(path), "228", damage.reason, "1 packets"))


# ---------------------------------------------------------------------------------------
# Crafted classic pcap
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_crafted_pcap_byte_order_and_resolution(tmp_path: Path, endian: str,
                                                nano: bool) -> None:
    frac = 123456789 if nano else 123456
    records = [(1700000000 + i, frac - i, frame(i, 40 + i), 100 + i) for i in range(5)]
    path = write(tmp_path, "c.pcap", pcap_bytes(records, endian=endian, nano=nano))
    batches, reader = read_all(path)
    assert reader.format == "pcap" and reader.damage is None and not reader.warnings
    scale = 1 if nano else 1000
    assert rows(batches) == [
        (data, sec * 10**9 + f * scale, len(data), wirelen, LINKTYPE_ETHERNET, 0)
        for sec, f, data, wirelen in records]


def test_crafted_pcap_link_type_upper_bits_masked(tmp_path: Path) -> None:
    fcs_bits = 0x1 << 26 | 0x4 << 28  # "FCS length present", FCS length 4
    path = write(tmp_path, "fcs.pcap", pcap_bytes([(1, 0, frame(0), 60)],
                                                  linktype=fcs_bits | LINKTYPE_RAW))
    batches, reader = read_all(path)
    assert batches[0].linktype.tolist() == [LINKTYPE_RAW] and not reader.warnings
    reserved = write(tmp_path, "res.pcap", pcap_bytes([(1, 0, frame(0), 60)],
                                                      linktype=0x00300000 | 1))
    batches, reader = read_all(reserved)
    assert batches[0].linktype.tolist() == [1]
    assert len(reader.warnings) == 1 and "0x00300001" in reader.warnings[0]


def test_crafted_pcap_truncated_last_record(tmp_path: Path) -> None:
    records = [(10, i, frame(i, 50), 50) for i in range(4)]
    full = pcap_bytes(records)
    last_record = len(full) - 16 - 50
    path = write(tmp_path, "t.pcap", full[:-7])
    batches, reader = read_all(path, batch_packets=2)
    assert [r[0] for r in rows(batches)] == [r[2] for r in records[:3]]
    assert reader.damage.offset == last_record
    assert reader.damage.reason == "truncated record data (43 of 50 bytes)"
    assert reader.damage.packets_before == 3
    # Cut inside the record header instead.
    path = write(tmp_path, "h.pcap", full[:last_record + 5])
    batches, reader = read_all(path)
    assert reader.packets == 3 and reader.damage.offset == last_record
    assert reader.damage.reason == "truncated record header (5 of 16 bytes)"


def test_crafted_pcap_implausible_length_and_length_oddities(tmp_path: Path) -> None:
    good = pcap_bytes([(1, 0, frame(0), 60), (2, 0, frame(1, 80), 40)], snaplen=70)
    bogus = struct.pack("<IIII", 3, 0, 300000, 300000) + bytes(64)
    path = write(tmp_path, "x.pcap", good + bogus)
    batches, reader = read_all(path)
    got = rows(batches)
    # caplen 80 > snaplen 70: clipped as libpcap does; caplen > wirelen: kept. Both warned.
    assert [(r[2], r[3]) for r in got] == [(60, 60), (70, 40)]
    assert got[1][0] == frame(1, 80)[:70]
    assert reader.damage.offset == len(good)
    assert reader.damage.reason.startswith("implausible record length 300000")
    assert len(reader.warnings) == 2
    assert all(w.startswith(f"{path}: ") and "\n" not in w for w in reader.warnings)


@pytest.mark.parametrize("version, caplen_field", [((2, 2), 12), ((2, 3), None)])
def test_crafted_pcap_legacy_length_order(tmp_path: Path, version: tuple[int, int],
                                          caplen_field: int | None) -> None:
    """Before 2.3 the length fields were swapped; 2.3 files may be either (libpcap rule)."""
    data = frame(7, 30)
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, *version, 0, 0, 65535, 1)
    # field at +8 says 90 (the wire length), field at +12 says 30 (the captured bytes)
    path = write(tmp_path, "old.pcap", header + struct.pack("<IIII", 5, 0, 90, 30) + data)
    batches, reader = read_all(path)
    assert rows(batches) == [(data, 5 * 10**9, 30, 90, 1, 0)]
    assert reader.damage is None and "legacy pcap version" in reader.warnings[0]


def test_zero_packet_pcap_is_not_an_error(tmp_path: Path) -> None:
    batches, reader = read_all(write(tmp_path, "e.pcap", pcap_bytes([])))
    assert batches == [] and reader.damage is None and reader.packets == 0


# ---------------------------------------------------------------------------------------
# Crafted pcapng
# ---------------------------------------------------------------------------------------


def test_crafted_pcapng_sections_interfaces_resolutions(tmp_path: Path) -> None:
    base = 1_700_000_000
    frac20 = 123_457  # units of 2^-20 s
    content = b"".join([
        shb("<"),
        idb("<", LINKTYPE_ETHERNET, tsresol=9),  # interface 0: ns
        idb("<", LINKTYPE_RAW),  # interface 1: default us
        epb("<", 0, base * 10**9 + 1, frame(0)),
        epb("<", 1, base * 10**6 + 2, frame(1)),
        shb(">"),  # new section, other byte order: interface ids restart
        idb(">", LINKTYPE_LINUX_SLL, tsresol=0x80 | 20, tsoffset=-3600),  # global 2
        epb(">", 0, (base << 20) + frac20, frame(2)),
        packet_block(">", 0, (base + 1) << 20, frame(3)),
    ])
    path = write(tmp_path, "two.pcapng", content)
    batches, reader = read_all(path)
    assert reader.format == "pcapng" and reader.damage is None and not reader.warnings
    ns20 = (base - 3600) * 10**9 + frac20 * 10**9 // 2**20
    assert [r[1:] for r in rows(batches)] == [
        (base * 10**9 + 1, 60, 60, LINKTYPE_ETHERNET, 0),
        (base * 10**9 + 2000, 60, 60, LINKTYPE_RAW, 1),
        (ns20, 60, 60, LINKTYPE_LINUX_SLL, 2),
        ((base + 1 - 3600) * 10**9, 60, 60, LINKTYPE_LINUX_SLL, 2),
    ]
    assert [r[0] for r in rows(batches)] == [frame(i) for i in range(4)]


def test_crafted_pcapng_spb_and_unknown_blocks(tmp_path: Path) -> None:
    ts_units = 1_600_000_000_000_000  # us
    content = b"".join([
        shb("<"),
        block("<", 0x00000BAD, b"custom block, skipped"),
        idb("<", LINKTYPE_ETHERNET, snaplen=64),
        block("<", 4, bytes(8)),  # name resolution block: skipped
        spb("<", frame(0, 30), 30),  # before any timestamp: ts 0
        epb("<", 0, ts_units, frame(1)),
        spb("<", frame(2, 64), 1500),  # wire 1500, snaplen 64 -> 64 bytes captured
        block("<", 5, bytes(20)),  # interface statistics block: skipped
        spb("<", frame(3, 33), 33),  # data padded to 36 in the block; caplen stays 33
    ])
    path = write(tmp_path, "spb.pcapng", content)
    for batch_packets in (1, 3, 100):
        batches, reader = read_all(path, batch_packets)
        assert reader.damage is None and not reader.warnings
        ts = ts_units * 1000
        assert rows(batches) == [
            (frame(0, 30), 0, 30, 30, 1, 0),
            (frame(1), ts, 60, 60, 1, 0),
            (frame(2, 64), ts, 64, 1500, 1, 0),
            (frame(3, 33), ts, 33, 33, 1, 0),
        ]


def test_crafted_pcapng_truncated_last_block(tmp_path: Path) -> None:
    head = shb("<") + idb("<", 1)
    packets = [epb("<", 0, i, frame(i)) for i in range(3)]
    path = write(tmp_path, "t.pcapng", head + b"".join(packets)[:-10])
    batches, reader = read_all(path)
    assert [r[0] for r in rows(batches)] == [frame(0), frame(1)]
    assert reader.damage.offset == len(head) + 2 * len(packets[0])
    assert reader.damage.reason.startswith("truncated block")
    assert reader.damage.packets_before == 2


@pytest.mark.parametrize("bad_block, reason", [
    (epb("<", 5, 0, frame(0)), "packet for interface 5"),
    (epb("<", 0, 0, frame(0), 60)[:-4] + struct.pack("<I", 99), "block length mismatch"),
    (block("<", 6, struct.pack("<IIIII", 0, 0, 0, 500, 500) + frame(0)), "overruns its block"),
    (block("<", 1, struct.pack("<HHI", 1, 0, 0) + option("<", 9, b"\x06\x06")),
     "if_tsresol option with length 2 != 1"),
    (b"\x06\x00\x00\x00\x04\x00\x00\x00", "block length 4 < 12"),
])
def test_crafted_pcapng_bad_block_is_damage(tmp_path: Path, bad_block: bytes,
                                            reason: str) -> None:
    head = shb("<") + idb("<", 1) + epb("<", 0, 1, frame(1))
    path = write(tmp_path, "bad.pcapng", head + bad_block + epb("<", 0, 2, frame(2)))
    batches, reader = read_all(path)
    assert [r[0] for r in rows(batches)] == [frame(1)]
    assert reader.damage.offset == len(head) and reason in reader.damage.reason


def test_crafted_pcapng_implausible_caplen(tmp_path: Path) -> None:
    big = bytes(300_000)
    path = write(tmp_path, "big.pcapng", shb("<") + idb("<", 1) + epb("<", 0, 0, big))
    _, reader = read_all(path)
    assert reader.packets == 0
    assert reader.damage.reason.startswith("implausible packet length 300000")


@pytest.mark.parametrize("content, reason", [
    (shb("<"), "no Interface Description Block"),
    (shb("<") + epb("<", 0, 0, frame(0)), "packet block before any Interface Description"),
    (shb("<")[:-4] + b"\x00\x00\x00\x00", "block length mismatch"),
    (shb("<") + idb("<", 1, tsresol=200), "resolution 2^-72 is too high"),
    (block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 2, 0, -1)),
     "unsupported pcapng version 2.0"),
])
def test_crafted_pcapng_unusable(tmp_path: Path, content: bytes, reason: str) -> None:
    path = write(tmp_path, "u.pcapng", content)
    with pytest.raises(CaptureError, match=re.escape(reason)):
        CaptureReader(path)


# ---------------------------------------------------------------------------------------
# Unusable files and the API around them
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, reason", [
    (b"hello, this is text\n" * 3, "not a pcap or pcapng capture (magic 68656c6c)"),
    (b"\x7fELF\x02\x01\x01" + bytes(60), "not a pcap or pcapng capture (magic 7f454c46)"),
    (b"\x1f\x8b\x08\x00" + bytes(40), "gzip-compressed"),
    (b"", "empty file"),
    (b"\xd4\xc3", "file too short"),
    (pcap_bytes([])[:20], "truncated pcap file header (20 of 24 bytes)"),
    (pcap_bytes([], version=(2, 5)), "unsupported pcap version 2.5"),
])
def test_unusable_file_raises_one_line_capture_error(tmp_path: Path, content: bytes,
                                                     reason: str) -> None:
    path = write(tmp_path, "bad.bin", content)
    with pytest.raises(CaptureError) as info:
        CaptureReader(path)
    message = str(info.value)
    assert reason in message and "\n" not in message
    assert re.fullmatch(rf"{re.escape(str(path))}: .+ \(at byte \d+\)", message)


def test_read_capture_raises_at_call_time_and_reads_otherwise(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot read the file"):
        read_capture(tmp_path / "missing.pcap")
    with pytest.raises(CaptureError, match="empty file"):
        read_capture(write(tmp_path, "empty.pcap", b""))  # no next() needed
    path = write(tmp_path, "ok.pcap", pcap_bytes([(1, 2, frame(0), 60)] * 3))
    assert sum(len(b) for b in read_capture(path, batch_packets=2)) == 3
    with pytest.raises(ValueError):
        CaptureReader(path, batch_packets=0)


def test_close_stops_iteration_and_batches_survive(tmp_path: Path) -> None:
    path = write(tmp_path, "ok.pcap", pcap_bytes([(1, 2, frame(i), 60) for i in range(4)]))
    reader = CaptureReader(path, batch_packets=1)
    iterator = reader.batches()
    first = next(iterator)
    reader.close()
    assert list(iterator) == []
    assert rows([first])[0][0] == frame(0)
