"""ICMP events (sensors/icmp.py): crafted messages with exact expectations, rows without an
ICMP header, and tshark as the oracle on real captures."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import assert_ecs, shared_pcap
from packet_builders import batch_from_frames, batch_from_scapy
from scapy.all import ICMP, IP, UDP, Dot1Q, Ether, ICMPv6EchoRequest, IPv6, Raw, fragment

from pipeline.schema import batch_to_ecs, validate_batch
from sensors.community_id import community_id_v1
from sensors.decode import decode
from sensors.icmp import IcmpAnalyzer, icmp_events
from sensors.packets import ip_column_to_str, ip_to_bytes16
from sensors.pcap_reader import CaptureReader

A, B = "192.0.2.1", "198.51.100.2"
# Explicit addresses: scapy would otherwise look the destination MAC up (ARP) when building.
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def events(frames, stats=None):
    batch = icmp_events(decode(batch_from_scapy(frames)), "s1", "lan", stats)
    if batch is not None:
        validate_batch(batch)
    return batch


def test_echo_request_and_reply_fields():
    frames = [ETH / IP(src=A, dst=B) / ICMP(type=8, id=0x1234, seq=7) / Raw(b"x" * 56),
              ETH / IP(src=B, dst=A) / ICMP(type=0, id=0x1234, seq=7) / Raw(b"x" * 56)]
    c = events(frames).columns
    assert c["icmp_type"].tolist() == [8, 0]
    assert c["icmp_code"].tolist() == [0, 0]
    assert c["echo_id"].tolist() == [0x1234, 0x1234]
    assert c["echo_seq"].tolist() == [7, 7]
    assert c["payload_bytes"].tolist() == [56, 56]
    assert c["transport"].tolist() == [1, 1]
    assert ip_column_to_str(c["src_ip"]) == [A, B]
    # request and reply are one Community ID flow
    expected = community_id_v1(ip_to_bytes16(A), ip_to_bytes16(B), 1, 8, 0)
    assert c["community_id"].tolist() == [expected, expected]


def test_error_messages_have_no_echo_fields():
    inner = IP(src=B, dst=A) / UDP(sport=5353, dport=33434)
    frame = ETH / IP(src=A, dst=B) / ICMP(type=3, code=3, unused=0x01020304) / inner
    c = events([frame]).columns
    assert (c["icmp_type"][0], c["icmp_code"][0]) == (3, 3)
    assert (c["echo_id"][0], c["echo_seq"][0]) == (0, 0)
    assert c["payload_bytes"][0] == len(bytes(inner))
    assert c["community_id"][0] == community_id_v1(ip_to_bytes16(A), ip_to_bytes16(B), 1, 3, 3)


def test_icmpv6_echo_and_vlan():
    frame = ETH / Dot1Q(vlan=42) / IPv6(src="2001:db8::1", dst="2001:db8::2") / \
        ICMPv6EchoRequest(id=9, seq=3, data=b"abcd")
    c = events([frame]).columns
    assert c["transport"].tolist() == [58]
    assert (c["icmp_type"][0], c["echo_id"][0], c["echo_seq"][0]) == (128, 9, 3)
    assert c["payload_bytes"].tolist() == [4]
    assert c["vlan"].tolist() == [42]


def test_echo_types_are_per_ip_version():
    # Echo id/seq only for ICMP 0/8 and ICMPv6 128/129; the other version's echo type
    # numbers are not echo messages there.
    header = bytes([0, 0, 0, 0, 0x12, 0x34, 0, 7])
    frames = [ETH / IPv6(src="2001:db8::1", dst="2001:db8::2", nh=58)
              / Raw(bytes([t]) + header[1:]) for t in (129, 128, 0, 8)]
    frames += [ETH / IP(src=A, dst=B, proto=1) / Raw(bytes([t]) + header[1:])
               for t in (128, 129, 0, 8)]
    c = events(frames).columns
    assert c["icmp_type"].tolist() == [129, 128, 0, 8, 128, 129, 0, 8]
    assert c["echo_id"].tolist() == [0x1234, 0x1234, 0, 0, 0, 0, 0x1234, 0x1234]
    assert c["echo_seq"].tolist() == [7, 7, 0, 0, 0, 0, 7, 7]


def test_padding_not_counted_as_payload():
    frame = bytes(ETH / IP(src=A, dst=B) / ICMP(type=8, id=1, seq=1)) + bytes(20)
    c = icmp_events(decode(batch_from_frames([frame])), "s", "z").columns
    assert c["payload_bytes"].tolist() == [0]


def test_fragments_and_truncated_headers_not_emitted():
    big = IP(src=A, dst=B) / ICMP(type=8, id=5, seq=6) / Raw(b"y" * 3000)
    frames = [ETH / f for f in fragment(big, fragsize=1000)]
    truncated = bytes(ETH / IP(src=A, dst=B, proto=1, len=24)) + b"\x08\x00\x00\x00"
    stats: dict[str, int] = {}
    packets = decode(batch_from_frames([bytes(f) for f in frames] + [truncated]))
    c = icmp_events(packets, "s", "z", stats).columns
    assert c["icmp_type"].tolist() == [8]  # only the first fragment carries the header
    assert c["echo_id"].tolist() == [5]
    assert stats == {"icmp_messages": 1, "icmp_no_header": len(frames)}


def test_ecs_documents():
    frames = [ETH / IP(src=A, dst=B) / ICMP(type=8, id=1, seq=2),
              ETH / Dot1Q(vlan=3) / IPv6(src="2001:db8::1", dst="2001:db8::2") /
              ICMPv6EchoRequest()]
    docs = batch_to_ecs(events(frames))
    for doc in docs:
        assert_ecs(doc)
    assert docs[0]["network"]["transport"] == "icmp"
    assert docs[1]["network"]["transport"] == "ipv6-icmp"
    assert docs[0]["event"]["action"] == "icmp_message"
    assert docs[0]["cirtsa"]["icmp"]["echo_seq"] == 2


def test_analyzer_and_no_icmp():
    analyzer = IcmpAnalyzer({}, "s", "z")
    assert analyzer.process(decode(batch_from_scapy([ETH / IP() / UDP()]))) == []
    out = analyzer.process(decode(batch_from_scapy([ETH / IP(dst=B) / ICMP()])))
    assert [len(b) for b in out] == [1]


# --- real captures against tshark ----------------------------------------------------------

def _ours(path) -> list[tuple]:
    rows = []
    with CaptureReader(path) as reader:
        for batch in reader.batches():
            ev = icmp_events(decode(batch), "s", "z")
            if ev is None:
                continue
            validate_batch(ev)
            c = ev.columns
            for doc in batch_to_ecs(ev.take(slice(0, 3))):
                assert_ecs(doc)
            rows += zip(ip_column_to_str(c["src_ip"]), ip_column_to_str(c["dst_ip"]),
                        c["icmp_type"].tolist(), c["icmp_code"].tolist(),
                        c["echo_id"].tolist(), c["echo_seq"].tolist(),
                        c["payload_bytes"].tolist(), strict=True)
    return rows


def _tshark(path) -> list[tuple]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "icmp", "-T", "fields", "-E", "occurrence=f",
         "-e", "ip.src", "-e", "ip.dst", "-e", "icmp.type", "-e", "icmp.code", "-e", "icmp.ident",
         "-e", "icmp.seq", "-e", "ip.len", "-e", "ip.hdr_len"],
        capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        src, dst, typ, code, ident, seq, ip_len, hdr_len = line.split("\t")
        rows.append((src, dst, int(typ), int(code), int(ident or 0), int(seq or 0),
                     int(ip_len) - int(hdr_len) - 8))  # ICMP payload = IP payload - header
    return rows


@pytest.mark.parametrize("name", [
    "icmp_sweep/sgr__hs-icmpScan.pcap",
    "icmp_sweep/slips__test12-icmp-portscan.pcap",
    "icmp_sweep/suricata-verify__icmp-threshold.pcap",
    "icmp_sweep/zeek__5-pings.pcap",
    "exfiltration/ndpi__icmp-tunnel.pcap",
])
def test_real_captures_match_tshark(name):
    path = shared_pcap(name)
    ours = _ours(path)
    assert ours
    assert ours == _tshark(path)


def test_icmp_tunnel_volume():
    # MANIFEST: 863 echo packets with large payloads between .131 and .132
    rows = _ours(shared_pcap("exfiltration/ndpi__icmp-tunnel.pcap"))
    assert len(rows) == 863
    assert {r[2] for r in rows} <= {0, 8}


def test_header_cut_by_snaplen_counted():
    stats: dict[str, int] = {}
    with CaptureReader(shared_pcap("malformed/zeek__icmp-header-trunc.pcap")) as reader:
        for batch in reader.batches():
            assert icmp_events(decode(batch), "s", "z", stats) is None
    assert stats == {"icmp_no_header": 2}
