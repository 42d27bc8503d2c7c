"""Input adapters: Suricata EVE JSON and Zeek logs (JSON and TSV) -> schema EventBatches.

Each adapter takes a chunk of raw lines of one source and returns an `AdapterResult`:
valid batches (one per kind), dead-letter records (reason + original line) and counts of
records that are valid but not mapped to an event kind (Suricata stats/fileinfo/anomaly,
Zeek weird/files/x509). Field mappings are documented in docs/fusion.md, one table per
source type; they follow ECS and Elastic's Suricata and Zeek integrations.

Performance: EVE lines are first scanned, not decoded: one numba pass over the chunk
(fusion.json_scan) validates the JSON and locates the fields read here, and flow, alert and
DNS columns are built from those spans (fusion.eve_scan); tests/test_json_scan.py checks it
against the decoding paths. A chunk or event-type group the scan path does not take is
decoded by msgspec into typed Structs declaring only the fields the adapter reads (unknown
fields skipped in C); a chunk the typed decoder rejects (odd shapes, broken JSON, no
event_type...) takes the general orjson dict path, which defines every mapping and
dead-letter reason - all give identical results (tests/test_fusion_fastpath.py).
Zeek JSON lines take the same scan path (fusion.zeek_scan: conn, dns and http columns from
the spans; `ts`/`duration` parsed exactly); a chunk or `_path` group it does not take is
parsed with orjson (tests/test_zeek_scan.py checks both paths agree). On that general path
each schema column is pulled out of the group of records of one kind with one list
comprehension (column-wise, no per-event dict rebuilding), and typed/validated by numpy in
fusion.columns.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import msgspec
import numpy as np
import orjson
from msgspec import UNSET, UnsetType

from fusion import eve_scan, json_scan, tsv_scan, zeek_scan
from fusion.columns import (
    Bounds,
    build_batch,
    deadletter_record,
    duration_ns,
    epoch_times,
    iso_times,
)
from fusion.eve_scan import EVE_KEYS
from fusion.json_scan import factorize_spans, join_lines, scan_lines
from pipeline.schema import DNS_CLASS_NAMES, DNS_RCODE_NAMES, DNS_TYPE_NAMES, EventBatch

TRANSPORTS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "icmp6": 58,
              "sctp": 132, "gre": 47, "esp": 50, "igmp": 2}
DNS_TYPES = {v: k for k, v in DNS_TYPE_NAMES.items()}
DNS_RCODES = {v: k for k, v in DNS_RCODE_NAMES.items()}
DNS_CLASSES = {v: k for k, v in DNS_CLASS_NAMES.items()} | {"C_INTERNET": 1}
# Suricata flow.reason -> our end_reason vocabulary
EVE_FLOW_REASON = {"timeout": "idle", "forced": "evicted", "shutdown": "eof",
                   "tcp_reuse": "fin"}
# Zeek ssl.version -> ECS tls.version
TLS_VERSIONS = {"TLSv10": "1.0", "TLSv11": "1.1", "TLSv12": "1.2", "TLSv13": "1.3",
                "SSLv3": "3.0", "SSLv2": "2.0", "DTLSv10": "1.0", "DTLSv12": "1.2"}
# EVE event types with a mapping (EveAdapter._<type> and ._fast_<type>); others are counted.
# A whitelist, not getattr alone: an event_type such as "common" must not reach a helper.
EVE_HANDLED = frozenset({"alert", "flow", "dns", "http", "tls", "ssh", "anomaly"})
# The scan path holds ~900 bytes of spans per line (36 keys): bigger chunks than the
# sources' 8192 lines are decoded instead (bounded memory, same results).
SCAN_MAX_LINES = 65_536
# Notices and Suricata alerts share event.severity; Zeek notices carry none: medium (2).
ZEEK_NOTICE_SEVERITY = 2


@dataclass
class AdapterResult:
    batches: list[EventBatch] = field(default_factory=list)
    deadletter: list[dict] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)  # dead-letter reason -> rows
    unmapped: Counter[str] = field(default_factory=Counter)  # e.g. "suricata.stats" -> rows
    records: int = 0

    def merge(self, other: AdapterResult) -> None:
        self.batches += other.batches
        self.deadletter += other.deadletter
        self.reasons.update(other.reasons)
        self.unmapped.update(other.unmapped)
        self.records += other.records


Handler = Callable[[list[dict], list, AdapterResult], None]
# What a mapping raises on a record of a shape it does not expect (a list where a string
# belongs: unhashable in a lookup, not iterable, ...).
SHAPE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError)


def _guarded(handler: Handler, recs: list[dict], orig: list, result: AdapterResult,
             source: str, what: str) -> None:
    """Run a column-wise mapping on a group of records. When one hostile record makes it
    raise, map the records one at a time and dead-letter exactly the ones that raise, with
    the reason: bad input never stops the stream (rare, so the slow path does not matter)."""
    part = AdapterResult()
    try:
        handler(recs, orig, part)
    except SHAPE_ERRORS:
        part = AdapterResult()
        for rec, original in zip(recs, orig, strict=True):
            one = AdapterResult()
            try:
                handler([rec], [original], one)
            except SHAPE_ERRORS as exc:
                _dead(part, source, f"{what}: unexpected field shape "
                      f"({type(exc).__name__}: {str(exc)[:120]})", original)
                continue
            part.merge(one)
    result.merge(part)


def parse_json_lines(lines: Iterable[bytes | str], source: str,
                     result: AdapterResult) -> tuple[list[dict], list]:
    """orjson each line; malformed lines and non-objects are dead-lettered, blank skipped.

    Fast path: `map(orjson.loads, lines)` - the loop over lines runs in C, no Python
    try/except per line. A bad line aborts it; the chunk is then parsed line by line to
    dead-letter exactly the bad ones. (Parsing the chunk as one JSON array '[l1,l2,...]'
    was rejected: a crafted pair of lines such as '{"a":"}' and '{"}' merges into one
    value, so a malformed line could pass as a record.)"""
    kept = [ln for ln in lines if ln.strip()]
    result.records += len(kept)
    try:
        records = list(map(orjson.loads, kept))
    except orjson.JSONDecodeError:
        records = None
    if records is not None and set(map(type, records)) <= {dict}:
        return records, kept
    return _parse_each(kept, source, result)


def _parse_each(lines: list, source: str, result: AdapterResult) -> tuple[list[dict], list]:
    records: list[dict] = []
    originals: list = []
    loads = orjson.loads
    for line in lines:
        try:
            rec = loads(line)
        except orjson.JSONDecodeError as exc:
            _dead(result, source, "malformed JSON", line, str(exc).splitlines()[0][:120])
            continue
        if type(rec) is not dict:
            _dead(result, source, "not a JSON object", line)
            continue
        records.append(rec)
        originals.append(line)
    return records, originals


def _dead(result: AdapterResult, source: str, reason: str, original,
          detail: str | None = None) -> None:
    result.reasons[reason] += 1
    record = deadletter_record(source, reason, original)
    if detail:
        record["detail"] = detail
    result.deadletter.append(record)


def _add(result: AdapterResult, built) -> None:
    if built.batch is not None:
        result.batches.append(built.batch)
    result.deadletter += built.deadletter
    result.reasons.update(built.reasons)


# Protocol text as logged ("TCP", "udp", "17") -> number or "bad"; a bounded memo, so the
# column is one C-level map() of dict lookups (a few distinct values per log).
_transport_memo: dict[str, int | str] = {}


def _transport(values: Sequence) -> list:
    try:
        out = list(map(_transport_memo.get, values))
    except TypeError:  # an unhashable value (list, object): per value
        out = [None] * len(values)
    if None in out:
        out = [o if o is not None else _transport_one(v)
               for o, v in zip(out, values, strict=True)]
    return out


def _transport_one(v):
    if type(v) is not str:
        return v
    low = v.lower()
    code = TRANSPORTS.get(low, int(low) if low.isdecimal() else "bad")
    if len(_transport_memo) < 10_000:
        _transport_memo[v] = code
    return code


def _sub(records: Sequence[dict], key: str) -> list[dict]:
    """The nested object `key` of every record ({} when absent or not an object)."""
    empty: dict = {}
    return [r[key] if type(r.get(key)) is dict else empty for r in records]


# --- Suricata EVE ------------------------------------------------------------------------------

class EveAdapter:
    """Suricata EVE JSON (one object per line). event_type -> kind:
    alert -> ids_alert, flow -> flow, dns -> dns (EVE v1 per-answer records and v2
    grouped answers), http -> http, tls -> tls, ssh -> ssh; anomaly -> counted as
    `weird.suricata.<event>` (protocol anomalies are not attacks: kept out of the alert
    path, like Zeek's weird.log); fileinfo, stats, netflow, ... -> counted as unmapped."""

    source = "suricata"

    def __init__(self, bounds: Bounds | None = None, observer: str = "suricata",
                 zone: str = "default") -> None:
        self.bounds = bounds or Bounds()
        self.observer = observer
        self.zone = zone

    def convert(self, lines: Iterable[bytes | str]) -> AdapterResult:
        lines = lines if type(lines) is list else list(lines)
        scanned = self._convert_scan(lines)
        if scanned is not None:
            return scanned
        return self._convert_decoded([ln for ln in lines if ln.strip()])

    def _convert_decoded(self, kept: list) -> AdapterResult:
        """Decode then map: msgspec typed records, or orjson dicts when those reject."""
        fast = _eve_fast(kept)
        if fast is not None:
            return self._convert_fast(fast, kept)
        return self._convert_dicts(kept)

    def _convert_scan(self, lines: list) -> AdapterResult | None:
        """The scan path (fusion.eve_scan): one compiled pass validates the chunk and
        locates the fields; columns come from the spans. None when a line is not plain
        valid JSON with a text event_type (the chunk is then decoded whole, so dead-letter
        order is the decoder's). Per event type, in first-appearance order as the decoder
        groups them: unmapped types are counted, flow/alert/DNS-query groups are built
        from the spans, any other group - or one with a value the scan path does not
        take (eve_scan.Fallback) - is decoded and mapped by _convert_decoded."""
        if not lines or len(lines) > SCAN_MAX_LINES or set(map(type, lines)) != {bytes}:
            return None
        buf, joined, kept, vs, ve, vt, iv, flags = _scan_chunk(lines, EVE_KEYS)
        if not kept:
            return AdapterResult()
        et = EVE_KEYS.index["event_type"]
        types = vt[et]
        if flags.any() or not (types == json_scan.STR).all():
            return None
        et_start, et_end = vs[et], ve[et]
        codes, reps = factorize_spans(buf, et_start, et_end, np.arange(len(kept)))
        names = [joined[a:b].decode() for a, b in zip(et_start[reps].tolist(),
                                                      et_end[reps].tolist(), strict=True)]
        spans = eve_scan.Spans(buf, joined, vs, ve, vt, iv)

        def unmapped(et: str, count: int, result: AdapterResult) -> bool:
            if et in EVE_HANDLED:
                return False
            result.unmapped[f"suricata.{et}"] += count
            result.records += count
            return True

        return _convert_groups(self, spans, codes, names, kept, eve_scan.COLUMNS,
                               self._convert_decoded, skip=unmapped)

    def _convert_dicts(self, lines: list) -> AdapterResult:
        """The general path: orjson dicts, every shape and every dead-letter reason."""
        result = AdapterResult()
        records, originals = parse_json_lines(lines, self.source, result)
        groups: defaultdict[str, list[int]] = defaultdict(list)
        for i, rec in enumerate(records):
            et = rec.get("event_type")
            if et is None and type(rec.get("event")) is dict:  # AWS Network Firewall envelope
                records[i] = rec = rec["event"]
                et = rec.get("event_type")
            groups[et if type(et) is str else "<missing>"].append(i)
        for et, idx in groups.items():
            recs = [records[i] for i in idx]
            orig = [originals[i] for i in idx]
            handler = getattr(self, f"_{et}") if et in EVE_HANDLED else None
            if et == "<missing>":
                for o in orig:
                    _dead(result, self.source, "event_type: missing", o)
            elif handler is None:
                result.unmapped[f"suricata.{et}"] += len(recs)
            else:
                _guarded(handler, recs, orig, result, self.source, f"suricata.{et}")
        return result

    # common columns of every EVE event
    def _common(self, recs: list[dict], time_key: str = "timestamp") -> tuple[dict, dict]:
        n = len(recs)
        proto = _transport([r.get("proto") for r in recs])
        sport = [r.get("src_port", r.get("icmp_type")) for r in recs]
        dport = [r.get("dest_port", r.get("icmp_code")) for r in recs]
        raw = {
            "observer_name": [r.get("host") if type(r.get("host")) is str else self.observer
                              for r in recs],
            "ingress_zone": [self.zone] * n,
            "src_ip": [r.get("src_ip") for r in recs],
            "dst_ip": [r.get("dest_ip") for r in recs],
            "src_port": sport,
            "dst_port": dport,
            "transport": proto,
            "vlan": [(r["vlan"][-1] if type(r.get("vlan")) is list and r["vlan"] else None)
                     for r in recs],
            "community_id": [r.get("community_id") for r in recs],
        }
        ready = {"timestamp": iso_times([r.get(time_key) for r in recs])}
        return raw, ready

    def _build(self, kind: str, recs, orig, raw, ready, result) -> None:
        _add(result, build_batch(kind, len(recs), raw, orig, self.source, ready, self.bounds))

    def _alert(self, recs, orig, result) -> None:
        raw, ready = self._common(recs)
        alert = _sub(recs, "alert")
        raw |= {
            "detector": ["suricata"] * len(recs),
            "rule_id": [(str(a["signature_id"]) if "signature_id" in a else None)
                        for a in alert],
            "rule_name": [a.get("signature") for a in alert],
            "rule_category": [a.get("category") for a in alert],
            "severity": [a.get("severity") for a in alert],
            "action": [a.get("action") for a in alert],
        }
        self._build("ids_alert", recs, orig, raw, ready, result)

    def _flow(self, recs, orig, result) -> None:
        flow = _sub(recs, "flow")
        tcp = _sub(recs, "tcp")
        # @timestamp of a flow = its first packet (our sensor's convention): flow.start.
        for r, f in zip(recs, flow, strict=True):
            r["_start"] = f.get("start", r.get("timestamp"))
        raw, ready = self._common(recs, "_start")
        end, end_bad = iso_times([f.get("end", r.get("timestamp"))
                                  for f, r in zip(flow, recs, strict=True)])
        ready["end"] = (end, end_bad | (end < ready["timestamp"][0]))
        raw |= {
            "src_packets": [f.get("pkts_toserver") for f in flow],
            "dst_packets": [f.get("pkts_toclient") for f in flow],
            # Suricata counts whole packets (link layer included), as our sensor does.
            "src_bytes": [f.get("bytes_toserver") for f in flow],
            "dst_bytes": [f.get("bytes_toclient") for f in flow],
            "src_tcp_flags": _hex_column([t.get("tcp_flags_ts") for t in tcp]),
            "dst_tcp_flags": _hex_column([t.get("tcp_flags_tc") for t in tcp]),
            "end_reason": [EVE_FLOW_REASON.get(f.get("reason"), f.get("reason")) for f in flow],
        }
        self._build("flow", recs, orig, raw, ready, result)

    def _dns(self, recs, orig, result) -> None:
        raw, ready = self._common(recs)
        dns = _sub(recs, "dns")
        is_answer = [d.get("type") == "answer" for d in dns]
        answers = []
        qnames = []
        for d, ans in zip(dns, is_answer, strict=True):
            if not ans:
                answers.append([])
                qnames.append(_name(d.get("rrname")))
            elif "answers" in d or "grouped" in d or d.get("version") == 2:  # EVE v2
                answers.append(_eve_v2_answers(d))
                qnames.append(_name(d.get("rrname")))
            else:  # EVE v1: one record per answer RR; rrname is the RR's owner name
                answers.append([_rr(d.get("rrname"), d.get("rrtype"), d.get("ttl"),
                                    d.get("rdata"))] if "rdata" in d or "rrtype" in d else [])
                qnames.append("")  # the question is not in a v1 answer record
        raw |= {
            "dns_id": [d.get("id") for d in dns],
            "is_response": is_answer,
            "qname": qnames,
            "qtype": [(DNS_TYPES.get(d.get("rrtype"), 0) if a is False or "answers" in d
                       or "grouped" in d else 0) for d, a in zip(dns, is_answer, strict=True)],
            "qclass": [1] * len(recs),
            "rcode": [DNS_RCODES.get(d.get("rcode"), 0) if a else 0
                      for d, a in zip(dns, is_answer, strict=True)],
            "flags": _hex_column([d.get("flags") for d in dns]),
            "answers": answers,
        }
        self._build("dns", recs, orig, raw, ready, result)

    def _http(self, recs, orig, result) -> None:
        raw, ready = self._common(recs)
        http = _sub(recs, "http")
        raw |= {
            "method": [h.get("http_method") for h in http],
            "host": [(h["hostname"].lower() if type(h.get("hostname")) is str else None)
                     for h in http],
            "uri": [h.get("url") for h in http],
            "version": [_http_version(h.get("protocol")) for h in http],
            "user_agent": [h.get("http_user_agent") for h in http],
            "referrer": [h.get("http_refer") for h in http],
            "status": [h.get("status") for h in http],
            "response_body_bytes": [h.get("length", -1) for h in http],
            "response_mime_type": [h.get("http_content_type") for h in http],
        }
        self._build("http", recs, orig, raw, ready, result)

    def _tls(self, recs, orig, result) -> None:
        raw, ready = self._common(recs)
        tls = _sub(recs, "tls")
        raw |= {
            "version": [_eve_tls_version(t.get("version")) for t in tls],
            "server_name": [_name(t.get("sni")) for t in tls],
            "ja3": [(t.get("ja3") or {}).get("hash") if type(t.get("ja3")) is dict else None
                    for t in tls],
            "ja3s": [(t.get("ja3s") or {}).get("hash") if type(t.get("ja3s")) is dict
                     else None for t in tls],
            "ja4": [t.get("ja4") for t in tls],
            "cert_sha1": [_fingerprint(t.get("fingerprint")) for t in tls],
            "cert_subject": [t.get("subject") for t in tls],
            "cert_issuer": [t.get("issuerdn") for t in tls],
            # EVE logs a TLS record once the handshake is seen: a version or a server
            # certificate means it got that far.
            "established": [bool(t.get("version") or t.get("fingerprint")) for t in tls],
        }
        self._build("tls", recs, orig, raw, ready, result)

    def _ssh(self, recs, orig, result) -> None:
        raw, ready = self._common(recs)
        ssh = _sub(recs, "ssh")
        raw |= {
            "client_banner": [_ssh_banner(s.get("client")) for s in ssh],
            "server_banner": [_ssh_banner(s.get("server")) for s in ssh],
        }
        self._build("ssh", recs, orig, raw, ready, result)

    def _anomaly(self, recs, orig, result) -> None:
        for a in _sub(recs, "anomaly"):
            result.unmapped[f"weird.suricata.{a.get('event', a.get('type', 'unknown'))}"] += 1

    # --- fast path: typed msgspec records (see _EveRecord) ----------------------------------

    def _convert_fast(self, records: list[_EveRecord], lines: list) -> AdapterResult:
        """Same grouping, mapping and order as _convert_dicts, on typed records."""
        result = AdapterResult(records=len(records))
        groups: defaultdict[str, list[int]] = defaultdict(list)
        for i, et in enumerate([r.event_type for r in records]):
            groups[et].append(i)
        for et, idx in groups.items():
            if et not in EVE_HANDLED:
                result.unmapped[f"suricata.{et}"] += len(idx)
                continue
            getattr(self, f"_fast_{et}")([records[i] for i in idx], [lines[i] for i in idx], result)
        return result

    def _fast_common(self, recs: list[_EveRecord],
                     times: list | None = None) -> tuple[dict, dict]:
        n = len(recs)
        observer = self.observer
        raw = {
            "observer_name": [r.host if type(r.host) is str else observer for r in recs],
            "ingress_zone": [self.zone] * n,
            "src_ip": [r.src_ip for r in recs],
            "dst_ip": [r.dest_ip for r in recs],
            "src_port": [r.icmp_type if r.src_port is UNSET else r.src_port for r in recs],
            "dst_port": [r.icmp_code if r.dest_port is UNSET else r.dest_port for r in recs],
            "transport": _transport([r.proto for r in recs]),
            "vlan": [(v[-1] if type(v := r.vlan) is list and v else None) for r in recs],
            "community_id": [r.community_id for r in recs],
        }
        ready = {"timestamp": iso_times([r.timestamp for r in recs] if times is None
                                        else times)}
        return raw, ready

    def _fast_alert(self, recs, orig, result) -> None:
        raw, ready = self._fast_common(recs)
        alert = [r.alert or _NO_ALERT for r in recs]
        raw |= {
            "detector": ["suricata"] * len(recs),
            "rule_id": [(None if (s := a.signature_id) is UNSET else str(s)) for a in alert],
            "rule_name": [a.signature for a in alert],
            "rule_category": [a.category for a in alert],
            "severity": [a.severity for a in alert],
            "action": [a.action for a in alert],
        }
        self._build("ids_alert", recs, orig, raw, ready, result)

    def _fast_flow(self, recs, orig, result) -> None:
        flow = [r.flow or _NO_FLOW for r in recs]
        tcp = [r.tcp or _NO_TCP for r in recs]
        # @timestamp of a flow = its first packet (our sensor's convention): flow.start.
        raw, ready = self._fast_common(recs, [r.timestamp if (s := f.start) is UNSET else s
                                              for f, r in zip(flow, recs, strict=True)])
        end, end_bad = iso_times([r.timestamp if (e := f.end) is UNSET else e
                                  for f, r in zip(flow, recs, strict=True)])
        ready["end"] = (end, end_bad | (end < ready["timestamp"][0]))
        raw |= {
            "src_packets": [f.pkts_toserver for f in flow],
            "dst_packets": [f.pkts_toclient for f in flow],
            "src_bytes": [f.bytes_toserver for f in flow],
            "dst_bytes": [f.bytes_toclient for f in flow],
            "src_tcp_flags": _hex_column([t.tcp_flags_ts for t in tcp]),
            "dst_tcp_flags": _hex_column([t.tcp_flags_tc for t in tcp]),
            "end_reason": [EVE_FLOW_REASON.get(f.reason, f.reason) for f in flow],
        }
        self._build("flow", recs, orig, raw, ready, result)

    def _fast_dns(self, recs, orig, result) -> None:
        raw, ready = self._fast_common(recs)
        dns = [r.dns or _NO_DNS for r in recs]
        is_answer = [d.type == "answer" for d in dns]
        answers = []
        qnames = []
        for d, ans in zip(dns, is_answer, strict=True):  # per record, as the dict path
            if not ans:
                answers.append([])
                qnames.append(_name(d.rrname))
            elif d.answers is not UNSET or d.grouped is not UNSET or d.version == 2:  # EVE v2
                answers.append(_eve_v2_answers_fast(d))
                qnames.append(_name(d.rrname))
            else:  # EVE v1: one record per answer RR
                answers.append([_rr(d.rrname, _get(d.rrtype), d.ttl, _get(d.rdata))]
                               if d.rdata is not UNSET or d.rrtype is not UNSET else [])
                qnames.append("")
        raw |= {
            "dns_id": [d.id for d in dns],
            "is_response": is_answer,
            "qname": qnames,
            "qtype": [(DNS_TYPES.get(_get(d.rrtype), 0) if a is False
                       or d.answers is not UNSET or d.grouped is not UNSET else 0)
                      for d, a in zip(dns, is_answer, strict=True)],
            "qclass": [1] * len(recs),
            "rcode": [DNS_RCODES.get(d.rcode, 0) if a else 0
                      for d, a in zip(dns, is_answer, strict=True)],
            "flags": _hex_column([d.flags for d in dns]),
            "answers": answers,
        }
        self._build("dns", recs, orig, raw, ready, result)

    def _fast_http(self, recs, orig, result) -> None:
        raw, ready = self._fast_common(recs)
        http = [r.http or _NO_HTTP for r in recs]
        raw |= {
            "method": [h.http_method for h in http],
            "host": [(v.lower() if type(v := h.hostname) is str else None) for h in http],
            "uri": [h.url for h in http],
            "version": [_http_version(h.protocol) for h in http],
            "user_agent": [h.http_user_agent for h in http],
            "referrer": [h.http_refer for h in http],
            "status": [h.status for h in http],
            "response_body_bytes": [-1 if (v := h.length) is UNSET else v for h in http],
            "response_mime_type": [h.http_content_type for h in http],
        }
        self._build("http", recs, orig, raw, ready, result)

    def _fast_tls(self, recs, orig, result) -> None:
        raw, ready = self._fast_common(recs)
        tls = [r.tls or _NO_TLS for r in recs]
        raw |= {
            "version": [_eve_tls_version(t.version) for t in tls],
            "server_name": [_name(t.sni) for t in tls],
            "ja3": [(v.hash if type(v := t.ja3) is _EveHash else None) for t in tls],
            "ja3s": [(v.hash if type(v := t.ja3s) is _EveHash else None) for t in tls],
            "ja4": [t.ja4 for t in tls],
            "cert_sha1": [_fingerprint(t.fingerprint) for t in tls],
            "cert_subject": [t.subject for t in tls],
            "cert_issuer": [t.issuerdn for t in tls],
            "established": [bool(t.version or t.fingerprint) for t in tls],
        }
        self._build("tls", recs, orig, raw, ready, result)

    def _fast_ssh(self, recs, orig, result) -> None:
        raw, ready = self._fast_common(recs)
        ssh = [r.ssh or _NO_SSH for r in recs]
        raw |= {
            "client_banner": [_ssh_banner_fast(s.client) for s in ssh],
            "server_banner": [_ssh_banner_fast(s.server) for s in ssh],
        }
        self._build("ssh", recs, orig, raw, ready, result)

    def _fast_anomaly(self, recs, orig, result) -> None:
        for r in recs:
            a = r.anomaly or _NO_ANOMALY
            name = (a.event if a.event is not UNSET
                    else ("unknown" if a.type is UNSET else a.type))
            result.unmapped[f"weird.suricata.{name}"] += 1


def _name(v) -> str | None:
    return v.rstrip(".").lower() if type(v) is str else v


_hex_memo: dict[str, int] = {}


def _hex_column(values: Sequence) -> list:
    """_hex of each value; TCP/DNS flag texts repeat, so most are one memo lookup in C."""
    try:
        out = list(map(_hex_memo.get, values))
    except TypeError:  # an unhashable value: per value
        out = [None] * len(values)
    if None in out:
        out = [o if o is not None else _hex_memo_one(v) for o, v in zip(out, values, strict=True)]
    return out


def _hex_memo_one(v):
    h = _hex(v)
    if type(v) is str and type(h) is int and len(_hex_memo) < 10_000:
        _hex_memo[v] = h
    return h


def _hex(v) -> int | None | str:
    if v is None:
        return None
    if type(v) is str:
        try:
            return int(v, 16)
        except ValueError:
            return v  # reported as "not an integer"
    return v


def _rr(name, rrtype, ttl, data) -> dict:
    return {"name": _name(name) or "", "type": rrtype if type(rrtype) is str else "",
            "class": "IN", "ttl": ttl if type(ttl) is int else 0,
            "data": data if type(data) is str else ("" if data is None else str(data))}


def _eve_v2_answers(d: dict) -> list[dict]:
    if type(d.get("answers")) is list:
        return [_rr(a.get("rrname"), a.get("rrtype"), a.get("ttl"), a.get("rdata"))
                for a in d["answers"] if type(a) is dict]
    grouped = d.get("grouped")
    if type(grouped) is dict:  # grouped-only output: no TTLs, owner name = question
        return [_rr(d.get("rrname"), t, 0, v) for t, vals in grouped.items()
                if type(vals) is list for v in vals]
    return []


def _http_version(v) -> str | None:
    if type(v) is str and v.upper().startswith("HTTP/"):
        return v[5:]
    return v


def _eve_tls_version(v) -> str | None:
    if type(v) is str:
        for prefix in ("TLS ", "TLSv", "SSLv", "SSL "):
            if v.startswith(prefix):
                return v[len(prefix):]
        if v == "UNDETERMINED":
            return ""
    return v


def _fingerprint(v) -> str | None:
    return v.replace(":", "").upper() if type(v) is str else v


def _ssh_banner(side) -> str | None:
    if type(side) is not dict:
        return None
    return f"SSH-{side.get('proto_version', '')}-{side.get('software_version', '')}"


# --- Suricata EVE fast path: typed decoding with msgspec -----------------------------------
#
# Why: orjson builds a dict of every field of every line (Suricata logs dozens we never
# read), then each field is fetched again in Python. msgspec decodes a line straight into
# a Struct that declares only the fields the adapter reads: unknown fields are skipped in
# C, nested objects become nested Structs. Measured ~6x orjson on real EVE lines.
#
# Exactness: a field declared `_Scalar` accepts any JSON scalar, holding the same Python
# value orjson gives, so the mapping below sees what the dict path sees. Anything else -
# an object or array where a scalar is expected, a scalar where an object is expected, an
# integer outside int64 (orjson turns those into floats), a missing or non-text
# event_type (AWS envelope, dead-lettered records), invalid UTF-8 or a number beyond the
# double range (msgspec does not check those in the fields it skips; orjson rejects the
# line), a non-object line, broken JSON - makes the chunk take the dict path unchanged.
# `UNSET` defaults mark fields whose absence differs from null for the mapping (`key in d`,
# `d.get(key, default)`); the others default to None like `d.get(key)`.

_I64 = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
_Scalar = str | _I64 | float | bool | None


class _EveAlert(msgspec.Struct):
    signature_id: _Scalar | UnsetType = UNSET
    signature: _Scalar = None
    category: _Scalar = None
    severity: _Scalar = None
    action: _Scalar = None


class _EveFlow(msgspec.Struct):
    pkts_toserver: _Scalar = None
    pkts_toclient: _Scalar = None
    bytes_toserver: _Scalar = None
    bytes_toclient: _Scalar = None
    start: _Scalar | UnsetType = UNSET
    end: _Scalar | UnsetType = UNSET
    reason: _Scalar = None


class _EveTcp(msgspec.Struct):
    tcp_flags_ts: _Scalar = None
    tcp_flags_tc: _Scalar = None


class _EveDnsAnswer(msgspec.Struct):
    rrname: _Scalar = None
    rrtype: _Scalar = None
    ttl: _Scalar = None
    rdata: _Scalar = None


class _EveDns(msgspec.Struct):
    type: _Scalar = None
    id: _Scalar = None
    rrname: _Scalar = None
    rrtype: _Scalar | UnsetType = UNSET
    ttl: _Scalar = None
    rdata: _Scalar | UnsetType = UNSET
    rcode: _Scalar = None
    flags: _Scalar = None
    version: _Scalar = None
    answers: list[_EveDnsAnswer] | _Scalar | UnsetType = UNSET
    # grouped SOA/SRV answers are objects of scalars (the mapping keeps their text)
    grouped: (dict[str, list[_Scalar | dict[str, _Scalar]] | _Scalar] | _Scalar
              | UnsetType) = UNSET


class _EveHttp(msgspec.Struct):
    http_method: _Scalar = None
    hostname: _Scalar = None
    url: _Scalar = None
    protocol: _Scalar = None
    http_user_agent: _Scalar = None
    http_refer: _Scalar = None
    status: _Scalar = None
    length: _Scalar | UnsetType = UNSET
    http_content_type: _Scalar = None


class _EveHash(msgspec.Struct):
    hash: _Scalar = None


class _EveTls(msgspec.Struct):
    version: _Scalar = None
    sni: _Scalar = None
    ja3: _EveHash | _Scalar = None
    ja3s: _EveHash | _Scalar = None
    ja4: _Scalar = None
    fingerprint: _Scalar = None
    subject: _Scalar = None
    issuerdn: _Scalar = None


class _EveSshSide(msgspec.Struct):
    proto_version: _Scalar | UnsetType = UNSET
    software_version: _Scalar | UnsetType = UNSET


class _EveSsh(msgspec.Struct):
    client: _EveSshSide | _Scalar = None
    server: _EveSshSide | _Scalar = None


class _EveAnomaly(msgspec.Struct):
    event: _Scalar | UnsetType = UNSET
    type: _Scalar | UnsetType = UNSET


class _EveRecord(msgspec.Struct):
    event_type: str | UnsetType = UNSET
    timestamp: _Scalar = None
    host: _Scalar = None
    src_ip: _Scalar = None
    dest_ip: _Scalar = None
    src_port: _Scalar | UnsetType = UNSET
    dest_port: _Scalar | UnsetType = UNSET
    icmp_type: _Scalar = None
    icmp_code: _Scalar = None
    proto: _Scalar = None
    vlan: list[_Scalar] | _Scalar = None
    community_id: _Scalar = None
    # nested objects: None when absent or null (the dict path reads those as {})
    alert: _EveAlert | None = None
    flow: _EveFlow | None = None
    tcp: _EveTcp | None = None
    dns: _EveDns | None = None
    http: _EveHttp | None = None
    tls: _EveTls | None = None
    ssh: _EveSsh | None = None
    anomaly: _EveAnomaly | None = None


# Stand-ins for an absent nested object: every field at its default, as `{}.get` reads.
_NO_ALERT, _NO_FLOW, _NO_TCP, _NO_DNS = _EveAlert(), _EveFlow(), _EveTcp(), _EveDns()
_NO_HTTP, _NO_TLS, _NO_SSH, _NO_ANOMALY = _EveHttp(), _EveTls(), _EveSsh(), _EveAnomaly()
_eve_decode = msgspec.json.Decoder(_EveRecord).decode
_eve_dns_decode = msgspec.json.Decoder(_EveDns).decode  # fusion.eve_scan: DNS answers
_FAST_REJECT = (msgspec.DecodeError, RecursionError, ValueError, TypeError)


def _eve_fast(lines: list) -> list[_EveRecord] | None:
    """Typed records of a chunk of non-blank lines, or None: the chunk then takes the
    dict path (a chunk goes one way or the other, so batch order and dead-letter records
    are exactly those of the dict path)."""
    try:
        # orjson rejects invalid UTF-8 anywhere in a line; msgspec only in the fields it
        # keeps. One C pass over the chunk checks it (and, for text lines, lone surrogates).
        if lines and type(lines[0]) is bytes:
            joined = b"".join(lines)
            if not joined.isascii():  # the common case skips building the text
                joined.decode()
        else:
            joined = "".join(lines).encode()
        if _may_overflow(joined):
            return None
        records = list(map(_eve_decode, lines))
    except _FAST_REJECT:
        return None
    if UNSET in {r.event_type for r in records}:  # no event_type: the dict path decides
        return None
    return records


# Digits and '.' -> '0', 'E' -> 'e', '+' dropped: number shapes become runs of '0'.
_NUMBER_SHAPES = bytes.maketrans(b"123456789.E", b"0000000000e")
_NUMBER_STARTS = frozenset(b":,[ \t\r\n-")  # what may precede a JSON number
_NUMBER_ENDS = frozenset(b",}] \t\r\n")  # what may follow one


def _may_overflow(chunk: bytes) -> bool:
    """True if the chunk may hold a number beyond the double range (1e400, 310 digits).
    orjson rejects such a line; msgspec accepts it when the number is in a skipped field.
    Overflow needs an exponent of 3+ digits after a number's mantissa, or 150+ digits:
    found with C-level translate/find (~1 us per EVE line; a regex was ~10x slower).
    False alarms (such a shape inside a string) only send the chunk to the dict path."""
    shapes = chunk.translate(_NUMBER_SHAPES, b"+")
    if b"0" * 150 in shapes:
        return True
    at = shapes.find(b"e000")
    while at != -1:
        start = at
        while start > 0 and shapes[start - 1] == 0x30:  # back over the mantissa ('0's)
            start -= 1
        end = at + 4
        while end < len(shapes) and shapes[end] == 0x30:  # the rest of the exponent
            end += 1
        if (start < at and (start == 0 or shapes[start - 1] in _NUMBER_STARTS)
                and (end == len(shapes) or shapes[end] in _NUMBER_ENDS)):
            return True
        at = shapes.find(b"e000", at + 1)
    return False


def _get(v):
    """UNSET (absent) -> None, as `d.get(key)` reads it."""
    return None if v is UNSET else v


def _eve_v2_answers_fast(d: _EveDns) -> list[dict]:
    if type(answers := d.answers) is list:
        return [_rr(a.rrname, a.rrtype, a.ttl, a.rdata) for a in answers]
    grouped = d.grouped
    if type(grouped) is dict:
        return [_rr(d.rrname, t, 0, v) for t, vals in grouped.items()
                if type(vals) is list for v in vals]
    return []


def _ssh_banner_fast(side) -> str | None:
    if type(side) is not _EveSshSide:
        return None
    pv = "" if side.proto_version is UNSET else side.proto_version
    sv = "" if side.software_version is UNSET else side.software_version
    return f"SSH-{pv}-{sv}"


# --- Zeek --------------------------------------------------------------------------------------

ZEEK_LOGS = ("conn", "dns", "http", "ssl", "ssh", "notice", "weird", "x509", "files")


class ZeekAdapter:
    """Zeek logs, JSON or TSV (fusion.sources reads TSV files: conn/dns/http chunks go
    through convert_tsv's scan, others are turned into records by columns_from_tsv).
    conn -> flow, dns -> dns, http -> http, ssl -> tls, ssh -> ssh, notice -> ids_alert;
    weird -> counted (`weird.zeek.<name>`); x509/files -> certificate SHA1 joined to ssl
    records by file id (fuid) when the files/x509 log comes first (directories are read in
    that order), then counted as unmapped."""

    source = "zeek"

    def __init__(self, bounds: Bounds | None = None, observer: str = "zeek",
                 zone: str = "default", max_fuids: int = 1_000_000) -> None:
        self.bounds = bounds or Bounds()
        self.observer = observer
        self.zone = zone
        self.cert_sha1: dict[str, str] = {}  # fuid -> SHA1 (files.log / x509 fingerprint)
        self.cert_names: dict[str, tuple[str, str]] = {}  # fuid -> (subject, issuer)
        self.max_fuids = max_fuids

    def convert(self, lines: Iterable[bytes | str], log: str) -> AdapterResult:
        lines = lines if type(lines) is list else list(lines)
        scanned = self._convert_scan(lines, log)
        if scanned is not None:
            return scanned
        return self._convert_decoded(lines, log)

    def _convert_decoded(self, lines: list, log: str | None) -> AdapterResult:
        """The general path: orjson dicts, every shape and every dead-letter reason."""
        result = AdapterResult()
        records, originals = parse_json_lines(lines, self.source, result)
        self.convert_records(records, originals, log, result)
        return result

    def _convert_scan(self, lines: list, log: str | None) -> AdapterResult | None:
        """The scan path (fusion.zeek_scan), as EveAdapter._convert_scan: None when a
        line is not plain valid JSON, or `_path` is neither absent on every line nor plain
        non-empty text on every line (the chunk is then decoded whole). Groups by `_path`
        in first-appearance order as convert_records does; conn/dns/http groups are built
        from the spans, any other group - or one with a value the scan path does not take
        (eve_scan.Fallback) - is decoded and mapped by _convert_decoded."""
        if not lines or len(lines) > SCAN_MAX_LINES or set(map(type, lines)) != {bytes}:
            return None
        keys = zeek_scan.ZEEK_KEYS
        buf, joined, kept, vs, ve, vt, iv, flags = _scan_chunk(lines, keys)
        if not kept:
            return AdapterResult()
        if flags.any():
            return None
        n = len(kept)
        pk = keys.index["_path"]
        path_t = vt[pk]
        if (path_t == json_scan.ABSENT).all():
            names, codes = [log or "<unknown>"], np.zeros(n, dtype=np.int64)
        elif (path_t == json_scan.STR).all() and (ve[pk] > vs[pk]).all():
            codes, reps = factorize_spans(buf, vs[pk], ve[pk], np.arange(n))
            names = [joined[a:b].decode() for a, b in zip(vs[pk][reps].tolist(),
                                                          ve[pk][reps].tolist(), strict=True)]
        else:
            return None
        spans = eve_scan.Spans(buf, joined, vs, ve, vt, iv, keys.index)
        return _convert_groups(self, spans, codes, names, kept, zeek_scan.COLUMNS,
                               lambda lines: self._convert_decoded(lines, log))

    def convert_records(self, records: list[dict], originals: Sequence, log: str | None,
                        result: AdapterResult) -> None:
        groups: defaultdict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            path = r.get("_path")
            groups[path if type(path) is str and path else log or "<unknown>"].append(i)
        for path, idx in groups.items():
            recs = [records[i] for i in idx]
            orig = [originals[i] for i in idx]
            handler = getattr(self, f"_{path}", None) if path in ZEEK_LOGS else None
            if handler is None:
                result.unmapped[f"zeek.{path}"] += len(recs)
            else:
                _guarded(handler, recs, orig, result, self.source, f"zeek.{path}")

    def convert_tsv(self, lines: list[bytes], fields: list[str], types: list[str] | None,
                    meta: dict[str, str], sep: str, log: str | None) -> AdapterResult | None:
        """Zeek TSV data lines (trailing CR/LF stripped, no headers or blank lines) by the
        scan path (fusion.tsv_scan -> fusion.zeek_scan column builders); None when the
        chunk needs the general path (fusion.sources' split + columns_from_tsv +
        convert_records): a log the scan path does not build, a header or a line it does
        not mirror exactly (tsv_scan module doc), or a value a builder declines."""
        path = log or "<unknown>"
        if not lines or path not in zeek_scan.COLUMNS or len(lines) > SCAN_MAX_LINES:
            return None
        plan = tsv_scan.field_plan(fields, types, zeek_scan.ZEEK_KEYS.index)
        sep_b, unset, empty = (tsv_scan.text_bytes(v) for v in
                               (sep, meta["unset_field"], meta["empty_field"]))
        if plan is None or sep_b is None or len(sep_b) != 1 or unset is None or empty is None:
            return None
        buf, starts, ends, joined = join_lines(lines)
        index = zeek_scan.ZEEK_KEYS.index
        vs, ve, vt, iv, bad = tsv_scan.scan_tsv(buf, starts, ends, int(sep_b[0]), unset,
                                                empty, plan[0], plan[1], len(index))
        if bad.any():
            return None
        n = len(lines)
        k = index["ts"]  # TSV ts is text, split exactly by epoch_times: only exact values
        _, ts_ok = json_scan.parse_decimal_us(buf, vs[k], ve[k], vt[k], iv[k],
                                              zeek_scan.TS_MAX_S)
        if not ts_ok.all():
            return None
        if (plan[1] == tsv_scan.VECTOR).any():
            joined = _tsv_vectors_json(joined, buf, vs, ve, vt, plan, types, meta)
            if joined is None:
                return None
            buf = np.frombuffer(joined, dtype=np.uint8)
        kind, build = zeek_scan.COLUMNS[path]
        spans = eve_scan.Spans(buf, joined, vs, ve, vt, iv, index)
        try:
            ready = build(spans.group(np.arange(n)), self.observer, self.zone)
        except eve_scan.Fallback:
            return None
        result = AdapterResult(records=n)
        _add(result, build_batch(kind, n, {}, lines, self.source, ready, self.bounds))
        return result

    # logs of TCP-only protocols often omit `proto`
    _DEFAULT_PROTO = {"http": "tcp", "ssl": "tcp", "ssh": "tcp"}

    def _common(self, recs: list[dict], log: str = "") -> tuple[dict, dict]:
        n = len(recs)
        default_proto = self._DEFAULT_PROTO.get(log)
        raw = {
            "observer_name": [self.observer] * n,
            "ingress_zone": [self.zone] * n,
            "src_ip": [r.get("id.orig_h") for r in recs],
            "dst_ip": [r.get("id.resp_h") for r in recs],
            "src_port": [r.get("id.orig_p") for r in recs],
            "dst_port": [r.get("id.resp_p") for r in recs],
            "transport": _transport([r.get("proto", default_proto) for r in recs]),
            "vlan": [r.get("vlan") for r in recs],
            "community_id": [r.get("community_id") for r in recs],
        }
        return raw, {"timestamp": epoch_times([r.get("ts") for r in recs])}

    def _build(self, kind, recs, orig, raw, ready, result) -> None:
        _add(result, build_batch(kind, len(recs), raw, orig, self.source, ready, self.bounds))

    def _conn(self, recs, orig, result) -> None:
        raw, ready = self._common(recs)
        ts = ready["timestamp"][0]
        dur, dur_bad = duration_ns([r.get("duration") for r in recs])
        ready["end"] = (ts + dur, dur_bad)
        flags = [_history_flags(r.get("history")) for r in recs]
        raw |= {
            "src_packets": [r.get("orig_pkts") for r in recs],
            "dst_packets": [r.get("resp_pkts") for r in recs],
            # Zeek: orig_bytes = payload bytes (from TCP sequence numbers), orig_ip_bytes =
            # IP-layer bytes. Ours: src_bytes = frame bytes, src_payload_bytes = L4 payload.
            # IP bytes are the closest to frame bytes (short by the link header per packet);
            # Elastic maps source.bytes to orig_ip_bytes as well.
            "src_bytes": [r.get("orig_ip_bytes") for r in recs],
            "dst_bytes": [r.get("resp_ip_bytes") for r in recs],
            "src_payload_bytes": [r.get("orig_bytes") for r in recs],
            "dst_payload_bytes": [r.get("resp_bytes") for r in recs],
            "src_tcp_flags": [f[0] for f in flags],
            "dst_tcp_flags": [f[1] for f in flags],
            "conn_state": [r.get("conn_state") for r in recs],
        }
        self._build("flow", recs, orig, raw, ready, result)

    def _dns(self, recs, orig, result) -> None:
        raw, ready = self._common(recs)
        raw |= {
            "dns_id": [r.get("trans_id") for r in recs],
            # one Zeek dns.log line = query + response; a response code means one was seen
            "is_response": [r.get("rcode") is not None for r in recs],
            "qname": [_name(r.get("query")) for r in recs],
            "qtype": [r.get("qtype") for r in recs],
            "qclass": [r.get("qclass") for r in recs],
            "rcode": [r.get("rcode") for r in recs],
            "flags": [_zeek_dns_flags(r) for r in recs],
            "answers": [_zeek_answers(r) for r in recs],
        }
        self._build("dns", recs, orig, raw, ready, result)

    def _http(self, recs, orig, result) -> None:
        raw, ready = self._common(recs, "http")
        raw |= {
            "method": [r.get("method") for r in recs],
            "host": [(r["host"].lower().rsplit(":", 1)[0] if type(r.get("host")) is str
                      and r["host"].count(":") == 1 else
                      (r["host"].lower() if type(r.get("host")) is str else None))
                     for r in recs],
            "uri": [r.get("uri") for r in recs],
            "version": [r.get("version") for r in recs],
            "user_agent": [r.get("user_agent") for r in recs],
            "referrer": [r.get("referrer") for r in recs],
            "status": [r.get("status_code") for r in recs],
            "request_body_bytes": [r.get("request_body_len", -1) for r in recs],
            "response_body_bytes": [r.get("response_body_len", -1) for r in recs],
            "response_mime_type": [_first(r.get("resp_mime_types")) for r in recs],
            "basic_auth_user": [r.get("username") for r in recs],
        }
        self._build("http", recs, orig, raw, ready, result)

    def _ssl(self, recs, orig, result) -> None:
        raw, ready = self._common(recs, "ssl")
        leaf = [_first(r.get("cert_chain_fuids")) for r in recs]
        names = [self.cert_names.get(f, ("", "")) if f else ("", "") for f in leaf]
        raw |= {
            "version": [TLS_VERSIONS.get(r.get("version"), r.get("version")) for r in recs],
            "server_name": [(r["server_name"].lower() if type(r.get("server_name")) is str
                             else None) for r in recs],
            "next_protocol": [r.get("next_protocol") for r in recs],
            "cipher": [r.get("cipher") for r in recs],
            "ja3": [r.get("ja3") for r in recs],
            "ja3s": [r.get("ja3s") for r in recs],
            "ja4": [r.get("ja4") for r in recs],
            "cert_sha1": [self.cert_sha1.get(f, "") if f else "" for f in leaf],
            "cert_subject": [r.get("subject") if r.get("subject") is not None else nm[0]
                             for r, nm in zip(recs, names, strict=True)],
            "cert_issuer": [r.get("issuer") if r.get("issuer") is not None else nm[1]
                            for r, nm in zip(recs, names, strict=True)],
            "established": [r.get("established") for r in recs],
        }
        self._build("tls", recs, orig, raw, ready, result)

    def _ssh(self, recs, orig, result) -> None:
        raw, ready = self._common(recs, "ssh")
        raw |= {
            "client_banner": [r.get("client") for r in recs],
            "server_banner": [r.get("server") for r in recs],
            "auth_attempts": [r.get("auth_attempts") for r in recs],
            "auth_success": [(-1 if r.get("auth_success") is None else
                              int(r["auth_success"] is True)) for r in recs],
        }
        self._build("ssh", recs, orig, raw, ready, result)

    def _notice(self, recs, orig, result) -> None:
        raw, ready = self._common(recs)
        # A notice names its endpoints in id.* (connection notices) or src/dst (scans);
        # a notice without a destination (password guessing, capture loss) gets the
        # unspecified address '::', which the ECS writer leaves out.
        raw["src_ip"] = [r.get("id.orig_h", r.get("src")) for r in recs]
        raw["dst_ip"] = [r.get("id.resp_h", r.get("dst", "::")) for r in recs]
        raw["src_port"] = [r.get("id.orig_p") for r in recs]
        raw["dst_port"] = [r.get("id.resp_p", r.get("p")) for r in recs]
        raw |= {
            "detector": ["zeek"] * len(recs),
            "rule_id": [r.get("note") for r in recs],
            "rule_name": [r.get("note") for r in recs],
            "severity": [ZEEK_NOTICE_SEVERITY] * len(recs),
            "message": [r.get("msg") for r in recs],
            "action": [",".join(a) if type(a := r.get("actions")) is list else a
                       for r in recs],
        }
        self._build("ids_alert", recs, orig, raw, ready, result)

    def _weird(self, recs, orig, result) -> None:
        for r in recs:
            result.unmapped[f"weird.zeek.{r.get('name', 'unknown')}"] += 1

    def _x509(self, recs, orig, result) -> None:
        for r in recs:
            fuid = r.get("id") or r.get("fuid")
            if type(fuid) is not str:
                continue
            fp = r.get("fingerprint")
            if type(fp) is str and len(fp) == 40:  # SHA1 when x509 fingerprints are SHA1
                self._remember(self.cert_sha1, fuid, fp.upper())
            self._remember(self.cert_names, fuid, (r.get("certificate.subject") or "",
                                                   r.get("certificate.issuer") or ""))
        result.unmapped["zeek.x509"] += len(recs)

    def _files(self, recs, orig, result) -> None:
        for r in recs:
            if type(r.get("sha1")) is str and "x509" in str(r.get("mime_type", "")):
                self._remember(self.cert_sha1, r.get("fuid") or r.get("id"), r["sha1"].upper())
        result.unmapped["zeek.files"] += len(recs)

    def _remember(self, table: dict, key, value) -> None:
        if type(key) is not str:
            return
        if len(table) >= self.max_fuids:  # bounded: forget the oldest (dicts keep order)
            del table[next(iter(table))]
        table[key] = value


def _first(v):
    if type(v) is list:
        return v[0] if v else None
    return v


# Zeek conn history letters -> TCP flags (upper case: originator, lower: responder).
_HISTORY_FLAGS = {"s": 0x02, "h": 0x12, "a": 0x10, "d": 0x18, "f": 0x11, "r": 0x04}
_history_cache: dict[str, tuple[int, int]] = {}


def _history_flags(history) -> tuple[int, int]:
    if type(history) is not str:
        return 0, 0
    hit = _history_cache.get(history)
    if hit is None:
        orig = resp = 0
        for ch in history:
            bit = _HISTORY_FLAGS.get(ch.lower(), 0)
            if ch.isupper():
                orig |= bit
            else:
                resp |= bit
        hit = (orig, resp)
        if len(_history_cache) < 100_000:
            _history_cache[history] = hit
    return hit


def _zeek_dns_flags(r: dict) -> int:
    flags = 0x8000 if r.get("rcode") is not None else 0
    for name, bit in (("AA", 0x0400), ("TC", 0x0200), ("RD", 0x0100), ("RA", 0x0080)):
        if r.get(name) is True:
            flags |= bit
    return flags


def _zeek_answers(r: dict) -> list[dict]:
    answers = r.get("answers")
    if type(answers) is not list:
        return []
    ttls = r.get("TTLs") if type(r.get("TTLs")) is list else []
    qtype = DNS_TYPE_NAMES.get(r.get("qtype"), "") if type(r.get("qtype")) is int else ""
    return _zeek_answers_of(answers, ttls, qtype, _name(r.get("query")) or "")


def _zeek_answers_of(answers: list, ttls: list, qtype: str, query: str) -> list[dict]:
    """The answer records of one dns.log line (also used by fusion.zeek_scan)."""
    return [{"name": query, "type": rtype, "class": "IN", "ttl": ttl, "data": data}
            for rtype, ttl, data in _zeek_answer_parts(answers, ttls, qtype)]


def _zeek_answer_parts(answers: list, ttls: list, qtype: str) -> list[tuple[str, int, str]]:
    """(type, ttl, data) of each answer: what does not depend on the query name (the scan
    path computes it once per distinct answers/TTLs/qtype)."""
    out = []
    for i, data in enumerate(answers):
        data = str(data)
        # Zeek logs answer data without RR types: an address literal is A/AAAA; a name
        # answering an A/AAAA query is a CNAME; otherwise the query type (PTR, MX ...).
        if data.count(".") == 3 and data.replace(".", "").isdecimal():
            rtype = "A"
        elif ":" in data and all(c in "0123456789abcdefABCDEF:." for c in data):
            rtype = "AAAA"
        else:
            rtype = "CNAME" if qtype in ("A", "AAAA") else qtype
        ttl = ttls[i] if i < len(ttls) else 0
        out.append((rtype, _ttl_seconds(ttl), data))
    return out


def _ttl_seconds(ttl) -> int:
    """A Zeek TTL (interval: number or TSV text; unset -> 0) as whole seconds. DNS TTLs are
    unsigned 32-bit: NaN, infinite, negative or larger values are a malformed record
    (ValueError: dead-lettered by the caller with this reason), not a crash of the stream."""
    if ttl is None:
        return 0
    seconds = float(ttl)
    if not 0 <= seconds < 2**32:
        raise ValueError(f"TTL {ttl!r} is not a DNS TTL (0 to 2^32-1 seconds)")
    return int(seconds)


def _tsv_vectors_json(joined: bytes, buf: np.ndarray, vs: np.ndarray, ve: np.ndarray,
                      vt: np.ndarray, plan: tuple[np.ndarray, np.ndarray], types: list[str],
                      meta: dict[str, str]) -> bytes | None:
    """The set/vector fields of a TSV scan as the JSON arrays the zeek_scan builders read:
    each distinct TSV text is converted once by the general path's converter
    (_tsv_converter), encoded as JSON and appended to the chunk's bytes; the spans of its
    rows are moved there (in place). None when JSON cannot carry the value exactly (a
    NaN/infinite float, an integer beyond 64 bits): the chunk takes the general path."""
    extra: list[bytes] = []
    size = len(joined)
    for f in np.flatnonzero(plan[1] == tsv_scan.VECTOR).tolist():
        k = int(plan[0][f])
        rows = np.flatnonzero(vt[k] == json_scan.ARR)
        if not len(rows):
            continue
        codes, reps = factorize_spans(buf, vs[k], ve[k], rows)
        convert = _tsv_converter(types[f], meta["set_separator"], meta["empty_field"])
        starts, ends = [], []
        for a, b in zip(vs[k][reps].tolist(), ve[k][reps].tolist(), strict=True):
            items = convert(joined[a:b].decode())
            if any(type(x) is float and not math.isfinite(x) for x in items):
                return None  # orjson writes NaN/inf as null
            try:
                blob = orjson.dumps(items)
            except orjson.JSONEncodeError:
                return None
            starts.append(size)
            size += len(blob)
            ends.append(size)
            extra.append(blob)
        vs[k, rows] = np.array(starts, dtype=np.int64)[codes]
        ve[k, rows] = np.array(ends, dtype=np.int64)[codes]
    return joined + b"".join(extra)


def columns_from_tsv(header_fields: list[str], rows: list[list[str]], set_sep: str,
                     empty: str, unset: str, types: list[str] | None) -> list[dict]:
    """Zeek TSV rows -> records shaped like Zeek JSON ('-' unset -> absent, '(empty)' ->
    empty, set/vector -> list, count/int/port/double/time/interval -> numbers, bool T/F)."""
    types = types or ["string"] * len(header_fields)
    conv = [_tsv_converter(t, set_sep, empty) for t in types]
    out = []
    for row in rows:
        rec = {}
        for name, value, fn in zip(header_fields, row, conv, strict=False):
            if value == unset:
                continue
            rec[name] = fn(value)
        out.append(rec)
    return out


def _tsv_converter(zeek_type: str, set_sep: str, empty: str):
    if zeek_type.startswith(("set[", "vector[")):
        inner = _tsv_converter(zeek_type[zeek_type.index("[") + 1:-1], set_sep, empty)
        return lambda v: [] if v == empty else [inner(x) for x in v.split(set_sep)]
    if zeek_type in ("count", "int", "port"):
        return _int_or_text
    if zeek_type in ("double", "interval"):
        return _float_or_text
    if zeek_type == "time":
        return lambda v: v  # kept as text: epoch_times splits it exactly
    if zeek_type == "bool":
        return lambda v: True if v == "T" else (False if v == "F" else v)
    return lambda v: "" if v == empty else v


def _int_or_text(v: str):
    """int(v) for '-'-prefixed decimal text, else the text (dead-lettered by the column
    builder). '--5' passes isdecimal() but not int(): text, not a crash of the stream."""
    if v.lstrip("-").isdecimal():
        try:
            return int(v)
        except ValueError:
            pass
    return v


def _float_or_text(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def _convert_groups(adapter, spans, codes: np.ndarray, names: list[str], kept: list,
                    columns: Mapping, decode: Callable[[list], AdapterResult],
                    skip: Callable[[str, int, AdapterResult], bool] | None = None
                    ) -> AdapterResult:
    """The scan path's result: rows grouped by type code (`names[code]`, first-appearance
    order), each group built from its spans by `columns[name]`, or through `decode` (the
    former path, given the group's original lines) when no builder exists or it declines
    the group (eve_scan.Fallback). `skip(name, count, result)` may count a group instead
    (True: not converted)."""
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    result = AdapterResult()
    for code, name in enumerate(names):
        rows = order[bounds[code]:bounds[code + 1]]
        if skip is not None and skip(name, len(rows), result):
            continue
        if name in columns:
            kind, build = columns[name]
            try:
                ready = build(spans.group(rows), adapter.observer, adapter.zone)
            except eve_scan.Fallback:
                pass
            else:
                originals = [kept[i] for i in rows.tolist()]
                _add(result, build_batch(kind, len(rows), {}, originals, adapter.source,
                                         ready, adapter.bounds))
                result.records += len(rows)
                continue
        result.merge(decode([kept[i] for i in rows.tolist()]))
    return result


def _scan_chunk(lines: list[bytes], keys: json_scan.KeyTable) -> tuple:
    """(buf, joined, kept lines, vs, ve, vt, iv, flags): `scan_lines` over the joined chunk,
    blank lines dropped (they are skipped, not records) from the lines and every span row."""
    buf, starts, ends, joined = join_lines(lines)
    vs, ve, vt, iv, flags = scan_lines(buf, starts, ends, keys.names, keys.offsets,
                                       keys.first, keys.next)
    kept = lines
    if (flags == json_scan.FLAG_BLANK).any():
        idx = np.flatnonzero(flags != json_scan.FLAG_BLANK)
        kept = [lines[i] for i in idx.tolist()]
        vs, ve, vt, iv, flags = vs[:, idx], ve[:, idx], vt[:, idx], iv[:, idx], flags[idx]
    return buf, joined, kept, vs, ve, vt, iv, flags
