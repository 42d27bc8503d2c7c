"""Correlation benchmark: the numpy engine vs its plain-Python twin on the same stream.

Generates the seeded mixed stream of bench/correlation_stream.py (flows, DNS, ARP; benign
traffic of a network scaled to the size, plus one planted attack of every kind the default
detectors find), runs the correlation engine with every default detector on (plus inline
threat-intel indicators) and bench/plain_detectors.py (dicts and loops) on it, asserts both
produce the same alerts (alert id, rule, key, window, severity and main evidence counts),
and prints events/s of each (median of --runs), their ratio, per-rule alert counts, which
planted attacks were found, and peak RSS. Exit status 1 when the alerts differ or a planted
attack is missed.

    python3 bench/correlation.py                      # 1,000,000 events, 3 runs each
    python3 bench/correlation.py --events 5000000 --runs 3 --plain-runs 1
    python3 bench/correlation.py --per-detector       # + each detector alone, both sides
    python3 bench/correlation.py --history-slice-s 0  # quiet hours packed into big batches

Timing covers push() of every batch and flush(): for the twin that includes turning the
columns into Python rows. The engine builds full ECS alert documents, the twin only the
compared fields (a few hundred alerts: negligible either way). One process, one core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.correlation_stream import Stream, bench_config, make_stream  # noqa: E402
from bench.plain_detectors import MAIN_COUNTS, PlainEngine  # noqa: E402
from bench.rss import current_rss_mb, peak_rss_mb  # noqa: E402
from correlation.engine import CorrelationEngine  # noqa: E402
from pipeline.config import deep_merge, load_config  # noqa: E402
from pipeline.schema import ns_to_iso  # noqa: E402


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0), so that a
    phase's peak is measured without the stream generator's own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def engine_record(doc: dict) -> dict:
    """The compared fields of an engine alert document."""
    evidence = doc["cirtsa"]["evidence"]
    counts = {}
    for name in MAIN_COUNTS.get(doc["rule"]["id"], ()):
        value = evidence.get(name)
        counts[name] = len(value) if isinstance(value, (list, dict)) else value
    return {"id": doc["event"]["id"], "rule": doc["rule"]["id"],
            "key": doc["cirtsa"]["alert"]["key"],
            "window_start": doc["cirtsa"]["alert"]["window"]["start"],
            "window_end": doc["cirtsa"]["alert"]["window"]["end"],
            "severity": doc["event"]["severity"], "counts": counts}


def plain_record(rec: dict) -> dict:
    out = dict(rec)
    out["window_start"] = ns_to_iso(rec["window_start"])
    out["window_end"] = ns_to_iso(rec["window_end"])
    return out


def _timed(engine, stream: Stream, record, cpu: list[float] | None = None
           ) -> tuple[float, list[dict], dict]:
    """Push every batch, then flush; (seconds, compared records of the alerts, stats).

    The process CPU seconds of the same span are appended to `cpu` when given: on the
    shared, noisy machine CPU time moves far less than wall time between runs."""
    start, start_cpu = time.perf_counter(), time.process_time()
    alerts = []
    for batch in stream.batches:
        alerts += engine.push(batch)
    alerts += engine.flush()
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return elapsed, [record(a) for a in alerts], dict(engine.stats)


def run_engine(stream: Stream, config: dict, cpu: list[float] | None = None
               ) -> tuple[float, list[dict], dict]:
    return _timed(CorrelationEngine(config), stream, engine_record, cpu)


def run_plain(stream: Stream, config: dict, cpu: list[float] | None = None
              ) -> tuple[float, list[dict], dict]:
    return _timed(PlainEngine(config), stream, plain_record, cpu)


def warm_up(stream: Stream, config: dict) -> float:
    """Seconds of one untimed engine run over the whole stream: compiles (or loads from the
    numba cache) every kernel the stream reaches and parses the config once, so no timed run
    pays for it. The whole stream, not its first batches: kernels first reached by a later
    batch (a close, an alert) compiled inside the first timed run when the cache was cold
    (10.2 s instead of 0.5 s on a new machine)."""
    start = time.perf_counter()
    engine = CorrelationEngine(config)
    for batch in stream.batches:
        engine.push(batch)
    engine.flush()
    return time.perf_counter() - start


def diff_alerts(engine: list[dict], plain: list[dict]) -> list[str]:
    """Human-readable differences (empty when the alert sets are identical)."""
    out = []
    by_id_e = {a["id"]: a for a in engine}
    by_id_p = {a["id"]: a for a in plain}
    if len(by_id_e) != len(engine):
        out.append(f"engine emitted duplicate alert ids ({len(engine) - len(by_id_e)})")
    if len(by_id_p) != len(plain):
        out.append(f"plain twin emitted duplicate alert ids ({len(plain) - len(by_id_p)})")
    for aid in sorted(by_id_e.keys() - by_id_p.keys()):
        a = by_id_e[aid]
        out.append(f"only engine: {a['rule']} {a['key']} {a['window_start']} {a['counts']}")
    for aid in sorted(by_id_p.keys() - by_id_e.keys()):
        a = by_id_p[aid]
        out.append(f"only plain:  {a['rule']} {a['key']} {a['window_start']} {a['counts']}")
    for aid in sorted(by_id_e.keys() & by_id_p.keys()):
        e, p = by_id_e[aid], by_id_p[aid]
        fields = [f for f in ("rule", "key", "window_start", "window_end", "severity", "counts")
                  if e[f] != p[f]]
        if fields:
            out.append(f"differs {e['rule']} {e['key']} {e['window_start']}: "
                       + "; ".join(f"{f} engine={e[f]} plain={p[f]}" for f in fields))
    return out


def planted_status(stream: Stream, alerts: list[dict]) -> list[tuple[str, str, str, bool]]:
    found = {(a["rule"], a["key"]) for a in alerts}
    return [(p.name, p.rule_id, p.key, (p.rule_id, p.key) in found) for p in stream.planted]


def per_detector(stream: Stream, config: dict) -> None:
    """Each enabled detector alone: engine and twin seconds (one run), and their ratio."""
    sections = deep_merge(dict(load_config()["correlation"]), config)["detectors"]
    names = [n for n, sec in sections.items() if sec.get("enabled", True)]
    print(f"\n{'detector alone (CPU)':24s}{'engine s':>10s}{'plain s':>10s}{'ratio':>8s}")
    for name in names:
        only = deep_merge(config, {"detectors": {n: {"enabled": n == name} for n in names}})
        e_cpu: list[float] = []
        p_cpu: list[float] = []
        run_engine(stream, only, e_cpu)
        run_plain(stream, only, p_cpu)
        print(f"{name:24s}{e_cpu[0]:10.2f}{p_cpu[0]:10.2f}{p_cpu[0] / e_cpu[0]:7.1f}x")
    print("(the twin's per-detector time includes converting every batch to rows)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="events in the stream")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of the numpy engine")
    ap.add_argument("--plain-runs", type=int, default=None,
                    help="timed runs of the plain twin (default: --runs)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch-rows", type=int, default=65_536)
    ap.add_argument("--per-detector", action="store_true",
                    help="also time each detector alone (engine and twin, one run each)")
    ap.add_argument("--history-slice-s", type=int, default=3600,
                    help="delivery slice of the flows-only history phase; 0: full batches "
                         "spanning many hours (a replayed quiet day)")
    args = ap.parse_args(argv)
    plain_runs = args.runs if args.plain_runs is None else args.plain_runs

    t = time.perf_counter()
    stream = make_stream(args.events, args.seed, args.batch_rows, args.history_slice_s)
    config = bench_config()
    gen_s = time.perf_counter() - t
    rss_stream = peak_rss_mb()
    rss_base = current_rss_mb()
    phase_peaks = reset_peak_rss()
    kinds = ", ".join(f"{k} {v:,}" for k, v in stream.counts.items())
    print(f"stream: {stream.events:,} events ({kinds}) in {len(stream.batches)} batches, "
          f"generated in {gen_s:.1f} s; "
          f"peak RSS after generation {rss_stream:.0f} MB")

    warm_s = warm_up(stream, config)
    engine_times, engine_cpu, engine_alerts, engine_stats = [], [], None, {}
    for _ in range(args.runs):
        elapsed, alerts, engine_stats = run_engine(stream, config, engine_cpu)
        engine_times.append(elapsed)
        ids = [a["id"] for a in alerts]
        if engine_alerts is not None and ids != [a["id"] for a in engine_alerts]:
            print("engine: alerts differ between runs", file=sys.stderr)
            return 1
        engine_alerts = alerts
    rss_engine = peak_rss_mb()
    phase_peaks = phase_peaks and reset_peak_rss()
    plain_times, plain_cpu, plain_alerts = [], [], None
    for _ in range(plain_runs):
        elapsed, alerts, plain_stats = run_plain(stream, config, plain_cpu)
        plain_times.append(elapsed)
        plain_alerts = alerts
    rss_end = peak_rss_mb()

    n = stream.events
    e_rate = n / statistics.median(engine_times)
    e_cpu = statistics.median(engine_cpu)
    print(f"\n{'':28s}{'median s':>10s}{'events/s':>14s}   runs (s)")
    print(f"{'numpy engine':28s}{statistics.median(engine_times):10.2f}{e_rate:14,.0f}   "
          + " ".join(f"{x:.2f}" for x in engine_times))
    print(f"{'numpy engine, CPU s':28s}{e_cpu:10.2f}{n / e_cpu:14,.0f}   "
          + " ".join(f"{x:.2f}" for x in engine_cpu))
    if plain_times:  # --plain-runs 0: engine figures only, nothing compared
        p_rate = n / statistics.median(plain_times)
        p_cpu = statistics.median(plain_cpu)
        print(f"{'plain-Python twin':28s}{statistics.median(plain_times):10.2f}"
              f"{p_rate:14,.0f}   " + " ".join(f"{x:.2f}" for x in plain_times))
        print(f"{'plain-Python twin, CPU s':28s}{p_cpu:10.2f}{n / p_cpu:14,.0f}   "
              + " ".join(f"{x:.2f}" for x in plain_cpu))
        print(f"{'ratio engine / plain':28s}{e_rate / p_rate:24.1f}x")
        print(f"{'ratio engine / plain (CPU)':28s}{p_cpu / e_cpu:24.1f}x")
    print(f"warm-up (kernel compile or cache load, config parse; not timed above): "
          f"{warm_s:.2f} s")
    if phase_peaks:
        print(f"RSS: {rss_base:.0f} MB with the stream in memory (generator peak "
              f"{rss_stream:.0f} MB); peak during the engine runs {rss_engine:.0f} MB "
              f"(+{rss_engine - rss_base:.0f} MB), during the plain runs {rss_end:.0f} MB "
              f"(+{rss_end - rss_base:.0f} MB)")
    else:
        print(f"peak RSS (whole process): {rss_stream:.0f} MB after generating the stream, "
              f"{rss_engine:.0f} MB after the engine runs, {rss_end:.0f} MB after the plain runs")
    print("engine stats: " + ", ".join(f"{k}={v:,}" for k, v in engine_stats.items()))

    compared = plain_alerts is not None
    if not compared:
        plain_alerts = engine_alerts  # not run: the table shows the engine's alerts twice
        print("\nplain twin not run (--plain-runs 0): alerts not compared")
    e_count = Counter(a["rule"] for a in engine_alerts)
    p_count = Counter(a["rule"] for a in plain_alerts)
    print(f"\n{'rule':34s}{'engine':>8s}{'plain':>8s}")
    for rule in sorted(e_count.keys() | p_count.keys()):
        print(f"{rule:34s}{e_count[rule]:8d}{p_count[rule]:8d}")
    print(f"{'total':34s}{len(engine_alerts):8d}{len(plain_alerts):8d}")

    status = planted_status(stream, engine_alerts)
    found = sum(s[3] for s in status)
    print(f"\nplanted attacks found by the engine: {found}/{len(status)}")
    for name, rule, key, ok in status:
        print(f"  {'found ' if ok else 'MISSED'}  {name:24s} {rule:30s} {key}")

    if args.per_detector:
        per_detector(stream, config)

    differences = diff_alerts(engine_alerts, plain_alerts) if compared else []
    if not compared:
        return 0 if found == len(status) else 1
    if differences:
        print(f"\nALERTS DIFFER ({len(differences)}):")
        for line in differences[:50]:
            print("  " + line)
        return 1
    print(f"\nsame alerts: {len(engine_alerts)} alerts identical in id, rule, key, window, "
          "severity and main evidence counts")
    return 0 if found == len(status) else 1


if __name__ == "__main__":
    sys.exit(main())
