"""Findings -> ECS alert documents, and the stable alert id.

Every field outside `cirtsa.*` is an ECS field (checked against the ECS reference in
tests/test_engine.py). Times are event time: `@timestamp` is the last evidence activity,
`event.start`/`event.end` the first/last evidence, `cirtsa.alert.window` the window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from correlation.detector import Finding, Rule
from correlation.evidence_rows import expect_described
from pipeline.heap import gc_paused
from pipeline.schema import ns_to_iso

ECS_VERSION = "8.17.0"
RULESET = "cirt-sa"
ALERT_DATASET = "cirtsa.alert"
_NS_PER_S = 1_000_000_000


def alert_id(rule_id: str, key: str, window_start_ns: int) -> str:
    """Stable id (DESIGN.md section 3): hash of (rule id, key, window start), 32 hex chars.

    Used as the Elasticsearch `_id`, so replaying the same input never creates a second
    document. The unit separator keeps ("a|b", "c") and ("a", "b|c") apart.
    """
    return hashlib.sha256(f"{rule_id}\x1f{key}\x1f{int(window_start_ns)}".encode()
                          ).hexdigest()[:32]


# Second -> "YYYY-MM-DDTHH:MM:SS". Why: datetime.strftime costs ~5-20 µs, and an alert
# has 7 timestamps, an incident 4; in a burst most share their second. Bounded: cleared
# when full (a miss just formats again).
_ISO_SECONDS: dict[int, str] = {}
_ISO_SECONDS_MAX = 1 << 16


def iso_ns(ns: int) -> str:
    """pipeline.schema.ns_to_iso (RFC 3339 UTC, microseconds), memoized per second."""
    sec, rem = divmod(int(ns), _NS_PER_S)
    head = _ISO_SECONDS.get(sec)
    if head is None:
        if len(_ISO_SECONDS) >= _ISO_SECONDS_MAX:
            _ISO_SECONDS.clear()
        head = _ISO_SECONDS[sec] = ns_to_iso(sec * _NS_PER_S)[:-8]  # drop ".000000Z"
    return f"{head}.{rem // 1000:06d}Z"


def build_alert(finding: Finding) -> dict:
    """One ECS alert document for a finding."""
    return _document(finding)


def build_alerts(findings: Sequence[Finding]) -> list[dict]:
    """The ECS alert documents of many findings (same as build_alert on each, in order).

    The findings' hits are announced to their LazyEvidence first (the evidence of the
    suppressed findings of the same windows is then never computed). A burst (thousands
    of findings of one window close) is built with the garbage collector paused; each
    document is fresh (no shared mutable parts), so callers may edit one without
    touching another.
    """
    # evidence computed per window for all hits at once: only for these findings' hits
    expect_described(f.describe for f in findings)
    if len(findings) < 8:
        return [_document(f) for f in findings]
    with gc_paused():
        return [_document(f) for f in findings]


# Rule -> its constant texts (properties that format a string on every access).
_RULE_TEXTS: dict[Rule, tuple[str, str]] = {}


def _rule_texts(rule: Rule) -> tuple[str, str]:
    texts = _RULE_TEXTS.get(rule)
    if texts is None:
        texts = _RULE_TEXTS[rule] = (rule.tactic_reference, rule.technique_reference)
    return texts


def _document(finding: Finding) -> dict:
    rule = finding.rule
    ev = finding.describe()
    tactic_reference, technique_reference = _rule_texts(rule)
    last_seen = iso_ns(ev.last_seen)
    first_seen = iso_ns(ev.first_seen)
    doc: dict = {
        "@timestamp": last_seen,
        "ecs": {"version": ECS_VERSION},
        "message": ev.message,
        "event": {
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["info"],
            "id": alert_id(rule.id, finding.key, finding.window_start),
            "dataset": ALERT_DATASET,
            "module": "cirtsa",
            "severity": rule.severity,
            "risk_score": rule.risk_score,
            "start": first_seen,
            "end": last_seen,
            "duration": int(ev.last_seen - ev.first_seen),
        },
        "rule": {
            "id": rule.id,
            "name": rule.name,
            "description": rule.description,
            "category": rule.category,
            "ruleset": RULESET,
            "version": rule.version,
            "reference": technique_reference,
        },
        "threat": {
            "framework": "MITRE ATT&CK",
            "tactic": {"id": [rule.tactic_id], "name": [rule.tactic_name],
                       "reference": [tactic_reference]},
            "technique": {"id": [rule.technique_id], "name": [rule.technique_name],
                          "reference": [technique_reference]},
        },
        "source": {"ip": ev.source_ip},
        "related": {"ip": list(ev.related_ips) or [ev.source_ip]},
        "cirtsa": {
            "alert": {
                "key": finding.key,
                "severity_label": rule.severity_label,
                "window": {"start": iso_ns(finding.window_start),
                           "end": iso_ns(finding.window_end)},
            },
            "evidence": {
                **ev.details,
                "first_seen": first_seen,
                "last_seen": last_seen,
            },
        },
    }
    destination: dict = {}
    if ev.destination_ip is not None:
        destination["ip"] = ev.destination_ip
    if ev.destination_port is not None:
        destination["port"] = int(ev.destination_port)
    if destination:
        doc["destination"] = destination
    if ev.transport:
        doc["network"] = {"transport": ev.transport}
    # ECS observer.* describes one observer: the first sensor (sorted) that saw the evidence.
    # Every sensor and segment involved is listed under cirtsa.observers (cross-sensor view).
    observer: dict = {}
    if ev.observers:
        observer["name"] = ev.observers[0]
        doc["cirtsa"]["observers"] = {"name": list(ev.observers)}
    if ev.zones:
        observer["ingress"] = {"zone": ev.zones[0]}
        doc["cirtsa"].setdefault("observers", {})["zone"] = list(ev.zones)
    if observer:
        doc["observer"] = observer
    if ev.ecs:
        _merge(doc, ev.ecs)
    return doc


def _merge(doc: dict, extra: dict) -> None:
    """Deep-merge `extra` into `doc` (mappings merge key by key, other values replace)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            _merge(doc[key], value)
        else:
            doc[key] = value
