"""Kafka client settings, measured: producer batch size, linger and compression (none,
lz4, gzip) and consumer fetch sizes, for the messages the services really send (fusion's
per-partition flow batches, pipeline.wire), one hop over a local Tansu broker (127.0.0.1).

For each setting: events/s of SpoolingProducer.send + flush, then of a BatchConsumer reading
them back (no decode), each side alone; medians of --runs, all in the same run, ratios
against the current defaults (first row). Compression needs its codec installed (`lz4`
package for lz4; gzip is built in); a missing codec is reported, not guessed.

    python bench/kafka_settings.py [--events 200000] [--rows 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]  # `import kafka`
sys.path.insert(0, REPO)

from pipeline.broker import LocalBroker  # noqa: E402
from pipeline.kafka_transport import (  # noqa: E402
    BatchConsumer,
    KafkaConfig,
    SpoolingProducer,
    ensure_topics,
)
from pipeline.wire import encode  # noqa: E402

# (label, producer kwargs, consumer kwargs); the first row is what the services use.
SETTINGS: list[tuple[str, dict, dict]] = [
    ("defaults: linger 5 ms, batch 16 KiB, none", {}, {}),
    ("batch_size 1 MiB", {"batch_size": 1 << 20}, {}),
    ("linger 0 ms", {"linger_ms": 0}, {}),
    ("linger 20 ms", {"linger_ms": 20}, {}),
    ("compression lz4", {"compression_type": "lz4"}, {}),
    ("compression gzip", {"compression_type": "gzip"}, {}),
    ("consumer fetch 1 MiB/partition", {}, {"max_partition_fetch_bytes": 1 << 20}),
    ("consumer fetch 4 MiB/partition", {}, {"max_partition_fetch_bytes": 4 << 20}),
]


def _kafka_bench():
    spec = importlib.util.spec_from_file_location("bench_kafka", os.path.join(HERE, "kafka.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_kafka"] = module
    spec.loader.exec_module(module)
    return module


def fused_messages(events: int, rows: int) -> list[bytes]:
    """Flow batches of `rows` events as fusion sends them to one partition."""
    kb = _kafka_bench()
    template = kb.template_flows()
    t0 = 1_700_000_000 * kb.NS
    return [encode(kb.make_batch(template, i, min(rows, events - i), t0 + i * 1000, 1000))
            for i in range(0, events, rows)]


def codec_available(compression: str | None) -> bool:
    module = {"lz4": "lz4.frame", "gzip": "gzip", None: "os"}.get(compression, compression)
    return importlib.util.find_spec(module.split(".")[0]) is not None


def one_setting(kafka: KafkaConfig, messages: list[bytes], events: int, producer_kw: dict,
                consumer_kw: dict, workdir: str) -> tuple[float, float]:
    topic = f"bench.settings.{time.monotonic_ns()}"
    ensure_topics(kafka, {topic: 4})
    spool = os.path.join(workdir, topic)
    with SpoolingProducer(kafka, spool, **producer_kw) as producer:
        producer.send(topic, b"warm-up", messages[0])
        producer.flush(60)
        start = time.monotonic()
        for i, message in enumerate(messages):
            producer.send(topic, b"b%d" % (i % 4), message)
        producer.flush(300)
        produce = events / (time.monotonic() - start)
    with BatchConsumer(kafka, [topic], f"g.{topic}", session_timeout_ms=2000,
                       **consumer_kw) as consumer:
        got = len(consumer.poll_batch(5.0, max_records=1))
        start = time.monotonic()
        deadline = start + 300
        while got < len(messages) + 1 and time.monotonic() < deadline:
            got += len(consumer.poll_batch(0.5))
        consume = events / (time.monotonic() - start)
    return produce, consume


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=5_000, help="events per message")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    messages = fused_messages(args.events, args.rows)
    size = sum(map(len, messages))
    print(f"{args.events:,} flow events in {len(messages)} messages of {args.rows:,} "
          f"({size / len(messages) / 1024:.0f} KiB, {size / args.events:.0f} bytes/event), "
          f"one hop, medians of {args.runs}; interleaved runs", flush=True)
    rows = [(label, p, c) for label, p, c in SETTINGS
            if codec_available(p.get("compression_type"))]
    for label, p, _ in SETTINGS:
        if not codec_available(p.get("compression_type")):
            print(f"  {label}: codec not installed, not measured")
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in rows}
    with LocalBroker() as broker, tempfile.TemporaryDirectory() as workdir:
        kafka = KafkaConfig(bootstrap=broker.bootstrap)
        for _ in range(args.runs):  # interleaved, so machine load hits every setting alike
            for label, producer_kw, consumer_kw in rows:
                results[label].append(one_setting(kafka, messages, args.events, producer_kw,
                                                  consumer_kw, workdir))
    base_p = statistics.median(p for p, _ in results[rows[0][0]])
    base_c = statistics.median(c for _, c in results[rows[0][0]])
    print(f"\n  {'setting':40s} {'produce ev/s':>13s} {'ratio':>6s} {'consume ev/s':>13s} "
          f"{'ratio':>6s}")
    for label, _, _ in rows:
        p = statistics.median(r[0] for r in results[label])
        c = statistics.median(r[1] for r in results[label])
        print(f"  {label:40s} {p:13,.0f} {p / base_p:5.2f}x {c:13,.0f} {c / base_c:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
