"""Threat-intel indicator sets: loading (CSV, MISP JSON, STIX 2.1) and vectorized matching.

Shared by correlation (correlation/intel_match.py raises alerts on hits) and fusion
(enrichment of events with the indicator they hit). docs/intel.md documents the formats.

Indicator types: ip, cidr, domain (matches the domain and every subdomain of it), url,
ja3, ja4, cert_sha1 (SHA-1 of a TLS server certificate).

Matching never loops over indicators, and over events only where text must be built:
- IPv4: a compiled pass reads the IPv4-mapped rows of the 16-byte column; a flag per /24
  block (does any indicator touch it?) decides most addresses with one read; candidates
  are looked up in the sorted /32 addresses, then in the disjoint ranges of the cidrs
  (binary searches bounded by a per-/16 index);
- IPv6: one sorted uint64 key table per prefix length present (an ip is a /128), looked
  up longest prefix first behind a bitmap filter; keys mix the two 64-bit halves,
  verified on hits;
- names: a polynomial hash of every parent suffix of a name ("a.b.c", "b.c", "c"),
  computed in one compiled right-to-left pass over the code points of the batch's names
  joined by NUL (Latin-1 bytes when they allow it), looked up in the sorted hashes of
  the domain indicators behind a packed bitmap filter, and hits verified against the
  indicator's code points in the same pass, so a hash collision cannot make a false hit;
- url, ja3, ja4, cert_sha1: the same hash of the whole normalized string.

Loading never makes one Python object per indicator on the bulk path: CSV feeds become an
IndicatorTable (columns + a few shared metadata templates, an Indicator made only for a
hit), IPv4 text is parsed with inet_pton over the whole column, duplicates go with numpy.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import operator
import os
import re
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import chain
from operator import attrgetter
from pathlib import Path

import numpy as np

from pipeline.heap import gc_paused
from pipeline.jit import njit
from pipeline.schema import EventBatch

INDICATOR_TYPES = ("ip", "cidr", "domain", "url", "ja3", "ja4", "cert_sha1")
_TYPE_CODE = {kind: code for code, kind in enumerate(INDICATOR_TYPES)}

# MITRE ATT&CK enterprise tactics in kill-chain order (used for indicator tags and for the
# stage order of incidents).
ATTACK_TACTICS: tuple[tuple[str, str, str], ...] = (
    ("TA0043", "Reconnaissance", "reconnaissance"),
    ("TA0042", "Resource Development", "resource-development"),
    ("TA0001", "Initial Access", "initial-access"),
    ("TA0002", "Execution", "execution"),
    ("TA0003", "Persistence", "persistence"),
    ("TA0004", "Privilege Escalation", "privilege-escalation"),
    ("TA0005", "Defense Evasion", "defense-evasion"),
    ("TA0006", "Credential Access", "credential-access"),
    ("TA0007", "Discovery", "discovery"),
    ("TA0008", "Lateral Movement", "lateral-movement"),
    ("TA0009", "Collection", "collection"),
    ("TA0011", "Command and Control", "command-and-control"),
    ("TA0010", "Exfiltration", "exfiltration"),
    ("TA0040", "Impact", "impact"),
)
_TACTIC_BY_PHASE = {phase: (tid, name) for tid, name, phase in ATTACK_TACTICS}
_TACTIC_BY_ID = {tid: (tid, name) for tid, name, _ in ATTACK_TACTICS}


class IndicatorError(ValueError):
    """An indicator file or entry cannot be used; the message names the file and entry."""


@dataclass(slots=True)
class Indicator:
    """One normalized indicator and what an alert says about it."""

    type: str  # one of INDICATOR_TYPES
    value: str  # normalized (see normalize)
    source: str = "inline"  # feed name -> threat.feed.name / threat.indicator.provider
    description: str = ""
    confidence: str = ""  # ECS threat.indicator.confidence (Low, Medium, High, ...)
    severity: str = ""  # low / medium / high / critical; "" = the detector default
    reference: str = ""
    tags: tuple[str, ...] = ()
    tactic: tuple[str, str] | None = None  # (id, name) from the indicator's own ATT&CK tags
    technique: tuple[str, str] | None = None


class IndicatorTable(Sequence):
    """A sequence of Indicator stored column-wise: type code, normalized value and an index
    into a few shared metadata templates (a feed repeats its source, description, tags ...).

    Bulk loaders (CSV) build one of these instead of one object per indicator: an
    Indicator is made only when asked for (describing a hit) and then kept, so the same
    index gives the same object. Reads like a list of Indicator (len, [i], iteration).
    """

    def __init__(self, kinds: np.ndarray, values: np.ndarray, meta_ids: np.ndarray,
                 metas: Sequence[Indicator]) -> None:
        self.kinds = np.asarray(kinds, np.int8)  # index into INDICATOR_TYPES
        self.values = values  # object array of normalized values
        self.meta_ids = np.asarray(meta_ids, np.int64)  # index into metas
        self.metas = metas  # templates; a template whose type/value match is used as is
        self._made: dict[int, Indicator] = {}

    @classmethod
    def from_indicators(cls, indicators: Sequence[Indicator]) -> IndicatorTable:
        """The columns of indicator objects (each its own template); a table as is."""
        if isinstance(indicators, IndicatorTable):
            return indicators
        n = len(indicators)
        kinds = np.fromiter(map(_TYPE_CODE.__getitem__, map(attrgetter("type"), indicators)),
                            np.int8, n)
        values = np.empty(n, object)
        values[:] = list(map(attrgetter("value"), indicators))
        return cls(kinds, values, np.arange(n), list(indicators))

    @classmethod
    def concat(cls, parts: Iterable[Sequence[Indicator]]) -> IndicatorTable:
        tables = [cls.from_indicators(p) for p in parts]
        offsets = np.cumsum([0] + [len(t.metas) for t in tables])
        values = np.empty(sum(len(t) for t in tables), object)
        values[:] = [v for t in tables for v in t.values.tolist()] if tables else []
        return cls(np.concatenate([t.kinds for t in tables] or [np.empty(0, np.int8)]),
                   values,
                   np.concatenate([t.meta_ids + o for t, o in zip(tables, offsets.tolist(),
                                                                  strict=False)]
                                  or [np.empty(0, np.int64)]),
                   [m for t in tables for m in t.metas])

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("indicator index out of range")
        ind = self._made.get(i)
        if ind is None:
            meta = self.metas[int(self.meta_ids[i])]
            kind, value = INDICATOR_TYPES[int(self.kinds[i])], self.values[i]
            ind = meta if meta.type == kind and meta.value == value else \
                replace(meta, type=kind, value=value)
            self._made[i] = ind
        return ind

    def __iter__(self) -> Iterator[Indicator]:
        return (self[i] for i in range(len(self)))


# --- normalization ---------------------------------------------------------------------------

_HEX = re.compile(r"^[0-9a-f]+$")
_JA4 = re.compile(r"^[tqd][0-9a-z]{2}[di][0-9]{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}$")


def normalize_domain(name: str) -> str:
    """Lower case, no trailing dot, IDNA (punycode) for non-ASCII names."""
    name = name.strip().rstrip(".").lower()
    if name.startswith("*."):
        name = name[2:]  # "*.evil.com" means the domain and its subdomains: what we match
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return name


def normalize_url(url: str) -> str:
    """'HTTP://Evil.COM:80/p?q' -> 'evil.com/p?q': no scheme, host lower case, no default
    port, path and query kept as sent (they are case-sensitive)."""
    url = url.strip()
    scheme = ""
    if "://" in url:
        scheme, url = url.split("://", 1)
        scheme = scheme.lower()
    host, sep, rest = url.partition("/")
    host = host.rsplit("@", 1)[-1].lower().rstrip(".")
    if (scheme in ("", "http") and host.endswith(":80")) or (
            scheme == "https" and host.endswith(":443")):
        host = host.rsplit(":", 1)[0]
    return host + sep + rest if sep else host + "/"


def _ipv4_network(value: str) -> tuple[int, int] | None:
    """(network address, prefix length) of a dotted-quad IPv4 address or CIDR, host bits
    cleared; None for anything else (IPv6, netmask forms, invalid), which goes through
    `ipaddress`. inet_pton is as strict as ipaddress (no leading zeros, four parts) and
    ~50x faster: feeds are mostly IPv4 addresses."""
    addr, sep, prefix = value.partition("/")
    try:
        packed = socket.inet_pton(socket.AF_INET, addr)
    except OSError:
        return None
    length = 32
    if sep:
        if not (prefix.isascii() and prefix.isdigit()) or int(prefix) > 32:
            return None
        length = int(prefix)
    return int.from_bytes(packed, "big") & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF), length


def normalize(kind: str, value: str) -> tuple[str, str]:
    """(type, normalized value); an ip given with a prefix becomes a cidr. Raises
    IndicatorError for a value that is not of its type."""
    value = str(value).strip()
    try:
        if kind in ("ip", "cidr"):
            if (v4 := _ipv4_network(value)) is not None:
                text = socket.inet_ntop(socket.AF_INET, v4[0].to_bytes(4, "big"))
                return ("ip", text) if v4[1] == 32 else ("cidr", f"{text}/{v4[1]}")
            net = ipaddress.ip_network(value, strict=False)
            full = net.prefixlen == net.max_prefixlen
            return ("ip", str(net.network_address)) if full else ("cidr", str(net))
        if kind == "domain":
            name = normalize_domain(value)
            if not name or " " in name or "/" in name:
                raise ValueError("not a domain name")
            return kind, name
        if kind == "url":
            return kind, normalize_url(value)
        if kind == "ja3":
            v = value.lower()
            if len(v) != 32 or not _HEX.match(v):
                raise ValueError("a JA3 is 32 hex digits (MD5)")
            return kind, v
        if kind == "ja4":
            v = value.lower()
            if not _JA4.match(v):
                raise ValueError("not a JA4 fingerprint "
                                 "(e.g. t13d1516h2_8daaf6152771_02713d6af862)")
            return kind, v
        if kind == "cert_sha1":
            v = value.replace(":", "").replace(" ", "").upper()
            if len(v) != 40 or not _HEX.match(v.lower()):
                raise ValueError("a SHA-1 is 40 hex digits")
            return kind, v
    except ValueError as exc:
        raise IndicatorError(f"{kind} indicator {value!r}: {exc}") from None
    raise IndicatorError(f"unknown indicator type {kind!r} (one of {', '.join(INDICATOR_TYPES)})")


def guess_type(value: str) -> str:
    """Indicator type of a bare value (CSV files without a type column)."""
    v = value.strip()
    if (v4 := _ipv4_network(v)) is not None:
        return "ip" if v4[1] == 32 else "cidr"
    try:
        net = ipaddress.ip_network(v, strict=False)
        return "ip" if net.prefixlen == net.max_prefixlen else "cidr"
    except ValueError:
        pass
    lower = v.lower().replace(":", "")
    if "://" in v or "/" in v:
        return "url"
    if len(lower) == 32 and _HEX.match(lower):
        return "ja3"
    if len(lower) == 40 and _HEX.match(lower):
        return "cert_sha1"
    if _JA4.match(v.lower()):
        return "ja4"
    return "domain"


# --- ATT&CK from tags -------------------------------------------------------------------------

_TECHNIQUE_TAG = re.compile(r"(?:^|[\s\"=:-])(T\d{4}(?:\.\d{3})?)\b")
_TACTIC_TAG = re.compile(r"\b(TA\d{4})\b")


def attack_from_tags(tags: Iterable[str]) -> tuple[tuple[str, str] | None,
                                                   tuple[str, str] | None]:
    """(tactic, technique) named by tags such as MISP galaxy tags
    `misp-galaxy:mitre-attack-pattern="Application Layer Protocol - T1071"` or
    `mitre-attack:command-and-control`; (None, None) when none does."""
    tactic = technique = None
    for tag in tags:
        if technique is None and (m := _TECHNIQUE_TAG.search(tag)):
            tid = m.group(1)
            name = tag.split("=", 1)[-1].strip('"').rsplit(" - ", 1)[0].strip() \
                if " - " in tag else tid
            technique = (tid, name)
        if tactic is None:
            if m := _TACTIC_TAG.search(tag):
                tactic = _TACTIC_BY_ID.get(m.group(1))
            else:
                phase = tag.rsplit(":", 1)[-1].strip('"').lower().replace(" ", "-")
                tactic = _TACTIC_BY_PHASE.get(phase)
    return tactic, technique


def _indicator(kind: str, value: str, source: str, **meta) -> Indicator:
    kind, value = normalize(kind, value)
    tags = tuple(t for t in meta.pop("tags", ()) if t)
    tactic, technique = attack_from_tags(tags)
    return Indicator(kind, value, source, tags=tags, tactic=meta.pop("tactic", None) or tactic,
                     technique=meta.pop("technique", None) or technique, **meta)


# --- CSV --------------------------------------------------------------------------------------

_CSV_TYPE_ALIASES = {"ipv4": "ip", "ipv6": "ip", "ip-dst": "ip", "ip-src": "ip",
                     "hostname": "domain", "fqdn": "domain", "domain-name": "domain",
                     "sha1": "cert_sha1",
                     "x509-sha1": "cert_sha1", "ja3-fingerprint-md5": "ja3", "ja4+": "ja4"}


_CSV_SKIP_FIRST = frozenset(["", "#", " ", "\t", "\ufeff", "\v", "\f"])


def _distinct_ids(items: Sequence) -> tuple[dict, list[int]]:
    """({distinct item: id}, id per item), ids in first-seen order; C-level passes."""
    index = {item: i for i, item in enumerate(dict.fromkeys(items))}
    return index, list(map(index.__getitem__, items))


_CSV_META = ("description", "confidence", "severity", "reference", "tags", "tactic",
             "technique")


def parse_csv(text: str, source: str) -> IndicatorTable:
    """CSV with a header naming at least `value` (optional: type, description, confidence,
    severity, reference, tags (separated by ';'), tactic, technique). Lines starting with
    '#' are comments. Without a type column the type is guessed from the value.

    Bulk path (feeds of millions of rows): one loop over the rows collects the columns and
    a metadata key (rows of a feed share a few); IPv4 values are checked and normalized in
    numpy (_parse_ipv4_bulk), other values one by one; an Indicator object is made only
    for a hit (IndicatorTable)."""
    with gc_paused():
        return _parse_csv(text, source)


def _parse_csv(text: str, source: str) -> IndicatorTable:
    # comments and blank lines out; most lines start with neither (first test decides)
    lines = [ln for ln in text.splitlines() if ln[:1] not in _CSV_SKIP_FIRST
             or (ln.strip() and not ln.lstrip().startswith("#"))]
    if not lines:
        return IndicatorTable.from_indicators([])
    # Without quotes a CSV line is its split on ',' (~10x faster than the csv module).
    rows = [ln.split(",") for ln in lines] if '"' not in text else list(csv.reader(lines))
    header = [(h or "").strip().lower() for h in rows[0]]
    if "value" not in header:
        raise IndicatorError(f"{source}: CSV needs a header with a `value` column")
    width = len(header)
    del rows[0]
    if any(w != width for w in set(map(len, rows))):
        rows = [row if len(row) == width else (row + [""] * width)[:width] for row in rows]
    n = len(rows)
    column = {name: i for i, name in enumerate(header)}  # a repeated name: the last wins
    # transpose once, at C level; a column the header lacks reads as ""
    flat = list(chain.from_iterable(rows))
    del rows
    columns = [flat[i::width] for i in range(width)]
    del flat
    blank = ("",) * n

    def col(name: str) -> Sequence[str]:
        return columns[column[name]] if name in column else blank

    values = list(map(str.strip, col("value")))
    type_ids, types = _distinct_ids(col("type"))
    meta_index, meta_col = _distinct_ids(list(zip(*(col(m) for m in _CSV_META),
                                                  strict=True)))
    type_col = np.array(types, np.int64)
    kinds = np.full(n, -1, np.int8)
    for raw_kind, type_id in type_ids.items():
        kind = raw_kind.strip().lower()
        kind = _CSV_TYPE_ALIASES.get(kind, kind)
        rows_of = np.flatnonzero(type_col == type_id) if len(type_ids) > 1 else np.arange(n)
        if not kind:  # no type: guess per value
            for i in rows_of.tolist():
                guess = guess_type(values[i])
                kinds[i] = _TYPE_CODE[_CSV_TYPE_ALIASES.get(guess, guess)]
        elif kind in _TYPE_CODE:
            kinds[rows_of] = _TYPE_CODE[kind]
        else:
            i = int(rows_of[0])
            try:
                normalize(kind, values[i])
            except IndicatorError as exc:
                raise IndicatorError(f"{source}: line {i + 2}: {exc}") from None
    value_col = np.empty(n, object)
    value_col[:] = values
    fixed = _normalize_column(kinds, value_col)
    if fixed.size:  # not already normalized: one by one, the first bad line reports
        for i in fixed.tolist():
            kind_name = INDICATOR_TYPES[kinds[i]]
            try:
                kind_name, value_col[i] = normalize(kind_name, values[i])
            except IndicatorError as exc:
                raise IndicatorError(f"{source}: line {i + 2}: {exc}") from None
            kinds[i] = _TYPE_CODE[kind_name]
    return IndicatorTable(kinds, value_col, np.array(meta_col, np.int64),
                          [_csv_template(meta, source) for meta in meta_index])


def _normalize_column(kinds: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Normalize in place what numpy can (IPv4 addresses and cidrs already in normal form:
    only their type is set); returns the rows left for normalize(), in row order."""
    todo = np.ones(kinds.size, bool)
    for kind in ("ip", "cidr"):  # separately: plain addresses take the fastest path
        addr = np.flatnonzero(kinds == _TYPE_CODE[kind])
        if addr.size:
            _, _, length, normalized = _parse_ipv4_bulk(values[addr])
            done = addr[normalized]
            kinds[done] = np.where(length[normalized] == 32, _TYPE_CODE["ip"],
                                   _TYPE_CODE["cidr"])
            todo[done] = False
    # Domains: all already in normal form (the usual feed) is checked on the joined text
    # (C-level string methods); otherwise normalize() one by one.
    domains = np.flatnonzero(kinds == _TYPE_CODE["domain"])
    if domains.size:
        names = values[domains].tolist()
        joined = "\n".join(names) + "\n"
        if all(names) and joined.isascii() and joined == joined.lower() and not any(
                bad in joined for bad in (" ", "/", "*", ".\n", "\t", "\r")):
            todo[domains] = False
    return np.flatnonzero(todo)


