"""Brute-force detection: many short authentication sessions from one source to one service.

A password-guessing tool opens session after session to an authentication service, each
ending after a handful of failed tries. On flows that shows as many TCP sessions from one
source to one (destination, port) of a login service that completed the handshake,
exchanged a login-sized payload and ended quickly (Zeek's SSH::Password_Guessing counts 10
failed logins by one source; here the flow shape stands in for the outcome).

Evidence comes from `EvidenceSource`s, one per consumed event kind: each selects the rows
that are attempts, maps them to common columns and has its own threshold. Today only flows
feed it; a "login failed" event kind becomes one more source (count failed logins against
`min_failed_logins`) without touching the grouping code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np

from correlation.alert_kernels import middle_and_last
from correlation.arrival_memo import rows_in_range
from correlation.close_keys import as_range, pair_key_groups
from correlation.detector import (
    IANA_TCP,
    NS_PER_S,
    TCP_ACK,
    TCP_SYN,
    Columns,
    Detector,
    Evidence,
    Finding,
    Groups,
    InputSpec,
    Rule,
    WindowRange,
    combine_codes,
    distinct_per_group,
    factorize_ip,
    ip_pair_codes,
    one_window_groups,
    take,
)
from correlation.evidence_rows import (
    HitRows,
    LazyEvidence,
    ip_column_texts,
    object_codes,
    sorted_pair,
)
from correlation.network_common import in_ports
from correlation.prefilter import pair_candidates
from pipeline.schema import EventBatch

SESSIONS_RULE = Rule(
    id="cirtsa.brute_force.sessions",
    name="Brute force: many short authentication sessions",
    description="One source opened many short, login-sized TCP sessions to one authentication "
                "service (SSH, FTP, Telnet, RDP, SMB, mail, LDAP, databases) within the window.",
    category="Credential access",
    tactic_id="TA0006", tactic_name="Credential Access",
    technique_id="T1110", technique_name="Brute Force",
    severity=47, severity_label="medium", risk_score=47.0,
)

SERVICE_NAMES = {21: "ftp", 22: "ssh", 23: "telnet", 25: "smtp", 110: "pop3", 143: "imap",
                 389: "ldap", 445: "smb", 465: "smtps", 587: "submission", 636: "ldaps",
                 993: "imaps", 995: "pop3s", 1433: "mssql", 1521: "oracle", 3306: "mysql",
                 3389: "rdp", 5432: "postgresql", 5900: "vnc", 5985: "winrm", 5986: "winrm"}

# Common columns every evidence source maps its rows to (the keys of _FLOWS_TO_COMMON), and
# their dtype where it is fixed.
_COMMON_DTYPES = {"unit": np.int64, "client_bytes": np.int64, "server_bytes": np.int64}

_FLOW_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "src_port", "dst_port",
                 "src_payload_bytes", "dst_payload_bytes", "observer_name", "ingress_zone")

# A session is counted once per client port: the same session reported by two sensors
# (or split by the flow table) does not count twice.
_FLOWS_TO_COMMON = {
    "timestamp": "timestamp", "end": "end", "src_ip": "src_ip", "dst_ip": "dst_ip",
    "dst_port": "dst_port", "unit": "src_port", "observer_name": "observer_name",
    "ingress_zone": "ingress_zone", "client_bytes": "src_payload_bytes",
    "server_bytes": "dst_payload_bytes",
}


@dataclass(frozen=True)
class EvidenceSource:
    """One event kind feeding the detector: which rows count and how many are needed."""

    kind: str
    columns: tuple[str, ...]
    select: Callable[[EventBatch], np.ndarray]
    to_common: Mapping[str, str]  # common column -> this kind's column (_COMMON_DTYPES cast)
    threshold: int
    unit: str  # what is counted, as named in the evidence ("sessions", "failed_logins")


class _CommonRows:
    """The sources' candidate rows, concatenated, as common columns gathered on demand.

    Why: grouping needs five columns of every candidate row, the evidence the others of
    the hit rows only; gathering all ten for every candidate cost as much as grouping."""

    def __init__(self, parts: list[tuple[EvidenceSource, Columns, np.ndarray]]) -> None:
        self.parts = parts  # (source, its columns, its candidate rows)
        self.offsets = np.cumsum([0] + [idx.shape[0] for _, _, idx in parts])
        self._rows_at: tuple = (None, None)  # (at, idx[at]) of one source: columns share it

    def column(self, name: str, at: np.ndarray | None = None, cast: bool = True
               ) -> np.ndarray:
        """Common column `name` of every row, or of rows `at` (positions in the
        concatenation); cast=False leaves it in the source's dtype."""
        dtype = _COMMON_DTYPES.get(name) if cast else None

        def of(p: int, rows: np.ndarray) -> np.ndarray:
            source, cols, idx = self.parts[p]
            if rows is None:
                positions = idx
            elif len(self.parts) == 1 and self._rows_at[0] is rows:
                positions = self._rows_at[1]
            else:
                positions = idx[rows]
                if len(self.parts) == 1:
                    self._rows_at = (rows, positions)
            values = take(cols, source.to_common[name], positions)
            return values if dtype is None else values.astype(dtype)

        if len(self.parts) == 1:
            return of(0, at)
        if at is None:
            return np.concatenate([of(p, None) for p in range(len(self.parts))])
        part = np.searchsorted(self.offsets[1:], at, side="right")
        pieces = [of(p, at[part == p] - self.offsets[p]) for p in range(len(self.parts))]
        out = np.empty(at.shape[0], np.result_type(*pieces))
        for p, piece in enumerate(pieces):
            out[part == p] = piece
        return out

    def names(self, hit_rows: HitRows, name: str) -> list[list[str]]:
        """hit_rows.names of object column `name` (hit_rows.rows: positions here), read at
        the hit rows only: a whole object column of the engine's costs a gathered object
        per buffered row (issue #4: 0.155 s per 5M-row column)."""
        return hit_rows.names_of(*object_codes(self.column(name, hit_rows.rows)))

    def source(self) -> np.ndarray:
        """Source number (in self.parts' sources) of every row."""
        if len(self.parts) == 1:
            return np.zeros(int(self.offsets[-1]), np.int64)
        return np.repeat(np.arange(len(self.parts), dtype=np.int64), np.diff(self.offsets))


