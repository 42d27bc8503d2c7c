"""Kafka path benchmark: sensor -> sa.sensor -> fusion -> sa.events(+by_dst) -> correlation,
over a local Tansu broker on 127.0.0.1, services as separate processes (`cirt-sa fusion run`,
`cirt-sa correlate run`), every process on this machine's cores.

Prints, medians of --runs:
  1. end-to-end events/s of the columnar path (events produced by the "sensor" in this
     process until the correlation worker has pushed all of them into its engines);
  2. the same events one ECS JSON message per event through the same broker (produce +
     consume + parse only: one hop, no fusion, no correlation: a generous anchor), and the
     ratio;
  3. at a paced 50,000 events/s: consumer lag samples and the wall-clock latency from
     producing the event whose time closes a window (window end + allowed_lateness_s) to
     the alert appearing on sa.alerts (p50 / p99).

    python bench/kafka.py [--events 1000000] [--json-events 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import orjson
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# This file is named kafka.py: keep its directory off the path so `import kafka` finds the
# client library, not this script.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, REPO)

from pipeline.broker import LocalBroker  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.kafka_transport import (  # noqa: E402
    BatchConsumer,
    KafkaConfig,
    SpoolingProducer,
    ensure_topics,
)
from pipeline.schema import EventBatch, batch_to_ecs, concat_batches  # noqa: E402
from pipeline.services import sensor_messages, topic_partitions  # noqa: E402
from pipeline.wire import decode, encode  # noqa: E402

CAPTURES = [os.path.join(REPO, "..", "shared", "pcaps", c) for c in
            ("brute_force/zeek__sshguess.pcap", "port_scan/simplescan__port_scan.pcap")]
NS = 10**9


def template_flows() -> EventBatch:
    batches = [b for b in (decode(m) for m in sensor_messages(CAPTURES, load_config()))
               if b.kind == "flow"]
    return concat_batches(batches)


def make_batch(template: EventBatch, first_row: int, rows: int, t0_ns: int,
               ns_per_event: int, attackers: int = 5000) -> EventBatch:
    """`rows` flows cut from the template, attacker address = 10.a.b.c by row, event time
    advancing `ns_per_event` per event from t0: brute-force-like sessions from many
    sources, so windows close and alerts come out steadily."""
    idx = np.arange(first_row, first_row + rows)
    batch = template.take(idx % len(template))
    cols = dict(batch.columns)
    start = int(template.columns["timestamp"].min())
    offset = t0_ns + idx * ns_per_event
    duration = cols["end"] - cols["timestamp"]
    cols["timestamp"] = offset.astype(np.int64)
    cols["end"] = (offset + np.minimum(duration, 10 * NS)).astype(np.int64)
    src = cols["src_ip"].copy().view(np.uint8).reshape(-1, 16)
    attacker = idx % attackers
    src[:, 10:12] = 0xFF
    src[:, 12] = 10
    src[:, 13] = (attacker >> 8) & 0xFF
    src[:, 14] = attacker & 0xFF
    src[:, 15] = 1
    cols["src_ip"] = src.reshape(-1).view(cols["src_ip"].dtype)
    del start
    return EventBatch(batch.kind, cols)


def start_service(args: list[str], log_path: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(log_path, "wb"))  # noqa: SIM115


def correlation_events_in(log_path: str) -> int:
    """Newest events_in the correlation worker reported in its metrics lines."""
    best = 0
    with open(log_path, "rb") as fh:
        for line in fh:
            if b'"metrics"' in line or b'"stopped"' in line:
                best = max(best, int(orjson.loads(line).get("events_in", 0)))
    return best


class Services:
    def __init__(self, bootstrap: str, workdir: str) -> None:
        config = {"services": {
            "fusion": {"metrics_interval_s": 0.5, "session_timeout_ms": 2000},
            "correlation": {"metrics_interval_s": 0.5, "session_timeout_ms": 2000,
                            "idle_flush_s": 0}}}
        path = os.path.join(workdir, "bench.yaml")
        with open(path, "w") as fh:
            yaml.safe_dump(config, fh)
        self.fusion_log = os.path.join(workdir, "fusion.log")
        self.corr_log = os.path.join(workdir, "correlation.log")
        self.procs = [
            start_service(["fusion", "run", "--kafka", bootstrap, "--config", path],
                          self.fusion_log),
            start_service(["correlate", "run", "--kafka", bootstrap, "--config", path],
                          self.corr_log)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if os.path.exists(self.corr_log) and b'"rebuild"' in open(self.corr_log, "rb").read():
                break
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(30)


def engines_per_event(config: dict) -> int:
    from pipeline.services import needs_destination_keying

    return 2 if needs_destination_keying(config) else 1


def run_columnar(kafka: KafkaConfig, template: EventBatch, events: int, batch_rows: int,
                 workdir: str, multiplier: int) -> tuple[float, Services]:
    services = Services(kafka.bootstrap, workdir)
    time.sleep(2.0)  # fusion joined too
    t0 = 1_700_000_000 * NS
    messages = [encode(make_batch(template, i, min(batch_rows, events - i), t0, NS // 1000))
                for i in range(0, events, batch_rows)]
    start = time.monotonic()
    with SpoolingProducer(kafka, os.path.join(workdir, "spool")) as producer:
        for message in messages:
            producer.send("sa.sensor", b"bench-sensor", message)
        producer.flush(120)
    deadline = time.monotonic() + 300
    while correlation_events_in(services.corr_log) < events * multiplier:
        if time.monotonic() > deadline:
            raise RuntimeError("correlation did not receive every event")
        time.sleep(0.05)
    return events / (time.monotonic() - start), services


def run_json(kafka: KafkaConfig, template: EventBatch, events: int, workdir: str) -> float:
    docs = []
    for i in range(0, events, 10_000):
        batch = make_batch(template, i, min(10_000, events - i), 1_600_000_000 * NS, NS // 1000)
        docs += [orjson.dumps(d) for d in batch_to_ecs(batch)]
    topic = f"bench.json.{time.monotonic_ns()}"
    ensure_topics(kafka, {topic: 4})
    got = 0
    consumer = BatchConsumer(kafka, [topic], f"g.{topic}", session_timeout_ms=2000,
                             max_poll_records=5000)
    consumer.poll_batch(0.5)  # join the group before the clock starts
    start = time.monotonic()

    def produce() -> None:
        with SpoolingProducer(kafka, os.path.join(workdir, "spool-json"),
                              max_in_flight=5) as producer:
            for i, doc in enumerate(docs):
                producer.send(topic, str(i % 5000).encode(), doc)
            producer.flush(300)

    thread = threading.Thread(target=produce)
    thread.start()
    deadline = time.monotonic() + 600
    while got < events and time.monotonic() < deadline:
        for record in consumer.poll_batch(0.5, max_records=5000):
            orjson.loads(record.value)
            got += 1
    elapsed = time.monotonic() - start
    thread.join()
    consumer.close()
    return events / elapsed


def run_latency(kafka: KafkaConfig, template: EventBatch, services: Services, rate: int,
                seconds: float, lateness_ns: int, multiplier: int) -> dict:
    """Paced at `rate` events/s in 10 messages/s; event time advances 1 ms per event (so
    20 s of wall clock = 1000 s of event time: windows close every few seconds)."""
    alerts: dict[str, float] = {}
    alert_docs: dict[str, dict] = {}
    stop = threading.Event()

    def read_alerts() -> None:
        consumer = BatchConsumer(kafka, ["sa.alerts"], f"lat.{time.monotonic_ns()}",
                                 session_timeout_ms=2000, max_poll_records=1000)
        while not stop.is_set():
            for record in consumer.poll_batch(0.2):
                alerts.setdefault(record.key.decode(), time.time())
                alert_docs.setdefault(record.key.decode(), orjson.loads(record.value))
        consumer.close()

    reader = threading.Thread(target=read_alerts)
    reader.start()
    time.sleep(3)  # the reader joined; older alerts read meanwhile are ignored below
    before = set(alerts)
    per_message = rate // 10
    t0 = 1_800_000_000 * NS
    sends: list[tuple[float, int]] = []  # (wall time sent, newest event time in message)
    lag = []
    base_in = correlation_events_in(services.corr_log)
    produced = 0
    with SpoolingProducer(kafka, tempfile.mkdtemp(prefix="bench-lat-")) as producer:
        start = time.monotonic()
        for n in range(int(seconds * 10)):
            batch = make_batch(template, n * per_message, per_message, t0, NS // 1000)
            producer.send("sa.sensor", b"bench-sensor", encode(batch))
            produced += per_message
            sends.append((time.time(), int(batch.columns["timestamp"].max())))
            if n % 10 == 0:
                lag.append(produced * multiplier - (correlation_events_in(services.corr_log)
                                                    - base_in))
            pause = start + (n + 1) / 10 - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        producer.flush(60)
    time.sleep(5)
    stop.set()
    reader.join()
    send_times = np.array([s for s, _ in sends])
    max_times = np.array([t for _, t in sends])
    latencies = []
    for alert_id, arrived in alerts.items():
        if alert_id in before:
            continue
        window_end = np.datetime64(alert_docs[alert_id]["cirtsa"]["alert"]["window"]["end"]
                                   .rstrip("Z"), "ns").astype(np.int64)
        closing = int(window_end) + lateness_ns
        i = int(np.searchsorted(max_times, closing))  # first message whose events close it
        if i < len(sends) and window_end >= t0:
            latencies.append(arrived - send_times[i])
    latencies.sort()
    return {"alerts": len(latencies),
            "p50_s": statistics.median(latencies) if latencies else float("nan"),
            "p99_s": latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
            "lag_events_max": max(lag) if lag else 0,
            "lag_events_median": statistics.median(lag) if lag else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--json-events", type=int, default=100_000)
    parser.add_argument("--batch-rows", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    args = parser.parse_args()
    config = load_config()
    template = template_flows()
    multiplier = engines_per_event(config)
    lateness_ns = int(float(config["correlation"]["allowed_lateness_s"]) * NS)
    columnar, json_rates, latency = [], [], {}
    for run in range(args.runs):
        with LocalBroker() as broker, tempfile.TemporaryDirectory() as workdir:
            kafka = KafkaConfig(bootstrap=broker.bootstrap)
            ensure_topics(kafka, topic_partitions(config))
            rate, services = run_columnar(kafka, template, args.events, args.batch_rows,
                                          workdir, multiplier)
            columnar.append(rate)
            try:
                if run == args.runs - 1:
                    latency = run_latency(kafka, template, services, 50_000,
                                          args.latency_seconds, lateness_ns, multiplier)
            finally:
                services.stop()
            json_rates.append(run_json(kafka, template, args.json_events, workdir))
        print(f"run {run + 1}: columnar {rate:,.0f} ev/s, json {json_rates[-1]:,.0f} ev/s",
              flush=True)
    col, js = statistics.median(columnar), statistics.median(json_rates)
    topics = "sa.events + sa.events.by_dst" if multiplier > 1 else "sa.events"
    print(f"\nKafka path, {args.events:,} flow events, {args.batch_rows:,}/message, "
          f"{multiplier} engine(s) per event ({topics}), {os.cpu_count()} cores, "
          f"median of {args.runs}:")
    print(f"  columnar sensor->fusion->correlation: {col:,.0f} events/s (target >= 200,000: "
          f"{'met' if col >= 200_000 else f'missed by {1 - col / 200_000:.0%}'})")
    print(f"  one JSON message per event, produce+consume only: {js:,.0f} events/s")
    print(f"  ratio: {col / js:.1f}x (target >= 10x)")
    if latency:
        print(f"  at 50,000 events/s: {latency['alerts']} alerts, window-closing event -> alert "
              f"p50 {latency['p50_s']:.2f} s, p99 {latency['p99_s']:.2f} s (target <= 5 s); "
              f"lag (events produced, not yet in the engine) median "
              f"{latency['lag_events_median']:,.0f}, max {latency['lag_events_max']:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
