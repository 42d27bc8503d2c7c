"""IP fragment reassembly (IPv4 and IPv6) for the sensor, like Zeek, Suricata and Snort do.

A fragmented datagram (a large DNSSEC/EDNS response, a fragmentation-based evasion) is
analysed only once all its fragments are in: the decoder lists the fragment rows of a batch
(DecodedPackets.fragments, sensors/decode.py), the Defragmenter copies their bytes per
(version, vlan, src, dst, protocol, identification) and hands back the datagrams that
complete, rebuilt as whole raw IP packets and decoded by the same decode() (tunnels
included: an outer fragmented tunnel packet is opened once reassembled).

What each consumer sees (Sensor.process):
- the flow table: every fragment as the packet it is on the wire (packets, bytes); a later
  fragment whose datagram's first fragment arrived before it (or later in the same
  batch) takes that first fragment's flow key (its ports): no ports-0 flows;
- the protocol analyzers: the batch with its fragment rows hidden (no transport, ports or
  payload), then each reassembled datagram once, after the batch's other rows.

Policy and bounds (docs/sensor.md "IP fragments"): overlapping data keeps the bytes that
arrived first (counted: fragment_overlap when the bytes agree, fragment_inconsistency when
they differ, Zeek's names); a datagram that would exceed 65535 bytes is not reassembled
(excessively_large_fragment: the "ping of death"); a datagram not complete `timeout_s` of
event time after its first fragment is dropped (fragment_timeout counts its fragments); at
most `max_datagrams` pending datagrams and `max_bytes` of fragment data are held, beyond that
the oldest is dropped (counted `evicted`). Per-fragment work is Python: fragments are rare,
and an unfragmented batch costs one test.
"""

from __future__ import annotations

import dataclasses
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np

from pipeline.config import ConfigError
from sensors.decode import DEFAULT_TUNNELS, TunnelConfig, decode
from sensors.packets import LINKTYPE_RAW, DecodedPackets, PacketBatch

NS = 1_000_000_000
MAX_DATAGRAM = 65535  # IPv4 total length / IPv6 payload length limit
MAX_NESTING = 2  # rounds of reassembly per batch (fragments inside a reassembled tunnel packet)
# Fragments held per datagram: each new one is compared with those held (overlaps), so this
# bounds the Python work a datagram of tiny fragments can cause (~50 ms at the bound). A
# 64 KB datagram at the IPv4 minimum MTU of 576 takes ~120 fragments.
MAX_FRAGMENTS = 512
# Columns the analyzers must not read for a fragment row (its reassembled datagram stands
# for it): zeroed in the analyzers' view.
_HIDDEN = ("transport", "src_port", "dst_port", "tcp_flags", "icmp_type", "icmp_code",
           "payload_len")
# The flow key columns a later fragment takes from its datagram's first fragment.
_FLOW_KEY = ("src_ip", "dst_ip", "transport", "src_port", "dst_port", "vlan")


