"""TLS reads only the handshake of a flow: its stream collector's `trim`
(sensors.tls.needed_lengths) cuts each direction after the record that settles it, so
application data is never copied. Checked: the cut bytes parse exactly as the whole
(generated, mutated and cut flights, split into segments scattered in a buffer), the cut
lands where the kernel's rules say on crafted TLS 1.2 / 1.3 flows, and the analyzer's events
and counters with and without the cut are identical on crafted sessions and real captures."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import shared_pcap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packet_builders import batch_from_scapy
from test_tcp_stream import CLIENT, SERVER, handshake, seg
from test_tls import GREASE_HELLO, TLS_CAPTURES, server_hello, vec
from test_tls_kernels import as_records, client_streams, outcome, server_streams

from pipeline.schema import batch_to_ecs
from sensors import tls
from sensors.decode import decode
from sensors.pcap_reader import CaptureReader

CCS = b"\x14\x03\x03\x00\x01\x01"


def appdata(size: int) -> bytes:
    return b"\x17\x03\x03" + struct.pack("!H", size) + bytes(range(256)) * (size // 256) \
        + bytes(size % 256)


def certificate(der: bytes) -> bytes:
    certs = vec(vec(der, 3), 3)
    return b"\x16\x03\x03" + vec(b"\x0b" + len(certs).to_bytes(3, "big") + certs)


def lengths(client: bytes, server: bytes) -> tuple[int, int]:
    """needed_lengths of one flow whose directions are one segment each."""
    data = np.frombuffer(client + server, np.uint8)
    out = tls.needed_lengths(data, np.array([0, len(client)], np.int64),
                             np.array([len(client), len(server)], np.int64),
                             np.array([[0, 1]], np.int64), np.array([[1, 2]], np.int64))
    return int(out[0, 0]), int(out[0, 1])


def same_parse(client: bytes, server: bytes, cut: tuple[int, int]) -> None:
    """What parse_flows gives of the cut flow is what it gives of the whole flow."""
    assert 0 <= cut[0] <= len(client) and 0 <= cut[1] <= len(server)
    assert outcome(tls.parse_handshake, client[: cut[0]], server[: cut[1]]) \
        == outcome(tls.parse_handshake, client, server)


# --- the kernel on crafted flights ---------------------------------------------------------------


TLS12_CLIENT = GREASE_HELLO + b"\x16\x03\x03" + vec(b"\x10\x00\x00\x02\x01\x00") + CCS \
    + b"\x16\x03\x03" + vec(bytes(40))  # ClientKeyExchange, CCS, encrypted Finished
TLS12_SERVER = server_hello(0xC02F, []) + certificate(b"leaf-der" * 20) \
    + b"\x16\x03\x03" + vec(b"\x0e\x00\x00\x00") + CCS + b"\x16\x03\x03" + vec(bytes(40))


def test_tls12_flow_is_cut_after_each_sides_first_application_data_header():
    client = TLS12_CLIENT + appdata(5000) + appdata(300)
    server = TLS12_SERVER + appdata(9000)
    assert lengths(client, server) == (len(TLS12_CLIENT) + 5, len(TLS12_SERVER) + 5)
    same_parse(client, server, lengths(client, server))
    assert tls.parse_handshake(client, server).established


def test_tls13_flow_is_cut_after_the_clients_first_encrypted_record():
    hello_13 = server_hello(0x1301, [struct.pack("!HHH", 43, 2, 0x0304)])
    client = GREASE_HELLO + CCS + appdata(60) + appdata(4000)
    server = hello_13 + CCS + appdata(3000) + appdata(200)
    assert lengths(client, server) == (len(GREASE_HELLO) + len(CCS) + 5, len(hello_13)
                                       + len(CCS) + 5)
    same_parse(client, server, lengths(client, server))


def test_client_without_ccs_is_cut_only_when_the_server_shows_application_data():
    client = GREASE_HELLO + appdata(64) + appdata(900)
    # the server's application data decides `established` before TLS 1.3 whatever the
    # client's flags: the client can be cut after its first application-data header
    assert lengths(client, TLS12_SERVER + appdata(100))[0] == len(GREASE_HELLO) + 5
    # without it a later client CCS could still change `established`: nothing is cut
    assert lengths(client, TLS12_SERVER) == (len(client), len(TLS12_SERVER))


def test_server_is_cut_at_its_application_data_not_at_its_ccs():
    """A client without CCS: only the server's application data makes the flow established
    before TLS 1.3, so the server's CCS does not settle it."""
    client = GREASE_HELLO + appdata(64)
    server = TLS12_SERVER + appdata(700)
    assert lengths(client, server) == (len(GREASE_HELLO) + 5, len(TLS12_SERVER) + 5)
    assert tls.parse_handshake(client, server).established
    same_parse(client, server, lengths(client, server))


