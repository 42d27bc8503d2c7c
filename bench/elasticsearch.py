"""Alerts/s indexed by ElasticsearchSink vs the client's plain `helpers.bulk`, same documents
shape, same osmem-server process, same run; medians of several runs.

    python bench/elasticsearch.py [--alerts 2000] [--runs 5] [--chunk 500]

Each run writes a fresh set of alert ids (a re-write would only measure 409 duplicates) and
the two writers alternate first place so warm-up favours neither. The sink's overhead is
what it adds over a bare bulk: id extraction, per-item accounting, require_alias.
Target: overhead <= 10 %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This file is named like the client package: keep its folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from elasticsearch.helpers import bulk  # noqa: E402
from es_fixtures import OsmemProcess, es_client, make_alerts  # noqa: E402

from correlation.es_setup import ALERTS_ALIAS, setup  # noqa: E402
from correlation.es_sink import ElasticsearchSink  # noqa: E402


def run_sink(client, alerts: list[dict], chunk: int) -> tuple[float, float]:
    sink = ElasticsearchSink(client, chunk_size=chunk)
    started, cpu = time.perf_counter(), time.process_time()
    result = sink.write(alerts)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert result.created == len(alerts), result
    return len(alerts) / elapsed, cpu * 1e6 / len(alerts)


def run_plain_bulk(client, alerts: list[dict], chunk: int) -> float:
    actions = ({"_op_type": "create", "_index": ALERTS_ALIAS, "_id": a["event"]["id"],
                "_source": a} for a in alerts)
    started, cpu = time.perf_counter(), time.process_time()
    ok, errors = bulk(client, actions, chunk_size=chunk)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert ok == len(alerts) and not errors
    return len(alerts) / elapsed, cpu * 1e6 / len(alerts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=500)
    args = parser.parse_args(argv)

    server = OsmemProcess().start()
    try:
        client = es_client(server.url, request_timeout=60)
        setup(client)
        rates: dict[str, list[float]] = {"ElasticsearchSink.write": [], "helpers.bulk": []}
        cpu_us: dict[str, list[float]] = {name: [] for name in rates}
        writers = {"ElasticsearchSink.write": run_sink, "helpers.bulk": run_plain_bulk}
        for run in range(args.runs):
            order = list(writers) if run % 2 == 0 else list(reversed(writers))
            for name in order:
                alerts = make_alerts(args.alerts, run=f"{name}-{run}")
                rate, cpu = writers[name](client, alerts, args.chunk)
                rates[name].append(rate)
                cpu_us[name].append(cpu)
        client.indices.refresh(index=ALERTS_ALIAS)
        total = client.count(index=ALERTS_ALIAS)["count"]
        assert total == 2 * args.runs * args.alerts, total
    finally:
        server.kill()

    medians = {name: statistics.median(r) for name, r in rates.items()}
    print(f"osmem-server, {args.alerts} alerts x {args.runs} runs, chunk {args.chunk}")
    print(f"{'writer':<26}{'median alerts/s':>16}{'min':>10}{'max':>10}"
          f"{'client CPU us/alert':>22}")
    for name, r in rates.items():
        print(f"{name:<26}{medians[name]:>16,.0f}{min(r):>10,.0f}{max(r):>10,.0f}"
              f"{statistics.median(cpu_us[name]):>22,.1f}")
    sink, plain = medians["ElasticsearchSink.write"], medians["helpers.bulk"]
    overhead = plain / sink - 1.0
    print(f"overhead of the sink vs helpers.bulk (time per alert): {overhead:+.1%} "
          f"(target <= +10%: {'met' if overhead <= 0.10 else 'NOT met'})")
    cpu_ratio = (statistics.median(cpu_us["ElasticsearchSink.write"])
                 / statistics.median(cpu_us["helpers.bulk"]) - 1.0)
    print(f"client-side CPU overhead of the sink (server excluded): {cpu_ratio:+.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
