"""The compiled HTTP walker (sensors/http_kernel.py) against the pure-Python parser
(sensors.http.parse_messages, via reference_parse): same requests, flags, body sizes and
event rows on crafted, random and mutated streams; never a read outside a flow's bytes."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensors.http import (
    HttpAnalyzer,
    _offset_time,
    _ParsedFlows,
    _slice_texts,
    reference_parse,
    request_row,
)
from sensors.http_kernel import F_FALLBACK, join_slices, parse_flows
from sensors.tcp_stream import StreamChunk

REQUESTS = [
    b"GET /a HTTP/1.1\r\nHost: Example.COM:8080\r\nUser-Agent: UA/1\r\n"
    b"Authorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n",
    b"POST /b?x=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nReferer: http://r/\r\n"
    b"\r\nhello",
    b"HEAD /h HTTP/1.0\r\nhost: [2001:db8::1]:80\r\n\r\n",
    b"PUT /t HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n0\r\nX: y\r\n\r\n",
    b"OPTIONS *\n\n",
    b"\r\n\r\nGET  /lf  HTTP/1.1  \nHOST:x\nContent-Length:  007 \n\n1234567",
    b"M-SEARCH * HTTP/1.1\r\nHost : dup1\r\nHost: dup2\r\nuser-agent:\r\n\r\n",
    b"GET /\xc3\xa9\xff HTTP/1.1\r\nUser-Agent: caf\xc3\xa9 \xff\r\nHost: \xe2\x84\xaa.org\r\n\r\n",
]
RESPONSES = [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Type: Text/HTML; charset=utf-8\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop",
    b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.1 204\r\nContent-Length: 50\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\n\r\n",
    b"HTTP/1.1 200\tok\nContent-Type: image/png\n\nrest-of-body-to-fin",
]
# bytes where Python's semantics are not plain ASCII: the kernel must hand the flow back
ODD_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa1\xd9\xa2\r\n\r\n0123456789ab",  # Arabic 12
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chun\xe2\x84\xaaed\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789012\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\nab\r\n0\r\n\r\n",
]


def chunk(client: bytes, server: bytes, ended=(True, True), capped=(False, False),
          gap=(False, False), final=True, port: int = 40000) -> StreamChunk:
    key = (0, b"\x00" * 16, port, b"\x01" * 16, 80)
    return StreamChunk(key=key, client_ip=key[1], server_ip=key[3], client_port=port,
                       server_port=80, vlan=0, client_by="syn", start_ts=1, last_ts=9,
                       first_ts=(1, 2), data=(client, server), ended=ended, capped=capped,
                       gap=gap, final=final, reason="fin",
                       # client bytes in two packets: pipelined requests differ in time
                       packets=[(3, 0, len(client) // 2), (4, 1, len(server)),
                                (5, 0, len(client) - len(client) // 2)])


def reference(c: StreamChunk):
    requests, bad_req, responses, bad_resp = reference_parse(c)
    rows = [request_row(r, responses[i] if i < len(responses) else None)
            for i, r in enumerate(requests)]
    return (len(requests), bad_req, bad_resp, [r.start for r in requests],
            [r.body_bytes for r in responses], rows)


def assert_same(chunks: list[StreamChunk]) -> _ParsedFlows:
    parsed = _ParsedFlows(chunks)
    for index, c in enumerate(chunks):
        n, bad_req, bad_resp, starts, bodies, row_of = parsed.flow(index, c)
        got = (n, bad_req, bad_resp, starts, bodies, [row_of(i) for i in range(n)])
        assert got == reference(c), (c.data, got)
    return parsed


def mutate(seed: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(seed)
    for pos, value in edits:
        if data:
            data[pos % len(data)] = value
    return bytes(data)


def test_crafted_streams_same_rows_without_fallback():
    client = b"".join(REQUESTS)
    server = b"".join(RESPONSES)
    chunks = [chunk(client, server), chunk(client, server, ended=(False, False), final=False),
              chunk(client[:100], server[:150], capped=(True, True)),
              chunk(b"", b"d" * 20000), chunk(b"x" * 20000, b""), chunk(b"", b"")]
    chunks += [chunk(r, s) for r in REQUESTS for s in RESPONSES]
    parsed = assert_same(chunks)
    assert parsed.fallbacks == 0
    rows = [parsed.flow(0, chunks[0])[5](i) for i in range(parsed.flow(0, chunks[0])[0])]
    # the LF-only request's header search finds the next CRLFCRLF first (as parse_messages)
    assert [r["method"] for r in rows] == ["GET", "POST", "HEAD", "PUT", "OPTIONS", "GET"]
    assert rows[0]["basic_auth_user"] == "alice" and rows[0]["host"] == "example.com"


def test_odd_bytes_fall_back_to_the_reference_parser():
    chunks = [chunk(REQUESTS[0], odd) for odd in ODD_RESPONSES]
    parsed = assert_same(chunks)
    assert parsed.fallbacks == len(ODD_RESPONSES) - 1  # the empty chunk size is malformed


def test_kernel_never_reads_past_a_flow():
    """Bytes right after a flow would change its parse if read: a header end, a length."""
    body = b"GET / HTTP/1.1\r\nContent-Length: 1"
    tail = b"0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
    buf = np.frombuffer(body + tail, dtype=np.uint8)
    flows, messages = parse_flows(buf, np.array([0, len(body)]), np.array([len(body), 0]),
                                  np.array([True, True]))
    assert flows[0].tolist()[:2] == [0, 0] and messages.shape[0] == 0
    # a slice that does not fit the buffer is refused (left to Python), not read
    flows, _ = parse_flows(buf, np.array([0, 10]), np.array([buf.size + 1, 5]),
                           np.array([True, True]))
    assert flows[0, F_FALLBACK] == 1


seeds = st.sampled_from(REQUESTS + RESPONSES + ODD_RESPONSES)
edits = st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(
    [0, 9, 10, 13, 32, 45, 48, 49, 58, 59, 65, 70, 72, 84, 97, 120, 0x80, 0xB9, 0xC3, 0xFF]
    + list(range(256)))), max_size=10)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(seeds, max_size=4), st.lists(seeds, max_size=4), edits, edits,
                          st.integers(0, 600), st.integers(0, 600), st.booleans(),
                          st.booleans(), st.booleans()), min_size=1, max_size=5))
def test_kernel_equals_reference_on_mutated_streams(flows):
    chunks = []
    for reqs, resps, e1, e2, cut1, cut2, end1, end2, cap in flows:
        client = mutate(b"".join(reqs), e1)[:cut1]
        server = mutate(b"".join(resps), e2)[:cut2]
        chunks.append(chunk(client, server, ended=(end1, end2), capped=(cap, False)))
    assert_same(chunks)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=200), st.binary(max_size=200)), min_size=1,
                max_size=4))
def test_kernel_equals_reference_on_random_bytes(pairs):
    assert_same([chunk(b"GET / HTTP/1.1\r\n" + a, b"HTTP/1.1 200 OK\r\n" + b) for a, b in pairs]
                + [chunk(a, b) for a, b in pairs])


def expected_events(chunks: list[StreamChunk]) -> list[dict]:
    """What a batch of final chunks seen once must give: every request of each flow, in
    chunk order, as request_row of the reference parser, with its time and client port."""
    out = []
    for c in chunks:
        requests, _, responses, _ = reference_parse(c)
        for i, r in enumerate(requests):
            row = request_row(r, responses[i] if i < len(responses) else None)
            for name in ("request_body_bytes", "response_body_bytes"):
                row[name] = row[name] if row[name] < 1 << 63 else -1  # the column is int64
            out.append({**row, "timestamp": _offset_time(c, r.start), "src_port": c.client_port})
    return out


def event_rows(chunks: list[StreamChunk]) -> list[dict]:
    """HttpAnalyzer._events (column-wise whole flows + per-flow path + reference rows,
    merged in chunk order) as one dict per event, with the expected_events keys."""
    batches = HttpAnalyzer({}, "s", "z")._events(chunks)
    if not batches:
        return []
    columns = batches[0].columns
    keys = list(expected_events([chunk(b"GET / HTTP/1.1\r\n\r\n", b"")])[0])
    return [{k: columns[k][i].item() if isinstance(columns[k][i], np.generic) else columns[k][i]
             for k in keys} for i in range(len(batches[0]))]


def test_batch_events_merge_whole_partial_and_reference_flows_in_chunk_order():
    """Whole flows (column-wise), flows with odd bytes (reference parser rows, one with a
    Content-Length past int64: -1, where HEAD raised), malformed and capped flows (per-flow
    path) interleaved: same rows and order as one flow at a time."""
    client = b"".join(REQUESTS)
    server = b"".join(RESPONSES)
    chunks = [chunk(client, server), chunk(REQUESTS[0], ODD_RESPONSES[0]),
              chunk(client, b"HTTP/1.1 200 OK\r\nnot a header line\r\n\r\n" + server),
              chunk(REQUESTS[1] + b"BAD LINE\r\n\r\n", server), chunk(b"", b""),
              chunk(client[:100], server[:150], capped=(True, True)),
              chunk(REQUESTS[2], ODD_RESPONSES[2]), chunk(REQUESTS[4] * 3, RESPONSES[2]),
              chunk(REQUESTS[3], ODD_RESPONSES[3])]
    chunks = [chunk(c.data[0], c.data[1], c.ended, c.capped, port=1000 + i)
              for i, c in enumerate(chunks)]
    got = event_rows(chunks)
    assert got == expected_events(chunks)
    assert len({r["src_port"] for r in got}) >= 6  # most flows gave events
    assert {3, 5} <= {r["timestamp"] for r in got}  # requests in either client packet


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(seeds, max_size=3), st.lists(seeds, max_size=3), edits,
                          st.integers(0, 600), st.booleans()), min_size=1, max_size=6))
def test_batch_events_equal_one_flow_at_a_time_on_mutated_streams(flows):
    chunks = [chunk(mutate(b"".join(reqs), e)[:cut], b"".join(resps), capped=(cap, False),
                    port=1000 + i) for i, (reqs, resps, e, cut, cap) in enumerate(flows)]
    assert event_rows(chunks) == expected_events(chunks)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.lists(st.tuples(st.integers(-1, 70), st.integers(0, 70)),
                                        max_size=8), st.booleans())
def test_slice_texts_equal_one_decode_per_slice(data, spans, lower):
    """One decode of the joined slices = each slice decoded alone (UTF-8 "replace"); a
    slice holding the separator takes the one-by-one path; clipped, never read outside."""
    buf = np.frombuffer(data, dtype=np.uint8)
    starts = np.array([a for a, _ in spans], dtype=np.int64)
    stops = np.array([max(a, b) if a >= 0 else -1 for a, b in spans], dtype=np.int64)
    text_of = str.lower if lower else None
    got = _slice_texts(buf, starts, stops, text_of).tolist()
    want = [data[a:b].decode("utf-8", "replace") if a >= 0 else "" for a, b in
            zip(starts.tolist(), stops.tolist(), strict=True)]
    assert got == [w.lower() for w in want] if lower else got == want
    joined = join_slices(buf, starts, stops, 0x0A).tobytes()
    assert joined == b"".join(data[a:b] + b"\n" if a >= 0 else b"\n" for a, b in
                              zip(starts.tolist(), stops.tolist(), strict=True))