def test_truncated_records_and_non_tls_bytes_are_not_cut():
    split = GREASE_HELLO[:20]  # the hello's record runs past the bytes: the walk ends there
    assert lengths(split + CCS + appdata(10), b"") == (len(split + CCS + appdata(10)), 0)
    text = b"GET / HTTP/1.1\r\n\r\n"
    assert lengths(text, text) == (len(text), len(text))


def test_a_hello_incomplete_when_cleartext_ends_gets_the_same_verdict_cut():
    # the message claims 256 bytes, its record holds 1: cleartext ends with the hello
    # incomplete whether or not the rest is there
    broken = b"\x16\x03\x01\x00\x05\x01\x00\x01\x00\x00" + appdata(20) + CCS
    cut = lengths(broken, TLS12_SERVER + appdata(30))
    assert cut[0] == 10 + 5
    assert tls.parse_handshake(broken[: cut[0]], TLS12_SERVER) is None  # incomplete
    same_parse(broken, TLS12_SERVER + appdata(30), cut)


# --- the kernel on generated flights, split into scattered segments ----------------------------


tails = st.lists(st.sampled_from([CCS, appdata(3), appdata(300), b"\x15\x03\x03\x00\x02\x01\x00",
                                  b"\x16\x03\x03\x00\x01\x14"]), max_size=4)


