"""Findings -> ECS alert documents, and the stable alert id.

Every field outside `cirtsa.*` is an ECS field (checked against the ECS reference in
tests/test_engine.py). Times are event time: `@timestamp` is the last evidence activity,
`event.start`/`event.end` the first/last evidence, `cirtsa.alert.window` the window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import orjson

from correlation.detector import Evidence, Finding, Rule
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


def iso_texts(ns: Sequence[int]) -> list[str]:
    """iso_ns of each value (ints, ns since the epoch), formatted together.

    Why: an alert has four times to format (first and last evidence, window start and
    end), a burst thousands of alerts; an f-string per time costs ~0.5 µs, these numpy
    passes over all of them and one split ~0.1 µs. Each text is 27 ASCII bytes
    (YYYY-MM-DDTHH:MM:SS.ffffffZ) + a newline, its numbers written as 2-digit pairs.
    """
    try:
        values = np.array(ns, np.int64)
    except (OverflowError, TypeError, ValueError):  # beyond int64: the exact path
        return [iso_ns(v) for v in ns]
    us = values // 1000  # floor, as iso_ns: times before 1970 too
    sec, fraction = np.divmod(us, 1_000_000)
    day_count, second_of_day = np.divmod(sec, 86_400)
    days = day_count.astype("datetime64[D]")
    months = days.astype("datetime64[M]")
    year = days.astype("datetime64[Y]").astype(np.int64) + 1970
    out = np.empty((values.shape[0], 28), np.uint8)
    out[:] = _ISO_TEMPLATE
    for at, value in ((0, year // 100), (2, year % 100),
                      (5, months.astype(np.int64) % 12 + 1),
                      (8, (days - months.astype("datetime64[D]")).astype(np.int64) + 1),
                      (11, second_of_day // 3600), (14, second_of_day // 60 % 60),
                      (17, second_of_day % 60), (20, fraction // 10_000),
                      (22, fraction // 100 % 100), (24, fraction % 100)):
        out[:, at:at + 2].view("<u2")[:, 0] = _PAIRS[value]
    texts = out.tobytes().decode("ascii").split("\n")
    texts.pop()  # after the last newline
    return texts


# "00".."99" as little-endian uint16 (first digit in the low byte: its bytes are the text)
_PAIRS = np.frombuffer("".join(f"{v:02d}" for v in range(100)).encode(), "<u2").copy()
_ISO_TEMPLATE = np.frombuffer(b"0000-00-00T00:00:00.000000Z\n", np.uint8)


def build_alert(finding: Finding) -> dict:
    """One ECS alert document for a finding."""
    ev = finding.describe()
    last_seen = iso_ns(ev.last_seen)
    return _document(finding, ev, iso_ns(ev.first_seen), last_seen,
                     iso_ns(finding.window_start), iso_ns(finding.window_end))


def build_alerts(findings: Sequence[Finding]) -> list[dict]:
    """The ECS alert documents of many findings (same as build_alert on each, in order).

    The findings' hits are announced to their LazyEvidence first (the evidence of the
    suppressed findings of the same windows is then never computed). A burst (thousands
    of findings of one window close) is built with the garbage collector paused, its
    times formatted together; each document is fresh (no shared mutable parts), so
    callers may edit one without touching another.
    """
    # evidence computed per window for all hits at once: only for these findings' hits
    expect_described(f.describe for f in findings)
    if len(findings) < 8:
        return [build_alert(f) for f in findings]
    with gc_paused():
        evidence = [f.describe() for f in findings]
        n = len(findings)
        times = iso_texts([ev.first_seen for ev in evidence]
                          + [ev.last_seen for ev in evidence]
                          + [f.window_start for f in findings]
                          + [f.window_end for f in findings])
        return [_document(f, ev, first_seen, last_seen, start, end)
                for f, ev, first_seen, last_seen, start, end in zip(
                    findings, evidence, times[:n], times[n:2 * n], times[2 * n:3 * n],
                    times[3 * n:], strict=True)]


class _RuleTexts:
    """A rule's fields as the document uses them, read once per rule (a frozen dataclass
    field read and its reference properties' formatting cost more than the copy)."""

    __slots__ = ("rule", "id", "name", "description", "category", "version", "severity",
                 "risk_score", "severity_label", "tactic_id", "tactic_name",
                 "tactic_reference", "technique_id", "technique_name", "technique_reference")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        for name in self.__slots__[1:]:
            setattr(self, name, getattr(rule, name))


