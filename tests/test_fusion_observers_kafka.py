"""Every observer of a de-duplicated flow travels with it: our sensor's flows and Zeek conn
records of the same capture (benign/zeek__wikipedia.pcap, MANIFEST: 34 TCP/UDP
conversations; the conn records come from tshark's conversation table, see
test_fusion_fuse_pcap.py) through the fusion service on a real broker (Tansu, 127.0.0.1)
and through the embedded pipeline. The two sensors' reports arrive in different batches, so
the second report of each flow is a late observer update (fusion.dedupe.late_observers:
update) that lists both sensors."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter

import numpy as np
import pytest
from conftest import shared_pcap
from kafka_fixtures import consumer, require_broker_binary
from test_fusion_fuse_pcap import CAPTURE, _tshark_conn_log

from fusion.adapters import ZeekAdapter
from fusion.run import run_ingest
from fusion.sources import zeek_file
from fusion.stage import fusion_docs
from pipeline.broker import LocalBroker
from pipeline.config import deep_merge, load_config
from pipeline.kafka_transport import KafkaConfig, SpoolingProducer, ensure_topics
from pipeline.schema import (
    OBSERVER_SEPARATOR,
    concat_batches,
    fold_observer_names,
    observer_update_rows,
)
from pipeline.services import FusionService, JsonLog, sensor_messages, topic_partitions
from pipeline.wire import decode, encode_chunks

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark missing")


def _config(late: str) -> dict:
    fast = {"session_timeout_ms": 2000, "metrics_interval_s": 5}
    return deep_merge(load_config(), {"fusion": {"dedupe": {"late_observers": late}},
                                      "services": {"fusion": fast}})


def _observers_by_flow(flows) -> dict[str, set[str]]:
    """Community ID -> every sensor named by the rows of that flow."""
    out: dict[str, set[str]] = {}
    cols = flows.columns
    for cid, own, names in zip(cols["community_id"].tolist(), cols["observer_name"].tolist(),
                               cols["observer_names"].tolist(), strict=True):
        out.setdefault(cid, set()).update(names.split(OBSERVER_SEPARATOR) if names else [own])
    return out


def _check_fused(flows, sensor_flows: int, conversations: int, sensor_id: str) -> None:
    updates = observer_update_rows(flows)
    # one late update per connection (whichever sensor's report came second), the rest kept
    assert int(updates.sum()) == conversations
    assert len(flows) - conversations == sensor_flows
    both = {sensor_id, "zeek"}
    for names in flows.columns["observer_names"][updates].tolist():
        assert set(names.split(OBSERVER_SEPARATOR)) == both
    # the fused view: one row per flow, the connections Zeek saw naming both sensors
    fused = fold_observer_names(flows)
    assert len(fused) == sensor_flows
    named = Counter(frozenset(v.split(OBSERVER_SEPARATOR))
                    for v in fused.columns["observer_name"].tolist())
    assert named[frozenset(both)] == conversations
    assert named[frozenset([sensor_id])] == sensor_flows - conversations
    by_flow = _observers_by_flow(flows)
    assert sum(1 for s in by_flow.values() if s == both) == conversations


@pytest.fixture
def zeek_conn(tmp_path):
    pcap = shared_pcap(CAPTURE)
    conn = tmp_path / "conn.log"
    return pcap, conn, _tshark_conn_log(pcap, conn)


def test_observers_travel_through_the_kafka_fusion_service(zeek_conn, tmp_path):
    require_broker_binary()
    pcap, conn, conversations = zeek_conn
    config = _config("update")
    sensor_id = config["sensor"]["id"]
    sensor = list(sensor_messages([pcap], config))
    sensor_flows = sum(len(b) for b in map(decode, sensor) if b.kind == "flow")
    zeek = [m for result in zeek_file(conn, ZeekAdapter()) for b in result.batches
            for m in encode_chunks(b, 1_000_000)]
    assert sensor_flows >= conversations > 0 and zeek
    with LocalBroker() as broker:
        kafka = KafkaConfig(bootstrap=broker.bootstrap)
        ensure_topics(kafka, topic_partitions(config))
        service = FusionService(kafka, config, by_destination=False,
                                log=JsonLog("fusion", open("/dev/null", "w")))  # noqa: SIM115
        stop, ready = threading.Event(), threading.Event()
        thread = threading.Thread(target=service.run, args=(stop,), kwargs={"ready": ready},
                                  daemon=True)
        thread.start()
        try:
            assert ready.wait(30)
            with SpoolingProducer(kafka, tmp_path / "spool") as producer:
                for message in sensor:  # the sensor first, Zeek later: separate messages
                    producer.send("sa.sensor", sensor_id.encode(), message)
                assert producer.flush(30)
                for message in zeek:
                    producer.send("sa.sensor", b"zeek", message)
                assert producer.flush(30)
            flows = []
            want = sensor_flows + conversations
            with consumer(kafka, ["sa.events"], "observers-reader") as reader:
                deadline = time.monotonic() + 60
                while sum(map(len, flows)) < want and time.monotonic() < deadline:
                    flows += [b for b in (decode(r.value) for r in reader.poll_batch(0.5))
                              if b.kind == "flow"]
        finally:
            stop.set()
            thread.join(30)
    assert service.transform.stage.stats["dedupe.late_observer_updates"] == conversations
    _check_fused(concat_batches(flows), sensor_flows, conversations, sensor_id)


def test_observers_in_the_embedded_pipeline(zeek_conn):
    pcap, conn, conversations = zeek_conn
    sensor_id = load_config()["sensor"]["id"]
    for late in ("update", "drop"):
        flows: list = []

        def collect(b, flows=flows) -> None:
            if b.kind == "flow":
                flows.append(b)

        report = run_ingest(_config(late), zeek=[conn], pcaps=[pcap], correlate=False,
                            on_events=collect)
        assert report.stats["fusion.dedupe.duplicates"] == conversations
        docs = [d for b in flows for d in fusion_docs(b)]
        listed = [frozenset(d["cirtsa"]["observers"]["name"]) for d in docs
                  if "observers" in d.get("cirtsa", {})]
        if late == "update":
            sensor_flows = sum(map(len, flows)) - conversations
            _check_fused(concat_batches(flows), sensor_flows, conversations, sensor_id)
        else:
            assert not any(observer_update_rows(b).any() for b in flows)
        # one document per conversation listing both sensors (the kept flow, written after
        # the fact from the side structure); update rows get no document of their own
        assert Counter(listed)[frozenset({sensor_id, "zeek"})] == conversations
        assert len(docs) == sum(len(b) for b in flows) - (
            conversations if late == "update" else 0)
        assert np.all([len(b) for b in flows])
