"""TLS 1.3 after a HelloRetryRequest (RFC 8446 section 4.1.4), over TCP: the event's
ServerHello facts (version, cipher, JA3S, curve, resumed) are the real ServerHello's, its
ClientHello facts (SNI, ALPN, JA3, JA4) the first ClientHello's -- as Zeek's ssl.log takes
the last ServerHello's values, and tshark shows them. Crafted handshakes, with and without
the servers' middlebox-compatibility ChangeCipherSpec after the retry, with and without a
PSK accepted in the real ServerHello; a pcap of one through the analyzer and tshark."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import tls_reference as reference
from packet_builders import batch_from_scapy
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from test_tls import ext, u16s, vec
from test_tls_curve_resumed import (
    APP,
    CCS,
    HRR_RANDOM,
    PSK_ACCEPTED,
    PSK_OFFERED,
    SECP256R1,
    SID,
    SUPPORTED_13,
    TLS13_AES128_GCM,
    X25519,
    client,
    key_share,
    record,
    server,
)

from pipeline.schema import batch_to_ecs, validate_batch
from sensors import tls
from sensors.decode import decode

TLS13_AES256_GCM = 0x1302
SNI = ext(0, vec(b"\x00" + vec(b"retry.example")))
ALPN = ext(16, vec(vec(b"h2", 1)))
GROUPS = ext(10, vec(u16s([X25519, SECP256R1])))
VERSIONS_13 = ext(43, vec(u16s([0x0304, 0x0303]), 1))
CLIENT_SHARE = ext(51, vec(u16s([X25519]) + vec(bytes(32))))  # a share the server refuses
COOKIE = ext(44, vec(bytes(16)))


def first_hello(psk: bool) -> bytes:
    return client(SID, (SNI, ALPN, GROUPS, VERSIONS_13, CLIENT_SHARE)
                  + ((PSK_OFFERED,) if psk else ()))


def second_hello(psk: bool) -> bytes:
    """The retried ClientHello (RFC 8446 4.1.2): the asked-for share, the cookie echoed, no
    other change -- but its extension list differs, so would its JA3."""
    share = ext(51, vec(u16s([SECP256R1]) + vec(bytes(65))))
    return client(SID, (SNI, ALPN, GROUPS, VERSIONS_13, share, COOKIE)
                  + ((PSK_OFFERED,) if psk else ()))


RETRY = server(TLS13_AES128_GCM, SID, (SUPPORTED_13, ext(51, u16s([SECP256R1])), COOKIE),
               HRR_RANDOM)


def real_hello(psk: bool, cipher: int = TLS13_AES128_GCM) -> bytes:
    return server(cipher, SID, (SUPPORTED_13, key_share(SECP256R1))
                  + ((PSK_ACCEPTED,) if psk else ()))


def flows(psk: bool, compat: bool = True, cipher: int = TLS13_AES128_GCM
          ) -> tuple[bytes, bytes]:
    """(client bytes, server bytes) of a retried TLS 1.3 handshake; `compat`: each side's
    ChangeCipherSpec (RFC 8446 D.4) after its first flight, as OpenSSL, BoringSSL and Go
    send it."""
    gap = CCS if compat else b""
    return (record(first_hello(psk)) + gap + record(second_hello(psk)) + APP + APP,
            record(RETRY) + gap + record(real_hello(psk, cipher)) + APP)


def ja3s(hello: bytes) -> str:
    return tls.md5_hex(tls.ja3s_string(reference.parse_server_hello(hello[4:])))


def columns(data: tuple[bytes, bytes]) -> dict[str, object]:
    parsed = tls.parse_flows([data[0]], [data[1]])
    cols = tls.event_columns(parsed, [0])
    assert tls.handshake_of(parsed, 0) == reference.parse_handshake(*data)
    return {name: cols[name][0] for name in (
        "version", "cipher", "ja3", "ja4", "ja3s", "server_name", "client_alpn", "curve",
        "resumed", "established")}


def expected(psk: bool, cipher: str = "TLS_AES_128_GCM_SHA256") -> dict[str, object]:
    hello = tls.parse_client_hello(first_hello(psk)[4:])
    return {"version": "1.3", "cipher": cipher, "ja3": tls.md5_hex(tls.ja3_string(hello)),
            "ja4": tls.ja4(hello), "ja3s": ja3s(real_hello(psk)),
            "server_name": "retry.example", "client_alpn": ["h2"], "curve": "secp256r1",
            "resumed": psk, "established": True}


@pytest.mark.parametrize("compat", [True, False], ids=["compat-ccs", "no-ccs"])
@pytest.mark.parametrize("psk", [True, False], ids=["psk", "no-psk"])
def test_real_server_hello_after_a_retry(psk, compat):
    """The PSK accepted in the real ServerHello makes it resumed; its JA3S (not the
    retry's, which has a cookie) is the event's; the JA3 is the first ClientHello's."""
    got = columns(flows(psk, compat))
    assert got == expected(psk)
    assert got["ja3s"] != ja3s(RETRY)
    hello2 = tls.parse_client_hello(second_hello(psk)[4:])
    assert got["ja3"] != tls.md5_hex(tls.ja3_string(hello2))


def test_the_real_server_hello_values_win():
    """Another cipher in the real ServerHello than in the retry (a server may not, RFC 8446
    4.1.4; Zeek reports the last): the real one's."""
    assert columns(flows(False, cipher=TLS13_AES256_GCM))["cipher"] == "TLS_AES_256_GCM_SHA384"


def test_a_retry_alone_keeps_its_facts():
    """The capture ends after the retry (or the client gave up): the retry's group and
    cipher, not resumed, as before."""
    client_data, server_data = flows(True)
    data = (record(first_hello(True)) + CCS, record(RETRY) + CCS)
    got = columns(data)
    assert (got["curve"], got["resumed"], got["ja3s"]) == ("secp256r1", False, ja3s(RETRY))
    assert client_data.startswith(data[0]) and server_data.startswith(data[1])


def test_a_malformed_real_server_hello_keeps_the_retry():
    broken = b"\x02\x00\x00\x05" + bytes(5)
    data = (flows(True)[0], record(RETRY) + CCS + record(broken) + APP)
    parsed = tls.parse_flows([data[0]], [data[1]])
    assert bool(parsed.server_malformed[0])
    got = columns(data)
    assert (got["curve"], got["resumed"], got["ja3s"]) == ("secp256r1", False, ja3s(RETRY))


def test_a_tls12_change_cipher_spec_still_ends_the_cleartext():
    """Only a CCS right after a HelloRetryRequest keeps the server's records readable: after
    a TLS 1.2 ServerHello, the handshake record after CCS (its encrypted Finished) is not
    read as a second ServerHello."""
    tls12 = server(0xC02F, SID)
    data = (record(client(SID)) + CCS, record(tls12) + CCS + record(real_hello(True)))
    got = columns(data)
    assert (got["version"], got["ja3s"]) == ("1.2", ja3s(tls12))


# --- the analyzer, and tshark, on a pcap -----------------------------------------------------

CLIENT, SERVER = ("10.9.0.1", 41000), ("10.9.0.2", 443)


def seg(src: tuple, dst: tuple, flags: str, seq: int, ack: int, data: bytes = b"",
        t: float = 1.0):
    pkt = Ether() / IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags=flags,
                                                     seq=seq, ack=ack) / data
    pkt.time = t
    return pkt


