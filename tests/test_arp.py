"""ARP events (sensors/arp.py): crafted frames with exact expectations, damaged headers, and
tshark as the oracle on real captures."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from conftest import assert_ecs, shared_pcap
from packet_builders import batch_from_frames, batch_from_scapy
from scapy.all import ARP, Dot1AD, Dot1Q, Ether

from pipeline.config import load_config
from pipeline.schema import batch_to_ecs, mac_text, validate_batch
from sensors.analyzer import build_analyzers
from sensors.arp import ArpAnalyzer, arp_events
from sensors.decode import decode
from sensors.packets import ip_column_to_str
from sensors.pcap_reader import CaptureReader

ETH_SRC = "02:00:00:00:00:aa"
SENDER_MAC = "02:00:00:00:00:01"
TARGET_MAC = "02:00:00:00:00:02"


def mac_int(text: str) -> int:
    return int(text.replace(":", ""), 16)


def events(frames, stats=None):
    batch = arp_events(decode(batch_from_scapy(frames)), "s1", "lan", stats)
    if batch is not None:
        validate_batch(batch)
    return batch


def who_has(psrc="192.0.2.1", pdst="192.0.2.2", eth_src=ETH_SRC, **kw):
    return Ether(src=eth_src, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=SENDER_MAC, psrc=psrc, hwdst="00:00:00:00:00:00", pdst=pdst, **kw)


def test_request_reply_and_gratuitous_fields():
    frames = [
        who_has(),
        Ether(src=ETH_SRC, dst=SENDER_MAC) / ARP(op=2, hwsrc=TARGET_MAC, psrc="192.0.2.2",
                                                 hwdst=SENDER_MAC, pdst="192.0.2.1"),
        who_has(psrc="192.0.2.9", pdst="192.0.2.9"),
    ]
    batch = events(frames)
    c = batch.columns
    assert c["operation"].tolist() == [1, 2, 1]
    assert ip_column_to_str(c["src_ip"]) == ["192.0.2.1", "192.0.2.2", "192.0.2.9"]
    assert ip_column_to_str(c["dst_ip"]) == ["192.0.2.2", "192.0.2.1", "192.0.2.9"]
    assert c["src_mac"].tolist() == [mac_int(SENDER_MAC), mac_int(TARGET_MAC),
                                     mac_int(SENDER_MAC)]
    assert c["dst_mac"].tolist() == [0, mac_int(SENDER_MAC), 0]
    assert c["eth_src_mac"].tolist() == [mac_int(ETH_SRC)] * 3
    assert c["gratuitous"].tolist() == [False, False, True]
    assert c["vlan"].tolist() == [0, 0, 0]


def test_ecs_documents():
    frames = [who_has(), Ether(src=ETH_SRC) / Dot1Q(vlan=7) / ARP(
        op=2, hwsrc=TARGET_MAC, psrc="192.0.2.2", hwdst=SENDER_MAC, pdst="192.0.2.1")]
    docs = batch_to_ecs(events(frames))
    for doc in docs:
        assert_ecs(doc)
    assert docs[0]["event"]["action"] == "arp_request"
    assert docs[1]["event"]["action"] == "arp_reply"
    assert docs[0]["source"]["mac"] == "02-00-00-00-00-01"
    assert docs[1]["network"]["vlan"]["id"] == "7"
    assert "vlan" not in docs[0]["network"]
    assert docs[0]["cirtsa"]["arp"]["eth_src_mac"] == "02-00-00-00-00-AA"


@pytest.mark.parametrize("tags", [[Dot1Q(vlan=10)], [Dot1AD(vlan=20), Dot1Q(vlan=30)]])
def test_vlan_tags_walked_back_to_the_ethernet_source(tags):
    frame = Ether(src=ETH_SRC, dst="ff:ff:ff:ff:ff:ff")
    for tag in tags:
        frame = frame / tag
    frame = frame / ARP(op=1, hwsrc=SENDER_MAC, psrc="192.0.2.1", pdst="192.0.2.2")
    batch = events([frame])
    assert batch.columns["eth_src_mac"].tolist() == [mac_int(ETH_SRC)]
    assert batch.columns["vlan"].tolist() == [tags[-1].vlan]
    assert batch.columns["src_mac"].tolist() == [mac_int(SENDER_MAC)]


def test_spoofed_sender_differs_from_frame_source():
    # The sender hardware address claimed in ARP need not be the frame's source (spoofing).
    batch = events([who_has(eth_src="02:00:00:00:00:66")])
    assert batch.columns["eth_src_mac"].tolist() == [mac_int("02:00:00:00:00:66")]
    assert batch.columns["src_mac"].tolist() == [mac_int(SENDER_MAC)]


@pytest.mark.parametrize("fields, reason", [
    ({"hwlen": 255}, "arp_corrupt_header"),
    ({"plen": 16}, "arp_corrupt_header"),
    ({"hwtype": 0x0F}, "arp_unknown_hw_address"),
    ({"ptype": 0x86DD, "plen": 4}, "arp_unknown_proto_address"),
])
def test_bad_headers_counted_not_emitted(fields, reason):
    stats: dict[str, int] = {}
    frame = Ether(src=ETH_SRC) / ARP(op=1, hwsrc=SENDER_MAC, psrc="192.0.2.1",
                                     pdst="192.0.2.2", **fields)
    assert events([frame, who_has()], stats).columns["operation"].size == 1
    assert stats[reason] == 1
    assert stats["arp_packets"] == 1


@pytest.mark.parametrize("keep", [0, 5, 8, 27])
def test_truncated_header_counted(keep):
    frame = bytes(Ether(src=ETH_SRC, type=0x0806)) + bytes(who_has()[ARP])[:keep]
    stats: dict[str, int] = {}
    packets = decode(batch_from_frames([frame]))
    assert arp_events(packets, "s", "z", stats) is None
    assert stats == {"arp_truncated": 1}


def test_no_arp_gives_none():
    assert arp_events(decode(batch_from_frames([bytes(64)])), "s", "z") is None


def test_analyzer_loaded_from_default_config():
    section = load_config(None)["sensor"]["analyzers"]["arp"]
    analyzers = build_analyzers({"arp": section}, "s1", "lan")
    assert isinstance(analyzers[0], ArpAnalyzer)
    out = analyzers[0].process(decode(batch_from_scapy([who_has()])))
    assert [len(b) for b in out] == [1]
    assert analyzers[0].stats["arp_packets"] == 1


# --- real captures against tshark ----------------------------------------------------------

def _ours(path) -> list[tuple]:
    rows = []
    with CaptureReader(path) as reader:
        for batch in reader.batches():
            ev = arp_events(decode(batch), "s", "z")
            if ev is None:
                continue
            validate_batch(ev)
            c = ev.columns
            for doc in batch_to_ecs(ev.take(np.arange(min(len(ev), 5)))):
                assert_ecs(doc)
            for row in zip(c["operation"].tolist(), c["src_mac"].tolist(),
                           ip_column_to_str(c["src_ip"]), c["dst_mac"].tolist(),
                           ip_column_to_str(c["dst_ip"]), c["eth_src_mac"].tolist(),
                           strict=True):
                op, smac, sip, dmac, dip, eth = row
                rows.append((str(op), _colon(smac), sip, _colon(dmac), dip, _colon(eth)))
    return rows


def _colon(value: int) -> str:
    return mac_text(value).replace("-", ":").lower()


def _tshark(path) -> list[tuple]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "arp", "-T", "fields", "-e", "arp.opcode",
         "-e", "arp.src.hw_mac", "-e", "arp.src.proto_ipv4", "-e", "arp.dst.hw_mac",
         "-e", "arp.dst.proto_ipv4", "-e", "eth.src"],
        capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("\t")) for line in out.splitlines()]


@pytest.mark.parametrize("name", [
    "port_scan/zeek__nmap-vsn.pcap",
    "arp_spoofing/slips__test8-malicious.pcap",
    "arp_spoofing/chrissanders__arp_resolution.pcapng",
])
def test_real_captures_match_tshark(name):
    path = shared_pcap(name)
    ours = _ours(path)
    assert ours == _tshark(path)
    assert ours  # every one of these captures holds ARP


def test_nmap_sweep_is_503_who_has():
    ops = [row[0] for row in _ours(shared_pcap("port_scan/zeek__nmap-vsn.pcap"))]
    assert ops.count("1") == 503  # MANIFEST: 503 ARP who-has sweep frames


def test_arp_leak_corrupt_headers_counted():
    # Zeek's baseline reports 6 corrupt-arp-header packets (hln=255 / pln=255).
    path = shared_pcap("malformed/zeek__arp-leak.pcap")
    stats: dict[str, int] = {}
    emitted = 0
    with CaptureReader(path) as reader:
        for batch in reader.batches():
            ev = arp_events(decode(batch), "s", "z", stats)
            emitted += 0 if ev is None else len(ev)
    assert emitted == 0
    assert stats == {"arp_corrupt_header": 6}
