"""Enrichment: constituency / sector / organisation by CIDR, and network.direction.

The event kinds have no constituency columns, so enrichment is a side structure: for each
batch, `Enricher.enrich(batch)` returns vectorized arrays (row -> constituency index of the
source and destination, direction code) that correlation can use as is, and
`enrich_docs(docs, enrichment)` adds the ECS/cirtsa fields when events are written as ECS.

Longest-prefix match is vectorized: addresses are 16-byte columns (IPv4 as IPv4-mapped
IPv6, so an IPv4 /n is a /96+n), split into two big-endian uint64 words. For every prefix
length present in the table (longest first) the table holds the sorted masked network keys;
a batch's distinct addresses are masked and looked up with one `searchsorted` per length,
and an address keeps the first (longest) match.
"""

from __future__ import annotations

import csv
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import yaml

from pipeline.schema import EventBatch
from sensors.packets import IP_DTYPE

NO_MATCH = -1
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
    """CIDR -> value index, longest-prefix match over 16-byte address columns."""

    def __init__(self, prefixes: Sequence[str], values: Sequence[int] | None = None) -> None:
        values = list(range(len(prefixes))) if values is None else list(values)
        by_len: dict[int, tuple[list, list, list]] = {}
        for text, value in zip(prefixes, values, strict=True):
            net = ipaddress.ip_network(text.strip(), strict=False)
            length = net.prefixlen + (96 if net.version == 4 else 0)
            addr = net.network_address.packed
            raw = (bytes(10) + b"\xff\xff" + addr) if net.version == 4 else addr
            hi = int.from_bytes(raw[:8], "big")
            lo = int.from_bytes(raw[8:], "big")
            entry = by_len.setdefault(length, ([], [], []))
            entry[0].append(hi)
            entry[1].append(lo)
            entry[2].append(value)
        self.levels = []  # (length, hi mask, lo mask, sorted keys, hi, lo, values), longest first
        for length in sorted(by_len, reverse=True):
            hi = np.array(by_len[length][0], dtype=np.uint64)
            lo = np.array(by_len[length][1], dtype=np.uint64)
            val = np.array(by_len[length][2], dtype=np.int64)
            hm, lm = _masks(length)
            hi, lo = hi & hm, lo & lm
            key = _key(hi, lo)
            order = np.argsort(key, kind="stable")
            self.levels.append((length, hm, lm, key[order], hi[order], lo[order], val[order]))
        self.size = len(prefixes)

    def lookup(self, column: np.ndarray) -> np.ndarray:
        """Value index of the longest matching prefix per address, NO_MATCH when none."""
        n = len(column)
        out = np.full(n, NO_MATCH, dtype=np.int64)
        if n == 0 or not self.levels:
            return out
        uniq, inverse = np.unique(column, return_inverse=True)
        hi, lo = _words(uniq)
        found = np.full(len(uniq), NO_MATCH, dtype=np.int64)
        todo = np.arange(len(uniq))
        for _length, hm, lm, keys, khi, klo, vals in self.levels:
            if not len(todo):
                break
            qhi, qlo = hi[todo] & hm, lo[todo] & lm
            pos = np.searchsorted(keys, _key(qhi, qlo))
            pos[pos >= len(keys)] = 0
            hit = (khi[pos] == qhi) & (klo[pos] == qlo)
            found[todo[hit]] = vals[pos[hit]]
            todo = todo[~hit]
        return found[inverse.ravel()]


@dataclass
class Enrichment:
    src: np.ndarray  # int64 constituency index of source.ip, -1 none
    dst: np.ndarray  # int64 constituency index of destination.ip, -1 none
    direction: np.ndarray  # uint8: 0 external, 1 inbound, 2 outbound, 3 internal
    observers: dict[int, list[str]] | None = None  # rows seen by several sensors


class Enricher:
    """Constituency table + direction. `constituencies[i]` is what index i means."""

    def __init__(self, prefixes: Sequence[str], owners: Sequence[Constituency]) -> None:
        self.constituencies = list(dict.fromkeys(owners))
        index = {c: i for i, c in enumerate(self.constituencies)}
        self.table = PrefixTable(prefixes, [index[o] for o in owners])

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
        if "src_ip" not in cols or cols["src_ip"].dtype != IP_DTYPE:
            return None
        src = self.table.lookup(cols["src_ip"])
        dst = self.table.lookup(cols["dst_ip"])
        direction = ((src >= 0).astype(np.uint8) * 2) | (dst >= 0).astype(np.uint8)
        return Enrichment(src, dst, direction)


def enrich_docs(docs: list[dict], enrichment: Enrichment | None,
                constituencies: Sequence[Constituency] = ()) -> list[dict]:
    """Add network.direction, {source,destination}.cirtsa constituency fields and the
    observers of de-duplicated flows to ECS docs of one batch (same row order)."""
    if enrichment is None:
        return docs
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
    return docs
