"""`cirt-sa sensor run`: the long-running sensor service (docs/sensor.md).

Input, one of:
  --interface IF [--bpf EXPR]   live capture (AF_PACKET + kernel BPF; needs CAP_NET_RAW)
  --pcap FILE...                capture files, in the order of their first packet
  --watch-dir DIR               rotating captures of a ring writer (dumpcap -b ...)
Outputs, one or both:
  --out FILE                    ECS NDJSON, one event per line
  --kafka BOOTSTRAP             event batches (pipeline.wire) to sa.sensor, key = sensor id
                                (so one sensor's batches stay in order in one partition);
                                health documents to sa.sensor.health
One Sensor (one flow table) serves the whole input: flows span files and rotations.

SIGTERM/SIGINT: stop reading, flush the flow table and analyzers, flush the producer (what
is not acknowledged within shutdown_flush_s stays in the on-disk spool and is sent first on
the next start), exit 0. Logs are JSON lines on stderr; a health document every
sensor.service.health_interval_s (sensors/health.py).
Exit codes: 0 ok, 1 Kafka unusable, 2 usage, 3 input error (capture unreadable/damaged,
interface cannot be opened).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from pipeline.config import config_from_args

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INPUT = 0, 1, 2, 3


def state_dir(service: dict) -> Path:
    """Where progress files and the default spool live (see defaults.d/10-sensor-service)."""
    if service.get("state_dir"):
        return Path(os.path.expanduser(str(service["state_dir"])))
    if os.environ.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return Path.home() / ".local" / "state" / "cirt-sa"


class _Log:
    """JSON lines on stderr: {"ts", "service": "sensor", "event", ...}."""

    def __init__(self, stream: IO[str] | None = None, sensor_id: str = "") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.sensor_id = sensor_id

    def __call__(self, event: str, **fields: Any) -> None:
        doc = {"ts": round(time.time(), 3), "service": "sensor", "sensor": self.sensor_id,
               "event": event, **fields}
        line = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        self.stream.write(line.decode() + "\n")
        self.stream.flush()


class _PcapFiles:
    """Capture files as one stream of batches (one flow table across them)."""

    def __init__(self, paths: Sequence[str], batch_packets: int, log: _Log) -> None:
        from pipeline.embedded import order_captures

        self.paths = order_captures(list(paths))
        self.batch_packets = batch_packets
        self.log = log
        self.input_errors = 0
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    def batches(self) -> Iterator:
        from sensors.pcap_reader import CaptureError, CaptureReader

        for path in self.paths:
            if self._stopping:
                return
            try:
                with CaptureReader(path, batch_packets=self.batch_packets) as reader:
                    for batch in reader.batches():
                        yield batch
                        if self._stopping:
                            break
                    self.log("file_done", path=path, packets=reader.packets,
                             damage=str(reader.damage) if reader.damage else None,
                             warnings=reader.warnings[:10])
                    self.input_errors += reader.damage is not None
            except CaptureError as exc:
                self.log("file_error", path=path, error=str(exc))
                self.input_errors += 1
            except OSError as exc:
                self.log("file_error", path=path, error=f"{path}: {exc.strerror or exc}")
                self.input_errors += 1


class SensorService:
    """Source -> Sensor -> outputs, with health and graceful shutdown (see module doc)."""

    def __init__(self, config: dict, source: Any, log: _Log, *, live: bool,
                 wall_clock_health: bool | None = None, out: IO[bytes] | None = None,
                 producer: Any = None,
                 capture_stats: Callable[[], dict[str, int]] | None = None,
                 health_interval_s: float | None = None) -> None:
        from sensors.health import HealthReporter
        from sensors.sensor import Sensor

        self.config = config
        sensor_config = config["sensor"]
        service = sensor_config.get("service") or {}
        self.sensor = Sensor(sensor_config)
        self.source = source
        self.log = log
        self.live = live  # packet times are the wall clock: idle flows time out on it
        self.out = out
        self.producer = producer
        self.capture_stats = capture_stats
        self.key = self.sensor.observer_name.encode()
        self.max_message_bytes = int(service.get("max_message_bytes", 1_000_000))
        interval = health_interval_s if health_interval_s is not None else float(
            service.get("health_interval_s", 60))
        self.health = HealthReporter(self.sensor.observer_name, self.sensor.ingress_zone,
                                     interval, wall_clock=live if wall_clock_health is None
                                     else wall_clock_health)
        self.events: Counter[str] = Counter()
        self.newest_ns: int | None = None
        self.health_docs = 0
        self._stop_requested = False
        self._files_logged = 0

    def request_stop(self, *_args: object) -> None:
        """Signal handler: finish the current batch, then shut down cleanly."""
        self._stop_requested = True
        self.source.stop()

    def run(self) -> None:
        for batch in self.source.batches():
            if len(batch):
                self.newest_ns = max(self.newest_ns or 0, int(np.max(batch.ts_ns)))
                self._emit(self.sensor.process(batch))
            elif self.live:
                flows = self.sensor.flow_table.advance(time.time_ns())
                self._emit([flows] if flows is not None and len(flows) else [])
            self._log_finished_files()
            if self.health.due(self.newest_ns):
                self._emit_health()
            if self._stop_requested:
                break
        self._log_finished_files()
        for events in self.sensor.flush_chunks():  # pieces: a full table's records at once
            self._emit(events)                        # would double its memory
        self._emit_health()

    def _log_finished_files(self) -> None:
        """--watch-dir: one log line per file finished (RotatingDirectory.done_files)."""
        done = getattr(self.source, "done_files", None)
        while done is not None and self._files_logged < len(done):
            report = done[self._files_logged]
            self._files_logged += 1
            self.log("file_done", path=report.path, packets=report.packets,
                     error=report.error, damage=report.damage, warnings=report.warnings[:10])

    def _emit(self, batches: list) -> None:
        from pipeline.bus import TOPIC_SENSOR
        from pipeline.schema import batch_to_ecs
        from pipeline.wire import encode_chunks

        for batch in batches:
            if not len(batch):
                continue
            self.events[batch.kind] += len(batch)
            if self.out is not None:
                self.out.write(b"".join(orjson.dumps(doc) + b"\n" for doc in batch_to_ecs(batch)))
            if self.producer is not None:
                for message in encode_chunks(batch, self.max_message_bytes):
                    self.producer.send(TOPIC_SENSOR, self.key, message)

    def health_document(self) -> dict:
        stats = self.sensor.stats
        flow_stats = self.sensor.flow_table.stats
        counters = {"packets": int(stats.get("packets", 0)), "bytes": int(stats.get("bytes", 0)),
                    "flows_live": int(flow_stats.get("flows_live", 0)),
                    "flows_created": int(flow_stats.get("flows_created", 0)),
                    "flows_evicted": int(flow_stats.get("flows_evicted", 0))}
        if self.capture_stats is not None:
            capture = self.capture_stats()
            counters["kernel_packets"] = capture.get("kernel_packets", 0)
            counters["kernel_drops"] = capture.get("kernel_drops", 0)
        weird = {k.removeprefix("weird."): v for k, v in stats.items() if k.startswith("weird.")}
        extra: dict[str, dict[str, int]] = {}
        analyzer_stats: dict[str, int] = {}
        for analyzer in self.sensor.analyzers:
            analyzer_stats.update({k: int(v) for k, v in analyzer.stats.items()})
        if analyzer_stats:
            extra["analyzers"] = analyzer_stats
        extra["tunnels"] = self.sensor.tunnel_counts()  # packets decapsulated, per kind
        extra["defrag"] = self.sensor.defrag_counts()  # IP fragment reassembly
        if self.producer is not None:
            extra["producer"] = self.producer.metrics_snapshot()
        return self.health.report(counters, self.events, weird, self.newest_ns, extra)

    def _emit_health(self) -> None:
        from pipeline.kafka_transport import TOPIC_SENSOR_HEALTH

        doc = self.health_document()
        self.health_docs += 1
        self.log("health", **{"@timestamp": doc["@timestamp"]}, health=doc["cirtsa"]["health"])
        if self.producer is not None:
            self.producer.send(TOPIC_SENSOR_HEALTH, self.key, orjson.dumps(doc))


def _make_source(args: argparse.Namespace, config: dict, log: _Log):
    """(source, live?, capture stats callable) for the chosen input. Health runs on wall
    time for live capture and --watch-dir (near-live), on event time for --pcap."""
    sensor = config["sensor"]
    batch_packets = int(sensor.get("batch_packets", 65536))
    if args.interface:
        from sensors.live import LiveCapture

        live = dict(sensor.get("live") or {})
        capture = LiveCapture(
            args.interface, bpf=args.bpf, batch_packets=int(live.get("batch_packets",
                                                                     batch_packets)),
            batch_timeout_s=float(live.get("batch_timeout_s", 0.5)),
            snaplen=int(live.get("snaplen", 65535)),
            promiscuous=bool(live.get("promiscuous", True)),
            buffer_bytes=int(live.get("buffer_bytes", 32 << 20)),
            rcvbuf_bytes=int(live.get("rcvbuf_bytes", 64 << 20)))
        return capture, True, capture.stats
    if args.watch_dir:
        from sensors.rotating import RotatingDirectory

        watch = sensor.get("watch") or {}
        service = sensor.get("service") or {}
        state_file = args.state_file or (
            state_dir(service) / f"watch-{sensor.get('id', 'sensor-1')}.json")
        source = RotatingDirectory(
            args.watch_dir, state_file, pattern=str(watch.get("pattern", "*.pcap*")),
            settle_s=float(watch.get("settle_s", 2)), poll_s=float(watch.get("poll_s", 0.5)),
            batch_packets=batch_packets, exit_idle_s=args.exit_idle)
        return source, False, None
    return _PcapFiles(args.pcap, batch_packets, log), False, None


def _make_producer(args: argparse.Namespace, config: dict, log: _Log):
    from pipeline.kafka_transport import SpoolingProducer, TransportError, ensure_topics
    from pipeline.services import kafka_config, producer_compression, topic_partitions
    from pipeline.spool import Spool

    service = config["sensor"].get("service") or {}
    spool_dir = service.get("spool_dir") or (
        state_dir(service) / f"spool-{config['sensor'].get('id', 'sensor-1')}")
    kafka = kafka_config(config, args.kafka)
    topics = topic_partitions(config)
    try:
        ensure_topics(kafka, topics)
    except TransportError as exc:  # the spool covers an outage at start too
        log("kafka_unreachable", error=str(exc), spool=str(spool_dir))
    spool = Spool(os.path.expanduser(str(spool_dir)),
                  max_bytes=int(service.get("spool_max_bytes", 1 << 30)))
    # sensor.service.compression (default auto = lz4 with the confluent client): lz4 halves
    # the broker's CPU per event (docs/kafka.md, "Client settings").
    compression = producer_compression({"compression": service.get("compression", "auto")},
                                       kafka.client)
    return SpoolingProducer(kafka, spool, topics=topics, compression_type=compression,
                            linger_ms=int(service.get("linger_ms", 5))), kafka


def cmd_sensor_run(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError

    if not (args.out or args.kafka):
        print("error: give an output: --out FILE and/or --kafka BOOTSTRAP", file=sys.stderr)
        return EXIT_USAGE
    if args.bpf and not args.interface:
        print("error: --bpf needs --interface", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log = _Log(sensor_id=str(config["sensor"].get("id", "sensor-1")))
    try:
        source, live, capture_stats = _make_source(args, config, log)
    except (OSError, ValueError) as exc:  # LiveCaptureError is an OSError
        log("input_error", error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    producer = kafka = None
    if args.kafka:
        from pipeline.kafka_transport import TransportError

        try:
            producer, kafka = _make_producer(args, config, log)
        except TransportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
    out = open(args.out, "ab") if args.out else None  # noqa: SIM115 - closed in finally
    service = SensorService(config, source, log, live=live,
                            wall_clock_health=live or bool(args.watch_dir), out=out,
                            producer=producer,
                            capture_stats=capture_stats, health_interval_s=args.health_interval)
    previous = {sig: signal.signal(sig, service.request_stop)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    log("start", input=_describe_input(args), out=args.out,
        kafka=kafka.bootstrap if kafka else None, pid=os.getpid())
    acknowledged = True
    try:
        service.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if out is not None:
            out.close()
        if producer is not None:
            flush_s = float((config["sensor"].get("service") or {}).get("shutdown_flush_s", 10))
            acknowledged = producer.flush(flush_s)
            metrics = producer.metrics_snapshot()
            producer.close(1.0)
            log("producer_closed", acknowledged=acknowledged, **metrics)
        if hasattr(source, "close"):
            source.close()
    tunnels = service.sensor.tunnel_counts()
    defrag = service.sensor.defrag_counts()
    log("stop", events=dict(service.events), packets=int(service.sensor.stats.get("packets", 0)),
        health_documents=service.health_docs, tunnels=tunnels, defrag=defrag)
    if not args.quiet:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(service.events.items())) or "no events"
        print(f"{int(service.sensor.stats.get('packets', 0))} packets -> {counts}")
        if tunnels:
            print("decapsulated: " + ", ".join(f"{n} {k}" for k, n in sorted(tunnels.items())))
        if defrag["fragments"]:
            print("IP fragments: " + ", ".join(f"{n} {k}" for k, n in defrag.items()))
    if getattr(source, "input_errors", 0):
        return EXIT_INPUT
    return EXIT_OK


def _describe_input(args: argparse.Namespace) -> dict:
    if args.interface:
        return {"interface": args.interface, "bpf": args.bpf}
    if args.watch_dir:
        return {"watch_dir": args.watch_dir}
    return {"pcap": list(args.pcap)}


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = sub.choices.get("sensor")
    if group is None:
        group = sub.add_parser("sensor", help="sensor commands",
                               description="Sensor commands (the capture-side service).")
        nested = group.add_subparsers(dest="sensor_command", metavar="ACTION")
        nested.required = True
    else:
        nested = next(a for a in group._actions if isinstance(a, argparse._SubParsersAction))
    run = nested.add_parser(
        "run", parents=[common], help="run the sensor service (live, files or a ring directory)",
        description="Capture -> decode -> flow table + protocol analyzers -> ECS NDJSON "
        "and/or Kafka sa.sensor, with health documents, until SIGTERM (or end of --pcap "
        "input). See docs/sensor.md.")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--interface", "-i", metavar="IF", help="capture live on IF")
    source.add_argument("--pcap", nargs="+", metavar="FILE", help="read capture files")
    source.add_argument("--watch-dir", metavar="DIR",
                        help="follow rotating captures in DIR (dumpcap -b ...)")
    run.add_argument("--bpf", metavar="EXPR", help="kernel capture filter (tcpdump syntax)")
    run.add_argument("--out", metavar="FILE", help="append ECS events (NDJSON) to FILE")
    run.add_argument("--kafka", metavar="BOOTSTRAP",
                     help="send event batches to Kafka (host:port[,...]; config kafka.*)")
    run.add_argument("--health-interval", type=float, metavar="S",
                     help="seconds between health documents "
                     "(default: config sensor.service.health_interval_s)")
    run.add_argument("--state-file", metavar="FILE",
                     help="--watch-dir progress file (default: <state dir>/watch-<id>.json)")
    run.add_argument("--exit-idle", type=float, metavar="S",
                     help="--watch-dir: exit after S seconds without a new complete file")
    run.set_defaults(func=cmd_sensor_run)
