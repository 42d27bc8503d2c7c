"""DNS tunnelling, exfiltration-shaped names and DGA, from DNS events.

A DNS tunnel (iodine, dnscat2, dns2tcp) or exfiltration tool encodes data in the query
name: one client sends many *distinct*, long, high-entropy names under one parent domain
(the attacker's zone), often with record types that carry bulky answers (NULL, TXT, KEY,
PRIVATE). A domain generation algorithm (DGA) makes an infected client try many random
registrable domains, most of which do not exist (NXDOMAIN).

Per name (computed once per distinct name, vectorized over UCS-4 code points):
  parent       registered domain by the Public Suffix List (publicsuffixlist package;
               an unknown but well-formed TLD counts as one label, the PSL default rule);
               names whose TLD is not a valid TLD label (digits, hex: dnscat2 without a
               domain) go to one bucket per client, "<invalid-tld>"
  subdomain    the labels left of the parent: length, longest label, Shannon entropy
  sld          the registrable label (left of the public suffix): length, entropy

Rules (keys: client | parent, or client for DGA):
  cirtsa.dns.tunnel      >= min_unique_names distinct names under one parent from one
                         client in the window, and either >= min_long_names of them long
                         and high-entropy, or >= min_tunnel_type_queries NULL/TXT/... queries
  cirtsa.dns.exfil_name  a name with a label of >= exfil_min_label_chars high-entropy
                         characters (one query can carry a whole secret); low severity
  cirtsa.dns.dga         >= dga_min_domains distinct random-looking registrable domains
                         answered NXDOMAIN to one client in the window
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import numpy as np

from correlation.detector import (
    NS_PER_S,
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
    sorted_unique_text,
)
from pipeline.schema import EventBatch, dns_type_name
from sensors.packets import ip_column_to_str

try:  # the Public Suffix List, shipped inside the package (no download at run time)
    from publicsuffixlist import PublicSuffixList
except ImportError:  # pragma: no cover - fallback documented in docs/detections.md
    PublicSuffixList = None

TUNNEL_RULE = Rule(
    id="cirtsa.dns.tunnel", name="DNS tunnel",
    description="One client sent many distinct, long, high-entropy query names (or many "
                "NULL/TXT-type queries) under one parent domain: data carried over DNS.",
    category="Command and control",
    tactic_id="TA0011", tactic_name="Command and Control",
    technique_id="T1071.004", technique_name="Application Layer Protocol: DNS",
    severity=73, severity_label="high", risk_score=73.0,
)
EXFIL_NAME_RULE = Rule(
    id="cirtsa.dns.exfil_name", name="DNS query name shaped like encoded data",
    description="A query name carries a very long, high-entropy label (encoded data).",
    category="Exfiltration",
    tactic_id="TA0010", tactic_name="Exfiltration",
    technique_id="T1048.003",
    technique_name="Exfiltration Over Unencrypted Non-C2 Protocol",
    severity=21, severity_label="low", risk_score=21.0,
)
DGA_RULE = Rule(
    id="cirtsa.dns.dga", name="Domain generation algorithm (DGA) lookups",
    description="One client got NXDOMAIN for many distinct random-looking registrable "
                "domains within the window.",
    category="Command and control",
    tactic_id="TA0011", tactic_name="Command and Control",
    technique_id="T1568.002", technique_name="Dynamic Resolution: Domain Generation Algorithms",
    severity=47, severity_label="medium", risk_score=47.0,
)

_COLUMNS = ("timestamp", "src_ip", "dst_ip", "is_response", "qname", "qtype", "rcode",
            "answers", "observer_name", "ingress_zone")
INVALID_TLD = "<invalid-tld>"
_NXDOMAIN = 3
# Multi-label public suffixes used only when publicsuffixlist is not installed.
_FALLBACK_SUFFIXES = frozenset({
    "co.uk", "org.uk", "ac.uk", "gov.uk", "com.au", "net.au", "org.au", "co.nz", "co.jp",
    "ne.jp", "or.jp", "com.br", "com.cn", "net.cn", "org.cn", "com.tw", "co.kr", "co.in",
    "co.za", "com.mx", "com.tr", "com.ar", "in-addr.arpa", "ip6.arpa"})


class _Psl:
    """Registered domain of a name; bounded memo (names repeat)."""

    def __init__(self) -> None:
        self._psl = PublicSuffixList() if PublicSuffixList is not None else None
        self._memo: dict[str, tuple[str, str]] = {}

    def split(self, name: str) -> tuple[str, str]:
        """(parent, public suffix); parent '' when the name is a suffix or single label."""
        got = self._memo.get(name)
        if got is None:
            got = self._split(name)
            if len(self._memo) > 200_000:
                self._memo.clear()
            self._memo[name] = got
        return got

    def _split(self, name: str) -> tuple[str, str]:
        labels = name.split(".")
        tld = labels[-1]
        if len(labels) < 2 or not tld:
            return "", tld
        if not (tld.isalpha() or tld.startswith("xn--")):
            return INVALID_TLD, tld  # no TLD has digits: there is no registrable domain
        if self._psl is not None:
            suffix = self._psl.publicsuffix(name) or tld
            parent = self._psl.privatesuffix(name) or ""
            return parent, suffix
        suffix = ".".join(labels[-2:]) if ".".join(labels[-2:]) in _FALLBACK_SUFFIXES else tld
        n = suffix.count(".") + 2
        return (".".join(labels[-n:]) if len(labels) >= n else ""), suffix


def entropy(values: list[str]) -> np.ndarray:
    """Shannon entropy (bits per character) of each string, vectorized in row chunks."""
    out = np.zeros(len(values), np.float64)
    chunk = 4096
    for lo in range(0, len(values), chunk):
        part = values[lo:lo + chunk]
        width = max((len(v) for v in part), default=0)
        if width == 0:
            continue
        codes = np.asarray(part, dtype=f"U{width}").view(np.uint32).reshape(len(part), width)
        lengths = (codes != 0).sum(axis=1)
        row = np.repeat(np.arange(len(part)), width)
        present = codes.ravel() != 0
        counts = np.bincount(row[present] * 256 + np.minimum(codes.ravel()[present], 255),
                             minlength=len(part) * 256).reshape(len(part), 256).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = counts / np.maximum(lengths, 1)[:, None]
            h = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
        out[lo:lo + len(part)] = h
    return out


class DnsTunnelDetector(Detector):
    """Tunnel, exfiltration-name and DGA rules over DNS events (see module doc)."""

    name = "dns_tunnel"
    rules = (TUNNEL_RULE, EXFIL_NAME_RULE, DGA_RULE)
    inputs = (InputSpec("dns", _COLUMNS),)
    threshold_keys = ("min_unique_names", "min_long_names", "long_subdomain_chars",
                      "min_entropy", "tunnel_qtypes", "min_tunnel_type_queries",
                      "exfil_min_label_chars", "dga_min_domains", "dga_min_label_chars",
                      "dga_min_entropy")

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        c = config
        self.min_unique = int(c["min_unique_names"])
        self.min_long = int(c["min_long_names"])
        self.long_chars = int(c["long_subdomain_chars"])
        self.min_entropy = float(c["min_entropy"])
        self.tunnel_qtypes = np.asarray(sorted(int(q) for q in c["tunnel_qtypes"]), np.uint16)
        self.min_tunnel_types = int(c["min_tunnel_type_queries"])
        self.exfil_label = int(c["exfil_min_label_chars"])
        self.dga_min = int(c["dga_min_domains"])
        self.dga_label = int(c["dga_min_label_chars"])
        self.dga_entropy = float(c["dga_min_entropy"])
        self.large_answer = int(c.get("large_answer_bytes", 200))
        self.ignore = tuple(str(d).lower().strip(".") for d in c.get("ignore_domains") or ())
        self.max_sample = int(c.get("evidence_sample", 10))
        self._psl = _Psl()
        self._features: dict[str, tuple] = {}  # name -> per-name features (bounded memo)

    def select(self, batch: EventBatch) -> np.ndarray:
        # Queries feed the tunnel rules; of the responses only NXDOMAIN (DGA) and those of
        # tunnel-capable types (answer sizes, evidence) matter.
        c = batch.columns
        wanted = ~c["is_response"] | (c["rcode"] == _NXDOMAIN) | np.isin(c["qtype"],
                                                                         self.tunnel_qtypes)
        return wanted & (c["qname"] != "")

    # --- per-name features -----------------------------------------------------------------

    def _name_features(self, names: list[str]) -> np.ndarray:
        """Structured per-name features for distinct names (memoized)."""
        todo = [n for n in names if n not in self._features]
        if todo:
            parents, subs, slds, max_label = [], [], [], []
            for name in todo:  # one iteration per new distinct name (PSL lookup)
                parent, suffix = self._psl.split(name)
                if parent == INVALID_TLD:
                    sub, sld = name, ""
                elif parent:
                    sub = name[: -len(parent) - 1] if len(name) > len(parent) else ""
                    sld = parent[: -len(suffix) - 1] if len(parent) > len(suffix) else parent
                else:
                    sub, sld = "", ""
                if parent and parent != INVALID_TLD and self.ignore and (
                        parent in self.ignore or any(name.endswith("." + d) or name == d
                                                     for d in self.ignore)):
                    parent = ""  # allow-listed: never grouped
                parents.append(parent)
                subs.append(sub.replace(".", ""))
                slds.append(sld)
                max_label.append(max((len(x) for x in sub.split(".")), default=0) if sub else 0)
            sub_h = entropy(subs)
            sld_h = entropy(slds)
            longest = [max(sub.split("."), key=len) if sub else "" for sub in subs]
            if len(self._features) > 200_000:
                self._features.clear()
            for i, name in enumerate(todo):
                self._features[name] = (parents[i], len(subs[i]), max_label[i], sub_h[i],
                                        len(slds[i]), sld_h[i], longest[i])
        return [self._features[n] for n in names]

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows["dns"]
        t = cols["timestamp"]
        idx = np.flatnonzero(windows.row_mask(t))
        if idx.size == 0:
            return []
        names = cols["qname"][idx]
        index: dict[str, int] = {}
        name_code = np.fromiter((index.setdefault(q, len(index)) for q in names.tolist()),
                                np.int64, idx.size)
        distinct = list(index)
        feats = self._name_features(distinct)
        parent_of = np.array([f[0] for f in feats], object)
        sub_len = np.array([f[1] for f in feats], np.int64)
        max_label = np.array([f[2] for f in feats], np.int64)
        sub_h = np.array([f[3] for f in feats], np.float64)
        sld_len = np.array([f[4] for f in feats], np.int64)
        sld_h = np.array([f[5] for f in feats], np.float64)
        long_name = (sub_len >= self.long_chars) & (sub_h >= self.min_entropy)
        exfil_name = (max_label >= self.exfil_label) & (sub_h >= self.min_entropy)
        random_sld = (sld_len >= self.dga_label) & (sld_h >= self.dga_entropy)
        parent_index: dict[str, int] = {}
        parent_code_of = np.fromiter((parent_index.setdefault(p, len(parent_index))
                                      for p in parent_of.tolist()), np.int64, len(distinct))
        is_resp = cols["is_response"][idx]
        client = np.where(is_resp, cols["dst_ip"][idx], cols["src_ip"][idx])
        client_code, _ = factorize_ip(client)
        has_parent = parent_of[name_code] != ""
        findings: list[Finding] = []
        ctx = dict(cols=cols, idx=idx, name_code=name_code, distinct=distinct, feats=feats)

        # tunnel and exfil names: queries grouped by (window, client, parent)
        q = np.flatnonzero(~is_resp & has_parent)
        if q.size:
            pcode = parent_code_of[name_code[q]]
            key, _ = combine_codes(client_code[q], pcode)
            n_keys = int(key.max()) + 1
            reach = distinct_per_group(key, n_keys, name_code[q])[key] >= min(self.min_unique, 1)
            q, key = q[reach], key[reach]
            copy_rows, k = windows.assign(t[idx[q]])
            group, n_groups = combine_codes(k, key[copy_rows])
            member = q[copy_rows]
            names_g = distinct_per_group(group, n_groups, name_code[member])
            nc = name_code[member]
            long_g = distinct_per_group(group[long_name[nc]], n_groups, nc[long_name[nc]]) \
                if long_name[nc].any() else np.zeros(n_groups, np.int64)
            types_g = np.bincount(group, weights=np.isin(cols["qtype"][idx[member]],
                                                         self.tunnel_qtypes), minlength=n_groups)
            exfil_g = np.bincount(group, weights=exfil_name[nc], minlength=n_groups)
            tunnel = (names_g >= self.min_unique) & ((long_g >= self.min_long)
                                                     | (types_g >= self.min_tunnel_types))
            exfil = (exfil_g > 0) & ~tunnel
            groups = Groups.of(group, n_groups)
            for g in np.flatnonzero(tunnel | exfil).tolist():
                r = member[groups.rows(g)]
                rule = TUNNEL_RULE if tunnel[g] else EXFIL_NAME_RULE
                w = int(k[groups.rows(g)[0]])
                parent = parent_of[name_code[r[0]]]
                src = ip_column_to_str(client[r[:1]])[0]
                findings.append(Finding(
                    rule=rule, key=f"{src}|{parent}", window_start=int(windows.spec.start(w)),
                    window_end=int(windows.spec.end(w)),
                    describe=partial(self._describe_tunnel, ctx, r, src, parent, rule)))

        # DGA: NXDOMAIN responses for random-looking registrable domains, per (window, client)
        nx = np.flatnonzero(is_resp & (cols["rcode"][idx] == _NXDOMAIN) & has_parent
                            & (parent_of[name_code] != INVALID_TLD) & random_sld[name_code])
        if nx.size:
            pcode = parent_code_of[name_code[nx]]
            reach = distinct_per_group(client_code[nx], int(client_code.max()) + 1,
                                       pcode)[client_code[nx]] >= self.dga_min
            nx = nx[reach]
        if nx.size:
            copy_rows, k = windows.assign(t[idx[nx]])
            member = nx[copy_rows]
            group, n_groups = combine_codes(k, client_code[member])
            domains_g = distinct_per_group(group, n_groups, parent_code_of[name_code[member]])
            groups = Groups.of(group, n_groups)
            for g in np.flatnonzero(domains_g >= self.dga_min).tolist():
                r = member[groups.rows(g)]
                w = int(k[groups.rows(g)[0]])
                src = ip_column_to_str(client[r[:1]])[0]
                findings.append(Finding(
                    rule=DGA_RULE, key=src, window_start=int(windows.spec.start(w)),
                    window_end=int(windows.spec.end(w)),
                    describe=partial(self._describe_dga, ctx, r, src)))
        return findings

    # --- evidence ----------------------------------------------------------------------------

    def _common(self, ctx: dict, r: np.ndarray) -> dict:
        cols, idx = ctx["cols"], ctx["idx"]
        rows = idx[r]
        servers = np.where(cols["is_response"][rows], cols["src_ip"][rows], cols["dst_ip"][rows])
        _, uniq_servers = factorize_ip(servers)
        times = cols["timestamp"][rows]
        return dict(first_seen=int(times.min()), last_seen=int(times.max()),
                    servers=ip_column_to_str(uniq_servers),
                    observers=sorted_unique_text(cols["observer_name"][rows]),
                    zones=sorted_unique_text(cols["ingress_zone"][rows]))

    def _describe_tunnel(self, ctx: dict, r: np.ndarray, src: str, parent: str,
                         rule: Rule) -> Evidence:
        cols, idx, feats = ctx["cols"], ctx["idx"], ctx["feats"]
        rows = idx[r]
        common = self._common(ctx, r)
        codes = np.unique(ctx["name_code"][r])
        f = [feats[c] for c in codes.tolist()]
        names = [ctx["distinct"][c] for c in codes.tolist()]
        sub_len = np.array([x[1] for x in f])
        sub_h = np.array([x[3] for x in f])
        long_n = int(((sub_len >= self.long_chars) & (sub_h >= self.min_entropy)).sum())
        qtypes = cols["qtype"][rows]
        types, counts = np.unique(qtypes, return_counts=True)
        # Answer sizes of the responses to this client under this parent (rare rows).
        resp = np.flatnonzero(cols["is_response"][idx] & (ctx["name_code"] >= 0))
        resp = resp[np.isin(ctx["name_code"][resp], codes)]
        answer_bytes = [sum(_answer_bytes(a) for a in (cols["answers"][idx[i]] or []))
                        for i in resp.tolist()]
        large = int(sum(b >= self.large_answer for b in answer_bytes))
        longest = max(f, key=lambda x: x[2])
        span = (common["last_seen"] - common["first_seen"]) / NS_PER_S
        shown = parent if parent != INVALID_TLD else "names without a valid TLD"
        details = {
            "parent_domain": parent, "queries": int(rows.size), "unique_names": len(names),
            "long_high_entropy_names": long_n,
            "mean_subdomain_chars": round(float(sub_len.mean()), 1),
            "max_label_chars": int(longest[2]), "longest_label": longest[6][:63],
            "mean_entropy_bits": round(float(sub_h.mean()), 2),
            "query_types": {dns_type_name(int(q)): int(c) for q, c in zip(types, counts,
                                                                            strict=True)},
            "tunnel_type_queries": int(np.isin(qtypes, self.tunnel_qtypes).sum()),
            "responses": len(answer_bytes), "large_answers": large,
            "answer_bytes": int(sum(answer_bytes)), "servers": common["servers"][:10],
            "sample_names": sorted(names, key=len, reverse=True)[: self.max_sample],
        }
        if rule is TUNNEL_RULE:
            message = (f"{src} sent {rows.size} DNS queries with {len(names)} unique names under "
                       f"{shown} ({long_n} long high-entropy, "
                       f"{details['tunnel_type_queries']} NULL/TXT-type) in {span:.1f} s")
        else:
            message = (f"{src} queried a name under {shown} with a "
                       f"{longest[2]}-character high-entropy label")
        return Evidence(
            first_seen=common["first_seen"], last_seen=common["last_seen"], source_ip=src,
            destination_ip=common["servers"][0] if len(common["servers"]) == 1 else None,
            destination_port=53, related_ips=sorted({src, *common["servers"][:10]}),
            observers=common["observers"], zones=common["zones"], details=details,
            ecs={"dns": {"question": {"registered_domain": parent}}}
            if parent != INVALID_TLD else {}, message=message)

    def _describe_dga(self, ctx: dict, r: np.ndarray, src: str) -> Evidence:
        common = self._common(ctx, r)
        codes = np.unique(ctx["name_code"][r])
        names = [ctx["distinct"][c] for c in codes.tolist()]
        domains = sorted({ctx["feats"][c][0] for c in codes.tolist()})
        span = (common["last_seen"] - common["first_seen"]) / NS_PER_S
        return Evidence(
            first_seen=common["first_seen"], last_seen=common["last_seen"], source_ip=src,
            related_ips=sorted({src, *common["servers"][:10]}),
            observers=common["observers"], zones=common["zones"],
            details={"nxdomain_responses": int(r.size), "nxdomain_domains": len(domains),
                     "sample_domains": domains[: self.max_sample],
                     "sample_names": names[: self.max_sample],
                     "servers": common["servers"][:10]},
            message=f"{src} got NXDOMAIN for {len(domains)} random-looking domains "
                    f"in {span:.1f} s (e.g. {', '.join(domains[:3])})")


def _answer_bytes(answer: Mapping) -> int:
    """Approximate rdata size of one rendered answer (NULL/unknown rdata is shown as hex)."""
    data = str(answer.get("data", ""))
    kind = str(answer.get("type", ""))
    hex_shown = kind == "NULL" or kind.startswith("TYPE")
    return len(data) // 2 if hex_shown else len(data)
