"""`cirt-sa sensor run` (pipeline/commands/sensor.py) and health documents (sensors/health.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import orjson
import pytest
from conftest import assert_ecs
from kafka_fixtures import consume, consumer, unique
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import wrpcap

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.kafka_transport import TOPIC_SENSOR_HEALTH
from pipeline.wire import decode as wire_decode
from sensors.health import HEALTH_DATASET, HealthReporter
from sensors.live import can_capture
from sensors.sensor import CaptureResult, capture_events

pytest_plugins = ["kafka_fixtures"]

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "samples")
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
T0 = 1_700_000_000.0


def udp_stream(path, seconds: int, sport: int = 5000) -> int:
    """One UDP packet per second for `seconds` seconds; returns the packet count."""
    packets = []
    for i in range(seconds):
        p = Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=9999)
        p.time = T0 + i
        packets.append(p)
    wrpcap(str(path), packets)
    return len(packets)


def log_lines(stderr: str) -> list[dict]:
    return [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def expected_event_counts(paths: list[str]) -> Counter:
    """Events of the captures through one sensor, as the embedded pipeline makes them."""
    from pipeline.embedded import run_pipeline

    return Counter(run_pipeline(paths, load_config(), correlate=False).events)


def test_pcap_to_ndjson_matches_the_events_command(tmp_path, capsys):
    files = [os.path.join(SAMPLES, "sshguess.pcap")]
    out = tmp_path / "events.ndjson"
    assert main(["sensor", "run", "--pcap", *files, "--out", str(out), "--quiet",
                 "--sensor-id", "s-test", "--zone", "dmz"]) == 0
    docs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    kinds = Counter(d["event"]["dataset"].removeprefix("cirtsa.") for d in docs)
    reference: Counter = Counter()
    for _consumed, batches in capture_events(files[0], load_config()["sensor"],
                                             CaptureResult(files[0])):
        for batch in batches:
            reference[batch.kind] += len(batch)
    assert kinds == reference and kinds["flow"] > 0
    for doc in docs:
        assert_ecs(doc)
        assert doc["observer"]["name"] == "s-test"
        assert doc["observer"]["ingress"]["zone"] == "dmz"
    logs = log_lines(capsys.readouterr().err)
    assert [entry["event"] for entry in logs][0] == "start"
    assert logs[-1]["event"] == "stop"
    health = [entry for entry in logs if entry["event"] == "health"]
    assert health and health[-1]["health"]["packets"] == 431
    assert health[-1]["health"]["events"] == dict(reference)
    assert health[-1]["health"]["flows_live"] == 0  # flushed at the end


def test_health_runs_on_event_time_for_captures(tmp_path, capsys):
    path = tmp_path / "slow.pcap"
    udp_stream(path, 100)
    config = tmp_path / "c.yaml"
    config.write_text("sensor: {batch_packets: 5}\n")  # health is checked once per batch
    assert main(["sensor", "run", "--pcap", str(path), "--out", str(tmp_path / "o.ndjson"),
                 "--config", str(config), "--health-interval", "10", "--quiet"]) == 0
    health = [e["health"] for e in log_lines(capsys.readouterr().err) if e["event"] == "health"]
    # 99 s of event time, one packet per second: a document every 10 s, plus the final one,
    # however fast the file was read.
    assert len(health) == 10
    packets = [h["packets"] for h in health]
    assert [b - a for a, b in zip(packets[:-1], packets[1:-1], strict=False)] == [10] * 8
    assert packets[-1] == 100
    assert all(h["clock"] == "event" for h in health)
    assert health[1]["packets_per_s"] == pytest.approx(1.0)


def test_health_document_is_ecs():
    reporter = HealthReporter("s1", "dmz", 60, wall_clock=True)
    doc = reporter.report({"packets": 10, "bytes": 1000, "kernel_drops": 2, "flows_live": 3},
                          {"flow": 4, "dns": 1}, {"truncated_IP": 1}, time.time_ns(),
                          {"producer": {"acked": 5}})
    assert_ecs(doc)
    assert doc["event"]["kind"] == "metric" and doc["event"]["dataset"] == HEALTH_DATASET
    assert doc["observer"]["name"] == "s1" and doc["observer"]["ingress"]["zone"] == "dmz"
    health = doc["cirtsa"]["health"]
    assert health["events_total"] == 5 and health["weird"] == {"truncated_IP": 1}
    assert health["kernel_drops"] == 2 and health["producer"] == {"acked": 5}
    assert 0 <= health["lag_s"] < 5


def test_usage_and_input_errors(tmp_path, capsys):
    assert main(["sensor", "run", "--pcap", os.path.join(SAMPLES, "sshguess.pcap")]) == 2
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"garbage, not a capture")
    assert main(["sensor", "run", "--pcap", str(bad), "--out", str(tmp_path / "o"), "-q"]) == 3
    assert "not a pcap" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sensor", "run", "--pcap", str(bad), "--watch-dir", str(tmp_path)])


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "sensor", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_log(proc: subprocess.Popen, event: str, timeout_s: float = 30) -> list[dict]:
    """Read stderr lines until a log line with `event` (the process keeps running)."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if line.startswith("{"):
            seen.append(orjson.loads(line))
            if seen[-1]["event"] == event:
                return seen
    raise AssertionError(f"no {event!r} log line; got {seen}")


def test_watch_dir_service_flushes_flows_and_exits_0_on_sigterm(tmp_path):
    ring = tmp_path / "ring"
    ring.mkdir()
    packets = udp_stream(ring / "r_00001.pcap", 5)
    out = tmp_path / "events.ndjson"
    proc = _start(["--watch-dir", str(ring), "--out", str(out), "--state-file",
                   str(tmp_path / "state.json"), "--health-interval", "3600"])
    try:
        _wait_for_log(proc, "file_done")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    logs = log_lines(stderr)
    assert logs[-1]["event"] == "stop"
    docs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    flows = [d for d in docs if d["event"]["dataset"] == "cirtsa.flow"]
    assert len(flows) == 1  # the open flow was flushed at shutdown
    assert flows[0]["source"]["packets"] == packets


def test_kafka_output_keyed_by_sensor_with_health(tmp_path, kafka_config):
    sensor_id = unique("sensor")
    files = [os.path.join(SAMPLES, "sshguess.pcap"), os.path.join(SAMPLES, "port_scan.pcap")]
    group = unique("g")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "sensor", "run", "--pcap", *files, "--kafka",
         kafka_config.bootstrap, "--sensor-id", sensor_id, "--quiet"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOME": str(tmp_path)})  # default state dir -> tmp (spool)
    assert proc.returncode == 0, proc.stderr
    closed = [e for e in log_lines(proc.stderr) if e["event"] == "producer_closed"]
    assert closed and closed[0]["acknowledged"] and closed[0]["in_spool"] == 0

    expected = expected_event_counts(files)
    with consumer(kafka_config, ["sa.sensor", TOPIC_SENSOR_HEALTH], group) as c:
        got: Counter = Counter()
        health = []
        deadline = time.monotonic() + 30
        while (got != expected or not health) and time.monotonic() < deadline:
            for record in consume(c, 1, timeout_s=2):
                if record.key != sensor_id.encode():
                    continue  # another test's sensor
                if record.topic == TOPIC_SENSOR_HEALTH:
                    health.append(orjson.loads(record.value))
                else:
                    batch = wire_decode(record.value)
                    got[batch.kind] += len(batch)
    assert got == expected
    assert health and health[-1]["event"]["dataset"] == HEALTH_DATASET
    assert health[-1]["observer"]["name"] == sensor_id
    assert_ecs(health[-1])


@pytest.mark.skipif(not can_capture()[0], reason=f"live capture on lo: {can_capture()[1]}")
def test_live_service_on_lo_writes_flows_on_sigterm(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "live.ndjson"
    proc = _start(["--interface", "lo", "--bpf", f"udp port {port}", "--out", str(out),
                   "--health-interval", "0.2"])
    try:
        _wait_for_log(proc, "health")  # capture is open (the first health is after 0.2 s)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(3):
                s.sendto(b"live", ("127.0.0.1", port))
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    health = [e["health"] for e in log_lines(stderr) if e["event"] == "health"]
    assert health[-1]["clock"] == "wall" and health[-1]["kernel_drops"] == 0
    assert health[-1]["packets"] == 3
    docs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    flows = [d for d in docs if d["event"]["dataset"] == "cirtsa.flow"]
    assert [(f["destination"]["port"], f["source"]["packets"]) for f in flows] == [(port, 3)]


def test_tunnel_counts_in_health_stop_and_summary(tmp_path, capsys):
    """Decapsulated packets per kind: in the health document, the stop log and the summary."""
    packets = []
    for i in range(3):
        p = (Ether(**MACS) / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=5, dport=4789)
             / VXLAN(vni=1) / Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2")
             / UDP(sport=5000, dport=9999))
        p.time = T0 + i
        packets.append(p)
    path = tmp_path / "vxlan.pcap"
    wrpcap(str(path), packets)
    assert main(["sensor", "run", "--pcap", str(path), "--out", str(tmp_path / "o.ndjson")]) == 0
    captured = capsys.readouterr()
    logs = log_lines(captured.err)
    health = [e["health"] for e in logs if e["event"] == "health"]
    assert health[-1]["tunnels"] == {"vxlan": 3}
    assert logs[-1]["event"] == "stop" and logs[-1]["tunnels"] == {"vxlan": 3}
    assert "decapsulated: 3 vxlan" in captured.out
    docs = [orjson.loads(line) for line in (tmp_path / "o.ndjson").read_bytes().splitlines()]
    assert [d["source"]["ip"] for d in docs] == ["10.0.0.1"]  # the inner flow
    assert main(["events", str(path), "--out", str(tmp_path / "e.ndjson")]) == 0
    assert f"note: {path}: tunnelled packets decapsulated: 3 vxlan" in capsys.readouterr().err
