"""Port scan detection: vertical (many ports on one host) and horizontal (many hosts on one port).

Both count *failed* TCP connection attempts per scanning source, as Zeek's scan detectors
do (bro-simple-scan counts connections whose history is only SYNs, optionally answered by a
RST), so that a browser opening many successful connections is never a scan.

An attempt is classified from the per-direction TCP flags, payload and packet counts rather
than from the conn_state label, because uint8 masks are far cheaper than comparing object
strings and because the label alone cannot tell a stealth probe from backscatter (both OTH):

  unanswered / refused   originator sent SYN and no ACK, responder never sent SYN
                         (Zeek conn_state S0, REJ, RSTOS0, SH)
  half-open              handshake completed, no payload either way, torn down by RST
                         (RSTO / RSTR without payload: SYN scans of open ports)
  stealth                originator sent neither SYN, ACK nor RST and no payload
                         (OTH without payload: FIN, NULL and XMAS probes)

Backscatter (SYN-ACKs or RSTs a spoofed-source DoS victim sends us) never qualifies: its
originator either sent ACK/RST, or, if the sensor flips such a flow like Zeek does, sent
no SYN of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from functools import partial

import numpy as np

from correlation.alert_kernels import sources_reaching
from correlation.arrival_memo import rows_in_range
from correlation.close_keys import as_range, pair_key_groups
from correlation.detector import (
    IANA_TCP,
    NS_PER_S,
    TCP_ACK,
    TCP_RST,
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
    ip_codes,
    ip_pair_codes,
    one_window_groups,
    take,
)
from correlation.evidence_rows import (
    HitRows,
    LazyEvidence,
    ip_column_texts,
    ip_numeric_codes,
    ip_texts,
    sorted_pair,
)
from correlation.kernels import min_max
from correlation.prefilter import pair_candidates
from pipeline.schema import EventBatch

_TACTIC = ("TA0007", "Discovery")
_TECHNIQUE = ("T1046", "Network Service Discovery")

VERTICAL_RULE = Rule(
    id="cirtsa.scan.vertical",
    name="Vertical port scan",
    description="One source made failed TCP connection attempts to many distinct ports of "
                "one destination host within the window.",
    category="Network scan",
    tactic_id=_TACTIC[0], tactic_name=_TACTIC[1],
    technique_id=_TECHNIQUE[0], technique_name=_TECHNIQUE[1],
    severity=21, severity_label="low", risk_score=21.0,
)

HORIZONTAL_RULE = Rule(
    id="cirtsa.scan.horizontal",
    name="Horizontal port scan",
    description="One source made failed TCP connection attempts to one port on many distinct "
                "destination hosts within the window.",
    category="Network scan",
    tactic_id=_TACTIC[0], tactic_name=_TACTIC[1],
    technique_id=_TECHNIQUE[0], technique_name=_TECHNIQUE[1],
    severity=21, severity_label="low", risk_score=21.0,
)

# Most distinct hosts per source the horizontal prefilter remembers (its threshold - 1).
_MAX_SEEN = 64

_SCAN_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "dst_port", "src_tcp_flags",
                 "dst_tcp_flags", "observer_name", "ingress_zone")


def failed_attempt_mask(columns: Columns) -> np.ndarray:
    """Flow rows that are failed TCP connection attempts by their originator (see module doc)."""
    sf = columns["src_tcp_flags"]
    df = columns["dst_tcp_flags"]
    orig_syn = (sf & TCP_SYN) != 0
    orig_ack = (sf & TCP_ACK) != 0
    resp_syn = (df & TCP_SYN) != 0
    no_payload = (columns["src_payload_bytes"] == 0) & (columns["dst_payload_bytes"] == 0)
    unanswered = orig_syn & ~orig_ack & ~resp_syn
    half_open = orig_syn & resp_syn & no_payload & (((sf | df) & TCP_RST) != 0)
    stealth = ((sf & (TCP_SYN | TCP_ACK | TCP_RST)) == 0) & ~resp_syn & no_payload
    return ((columns["transport"] == IANA_TCP) & (columns["src_packets"] > 0)
            & (unanswered | half_open | stealth))


class _ScanDetector(Detector):
    """Distinct `target` values per (source, fixed) key and window >= threshold."""

    inputs = (InputSpec("flow", _SCAN_COLUMNS),)
    threshold_key: str
    max_sample: int

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.threshold = int(config[self.threshold_key])
        self.max_sample = int(config.get("evidence_sample", 50))

    def select(self, batch: EventBatch) -> np.ndarray:
        return failed_attempt_mask(batch.columns)

    def select_key(self, kind: str) -> Hashable:
        # failed_attempt_mask reads no settings: every scan detector selects the same rows
        return ("failed_attempt", kind)

    def _key_and_target(self, cols: Columns, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(key codes, target codes) of rows idx: key includes the source."""
        raise NotImplementedError

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows["flow"]
        t = cols["timestamp"]
        idx = rows_in_range(t, windows)
        if idx.size == 0:
            return []
        one_close = self._hop_close(cols, idx, windows)
        if one_close is not None:
            # one closing window: its kept rows and their groups in one compiled pass
            keep, groups = one_close
            n_groups = groups.bounds.shape[0] - 1
            if n_groups == 0:
                return []
            row_of = idx[keep]
            hits = np.arange(n_groups, dtype=np.int64)
            first = groups.order[groups.bounds[:-1]]  # first row of each (hit) group
            first_rows = row_of[first]
            window_k = np.full(n_groups, windows.first, np.int64)
        else:
            grouped = self._grouped(cols, idx, windows)
            if grouped is None:
                return []
            groups, hits, row_of, first_rows, window_k = grouped
        starts = windows.spec.start(window_k).tolist()
        ends = windows.spec.end(window_k).tolist()
        keys, identity = self._key_texts(cols, first_rows)
        # evidence of a window's hits at once, on the first describe of one of them
        evidence = LazyEvidence(window_k, partial(self._hit_evidence, cols, groups, hits,
                                                  row_of, identity))
        describe = evidence.describe
        rule = self.rules[0]
        return [Finding(rule=rule, key=key, window_start=start, window_end=end,
                        describe=partial(describe, i))
                for i, (key, start, end) in enumerate(zip(keys, starts, ends, strict=True))]

    def _hop_close(self, cols: Columns, idx: np.ndarray, windows: WindowRange
                   ) -> tuple[np.ndarray, Groups] | None:
        """(kept rows of idx, their Groups) of a one-window close in one compiled pass
        (close_keys), numbered as _grouped numbers them; None: _grouped."""
        return None

    def _grouped(self, cols: Columns, idx: np.ndarray, windows: WindowRange) -> tuple | None:
        """(groups, hit groups, buffer row of each copy, first row of each hit, window of
        each hit) of rows idx in range; None: no hit."""
        # a key with >= threshold distinct targets has >= threshold rows, and so has each of
        # its parts: only rows whose parts do get ranked (the reachable filter below keeps
        # exactly the rows it kept on all of idx; ranks of a subset keep their order)
        idx = self._candidates(cols, idx)
        if idx.size == 0:
            return None
        key, target = self._key_and_target(cols, idx)
        n_keys = int(key.max()) + 1
        # A key needs >= threshold distinct targets over the whole range to reach it in any
        # one window: drop the rest before replicating rows into windows (spoofed SYN floods).
        reachable = distinct_per_group(key, n_keys, target)[key] >= self.threshold
        idx, key, target = idx[reachable], key[reachable], target[reachable]
        if idx.size == 0:
            return None
        one = one_window_groups(windows, key)
        if one is not None:
            # one closing window holds every row of the range: the keys reaching the
            # threshold over the range (all kept) are its hit groups
            copy_rows, k, group, n_groups = one  # (the copy rows of one window: 0..n-1)
            hits = np.arange(n_groups, dtype=np.int64)
        else:
            copy_rows, k = windows.assign(cols["timestamp"][idx])
            group, n_groups = combine_codes(k, key[copy_rows])
            distinct = distinct_per_group(group, n_groups, target[copy_rows])
            hits = np.flatnonzero(distinct >= self.threshold)
        if hits.size == 0:
            return None
        groups = Groups.counted(group, n_groups)  # evidence: per-hit sets, sums, extremes
        # Identity of every hit at once; its rows are gathered only if the engine keeps it
        # (most findings of overlapping windows are suppressed repeats).
        first = groups.order[groups.bounds[hits]]  # first member copy of each hit group
        first_rows = idx[copy_rows[first]]
        row_of = idx if one is not None else idx[copy_rows]  # (one window: copy i = row i)
        window_k = k[first]
        return groups, hits, row_of, first_rows, window_k

    def _candidates(self, cols: Columns, idx: np.ndarray) -> np.ndarray:
        """A superset of the rows of keys with >= threshold rows (two bincounts)."""
        raise NotImplementedError

    def _key_texts(self, cols: Columns, rows: np.ndarray
                   ) -> tuple[list[str], tuple[list[str], list]]:
        """(key text, and its two parts: source address text, and address text or port)
        of each of rows, formatted all at once.

        Why: an f-string per address cost ~1 µs, thousands per close (issue #4); the
        evidence reuses the parts (a hit's rows share its key's)."""
        raise NotImplementedError

    def _hit_evidence(self, cols: Columns, groups: Groups, hits: np.ndarray,
                      row_of: np.ndarray, identity: tuple[list, list],
                      members: np.ndarray) -> Callable[[int], Evidence]:
        at = members.tolist()
        return self._evidence(cols, HitRows(groups, hits[members], row_of),
                              tuple([part[m] for m in at] for part in identity))

    def _evidence(self, cols: Columns, hit_rows: HitRows, identity: tuple[list, list]
                  ) -> Callable[[int], Evidence]:
        """Aggregates of the hits from their rows (numpy over all of them); returns
        describe(position among the hits). identity: _key_texts' parts of each hit."""
        raise NotImplementedError


