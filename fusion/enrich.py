"""Enrichment: constituency / sector / organisation by CIDR, network.direction, and
indicator-of-compromise tagging (threat-intel sets of pipeline/intel.py).

The event kinds have no constituency columns, so enrichment is a side structure: for each
batch, `Enricher.enrich(batch)` returns vectorized arrays (row -> constituency index of the
source and destination, direction code) that correlation can use as is, and
`enrich_docs(docs, enrichment)` adds the ECS/cirtsa fields when events are written as ECS.

Longest-prefix match is vectorized: addresses are 16-byte columns (IPv4 as IPv4-mapped
IPv6, so an IPv4 /n is a /96+n), split into two big-endian uint64 words. For every prefix
length present in the table (longest first) the table holds the sorted masked network keys;
a batch's distinct addresses are masked and looked up with one `searchsorted` per length,
and an address keeps the first (longest) match.

IOC tagging: the batch's columns are matched against an `IndicatorSet` (the one correlation
uses, see pipeline/intel.py: vectorized, never a loop over indicators); the hits (row,
column, indicator) travel in the same side structure, and `enrich_docs` writes them as ECS
`threat.enrichments` (a loop over hits only).
"""

from __future__ import annotations

import csv
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import yaml

from pipeline.intel import MATCH_FIELDS, IndicatorSet, indicator_ecs
from pipeline.jit import njit
from pipeline.schema import KINDS, EventBatch
from sensors.packets import IP_DTYPE, ip_column_to_str

NO_MATCH = -1
_SEARCH = -2  # first-level entry of a /16 that several prefixes cut: binary search
DIRECTIONS = np.array(["external", "inbound", "outbound", "internal"], dtype=object)
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Constituency:
    name: str
    sector: str = ""
    organisation: str = ""


def _words(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    raw = np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16)
    w = raw.view(">u8").astype(np.uint64)
    return w[:, 0].copy(), w[:, 1].copy()


def _masks(length: int) -> tuple[np.uint64, np.uint64]:
    full = (1 << 64) - 1
    hi = full ^ ((1 << (64 - min(length, 64))) - 1) if length else 0
    lo = full ^ ((1 << (128 - length)) - 1) if length > 64 else 0
    return np.uint64(hi), np.uint64(lo)