def _csv_template(meta: tuple[str, ...], source: str) -> Indicator:
    """The Indicator fields one metadata key of parse_csv gives (type/value filled later)."""
    description, confidence, severity, reference, tags_text, tactic, technique = \
        (m.strip() for m in meta)
    tags = tuple(t for t in (x.strip() for x in tags_text.split(";")) if t)
    tag_tactic, tag_technique = attack_from_tags(tags)
    return Indicator("", "", source, description=description, confidence=confidence,
                     severity=severity.lower(), reference=reference, tags=tags,
                     tactic=_TACTIC_BY_ID.get(tactic.upper()) or tag_tactic,
                     technique=(technique, technique) if technique else tag_technique)


# --- MISP -------------------------------------------------------------------------------------

# MISP attribute type -> (our type, which part of a composite "a|b" value)
_MISP_TYPES = {
    "ip-dst": ("ip", 0), "ip-src": ("ip", 0), "ip-dst|port": ("ip", 0), "ip-src|port": ("ip", 0),
    "domain": ("domain", 0), "hostname": ("domain", 0), "domain|ip": ("domain", 0),
    "hostname|port": ("domain", 0), "url": ("url", 0), "uri": ("url", 0), "link": None,
    "ja3-fingerprint-md5": ("ja3", 0), "ja4-fingerprint": ("ja4", 0), "ja4": ("ja4", 0),
    "x509-fingerprint-sha1": ("cert_sha1", 0),
}
_MISP_CONFIDENCE = {"high": "High", "medium": "Medium", "low": "Low"}