def packets(psk: bool) -> list:
    """The handshake as TCP segments, one per record group of each side, in protocol order:
    ClientHello, retry (+CCS), CCS + second ClientHello, ServerHello, Finished, data."""
    c, s = flows(psk)
    first_c = len(record(first_hello(psk)))
    first_s = len(record(RETRY)) + len(CCS)
    out = [seg(CLIENT, SERVER, "S", 1000, 0), seg(SERVER, CLIENT, "SA", 5000, 1001),
           seg(CLIENT, SERVER, "A", 1001, 5001)]
    cseq, sseq = 1001, 5001
    for to_server, chunk in ((True, c[:first_c]), (False, s[:first_s]),
                             (True, c[first_c : len(c) - 2 * len(APP)]), (False, s[first_s:]),
                             (True, c[len(c) - 2 * len(APP) :])):
        if to_server:
            out.append(seg(CLIENT, SERVER, "PA", cseq, sseq, chunk))
            cseq += len(chunk)
        else:
            out.append(seg(SERVER, CLIENT, "PA", sseq, cseq, chunk))
            sseq += len(chunk)
    return out


def analyzer_docs(psk: bool) -> list[dict]:
    analyzer = tls.TlsAnalyzer({}, "s", "z")
    out = analyzer.process(decode(batch_from_scapy(packets(psk)))) + analyzer.flush()
    docs = []
    for b in out:
        validate_batch(b)
        docs.extend(batch_to_ecs(b))
    return docs


def test_analyzer_event_after_a_retry():
    (doc,) = analyzer_docs(True)
    want = expected(True)
    assert doc["tls"]["resumed"] is True and doc["tls"]["curve"] == "secp256r1"
    assert doc["tls"]["server"]["ja3s"] == want["ja3s"]
    assert doc["tls"]["client"]["ja3"] == want["ja3"]
    assert doc["tls"]["client"]["server_name"] == "retry.example"
    assert doc["tls"]["established"] is True


def _tshark(path, fields: list[str]) -> list[list[str]]:
    cmd = ["tshark", "-r", str(path), "-Y", "tls.handshake.type==1 || tls.handshake.type==2",
           "-T", "fields", "-E", "occurrence=a"]
    for name in fields:
        cmd += ["-e", name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize("psk", [True, False], ids=["psk", "no-psk"])
def test_tshark_agrees(tmp_path, psk):
    """tshark shows both ClientHellos and both ServerHellos; ours: the first ClientHello's
    JA3 and SNI, the last ServerHello's JA3S, key_share group and pre_shared_key."""
    from scapy.utils import wrpcap

    path = tmp_path / "hrr.pcap"
    wrpcap(str(path), packets(psk))
    rows = _tshark(path, ["tls.handshake.type", "tls.handshake.ja3", "tls.handshake.ja3s",
                          "tls.handshake.extensions_server_name",
                          "tls.handshake.extensions_key_share_group",
                          "tls.handshake.extension.type"])
    clients = [r for r in rows if r[0] == "1"]
    servers = [r for r in rows if r[0] == "2"]
    assert len(clients) == 2 and len(servers) == 2
    (doc,) = analyzer_docs(psk)
    assert doc["tls"]["client"]["ja3"] == clients[0][1]
    assert doc["tls"]["client"]["server_name"] == clients[0][3]
    assert doc["tls"]["server"]["ja3s"] == servers[-1][2] != servers[0][2]
    assert doc["tls"]["curve"] == tls.curve_name(int(servers[-1][4], 0))
    assert doc["tls"]["resumed"] is ("41" in servers[-1][5].split(","))
