"""The sensor stage: packet batches in, event batches (flows, DNS) out.

One `Sensor` per capture point (interface or file): it owns that point's flow table, so
flows never mix across segments. Every step is a transform on a whole batch.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from pipeline.schema import EventBatch
from sensors.decode import decode
from sensors.dns import dns_events
from sensors.flow_table import FlowTable
from sensors.packets import PacketBatch
from sensors.pcap_reader import CaptureDamage, CaptureReader


class Sensor:
    """Decode -> flow table + protocol parsers, for one capture point."""

    def __init__(self, config: dict) -> None:
        self.observer_name = str(config.get("id", "sensor-1"))
        self.ingress_zone = str(config.get("zone", "default"))
        self.flow_table = FlowTable(config["flow"], self.observer_name, self.ingress_zone)
        self.stats: Counter[str] = Counter()

    def process(self, batch: PacketBatch) -> list[EventBatch]:
        """Events completed by this batch of packets (flows that ended, DNS messages)."""
        decoded = decode(batch)
        self.stats["packets"] += len(decoded)
        self.stats["bytes"] += int(decoded.wirelen.sum(dtype="uint64"))
        for reason, count in decoded.weird.items():
            self.stats[f"weird.{reason}"] += count
        out: list[EventBatch] = []
        dns_stats: dict[str, int] = {}
        dns = dns_events(decoded, self.observer_name, self.ingress_zone, stats=dns_stats)
        self.stats.update(dns_stats)
        if dns is not None and len(dns):
            out.append(dns)
        flows = self.flow_table.update(decoded)
        if flows is not None and len(flows):
            out.append(flows)
        return out

    def flush(self) -> list[EventBatch]:
        """End of input: every flow still open."""
        flows = self.flow_table.flush()
        for key, value in self.flow_table.stats.items():
            self.stats[f"flow.{key}"] = value
        return [flows] if flows is not None and len(flows) else []


@dataclass
class CaptureResult:
    """What reading one capture file produced, for the CLI's report."""

    path: str
    packets: int = 0
    error: str | None = None  # the file could not be read at all (CaptureError)
    damage: CaptureDamage | None = None  # reading stopped early here
    warnings: list[str] = field(default_factory=list)


def capture_events(
    path: str | os.PathLike, config: dict, result: CaptureResult
) -> Iterator[tuple[int, list[EventBatch]]]:
    """Read one capture through a fresh Sensor.

    Yields (bytes of the file consumed so far, events) per packet batch, then the flush.
    Raises sensors.pcap_reader.CaptureError for an unusable file; damage is recorded in
    `result` and the events before it are still yielded.
    """
    sensor = Sensor(config)
    with CaptureReader(path, batch_packets=int(config.get("batch_packets", 65536))) as reader:
        for batch in reader.batches():
            consumed = int(batch.offset[-1] + batch.caplen[-1]) if len(batch) else 0
            yield consumed, sensor.process(batch)
        result.packets = reader.packets
        result.damage = reader.damage
        result.warnings.extend(reader.warnings)
    yield os.path.getsize(path), sensor.flush()
    result.warnings.extend(
        f"{path}: {count} packets with {key.removeprefix('weird.')}"
        for key, count in sorted(sensor.stats.items())
        if key.startswith("weird.") and count
    )