def _misp_tags(node: Mapping) -> list[str]:
    return [t.get("name", "") for t in node.get("Tag") or [] if isinstance(t, Mapping)]


def _misp_attributes(event: Mapping) -> Iterable[Mapping]:
    yield from event.get("Attribute") or []
    for obj in event.get("Object") or []:
        yield from obj.get("Attribute") or []


def parse_misp(data: object, source: str) -> tuple[list[Indicator], int]:
    """MISP JSON: an event export ({"Event": ...}, {"response": [{"Event": ...}]}, a list of
    those) or an attribute search export ({"response": {"Attribute": [...]}}). Attributes
    with to_ids false are kept (feeds often clear it); unsupported types are counted.
    Returns (indicators, skipped)."""
    events: list[Mapping] = []
    loose: list[Mapping] = []

    def walk(node: object) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, Mapping):
            if "Event" in node:
                walk(node["Event"])
            elif "response" in node:
                walk(node["response"])
            elif "Attribute" in node and ("info" in node or "Object" in node or "uuid" in node):
                events.append(node)
            elif "Attribute" in node:
                loose.extend(node["Attribute"] or [])
            elif "type" in node and "value" in node:
                loose.append(node)

    walk(data)
    out: list[Indicator] = []
    skipped = 0
    for event, attrs in [(e, list(_misp_attributes(e))) for e in events] + [({}, loose)]:
        event_tags = _misp_tags(event)
        for attr in attrs:
            spec = _MISP_TYPES.get(str(attr.get("type", "")))
            value = str(attr.get("value", ""))
            if spec is None or not value:
                skipped += 1
                continue
            kind, part = spec
            value = value.split("|")[part]
            tags = event_tags + _misp_tags(attr)
            conf = next((_MISP_CONFIDENCE[t.rsplit("=", 1)[-1].strip('"').lower()]
                         for t in tags if t.startswith("misp:confidence-level")
                         and t.rsplit("=", 1)[-1].strip('"').lower() in _MISP_CONFIDENCE), "")
            description = str(attr.get("comment") or event.get("info") or "")
            try:
                out.append(_indicator(kind, value, source, description=description, tags=tags,
                                      confidence=conf,
                                      reference=str(event.get("uuid", "")) and
                                      f"misp:event/{event.get('uuid')}"))
            except IndicatorError:
                skipped += 1
    return out, skipped


# --- STIX 2.1 ---------------------------------------------------------------------------------

_STIX_COMPARISON = re.compile(
    r"([a-z0-9-]+):([a-z0-9_.'\-]+)\s*(=|ISSUBSET)\s*'((?:[^'\\]|\\.)*)'", re.I)
_STIX_PATHS = {
    ("ipv4-addr", "value"): "ip", ("ipv6-addr", "value"): "ip",
    ("domain-name", "value"): "domain", ("url", "value"): "url",
    ("x509-certificate", "hashes.'sha-1'"): "cert_sha1",
    ("x509-certificate", "hashes.sha-1"): "cert_sha1",
    # A certificate is a DER file: feeds (e.g. abuse.ch SSLBL) publish its SHA-1 as a file hash.
    ("file", "hashes.'sha-1'"): "cert_sha1", ("file", "hashes.sha-1"): "cert_sha1",
    ("x-ja3", "value"): "ja3", ("x-ja4", "value"): "ja4",
}


def stix_pattern_values(pattern: str) -> list[tuple[str, str]] | None:
    """(type, value) of each comparison of a STIX pattern made of comparisons joined by OR;
    None when the pattern uses AND, FOLLOWEDBY or an unsupported object path."""
    body = pattern.strip()
    if re.search(r"\b(AND|FOLLOWEDBY|WITHIN|REPEATS|NOT|LIKE|MATCHES)\b", body):
        return None
    found = []
    for obj, path, _op, value in _STIX_COMPARISON.findall(body):
        kind = _STIX_PATHS.get((obj.lower(), path.lower()))
        if kind is None:
            return None
        found.append((kind, value.replace("\\'", "'").replace("\\\\", "\\")))
    return found or None


