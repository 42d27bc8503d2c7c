"""Incident fusion: alerts of one attacker or against one victim become one incident.

Two alerts are linked when they share an entity - the attacker (`source.ip`) or the victim
(`destination.ip`) - and their evidence times are at most `horizon_s` apart; an incident is
a connected component of that relation. Components depend only on the set of alerts, not
on the order or batches they arrive in, so the same input gives the same incidents.

Identity: `cirtsa.incident.id` = hash of the component's first member (earliest evidence,
then alert id) - its alert id - and the start of the horizon that member falls in. Adding a
later alert keeps the id; when an earlier alert arrives later, or two incidents merge, the
id is the one of the new first member and the superseded incident document is re-emitted
with `cirtsa.incident.status: merged` and `cirtsa.incident.merged_into`, so an upsert by id
leaves no stale duplicate open.

The document is an ECS alert (`event.kind: alert`, dataset `cirtsa.incident`); severity is
the members' maximum plus `multi_stage_bonus` per extra ATT&CK tactic (stage), capped at 99.
Cross-sensor: an attacker seen by two sensors on two segments is one entity, one incident.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, insort
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from correlation.alerts import ECS_VERSION, RULESET, gc_paused, is_withdrawn, version_rank
from correlation.alerts import iso_ns as ns_to_iso  # pipeline.schema's, memoized per second
from pipeline.intel import ATTACK_TACTICS

INCIDENT_DATASET = "cirtsa.incident"
# Stage order of an intrusion seen from the network: ATT&CK's matrix order, except that
# Discovery (scanning) comes before Credential Access (guessing), as an attack unfolds.
STAGE_ORDER = ("TA0043", "TA0042", "TA0001", "TA0002", "TA0003", "TA0004", "TA0005",
               "TA0007", "TA0006", "TA0008", "TA0009", "TA0011", "TA0010", "TA0040")
_TACTIC_ORDER = {tid: i for i, tid in enumerate(STAGE_ORDER)}
_TACTIC_NAME = {tid: name for tid, name, _ in ATTACK_TACTICS}
# How the summary words each stage (by tactic).
_VERBS = {
    "TA0043": "probed", "TA0007": "scanned", "TA0006": "attacked credentials of",
    "TA0001": "attacked", "TA0002": "ran code on", "TA0008": "moved laterally to",
    "TA0011": "had command-and-control traffic with", "TA0010": "exfiltrated data to",
    "TA0040": "attacked",
}
DEFAULTS = {"horizon_s": 86400, "multi_stage_bonus": 10, "max_open": 100_000}


def severity_label(severity: int) -> str:
    """Elastic's bands: low 21, medium 47, high 73, critical 99."""
    if severity >= 99:
        return "critical"
    if severity >= 73:
        return "high"
    if severity >= 47:
        return "medium"
    return "low"


def _ns(iso: str) -> int:
    # our own alerts' form "YYYY-MM-DDTHH:MM:SS.ffffffZ": the second memoized (a burst of
    # alerts shares few seconds), the microseconds read as digits; anything else (and
    # times the float path below could round differently) takes the general parse
    if len(iso) == 27 and iso[19] == "." and iso[26] == "Z":
        sec = _SECONDS.get(iso[:19])
        if sec is None:
            sec = _parse_seconds(iso[:19])
        micros = iso[20:26]
        if 0 <= sec < 1 << 33 and micros.isdigit() and micros.isascii():  # 1 << 33: year 2242
            return sec * 1_000_000_000 + int(micros) * 1000
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


_SECONDS: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" (UTC) -> epoch seconds, bounded


def _parse_seconds(head: str) -> int:
    """Epoch seconds of a UTC "YYYY-MM-DDTHH:MM:SS" (-1 if not that form: slow path)."""
    try:
        sec = int(datetime.fromisoformat(head + "+00:00").timestamp())
    except ValueError:
        return -1
    if len(_SECONDS) >= 1 << 16:
        _SECONDS.clear()
    _SECONDS[head] = sec
    return sec


def _list(value: object) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


