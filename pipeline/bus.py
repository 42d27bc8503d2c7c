"""The in-memory bus: the embedded (single-process, no servers) stand-in for Kafka.

Topics carry the same items as their Kafka namesakes (DESIGN.md §2): event batches on
`sa.sensor` and `sa.events`, ECS alert dicts on `sa.alerts`, dead-letter records on
`sa.deadletter`. Delivery is synchronous and in publish order, so an embedded run is
deterministic.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

TOPIC_SENSOR = "sa.sensor"
TOPIC_EVENTS = "sa.events"
TOPIC_ALERTS = "sa.alerts"
TOPIC_DEADLETTER = "sa.deadletter"

Handler = Callable[[Any], None]


class InMemoryBus:
    def __init__(self) -> None:
        self._handlers: defaultdict[str, list[Handler]] = defaultdict(list)
        self.published: Counter[str] = Counter()

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers[topic].append(handler)

    def publish(self, topic: str, item: Any) -> None:
        self.published[topic] += 1
        for handler in self._handlers[topic]:
            handler(item)
