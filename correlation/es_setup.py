"""Elasticsearch setup: ECS index templates, the alert/incident indices, the events ILM policy.

What `setup()` installs (docs/elasticsearch.md explains the choices):

- component templates `cirtsa@settings`, `cirtsa-ecs@mappings` (ECS fields every document
  shares) and one `@mappings` component per document family (alerts, incidents, events,
  sensor health);
- composable index templates `cirtsa-alerts`, `cirtsa-incidents`, `cirtsa-health` (plain
  indices) and
  `cirtsa-events` (data streams `logs-cirtsa.flow-*`, `logs-cirtsa.dns-*`, ... with ILM);
- the ILM policy `cirtsa-events` (hot with rollover, delete after `retention_days`);
- the concrete indices `logs-cirtsa.alerts-v1` / `logs-cirtsa.incidents-v1` /
  `logs-cirtsa.sensor_health-v1` behind the write aliases `logs-cirtsa.alerts-default` /
  `logs-cirtsa.incidents-default` / `logs-cirtsa.sensor_health-default`.

Sensor health documents (sensors/health.py) go to a plain index too: they are few (one per
sensor per minute), and a redelivered document must stay one document (create by id), which
a plain index with a write alias gives everywhere, test servers included.

Alerts and incidents live in plain indices, not data streams: the sink writes them by their
stable id (create for alerts, index = upsert for incidents) and analysts update their status
in place; a data stream only accepts op_type=create and spreads one id over backing indices.

Every mapping is explicit and `dynamic: false`: an unknown field stays in `_source` (Kibana
shows it) but is not indexed, so a detector that adds a field never loses an alert; a value
that violates a mapped type is rejected by ES and dead-lettered by the sink.

Idempotence: each body carries `_meta.cirtsa_hash` (sha256 of the body). A second run reads
the installed objects, compares hashes and writes nothing when they match.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from elastic_transport import HttpHeaders, Urllib3HttpNode
from elastic_transport._node import NodeApiResponse
from elasticsearch import ApiError, Elasticsearch, NotFoundError

from pipeline.schema import KINDS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # bump when a mapping change needs a new concrete index (reindex)

ALERTS_ALIAS = "logs-cirtsa.alerts-default"
ALERTS_INDEX = f"logs-cirtsa.alerts-v{SCHEMA_VERSION}"
INCIDENTS_ALIAS = "logs-cirtsa.incidents-default"
INCIDENTS_INDEX = f"logs-cirtsa.incidents-v{SCHEMA_VERSION}"
HEALTH_ALIAS = "logs-cirtsa.sensor_health-default"
HEALTH_INDEX = f"logs-cirtsa.sensor_health-v{SCHEMA_VERSION}"
EVENTS_POLICY = "cirtsa-events"
# Above the built-in `logs` template (priority 100, logs-*-*, data stream) so ours wins.
TEMPLATE_PRIORITY = 200

# --- field lists: dotted ECS path -> ECS type (tests check each against ecs_flat.yml) ------

ECS_COMMON: dict[str, str] = {
    "@timestamp": "date",
    "message": "match_only_text",
    "tags": "keyword",
    "ecs.version": "keyword",
    **{f"event.{k}": "keyword" for k in (
        "kind", "category", "type", "dataset", "module", "action", "outcome", "id", "code",
        "provider", "reason", "reference")},
    "event.severity": "long",
    "event.risk_score": "float",
    "event.risk_score_norm": "float",
    "event.start": "date",
    "event.end": "date",
    "event.created": "date",
    "event.ingested": "date",
    "event.duration": "long",
    "event.sequence": "long",
    **{f"observer.{k}": "keyword" for k in (
        "name", "hostname", "type", "vendor", "product", "ingress.zone",
        "ingress.interface.name", "ingress.vlan.id")},
    **{f"{side}.{k}": t for side in ("source", "destination") for k, t in (
        ("ip", "ip"), ("port", "long"), ("mac", "keyword"), ("address", "keyword"),
        ("domain", "keyword"), ("bytes", "long"), ("packets", "long"))},
    **{f"network.{k}": "keyword" for k in (
        "transport", "protocol", "iana_number", "community_id", "direction", "type",
        "application", "vlan.id")},
    "network.bytes": "long",
    "network.packets": "long",
    "related.ip": "ip",
    "related.hosts": "keyword",
    "related.user": "keyword",
    "related.hash": "keyword",
    "host.name": "keyword",
    "user.name": "keyword",
    "dns.question.name": "keyword",
    "dns.question.type": "keyword",
    "dns.question.registered_domain": "keyword",
    "tls.client.ja3": "keyword",
    "tls.client.server_name": "keyword",
    "tls.server.ja3s": "keyword",
    "tls.server.hash.sha1": "keyword",
}

ECS_ALERT: dict[str, str] = {
    **{f"rule.{k}": "keyword" for k in (
        "id", "uuid", "name", "description", "category", "ruleset", "version", "reference",
        "author", "license")},
    "threat.framework": "keyword",
    **{f"threat.{k}": "keyword" for k in (
        "tactic.id", "tactic.name", "tactic.reference", "technique.id", "technique.name",
        "technique.reference", "technique.subtechnique.id", "technique.subtechnique.name",
        "technique.subtechnique.reference")},
    "threat.indicator.ip": "ip",
    **{f"threat.indicator.{k}": "keyword" for k in (
        "type", "provider", "name", "description", "confidence", "reference",
        "url.domain", "file.hash.sha1", "file.hash.sha256", "file.hash.md5")},
    "threat.feed.name": "keyword",
}

ECS_EVENT: dict[str, str] = {
    "dns.id": "keyword",
    "dns.type": "keyword",
    "dns.question.class": "keyword",
    "dns.response_code": "keyword",
    "dns.header_flags": "keyword",
    "dns.op_code": "keyword",
    "dns.resolved_ip": "ip",
    "dns.answers": "object",
    "dns.answers.name": "keyword",
    "dns.answers.type": "keyword",
    "dns.answers.class": "keyword",
    "dns.answers.ttl": "long",
    "dns.answers.data": "keyword",
}

# ECS multi-fields (ecs_flat.yml `multi_fields`) for the fields above that have one.
MULTI_FIELDS: dict[str, dict[str, dict]] = {
    "user.name": {"text": {"type": "match_only_text"}},
    "threat.technique.name": {"text": {"type": "match_only_text"}},
    "threat.technique.subtechnique.name": {"text": {"type": "match_only_text"}},
}

# Our own fields: everything ECS does not define lives under cirtsa.*.
CIRTSA_COMMON: dict[str, str] = {
    "cirtsa.constituency": "keyword",  # enrichment: constituency/sector by CIDR
    "cirtsa.sector": "keyword",
    "cirtsa.schema_version": "keyword",
}


def lifecycle_fields(prefix: str) -> dict[str, str]:
    """The analyst lifecycle of an alert or incident (correlation/lifecycle.py): the current
    status, when it last changed, one timestamp per KPI milestone, and the history of every
    change (an `object` array: Kibana/Lens can aggregate on it; a query combining two history
    sub-fields may match across entries, which the KPI timestamps make unnecessary)."""
    return {
        f"{prefix}.status": "keyword",  # new / acknowledged / contained / repelled / false_positive
        f"{prefix}.status_changed": "date",
        f"{prefix}.analyst": "keyword",  # who made the last change
        f"{prefix}.acknowledged_at": "date",  # time to acknowledge = this - @timestamp
        f"{prefix}.contained_at": "date",  # time to contain (ITU KPI)
        f"{prefix}.repelled_at": "date",  # "attacks repelled" (ITU KPI)
        f"{prefix}.closed_at": "date",  # repelled or false_positive
        f"{prefix}.history": "object",
        f"{prefix}.history.status": "keyword",
        f"{prefix}.history.from": "keyword",
        f"{prefix}.history.analyst": "keyword",
        f"{prefix}.history.at": "date",
        f"{prefix}.history.note": "match_only_text",
    }


CIRTSA_ALERT: dict[str, str] = {
    "cirtsa.alert.key": "keyword",  # the grouping key the detector fired on
    "cirtsa.alert.window.start": "date",
    "cirtsa.alert.window.end": "date",
    "cirtsa.alert.event_count": "long",
    "cirtsa.alert.severity_label": "keyword",
    # versions of one alert (correlation/alerts.py mark_version): judged while its window
    # was open (an idle flush), and the n-th replacement of an earlier version (same id)
    "cirtsa.alert.open_window": "boolean",
    "cirtsa.alert.revision": "long",
    # a version that takes an open-window alert back (alerts.py withdraw), and why
    "cirtsa.alert.withdrawn": "boolean",
    "cirtsa.alert.withdrawn_reason": "keyword",
    "cirtsa.detector": "keyword",
    "cirtsa.incident.id": "keyword",
    "cirtsa.observers.name": "keyword",  # every sensor that saw the evidence
    "cirtsa.observers.zone": "keyword",  # and their segments
    # Detector-specific evidence (counts, ports, ...): kept in _source, not indexed, except
    # the times every detector reports.
    "cirtsa.evidence": "object",
    "cirtsa.evidence.first_seen": "date",
    "cirtsa.evidence.last_seen": "date",
}
CIRTSA_ALERT.update(lifecycle_fields("cirtsa.alert"))
CIRTSA_INCIDENT: dict[str, str] = {
    "cirtsa.incident.id": "keyword",
    "cirtsa.incident.alert_ids": "keyword",
    "cirtsa.incident.alert_count": "long",
    "cirtsa.incident.rule_ids": "keyword",
    "cirtsa.incident.stages": "keyword",
    "cirtsa.incident.sensors": "keyword",
    "cirtsa.incident.first_seen": "date",
    "cirtsa.incident.last_seen": "date",
    "cirtsa.incident.severity_label": "keyword",
    "cirtsa.incident.attackers": "ip",  # correlation/incidents.py: source.ip of the members
    "cirtsa.incident.victims": "ip",  # destination.ip of the members
    "cirtsa.incident.segments": "keyword",  # observer.ingress.zone of the members
    "cirtsa.incident.merged_into": "keyword",  # status merged: the surviving incident's id
}
CIRTSA_INCIDENT.update(lifecycle_fields("cirtsa.incident"))
# Sensor health (sensors/health.py): the counters an operator charts. Per-kind event counts,
# weird reasons and producer counters stay in _source (open-ended key sets).
CIRTSA_HEALTH: dict[str, str] = {
    **{f"cirtsa.health.{k}": "long" for k in (
        "packets", "bytes", "kernel_packets", "kernel_drops", "flows_live", "flows_evicted",
        "events_total")},
    **{f"cirtsa.health.{k}": "float" for k in (
        "lag_s", "uptime_s", "interval_s", "packets_per_s", "bytes_per_s",
        "kernel_drops_per_s", "events_per_s")},
    "cirtsa.health.clock": "keyword",  # wall (live capture) or event (files)
}
# ECS fields whose type is not the one a column's dtype suggests.
_ECS_TYPE_OVERRIDES = {"url.original": "wildcard", "message": "match_only_text"}


def _schema_field_type(f) -> str:
    """Elasticsearch type of an event-schema field, from its column dtype and converter."""
    if f.ecs in _ECS_TYPE_OVERRIDES:
        return _ECS_TYPE_OVERRIDES[f.ecs]
    if f.dtype.kind == "V":
        return "ip"
    if f.ecs in ("@timestamp", "event.end"):
        return "date"
    if f.dtype.kind == "b":
        # dns.type is a boolean column rendered as "query"/"answer"
        return "keyword" if f.to_ecs is not None else "boolean"
    if f.dtype.kind in "iu" and f.to_ecs is None:
        return "long"
    return "keyword"


def _schema_event_fields() -> dict[str, str]:
    """Every field the event kinds of pipeline/schema.py emit (derived, never hand-listed,
    so a new kind or column is mapped the moment it exists). dns.answers is an object."""
    fields: dict[str, str] = {}
    for kind in KINDS.values():
        for f in kind.fields:
            if f.ecs == "dns.answers":
                continue
            fields[f.ecs] = _schema_field_type(f)
    return fields


CIRTSA_EVENT: dict[str, str] = {
    path: es_type for path, es_type in _schema_event_fields().items()
    if path.startswith("cirtsa.")
}
ECS_EVENT.update({
    path: es_type for path, es_type in _schema_event_fields().items()
    if not path.startswith("cirtsa.") and path not in ECS_COMMON
})

# --- body builders ---------------------------------------------------------------------


def properties(fields: Mapping[str, str]) -> dict:
    """Flat {dotted.path: type} -> nested mapping `properties` (objects implied by dots)."""
    root: dict = {}
    for path, es_type in sorted(fields.items()):
        node = root
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {}).setdefault("properties", {})
        leaf = node.setdefault(parts[-1], {})
        if es_type == "object":
            leaf.setdefault("type", "object")
        else:
            leaf["type"] = es_type
            if path in MULTI_FIELDS:
                leaf["fields"] = copy.deepcopy(MULTI_FIELDS[path])
    return root


def _hash(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _with_hash(body: dict) -> dict:
    """The body plus `_meta.cirtsa_hash` over everything else (how setup detects drift)."""
    out = copy.deepcopy(body)
    meta = out.setdefault("_meta", {})
    meta.pop("cirtsa_hash", None)
    meta["cirtsa_hash"] = _hash(out)
    return out


def _mappings(fields: Mapping[str, str]) -> dict:
    return {"dynamic": False, "properties": properties(fields)}


def _events_index_patterns() -> list[str]:
    # One data stream per event dataset (logs-cirtsa.flow-default, ...), from the schema.
    return sorted(f"logs-{kind.dataset}-*" for kind in KINDS.values())


def component_templates() -> dict[str, dict]:
    """Component template name -> put_component_template body."""
    meta = {"managed_by": "cirt-sa", "schema_version": SCHEMA_VERSION}
    bodies = {
        "cirtsa@settings": {"template": {"settings": {"index": {"number_of_shards": 1}}}},
        "cirtsa-ecs@mappings": {"template": {"mappings": _mappings({**ECS_COMMON,
                                                                    **CIRTSA_COMMON})}},
        "cirtsa-alerts@mappings": {"template": {"mappings": _mappings({**ECS_ALERT,
                                                                       **CIRTSA_ALERT})}},
        "cirtsa-incidents@mappings": {"template": {"mappings": _mappings({**ECS_ALERT,
                                                                          **CIRTSA_INCIDENT})}},
        "cirtsa-events@mappings": {"template": {"mappings": _mappings({**ECS_EVENT,
                                                                       **CIRTSA_EVENT})}},
        "cirtsa-health@mappings": {"template": {"mappings": _mappings(CIRTSA_HEALTH)}},
    }
    return {name: _with_hash({**body, "_meta": dict(meta)}) for name, body in bodies.items()}


def _merged_mappings(composed_of: list[str]) -> dict:
    """The mappings an index gets from its components (later components win)."""
    merged: dict = {"dynamic": False, "properties": {}}
    components = component_templates()

    def merge(dst: dict, src: dict) -> None:
        for key, value in src.items():
            if isinstance(value, dict) and isinstance(dst.get(key), dict):
                merge(dst[key], value)
            else:
                dst[key] = copy.deepcopy(value)

    for name in composed_of:
        merge(merged, components[name]["template"].get("mappings", {}))
    return merged


def mapping_hash(template_name: str) -> str:
    """Hash of the merged mappings of an index template (stored in the index's _meta)."""
    composed = index_templates(ilm=False)[template_name]["composed_of"]
    return _hash(_merged_mappings(composed))


def index_templates(ilm: bool = True) -> dict[str, dict]:
    """Index template name -> put_index_template body. `ilm=False` drops the lifecycle
    setting (servers without ILM reject it)."""
    meta = {"managed_by": "cirt-sa", "schema_version": SCHEMA_VERSION}
    base = ["cirtsa@settings", "cirtsa-ecs@mappings"]
    families = {
        "cirtsa-alerts": (["logs-cirtsa.alerts-*"], base + ["cirtsa-alerts@mappings"]),
        "cirtsa-incidents": (["logs-cirtsa.incidents-*"], base + ["cirtsa-incidents@mappings"]),
        "cirtsa-health": (["logs-cirtsa.sensor_health-*"], base + ["cirtsa-health@mappings"]),
        "cirtsa-events": (_events_index_patterns(), base + ["cirtsa-events@mappings"]),
    }
    bodies: dict[str, dict] = {}
    for name, (patterns, composed_of) in families.items():
        mapping_meta = {"cirtsa_mapping_hash": _hash(_merged_mappings(composed_of))}
        body: dict = {
            "index_patterns": patterns,
            "priority": TEMPLATE_PRIORITY,
            "composed_of": composed_of,
            "template": {"mappings": {"_meta": mapping_meta}},
            "_meta": dict(meta),
        }
        if name == "cirtsa-events":
            body["data_stream"] = {}  # append-only events: data stream + ILM rollover
            if ilm:
                body["template"]["settings"] = {"index": {"lifecycle": {"name": EVENTS_POLICY}}}
        bodies[name] = _with_hash(body)
    return bodies


def ilm_policy(retention_days: int = 30) -> dict:
    """put_lifecycle body for the events data streams: roll over daily (or at 50 GB per
    primary shard), delete a backing index `retention_days` after its rollover."""
    if int(retention_days) < 1:
        raise ValueError(f"retention_days must be >= 1, got {retention_days}")
    policy = {
        "phases": {
            "hot": {"min_age": "0ms", "actions": {
                "rollover": {"max_age": "1d", "max_primary_shard_size": "50gb"},
                "set_priority": {"priority": 100}}},
            "delete": {"min_age": f"{int(retention_days)}d", "actions": {"delete": {}}},
        },
        "_meta": {"managed_by": "cirt-sa", "retention_days": int(retention_days)},
    }
    return {"policy": _with_hash(policy)}


def render_all(retention_days: int = 30) -> dict[str, dict]:
    """Every body as the JSON files in deploy/elasticsearch/ (file name -> body)."""
    files = {f"component_template.{n}.json": b for n, b in component_templates().items()}
    files.update({f"index_template.{n}.json": b for n, b in index_templates().items()})
    files[f"ilm_policy.{EVENTS_POLICY}.json"] = ilm_policy(retention_days)
    for alias, index in ((ALERTS_ALIAS, ALERTS_INDEX), (INCIDENTS_ALIAS, INCIDENTS_INDEX),
                         (HEALTH_ALIAS, HEALTH_INDEX)):
        files[f"index.{index}.json"] = {"aliases": {alias: {"is_write_index": True}}}
    return files


def export(directory: str | os.PathLike, retention_days: int = 30) -> list[Path]:
    """Write render_all() as pretty JSON files (for curl / Kibana Dev Tools users)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, body in render_all(retention_days).items():
        path = out / name
        path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written


# --- applying --------------------------------------------------------------------------


class SetupError(RuntimeError):
    """The cluster refused a template, policy or index; the message says which and why."""


def _installed_hash(getter, key: str, name: str) -> str | None:
    """`_meta.cirtsa_hash` of an installed object, None when it does not exist."""
    try:
        resp = getter(name=name)
    except NotFoundError:
        return None
    for item in resp.body.get(key, []):
        if item.get("name") == name:
            inner = item.get(key[:-1], {})
            return (inner.get("_meta") or {}).get("cirtsa_hash", "")
    return None


def api_kwargs(body: Mapping[str, Any]) -> dict[str, Any]:
    """A request body as keyword arguments of the official client's typed API method (its
    parameter names come from the Elasticsearch API specification; `_meta` is `meta`), so
    an unknown key fails with TypeError instead of being sent."""
    return {("meta" if key == "_meta" else key): value for key, value in body.items()}


def _ilm_available(client: Elasticsearch) -> bool:
    # ES without ILM (and OpenSearch-API servers such as osmem) answer "no handler found".
    try:
        client.ilm.get_status()
    except ApiError as exc:
        if exc.status_code in (400, 404, 405, 410):
            return False
        raise
    return True


def _put(report: dict, key: str, installed: str | None, wanted: str, put) -> None:
    if installed == wanted:
        report[key] = "unchanged"
        return
    try:
        put()
    except ApiError as exc:
        raise SetupError(f"{key}: {exc.status_code} {_reason(exc)}") from None
    report[key] = "created" if installed is None else "updated"


def _reason(exc: ApiError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error")
    if isinstance(err, dict):
        return f"{err.get('type')}: {err.get('reason')}"
    return str(err or exc.message)


def _ensure_index(client: Elasticsearch, report: dict, index: str, alias: str,
                  template: str) -> None:
    key = f"index/{index}"
    wanted = mapping_hash(template)
    if client.indices.exists(index=alias) and not client.indices.exists_alias(name=alias):
        # Someone wrote to the alias name before setup ran and ES auto-created an index.
        raise SetupError(f"{key}: a concrete index named {alias!r} exists where the write "
                         f"alias belongs; reindex it into {index} and delete it")
    if not client.indices.exists(index=index):
        try:
            client.indices.create(index=index, aliases={alias: {"is_write_index": True}})
        except ApiError as exc:
            raise SetupError(f"{key}: {exc.status_code} {_reason(exc)}") from None
        report[key] = "created"
        return
    changes = []
    mapping = client.indices.get_mapping(index=index).body[index]["mappings"]
    if (mapping.get("_meta") or {}).get("cirtsa_mapping_hash") != wanted:
        # Additive changes only: ES refuses a type change (then reindex to a new version).
        merged = _merged_mappings(index_templates(ilm=False)[template]["composed_of"])
        try:
            client.indices.put_mapping(index=index, properties=merged["properties"],
                                       meta={"cirtsa_mapping_hash": wanted})
        except ApiError as exc:
            raise SetupError(f"{key}: mapping update refused ({_reason(exc)}); a type change "
                             f"needs a new index version and a reindex") from None
        changes.append("mapping updated")
    if not client.indices.exists_alias(name=alias, index=index):
        client.indices.put_alias(index=index, name=alias, is_write_index=True)
        changes.append("alias added")
    report[key] = ", ".join(changes) if changes else "unchanged"


def setup(client: Elasticsearch, retention_days: int = 30) -> dict[str, str]:
    """Install everything idempotently. Returns {object: created|updated|unchanged|skipped: why}.

    Order matters: the policy before the template that names it, components before the
    index templates composing them, templates before the indices they shape.
    """
    report: dict[str, str] = {}
    ilm = _ilm_available(client)
    if ilm:
        body = ilm_policy(retention_days)
        wanted = body["policy"]["_meta"]["cirtsa_hash"]
        try:
            current = client.ilm.get_lifecycle(name=EVENTS_POLICY).body[EVENTS_POLICY]
            installed = (current["policy"].get("_meta") or {}).get("cirtsa_hash", "")
        except NotFoundError:
            installed = None
        _put(report, f"ilm_policy/{EVENTS_POLICY}", installed, wanted,
             lambda: client.ilm.put_lifecycle(name=EVENTS_POLICY, policy=body["policy"]))
    else:
        report[f"ilm_policy/{EVENTS_POLICY}"] = (
            "skipped: ILM API not available; events retention is not enforced")

    for name, body in component_templates().items():
        installed = _installed_hash(client.cluster.get_component_template,
                                    "component_templates", name)
        _put(report, f"component_template/{name}", installed, body["_meta"]["cirtsa_hash"],
             lambda name=name, body=body: client.cluster.put_component_template(
                 name=name, **api_kwargs(body)))

    for name, body in index_templates(ilm=ilm).items():
        installed = _installed_hash(client.indices.get_index_template, "index_templates", name)
        _put(report, f"index_template/{name}", installed, body["_meta"]["cirtsa_hash"],
             lambda name=name, body=body: client.indices.put_index_template(
                 name=name, **api_kwargs(body)))

    _ensure_index(client, report, ALERTS_INDEX, ALERTS_ALIAS, "cirtsa-alerts")
    _ensure_index(client, report, INCIDENTS_INDEX, INCIDENTS_ALIAS, "cirtsa-incidents")
    _ensure_index(client, report, HEALTH_INDEX, HEALTH_ALIAS, "cirtsa-health")
    for key, outcome in report.items():
        log.info("es setup: %s %s", key, outcome)
    return report


# --- client ----------------------------------------------------------------------------

_PLAIN_MEDIA_TYPES = {
    "application/vnd.elasticsearch+json": "application/json",
    "application/vnd.elasticsearch+x-ndjson": "application/x-ndjson",
}


def _plain_media_type(value: str) -> str:
    base = value.split(";", 1)[0].strip()
    return _PLAIN_MEDIA_TYPES.get(base, value)


class PlainJsonNode(Urllib3HttpNode):
    """HTTP node sending plain application/json (and x-ndjson) instead of the client's
    versioned `application/vnd.elasticsearch+json; compatible-with=N`.

    Real Elasticsearch accepts both; OpenSearch-API servers (osmem-server, used by the
    tests) answer 406 to the versioned form. The client rewrites headers inside
    perform_request, so only a node class can undo it.
    """

    def perform_request(self, method: str, target: str, body: bytes | None = None,
                        headers: HttpHeaders | None = None, **kwargs: Any) -> NodeApiResponse:
        if headers is not None:
            headers = headers.copy()
            for name in ("accept", "content-type"):
                if name in headers:
                    headers[name] = _plain_media_type(headers[name])
        return super().perform_request(method, target, body=body, headers=headers, **kwargs)


def _secret(env: str) -> str | None:
    """A secret from $ENV, or from the file named by $ENV_FILE (Docker/systemd secrets)."""
    value = os.environ.get(env)
    if value:
        return value
    path = os.environ.get(f"{env}_FILE")
    if path:
        return Path(path).read_text(encoding="utf-8").strip()
    return None


def redact_url(url: str) -> str:
    """The URL without user:password@ (for logs)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def make_client(url: str, api_key: str | None = None,
                basic_auth: tuple[str, str] | None = None, ca_certs: str | None = None,
                compat_plain_json: bool = False, **kwargs: Any) -> Elasticsearch:
    """An Elasticsearch client. Credentials: arguments first, then CIRTSA_ES_API_KEY or
    CIRTSA_ES_USER/CIRTSA_ES_PASSWORD (each also as *_FILE). Secrets are never logged.

    compat_plain_json: send plain JSON media types (see PlainJsonNode); needed for
    OpenSearch-API test servers, harmless against Elasticsearch.
    Extra keyword arguments go to Elasticsearch() (e.g. request_timeout, max_retries).
    """
    api_key = api_key or _secret("CIRTSA_ES_API_KEY")
    if basic_auth is None and api_key is None:
        user = _secret("CIRTSA_ES_USER")
        if user:
            basic_auth = (user, _secret("CIRTSA_ES_PASSWORD") or "")
    options: dict[str, Any] = dict(kwargs)
    if api_key:
        options["api_key"] = api_key
    elif basic_auth:
        options["basic_auth"] = basic_auth
    if ca_certs:
        options["ca_certs"] = ca_certs
    if compat_plain_json:
        options["node_class"] = PlainJsonNode
    auth = "api_key" if api_key else "basic" if basic_auth else "none"
    log.info("elasticsearch client: %s (auth: %s)", redact_url(url), auth)
    return Elasticsearch(url, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m correlation.es_setup",
                                     description="Install cirt-sa templates/indices in ES.")
    parser.add_argument("--url", default=os.environ.get("CIRTSA_ES_URL",
                                                        "http://127.0.0.1:9200"))
    parser.add_argument("--retention-days", type=int, default=30)
    parser.add_argument("--ca-certs")
    parser.add_argument("--compat-plain-json", action="store_true",
                        help="send plain application/json (OpenSearch-API test servers)")
    parser.add_argument("--export", metavar="DIR",
                        help="write the JSON bodies to DIR instead of contacting a cluster")
    args = parser.parse_args(argv)
    if args.export:
        for path in export(args.export, args.retention_days):
            print(path)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    client = make_client(args.url, ca_certs=args.ca_certs,
                         compat_plain_json=args.compat_plain_json)
    try:
        report = setup(client, retention_days=args.retention_days)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
