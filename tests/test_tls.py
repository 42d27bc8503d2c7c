"""TLS analyzer: crafted handshakes (GREASE, split ClientHello), the JA4 spec's published
example, and tshark as an oracle (SNI, JA3, JA3S, certificate SHA1) on real captures."""

from __future__ import annotations

import hashlib
import struct
from collections import Counter

import pytest
from conftest import assert_ecs, shared_pcap
from packet_builders import batch_from_scapy
from test_http import capture_docs, tshark_fields
from test_tcp_stream import handshake, seg

from pipeline.schema import batch_to_ecs
from sensors.decode import decode
from sensors.tls import (
    ClientHello,
    TlsAnalyzer,
    ja3_string,
    ja4,
    ja4_alpn,
    ja4_parts,
    parse_client_hello,
)

CLIENT = ("10.0.0.1", 40000)
SERVER = ("10.0.0.2", 8443)  # not a "TLS port": found by its ClientHello


def u16s(values):
    return b"".join(struct.pack("!H", v) for v in values)


def ext(kind, body):
    return struct.pack("!HH", kind, len(body)) + body


def vec(body, n=2):
    return len(body).to_bytes(n, "big") + body


def client_hello(ciphers, exts, version=0x0303):
    body = struct.pack("!H", version) + bytes(32) + vec(b"", 1) + vec(u16s(ciphers)) + \
        vec(b"\x00", 1) + vec(b"".join(exts))
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + vec(msg)


def server_hello(cipher, exts, version=0x0303):
    body = struct.pack("!H", version) + bytes(32) + vec(b"", 1) + struct.pack("!HB", cipher, 0) + \
        vec(b"".join(exts))
    return b"\x16\x03\x03" + vec(b"\x02" + len(body).to_bytes(3, "big") + body)


GREASE_HELLO = client_hello(
    [0x0A0A, 0x1301, 0xC02F, 0x002F],
    [ext(0x1A1A, b""), ext(0, vec(b"\x00" + vec(b"Example.ORG"))),
     ext(16, vec(vec(b"h2", 1) + vec(b"http/1.1", 1))), ext(10, vec(u16s([0x2A2A, 29, 23]))),
     ext(11, vec(b"\x00", 1)), ext(13, vec(u16s([0x0403, 0x0804]))),
     ext(43, vec(u16s([0x3A3A, 0x0304, 0x0303]), 1))])


def test_ja3_removes_grease_and_fields_parse():
    hello = parse_client_hello(GREASE_HELLO[9:])
    assert ja3_string(hello) == "771,4865-49199-47,0-16-10-11-13-43,29-23,0"
    assert hello.server_name == "example.org" and hello.alpn == [b"h2", b"http/1.1"]
    a, _, _ = ja4_parts(hello)
    assert a == "t13d0306h2"  # 3 ciphers, 6 extensions without GREASE, TLS 1.3 offered


def test_ja4_spec_example():
    # FoxIO JA4.md "Example": t13d1516h2_8daaf6152771_e5627efa2ab1
    ciphers = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013,
               0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
    exts = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005, 0x0023,
            0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015]
    hello = ClientHello(0x0303, ciphers, exts, has_sni=True, alpn=[b"h2"],
                        sig_algs=[0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601],
                        supported_versions=[0x0304, 0x0303])
    assert ja4(hello) == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    no_sigs = ClientHello(0x0303, ciphers, exts, has_sni=True, alpn=[b"h2"],
                          supported_versions=[0x0304])
    assert ja4(no_sigs).endswith("_6d807ffa2a79")  # spec: list without signature algorithms


def test_ja4_alpn_rules():
    assert ja4_alpn([]) == "00" and ja4_alpn([b"http/1.1"]) == "h1"
    assert ja4_alpn([b"\xab"]) == "ab" and ja4_alpn([b"\xab\xcd"]) == "ad"
    assert ja4_alpn([b"\x30\xab"]) == "3b" and ja4_alpn([b"\x30\xab\xcd\x31"]) == "01"


