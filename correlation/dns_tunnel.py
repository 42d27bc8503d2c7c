"""DNS tunnelling, exfiltration-shaped names and DGA, from DNS events.

A DNS tunnel (iodine, dnscat2, dns2tcp) or exfiltration tool encodes data in the query
name: one client sends many *distinct*, long, high-entropy names under one parent domain
(the attacker's zone), often with record types that carry bulky answers (NULL, TXT, KEY,
PRIVATE). A domain generation algorithm (DGA) makes an infected client try many random
registrable domains, most of which do not exist (NXDOMAIN).

Per name (computed once per distinct name and memoized; for ASCII names compiled passes over
the bytes of all new names: an exact rule-tail table gives each name's deciding PSL tail,
whose public-suffix length the library is asked once per tail and process, and one pass
gives the spans, lengths and entropies, with Python only per distinct parent; else string
methods mapped over all new names, the PSL split level by level on rule tails, lengths and
entropies in compiled passes over the code points. Each selected row's feature row and
client are looked up once, in `select`, and read back at every close from
correlation/arrival_memo.py; a close then finds the rows that can make a finding in one
compiled pass, correlation/dns_reach.py, and touches no name text unless it describes a
finding):
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

import copy
from collections.abc import Mapping
from functools import partial
from itertools import repeat
from operator import itemgetter

import numpy as np

from correlation.arrival_memo import ArrivalMemo, rows_in_range
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
from correlation.dns_reach import tunnel_reach
from correlation.kernels import factorize_u64, factorize_u128
from pipeline.jit import njit
from pipeline.schema import EventBatch, dns_type_name
from pipeline.text_codes import TextIds
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


_PSL_LOADED: list = []  # (PublicSuffixList, rule tails), once per process


def _public_suffix_list():
    """The shared PublicSuffixList and the tails of its rules: parsing its ~10k rules (with
    IDNA encoding of each) costs ~0.3 s, and the list never changes while the process runs."""
    if PublicSuffixList is None:
        return None, None
    if not _PSL_LOADED:
        psl = PublicSuffixList()
        _PSL_LOADED.append((psl, _rule_tails(psl)))
    return _PSL_LOADED[0]


def _rule_tails(psl) -> frozenset[str] | None:
    """Every label-aligned tail of every rule string ("b.c" and "c" of "a.b.c"; of "!x.ck"
    also "x.ck"), or None when the parsed rules are not reachable (another version)."""
    rules = getattr(psl, "_publicsuffix", None)
    if not isinstance(rules, frozenset) or not hasattr(psl, "_maxlabel"):
        return None
    tails = set()
    for rule in rules:
        for text in (rule, rule[1:]) if rule.startswith("!") else (rule,):
            labels = text.split(".")
            tails.update(".".join(labels[i:]) for i in range(len(labels)))
    return frozenset(tails)


class _Psl:
    """Registered domain of a name; bounded memos (names repeat, and so do their tails).

    The public-suffix length of a name depends only on its last d* + 1 labels, where d* is
    the deepest d whose last d labels are a tail of some rule: every rule check
    (exact, "*." + s, "!" + s) at a depth d needs s to be such a tail, and the tails are
    closed under dropping labels on the left. So names are split on that short tail, which
    the names of one zone share, and one rule walk of the library serves all of them.
    """

    def __init__(self) -> None:
        self._psl, self._tails = _public_suffix_list()
        self._memo: dict[str, tuple[str, str]] = {}
        self._public_labels: dict[str, int] = {}  # tail -> labels of its public suffix

    @property
    def tails(self) -> frozenset[str] | None:
        """Every tail of every rule (None without the library or its parsed rules)."""
        return self._tails if self._psl is not None else None

    def public_labels(self, tail: str) -> int:
        """Labels in the public suffix of a (lowercase) deciding tail, memoized."""
        public = self._public_labels.get(tail)
        if public is None:
            suffix = self._psl.publicsuffix(tail)  # the default rule always gives >= 1
            public = suffix.count(".") + 1 if suffix else 1
            if len(self._public_labels) > 100_000:
                self._public_labels.clear()
            self._public_labels[tail] = public
        return public

    def public_labels_of(self, tails: list[str]) -> np.ndarray:
        """public_labels of each tail: one C-level memo lookup per tail, a Python call
        only for tails not in the memo."""
        memo = self._public_labels
        out = np.fromiter(map(memo.get, tails, repeat(0, len(tails))), np.int64, len(tails))
        missing = np.flatnonzero(out == 0)  # (a public suffix has >= 1 label)
        if missing.size:
            fresh = {t: self.public_labels(t)
                     for t in set(map(tails.__getitem__, missing.tolist()))}
            out[missing] = np.fromiter(map(fresh.__getitem__, map(tails.__getitem__,
                                                                  missing.tolist())),
                                       np.int64, missing.size)
        return out

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
            return self._split_psl(name)
        suffix = ".".join(labels[-2:]) if ".".join(labels[-2:]) in _FALLBACK_SUFFIXES else tld
        n = suffix.count(".") + 2
        return (".".join(labels[-n:]) if len(labels) >= n else ""), suffix

    def _split_psl(self, name: str) -> tuple[str, str]:
        """= (privatesuffix(name) or "", publicsuffix(name)) of the library, for a name of
        two or more labels with a non-empty last one."""
        labels = name.lower().split(".")
        if self._tails is None or "" in labels:  # (empty label: the library says None)
            parent = self._psl.privatesuffix(name)
            if parent is None:
                return "", self._psl.publicsuffix(name) or name.rpartition(".")[2]
            return parent, parent.partition(".")[2]
        depth, tail = 0, labels[-1]
        while tail in self._tails:
            depth += 1
            if depth == len(labels):
                break
            tail = f"{labels[-depth - 1]}.{tail}"
        public = self.public_labels(tail)
        suffix = ".".join(labels[-public:])
        if len(labels) <= public:
            return "", suffix
        return ".".join(labels[-public - 1:]), suffix


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)  # 64-bit FNV-1a
_FNV_PRIME = np.uint64(0x100000001B3)
_DOT = np.uint64(46)  # "."


@njit
def _reversed_hash_kernel(codes: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """FNV-1a of the bytes of each string codes[bounds[i]:bounds[i + 1]] read right to
    left (the hash _tail_walk_kernel forms of a name's last labels). Indices are clipped
    to 0..codes.size."""
    n = bounds.shape[0] - 1
    out = np.empty(n, np.uint64)
    for i in range(n):
        a, b = max(bounds[i], 0), min(bounds[i + 1], codes.shape[0])
        h = _FNV_OFFSET
        for j in range(b - 1, a - 1, -1):
            h = (h ^ np.uint64(codes[j])) * _FNV_PRIME
        out[i] = h
    return out


@njit
def _tail_walk_kernel(codes: np.ndarray, bounds: np.ndarray, tail_hashes: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk each name's labels right to left: (labels in the name, d* = levels whose key
    (last labels) hashes to a rule tail, label starts). Level L of name i starts at
    starts[bounds[i] + i + L - 1] (offset in the name); a name of k bytes has <= k + 1
    labels, so its levels fit in its slot of size k + 1.

    codes: lowercase bytes of the names; tail_hashes: sorted _reversed_hash_kernel of the
    tails. A hash match may be a collision: the caller checks d* on the text.
    """
    n = bounds.shape[0] - 1
    count = np.zeros(n, np.int64)
    deepest = np.zeros(n, np.int64)
    starts = np.zeros(codes.shape[0] + n, np.int64)
    n_tails = tail_hashes.shape[0]
    for i in range(n):
        a, b = max(bounds[i], 0), min(bounds[i + 1], codes.shape[0])
        base = a + i
        h = _FNV_OFFSET
        level = 0
        d = -1
        for j in range(b - 1, a - 2, -1):
            if j < a or codes[j] == 46:  # a label starts at j + 1: key of the next level
                if base + level < starts.shape[0]:
                    starts[base + level] = j + 1 - a
                level += 1
                if d < 0:
                    k = np.searchsorted(tail_hashes, h)
                    if k >= n_tails or tail_hashes[k] != h:
                        d = level - 1
                if j >= a:
                    h = (h ^ _DOT) * _FNV_PRIME
            else:
                h = (h ^ np.uint64(codes[j])) * _FNV_PRIME
        count[i] = level
        deepest[i] = level if d < 0 else d
    return count, deepest, starts


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads hashes over the slots


@njit
def _tail_slots(hashes: np.ndarray, bits: int) -> np.ndarray:
    """Open-addressing table of 2**bits slots (> 2 * hashes.size) holding the index of each
    rule tail at the slot its hash picks (linear probing), -1 where empty."""
    shift = np.uint64(64 - bits)
    mask = (1 << bits) - 1
    slots = np.full(1 << bits, -1, np.int64)
    for t in range(hashes.shape[0]):
        s = np.int64((hashes[t] * _GOLDEN) >> shift)
        while slots[s] >= 0:
            s = (s + 1) & mask
        slots[s] = t
    return slots


@njit
def _exact_tail_walk(codes: np.ndarray, bounds: np.ndarray, tail_codes: np.ndarray,
                     tail_bounds: np.ndarray, tail_hashes: np.ndarray, slots: np.ndarray,
                     hash_mask: np.uint64
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """_tail_walk_kernel with exact rule-tail matches: (labels in the name, d*, label
    starts, index of the level-d* rule tail or -1 at d* = 0). A level's key (the name's
    last labels) is looked up in the slot table by its hash (& hash_mask: tests narrow it
    to force collisions) and compared byte by byte with the candidate tails, so d* needs
    no check on the text.

    codes: lowercase bytes of the names; tail_*: the rule tails' bytes, bounds and
    _reversed_hash_kernel values (& hash_mask), slots: _tail_slots of those hashes.
    """
    n = bounds.shape[0] - 1
    count = np.zeros(n, np.int64)
    deepest = np.zeros(n, np.int64)
    tail = np.full(n, -1, np.int64)
    starts = np.zeros(codes.shape[0] + n, np.int64)
    bits = 0
    while (1 << bits) < slots.shape[0]:
        bits += 1
    shift = np.uint64(64 - bits)
    mask = slots.shape[0] - 1
    for i in range(n):
        a, b = max(bounds[i], 0), min(bounds[i + 1], codes.shape[0])
        base = a + i
        h = _FNV_OFFSET
        level = 0
        searching = True
        for j in range(b - 1, a - 2, -1):
            if j < a or codes[j] == 46:  # a label starts at j + 1: key of the next level
                if base + level < starts.shape[0]:
                    starts[base + level] = j + 1 - a
                level += 1
                if searching:
                    key = h & hash_mask
                    s = np.int64((key * _GOLDEN) >> shift)
                    found = -1
                    while slots[s] >= 0:
                        t = slots[s]
                        ta, tb = tail_bounds[t], tail_bounds[t + 1]
                        if tail_hashes[t] == key and tb - ta == b - j - 1:
                            same = True
                            for x in range(tb - ta):
                                if tail_codes[ta + x] != codes[j + 1 + x]:
                                    same = False
                                    break
                            if same:
                                found = t
                                break
                        s = (s + 1) & mask
                    if found < 0:
                        searching = False  # (no deeper key is a tail: tails drop left labels)
                    else:
                        deepest[i] = level
                        tail[i] = found
                if j >= a:
                    h = (h ^ _DOT) * _FNV_PRIME
            else:
                h = (h ^ np.uint64(codes[j])) * _FNV_PRIME
        count[i] = level
    return count, deepest, starts, tail


class _TailTable:
    """The rule tails as bytes with an exact hash table over them (_exact_tail_walk), and
    the public-suffix labels of the names each tail decides, filled in as tails are met.

    A name whose level-d* key is tail T and whose next key is no tail (d* < labels): the
    library's rule walk over that deciding key ("x." + T) checks "!" + key, "*." + key and
    key at the top level, none of which can be a rule (each would make the key a tail), and
    then only suffixes of T, always below the top level: so the public-suffix labels are
    the same for every such name, `public_below[T]`. A name that is itself a tail
    (d* = labels) has `public_whole[T]`, the library's answer for T.
    """

    def __init__(self, tails: frozenset[str], hash_mask: int = (1 << 64) - 1) -> None:
        self.tails = tails
        self.texts = sorted(tails)
        self.codes, self.bounds = _utf8_codes(self.texts)
        self.hash_mask = np.uint64(hash_mask)
        self.hashes = _reversed_hash_kernel(self.codes, self.bounds) & self.hash_mask
        self.slots = _tail_slots(self.hashes, max(4, (4 * len(self.texts)).bit_length()))
        self.public_below = np.zeros(len(self.texts), np.int64)  # 0: not known yet
        self.public_whole = np.zeros(len(self.texts), np.int64)

    def walk(self, lower: np.ndarray, bounds: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """_exact_tail_walk of the names lower[bounds[i]:bounds[i + 1]]."""
        return _exact_tail_walk(lower, bounds, self.codes, self.bounds, self.hashes,
                                self.slots, self.hash_mask)


_TAIL_TABLE: list = []  # the _TailTable of the loaded rules: once per process


def _tail_table(tails: frozenset[str]) -> _TailTable:
    if not _TAIL_TABLE or _TAIL_TABLE[0].tails is not tails:
        _TAIL_TABLE[:] = [_TailTable(tails)]
    return _TAIL_TABLE[0]


_SHAPE_NO_PARENT = 0  # a single label or an empty last label: no parent
_SHAPE_INVALID_TLD = 1  # the last label is no TLD (digits, hex): INVALID_TLD
_SHAPE_SPLIT = 2  # a valid TLD, no empty label, no leading dot: split by the tail walk
_SHAPE_PER_NAME = 3  # a valid TLD but an empty label or a leading dot: _Psl.split


@njit
def _name_shapes(codes: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The _SHAPE_* of each ASCII name codes[bounds[i]:bounds[i + 1]], as _split_names
    classifies it: rpartition(".") without a dot or with an empty last label: no parent;
    a last label neither all letters (str.isalpha) nor starting "xn--": invalid TLD; else
    a name containing ".." or starting "." goes to the per-name split."""
    n = bounds.shape[0] - 1
    out = np.zeros(n, np.int8)
    for i in range(n):
        a, b = bounds[i], bounds[i + 1]
        dot = -1
        for j in range(b - 1, a - 1, -1):
            if codes[j] == 46:
                dot = j
                break
        if dot < 0 or dot == b - 1:
            out[i] = _SHAPE_NO_PARENT
            continue
        alpha = True
        for j in range(dot + 1, b):
            c = codes[j] | 32  # (ASCII letters only: | 32 lowercases them)
            if c < 97 or c > 122:
                alpha = False
                break
        xn = (b - dot - 1 >= 4 and codes[dot + 1] == 120 and codes[dot + 2] == 110
              and codes[dot + 3] == 45 and codes[dot + 4] == 45)  # "xn--"
        if not (alpha or xn):
            out[i] = _SHAPE_INVALID_TLD
            continue
        regular = codes[a] != 46
        for j in range(a + 1, b):
            if codes[j] == 46 and codes[j - 1] == 46:
                regular = False
                break
        out[i] = _SHAPE_SPLIT if regular else _SHAPE_PER_NAME
    return out


@njit
def _distinct_spans(codes: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                    use: np.ndarray, tag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group the rows with use[i] by the bytes codes[starts[i]:ends[i]] and tag[i]
    (compared exactly; the hash only picks table slots): (group of each row, -1 where not
    used; the first row of each group, groups in first-seen order)."""
    n = starts.shape[0]
    group = np.full(n, -1, np.int64)
    reps = np.empty(n, np.int64)
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    mask = (1 << bits) - 1
    slots = np.full(1 << bits, -1, np.int64)
    m = 0
    for i in range(n):
        if not use[i]:
            continue
        a, b = starts[i], ends[i]
        h = _FNV_OFFSET ^ np.uint64(tag[i])
        for j in range(a, b):
            h = (h ^ np.uint64(codes[j])) * _FNV_PRIME
        s = np.int64(h >> np.uint64(64 - bits)) & mask
        while True:
            g = slots[s]
            if g < 0:
                slots[s] = m
                reps[m] = i
                group[i] = m
                m += 1
                break
            r = reps[g]
            ra, rb = starts[r], ends[r]
            same = rb - ra == b - a and tag[r] == tag[i]
            if same:
                for j in range(b - a):
                    if codes[ra + j] != codes[a + j]:
                        same = False
                        break
            if same:
                group[i] = g
                break
            s = (s + 1) & mask
    return group, reps[:m]


@njit
def _ends_with_any(codes: np.ndarray, bounds: np.ndarray, domain_codes: np.ndarray,
                   domain_bounds: np.ndarray) -> np.ndarray:
    """Per name codes[bounds[i]:bounds[i + 1]]: it equals one of the domains or ends with
    "." + one of them (byte comparison: str == and str.endswith, case-sensitive)."""
    n = bounds.shape[0] - 1
    out = np.zeros(n, np.bool_)
    for i in range(n):
        a, b = bounds[i], bounds[i + 1]
        for d in range(domain_bounds.shape[0] - 1):
            da, db = domain_bounds[d], domain_bounds[d + 1]
            k = db - da
            if b - a < k:
                continue
            same = True
            for j in range(k):
                if codes[b - k + j] != domain_codes[da + j]:
                    same = False
                    break
            if same and (b - a == k or codes[b - k - 1] == 46):
                out[i] = True
                break
    return out


_TAIL_HASHES: list = []  # (tails, their sorted hashes): once per process


def _tail_hashes(tails: frozenset[str]) -> np.ndarray:
    """Sorted distinct _reversed_hash_kernel values of the rule tails."""
    if not _TAIL_HASHES or _TAIL_HASHES[0][0] is not tails:
        codes, bounds = _utf8_codes(sorted(tails))
        _TAIL_HASHES[:] = [(tails, np.unique(_reversed_hash_kernel(codes, bounds)))]
    return _TAIL_HASHES[0][1]


def _utf8_codes(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes of the concatenated strings, bounds as in _code_points)."""
    encoded = [v.encode("utf-8", "surrogatepass") for v in values]
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    bounds = np.zeros(len(values) + 1, np.int64)
    np.cumsum(lengths, out=bounds[1:])
    return np.frombuffer(b"".join(encoded), np.uint8), bounds


def _slices_from(strings: list[str], starts: np.ndarray) -> list[str]:
    """strings[i][starts[i]:] of each string (C-level maps, no Python step per string)."""
    return list(map(str.__getitem__, strings, map(slice, starts.tolist(), repeat(None))))


def _slices_between(strings: list[str], starts: np.ndarray, stops: np.ndarray) -> list[str]:
    """strings[i][starts[i]:stops[i]] of each string."""
    return list(map(str.__getitem__, strings, map(slice, starts.tolist(), stops.tolist())))


_FEATURE_MEMO_MAX = 200_000  # distinct names whose features are kept


def _object_column(values: list) -> np.ndarray:
    out = np.empty(len(values), object)
    out[:] = values
    return out


@njit
def _span_entropy(codes: np.ndarray, a: int, b: int, skip_dots: bool,
                  counts: np.ndarray) -> float:
    """Shannon entropy of codes[a:b] (without the dots when skip_dots; code points above
    255 share one bucket), summed over the buckets in ascending order. counts: 256 zeros,
    left zero."""
    length = 0
    low, high = 255, 0
    for j in range(a, b):
        c = min(codes[j], 255)
        if skip_dots and c == 46:
            continue
        counts[c] += 1
        length += 1
        low, high = min(low, c), max(high, c)
    if length == 0:
        return 0.0
    h = 0.0
    for c in range(low, high + 1):  # (the used buckets, still in ascending order)
        if counts[c]:
            p = counts[c] / length
            h += p * np.log2(p)
            counts[c] = 0
    return -h


@njit
def _entropy_kernel(codes: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Shannon entropy of each string codes[bounds[i]:bounds[i + 1]] (_span_entropy).

    bounds is ascending with bounds[-1] <= codes.size (the caller builds it from lengths),
    and every bucket index is clipped to 0..255.
    """
    n = bounds.shape[0] - 1
    out = np.zeros(n)
    counts = np.zeros(256, np.int64)
    for i in range(n):
        out[i] = _span_entropy(codes, bounds[i], bounds[i + 1], False, counts)
    return out


@njit
def _span_features(raw: np.ndarray, lower: np.ndarray, bounds: np.ndarray,
                   starts: np.ndarray, count: np.ndarray, public: np.ndarray,
                   shape: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                               np.ndarray, np.ndarray, np.ndarray,
                                               np.ndarray, np.ndarray]:
    """Per name raw[bounds[i]:bounds[i + 1]] (lower: the same lowercased) with its label
    starts from the tail walk and the labels of its public suffix: (has a parent, parent
    start in lower, subdomain characters without dots, longest subdomain label and its
    start, subdomain entropy without dots, registrable label length and entropy).

    The subdomain is the name left of the parent's dot (the whole name for an invalid
    TLD, empty without a parent), in the raw bytes; the registrable label is the parent's
    first label, in the lowercase bytes: as _longest_label_kernel and _entropy_kernel
    over those spans, gathered, give them. Level L of name i starts at
    starts[bounds[i] + i + L - 1] (clipped into starts).
    """
    n = bounds.shape[0] - 1
    has_parent = np.zeros(n, np.bool_)
    parent_start = np.zeros(n, np.int64)
    sub_len = np.zeros(n, np.int64)
    max_label = np.zeros(n, np.int64)
    label_start = np.zeros(n, np.int64)
    sub_h = np.zeros(n)
    sld_len = np.zeros(n, np.int64)
    sld_h = np.zeros(n)
    counts = np.zeros(256, np.int64)
    last = starts.shape[0] - 1
    for i in range(n):
        a, b = bounds[i], bounds[i + 1]
        base = a + i - 1
        pub = public[i]
        parent = shape[i] == _SHAPE_SPLIT and count[i] > pub
        has_parent[i] = parent
        p_start = a + starts[min(base + max(pub + 1, 1), last)]
        parent_start[i] = p_start
        sub_end = a
        sld_start, sld_end = a, a
        if parent:
            sub_end = max(p_start - 1, a)
            sld_start = p_start
            sld_end = a + starts[min(base + max(pub, 1), last)] - 1
        elif shape[i] == _SHAPE_INVALID_TLD:
            sub_end = b
        dots = 0
        label = a
        for j in range(a, sub_end + 1):
            if j == sub_end or raw[j] == 46:
                if j - label > max_label[i]:
                    max_label[i], label_start[i] = j - label, label - a
                label = j + 1
                dots += j < sub_end
        sub_len[i] = sub_end - a - dots
        sub_h[i] = _span_entropy(raw, a, sub_end, True, counts)
        sld_len[i] = max(sld_end - sld_start, 0)
        sld_h[i] = _span_entropy(lower, sld_start, sld_end, False, counts)
    return has_parent, parent_start, sub_len, max_label, label_start, sub_h, sld_len, sld_h


@njit
def _longest_label_kernel(codes: np.ndarray, bounds: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(length, start) of the first longest dot-separated label of each string
    codes[bounds[i]:bounds[i + 1]]; (0, 0) for an empty string. bounds as in
    _entropy_kernel."""
    n = bounds.shape[0] - 1
    longest = np.zeros(n, np.int64)
    start = np.zeros(n, np.int64)
    for i in range(n):
        a, b = bounds[i], bounds[i + 1]
        label = a
        for j in range(a, b + 1):
            if j == b or codes[j] == 46:  # 46: "."
                if j - label > longest[i]:
                    longest[i], start[i] = j - label, label - a
                label = j + 1
    return longest, start


def _code_points(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-32 code points of the concatenated strings, bounds: string i is
    codes[bounds[i]:bounds[i + 1]])."""
    lengths = np.fromiter(map(len, values), np.int64, len(values))
    bounds = np.zeros(len(values) + 1, np.int64)
    np.cumsum(lengths, out=bounds[1:])
    codes = np.frombuffer("".join(values).encode("utf-32-le", "surrogatepass"), np.uint32)
    return codes, bounds


def _longest_labels(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(length, start) of the first longest label of each string (max(s.split("."),
    key=len)), from one compiled pass."""
    return _longest_label_kernel(*_code_points(values))


def entropy(values: list[str]) -> np.ndarray:
    """Shannon entropy (bits per character) of each string: one pass over the code points
    of all strings (UTF-32 of their concatenation) in a compiled kernel."""
    return _entropy_kernel(*_code_points(values))


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
        self._ignore_codes = _utf8_codes(list(self.ignore))  # (bytes for _ends_with_any)
        self.max_sample = int(c.get("evidence_sample", 10))
        self._psl = _Psl()
        # name -> row of the per-name feature columns (bounded memo: names repeat, and each
        # row is seen again in every window of its hop copies), and parent -> parent id
        self._names = TextIds(_FEATURE_MEMO_MAX)
        self._parent_ids: dict[str, int] = {}
        self._feature_columns: dict[str, np.ndarray] = {}  # (rows beyond _stored_names unused)
        self._stored_names = 0
        # each selected row's feature row, looked up once on arrival (select) and read back
        # at every close of its windows (correlation/arrival_memo.py)
        self._row_memo = ArrivalMemo({"name_row": np.int64, "client_hi": np.uint64,
                                      "client_lo": np.uint64}, self.max_buffered_rows)

    # False on a probe until its name memo is its own (_own_names)
    _owns_names = True

    def probe(self) -> DnsTunnelDetector:
        """Detector.probe: the row memo frozen (a close releases its rows of closed
        windows); the public-suffix memos shared (keyed by value). The name memo and the
        per-name feature columns are window-to-window state (the row memo holds their
        ids): shared while the probe only reads them, copied before it would add a name
        (the exact path when the row memo cannot vouch; _own_names)."""
        other = copy.copy(self)
        other._row_memo = self._row_memo.frozen()
        other._owns_names = False
        return other

    def _own_names(self) -> None:
        """A probe's own name memo and feature tables, before it adds names: new names
        and a start-over of the bounded memo must not reach the detector it probes.
        (The feature arrays stay shared: a probe writes rows past the detector's
        _stored_names only, which the detector never reads before writing them itself.)"""
        names = copy.copy(self._names)
        names._index = dict(self._names._index)
        self._names = names
        self._parent_ids = dict(self._parent_ids)
        self._feature_columns = dict(self._feature_columns)
        self._owns_names = True

    def select(self, batch: EventBatch) -> np.ndarray:
        # Queries feed the tunnel rules; of the responses only NXDOMAIN (DGA) and those of
        # tunnel-capable types (answer sizes, evidence) matter.
        c = batch.columns
        wanted = ~c["is_response"] | (c["rcode"] == _NXDOMAIN) | np.isin(c["qtype"],
                                                                         self.tunnel_qtypes)
        mask = wanted & (c["qname"] != "")
        rows = np.flatnonzero(mask)
        client = _client_words(c["is_response"][rows], c["dst_ip"][rows], c["src_ip"][rows])
        self._row_memo.add(c["timestamp"][rows], name_row=self._name_rows(c["qname"][rows])[0],
                           client_hi=client[:, 0], client_lo=client[:, 1])
        return mask

    # --- per-name features -----------------------------------------------------------------

    def _name_rows(self, names: np.ndarray | list[str]) -> tuple[np.ndarray, list[str]]:
        """(row of the stored per-name feature columns (see _FEATURES) for each name, the
        names as a list). One C-level dict lookup per name; only names never seen (or
        seen before the bounded memo started over) are computed."""
        if not self._owns_names:
            self._own_names()
        rows, items, new, reset = self._names.ids(names)
        if reset:  # every id changed: the stored columns start over with them
            self._feature_columns = {}
            self._parent_ids = {}
            self._stored_names = 0
            self._row_memo.poison()  # (the rows it holds carry ids of before)
        if new:
            stored, n_old = self._feature_columns, self._stored_names
            n_new = n_old + len(new)
            features = self._compute_features(new)
            features.update(self._rule_flags(features))
            for key, column in features.items():
                if key not in stored or stored[key].shape[0] < n_new:  # amortized growth
                    grown = np.empty(max(2 * n_new, 1024), column.dtype)
                    if key in stored:
                        grown[:n_old] = stored[key][:n_old]
                    stored[key] = grown
                stored[key][n_old:n_new] = column
            self._stored_names = n_new
        return rows, items

    def _rule_flags(self, feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The per-name tests of the rules with this detector's thresholds, stored with the
        features (once per name, not per row and close): long_name (long, high-entropy
        subdomain), exfil_name (one long high-entropy label), dga_name (a parent with a
        valid TLD and a random-looking registrable label)."""
        high = feats["sub_h"] >= self.min_entropy
        random_sld = (feats["sld_len"] >= self.dga_label) & (feats["sld_h"] >= self.dga_entropy)
        return {"long_name": (feats["sub_len"] >= self.long_chars) & high,
                "exfil_name": (feats["max_label"] >= self.exfil_label) & high,
                "dga_name": feats["named"] & feats["valid_tld"] & random_sld}

    def _name_features(self, names: np.ndarray | list[str]) -> dict[str, np.ndarray]:
        """Per-name feature columns aligned with `names`."""
        rows, _ = self._name_rows(names)
        return {key: column[rows] for key, column in self._feature_columns.items()}

    def _compute_features(self, names: list[str]) -> dict[str, np.ndarray]:
        """Feature columns of names not seen before: compiled passes over the bytes when
        every name is ASCII (_ascii_features), else string methods mapped over the list
        (C loops, no Python step per name) and compiled passes over the code points."""
        fast = self._ascii_features(names)
        if fast is not None:
            return fast
        parent, sub, sld = self._split_names(names)
        if self.ignore:  # allow-listed parents are never grouped
            n = len(names)
            named = (parent != "") & (parent != INVALID_TLD)
            ignored = frozenset(self.ignore)
            listed = (np.fromiter(map(ignored.__contains__, parent.tolist()), bool, n)
                      | np.fromiter(map(ignored.__contains__, names), bool, n)
                      | np.fromiter(map(str.endswith, names,
                                        repeat(tuple("." + d for d in self.ignore))), bool, n))
            parent[named & listed] = ""
        subs, slds = sub.tolist(), sld.tolist()
        dotless = list(map(str.replace, subs, repeat("."), repeat("")))
        max_label, label_start = _longest_labels(subs)
        return {"parent": parent, **self._parent_features(parent),
                "sub_len": np.fromiter(map(len, dotless), np.int64, len(dotless)),
                "max_label": max_label, "label_start": label_start,
                "sub_h": entropy(dotless),
                "sld_len": np.fromiter(map(len, slds), np.int64, len(slds)),
                "sld_h": entropy(slds)}

    def _parent_features(self, parent: np.ndarray) -> dict[str, np.ndarray]:
        """named, valid_tld and parent_id columns of a parent column; new parents get the
        next ids in first-seen order (the detector groups by parent without factorizing
        the text each close)."""
        parent_ids = self._parent_ids
        parents = parent.tolist()
        for p in dict.fromkeys(parents):
            if p not in parent_ids:
                parent_ids[p] = len(parent_ids)
        return {"named": parent != "", "valid_tld": parent != INVALID_TLD,
                "parent_id": np.fromiter(map(parent_ids.__getitem__, parents), np.int64,
                                         len(parents))}

    def _ascii_features(self, names: list[str]) -> dict[str, np.ndarray] | None:
        """_compute_features of names that are all ASCII, from compiled passes over their
        bytes: the shape tests, the exact tail walk, the per-name spans of parent, subdomain
        and registrable label, lengths, longest labels and entropies. Python touches only
        the rule tails met for the first time (one library call each, _TailTable) and the
        distinct parents (their text and ids); names of other shapes (an empty label, a
        leading dot) go through _Psl.split and the string functions one by one, as in
        _split_names. None when a name is not ASCII or the rule tails are not reachable
        (the caller takes the mapped path)."""
        tails = self._psl.tails
        joined = "".join(names)
        if tails is None or not joined.isascii():  # (isascii of a str: a flag, O(1))
            return None
        m = len(names)
        lengths = np.fromiter(map(len, names), np.int64, m)
        bounds = np.zeros(m + 1, np.int64)
        np.cumsum(lengths, out=bounds[1:])
        lower_text = joined.lower()
        raw = np.frombuffer(joined.encode("ascii"), np.uint8)
        lower = np.frombuffer(lower_text.encode("ascii"), np.uint8)
        shape = _name_shapes(raw, bounds)
        table = _tail_table(tails)
        count, deepest, starts, tail = table.walk(lower, bounds)
        public = self._public_labels_by_tail(table, shape == _SHAPE_SPLIT, count, deepest,
                                             tail, starts, bounds, lower_text)
        (has_parent, parent_start, sub_len, max_label, label_start, sub_h, sld_len,
         sld_h) = _span_features(raw, lower, bounds, starts, count, public, shape)
        invalid = shape == _SHAPE_INVALID_TLD
        # distinct parents: their text once each; each name's parent is a slot of `texts`
        parent_group, parent_reps = _distinct_spans(lower, parent_start, bounds[1:], has_parent,
                                                    np.zeros(m, np.int64))
        texts = [lower_text[a:b] for a, b in zip(parent_start[parent_reps].tolist(),
                                                 bounds[1:][parent_reps].tolist(), strict=True)]
        empty = len(texts)
        texts += ["", INVALID_TLD]
        slot = np.full(m, empty, np.int64)
        slot[has_parent] = parent_group[has_parent]
        slot[invalid] = empty + 1
        feats = {"sub_len": sub_len, "max_label": max_label, "label_start": label_start,
                 "sub_h": sub_h, "sld_len": sld_len, "sld_h": sld_h}
        # the other shapes: one PSL split each (rare); their parents get slots of their own
        other = np.flatnonzero(shape == _SHAPE_PER_NAME)
        if other.size:
            rest = [names[i] for i in other.tolist()]
            p, sub, sld = _object_column(rest), _object_column(rest), _object_column(rest)
            for j, name in enumerate(rest):
                p[j], suffix = self._psl.split(name)
                sub[j] = sld[j] = ""
                if p[j] == INVALID_TLD:
                    sub[j] = name
                elif p[j]:
                    sub[j] = name[: -len(p[j]) - 1] if len(name) > len(p[j]) else ""
                    sld[j] = p[j][: -len(suffix) - 1] if len(p[j]) > len(suffix) else p[j]
            subs, slds = sub.tolist(), sld.tolist()
            dotless = list(map(str.replace, subs, repeat("."), repeat("")))
            slot[other] = len(texts) + np.arange(other.size)
            texts += p.tolist()
            feats["max_label"][other], feats["label_start"][other] = _longest_labels(subs)
            feats["sub_len"][other] = np.fromiter(map(len, dotless), np.int64, len(dotless))
            feats["sub_h"][other] = entropy(dotless)
            feats["sld_len"][other] = np.fromiter(map(len, slds), np.int64, len(slds))
            feats["sld_h"][other] = entropy(slds)
        is_domain = np.fromiter((t != "" and t != INVALID_TLD for t in texts), bool, len(texts))
        if self.ignore:  # allow-listed parents are never grouped
            listed = np.fromiter(map(frozenset(self.ignore).__contains__, texts), bool,
                                 len(texts))[slot]
            listed |= _ends_with_any(raw, bounds, *self._ignore_codes)
            slot[is_domain[slot] & listed] = empty
        feats.update(self._slot_parent_features(_object_column(texts), slot))
        return feats

    def _slot_parent_features(self, texts: np.ndarray, slot: np.ndarray
                              ) -> dict[str, np.ndarray]:
        """parent, named, valid_tld and parent_id columns of names whose parents are
        texts[slot]: = _parent_features(texts[slot]), with the text tests and the id
        lookups once per distinct slot (factorized in first-seen order, so new parents get
        their ids in the order of their first names, as there)."""
        code, first = factorize_u64(slot.view(np.uint64))
        distinct = texts[slot[first]]
        parent_ids = self._parent_ids
        for p in distinct.tolist():
            if p not in parent_ids:
                parent_ids[p] = len(parent_ids)
        ids = np.fromiter(map(parent_ids.__getitem__, distinct.tolist()), np.int64,
                          distinct.size)
        return {"parent": distinct[code], "named": (distinct != "")[code],
                "valid_tld": (distinct != INVALID_TLD)[code], "parent_id": ids[code]}

    def _public_labels_by_tail(self, table: _TailTable, split: np.ndarray, count: np.ndarray,
                               deepest: np.ndarray, tail: np.ndarray, starts: np.ndarray,
                               bounds: np.ndarray, lower_text: str) -> np.ndarray:
        """Labels of the public suffix of each name of the split shape (1 elsewhere), from
        the exact tail walk: 1 at d* = 0 (the deciding key is the TLD alone), else the
        tail table's answer for the level-d* tail (see _TailTable), asked of the library
        once per tail, for the first name that needs it."""
        public = np.ones(split.size, np.int64)
        whole = split & (deepest == count)
        below = split & (deepest >= 1) & ~whole
        for rows, known in ((np.flatnonzero(below), table.public_below),
                            (np.flatnonzero(whole), table.public_whole)):
            if rows.size == 0:
                continue
            t = tail[rows]
            labels = known[t]
            missing = np.flatnonzero(labels == 0)  # (a public suffix has >= 1 label)
            if missing.size:
                fresh, first = np.unique(t[missing], return_index=True)
                for f, r in zip(fresh.tolist(), rows[missing[first]].tolist(), strict=True):
                    if known is table.public_whole:
                        text = table.texts[f]
                    else:  # the deciding key: the name from level d* + 1 (walk's starts)
                        a = int(bounds[r])
                        text = lower_text[a + int(starts[a + r + deepest[r]]):int(bounds[r + 1])]
                    known[f] = self._psl.public_labels(text)
                labels = known[t]
            public[rows] = labels
        return public

    def _split_by_kernel(self, names: list[str]
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(parent, subdomain, registrable label, checked) of ASCII names of two or more
        non-empty labels with a valid TLD, = what _Psl.split gives (see _Psl for why the
        deciding tail is the key one level below the first key that is no rule tail).

        One compiled walk over the lowercase bytes of all names finds each name's label
        starts and d* by hashes of the rule tails; d* is then checked on the text (key of
        level d* a tail, key of level d* + 1 not). A row with checked False (a hash
        collision) has no answer here: the caller splits it by _Psl.split.
        """
        m = len(names)
        tails = self._psl.tails
        lower = list(map(str.lower, names))
        codes, bounds = _utf8_codes(lower)  # (ASCII: one byte per character)
        count, deepest, starts = _tail_walk_kernel(codes, bounds, _tail_hashes(tails))
        base = bounds[:-1] + np.arange(m) - 1  # starts[base + L]: start of level L

        def level_start(level: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
            """Start of level `level` in each name (of names `rows`; all by default)."""
            at = (base if rows is None else base[rows]) + np.clip(level, 1, None)
            return starts[np.minimum(at, starts.size - 1)]

        decide_level = np.minimum(count, deepest + 1)
        decide = _slices_from(lower, level_start(decide_level))
        # the hashes' d* on the text: decide (level d* + 1, or the whole name at d* = count)
        # is a tail exactly when d* = count, and the key of level d* >= 1 is one
        in_rules = np.fromiter(map(tails.__contains__, decide), bool, m)
        checked = in_rules == (deepest == count)
        deep = np.flatnonzero(checked & (deepest >= 1) & (deepest < count))
        if deep.size:
            keys = _slices_from(list(map(lower.__getitem__, deep.tolist())),
                                level_start(deepest[deep], deep))
            checked[deep] = np.fromiter(map(tails.__contains__, keys), bool, deep.size)
        public = self._psl.public_labels_of(decide)
        has_parent = checked & (count > public)
        parent_start = level_start(public + 1)  # (meaningful where has_parent)
        rows = np.flatnonzero(has_parent)
        parent = np.full(m, "", object)
        sub = np.full(m, "", object)
        sld = np.full(m, "", object)
        if rows.size:
            lower_p = list(map(lower.__getitem__, rows.tolist()))
            names_p = list(map(names.__getitem__, rows.tolist()))
            p_start = parent_start[rows]
            parent[rows] = _object_column(_slices_from(lower_p, p_start))
            sub[rows] = _object_column(_slices_between(
                names_p, np.zeros(rows.size, np.int64), np.maximum(p_start - 1, 0)))
            sld[rows] = _object_column(_slices_between(
                lower_p, p_start, level_start(public[rows], rows) - 1))
        return parent, sub, sld, checked

    def _split_names(self, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(parent, subdomain, registrable label) object columns of names.

        parent as _Psl.split gives it; subdomain = the labels left of the parent (the whole
        name when the TLD is invalid); registrable label = the parent's leftmost label.
        ASCII names of non-empty labels are split level by level with mapped string
        methods (_split_by_kernel); other names go through _Psl.split one by one.
        """
        n = len(names)
        parent = np.full(n, "", object)
        sub = np.full(n, "", object)
        sld = np.full(n, "", object)
        last = list(map(str.rpartition, names, repeat(".")))
        tlds = list(map(itemgetter(2), last))
        dotted = np.fromiter(map(bool, map(itemgetter(1), last)), bool, n)
        dotted &= np.fromiter(map(bool, tlds), bool, n)  # else: no parent (single label)
        valid = (np.fromiter(map(str.isalpha, tlds), bool, n)
                 | np.fromiter(map(str.startswith, tlds, repeat("xn--")), bool, n))
        invalid = np.flatnonzero(dotted & ~valid)  # no TLD has digits: no registrable domain
        parent[invalid] = INVALID_TLD
        sub[invalid] = _object_column(names)[invalid]
        todo = dotted & valid
        if self._psl.tails is not None and todo.any():
            fast = todo & np.fromiter(map(str.isascii, names), bool, n)
            fast &= ~np.fromiter(map(str.__contains__, names, repeat("..")), bool, n)
            fast &= ~np.fromiter(map(str.startswith, names, repeat(".")), bool, n)
            rows = np.flatnonzero(fast)
            if rows.size:
                p, u, d, checked = self._split_by_kernel(
                    list(map(names.__getitem__, rows.tolist())))
                rows, p, u, d = rows[checked], p[checked], u[checked], d[checked]
                parent[rows], sub[rows], sld[rows] = p, u, d
                todo[rows] = False
        for i in np.flatnonzero(todo).tolist():  # the other shapes: one PSL split each
            name = names[i]
            p, suffix = self._psl.split(name)
            parent[i] = p
            if p == INVALID_TLD:
                sub[i] = name
            elif p:
                sub[i] = name[: -len(p) - 1] if len(name) > len(p) else ""
                sld[i] = p[: -len(suffix) - 1] if len(p) > len(suffix) else p
        return parent, sub, sld

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows["dns"]
        t = cols["timestamp"]
        idx = rows_in_range(t, windows)
        # each row's name row (the per-name feature columns) from the memo of arrival when
        # it vouches for them (no name text touched at all), else looked up now
        known = self._row_memo.aligned(windows, t, idx)  # (also releases closed rows)
        if idx.size == 0:
            return []
        if known is not None:
            name_rows = known["name_row"]
            client_hi, client_lo = known["client_hi"], known["client_lo"]
        else:
            name_rows = self._name_rows(cols["qname"][idx])[0]
            client = _client_words(cols["is_response"][idx], cols["dst_ip"][idx],
                                   cols["src_ip"][idx])
            client_hi, client_lo = client[:, 0], client[:, 1]
        stored = self._feature_columns
        is_resp = cols["is_response"][idx]
        # the rows that can make a finding, in one compiled pass (correlation/dns_reach.py):
        # queries of (client, parent) keys with >= min_unique distinct names or an exfil
        # name over the whole range, NXDOMAIN answers of clients with >= dga_min domains;
        # only they are replicated into windows. Key ids follow first appearance; the
        # evidence does not depend on the order of a group's rows.
        q, key, nx = tunnel_reach(name_rows, client_hi, client_lo, is_resp,
                                  cols["rcode"][idx] == _NXDOMAIN, stored["named"],
                                  stored["parent_id"], stored["exfil_name"], stored["dga_name"],
                                  self.min_unique, self.dga_min)
        findings: list[Finding] = []
        ctx = _CloseContext(cols, idx, name_rows, stored)

        # tunnel and exfil names: queries grouped by (window, client, parent)
        if q.size:
            copy_rows, k = windows.assign(t[idx[q]])
            group, n_groups = combine_codes(k, key[copy_rows])
            member = q[copy_rows]
            nr = name_rows[member]
            names_g = distinct_per_group(group, n_groups, nr)
            long_name = stored["long_name"][nr]
            long_g = distinct_per_group(group[long_name], n_groups, nr[long_name]) \
                if long_name.any() else np.zeros(n_groups, np.int64)
            types_g = np.bincount(group, weights=np.isin(cols["qtype"][idx[member]],
                                                         self.tunnel_qtypes), minlength=n_groups)
            exfil_g = np.bincount(group, weights=stored["exfil_name"][nr], minlength=n_groups)
            tunnel = (names_g >= self.min_unique) & ((long_g >= self.min_long)
                                                     | (types_g >= self.min_tunnel_types))
            exfil = (exfil_g > 0) & ~tunnel
            groups = Groups.of(group, n_groups)
            for g in np.flatnonzero(tunnel | exfil).tolist():
                r = member[groups.rows(g)]
                rule = TUNNEL_RULE if tunnel[g] else EXFIL_NAME_RULE
                w = int(k[groups.rows(g)[0]])
                parent = stored["parent"][name_rows[r[0]]]
                src = _client_text(cols, idx[r[0]], bool(is_resp[r[0]]))
                findings.append(Finding(
                    rule=rule, key=f"{src}|{parent}", window_start=int(windows.spec.start(w)),
                    window_end=int(windows.spec.end(w)),
                    describe=partial(self._describe_tunnel, ctx, r, src, parent, rule)))

        # DGA: NXDOMAIN responses for random-looking registrable domains, per (window, client)
        if nx.size:
            if getattr(cols, "address_codes", None) is None:  # plain columns: address order
                client_code = factorize_ip(np.where(is_resp, cols["dst_ip"][idx],
                                                    cols["src_ip"][idx]))[0]
            else:  # (the engine's address codes gave the clients first-appearance ranks)
                client_code = factorize_u128(client_hi, client_lo)[0]
            copy_rows, k = windows.assign(t[idx[nx]])
            member = nx[copy_rows]
            group, n_groups = combine_codes(k, client_code[member])
            domains_g = distinct_per_group(group, n_groups,
                                           stored["parent_id"][name_rows[member]])
            groups = Groups.of(group, n_groups)
            for g in np.flatnonzero(domains_g >= self.dga_min).tolist():
                r = member[groups.rows(g)]
                w = int(k[groups.rows(g)[0]])
                src = _client_text(cols, idx[r[0]], bool(is_resp[r[0]]))
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
        names = [ctx["distinct"][c] for c in codes.tolist()]
        sub_len, sub_h = feats["sub_len"][codes], feats["sub_h"][codes]
        max_label = feats["max_label"][codes]
        long_n = int(((sub_len >= self.long_chars) & (sub_h >= self.min_entropy)).sum())
        qtypes = cols["qtype"][rows]
        types, counts = np.unique(qtypes, return_counts=True)
        # Answer sizes of the responses to this client under this parent (rare rows).
        resp = np.flatnonzero(cols["is_response"][idx] & (ctx["name_code"] >= 0))
        resp = resp[np.isin(ctx["name_code"][resp], codes)]
        answer_bytes = [sum(_answer_bytes(a) for a in (cols["answers"][idx[i]] or []))
                        for i in resp.tolist()]
        large = int(sum(b >= self.large_answer for b in answer_bytes))
        longest = int(np.argmax(max_label))  # the first name with the longest label
        span = (common["last_seen"] - common["first_seen"]) / NS_PER_S
        shown = parent if parent != INVALID_TLD else "names without a valid TLD"
        details = {
            "parent_domain": parent, "queries": int(rows.size), "unique_names": len(names),
            "long_high_entropy_names": long_n,
            "mean_subdomain_chars": round(float(sub_len.mean()), 1),
            "max_label_chars": int(max_label[longest]),
            "longest_label": self._longest_label(ctx, int(codes[longest])),
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
                       f"{int(max_label[longest])}-character high-entropy label")
        return Evidence(
            first_seen=common["first_seen"], last_seen=common["last_seen"], source_ip=src,
            destination_ip=common["servers"][0] if len(common["servers"]) == 1 else None,
            destination_port=53, related_ips=sorted({src, *common["servers"][:10]}),
            observers=common["observers"], zones=common["zones"], details=details,
            ecs={"dns": {"question": {"registered_domain": parent}}}
            if parent != INVALID_TLD else {}, message=message)

    @staticmethod
    def _longest_label(ctx: dict, code: int) -> str:
        """The longest label of the subdomain of distinct name `code` (a prefix of the
        name, so its offsets are the name's), at most 63 characters."""
        start = int(ctx["feats"]["label_start"][code])
        length = int(ctx["feats"]["max_label"][code])
        return ctx["distinct"][code][start:start + min(length, 63)]

    def _describe_dga(self, ctx: dict, r: np.ndarray, src: str) -> Evidence:
        common = self._common(ctx, r)
        codes = np.unique(ctx["name_code"][r])
        names = [ctx["distinct"][c] for c in codes.tolist()]
        domains = sorted(set(ctx["feats"]["parent"][codes].tolist()))
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


def _client_words(is_response: np.ndarray, dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """The client address of each row (the destination of a response, the source of a
    query) as its two native uint64 words, shape (rows, 2): equal words, equal client."""
    client = np.where(is_response, dst, src)
    return np.ascontiguousarray(client).view(np.uint64).reshape(client.shape[0], 2)


def _client_text(cols: Columns, row: int, is_response: bool) -> str:
    """The client address of buffered row `row` as text: the destination of a response,
    the source of a query."""
    return ip_column_to_str(cols["dst_ip" if is_response else "src_ip"][row:row + 1])[0]


class _CloseContext(dict):
    """What a close's findings describe themselves from: cols and idx, and, computed on
    first use (most closes describe nothing), name_code (the rows' distinct names numbered
    in first-seen order), distinct (code -> name) and feats (per-name features by code)."""

    def __init__(self, cols: Columns, idx: np.ndarray, name_rows: np.ndarray,
                 columns: dict[str, np.ndarray]) -> None:
        super().__init__(cols=cols, idx=idx)
        self._name_rows, self._columns = name_rows, columns

    def __missing__(self, key: str):
        if key not in ("name_code", "distinct", "feats"):
            raise KeyError(key)
        name_code, first = factorize_u64(self._name_rows.view(np.uint64))
        self["name_code"] = name_code
        self["distinct"] = _LazyNames(self["cols"], self["idx"][first])
        self["feats"] = _Gathered(self._columns, self._name_rows[first])
        return self[key]


class _Gathered(dict):
    """Per-name feature columns at the rows of one close's distinct names, gathered on
    first use: the text column `parent` and the evidence-only ones are read only when a
    finding is described."""

    def __init__(self, columns: dict[str, np.ndarray], rows: np.ndarray) -> None:
        super().__init__()
        self._columns, self._rows = columns, rows

    def __missing__(self, key: str) -> np.ndarray:
        column = self._columns[key][self._rows]
        self[key] = column
        return column


class _LazyNames:
    """The distinct names of a close (code -> name), read from the column only when a
    finding is described: most closes describe nothing, and reading a name touches its
    str object (a cache miss each)."""

    def __init__(self, cols: Columns, rows: np.ndarray) -> None:
        self._cols, self._rows = cols, rows  # (the engine gathers a column on first read)
        self._names: list | None = None

    def __getitem__(self, code: int) -> str:
        if self._names is None:
            self._names = self._cols["qname"][self._rows].tolist()
        return self._names[code]


def _answer_bytes(answer: Mapping) -> int:
    """Approximate rdata size of one rendered answer (NULL/unknown rdata is shown as hex)."""
    data = str(answer.get("data", ""))
    kind = str(answer.get("type", ""))
    hex_shown = kind == "NULL" or kind.startswith("TYPE")
    return len(data) // 2 if hex_shown else len(data)
