"""`cirt-sa broker`, `cirt-sa fusion run`, `cirt-sa correlate run`, `cirt-sa health run`: the
Kafka deployment.

Each service runs until SIGTERM/SIGINT, then flushes its outputs, commits what they
acknowledged and exits 0. Logs are JSON lines on stderr (docs/kafka.md).

`fusion` and `sensor` may also be command groups of other modules (loaded before this one,
in name order): this module then adds its `run` / `replay-to-kafka` to the existing group
instead of registering a second one, and leaves an existing `replay-to-kafka` alone.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from pipeline.config import config_from_args

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INPUT = 0, 1, 2, 3


def _group(sub: argparse._SubParsersAction, name: str, help_text: str,
           common: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    """The sub-command action of group `name`, created unless another module made it; None
    when another module owns `name` as a plain command (then it is left alone)."""
    parser = sub.choices.get(name)
    if parser is not None:
        return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)),
                    None)
    parser = sub.add_parser(name, help=help_text, description=help_text)
    nested = parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    nested.required = True
    return nested


def _kafka_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kafka", metavar="BOOTSTRAP",
                        help="Kafka bootstrap servers host:port[,...] "
                        "(default: config kafka.bootstrap)")
    parser.add_argument("--group", help="consumer group id (default: config services.<name>.group)")


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    return stop


def _setup(args: argparse.Namespace):
    from pipeline.kafka_transport import TransportError, ensure_topics
    from pipeline.services import kafka_config, topic_partitions

    config = config_from_args(args)
    try:
        kafka = kafka_config(config, args.kafka)
        ensure_topics(kafka, topic_partitions(config))
    except TransportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None, None
    return config, kafka


def cmd_broker(args: argparse.Namespace) -> int:
    from pipeline.broker import run_broker_forever

    return run_broker_forever(args.port)


def cmd_fusion_run(args: argparse.Namespace) -> int:
    from pipeline.kafka_transport import TransportError
    from pipeline.services import FusionService

    config, kafka = _setup(args)
    if kafka is None:
        return EXIT_FAILED
    stop = _stop_on_signals()
    try:
        return FusionService(kafka, config, group=args.group).run(stop)
    except TransportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _es_sink(url: str, config: dict):
    from correlation.es_setup import make_client, setup
    from correlation.es_sink import ElasticsearchSink

    es = config.get("elasticsearch") or {}
    client = make_client(url, ca_certs=es.get("ca_certs"),
                         compat_plain_json=bool(es.get("compat_plain_json")),
                         request_timeout=float(es.get("request_timeout_s", 30)))
    setup(client, int(es.get("retention_days", 30)))
    return ElasticsearchSink(client, chunk_size=int(es.get("chunk_size", 500)),
                             max_attempts=int(es.get("max_attempts", 10)),
                             initial_backoff_s=float(es.get("initial_backoff_s", 0.5)),
                             max_backoff_s=float(es.get("max_backoff_s", 30)),
                             max_total_s=float(es.get("max_total_s", 300)),
                             preserve_lifecycle=True)


class _AppendNdjson:
    """Alerts appended to a file as they are acknowledged (flushed and fsync'd per write,
    so what the consumer commits is on disk). Re-deliveries can repeat ids: dedupe by
    event.id."""

    def __init__(self, path: str) -> None:
        self._fh = open(path, "ab")  # noqa: SIM115 - closed by close()

    def write(self, alerts: list[dict]) -> None:
        import os

        import orjson

        if alerts:
            self._fh.write(b"".join(orjson.dumps(a) + b"\n" for a in alerts))
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def cmd_correlate_run(args: argparse.Namespace) -> int:
    from pipeline.kafka_transport import TransportError
    from pipeline.services import CorrelationService

    config, kafka = _setup(args)
    if kafka is None:
        return EXIT_FAILED
    sinks: list = []
    if args.es:
        sinks.append(_es_sink(args.es, config))
    if args.out:
        sinks.append(_AppendNdjson(args.out))
    stop = _stop_on_signals()
    try:
        service = CorrelationService(kafka, config, group=args.group, sinks=sinks,
                                     idle_flush_s=args.idle_flush_s)
        return service.run(stop)
    except TransportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        for sink in sinks:
            if hasattr(sink, "close"):
                sink.close()


def cmd_health_run(args: argparse.Namespace) -> int:
    from correlation.es_setup import SetupError
    from pipeline.health_shipper import HealthShipper
    from pipeline.kafka_transport import TransportError

    config, kafka = _setup(args)
    if kafka is None:
        return EXIT_FAILED
    try:
        sink = _es_sink(args.es, config)
    except (SetupError, TransportError, OSError) as exc:
        print(f"error: Elasticsearch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    stop = _stop_on_signals()
    try:
        return HealthShipper(kafka, config, sink.write_health, group=args.group).run(stop)
    except TransportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def cmd_replay_to_kafka(args: argparse.Namespace) -> int:
    from pipeline.services import publish_captures
    from sensors.pcap_reader import CaptureError

    config, kafka = _setup(args)
    if kafka is None:
        return EXIT_FAILED
    import tempfile

    from pipeline.kafka_transport import SpoolingProducer
    from pipeline.services import topic_partitions

    with tempfile.TemporaryDirectory(prefix="cirtsa-replay-spool-") as spool:
        producer = SpoolingProducer(kafka, spool, topics=topic_partitions(config))
        try:
            sent = publish_captures(args.files, config, producer)
            ok = producer.flush(60)
        except CaptureError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INPUT
        finally:
            producer.close(10)
    if not args.quiet:
        print(f"{sent} sensor batch message(s) to sa.sensor on {kafka.bootstrap}"
              + ("" if ok else " (NOT all acknowledged)"))
    return EXIT_OK if ok else EXIT_FAILED


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    if "broker" not in sub.choices:
        broker = sub.add_parser(
            "broker", parents=[common], help="run a local Kafka broker (Tansu) on 127.0.0.1",
            description="Run a single-machine Kafka-protocol broker on 127.0.0.1 until "
            "SIGTERM. Memory storage: topics and data are lost when it stops.")
        broker.add_argument("--port", type=int, default=9092, help="port (default: %(default)s)")
        broker.set_defaults(func=cmd_broker)

    fusion = _group(sub, "fusion", "fusion stage commands", common)
    if fusion is not None and "run" not in fusion.choices:
        run = fusion.add_parser(
            "run", parents=[common], help="consume sa.sensor, produce sa.events",
            description="Long-running fusion service: sa.sensor -> normalize/validate -> "
            "sa.events keyed by source address (+ sa.events.by_dst keyed by destination when "
            "a destination-keyed detector is enabled); invalid input -> sa.deadletter.")
        _kafka_args(run)
        run.set_defaults(func=cmd_fusion_run)

    correlate = _group(sub, "correlate", "correlation stage commands", common)
    if correlate is not None and "run" not in correlate.choices:
        run = correlate.add_parser(
            "run", parents=[common], help="consume sa.events, produce alerts",
            description="Long-running correlation worker: sa.events (+ sa.events.by_dst) -> "
            "correlation engine -> sa.alerts (one ECS JSON per message, key = alert id), "
            "optionally Elasticsearch and an NDJSON file. Scale out by starting more workers "
            "in the same --group.")
        _kafka_args(run)
        run.add_argument("--es", metavar="URL", help="also write alerts to Elasticsearch")
        run.add_argument("--out", metavar="FILE", help="also append alerts to an NDJSON file")
        run.add_argument("--idle-flush-s", type=float, default=None,
                         help="close all windows after this many seconds without input "
                         "(0 = never; default: config services.correlation.idle_flush_s)")
        run.set_defaults(func=cmd_correlate_run)

    health = _group(sub, "health", "sensor health commands", common)
    if health is not None and "run" not in health.choices:
        run = health.add_parser(
            "run", parents=[common], help="ship sa.sensor.health to Elasticsearch",
            description="Long-running service: sensor health documents from sa.sensor.health "
            "-> Elasticsearch logs-cirtsa.sensor_health-default (create by id, commit after "
            "acknowledgement; retried while Elasticsearch is down). Malformed messages -> "
            "sa.deadletter.")
        _kafka_args(run)
        run.add_argument("--es", metavar="URL", required=True, help="Elasticsearch URL")
        run.set_defaults(func=cmd_health_run)

    sensor = _group(sub, "sensor", "sensor commands", common)
    if sensor is not None and "replay-to-kafka" not in sensor.choices:
        replay = sensor.add_parser(
            "replay-to-kafka", parents=[common],
            help="send captures' sensor batches to sa.sensor (test/bench helper)",
            description="Run captures through the sensor and publish its event batches to "
            "sa.sensor (key = sensor id), as `cirt-sa sensor run --kafka` does for live input.")
        replay.add_argument("files", nargs="+", metavar="FILE")
        replay.add_argument("--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers")
        replay.set_defaults(func=cmd_replay_to_kafka)
