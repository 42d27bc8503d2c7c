"""`cirt-sa es setup|load`, `cirt-sa kibana import`, `cirt-sa alerts list|show|set-status`.

Exit codes (as pipeline/cli.py): 0 ok, 2 usage (bad arguments, unknown id, a status change
the lifecycle does not allow), 3 input error (an NDJSON line that is not a JSON object, a
document Elasticsearch refused as malformed), 4 output error (Elasticsearch or Kibana
unreachable after the retry budget, or refusing the request).

The helpers `es_settings`, `client_from`, `setup_with_retry`, `make_sink` and `deliver` are
also what `cirt-sa replay --es` uses, so both paths write the same documents the same way.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import logging
import os
import random
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from elastic_transport import TransportError
from elasticsearch import ApiError, Elasticsearch

from correlation.es_setup import (
    ALERTS_ALIAS,
    INCIDENTS_ALIAS,
    SetupError,
    _secret,
    make_client,
    redact_url,
    setup,
)
from correlation.es_sink import ElasticsearchSink, ElasticsearchWriteError, WriteResult
from correlation.lifecycle import (
    ALERT,
    INCIDENT,
    STATUSES,
    WITHDRAWN,
    InvalidTransition,
    LifecycleStore,
    NotFound,
    kind_of,
)
from pipeline.config import load_config
from sensors.health import HEALTH_DATASET

log = logging.getLogger(__name__)

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_OUTPUT = 0, 2, 3, 4
HEALTH = "health"
LOAD_BATCH = 5000  # documents handed to the sink at a time (memory bound for big files)
KIBANA_OBJECTS = Path(__file__).resolve().parents[2] / "deploy" / "kibana" / "cirt-sa.ndjson"


class OutputError(RuntimeError):
    """Elasticsearch/Kibana could not take the output (exit code 4)."""


# --- shared with `cirt-sa replay --es` --------------------------------------------------


def es_settings(config: dict) -> dict:
    """The `elasticsearch` section of the configuration (pipeline/defaults.d/50-...)."""
    return dict(config.get("elasticsearch") or {})


def resolve_url(explicit: str | None, section: dict, env: str) -> str | None:
    """--url first, then $ENV, then the configuration."""
    return explicit or os.environ.get(env) or section.get("url")


def client_from(url: str, settings: dict, compat_plain_json: bool | None = None,
                ca_certs: str | None = None) -> Elasticsearch:
    """A client with the credentials named in the configuration (env var names, never
    values) and the configured timeout; transport-level retries are off because the sink
    and setup_with_retry own the retry budget."""
    api_key = _secret(settings.get("api_key_env") or "CIRTSA_ES_API_KEY")
    basic = None
    if not api_key:
        user = _secret(settings.get("user_env") or "CIRTSA_ES_USER")
        if user:
            basic = (user, _secret(settings.get("password_env") or "CIRTSA_ES_PASSWORD") or "")
    plain = settings.get("compat_plain_json", False) if compat_plain_json is None \
        else compat_plain_json
    return make_client(url, api_key=api_key, basic_auth=basic,
                       ca_certs=ca_certs or settings.get("ca_certs"),
                       compat_plain_json=bool(plain),
                       request_timeout=float(settings.get("request_timeout_s", 30)),
                       max_retries=0)


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, TransportError):
        return True  # connection refused/reset, timeout
    return isinstance(exc, ApiError) and (exc.status_code == 429 or exc.status_code >= 500)


def setup_with_retry(client: Elasticsearch, settings: dict) -> dict[str, str]:
    """es_setup.setup(), retried like the sink's writes while the cluster is unreachable
    (a CIRT restarts ES; a replay should wait for it, within the configured budget)."""
    budget = float(settings.get("max_total_s", 300))
    attempts = int(settings.get("max_attempts", 10))
    delay = float(settings.get("initial_backoff_s", 0.5))
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return setup(client, retention_days=int(settings.get("retention_days", 30)))
        except SetupError as exc:
            raise OutputError(f"elasticsearch setup refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not _retryable(exc):
                raise OutputError(f"elasticsearch setup failed: {exc}") from None
            elapsed = time.monotonic() - started
            wait = min(float(settings.get("max_backoff_s", 30)), delay * 2 ** (attempt - 1))
            wait *= random.uniform(0.8, 1.2)
            if attempt == attempts or elapsed + wait > budget:
                raise OutputError(
                    f"elasticsearch unreachable: setup failed after {attempt} attempt(s) in "
                    f"{elapsed:.1f} s ({type(exc).__name__}: {exc})") from None
            log.warning("elasticsearch setup: %s; retry %d in %.2f s", exc, attempt, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def make_sink(client: Elasticsearch, settings: dict, dead_letter=None) -> ElasticsearchSink:
    """The sink with the configured budget; incidents keep the analysts' lifecycle fields."""
    return ElasticsearchSink(
        client, dead_letter=dead_letter, preserve_lifecycle=True,
        chunk_size=int(settings.get("chunk_size", 500)),
        max_attempts=int(settings.get("max_attempts", 10)),
        initial_backoff_s=float(settings.get("initial_backoff_s", 0.5)),
        max_backoff_s=float(settings.get("max_backoff_s", 30)),
        max_total_s=float(settings.get("max_total_s", 300)))


