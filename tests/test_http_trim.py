"""HTTP reads only the part of a flow its parsers look at: the stream collector's `trim`
(sensors.http_kernel.needed_lengths) cuts a direction at least MAX_HEADER_BYTES long that
cannot open with a message after a few bytes (bulk data on an HTTP port). Checked: the cut
bytes, parsed with the whole lengths, give exactly what the whole bytes give (kernel and
reference parser; crafted, generated and mutated flows split into segments scattered in a
buffer), the cuts land where they should, and the analyzer's events and counters with and
without the cut are identical on crafted sessions and real captures."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packet_builders import batch_from_scapy
from test_http_kernel import ODD_RESPONSES, REQUESTS, RESPONSES
from test_tls_trim import analyzer_events as trim_analyzer_events
from test_tls_trim import assert_cut_changes_nothing, segmented, session

from sensors.decode import decode
from sensors.http import HttpAnalyzer, parse_messages
from sensors.http_kernel import (
    F_REQ_COUNT,
    F_REQ_FIRST,
    F_RESP_COUNT,
    F_RESP_FIRST,
    M_A0,
    M_B0,
    M_B1,
    M_C0,
    M_C1,
    M_HEADERS,
    MAX_HEADER_BYTES,
    N_COLUMNS,
    NOT_MESSAGE_BYTES,
    needed_lengths,
    parse_flows,
)

# message table columns holding offsets into the buffer
OFFSETS = frozenset([*range(M_A0, M_C1 + 1), *range(M_HEADERS, N_COLUMNS)])
BULK = bytes(range(7, 256)) * 70  # > MAX_HEADER_BYTES of bytes that open no message


def lengths(client: bytes, server: bytes) -> tuple[int, int]:
    """needed_lengths of one flow whose directions are one segment each."""
    data = np.frombuffer(client + server, np.uint8)
    out = needed_lengths(data, np.array([0, len(client)], np.int64),
                         np.array([len(client), len(server)], np.int64),
                         np.array([[0, 1]], np.int64), np.array([[1, 2]], np.int64))
    return int(out[0, 0]), int(out[0, 1])


def kernel_outcome(client: bytes, server: bytes, whole: tuple[int, int], ended: bool
                   ) -> tuple:
    """parse_flows of one flow, its message offsets taken relative to their direction."""
    buf = np.frombuffer(client + server, np.uint8)
    flows, messages = parse_flows(buf, np.array([0, len(client)], np.int64),
                                  np.array([len(client), len(server)], np.int64),
                                  np.array([ended, ended]), np.array(whole, np.int64))
    f = flows[0]
    rows = []
    for first, count, base, unset in ((f[F_REQ_FIRST], f[F_REQ_COUNT], 0, ()),
                                      (f[F_RESP_FIRST], f[F_RESP_COUNT], len(client),
                                       (M_B0, M_B1, M_C0, M_C1))):  # not a status line's
        for row in messages[first : first + count].tolist():
            rows.append([None if k in unset else v - base if k in OFFSETS and v >= 0 else v
                         for k, v in enumerate(row)])
    return f.tolist(), rows


def reference_outcome(client: bytes, server: bytes, whole: tuple[int, int], ended: bool
                      ) -> tuple:
    requests, bad_req = parse_messages(client, True, ended, whole=whole[0])
    heads = [r.line[0] == "HEAD" for r in requests]
    responses, bad_resp = parse_messages(server, False, ended, heads, whole=whole[1])
    return requests, bad_req, responses, bad_resp


def same_parse(client: bytes, server: bytes, cut: tuple[int, int]) -> None:
    """The cut flow, parsed with its whole lengths, gives what the whole flow gives."""
    assert 0 <= cut[0] <= len(client) and 0 <= cut[1] <= len(server)
    whole = (len(client), len(server))
    for ended in (False, True):
        assert kernel_outcome(client[: cut[0]], server[: cut[1]], whole, ended) \
            == kernel_outcome(client, server, whole, ended)
        assert reference_outcome(client[: cut[0]], server[: cut[1]], whole, ended) \
            == reference_outcome(client, server, whole, ended)


# --- where the cut lands --------------------------------------------------------------------------

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5000\r\n\r\n"


@pytest.mark.parametrize("client, server", [
    (b"POST /u HTTP/1.1\r\nContent-Length: 900\r\n\r\n" + bytes(900), b""),  # short
    (GET, b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n" + bytes(3000)),  # < CUT_MIN_BYTES
    (GET + GET, OK_HEAD + bytes(5000) + OK_HEAD),  # another message after the body
    (GET, OK_HEAD + bytes(5000) + b"x"),
    (b"HEAD /x HTTP/1.1\r\n\r\n", OK_HEAD + bytes(5000)),  # a HEAD response has no body
    (b"\r\n" + GET, OK_HEAD + bytes(5000)),  # stray CRLF: the first request not looked at
    (GET, b"\r\n" + OK_HEAD + bytes(5000)),
    (GET, b"HTTP/1.1 204 No\r\nContent-Length: 5000\r\n\r\n" + bytes(5000)),
    (GET, b"HTTP/1.1 100 Continue\r\nContent-Length: 5000\r\n\r\n" + bytes(5000)),
    (GET, OK_HEAD.replace(b"5000", b"5\xd9\xa1") + bytes(5000)),  # not ASCII digits
    (GET, OK_HEAD.replace(b"Content-Type: text/html", b"Transfer-Encoding: chunked")
     + bytes(5000)),  # chunked wins over the length: its walk reads the body
    (GET, b"HTTP/1.1 200 OK\r\n\r\n" + bytes(5000)),  # body up to the FIN: length matters
    (GET, b"HTTP/1.1 200 OK\nContent-Length: 5000\n\n" + bytes(5000)),  # LF only
    (GET, BULK[: MAX_HEADER_BYTES - 1]),  # short bulk: malformed only if a header end shows
    (GET, b"\r\n" + BULK),  # a stray CRLF first
    (GET, b"HTTP/1.1 200 OK\r\n" + BULK),  # long, but opens like a response
    (b"GET /" + BULK, b""),
])
def test_what_is_not_cut(client, server):
    assert lengths(client, server) == (len(client), len(server))
    same_parse(client, server, lengths(client, server))


PUT = b"PUT /u HTTP/1.1\r\nContent-Length: 6000\r\n\r\n"
SHORT_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"


@pytest.mark.parametrize("client, server, head", [
    (GET, OK_HEAD + bytes(5000), OK_HEAD),  # the usual response
    (GET, OK_HEAD + bytes(4100), OK_HEAD),  # the body runs past the cap (or the batch)
    (GET, OK_HEAD.replace(b"Content-Type", b"Transfer-Encoding") + bytes(5000),
     OK_HEAD.replace(b"Content-Type", b"Transfer-Encoding")),  # not chunked: the length
    (b"G", OK_HEAD + bytes(5000), OK_HEAD),  # the request not seen whole
    (b"", OK_HEAD + bytes(5000), OK_HEAD),  # no request at all
    (PUT + bytes(6000), SHORT_OK + BULK[:5000], SHORT_OK),  # an upload, bulk body bytes
])
def test_a_lone_body_is_cut_after_its_headers(client, server, head):
    cut = lengths(client, server)
    assert cut[1] == len(head)
    assert cut[0] == (len(PUT) if client.startswith(PUT) else len(client))
    same_parse(client, server, cut)


def test_long_bytes_that_open_no_message_are_cut_short():
    assert lengths(BULK, BULK) == (NOT_MESSAGE_BYTES, NOT_MESSAGE_BYTES)
    same_parse(BULK, BULK, (NOT_MESSAGE_BYTES, NOT_MESSAGE_BYTES))
    # with a header block end in them: malformed either way
    bulk = BULK[:100] + b"\r\n\r\n" + BULK
    same_parse(bulk, bulk, lengths(bulk, bulk))


# --- generated flows ------------------------------------------------------------------------------


def body(size: int) -> bytes:
    return bytes((i * 7) % 251 for i in range(size))


@st.composite
def messages(draw, requests: bool) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.sampled_from([BULK, BULK[:300], b"\r\n", *ODD_RESPONSES]))
    if requests:
        method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT"]))
        line = method + b" /p HTTP/1.1\r\n"
    else:
        status = draw(st.sampled_from([b"200", b"404", b"204", b"304", b"100"]))
        line = b"HTTP/1.1 " + status + b" X\r\n"
    size = draw(st.sampled_from([0, 1, 100, 3000, 6000, 20000]))
    kind = draw(st.sampled_from(["cl", "cl", "cl", "none", "chunked", "odd"]))
    sep = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    if kind == "cl":
        head = b"Content-Length: " + str(size).encode() + b"\r\n"
        content = body(size)[: draw(st.sampled_from([size, size, size // 2]))]
    elif kind == "chunked":
        head = b"Transfer-Encoding: chunked\r\n"
        content = hex(size)[2:].encode() + b"\r\n" + body(size) + b"\r\n0\r\n\r\n"
    elif kind == "odd":
        head = b"Content-Length: \xd9\xa1\r\n"
        content = body(size)
    else:
        head = b""
        content = body(size)
    return line + b"Host: h\r\n" + head + sep + content


@st.composite
def http_streams(draw):
    out = []
    for requests in (True, False):
        data = b"".join(draw(st.lists(messages(requests), min_size=0, max_size=3)))
        data = data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data
        out.append(data[:16384])  # the collector's cap
    return out


@st.composite
def flows(draw):
    streams = []
    for _ in range(draw(st.integers(1, 3))):
        streams += draw(http_streams())
    return draw(segmented(streams))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.data_too_large])
@given(flows())
def test_cut_flows_parse_as_the_whole(case):
    data, seg_start, seg_size, first_seg, end_seg, streams = case
    out = needed_lengths(data, seg_start, seg_size, first_seg, end_seg)
    assert out.shape == first_seg.shape
    for f in range(first_seg.shape[0]):
        cut = (int(out[f, 0]), int(out[f, 1]))
        same_parse(streams[2 * f], streams[2 * f + 1], cut)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200),
       st.lists(st.integers(-5, 500), min_size=4, max_size=4))
def test_hostile_bytes_and_segment_indexes_stay_in_bounds(client, server, bounds):
    client = b"GET / HTTP/1.1\r\nContent-Length: 9\r\n\r\n" + client
    server = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n" + server
    same_parse(client, server, lengths(client, server))
    data = np.frombuffer(client + server, np.uint8)
    starts = np.array([0, len(client)], np.int64)
    sizes = np.array([len(client), len(server)], np.int64)
    first = np.clip(np.array(bounds[:2], np.int64), 0, None).reshape(1, 2)
    end = np.array(bounds[2:], np.int64).reshape(1, 2)
    out = needed_lengths(data, starts, sizes, first, end)
    clipped_first, clipped_end = np.minimum(first, 2), np.clip(end, 0, 2)
    for d in range(2):
        total = int(sizes[clipped_first[0, d]:clipped_end[0, d]].sum())
        assert 0 <= out[0, d] <= total


# --- the analyzer: events with and without the cut ------------------------------------------------


def analyzer_events(batches, cut: bool):
    return trim_analyzer_events(batches, cut, HttpAnalyzer)


def http_session(client: bytes, server: bytes, port: int):
    return session(client, server, port=port)  # to port 80 (test_tcp_stream.SERVER)


def test_analyzer_events_equal_with_and_without_the_cut_on_crafted_sessions():
    flows_ = [(GET, OK_HEAD + bytes(5000)),
              (GET + GET, OK_HEAD + bytes(5000) + OK_HEAD + bytes(5000)),
              (b"POST /u HTTP/1.1\r\nContent-Length: 900\r\n\r\n" + bytes(900), RESPONSES[2]),
              (b"", BULK), (BULK, b""), (REQUESTS[0], b"HTTP/1.1 200 OK\r\n\r\n" + bytes(3000)),
              (b"HEAD /x HTTP/1.1\r\n\r\n", OK_HEAD + bytes(5000))]
    pkts = [p for i, (c, s) in enumerate(flows_) for p in http_session(c, s, 40000 + i)]
    batches = [decode(batch_from_scapy(pkts))]
    cut_docs, cut_stats = analyzer_events(batches, cut=True)
    whole_docs, whole_stats = analyzer_events(batches, cut=False)
    assert len(cut_docs) == 6 and cut_docs == whole_docs and cut_stats == whole_stats
    assert cut_stats["http_malformed"] == 2  # the two bulk flows


def test_the_cut_bytes_are_not_handed_to_the_parser():
    analyzer = HttpAnalyzer({}, "s", "z")
    batch = analyzer.streams.feed_joined(decode(batch_from_scapy(
        http_session(GET, OK_HEAD + bytes(5000), 40000) + http_session(b"", BULK, 40001))))
    assert batch.length.tolist() == [[len(GET), len(OK_HEAD)], [0, NOT_MESSAGE_BYTES]]
    assert batch.whole.tolist() == [[len(GET), len(OK_HEAD) + 5000], [0, len(BULK[:16384])]]


@pytest.mark.parametrize("name", ["exfiltration/zeek__http-post-large.pcap",
                                  "benign/zeek__http_get.pcap", "benign/zeek__wikipedia.pcap",
                                  "benign/zeek__bro.org.pcap", "large/ndpi__1kxun.pcap",
                                  "malformed/suricata-verify__http-mime-truncated.pcap"])
def test_analyzer_events_equal_with_and_without_the_cut_on_captures(name):
    assert_cut_changes_nothing(name, HttpAnalyzer)


# --- the StreamBatch buffer, reused from batch to batch ------------------------------------------


def test_lone_bodies_cut_at_any_batch_size_give_the_same_events():
    """Keep-alive, pipelined, chunked and lone-body flows, fed in batches of every few
    packets (bodies over several segments end up in different batches: only the flows that
    end inside a batch go through the fast path and its trim): same events and counters with
    and without the cut."""
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"7d0\r\n" + bytes(2000) + b"\r\n0\r\n\r\n")
    flows_ = [(GET, OK_HEAD + bytes(5000)), (GET + GET, OK_HEAD + bytes(5000) + chunked),
              (GET + GET, OK_HEAD + bytes(5000) + OK_HEAD + bytes(4000)),
              (PUT + bytes(6000), SHORT_OK + bytes(5000)), (GET, chunked),
              (b"HEAD /x HTTP/1.1\r\n\r\n", OK_HEAD + bytes(5000))]
    pkts = [p for i, (c, s) in enumerate(flows_) for p in http_session(c, s, 41000 + i)]
    for size in (3, 7, len(pkts)):
        batches = [decode(batch_from_scapy(pkts[i : i + size]))
                   for i in range(0, len(pkts), size)]
        cut_docs, cut_stats = analyzer_events(batches, cut=True)
        whole_docs, whole_stats = analyzer_events(batches, cut=False)
        assert len(cut_docs) == 8 and cut_docs == whole_docs and cut_stats == whole_stats


def test_a_batch_buffer_still_held_is_not_reused_and_a_dropped_one_is():
    """feed_joined writes each batch into the buffer of the previous one only when nothing
    refers to that any more (StreamCollector._batch_buffer): a batch kept by its consumer
    keeps its bytes."""
    analyzer = HttpAnalyzer({}, "s", "z")
    first = decode(batch_from_scapy(http_session(GET, OK_HEAD + bytes(5000), 40000)))
    second = decode(batch_from_scapy(http_session(GET.replace(b"/x", b"/y"),
                                                  OK_HEAD + b"z" * 5000, 40001)))
    kept = analyzer.streams.feed_joined(first)
    copy = kept.buf.copy()
    other = analyzer.streams.feed_joined(second)
    assert np.array_equal(kept.buf, copy)  # not overwritten by the second batch
    assert not np.shares_memory(kept.buf, other.buf)
    address = other.buf.__array_interface__["data"][0]
    del kept, other
    again = analyzer.streams.feed_joined(first)  # nothing holds the buffers now: reused
    assert again.buf.__array_interface__["data"][0] == address
    assert np.array_equal(again.buf, copy)
