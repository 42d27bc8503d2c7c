"""Hostile input for the SSH, login, ARP and ICMP parsers: random and mutated payloads never
raise, and what comes out stays bounded and schema-valid."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packet_builders import batch_from_frames

from pipeline.schema import batch_to_ecs, validate_batch
from sensors.arp import arp_events
from sensors.decode import decode
from sensors.icmp import icmp_events
from sensors.logins import (
    MAX_REPLY,
    MAX_USER,
    LoginAnalyzer,
    login_attempts,
    strip_telnet,
)
from sensors.ssh import SshAnalyzer, analyze, infer_auth, kexinit_lists, parse_clear_text
from sensors.tcp_stream import StreamChunk

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAC = bytes.fromhex("020000000001") + bytes.fromhex("020000000002")


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int) -> bytes:
    raw = bytearray(data)
    for at, value in flips:
        if raw:
            raw[at % len(raw)] = value
    return bytes(raw[: cut % (len(raw) + 1)])


mutations = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8)


# --- ARP and ICMP: whole frames through the decoder ----------------------------------------

VALID_ARP = bytes.fromhex("0001080006040001") + bytes(6) + bytes([192, 0, 2, 1]) + bytes(6) + \
    bytes([192, 0, 2, 2])


@FUZZ
@given(payloads=st.lists(st.one_of(st.binary(max_size=64),
                                   st.tuples(mutations, st.integers(0, 64)).map(
                                       lambda m: _mutate(VALID_ARP, *m))), max_size=20),
       tags=st.integers(0, 3))
def test_arp_random_payloads(payloads, tags):
    vlan = b"".join(b"\x81\x00" + struct.pack("!H", 5 + i) for i in range(tags))
    frames = [MAC + vlan + b"\x08\x06" + p for p in payloads]
    stats: dict[str, int] = {}
    batch = arp_events(decode(batch_from_frames(frames)), "s", "z", stats)
    emitted = 0 if batch is None else len(batch)
    assert emitted <= len(frames)
    assert sum(stats.values()) == len(frames)  # every frame: emitted or counted once
    if batch is not None:
        validate_batch(batch)
        batch_to_ecs(batch)


def _ipv4(proto: int, payload: bytes, total: int | None = None) -> bytes:
    length = 20 + len(payload) if total is None else total
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 1, 0, 64, proto, 0,
                         bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2]))
    return MAC + b"\x08\x00" + header + payload


def _ipv6(payload: bytes) -> bytes:
    header = struct.pack("!IHBB16s16s", 0x60000000, len(payload), 58, 64,
                         bytes(15) + b"\x01", bytes(15) + b"\x02")
    return MAC + b"\x86\xdd" + header + payload


@FUZZ
@given(packets=st.lists(st.tuples(st.sampled_from([4, 6]), st.binary(max_size=80),
                                  st.integers(0, 200)), max_size=20))
def test_icmp_random_messages(packets):
    frames = [(_ipv4(1, p, total=None if t % 3 else t) if v == 4 else _ipv6(p))
              for v, p, t in packets]
    stats: dict[str, int] = {}
    batch = icmp_events(decode(batch_from_frames(frames)), "s", "z", stats)
    if batch is not None:
        validate_batch(batch)
        assert len(batch) <= len(frames)
        assert (batch.columns["payload_bytes"] <= 80).all()
        batch_to_ecs(batch)


# --- SSH -----------------------------------------------------------------------------------

def _kexinit_packet() -> bytes:
    lists = b"".join(struct.pack("!I", 4) + b"none" for _ in range(10))
    payload = b"\x14" + bytes(16) + lists + bytes(5)
    pad = 8 - (5 + len(payload)) % 8 + 4
    return struct.pack("!IB", 1 + len(payload) + pad, pad) + payload + bytes(pad)


VALID_SSH = b"SSH-2.0-x\r\n" + _kexinit_packet() + struct.pack("!IB", 12, 10) + b"\x15" + bytes(10)


@FUZZ
@given(data=st.one_of(st.binary(max_size=600),
                      st.tuples(mutations, st.integers(0, 1000)).map(
                          lambda m: _mutate(VALID_SSH, *m))),
       preamble=st.booleans())
def test_ssh_clear_text_parser(data, preamble):
    parsed = parse_clear_text(data, preamble)
    assert parsed.newkeys_end <= len(data)
    assert len(parsed.banner) <= 255
    assert len(parsed.messages) <= len(data) // 6 + 1
    kexinit_lists(parsed.kexinit)
    kexinit_lists(data)


@FUZZ
@given(segments=st.lists(st.tuples(st.integers(0, 1), st.integers(1, 2000)), max_size=200))
def test_ssh_size_heuristic_bounded(segments):
    attempts, success = infer_auth(segments)
    assert 0 <= attempts <= sum(1 for d, _ in segments if d == 1)
    assert success in (True, False)


@FUZZ
@given(client=st.binary(max_size=400), server=st.binary(max_size=400),
       packets=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 1),
                                  st.integers(1, 1500)), max_size=64))
def test_ssh_analyze_random_flows(client, server, packets):
    chunk = StreamChunk(key=(0, bytes(16), 1, bytes(16), 22), client_ip=bytes(16),
                        server_ip=bytes(16), client_port=1, server_port=22, vlan=0,
                        client_by="syn", start_ts=0, last_ts=1, first_ts=(0, 0),
                        data=(VALID_SSH[:20] + client, server), ended=(True, True),
                        capped=(False, False), gap=(False, False), packets=packets, final=True)
    session = analyze(chunk)
    assert session.outcome in (-1, 0, 1)
    assert session.attempts <= len(packets)


# --- logins --------------------------------------------------------------------------------

DIALOGUES = {
    "ftp": (b"USER a\r\nPASS b\r\nUSER c\r\nPASS d\r\n",
            b"220 x\r\n331 p\r\n530 n\r\n331 p\r\n230 y\r\n"),
    "smtp": (b"EHLO x\r\nAUTH PLAIN AGEAYg==\r\nAUTH LOGIN\r\nYQ==\r\nYg==\r\nDATA\r\nx\r\n.\r\n",
             b"220 x\r\n250 ok\r\n535 no\r\n334 VXNlcm5hbWU6\r\n"
             b"334 UGFzc3dvcmQ6\r\n235 ok\r\n354 go\r\n250 ok\r\n"),
    "pop3": (b"CAPA\r\nUSER a\r\nPASS b\r\nAPOP a d\r\nAUTH PLAIN\r\nAGEAYg==\r\n",
             b"+OK x\r\n+OK\r\nUSER\r\n.\r\n+OK\r\n-ERR no\r\n+OK\r\n+ \r\n+OK\r\n"),
    "imap": (b'a LOGIN "u" "p"\r\nb LOGIN {1}\r\nu {1}\r\np\r\n'
             b"c AUTHENTICATE PLAIN\r\nAGEAYg==\r\n",
             b"* OK\r\na NO x\r\n+ go\r\nb OK y\r\n+ \r\nc BAD z\r\n"),
    "telnet": (b"\xff\xfb\x01a\r\nb\r\n",
               b"\xff\xfd\x01login: a\r\nPassword: \r\nLogin incorrect\r\nlogin: "),
}


@FUZZ
@given(service=st.sampled_from(sorted(DIALOGUES)), client_m=mutations, server_m=mutations,
       cuts=st.tuples(st.integers(0, 400), st.integers(0, 400)),
       extra=st.tuples(st.binary(max_size=200), st.binary(max_size=200)))
def test_login_parsers_mutated_dialogues(service, client_m, server_m, cuts, extra):
    client, server = DIALOGUES[service]
    client = _mutate(client, client_m, cuts[0]) + extra[0]
    server = _mutate(server, server_m, cuts[1]) + extra[1]
    attempts = login_attempts(service, client, server)
    assert len(attempts) <= client.count(b"\n") + client.count(b"\r") + 1
    for attempt in attempts:
        assert len(attempt.user) <= MAX_USER
        assert len(attempt.reply) <= MAX_REPLY
        assert attempt.outcome in (None, -1, 0, 1)
        assert 0 <= attempt.offset <= len(client) + len(strip_telnet(client))


@FUZZ
@given(service=st.sampled_from(sorted(DIALOGUES)), client=st.binary(max_size=300),
       server=st.binary(max_size=300))
def test_login_parsers_random_bytes(service, client, server):
    for attempt in login_attempts(service, client, server):
        assert len(attempt.user) <= MAX_USER


# --- every analyzer on random TCP traffic --------------------------------------------------

def _tcp(sport: int, dport: int, seq: int, flags: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 65535, 0, 0)
    return _ipv4(6, tcp + payload)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments=st.lists(st.tuples(st.sampled_from([21, 22, 23, 25, 110, 143, 2222]),
                                   st.booleans(), st.integers(0, 2**32 - 1),
                                   st.sampled_from([0x02, 0x12, 0x18, 0x11, 0x04]),
                                   st.one_of(st.binary(max_size=120),
                                             st.just(b"SSH-2.0-x\r\n"),
                                             st.just(b"USER a\r\n"),
                                             st.just(b"530 no\r\n"))), max_size=40))
def test_stream_analyzers_random_segments(segments):
    frames = [_tcp(port, 40000, seq, flags, p) if to_client else
              _tcp(40000, port, seq, flags, p)
              for port, to_client, seq, flags, p in segments]
    packets = decode(batch_from_frames(frames))
    for analyzer in (SshAnalyzer({"ports": [22]}, "s", "z"), LoginAnalyzer({}, "s", "z")):
        out = analyzer.process(packets) + analyzer.flush()
        for batch in out:
            validate_batch(batch)
            assert len(batch) <= max(len(frames), 1) * 2
            batch_to_ecs(batch)
