"""QUIC (sensors/quic.py): a HelloRetryRequest in the Initials, read as over TCP (the real
ServerHello's facts, the first ClientHello's fingerprints), and `quic_history`, Zeek's
quic.log `history` letters for what the sensor sees up to the event. Crafted Initials
(the keys of RFC 9001 section 5.2), the Merlin HTTP/3 capture against Zeek's quic.log and
tshark."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import quic_vectors as vec
from conftest import shared_pcap
from packet_builders import batch_from_frames
from test_quic import CLIENT_HELLO, crypto, frame, initial, run, sensor_tls_docs
from test_tls import ext, u16s
from test_tls_curve_resumed import (
    HRR_RANDOM,
    PSK_ACCEPTED,
    PSK_OFFERED,
    SECP256R1,
    SUPPORTED_13,
    TLS13_AES128_GCM,
    X25519,
    client,
    key_share,
    server,
)

from pipeline.schema import TLS
from sensors import quic, tls
from sensors.decode import decode
from sensors.quic import QUIC_V1, VERSIONS, QuicAnalyzer

H = bytes.fromhex
DCID, CSCID, SSCID = H("0011223344556677"), H("c1c2c3c4"), H("5a5b5c5d5e5f6061")
MERLIN = "c2_beaconing/zeek__merlinc2_quic.pcapng"
ZEEK_MERLIN_HISTORY = "ISishhooIHOOOoOooOOo"  # the capture's Zeek btest quic.log baseline
COOKIE = ext(44, u16s([16]) + bytes(16))


def hellos(psk: bool) -> tuple[bytes, bytes, bytes, bytes]:
    """(first ClientHello, HelloRetryRequest, second ClientHello, real ServerHello) of a
    QUIC handshake (no session id: RFC 9001 section 8.4) asking for secp256r1."""
    offer = (PSK_OFFERED,) if psk else ()
    versions = ext(43, bytes([2]) + u16s([0x0304]))
    first = client(b"", (versions, ext(51, u16s([2]) + u16s([X25519]))) + offer)
    retry = server(TLS13_AES128_GCM, b"", (SUPPORTED_13, ext(51, u16s([SECP256R1])), COOKIE),
                   HRR_RANDOM)
    second = client(b"", (versions, ext(51, u16s([2]) + u16s([SECP256R1])), COOKIE) + offer)
    real = server(TLS13_AES128_GCM, b"", (SUPPORTED_13, key_share(SECP256R1))
                  + ((PSK_ACCEPTED,) if psk else ()))
    return first, retry, second, real


def retried(psk: bool, *, real_hello: bool = True) -> list[bytes]:
    """The four Initials (each in its own padded datagram): client ClientHello, server
    HelloRetryRequest, client's second ClientHello (DCID: the server's SCID; keys of the
    original DCID, RFC 9001 section 5.2), server's real ServerHello."""
    first, retry, second, real = hellos(psk)
    out = [frame(initial(crypto(0, first), dcid=DCID, scid=CSCID)),
           frame(initial(crypto(0, retry), dcid=CSCID, scid=SSCID, server=True, odcid=DCID),
                 to_server=False),
           frame(initial(crypto(len(first), second), dcid=SSCID, scid=CSCID, pn=1,
                         odcid=DCID))]
    if real_hello:
        out.append(frame(initial(crypto(len(retry), real), dcid=CSCID, scid=SSCID, pn=1,
                                 server=True, odcid=DCID), to_server=False))
    return out


def ja3s(hello: bytes) -> str:
    return tls.md5_hex(tls.ja3s_string(tls.parse_handshake(
        b"\x16\x03\x03" + len(client(b"")).to_bytes(2, "big") + client(b""),
        b"\x16\x03\x03" + len(hello).to_bytes(2, "big") + hello).server))


@pytest.fixture
def fields(monkeypatch) -> list[dict]:
    """The event fields of every event the analyzer makes (quic_history among them, whether
    or not the schema has its column yet)."""
    seen: list[dict] = []
    original = quic.event_fields

    def recording(conn):
        out = original(conn)
        seen.append(out)
        return out

    monkeypatch.setattr(quic, "event_fields", recording)
    return seen


@pytest.mark.parametrize("psk", [True, False], ids=["psk", "no-psk"])
def test_retry_then_real_server_hello(fields, psk):
    """One event, made at the real ServerHello: its PSK (resumed), its JA3S (the retry's has
    a cookie), its group; the first ClientHello's JA3; history I S i s I S i s."""
    analyzer = QuicAnalyzer({}, "s", "z")
    docs, _ = run(retried(psk)[:3], analyzer)  # flushed: the retry's facts (capture ends)
    assert len(docs) == 1 and docs[0]["tls"]["resumed"] is False
    assert docs[0]["tls"]["server"]["ja3s"] == ja3s(hellos(psk)[1])
    fields.clear()
    docs, analyzer = run(retried(psk), QuicAnalyzer({}, "s", "z"))
    assert len(docs) == 1
    doc = docs[0]
    first, retry, second, real = hellos(psk)
    hello = tls.parse_client_hello(first[4:])
    assert doc["tls"]["resumed"] is psk and doc["tls"]["curve"] == "secp256r1"
    assert doc["tls"]["server"]["ja3s"] == ja3s(real) != ja3s(retry)
    assert doc["tls"]["client"]["ja3"] == tls.md5_hex(tls.ja3_string(hello))
    assert doc["cirtsa"]["tls"]["client"]["ja4"] == tls.ja4(hello, "q")
    assert doc["cirtsa"]["quic"]["client_initial_dcid"] == DCID.hex()
    assert fields[-1]["quic_history"] == "ISisISis"


