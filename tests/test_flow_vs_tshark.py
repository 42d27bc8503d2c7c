"""FlowTable against tshark's conversation tables on real captures.

For each capture, TCP and UDP flows (from CaptureReader + decode + FlowTable, with timeouts
large enough not to split what tshark keeps together) must equal
`tshark -q -z conv,tcp` / `conv,udp`: the same conversations, and per conversation the same
frame counts in each direction. tshark's table prints bytes rounded to kB/MB, so exact
per-direction frame bytes are checked against `tshark -T fields -e frame.len ...` summed by
(src, sport, dst, dport).

tshark's conv columns: "A <-> B | <- Frames Bytes | -> Frames Bytes | Total ..." where "->"
is A -> B and "<-" is B -> A (checked: in zeek__wikipedia.pcap the client's 6 frames /
1575 bytes of the first HTTP connection are in the "->" column).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from pipeline.schema import concat_batches
from sensors.flow_table import FlowTable
from sensors.packets import ip_column_to_str

SHARED = Path(__file__).resolve().parents[2] / "shared"
CAPTURES = [
    "benign/zeek__wikipedia.pcap",
    "benign/tcpreplay__test.pcap",
    "benign/zeek__bro.org.pcap",
    "benign/zeek__workshop_2011_browse.pcap",
    "large/zeek__ssh.pcap",
]
BIG = 10**7  # seconds: no timeout splits
CFG = {"idle_timeout_s": BIG, "tcp_idle_timeout_s": BIG, "active_timeout_s": BIG,
       "closed_linger_s": BIG, "max_flows": 10**6}
TSHARK_OPTS = ["-o", "tcp.analyze_sequence_numbers:FALSE"]
ROW = re.compile(r"^(\S+)\s+<->\s+(\S+)\s+(\d+)\s+\d+\s+\S+\s+(\d+)\s+\d+\s+\S+\s+(\d+)\s")


def _capture(name: str) -> Path:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (Debian package tshark)")
    path = SHARED / "pcaps" / name
    if not path.is_file():
        pytest.skip(f"{path} not available (tests need ../shared/pcaps beside the repo)")
    return path


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return str(ipaddress.ip_address(host.strip("[]"))), int(port)


def tshark_conversations(path: Path, proto: str) -> Counter:
    """Multiset of (A, B, frames A->B, frames B->A) from `tshark -z conv,<proto>`."""
    out = subprocess.run(["tshark", "-n", *TSHARK_OPTS, "-r", str(path), "-q", "-z",
                          f"conv,{proto}"], capture_output=True, text=True, check=True).stdout
    convs: Counter = Counter()
    for line in out.splitlines():
        m = ROW.match(line)
        if m:
            a, b = _endpoint(m.group(1)), _endpoint(m.group(2))
            b_to_a, a_to_b = int(m.group(3)), int(m.group(4))
            assert int(m.group(5)) == a_to_b + b_to_a
            convs[_canonical(a, b, a_to_b, b_to_a)] += 1
    return convs


def _canonical(a, b, a_to_b, b_to_a) -> tuple:
    return (a, b, a_to_b, b_to_a) if a <= b else (b, a, b_to_a, a_to_b)


def tshark_bytes(path: Path, proto: str) -> dict[tuple, int]:
    """Frame bytes per direction (src, sport, dst, dport) from tshark's per-frame fields."""
    fields = ["frame.len", "ip.src", "ipv6.src", f"{proto}.srcport", "ip.dst", "ipv6.dst",
              f"{proto}.dstport"]
    cmd = ["tshark", "-n", *TSHARK_OPTS, "-r", str(path), "-Y", f"{proto} && !icmp && !icmpv6",
           "-T", "fields", "-E", "occurrence=f"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    totals: dict[tuple, int] = defaultdict(int)
    for line in out.splitlines():
        length, s4, s6, sp, d4, d6, dp = line.split("\t")
        totals[(s4 or s6, int(sp), d4 or d6, int(dp))] += int(length)
    return totals


@functools.cache
def our_flows(path: Path) -> dict[str, np.ndarray]:
    capture_reader = pytest.importorskip("sensors.pcap_reader")
    decode = pytest.importorskip("sensors.decode").decode
    table = FlowTable(CFG, "tshark-test", "lab")
    results = []
    with capture_reader.CaptureReader(path, batch_packets=1000) as reader:
        for batch in reader.batches():
            results.append(table.update(decode(batch)))
    results.append(table.flush())
    flows = concat_batches(results)
    assert flows is not None
    cols = dict(flows.columns)
    cols["src"] = np.array(ip_column_to_str(cols["src_ip"]), dtype=object)
    cols["dst"] = np.array(ip_column_to_str(cols["dst_ip"]), dtype=object)
    return cols


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("proto,number", [("tcp", 6), ("udp", 17)])
def test_flows_match_tshark_conversations(capture, proto, number):
    path = _capture(capture)
    expected = tshark_conversations(path, proto)
    flows = our_flows(path)
    sel = np.flatnonzero(flows["transport"] == number)
    assert (flows["vlan"][sel] == 0).all(), "tshark conversations ignore VLANs"
    ours: Counter = Counter()
    for i in sel.tolist():
        a = (flows["src"][i], int(flows["src_port"][i]))
        b = (flows["dst"][i], int(flows["dst_port"][i]))
        ours[_canonical(a, b, int(flows["src_packets"][i]), int(flows["dst_packets"][i]))] += 1
    assert sum(ours.values()) == sum(expected.values())
    assert ours == expected


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("proto,number", [("tcp", 6), ("udp", 17)])
def test_flow_bytes_per_direction_match_tshark(capture, proto, number):
    path = _capture(capture)
    expected = tshark_bytes(path, proto)
    flows = our_flows(path)
    ours: dict[tuple, int] = defaultdict(int)
    for i in np.flatnonzero(flows["transport"] == number).tolist():
        s, sp = flows["src"][i], int(flows["src_port"][i])
        d, dp = flows["dst"][i], int(flows["dst_port"][i])
        if flows["src_packets"][i]:
            ours[(s, sp, d, dp)] += int(flows["src_bytes"][i])
        if flows["dst_packets"][i]:
            ours[(d, dp, s, sp)] += int(flows["dst_bytes"][i])
    # (some captures have no UDP: then we must report none either)
    assert dict(ours) == dict(expected)
