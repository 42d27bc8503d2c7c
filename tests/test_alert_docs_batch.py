"""Alert documents of a burst built together (issues #4 and #5, task K2): times formatted
for all alerts at once (alerts.iso_texts), host texts of all sampled hosts at once
(evidence_rows.ip_column_texts, TargetEvidence.host_texts), per-rule texts read once.
Each must give exactly what the per-value helpers give, and the documents stay the same
bytes as before the change (golden digest below).
"""

from __future__ import annotations

import hashlib
from functools import partial

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from correlation.alerts import build_alert, build_alerts, iso_ns, iso_texts
from correlation.detector import Evidence, Finding, Groups, Rule
from correlation.dns_tunnel import TUNNEL_RULE
from correlation.evidence_rows import (
    HitRows,
    LazyEvidence,
    TargetEvidence,
    expect_described,
    ip_bytes_text,
    ip_column_texts,
    unique_texts,
)
from correlation.port_scan import HORIZONTAL_RULE, VERTICAL_RULE
from pipeline.schema import ns_to_iso
from sensors.packets import IP_DTYPE, IPV4_MAPPED_PREFIX, ip_column_to_str, ipv4_column

RULES = (VERTICAL_RULE, TUNNEL_RULE, HORIZONTAL_RULE)
INT64 = st.integers(-(2**63), 2**63 - 1)


