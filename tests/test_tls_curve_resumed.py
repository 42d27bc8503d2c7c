"""tls.curve and tls.resumed (ECS; Zeek's ssl.log `curve`, `resumed`): tshark as the oracle
on every MANIFEST capture with TLS, Zeek's ssl.log on the QUIC capture, and crafted
handshakes (TLS 1.2 ECDHE / DHE, session-ID and ticket resumption, TLS 1.3 with and
without pre_shared_key, HelloRetryRequest, unknown and post-quantum groups, every cut)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import tls_reference as reference
from conftest import assert_ecs, shared_pcap
from test_http import capture_docs
from test_tls import ext, u16s, vec
from test_tls_kernels import outcome, reference_outcome

from pipeline.schema import TLS, EventBatch, batch_to_ecs, validate_batch
from sensors import tls
from sensors.quic import QuicAnalyzer, event_fields

# --- oracle: tshark on the captures -----------------------------------------------------------

TCP_TLS_CAPTURES = [
    "benign/zeek__tls1.2.pcap", "benign/zeek__smtp.pcap",
    "c2_beaconing/corelight__asyncrat_cd010953.pcap",
    "c2_beaconing/corelight__dcrat_30a385ed.pcap", "c2_beaconing/ndpi__emotet.pcap",
    "c2_beaconing/slips__test-cc-capture-1.pcap", "dns_tunneling/ndpi__dns2tcp_tunnel.pcap",
    "known_bad_ioc/ndpi__malware.pcap", "large/ndpi__1kxun.pcap",
    "web_attacks/zeek__heartbleed-success.pcap",
]  # every MANIFEST capture in which tshark finds a ServerHello over TCP
EMPTY_SESSION_IDS = ("", "00" * 32)  # Zeek keeps neither


def _tshark(path, display_filter: str, fields: list[str]) -> list[list[str]]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    cmd = ["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields", "-E", "occurrence=a"]
    for name in fields:
        cmd += ["-e", name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def _ints(text: str) -> list[int]:
    return [int(v, 0) for v in text.split(",") if v]


def tshark_expected(path) -> dict[tuple, tuple[str | None, bool]]:
    """(client ip, client port, server port) -> (curve, resumed) of each TCP stream with a
    ServerHello, from tshark's dissection: curve = the ServerKeyExchange's named curve, else
    the (first) ServerHello's key_share group (a HelloRetryRequest's selected group);
    resumed by Zeek's rules over tshark's session ids, extension types and lengths and the
    client's records (see docs/schema.md)."""
    hellos = {}
    for stream, src, src6, sport, dport, sid, types, lens in _tshark(
            path, "tcp && tls.handshake.type==1",
            ["tcp.stream", "ip.src", "ipv6.src", "tcp.srcport", "tcp.dstport",
             "tls.handshake.session_id", "tls.handshake.extension.type",
             "tls.handshake.extension.len"]):
        if stream not in hellos:
            ticket = any(t == 35 and n > 0 for t, n in zip(_ints(types), _ints(lens),
                                                           strict=True))
            hellos[stream] = ((src or src6).split(",")[0], int(sport), int(dport),
                              sid.replace(":", ""), 41 in _ints(types), ticket)
    servers = {}
    for stream, sid, types, group, selected, versions, hello_version, cipher in _tshark(
            path, "tcp && tls.handshake.type==2",
            ["tcp.stream", "tls.handshake.session_id", "tls.handshake.extension.type",
             "tls.handshake.extensions_key_share_group",
             "tls.handshake.extensions_key_share_selected_group",
             "tls.handshake.extensions.supported_version", "tls.handshake.version",
             "tls.handshake.ciphersuite"]):
        if stream not in servers:
            shared = (_ints(group) or _ints(selected) or [-1])[0]
            version = (_ints(versions) or _ints(hello_version))[0]
            servers[stream] = (sid.split(",")[0].replace(":", ""), 41 in _ints(types), shared,
                               version, _ints(cipher)[0])
    curves = {}
    for stream, curve in _tshark(path, "tcp && tls.handshake.type==12",
                                 ["tcp.stream", "tls.handshake.server_named_curve"]):
        if curve and stream not in curves:
            curves[stream] = _ints(curve)[0]
    # the client's records in order: did a ClientKeyExchange come before its first CCS?
    before_ccs: dict[str, list[int]] = defaultdict(list)
    ccs = set()
    for stream, src, src6, sport, types, kinds in _tshark(
            path, "tcp && (tls.record.content_type==20 || tls.handshake.type==16)",
            ["tcp.stream", "ip.src", "ipv6.src", "tcp.srcport", "tls.record.content_type",
             "tls.handshake.type"]):
        hello = hellos.get(stream)
        if hello is None or ((src or src6).split(",")[0], int(sport)) != hello[:2] \
                or stream in ccs:
            continue
        if 20 in _ints(types):
            ccs.add(stream)
        before_ccs[stream] += _ints(kinds)
    out = {}
    for stream, (ip, sport, dport, sid, psk_offered, ticket) in hellos.items():
        if stream not in servers:
            continue
        echoed, psk, group, version, cipher = servers[stream]
        resumed = (ticket and sid in EMPTY_SESSION_IDS and stream in ccs
                   and 16 not in before_ccs[stream]) \
            or (sid not in EMPTY_SESSION_IDS and echoed == sid and version != 0x0304) \
            or (psk and psk_offered)
        curve = tls.curve_name(curves.get(stream, group))
        if not curve and version != 0x0304 and tls.ECDHE_SUITES[cipher] and not resumed:
            # an ECDHE full handshake whose ServerKeyExchange tshark does not show: it skips
            # segments after a capture hole (ndpi__malware, 41240 -> 443: the server's
            # flight arrives out of order), which our reassembly places
            curve = None
        out[(ip, sport, dport)] = (curve, resumed)
    return out


