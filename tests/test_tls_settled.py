"""needed_lengths' record walk (tls._settled_at reads a header in place when it lies in one
segment, byte by byte across segments) against a plain-Python walk of the stream as its
segments give it: the same cut on generated flights split into scattered segments, some
partly outside the buffer (bytes read as zero there), headers cut across segments."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from test_tls_trim import flows

from sensors import tls


def settled_at(stream: bytes, want: int) -> int:
    """frame_records' walk of one direction up to the CCS / application-data header with
    which it has shown every flag of `want`: that header's end, else -1."""
    pos = records = seen = 0
    while pos + 5 <= len(stream) and records < tls.MAX_RECORDS:
        ctype = stream[pos]
        if not tls.CONTENT_CCS <= ctype <= tls.CONTENT_APPDATA or stream[pos + 1] != 3:
            return -1
        records += 1
        if ctype == tls.CONTENT_CCS:
            seen |= tls.SEEN_CCS
        elif ctype == tls.CONTENT_APPDATA:
            seen |= tls.SEEN_APPDATA | (tls.APPDATA_AFTER_FIRST if records > 1 else 0)
        if seen & want == want and ctype in (tls.CONTENT_CCS, tls.CONTENT_APPDATA):
            return pos + 5
        pos += 5 + int.from_bytes(stream[pos + 3 : pos + 5], "big")
    return -1


def reference_lengths(client: bytes, server: bytes) -> tuple[int, int]:
    """needed_lengths' rule on two byte strings (see its docstring)."""
    server_at = settled_at(server, tls.SEEN_APPDATA)
    want = tls.APPDATA_AFTER_FIRST | tls.SEEN_APPDATA | (tls.SEEN_CCS if server_at < 0 else 0)
    client_at = settled_at(client, want)
    return (client_at if client_at >= 0 else len(client),
            server_at if server_at >= 0 else len(server))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows())
def test_needed_lengths_equal_a_python_walk_of_the_segments(case):
    data, seg_start, seg_size, first_seg, end_seg, streams = case
    out = tls.needed_lengths(data, seg_start, seg_size, first_seg, end_seg)
    for f in range(first_seg.shape[0]):
        assert (int(out[f, 0]), int(out[f, 1])) \
            == reference_lengths(streams[2 * f], streams[2 * f + 1])
