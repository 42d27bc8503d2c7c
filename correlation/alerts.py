"""Findings -> ECS alert documents, and the stable alert id.

Every field outside `cirtsa.*` is an ECS field (checked against the ECS reference in
tests/test_engine.py). Times are event time: `@timestamp` is the last evidence activity,
`event.start`/`event.end` the first/last evidence, `cirtsa.alert.window` the window.
"""

from __future__ import annotations

import hashlib

from correlation.detector import Finding
from pipeline.schema import ns_to_iso

ECS_VERSION = "8.17.0"
RULESET = "cirt-sa"
ALERT_DATASET = "cirtsa.alert"


def alert_id(rule_id: str, key: str, window_start_ns: int) -> str:
    """Stable id (DESIGN.md section 3): hash of (rule id, key, window start), 32 hex chars.

    Used as the Elasticsearch `_id`, so replaying the same input never creates a second
    document. The unit separator keeps ("a|b", "c") and ("a", "b|c") apart.
    """
    text = "\x1f".join((rule_id, key, str(int(window_start_ns))))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def build_alert(finding: Finding) -> dict:
    """One ECS alert document for a finding."""
    rule = finding.rule
    ev = finding.describe()
    doc: dict = {
        "@timestamp": ns_to_iso(ev.last_seen),
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
            "start": ns_to_iso(ev.first_seen),
            "end": ns_to_iso(ev.last_seen),
            "duration": int(ev.last_seen - ev.first_seen),
        },
        "rule": {
            "id": rule.id,
            "name": rule.name,
            "description": rule.description,
            "category": rule.category,
            "ruleset": RULESET,
            "version": rule.version,
            "reference": rule.technique_reference,
        },
        "threat": {
            "framework": "MITRE ATT&CK",
            "tactic": {"id": [rule.tactic_id], "name": [rule.tactic_name],
                       "reference": [rule.tactic_reference]},
            "technique": {"id": [rule.technique_id], "name": [rule.technique_name],
                          "reference": [rule.technique_reference]},
        },
        "source": {"ip": ev.source_ip},
        "related": {"ip": list(ev.related_ips) or [ev.source_ip]},
        "cirtsa": {
            "alert": {
                "key": finding.key,
                "severity_label": rule.severity_label,
                "window": {"start": ns_to_iso(finding.window_start),
                           "end": ns_to_iso(finding.window_end)},
            },
            "evidence": {
                **ev.details,
                "first_seen": ns_to_iso(ev.first_seen),
                "last_seen": ns_to_iso(ev.last_seen),
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