class BruteForceDetector(Detector):
    """Distinct short sessions per (source, destination, port) and window >= min_sessions."""

    name = "brute_force"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (SESSIONS_RULE,)
    inputs = (InputSpec("flow", _FLOW_COLUMNS),)  # extended per instance by `sources`
    threshold_keys = ("ports", "min_sessions", "max_session_s", "max_client_payload_bytes",
                      "max_server_payload_bytes")

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.ports = np.asarray(sorted({int(p) for p in config["ports"]}), dtype=np.uint16)
        self.max_session_ns = int(float(config["max_session_s"]) * NS_PER_S)
        self.max_client = int(config["max_client_payload_bytes"])
        self.max_server = int(config["max_server_payload_bytes"])
        self.sources = (
            EvidenceSource("flow", _FLOW_COLUMNS, self._select_flows, _FLOWS_TO_COMMON,
                           int(config["min_sessions"]), "sessions"),
        )
        self.inputs = tuple(InputSpec(s.kind, s.columns) for s in self.sources)

    def select(self, batch: EventBatch) -> np.ndarray:
        for source in self.sources:
            if source.kind == batch.kind:
                return source.select(batch)
        return np.zeros(len(batch), bool)

    def _select_flows(self, batch: EventBatch) -> np.ndarray:
        """Short TCP sessions to a login port that completed the handshake and talked a bit."""
        c = batch.columns
        handshake = (((c["src_tcp_flags"] & TCP_SYN) != 0)
                     & ((c["dst_tcp_flags"] & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)))
        talked = (c["src_payload_bytes"] > 0) & (c["dst_payload_bytes"] > 0)
        small = ((c["src_payload_bytes"] <= self.max_client)
                 & (c["dst_payload_bytes"] <= self.max_server))
        short = (c["end"] - c["timestamp"]) <= self.max_session_ns
        return ((c["transport"] == IANA_TCP) & handshake & talked & small & short
                & in_ports(c["dst_port"], self.ports))

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        one_close = self._hop_close(rows, windows)
        if one_close is not None:
            c, rows_w, groups = one_close
            hits = np.arange(groups.bounds.shape[0] - 1, dtype=np.int64)
            source_of = c.source()
            k = None
        else:
            grouped = self._grouped(rows, windows)
            if grouped is None:
                return []
            c, rows_w, group, n_groups, hits, source_of, k = grouped
            groups = Groups.counted(group, n_groups)  # evidence: per-hit sets, sums, extremes
        if hits.size == 0:
            return []
        # Identity of every hit at once; the evidence of all of them on the first describe.
        first = groups.order[groups.bounds[hits]]  # first member copy of each hit group
        first_rows = rows_w[first]
        # address texts of every hit at once (~0.1 µs each, not an f-string per address);
        # the evidence reuses them: a group's rows share its key's addresses
        src_texts = ip_column_texts(c.column("src_ip", first_rows))
        dst_texts = ip_column_texts(c.column("dst_ip", first_rows))
        ports = c.column("dst_port", first_rows).tolist()
        window_k = (np.full(hits.shape[0], windows.first, np.int64) if k is None
                    else k[first])
        starts = windows.spec.start(window_k).tolist()
        ends = windows.spec.end(window_k).tolist()
        # evidence of a window's hits at once, on the first describe of one of them
        evidence = LazyEvidence(window_k, partial(_evidence, self, c, groups, hits, rows_w,
                                                  source_of, (src_texts, dst_texts, ports)))
        describe = evidence.describe
        return [Finding(rule=SESSIONS_RULE, key=f"{src}|{dst}|tcp/{port}",
                        window_start=start, window_end=end, describe=partial(describe, i))
                for i, (src, dst, port, start, end) in enumerate(zip(
                    src_texts, dst_texts, ports, starts, ends, strict=True))]

    def _hop_close(self, rows: Mapping[str, Columns], windows: WindowRange
                   ) -> tuple[_CommonRows, np.ndarray, Groups] | None:
        """(common rows, kept rows, their Groups) of a hop close (one closing
        window) from one compiled pass over the engine's address codes (close_keys); None
        when that does not apply (several windows or sources, no address codes) or gives
        up: _grouped then. Same kept rows and group numbering as _grouped.

        Why: the numpy form made a dozen passes over the ~5M rows of a full 300 s window
        (issue #4, the 60 s hop close of the 50k events/s stream)."""
        if windows.first != windows.last or len(self.sources) != 1:
            return None
        source = self.sources[0]
        cols = rows.get(source.kind)
        shared = getattr(cols, "address_codes", None)
        if (cols is None or shared is None or source.to_common["src_ip"] != "src_ip"
                or source.to_common["dst_ip"] != "dst_ip"):
            return None
        idx = rows_in_range(cols["timestamp"], windows)
        at = as_range(idx)
        src, dst = shared(("src_ip",), at), shared(("dst_ip",), at)
        if src is None or dst is None:
            return None
        found = pair_key_groups(src, dst, take(cols, source.to_common["dst_port"], at),
                                take(cols, source.to_common["unit"], at), source.threshold)
        if found is None:
            return None
        keep, groups = found
        return _CommonRows([(source, cols, idx)]), keep, groups

    def _grouped(self, rows: Mapping[str, Columns], windows: WindowRange) -> tuple | None:
        """(common rows, rows of the window copies, their group, group count, hit groups,
        source of each common row, window of each copy or None: the one closing window);
        None: nothing to find. (Hits empty: none found.)"""
        parts = []
        for source in self.sources:
            cols = rows.get(source.kind)
            if cols is None:
                continue
            idx = rows_in_range(cols["timestamp"], windows)
            # a (client, server, port) key with >= threshold distinct units has that many
            # rows, and so have its client and its server: the other rows cannot reach
            # (the reachable filter below keeps the same rows; ranks of a subset keep order)
            if "src_ip" in cols and "dst_ip" in cols:
                idx = pair_candidates(cols, idx, source.threshold)
            if idx.size:
                parts.append((source, cols, idx))
        if not parts:
            return None
        c = _CommonRows(parts)
        only, only_cols, only_idx = parts[0]
        if len(parts) == 1 and only.to_common["src_ip"] == "src_ip" \
                and only.to_common["dst_ip"] == "dst_ip":
            # the engine's address codes of the pair: no sort of the gathered addresses
            pair, _ = ip_pair_codes(only_cols, only_idx)
        else:
            pair, _ = combine_codes(factorize_ip(c.column("src_ip"))[0],
                                    factorize_ip(c.column("dst_ip"))[0])
        key, n_keys = combine_codes(pair, c.column("dst_port").astype(np.int64))
        unit = c.column("unit")
        source_of = c.source()
        # Necessary condition over the whole range, before replicating rows into windows.
        if len(parts) == 1:  # (the loop below without its row masks: passes over millions)
            reachable = distinct_per_group(key, n_keys, unit)[key] >= parts[0][0].threshold
        else:
            reachable = np.zeros(unit.shape[0], bool)
            for i, (source, _, _) in enumerate(parts):
                mine = source_of == i
                counts = distinct_per_group(key[mine], n_keys, unit[mine])
                reachable |= mine & (counts[key] >= source.threshold)
        keep = np.flatnonzero(reachable)
        if keep.size == 0:
            return None
        one = one_window_groups(windows, key[keep])
        if one is not None:
            # one closing window holds every row of the range: each kept row's key reached
            # a source's threshold over the range, i.e. in the window: every group is a hit
            _, _, group, n_groups = one
            k = None
            rows_w = keep
            hits = np.arange(n_groups, dtype=np.int64)
        else:
            copy_rows, k = windows.assign(c.column("timestamp", keep))
            rows_w = keep[copy_rows]
            group, n_groups = combine_codes(k, key[rows_w])
            hit = np.zeros(n_groups, bool)
            for i, (source, _, _) in enumerate(parts):
                mine = source_of[rows_w] == i
                counts = distinct_per_group(group[mine], n_groups, unit[rows_w][mine])
                hit |= counts >= source.threshold
            hits = np.flatnonzero(hit)
        return c, rows_w, group, n_groups, hits, source_of, k