def parse_stix(data: object, source: str) -> tuple[list[Indicator], int]:
    """STIX 2.1 bundle (or a list of objects): `indicator` objects with pattern_type stix.
    ATT&CK from kill_chain_phases (mitre-attack) and external_references (T####).
    Returns (indicators, skipped)."""
    objects = data.get("objects", []) if isinstance(data, Mapping) else data
    if not isinstance(objects, list):
        raise IndicatorError(f"{source}: not a STIX bundle (no `objects` list)")
    out: list[Indicator] = []
    skipped = 0
    for obj in objects:
        if not isinstance(obj, Mapping) or obj.get("type") != "indicator":
            continue
        if obj.get("pattern_type", "stix") != "stix" or obj.get("revoked"):
            skipped += 1
            continue
        values = stix_pattern_values(str(obj.get("pattern", "")))
        if values is None:
            skipped += 1
            continue
        tags = [str(t) for t in obj.get("labels") or []]
        tags += [f"mitre-attack:{p.get('phase_name', '')}"
                 for p in obj.get("kill_chain_phases") or []
                 if str(p.get("kill_chain_name", "")).startswith("mitre")]
        refs = obj.get("external_references") or []
        tags += [str(r.get("external_id")) for r in refs if r.get("source_name") == "mitre-attack"
                 and r.get("external_id")]
        reference = next((str(r["url"]) for r in refs if r.get("url")), "")
        conf = obj.get("confidence")
        confidence = "" if conf is None else (
            "High" if conf >= 70 else "Medium" if conf >= 30 else "Low" if conf > 0 else "None")
        for kind, value in values:
            try:
                description = str(obj.get("description") or obj.get("name") or "")
                out.append(_indicator(kind, value, source, description=description,
                                      confidence=confidence, reference=reference, tags=tags))
            except IndicatorError:
                skipped += 1
    return out, skipped


# --- sources ----------------------------------------------------------------------------------


def load_source(spec: Mapping, base_dir: str | os.PathLike | None = None
                ) -> Sequence[Indicator]:
    """Indicators of one configured source {path, format: csv|misp|stix, name}."""
    path = Path(str(spec.get("path", "")))
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    fmt = str(spec.get("format", "") or path.suffix.lstrip(".")).lower()
    name = str(spec.get("name") or path.stem)
    with gc_paused():  # JSON feeds: millions of dicts, see _gc_paused
        return _load_source(spec, path, fmt, name)


def _load_source(spec: Mapping, path: Path, fmt: str, name: str) -> Sequence[Indicator]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise IndicatorError(f"intel source {name}: cannot read {path}: {exc.strerror}") from None
    if fmt == "csv":
        indicators = parse_csv(text, name)
    elif fmt in ("misp", "stix", "json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IndicatorError(f"intel source {name}: {path} is not JSON: {exc}") from None
        if fmt == "json":
            fmt = "stix" if isinstance(data, Mapping) and data.get("type") == "bundle" else "misp"
        indicators, _ = (parse_stix if fmt == "stix" else parse_misp)(data, name)
    else:
        raise IndicatorError(f"intel source {name}: unknown format {fmt!r} (csv, misp, stix)")
    severity = str(spec.get("severity", "")).lower()
    if severity:  # a table: on its few templates, not per row
        for ind in indicators.metas if isinstance(indicators, IndicatorTable) else indicators:
            ind.severity = ind.severity or severity
    return indicators


def inline_indicators(entries: Iterable[Mapping | str]) -> list[Indicator]:
    """Indicators written in the config: {type, value, description, severity, ...} or a bare
    value (type guessed)."""
    out = []
    for entry in entries or ():
        if isinstance(entry, str):
            entry = {"value": entry}
        value = str(entry.get("value", ""))
        tags = entry.get("tags") or []
        tactic = _TACTIC_BY_ID.get(str(entry.get("tactic", "")).upper())
        tech = str(entry.get("technique", ""))
        out.append(_indicator(str(entry.get("type") or guess_type(value)), value,
                              str(entry.get("source", "inline")),
                              description=str(entry.get("description", "")),
                              confidence=str(entry.get("confidence", "")),
                              severity=str(entry.get("severity", "")).lower(),
                              reference=str(entry.get("reference", "")),
                              tags=[str(t) for t in tags], tactic=tactic,
                              technique=(tech, tech) if tech else None))
    return out


# --- vectorized hashing -----------------------------------------------------------------------

_PRIME = np.uint64(0x100000001B3)  # polynomial base (the FNV-1 64-bit prime)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier (Fibonacci hashing)
_DOT = 46


def _as_text(values: Sequence | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=object)
    if arr.size and not all(isinstance(v, str) for v in arr[:1]):
        arr = np.array(["" if v is None else str(v) for v in arr], dtype=object)
    return arr


@njit
def _suffix_hash_kernel(codes: np.ndarray, bounds: np.ndarray, domains: bool
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start, hash) of the label suffixes of strings codes[bounds[i]:bounds[i + 1]]
    (code points), walking each string right to left; see suffix_hashes.

    bounds is ascending with bounds[-1] <= codes.size (built from the lengths by the
    caller); at most one output per code point, so the outputs fit in codes.size slots.
    """
    n = bounds.shape[0] - 1
    rows = np.empty(codes.shape[0], np.int64)
    starts = np.empty(codes.shape[0], np.int64)
    hashes = np.empty(codes.shape[0], np.uint64)
    m = 0
    for i in range(n):
        a, b = bounds[i], bounds[i + 1]
        h = np.uint64(0)
        for j in range(b - 1, a - 1, -1):
            c = codes[j]
            h = h * _PRIME + np.uint64(c)
            if c != 0 and (j == a or (domains and codes[j - 1] == _DOT)):
                rows[m], starts[m], hashes[m] = i, j - a, h
                m += 1
    return rows[:m].copy(), starts[:m].copy(), hashes[:m].copy()


def suffix_hashes(values: Sequence | np.ndarray, domains: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start, hash) of every suffix of each string that starts at a label (position 0
    or after a '.'), or only of the whole string when `domains` is False.

    hash(s) = sum of ord(s[i]) * P**(i) folded right to left (uint64, wrapping); a NUL code
    point adds nothing, and no suffix starts at one. One compiled pass over the code points
    of all strings (UTF-32 of their concatenation); outputs ordered by row, then by start
    descending.
    """
    arr = _as_text(values)
    items = arr.tolist()
    bounds = np.zeros(len(items) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, items), np.int64, len(items)), out=bounds[1:])
    codes = np.frombuffer("".join(items).encode("utf-32-le", "surrogatepass"), np.uint32)
    return _suffix_hash_kernel(codes, bounds, domains)


@njit
def _separator_ends(codes: np.ndarray, n: int) -> np.ndarray:
    """Where each of n NUL-joined names ends (its separator; the last: len(codes)), or a
    shorter array when there are not exactly n - 1 NULs."""
    ends = np.empty(n, np.int64)
    row = 0
    for j in range(codes.shape[0]):
        if codes[j] == 0:
            if row == n - 1:
                return ends[:0]  # more separators than names
            ends[row] = j
            row += 1
    if row != n - 1:
        return ends[:0]
    ends[n - 1] = codes.shape[0]
    return ends


@njit
def _joined_domain_kernel(codes: np.ndarray, n: int, keys: np.ndarray, payload: np.ndarray,
                          packed: np.ndarray, shift: np.uint64, text: np.ndarray,
                          text_bounds: np.ndarray, longest: int, tail_len: int,
                          tail_packed: np.ndarray, tail_shift: np.uint64
                          ) -> tuple[bool, np.ndarray]:
    """match_domains over n names joined by NUL (codes: their code points): per name the
    payload of the longest label suffix that is listed, -1 when none.

    First a forward scan finds the separators (_separator_ends). Per name then:
    * the tail filter: a listed suffix is at least tail_len code points long, and the
      hash of the name's last tail_len code points (the same suffix hash) must be flagged
      in tail_packed, a bitmap of those hashes of every listed text: with few indicators
      most names stop here after tail_len steps, where the walk below took one multiply
      per code point of the name (a latency-bound chain);
    * a right-to-left walk over the name's last `longest` code points (a longer suffix
      cannot be listed): the suffix hash of suffix_hashes, at each label start the packed
      bitmap filter, then a binary search in the sorted unique `keys` (a _KeyTable), then
      the suffix's code points are compared with the listed value
      text[text_bounds[k]:text_bounds[k + 1]] of key k, so a hash collision cannot make
      a hit. Walking right to left, a later hit in a name is a longer suffix: it
      overwrites.
    First of the result: whether there were exactly n - 1 NULs; False (a name contains
    a NUL itself) means the output is meaningless."""
    out = np.full(n, -1, np.int64)
    size = keys.shape[0]
    one, three, seven = np.uint64(1), np.uint64(3), np.uint64(7)
    ends = _separator_ends(codes, n)  # one past each name's last code point
    if ends.shape[0] != n:
        return False, out
    start = 0
    for r in range(n):
        end = ends[r]
        name_start = start
        start = end + 1
        if end - name_start < tail_len:
            continue
        h = np.uint64(0)
        for j in range(end - 1, end - tail_len - 1, -1):
            h = h * _PRIME + np.uint64(codes[j])
        slot = (h * _MIX) >> tail_shift
        if not (tail_packed[slot >> three] >> (slot & seven)) & one:
            continue
        h = np.uint64(0)
        for j in range(end - 1, max(name_start, end - longest) - 1, -1):
            h = h * _PRIME + np.uint64(codes[j])
            if not (j == name_start or codes[j - 1] == _DOT):
                continue
            slot = (h * _MIX) >> shift
            if not (packed[slot >> three] >> (slot & seven)) & one:
                continue
            lo = 0
            hi = size
            while lo < hi:  # leftmost keys[k] >= h
                mid = (lo + hi) >> 1
                if keys[mid] < h:
                    lo = mid + 1
                else:
                    hi = mid
            if lo == size or keys[lo] != h:
                continue
            a, b = text_bounds[lo], text_bounds[lo + 1]
            if b - a != end - j:
                continue
            same = True
            for k in range(b - a):
                if text[a + k] != codes[j + k]:
                    same = False
                    break
            if same:
                out[r] = payload[lo]
    return True, out


