"""QUIC Initial analysis (sensors/quic.py): the RFC 9001 / RFC 9369 test vectors, Zeek's
logs and tshark as oracles, CRYPTO reassembly, bounds and hostile input."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import quic_vectors as vec
from conftest import shared_pcap
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packet_builders import batch_from_frames
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from pipeline.config import load_config
from pipeline.schema import TLS, batch_to_ecs, validate_batch
from sensors.decode import decode
from sensors.pcap_reader import CaptureReader
from sensors.quic import (
    QUIC_V1,
    QUIC_V2,
    VERSIONS,
    QuicAnalyzer,
    connection_keys,
    crypto_frames,
    initial_secrets,
    packet_keys,
    read_long_header,
    unprotect,
)
from sensors.sensor import Sensor

H = bytes.fromhex
CLIENT, SERVER = ("192.0.2.1", 50000), ("198.51.100.2", 443)
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}  # given: scapy would ARP
MERLIN = "c2_beaconing/zeek__merlinc2_quic.pcapng"


# --- building packets (the RFCs check the key schedule these helpers use) ---------------------

def protect(header: bytes, payload: bytes, pn: int, key: bytes, iv: bytes, hp: bytes) -> bytes:
    """A long-header packet protected as RFC 9001 section 5 says (the sender's side)."""
    pn_len = (header[0] & 3) + 1
    pn_offset = len(header) - pn_len
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    packet = bytearray(header + AESGCM(key).encrypt(nonce, payload, header))
    sample = bytes(packet[pn_offset + 4 : pn_offset + 20])
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sample)[:5]
    packet[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        packet[pn_offset + i] ^= mask[1 + i]
    return bytes(packet)


def initial(payload: bytes, *, dcid: bytes, scid: bytes = b"", pn: int = 0,
            version: int = QUIC_V1, server: bool = False, odcid: bytes | None = None) -> bytes:
    """A protected Initial packet carrying `payload` (frames), keys of `odcid` (default:
    `dcid`, a client's first Initial)."""
    v = VERSIONS[version]
    secret = initial_secrets(odcid or dcid, v)[1 if server else 0]
    length = 2 + len(payload) + 16
    header = (bytes([0xC1 | v.initial_type << 4]) + version.to_bytes(4, "big")
              + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + b"\x00"
              + (0x4000 | length).to_bytes(2, "big") + pn.to_bytes(2, "big"))
    return protect(header, payload, pn, *packet_keys(secret, v))


def crypto(offset: int, data: bytes) -> bytes:
    """A CRYPTO frame (offset and length as 4-byte varints)."""
    return (b"\x06" + (0x80000000 | offset).to_bytes(4, "big")
            + (0x80000000 | len(data)).to_bytes(4, "big") + data)


def frame(payload: bytes, *, to_server: bool = True, sport: int | None = None) -> bytes:
    """An Ethernet frame with `payload` in a UDP datagram padded to 1200 bytes, as RFC 9000
    section 14.1 has datagrams with Initials padded (the sensor reads no smaller ones)."""
    payload += bytes(max(0, 1200 - len(payload)))
    (cip, cport), (sip, sport_) = CLIENT, SERVER
    cport = sport or cport
    if to_server:
        return bytes(Ether(**MACS) / IP(src=cip, dst=sip) / UDP(sport=cport, dport=sport_)
                     / payload)
    return bytes(Ether(**MACS) / IP(src=sip, dst=cip) / UDP(sport=sport_, dport=cport) / payload)


def snapped(frame_bytes: bytes, payload_bytes: int) -> bytes:
    """The frame as a capture with a short snap length keeps it: the first `payload_bytes`
    bytes of its UDP payload (its IP header still gives the full length)."""
    return frame_bytes[: 14 + 20 + 8 + payload_bytes]


def run(frames: list[bytes], analyzer: QuicAnalyzer | None = None, step_ns: int = 1_000_000
        ) -> tuple[list[dict], QuicAnalyzer]:
    """Frames through a QuicAnalyzer (one batch) and its flush -> ECS documents."""
    analyzer = analyzer or QuicAnalyzer({}, "s", "z")
    batch = batch_from_frames(frames, ts_ns=[i * step_ns for i in range(len(frames))])
    out = analyzer.process(decode(batch)) + analyzer.flush()
    docs = []
    for b in out:
        validate_batch(b)
        docs.extend(batch_to_ecs(b))
    return docs, analyzer


def history(letters: str) -> dict[str, str]:
    """cirtsa.quic.history as documents carry it (once the schema has the column)."""
    return {"history": letters} if "quic_history" in TLS.columns else {}


CLIENT_HELLO = H(vec.CRYPTO_FRAME)[4:]  # the ClientHello of the RFC's CRYPTO frame (offset 0)


# --- RFC 9001 / RFC 9369 appendix A ------------------------------------------------------------

@pytest.mark.parametrize("version, keys", [(QUIC_V1, vec.V1_KEYS), (QUIC_V2, vec.V2_KEYS)])
def test_initial_keys_match_the_rfc(version, keys):
    v = VERSIONS[version]
    secrets = initial_secrets(H(vec.DCID), v)
    for secret, (want_secret, *want_keys) in zip(secrets, keys, strict=True):
        assert secret.hex() == want_secret
        assert [k.hex() for k in packet_keys(secret, v)] == want_keys


@pytest.mark.parametrize("version, packet, header, sample_mask", [
    (QUIC_V1, vec.V1_CLIENT, vec.V1_CLIENT_HEADER, vec.V1_CLIENT_MASK),
    (QUIC_V2, vec.V2_CLIENT, vec.V2_CLIENT_HEADER, vec.V2_CLIENT_MASK),
])
def test_client_initial_matches_the_rfc(version, packet, header, sample_mask):
    """Header protection and payload of the protected client Initial, byte for byte; and
    protecting the RFC's plain packet gives the RFC's protected one (the test helper)."""
    client, _ = connection_keys(H(vec.DCID), VERSIONS[version])
    raw = H(packet)
    parsed = read_long_header(raw, 0)
    assert (parsed.pn_offset, parsed.end, parsed.dcid.hex()) == (18, 1200, vec.DCID)
    sample, mask = sample_mask
    assert raw[22:38].hex() == sample and client.mask(raw[22:38]).hex() == mask
    plain_header, payload, pn = unprotect(raw, parsed.pn_offset, client)
    assert plain_header.hex() == header and pn == 2
    assert payload == H(vec.CRYPTO_FRAME) + bytes(1162 - len(H(vec.CRYPTO_FRAME)))
    keys = packet_keys(initial_secrets(H(vec.DCID), VERSIONS[version])[0], VERSIONS[version])
    assert protect(H(header), payload, 2, *keys) == raw
    assert crypto_frames(payload) == ([(0, CLIENT_HELLO)], False)


@pytest.mark.parametrize("version, packet, header", [
    (QUIC_V1, vec.V1_SERVER, vec.SERVER_HEADER_V1),
    (QUIC_V2, vec.V2_SERVER, vec.SERVER_HEADER_V2),
])
def test_server_initial_matches_the_rfc(version, packet, header):
    _, server = connection_keys(H(vec.DCID), VERSIONS[version])
    raw = H(packet)
    parsed = read_long_header(raw, 0)
    if version == QUIC_V1:
        assert server.mask(raw[parsed.pn_offset + 4 : parsed.pn_offset + 20]).hex() == \
            vec.V1_SERVER_MASK[1]
    plain_header, payload, pn = unprotect(raw, parsed.pn_offset, server)
    assert (plain_header.hex(), payload.hex(), pn) == (header, vec.SERVER_PAYLOAD, 1)
    frames, stopped = crypto_frames(payload)  # ACK, then CRYPTO(ServerHello)
    assert not stopped and [o for o, _ in frames] == [0] and frames[0][1][0] == 2


@pytest.mark.parametrize("version, client, server", [
    (QUIC_V1, vec.V1_CLIENT, vec.V1_SERVER), (QUIC_V2, vec.V2_CLIENT, vec.V2_SERVER)])
def test_rfc_connection_gives_one_tls_event(version, client, server):
    docs, analyzer = run([frame(H(client)), frame(H(server), to_server=False)])
    assert len(docs) == 1
    doc = docs[0]
    assert doc["tls"]["client"]["server_name"] == "example.com"
    assert doc["tls"]["version"] == "1.3" and doc["tls"]["cipher"] == "TLS_AES_128_GCM_SHA256"
    assert doc["tls"]["established"] is False and "next_protocol" not in doc["tls"]
    assert doc["network"] == {"iana_number": "17", "transport": "udp", "protocol": "quic",
                              "community_id": doc["network"]["community_id"]}
    assert doc["source"] == {"ip": CLIENT[0], "port": CLIENT[1]}
    assert doc["destination"] == {"ip": SERVER[0], "port": SERVER[1]}
    assert doc["cirtsa"]["tls"]["client"]["ja4"].startswith("q13d")
    assert doc["cirtsa"]["tls"]["client"]["alpn"] == ["alpn"]
    assert doc["cirtsa"]["quic"] == {"version": VERSIONS[version].name,
                                     "client_initial_dcid": vec.DCID,
                                     "server_scid": "f067a5502a4262b5",  # client SCID empty
                                     **history("ISis")}
    assert analyzer.stats["quic_initials_decrypted"] == 2


# --- oracles: Zeek's logs and tshark on real and crafted captures ---------------------------

def sensor_tls_docs(path) -> tuple[list[dict], dict]:
    sensor = Sensor(load_config(None)["sensor"])
    out = []
    with CaptureReader(path) as reader:
        for batch in reader.batches():
            out.extend(sensor.process(batch))
    for piece in sensor.flush_chunks():
        out.extend(piece)
    docs = []
    for b in out:
        validate_batch(b)
        if b.kind == "tls":
            docs.extend(batch_to_ecs(b))
    return docs, dict(sensor.stats)


def test_merlin_c2_agrees_with_zeek():
    """Zeek's quic.log and ssl.log for the Merlin HTTP/3 capture, field by field."""
    docs, stats = sensor_tls_docs(shared_pcap(MERLIN))
    assert len(docs) == 1
    doc = docs[0]
    assert (doc["source"], doc["destination"]) == (
        {"ip": "10.0.0.4", "port": 53241}, {"ip": "24.199.110.233", "port": 443})
    assert doc["cirtsa"]["quic"] == {"version": "1",
                                     "client_initial_dcid": "f21fdf87f736f235846c7f460ca017",
                                     "client_scid": "1b3ff910", "server_scid": "eab5f6f4",
                                     **history("ISish")}
    assert "server_name" not in doc["tls"]["client"]  # Zeek: no SNI
    assert doc["cirtsa"]["tls"]["client"]["alpn"] == ["h3"]  # client_protocol h3
    assert (doc["tls"]["version"], doc["tls"]["cipher"]) == ("1.3", "TLS_AES_128_GCM_SHA256")
    assert doc["tls"]["established"] is False and "next_protocol" not in doc["tls"]
    assert (doc["tls"]["curve"], doc["tls"]["resumed"]) == ("x25519", False)  # x25519, F
    assert doc["network"]["protocol"] == "quic" and doc["network"]["transport"] == "udp"
    assert stats["quic_handshakes"] == 1 and "quic_decrypt_failed" not in stats


TSHARK_FIELDS = ("udp.srcport", "tls.handshake.extensions_server_name", "tls.handshake.ja3",
                 "tls.handshake.ciphersuite", "tls.handshake.ja3s")


def tshark_hellos(path) -> dict[str, dict[str, str]]:
    """Per client port: tshark's SNI and JA3 (ClientHello), cipher and JA3S (ServerHello)."""
    out: dict[str, dict[str, str]] = {}
    for hs_type, names in ((1, ("sni", "ja3")), (2, ("cipher", "ja3s"))):
        rows = subprocess.run(
            ["tshark", "-r", str(path), "-Y", f"quic && tls.handshake.type=={hs_type}",
             "-T", "fields", "-E", "occurrence=f", "-e", "udp.srcport", "-e", "udp.dstport",
             *[a for f in TSHARK_FIELDS[1 + 2 * (hs_type - 1) : 3 + 2 * (hs_type - 1)]
               for a in ("-e", f)]],
            capture_output=True, check=True).stdout.decode().splitlines()
        for row in rows:
            sport, dport, *values = row.split("\t")
            client_port = sport if hs_type == 1 else dport
            out.setdefault(client_port, {}).update(zip(names, values, strict=True))
    return out


def ours(docs: list[dict]) -> dict[str, dict[str, str]]:
    out = {}
    for doc in docs:
        tls = doc["tls"]
        row = {"sni": tls.get("client", {}).get("server_name", ""),
               "ja3": tls["client"]["ja3"]}
        if "ja3s" in tls.get("server", {}):
            row |= {"cipher": CIPHER_CODES[tls["cipher"]], "ja3s": tls["server"]["ja3s"]}
        out[str(doc["source"]["port"])] = row
    return out


CIPHER_CODES = {"TLS_AES_128_GCM_SHA256": "0x1301", "TLS_AES_256_GCM_SHA384": "0x1302",
                "TLS_CHACHA20_POLY1305_SHA256": "0x1303"}  # as tshark prints them
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


@needs_tshark
def test_merlin_c2_agrees_with_tshark():
    """tshark decrypts the Initials itself: same JA3 (203c2306...), no SNI, same ServerHello."""
    path = shared_pcap(MERLIN)
    expected = tshark_hellos(path)
    docs, _ = sensor_tls_docs(path)
    assert expected == ours(docs)
    assert expected["53241"]["ja3"] == "203c2306834e5bf5ace01fb74ad1badf"


@needs_tshark
@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_crafted_rfc_capture_agrees_with_tshark(tmp_path, version):
    """The RFC's client and server Initial on UDP 443 in a pcap: tshark and we both read
    SNI example.com, the same JA3, cipher and JA3S."""
    client, server = (vec.V1_CLIENT, vec.V1_SERVER) if version == QUIC_V1 else (
        vec.V2_CLIENT, vec.V2_SERVER)
    path = tmp_path / "rfc.pcap"
    wrpcap(str(path), [Ether(frame(H(client))), Ether(frame(H(server), to_server=False))])
    expected = tshark_hellos(path)
    docs, _ = sensor_tls_docs(path)
    assert expected == ours(docs)
    assert expected["50000"]["sni"] == "example.com"


def test_coalesced_packets_follow_the_length_field():
    """A server datagram with its Initial and a Handshake packet after it (as servers send
    them): the Initial is read, the Handshake packet counted and skipped."""
    handshake = (bytes([0xE0]) + QUIC_V1.to_bytes(4, "big") + b"\x00\x08" + bytes(8)
                 + (0x4000 | 60).to_bytes(2, "big") + bytes(60))
    docs, analyzer = run([frame(H(vec.V1_CLIENT)),
                          frame(H(vec.V1_SERVER) + handshake, to_server=False)])
    assert len(docs) == 1 and docs[0]["tls"]["cipher"] == "TLS_AES_128_GCM_SHA256"
    assert analyzer.stats["quic_other_long_header"] == 1


# --- CRYPTO reassembly --------------------------------------------------------------------------

def split_hello(order: tuple[int, ...]) -> list[bytes]:
    """The RFC ClientHello in three CRYPTO frames over two Initials (the second packet holds
    two frames, the later one first), packets sent in `order`."""
    dcid = H(vec.DCID)
    a, b, c = CLIENT_HELLO[:100], CLIENT_HELLO[100:180], CLIENT_HELLO[180:]
    packets = [initial(crypto(0, a) + bytes(20), dcid=dcid, pn=0),
               initial(crypto(180, c) + b"\x01" + crypto(100, b), dcid=dcid, pn=1)]
    return [frame(packets[i]) for i in order]


def test_split_client_hello_in_either_order_is_the_unsplit_event():
    whole = [frame(initial(crypto(0, CLIENT_HELLO), dcid=H(vec.DCID)))]
    server = frame(H(vec.V1_SERVER), to_server=False)
    expected, _ = run([*whole, server])
    for order in ((0, 1), (1, 0)):
        docs, analyzer = run([*split_hello(order), server])
        for doc in docs:  # two client Initials: I I S i s (Zeek's letters)
            assert doc["cirtsa"]["quic"].pop("history", "IISis") == "IISis"
        for doc in expected:
            assert doc["cirtsa"]["quic"].pop("history", "ISis") == "ISis"
        assert docs == expected, order
        assert analyzer.stats["quic_initials_decrypted"] == 3


def test_client_hello_alone_is_emitted_at_idle_and_at_end():
    """Without a ServerHello the event waits for the idle timeout (event time) or the end."""
    analyzer = QuicAnalyzer({"idle_timeout_s": 5}, "s", "z")
    hello = frame(initial(crypto(0, CLIENT_HELLO), dcid=H(vec.DCID)))
    later = frame(b"not quic", sport=40000)
    batch = batch_from_frames([hello, later], ts_ns=[0, 6_000_000_000])
    events = analyzer.process(decode(batch))
    assert len(events) == 1 and events[0].columns["server_name"][0] == "example.com"
    assert not analyzer.connections and analyzer.held == 0
    docs, _ = run([hello])  # the flush
    assert len(docs) == 1 and docs[0]["tls"]["client"]["server_name"] == "example.com"
    assert "cipher" not in docs[0]["tls"]


def test_connections_are_bounded_and_evictions_counted():
    analyzer = QuicAnalyzer({"max_connections": 3}, "s", "z")
    frames = [frame(initial(crypto(0, CLIENT_HELLO), dcid=bytes([i]) * 8), sport=40000 + i)
              for i in range(10)]
    docs, analyzer = run(frames, analyzer)
    assert len(docs) == 10  # evicted ones are emitted with what was read
    assert analyzer.stats["quic_evicted"] == 7
    assert not analyzer.connections and analyzer.held == 0


def test_crypto_bytes_are_bounded_per_connection():
    analyzer = QuicAnalyzer({"max_bytes_per_conn": 64}, "s", "z")
    docs, analyzer = run([frame(initial(crypto(0, CLIENT_HELLO), dcid=H(vec.DCID)))], analyzer)
    assert docs == [] and analyzer.stats["quic_crypto_capped"] == 1


# --- negative and hostile input -----------------------------------------------------------------

def test_dns_and_random_udp_on_443_are_not_quic():
    rng = np.random.default_rng(7)
    frames = [bytes(Ether(**MACS) / IP(src="192.0.2.9", dst="192.0.2.53") / UDP(sport=443, dport=53)
                    / DNS(rd=1, qd=DNSQR(qname="example.com")))]
    frames += [frame(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
               for size in (0, 1, 7, 30, 1200, 1350)]
    frames += [frame(b"\xc0" + rng.integers(0, 256, 1199, dtype=np.uint8).tobytes())]
    docs, analyzer = run(frames)
    assert docs == [] and not analyzer.connections


def test_sensor_runs_the_analyzer_by_default(tmp_path):
    """End to end: configuration (defaults.d) -> Sensor -> a tls event with QUIC fields."""
    path = tmp_path / "q.pcap"
    wrpcap(str(path), [Ether(f) for f in split_hello((1, 0))])
    docs, stats = sensor_tls_docs(path)
    assert [d["tls"]["client"]["server_name"] for d in docs] == ["example.com"]
    assert stats["quic_connections"] == 1


VALID = H(vec.V1_CLIENT)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
       st.integers(0, len(VALID)))
def test_mutated_initials_never_raise(flips, cut):
    packet = bytearray(VALID)
    for at, value in flips:
        packet[at] = value
    analyzer = QuicAnalyzer({"max_connections": 2, "max_bytes_per_conn": 512}, "s", "z")
    frames = [snapped(frame(bytes(packet)), cut), frame(bytes(packet)),
              frame(bytes(packet[:cut]), to_server=False), frame(VALID, sport=1)]
    out = analyzer.process(decode(batch_from_frames(frames)))
    assert len(analyzer.connections) <= 2 and 0 <= analyzer.held <= 2 * 2 * 512
    assert all(c.held <= 2 * 512 for c in analyzer.connections.values())
    out += analyzer.flush()
    for batch in out:
        validate_batch(batch)
    assert 1 <= sum(len(b) for b in out) <= 2  # the valid one, and at most the mutated one
    assert not analyzer.connections and analyzer.held == 0


def test_every_truncation_is_counted_not_raised():
    """The client Initial cut by the capture at every length: counted, never raised."""
    analyzer = QuicAnalyzer({}, "s", "z")
    frames = [snapped(frame(VALID, sport=1024 + cut), cut) for cut in range(len(VALID))]
    docs, analyzer = run(frames, analyzer)
    assert docs == [] and not analyzer.connections
    # shorter than 7 bytes: not even picked by the prefilter (no version to read)
    assert analyzer.stats == {"quic_truncated": len(VALID) - 7}


def test_datagrams_under_1200_bytes_are_not_read():
    """RFC 9000 section 14.1: Initials come in datagrams of 1200 bytes or more; the
    prefilter reads no smaller UDP payload (the RFC's 135-byte server Initial alone)."""
    small = bytes(Ether(**MACS) / IP(src=SERVER[0], dst=CLIENT[0])
                  / UDP(sport=SERVER[1], dport=CLIENT[1]) / H(vec.V1_SERVER))
    docs, analyzer = run([frame(H(vec.V1_CLIENT)), small])
    assert len(docs) == 1 and "cipher" not in docs[0]["tls"]
    assert analyzer.stats["quic_initials_decrypted"] == 1


def test_tls_over_tcp_documents_carry_no_quic_fields():
    """The optional QUIC columns are empty on TCP rows and left out of their documents."""
    docs, _ = sensor_tls_docs(shared_pcap("benign/zeek__tls1.2.pcap"))
    assert docs and all(d["network"]["protocol"] == "tls" and "quic" not in d["cirtsa"]
                        and d["network"]["transport"] == "tcp" for d in docs)