def _ours(docs: list[dict]) -> dict[tuple, list[tuple[str, bool]]]:
    out = defaultdict(list)
    for d in docs:
        key = (d["source"]["ip"], d["source"]["port"], d["destination"]["port"])
        out[key].append((d["tls"].get("curve", ""), d["tls"]["resumed"]))
    return out


@pytest.mark.parametrize("name", TCP_TLS_CAPTURES)
def test_curve_and_resumed_match_tshark(name):
    path = shared_pcap(name)
    expected = tshark_expected(path)
    ours = _ours(capture_docs(path, tls.TlsAnalyzer({}, "s", "z")))
    compared = 0
    for key, value in expected.items():
        found = ours.get(key, [])
        if found:  # our events of that flow (ports reused: several)
            if value[0] is None:  # curve unknown to tshark: resumed only
                found = [(None, resumed) for _, resumed in found]
            assert (found[0] == value) if len(found) == 1 else (value in found), key
            compared += 1
    assert compared == len(expected) > 0  # every flow tshark reads a ServerHello of


def _zeek_ssl_log(path) -> list[dict[str, str]]:
    fields, rows = [], []
    for line in path.read_text().splitlines():
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            rows.append(dict(zip(fields, line.split("\t"), strict=True)))
    return rows


def test_quic_agrees_with_zeek_and_tshark():
    """The Merlin HTTP/3 capture: curve and resumed as Zeek's ssl.log (x25519, F) and as
    tshark's key_share group of the decrypted ServerHello."""
    path = shared_pcap(MERLIN)
    docs = capture_docs(path, QuicAnalyzer({}, "s", "z"))
    zeek = _zeek_ssl_log(path.parent / "groundtruth" /
                         "zeek__merlinc2_quic.pcapng__expected_ssl.log")
    assert [(d["source"]["port"], d["tls"]["curve"], d["tls"]["resumed"]) for d in docs] == \
        [(int(z["id.orig_p"]), z["curve"], z["resumed"] == "T") for z in zeek] \
        == [(53241, "x25519", False)]
    rows = _tshark(path, "quic && tls.handshake.type==2",
                   ["udp.dstport", "tls.handshake.extensions_key_share_group",
                    "tls.handshake.extension.type"])
    assert [(int(port), tls.curve_name(_ints(group)[0]), 41 in _ints(types))
            for port, group, types in rows] == [(53241, "x25519", False)]


MERLIN = "c2_beaconing/zeek__merlinc2_quic.pcapng"

# --- crafted handshakes -------------------------------------------------------------------

ECDHE_RSA_AES128_GCM, DHE_RSA_AES128_GCM, RSA_AES128_GCM = 0xC02F, 0x009E, 0x009C
TLS13_AES128_GCM = 0x1301
SECP256R1, X25519, X25519MLKEM768 = 0x0017, 0x001D, 0x11EC
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")
CCS = b"\x14\x03\x03\x00\x01\x01"
ENCRYPTED = b"\x16\x03\x03\x00\x05" + bytes(5)  # a Finished after CCS: not read
APP = b"\x17\x03\x03\x00\x03abc"
SID = bytes(range(1, 33))