@njit
def _tail_hashes(text: np.ndarray, bounds: np.ndarray, tail_len: int) -> np.ndarray:
    """The suffix hash of the last tail_len code points of each listed text at least
    that long (the tail filter of _joined_domain_kernel)."""
    m = bounds.shape[0] - 1
    out = np.empty(m, np.uint64)
    k = 0
    for i in range(m):
        a, b = bounds[i], bounds[i + 1]
        if b - a < tail_len:
            continue
        h = np.uint64(0)
        for j in range(b - 1, b - tail_len - 1, -1):
            h = h * _PRIME + np.uint64(text[j])
        out[k] = h
        k += 1
    return out[:k]


_TAIL_MAX = 4  # code points hashed by the tail filter


def _tail_filter(text: np.ndarray, bounds: np.ndarray) -> tuple[int, np.ndarray, np.uint64]:
    """(tail_len, packed bitmap, shift) of _joined_domain_kernel's tail filter over the
    listed domain texts: tail_len = min(_TAIL_MAX, the shortest non-empty text), ~16 bits
    per distinct tail hash (a miss passes with probability ~6 %). No non-empty text: a
    tail_len no name reaches."""
    lengths = np.diff(bounds)
    lengths = lengths[lengths > 0]
    if lengths.size == 0:
        return np.iinfo(np.int64).max, np.zeros(1, np.uint8), np.uint64(63)
    tail_len = int(min(_TAIL_MAX, lengths.min()))
    tails = np.unique(_tail_hashes(text, bounds, tail_len))
    bits = max(16, min(30, int(np.ceil(np.log2(max(tails.size, 1) * 16)))))
    flags = np.zeros(1 << bits, bool)
    flags[((tails * _MIX) >> np.uint64(64 - bits)).astype(np.int64)] = True
    return tail_len, np.packbits(flags, bitorder="little"), np.uint64(64 - bits)


def _code_points(items: list[str], separator: str = "") -> np.ndarray:
    """The code points of the strings joined by `separator`: 1 byte each when Latin-1
    holds them all (the usual ASCII names: a quarter of the bytes), else 4 (UTF-32)."""
    joined = separator.join(items)
    try:
        return np.frombuffer(joined.encode("latin-1"), np.uint8)
    except UnicodeEncodeError:
        return np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), np.uint32)


def string_hashes(values: Sequence | np.ndarray) -> np.ndarray:
    """The hash of each whole string (0 for the empty string), aligned with `values`."""
    arr = _as_text(values)
    out = np.zeros(arr.shape[0], np.uint64)
    rows, _, h = suffix_hashes(arr, domains=False)
    out[rows] = h
    return out


_PTON4 = partial(socket.inet_pton, socket.AF_INET)
_BAD_ADDRESS = b"\x00\x00\x00\x00!"  # 5 bytes: marks a value inet_pton refused


def _pton4_or_bad(address: str) -> bytes:
    try:
        return _PTON4(address)
    except (OSError, TypeError):
        return _BAD_ADDRESS


