"""The sensor stage: packet batches in, event batches (flows, DNS) out.

One `Sensor` per capture point (interface or file): it owns that point's flow table, so
flows never mix across segments. Every step is a transform on a whole batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pipeline.heap import freeze_startup_heap
from pipeline.schema import EventBatch
from sensors.analyzer import build_analyzers
from sensors.decode import TunnelConfig, decode
from sensors.defrag import DefragConfig, Defragmenter
from sensors.flow_table import FlowTable
from sensors.packets import DecodedPackets, PacketBatch, Tunnel, keyed_vlan
from sensors.pcap_reader import CaptureDamage, CaptureReader


class Sensor:
    """Decode -> flow table + the configured protocol analyzers, for one capture point."""

    def __init__(self, config: dict) -> None:
        self.observer_name = str(config.get("id", "sensor-1"))
        self.ingress_zone = str(config.get("zone", "default"))
        self.flow_table = FlowTable(config["flow"], self.observer_name, self.ingress_zone)
        self.analyzers = build_analyzers(config.get("analyzers") or {}, self.observer_name,
                                         self.ingress_zone)
        self.tunnels = TunnelConfig.from_config(config.get("tunnels"))
        self.defrag = Defragmenter(DefragConfig.from_config(config.get("defrag")), self.tunnels)
        self.stats: Counter[str] = Counter()

    def tunnel_counts(self) -> dict[str, int]:
        """Packets decapsulated so far, by the kind of their outermost tunnel ("vxlan" ...)."""
        return {k.removeprefix("tunnel."): v for k, v in self.stats.items()
                if k.startswith("tunnel.")}

    def defrag_counts(self) -> dict[str, int]:
        """IP fragment reassembly so far: datagrams, fragments, timeouts, evicted, overlaps."""
        return self.defrag.counts()

    def process(self, batch: PacketBatch) -> list[EventBatch]:
        """Events completed by this batch of packets (flows that ended, DNS messages)."""
        decoded = decode(batch, self.tunnels)
        self._count(decoded)
        # fragments: hidden from the analyzers, which get each reassembled datagram once,
        # after the batch's other rows; the flow table counts every fragment on the wire
        analyzed, counted, datagrams = self.defrag.process(decoded)
        for reason, count in self.defrag.weird.items():
            self.stats[f"weird.{reason}"] += count
        self.defrag.weird.clear()
        out: list[EventBatch] = []
        for packets in (analyzed, *datagrams):
            packets = _segment_keyed(packets)
            for analyzer in self.analyzers:
                out.extend(analyzer.process(packets))
        flows = self.flow_table.update(counted)
        if flows is not None and len(flows):
            out.append(flows)
        freeze_startup_heap()  # kernels are loaded now (see pipeline/heap.py)
        return out

    def _count(self, decoded: DecodedPackets) -> None:
        """Packets, bytes, weirds and decapsulated tunnel packets of a decoded batch."""
        self.stats["packets"] += len(decoded)
        self.stats["bytes"] += int(decoded.wirelen.sum(dtype="uint64"))
        for reason, count in decoded.weird.items():
            self.stats[f"weird.{reason}"] += count
        if decoded.tunnel.any():  # one pass over a byte column when there are none
            for code, count in enumerate(np.bincount(decoded.tunnel)):
                if code and count:
                    self.stats[f"tunnel.{Tunnel(code).label}"] += int(count)

    def flush(self) -> list[EventBatch]:
        """End of input: every flow still open, and what analyzers still hold (all of
        flush_chunks at once)."""
        return [batch for piece in self.flush_chunks() for batch in piece]

    def flush_chunks(self) -> Iterator[list[EventBatch]]:
        """End of input, in pieces: what the analyzers still hold, then every flow still
        open, a chunk at a time, so that a consumer passing each piece on never
        holds a full flow table and all its records at once (the peak of a flood)."""
        out: list[EventBatch] = []
        for analyzer in self.analyzers:
            out.extend(analyzer.flush())
        # later IP fragments whose first fragment never came: counted now, as ports-0 packets
        late = self.defrag.flush()
        if late is not None:
            flows = self.flow_table.update(late)
            if flows is not None and len(flows):
                out.append(flows)
        yield out
        for flows in self.flow_table.flush_chunks():
            yield [flows]
        for key, value in self.flow_table.stats.items():
            self.stats[f"flow.{key}"] = value
        for analyzer in self.analyzers:
            for key, value in analyzer.stats.items():
                self.stats[key] = value
        if self.defrag.stats:  # (only sensors that met fragments list them)
            for key, value in self.defrag.counts().items():
                self.stats[f"defrag.{key}"] = value


def _segment_keyed(packets: DecodedPackets) -> DecodedPackets:
    """The analyzers' view of a batch: with tunnelled rows, `vlan` also carries each row's
    tunnel segment (packets.keyed_vlan), so that every analyzer keying connections by the
    VLAN (TCP streams: HTTP, TLS, SSH, logins; QUIC) keeps two segments apart, and emits
    the VLAN id alone (packets.plain_vlan). A batch without tunnels is passed as it is."""
    if not packets.tunnel.any():
        return packets
    return dataclasses.replace(packets, vlan=keyed_vlan(packets.vlan, packets.tunnel_id))


@dataclass
class CaptureResult:
    """What reading one capture file produced, for the CLI's report."""

    path: str
    packets: int = 0
    error: str | None = None  # the file could not be read at all (CaptureError)
    damage: CaptureDamage | None = None  # reading stopped early here
    warnings: list[str] = field(default_factory=list)
    tunnels: dict[str, int] = field(default_factory=dict)  # packets decapsulated, per kind
    defrag: dict[str, int] = field(default_factory=dict)  # IP fragment reassembly counts


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
    size = os.path.getsize(path)
    for events in sensor.flush_chunks():  # pieces: see Sensor.flush_chunks
        yield size, events
    result.tunnels.update(sensor.tunnel_counts())
    if sensor.defrag.stats:
        result.defrag.update(sensor.defrag_counts())
    result.warnings.extend(
        f"{path}: {count} packets with {key.removeprefix('weird.')}"
        for key, count in sorted(sensor.stats.items())
        if key.startswith("weird.") and count
    )
