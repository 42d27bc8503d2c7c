"""The fusion stage: one picture from our sensors and the CIRT's Suricata and Zeek sensors.

Input: our sensor batches on `sa.sensor` (in-process EventBatches, or wire-encoded bytes
from Kafka), and external records converted by fusion.adapters (Suricata EVE, Zeek).
Transform: validate (our batches as whole batches; external input row by row, so one bad
row never loses its batch), de-duplicate flows seen by several sensors, enrich with
constituency and direction and tag indicator-of-compromise hits (a side structure, see
fusion.enrich; the indicator set is by default the one of correlation's intel_match).
Output: `sa.events` (EventBatch) and `sa.deadletter` (reason + original), counts in `stats`.

The stage is synchronous and holds nothing back: every input batch's outputs are published
before `on_batch` returns, so a Kafka service can feed it a batch and collect the outputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion.adapters import AdapterResult
from fusion.columns import Bounds
from fusion.dedupe import FlowDeduplicator
from fusion.enrich import Constituency, Enricher, Enrichment, enrich_docs
from pipeline.bus import TOPIC_DEADLETTER, TOPIC_EVENTS, TOPIC_SENSOR, InMemoryBus
from pipeline.intel import IndicatorSet
from pipeline.schema import (
    EventBatch,
    SchemaError,
    batch_to_ecs,
    observer_update_rows,
    validate_batch,
)

UNSPECIFIED_IP = "::"


def fusion_settings(config: Mapping | None) -> dict:
    """The `fusion` section of a full config (or the section itself), with defaults."""
    config = dict(config or {})
    if "fusion" in config:
        return dict(config["fusion"] or {})
    if "sensor" in config or "correlation" in config:  # a full config without a fusion part
        return {}
    return config


def bounds_from(settings: Mapping) -> Bounds:
    v = settings.get("validate") or {}
    b = Bounds()
    if v.get("min_time"):
        b.min_time_ns = int(np.datetime64(str(v["min_time"]), "ns").astype(np.int64))
    if v.get("max_time"):
        b.max_time_ns = int(np.datetime64(str(v["max_time"]), "ns").astype(np.int64))
    return b


def intel_sources(config: Mapping | None) -> tuple[list, list]:
    """(sources with resolved paths, inline indicators) fusion tags events with.

    `fusion.intel.shared` (default true) takes correlation's set
    (`correlation.detectors.intel_match.sources/indicators/base_dir`, whether or not that
    detector is enabled), so both stages see one set of indicators; `fusion.intel.sources` /
    `indicators` add to it (relative paths against `fusion.intel.base_dir`, else the shared
    base_dir). `shared: false` uses fusion's own entries only."""
    config = dict(config or {})
    own = dict(fusion_settings(config).get("intel") or {})
    if not own.get("enabled", True):
        return [], []
    shared = {}
    if own.get("shared", True):
        shared = dict(((config.get("correlation") or {}).get("detectors") or {})
                      .get("intel_match") or {})
    shared_base = shared.get("base_dir")
    own_base = own.get("base_dir") or shared_base
    sources = []
    for spec in list(shared.get("sources") or []):
        sources.append(_resolved(spec, shared_base))
    for spec in list(own.get("sources") or []):
        sources.append(_resolved(spec, own_base))
    inline = list(shared.get("indicators") or []) + list(own.get("indicators") or [])
    return sources, inline


def _resolved(spec: Mapping, base_dir: str | None) -> dict:
    spec = dict(spec)
    if base_dir and spec.get("path") and not Path(spec["path"]).is_absolute():
        spec["path"] = str(Path(base_dir) / spec["path"])
    return spec


def load_intel(config: Mapping | None) -> IndicatorSet | None:
    """The indicator set of `intel_sources(config)`, None when there is none. Loaded once
    per stage (1M indicators take tens of seconds), never per batch."""
    sources, inline = intel_sources(config)
    if not sources and not inline:
        return None
    intel = IndicatorSet.from_config(sources, inline)
    return intel if len(intel) else None


@dataclass
class FusionSide:
    """What fusion knows about a published batch beyond its columns (not on the wire)."""

    enrichment: Enrichment | None
    observers: dict[int, list[str]]
    # what the enrichment's constituency indices mean (the stage's table when it was made)
    constituencies: Sequence[Constituency] = ()


