"""HTTP analyzer: crafted sessions (pipelining, chunked, basic auth, split headers) and
tshark as an oracle on real captures."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter

import pytest
from conftest import assert_ecs, shared_pcap
from packet_builders import batch_from_scapy
from test_tcp_stream import CLIENT, SERVER, handshake, seg

from pipeline.schema import batch_to_ecs
from sensors.decode import decode
from sensors.http import HttpAnalyzer, basic_auth_user, host_without_port, parse_messages
from sensors.pcap_reader import CaptureReader


def analyze(batches) -> list[dict]:
    analyzer = HttpAnalyzer({}, "s1", "z1")
    out = []
    for batch in batches:
        out += analyzer.process(decode(batch))
    out += analyzer.flush()
    docs = [doc for b in out for doc in batch_to_ecs(b)]
    for doc in docs:
        assert_ecs(doc)
    return docs


def session(client_parts, server_parts):
    """Handshake, then client segments, then server segments, then FINs."""
    pkts = handshake()
    cseq, sseq, t = 1001, 5001, 1.1
    for part in client_parts:
        pkts.append(seg(CLIENT, SERVER, "PA", cseq, sseq, part, t=t))
        cseq += len(part)
        t += 0.1
    for part in server_parts:
        pkts.append(seg(SERVER, CLIENT, "PA", sseq, cseq, part, t=t))
        sseq += len(part)
        t += 0.1
    pkts += [seg(CLIENT, SERVER, "FA", cseq, sseq, t=t), seg(SERVER, CLIENT, "FA", sseq, cseq + 1,
                                                             t=t + 0.1)]
    return pkts


def test_pipelined_chunked_basic_auth_split_headers():
    auth = "Authorization: Basic YWxpY2U6c2VjcmV0\r\n"  # alice:secret
    req1 = b"GET /a HTTP/1.1\r\nHost: Example.COM:8080\r\nUser-Agent: UA/1\r\n" + \
        auth.encode() + b"\r\n"
    req2 = b"POST /b?x=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n" \
        b"Referer: http://r/\r\n\r\nhello"
    resp1 = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n" \
        b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
    resp2 = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop"
    stream = req1 + req2
    pkts = session([stream[:10], stream[10:50], stream[50:]], [resp1 + resp2[:20], resp2[20:]])
    docs = analyze([batch_from_scapy(pkts)])
    assert len(docs) == 2
    a, b = docs
    assert a["http"]["request"]["method"] == "GET" and a["url"]["original"] == "/a"
    assert a["url"]["domain"] == "example.com" and a["user"]["name"] == "alice"
    assert "secret" not in repr(a)
    assert a["http"]["response"]["status_code"] == 200
    assert a["http"]["response"]["body"]["bytes"] == 7
    assert a["http"]["response"]["mime_type"] == "text/html"
    assert a["user_agent"]["original"] == "UA/1"
    assert b["http"]["request"]["method"] == "POST" and b["http"]["request"]["body"]["bytes"] == 5
    assert b["http"]["request"]["referrer"] == "http://r/"
    assert b["http"]["response"]["status_code"] == 404
    assert b["http"]["response"]["body"]["bytes"] == 3
    assert a["@timestamp"] < b["@timestamp"]  # each request's own first packet


def test_same_events_whatever_the_batch_split():
    pkts = session([b"GET / HTTP/1.0\r\nHost: h\r\n\r\n"], [b"HTTP/1.0 200 OK\r\n\r\nbody"])
    whole = analyze([batch_from_scapy(pkts)])
    split = analyze([batch_from_scapy([p]) for p in pkts])
    assert whole == split
    assert whole[0]["http"]["response"]["body"]["bytes"] == 4  # read to FIN


def test_request_without_response_emitted_at_end():
    docs = analyze([batch_from_scapy(session([b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"], []))])
    assert len(docs) == 1 and "status_code" not in docs[0]["http"]["response"]
    assert docs[0]["http"]["response"]["body"]["bytes"] == -1


def test_helpers():
    assert host_without_port("[2001:db8::1]:80") == "2001:db8::1"
    assert host_without_port("WWW.X.org:81") == "www.x.org"
    assert basic_auth_user("Basic Ym9iOnB3") == "bob"
    assert basic_auth_user("Bearer abc") == ""
    msgs, bad = parse_messages(b"NOT HTTP AT ALL\r\n\r\n", True, False)
    assert msgs == [] and bad


def tshark_fields(path, display_filter, fields):
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    cmd = ["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def capture_docs(path, analyzer):
    out = []
    with CaptureReader(path) as reader:
        for batch in reader.batches():
            out += analyzer.process(decode(batch))
    out += analyzer.flush()
    docs = [doc for b in out for doc in batch_to_ecs(b)]
    for doc in docs:
        assert_ecs(doc)
    return docs


@pytest.mark.parametrize("name", [
    "benign/zeek__http_get.pcap", "benign/zeek__wikipedia.pcap",
    "benign/zeek__workshop_2011_browse.pcap", "web_attacks/ndpi__WebattackSQLinj.pcap",
    "web_attacks/ndpi__log4j-webapp-exploit.pcap", "web_attacks/ndpi__xss.pcap",
])
def test_requests_and_status_match_tshark(name):
    path = shared_pcap(name)
    docs = capture_docs(path, HttpAnalyzer({}, "s", "z"))
    expected = Counter((host_without_port(h), m, u) for h, m, u in tshark_fields(
        path, "http.request", ["http.host", "http.request.method", "http.request.uri"]))
    got = Counter((d.get("url", {}).get("domain", ""), d["http"]["request"]["method"],
                   d["url"]["original"]) for d in docs)
    assert expected and got == expected
    statuses = Counter(int(s) for (s,) in tshark_fields(path, "http.response",
                                                       ["http.response.code"]))
    ours = Counter(d["http"]["response"]["status_code"] for d in docs
                   if "response" in d["http"] and "status_code" in d["http"]["response"])
    assert ours == statuses