def _key(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    return hi ^ (lo * _MIX)


class PrefixTable:
    """CIDR -> value index, longest-prefix match over 16-byte address columns.

    IPv4 (and IPv4-mapped IPv6 prefixes, ::ffff:a.b.c.d/96+n) match IPv4 addresses; other
    IPv6 prefixes match IPv6 addresses. Of equal prefixes, the first listed wins."""

    def __init__(self, prefixes: Sequence[str], values: Sequence[int] | None = None) -> None:
        values = list(range(len(prefixes))) if values is None else list(values)
        v4_start: list[int] = []
        v4_len: list[int] = []
        v4_val: list[int] = []
        by_len: dict[int, tuple[list, list, list]] = {}
        for text, value in zip(prefixes, values, strict=True):
            net = ipaddress.ip_network(text.strip(), strict=False)
            if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped:
                net = ipaddress.ip_network((net.network_address.ipv4_mapped,
                                            net.prefixlen - 96))
            if net.version == 4:
                v4_start.append(int(net.network_address))
                v4_len.append(net.prefixlen)
                v4_val.append(value)
                continue
            raw = net.network_address.packed
            entry = by_len.setdefault(net.prefixlen, ([], [], []))
            entry[0].append(int.from_bytes(raw[:8], "big"))
            entry[1].append(int.from_bytes(raw[8:], "big"))
            entry[2].append(value)
        self.v4 = _RangeTable(np.array(v4_start, np.uint64), np.array(v4_len, np.int64),
                              np.array(v4_val, np.int64)) if v4_val else None
        self.levels = []  # IPv6: (hi mask, lo mask, sorted keys, hi, lo, values), longest first
        for length in sorted(by_len, reverse=True):
            hi = np.array(by_len[length][0], dtype=np.uint64)
            lo = np.array(by_len[length][1], dtype=np.uint64)
            val = np.array(by_len[length][2], dtype=np.int64)
            hm, lm = _masks(length)
            hi, lo = hi & hm, lo & lm
            key = _key(hi, lo)
            order = np.argsort(key, kind="stable")
            self.levels.append((hm, lm, key[order], hi[order], lo[order], val[order]))
        self.size = len(prefixes)

    def lookup(self, column: np.ndarray) -> np.ndarray:
        """Value index of the longest matching prefix per address, NO_MATCH when none."""
        n = len(column)
        out = np.full(n, NO_MATCH, dtype=np.int64)
        if n == 0 or (self.v4 is None and not self.levels):
            return out
        hi, lo = _words(column)
        is_v4 = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
        all_v4 = bool(is_v4.all())
        if self.v4 is not None:
            if all_v4:  # the common case: no row selection at all
                out = self.v4.lookup(lo & np.uint64(0xFFFFFFFF))
            else:
                rows = np.flatnonzero(is_v4)
                out[rows] = self.v4.lookup(lo[rows] & np.uint64(0xFFFFFFFF))
        if self.levels and not all_v4:
            todo = np.flatnonzero(~is_v4)
            for hm, lm, keys, khi, klo, vals in self.levels:
                if not len(todo):
                    break
                qhi, qlo = hi[todo] & hm, lo[todo] & lm
                pos = np.searchsorted(keys, _key(qhi, qlo))
                pos[pos >= len(keys)] = 0
                hit = (khi[pos] == qhi) & (klo[pos] == qlo)
                out[todo[hit]] = vals[pos[hit]]
                todo = todo[~hit]
        return out


class _RangeTable:
    """IPv4 prefixes as disjoint address ranges -> value of the innermost prefix.

    Prefixes are nested or disjoint, so cutting the address line at every prefix start and
    end + 1 and painting the pieces outer (short) prefixes first leaves each piece owned by
    its longest prefix; a lookup is one np.searchsorted for all prefix lengths at once
    (instead of one per length present)."""

    def __init__(self, starts: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> None:
        ends = starts + np.left_shift(np.uint64(1), (32 - lengths).astype(np.uint64))
        self.bounds = np.unique(np.concatenate([starts, ends]))
        self.owner = np.full(self.bounds.size, NO_MATCH, np.int64)
        for length in np.unique(lengths).tolist():  # outer prefixes first
            sel = np.flatnonzero(lengths == length)[::-1]  # first listed paints last: wins
            lo = np.searchsorted(self.bounds, starts[sel])
            counts = np.searchsorted(self.bounds, ends[sel]) - lo
            offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts,
                                                               counts)
            self.owner[np.repeat(lo, counts) + offsets] = np.repeat(values[sel], counts)
        # The piece from 2**32 on (the end of a prefix reaching 255.255.255.255) is never
        # painted and no address reaches it: dropped, so 4-byte keys suffice (half the
        # memory traffic of the binary search).
        inside = self.bounds < np.uint64(1 << 32)
        self.bounds32 = self.bounds[inside].astype(np.uint32)
        self.owner = self.owner[inside]
        # First level: per /16, its owner when one piece covers the whole /16 (typical:
        # most of the space holds no prefix boundary), else _SEARCH; and the pieces that
        # hold its first and last address, so a search stays inside the /16's own pieces
        # (a few entries, in cache) instead of the whole table. 3 x 64k entries.
        block = np.arange(1 << 16, dtype=np.uint64) << np.uint64(16)
        first = self._piece(block.astype(np.uint32))
        last = self._piece((block + np.uint64(0xFFFF)).astype(np.uint32))
        self.by_16 = np.where(first == last, self._owner_of(first), _SEARCH)
        self.first_16 = first.astype(np.int64)
        self.last_16 = last.astype(np.int64)

    def _piece(self, addr: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.bounds32, addr, side="right") - 1

    def _owner_of(self, piece: np.ndarray) -> np.ndarray:
        return np.where(piece >= 0, self.owner[np.maximum(piece, 0)], NO_MATCH)

    def lookup(self, addr: np.ndarray) -> np.ndarray:
        """Owner per IPv4 address (uint64 holding 32 bits): one gather from the /16 level,
        a binary search among the /16's own pieces for addresses in a /16 that prefixes
        cut (compiled: one pass, no temporary arrays)."""
        return _range_lookup(addr.astype(np.uint32), self.by_16, self.first_16,
                             self.last_16, self.bounds32, self.owner)


@njit
def _range_lookup(addr: np.ndarray, by_16: np.ndarray, first_16: np.ndarray,
                  last_16: np.ndarray, bounds: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """_RangeTable.lookup: per address, by_16[addr >> 16] unless that is _SEARCH; then the
    last piece p in first_16[b]..last_16[b] with bounds[p] <= addr (those pieces hold
    the /16's first and last address, so p is among them), its owner (NO_MATCH before the
    first piece). by_16/first_16/last_16 have 65,536 entries (b < 65,536 for a uint32);
    first_16 <= last_16 < len(bounds) = len(owner) by construction; p < 0 is never read."""
    n = addr.shape[0]
    out = np.empty(n, np.int64)
    for i in range(n):
        a = addr[i]
        b = a >> 16
        o = by_16[b]
        if o == _SEARCH:
            lo = first_16[b]  # bounds[lo] <= a (or lo == -1: before every piece)
            hi = last_16[b]  # the answer is <= hi
            while lo < hi:  # invariant: answer in [lo, hi]
                mid = (lo + hi + 1) >> 1
                if bounds[mid] <= a:
                    lo = mid
                else:
                    hi = mid - 1
            o = owner[lo] if lo >= 0 else NO_MATCH
        out[i] = o
    return out


# Columns matched per kind. Unlike correlation (addresses on flows only: one alert per
# connection), fusion tags every event whose address is listed - the DNS query to a listed
# resolver, the TLS session to a listed server - plus the content columns of MATCH_FIELDS.
def _fusion_match_fields() -> dict[str, tuple[tuple[str, str], ...]]:
    fields: dict[str, tuple[tuple[str, str], ...]] = {}
    for kind, spec in KINDS.items():
        columns = {f.column: f.dtype for f in spec.fields}
        addresses = tuple((c, "ip") for c in ("src_ip", "dst_ip") if columns.get(c) == IP_DTYPE)
        content = tuple((c, t) for c, t in MATCH_FIELDS.get(kind, ()) if t != "ip")
        if addresses or content:
            fields[kind] = addresses + content
    return fields


FUSION_MATCH_FIELDS = _fusion_match_fields()

# ECS threat.enrichments.indicator.type (STIX cyber observable names) per indicator type.
# Elastic's value for an event matched against an indicator list (Security app filters on it).
MATCH_TYPE = "indicator_match_rule"


@dataclass
class ThreatHits:
    """Indicator hits of one batch, sorted by row; several per row when several columns hit."""

    rows: np.ndarray  # int64 row index into the batch
    columns: list[str]  # matched column per hit (`url` = host + uri of http)
    indicators: np.ndarray  # int64 index into `intel.indicators`
    intel: IndicatorSet

    @property
    def tagged_rows(self) -> int:
        return int(np.unique(self.rows).size)


@dataclass
class Enrichment:
    src: np.ndarray | None  # int64 constituency index of source.ip, -1 none (None: no table)
    dst: np.ndarray | None  # int64 constituency index of destination.ip, -1 none
    direction: np.ndarray | None  # uint8: 0 external, 1 inbound, 2 outbound, 3 internal
    observers: dict[int, list[str]] | None = None  # rows seen by several sensors
    threat: ThreatHits | None = None  # indicator hits (None: no indicator set or no hit)


class Enricher:
    """Constituency table + direction + IOC tagging. `constituencies[i]` is what index i
    means; `intel` (optional) is matched against every batch."""

    def __init__(self, prefixes: Sequence[str], owners: Sequence[Constituency],
                 intel: IndicatorSet | None = None) -> None:
        self.constituencies = list(dict.fromkeys(owners))
        index = {c: i for i, c in enumerate(self.constituencies)}
        self.table = PrefixTable(prefixes, [index[o] for o in owners])
        self.intel = intel if intel is not None and len(intel) else None
    @classmethod
    def from_rows(cls, rows: Iterable[dict]) -> Enricher:
        prefixes, owners = [], []
        for row in rows:
            prefixes.append(str(row["cidr"]))
            owners.append(Constituency(str(row.get("constituency") or ""),
                                       str(row.get("sector") or ""),
                                       str(row.get("organisation") or row.get("organization")
                                           or "")))
        return cls(prefixes, owners)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Enricher:
        """CSV with a header (cidr,constituency,sector,organisation) or YAML: a list of
        such mappings (or {constituencies: [...]})."""
        path = os.fspath(path)
        if path.endswith((".yaml", ".yml")):
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or []
            if isinstance(data, dict):
                data = data.get("constituencies", [])
            return cls.from_rows(data)
        with open(path, encoding="utf-8", newline="") as fh:
            return cls.from_rows(csv.DictReader(row for row in fh
                                                if not row.lstrip().startswith("#")))

    def enrich(self, batch: EventBatch) -> Enrichment | None:
        cols = batch.columns
        threat = self.match(batch)
        if "src_ip" not in cols or cols["src_ip"].dtype != IP_DTYPE:
            return Enrichment(None, None, None, threat=threat) if threat else None
        if not self.table.size:  # IOC tagging only: no constituency, no direction
            return Enrichment(None, None, None, threat=threat) if threat else None
        src = self.table.lookup(cols["src_ip"])
        dst = self.table.lookup(cols["dst_ip"])
        direction = ((src >= 0).astype(np.uint8) * 2) | (dst >= 0).astype(np.uint8)
        return Enrichment(src, dst, direction, threat=threat)

    def match(self, batch: EventBatch) -> ThreatHits | None:
        """Indicator hits of a batch (FUSION_MATCH_FIELDS), None when nothing hits."""
        if self.intel is None or batch.kind not in FUSION_MATCH_FIELDS or not len(batch):
            return None
        hits = self.intel.match_batch(batch, FUSION_MATCH_FIELDS)
        if not hits:
            return None
        rows = np.concatenate([h.rows for h in hits])
        inds = np.concatenate([h.indicators for h in hits])
        which = np.concatenate([np.full(h.rows.size, i) for i, h in enumerate(hits)])
        order = np.argsort(rows, kind="stable")
        return ThreatHits(rows[order], [hits[i].field for i in which[order].tolist()],
                          inds[order], self.intel)




def _ecs_path(kind: str, column: str) -> str:
    if column == "url":
        return "url.original"  # host + uri; url.original holds the request target
    return next(f.ecs for f in KINDS[kind].fields if f.column == column)


def threat_docs(batch: EventBatch, threat: ThreatHits) -> dict[int, list[dict]]:
    """{row: [threat.enrichments entries]} for the hit rows (a loop over hits only)."""
    cols = batch.columns
    out: dict[int, list[dict]] = {}
    cache: dict[int, dict] = {}  # one indicator hit by many rows is rendered once
    for row, column, ind_idx in zip(threat.rows.tolist(), threat.columns,
                                    threat.indicators.tolist(), strict=True):
        if column.endswith("_ip"):
            atomic = ip_column_to_str(cols[column][row:row + 1])[0]
        elif column == "url":
            atomic = f"{cols['host'][row]}{cols['uri'][row]}"
        else:
            atomic = str(cols[column][row])
        ind = cache.get(ind_idx)
        if ind is None:
            ind = cache[ind_idx] = indicator_ecs(threat.intel.indicators[ind_idx])
        out.setdefault(row, []).append({
            "indicator": ind,
            "matched": {"atomic": atomic, "field": _ecs_path(batch.kind, column),
                        "type": MATCH_TYPE}})
    return out


def enrich_docs(docs: list[dict], enrichment: Enrichment | None,
                constituencies: Sequence[Constituency] = (),
                batch: EventBatch | None = None) -> list[dict]:
    """Add network.direction, {source,destination}.cirtsa constituency fields, the
    observers of de-duplicated flows and (given the batch) threat.enrichments of indicator
    hits to ECS docs of one batch (same row order)."""
    if enrichment is None:
        return docs
    if enrichment.direction is not None:
        dirs = DIRECTIONS[enrichment.direction].tolist()
        src, dst = enrichment.src.tolist(), enrichment.dst.tolist()
        for i, doc in enumerate(docs):
            doc.setdefault("network", {})["direction"] = dirs[i]
            for side, idx in (("source", src[i]), ("destination", dst[i])):
                if idx >= 0:
                    c = constituencies[idx]
                    doc.setdefault("cirtsa", {}).setdefault("constituency", {})[side] = {
                        "name": c.name, "sector": c.sector, "organisation": c.organisation}
    if enrichment.observers:
        for i, names in enrichment.observers.items():
            docs[i].setdefault("cirtsa", {})["observers"] = {"name": list(names)}
    if enrichment.threat is not None and batch is not None:
        for i, entries in threat_docs(batch, enrichment.threat).items():
            # copies: one indicator's dict is shared by its rows, a writer may mutate a doc
            docs[i].setdefault("threat", {})["enrichments"] = [
                {"indicator": dict(e["indicator"]), "matched": e["matched"]} for e in entries]
    return docs
