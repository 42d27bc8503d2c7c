"""sensors.decode._decode_common_range writes only the non-zero bytes of a row's columns,
so they must start zeroed: _common_columns, which both the decoder and the capture walk
use, returns zeros, except the src/dst address bytes, which it leaves uninitialised: every
done row gets all 16 of them (IPv4-mapped, IPv6, zeros for non-IP frames)."""

from __future__ import annotations

import numpy as np
import pytest

from sensors.decode import _common_columns, _decode_common_range
from sensors.packets import ip_to_bytes16


@pytest.mark.parametrize("rows", [0, 1, 3, 70000])
def test_common_columns_start_zeroed(rows):
    done, columns, src, dst = _common_columns(rows)
    for column in (done, *columns):
        assert column.shape[0] == rows and not column.any()
    assert src.shape == dst.shape == (rows, 16)


def test_ipv4_row_is_the_whole_mapped_address():
    frame = (bytes(12) + b"\x08\x00"  # Ethernet, IPv4
             + bytes([0x45, 0, 0, 28]) + bytes(4) + bytes([64, 17, 0, 0])
             + bytes([192, 0, 2, 1]) + bytes([198, 51, 100, 7])
             + bytes([0, 53, 0, 54, 0, 8, 0, 0]))  # UDP 53 -> 54
    data = np.frombuffer(frame, dtype=np.uint8)
    out = _common_columns(1)
    out[2][:] = 0xAA  # address bytes start uninitialised
    out[3][:] = 0x55
    _decode_common_range(data, np.array([0]), np.array([len(frame)]), np.array([1]), 0, 1,
                         out)
    done, _, src, dst = out
    assert done[0]
    assert bytes(src[0]) == ip_to_bytes16("192.0.2.1")
    assert bytes(dst[0]) == ip_to_bytes16("198.51.100.7")


def test_done_rows_get_all_address_bytes_whatever_the_columns_held():
    ipv6 = (bytes(12) + b"\x86\xdd"
            + bytes([0x60, 0, 0, 0, 0, 8, 17, 64])
            + bytes(range(1, 17)) + bytes(range(101, 117))
            + bytes([0, 53, 0, 54, 0, 8, 0, 0]))
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    ipv4 = (bytes(12) + b"\x08\x00"
            + bytes([0x45, 0, 0, 40]) + bytes(4) + bytes([64, 6, 0, 0])
            + bytes([10, 1, 2, 3]) + bytes([10, 4, 5, 6])
            + bytes([0, 80, 4, 0]) + bytes(8) + bytes([0x50, 0x02]) + bytes(6))
    frames = [ipv6, arp, ipv4]
    data = np.frombuffer(b"".join(frames), dtype=np.uint8)
    ends = np.cumsum([len(f) for f in frames])
    starts = ends - [len(f) for f in frames]
    out = _common_columns(3)
    out[2][:] = 0xAA
    out[3][:] = 0x55
    _decode_common_range(data, starts, ends, np.ones(3, dtype=np.int64), 0, 3, out)
    done, _, src, dst = out
    assert done.tolist() == [True, True, True]
    assert bytes(src[0]) == bytes(range(1, 17)) and bytes(dst[0]) == bytes(range(101, 117))
    assert bytes(src[1]) == bytes(16) and bytes(dst[1]) == bytes(16)
    assert bytes(src[2]) == ip_to_bytes16("10.1.2.3")
    assert bytes(dst[2]) == ip_to_bytes16("10.4.5.6")
