"""HTTP analyzer: the ready requests of every kernel-parsed flow in one compiled pass
(http_kernel.ready_events) against the per-flow rule (http._ready), and the `emitted` state
of flows seen in pieces, a flow key repeated in one batch included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.http import HttpAnalyzer, _FlowFlags, _ready
from sensors.http_kernel import (
    F_BAD_REQ,
    F_BAD_RESP,
    F_REQ_COUNT,
    F_REQ_FIRST,
    F_RESP_COUNT,
    F_RESP_FIRST,
    M_BODY,
    M_START,
    N_COLUMNS,
    ready_events,
)
from sensors.tcp_stream import StreamChunk

FLOW = st.tuples(
    st.integers(-1, 5),  # done (-1: left to the caller)
    st.integers(0, 4),  # requests
    st.lists(st.integers(-1, 3), max_size=4),  # final response body sizes (-1 unknown)
    st.booleans(),  # final
    st.booleans(),  # server direction capped or with a gap
    st.booleans(),  # tracked
    st.booleans(),  # malformed request side
    st.booleans(),  # malformed response side
)


@settings(deadline=None, max_examples=300)
@given(st.lists(FLOW, max_size=12))
def test_ready_events_follow_ready(flows_spec):
    n = len(flows_spec)
    flows = np.zeros((n, 7), dtype=np.int64)
    rows: list[list[int]] = []
    for f, (_, n_req, bodies, _, _, _, bad_req, bad_resp) in enumerate(flows_spec):
        flows[f, F_REQ_FIRST], flows[f, F_REQ_COUNT] = len(rows), n_req
        for i in range(n_req):
            row = [0] * N_COLUMNS
            row[M_START] = 100 * f + i
            rows.append(row)
        flows[f, F_RESP_FIRST], flows[f, F_RESP_COUNT] = len(rows), len(bodies)
        for body in bodies:
            row = [0] * N_COLUMNS
            row[M_BODY] = body
            rows.append(row)
        flows[f, F_BAD_REQ], flows[f, F_BAD_RESP] = bad_req, bad_resp
    messages = np.array(rows, dtype=np.int64).reshape(-1, N_COLUMNS)
    done = np.array([s[0] for s in flows_spec], dtype=np.int64)
    final = np.array([s[3] for s in flows_spec], dtype=bool)
    stuck = np.array([s[4] for s in flows_spec], dtype=bool)
    tracked = np.array([s[5] for s in flows_spec], dtype=bool)
    bad, flow, requests, responses, offsets, upto = ready_events(flows, messages, done,
                                                                 tracked, final, stuck)
    want_events: list[tuple[int, int, int, int]] = []
    want_upto: list[int] = []
    want_bad = 0
    for f, (d, n_req, bodies, fin, stk, trk, bad_req, bad_resp) in enumerate(flows_spec):
        if d < 0:
            want_upto.append(d)
            continue
        ready = _ready(d, n_req, bodies, _FlowFlags((), fin, (False, stk), (False, False)))
        first, resp_first = int(flows[f, F_REQ_FIRST]), int(flows[f, F_RESP_FIRST])
        for i in range(d, ready):
            want_events.append((f, first + i, resp_first + i if i < len(bodies) else -1,
                                100 * f + i))
        want_upto.append(max(ready, d))
        want_bad += fin and not trk and (bad_req or bad_resp)
    assert list(zip(flow.tolist(), requests.tolist(), responses.tolist(), offsets.tolist(),
                    strict=True)) == want_events
    assert upto.tolist() == want_upto
    assert bad == want_bad


KEY = (0, b"\x00" * 16, 40000, b"\x01" * 16, 80)


def _chunk(client: bytes, server: bytes, final: bool) -> StreamChunk:
    return StreamChunk(key=KEY, client_ip=KEY[1], server_ip=KEY[3], client_port=KEY[2],
                       server_port=KEY[4], vlan=0, client_by="syn", start_ts=1, last_ts=9,
                       first_ts=(1, 2), data=(client, server), ended=(final, final),
                       capped=(False, False), gap=(False, False), final=final,
                       reason="fin" if final else "",
                       packets=[(3, 0, len(client)), (4, 1, len(server))])


def _uris(out: list) -> list[str]:
    return [] if not out else out[0].columns["uri"].tolist()


ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def test_flow_in_pieces_emits_each_request_once():
    analyzer = HttpAnalyzer({}, "s1", "z1")
    two = b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"
    assert _uris(analyzer._events([_chunk(two, ANSWER, final=False)])) == ["/1"]
    assert analyzer.emitted == {KEY: 1}
    assert _uris(analyzer._events([_chunk(two, ANSWER * 2, final=False)])) == ["/2"]
    assert analyzer.emitted == {KEY: 2}
    assert _uris(analyzer._events([_chunk(two, ANSWER * 2, final=True)])) == []
    assert analyzer.emitted == {}


def test_key_twice_in_a_batch_is_visited_in_order():
    """A tracked flow ends and a new one with the same key starts in one batch: the second
    starts from nothing (the first's end dropped the key), as a walk row by row does."""
    analyzer = HttpAnalyzer({}, "s1", "z1")
    two = b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"
    assert _uris(analyzer._events([_chunk(two, ANSWER, final=False)])) == ["/1"]
    out = analyzer._events([_chunk(two, ANSWER * 2, final=True),
                            _chunk(b"GET /x HTTP/1.1\r\n\r\n", ANSWER, final=False)])
    assert _uris(out) == ["/2", "/x"]
    assert analyzer.emitted == {KEY: 1}