@dataclass
class _Member:
    """What an incident needs of one alert."""

    id: str
    start: int
    end: int
    rule_id: str
    rule_name: str
    severity: int
    tactics: list[tuple[str, str]]
    techniques: list[tuple[str, str]]
    attacker: str | None
    victim: str | None
    related: list[str]
    sensors: list[str]
    segments: list[str]
    port: int | None
    rank: tuple[int, int] = (1, 0)  # the alert's version (correlation.alerts.version_rank)

    @classmethod
    def of(cls, alert: Mapping) -> _Member:
        event = alert.get("event", {})
        threat = alert.get("threat", {})
        tactic, technique = threat.get("tactic", {}), threat.get("technique", {})
        observer = alert.get("observer", {})
        cirtsa_obs = alert.get("cirtsa", {}).get("observers", {})
        end = _ns(event.get("end") or alert["@timestamp"])
        return cls(
            id=str(event["id"]), start=_ns(event.get("start") or alert["@timestamp"]), end=end,
            rule_id=str(alert.get("rule", {}).get("id", "")),
            rule_name=str(alert.get("rule", {}).get("name", "")),
            severity=int(event.get("severity", 0)),
            tactics=list(zip(_list(tactic.get("id")), _list(tactic.get("name")), strict=False)),
            techniques=list(zip(_list(technique.get("id")), _list(technique.get("name")),
                                strict=False)),
            attacker=alert.get("source", {}).get("ip"),
            victim=alert.get("destination", {}).get("ip"),
            related=[str(ip) for ip in _list(alert.get("related", {}).get("ip"))],
            sensors=sorted({*_list(observer.get("name")), *_list(cirtsa_obs.get("name"))}),
            segments=sorted({*_list(observer.get("ingress", {}).get("zone")),
                             *_list(cirtsa_obs.get("zone"))}),
            port=alert.get("destination", {}).get("port"),
            rank=version_rank(alert),
        )

    def entities(self) -> list[str]:
        return [e for e in (self.attacker, self.victim) if e]


@dataclass
class _Incident:
    members: dict[str, _Member] = field(default_factory=dict)
    id: str = ""