@st.composite
def segmented(draw, streams: list[bytes]):
    """The streams split at random points into segments placed at random offsets of one
    buffer (filler around them); some segments start before or end past the buffer, where
    bytes read as zero. Returns (data, seg_start, seg_size, first_seg, end_seg, the streams
    as the segments give them)."""
    pieces: list[bytes] = []
    first, end = [], []
    for stream in streams:
        first.append(len(pieces))
        step = draw(st.sampled_from([0, 0, 1, 2, 3, 5]))  # 0: random cuts, else every step
        cuts = list(range(step, len(stream), step)) if step else \
            sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=8))))
        bounds = [0, *cuts, len(stream)]
        pieces += [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        end.append(len(pieces))
    order = draw(st.permutations(range(len(pieces))))
    buffer = bytearray(draw(st.binary(max_size=8)))
    starts = [0] * len(pieces)
    for i in order:
        starts[i] = len(buffer)
        buffer += pieces[i] + draw(st.binary(min_size=1, max_size=4))  # never contiguous
    sizes = [len(p) for p in pieces]
    given_streams = [b"".join(pieces[first[k]:end[k]]) for k in range(len(streams))]
    if pieces and draw(st.booleans()):  # one segment partly outside the buffer
        i = draw(st.integers(0, len(pieces) - 1))
        starts[i] = draw(st.sampled_from([-3, len(buffer) - 2]))
        given = bytearray(sizes[i])
        for j in range(sizes[i]):
            at = starts[i] + j
            given[j] = buffer[at] if 0 <= at < len(buffer) else 0
        k = next(k for k in range(len(streams)) if first[k] <= i < end[k])
        pieces[i] = bytes(given)
        given_streams[k] = b"".join(pieces[first[k]:end[k]])
    return (np.frombuffer(bytes(buffer), np.uint8), np.array(starts, np.int64),
            np.array(sizes, np.int64), np.array(first, np.int64).reshape(-1, 2),
            np.array(end, np.int64).reshape(-1, 2), given_streams)


HELLO_13 = server_hello(0x1301, [struct.pack("!HHH", 43, 2, 0x0304)])
records = st.sampled_from([CCS, appdata(3), appdata(300), b"\x15\x03\x03\x00\x02\x01\x00",
                           b"\x16\x03\x03\x00\x04\x14\x00\x00\x00",
                           b"\x16\x03\x03" + vec(bytes(40))])


@st.composite
def valid_streams(draw):
    """Well-formed flights (TLS 1.2 or 1.3 hello, whole or split into records) followed by
    any order of CCS / application data / alert / handshake records, maybe cut anywhere."""
    client = draw(st.sampled_from([GREASE_HELLO, TLS12_CLIENT, GREASE_HELLO[:5],
                                   as_records(GREASE_HELLO[5:], [40, 90])]))
    server = draw(st.sampled_from([server_hello(0xC02F, []), TLS12_SERVER, HELLO_13,
                                   as_records(TLS12_SERVER[5:60], [20], b"\x03\x03")]))
    out = []
    for start in (client, server):
        data = start + b"".join(draw(st.lists(records, max_size=5)))
        out.append(data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)
    return out


@st.composite
def flows(draw):
    n = draw(st.integers(1, 3))
    streams = []
    for _ in range(n):
        if draw(st.booleans()):
            streams += draw(valid_streams())
        else:  # generated, mutated flights (test_tls_kernels)
            streams += [draw(client_streams()) + b"".join(draw(tails)),
                        draw(server_streams()) + b"".join(draw(tails))]
    return draw(segmented(streams))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows())
def test_cut_flows_parse_as_the_whole(case):
    data, seg_start, seg_size, first_seg, end_seg, streams = case
    out = tls.needed_lengths(data, seg_start, seg_size, first_seg, end_seg)
    assert out.shape == first_seg.shape
    for f in range(first_seg.shape[0]):
        cut = (int(out[f, 0]), int(out[f, 1]))
        same_parse(streams[2 * f], streams[2 * f + 1], cut)
        # segments scattered in a buffer are read as the same bytes back to back
        assert cut == lengths(streams[2 * f], streams[2 * f + 1])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200),
       st.lists(st.integers(-5, 500), min_size=4, max_size=4))
def test_hostile_bytes_and_segment_indexes_stay_in_bounds(client, server, bounds):
    """Random bytes behind a record header, and segment indexes past the arrays: clipped,
    never read out of range (a wrong read would differ from the clipped reference or fault)."""
    client = b"\x16\x03\x01" + client
    cut = lengths(client, server)
    same_parse(client, server, cut)
    data = np.frombuffer(client + server, np.uint8)
    starts = np.array([0, len(client)], np.int64)
    sizes = np.array([len(client), len(server)], np.int64)
    first = np.clip(np.array(bounds[:2], np.int64), 0, None).reshape(1, 2)
    end = np.array(bounds[2:], np.int64).reshape(1, 2)
    out = tls.needed_lengths(data, starts, sizes, first, end)
    clipped_first, clipped_end = np.minimum(first, 2), np.clip(end, 0, 2)
    for d in range(2):
        total = int(sizes[clipped_first[0, d]:clipped_end[0, d]].sum())
        assert 0 <= out[0, d] <= total


# --- the analyzer: events with and without the cut ------------------------------------------------