def deliver(sink: ElasticsearchSink, alerts: list[dict],
            incidents: list[dict]) -> tuple[WriteResult, WriteResult]:
    """Write alerts (create by id) then incidents (upsert by id). Raises OutputError when
    Elasticsearch did not acknowledge everything within the budget (nothing was dropped:
    running the same command again completes the write without duplicates)."""
    try:
        return sink.write(alerts), sink.write_incidents(incidents)
    except ElasticsearchWriteError as exc:
        raise OutputError(str(exc)) from None


def deliver_health(sink: ElasticsearchSink, docs: list[dict]) -> WriteResult:
    """Write sensor health documents (create by id); OutputError as `deliver`."""
    try:
        return sink.write_health(docs)
    except ElasticsearchWriteError as exc:
        raise OutputError(str(exc)) from None


def document_family(doc: dict) -> str:
    """ALERT, INCIDENT, HEALTH, or "" for anything else (e.g. raw events)."""
    event = doc.get("event") if isinstance(doc.get("event"), dict) else {}
    if event.get("dataset") == HEALTH_DATASET:
        return HEALTH
    kind = kind_of(doc)
    if kind == INCIDENT or event.get("kind") == "alert":
        return kind
    return ""


class IncidentCollector:
    """Incidents of a stream of alerts via correlation/incidents.py (IncidentBuilder), as
    the correlation stage builds them; empty when that module is absent. The builder
    returns an incident again each time it grows: the last state per id is kept, and the
    `status: new` of its creation is carried to it (the upsert of a first write)."""

    def __init__(self, config: dict) -> None:
        try:
            from correlation.incidents import IncidentBuilder
        except ImportError:
            self.builder = None
        else:
            section = (config.get("correlation") or {}).get("incidents") or {}
            self.builder = IncidentBuilder(section)
        self.latest: dict[str, dict] = {}

    def add(self, alerts: list[dict]) -> None:
        if self.builder is None or not alerts:
            return
        for incident in self.builder.add(alerts) or []:
            doc_id = incident["event"]["id"]
            before = (self.latest.get(doc_id, {}).get("cirtsa") or {}).get("incident") or {}
            state = incident["cirtsa"]["incident"]
            if "status" in before and "status" not in state:
                state["status"] = before["status"]
            self.latest[doc_id] = incident

    def incidents(self) -> list[dict]:
        return list(self.latest.values())


def build_incidents(config: dict, alerts: list[dict]) -> list[dict]:
    collector = IncidentCollector(config)
    collector.add(alerts)
    return collector.incidents()


def describe(result: WriteResult, what: str) -> str:
    parts = [f"{result.created} created"]
    if result.updated:
        parts.append(f"{result.updated} updated")
    parts.append(f"{result.duplicates} already there")
    if result.dead_lettered:
        parts.append(f"{result.dead_lettered} refused")
    return f"{what}: " + ", ".join(parts)


