"""The protocol-analyzer interface of the sensor, and loading analyzers from configuration.

An analyzer turns decoded packet batches into events of its own kind(s) (DNS, HTTP, TLS ...).
Which analyzers run is configuration (`sensor.analyzers`: name -> {analyzer: module:Class,
enabled, ...its own settings}), so a new protocol is a module plus a config section, with
no registry to edit; each component ships its section in pipeline/defaults.d/.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

from pipeline.config import load_class
from pipeline.schema import EventBatch
from sensors.packets import DecodedPackets


class Analyzer(ABC):
    """Base class: `process` each decoded batch, `flush` at end of input."""

    def __init__(self, config: Mapping, observer_name: str, ingress_zone: str) -> None:
        self.config = config
        self.observer_name = observer_name
        self.ingress_zone = ingress_zone
        self.stats: dict[str, int] = {}

    @abstractmethod
    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        """Events completed by this batch (may be none)."""

    def flush(self) -> list[EventBatch]:
        """End of input: events still held in per-flow state."""
        return []


def analyzer_class(name: str, section: Mapping) -> type[Analyzer]:
    """The class named by `sensor.analyzers.NAME.analyzer` ("sensors.module:Class")."""
    return load_class(f"sensor.analyzers.{name}.analyzer", section.get("analyzer"), "sensors",
                      Analyzer)


def build_analyzers(config: Mapping, observer_name: str, ingress_zone: str) -> list[Analyzer]:
    """One analyzer per enabled section of `config` (the `sensor.analyzers` mapping)."""
    return [
        analyzer_class(name, section)(section, observer_name, ingress_zone)
        for name, section in (config or {}).items()
        if section.get("enabled", True)
    ]
