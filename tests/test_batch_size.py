"""The whole Sensor's events do not depend on sensor.batch_packets (issue #3, task S1).

Batch boundaries move flows to other batches and change the order events come out in, so
each kind's rows are compared as multisets (every row as a tuple of all its columns, sorted).
tests/test_flow_table.py checks the same for the flow table alone on synthetic packets; this
runs every analyzer of the default configuration on real captures.
"""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.config import load_config
from sensors.pcap_reader import CaptureReader
from sensors.sensor import Sensor
from tests.conftest import shared_pcap

DEFAULT_BATCH = 65536
# Captures with many packets (so that small batches split them often) and between them
# flows with idle/active/close splits, DNS, HTTP, TLS, SSH, ICMP and ARP events.
CAPTURES = [
    "large/ndpi__1kxun.pcap",
    "large/zeek__ssh.pcap",
    "port_scan/ndpi__synscan.pcap",
    "c2_beaconing/corelight__dcrat_30a385ed.pcap",
    "malformed/suricata-verify__http-mime-truncated.pcap",
    "port_scan/simplescan__backscatter.pcap",
    "c2_beaconing/slips__test-cc-capture-1.pcap",
]


def sensor_rows(path, batch_packets: int) -> dict[str, Counter]:
    """kind -> multiset of rows (tuples of (column, repr(value)), columns sorted by name)."""
    config = load_config(None)["sensor"]
    sensor = Sensor(config)
    rows: dict[str, Counter] = {}

    def take(batches) -> None:
        for batch in batches:
            if not len(batch):
                continue
            names = sorted(batch.columns)
            values = [[repr(v) for v in batch.columns[name].tolist()] for name in names]
            rows.setdefault(batch.kind, Counter()).update(
                tuple(zip(names, row, strict=True)) for row in zip(*values, strict=True))

    with CaptureReader(path, batch_packets=batch_packets) as reader:
        for batch in reader.batches():
            take(sensor.process(batch))
    for piece in sensor.flush_chunks():
        take(piece)
    return rows


# large/zeek__ssh.pcap at 97 (and 13) packets: a batch boundary falls after the three SYN /
# SYN-ACK pairs of the connection from port 51489 and before its first payload, so its
# handshake is remembered by the stream collector and replayed; the SSH event must still
# start at the first SYN (tcp_stream keeps each flow's earliest handshake time).
CASES = [pytest.param(name, size, id=f"{name}-{size}")
         for name in CAPTURES for size in (1000, 97, 13)
         if size != 13 or name == "large/zeek__ssh.pcap"]


@pytest.mark.parametrize(("name", "batch_packets"), CASES)
def test_batch_size_does_not_change_events(name, batch_packets):
    path = shared_pcap(name)
    expected = sensor_rows(path, DEFAULT_BATCH)
    got = sensor_rows(path, batch_packets)
    assert expected, "the capture gave no events"
    assert set(got) == set(expected)
    for kind in expected:
        missing, extra = expected[kind] - got[kind], got[kind] - expected[kind]
        assert not missing and not extra, (kind, list(missing)[:2], list(extra)[:2])
