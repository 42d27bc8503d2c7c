# ruff: noqa: E402
"""The fusion stage alone (issue #7): validation + dedupe + constituency LPM (100k prefixes)
+ IOC tagging (1M indicators) on batches already converted, A/B against a reference
revision's fusion/dedupe.py, fusion/enrich.py and pipeline/intel.py (loaded from git into
the same process, so both run on the same inputs under the same load).

1. Suricata EVE batches (bench/fusion.py's lines through EveAdapter: 4,096-row flow and dns
   batches, flow start times spread over an hour): stage us/line, ours vs reference, and the
   JSON anchor of bench/fusion.py (json.loads + same-fields dict mapping) in the same run;
2. our own sensor's flow batches (65,536 rows): events/s, ours vs reference;
3. the parts (dedupe, LPM, IOC address match, IOC domain match), ours vs reference.
CPU time (time.process_time), medians of RUNS runs, pinned to one core; the compiled
kernels are warmed up (and their first-call cost printed) before timing.
Usage: python3 bench/bench_fusion_stage.py [--runs 5] [--ref HEAD]
  (--ref: a git revision holding the code to compare with; the lead's commit of this work
  makes HEAD equal to the working tree: pass the commit before it.)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path = [_ROOT] + [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np

from fusion import dedupe
from fusion.adapters import EveAdapter
from fusion.stage import FusionStage
from pipeline.bus import InMemoryBus


def _module(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _reference(rev: str, tmp: str) -> dict:
    """fusion.dedupe, fusion.enrich and pipeline.intel of git revision `rev`, as modules
    (the reference enrich module uses the reference intel module's IndicatorSet)."""
    out = {}
    for key, path in (("intel", "pipeline/intel.py"), ("dedupe", "fusion/dedupe.py"),
                      ("enrich", "fusion/enrich.py")):
        text = subprocess.run(["git", "-C", _ROOT, "show", f"{rev}:{path}"], check=True,
                              capture_output=True, text=True).stdout
        file = os.path.join(tmp, f"ref_{key}.py")
        with open(file, "w", encoding="utf-8") as fh:
            fh.write(text)
        out[key] = _module(f"ref_{key}", file)
    return out


def _median_cpu(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ref", default="HEAD")
    ap.add_argument("--indicators", type=int, default=1_000_000)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    fb = _module("bench_fusion", os.path.join(_HERE, "fusion.py"))
    with tempfile.TemporaryDirectory() as tmp:
        ref = _reference(args.ref, tmp)
    ours_enricher = fb._prefix_table(random.Random(0))
    ours_intel = fb._indicators(random.Random(3), args.indicators)
    ref_enricher = ref["enrich"].Enricher(*_table_rows())
    ref_intel = ref["intel"].IndicatorSet(
        [ref["intel"].Indicator(i.type, i.value, i.source) for i in ours_intel.indicators])
    ours_enricher.intel, ref_enricher.intel = ours_intel, ref_intel

    lines = fb._eve_lines(200_000)
    results = [EveAdapter().convert(lines[i:i + 8192]) for i in range(0, len(lines), 8192)]
    eve = [b for r in results for b in r.batches]
    sensor = fb._flow_batches(np.random.default_rng(1), 1_000_000, 65_536)

    def stage(which: str) -> FusionStage:
        if which == "ours":
            return FusionStage(InMemoryBus(), enricher=ours_enricher)
        s = FusionStage(InMemoryBus(), enricher=ref_enricher)
        s.dedupe = ref["dedupe"].FlowDeduplicator()
        return s

    def run_eve(which: str) -> None:
        s = stage(which)
        for r in results:
            s.on_external(r)

    def run_sensor(which: str) -> None:
        s = stage(which)
        for b in sensor:
            s.on_batch(b)

    t = time.process_time()
    run_eve("ours")
    run_sensor("ours")
    print(f"warm-up (first calls incl. loading/compiling the kernels): "
          f"{time.process_time() - t:.2f} s CPU")
    run_eve("ref")
    # identical results: every published batch's columns and side structure
    for batches_in, feed in ((results, "on_external"), (sensor, "on_batch")):
        outs = {}
        for which in ("ours", "ref"):
            bus = InMemoryBus()
            got = []
            bus.subscribe("sa.events", got.append)
            s = FusionStage(bus, enricher=ours_enricher if which == "ours" else ref_enricher)
            if which == "ref":
                s.dedupe = ref["dedupe"].FlowDeduplicator()
            for x in batches_in:
                getattr(s, feed)(x)
            outs[which] = (got, dict(s.stats))
        _same(outs["ours"], outs["ref"])
    print("outputs identical to the reference (every column, enrichment array, IOC hit, "
          "stats)")

    n_eve = len(lines)
    ours, refr, anchor = [], [], []
    for _ in range(args.runs):  # interleaved
        ours.append(_median_cpu(lambda: run_eve("ours"), 1) * 1e6 / n_eve)
        refr.append(_median_cpu(lambda: run_eve("ref"), 1) * 1e6 / n_eve)
        anchor.append(_median_cpu(lambda: fb._plain_loop_same_fields(lines), 1) * 1e6 / n_eve)
    o, r, a = (statistics.median(x) for x in (ours, refr, anchor))
    print(f"EVE batches (flow + dns, 4,096 rows), fusion stage: ours {o:.2f} us/line, "
          f"reference {r:.2f} us/line ({r / o:.2f}x faster); anchor json.loads + same-fields "
          f"mapping {a:.2f} us/line: stage = {o / a * 100:.1f} % of the anchor, "
          f"{o / (a / 3) * 100:.0f} % of the 3x budget ({a / 3:.2f} us/line)")
    ours, refr = [], []
    for _ in range(args.runs):
        ours.append(1e6 / _median_cpu(lambda: run_sensor("ours"), 1))
        refr.append(1e6 / _median_cpu(lambda: run_sensor("ref"), 1))
    o, r = statistics.median(ours), statistics.median(refr)
    print(f"sensor flow batches (65,536 rows): ours {o:,.0f} events/s, reference {r:,.0f} "
          f"({o / r:.2f}x); target 1,000,000: {o / 1e6:.2f}x")

    flows = [b for b in eve if b.kind == "flow"]
    dns = [b for b in eve if b.kind == "dns"]
    parts = {
        "dedupe, EVE flow batches": (
            flows, lambda m, bs: _each(bs, m["dedupe"].FlowDeduplicator().filter_updates)),
        "dedupe, sensor flow batches": (
            sensor, lambda m, bs: _each(bs, m["dedupe"].FlowDeduplicator().filter_updates)),
        "constituency LPM src+dst, EVE": (
            eve, lambda m, bs: [m["enricher"].table.lookup(b.columns[c]) for b in bs
                                for c in ("src_ip", "dst_ip")]),
        "IOC address match src+dst, EVE": (
            eve, lambda m, bs: [m["intel"].match_ips(b.columns[c]) for b in bs
                                for c in ("src_ip", "dst_ip")]),
        "IOC domain match, EVE dns": (
            dns, lambda m, bs: [m["intel"].match_domains(b.columns["qname"]) for b in bs]),
    }
    mods = {"ours": {"dedupe": dedupe, "enricher": ours_enricher, "intel": ours_intel},
            "ref": {"dedupe": ref["dedupe"], "enricher": ref_enricher, "intel": ref_intel}}
    print("parts, ns/row (ours vs reference):")
    for name, (bs, fn) in parts.items():
        rows = sum(map(len, bs))
        got = {k: [] for k in mods}
        for _ in range(args.runs):
            for k, m in mods.items():
                got[k].append(_median_cpu(lambda m=m, fn=fn, bs=bs: fn(m, bs), 1) * 1e9 / rows)
        o, r = statistics.median(got["ours"]), statistics.median(got["ref"])
        print(f"  {name}: {o:.0f} vs {r:.0f} ({r / o:.2f}x)")


def _each(batches, fn) -> None:
    for b in batches:
        fn(b)


def _table_rows() -> tuple[list[str], list]:
    """bench/fusion.py's 100k-prefix table as (prefixes, owners) for the reference class."""
    rng = random.Random(0)
    n = 100_000
    prefixes = [f"{rng.getrandbits(8) or 1}.{rng.getrandbits(8)}.{rng.getrandbits(8)}.0/24"
                for _ in range(n // 2)]
    prefixes += [f"2001:db8:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::/64"
                 for _ in range(n // 4)]
    prefixes += [f"{rng.getrandbits(8) or 1}.{rng.getrandbits(8)}.0.0/"
                 f"{rng.choice([12, 16, 20])}" for _ in range(n - len(prefixes))]
    owners = [sys.modules["ref_enrich"].Constituency(f"c{i % 500}", f"s{i % 20}", f"o{i % 500}")
              for i in range(n)]
    return prefixes, owners


def _same(a, b) -> None:
    (got_a, stats_a), (got_b, stats_b) = a, b
    assert stats_a == stats_b, (stats_a, stats_b)
    assert len(got_a) == len(got_b)
    for x, y in zip(got_a, got_b, strict=True):
        assert x.kind == y.kind and x.columns.keys() == y.columns.keys()
        for k in x.columns:
            assert np.array_equal(x.columns[k], y.columns[k]), k
        ex, ey = x.fusion.enrichment, y.fusion.enrichment
        assert x.fusion.observers == y.fusion.observers
        for f in ("src", "dst", "direction"):
            assert np.array_equal(getattr(ex, f), getattr(ey, f)), f
        assert (ex.threat is None) == (ey.threat is None)
        if ex.threat is not None:
            assert np.array_equal(ex.threat.rows, ey.threat.rows)
            assert ex.threat.columns == ey.threat.columns
            assert np.array_equal(ex.threat.indicators, ey.threat.indicators)


if __name__ == "__main__":
    main()
