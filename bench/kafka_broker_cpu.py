"""Where the broker's CPU per event goes: per request or per byte?

One hop (produce, then consume back, no stage work) of the same flow events through a
fresh Tansu broker, varying what changes the number of requests but not the bytes
(events per message, partitions, client library, fetch wait), and the bytes per event
(lz4). Prints the broker's CPU (user+system, /proc) per event for produce and consume
separately, medians of --runs, each setting interleaved within a run.

    python bench/kafka_broker_cpu.py --events 400000 --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.kafka import cpu_seconds, sensor_batches, template_flows  # noqa: E402
from pipeline.broker import LocalBroker  # noqa: E402
from pipeline.kafka_transport import (  # noqa: E402
    BatchConsumer,
    KafkaConfig,
    SpoolingProducer,
    ensure_topics,
)

SETTINGS = {  # name: (client, rows per message, partitions, compression)
    "confluent, 20k rows/msg, 4 partitions": ("confluent", 20_000, 4, None),
    "confluent, 5k rows/msg, 4 partitions": ("confluent", 5_000, 4, None),
    "confluent, 20k rows/msg, 1 partition": ("confluent", 20_000, 1, None),
    "kafka-python, 20k rows/msg, 4 partitions": ("kafka-python", 20_000, 4, None),
    "confluent, 20k rows/msg, 4 partitions, lz4": ("confluent", 20_000, 4, "lz4"),
}


def one_hop(bootstrap: str, broker_pid: int, client: str, messages: list[bytes],
            events: int, partitions: int, compression: str | None,
            workdir: str) -> tuple[float, float, int]:
    """(broker CPU µs/event while producing, while consuming, bytes/event on the wire)."""
    kafka = KafkaConfig(bootstrap=bootstrap, client=client)
    topic = f"probe.{time.monotonic_ns()}"
    ensure_topics(kafka, {topic: partitions})
    with SpoolingProducer(kafka, os.path.join(workdir, topic), compression_type=compression,
                          linger_ms=5) as producer:
        producer.send(topic, b"warm-up", b"x")
        producer.flush(30)
        before = cpu_seconds(broker_pid)
        for i, message in enumerate(messages):
            producer.send(topic, b"sensor-%d" % (i % partitions), message)
        producer.flush(300)
        produce_cpu = cpu_seconds(broker_pid) - before
    with BatchConsumer(kafka, [topic], f"g.{topic}", session_timeout_ms=2000) as consumer:
        got = len(consumer.poll_batch(5.0, max_records=1))
        before = cpu_seconds(broker_pid)
        deadline = time.monotonic() + 300
        while got < len(messages) + 1 and time.monotonic() < deadline:
            got += len(consumer.poll_batch(0.5))
        consume_cpu = cpu_seconds(broker_pid) - before
    size = sum(map(len, messages))
    return produce_cpu * 1e6 / events, consume_cpu * 1e6 / events, size // events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    template = template_flows()
    batches = {rows: sensor_batches(template, args.events, rows)
               for rows in {s[1] for s in SETTINGS.values()}}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.runs):
            for name, (client, rows, partitions, compression) in SETTINGS.items():
                with LocalBroker() as broker:  # fresh broker: no data from earlier settings
                    p, c, _ = one_hop(broker.bootstrap, broker.pid, client, batches[rows],
                                      args.events, partitions, compression, workdir)
                results[name].append((p, c))
    print(f"broker CPU per event, one hop of {args.events:,} flow events, medians of "
          f"{args.runs} (µs/event):")
    base = None
    for name, values in results.items():
        produce = statistics.median(v[0] for v in values)
        consume = statistics.median(v[1] for v in values)
        base = base or (produce + consume)
        print(f"  {name:45s} produce {produce:5.2f}  consume {consume:5.2f}  "
              f"total {produce + consume:5.2f}  ({(produce + consume) / base:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
