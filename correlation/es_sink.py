"""Elasticsearch alert sink: idempotent bulk writes that survive an Elasticsearch outage.

Contract (docs/elasticsearch.md, "Delivery"):

- `write(alerts)` returns only after Elasticsearch acknowledged every alert of the batch, each
  as created, duplicate (same `event.id` already indexed: op_type=create answered 409) or
  dead-lettered (the document itself is bad: mapping/parse error, missing `event.id`; handed
  to the `dead_letter(doc, reason)` callback). The caller may commit its Kafka offsets then.
- Retryable failures (connection errors, timeouts, HTTP 429 and 5xx, the write alias missing
  while a restarted cluster is being set up) are retried with exponential backoff, only for
  the items not yet acknowledged, within `max_attempts` and `max_total_s`.
- Past that budget `write` raises `ElasticsearchUnavailable` and drops nothing: the caller
  keeps the batch, does not commit, and delivers it again later (Kafka is the spool). Because
  the document id is the stable alert id, a re-delivery never creates a second document.
- Versions of one alert (an alert emitted from an open window, then its revision at the
  close: same `event.id`, correlation/alerts.py `version_rank`): the highest version is
  kept. A create answered 409 by an alert that may outrank the stored one is re-read
  (`_mget`) and, when it does, written over it with `if_seq_no`/`if_primary_term`,
  keeping the analyst's lifecycle fields (`cirtsa.alert.status`, `.history`, ...); an
  older or equal version changes nothing (a duplicate), so a re-delivery stays
  idempotent and a late older version never overwrites a newer one.
- A withdrawal (the alert's last version marked `cirtsa.alert.withdrawn`: the correlation
  no longer finds it) is such a newer version; its status "withdrawn" lands only on an
  alert no analyst triaged (`_with_stored_lifecycle`).
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from elastic_transport import TransportError
from elasticsearch import ApiError, Elasticsearch
from elasticsearch.helpers import streaming_bulk

from correlation.alerts import WITHDRAWN_STATUS, is_withdrawn, version_rank
from correlation.es_setup import ALERTS_ALIAS, HEALTH_ALIAS, INCIDENTS_ALIAS, lifecycle_fields
from correlation.lifecycle import NEW

log = logging.getLogger(__name__)

DeadLetter = Callable[[dict, str], None]

# Item outcomes.
CREATED, UPDATED, DUPLICATE, DEAD, RETRY, FATAL = (
    "created", "updated", "duplicate", "dead", "retry", "fatal")


@dataclass
class WriteResult:
    """What happened to one batch. Every input document is counted exactly once among
    created / updated / duplicates / dead_lettered."""

    created: int = 0
    updated: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    attempts: int = 0  # bulk passes over the not-yet-acknowledged documents
    retried: int = 0  # document sends that had to be repeated
    seconds: float = 0.0
    dead_letter_reasons: list[str] = field(default_factory=list)

    @property
    def acknowledged(self) -> int:
        return self.created + self.updated + self.duplicates + self.dead_lettered


class ElasticsearchWriteError(RuntimeError):
    """The batch could not be fully acknowledged. Nothing was dropped: `pending` holds the
    documents Elasticsearch did not acknowledge; the caller keeps (re-delivers) the batch."""

    def __init__(self, message: str, pending: list[dict], result: WriteResult) -> None:
        super().__init__(message)
        self.pending = pending
        self.result = result


class ElasticsearchUnavailable(ElasticsearchWriteError):
    """Retryable failures outlasted the retry budget (cluster down, overloaded, not set up)."""


def _log_dead_letter(doc: dict, reason: str) -> None:
    log.warning("dead-lettered alert %s: %s", _event_id(doc), reason)


# The analyst-owned keys under cirtsa.incident (status, history, contained_at, ...).
_LIFECYCLE_KEYS = frozenset(path.split(".")[2] for path in lifecycle_fields("cirtsa.incident")
                            if path.count(".") == 2)
# ... and under cirtsa.alert (the same names)
_ALERT_LIFECYCLE_KEYS = frozenset(path.split(".")[2] for path in lifecycle_fields("cirtsa.alert")
                                  if path.count(".") == 2)
_LOWEST_RANK = (0, 0)  # the first version judged on an open window: outranks nothing
# rounds of re-reading an alert whose replacement met a concurrent write (an analyst's
# status change between the read and the write): past them, the batch is not acknowledged
_MAX_SUPERSEDE_ROUNDS = 5


def _without_lifecycle(doc: dict) -> dict:
    """The incident without its lifecycle fields (a shallow copy down to cirtsa.incident)."""
    incident = (doc.get("cirtsa") or {}).get("incident")
    if not isinstance(incident, dict) or not _LIFECYCLE_KEYS & incident.keys():
        return doc
    # status "merged" is the correlation's own (correlation/incidents.py): it must land.
    kept = {k: v for k, v in incident.items()
            if k not in _LIFECYCLE_KEYS or (k == "status" and v == "merged")}
    return {**doc, "cirtsa": {**doc["cirtsa"], "incident": kept}}


def _with_stored_lifecycle(doc: dict, stored: dict) -> dict:
    """The alert `doc` with the analyst's lifecycle fields of the `stored` version: a
    newer version replaces the detection fields, never the triage.

    The status "withdrawn" is the correlation's (a withdrawal: correlation/alerts.py
    `withdraw`): it lands over a stored alert no analyst has triaged (no status, or
    "new"/"withdrawn", and no history), never over an analyst's status; a version that
    finds the alert again after its withdrawal takes that status back."""
    stored_alert = (stored.get("cirtsa") or {}).get("alert")
    if not isinstance(stored_alert, dict):
        return doc
    kept = {k: v for k, v in stored_alert.items() if k in _ALERT_LIFECYCLE_KEYS}
    untouched = not kept.get("history") and kept.get("status") in (None, NEW, WITHDRAWN_STATUS)
    if untouched:  # the status is the correlation's to set, or to take back
        kept.pop("status", None)
    if not kept:
        return doc
    cirtsa = doc.get("cirtsa") if isinstance(doc.get("cirtsa"), dict) else {}
    alert = cirtsa.get("alert") if isinstance(cirtsa.get("alert"), dict) else {}
    status = alert.get("status") if untouched and is_withdrawn(doc) else None
    alert = {k: v for k, v in alert.items() if k not in _ALERT_LIFECYCLE_KEYS}
    if status is not None:
        alert["status"] = status
    return {**doc, "cirtsa": {**cirtsa, "alert": {**alert, **kept}}}


def _event_id(doc: dict) -> str | None:
    event = doc.get("event")
    value = event.get("id") if isinstance(event, dict) else None
    return value if isinstance(value, str) and value else None


def with_health_id(doc: dict) -> dict:
    """The health document with `event.id` set to a hash of its sensor and time, so a
    document delivered twice (Kafka redelivery, a file loaded again) is stored once."""
    if _event_id(doc) is not None:
        return doc
    observer = doc.get("observer") if isinstance(doc.get("observer"), dict) else {}
    key = f"{observer.get('name', '')}|{doc.get('@timestamp', '')}".encode()
    event = doc.get("event") if isinstance(doc.get("event"), dict) else {}
    return {**doc, "event": {**event, "id": hashlib.sha256(key).hexdigest()[:32]}}


def _error_reason(error: object) -> str:
    """ES item error (dict with type/reason/caused_by, or a string) -> one line."""
    if not isinstance(error, dict):
        return str(error)
    text = f"{error.get('type')}: {error.get('reason')}"
    cause = error.get("caused_by")
    if isinstance(cause, dict):
        text += f" (caused by {cause.get('type')}: {cause.get('reason')})"
    return text


def classify(op_type: str, item: dict) -> str:
    """One bulk item response -> CREATED / UPDATED / DUPLICATE / DEAD / RETRY / FATAL."""
    status = item.get("status")
    if not isinstance(status, int):
        return RETRY  # no HTTP answer at all (connection-level failure)
    if 200 <= status < 300:
        return CREATED if item.get("result", "created") == "created" else UPDATED
    if status == 409 and op_type == "create":
        return DUPLICATE  # _id (= stable alert id) already indexed: the alert is there
    if status == 429 or status >= 500:
        return RETRY
    if "exception" in item:
        # The whole bulk request was refused (auth, bad request): not the document's fault.
        return FATAL
    error = item.get("error")
    if isinstance(error, dict) and error.get("type") == "index_not_found_exception":
        return RETRY  # write alias missing (cluster restarted, setup not yet re-run)
    if status in (401, 403):
        return FATAL
    return DEAD  # mapping / parse error in this document: it would fail forever


class ElasticsearchSink:
    """Writes ECS alerts (op_type=create) and incidents (op_type=index, i.e. upsert) with
    `_id = event.id` through `elasticsearch.helpers.streaming_bulk`.

    `preserve_lifecycle=True` (what `cirt-sa replay --es`, `es load` and the services use)
    writes incidents as a partial update with upsert instead: the first write stores the
    whole incident, later writes replace the correlation's fields but never the analyst's
    lifecycle fields (`cirtsa.incident.status`, `.history`, `.contained_at`, ...), so a
    re-run or an incident that grows does not reset an analyst's triage.

    Writes target the write aliases created by `correlation.es_setup.setup` with
    `require_alias=true`, so a write never auto-creates an index with guessed mappings.
    """

    def __init__(self, client: Elasticsearch, *,
                 alerts_index: str = ALERTS_ALIAS,
                 incidents_index: str = INCIDENTS_ALIAS,
                 health_index: str = HEALTH_ALIAS,
                 dead_letter: DeadLetter | None = None,
                 chunk_size: int = 500,
                 max_chunk_bytes: int = 10 * 1024 * 1024,
                 max_attempts: int = 10,
                 initial_backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0,
                 max_total_s: float = 300.0,
                 refresh: bool | str = False,
                 preserve_lifecycle: bool = False,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.client = client
        self.alerts_index = alerts_index
        self.incidents_index = incidents_index
        self.health_index = health_index
        self.dead_letter = dead_letter or _log_dead_letter
        self.chunk_size = chunk_size
        self.max_chunk_bytes = max_chunk_bytes
        self.max_attempts = max_attempts
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_total_s = max_total_s
        self.refresh = refresh
        self.preserve_lifecycle = preserve_lifecycle
        self._sleep = sleep
        self.totals = WriteResult()  # cumulative over the sink's life (metrics)

    def write(self, alerts: list[dict]) -> WriteResult:
        """Index alerts exactly once: a second write of the same `event.id` is a duplicate,
        unless it is a newer version of the alert (a revision, or a document judged on a
        closed window over one judged on an open window): then it replaces the stored
        detection fields and keeps the lifecycle fields (counted as `updated`)."""
        started = time.monotonic()
        result = WriteResult()
        contested: list[tuple[str, dict]] = []  # created already: maybe an older version
        try:
            pending = self._prepare(alerts, "create", result)
            self._send(pending, self.alerts_index, "create", result, started, len(alerts),
                       contested=contested)
            rounds = 0
            while contested:
                rounds += 1
                if rounds > _MAX_SUPERSEDE_ROUNDS:
                    raise ElasticsearchUnavailable(
                        f"{len(contested)} alert version(s) met concurrent writes "
                        f"{_MAX_SUPERSEDE_ROUNDS} times; nothing was dropped: keep the batch "
                        "and retry later", [doc for _, doc in contested], result)
                contested = self._supersede(contested, result, started, len(alerts))
        except ElasticsearchWriteError as exc:
            exc.result = self._finish(result, started)
            raise
        return self._finish(result, started)

    def write_incidents(self, incidents: list[dict]) -> WriteResult:
        """Upsert incidents by `event.id` (the latest state replaces the stored one; with
        `preserve_lifecycle`, except the analyst's lifecycle fields)."""
        op_type = "update" if self.preserve_lifecycle else "index"
        return self._write(incidents, self.incidents_index, op_type)

    def write_health(self, docs: list[dict]) -> WriteResult:
        """Index sensor health documents exactly once (create by `health_id`)."""
        return self._write([with_health_id(d) for d in docs], self.health_index, "create")

    # -- internals ---------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        # Exponential with +-20% jitter so many workers do not retry in lock-step.
        base = min(self.max_backoff_s, self.initial_backoff_s * (2 ** (attempt - 1)))
        return base * random.uniform(0.8, 1.2)

    def _retry_delay(self, attempt: int, started: float) -> float | None:
        """The wait before retry `attempt` + 1 of a write or read begun at `started`;
        None when the retry budget (max_attempts, max_total_s) is spent."""
        delay = self._backoff(attempt)
        if (attempt >= self.max_attempts
                or time.monotonic() - started + delay > self.max_total_s):
            return None
        return delay

    def _prepare(self, docs: list[dict], op_type: str,
                 result: WriteResult) -> list[tuple[str, dict]]:
        """(id, doc) pairs to send: docs without an id are dead-lettered, repeated ids in
        one batch are sent once (create: the highest alert version, the first of equal
        ones; index: last state wins)."""
        by_id: dict[str, dict] = {}
        for doc in docs:
            doc_id = _event_id(doc)
            if doc_id is None:
                self._dead(doc, "missing event.id (the stable alert id is the document _id)",
                           result)
                continue
            if doc_id in by_id:
                result.duplicates += 1
                if op_type == "create" and version_rank(doc) <= version_rank(by_id[doc_id]):
                    continue
            by_id[doc_id] = doc
        return list(by_id.items())

    def _dead(self, doc: dict, reason: str, result: WriteResult) -> None:
        self.dead_letter(doc, reason)  # may raise: then the batch is not acknowledged
        result.dead_lettered += 1
        if len(result.dead_letter_reasons) < 100:
            result.dead_letter_reasons.append(reason)

    def _actions(self, pending: list[tuple[str, dict]], index: str, op_type: str,
                 stored: dict[str, dict] | None = None) -> Iterator[dict]:
        for doc_id, doc in pending:
            if op_type == "replace":
                # a newer alert version: over the stored one read at _seq_no (a concurrent
                # write, e.g. an analyst's, answers 409: read again), or created if none
                hit = (stored or {}).get(doc_id)
                if hit is None:
                    yield {"_op_type": "create", "_index": index, "_id": doc_id,
                           "_source": doc}
                else:
                    yield {"_op_type": "index", "_index": index, "_id": doc_id,
                           "if_seq_no": hit["_seq_no"], "if_primary_term": hit["_primary_term"],
                           "_source": _with_stored_lifecycle(doc, hit.get("_source") or {})}
            elif op_type == "update":
                # retry_on_conflict: an analyst's status change may land between ES's
                # internal get and write of this partial update.
                yield {"_op_type": "update", "_index": index, "_id": doc_id,
                       "retry_on_conflict": 3, "doc": _without_lifecycle(doc),
                       "upsert": doc}
            else:
                yield {"_op_type": op_type, "_index": index, "_id": doc_id, "_source": doc}

    def _bulk(self, pending: list[tuple[str, dict]], index: str, op_type: str,
              stored: dict[str, dict] | None = None) -> Iterable[tuple[bool, dict]]:
        return streaming_bulk(
            self.client, self._actions(pending, index, op_type, stored),
            chunk_size=self.chunk_size, max_chunk_bytes=self.max_chunk_bytes,
            raise_on_error=False, raise_on_exception=False, max_retries=0, yield_ok=True,
            require_alias=True, refresh=self.refresh)

    def _write(self, docs: list[dict], index: str, op_type: str) -> WriteResult:
        started = time.monotonic()
        result = WriteResult()
        try:
            pending = self._prepare(docs, op_type, result)
            self._send(pending, index, op_type, result, started, len(docs))
        except ElasticsearchWriteError as exc:
            exc.result = self._finish(result, started)
            raise
        return self._finish(result, started)

    def _send(self, pending: list[tuple[str, dict]], index: str, op_type: str,
              result: WriteResult, started: float, total: int, *,
              contested: list[tuple[str, dict]] | None = None,
              stored: dict[str, dict] | None = None) -> None:
        """Send `pending` until each is acknowledged (retries within the budget); the
        alerts whose create or replacement met a stored version go to `contested`."""
        last_problem = ""
        while pending:
            result.attempts += 1
            retry: list[tuple[str, dict]] = []
            done = 0
            try:
                for _ok, item in self._bulk(pending, index, op_type, stored):
                    outcome, problem = self._settle(item, pending[done], result, contested)
                    if outcome == RETRY:
                        retry.append(pending[done])
                        last_problem = problem
                    elif outcome == FATAL:
                        rest = [doc for _, doc in retry + pending[done:]]
                        raise ElasticsearchWriteError(
                            f"Elasticsearch refused the bulk request: {problem}; "
                            f"{len(rest)} document(s) not written", rest, result)
                    done += 1
            except TransportError as exc:
                # Connection refused/reset, timeout: the chunk in flight and everything
                # after it is unacknowledged (what ES did with it is unknown; a resend
                # is safe because ids are stable).
                retry.extend(pending[done:])
                last_problem = f"{type(exc).__name__}: {exc}"
            pending = retry
            if not pending:
                break
            result.retried += len(pending)
            delay = self._retry_delay(result.attempts, started)
            if delay is None:
                rest = [doc for _, doc in pending]
                raise ElasticsearchUnavailable(
                    f"Elasticsearch did not acknowledge {len(rest)} of {total} document(s) "
                    f"after {result.attempts} attempt(s) in {time.monotonic() - started:.1f} s "
                    f"(last problem: "
                    f"{last_problem}); nothing was dropped: keep the batch and retry later",
                    rest, result)
            log.warning("elasticsearch: %d document(s) not acknowledged (%s); retry %d in "
                        "%.2f s", len(pending), last_problem, result.attempts, delay)
            self._sleep(delay)

    def _supersede(self, contested: list[tuple[str, dict]], result: WriteResult,
                   started: float, total: int) -> list[tuple[str, dict]]:
        """One round over alerts answered 409 (counted as duplicates): read the stored
        versions; write each alert that outranks its stored version over it (or create
        it when gone). Returns the alerts that met a concurrent write (read again)."""
        stored = self._mget([doc_id for doc_id, _ in contested], result, started, total,
                            [doc for _, doc in contested])
        newer = [(doc_id, doc) for doc_id, doc in contested
                 if doc_id not in stored
                 or version_rank(doc) > version_rank(stored[doc_id].get("_source") or {})]
        if not newer:
            return []  # every stored version is as new: duplicates indeed
        round_result = WriteResult()
        again: list[tuple[str, dict]] = []
        try:
            self._send(newer, self.alerts_index, "replace", round_result, started, total,
                       contested=again, stored=stored)
        finally:  # (also when the budget ran out: the counts stay exact)
            for name in ("created", "updated", "dead_lettered"):
                moved = getattr(round_result, name)
                setattr(result, name, getattr(result, name) + moved)
                result.duplicates -= moved  # it was counted a duplicate at the 409
            result.attempts += round_result.attempts
            result.retried += round_result.retried
            result.dead_letter_reasons += round_result.dead_letter_reasons
        return again

    def _mget(self, ids: list[str], result: WriteResult, started: float, total: int,
              docs: list[dict]) -> dict[str, dict]:
        """{id: hit with _source, _seq_no, _primary_term} of the stored alerts among ids,
        read in chunks; connection failures and 5xx retried within the budget."""
        found: dict[str, dict] = {}
        for at in range(0, len(ids), self.chunk_size):
            chunk = ids[at:at + self.chunk_size]
            attempt = 0
            while True:
                attempt += 1
                try:
                    # only what the rank and the kept lifecycle fields are read from
                    resp = self.client.mget(index=self.alerts_index, ids=chunk,
                                            source_includes=["cirtsa.alert"])
                    break
                except TransportError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                except ApiError as exc:
                    if exc.status_code != 429 and exc.status_code < 500:
                        raise ElasticsearchWriteError(
                            f"Elasticsearch refused to read stored alert versions: {exc}",
                            docs, result) from None
                    problem = f"HTTP {exc.status_code} {exc}"
                delay = self._retry_delay(attempt, started)
                if delay is None:
                    raise ElasticsearchUnavailable(
                        f"Elasticsearch did not answer the read of {len(ids)} stored alert "
                        f"version(s) of {total} document(s) after {attempt} attempt(s) "
                        f"(last problem: {problem}); nothing was dropped: keep the batch and "
                        "retry later", docs, result)
                self._sleep(delay)
            for hit in resp.body.get("docs", []):
                if hit.get("found"):
                    found[hit["_id"]] = hit
        return found

    def _settle(self, item: dict, sent: tuple[str, dict], result: WriteResult,
                contested: list[tuple[str, dict]] | None = None) -> tuple[str, str]:
        """Account one item response; returns (outcome, problem text for retries). With
        `contested`, a 409 of an alert that may outrank the stored version goes there."""
        (item_op, info), = item.items()
        outcome = classify(item_op, info)
        if contested is not None and info.get("status") == 409:
            if item_op == "index":  # a replacement met a concurrent write: read again
                contested.append(sent)
                return DUPLICATE, ""
            if version_rank(sent[1]) > _LOWEST_RANK:  # the stored version may be older
                contested.append(sent)
        if outcome == CREATED:
            result.created += 1
        elif outcome == UPDATED:
            result.updated += 1
        elif outcome == DUPLICATE:
            result.duplicates += 1
        elif outcome == DEAD:
            self._dead(sent[1], f"HTTP {info.get('status')} {_error_reason(info.get('error'))}",
                       result)
        return outcome, f"HTTP {info.get('status')} {_error_reason(info.get('error'))}"

    def _finish(self, result: WriteResult, started: float) -> WriteResult:
        result.seconds = time.monotonic() - started
        for name in ("created", "updated", "duplicates", "dead_lettered", "attempts", "retried"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(result, name))
        return result