class IncidentBuilder:
    """Fuses alerts into incidents; `add` returns the incident documents created or changed.

    `config` is the `correlation.incidents` section (horizon_s, multi_stage_bonus, max_open).
    """

    def __init__(self, config: Mapping | None = None) -> None:
        c = {**DEFAULTS, **dict(config or {})}
        self.horizon_ns = int(float(c["horizon_s"]) * 1_000_000_000)
        self.bonus = int(c["multi_stage_bonus"])
        self.max_open = int(c["max_open"])
        self._incidents: dict[int, _Incident] = {}  # internal handle -> incident
        self._of_alert: dict[str, int] = {}  # alert id -> handle
        # entity -> {handle: ascending evidence starts of that incident's alerts naming it}:
        # linking a new alert is a bisect per (entity, incident), not a scan of every
        # alert that named the entity (quadratic when thousands of alerts hit one victim)
        self._entity: dict[str, dict[int, list[int]]] = {}
        self._next = 0
        # alert id -> version_rank of its withdrawal (correlation/alerts.py withdraw): an
        # older version of it, late, adds nothing; a newer one (found again) comes back.
        # Bounded like the open incidents (oldest withdrawals forgotten first).
        self._withdrawn: dict[str, tuple[int, int]] = {}
        # handle -> last document of an incident whose last alert was withdrawn in this add
        self._emptied: dict[int, dict] = {}
        # alerts_in counts alerts, not versions: a revision (same id) is in "revised";
        # a withdrawal takes its alert out of alerts_in, into "withdrawn"
        self.stats = {"alerts_in": 0, "incidents": 0, "merged": 0, "evicted": 0,
                      "revised": 0, "withdrawn": 0}

    def add(self, alerts: list[dict]) -> list[dict]:
        with gc_paused():  # thousands of small acyclic objects in a burst: see gc_paused
            return self._add(alerts)

    def _add(self, alerts: list[dict]) -> list[dict]:
        changed: dict[int, None] = {}
        merged_docs: list[dict] = []
        for alert in alerts:  # alerts are few: a loop is fine
            member = _Member.of(alert)
            gone = self._withdrawn.get(member.id)
            if gone is not None:
                if member.rank <= gone:
                    continue  # an older version of a withdrawn alert, late: nothing
                del self._withdrawn[member.id]  # found again after its withdrawal
            if is_withdrawn(alert):
                self._withdraw(member, changed)
                continue
            was = self._of_alert.get(member.id)
            if was is None:
                self.stats["alerts_in"] += 1
                linked = self._linked(member)
            else:
                # the alert again (same stable id): a replay changes nothing; a newer
                # version of it (more evidence: times, severity) replaces its member
                old = self._incidents[was].members[member.id]
                if old == member or member.rank < old.rank:  # (an older version: late)
                    continue
                self.stats["revised"] += 1
                self._forget_member(was, member.id)
                linked = self._linked(member) | {was}
            handle = min(linked) if linked else self._new()
            incident = self._incidents[handle]
            for other in sorted(linked - {handle}):  # merge into the oldest handle
                gone = self._incidents.pop(other)
                changed.pop(other, None)
                for aid, m in gone.members.items():
                    incident.members[aid] = m
                    self._of_alert[aid] = handle
                for e in {e for m in gone.members.values() for e in m.entities()}:
                    by_incident = self._entity[e]
                    moved = by_incident.pop(other, None)
                    if moved:
                        by_incident[handle] = sorted(by_incident.get(handle, []) + moved)
                if gone.id:
                    merged_docs.append(self._merged_doc(gone, handle))
                self.stats["merged"] += 1
            incident.members[member.id] = member
            self._of_alert[member.id] = handle
            for e in member.entities():
                insort(self._entity.setdefault(e, {}).setdefault(handle, []), member.start)
            changed[handle] = None
        docs = [self._emptied.pop(h) for h in changed if h in self._emptied]
        self._evict()
        for handle in changed:
            if handle not in self._incidents:
                continue
            incident = self._incidents[handle]
            old_id = incident.id
            incident.id = self._id(incident)
            if old_id and old_id != incident.id:  # an earlier member arrived: new identity
                merged_docs.append(self._merged_doc(_Incident(incident.members, old_id), handle))
            docs.append(self.document(incident, created=not old_id or old_id != incident.id))
        # a superseded id's final target is known only now
        for doc in merged_docs:
            target = doc["cirtsa"]["incident"].pop("_handle")
            doc["cirtsa"]["incident"]["merged_into"] = self._incidents[target].id \
                if target in self._incidents else ""
        return merged_docs + docs

    @property
    def incidents(self) -> list[dict]:
        """Every open incident's current document."""
        return [self.document(i) for i in self._incidents.values()]

    # --- internals -----------------------------------------------------------------------

    def _linked(self, member: _Member) -> set[int]:
        """Incidents with an alert sharing an entity with `member` whose evidence start is
        within the horizon of the member's start or end."""
        linked: set[int] = set()
        h = self.horizon_ns
        for e in member.entities():
            for handle, starts in self._entity.get(e, {}).items():
                if handle not in linked and (_any_within(starts, member.start, h)
                                             or _any_within(starts, member.end, h)):
                    linked.add(handle)
        return linked

    def _forget_member(self, handle: int, alert_id: str) -> None:
        """Take an alert's member out of its incident's entity index (it stays a member
        until replaced: the incident keeps its handle and its other links)."""
        old = self._incidents[handle].members[alert_id]
        for e in old.entities():
            starts = self._entity.get(e, {}).get(handle)
            if starts:
                starts.pop(bisect_left(starts, old.start))

    def _withdraw(self, member: _Member, changed: dict[int, None]) -> None:
        """Take a withdrawn alert out of its incident (an alert never added: only
        remembered). The incident keeps its other members, linked or not through this
        one (not split), and gets the identity of its new first member."""
        was = self._of_alert.get(member.id)
        if was is not None:
            incident = self._incidents[was]
            if member.rank < incident.members[member.id].rank:
                return  # (cannot happen from one engine: a withdrawal is the last version)
            if len(incident.members) == 1:
                if incident.id:  # (else never emitted: added and withdrawn in one add)
                    self._emptied[was] = self._emptied_doc(incident)
                self._incidents.pop(was)
                for e in incident.members[member.id].entities():
                    by_incident = self._entity.get(e, {})
                    by_incident.pop(was, None)
                    if not by_incident:
                        self._entity.pop(e, None)
            else:
                self._forget_member(was, member.id)
                del incident.members[member.id]
            del self._of_alert[member.id]
            self.stats["alerts_in"] -= 1
            self.stats["withdrawn"] += 1
            changed[was] = None
        self._withdrawn[member.id] = member.rank
        if len(self._withdrawn) > self.max_open:
            del self._withdrawn[next(iter(self._withdrawn))]

    def _emptied_doc(self, incident: _Incident) -> dict:
        """The last document of an incident whose every alert was withdrawn: its fields as
        they were (what was taken back), `alert_ids` empty and `alert_count` 0, the
        message saying so; no status (an analyst's stays; an untouched one stays new).
        The builder forgets the incident."""
        doc = self.document(incident)
        doc["cirtsa"]["incident"].update(alert_ids=[], alert_count=0)
        doc["message"] = f"[withdrawn: none of its alerts stands] {doc['message']}"
        return doc

    def _new(self) -> int:
        self._next += 1
        self._incidents[self._next] = _Incident()
        self.stats["incidents"] += 1
        return self._next

    def _first(self, incident: _Incident) -> _Member:
        return min(incident.members.values(), key=lambda m: (m.start, m.id))

    def _id(self, incident: _Incident) -> str:
        first = self._first(incident)
        horizon_start = first.start // self.horizon_ns * self.horizon_ns
        text = f"incident\x1f{first.id}\x1f{horizon_start}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _merged_doc(self, gone: _Incident, into: int) -> dict:
        doc = self.document(gone)
        doc["cirtsa"]["incident"]["status"] = "merged"
        doc["cirtsa"]["incident"]["_handle"] = into
        return doc

    def _evict(self) -> None:
        excess = len(self._incidents) - self.max_open
        if excess <= 0:
            return
        oldest = sorted(self._incidents,
                        key=lambda h: max(m.end for m in self._incidents[h].members.values()))
        for handle in oldest[:excess]:
            gone = self._incidents.pop(handle)
            for aid, m in gone.members.items():
                self._of_alert.pop(aid, None)
                for e in m.entities():
                    by_incident = self._entity.get(e)
                    if by_incident is not None:
                        by_incident.pop(handle, None)
                        if not by_incident:
                            del self._entity[e]
            self.stats["evicted"] += 1

    def document(self, incident: _Incident, created: bool = False) -> dict:
        """The ECS document of an incident."""
        members = sorted(incident.members.values(), key=lambda m: (m.start, m.id))
        first_seen = min(m.start for m in members)
        last_seen = max(m.end for m in members)
        tactics = {t for m in members for t in m.tactics}
        stages = sorted(tactics, key=lambda t: (_TACTIC_ORDER.get(t[0], 99), t[0]))
        techniques = sorted({t for m in members for t in m.techniques})
        base = max(m.severity for m in members)
        severity = min(99, base + self.bonus * max(0, len(stages) - 1))
        attackers = _by_count(m.attacker for m in members if m.attacker)
        victims = _by_count(m.victim for m in members if m.victim)
        sensors = sorted({s for m in members for s in m.sensors})
        segments = sorted({s for m in members for s in m.segments})
        related = sorted({ip for m in members for ip in (*m.related, *m.entities())})
        doc: dict = {
            "@timestamp": ns_to_iso(last_seen),
            "ecs": {"version": ECS_VERSION},
            "message": _summary(members, stages, attackers, segments),
            "event": {
                "kind": "alert", "category": ["network", "intrusion_detection"],
                "type": ["info"], "id": incident.id, "dataset": INCIDENT_DATASET,
                "module": "cirtsa", "severity": severity, "risk_score": float(severity),
                "start": ns_to_iso(first_seen), "end": ns_to_iso(last_seen),
                "duration": int(last_seen - first_seen),
            },
            "rule": {"id": "cirtsa.incident", "name": "Correlated incident",
                     "ruleset": RULESET, "category": "Incident"},
            "threat": {"framework": "MITRE ATT&CK",
                       "tactic": {"id": [t[0] for t in stages], "name": [t[1] for t in stages]},
                       "technique": {"id": [t[0] for t in techniques],
                                     "name": [t[1] for t in techniques]}},
            "related": {"ip": related},
            "cirtsa": {"incident": {
                "id": incident.id,
                "alert_ids": [m.id for m in members], "alert_count": len(members),
                "rule_ids": sorted({m.rule_id for m in members}),
                "stages": [_TACTIC_NAME.get(t[0], t[1]) for t in stages],
                "sensors": sensors, "segments": segments,
                "attackers": attackers, "victims": victims,
                "first_seen": ns_to_iso(first_seen), "last_seen": ns_to_iso(last_seen),
                "severity_label": severity_label(severity),
            }},
        }
        if created:
            doc["cirtsa"]["incident"]["status"] = "new"
        if attackers:
            doc["source"] = {"ip": attackers[0]}
        if len(victims) == 1:
            doc["destination"] = {"ip": victims[0]}
        if sensors:
            doc["cirtsa"]["observers"] = {"name": sensors, "zone": segments}
        return doc