def message(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def record(*messages: bytes) -> bytes:
    body = b"".join(messages)
    return b"\x16\x03\x03" + vec(body)


def client(session_id: bytes = b"", exts: tuple[bytes, ...] = (),
           ciphers: tuple[int, ...] = (ECDHE_RSA_AES128_GCM, TLS13_AES128_GCM)) -> bytes:
    """A ClientHello message."""
    body = struct.pack("!H", 0x0303) + bytes(32) + vec(session_id, 1) + vec(u16s(ciphers)) \
        + vec(b"\x00", 1) + vec(b"".join(exts))
    return message(1, body)


def server(cipher: int, session_id: bytes = b"", exts: tuple[bytes, ...] = (),
           random: bytes = bytes(32)) -> bytes:
    """A ServerHello message."""
    body = struct.pack("!H", 0x0303) + random + vec(session_id, 1) \
        + struct.pack("!HB", cipher, 0) + vec(b"".join(exts))
    return message(2, body)


def certificate() -> bytes:
    return message(11, vec(vec(b"\x30\x03\x02\x01\x05", 3), 3))


def ecdhe_exchange(group: int) -> bytes:
    """A ServerKeyExchange of an ECDHE suite: named_curve, the group, a point, a signature."""
    return message(12, b"\x03" + struct.pack("!H", group) + vec(b"\x04" + bytes(64), 1)
                   + b"\x04\x01" + vec(bytes(64)))


def dhe_exchange() -> bytes:
    """A DHE suite's ServerKeyExchange: dh_p of 768 bytes (its length's first byte is 3, as
    a named_curve's curve_type: read only for ECDHE suites), dh_g, dh_Ys, a signature."""
    return message(12, vec(b"\xff" * 768) + vec(b"\x02") + vec(bytes(768)) + b"\x04\x01"
                   + vec(bytes(64)))


HELLO_DONE = message(14, b"")
CLIENT_KEY_EXCHANGE = message(16, vec(bytes(65), 1))
SUPPORTED_13 = ext(43, u16s([0x0304]))
TICKET = ext(35, bytes(100))
PSK_OFFERED = ext(41, vec(vec(bytes(16)) + bytes(4)) + vec(vec(bytes(32), 1)))
PSK_ACCEPTED = ext(41, u16s([0]))


def key_share(group: int) -> bytes:
    """A ServerHello's key_share: KeyShareEntry (group, key)."""
    return ext(51, u16s([group]) + vec(bytes(32)))


def full_12(exchange: bytes, cipher: int = ECDHE_RSA_AES128_GCM) -> tuple[bytes, bytes]:
    """A full TLS 1.2 handshake's first bytes each way."""
    return (record(client()) + record(CLIENT_KEY_EXCHANGE) + CCS + ENCRYPTED,
            record(server(cipher, SID), certificate(), exchange, HELLO_DONE) + CCS + ENCRYPTED)


def tls13(server_exts: tuple[bytes, ...], client_exts: tuple[bytes, ...] = (),
          random: bytes = bytes(32)) -> tuple[bytes, bytes]:
    """A TLS 1.3 handshake (middlebox compatibility: session id echoed, CCS both ways)."""
    return (record(client(SID, client_exts)) + CCS + ENCRYPTED,
            record(server(TLS13_AES128_GCM, SID, (SUPPORTED_13, *server_exts), random))
            + CCS + ENCRYPTED)


def facts(data: tuple[bytes, bytes]) -> tuple[str, bool]:
    """(curve, resumed) of one flow's handshake, as the event columns give them (and the
    pure-Python reference parser agrees)."""
    parsed = tls.parse_flows([data[0]], [data[1]])
    columns = tls.event_columns(parsed, [0])
    hs = tls.handshake_of(parsed, 0)
    assert (tls.curve_name(hs.curve), hs.resumed) == (columns["curve"][0],
                                                        columns["resumed"][0])
    assert hs == reference.parse_handshake(*data)
    return columns["curve"][0], bool(columns["resumed"][0])


CASES = {
    "tls12 ecdhe secp256r1": (full_12(ecdhe_exchange(SECP256R1)), ("secp256r1", False)),
    "tls12 ecdhe x25519": (full_12(ecdhe_exchange(X25519)), ("x25519", False)),
    "tls12 ecdhe unknown group": (full_12(ecdhe_exchange(0x1234)), ("0x1234", False)),
    "tls12 ecdhe explicit curve": (full_12(message(12, b"\x01" + bytes(40))), ("", False)),
    "tls12 dhe: no curve": (full_12(dhe_exchange(), DHE_RSA_AES128_GCM), ("", False)),
    "tls12 rsa: no exchange": (
        (record(client()) + record(CLIENT_KEY_EXCHANGE) + CCS,
         record(server(RSA_AES128_GCM, SID), certificate(), HELLO_DONE)), ("", False)),
    "session id resumed": (
        (record(client(SID)) + CCS + ENCRYPTED,
         record(server(ECDHE_RSA_AES128_GCM, SID)) + CCS + ENCRYPTED), ("", True)),
    "session id not echoed": (
        (record(client(SID)) + record(CLIENT_KEY_EXCHANGE) + CCS,
         record(server(ECDHE_RSA_AES128_GCM, SID[::-1]), certificate(),
                ecdhe_exchange(SECP256R1), HELLO_DONE)), ("secp256r1", False)),
    "32 zero bytes echoed: no session id": (
        (record(client(bytes(32))) + CCS, record(server(ECDHE_RSA_AES128_GCM, bytes(32))) + CCS),
        ("", False)),
    "ticket resumed": (
        (record(client(b"", (TICKET,))) + CCS + ENCRYPTED,
         record(server(ECDHE_RSA_AES128_GCM)) + CCS + ENCRYPTED), ("", True)),
    "ticket offered, full handshake": (
        (record(client(b"", (TICKET,))) + record(CLIENT_KEY_EXCHANGE) + CCS,
         record(server(ECDHE_RSA_AES128_GCM, b"", (ext(35, b""),)), certificate(),
                ecdhe_exchange(X25519), HELLO_DONE)), ("x25519", False)),
    "empty ticket: no resumption": (
        (record(client(b"", (ext(35, b""),))) + CCS,
         record(server(ECDHE_RSA_AES128_GCM)) + CCS), ("", False)),
    "ticket with a session id: by its echo only": (
        (record(client(SID, (TICKET,))) + CCS, record(server(ECDHE_RSA_AES128_GCM)) + CCS),
        ("", False)),
    "tls13 x25519": (tls13((key_share(X25519),)), ("x25519", False)),
    "tls13 post-quantum": (tls13((key_share(X25519MLKEM768),)), ("X25519MLKEM768", False)),
    "tls13 unknown group": (tls13((key_share(0xABCD),)), ("0xABCD", False)),
    "tls13 psk accepted": (tls13((key_share(X25519), PSK_ACCEPTED), (PSK_OFFERED,)),
                           ("x25519", True)),
    "tls13 psk only (psk_ke)": (tls13((PSK_ACCEPTED,), (PSK_OFFERED,)), ("", True)),
    "tls13 psk not offered": (tls13((key_share(X25519), PSK_ACCEPTED)), ("x25519", False)),
    "tls13 psk offered, not accepted": (tls13((key_share(SECP256R1),), (PSK_OFFERED,)),
                                        ("secp256r1", False)),
    "hello retry request": (tls13((ext(51, u16s([SECP256R1])),), random=HRR_RANDOM),
                            ("secp256r1", False)),
    "retry, then the psk accepted in the real ServerHello": (
        (record(client(SID, (PSK_OFFERED,))) + CCS + record(client(SID, (PSK_OFFERED,))) + APP,
         record(server(TLS13_AES128_GCM, SID, (SUPPORTED_13, ext(51, u16s([SECP256R1]))),
                       HRR_RANDOM)) + CCS
         + record(server(TLS13_AES128_GCM, SID,
                         (SUPPORTED_13, key_share(SECP256R1), PSK_ACCEPTED))) + APP),
        ("secp256r1", True)),
    "key_share too short": (tls13((ext(51, b"\x00"),)), ("", False)),
    "key_share empty": (tls13((ext(51, b""),)), ("", False)),
}


@pytest.mark.parametrize("name", CASES)
def test_crafted_handshakes(name):
    data, expected = CASES[name]
    assert facts(data) == expected


@pytest.mark.parametrize("size", [0, 1, 2])
def test_a_server_key_exchange_too_short_for_a_curve(size):
    exchange = message(12, (b"\x03" + struct.pack("!H", SECP256R1))[:size])
    assert facts(full_12(exchange)) == ("", False)


def test_a_curve_split_over_records_is_read():
    flight = server(ECDHE_RSA_AES128_GCM, SID) + certificate() + ecdhe_exchange(X25519)
    at = len(flight) - len(ecdhe_exchange(X25519)) + 5  # inside the curve's bytes
    split = b"\x16\x03\x03" + vec(flight[:at]) + b"\x16\x03\x03" + vec(flight[at:])
    assert facts((record(client()), split)) == ("x25519", False)


def every_cut_checks() -> None:
    """Every prefix of the server's and the client's bytes of the crafted handshakes parses
    without an exception; the curve is the whole flight's once the record holding it (the
    ServerHello's or the ServerKeyExchange's) has come, else none. (Also run under
    NUMBA_BOUNDSCHECK by test_tls_kernels.)"""
    for (client_data, server_data), (curve, _) in CASES.values():
        holder = _curve_record_end(server_data)
        for cut in range(len(server_data) + 1):
            got, _ = facts((client_data, server_data[:cut]))
            assert got == (curve if cut >= holder else ""), cut
        for cut in range(len(client_data) + 1):
            cut_data = (client_data[:cut], server_data)
            found = outcome(tls.parse_handshake, *cut_data)
            assert found == reference_outcome(*cut_data)
            if isinstance(found, tls.Handshake):  # a whole ClientHello: an event
                facts(cut_data)


def _curve_record_end(data: bytes) -> int:
    """The end of the last record of the server's cleartext flight that holds its curve:
    the ServerKeyExchange's if any, else the ServerHello's (crafted flights: one record)."""
    return len(data.split(CCS)[0])


def test_every_cut():
    every_cut_checks()


# --- schema: optional columns, ECS --------------------------------------------------------


def test_batches_without_the_columns_still_read():
    """A producer that predates curve / resumed: its batch validates and reads with no curve
    and not resumed; a new batch's document carries tls.curve and tls.resumed."""
    data = CASES["tls13 psk accepted"][0]
    parsed = tls.parse_flows([data[0]], [data[1]])
    columns = tls.event_columns(parsed, [0])
    assert (columns["curve"][0], columns["resumed"][0]) == ("x25519", True)
    base = {name: np.zeros(1, spec.dtype) if spec.dtype != object else np.array([""], object)
            for name, spec in ((f.column, f) for f in TLS.fields) if not spec.optional}
    base["src_ip"] = base["dst_ip"] = np.zeros(1, TLS.field("src_ip").dtype)
    old = EventBatch(TLS.name, dict(base))
    validate_batch(old)
    assert old.columns["curve"].tolist() == [""] and old.columns["resumed"].tolist() == [False]
    doc = batch_to_ecs(old)[0]
    assert "curve" not in doc["tls"] and doc["tls"]["resumed"] is False
    fresh = EventBatch(TLS.name, {**base, "curve": columns["curve"],
                                  "resumed": columns["resumed"]})
    validate_batch(fresh)
    doc = batch_to_ecs(fresh)[0]
    assert_ecs(doc)
    assert (doc["tls"]["curve"], doc["tls"]["resumed"]) == ("x25519", True)


@pytest.mark.parametrize(("server_exts", "client_exts", "expected"), [
    ((key_share(X25519MLKEM768),), (), ("X25519MLKEM768", False)),
    ((key_share(X25519), PSK_ACCEPTED), (PSK_OFFERED,), ("x25519", True)),
    ((ext(51, u16s([SECP256R1])),), (), ("secp256r1", False)),  # HelloRetryRequest's group
])
def test_quic_rows_read_curve_and_resumed(server_exts, client_exts, expected):
    """A QUIC connection's hellos (no session id, no CCS: TLS 1.3 only) give its event's
    curve and resumed as over TCP."""
    conn = SimpleNamespace(
        client_hello=client(b"", client_exts),
        server_hello=server(TLS13_AES128_GCM, b"", (SUPPORTED_13, *server_exts)),
        version=SimpleNamespace(name="1"), odcid=b"\x01", client_scid=b"", server_scid=b"",
        history=[])
    fields = event_fields(conn)
    assert (fields["curve"], fields["resumed"]) == expected
