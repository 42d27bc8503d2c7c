"""sensors.decode._decode_common_range writes only the non-zero bytes of a row (an IPv4
address row gets just its ::ffff: marker and four address bytes), so the columns it fills
must start zeroed: _common_columns, which both the decoder and the capture walk use, must
return zeros, and an IPv4 row decoded into them is the full IPv4-mapped address."""

from __future__ import annotations

import numpy as np
import pytest

from sensors.decode import _common_columns, _decode_common_range
from sensors.packets import ip_to_bytes16


@pytest.mark.parametrize("rows", [0, 1, 3, 70000])
def test_common_columns_start_zeroed(rows):
    done, columns, src, dst = _common_columns(rows)
    for column in (done, *columns, src, dst):
        assert column.shape[0] == rows and not column.any()


def test_ipv4_row_is_the_whole_mapped_address():
    frame = (bytes(12) + b"\x08\x00"  # Ethernet, IPv4
             + bytes([0x45, 0, 0, 28]) + bytes(4) + bytes([64, 17, 0, 0])
             + bytes([192, 0, 2, 1]) + bytes([198, 51, 100, 7])
             + bytes([0, 53, 0, 54, 0, 8, 0, 0]))  # UDP 53 -> 54
    data = np.frombuffer(frame, dtype=np.uint8)
    out = _common_columns(1)
    _decode_common_range(data, np.array([0]), np.array([len(frame)]), np.array([1]), 0, 1,
                         out)
    done, _, src, dst = out
    assert done[0]
    assert bytes(src[0]) == ip_to_bytes16("192.0.2.1")
    assert bytes(dst[0]) == ip_to_bytes16("198.51.100.7")