def _evidence(detector: BruteForceDetector, c: _CommonRows, groups: Groups,
              hits: np.ndarray, rows_w: np.ndarray, source_of: np.ndarray,
              identity: tuple[list[str], list[str], list[int]],
              members: np.ndarray) -> Callable[[int], Evidence]:
    """Aggregates of hits[members] from their rows (numpy over all of them); returns
    describe(position among those hits). identity: (source text, destination text,
    port) of every hit (of every finding: members index them)."""
    hit_rows = HitRows(groups, hits[members], rows_w)
    at = hit_rows.rows
    ts, ends = c.column("timestamp", at), c.column("end", at)
    first_seen, last_seen = hit_rows.time_span(ts, ends)
    flows = np.diff(hit_rows.bounds).tolist()
    units = c.column("unit", at)
    units -= units.min()  # distinct() takes non-negative codes
    sources = source_of[at] if len(c.parts) > 1 else None  # (one source: every row's)
    # distinct units per hit of each of the detector's sources (none: no rows of it here)
    unit_counts: list[list[int] | None] = [None] * len(detector.sources)
    for i, (source, _, _) in enumerate(c.parts):
        mine = None if len(c.parts) == 1 else sources == i
        unit_counts[detector.sources.index(source)] = hit_rows.distinct(units, 0, mine)[0]
    # sums in int64 without an int64 copy of the payload columns
    client_bytes = hit_rows.sum(c.column("client_bytes", at, cast=False)).tolist()
    server_bytes = hit_rows.sum(c.column("server_bytes", at, cast=False)).tolist()
    longest, median = _session_lengths(hit_rows, ends - ts)
    observers = c.names(hit_rows, "observer_name")
    zones = c.names(hit_rows, "ingress_zone")
    src_texts, dst_texts, ports = ([values[m] for m in members.tolist()]
                                   for values in identity)

    def describe(i: int) -> Evidence:
        src, dst = src_texts[i], dst_texts[i]
        port = ports[i]
        service = SERVICE_NAMES.get(port, f"tcp/{port}")
        details: dict = {"service": service, "flows": flows[i]}
        for source, counts in zip(detector.sources, unit_counts, strict=True):
            details[source.unit] = 0 if counts is None else counts[i]
        details.update({
            "client_payload_bytes": client_bytes[i],
            "server_payload_bytes": server_bytes[i],
            "max_session_s": round(longest[i], 3),
            "median_session_s": round(median[i], 3),
        })
        counted = details.get("sessions", details["flows"])
        first, last = first_seen[i], last_seen[i]
        return Evidence(
            first_seen=first, last_seen=last,
            source_ip=src, destination_ip=dst, destination_port=port, transport="tcp",
            related_ips=sorted_pair(src, dst),
            observers=observers[i], zones=zones[i],
            details=details,
            message=f"{src} opened {counted} short {service} sessions to {dst}:{port} "
                    f"in {(last - first) / NS_PER_S:.1f} s",
        )
    return describe


def _session_lengths(hit_rows: HitRows, lengths_ns: np.ndarray
                     ) -> tuple[list[float], list[float]]:
    """Per hit: (longest, median) session length in s, as np.median of the sorted
    (end - timestamp) / NS_PER_S values (the mean of the middle two of an even count)."""
    lower, upper, longest = middle_and_last(
        hit_rows.bounds, np.ascontiguousarray(lengths_ns, np.int64))
    picked = np.concatenate([lower, upper, longest])
    if picked.size and max(-int(picked.min()), int(picked.max())) >= 2**53:
        # int -> float would round before the division: Python's exact int division
        seconds = np.array([v / NS_PER_S for v in picked.tolist()], np.float64)
    else:  # (below 2**53 both divisions give the correctly rounded quotient)
        seconds = picked / NS_PER_S
    n = hit_rows.n
    lower_s, upper_s = seconds[:n], seconds[n:2 * n]
    odd = np.diff(hit_rows.bounds) % 2 == 1
    median = np.where(odd, upper_s, (lower_s + upper_s) / 2)
    return seconds[2 * n:].tolist(), median.tolist()