def tls_session(split_at):
    pkts = handshake(cseq=1000, sseq=5000)
    pkts = [p for p in pkts]
    for p in pkts:
        p["TCP"].dport = SERVER[1] if p["TCP"].sport == CLIENT[1] else p["TCP"].dport
        p["TCP"].sport = SERVER[1] if p["TCP"].sport == 80 else p["TCP"].sport
    hello = GREASE_HELLO
    sh = server_hello(0x1301, [ext(43, u16s([0x0304])), ext(16, vec(vec(b"h2", 1)))])
    # first segment in order (it opens the flow), the other two swapped
    cut = [0, split_at, split_at + 30, len(hello)]
    for i in (0, 2, 1):
        pkts.append(seg(CLIENT, SERVER, "PA", 1001 + cut[i], 5001, hello[cut[i]: cut[i + 1]],
                        t=1.1 + i / 100))
    pkts.append(seg(SERVER, CLIENT, "PA", 5001, 1001 + len(hello), sh, t=1.3))
    pkts.append(seg(CLIENT, SERVER, "PA", 1001 + len(hello), 5001 + len(sh),
                    b"\x17\x03\x03" + vec(b"x" * 20), t=1.4))
    return pkts


@pytest.mark.parametrize("split_at", [7, 40, 100])
def test_split_out_of_order_client_hello_tls13(split_at):
    analyzer = TlsAnalyzer({}, "s", "z")
    out = analyzer.process(decode(batch_from_scapy(tls_session(split_at)))) + analyzer.flush()
    docs = [d for b in out for d in batch_to_ecs(b)]
    assert len(docs) == 1
    doc = docs[0]
    assert_ecs(doc)
    assert doc["tls"]["client"]["server_name"] == "example.org"
    assert doc["tls"]["version"] == "1.3" and doc["tls"]["next_protocol"] == "h2"
    assert doc["tls"]["cipher"] == "TLS_AES_128_GCM_SHA256" and doc["tls"]["established"]
    assert doc["cirtsa"]["tls"]["client"]["alpn"] == ["h2", "http/1.1"]
    assert doc["tls"]["client"]["ja3"] == hashlib.md5(
        b"771,4865-49199-47,0-16-10-11-13-43,29-23,0").hexdigest()
    assert doc["destination"]["port"] == 8443


TLS_CAPTURES = ["benign/zeek__tls1.2.pcap", "c2_beaconing/corelight__asyncrat_cd010953.pcap",
                "c2_beaconing/corelight__dcrat_30a385ed.pcap",
                "c2_beaconing/slips__test-cc-capture-1.pcap", "large/ndpi__1kxun.pcap",
                "web_attacks/zeek__heartbleed-success.pcap"]


@pytest.mark.parametrize("name", TLS_CAPTURES)
def test_sni_ja3_ja3s_cert_match_tshark(name):
    path = shared_pcap(name)
    docs = capture_docs(path, TlsAnalyzer({}, "s", "z"))
    hellos = tshark_fields(path, "tls.handshake.type==1",
                           ["tls.handshake.extensions_server_name", "tls.handshake.ja3"])
    assert hellos, "capture has no ClientHello"
    assert Counter((s.lower(), j) for s, j in hellos) == Counter(
        (d["tls"]["client"].get("server_name", ""), d["tls"]["client"]["ja3"]) for d in docs)
    ja3s = Counter(j for (j,) in tshark_fields(path, "tls.handshake.type==2",
                                                ["tls.handshake.ja3s"]))
    ours = Counter(d["tls"]["server"]["ja3s"] for d in docs if "ja3s" in d["tls"].get("server", {}))
    # Every ServerHello tshark dissects is ours too. We may have more: tshark skips segments
    # it labels retransmissions after a capture hole (corelight__dcrat, 49207 -> 443: the
    # server's flight arrives after a later ACK), which sequence-number reassembly places.
    assert ja3s and not ja3s - ours and len(ours) <= len(docs)
    certs = tshark_fields(path, "tls.handshake.certificate", ["tls.handshake.certificate"])
    leaf = Counter(hashlib.sha1(bytes.fromhex(c.split(",")[0].replace(":", ""))).hexdigest().upper()
                   for (c,) in certs)
    ours = Counter(d["tls"]["server"]["hash"]["sha1"] for d in docs
                   if "hash" in d["tls"].get("server", {}))
    assert not leaf - ours