def _attempt_outcomes(hit_rows: HitRows, dst_flags: np.ndarray) -> list[dict[str, int]]:
    """Per hit: attempts and how the responder answered them."""
    answered = (dst_flags & TCP_SYN) != 0
    attempts = np.diff(hit_rows.bounds)
    half_open = hit_rows.count(answered)
    refused = hit_rows.count(~answered & ((dst_flags & TCP_RST) != 0))
    return [{"attempts": a, "unanswered": a - h - r, "refused": r, "half_open": h}
            for a, h, r in zip(attempts.tolist(), half_open.tolist(), refused.tolist(),
                               strict=True)]


class VerticalScanDetector(_ScanDetector):
    """Failed attempts to >= vertical_ports distinct ports of one host (key: source, host)."""

    name = "port_scan_vertical"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (VERTICAL_RULE,)
    threshold_key = "vertical_ports"
    threshold_keys = ("vertical_ports",)

    def _candidates(self, cols: Columns, idx: np.ndarray) -> np.ndarray:
        return pair_candidates(cols, idx, self.threshold)

    def _hop_close(self, cols: Columns, idx: np.ndarray, windows: WindowRange
                   ) -> tuple[np.ndarray, Groups] | None:
        # Why: the numpy form made a dozen passes over the ~5M rows of a full 300 s window
        # (issue #4, the 60 s hop close of the 50k events/s stream).
        shared = getattr(cols, "address_codes", None)
        if windows.first != windows.last or shared is None:
            return None
        at = as_range(idx)
        src, dst = shared(("src_ip",), at), shared(("dst_ip",), at)
        if src is None or dst is None:
            return None
        return pair_key_groups(src, dst, None, take(cols, "dst_port", at), self.threshold)

    def _key_and_target(self, cols: Columns, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key, _ = ip_pair_codes(cols, idx)  # = combine_codes of both ip_codes, in one pass
        return key, cols["dst_port"][idx].astype(np.int64)

    def _key_texts(self, cols: Columns, rows: np.ndarray
                   ) -> tuple[list[str], tuple[list[str], list]]:
        scanners = ip_column_texts(take(cols, "src_ip", rows))
        victims = ip_column_texts(take(cols, "dst_ip", rows))
        return [f"{s}|{v}" for s, v in zip(scanners, victims, strict=True)], (scanners,
                                                                               victims)

    def _evidence(self, cols: Columns, hit_rows: HitRows, identity: tuple[list, list]
                  ) -> Callable[[int], Evidence]:
        first_seen, last_seen = hit_rows.time_span(hit_rows.gather(cols, "timestamp"),
                                                   hit_rows.gather(cols, "end"))
        dst_port = hit_rows.gather(cols, "dst_port")
        dst_flags = hit_rows.gather(cols, "dst_tcp_flags")
        outcomes = _attempt_outcomes(hit_rows, dst_flags)
        n_ports, ports = hit_rows.distinct(dst_port, self.max_sample)
        _, open_ports = hit_rows.distinct(dst_port, self.max_sample,
                                          (dst_flags & TCP_SYN) != 0)
        observers = hit_rows.names_in(cols, "observer_name")
        zones = hit_rows.names_in(cols, "ingress_zone")
        scanners, victims = identity

        def describe(i: int) -> Evidence:
            scanner, victim = scanners[i], victims[i]
            return Evidence(
                first_seen=first_seen[i], last_seen=last_seen[i],
                source_ip=scanner, destination_ip=victim, transport="tcp",
                related_ips=sorted_pair(scanner, victim),
                observers=observers[i], zones=zones[i],
                details={
                    **outcomes[i],
                    "distinct_ports": n_ports[i],
                    "ports": ports[i],
                    "open_ports": open_ports[i],
                },
                message=f"{scanner} scanned {n_ports[i]} ports on {victim} "
                        f"in {(last_seen[i] - first_seen[i]) / NS_PER_S:.1f} s",
            )
        return describe


class HorizontalScanDetector(_ScanDetector):
    """Failed attempts to one port on >= horizontal_hosts distinct hosts (key: source, port)."""

    name = "port_scan_horizontal"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (HORIZONTAL_RULE,)
    threshold_key = "horizontal_hosts"
    threshold_keys = ("horizontal_hosts",)

    def _candidates(self, cols: Columns, idx: np.ndarray) -> np.ndarray:
        idx = self._reaching_sources(cols, idx)
        port = cols["dst_port"][idx]
        idx = idx[np.bincount(port)[port] >= self.threshold]
        return pair_candidates(cols, idx, self.threshold, second=None)

    def _reaching_sources(self, cols: Columns, idx: np.ndarray) -> np.ndarray:
        """The rows of idx whose source tried >= threshold distinct hosts (a key's source
        needs as many), from one compiled pass over the engine's address codes; idx when
        the columns carry none, or their codes span too far for a table per source.

        Why: the vertical scans of issue #4's hop close fill the window with ~5M failed
        attempts of sources that each try one host: the port and source bincounts keep
        them all, and coding their (source, port) keys cost 0.35 s for no finding."""
        shared = getattr(cols, "address_codes", None)
        if shared is None or idx.size == 0 or not 1 <= self.threshold <= _MAX_SEEN:
            return idx
        at = as_range(idx)
        src, dst = shared(("src_ip",), at), shared(("dst_ip",), at)
        if src is None or dst is None:
            return idx
        low, high = min_max(src)
        if (low < 0 or int(dst.min()) < 0
                or (int(high) + 1) * (self.threshold - 1) > 8 * idx.size + 65536):
            return idx  # (a table of threshold - 1 hosts per source code: <= 8 per row)
        reaching = sources_reaching(np.ascontiguousarray(src, np.int64),
                                    np.ascontiguousarray(dst, np.int64),
                                    self.threshold, int(high) + 1)
        return idx[reaching]

    def _key_and_target(self, cols: Columns, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        src = ip_codes(cols, "src_ip", idx)
        dst = ip_codes(cols, "dst_ip", idx)
        key, _ = combine_codes(src, cols["dst_port"][idx].astype(np.int64))
        return key, dst

    def _key_texts(self, cols: Columns, rows: np.ndarray
                   ) -> tuple[list[str], tuple[list[str], list]]:
        scanners = ip_column_texts(take(cols, "src_ip", rows))
        ports = take(cols, "dst_port", rows).tolist()
        return [f"{s}|tcp/{p}" for s, p in zip(scanners, ports, strict=True)], (scanners,
                                                                                ports)

    def _evidence(self, cols: Columns, hit_rows: HitRows, identity: tuple[list, list]
                  ) -> Callable[[int], Evidence]:
        first_seen, last_seen = hit_rows.time_span(hit_rows.gather(cols, "timestamp"),
                                                   hit_rows.gather(cols, "end"))
        host, hosts = ip_numeric_codes(hit_rows.gather(cols, "dst_ip"))
        dst_flags = hit_rows.gather(cols, "dst_tcp_flags")
        outcomes = _attempt_outcomes(hit_rows, dst_flags)
        n_hosts, sample = hit_rows.distinct(host, self.max_sample)
        _, open_hosts = hit_rows.distinct(host, self.max_sample, (dst_flags & TCP_SYN) != 0)
        observers = hit_rows.names_in(cols, "observer_name")
        zones = hit_rows.names_in(cols, "ingress_zone")
        scanners, ports = identity
        host_bytes = hosts.tolist()

        def texts(codes: list[int]) -> list[str]:
            return ip_texts(host_bytes[c] for c in codes)

        def describe(i: int) -> Evidence:
            scanner = scanners[i]
            port = ports[i]
            hosts_i = texts(sample[i])
            return Evidence(
                first_seen=first_seen[i], last_seen=last_seen[i],
                source_ip=scanner, destination_port=port, transport="tcp",
                related_ips=[scanner] + [h for h in hosts_i if h != scanner],
                observers=observers[i], zones=zones[i],
                details={
                    **outcomes[i],
                    "distinct_hosts": n_hosts[i],
                    "hosts": hosts_i,
                    "open_hosts": texts(open_hosts[i]),
                },
                message=f"{scanner} scanned {n_hosts[i]} hosts on port {port}/tcp "
                        f"in {(last_seen[i] - first_seen[i]) / NS_PER_S:.1f} s",
            )
        return describe