def test_event_comes_at_the_real_server_hello_not_at_flush():
    analyzer = QuicAnalyzer({}, "s", "z")
    frames = retried(True)
    out = analyzer.process(decode(batch_from_frames(frames, ts_ns=list(range(len(frames))))))
    assert len(out) == 1 and out[0].columns["resumed"].tolist() == [True]
    assert analyzer.flush() == []


def test_history_of_the_rfc_handshake(fields):
    """RFC 9001 appendix A's client and server Initial: I S (client Initial, its hello),
    i s; a Handshake packet coalesced after the server's Initial: h, as Zeek writes it."""
    run([frame(H(vec.V1_CLIENT)), frame(H(vec.V1_SERVER), to_server=False)])
    assert fields[-1]["quic_history"] == "ISis"
    handshake = (bytes([0xE0]) + QUIC_V1.to_bytes(4, "big") + b"\x00\x08" + bytes(8)
                 + (0x4000 | 60).to_bytes(2, "big") + bytes(60))
    run([frame(H(vec.V1_CLIENT)), frame(H(vec.V1_SERVER) + handshake, to_server=False)])
    assert fields[-1]["quic_history"] == "ISish"


def test_zero_rtt_after_the_client_initial(fields):
    zero_rtt = (bytes([0xD0]) + QUIC_V1.to_bytes(4, "big") + b"\x08" + H(vec.DCID) + b"\x00"
                + (0x4000 | 40).to_bytes(2, "big") + bytes(40))
    assert VERSIONS[QUIC_V1].zero_rtt_type == 1
    run([frame(H(vec.V1_CLIENT) + zero_rtt), frame(H(vec.V1_SERVER), to_server=False)])
    assert fields[-1]["quic_history"] == "ISZis"


def test_connection_close_ends_the_handshake(fields):
    """A server refusing in its Initial (CONNECTION_CLOSE, RFC 9000 section 19.19): c, and
    the event is made then, without a ServerHello (Zeek logs the connection at its close)."""
    close = b"\x1c" + b"\x01" + b"\x06" + b"\x04nope"  # CRYPTO_ERROR-ish code, frame type
    packets = [frame(initial(crypto(0, CLIENT_HELLO), dcid=DCID, scid=CSCID)),
               frame(initial(close, dcid=CSCID, scid=SSCID, server=True, odcid=DCID),
                     to_server=False)]
    analyzer = QuicAnalyzer({}, "s", "z")
    out = analyzer.process(decode(batch_from_frames(packets, ts_ns=[0, 1])))
    assert len(out) == 1 and fields[-1]["ja3s"] == ""
    assert fields[-1]["quic_history"] == "ISic"


def test_history_is_bounded(fields):
    """At most 100 letters (Zeek's QUIC::max_history_length): a client that keeps sending
    Initials without finishing its ClientHello."""
    half = CLIENT_HELLO[: len(CLIENT_HELLO) // 2]
    packets = [frame(initial(crypto(0, half), dcid=DCID, scid=CSCID, pn=i)) for i in range(150)]
    packets.append(frame(initial(crypto(len(half), CLIENT_HELLO[len(half):]), dcid=DCID,
                                 scid=CSCID, pn=150)))
    run(packets)
    assert fields[-1]["quic_history"] == "I" * quic.MAX_HISTORY


def test_merlin_history_agrees_with_zeek_and_tshark(fields):
    """Zeek's quic.log history of the capture starts with ours: the datagrams up to the
    server's ServerHello (its Initial, then a coalesced Handshake packet); tshark shows the
    same packets in those datagrams."""
    path = shared_pcap(MERLIN)
    sensor_tls_docs(path)
    ours = fields[-1]["quic_history"]
    assert ours == "ISish" and ZEEK_MERLIN_HISTORY.startswith(ours)
    if shutil.which("tshark") is None:
        return
    rows = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-E", "occurrence=a", "-e", "udp.srcport",
         "-e", "ip.len", "-e", "quic.long.packet_type", "-e", "tls.handshake.type"],
        capture_output=True, text=True, check=True).stdout.splitlines()
    letters = ""
    for row in rows:
        sport, ip_len, types, hs_types = row.split("\t")
        if int(ip_len) < quic.MIN_IP_DATAGRAM or not types.startswith("0"):
            continue  # a datagram the sensor does not read (not an Initial first)
        case = str.upper if sport == "53241" else str.lower
        for kind in types.split(","):
            letters += case({"0": "i", "1": "z", "2": "h"}[kind])
            if kind == "0" and hs_types:
                letters += case("s")
        if "2" in hs_types.split(","):
            break  # the ServerHello: the event
    assert letters == ours


@pytest.mark.skipif("quic_history" not in TLS.columns,
                    reason="the schema has no quic_history column yet")
def test_history_column_in_documents():
    docs, _ = run([frame(H(vec.V1_CLIENT)), frame(H(vec.V1_SERVER), to_server=False)])
    assert docs[0]["cirtsa"]["quic"]["history"] == "ISis"