def _finding(i: int) -> Finding:
    # times around 1970 (negative too), today, and the int64 extremes
    t = (-3, 1_700_000_000, 1_767_225_599, 0)[i % 4] * 10**9 + i * 7_654_321_987 - 999 * i
    if i == 7:
        t = -(2**63) + 10**9
    if i == 9:
        t = 2**63 - 10**12
    last = t + i * 1_000_123
    ev = Evidence(first_seen=t, last_seen=last, source_ip=f"10.0.0.{i}", message=f"m{i}",
                  details={"n": i, "ports": [i, i + 1], "first_seen": "shadowed"},
                  destination_ip="10.9.9.9" if i % 2 else None,
                  destination_port=i if i % 3 else None,
                  transport=("tcp" if i % 4 else None),
                  related_ips=[f"10.0.0.{i}", "10.9.9.9"][: i % 3],
                  observers=["s1", "s2"][: i % 3], zones=["z", "y"][: (i // 2) % 3],
                  ecs=({"threat": {"indicator": {"ip": "1.2.3.4"}}, "cirtsa": {"x": i}}
                       if i % 5 == 0 else {}))
    return Finding(rule=RULES[i % 3], key=f"k{i}|é", window_start=t // 60 * 60,
                   window_end=t // 60 * 60 + 300 * 10**9, describe=lambda: ev)


def _digest(docs: list[dict]) -> str:
    return hashlib.sha256(b"\n".join(orjson.dumps(d) for d in docs)).hexdigest()


# orjson bytes (key order included) of the 40 documents of _finding, as the builder made
# them before the batch path (HEAD 47830d5's build_alerts); a change of the document
# format changes this digest on purpose only.
GOLDEN = "28bb102dc13276dddddf004bd4fa2bd0b0a394177085183093eb8d4820ce529d"


def test_documents_are_the_same_bytes_as_before() -> None:
    findings = [_finding(i) for i in range(40)]
    assert _digest(build_alerts(findings)) == GOLDEN  # the batch path (>= 8 findings)
    assert _digest([build_alert(f) for f in findings]) == GOLDEN
    assert _digest(build_alerts(findings[:5]) + build_alerts(findings[5:])) == GOLDEN


def test_batch_documents_share_no_mutable_part() -> None:
    findings = [_finding(i) for i in range(4, 40, 3)] * 2  # the same evidence twice
    docs = build_alerts(findings)
    n = len(findings) // 2
    docs[0]["cirtsa"]["observers"]["name"].append("x")
    docs[0]["related"]["ip"].append("x")
    docs[0]["cirtsa"]["evidence"]["extra"] = 1
    docs[0]["threat"]["technique"]["reference"].append("x")
    assert docs[n] == build_alert(findings[n])
    assert docs[1]["threat"]["technique"]["reference"] == \
        build_alert(findings[1])["threat"]["technique"]["reference"]


def test_a_rule_made_on_the_fly_is_not_confused_with_another() -> None:
    def rule(i: int) -> Rule:
        return Rule(id=f"r{i}", name=f"n{i}", description="d", category="c",
                    tactic_id="TA0001", tactic_name="t", technique_id=f"T100{i}.001",
                    technique_name="x", severity=i, severity_label="low", risk_score=1.0)

    ev = Evidence(first_seen=0, last_seen=1, source_ip="1.2.3.4", message="m", details={})
    for i in range(20):  # rules freed and made again (an id may be reused)
        doc = build_alert(Finding(rule(i), "k", 0, 1, lambda: ev))
        assert doc["rule"]["id"] == f"r{i}" and doc["event"]["severity"] == i
        assert doc["rule"]["reference"] == f"https://attack.mitre.org/techniques/T100{i}/001/"


@settings(max_examples=300, deadline=None)
@given(st.lists(INT64, min_size=1, max_size=40))
@example([0, -1, 1, 999, 1000, -999, -1000, -1001, 2**63 - 1, -(2**63)])
@example([951_782_400 * 10**9, 4_107_542_400 * 10**9 - 1, 68_256_000 * 10**9])  # leap days
def test_iso_texts_are_ns_to_iso(values: list[int]) -> None:
    assert iso_texts(values) == [ns_to_iso(v) for v in values]
    assert iso_texts(np.array(values, np.int64)) == [iso_ns(v) for v in values]


def test_iso_texts_of_other_values_take_the_exact_path() -> None:
    assert iso_texts([]) == []
    assert iso_texts([2**64, 5]) == [iso_ns(2**64), iso_ns(5)]  # beyond int64
    assert iso_texts([np.int64(7_000), 2.5e9, True]) == [iso_ns(7_000), iso_ns(2.5e9),
                                                          iso_ns(1)]
    with pytest.raises(TypeError):
        iso_texts([None])


_ADDRESS = st.one_of(st.binary(min_size=16, max_size=16),
                     st.binary(min_size=4, max_size=4).map(IPV4_MAPPED_PREFIX.__add__))


@settings(max_examples=200, deadline=None)
@given(st.lists(_ADDRESS, max_size=30), st.booleans())
def test_ip_column_texts_are_ip_column_to_str(addresses: list[bytes], strided: bool) -> None:
    column = np.array(addresses, IP_DTYPE)
    if strided:
        column = column[::-1]  # a strided view, as gathered columns can be
    assert ip_column_texts(column) == ip_column_to_str(column)


def test_ip_column_texts_of_every_octet() -> None:
    column = ipv4_column(np.arange(256, dtype=np.uint32) * 0x01010101 ^ 0x00FF0A00)
    assert ip_column_texts(column) == ip_column_to_str(column)
    assert ip_column_texts(column[:1]) == ["0.255.10.0"]


@pytest.mark.parametrize("few_hosts", [True, False])
def test_target_evidence_host_texts(few_hosts: bool) -> None:
    """Texts of all hosts at once (few hosts per sample) or one by one (many hosts)."""
    rng = np.random.default_rng(3)
    n_rows = 12_000
    group = np.sort(rng.integers(0, 3, n_rows))
    hosts = ipv4_column(rng.integers(0, 2**32, n_rows, dtype=np.uint64).astype(np.uint32))
    hosts[::50] = np.array([bytes(range(16))], IP_DTYPE)  # an IPv6 host
    cols = {"timestamp": rng.integers(0, 10**9, n_rows), "end": rng.integers(0, 10**9, n_rows),
            "dst_ip": hosts, "observer_name": np.array(["s"] * n_rows, object),
            "ingress_zone": np.array(["z"] * n_rows, object)}
    groups = Groups.of(group, 3)
    hit_rows = HitRows(groups, np.array([2, 0]), np.arange(n_rows))
    max_sample = 4_000 if few_hosts else 1
    evidence = TargetEvidence(cols, hit_rows, max_sample)
    assert evidence._all_texts is few_hosts
    every = list(range(evidence.hosts.shape[0]))
    want = [ip_bytes_text(b) for b in evidence.hosts.tolist()]
    assert evidence.host_texts(every[::-7]) == want[::-7]
    assert evidence.host_texts(every) == want
    assert evidence.host_texts([]) == []
    for i in range(2):  # a hit's sample: its distinct hosts, numerically sorted
        codes = sorted(set(evidence.host[hit_rows.bounds[i]:hit_rows.bounds[i + 1]].tolist()))
        assert evidence.sample[i] == codes[:max_sample]
        assert evidence.host_texts(evidence.sample[i]) == [want[c] for c in codes][:max_sample]


def test_lazy_evidence_positions_when_windows_interleave() -> None:
    made: list[list[int]] = []

    def make(members: np.ndarray):
        made.append(members.tolist())
        return lambda position: (members.tolist()[position], position)

    lazy = LazyEvidence(np.array([5, 6, 5, 6, 5, 7]), make)
    expect_described([partial(lazy.describe, h) for h in (4, 1, 0)])
    assert lazy.describe(4) == (4, 1) and lazy.describe(0) == (0, 0)
    assert lazy.describe(1) == (1, 0)
    assert lazy.describe(2) == (2, 0)  # not announced: the rest of its window, later
    assert lazy.describe(3) == (3, 0)
    assert [lazy.describe(h) for h in range(6)] == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 1),
                                                   (5, 0)]
    assert made == [[0, 4], [1], [2], [3], [5]]


def test_expect_described_groups_the_hits_of_each_lazy_evidence() -> None:
    announced = []

    class Recording(LazyEvidence):
        pass

    first = LazyEvidence(np.zeros(6, np.int64), lambda m: None)
    second = LazyEvidence(np.zeros(6, np.int64), lambda m: None)
    other = Recording(np.zeros(6, np.int64), lambda m: None)
    other.expect = announced.append  # a subclass is not announced to
    expect_described([partial(first.describe, 1), partial(second.describe, 2),
                      partial(first.describe, 3), partial(other.describe, 4),
                      partial(first.expect, 5), partial(first.describe, 0, 1),
                      partial(first.describe, hit=2), lambda: None])
    assert np.flatnonzero(first._expected).tolist() == [1, 3]
    assert np.flatnonzero(second._expected).tolist() == [2]
    assert announced == [] and other._expected is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=6),
       st.lists(st.sampled_from(["s1", "s2", "s1|s3", "", "z"]), min_size=1, max_size=3),
       st.data())
