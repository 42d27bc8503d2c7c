"""`cirt-sa` command line.

Exit codes: 0 ok, 2 usage error (bad arguments or config), 3 input error (a capture could
not be read, or was damaged: its events up to the damage are still written), 4 output error
(`replay --es`: Elasticsearch unreachable or refusing after the retry budget; the NDJSON file
is still written, and re-running the replay completes the load without duplicates).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence

import orjson

from correlation.sinks import NdjsonSink
from pipeline.config import ConfigError, config_from_args
from pipeline.embedded import RunReport, run_pipeline
from pipeline.schema import EventBatch

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_OUTPUT = 4

PROGRESS_MIN_BYTES = 20 * 1024 * 1024  # below this a file is done before a bar is worth drawing


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, stream=sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.started = time.monotonic()
        self._last_draw = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last_draw < 0.1 and done < total:
            return
        self._last_draw = now
        frac = done / total if total else 1.0
        filled = int(frac * self.width)
        rate = done / max(now - self.started, 1e-9) / 1e6
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {frac:6.1%} "
            f"{done / 1e6:8.1f} MB {rate:6.1f} MB/s"
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _want_progress(args: argparse.Namespace, paths: Sequence[str]) -> bool:
    if args.progress is not None:
        return args.progress
    import os

    total = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    return sys.stderr.isatty() and total >= PROGRESS_MIN_BYTES


def _report_inputs(report: RunReport) -> None:
    for capture in report.captures:
        if capture.error:
            print(f"error: {capture.error}", file=sys.stderr)
        if capture.damage:
            print(f"error: {capture.damage}", file=sys.stderr)
        for warning in capture.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if capture.tunnels:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(capture.tunnels.items()))
            print(f"note: {capture.path}: tunnelled packets decapsulated: {kinds}",
                  file=sys.stderr)
        if capture.defrag.get("fragments"):
            counts = ", ".join(f"{n} {k}" for k, n in capture.defrag.items())
            print(f"note: {capture.path}: IP fragments reassembled: {counts}", file=sys.stderr)
    for record in report.deadletter:
        print(f"dead-letter: {record['stage']}: {record['reason']}", file=sys.stderr)


def _table(title: str, rows: list[tuple[str, ...]], headers: tuple[str, ...]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def summarize(report: RunReport, out_path: str) -> str:
    """The human summary of a replay: inputs, events, alerts by rule, top sources."""
    packets = sum(c.packets for c in report.captures)
    events = ", ".join(f"{n} {k}" for k, n in sorted(report.events.items())) or "no events"
    parts = [
        f"{len(report.captures)} capture(s), {packets} packets -> {events} -> "
        f"{len(report.alerts)} alert(s) in {out_path}"
    ]
    by_rule: Counter[tuple[str, str]] = Counter()
    severity: dict[tuple[str, str], int] = {}
    sources: Counter[str] = Counter()
    for alert in report.alerts:
        key = (alert["rule"]["id"], alert["rule"]["name"])
        by_rule[key] += 1
        severity[key] = max(severity.get(key, 0), int(alert["event"].get("severity", 0)))
        src = alert.get("source", {}).get("ip")
        if src:
            sources[src] += 1
    if by_rule:
        rows = [(rid, name, str(n), str(severity[(rid, name)]))
                for (rid, name), n in by_rule.most_common()]
        headers = ("rule.id", "rule.name", "alerts", "max sev")
        parts.append(_table("\nAlerts by rule", rows, headers))
        rows = [(ip, str(n)) for ip, n in sources.most_common(10)]
        parts.append(_table("\nTop sources", rows, ("source.ip", "alerts")))
    return "\n".join(parts)


def _beside(path: str, name: str) -> str:
    """`name` in the folder of `path` (`<stem>.<name>` if `path` is already called that)."""
    import os

    folder, base = os.path.split(path)
    if base == name:
        name = f"{os.path.splitext(base)[0]}.{name}"
    return os.path.join(folder, name)


def summarize_incidents(incidents: list[dict], out_path: str) -> str:
    """Incidents (alerts of one attacker/victim fused across rules and sensors), worst first."""
    live = [i for i in incidents if i.get("cirtsa", {}).get("incident", {}).get("status")
            != "merged"]
    lines = [f"\n{len(live)} incident(s) in {out_path}"]
    for doc in sorted(live, key=lambda d: -int(d["event"].get("severity", 0)))[:10]:
        lines.append(f"  [{int(doc['event'].get('severity', 0)):>2}] {doc.get('message', '')}")
    return "\n".join(lines)


def cmd_replay(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    bar = ProgressBar() if _want_progress(args, args.files) else None
    try:
        report = run_pipeline(args.files, config, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    with NdjsonSink(args.out) as sink:
        sink.write(report.alerts)
    from pipeline.commands.es import build_incidents

    incidents = build_incidents(config, report.alerts)
    incidents_out = args.incidents_out or _beside(args.out, "incidents.ndjson")
    with NdjsonSink(incidents_out) as sink:
        sink.write(incidents)
    _report_inputs(report)
    if not args.quiet:
        print(summarize(report, args.out))
        print(summarize_incidents(incidents, incidents_out))
    if args.es and _replay_to_es(args, config, report.alerts) != EXIT_OK:
        return EXIT_OUTPUT  # the alerts did not reach Elasticsearch: the worse failure
    return EXIT_INPUT if report.input_errors else EXIT_OK


def _replay_to_es(args: argparse.Namespace, config: dict, alerts: list[dict]) -> int:
    """Set up Elasticsearch (idempotent) and write the alerts (+ incidents) through the sink."""
    from pipeline.commands.es import (
        OutputError,
        build_incidents,
        client_from,
        deliver,
        describe,
        es_settings,
        make_sink,
        print_dead_letter,
        setup_with_retry,
    )

    settings = es_settings(config)
    client = client_from(args.es, settings, compat_plain_json=args.es_compat_plain_json or None,
                         ca_certs=args.es_ca_certs)
    try:
        setup_with_retry(client, settings)
        written, incidents = deliver(make_sink(client, settings, print_dead_letter), alerts,
                                     build_incidents(config, alerts))
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    if not args.quiet:
        print(f"\n{describe(written, 'alerts')}; {describe(incidents, 'incidents')} -> "
              "Elasticsearch")
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    from fusion.stage import fusion_docs

    config = config_from_args(args)
    kinds = set(args.kinds.split(",")) if args.kinds else None
    bar = ProgressBar() if _want_progress(args, args.files) else None
    with NdjsonSink(args.out) as sink:

        def write(batch: EventBatch) -> None:
            if kinds is None or batch.kind in kinds:
                sink.write(fusion_docs(batch))  # with fusion's enrichment, as ingest writes

        try:
            report = run_pipeline(args.files, config, on_events=write, correlate=False,
                                  progress=bar)
        finally:
            if bar is not None:
                bar.close()
    _report_inputs(report)
    if not args.quiet:
        packets = sum(c.packets for c in report.captures)
        counts = ", ".join(f"{n} {k}" for k, n in sorted(report.events.items())) or "no events"
        print(f"{len(report.captures)} capture(s), {packets} packets -> {counts} in {args.out}")
    return EXIT_INPUT if report.input_errors else EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    # OPT_NON_STR_KEYS: some sections are keyed by port number (e.g. service maps)
    options = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    text = orjson.dumps(config_from_args(args), option=options)
    sys.stdout.write(text.decode() + "\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cirt-sa",
        description="Situational awareness for a national CIRT: captures -> ECS events -> "
        "correlated alerts.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="YAML file laid over the defaults")
    common.add_argument("--sensor-id", help="observer.name on every event (default: config)")
    common.add_argument("--zone", help="observer.ingress.zone on every event (default: config)")
    common.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: on a terminal, for large input)")
    common.add_argument("-q", "--quiet", action="store_true", help="no summary on stdout")

    replay = sub.add_parser(
        "replay", parents=[common],
        help="replay captures through sensor, fusion and correlation; write alerts",
        description="Replay pcap/pcapng files through the whole pipeline in one process "
        "(no servers) and write the correlated alerts as ECS NDJSON. Files are taken in the "
        "order of their first packet.",
    )
    replay.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng capture")
    replay.add_argument("--out", default="alerts.ndjson", help="alerts file (default: %(default)s)")
    replay.add_argument("--incidents-out",
                        help="incidents file: alerts fused by attacker/victim across rules and "
                        "sensors (default: incidents.ndjson beside the alerts file)")
    replay.add_argument("--es", metavar="URL",
                        help="also write alerts (and incidents) to Elasticsearch at URL, after "
                        "installing its templates; credentials from CIRTSA_ES_API_KEY or "
                        "CIRTSA_ES_USER/CIRTSA_ES_PASSWORD (names set in the configuration)")
    replay.add_argument("--es-compat-plain-json", action="store_true",
                        help="plain application/json media types (OpenSearch-API test servers)")
    replay.add_argument("--es-ca-certs", metavar="PEM", help="CA bundle for Elasticsearch TLS")
    replay.set_defaults(func=cmd_replay)

    events = sub.add_parser(
        "events", parents=[common],
        help="write the sensor's events (flows, DNS) as ECS NDJSON",
        description="Turn captures into the sensor's ECS events (what `zeek -r` is to Zeek "
        "logs), validated as the fusion stage does, without correlation.",
    )
    events.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng capture")
    events.add_argument("--out", default="events.ndjson", help="events file (default: %(default)s)")
    events.add_argument("--kinds", help="comma-separated event kinds to write (default: all)")
    events.set_defaults(func=cmd_events)

    config = sub.add_parser("config", parents=[common], help="print the effective configuration",
                            description="Print the defaults merged with --config, as JSON.")
    config.set_defaults(func=cmd_config)
    for module in _command_modules():
        module.register(sub, common)
    return parser


def _command_modules() -> list:
    """Every module of pipeline.commands (each adds its own sub-commands), in name order."""
    import importlib
    import pkgutil

    import pipeline.commands

    names = sorted(m.name for m in pkgutil.iter_modules(pipeline.commands.__path__))
    return [importlib.import_module(f"pipeline.commands.{name}") for name in names]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # `cirt-sa ... | head`: the reader left; like other Unix tools, stop quietly (and keep
        # the interpreter's final flush from failing again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