@dataclass(frozen=True)
class DefragConfig:
    """Config `sensor.defrag` (docs/configuration.md)."""

    enabled: bool = True
    timeout_s: float = 30.0  # event time; Linux ipfrag_time 30 s, Suricata 60 s
    max_datagrams: int = 8192  # pending (incomplete) datagrams
    max_bytes: int = 32 << 20  # fragment data held for them

    @classmethod
    def from_config(cls, section: dict | None) -> DefragConfig:
        """The `sensor.defrag` section (None or {}: the defaults); ConfigError if malformed."""
        section = section or {}
        unknown = set(section) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"sensor.defrag: unknown key(s) {sorted(unknown)}")
        enabled = section.get("enabled", cls.enabled)
        timeout = section.get("timeout_s", cls.timeout_s)
        datagrams = section.get("max_datagrams", cls.max_datagrams)
        max_bytes = section.get("max_bytes", cls.max_bytes)
        if not isinstance(enabled, bool):
            raise ConfigError(f"sensor.defrag.enabled: true or false, got {enabled!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(f"sensor.defrag.timeout_s: seconds > 0, got {timeout!r}")
        if isinstance(datagrams, bool) or not isinstance(datagrams, int) or datagrams < 1:
            raise ConfigError(f"sensor.defrag.max_datagrams: an integer >= 1, got {datagrams!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) \
                or max_bytes < 2 * MAX_DATAGRAM:
            raise ConfigError(f"sensor.defrag.max_bytes: an integer >= {2 * MAX_DATAGRAM} "
                              f"(two whole datagrams), got {max_bytes!r}")
        return cls(enabled, float(timeout), datagrams, max_bytes)


class _Datagram:
    """One pending datagram: its fragments' data (in arrival order) and what is known."""

    __slots__ = ("first_ts", "pieces", "size", "held", "fragments", "header", "flow", "bad",
                 "vlan", "tunnel")

    def __init__(self, first_ts: int, vlan: int, tunnel: int) -> None:
        self.first_ts = first_ts  # event time of its first-arrived fragment (the timeout)
        self.pieces: list[tuple[int, bytes]] = []  # (offset, data), arrival order
        self.size = -1  # data length, known once the last fragment (no MF/M) came
        self.held = 0  # bytes of data in pieces
        self.fragments = 0
        self.header: bytes | None = None  # the IP header of the offset-0 fragment
        self.flow: tuple | None = None  # the offset-0 fragment row's flow key columns
        self.bad = False  # too large: its fragments are dropped until it times out
        self.vlan = vlan
        self.tunnel = tunnel

    def complete(self) -> bool:
        """All data from 0 to size is in (and the first fragment's header)."""
        if self.size < 0 or self.header is None:
            return False
        covered = 0
        for start, data in sorted(self.pieces):
            if start > covered:
                return False
            covered = max(covered, start + len(data))
            if covered >= self.size:
                return True
        return covered >= self.size

    def payload(self) -> bytes:
        """The data: first-arrived bytes win where fragments overlap (later pieces are
        written first, earlier ones over them)."""
        out = bytearray(self.size)
        for start, data in reversed(self.pieces):
            part = data[: max(self.size - start, 0)]
            out[start : start + len(part)] = part
        return bytes(out)


def _ipv4_checksum(header: bytearray) -> int:
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _rebuild(version: int, header: bytes, protocol: int, payload: bytes) -> bytes:
    """A whole, unfragmented IP packet: the first fragment's header with the datagram's
    length, MF and offset cleared (IPv4; checksum recomputed); for IPv6 the base header with
    the fragment's next header (extension headers before the Fragment header are left out)."""
    head = bytearray(header)
    if version == 4:
        head[2:4] = (len(head) + len(payload)).to_bytes(2, "big")
        head[6:8] = (int.from_bytes(head[6:8], "big") & 0x4000).to_bytes(2, "big")  # keep DF
        head[10:12] = b"\0\0"
        head[10:12] = _ipv4_checksum(head).to_bytes(2, "big")
    else:
        head[4:6] = len(payload).to_bytes(2, "big")
        head[6] = protocol
    return bytes(head) + payload


@dataclass
class _Done:
    """A datagram completed by fragment row `row`."""

    row: int
    packet: bytes
    vlan: int
    tunnel: int


class Defragmenter:
    """Reassembles the IP fragments of a sensor's batches (one per Sensor: its state spans
    batches). `stats`: datagrams (reassembled), fragments (taken in), timeouts, evicted
    (datagrams dropped), overlaps; weird counts are collected for the sensor in `weird`."""

    def __init__(self, config: DefragConfig | None = None,
                 tunnels: TunnelConfig = DEFAULT_TUNNELS) -> None:
        self.config = config or DefragConfig()
        self.tunnels = tunnels
        self.timeout_ns = int(self.config.timeout_s * NS)
        self.stats: Counter[str] = Counter()
        self.weird: Counter[str] = Counter()
        # oldest first (an OrderedDict: finding the oldest stays O(1) after many removals
        # from the front, where a dict's iteration skips every removed slot)
        self._pending: OrderedDict[tuple, _Datagram] = OrderedDict()
        self._held = 0

    @property
    def pending(self) -> int:
        """Datagrams waiting for fragments."""
        return len(self._pending)

    @property
    def held_bytes(self) -> int:
        """Fragment data held for them."""
        return self._held

    def counts(self) -> dict[str, int]:
        """The stats as a plain dict (health documents, run reports)."""
        keys = ("datagrams", "fragments", "timeouts", "evicted", "overlaps")
        return {key: int(self.stats.get(key, 0)) for key in keys}

    def process(self, packets: DecodedPackets
                ) -> tuple[DecodedPackets, DecodedPackets, list[DecodedPackets]]:
        """(the analyzers' view of the batch, the flow table's view, the reassembled
        datagrams decoded). Off, or a batch without fragments: the batch itself twice."""
        if not self.config.enabled:
            return packets, packets, []
        if packets.fragments is None:
            if self._pending and len(packets):
                self._expire(int(packets.ts_ns[-1]))
            return packets, packets, []
        analyzed, counted, done = self._take(packets)
        datagrams = []
        source = packets
        for _ in range(MAX_NESTING):  # a reassembled tunnel packet may hold fragments
            if not done:
                break
            source = decoded = self._decode(done, source)
            done = []
            if decoded.fragments is not None:
                decoded, _, done = self._take(decoded)
            datagrams.append(decoded)
        if len(packets):
            self._expire(int(packets.ts_ns[-1]))
        return analyzed, counted, datagrams

    # -- one batch's fragments, in arrival order --

    def _take(self, packets: DecodedPackets
              ) -> tuple[DecodedPackets, DecodedPackets, list[_Done]]:
        frag = packets.fragments
        assert frag is not None
        rows = frag.row
        # the per-fragment loop reads Python values gathered column-wise here
        ts = packets.ts_ns[rows].tolist()
        keys = list(zip(frag.version.tolist(), frag.vlan.tolist(), frag.src_ip.tolist(),
                        frag.dst_ip.tolist(), frag.protocol.tolist(), frag.ident.tolist(),
                        strict=True))
        offset, more = frag.frag_offset.tolist(), frag.more.tolist()
        start, end = frag.data_start.tolist(), frag.data_end.tolist()
        claimed, head_at = frag.claimed_end.tolist(), frag.header_offset.tolist()
        tunnel, row_list = frag.tunnel.tolist(), rows.tolist()
        # the flow key columns of the first fragments (offset 0), by row
        firsts = rows[frag.frag_offset == 0]
        first_flow = dict(zip(firsts.tolist(), zip(*(
            np.asarray(getattr(packets, name))[firsts].tolist() for name in _FLOW_KEY),
            strict=True), strict=True)) if firsts.size else {}
        data = memoryview(np.ascontiguousarray(packets.data))
        self.stats["fragments"] += len(keys)
        later: list[tuple[int, _Datagram]] = []  # later fragments and their datagrams
        done: list[_Done] = []
        for i, key in enumerate(keys):
            self._expire(ts[i])
            datagram = self._pending.get(key)
            if datagram is None:
                datagram = self._open(key, ts[i], tunnel[i])
            datagram.fragments += 1
            version = key[0]
            if offset[i] == 0:
                if datagram.header is None:
                    header_end = start[i] if version == 4 else head_at[i] + 40
                    datagram.header = bytes(data[head_at[i]:header_end])
                    datagram.flow = first_flow[row_list[i]]
            else:  # (also of a dropped datagram: wire accounting)
                later.append((row_list[i], datagram))
            if datagram.bad:
                continue
            header_len = start[i] - head_at[i] if version == 4 else 0
            extent = offset[i] + claimed[i] - start[i]
            if extent + header_len > MAX_DATAGRAM:
                self.weird["excessively_large_fragment"] += 1
                self._drop_data(datagram)
                continue
            if len(datagram.pieces) >= MAX_FRAGMENTS:
                self.weird["fragment_limit"] += 1
                self._drop_data(datagram)
                continue
            self._add(datagram, offset[i], bytes(data[start[i]:end[i]]))
            if not more[i]:
                datagram.size = max(datagram.size, extent)
            if datagram.complete():
                packet = self._finish(key, datagram)
                if packet is not None:
                    done.append(_Done(row_list[i], packet, datagram.vlan, datagram.tunnel))
            else:
                self._shed_bytes(key)
        # a later fragment takes the flow of its first fragment, if that came before it or
        # later in this batch
        attributed = [(row, d.flow) for row, d in later if d.flow is not None]
        return self._hidden(packets), self._attributed(packets, attributed), done

    def _finish(self, key: tuple, datagram: _Datagram) -> bytes | None:
        """A complete datagram leaves the pending ones: its rebuilt packet (None if too
        large: a first fragment with a longer IPv4 header than the fragment checked)."""
        del self._pending[key]
        self._held -= datagram.held
        version, protocol = key[0], key[4]
        if len(datagram.header) + datagram.size > MAX_DATAGRAM + 40 * (version == 6):
            self.weird["excessively_large_fragment"] += 1
            return None
        self.stats["datagrams"] += 1
        return _rebuild(version, datagram.header, protocol, datagram.payload())

    def _open(self, key: tuple, ts: int, tunnel: int) -> _Datagram:
        while len(self._pending) >= self.config.max_datagrams:
            self._evict(next(iter(self._pending)))
        datagram = self._pending[key] = _Datagram(ts, key[1], tunnel)
        return datagram

    def _add(self, datagram: _Datagram, offset: int, data: bytes) -> None:
        """Add one fragment's data, counting overlaps with what is already held."""
        end = offset + len(data)
        overlap = consistent = False
        for start, held in datagram.pieces:
            lo, hi = max(start, offset), min(start + len(held), end)
            if lo < hi:
                overlap = True
                consistent = held[lo - start:hi - start] == data[lo - offset:hi - offset]
                if not consistent:
                    break
        if overlap:
            self.stats["overlaps"] += 1
            self.weird["fragment_overlap" if consistent else "fragment_inconsistency"] += 1
        datagram.pieces.append((offset, data))
        datagram.held += len(data)
        self._held += len(data)

    def _drop_data(self, datagram: _Datagram) -> None:
        """Too large: keep the key (its other fragments are dropped too), not the data."""
        datagram.bad = True
        self._held -= datagram.held
        datagram.held = 0
        datagram.pieces = []

    def _evict(self, key: tuple) -> None:
        datagram = self._pending.pop(key)
        self._held -= datagram.held
        self.stats["evicted"] += 1

    def _shed_bytes(self, keep: tuple) -> None:
        """Drop the oldest other datagrams while more than max_bytes are held."""
        while self._held > self.config.max_bytes:
            victim = next((k for k in self._pending if k != keep), None)
            if victim is None:
                return
            self._evict(victim)

    def _expire(self, now: int) -> None:
        """Drop datagrams whose first fragment is more than timeout_s older than `now`
        (oldest first: the dict is in arrival order)."""
        limit = now - self.timeout_ns
        while self._pending:
            key = next(iter(self._pending))
            datagram = self._pending[key]
            if datagram.first_ts >= limit:
                return
            del self._pending[key]
            self._held -= datagram.held
            self.stats["timeouts"] += 1
            self.weird["fragment_timeout"] += datagram.fragments

    # -- the views and the reassembled batch --

    @staticmethod
    def _hidden(packets: DecodedPackets) -> DecodedPackets:
        """The batch with its fragment rows' transport, ports and payload zeroed: analyzers
        see a fragmented datagram only as its reassembled packet."""
        assert packets.fragments is not None
        rows = packets.fragments.row
        changed = {}
        for name in _HIDDEN:
            column = np.array(getattr(packets, name))
            column[rows] = 0
            changed[name] = column
        return dataclasses.replace(packets, **changed)

    @staticmethod
    def _attributed(packets: DecodedPackets, attributed: list[tuple[int, tuple]]
                    ) -> DecodedPackets:
        """The batch with later fragments given their first fragment's flow key."""
        if not attributed:
            return packets
        rows = np.array([row for row, _ in attributed], dtype=np.int64)
        changed = {}
        for k, name in enumerate(_FLOW_KEY):
            column = np.array(getattr(packets, name))
            column[rows] = np.array([flow[k] for _, flow in attributed], dtype=column.dtype)
            changed[name] = column
        return dataclasses.replace(packets, **changed)

    def _decode(self, done: list[_Done], source: DecodedPackets) -> DecodedPackets:
        """The completed datagrams as a raw-IP batch (its own buffer; each at the time of
        the fragment that completed it, `source`'s row), decoded; rows not opened as
        tunnels here take the VLAN and the tunnel kind their fragments came in."""
        rows = np.array([d.row for d in done], dtype=np.int64)
        lengths = np.array([len(d.packet) for d in done], dtype=np.int64)
        offsets = np.zeros(len(done), dtype=np.int64)
        offsets[1:] = np.cumsum(lengths)[:-1]
        batch = PacketBatch(
            data=np.frombuffer(bytearray(b"".join(d.packet for d in done)), dtype=np.uint8),
            offset=offsets, caplen=lengths.astype(np.uint32),
            wirelen=lengths.astype(np.uint32), ts_ns=source.ts_ns[rows],
            linktype=np.full(len(done), LINKTYPE_RAW, dtype=np.uint16),
            interface=source.interface[rows])
        decoded = decode(batch, self.tunnels)
        vlan = np.array([d.vlan for d in done], dtype=np.uint16)
        tunnel = np.array([d.tunnel for d in done], dtype=np.uint8)
        plain = decoded.tunnel == 0
        decoded.vlan = np.where(plain, vlan, decoded.vlan).astype(np.uint16)
        decoded.tunnel = np.where(tunnel != 0, tunnel, decoded.tunnel).astype(np.uint8)
        return decoded
