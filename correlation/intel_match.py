"""Threat-intel indicator hits: events that touch a known-bad IP, CIDR, domain, URL, JA3/JA4
or certificate SHA-1 (indicator sets from pipeline/intel.py).

`select` does the matching, vectorized over the whole batch, so only hitting rows are ever
buffered; `detect` re-matches those few rows and reports one finding per (indicator,
local endpoint, window). Which columns are matched per kind: pipeline.intel.MATCH_FIELDS
(addresses only on flows, so one connection is one address hit, not one per protocol event).

ATT&CK: the indicator's own tags when they name a technique/tactic (MISP galaxy tags, STIX
kill chain phases), else TA0011 Command and Control / T1071 Application Layer Protocol:
most feeds list C2 infrastructure, and contacting it is what the alert is about.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np

from correlation.arrival_memo import rows_in_range
from correlation.detector import (
    Columns,
    Detector,
    Evidence,
    Finding,
    InputSpec,
    Rule,
    WindowRange,
    sorted_unique_text,
)
from pipeline.intel import MATCH_FIELDS, Indicator, IndicatorSet, indicator_ecs
from pipeline.schema import TRANSPORT_NAMES, EventBatch
from sensors.packets import ip_column_to_str

SEVERITIES = {"low": (21, 21.0), "medium": (47, 47.0), "high": (73, 73.0),
              "critical": (99, 99.0)}

_C2 = dict(tactic_id="TA0011", tactic_name="Command and Control",
           technique_id="T1071", technique_name="Application Layer Protocol")


def _rule(kind: str, name: str, what: str) -> Rule:
    return Rule(id=f"cirtsa.intel.{kind}", name=f"Threat intel hit: {name}",
                description=f"An event matched a threat-intel {what} indicator.",
                category="Threat intelligence", severity=47, severity_label="medium",
                risk_score=47.0, **_C2)


RULES = {
    "ip": _rule("ip", "known-bad address", "IP address or CIDR"),
    "domain": _rule("domain", "known-bad domain", "domain (or parent domain)"),
    "url": _rule("url", "known-bad URL", "URL"),
    "fingerprint": _rule("fingerprint", "known-bad TLS client fingerprint", "JA3/JA4"),
    "certificate": _rule("certificate", "known-bad TLS certificate", "certificate SHA-1"),
}
_RULE_OF_TYPE = {"ip": "ip", "cidr": "ip", "domain": "domain", "url": "url",
                 "ja3": "fingerprint", "ja4": "fingerprint", "cert_sha1": "certificate"}

_BASE = ("timestamp", "src_ip", "dst_ip", "dst_port", "observer_name", "ingress_zone")
_COLUMNS = {
    "flow": _BASE + ("end", "transport"),
    "dns": _BASE + ("transport", "is_response", "qname"),
    "http": _BASE + ("transport", "host", "uri"),
    "tls": _BASE + ("transport", "server_name", "ja3", "ja4", "cert_sha1"),
}

class IntelMatchDetector(Detector):
    """One finding per (indicator, local endpoint, window) with at least one hit."""

    name = "intel_match"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = tuple(RULES.values())
    inputs = tuple(InputSpec(kind, cols) for kind, cols in _COLUMNS.items())

    def __init__(self, config: Mapping, intel: IndicatorSet | None = None) -> None:
        super().__init__(config)
        base_dir = config.get("base_dir")
        self.intel = intel if intel is not None else IndicatorSet.from_config(
            config.get("sources") or [], config.get("indicators") or [],
            base_dir=Path(base_dir) if base_dir else None)
        self.default_severity = str(config.get("default_severity", "medium")).lower()
        if self.default_severity not in SEVERITIES:
            raise ValueError(f"correlation.detectors.{self.name}.default_severity: "
                             f"one of {sorted(SEVERITIES)}")
        self.max_sample = int(config.get("evidence_sample", 20))
        self.stats = {"hits": 0}

    def select(self, batch: EventBatch) -> np.ndarray:
        mask = np.zeros(len(batch), bool)
        if len(self.intel) and batch.kind in MATCH_FIELDS:
            for hit in self.intel.match_batch(batch):
                mask[hit.rows] = True
            self.stats["hits"] += int(mask.sum())
        return mask

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        groups: dict[tuple[int, str, int], list[tuple[str, str, np.ndarray]]] = {}
        for kind, cols in rows.items():
            t = cols["timestamp"]
            idx = rows_in_range(t, windows)
            if idx.size == 0:
                continue
            sub = EventBatch(kind, {c: v[idx] for c, v in cols.items()})
            for hit in self.intel.match_batch(sub, _subset(kind, cols)):
                r = idx[hit.rows]
                local = _local_endpoint(kind, hit.field, cols, r)
                copy_rows, k = windows.assign(t[r])
                for c, w in zip(copy_rows.tolist(), k.tolist(), strict=True):
                    key = (w, local[c], int(hit.indicators[c]))
                    groups.setdefault(key, []).append((kind, hit.field, r[c:c + 1]))
        findings = []
        for (w, local, ind_idx), members in groups.items():  # one iteration per finding
            ind = self.intel.indicators[ind_idx]
            rule = self._rule_for(ind)
            findings.append(Finding(
                rule=rule, key=f"{ind.type}:{ind.value}|{local}",
                window_start=int(windows.spec.start(w)), window_end=int(windows.spec.end(w)),
                describe=partial(self._describe, rows, members, ind, local)))
        return findings

    def _rule_for(self, ind: Indicator) -> Rule:
        rule = RULES[_RULE_OF_TYPE[ind.type]]
        label = ind.severity if ind.severity in SEVERITIES else self.default_severity
        changes: dict = {"severity": SEVERITIES[label][0], "risk_score": SEVERITIES[label][1],
                         "severity_label": label}
        if ind.tactic:
            changes.update(tactic_id=ind.tactic[0], tactic_name=ind.tactic[1])
        if ind.technique:
            changes.update(technique_id=ind.technique[0], technique_name=ind.technique[1])
        return dataclasses.replace(rule, **changes)

    def _describe(self, rows: Mapping[str, Columns], members: list, ind: Indicator,
                  local: str) -> Evidence:
        times, ends, srcs, dsts, ports, protos, observers, zones, matched = \
            [], [], [], [], [], [], [], [], []
        for kind, column, r in members:
            c = rows[kind]
            times.append(int(c["timestamp"][r[0]]))
            ends.append(int(c["end"][r[0]]) if "end" in c else times[-1])
            src, dst = ip_column_to_str(c["src_ip"][r])[0], ip_column_to_str(c["dst_ip"][r])[0]
            if kind == "dns" and bool(c["is_response"][r[0]]):
                src, dst = dst, src  # the client asked: responses travel server -> client
            srcs.append(src)
            dsts.append(dst)
            ports.append(int(c["dst_port"][r[0]]))
            protos.append(int(c["transport"][r[0]]))
            observers += sorted_unique_text(c["observer_name"][r])
            zones += sorted_unique_text(c["ingress_zone"][r])
            if column.endswith("_ip"):
                matched.append(f"{kind}.{column}")
            else:
                value = c[column][r[0]] if column in c else ""
                if column == "url":
                    value = f"{c['host'][r[0]]}{c['uri'][r[0]]}"
                matched.append(f"{kind}.{column}={value}")
        first = int(np.argmin(times))
        src, dst = srcs[first], dsts[first]
        seen = sorted(set(matched))
        what = "address" if ind.type in ("ip", "cidr") else ind.type.replace("_", " ")
        inbound = ind.type in ("ip", "cidr") and src != local
        verb = "was contacted by" if inbound else "hit"
        desc = f" ({ind.description})" if ind.description else ""
        threat = {"indicator": indicator_ecs(ind), "feed": {"name": ind.source}}
        return Evidence(
            first_seen=min(times), last_seen=max(max(ends), max(times)),
            source_ip=src, destination_ip=dst,
            destination_port=ports[first] if len(set(ports)) == 1 else None,
            transport=TRANSPORT_NAMES.get(protos[first]) if len(set(protos)) == 1 else None,
            related_ips=sorted(set(srcs) | set(dsts)),
            observers=sorted(set(observers)), zones=sorted(set(zones)),
            details={"indicator": {"type": ind.type, "value": ind.value, "source": ind.source,
                                   "tags": list(ind.tags)},
                     "hits": len(members), "direction": "inbound" if inbound else "outbound",
                     "matched": seen[: self.max_sample]},
            ecs={"threat": threat},
            message=f"{local} {verb} threat-intel {what} {ind.value} from {ind.source}{desc}: "
                    f"{len(members)} event(s), {seen[0]}",
        )


def _subset(kind: str, cols: Columns) -> dict[str, tuple[tuple[str, str], ...]]:
    """MATCH_FIELDS of `kind`, limited to what was buffered (a kind without url columns)."""
    return {kind: tuple((c, t) for c, t in MATCH_FIELDS[kind] if c in cols or c == "url")}


def _local_endpoint(kind: str, column: str, cols: Columns, r: np.ndarray) -> list[str]:
    """The endpoint that is not the indicator: the peer of a hit address, else the client."""
    src, dst = cols["src_ip"][r], cols["dst_ip"][r]
    if column == "dst_ip":
        side = src
    elif column == "src_ip":
        side = dst
    elif kind == "dns":
        side = np.where(cols["is_response"][r], dst, src)
    else:
        side = src
    return ip_column_to_str(side)