class FusionStage:
    def __init__(self, bus: InMemoryBus, config: Mapping | None = None,
                 enricher: Enricher | None = None, intel: IndicatorSet | None = None) -> None:
        """`intel`: an indicator set already loaded (e.g. the correlation's), else it is
        loaded from `config` (see intel_sources); given to the enricher unless that has
        its own."""
        self.bus = bus
        self.settings = fusion_settings(config)
        self.stats: Counter[str] = Counter()
        dd = self.settings.get("dedupe") or {}
        self.dedupe = FlowDeduplicator(
            float(dd.get("tolerance_s", 5.0)), float(dd.get("retention_s", 600.0)),
            int(dd.get("max_keys", 5_000_000))) if dd.get("enabled", True) else None
        if enricher is None and self.settings.get("constituencies"):
            enricher = Enricher.from_file(self.settings["constituencies"])
        if intel is None and (enricher is None or enricher.intel is None):
            intel = load_intel(config)
        if intel is not None and len(intel):
            if enricher is None:
                enricher = Enricher([], [], intel=intel)
            elif enricher.intel is None:
                enricher.intel = intel
        self.enricher = enricher
        self.bounds = bounds_from(self.settings)
        late = str(dd.get("late_observers", "drop"))
        if late not in ("drop", "update"):
            raise ValueError(f"fusion.dedupe.late_observers: {late!r}, expected drop or update")
        self.late_observer_updates = late == "update"
        bus.subscribe(TOPIC_SENSOR, self.on_batch)

    # --- inputs -------------------------------------------------------------------------------

    def on_batch(self, batch: EventBatch) -> None:
        """Our own sensor's batch: checked as a batch (the sensor builds whole columns, so a
        failure is a bug or a damaged message, not one bad row)."""
        try:
            validate_batch(batch)
        except SchemaError as exc:
            self.stats[f"deadletter.{batch.kind}"] += 1
            self.bus.publish(
                TOPIC_DEADLETTER,
                {"stage": "fusion", "reason": str(exc), "kind": batch.kind, "rows": len(batch)},
            )
            return
        self._emit(batch)

    def on_wire(self, data: bytes) -> None:
        """A wire-encoded batch from Kafka (pipeline.wire); damaged -> dead letter."""
        from pipeline.wire import WireError, decode

        try:
            batch = decode(data)
        except WireError as exc:
            self.stats["deadletter.wire"] += 1
            self.bus.publish(TOPIC_DEADLETTER, {"stage": "fusion", "reason": str(exc),
                                                "kind": None, "bytes": len(data)})
            return
        self.on_batch(batch)

    def on_external(self, result: AdapterResult) -> None:
        """Converted Suricata/Zeek records: rows were validated one by one by the adapter."""
        self.stats["records.external"] += result.records
        for reason, n in result.reasons.items():
            self.stats[f"deadletter.{reason}"] += n
        for key, n in result.unmapped.items():
            self.stats[f"unmapped.{key}"] += n
        for record in result.deadletter:
            self.bus.publish(TOPIC_DEADLETTER, record)
        for batch in result.batches:
            self._emit(batch)

    # --- transform ----------------------------------------------------------------------------

    def _emit(self, batch: EventBatch) -> None:
        observers: dict[int, list[str]] = {}
        updates = None
        if self.dedupe is not None and batch.kind == "flow":
            batch, observers, updates = self.dedupe.filter_updates(batch)
            self.stats["dedupe.duplicates"] = self.dedupe.stats["duplicates"]
            if updates is not None:
                self.stats["dedupe.late_observers"] += len(updates)
        if len(batch):
            self._publish(batch, observers)
        if updates is not None and self.late_observer_updates:
            # other sensors' reports of flows published earlier: they carry the full
            # observer list to Kafka consumers (pipeline.schema.observer_update_rows)
            self.stats["dedupe.late_observer_updates"] += len(updates)
            self._publish(updates, {})

    def _publish(self, batch: EventBatch, observers: dict[int, list[str]]) -> None:
        enrichment = self.enricher.enrich(batch) if self.enricher is not None else None
        if enrichment is not None and enrichment.threat is not None:
            self.stats["intel.events"] += enrichment.threat.tagged_rows
            self.stats["intel.hits"] += len(enrichment.threat.columns)
        batch.fusion = FusionSide(enrichment, observers,  # side structure, not a column
                                  self.constituencies)
        self.stats[f"events.{batch.kind}"] += len(batch)
        self.bus.publish(TOPIC_EVENTS, batch)

    @property
    def constituencies(self) -> list[Constituency]:
        return self.enricher.constituencies if self.enricher is not None else []


def fusion_docs(batch: EventBatch) -> list[dict]:
    """ECS documents of a published batch, with fusion's side fields (direction,
    constituency from the publishing stage's table, observers of de-duplicated flows,
    threat.enrichments of IOC hits). Late observer update rows (fusion.dedupe.late_observers:
    update) re-report a flow whose document was written before: they get no document."""
    updates = observer_update_rows(batch)
    if updates.any():
        if updates.all():
            return []
        batch = batch.take(~updates)  # (the stage publishes updates as batches of their own)
    docs = batch_to_ecs(batch)
    side: FusionSide | None = getattr(batch, "fusion", None)
    if side is not None:
        if side.enrichment is None:
            for i, names in side.observers.items():
                docs[i].setdefault("cirtsa", {})["observers"] = {"name": list(names)}
        else:
            side.enrichment.observers = side.observers
            enrich_docs(docs, side.enrichment, side.constituencies, batch)
    if batch.kind == "ids_alert":  # notices without a destination: '::' placeholder
        for doc in docs:
            if doc.get("destination", {}).get("ip") == UNSPECIFIED_IP:
                doc.pop("destination")
                doc["related"]["ip"] = [ip for ip in doc["related"]["ip"]
                                        if ip != UNSPECIFIED_IP]
    return docs
