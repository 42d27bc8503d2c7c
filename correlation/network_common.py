"""Shared pieces of the network detectors (sweep, UDP scan, DoS, backscatter, beaconing,
long connections, exfiltration): window x key grouping, per-group statistics, address masks.

Everything is columnar: a detector picks the rows of the closing windows, replicates them
into windows with `WindowRange.assign`, groups (window, key) with `combine_codes`, and
reduces with bincount / sorted reduceat. Python loops run over findings only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache, partial
from typing import Any

import numpy as np

from correlation.detector import (
    Columns,
    Detector,
    Evidence,
    Finding,
    Groups,
    Rule,
    WindowRange,
    combine_codes,
    distinct_per_group,
)
from correlation.evidence_rows import (
    HitRows,
    LazyEvidence,
    hit_evidence,
    object_codes,
    unique_texts,
)
from correlation.kernels import in_networks, lookup_u16
from sensors.packets import IP_DTYPE, ip_column_to_str, ip_to_bytes16

IANA_ICMP = 1
IANA_UDP = 17
IANA_ICMPV6 = 58
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128


def one_ip(column: np.ndarray, row: int) -> str:
    return ip_column_to_str(column[row:row + 1])[0]


def span(cols: Columns, r: np.ndarray) -> tuple[int, int]:
    """(first evidence time, last evidence activity) of rows r, ns."""
    first = int(cols["timestamp"][r].min())
    last = int(cols["timestamp"][r].max())
    if "end" in cols:
        last = max(last, int(cols["end"][r].max()))
    return first, last


def seen_by(cols: Columns, r: np.ndarray) -> dict:
    """Evidence keyword arguments naming the sensors and zones of rows r.

    The distinct objects first (object_codes: no Python step per row), then their names:
    a flood's alert can have millions of rows, nearly all of one sensor and zone."""
    rows = np.asarray(r)
    rows = np.flatnonzero(rows) if rows.dtype == bool else rows.reshape(-1)
    return {"observers": unique_texts(object_codes(cols["observer_name"], rows)[1]),
            "zones": unique_texts(object_codes(cols["ingress_zone"], rows)[1])}


def scaled_rule(rule: Rule, severity: int, label: str) -> Rule:
    """The rule with a per-finding severity (same id: identity and suppression unchanged)."""
    if severity == rule.severity:
        return rule
    return replace(rule, severity=severity, severity_label=label, risk_score=float(severity))


SEVERITY_LABELS = {21: "low", 47: "medium", 73: "high", 99: "critical"}


def echo_flows(c: Columns) -> np.ndarray:
    """ICMP/ICMPv6 echo flows in either direction (an echo-reply-first flow has orig port =
    reply type 0 / 129 and resp port = request type 8 / 128)."""
    v4 = (c["transport"] == IANA_ICMP) & (((c["src_port"] == ICMP_ECHO_REQUEST) & (
        c["dst_port"] == 0)) | ((c["src_port"] == 0) & (c["dst_port"] == ICMP_ECHO_REQUEST)))
    v6 = (c["transport"] == IANA_ICMPV6) & (
        ((c["src_port"] == ICMPV6_ECHO_REQUEST) & (c["dst_port"] == 129))
        | ((c["src_port"] == 129) & (c["dst_port"] == ICMPV6_ECHO_REQUEST)))
    return v4 | v6


def echo_request_flows(c: Columns) -> np.ndarray:
    """ICMP/ICMPv6 echo flows (Zeek port convention: orig port = type 8 / 128)."""
    return (((c["transport"] == IANA_ICMP) & (c["src_port"] == ICMP_ECHO_REQUEST))
            | ((c["transport"] == IANA_ICMPV6) & (c["src_port"] == ICMPV6_ECHO_REQUEST)))


