"""Clear-text login events (sensors/logins.py): crafted dialogues for every protocol and
outcome, the password never leaving the parser, and Zeek/tshark ground truth on real
captures."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import pytest
from conftest import SHARED, assert_ecs, shared_pcap
from packet_builders import batch_from_scapy
from tcp_sessions import analyzer_columns, tcp_session

from pipeline.schema import batch_to_ecs, concat_batches, validate_batch
from sensors.decode import decode
from sensors.logins import LoginAnalyzer, login_attempts, strip_telnet
from sensors.packets import ip_column_to_str
from sensors.pcap_reader import CaptureReader

SECRET = "S3cr3t-pw"


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def run(exchanges, dport, config=None, close=True):
    analyzer = LoginAnalyzer(config or {}, "s1", "lan")
    frames = tcp_session([(d, p if isinstance(p, bytes) else p.encode()) for d, p in exchanges],
                         dport=dport, close=close)
    out = analyzer.process(decode(batch_from_scapy(frames)))
    out += analyzer.flush()
    batch = concat_batches(out)
    if batch is None:
        return []
    validate_batch(batch)
    docs = batch_to_ecs(batch)
    for doc in docs:
        assert_ecs(doc)
        assert SECRET not in json.dumps(doc)  # the password never leaves the parser
        assert SECRET.encode() not in base64.b64decode(b64(json.dumps(doc)))
    return [(d["cirtsa"]["login"]["service"], d.get("user", {}).get("name", ""),
             d["event"]["outcome"], d["cirtsa"]["login"].get("reply", "")) for d in docs]


# --- FTP ---------------------------------------------------------------------------------------

def test_ftp_failure_then_success():
    events = run([(1, "220 ready\r\n"), (0, "USER alice\r\n"), (1, "331 Password required\r\n"),
                  (0, f"PASS {SECRET}\r\n"), (1, "530 Login incorrect.\r\n"),
                  (0, "USER alice\r\n"), (1, "331 Password required\r\n"),
                  (0, f"PASS {SECRET}x\r\n"), (1, "230-Welcome\r\n230 Logged in.\r\n"),
                  (0, "RETR x\r\n")], 21)
    assert events == [("ftp", "alice", "failure", "530 Login incorrect."),
                      ("ftp", "alice", "success", "230-Welcome")]


def test_ftp_user_refused_and_unanswered_pass():
    assert run([(1, "220 ready\r\n"), (0, "USER bob\r\n"), (1, "530 Not allowed\r\n")], 21) == [
        ("ftp", "bob", "failure", "530 Not allowed")]
    assert run([(1, "220 ready\r\n"), (0, "USER carol\r\n"), (1, "331 Password\r\n"),
                (0, f"PASS {SECRET}\r\n")], 21) == [("ftp", "carol", "unknown", "")]


def test_ftp_multiline_greeting_and_timestamp():
    analyzer = LoginAnalyzer({}, "s", "z")
    frames = tcp_session([(1, b"220-hello\r\n220-more\r\n220 ready\r\n"), (0, b"USER dan\r\n"),
                          (1, b"331 pw\r\n"), (0, b"PASS x\r\n"), (1, b"230 ok\r\n")], dport=21)
    out = analyzer.process(decode(batch_from_scapy(frames)))
    batch = concat_batches(out)
    assert batch.columns["outcome"].tolist() == [1]
    pass_frame = frames[3 + 3]  # handshake (3), greeting, USER, 331, PASS
    assert batch.columns["timestamp"].tolist() == [int(round(pass_frame.time * 1e9))]
    assert ip_column_to_str(batch.columns["src_ip"]) == ["192.0.2.10"]
    assert batch.columns["dst_port"].tolist() == [21]
    assert analyzer.flush() == []  # released after the success


# --- Telnet ------------------------------------------------------------------------------------

IAC_NEGOTIATION = bytes([255, 253, 24, 255, 251, 1, 255, 250, 24, 1, 255, 240])


def test_telnet_failure_then_success_with_echo():
    events = run([(1, IAC_NEGOTIATION + b"\r\nhost login: "), (0, b"e"), (1, b"e"),
                  (0, b"ve\r\n"), (1, b"ve\r\nPassword: "), (0, SECRET.encode() + b"\r\n"),
                  (1, b"\r\nLogin incorrect\r\nhost login: "), (0, b"eve\r\n"),
                  (1, b"eve\r\nPassword: "), (0, SECRET.encode() + b"\r\n"),
                  (1, b"\r\nLast login: Mon Jan 1\r\neve@host:~$ ")], 23)
    assert events == [("telnet", "eve", "failure", "Login incorrect"),
                      ("telnet", "eve", "success", "Last login: Mon Jan 1")]


def test_telnet_without_echo_uses_client_lines_and_unknown_end():
    events = run([(1, b"Username: "), (0, b"frank\r\n"), (1, b"\r\nPassword: "),
                  (0, SECRET.encode() + b"\r\n"), (1, b"\r\n")], 23)
    assert events == [("telnet", "frank", "unknown", "")]


def test_strip_telnet_keeps_escaped_iac():
    assert strip_telnet(b"a" + IAC_NEGOTIATION + b"b\xff\xffc\xff") == b"ab\xffc"


# --- SMTP --------------------------------------------------------------------------------------

def test_smtp_auth_plain_initial_response_success():
    creds = b64(f"\0grace\0{SECRET}").decode()
    events = run([(1, "220 mx ESMTP\r\n"), (0, "EHLO c\r\n"), (1, "250-mx\r\n250 AUTH PLAIN\r\n"),
                  (0, f"AUTH PLAIN {creds}\r\n"), (1, "235 2.7.0 Authentication successful\r\n")],
                 587)
    assert events == [("smtp", "grace", "success", "235 2.7.0 Authentication successful")]


def test_smtp_auth_login_failure_then_plain_after_334():
    events = run([(1, "220 mx\r\n"), (0, "EHLO c\r\n"), (1, "250 ok\r\n"),
                  (0, "AUTH LOGIN\r\n"), (1, "334 VXNlcm5hbWU6\r\n"), (0, b64("heidi") + b"\r\n"),
                  (1, "334 UGFzc3dvcmQ6\r\n"), (0, b64(SECRET) + b"\r\n"),
                  (1, "535 5.7.8 Authentication failed\r\n"),
                  (0, "AUTH PLAIN\r\n"), (1, "334 \r\n"), (0, b64(f"\0ivan\0{SECRET}") + b"\r\n"),
                  (1, "535 5.7.8 Authentication failed\r\n")], 25)
    assert events == [("smtp", "heidi", "failure", "535 5.7.8 Authentication failed"),
                      ("smtp", "ivan", "failure", "535 5.7.8 Authentication failed")]


def test_smtp_data_body_skipped_and_cram_md5():
    body = "AUTH PLAIN looks like a command\r\n.\r\n"
    events = run([(1, "220 mx\r\n"), (0, "MAIL FROM:<a@b>\r\n"), (1, "250 ok\r\n"),
                  (0, "DATA\r\n"), (1, "354 go\r\n"), (0, body), (1, "250 queued\r\n"),
                  (0, "AUTH CRAM-MD5\r\n"), (1, "334 PDEyMzQ+\r\n"),
                  (0, b64("judy 0123456789abcdef") + b"\r\n"), (1, "235 ok\r\n")], 25)
    assert events == [("smtp", "judy", "success", "235 ok")]


def test_smtp_starttls_ends_clear_text():
    events = run([(1, "220 mx\r\n"), (0, "STARTTLS\r\n"), (1, "220 go\r\n"),
                  (0, b"\x16\x03\x01AUTH PLAIN x\r\n")], 25)
    assert events == []


# --- POP3 --------------------------------------------------------------------------------------

def test_pop3_user_pass_and_apop():
    events = run([(1, "+OK POP3 ready\r\n"), (0, "CAPA\r\n"),
                  (1, "+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n"),
                  (0, "USER kim\r\n"), (1, "+OK\r\n"), (0, f"PASS {SECRET}\r\n"),
                  (1, "-ERR [AUTH] Authentication failed.\r\n"),
                  (0, "APOP kim c4c9334bac560ecc979e58001b3e22fb\r\n"), (1, "+OK maildrop\r\n")],
                 110)
    assert events == [("pop3", "kim", "failure", "-ERR [AUTH] Authentication failed."),
                      ("pop3", "kim", "success", "+OK maildrop")]


def test_pop3_auth_plain():
    events = run([(1, "+OK ready\r\n"), (0, "AUTH PLAIN\r\n"), (1, "+ \r\n"),
                  (0, b64(f"\0leo\0{SECRET}") + b"\r\n"), (1, "+OK Logged in.\r\n")], 110)
    assert events == [("pop3", "leo", "success", "+OK Logged in.")]


# --- IMAP --------------------------------------------------------------------------------------

def test_imap_login_quoted_and_literal():
    events = run([(1, "* OK IMAP ready\r\n"), (0, f'a1 LOGIN "mal lory" "{SECRET}"\r\n'),
                  (1, "a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
                  (0, "a2 LOGIN {4}\r\n"), (1, "+ OK\r\n"), (0, f"nick {{9}}\r\n{SECRET}\r\n"),
                  (1, "* CAPABILITY IMAP4rev1\r\na2 OK Logged in\r\n")], 143)
    assert events == [
        ("imap", "mal lory", "failure", "a1 NO [AUTHENTICATIONFAILED] Authentication failed."),
        ("imap", "nick", "success", "a2 OK Logged in")]


def test_imap_authenticate_plain_and_login_mechanism():
    events = run([(1, "* OK ready\r\n"), (0, "t1 AUTHENTICATE PLAIN\r\n"), (1, "+ \r\n"),
                  (0, b64(f"\0olga\0{SECRET}") + b"\r\n"), (1, "t1 NO bad\r\n"),
                  (0, "t2 AUTHENTICATE LOGIN\r\n"), (1, "+ VXNlcm5hbWU6\r\n"),
                  (0, b64("pete") + b"\r\n"), (1, "+ UGFzc3dvcmQ6\r\n"), (0, b64(SECRET) + b"\r\n"),
                  (1, "t2 OK done\r\n")], 143)
    assert events == [("imap", "olga", "failure", "t1 NO bad"),
                      ("imap", "pete", "success", "t2 OK done")]


# --- analyzer behaviour ------------------------------------------------------------------------

def test_decided_attempts_emitted_before_the_connection_ends():
    analyzer = LoginAnalyzer({}, "s", "z")
    frames = tcp_session([(1, b"220 ready\r\n"), (0, b"USER a\r\n"), (1, b"331 pw\r\n"),
                          (0, b"PASS x\r\n"), (1, b"530 no\r\n"), (0, b"USER b\r\n"),
                          (1, b"331 pw\r\n"), (0, b"PASS y\r\n")], dport=21, close=False)
    first = concat_batches(analyzer.process(decode(batch_from_scapy(frames[:8]))))
    assert first.columns["user"].tolist() == ["a"]  # b's PASS is not sent yet
    rest = analyzer.process(decode(batch_from_scapy(frames[8:])))
    assert rest == []  # b's PASS has no reply yet: held, a is not emitted again
    final = concat_batches(analyzer.flush())
    assert final.columns["user"].tolist() == ["b"]
    assert final.columns["outcome"].tolist() == [-1]


def test_services_from_config_and_other_ports_ignored():
    dialogue = [(1, "220 ready\r\n"), (0, "USER a\r\n"), (1, "530 no\r\n")]
    assert run(dialogue, 2121) == []
    assert run(dialogue, 2121, config={"services": {2121: "ftp"}}) == [
        ("ftp", "a", "failure", "530 no")]


def test_unknown_service_gives_nothing():
    assert login_attempts("gopher", b"USER a\r\n", b"530 no\r\n") == []


# --- real captures -----------------------------------------------------------------------------

def events_of(path) -> list[dict]:
    analyzer = LoginAnalyzer({}, "s", "z")
    out = []
    with CaptureReader(path) as reader:
        for batch in reader.batches():
            out += analyzer.process(decode(batch))
    out += analyzer.flush()
    batch = concat_batches(out)
    if batch is None:
        return []
    validate_batch(batch)
    docs = batch_to_ecs(batch)
    for doc in docs:
        assert_ecs(doc)
    return docs


def _tshark(path, display_filter: str, field: str) -> list[str]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    return subprocess.run(["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields",
                           "-e", field], capture_output=True, text=True,
                          check=True).stdout.split()


def test_ftp_bruteforce_matches_zeek_ftp_log():
    path = shared_pcap("brute_force/zeek__ftp_bruteforce.pcap")
    truth = SHARED / "pcaps/brute_force/groundtruth/zeek__ftp_bruteforce.pcap__expected_ftp.log"
    sessions = []  # (orig_p, user) of every FTP session in Zeek's ftp.log
    for line in truth.read_text().splitlines():
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        sessions.append((int(cols[3]), cols[6]))
    docs = events_of(path)
    assert sorted((d["source"]["port"], d["user"]["name"]) for d in docs) == sorted(sessions)
    assert {d["destination"]["ip"] for d in docs} == {"192.168.56.101"}
    # every attempt failed: as many failures as 530 replies (tshark), the reply text included
    assert [d["event"]["outcome"] for d in docs] == ["failure"] * len(
        _tshark(path, "ftp.response.code == 530", "ftp.response.code"))
    assert all(d["cirtsa"]["login"]["reply"].startswith("530") for d in docs)
    passwords = _tshark(path, 'ftp.request.command == "PASS"', "ftp.request.arg")
    assert not any(re.search(rf"\b{re.escape(p)}\b", json.dumps(d)) for d in docs
                   for p in passwords if len(p) > 2)


def test_ndpi_single_failed_ftp_login():
    path = shared_pcap("brute_force/ndpi__ftp_failed.pcap")
    docs = events_of(path)
    users = _tshark(path, 'ftp.request.command == "USER"', "ftp.request.arg")
    assert [(d["user"]["name"], d["event"]["outcome"]) for d in docs] == [(users[0], "failure")]


def test_smtp_auth_login_success():
    path = shared_pcap("benign/zeek__smtp.pcap")
    docs = [d for d in events_of(path)]
    encoded = _tshark(path, "smtp.auth.username", "smtp.auth.username")
    assert [(d["user"]["name"], d["event"]["outcome"]) for d in docs] == [
        (base64.b64decode(encoded[0]).decode(), "success")]
    assert docs[0]["cirtsa"]["login"]["reply"].startswith("235")


# --- the port prefilter (sensors/stream_prefilter.py) changes nothing ------------------------

def _events_by_batches(batches, prefilter: bool) -> dict | None:
    analyzer = LoginAnalyzer({}, "s", "z")
    if not prefilter:
        analyzer.prefilter = None
    return analyzer_columns(analyzer, batches)


@pytest.mark.parametrize("capture", ["brute_force/zeek__ftp_bruteforce.pcap",
                                     "benign/zeek__smtp.pcap", "large/ndpi__1kxun.pcap"])
@pytest.mark.parametrize("batch_packets", [5, 256])
def test_prefilter_gives_the_same_events(capture, batch_packets):
    with CaptureReader(shared_pcap(capture), batch_packets=batch_packets) as reader:
        batches = [decode(b) for b in reader.batches()]
    with_prefilter = _events_by_batches(batches, True)
    assert with_prefilter == _events_by_batches(batches, False)
    if "1kxun" not in capture:
        assert with_prefilter is not None  # the comparison covers real login events


def test_prefilter_same_events_with_noise_between_logins():
    # FTP logins interleaved with HTTP noise (one using a client port that is a service
    # port elsewhere), a few frames per batch.
    sessions = [
        tcp_session([(1, b"220 ftp\r\n"), (0, b"USER bob\r\n"), (1, b"331 pw\r\n"),
                     (0, b"PASS x\r\n"), (1, b"530 no\r\n")], dport=21, t0=1000.0),
        tcp_session([(0, b"GET / HTTP/1.1\r\n\r\n"), (1, b"HTTP/1.1 200 OK\r\n\r\n")],
                    dport=80, sport=21, client="192.0.2.99", t0=1000.05),
        tcp_session([(1, b"220 ftp\r\n"), (0, b"USER amy\r\n"), (1, b"331 pw\r\n"),
                     (0, b"PASS y\r\n"), (1, b"230 ok\r\n")], dport=21, sport=40001,
                    t0=1000.1),
    ]
    frames = sorted((f for s in sessions for f in s), key=lambda f: float(f.time))
    batches = [decode(batch_from_scapy(frames[i : i + 4])) for i in range(0, len(frames), 4)]
    with_prefilter = _events_by_batches(batches, True)
    assert with_prefilter == _events_by_batches(batches, False)
    assert with_prefilter is not None and len(with_prefilter["timestamp"]) == 2
