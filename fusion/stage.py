"""The fusion stage (embedded form): validate sensor batches against the schema.

Valid batches go on to `sa.events`; an invalid one goes to `sa.deadletter` with the reason,
and the stream goes on. Normalizing Suricata/Zeek input, de-duplication and enrichment
extend this stage (see the fusion issue).
"""

from __future__ import annotations

from collections import Counter

from pipeline.bus import TOPIC_DEADLETTER, TOPIC_EVENTS, TOPIC_SENSOR, InMemoryBus
from pipeline.schema import EventBatch, SchemaError, validate_batch


class FusionStage:
    def __init__(self, bus: InMemoryBus) -> None:
        self.bus = bus
        self.stats: Counter[str] = Counter()
        bus.subscribe(TOPIC_SENSOR, self.on_batch)

    def on_batch(self, batch: EventBatch) -> None:
        try:
            validate_batch(batch)
        except SchemaError as exc:
            self.stats[f"deadletter.{batch.kind}"] += 1
            self.bus.publish(
                TOPIC_DEADLETTER,
                {"stage": "fusion", "reason": str(exc), "kind": batch.kind, "rows": len(batch)},
            )
            return
        self.stats[f"events.{batch.kind}"] += len(batch)
        self.bus.publish(TOPIC_EVENTS, batch)
