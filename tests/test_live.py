"""Live capture (sensors/live.py) on the loopback interface only.

Packets are sent from the test to 127.0.0.1 and must come back as batches, then as flow
events through the same Sensor as files. Never touches any other interface. Skipped
without root / CAP_NET_RAW.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from pipeline.config import load_config
from sensors.decode import decode
from sensors.live import LiveCapture, LiveCaptureError, can_capture, compile_bpf
from sensors.packets import LINKTYPE_ETHERNET, ip_column_to_str
from sensors.sensor import Sensor

ALLOWED, WHY_NOT = can_capture()
needs_capture = pytest.mark.skipif(not ALLOWED, reason=f"live capture on lo: {WHY_NOT}")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collect(capture: LiveCapture, want: int, timeout_s: float = 5.0) -> list:
    batches, got = [], 0
    deadline = time.monotonic() + timeout_s
    for batch in capture.batches():
        if len(batch):
            batches.append(batch)
            got += len(batch)
        if got >= want or time.monotonic() > deadline:
            break
    return batches


def tcp_exchange(port: int, payload: bytes) -> None:
    """One TCP connection on 127.0.0.1:port: send payload, echo it back, close both ends."""
    server = socket.socket()
    server.bind(("127.0.0.1", port))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(65536))

    thread = threading.Thread(target=serve)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(payload)
        client.recv(65536)
    thread.join(5)
    server.close()


def test_bpf_compiles_without_tcpdump_and_rejects_garbage():
    program = compile_bpf("udp port 53", LINKTYPE_ETHERNET, 65535)
    assert len(program) % 8 == 0 and len(program) >= 8
    with pytest.raises(LiveCaptureError, match="invalid capture filter"):
        compile_bpf("udp port and and", LINKTYPE_ETHERNET, 65535)


def test_unknown_interface_is_a_clear_error():
    with pytest.raises(LiveCaptureError, match="no such network interface"):
        LiveCapture("cirtsa-no-such-if0")


@needs_capture
def test_udp_packets_on_lo_are_captured_once_each_with_filter():
    port, other = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    with LiveCapture("lo", bpf=f"udp port {port}", batch_packets=64,
                     batch_timeout_s=0.2) as capture:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(5):
                s.sendto(b"cirtsa-%d" % i, ("127.0.0.1", port))
            s.sendto(b"filtered out", ("127.0.0.1", other))
        batches = collect(capture, 5)
        # A little longer: nothing more may arrive (no outgoing duplicates, no other port).
        extra = collect(capture, 1, timeout_s=0.5)
        stats = capture.stats()
    decoded = [decode(b) for b in batches + extra]
    ports = np.concatenate([d.dst_port for d in decoded])
    assert ports.tolist() == [port] * 5
    payload = np.concatenate([d.payload_len for d in decoded])
    assert payload.tolist() == [len(b"cirtsa-0")] * 5
    assert stats["packets"] == 5
    assert stats["kernel_packets"] >= 5  # the kernel also counts loopback's outgoing copies
    assert stats["kernel_drops"] == 0
    ts = np.concatenate([b.ts_ns for b in batches])
    assert abs(int(ts[0]) - time.time_ns()) < 60 * 1_000_000_000


@needs_capture
def test_tcp_and_udp_on_lo_become_flow_events():
    tcp_port, udp_port = free_port(), free_port(socket.SOCK_DGRAM)
    config = load_config()["sensor"]
    sensor = Sensor(config)
    with LiveCapture("lo", bpf=f"tcp port {tcp_port} or udp port {udp_port}",
                     batch_packets=1000, batch_timeout_s=0.2) as capture:
        tcp_exchange(tcp_port, b"hello over tcp")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"ping", ("127.0.0.1", udp_port))
        # handshake 3 + data/ack 2 + echo/ack 2 + close 3-4 = at least 9 TCP frames, 1 UDP
        batches = collect(capture, 10)
        batches += collect(capture, 10**6, timeout_s=0.5)  # stragglers (final ACK)
    events = []
    for batch in batches:
        events += sensor.process(batch)
    events += sensor.flush()
    flows = [e for e in events if e.kind == "flow"]
    cols = {k: np.concatenate([f.columns[k] for f in flows]) for k in flows[0].columns}
    dst_ports = cols["dst_port"].tolist()
    assert sorted(dst_ports) == sorted([tcp_port, udp_port])
    tcp = dst_ports.index(tcp_port)
    assert cols["transport"][tcp] == 6
    assert cols["conn_state"][tcp] == "SF"
    assert cols["src_payload_bytes"][tcp] == len(b"hello over tcp")
    assert cols["dst_payload_bytes"][tcp] == len(b"hello over tcp")
    assert ip_column_to_str(cols["src_ip"]) == ["127.0.0.1", "127.0.0.1"]
    udp = dst_ports.index(udp_port)
    assert cols["src_packets"][udp] == 1 and cols["dst_packets"][udp] == 0


@needs_capture
def test_stop_ends_iteration_and_quiet_link_yields_empty_batches():
    capture = LiveCapture("lo", bpf=f"udp port {free_port(socket.SOCK_DGRAM)}",
                          batch_timeout_s=0.1)
    seen = []
    for batch in capture.batches():
        seen.append(len(batch))
        if len(seen) == 3:
            capture.stop()
    capture.close()
    assert seen == [0, 0, 0]