def test_hit_names_equal_unique_texts_per_hit(sizes: list[int], names: list[str],
                                              data) -> None:
    """HitRows.names, one name in every row (no per-hit sets) or several."""
    n_rows = sum(sizes)
    group = np.repeat(np.arange(len(sizes)), sizes)
    # equal strings as distinct objects too: rows of one name may hold either
    pool = [name for name in names] + ["".join(list(name)) for name in names]
    picks = data.draw(st.lists(st.integers(0, len(pool) - 1), min_size=n_rows,
                               max_size=n_rows))
    column = np.array([pool[p] for p in picks], object)
    hits = np.array(data.draw(st.permutations(range(len(sizes)))), np.int64)
    hit_rows = HitRows(Groups.of(group, len(sizes)), hits, np.arange(n_rows))
    want = [unique_texts(column[group == h].tolist()) for h in hits.tolist()]
    assert hit_rows.names(column) == want
    reversed_column = column[::-1].copy()  # rows given: the row in the column of each
    assert hit_rows.names(reversed_column, n_rows - 1 - hit_rows.rows) == want


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, 70_000), min_size=1, max_size=60), min_size=1,
                max_size=6), st.integers(0, 70), st.sampled_from(["int64", "uint16", "int32"]),
       st.sampled_from(["drawn", "ascending", "descending", "wide"]), st.data())
def test_distinct_per_hit_equals_python(groups_values, limit, dtype, order, data) -> None:
    """HitRows.distinct: the compiled per-hit pass (values up to ~4 per row + 65536) and
    the numpy passes (wider values) give each hit's distinct count and smallest values."""
    if order != "drawn":
        groups_values = [sorted(g, reverse=order == "descending") for g in groups_values]
    if order == "wide":  # beyond the seen-table bound: the numpy path
        groups_values = [[v * 10**6 for v in g] for g in groups_values]
        dtype = "int64"
    elif dtype == "uint16":
        groups_values = [[v % 65536 for v in g] for g in groups_values]
    values = np.array([v for g in groups_values for v in g], dtype)
    group = np.repeat(np.arange(len(groups_values)), [len(g) for g in groups_values])
    hits = np.array(data.draw(st.permutations(range(len(groups_values)))), np.int64)
    hit_rows = HitRows(Groups.of(group, len(groups_values)), hits, np.arange(values.shape[0]))
    mask = data.draw(st.lists(st.booleans(), min_size=values.shape[0],
                              max_size=values.shape[0]))
    at = hit_rows.rows
    counts, samples = hit_rows.distinct(values[at], limit)
    masked_counts, masked = hit_rows.distinct(values[at], limit, np.array(mask)[at])
    for i, g in enumerate(hits.tolist()):
        mine = sorted(set(groups_values[g]))
        assert counts[i] == len(mine) and samples[i] == mine[:limit]
        kept = sorted({v for v, m in zip(values[group == g].tolist(),
                                         np.array(mask)[group == g].tolist(), strict=True)
                       if m})
        assert masked_counts[i] == len(kept) and masked[i] == kept[:limit]
