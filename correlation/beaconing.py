"""Beaconing (RITA-class): a host contacting the same peer or name at regular intervals.

Malware implants call home on a timer (sleep + jitter), with requests of nearly the same
size. Per (window, source, destination) from flows, and per (window, source, name) from DNS
queries, TLS SNI and HTTP Host, the detector scores how regular the contacts are, in the
spirit of RITA's beacon analysis (activecm/rita: Bowley skew and MADM of inter-connection
intervals and of data sizes, a connection-count score, and a histogram score), with its own
choices, all computed for every group at once over sorted numpy arrays. Flow contacts are
established connections only (`established_tcp`, UDP with a reply): refused or probed ports
are a scan's, and a fast scan's burst would otherwise look perfectly regular.

* timestamps are taken at one-second resolution and de-duplicated per group, so a burst
  of parallel connections (a browser opening six) counts as one contact;
* **ts_skew** = 1 - |Bowley skew| of the intervals ((Q1 + Q3 - 2 Q2) / (Q3 - Q1); 0 when
  Q3 = Q1 or the median equals a quartile, as RITA does): symmetric jitter keeps it near 1;
* **ts_madm** = 1 - MADM / median interval (median absolute deviation about the median,
  relative, so one score serves a 2 s and a 1 h beacon; RITA uses a fixed 30 s): uniform
  jitter of +-j of the interval scores about 1 - j/2, a Poisson process (browsing) ~0.3;
* **hist** = 1 - coefficient of variation of the contact counts in `histogram_bins` equal
  bins over the group's own active span: a steady caller fills the bins evenly, bursts do
  not; a gap (beacon paused) costs one or two bins, not the whole score;
* **count** = min(1, contacts / `ideal_connections`);
* for flows (and HTTP request bodies) the data-size scores **ds_skew** and **ds_madm**
  (Bowley skew and relative MADM of the bytes the source sent per connection).

Score = mean of ts_score (mean of ts_skew, ts_madm, count), hist, and ds_score (mean of
ds_skew, ds_madm) when sizes exist. The histogram is a third of the score because bursts
(a page load: many contacts one second apart, then silence) look perfectly regular to the
interval statistics; only the spread over time tells them from a timer. Groups with fewer
than `min_connections` contacts are not scored. Severity low, medium at `medium_score` and above.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from correlation.detector import (
    IANA_TCP,
    NS_PER_S,
    TCP_SYN,
    Columns,
    Detector,
    Evidence,
    Finding,
    InputSpec,
    Rule,
    WindowRange,
    combine_codes,
    ip_codes,
    ip_pair_codes,
)
from correlation.network_common import (
    GROUP_ADDRESSES,
    IANA_UDP,
    SEVERITY_LABELS,
    WindowGroups,
    one_ip,
    scaled_rule,
    seen_by,
    span,
)
from correlation.prefilter import pack_codes, raw_address_codes, reaching
from pipeline.jit import njit
from pipeline.schema import EventBatch
from pipeline.text_codes import TextIds

_C2 = ("TA0011", "Command and Control")


def _rule(rid: str, name: str, what: str, tech: tuple[str, str]) -> Rule:
    return Rule(id=rid, name=name, category="Command and control",
                description=f"One source contacted {what} at regular intervals with regular "
                            "sizes within the window (RITA-style beacon score).",
                tactic_id=_C2[0], tactic_name=_C2[1], technique_id=tech[0],
                technique_name=tech[1], severity=21, severity_label="low", risk_score=21.0)


APP = ("T1071", "Application Layer Protocol")
ENCRYPTED = ("T1573", "Encrypted Channel")
FLOW_RULE = _rule("cirtsa.beacon.flow", "Beaconing connections", "one destination", APP)
FLOW_TLS_RULE = _rule("cirtsa.beacon.flow_encrypted", "Beaconing encrypted connections",
                      "one destination on a TLS port", ENCRYPTED)
DNS_RULE = _rule("cirtsa.beacon.dns", "Beaconing DNS name", "one DNS name",
                 ("T1071.004", "Application Layer Protocol: DNS"))
HTTP_RULE = _rule("cirtsa.beacon.http", "Beaconing HTTP host", "one HTTP host",
                  ("T1071.001", "Application Layer Protocol: Web Protocols"))
TLS_RULE = _rule("cirtsa.beacon.tls", "Beaconing TLS server name", "one TLS server name",
                 ENCRYPTED)

TLS_PORTS = np.array([443, 465, 563, 636, 853, 989, 990, 992, 993, 994, 995, 5061, 8443],
                     np.uint16)

_BASE = ("timestamp", "src_ip", "observer_name", "ingress_zone")
_FLOW_COLUMNS = _BASE + ("end", "dst_ip", "dst_port", "transport", "src_bytes")
_DNS_COLUMNS = _BASE + ("qname",)
_TLS_COLUMNS = _BASE + ("server_name", "dst_ip")
_HTTP_COLUMNS = _BASE + ("host", "dst_ip", "request_body_bytes")

# distinct names whose ids are kept (then the memo starts over; bounded like dns_tunnel's)
_NAME_MEMO_MAX = 200_000

# kind -> (name column or None for flows, size column or None)
_SOURCES = {"flow": (None, "src_bytes"), "dns": ("qname", None),
            "tls": ("server_name", None), "http": ("host", "request_body_bytes")}


# --- vectorized robust statistics over groups ------------------------------------------------


@njit
def _sorted_quantile(v: np.ndarray, q: float) -> float:
    """Linear-interpolated quantile of an ascending non-empty array (numpy's default)."""
    pos = q * (v.shape[0] - 1)
    lo = int(np.floor(pos))
    hi = int(np.ceil(pos))
    frac = pos - lo
    return v[lo] * (1 - frac) + v[hi] * frac


@njit
def _bowley_madm_kernel(group: np.ndarray, values: np.ndarray, n_groups: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: (Bowley skew, MADM, median); 0, 0, 0 for an empty group.

    Rows are bucketed by group (counting sort), then each group's slice is sorted on its
    own: small sorts instead of two whole-array lexsorts per statistic. Indices stay inside
    the arrays: group ids are in [0, n_groups) (checked), slices come from the counts.
    """
    n = group.shape[0]
    counts = np.zeros(n_groups + 1, np.int64)
    for i in range(n):
        g = group[i]
        if g < 0 or g >= n_groups:
            raise ValueError("group id out of range")
        counts[g + 1] += 1
    starts = np.cumsum(counts)  # group g is starts[g]:starts[g + 1]
    fill = starts[:-1].copy()
    v = np.empty(n, np.float64)
    for i in range(n):
        g = group[i]
        v[fill[g]] = values[i]
        fill[g] += 1
    skew = np.zeros(n_groups)
    madm = np.zeros(n_groups)
    median = np.zeros(n_groups)
    dev = np.empty(n, np.float64)
    for g in range(n_groups):
        a, b = starts[g], starts[g + 1]
        if b == a:
            continue
        seg = np.sort(v[a:b])
        q1 = _sorted_quantile(seg, 0.25)
        q2 = _sorted_quantile(seg, 0.5)
        q3 = _sorted_quantile(seg, 0.75)
        den = q3 - q1
        if den > 0 and q2 != q1 and q2 != q3:
            skew[g] = (q1 + q3 - 2 * q2) / den
        d = dev[a:b]
        for j in range(b - a):
            d[j] = abs(seg[j] - q2)
        madm[g] = _sorted_quantile(np.sort(d), 0.5)
        median[g] = q2
    return skew, madm, median


def bowley_madm(group: np.ndarray, values: np.ndarray, n_groups: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: (Bowley skew, MADM, median) of values (0, 0, 0 for an empty group).

    Bowley skew = (Q1 + Q3 - 2 Q2) / (Q3 - Q1), 0 when Q3 = Q1 or the median equals a
    quartile; MADM = median of |value - Q2|; quartiles linearly interpolated (numpy's
    default method)."""
    return _bowley_madm_kernel(np.asarray(group, np.int64), np.asarray(values, np.float64),
                               int(n_groups))


def beacon_scores(group: np.ndarray, n_groups: int, times_ns: np.ndarray,
                  sizes: np.ndarray | None, bins: int, ideal: int) -> dict[str, np.ndarray]:
    """Per-group beacon score components (see module doc); `contacts` = distinct seconds."""
    g, s = _distinct_group_seconds(group, times_ns // NS_PER_S)  # one contact per second
    contacts = np.bincount(g, minlength=n_groups)
    same = g[1:] == g[:-1]
    iv_group = g[1:][same]
    intervals = (s[1:] - s[:-1])[same].astype(np.float64)
    skew, madm, median = bowley_madm(iv_group, intervals, n_groups)
    out = {"contacts": contacts, "median_interval_s": median,
           "ts_skew": 1 - np.abs(skew),
           "ts_madm": np.clip(1 - madm / np.maximum(median, 1.0), 0, 1),
           "count": np.minimum(1.0, contacts / float(ideal))}
    # histogram of contacts over each group's own active span
    # (g, s) ascending: a group's first and last contact bound its span
    lo = np.full(n_groups, np.iinfo(np.int64).max)
    hi = np.full(n_groups, np.iinfo(np.int64).min)
    present = contacts > 0
    ends = np.cumsum(contacts)
    lo[present] = s[(ends - contacts)[present]]
    hi[present] = s[ends[present] - 1]
    width = np.maximum((hi - lo + 1) / bins, 1e-9)
    b = np.minimum(((s - lo[g]) / width[g]).astype(np.int64), bins - 1)
    hist = np.bincount(g * bins + b, minlength=n_groups * bins).reshape(n_groups, bins)
    mean = hist.mean(axis=1)
    cv = np.divide(hist.std(axis=1), mean, out=np.full(n_groups, np.inf), where=mean > 0)
    out["hist"] = np.clip(1 - cv, 0, 1)
    out["ts_score"] = (out["ts_skew"] + out["ts_madm"] + out["count"]) / 3
    parts = [out["ts_score"], out["hist"]]
    if sizes is not None:
        ds_skew, ds_madm, ds_median = bowley_madm(group, sizes.astype(np.float64), n_groups)
        out["ds_skew"] = 1 - np.abs(ds_skew)
        out["ds_madm"] = np.clip(1 - ds_madm / np.maximum(ds_median, 1.0), 0, 1)
        out["ds_score"] = (out["ds_skew"] + out["ds_madm"]) / 2
        out["median_bytes"] = ds_median
        parts.append(out["ds_score"])
    out["score"] = np.mean(parts, axis=0)
    return out


def _distinct_group_seconds(group: np.ndarray, sec: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (group, second) pairs, ascending by group then second.

    Packed as group * span + (second - first second) into one int64 and sorted (np.sort is
    several times faster than a two-key lexsort); lexsort when the product would overflow.
    """
    if group.size == 0:
        return group.astype(np.int64), sec.astype(np.int64)
    s0 = int(sec.min())
    span = int(sec.max()) - s0 + 1
    if (int(group.max()) + 1) * span < 2**62:
        packed = np.sort(group.astype(np.int64) * span + (sec - s0))
        keep = np.empty(packed.size, bool)
        keep[0] = True
        np.not_equal(packed[1:], packed[:-1], out=keep[1:])
        packed = packed[keep]
        return packed // span, packed % span + s0
    order = np.lexsort((sec, group))
    g, s = group[order], sec[order]
    first = np.ones(g.size, bool)
    first[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    return g[first], s[first]


def established_tcp(c: Columns) -> np.ndarray:
    """TCP flows that were really connections, not probes.

    A reply packet is not enough: a port refusing with RST|ACK (Zeek REJ, RSTOS0, RSTRH) or
    a stealth probe answered by RST would count, and a fast vertical scan of one host then
    looks like a perfectly regular series of contacts. Established = the responder sent a
    SYN-ACK, or (a flow picked up mid-connection, Zeek OTH) the responder sent payload;
    and something beyond a handshake torn down by RST happened (a SYN scan of an open port:
    port_scan.failed_attempt_mask's half-open case) - some payload either way.
    """
    df = c["dst_tcp_flags"]
    payload = (c["src_payload_bytes"] > 0) | (c["dst_payload_bytes"] > 0)
    return ((c["transport"] == IANA_TCP) & (c["dst_packets"] > 0) & payload
            & (((df & TCP_SYN) != 0) | (c["dst_payload_bytes"] > 0)))


class BeaconDetector(Detector):
    """Regular contacts per (source, destination) and per (source, name): score >= min_score."""

    name = "beaconing"
    rules = (FLOW_RULE, FLOW_TLS_RULE, DNS_RULE, HTTP_RULE, TLS_RULE)
    inputs = (InputSpec("flow", _FLOW_COLUMNS), InputSpec("dns", _DNS_COLUMNS),
              InputSpec("tls", _TLS_COLUMNS), InputSpec("http", _HTTP_COLUMNS))
    threshold_keys = ("min_connections", "min_score", "medium_score", "histogram_bins",
                      "ideal_connections")

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.min_connections = int(config["min_connections"])
        self.min_score = float(config["min_score"])
        self.medium_score = float(config["medium_score"])
        self.bins = int(config["histogram_bins"])
        self.ideal = int(config["ideal_connections"])
        # name -> id memo: every row is replayed in each of its hop copies' closes, so a
        # name's text is hashed and compared once, not once per close
        self._name_ids = TextIds(_NAME_MEMO_MAX)
        kinds = config.get("kinds", list(_SOURCES))
        self.inputs = tuple(s for s in BeaconDetector.inputs if s.kind in kinds)

    def select(self, batch: EventBatch) -> np.ndarray:
        c = batch.columns
        if batch.kind == "flow":
            # a beacon gets its answer: established TCP, UDP with a reply (scans are elsewhere)
            return ((established_tcp(c) | ((c["transport"] == IANA_UDP) & (c["dst_packets"] > 0)))
                    & ~GROUP_ADDRESSES.contains(c["dst_ip"]))
        if batch.kind == "dns":
            return ~c["is_response"] & (c["qname"] != "")
        name_col = _SOURCES[batch.kind][0]
        return c[name_col] != ""

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        findings: list[Finding] = []
        for kind, cols in rows.items():
            findings += self._detect_kind(kind, cols, windows)
        return findings

    def _detect_kind(self, kind: str, cols: Columns, windows: WindowRange) -> list[Finding]:
        t = cols["timestamp"]
        idx = np.flatnonzero(windows.row_mask(t))
        if idx.size < self.min_connections:
            return []
        name_col, size_col = _SOURCES[kind]
        if name_col is not None:  # (source, name) keys are nearly all one-offs
            idx = self._reaching_names(cols, idx, name_col)
            if idx.size == 0:
                return []
        if name_col is None:
            key, n_keys = ip_pair_codes(cols, idx)
        else:
            src = ip_codes(cols, "src_ip", idx)
            key, n_keys = combine_codes(src, self._name_ids.sorted_codes(cols[name_col][idx])[0])
        # necessary: enough rows over the whole range
        keep = np.bincount(key, minlength=n_keys)[key] >= self.min_connections
        idx, key = idx[keep], key[keep]
        if idx.size == 0:
            return []
        wg = WindowGroups.of(windows, t, idx, key)
        sizes = None
        if size_col is not None:
            sizes = np.maximum(cols[size_col][wg.idx].astype(np.float64), 0)
        scores = beacon_scores(wg.group, wg.n_groups, t[wg.idx], sizes, self.bins, self.ideal)
        hits = np.flatnonzero((scores["contacts"] >= self.min_connections)
                              & (scores["score"] >= self.min_score))

        def rule_of(g: int) -> Rule:
            base = self._rule(kind, cols, wg, g)
            if scores["score"][g] >= self.medium_score:
                return scaled_rule(base, 47, SEVERITY_LABELS[47])
            return base

        def key_text(row: int) -> str:
            other_text = (one_ip(cols["dst_ip"], row) if name_col is None
                          else str(cols[name_col][row]))
            return f"{one_ip(cols['src_ip'], row)}|{other_text}"

        return wg.findings(hits, windows, rule_of, key_text,
                           lambda r, g: self._describe(kind, cols, r, scores, g))

    def _reaching_names(self, cols: Columns, idx: np.ndarray, name_col: str) -> np.ndarray:
        """Rows idx whose (source, name) has >= min_connections rows: the rows the ranked
        keep below retains, found by a hash pass over unordered codes (text ids from the
        memo), so only those few rows get sorted-name codes. (Flow pairs are ranked
        directly: the engine's pair codes need no text, and sorting them measured faster
        than hashing mostly distinct pairs first.)"""
        src = raw_address_codes(cols, ("src_ip",), idx)
        raw = None if src is None else pack_codes(src, self._name_ids.ids(cols[name_col][idx])[0])
        return idx if raw is None else idx[reaching(raw, self.min_connections)]

    def _rule(self, kind: str, cols: Columns, wg: WindowGroups, g: int) -> Rule:
        if kind == "flow":
            row = int(wg.idx[np.argmax(wg.group == g)])
            return FLOW_TLS_RULE if cols["dst_port"][row] in TLS_PORTS else FLOW_RULE
        return {"dns": DNS_RULE, "http": HTTP_RULE, "tls": TLS_RULE}[kind]

    def _describe(self, kind: str, cols: Columns, r: np.ndarray, scores: dict, g: int
                  ) -> Evidence:
        first, last = span(cols, r)
        src = one_ip(cols["src_ip"], r[0])
        details = {k: round(float(v[g]), 3) for k, v in scores.items()
                   if k not in ("contacts",)}
        details["contacts"] = int(scores["contacts"][g])
        details["connections"] = int(r.size)
        name_col = _SOURCES[kind][0]
        dst_ip = port = None
        if name_col is None:
            dst_ip = one_ip(cols["dst_ip"], r[0])
            ports = np.unique(cols["dst_port"][r])
            port = int(ports[0]) if ports.size == 1 else None
            details["ports"] = ports[:20].tolist()
            what = dst_ip + (f":{port}" if port is not None else "")
        else:
            what = str(cols[name_col][r[0]])
            details["name"] = what
            if "dst_ip" in cols:
                dst_ip = one_ip(cols["dst_ip"], r[0])
        related = sorted({src} | ({dst_ip} if dst_ip else set()))
        return Evidence(
            first_seen=first, last_seen=last, source_ip=src, destination_ip=dst_ip,
            destination_port=port, related_ips=related, details=details, **seen_by(cols, r),
            message=f"{src} beacons to {what}: {details['contacts']} contacts every "
                    f"~{details['median_interval_s']:.0f} s, score {details['score']:.2f}",
        )
