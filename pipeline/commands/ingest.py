"""`cirt-sa ingest`: Suricata EVE and Zeek logs through fusion and correlation."""

from __future__ import annotations

import argparse
import sys
import time

from correlation.sinks import NdjsonSink
from pipeline.config import config_from_args

EXIT_OK, EXIT_USAGE, EXIT_INPUT = 0, 2, 3


def register(sub, common) -> None:
    p = sub.add_parser(
        "ingest", parents=[common],
        help="feed Suricata EVE / Zeek logs through fusion and correlation; write alerts",
        description="Normalize Suricata EVE JSON and Zeek logs (JSON or TSV, plain or gzip; "
        "a Zeek directory reads every known log) to the event schema, validate, "
        "de-duplicate and enrich them (fusion), then correlate them as `replay` does. "
        "Bad records go to the dead-letter output with their reason.")
    p.add_argument("--suricata", nargs="+", default=[], metavar="EVE", help="EVE JSON file(s)")
    p.add_argument("--zeek", nargs="+", default=[], metavar="DIR_OR_FILE",
                   help="Zeek log file(s) or log directories")
    p.add_argument("--pcap", nargs="+", default=[], metavar="FILE",
                   help="captures to fuse with the logs through our own sensor")
    p.add_argument("--out", default="alerts.ndjson", help="alerts file (default: %(default)s)")
    p.add_argument("--events-out", metavar="FILE", help="also write the fused events (ECS NDJSON)")
    p.add_argument("--deadletter-out", metavar="FILE", help="write dead-letter records (NDJSON)")
    p.add_argument("--follow", action="store_true",
                   help="tail the EVE / Zeek JSON files as they grow (Ctrl-C to stop)")
    p.add_argument("--follow-idle-s", type=float, default=None,
                   help="with --follow: stop after this many seconds without new lines")
    p.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    from fusion.run import run_ingest
    from fusion.stage import fusion_docs

    if not (args.suricata or args.zeek or args.pcap):
        print("error: give --suricata, --zeek and/or --pcap inputs", file=sys.stderr)
        return EXIT_USAGE
    config = config_from_args(args)
    events_sink = NdjsonSink(args.events_out) if args.events_out else None

    def write(batch) -> None:
        events_sink.write(fusion_docs(batch))

    stop = None
    if args.follow:
        last = {"t": time.monotonic(), "n": 0}

        def stop() -> bool:  # idle timeout (for scripts); Ctrl-C otherwise
            if args.follow_idle_s is None:
                return False
            return time.monotonic() - last["t"] >= args.follow_idle_s
    try:
        report = run_ingest(config, args.suricata, args.zeek, args.pcap,
                            on_events=write if events_sink else None, follow=args.follow,
                            stop=stop)
    except KeyboardInterrupt:
        return 130
    finally:
        if events_sink is not None:
            events_sink.close()
    with NdjsonSink(args.out) as sink:
        sink.write(report.alerts)
    if args.deadletter_out:
        with NdjsonSink(args.deadletter_out) as sink:
            sink.write(report.deadletter)
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    if not args.quiet:
        events = ", ".join(f"{n} {k}" for k, n in sorted(report.events.items())) or "no events"
        dead = sum(v for k, v in report.stats.items() if k.startswith("fusion.deadletter."))
        dups = report.stats.get("fusion.dedupe.duplicates", 0)
        print(f"{events}; {dead} dead-lettered, {dups} duplicate flow report(s) merged -> "
              f"{len(report.alerts)} alert(s) in {args.out}")
        reasons = {k[len("fusion.deadletter."):]: v for k, v in report.stats.items()
                   if k.startswith("fusion.deadletter.")}
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            print(f"  dead-letter {n:6d}  {reason}")
    return EXIT_INPUT if report.errors else EXIT_OK
