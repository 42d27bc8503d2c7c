"""parse_joined with a reused `hs` buffer (the analyzer's, batch to batch) reads what a fresh
one reads: the buffer's old bytes (another batch's handshakes) are never read, and a buffer
too small is replaced by a larger one."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tls_kernels import client_streams, server_streams

from sensors import tls


def _joined(flows: list[tuple[bytes, bytes]]):
    parts = [p for flow in flows for p in flow]
    sizes = np.array([len(p) for p in parts], np.int64).reshape(-1, 2)
    ends = np.cumsum(sizes.reshape(-1)).reshape(-1, 2)
    return np.frombuffer(b"".join(parts) or b"\0", np.uint8), ends - sizes, sizes


def _fields(parsed: tls.ParsedFlows) -> dict:
    """Every column, and the bytes of every slice into hs, by flow."""
    out = {f.name: getattr(parsed, f.name).tolist() for f in dataclasses.fields(parsed)
           if f.name not in ("hs", "client_keys", "server_keys")}
    hs = parsed.hs.tobytes()
    out["slices"] = [(hs[a:b] if a >= 0 else None) for a, b in zip(
        parsed.sni_start.tolist() + parsed.alpn_start.tolist() + parsed.cert_start.tolist(),
        parsed.sni_stop.tolist() + parsed.alpn_stop.tolist() + parsed.cert_stop.tolist(),
        strict=True)]
    return out


flows = st.lists(st.tuples(client_streams(), server_streams()), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows, flows, st.integers(0, 255))
def test_a_reused_buffer_reads_as_a_fresh_one(first, second, fill):
    buf, start, length = _joined(first)
    used = tls.parse_joined(buf, start, length, np.empty(0, np.uint8))
    used.hs[:] = fill  # whatever the previous batch left
    buf2, start2, length2 = _joined(second)
    fresh = tls.parse_joined(buf2, start2, length2)
    again = tls.parse_joined(buf2, start2, length2, used.hs)
    assert _fields(again) == _fields(fresh)
    if used.hs.size >= fresh.hs.size:
        assert again.hs is used.hs  # large enough: written in place
    else:
        assert again.hs.size >= fresh.hs.size