def in_ports(column: np.ndarray, ports) -> np.ndarray:
    """np.isin(column, ports) for a uint16 port column: one compiled lookup per row in a
    64 K table instead of isin's sort / compare passes (the selects run on every pushed
    row). Inside `batch_memo` a repeated test of the same column and set is a copy."""
    if column.dtype != np.uint16:
        return np.isin(column, ports)
    wanted = tuple(np.asarray(ports, dtype=np.int64).reshape(-1).tolist())
    return batch_cached(("ports", wanted), column,
                     lambda: lookup_u16(column, _port_table(wanted)))


# Results of the batch being selected, while the engine selects it (batch_memo): several
# selects test the same column of a batch against the same set (GROUP_ADDRESSES on
# dst_ip; backscatter and reflection classify the same flows). Only inside batch_memo,
# because only there are the columns known not to change between two tests.
_BATCH_MEMO: dict[tuple, tuple[np.ndarray, Any]] | None = None


@contextmanager
def batch_memo() -> Iterator[None]:
    """While selecting one batch: Networks.contains, in_ports and batch_cached remember
    their result per (column, what) and hand out copies on a repeat; forgotten on exit."""
    global _BATCH_MEMO
    outer = _BATCH_MEMO
    _BATCH_MEMO = {} if outer is None else outer
    try:
        yield
    finally:
        _BATCH_MEMO = outer


def batch_cached(what: Hashable, column: np.ndarray, compute: Callable[[], Any]) -> Any:
    """compute() — an array or a tuple of arrays derived from the batch that `column`
    belongs to — or, inside batch_memo (the engine's select phase), a copy of the result
    remembered for the same column object and `what` (a copy: callers may change it in
    place). For selects of several detectors that derive the same thing from one batch
    (e.g. backscatter's classify(columns, amp_ports, ratio), keyed on the batch's
    timestamp column and the settings); outside batch_memo nothing is remembered."""
    memo = _BATCH_MEMO
    if memo is None:
        return compute()
    key = (what, id(column))
    hit = memo.get(key)
    if hit is None or hit[0] is not column:
        hit = (column, compute())
        memo[key] = hit  # the column reference keeps its id from being reused meanwhile
    result = hit[1]
    if isinstance(result, tuple):
        return tuple(r.copy() if isinstance(r, np.ndarray) else r for r in result)
    return result.copy() if isinstance(result, np.ndarray) else result


@lru_cache(maxsize=64)
def _port_table(wanted: tuple[int, ...]) -> np.ndarray:
    """64 K lookup table of a port set, built once per set (the same few sets every batch);
    read-only, so a caller cannot corrupt the cached copy."""
    table = np.zeros(65536, bool)
    ports = np.array(wanted, dtype=np.int64)
    table[ports[(ports >= 0) & (ports < 65536)]] = True  # others never match a uint16
    table.flags.writeable = False
    return table


# --- address classes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Networks:
    """A set of CIDR blocks, tested column-wise on 16-byte address columns."""

    hi: np.ndarray  # network address, upper 64 bits
    lo: np.ndarray
    mask_hi: np.ndarray
    mask_lo: np.ndarray

    @classmethod
    def of(cls, cidrs: Iterable[str]) -> Networks:
        rows = []
        for text in cidrs:
            net = ipaddress.ip_network(str(text), strict=False)
            if net.version == 4:  # IPv4-mapped IPv6, like the address columns
                net = ipaddress.ip_network(f"::ffff:{net.network_address}/{96 + net.prefixlen}")
            addr = int(net.network_address)
            mask = int(net.netmask)
            rows.append((addr >> 64, addr & (2**64 - 1), mask >> 64, mask & (2**64 - 1)))
        arr = np.array(rows, dtype=np.uint64).reshape(-1, 4)
        return cls(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])

    @cached_property
    def _native(self) -> np.ndarray:
        """(blocks, 4) uint64: network hi, lo, mask hi, mask lo as the *native* uint64 view
        of their 16 big-endian bytes. AND and equality are bitwise, so testing the native
        view of an address column against these needs no byte swap of the column."""
        def native(big: np.ndarray) -> np.ndarray:
            return big.astype(">u8").view(np.uint64)
        return np.ascontiguousarray(np.stack(
            [native(self.hi), native(self.lo), native(self.mask_hi), native(self.mask_lo)],
            axis=1).reshape(-1, 4))

    def contains(self, column: np.ndarray) -> np.ndarray:
        """Boolean mask: address in any of the blocks (one compiled pass over the rows;
        inside `batch_memo` a repeated test of the same column is a copy)."""
        return batch_cached(("networks", id(self)), column, partial(self._contains, column))

    def _contains(self, column: np.ndarray) -> np.ndarray:
        n = column.shape[0]
        halves = np.ascontiguousarray(column).view(np.uint64).reshape(n, 2)
        return in_networks(halves, self._native)


