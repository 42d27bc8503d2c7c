"""Alert and incident lifecycle: who moved what to which status, when, and why.

    new -> acknowledged -> contained -> repelled
      \\          \\    \\______________/^
       \\          \\
        +----------+--> false_positive -> acknowledged (re-opened)

The allowed transitions, as a CIRT works (docs/elasticsearch.md, "Lifecycle"):

- `new -> acknowledged`: an analyst took it. `new -> false_positive`: obvious noise at triage.
- `acknowledged -> contained`: the attack is stopped from spreading (host isolated, source
  blocked) but not yet eradicated. `acknowledged -> repelled`: the attack failed or was
  blocked outright (a scan dropped at the border): nothing to contain.
  `acknowledged -> false_positive`: investigation showed benign activity.
- `contained -> repelled`: eradicated, closed. A contained attack was real, so it cannot
  become a false positive.
- `false_positive -> acknowledged`: a mis-triage is re-opened (kept in the history).
  `repelled` is final: a returning attacker raises new alerts and a new incident, so the
  "attacks repelled" KPI never counts an attack twice or loses one.

Two statuses are the correlation's, never an analyst's: an incident fused into another is
`merged` (final); an alert emitted while its window was open that the window's later
evidence does not support is `withdrawn` (only when no analyst had triaged it; taken from
there as from `new`).

Each change is stored in the document itself (`cirtsa.<alert|incident>.status`, `.history`
[{status, from, analyst, at, note}], `.status_changed`, `.analyst` and the KPI milestones
`.acknowledged_at`, `.contained_at`, `.repelled_at`, `.closed_at`). Updates use optimistic
concurrency (`if_seq_no` / `if_primary_term`): two analysts changing the same document at
once never overwrite each other; the loser re-reads and its change is re-validated against
the new status (applied if still allowed, refused with who changed it otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from elasticsearch import ConflictError, Elasticsearch

from correlation.es_setup import ALERTS_ALIAS, INCIDENTS_ALIAS

NEW, ACKNOWLEDGED, CONTAINED, REPELLED, FALSE_POSITIVE = (
    "new", "acknowledged", "contained", "repelled", "false_positive")
STATUSES = (NEW, ACKNOWLEDGED, CONTAINED, REPELLED, FALSE_POSITIVE)
TRANSITIONS: dict[str, frozenset[str]] = {
    NEW: frozenset({ACKNOWLEDGED, FALSE_POSITIVE}),
    ACKNOWLEDGED: frozenset({CONTAINED, REPELLED, FALSE_POSITIVE}),
    CONTAINED: frozenset({REPELLED}),
    REPELLED: frozenset(),
    FALSE_POSITIVE: frozenset({ACKNOWLEDGED}),
}
# Set by the correlation stage only (correlation/incidents.py): an incident fused into
# another one (`cirtsa.incident.merged_into`). Final; analysts work on the surviving incident.
MERGED = "merged"
# Set by the correlation only (correlation/alerts.py `withdraw`, kept by the Elasticsearch
# sink only on an alert no analyst triaged): the alert, emitted while its window was open,
# is not supported by the window's whole evidence. Out of the "new" views; an analyst who
# disagrees takes it as from `new` (the history keeps "from": "withdrawn").
WITHDRAWN = "withdrawn"
OPEN_STATUSES = (NEW, ACKNOWLEDGED, CONTAINED)  # what the "open incidents" panel shows
# The KPI timestamp each status sets (first time only: a re-opened false positive keeps its
# original acknowledged_at, so time-to-acknowledge is measured once).
MILESTONES = {ACKNOWLEDGED: "acknowledged_at", CONTAINED: "contained_at",
              REPELLED: "repelled_at"}
CLOSING = (REPELLED, FALSE_POSITIVE)

ALERT, INCIDENT = "alert", "incident"


class InvalidTransition(ValueError):
    """The requested status change is not allowed from the document's current status."""


class NotFound(LookupError):
    """No alert or incident has this id."""


def kind_of(doc: dict) -> str:
    """INCIDENT for an incident document, ALERT otherwise (alerts carry no incident.alert_ids)."""
    incident = (doc.get("cirtsa") or {}).get("incident")
    if isinstance(incident, dict) and "alert_ids" in incident:
        return INCIDENT
    dataset = (doc.get("event") or {}).get("dataset") or ""
    return INCIDENT if dataset.startswith("cirtsa.incident") else ALERT


def lifecycle(doc: dict, kind: str) -> dict:
    """The lifecycle object of a document (`cirtsa.alert` / `cirtsa.incident`), {} if none."""
    value = (doc.get("cirtsa") or {}).get(kind)
    return value if isinstance(value, dict) else {}