def _parse_ipv4_bulk(values: Sequence[str] | np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(parsed, network address uint32, prefix length, already normalized) of dotted-quad
    IPv4 addresses and CIDRs ("a.b.c.d" or "a.b.c.d/len"), host bits cleared.

    inet_pton is as strict as ipaddress (four decimal octets <= 255, no leading zeros) and
    ~50x faster; mapped over a list it costs no Python frame per value. Rows not parsed
    (IPv6, netmask forms, invalid) are for ipaddress to judge. "Already normalized": the
    value is its own normalize() text (no host bits set, no "/32"). (A numpy parser over
    the characters was tried: ~10x slower than this.)
    """
    values = values.tolist() if isinstance(values, np.ndarray) else list(values)
    n = len(values)
    try:  # the common case, a list of plain addresses: one C-level pass
        address = np.frombuffer(b"".join(map(_PTON4, values)), ">u4").astype(np.uint32)
        every = np.ones(n, bool)
        return every, address, np.full(n, 32, np.int64), every.copy()
    except (OSError, TypeError):
        pass
    parts = [v.partition("/") for v in values]
    raw = [_pton4_or_bad(a) for a, _, _ in parts]
    ok = np.fromiter(map(len, raw), np.int64, n) == 4
    if not ok.all():
        raw = [r[:4] for r in raw]
    address = np.frombuffer(b"".join(raw), ">u4").astype(np.int64)
    has_slash = np.fromiter((sep == "/" for _, sep, _ in parts), bool, n)
    length = np.fromiter((int(p) if p.isascii() and p.isdigit() and len(p) <= 2
                          else -1 if sep else 32 for _, sep, p in parts), np.int64, n)
    ok &= (length >= 0) & (length <= 32)
    length[~ok] = 32
    network = address & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF)
    normalized = ok & (network == address) & ~(has_slash & (length == 32))
    return ok, network.astype(np.uint32), length, normalized


class _RangeTable:
    """Disjoint sorted address ranges -> innermost indicator (IPv4 cidrs).

    CIDRs are nested or disjoint, so cutting the line at every range start and end + 1 and
    painting the pieces outer prefixes first leaves each piece owned by its most specific
    indicator; a lookup is then one np.searchsorted over the piece starts.
    """

    def __init__(self, starts: np.ndarray, ends: np.ndarray, owners: np.ndarray,
                 lengths: np.ndarray) -> None:
        self.bounds = np.unique(np.concatenate([starts, ends + np.uint64(1)]))
        self.owner = np.full(self.bounds.size, -1, np.int64)
        for length in np.unique(lengths).tolist():  # outer (short) prefixes first
            sel = np.flatnonzero(lengths == length)[::-1]  # first-loaded paints last: wins
            lo = np.searchsorted(self.bounds, starts[sel])
            counts = np.searchsorted(self.bounds, ends[sel] + np.uint64(1)) - lo
            offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts,
                                                               counts)
            self.owner[np.repeat(lo, counts) + offsets] = np.repeat(owners[sel], counts)


_V4_FILTER_SHIFT = 8  # the filter has one flag per /24 block: 2**24 bits, 2 MB


class _V4Table:
    """IPv4 ips and cidrs -> most specific indicator.

    A bit per /24 block says whether any indicator covers part of it: with 1M indicators
    ~6 % of the blocks are flagged, so most addresses are decided by that one read (a
    2 MB bit set, not a 16 MB bool array: random addresses stay in cache). The candidates
    are looked up in the sorted /32 addresses (an address beats every cidr), the rest in
    the disjoint ranges of the cidrs (_RangeTable); both searches start from a per-/16
    index, so they run over the /16's own entries only. One compiled pass (_v4_lookup).
    """

    def __init__(self, start: np.ndarray, length: np.ndarray, owner: np.ndarray) -> None:
        exact = length == 32
        # np.unique's return_index is the first occurrence: the first-loaded duplicate wins
        self.exact, first = np.unique(start[exact], return_index=True)
        self.exact = self.exact.astype(np.uint32)
        self.exact_owner = owner[exact][first].astype(np.int64)
        blocks = np.arange((1 << 16) + 1, dtype=np.uint64) << np.uint64(16)
        # exact[exact_16[b]:exact_16[b + 1]] are the listed addresses of /16 number b
        self.exact_16 = np.searchsorted(self.exact.astype(np.uint64), blocks).astype(np.int64)
        net = ~exact
        flags = np.zeros(1 << (32 - _V4_FILTER_SHIFT), bool)
        flags[self.exact >> _V4_FILTER_SHIFT] = True
        self.nets = None
        # cidr pieces (starts, owners) and per /16 the pieces of its first and last address
        self.bounds = np.zeros(1, np.uint64)
        self.piece_owner = np.full(1, -1, np.int64)
        self.first_16 = np.full(1 << 16, -1, np.int64)
        self.last_16 = np.full(1 << 16, -1, np.int64)
        if net.any():
            lo = start[net].astype(np.uint64)
            hi = lo + (np.uint64(1) << (32 - length[net]).astype(np.uint64)) - np.uint64(1)
            self.nets = _RangeTable(lo, hi, owner[net], length[net])
            self.bounds, self.piece_owner = self.nets.bounds, self.nets.owner
            self.first_16 = np.searchsorted(self.bounds, blocks[:-1], side="right") - 1
            self.last_16 = np.searchsorted(self.bounds, blocks[1:] - np.uint64(1),
                                           side="right") - 1
            # flag every block a cidr touches: +1 at its first block, -1 after its last
            first_block = (lo >> np.uint64(_V4_FILTER_SHIFT)).astype(np.int64)
            last_block = (hi >> np.uint64(_V4_FILTER_SHIFT)).astype(np.int64)
            delta = np.zeros(flags.size + 1, np.int32)
            np.add.at(delta, first_block, 1)
            np.add.at(delta, last_block + 1, -1)
            flags |= np.cumsum(delta[:-1], dtype=np.int32) > 0
        self.filter = np.packbits(flags, bitorder="little")  # bit (b & 7) of byte b >> 3

    def lookup(self, column: np.ndarray) -> tuple[np.ndarray, int]:
        """(owner per address of a 16-byte address column, -1: none or not IPv4-mapped;
        how many addresses are not IPv4-mapped)."""
        return _v4_lookup(_le_words(column), self.filter, self.exact, self.exact_16,
                          self.exact_owner, self.bounds, self.piece_owner, self.first_16,
                          self.last_16)


    def hits(self, column: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(rows that hit, ascending; their owners; how many addresses are not
        IPv4-mapped): lookup's non-negative entries without its per-row output."""
        return _v4_hits(_le_words(column), self.filter, self.exact, self.exact_16,
                        self.exact_owner, self.bounds, self.piece_owner, self.first_16,
                        self.last_16)


def _le_words(column: np.ndarray) -> np.ndarray:
    """16-byte address column -> n x 2 uint64, each the little-endian reading of 8 bytes
    (a view on little-endian machines, a byte-swapped copy elsewhere)."""
    words = np.ascontiguousarray(column).view("<u8").reshape(column.shape[0], 2)
    return words if words.dtype.isnative else words.astype(np.uint64)


@njit
def _v4_lookup(words: np.ndarray, bits: np.ndarray, exact: np.ndarray, exact_16: np.ndarray,
               exact_owner: np.ndarray, bounds: np.ndarray, piece_owner: np.ndarray,
               first_16: np.ndarray, last_16: np.ndarray) -> tuple[np.ndarray, int]:
    """_V4Table.lookup over a 16-byte address column read as two little-endian 64-bit
    words per address (_le_words): the IPv4-mapped test (::ffff:a.b.c.d: first word 0,
    second word's low half 0xFFFF0000) and the byte swap of the address are done here,
    so the column needs no masks or row selection in numpy. Per address a: its /24
    bit (bits has 2**21 bytes: every a >> 11); then a binary search for a in
    exact[exact_16[b]:exact_16[b + 1]] (b = a >> 16 < 65,536; exact_16 has 65,537
    ascending entries <= len(exact)); then the last cidr piece p in first_16[b]..
    last_16[b] with bounds[p] <= a (-1 = before every piece: not read; last_16 <
    len(bounds) = len(piece_owner) by construction)."""
    n = words.shape[0]
    out = np.full(n, -1, np.int64)
    # First a streaming pass that reads the addresses, then the lookups over the packed
    # uint32 array: with 1M indicators one loop doing both measured 10-25 % slower than
    # the numpy + kernel version before it; this split is at par (cache misses of the
    # lookups overlap better in the tight loop).
    addr = np.empty(n, np.uint32)
    mapped = np.empty(n, np.bool_)
    others = 0
    for i in range(n):
        low = words[i, 1]
        mapped[i] = words[i, 0] == 0 and (low & np.uint64(0xFFFFFFFF)) == np.uint64(0xFFFF0000)
        others += not mapped[i]
        x = low >> np.uint64(32)  # the address bytes, least significant first: swap them
        addr[i] = np.uint32(((x & np.uint64(0xFF)) << np.uint64(24))
                            | ((x & np.uint64(0xFF00)) << np.uint64(8))
                            | ((x >> np.uint64(8)) & np.uint64(0xFF00)) | (x >> np.uint64(24)))
    for i in range(n):
        if not mapped[i]:
            continue
        a = addr[i]
        block = a >> 8
        if not (bits[block >> 3] >> (block & 7)) & 1:
            continue
        out[i] = _v4_owner(a, exact, exact_16, exact_owner, bounds, piece_owner, first_16,
                           last_16)
    return out, others


@njit
def _v4_hits(words: np.ndarray, bits: np.ndarray, exact: np.ndarray, exact_16: np.ndarray,
             exact_owner: np.ndarray, bounds: np.ndarray, piece_owner: np.ndarray,
             first_16: np.ndarray, last_16: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """_v4_lookup's hits only: (rows, owners, not-IPv4-mapped count). Most addresses miss
    the /24 filter, so the streaming pass tests the filter too and keeps only the
    candidates (no per-row output, no later scan for the hits); the searches then run
    over the candidates in a tight loop, as in _v4_lookup. Same arguments and results."""
    n = words.shape[0]
    cand = np.empty(n, np.int64)  # (pages are touched only for candidates)
    cand_addr = np.empty(n, np.uint32)
    m = 0
    others = 0
    for i in range(n):
        low = words[i, 1]
        if words[i, 0] != 0 or (low & np.uint64(0xFFFFFFFF)) != np.uint64(0xFFFF0000):
            others += 1
            continue
        x = low >> np.uint64(32)  # the address bytes, least significant first: swap them
        a = np.uint32(((x & np.uint64(0xFF)) << np.uint64(24))
                      | ((x & np.uint64(0xFF00)) << np.uint64(8))
                      | ((x >> np.uint64(8)) & np.uint64(0xFF00)) | (x >> np.uint64(24)))
        block = a >> 8
        if (bits[block >> 3] >> (block & 7)) & 1:
            cand[m] = i
            cand_addr[m] = a
            m += 1
    rows = np.empty(m, np.int64)
    owners = np.empty(m, np.int64)
    h = 0
    for j in range(m):
        owner = _v4_owner(cand_addr[j], exact, exact_16, exact_owner, bounds, piece_owner,
                          first_16, last_16)
        if owner >= 0:  # (-1: no indicator, or a gap between the cidrs)
            rows[h] = cand[j]
            owners[h] = owner
            h += 1
    return rows[:h], owners[:h], others


@njit
def _v4_owner(a, exact: np.ndarray, exact_16: np.ndarray, exact_owner: np.ndarray,
              bounds: np.ndarray, piece_owner: np.ndarray, first_16: np.ndarray,
              last_16: np.ndarray) -> int:
    """The indicator owning IPv4 address a (passed the /24 filter), -1 for none: a binary
    search for a in exact[exact_16[b]:exact_16[b + 1]] (b = a >> 16), then the last cidr
    piece p in first_16[b]..last_16[b] with bounds[p] <= a (see _v4_lookup)."""
    b = a >> 16
    lo = exact_16[b]
    hi = exact_16[b + 1]
    while lo < hi:  # leftmost exact[k] >= a in [lo, hi)
        mid = (lo + hi) >> 1
        if exact[mid] < a:
            lo = mid + 1
        else:
            hi = mid
    if lo < exact_16[b + 1] and exact[lo] == a:
        return exact_owner[lo]
    lo = first_16[b]
    hi = last_16[b]
    while lo < hi:  # last piece starting at or before a, in [lo, hi]
        mid = (lo + hi + 1) >> 1
        if bounds[mid] <= a:
            lo = mid
        else:
            hi = mid - 1
    return piece_owner[lo] if lo >= 0 else -1


class _KeyTable:
    """Sorted uint64 keys -> payload, with a bitmap filter in front of the binary search."""

    def __init__(self, keys: np.ndarray, payload: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        keys, payload = keys[order], payload[order]
        first = np.ones(keys.size, bool)  # duplicates: keep the first-loaded indicator
        first[1:] = keys[1:] != keys[:-1]
        self.keys, self.payload = keys[first], payload[first]
        # ~16 bits per key: a miss passes the filter with probability ~6 %.
        self.bits = max(16, min(30, int(np.ceil(np.log2(max(self.keys.size, 1) * 16)))))
        self.bitmap = np.zeros(1 << self.bits, bool)
        self.bitmap[self._slot(self.keys)] = True
        # the same filter 8 slots a byte, for the compiled name pass: 1 MB instead of 8
        # for 300k keys, so its random reads stay in cache far more often
        self.packed = np.packbits(self.bitmap, bitorder="little")  # slot s: byte s >> 3

    def _slot(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * _MIX) >> np.uint64(64 - self.bits)).astype(np.int64)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions into `keys` that are present, their payload)."""
        if keys.size == 0 or self.keys.size == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        cand = np.flatnonzero(self.bitmap[self._slot(keys)])
        pos = np.searchsorted(self.keys, keys[cand])
        pos[pos == self.keys.size] = 0
        ok = self.keys[pos] == keys[cand]
        return cand[ok], self.payload[pos[ok]]


# --- the indicator set ------------------------------------------------------------------------



def _ip_words(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """16-byte address column -> (high, low) 64-bit words, big-endian (numeric order)."""
    halves = np.ascontiguousarray(column).view(">u8").reshape(-1, 2)
    return halves[:, 0].astype(np.uint64), halves[:, 1].astype(np.uint64)


def _v6_key(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    return (hi * _MIX) ^ lo


def _mask_v6(hi: np.ndarray, lo: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    if length <= 64:
        mask_hi = np.uint64(0) if length == 0 else np.uint64(((1 << length) - 1) << (64 - length))
        return hi & mask_hi, np.zeros_like(lo)
    rest = length - 64
    return hi, lo & np.uint64(((1 << rest) - 1) << (64 - rest))


# ECS threat.indicator.type per indicator type (ECS expected values); addresses by family.
ECS_INDICATOR_TYPES = {"domain": "domain-name", "url": "url", "ja3": "software",
                       "ja4": "software", "cert_sha1": "x509-certificate"}


def indicator_ecs(ind: Indicator) -> dict:
    """The ECS `threat.indicator` object (also `threat.enrichments.indicator`) of one
    indicator: what both the intel alert and fusion's event tagging show analysts."""
    ecs_type = ECS_INDICATOR_TYPES.get(ind.type) or (
        "ipv6-addr" if ":" in ind.value else "ipv4-addr")
    out: dict = {"type": ecs_type, "name": ind.value, "provider": ind.source}
    if ind.description:
        out["description"] = ind.description
    if ind.confidence:
        out["confidence"] = ind.confidence
    if ind.reference:
        out["reference"] = ind.reference
    if ind.type == "ip":
        out["ip"] = ind.value
    elif ind.type == "domain":
        out["url"] = {"domain": ind.value}
    elif ind.type == "url":
        out["url"] = {"full": ind.value}
    elif ind.type == "cert_sha1":
        out["file"] = {"hash": {"sha1": ind.value}}
    return out


@dataclass
class Hit:
    """Rows of one batch column that hit an indicator."""

    field: str  # column name ("dst_ip", "qname", "url" ...)
    rows: np.ndarray  # row indices into the batch
    indicators: np.ndarray  # index into IndicatorSet.indicators, aligned with rows


# Columns matched per event kind: (column, indicator types). "url" is host + uri of http.
MATCH_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "flow": (("src_ip", "ip"), ("dst_ip", "ip")),
    "dns": (("qname", "domain"),),
    "http": (("host", "domain"), ("url", "url")),
    "tls": (("server_name", "domain"), ("ja3", "ja3"), ("ja4", "ja4"), ("cert_sha1", "cert_sha1")),
}