# Never a unicast victim / target: multicast and broadcast (IPv4 limited + any x.x.x.255 is
# not knowable without the prefix, so only the limited broadcast is listed).
GROUP_ADDRESSES = Networks.of(["224.0.0.0/4", "255.255.255.255/32", "ff00::/8"])


def ip_scalar(text: str) -> np.ndarray:
    return np.frombuffer(ip_to_bytes16(text), IP_DTYPE)


# --- window x key grouping -------------------------------------------------------------------


@dataclass
class WindowGroups:
    """Rows `idx` replicated into closing windows and grouped by (window, key)."""

    idx: np.ndarray  # buffered row index of each copy
    k: np.ndarray  # window index of each copy
    group: np.ndarray  # dense (window, key) id of each copy
    n_groups: int

    @classmethod
    def of(cls, windows: WindowRange, times: np.ndarray, idx: np.ndarray,
           key: np.ndarray) -> WindowGroups:
        """idx: buffered rows to use; key: their key codes (aligned with idx)."""
        copy_rows, k = windows.assign(times[idx])
        if copy_rows.size == 0:
            return cls(copy_rows, k, copy_rows, 0)
        group, n_groups = combine_codes(k, key[copy_rows])
        return cls(idx[copy_rows], k, group, n_groups)

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Per-group sum of a per-buffered-row value column."""
        return np.bincount(self.group, weights=values[self.idx].astype(np.float64),
                           minlength=self.n_groups)

    def count(self) -> np.ndarray:
        return np.bincount(self.group, minlength=self.n_groups)

    def distinct(self, codes: np.ndarray) -> np.ndarray:
        """Distinct non-negative codes (per buffered row) per group."""
        return distinct_per_group(self.group, self.n_groups, codes[self.idx])

    def findings(self, hits: np.ndarray, windows: WindowRange, rule_of: Callable[[int], Rule],
                 key_text: Callable[[int], str],
                 describe: Callable[[np.ndarray, int], Evidence]) -> list[Finding]:
        """One Finding per hit group; describe(rows, g) builds its evidence lazily."""
        if hits.size == 0:
            return []
        groups = Groups.of(self.group, self.n_groups)
        # identity of every hit at once; rows are gathered only for findings described
        first = groups.order[groups.bounds[hits]]  # first member copy of each hit group
        first_rows = self.idx[first].tolist()
        starts = windows.spec.start(self.k[first]).tolist()
        ends = windows.spec.end(self.k[first]).tolist()
        out = []
        for i, g in enumerate(hits.tolist()):
            out.append(Finding(rule=rule_of(g), key=key_text(first_rows[i]),
                               window_start=starts[i], window_end=ends[i],
                               describe=partial(_describe_group, describe, self.idx, groups,
                                                g)))
        return out


    def evidence_findings(self, hits: np.ndarray, windows: WindowRange, rule: Rule,
                          key_texts: Callable[[np.ndarray], list[str]],
                          evidence: Callable[[HitRows], Callable[[int], Evidence]]
                          ) -> list[Finding]:
        """One Finding per hit group, keyed by key_texts(first row of each hit);
        evidence(hit rows of some hits) -> describe(position among them) builds the
        evidence of all hits of a window at once, on the first describe of one of them
        (evidence_rows.LazyEvidence)."""
        if hits.size == 0:
            return []
        groups = Groups.of(self.group, self.n_groups)
        first = groups.order[groups.bounds[hits]]  # first member copy of each hit group
        keys = key_texts(self.idx[first])
        window_k = self.k[first]
        starts = windows.spec.start(window_k).tolist()
        ends = windows.spec.end(window_k).tolist()
        lazy = LazyEvidence(window_k, partial(hit_evidence, evidence, groups, hits, self.idx))
        return [Finding(rule=rule, key=keys[i], window_start=starts[i],
                        window_end=ends[i], describe=partial(lazy.describe, i))
                for i in range(hits.shape[0])]


def _describe_group(describe: Callable[[np.ndarray, int], Evidence], idx: np.ndarray,
                    groups: Groups, g: int) -> Evidence:
    return describe(idx[groups.rows(g)], g)


class DistinctTargetDetector(Detector):
    """Distinct `target` values per (window, key) >= threshold, on one event kind.

    The scan-like shape (sweeps, UDP scans, backscatter): subclasses give `kind`, `select`,
    `_key_and_target`, `_key_text` and `_describe`. A key that has fewer distinct targets
    over the whole closing range than the threshold cannot reach it in any one window and is
    dropped before rows are replicated into windows (floods of one-off keys stay cheap).
    """

    kind: str = "flow"
    threshold_key: str

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.threshold = int(config[self.threshold_key])
        self.max_sample = int(config.get("evidence_sample", 50))

    def _key_and_target(self, cols: Columns, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _key_text(self, cols: Columns, row: int) -> str:
        raise NotImplementedError

    def _key_texts(self, cols: Columns, rows: np.ndarray) -> list[str]:
        """_key_text of each of rows (the first row of each hit). A detector whose closes
        can have many findings formats them all at once (udp_scan)."""
        return [self._key_text(cols, row) for row in rows.tolist()]

    def _describe(self, cols: Columns, r: np.ndarray) -> Evidence:
        raise NotImplementedError

    def _evidence(self, cols: Columns, hit_rows: HitRows) -> Callable[[int], Evidence]:
        """describe(position) of the hits of hit_rows. This default describes each hit
        from its rows (_describe); detectors whose findings can have many rows override
        it with numpy over all hits at once."""
        rows, bounds = hit_rows.rows, hit_rows.bounds.tolist()
        return lambda i: self._describe(cols, rows[bounds[i]:bounds[i + 1]])

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows.get(self.kind)
        if cols is None:
            return []
        t = cols["timestamp"]
        idx = np.flatnonzero(windows.row_mask(t))
        if idx.size < max(self.threshold, 1):
            # no key has more distinct targets than rows: none can reach the threshold,
            # so a quiet short-hop close skips the address codes of _key_and_target
            return []
        key, target = self._key_and_target(cols, idx)
        reachable = distinct_per_group(key, int(key.max()) + 1, target)[key] >= self.threshold
        idx, key, target = idx[reachable], key[reachable], target[reachable]
        if idx.size == 0:
            return []
        full_target = np.zeros(t.shape[0], np.int64)
        full_target[idx] = target
        wg = WindowGroups.of(windows, t, idx, key)
        hits = np.flatnonzero(wg.distinct(full_target) >= self.threshold)
        return wg.evidence_findings(hits, windows, self.rules[0], partial(self._key_texts, cols),
                                    partial(self._evidence, cols))


def sample_ips(column: np.ndarray, limit: int) -> tuple[int, list[str]]:
    """(distinct count, numerically sorted sample) of an address column."""
    uniq = np.unique(column)
    n = uniq.shape[0]
    halves = np.ascontiguousarray(uniq).view(">u8").reshape(n, 2)
    ordered = uniq[np.lexsort((halves[:, 1], halves[:, 0]))]
    return int(n), ip_column_to_str(ordered[:limit])
