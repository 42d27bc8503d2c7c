"""Rotating-file input (sensors/rotating.py) on ring files written into tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from pipeline.config import load_config
from sensors.rotating import RotatingDirectory
from sensors.sensor import Sensor

T0 = 1_700_000_000.0
C, S = "10.1.0.5", "192.0.2.80"
# Explicit MACs: scapy would otherwise resolve them (slow, and it may send ARP requests).
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def tcp_session(t0: float, sport: int, data_segments: int) -> list:
    """Handshake, data segments from the client, FIN close; one packet every 0.5 s."""
    def pkt(src, dst, sp, dp, flags, payload=b""):
        return Ether(**MACS) / IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags=flags) / payload

    packets = [pkt(C, S, sport, 80, "S"), pkt(S, C, 80, sport, "SA"), pkt(C, S, sport, 80, "A")]
    packets += [pkt(C, S, sport, 80, "PA", b"x" * 100) for _ in range(data_segments)]
    packets += [pkt(C, S, sport, 80, "FA"), pkt(S, C, 80, sport, "FA"), pkt(C, S, sport, 80, "A")]
    for i, p in enumerate(packets):
        p.time = t0 + 0.5 * i
    return packets


def ring(tmp_path, name: str, packets: list) -> None:
    wrpcap(str(tmp_path / name), packets)


def run(directory, state, **kwargs) -> tuple[list, Sensor, RotatingDirectory]:
    sensor = Sensor(load_config()["sensor"])
    source = RotatingDirectory(directory, state, settle_s=0.05, poll_s=0.01,
                               exit_idle_s=0.3, **kwargs)
    events = []
    for batch in source.batches():
        if len(batch):
            events += sensor.process(batch)
    events += sensor.flush()
    return [e for e in events if e.kind == "flow"], sensor, source


def flow_columns(flows: list) -> dict:
    return {k: np.concatenate([f.columns[k] for f in flows]) for k in flows[0].columns}


def test_flow_spanning_a_rotation_is_one_flow_and_files_go_in_name_order(tmp_path):
    ring_dir = tmp_path / "ring"
    ring_dir.mkdir()
    session = tcp_session(T0, 40001, data_segments=10)  # 16 packets
    # Written in reverse order of their names: the name decides, not the write time.
    late_udp = Ether(**MACS) / IP(src=C, dst=S) / UDP(sport=5000, dport=53) / b"q"
    late_udp.time = T0 + 20
    ring(ring_dir, "eth1_00003_20231114221400.pcap", [late_udp])
    ring(ring_dir, "eth1_00002_20231114221330.pcap", session[8:])
    ring(ring_dir, "eth1_00001_20231114221320.pcap", session[:8])
    flows, sensor, source = run(ring_dir, tmp_path / "state.json")
    assert [r.path.rsplit("/", 1)[1][:10] for r in source.done_files] == [
        "eth1_00001", "eth1_00002", "eth1_00003"]
    cols = flow_columns(flows)
    tcp = np.flatnonzero(cols["transport"] == 6)
    assert tcp.size == 1, "the session split over two files must stay one flow"
    assert int(cols["src_packets"][tcp[0]] + cols["dst_packets"][tcp[0]]) == len(session)
    assert cols["conn_state"][tcp[0]] == "SF"
    assert sensor.stats["packets"] == len(session) + 1


def test_restart_does_not_reingest_and_picks_up_new_files(tmp_path):
    ring_dir = tmp_path / "ring"
    ring_dir.mkdir()
    state = tmp_path / "state" / "progress.json"
    ring(ring_dir, "a_00001.pcap", tcp_session(T0, 40001, 2))
    ring(ring_dir, "a_00002.pcap", tcp_session(T0 + 60, 40002, 2))
    flows, _, _ = run(ring_dir, state)
    assert sum(len(f) for f in flows) == 2
    assert json.loads(state.read_text())["last_done"] == "a_00002.pcap"

    flows, sensor, source = run(ring_dir, state)  # restart: nothing new
    assert flows == [] and source.done_files == [] and sensor.stats["packets"] == 0

    ring(ring_dir, "a_00003.pcap", tcp_session(T0 + 120, 40003, 2))
    flows, _, source = run(ring_dir, state)
    assert [r.path.rsplit("/", 1)[1] for r in source.done_files] == ["a_00003.pcap"]
    assert flow_columns(flows)["src_port"].tolist() == [40003]


def test_newest_file_waits_until_its_writer_closes_it(tmp_path):
    ring_dir = tmp_path / "ring"
    ring_dir.mkdir()
    ring(ring_dir, "b_00001.pcap", tcp_session(T0, 40001, 2))
    ring(ring_dir, "b_00002.pcap", tcp_session(T0 + 60, 40002, 2))
    writer = open(ring_dir / "b_00002.pcap", "ab")  # noqa: SIM115 - a writer still holds it
    try:
        _, _, source = run(ring_dir, tmp_path / "s.json")
        # b_00001 is complete (a later file exists); b_00002 is stable but still open.
        assert [r.path.rsplit("/", 1)[1] for r in source.done_files] == ["b_00001.pcap"]
    finally:
        writer.close()
    _, _, source = run(ring_dir, tmp_path / "s.json")
    assert [r.path.rsplit("/", 1)[1] for r in source.done_files] == ["b_00002.pcap"]


def test_growing_file_is_not_read_before_it_settles(tmp_path):
    ring_dir = tmp_path / "ring"
    ring_dir.mkdir()
    ring(ring_dir, "c_00001.pcap", tcp_session(T0, 40001, 2))
    source = RotatingDirectory(ring_dir, tmp_path / "s.json", settle_s=30, poll_s=0.01,
                               exit_idle_s=0.2, check_writers=False)
    assert sum(len(b) for b in source.batches()) == 0  # stable for < settle_s: not yet
    assert source.done_files == []


def test_damaged_and_unreadable_files_are_reported_and_passed(tmp_path):
    ring_dir = tmp_path / "ring"
    ring_dir.mkdir()
    ring(ring_dir, "d_00001.pcap", tcp_session(T0, 40001, 2))
    data = (ring_dir / "d_00001.pcap").read_bytes()
    (ring_dir / "d_00001.pcap").write_bytes(data[:-10])  # writer died mid-record
    (ring_dir / "d_00002.pcap").write_bytes(b"not a capture at all")
    ring(ring_dir, "d_00003.pcap", tcp_session(T0 + 60, 40003, 2))
    _, sensor, source = run(ring_dir, tmp_path / "s.json")
    reports = {r.path.rsplit("/", 1)[1]: r for r in source.done_files}
    assert list(reports) == ["d_00001.pcap", "d_00002.pcap", "d_00003.pcap"]
    assert reports["d_00001.pcap"].damage and reports["d_00001.pcap"].packets == 7
    assert reports["d_00002.pcap"].error and "not a pcap" in reports["d_00002.pcap"].error
    assert reports["d_00003.pcap"].packets == 8
    assert sensor.stats["packets"] == 15


def test_missing_directory_and_bad_state_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        RotatingDirectory(tmp_path / "absent", tmp_path / "s.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="unreadable progress state"):
        RotatingDirectory(tmp_path, tmp_path / "bad.json")