def print_dead_letter(doc: dict, reason: str) -> None:
    doc_id = (doc.get("event") or {}).get("id")
    print(f"dead-letter: elasticsearch: {doc_id}: {reason}", file=sys.stderr)


# --- es setup / es load -------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> tuple[Elasticsearch, dict]:
    config = load_config(args.config)
    settings = es_settings(config)
    if getattr(args, "retention_days", None) is not None:
        settings["retention_days"] = args.retention_days
    url = resolve_url(args.url, settings, "CIRTSA_ES_URL")
    if not url:
        raise _Usage("no Elasticsearch URL: give --url, set CIRTSA_ES_URL or "
                     "elasticsearch.url in the configuration")
    client = client_from(url, settings, compat_plain_json=args.compat_plain_json or None,
                         ca_certs=args.ca_certs)
    args.es_url_shown = redact_url(url)
    return client, settings


class _Usage(ValueError):
    pass


def _run(handler):
    """Map the command's failures to exit codes and one clear line on stderr."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (_Usage, InvalidTransition, NotFound) as exc:
            print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return EXIT_USAGE
        except OutputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_OUTPUT
        except (TransportError, ApiError) as exc:
            print(f"error: elasticsearch: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_OUTPUT

    return wrapped


def cmd_es_setup(args: argparse.Namespace) -> int:
    client, settings = _connect(args)
    report = setup_with_retry(client, settings)
    if not args.quiet:
        width = max(map(len, report))
        for key, outcome in report.items():
            print(f"{key.ljust(width)}  {outcome}")
    return EXIT_OK


def read_ndjson(path: str, errors: list[str]) -> Iterator[dict]:
    """JSON objects of an NDJSON file; a bad line is reported in `errors` (file:line) and
    skipped, the rest is still read (nothing else lost)."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        errors.append(f"{path}: cannot read: {exc.strerror or exc}")
        return
    with fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                errors.append(f"{path}:{number}: not JSON: {exc}")
                continue
            if not isinstance(doc, dict):
                errors.append(f"{path}:{number}: not a JSON object")
                continue
            yield doc