def current_status(doc: dict, kind: str) -> str:
    """The stored status; a document nobody has touched yet (no status field) is `new`."""
    return lifecycle(doc, kind).get("status") or NEW


def iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def transition(doc: dict, kind: str, status: str, analyst: str, note: str | None = None,
               at: str | None = None, doc_id: str | None = None) -> dict:
    """The partial document that moves `doc` to `status` (pure: nothing is written).

    Raises InvalidTransition with the allowed next statuses when the change is not allowed.
    """
    if status not in STATUSES:
        raise InvalidTransition(f"unknown status {status!r}; statuses: {', '.join(STATUSES)}")
    if not analyst or not analyst.strip():
        raise InvalidTransition("an analyst name is required for a status change")
    state = lifecycle(doc, kind)
    current = current_status(doc, kind)
    name = f"{kind} {doc_id}" if doc_id else kind
    if current == MERGED:
        raise InvalidTransition(
            f"{name} was merged into incident {state.get('merged_into') or '?'} by the "
            f"correlation; change the status of that incident")
    allowed_to = TRANSITIONS.get(NEW if current == WITHDRAWN else current, frozenset())
    if status not in allowed_to:
        allowed = ", ".join(sorted(allowed_to)) or "none (final status)"
        by = f" (set by {state['analyst']} at {state.get('status_changed')})" \
            if state.get("analyst") else ""
        raise InvalidTransition(
            f"cannot move {name} from {current!r} to {status!r}{by}; allowed from "
            f"{current!r}: {allowed}")
    at = at or iso_now()
    entry = {"status": status, "from": current, "analyst": analyst, "at": at}
    if note:
        entry["note"] = note
    history = list(state.get("history") or [])
    update: dict = {"status": status, "status_changed": at, "analyst": analyst,
                    "history": [*history, entry]}
    milestone = MILESTONES.get(status)
    if milestone and not state.get(milestone):
        update[milestone] = at
    if status in CLOSING:
        update["closed_at"] = at
    elif state.get("closed_at"):
        update["closed_at"] = None  # re-opened
    return {"cirtsa": {kind: update}}


@dataclass
class Located:
    """A document as read for an update: where it is and its concurrency token."""

    index: str
    doc_id: str
    kind: str
    source: dict
    seq_no: int
    primary_term: int


class LifecycleStore:
    """Reads and changes the status of alerts and incidents in Elasticsearch."""

    def __init__(self, client: Elasticsearch, alerts_index: str = ALERTS_ALIAS,
                 incidents_index: str = INCIDENTS_ALIAS, max_conflicts: int = 5,
                 refresh: bool | str = "wait_for",
                 clock: Callable[[], str] = iso_now) -> None:
        self.client = client
        self.alerts_index = alerts_index
        self.incidents_index = incidents_index
        self.max_conflicts = max_conflicts
        self.refresh = refresh  # wait_for: the change is visible to the next list/search
        self.clock = clock

    def locate(self, doc_id: str) -> Located:
        """Find an id among incidents and alerts (incidents first), with _seq_no/_primary_term."""
        for index, kind in ((self.incidents_index, INCIDENT), (self.alerts_index, ALERT)):
            resp = self.client.options(ignore_status=404).get(index=index, id=doc_id)
            if resp.body.get("found"):
                return Located(resp["_index"], doc_id, kind, resp["_source"],
                               resp["_seq_no"], resp["_primary_term"])
        raise NotFound(f"no alert or incident with id {doc_id!r} in {self.incidents_index} "
                       f"or {self.alerts_index}")

    def set_status(self, doc_id: str, status: str, analyst: str,
                   note: str | None = None) -> dict:
        """Move a document to `status`; returns the stored lifecycle object.

        Optimistic concurrency: the update carries the _seq_no/_primary_term it was computed
        from; on a conflict the document is re-read and the change re-validated.
        """
        for _attempt in range(self.max_conflicts):
            doc = self.locate(doc_id)
            partial = transition(doc.source, doc.kind, status, analyst, note,
                                 at=self.clock(), doc_id=doc_id)
            try:
                self.client.update(index=doc.index, id=doc_id, doc=partial,
                                   if_seq_no=doc.seq_no, if_primary_term=doc.primary_term,
                                   refresh=self.refresh)
            except ConflictError:
                continue  # someone else changed it meanwhile: re-read, re-validate
            merged = {**lifecycle(doc.source, doc.kind), **partial["cirtsa"][doc.kind]}
            return {k: v for k, v in merged.items() if v is not None}
        raise InvalidTransition(f"{doc_id}: changed concurrently {self.max_conflicts} times "
                                f"in a row; try again")
