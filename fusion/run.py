"""`run_ingest`: external sensor logs (and optionally our own captures) through the same
stages as `replay` — fusion -> correlation on the in-memory bus.

Sources are read in chunks and merged by event time (the chunk whose first event is the
oldest goes next), so reports of one connection by different sensors meet in the
de-duplication window whatever order the files were named in.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from fusion.adapters import AdapterResult, EveAdapter, ZeekAdapter
from fusion.sources import eve_file, follow_lines, zeek_file, zeek_log_type, zeek_paths
from fusion.stage import FusionStage, bounds_from, fusion_settings
from pipeline.bus import InMemoryBus
from pipeline.embedded import connect_stages, publish_alerts
from pipeline.schema import EventBatch


@dataclass
class IngestReport:
    events: Counter[str] = field(default_factory=Counter)  # by kind
    alerts: list[dict] = field(default_factory=list)
    deadletter: list[dict] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # unreadable inputs

    @property
    def input_errors(self) -> bool:
        return bool(self.errors)


Item = tuple[str, object]  # ("external", AdapterResult) | ("sensor", EventBatch)


def _first_time(item: Item) -> int:
    kind, payload = item
    batches = payload.batches if kind == "external" else [payload]
    times = [int(b.columns["timestamp"].min()) for b in batches if len(b)]
    return min(times) if times else 0


def _guarded(path: str, items: Iterator[Item], errors: list[str]) -> Iterator[Item]:
    try:
        yield from items
    except OSError as exc:
        errors.append(f"{path}: cannot read: {exc.strerror or exc}")
    except (EOFError, UnicodeDecodeError, ValueError) as exc:  # truncated gzip, bad header
        errors.append(f"{path}: {exc}")


def _external(results: Iterator[AdapterResult]) -> Iterator[Item]:
    for r in results:
        yield ("external", r)


def _sensor(path: str, sensor_config: dict) -> Iterator[Item]:
    from sensors.sensor import CaptureResult, capture_events

    result = CaptureResult(path=path)
    for _consumed, batches in capture_events(path, sensor_config, result):
        for b in batches:
            yield ("sensor", b)
    if result.error or result.damage:
        raise ValueError(result.error or result.damage)


def run_ingest(
    config: dict,
    suricata: Sequence[str | os.PathLike] = (),
    zeek: Sequence[str | os.PathLike] = (),
    pcaps: Sequence[str | os.PathLike] = (),
    on_events: Callable[[EventBatch], None] | None = None,
    correlate: bool = True,
    follow: bool = False,
    stop: Callable[[], bool] | None = None,
) -> IngestReport:
    """Suricata EVE files, Zeek logs (files or directories) and captures -> fusion ->
    correlation. Alerts and dead letters are collected in the report; published event
    batches also go to `on_events`. With `follow`, the EVE and Zeek JSON files are tailed
    until `stop()` returns True (then everything is flushed)."""
    report = IngestReport()
    bus = InMemoryBus()
    fusion = FusionStage(bus, config)
    settings = fusion_settings(config)
    ingest = settings.get("ingest") or {}
    bounds = bounds_from(settings)
    zone = (config.get("sensor") or {}).get("zone", "default")
    eve = EveAdapter(bounds, str(ingest.get("suricata_observer", "suricata")), zone)
    zeek_adapter = ZeekAdapter(bounds, str(ingest.get("zeek_observer", "zeek")), zone)
    engine = connect_stages(bus, report, config, on_events, correlate)

    def feed(item: Item) -> None:
        kind, payload = item
        if kind == "sensor":
            fusion.on_batch(payload)
        else:
            fusion.on_external(payload)

    zeek_files = [f for p in zeek for f in zeek_paths(p)]
    for path in [*map(os.fspath, suricata), *zeek_files, *map(os.fspath, pcaps)]:
        if not os.path.exists(path):
            report.errors.append(f"{path}: no such file")
    if follow:
        _follow(feed, suricata, zeek_files, eve, zeek_adapter, stop or (lambda: True))
    else:
        streams = [_guarded(p, _external(eve_file(p, eve)), report.errors)
                   for p in map(os.fspath, suricata) if os.path.exists(p)]
        # x509/files logs first, whole, so ssl records find their certificates' SHA1
        certs = [f for f in zeek_files if zeek_log_type(f) in ("x509", "files")]
        for f in certs:
            for item in _guarded(f, _external(zeek_file(f, zeek_adapter)), report.errors):
                feed(item)
        streams += [_guarded(f, _external(zeek_file(f, zeek_adapter)), report.errors)
                    for f in zeek_files if f not in certs and os.path.exists(f)]
        streams += [_guarded(p, _sensor(p, config["sensor"]), report.errors)
                    for p in map(os.fspath, pcaps) if os.path.exists(p)]
        counter = itertools.count()  # tie-breaker: never compare payloads
        keyed = [((_first_time(it), next(counter), it) for it in s) for s in streams]
        for _t, _n, item in heapq.merge(*keyed):
            feed(item)
    if engine is not None:
        publish_alerts(bus, engine.flush())
        report.stats.update(engine.stats)
    report.stats.update({f"fusion.{k}": v for k, v in fusion.stats.items()})
    report.fusion = fusion  # for writers that need the constituency table
    return report


def _follow(feed, suricata, zeek_files, eve: EveAdapter, zeek: ZeekAdapter,
            stop: Callable[[], bool]) -> None:
    """Tail every JSON input; one thread-free round-robin over the tails."""
    tails = [(follow_lines(p, stop), lambda chunk: eve.convert(chunk)) for p in suricata]
    for f in zeek_files:
        log = zeek_log_type(f)
        tails.append((follow_lines(f, stop), lambda chunk, log=log: zeek.convert(chunk, log)))
    while tails:
        alive = []
        for lines, convert in tails:
            chunk = next(lines, None)
            if chunk is not None:
                feed(("external", convert(chunk)))
                alive.append((lines, convert))
        tails = alive