def _batches(docs: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def cmd_es_load(args: argparse.Namespace) -> int:
    client, settings = _connect(args)
    if not args.no_setup:
        setup_with_retry(client, settings)
    sink = make_sink(client, settings, dead_letter=print_dead_letter)
    errors: list[str] = []
    totals = {ALERT: WriteResult(), INCIDENT: WriteResult()}
    health_total = WriteResult()
    # Files of alerts only (`replay --out`): build their incidents as `replay --es` does, so
    # both give the same documents. Files that carry incidents are loaded as they are.
    collector = IncidentCollector(load_config(args.config))
    files_have_incidents = False

    def account(results) -> None:
        for kind, result in zip((ALERT, INCIDENT), results, strict=True):
            for name in ("created", "updated", "duplicates", "dead_lettered"):
                setattr(totals[kind], name, getattr(totals[kind], name) + getattr(result, name))

    for path in args.files:
        for batch in _batches(read_ndjson(path, errors), LOAD_BATCH):
            by_family: dict[str, list[dict]] = {ALERT: [], INCIDENT: [], HEALTH: [], "": []}
            for doc in batch:
                by_family[document_family(doc)].append(doc)
            alerts, incidents, health = by_family[ALERT], by_family[INCIDENT], by_family[HEALTH]
            if by_family[""]:
                errors.append(f"{path}: {len(by_family[''])} document(s) skipped: not an "
                              "alert, incident or sensor health document (event.kind)")
            files_have_incidents = files_have_incidents or bool(incidents)
            if args.incidents == "build":
                collector.add(alerts)
            account(deliver(sink, alerts, incidents))
            if health:
                result = deliver_health(sink, health)
                for name in ("created", "duplicates", "dead_lettered"):
                    setattr(health_total, name, getattr(health_total, name) + getattr(result, name))
    if args.incidents == "build" and not files_have_incidents:
        account(deliver(sink, [], collector.incidents()))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if not args.quiet:
        health_part = f"; {describe(health_total, 'health documents')}" if (
            health_total.created or health_total.duplicates or health_total.dead_lettered) else ""
        print(f"{describe(totals[ALERT], 'alerts')}; {describe(totals[INCIDENT], 'incidents')}"
              f"{health_part} -> {args.es_url_shown}")
    refused = (totals[ALERT].dead_lettered + totals[INCIDENT].dead_lettered
               + health_total.dead_lettered)
    return EXIT_INPUT if errors or refused else EXIT_OK


# --- kibana import ------------------------------------------------------------------------


def multipart(field: str, filename: str, content: bytes,
              content_type: str = "application/ndjson") -> tuple[bytes, str]:
    """A multipart/form-data body with one file part; returns (body, Content-Type)."""
    boundary = f"cirtsa-{uuid.uuid4().hex}"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


def kibana_import_url(base: str, space: str | None) -> str:
    prefix = f"/s/{space}" if space and space != "default" else ""
    return f"{base.rstrip('/')}{prefix}/api/saved_objects/_import?overwrite=true"


def kibana_auth(settings: dict, es: dict) -> str | None:
    """Authorization header: a Kibana API key, else the ES API key, else ES basic auth."""
    key = _secret(settings.get("api_key_env") or "CIRTSA_KIBANA_API_KEY") \
        or _secret(es.get("api_key_env") or "CIRTSA_ES_API_KEY")
    if key:
        return f"ApiKey {key}"
    user = _secret(es.get("user_env") or "CIRTSA_ES_USER")
    if user:
        password = _secret(es.get("password_env") or "CIRTSA_ES_PASSWORD") or ""
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return None


def kibana_import(url: str, path: str | os.PathLike, space: str | None = None,
                  authorization: str | None = None, ca_certs: str | None = None,
                  timeout: float = 60.0) -> dict:
    """POST the saved objects NDJSON to Kibana's import API; returns Kibana's answer."""
    body, content_type = multipart("file", Path(path).name, Path(path).read_bytes())
    headers = {"kbn-xsrf": "cirt-sa", "Content-Type": content_type}
    if authorization:
        headers["Authorization"] = authorization
    request = urllib.request.Request(kibana_import_url(url, space), data=body,
                                     headers=headers, method="POST")
    context = ssl.create_default_context(cafile=ca_certs) if ca_certs else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode("utf-8", "replace")
        raise OutputError(f"kibana refused the import: HTTP {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OutputError(f"kibana unreachable at {redact_url(url)}: {reason}") from None
    except json.JSONDecodeError as exc:
        raise OutputError(f"kibana answered something that is not JSON: {exc}") from None


def cmd_kibana_import(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    settings = dict(config.get("kibana") or {})
    url = resolve_url(args.url, settings, "CIRTSA_KIBANA_URL")
    if not url:
        raise _Usage("no Kibana URL: give --url, set CIRTSA_KIBANA_URL or kibana.url")
    path = Path(args.file)
    if not path.is_file():
        raise _Usage(f"{path}: saved objects file not found (give --file)")
    answer = kibana_import(url, path, space=args.space or settings.get("space"),
                           authorization=kibana_auth(settings, es_settings(config)),
                           ca_certs=args.ca_certs)
    errors = answer.get("errors") or []
    for error in errors:
        print(f"error: kibana: {error.get('type')} {error.get('id')}: "
              f"{json.dumps(error.get('error'))}", file=sys.stderr)
    if not answer.get("success", False):
        print("error: kibana import incomplete", file=sys.stderr)
        return EXIT_OUTPUT
    if not args.quiet:
        print(f"imported {answer.get('successCount', 0)} saved object(s) from {path} into "
              f"{redact_url(url)} (space {args.space or settings.get('space') or 'default'})")
    return EXIT_OK


# --- alerts list / show / set-status ------------------------------------------------------

_SINCE_SHORT = re.compile(r"^\d+[smhdwMy]$")


def list_query(kind: str, status: str | None = None, rule: str | None = None,
               source: str | None = None, since: str | None = None) -> dict:
    """The bool query of `alerts list` (filters only: no scoring)."""
    filters: list[dict] = []
    if status:
        field = f"cirtsa.{kind}.status"
        if status == "new":  # never touched: no status field yet
            filters.append({"bool": {"should": [
                {"term": {field: "new"}},
                {"bool": {"must_not": [{"exists": {"field": field}}]}}],
                "minimum_should_match": 1}})
        else:
            filters.append({"term": {field: status}})
    if rule:
        fields = ["rule.id", "rule.name"] + (["cirtsa.incident.rule_ids"]
                                             if kind == INCIDENT else [])
        filters.append({"bool": {"should": [{"term": {f: rule}} for f in fields],
                                 "minimum_should_match": 1}})
    if source:
        filters.append({"term": {"source.ip": source}})
    if since:
        filters.append({"range": {"@timestamp": {"gte": since}}})
    return {"bool": {"filter": filters}} if filters else {"match_all": {}}


def _get(doc: dict, path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def cmd_alerts_list(args: argparse.Namespace) -> int:
    listable = STATUSES if args.incidents else (*STATUSES, WITHDRAWN)
    if args.status and args.status not in listable:
        raise _Usage(f"unknown status {args.status!r}; statuses: {', '.join(listable)}")
    if args.source:
        try:
            args.source = str(ipaddress.ip_network(args.source, strict=False))
        except ValueError:
            raise _Usage(f"--source {args.source!r} is not an IP address or CIDR") from None
    since = f"now-{args.since}" if args.since and _SINCE_SHORT.match(args.since) else args.since
    client, _ = _connect(args)
    kind = INCIDENT if args.incidents else ALERT
    index = INCIDENTS_ALIAS if args.incidents else ALERTS_ALIAS
    resp = client.search(index=index, size=args.size, track_total_hits=True,
                         query=list_query(kind, args.status, args.rule, args.source, since),
                         sort=[{"@timestamp": {"order": "desc"}}])
    hits = resp["hits"]["hits"]
    if args.json:
        for hit in hits:
            sys.stdout.write(orjson.dumps(hit["_source"]).decode() + "\n")
        return EXIT_OK
    columns = [("@timestamp", "@timestamp"), ("id", "event.id"),
               ("status", f"cirtsa.{kind}.status"), ("sev", "event.severity"),
               ("rule", "rule.name"), ("source.ip", "source.ip")]
    if kind == INCIDENT:
        columns.insert(4, ("alerts", "cirtsa.incident.alert_count"))
    else:
        columns.append(("destination.ip", "destination.ip"))
    rows = []
    for hit in hits:
        doc = hit["_source"]
        row = [_cell(_get(doc, path)) for _, path in columns]
        row[1] = hit["_id"]
        row[2] = _cell(_get(doc, columns[2][1]) or "new")
        rows.append(row)
    total = resp["hits"]["total"]["value"]
    print(_table(rows, [name for name, _ in columns]))
    print(f"{len(rows)} of {total} {kind}(s)")
    return EXIT_OK


def cmd_alerts_show(args: argparse.Namespace) -> int:
    client, _ = _connect(args)
    doc = LifecycleStore(client).locate(args.id)
    sys.stdout.write(orjson.dumps(doc.source, option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def cmd_alerts_set_status(args: argparse.Namespace) -> int:
    client, _ = _connect(args)
    store = LifecycleStore(client)
    state = store.set_status(args.id, args.status, args.analyst, args.note)
    if not args.quiet:
        last = state["history"][-1]
        print(f"{args.id}: {last['from']} -> {last['status']} by {last['analyst']} at "
              f"{last['at']}")
    return EXIT_OK


# --- registration -------------------------------------------------------------------------


def _es_options() -> argparse.ArgumentParser:
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument("--url", help="Elasticsearch URL (default: $CIRTSA_ES_URL, then "
                      "elasticsearch.url in the configuration)")
    opts.add_argument("--compat-plain-json", action="store_true",
                      help="send plain application/json (OpenSearch-API test servers only)")
    opts.add_argument("--ca-certs", metavar="PEM", help="CA bundle for TLS")
    return opts


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    es_opts = _es_options()

    es = sub.add_parser("es", help="Elasticsearch: install templates, load NDJSON",
                        description="Elasticsearch housekeeping. Credentials come from the "
                        "environment variables named in the configuration "
                        "(CIRTSA_ES_API_KEY, or CIRTSA_ES_USER/CIRTSA_ES_PASSWORD).")
    es_sub = es.add_subparsers(dest="es_command", metavar="ACTION")
    es_sub.required = True
    p = es_sub.add_parser("setup", parents=[common, es_opts],
                          help="install index templates, ILM policy, alert/incident indices "
                          "(idempotent)")
    p.add_argument("--retention-days", type=int, help="events retention (default: config)")
    p.set_defaults(func=_run(cmd_es_setup))
    p = es_sub.add_parser("load", parents=[common, es_opts],
                          help="bulk-load alerts/incidents NDJSON (e.g. `replay --out`)",
                          description="Load ECS alert and incident documents from NDJSON "
                          "files: alerts are created by id (a re-load adds nothing), "
                          "incidents upserted by id (an analyst's status is kept).")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--incidents", choices=("build", "none"), default="build",
                   help="build: when the files hold no incident documents, build the "
                   "incidents of their alerts (as `replay --es`); none: load only what the "
                   "files hold (default: %(default)s)")
    p.add_argument("--no-setup", action="store_true",
                   help="do not run `es setup` first (it is idempotent and cheap)")
    p.set_defaults(func=_run(cmd_es_load))

    kibana = sub.add_parser("kibana", help="Kibana: import the cirt-sa data views and dashboard")
    kb_sub = kibana.add_subparsers(dest="kibana_command", metavar="ACTION")
    kb_sub.required = True
    p = kb_sub.add_parser("import", parents=[common],
                          help="import deploy/kibana/cirt-sa.ndjson (overwrite)",
                          description="POST the saved objects to Kibana's "
                          "/api/saved_objects/_import?overwrite=true. Credentials: "
                          "CIRTSA_KIBANA_API_KEY, else the Elasticsearch ones.")
    p.add_argument("--url", help="Kibana URL (default: $CIRTSA_KIBANA_URL, then kibana.url)")
    p.add_argument("--space", help="Kibana space id (default: config, else the default space)")
    p.add_argument("--file", default=str(KIBANA_OBJECTS), help="saved objects NDJSON "
                   "(default: %(default)s)")
    p.add_argument("--ca-certs", metavar="PEM", help="CA bundle for TLS")
    p.set_defaults(func=_run(cmd_kibana_import))

    alerts = sub.add_parser("alerts", help="list, show and triage alerts and incidents",
                            description="Analyst lifecycle: new -> acknowledged -> contained "
                            "-> repelled | false_positive (docs/elasticsearch.md).")
    al_sub = alerts.add_subparsers(dest="alerts_command", metavar="ACTION")
    al_sub.required = True
    p = al_sub.add_parser("list", parents=[common, es_opts], help="table of alerts (newest first)")
    p.add_argument("--incidents", action="store_true", help="list incidents instead of alerts")
    p.add_argument("--status", help=f"one of {', '.join(STATUSES)}; for alerts also "
                   f"{WITHDRAWN} (taken back by the correlation)")
    p.add_argument("--rule", help="rule.id or rule.name")
    p.add_argument("--source", metavar="CIDR", help="source.ip address or network")
    p.add_argument("--since", help="ES date or date math: 2024-03-01, now-24h, or 24h")
    p.add_argument("--size", type=int, default=50, help="rows (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the documents as NDJSON")
    p.set_defaults(func=_run(cmd_alerts_list))
    p = al_sub.add_parser("show", parents=[common, es_opts], help="print one alert or incident")
    p.add_argument("id")
    p.set_defaults(func=_run(cmd_alerts_show))
    p = al_sub.add_parser("set-status", parents=[common, es_opts],
                          help="move an alert or incident to a new status")
    p.add_argument("id")
    p.add_argument("status", choices=STATUSES)
    p.add_argument("--analyst", required=True, help="who makes the change (kept in history)")
    p.add_argument("--note", help="why (kept in history)")
    p.set_defaults(func=_run(cmd_alerts_set_status))