def analyzer_events(batches, cut: bool, analyzer_class=tls.TlsAnalyzer):
    """ECS docs and stats of `analyzer_class` over `batches`, with or without its trim."""
    analyzer = analyzer_class({}, "s", "z")
    if not cut:
        analyzer.streams.trim = None
    out = []
    for batch in batches:
        out += analyzer.process(batch)
    out += analyzer.flush()
    return [doc for b in out for doc in batch_to_ecs(b)], analyzer.stats


def session(client: bytes, server: bytes, mss: int = 700, port: int = 40000):
    """A TCP session carrying the two byte streams (client first), closed by FIN."""
    c, s = (CLIENT[0], port), SERVER
    pkts = handshake()
    pkts[0][1].sport = pkts[1][1].dport = pkts[2][1].sport = port
    cseq, sseq, t = 1001, 5001, 1.1
    for data, src, dst in ((client, c, s), (server, s, c)):
        for i in range(0, len(data), mss):
            seq, ack = (cseq, sseq) if src == c else (sseq, cseq)
            pkts.append(seg(src, dst, "PA", seq + i, ack, data[i : i + mss], t=t))
            t += 0.01
        if src == c:
            cseq += len(data)
        else:
            sseq += len(data)
    pkts += [seg(c, s, "FA", cseq, sseq, t=t), seg(s, c, "FA", sseq, cseq + 1, t=t + 0.01),
             seg(c, s, "A", cseq + 1, sseq + 1, t=t + 0.02)]
    return pkts


def test_analyzer_events_equal_with_and_without_the_cut_on_crafted_sessions():
    hello_13 = server_hello(0x1301, [struct.pack("!HHH", 43, 2, 0x0304)])
    flows_ = [(TLS12_CLIENT + appdata(3000), TLS12_SERVER + appdata(8000)),
              (GREASE_HELLO + CCS + appdata(60) + appdata(2000), hello_13 + CCS + appdata(5000)),
              (GREASE_HELLO + appdata(64), TLS12_SERVER),  # not established, nothing cut
              (GREASE_HELLO[:30], b"")]  # incomplete hello
    pkts = [p for i, (c, s) in enumerate(flows_) for p in session(c, s, port=40000 + i)]
    batches = [decode(batch_from_scapy(pkts))]
    cut_docs, cut_stats = analyzer_events(batches, cut=True)
    whole_docs, whole_stats = analyzer_events(batches, cut=False)
    assert len(cut_docs) == 3 and cut_docs == whole_docs and cut_stats == whole_stats
    assert sum(d["tls"]["established"] for d in cut_docs) == 2


def test_the_cut_bytes_are_not_handed_to_the_parser():
    """The collector's chunks stop after the settling headers (fast path)."""
    client, server = TLS12_CLIENT + appdata(3000), TLS12_SERVER + appdata(8000)
    analyzer = tls.TlsAnalyzer({}, "s", "z")
    handed = []
    inner = analyzer._handshake_events
    analyzer._handshake_events = lambda batch: handed.extend(batch.chunks) or inner(batch)
    analyzer.process(decode(batch_from_scapy(session(client, server))))
    assert [c.data for c in handed] == [(TLS12_CLIENT + appdata(3000)[:5],
                                         TLS12_SERVER + appdata(8000)[:5])]
    assert analyzer.stats["tls_handshakes"] == 1


def assert_cut_changes_nothing(name: str, analyzer_class=tls.TlsAnalyzer) -> None:
    """The analyzer's events and stats on shared capture `name` are the same with and
    without its trim (and there are events)."""
    with CaptureReader(shared_pcap(name)) as reader:
        batches = [decode(batch) for batch in reader.batches()]
    cut_docs, cut_stats = analyzer_events(batches, True, analyzer_class)
    whole_docs, whole_stats = analyzer_events(batches, False, analyzer_class)
    assert cut_docs and cut_docs == whole_docs and cut_stats == whole_stats


@pytest.mark.parametrize("name", TLS_CAPTURES)
def test_analyzer_events_equal_with_and_without_the_cut_on_captures(name):
    assert_cut_changes_nothing(name)