_LOADED: dict[str, IndicatorSet] = {}  # load key -> set (from_config)
_LOADED_MAX = 4


def _load_key(sources: list[Mapping], inline: list[Mapping | str],
              base_dir: str | os.PathLike | None) -> str | None:
    """What makes two from_config calls load the same set: each source's resolved file with
    its size and mtime, its other settings, and the inline entries. None: do not cache
    (a file that cannot be read is reported by the load itself)."""
    parts = []
    for spec in sources:
        path = Path(str(spec.get("path", "")))
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        try:
            stat = path.resolve().stat()
        except OSError:
            return None
        parts.append({**{k: v for k, v in spec.items() if k != "path"},
                      "path": str(path.resolve()), "size": stat.st_size,
                      "mtime_ns": stat.st_mtime_ns})
    try:
        return json.dumps([parts, inline], sort_keys=True)
    except (TypeError, ValueError):
        return None


@dataclass
class IndicatorSet:
    """Indicators and their lookup tables; `match_*` return one indicator index per row
    (-1: no hit), the most specific indicator when several apply."""

    indicators: Sequence[Indicator] = field(default_factory=list)  # list or IndicatorTable
    skipped: int = 0  # entries of the sources that could not be used

    def __post_init__(self) -> None:
        self._build()

    @classmethod
    def from_config(cls, sources: Iterable[Mapping] | None = None,
                    inline: Iterable[Mapping | str] | None = None,
                    base_dir: str | os.PathLike | None = None) -> IndicatorSet:
        """`sources`: [{path, format: csv|misp|stix, name, severity}]; `inline`: entries.

        The same sources (same resolved files, unchanged since) give the same loaded set:
        fusion and correlation in one process share it instead of loading it twice."""
        sources, inline = list(sources or ()), list(inline or ())
        key = _load_key(sources, inline, base_dir)
        cached = _LOADED.get(key) if key is not None else None
        if cached is not None:
            return cached
        loaded = cls._load(sources, inline, base_dir)
        if key is not None:
            while len(_LOADED) >= _LOADED_MAX:  # a few sets at most (configs reloaded)
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[key] = loaded
        return loaded

    @classmethod
    def _load(cls, sources: list[Mapping], inline: list[Mapping | str],
              base_dir: str | os.PathLike | None) -> IndicatorSet:
        parts = [load_source(spec, base_dir) for spec in sources]
        parts.append(inline_indicators(inline))
        if all(isinstance(p, list) for p in parts):
            return cls([ind for part in parts for ind in part])
        return cls(IndicatorTable.concat(parts))  # bulk (CSV) sources stay column-wise

    def __len__(self) -> int:
        return len(self.indicators)

    def types(self) -> set[str]:
        return {kind for kind, count in self._counts.items() if count}

    def _build(self) -> None:
        # Column-wise from here on (IndicatorTable): numpy, plus a Python loop only over
        # the rare IPv6 / unusual address forms.
        table = IndicatorTable.from_indicators(self.indicators)
        kinds, all_values = table.kinds, table.values
        by_type = {t: np.flatnonzero(kinds == c) for t, c in _TYPE_CODE.items()}
        # ips first (plain addresses: the fast path of _parse_ipv4_bulk), then cidrs
        addr_idx = np.concatenate([by_type["ip"], by_type["cidr"]])
        parsed = [_parse_ipv4_bulk(all_values[by_type[k]]) for k in ("ip", "cidr")]
        ok, start, length = (np.concatenate([p[f] for p in parsed]) for f in range(3))
        v4_idx, v4_start, v4_len = addr_idx[ok], start[ok], length[ok]
        extra_start: list[int] = []
        extra_len: list[int] = []
        extra_idx: list[int] = []
        v6: dict[int, tuple[list[int], list[int], list[int]]] = {}
        for i in addr_idx[~ok].tolist():  # IPv6 and netmask forms: few, via ipaddress
            net = ipaddress.ip_network(all_values[i], strict=False)
            if net.version == 4:
                extra_start.append(int(net.network_address))
                extra_len.append(net.prefixlen)
                extra_idx.append(i)
            else:
                packed = int(net.network_address)
                his, los, idx = v6.setdefault(net.prefixlen, ([], [], []))
                his.append(packed >> 64)
                los.append(packed & ((1 << 64) - 1))
                idx.append(i)
        if extra_idx:
            v4_idx = np.concatenate([v4_idx, np.array(extra_idx, np.int64)])
            v4_start = np.concatenate([v4_start, np.array(extra_start, np.uint32)])
            v4_len = np.concatenate([v4_len, np.array(extra_len, np.int64)])
        order = np.argsort(v4_idx, kind="stable")  # load order decides which duplicate wins
        v4_idx, v4_start, v4_len = v4_idx[order], v4_start[order], v4_len[order]
        self._v4 = _V4Table(v4_start, v4_len, v4_idx) if v4_idx.size else None
        self._v6 = []
        self._v6_hi = np.zeros(len(table), np.uint64)
        self._v6_lo = np.zeros(len(table), np.uint64)
        for plen, (his, los, ix) in sorted(v6.items(), reverse=True):
            hi, lo = np.array(his, np.uint64), np.array(los, np.uint64)
            self._v6_hi[ix], self._v6_lo[ix] = hi, lo
            self._v6.append((plen, _KeyTable(_v6_key(hi, lo), np.array(ix, np.int64))))
        self._text: dict[str, _KeyTable] = {}
        for kind in ("domain", "url", "ja3", "ja4", "cert_sha1"):
            idx = by_type[kind]
            self._text[kind] = _KeyTable(string_hashes(all_values[idx]), idx)
        # the text of each domain key, for the compiled name pass to verify its hits
        domain_values = all_values[self._text["domain"].payload].tolist()
        self._domain_text = _code_points(domain_values)
        self._domain_text_bounds = np.zeros(len(domain_values) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, domain_values), np.int64, len(domain_values)),
                  out=self._domain_text_bounds[1:])
        self._domain_longest = int(np.diff(self._domain_text_bounds).max(initial=0))
        self._domain_tails = _tail_filter(self._domain_text, self._domain_text_bounds)
        self._counts = {k: int(v.size) for k, v in by_type.items()}
        self._values = all_values  # normalized value per indicator: verifies hash hits

    # --- matching ------------------------------------------------------------------------

    def match_ips(self, column: np.ndarray) -> np.ndarray:
        """Indicator index per address of a 16-byte column (ip or cidr; longest prefix)."""
        n = column.shape[0]
        if n == 0 or self._v4 is None:
            out, others = np.full(n, -1, np.int64), n  # others: not IPv4-mapped, at most
        else:
            out, others = self._v4.lookup(column)  # IPv6 rows stay -1
        if self._v6 and others:
            # Big-endian 32-bit words: an IPv4-mapped address is 0, 0, 0x0000FFFF, address.
            words = np.ascontiguousarray(column).view(">u4").reshape(n, 4)
            is_v4 = (words[:, 2] == 0xFFFF) & (words[:, 0] == 0) & (words[:, 1] == 0)
            rows = np.flatnonzero(~is_v4)
            hi, lo = _ip_words(column[rows])
            for plen, table in self._v6:
                mhi, mlo = _mask_v6(hi, lo, plen)
                pos, payload = table.lookup(_v6_key(mhi, mlo))
                # verify both words: the key mixes them
                ok = (self._v6_hi[payload] == mhi[pos]) & (self._v6_lo[payload] == mlo[pos])
                pos, payload = pos[ok], payload[ok]
                free = out[rows[pos]] < 0
                out[rows[pos[free]]] = payload[free]
        return out

    def ip_hits(self, column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows that hit, ascending; their indicator index) of a 16-byte address column:
        = match_ips's non-negative entries, without a per-row output when no IPv6 row
        meets an IPv6 indicator (the usual case)."""
        if column.shape[0] and self._v4 is not None:
            rows, owners, others = self._v4.hits(column)
            if not (self._v6 and others):
                return rows, owners
        elif not self._v6 or column.shape[0] == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        got = self.match_ips(column)  # IPv6 rows and IPv6 indicators: the full pass
        rows = np.flatnonzero(got >= 0)
        return rows, got[rows]

    def match_domains(self, names: Sequence | np.ndarray) -> np.ndarray:
        """Indicator index per name: a domain indicator hits itself and all its subdomains."""
        arr = _as_text(names)
        out = np.full(arr.shape[0], -1, np.int64)
        table = self._text["domain"]
        if arr.shape[0] == 0 or table.keys.size == 0:
            return out
        # Every row's suffixes are hashed, looked up and verified in one compiled pass
        # over the names joined by NUL: cheaper than first finding the distinct names
        # (factorize_text costs more per row than the hashing it saves).
        items = arr.tolist()
        separated, found = _joined_domain_kernel(
            _code_points(items, "\0"), len(items), table.keys, table.payload, table.packed,
            np.uint64(64 - table.bits), self._domain_text, self._domain_text_bounds,
            self._domain_longest, *self._domain_tails)
        if separated:
            return found
        # Rare: a name contains a NUL itself. Split by lengths, verify hits one by one.
        rows, starts, hashes = suffix_hashes(arr)
        pos, payload = table.lookup(hashes)
        best = np.full(arr.shape[0], np.iinfo(np.int64).max, np.int64)
        checked: dict[tuple[str, int, int], bool] = {}  # a listed name repeats: check once
        for p, ind in zip(pos.tolist(), payload.tolist(), strict=True):  # hits only
            r, s = int(rows[p]), int(starts[p])
            name = arr[r]
            ok = checked.get((name, s, ind))
            if ok is None:
                ok = checked[(name, s, ind)] = name[s:] == self._values[ind]
            if ok and s < best[r]:
                best[r], out[r] = s, ind  # longest suffix = most specific indicator
        return out

    def match_strings(self, kind: str, values: Sequence | np.ndarray) -> np.ndarray:
        """Indicator index per value for url, ja3, ja4, cert_sha1 (values normalized like
        the indicators: see normalize)."""
        arr = _as_text(values)
        out = np.full(arr.shape[0], -1, np.int64)
        table = self._text[kind]
        if arr.shape[0] == 0 or table.keys.size == 0:
            return out
        pos, payload = table.lookup(string_hashes(arr))
        for p, ind in zip(pos.tolist(), payload.tolist(), strict=True):
            if arr[p] == self._values[ind]:
                out[p] = ind
        return out

    def match_urls(self, hosts: np.ndarray, uris: np.ndarray) -> np.ndarray:
        """Indicator index per http request (host + uri), with and without the query."""
        table = self._text["url"]
        n = len(hosts)
        if n == 0 or table.keys.size == 0:
            return np.full(n, -1, np.int64)
        full = [normalize_url(u) if "://" in u[:12] else f"{h}{u if u.startswith('/') else '/' + u}"
                for h, u in zip(_as_text(hosts).tolist(), _as_text(uris).tolist(), strict=True)]
        out = self.match_strings("url", full)
        miss = np.flatnonzero(out < 0)
        if miss.size:
            bare = [full[i].split("?", 1)[0] for i in miss.tolist()]
            out[miss] = self.match_strings("url", bare)
        return out

    def match_batch(self, batch: EventBatch,
                    fields: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> list[Hit]:
        """Every hit of a batch, per matched column (MATCH_FIELDS unless `fields` given)."""
        spec = (fields or MATCH_FIELDS).get(batch.kind, ())
        cols = batch.columns
        hits = []
        for column, kind in spec:
            if kind == "ip":
                if self._v4 is None and not self._v6:
                    continue
                rows, found = self.ip_hits(cols[column])
                if rows.size:
                    hits.append(Hit(column, rows, found))
                continue
            elif not self._counts.get(kind):
                continue
            elif kind == "domain":
                got = self.match_domains(cols[column])
            elif kind == "url":
                got = self.match_urls(cols["host"], cols["uri"])
            else:
                values = cols[column]
                if kind == "cert_sha1":
                    values = np.array([str(v).replace(":", "").upper() for v in values], object)
                got = self.match_strings(kind, values)
            rows = np.flatnonzero(got >= 0)
            if rows.size:
                hits.append(Hit(column, rows, got[rows]))
        return hits