def _any_within(ascending: list[int], t: int, horizon: int) -> bool:
    """Some value v of the ascending list has |v - t| <= horizon."""
    i = bisect_left(ascending, t - horizon)
    return i < len(ascending) and ascending[i] <= t + horizon


def _by_count(values) -> list[str]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sorted(counts, key=lambda v: (-counts[v], v))


def _summary(members: list[_Member], stages: list[tuple[str, str]], attackers: list[str],
             segments: list[str]) -> str:
    """'192.168.56.1 scanned 3 segments, then attacked credentials of 192.168.56.103'."""
    who = attackers[0] if attackers else "unknown source"
    phrases = []
    for tid, name in stages:
        of_stage = [m for m in members if (tid, name) in m.tactics]
        victims = sorted({m.victim for m in of_stage if m.victim})
        zones = sorted({z for m in of_stage for z in m.segments})
        if victims:
            target = victims[0] if len(victims) == 1 else f"{len(victims)} hosts"
        elif len(zones) > 1:
            target = f"{len(zones)} segments"
        else:
            target = "hosts" + (f" in {zones[0]}" if zones else "")
        rules = sorted({m.rule_name for m in of_stage})
        phrases.append(f"{_VERBS.get(tid, name.lower())} {target} ({'; '.join(rules)})")
    if not phrases:
        phrases = [f"raised {len(members)} alerts"]
    tail = f" [{len(members)} alerts" + (f", {len(segments)} segments]" if segments else "]")
    return f"{who} " + ", then ".join(phrases) + tail
