"""SSH events (sensors/ssh.py): crafted sessions for every outcome of the size heuristic, and
Zeek's own ssh.log baseline / notice as the oracle on real captures."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest
from conftest import assert_ecs, shared_pcap
from packet_builders import batch_from_scapy
from tcp_sessions import analyzer_columns, tcp_session

from pipeline.schema import batch_to_ecs, concat_batches, validate_batch
from sensors.decode import decode
from sensors.packets import ip_column_to_str
from sensors.pcap_reader import CaptureReader
from sensors.ssh import (
    SshAnalyzer,
    infer_auth,
    kexinit_lists,
    parse_clear_text,
)

CLIENT_BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"
SERVER_BANNER = b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3\r\n"


def ssh_packet(message: int, body: bytes = b"") -> bytes:
    payload = bytes([message]) + body
    padding = 8 - (5 + len(payload)) % 8 + 8
    return struct.pack("!IB", 1 + len(payload) + padding, padding) + payload + bytes(padding)


def name_list(names: list[str]) -> bytes:
    raw = ",".join(names).encode()
    return struct.pack("!I", len(raw)) + raw


def kexinit(compression: list[str] | None = None) -> bytes:
    lists = [["curve25519-sha256"], ["ssh-ed25519"], ["aes128-ctr"], ["aes128-ctr"],
             ["hmac-sha2-256"], ["hmac-sha2-256"], compression or ["none"],
             compression or ["none"], [], []]
    body = bytes(16) + b"".join(name_list(x) for x in lists) + b"\x00" + bytes(4)
    return ssh_packet(20, body)


def handshake(compression: list[str] | None = None) -> list[tuple[int, bytes]]:
    """Banners, KEXINIT both ways, ECDH init/reply, NEWKEYS both ways."""
    return [(1, SERVER_BANNER), (0, CLIENT_BANNER), (0, kexinit(compression)),
            (1, kexinit(compression)), (0, ssh_packet(30, bytes(36))),
            (1, ssh_packet(31, bytes(300)) + ssh_packet(21)), (0, ssh_packet(21))]


def encrypted(*exchanges: tuple[int, int]) -> list[tuple[int, bytes]]:
    return [(d, bytes([0xAB]) * n) for d, n in exchanges]


ACCEPT, FAILURE, SUCCESS = 52, 84, 36  # service accept, userauth failure, success = accept-16
PROBE = [(0, 52), (1, ACCEPT), (0, 68), (1, FAILURE)]  # service request, "none" probe


def run(frames, config=None):
    analyzer = SshAnalyzer(config or {}, "s1", "lan")
    out = analyzer.process(decode(batch_from_scapy(frames)))
    out += analyzer.flush()
    batch = concat_batches(out)
    if batch is not None:
        validate_batch(batch)
        for doc in batch_to_ecs(batch):
            assert_ecs(doc)
    return batch, analyzer.stats


def outcome(batch) -> list[tuple[int, int]]:
    return list(zip(batch.columns["auth_attempts"].tolist(),
                    batch.columns["auth_success"].tolist(), strict=True))


def test_password_success_after_none_probe():
    frames = tcp_session(handshake() + encrypted(*PROBE, (0, 100), (1, SUCCESS), (0, 500),
                                                 (1, 900)))
    batch, _ = run(frames)
    assert outcome(batch) == [(1, 1)]
    c = batch.columns
    assert c["client_banner"].tolist() == ["SSH-2.0-OpenSSH_9.6"]
    assert c["server_banner"].tolist() == ["SSH-2.0-OpenSSH_8.9p1 Ubuntu-3"]
    assert ip_column_to_str(c["src_ip"]) == ["192.0.2.10"]
    assert c["dst_port"].tolist() == [22]
    assert c["timestamp"].tolist() == [int(frames[0].time * 1e9)]
    doc = batch_to_ecs(batch)[0]
    assert doc["event"]["outcome"] == "success"
    assert doc["cirtsa"]["ssh"]["auth_attempts"] == 1


def test_repeated_failures_then_close():
    frames = tcp_session(handshake() + encrypted(*PROBE, (0, 100), (1, FAILURE), (0, 100),
                                                 (1, FAILURE), (0, 100), (1, FAILURE)))
    batch, _ = run(frames)
    assert outcome(batch) == [(3, 0)]
    assert batch_to_ecs(batch)[0]["event"]["outcome"] == "failure"


def test_success_with_none_method():
    batch, _ = run(tcp_session(handshake() + encrypted((0, 52), (1, ACCEPT), (0, 68),
                                                       (1, SUCCESS))))
    assert outcome(batch) == [(1, 1)]


def test_no_auth_exchange_is_unknown():
    batch, _ = run(tcp_session(handshake()))
    assert outcome(batch) == [(0, -1)]
    assert batch_to_ecs(batch)[0]["event"]["outcome"] == "unknown"


def test_pre_auth_banner_skipped_once():
    frames = tcp_session(handshake() + encrypted((0, 52), (1, ACCEPT), (0, 68),
                                                 (1, ACCEPT + 400), (1, FAILURE), (0, 100),
                                                 (1, FAILURE)))
    batch, _ = run(frames)
    assert outcome(batch) == [(1, 0)]


def test_compression_disables_inference():
    frames = tcp_session(handshake(["zlib@openssh.com"]) + encrypted(*PROBE, (0, 100),
                                                                      (1, SUCCESS)))
    batch, _ = run(frames)
    assert outcome(batch) == [(0, -1)]


def test_ssh1_is_not_inferred():
    frames = tcp_session([(1, b"SSH-1.5-OpenSSH_3.0\r\n"), (0, b"SSH-1.5-client\r\n"),
                          (1, bytes(200)), (0, bytes(100)), (1, bytes(60))])
    batch, _ = run(frames)
    assert outcome(batch) == [(0, -1)]
    assert batch.columns["server_banner"].tolist() == ["SSH-1.5-OpenSSH_3.0"]


def test_other_port_found_by_banner_roles_from_kex():
    # Server banner first on port 2222: the flow is opened by a banner, and the KEX
    # messages say which side is the client.
    frames = tcp_session(handshake() + encrypted(*PROBE, (0, 100), (1, SUCCESS)),
                         dport=2222, handshake=False)
    batch, _ = run(frames)
    assert outcome(batch) == [(1, 1)]
    assert ip_column_to_str(batch.columns["src_ip"]) == ["192.0.2.10"]
    assert batch.columns["dst_port"].tolist() == [2222]
    assert batch.columns["client_banner"].tolist() == ["SSH-2.0-OpenSSH_9.6"]


def test_other_port_not_followed_without_banner():
    frames = tcp_session([(0, b"GET / HTTP/1.1\r\n\r\n"), (1, b"HTTP/1.1 200 OK\r\n\r\n")],
                         dport=8080)
    batch, _ = run(frames)
    assert batch is None


def test_non_ssh_on_port_22_released():
    frames = tcp_session([(1, b"x" * 300), (0, b"y" * 300)])
    batch, stats = run(frames)
    assert batch is None
    assert stats["ssh_not_ssh"] >= 1


def test_server_preamble_lines_before_banner():
    parsed = parse_clear_text(b"hello\r\nnotice\r\n" + SERVER_BANNER + kexinit(), True)
    assert parsed.banner == "SSH-2.0-OpenSSH_8.9p1 Ubuntu-3"
    assert parsed.messages == [20]
    assert kexinit_lists(parsed.kexinit)[6] == ["none"]


def test_segment_straddling_newkeys_counts_encrypted_part():
    # NEWKEYS and the service request in one client segment: only the encrypted part counts.
    flow = handshake()[:-1] + [(0, ssh_packet(21) + bytes(52))] + encrypted(
        (1, ACCEPT), (0, 68), (1, FAILURE), (0, 100), (1, SUCCESS))
    batch, _ = run(tcp_session(flow))
    assert outcome(batch) == [(1, 1)]


def test_infer_auth_ignores_server_data_before_client():
    assert infer_auth([(1, 999), (0, 52), (1, ACCEPT), (1, FAILURE), (1, FAILURE)]) == (1, False)


def test_success_emitted_before_the_connection_ends():
    frames = tcp_session(handshake() + encrypted(*PROBE, (0, 100), (1, SUCCESS)), close=False)
    analyzer = SshAnalyzer({}, "s", "z")
    out = analyzer.process(decode(batch_from_scapy(frames)))
    assert outcome(concat_batches(out)) == [(1, 1)]
    assert analyzer.flush() == []  # released after the decision: nothing left to emit


# --- real captures -------------------------------------------------------------------------

def events_of(path) -> list[tuple]:
    analyzer = SshAnalyzer({}, "s", "z")
    out = []
    with CaptureReader(path) as reader:
        for batch in reader.batches():
            out += analyzer.process(decode(batch))
    out += analyzer.flush()
    batch = concat_batches(out)
    validate_batch(batch)
    for doc in batch_to_ecs(batch):
        assert_ecs(doc)
    c = batch.columns
    return sorted(zip(ip_column_to_str(c["src_ip"]), c["src_port"].tolist(),
                      ip_column_to_str(c["dst_ip"]), c["dst_port"].tolist(),
                      c["client_banner"].tolist(), c["server_banner"].tolist(),
                      c["auth_success"].tolist(), c["auth_attempts"].tolist(), strict=True))


# Zeek's baseline for this trace (zeek/zeek testing/btest/Baseline/
# scripts.base.protocols.ssh.basic/ssh.log, from Traces/ssh/ssh.pcap = large/zeek__ssh.pcap):
# (orig_h, orig_p, resp_h, resp_p, client, server, auth_success T/F/-, auth_attempts).
# One row differs from that 2018 baseline: the paramiko server on port 2200 answers the
# "none" probe with USERAUTH_SUCCESS, which the current SSH.cc recognises (len + 16 ==
# service accept size); Zeek 5 logs this connection (same uid CUM0KZ3MLUfNB0cl11) as T 1,
# where the 2018 baseline had "- 0".
ZEEK_SSH_LOG = """\
192.168.1.79 51880 131.159.21.1 22 SSH-2.0-OpenSSH_5.9|SSH-2.0-OpenSSH_5.8 - 0
10.0.0.18 40184 128.2.6.88 41644 SSH-2.0-OpenSSH_6.6|SSH-2.0-OpenSSH_5.9p1 Debian-5ubuntu1.1 T 1
192.168.2.1 57189 192.168.2.158 22 SSH-2.0-OpenSSH_6.2|SSH-1.99-OpenSSH_6.6.1p1 Ubuntu-2ubuntu2 T 3
192.168.2.1 57191 192.168.2.158 22 SSH-1.5-OpenSSH_6.2|SSH-1.99-OpenSSH_6.6.1p1 Ubuntu-2ubuntu2 - 0
192.168.2.1 55179 192.168.2.158 2200 SSH-2.0-OpenSSH_6.2|SSH-2.0-paramiko_1.15.2 T 1
192.168.2.1 56594 192.168.2.158 22 SSH-1.5-OpenSSH_5.3|SSH-1.99-OpenSSH_6.6.1p1 Ubuntu-2ubuntu2 - 0
192.168.2.1 56821 192.168.2.158 22 SSH-1.5-OpenSSH_6.2|SSH-1.99-OpenSSH_6.6.1p1 Ubuntu-2ubuntu2 - 0
192.168.2.1 56837 192.168.2.158 22 SSH-1.5-OpenSSH_6.2|SSH-1.99-OpenSSH_6.6.1p1 Ubuntu-2ubuntu2 - 0
192.168.2.1 56845 192.168.2.158 22 SSH-1.5-OpenSSH_6.2|SSH-1.99-OpenSSH_6.6.1p1 Ubuntu-2ubuntu2 - 0
192.168.2.1 56875 192.168.2.158 22 SSH-1.5-OpenSSH_6.2|SSH-1.99-OpenSSH_6.6.1p1 Ubuntu-2ubuntu2 - 0
192.168.2.1 56878 192.168.2.158 22 SSH-1.5-OpenSSH_6.2|SSH-1.99-OpenSSH_6.6.1p1 Ubuntu-2ubuntu2 - 0
192.168.2.1 56940 192.168.2.158 22 SSH-1.5-OpenSSH_6.2|SSH-1.99-OpenSSH_6.6.1p1 Ubuntu-2ubuntu2 - 0
192.168.2.1 57831 192.168.2.158 22 SSH-1.5-OpenSSH_6.2|SSH-1.99-OpenSSH_6.6.1p1 Ubuntu-2ubuntu2 - 0
192.168.2.1 59246 192.168.2.158 22 SSH-2.0-OpenSSH_6.2|SSH-1.99-OpenSSH_6.6.1p1 Ubuntu-2ubuntu2 T 2
192.168.1.32 41164 128.2.10.238 22 SSH-2.0-OpenSSH_6.6p1-hpn14v4|{GSSAPI} T 5
192.168.1.32 33910 128.2.13.133 22 SSH-2.0-OpenSSH_6.6p1-hpn14v4|SSH-2.0-OpenSSH_5.3 T 1
192.168.1.32 41268 128.2.10.238 22 SSH-2.0-OpenSSH_6.6|{GSSAPI} F 6
192.168.1.31 52294 192.168.1.32 22 SSH-2.0-OpenSSH_6.7|SSH-2.0-OpenSSH_6.7 T 2
192.168.1.31 51489 192.168.1.32 22 SSH-2.0-OpenSSH_6.7|SSH-2.0-OpenSSH_6.7 T 3
192.168.1.32 58641 131.103.20.168 22 SSH-2.0-OpenSSH_6.7|SSH-2.0-OpenSSH_5.3 F 1
192.168.1.32 58646 131.103.20.168 22 SSH-2.0-OpenSSH_6.7|SSH-2.0-OpenSSH_5.3 T 1
192.168.1.32 58649 131.103.20.168 22 SSH-2.0-OpenSSH_6.7|SSH-2.0-OpenSSH_5.3 T 1
"""


GSSAPI_SERVER = "SSH-1.99-OpenSSH_3.4+p1+gssapi+OpenSSH_3.7.1buf_fix+2006100301"


def _zeek_rows() -> list[tuple]:
    rows = []
    for line in ZEEK_SSH_LOG.replace("{GSSAPI}", GSSAPI_SERVER).splitlines():
        head, _, tail = line.partition(" SSH-")
        orig_h, orig_p, resp_h, resp_p = head.split()
        banners, success, attempts = ("SSH-" + tail).rsplit(" ", 2)
        client, server = banners.split("|")
        rows.append((orig_h, int(orig_p), resp_h, int(resp_p), client, server,
                     {"T": 1, "F": 0, "-": -1}[success], int(attempts)))
    return sorted(rows)


def test_ssh_pcap_matches_zeek_ssh_log():
    assert events_of(shared_pcap("large/zeek__ssh.pcap")) == _zeek_rows()


def test_single_successful_session():
    rows = events_of(shared_pcap("benign/zeek__ssh_single-conn.pcap"))
    assert len(rows) == 1  # MANIFEST: one successful SSH session
    assert rows[0][6] == 1


def test_password_guessing_every_connection_fails():
    path = shared_pcap("brute_force/zeek__sshguess.pcap")
    rows = events_of(path)
    # Zeek's notice: 192.168.56.1 guessing SSH passwords, seen in >= 10 (limit) connections.
    assert all(r[0] == "192.168.56.1" and r[6] == 0 and r[7] >= 1 for r in rows)
    assert len(rows) >= 10
    if shutil.which("tshark"):
        syns = subprocess.run(
            ["tshark", "-r", str(path), "-Y", "tcp.flags.syn==1 && tcp.flags.ack==0 && "
             "tcp.dstport==22", "-T", "fields", "-e", "tcp.srcport"],
            capture_output=True, text=True, check=True).stdout.split()
        assert sorted(r[1] for r in rows) == sorted(int(p) for p in syns)


@pytest.mark.parametrize("batch_packets", [7, 64])
def test_same_events_with_small_batches(batch_packets):
    path = shared_pcap("large/zeek__ssh.pcap")
    analyzer = SshAnalyzer({}, "s", "z")
    out = []
    with CaptureReader(path, batch_packets=batch_packets) as reader:
        for batch in reader.batches():
            out += analyzer.process(decode(batch))
    out += analyzer.flush()
    c = concat_batches(out).columns
    got = sorted(zip(c["src_port"].tolist(), c["auth_success"].tolist(),
                     c["auth_attempts"].tolist(), strict=True))
    assert got == sorted((r[1], r[6], r[7]) for r in _zeek_rows())


# --- the port prefilter (sensors/stream_prefilter.py) changes nothing ------------------------

def _events_by_batches(batches, prefilter: bool) -> dict | None:
    analyzer = SshAnalyzer({}, "s", "z")
    if not prefilter:
        analyzer.prefilter = None
    return analyzer_columns(analyzer, batches)


@pytest.mark.parametrize("capture", ["large/zeek__ssh.pcap", "brute_force/zeek__sshguess.pcap",
                                     "large/ndpi__1kxun.pcap"])
@pytest.mark.parametrize("batch_packets", [7, 256])
def test_prefilter_gives_the_same_events_on_real_captures(capture, batch_packets):
    # zeek__ssh.pcap holds SSH on ports 2200 and 41644 (found by banner), 1kxun none.
    with CaptureReader(shared_pcap(capture), batch_packets=batch_packets) as reader:
        batches = [decode(b) for b in reader.batches()]
    assert _events_by_batches(batches, True) == _events_by_batches(batches, False)


def test_prefilter_same_events_other_ports_reuse_and_noise():
    # SSH on 2222 opened by the server banner, the same 5-tuple reused after its close,
    # SSH on 22, and HTTP noise between; every 3 frames a batch.
    sessions = [
        tcp_session(handshake() + encrypted(*PROBE, (0, 100), (1, SUCCESS)), dport=2222,
                    handshake=False, t0=1000.0),
        tcp_session(handshake() + encrypted(*PROBE, (0, 100), (1, FAILURE)), dport=2222,
                    t0=1000.5),
        tcp_session(handshake() + encrypted(*PROBE, (0, 100), (1, FAILURE)), sport=41000,
                    t0=1000.2),
        tcp_session([(0, b"GET / HTTP/1.1\r\n\r\n"), (1, b"HTTP/1.1 200 OK\r\n\r\n")],
                    dport=8080, sport=2222, t0=1000.1),
    ]
    frames = sorted((f for s in sessions for f in s), key=lambda f: float(f.time))
    batches = [decode(batch_from_scapy(frames[i : i + 3])) for i in range(0, len(frames), 3)]
    with_prefilter = _events_by_batches(batches, True)
    assert with_prefilter == _events_by_batches(batches, False)
    assert sorted(with_prefilter["dst_port"]) == [22, 2222, 2222]