# id(rule) -> its texts (an entry holds its rule, so the id stays that rule's; a frozen
# Rule as the key would hash all its fields per alert)
_RULE_TEXTS: dict[int, _RuleTexts] = {}


def _rule_texts(rule: Rule) -> _RuleTexts:
    texts = _RULE_TEXTS.get(id(rule))
    if texts is None or texts.rule is not rule:
        if len(_RULE_TEXTS) >= 4096:  # rules made on the fly (tests): bounded
            _RULE_TEXTS.clear()
        texts = _RULE_TEXTS[id(rule)] = _RuleTexts(rule)
    return texts


def _document(finding: Finding, ev: Evidence, first_seen: str, last_seen: str,
              window_start: str, window_end: str) -> dict:
    """The document of a finding, its evidence and their times as texts."""
    rule = _rule_texts(finding.rule)
    technique_reference = rule.technique_reference
    source_ip = ev.source_ip
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
                       "reference": [rule.tactic_reference]},
            "technique": {"id": [rule.technique_id], "name": [rule.technique_name],
                          "reference": [technique_reference]},
        },
        "source": {"ip": source_ip},
        "related": {"ip": list(ev.related_ips) or [source_ip]},
        "cirtsa": {
            "alert": {
                "key": finding.key,
                "severity_label": rule.severity_label,
                "window": {"start": window_start, "end": window_end},
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
    observers, zones = ev.observers, ev.zones
    if observers or zones:
        observer: dict = {}
        cirtsa_observers: dict = {}
        if observers:
            observer["name"] = observers[0]
            cirtsa_observers["name"] = list(observers)
        if zones:
            observer["ingress"] = {"zone": zones[0]}
            cirtsa_observers["zone"] = list(zones)
        doc["cirtsa"]["observers"] = cirtsa_observers
        doc["observer"] = observer
    if ev.ecs:
        _merge(doc, ev.ecs)
    return doc


# --- versions of one alert (an idle evaluation, then its window's close) ---------------------

# Marks of a version, set on the document after its fingerprint was taken.
OPEN_WINDOW = "open_window"  # cirtsa.alert.open_window: judged while its window was open
REVISION = "revision"  # cirtsa.alert.revision: n-th replacement of an earlier version
# cirtsa.alert.withdrawn: true on the version that takes back an alert emitted from an
# open window that a later evaluation of its window no longer finds (`withdraw`); false
# on a version that finds it again after such a withdrawal (an idle flush's withdrawal,
# then more events)
WITHDRAWN = "withdrawn"
WITHDRAWN_REASON = "withdrawn_reason"  # cirtsa.alert.withdrawn_reason: why, one of:
NOT_FOUND_CLOSED = "not found on the whole window"  # at the window's close
NOT_FOUND_OPEN = "not found on the window's events so far"  # at a later idle flush
SUPPRESSED = "suppressed"  # found, but a repeat of an earlier alert of its rule and key
# cirtsa.alert.status of a withdrawn alert nobody triaged (the correlation's own, as an
# incident's "merged": correlation/lifecycle.py); an analyst's status is never replaced
WITHDRAWN_STATUS = "withdrawn"
_VERSION_MARKS = (OPEN_WINDOW, REVISION, WITHDRAWN, WITHDRAWN_REASON)


def fingerprint(doc: dict) -> bytes:
    """A digest of the alert's content (key order ignored): equal iff the documents are.
    Why a digest: the engine keeps one per alert emitted from an open window until the
    window closes, not the document."""
    return hashlib.blake2b(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS
                                        | orjson.OPT_SERIALIZE_NUMPY), digest_size=16).digest()


def mark_version(doc: dict, previous: tuple[bytes, int] | None, *,
                 open_window: bool) -> tuple[bytes, int] | None:
    """Mark `doc` as a version of its alert; return its (fingerprint, revision), or None
    when it repeats `previous` (the last version emitted: its fingerprint and revision),
    i.e. when nothing would change for a reader.

    The first version is revision 0 (no `revision` field); each later one that differs
    counts up (`cirtsa.alert.revision`: n) and replaces the earlier ones (same
    `event.id`). `open_window` marks a document judged before its window closed."""
    digest = fingerprint(doc)
    if previous is not None and previous[0] == digest:
        return None
    revision = 0 if previous is None else previous[1] + 1
    alert = doc["cirtsa"]["alert"]
    if open_window:
        alert[OPEN_WINDOW] = True
    if revision:
        alert[REVISION] = revision
    return digest, revision


def withdraw(doc: dict, revision: int, reason: str, *, open_window: bool) -> dict:
    """The withdrawal of an alert whose last emitted version is `doc` (revision
    `revision`): the same document -- its last evidence, what is taken back -- as the
    next revision, marked `withdrawn` with its `reason` (status "withdrawn", the message
    prefixed), so it outranks every earlier version (version_rank). `doc` is not changed."""
    alert = {k: v for k, v in doc["cirtsa"]["alert"].items() if k not in _VERSION_MARKS}
    alert[REVISION] = revision + 1
    alert[WITHDRAWN] = True
    alert[WITHDRAWN_REASON] = reason
    alert["status"] = WITHDRAWN_STATUS
    if open_window:
        alert[OPEN_WINDOW] = True
    return {**doc, "message": f"[withdrawn: {reason}] {doc.get('message', '')}",
            "cirtsa": {**doc["cirtsa"], "alert": alert}}


def is_withdrawn(doc: dict) -> bool:
    """The document takes its alert back (`cirtsa.alert.withdrawn: true`)."""
    alert = (doc.get("cirtsa") or {}).get("alert")
    return isinstance(alert, dict) and alert.get(WITHDRAWN) is True


def count_versions(alerts: Sequence[dict], stats: dict) -> None:
    """Count emitted alert versions into `stats` (KPIs count alerts that stand, not
    versions): `alerts_out` +1 for a new alert, -1 for a withdrawal (the alert it
    counted no longer stands: `alerts_withdrawn` +1), +1 for one found again after its
    withdrawal; a revision is in `alerts_revised` only."""
    for doc in alerts:
        alert = (doc.get("cirtsa") or {}).get("alert")
        withdrawn = alert.get(WITHDRAWN) if isinstance(alert, dict) else None
        if withdrawn is True:
            stats["alerts_out"] = stats.get("alerts_out", 0) - 1
            stats["alerts_withdrawn"] = stats.get("alerts_withdrawn", 0) + 1
            continue
        if is_revision(doc):
            stats["alerts_revised"] = stats.get("alerts_revised", 0) + 1
            if withdrawn is not False:
                continue
        stats["alerts_out"] = stats.get("alerts_out", 0) + 1


def version_rank(doc: dict) -> tuple[int, int]:
    """The order of an alert's versions: a document judged on its closed window outranks
    every one judged on an open window, then the higher revision wins. A sink keeps the
    highest (an older version delivered late, e.g. after an outage, changes nothing).
    A withdrawal is the next revision of the version it takes back: it outranks that one
    and every earlier one (at a close, every open-window version too), and a version
    after it (found again at a later evaluation) outranks it in turn."""
    alert = (doc.get("cirtsa") or {}).get("alert")
    if not isinstance(alert, dict):
        return (1, 0)
    revision = alert.get(REVISION, 0)
    return (0 if alert.get(OPEN_WINDOW) else 1,
            revision if isinstance(revision, int) and not isinstance(revision, bool) else 0)


def is_revision(doc: dict) -> bool:
    """The document replaces an earlier version of its alert (same `event.id`)."""
    return version_rank(doc)[1] > 0


def latest_versions(docs: Sequence[dict]) -> list[dict]:
    """One document per `event.id`, the highest version (version_rank; a tie: the later),
    in the order the ids first came: what a reader of sa.alerts or an alert file keeps."""
    latest: dict[object, dict] = {}
    for doc in docs:
        doc_id = (doc.get("event") or {}).get("id")
        kept = latest.get(doc_id)
        if kept is None or version_rank(doc) >= version_rank(kept):
            latest[doc_id] = doc
    return list(latest.values())


def without_version_marks(doc: dict) -> dict:
    """The document without `cirtsa.alert.open_window`/`revision` (a shallow copy down to
    cirtsa.alert): the alert's content, as fingerprint() sees it (a withdrawal keeps its
    `withdrawn` marks: they are what it says)."""
    alert = (doc.get("cirtsa") or {}).get("alert")
    if not isinstance(alert, dict) or not {OPEN_WINDOW, REVISION} & alert.keys():
        return doc
    kept = {k: v for k, v in alert.items() if k not in (OPEN_WINDOW, REVISION)}
    return {**doc, "cirtsa": {**doc["cirtsa"], "alert": kept}}


def _merge(doc: dict, extra: dict) -> None:
    """Deep-merge `extra` into `doc` (mappings merge key by key, other values replace)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            _merge(doc[key], value)
        else:
            doc[key] = value
