"""DNS tunnel / exfiltration-name / DGA detector (correlation/dns_tunnel.py): synthetic DNS
events shaped like iodine, dnscat2 and DGA malware, benign look-alikes, and the captures
of dns_tunneling/, exfiltration/ and benign/ (MANIFEST names) through the real sensor."""

from __future__ import annotations

import math
import random
import string

import numpy as np
import pytest
from conftest import PCAPS, assert_ecs, shared_pcap
from event_builders import make_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation import dns_tunnel
from correlation.dns_tunnel import (
    INVALID_TLD,
    DnsTunnelDetector,
    PublicSuffixList,
    _Psl,
    entropy,
)
from correlation.engine import CorrelationEngine
from pipeline.config import load_config
from pipeline.embedded import run_pipeline

RULES = ("cirtsa.dns.",)
HEX = "0123456789abcdef"


def only_dns(**section) -> dict:
    detectors = {name: {"enabled": False} for name in load_config()["correlation"]["detectors"]}
    detectors["dns_tunnel"] = {"enabled": True, **section}
    return {"detectors": detectors}


def run(rows: list[dict], **section) -> list[dict]:
    engine = CorrelationEngine(only_dns(**section))
    return engine.push(make_batch("dns", rows)) + engine.flush()


def rand(rng: random.Random, n: int, alphabet: str = string.ascii_lowercase + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def tunnel_rows(n: int, parent: str = "t.example.net", client: str = "10.0.2.30",
                qtype: int = 10, label: int = 40, gap: float = 0.1, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = f"{rand(rng, label)}.{rand(rng, 20)}.{parent}"
        rows.append({"t": i * gap, "src": client, "dst": "10.0.2.20", "qname": name,
                     "qtype": qtype})
        rows.append({"t": i * gap + 0.001, "src": "10.0.2.20", "dst": client, "qname": name,
                     "qtype": qtype, "is_response": True,
                     "answers": [{"name": name, "type": "NULL", "class": "IN", "ttl": 0,
                                  "data": "ab" * 300}]})
    return rows


def test_psl_parent_domains() -> None:
    psl = _Psl()
    assert psl.split("a.b.example.co.uk")[0] == "example.co.uk"
    assert psl.split("x.pirate.sea")[0] == "pirate.sea"  # unknown TLD: PSL default rule
    assert psl.split("dnscat.5a03b5b1.19e4d098dc8c")[0] == INVALID_TLD
    assert psl.split("localhost")[0] == ""


def test_entropy_is_shannon() -> None:
    assert entropy(["aaaa", "abab", "abcd", ""]).round(6).tolist() == [0.0, 1.0, 2.0, 0.0]


def test_iodine_like_tunnel_alerts_high() -> None:
    alerts = run(tunnel_rows(100))
    tunnels = [a for a in alerts if a["rule"]["id"] == "cirtsa.dns.tunnel"]
    assert len(tunnels) == 1
    a = tunnels[0]
    assert a["source"]["ip"] == "10.0.2.30"
    assert a["cirtsa"]["alert"]["key"] == "10.0.2.30|example.net"
    ev = a["cirtsa"]["evidence"]
    assert ev["unique_names"] >= 30 and ev["tunnel_type_queries"] >= 30
    assert ev["large_answers"] == ev["responses"] > 0
    assert a["threat"]["technique"]["id"] == ["T1071.004"]
    assert a["dns"]["question"]["registered_domain"] == "example.net"
    assert_ecs(a)


def test_hex_names_without_a_domain_group_per_client() -> None:
    rng = random.Random(2)
    rows = [{"t": i * 0.4, "src": "192.168.220.56", "dst": "192.168.203.167",
             "qname": f"dnscat.{rand(rng, 60, HEX)}.{rand(rng, 20, HEX)}",
             "qtype": 16} for i in range(60)]
    alerts = [a for a in run(rows) if a["rule"]["id"] == "cirtsa.dns.tunnel"]
    assert [a["cirtsa"]["alert"]["key"] for a in alerts] == [f"192.168.220.56|{INVALID_TLD}"]


def test_benign_browsing_and_cdn_names_are_quiet() -> None:
    rng = random.Random(3)
    words = ["www", "cdn", "static", "images", "api", "login", "mail", "news", "upload", "en"]
    rows = []
    for i in range(400):
        parent = rng.choice(["wikipedia.org", "example.com", "akamaihd.net", "google.com"])
        name = f"{rng.choice(words)}{rng.randint(0, 40)}.{parent}"
        rows.append({"t": i * 0.5, "src": "10.0.0.9", "dst": "10.0.0.53", "qname": name,
                     "qtype": rng.choice([1, 28])})
    # PTR look-ups are unique by design and allow-listed
    rows += [{"t": i * 0.2, "src": "10.0.0.9", "dst": "10.0.0.53",
              "qname": f"{i % 250}.{i // 250}.168.192.in-addr.arpa", "qtype": 12}
             for i in range(300)]
    assert run(rows) == []


def test_many_short_unique_names_without_entropy_or_bulky_types_are_quiet() -> None:
    rows = [{"t": i * 0.1, "src": "10.0.0.9", "dst": "10.0.0.53",
             "qname": f"host{i}.corp.example.com", "qtype": 1} for i in range(200)]
    assert run(rows) == []


def test_tunnel_below_unique_threshold_is_quiet() -> None:
    alerts = run(tunnel_rows(20, label=20))
    assert [a for a in alerts if a["rule"]["id"] == "cirtsa.dns.tunnel"] == []


def test_single_exfiltration_name_is_low_severity() -> None:
    rng = random.Random(4)
    label = rand(rng, 58, string.ascii_lowercase + string.digits + "*=")
    name = f"{label}.{rand(rng, 10)}.test.txt"
    alerts = run([{"t": 0, "src": "192.168.2.225", "dst": "192.168.2.134", "qname": name,
                   "qtype": 1}])
    assert [(a["rule"]["id"], a["cirtsa"]["alert"]["severity_label"]) for a in alerts] == [
        ("cirtsa.dns.exfil_name", "low")]
    assert alerts[0]["cirtsa"]["evidence"]["max_label_chars"] == 58


def test_dga_nxdomain_burst() -> None:
    rng = random.Random(5)
    rows = []
    for i in range(15):
        name = f"{rand(rng, 12, string.ascii_lowercase)}.{rng.choice(['com', 'net', 'biz'])}"
        rows.append({"t": i, "src": "10.0.0.66", "dst": "10.0.0.53", "qname": name, "qtype": 1})
        rows.append({"t": i + 0.01, "src": "10.0.0.53", "dst": "10.0.0.66", "qname": name,
                     "qtype": 1, "is_response": True, "rcode": 3})
    alerts = run(rows)
    assert [(a["rule"]["id"], a["source"]["ip"]) for a in alerts] == [
        ("cirtsa.dns.dga", "10.0.0.66")]
    assert 10 <= alerts[0]["cirtsa"]["evidence"]["nxdomain_domains"] <= 15
    assert_ecs(alerts[0])


def test_nxdomain_for_few_or_wordy_names_is_not_dga() -> None:
    rows = []
    names = [f"printer{i}.corp" for i in range(20)] + ["wpad.example.com"] * 5 \
        + [f"{w}.com" for w in ("aa", "bb", "cc")]
    for i, name in enumerate(names):
        rows.append({"t": i, "src": "10.0.0.53", "dst": "10.0.0.67", "qname": name,
                     "is_response": True, "rcode": 3})
    assert run(rows) == []


def test_thresholds_come_from_config() -> None:
    assert run(tunnel_rows(40), min_unique_names=100, min_tunnel_type_queries=100,
               exfil_min_label_chars=64) == []


def test_detector_declares_threshold_keys() -> None:
    with pytest.raises(ValueError, match="missing keys"):
        DnsTunnelDetector({"window_s": 60, "hop_s": 60})


# --- compiled / memoized per-name features vs their plain references ---------------------------


def reference_entropy(text: str) -> float:
    """Shannon entropy as the plain twin computes it: buckets in ascending order."""
    counts: dict[int, int] = {}
    for ch in text:
        counts[min(ord(ch), 255)] = counts.get(min(ord(ch), 255), 0) + 1
    h = 0.0
    for c in sorted(counts):
        p = counts[c] / len(text)
        h += p * math.log2(p)
    return -h if text else 0.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=70) | st.text(alphabet=HEX, max_size=70), max_size=30))
def test_entropy_kernel_equals_the_plain_sum_exactly(values: list[str]) -> None:
    assert entropy(values).tolist() == [reference_entropy(v) for v in values]


def library_split(name: str) -> tuple[str, str]:
    """_Psl.split by the library's own calls on the whole name (the reference)."""
    labels = name.split(".")
    tld = labels[-1]
    if len(labels) < 2 or not tld:
        return "", tld
    if not (tld.isalpha() or tld.startswith("xn--")):
        return INVALID_TLD, tld
    return LIBRARY.privatesuffix(name) or "", LIBRARY.publicsuffix(name) or tld


LIBRARY = PublicSuffixList() if PublicSuffixList is not None else None
_RULES = sorted(LIBRARY._publicsuffix) if LIBRARY is not None else [""]
LABELS = st.sampled_from(["a", "www", "city", "*", "!www", "B", "kobe", "", "xn--p1ai", "Ü",
                          "s3", "compute", "blogspot"])


@pytest.mark.skipif(PublicSuffixList is None, reason="publicsuffixlist not installed")
@settings(max_examples=300, deadline=None)
@given(st.lists(LABELS, max_size=4), st.sampled_from(_RULES), st.sampled_from(["", "x", "www"]),
       st.booleans())
def test_tail_memo_split_equals_the_library(prefix, rule, wild, upper) -> None:
    # names under real rules (wildcards filled in, exceptions as labels), odd labels, case
    name = ".".join([*prefix, rule.replace("*", wild or "*")])
    name = name.upper() if upper else name
    psl = _Psl()
    assert psl.split(name) == library_split(name)
    assert psl.split(name) == library_split(name)  # (memoized)


def reference_features(detector: DnsTunnelDetector, name: str) -> tuple:
    """The per-name features as the detector computed them one name at a time (the loop
    the mapped string methods replaced): parent, sub_len, max_label, sld_len, sub_h, sld_h."""
    parent, suffix = detector._psl.split(name)
    if parent == INVALID_TLD:
        sub, sld = name, ""
    elif parent:
        sub = name[: -len(parent) - 1] if len(name) > len(parent) else ""
        sld = parent[: -len(suffix) - 1] if len(parent) > len(suffix) else parent
    else:
        sub, sld = "", ""
    if parent and parent != INVALID_TLD and (
            parent in detector.ignore or any(name.endswith("." + d) or name == d
                                             for d in detector.ignore)):
        parent = ""
    max_label = max((len(x) for x in sub.split(".")), default=0) if sub else 0
    return (parent, len(sub.replace(".", "")), max_label, len(sld),
            reference_entropy(sub.replace(".", "")), reference_entropy(sld))


NAME_LABELS = st.sampled_from(["a", "www", "Www", "x1", "", "co", "uk", "com", "in-addr",
                               "arpa", "blogspot", "ck", "www", "kobe", "jp", "Ü", "xn--p1ai",
                               "123", "s3", "amazonaws", "example", "EXAMPLE", "-", "*"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(NAME_LABELS, min_size=1, max_size=6).map(".".join), min_size=1,
                max_size=40))
def test_mapped_split_equals_the_per_name_split(names: list[str]) -> None:
    detector = DnsTunnelDetector(load_config()["correlation"]["detectors"]["dns_tunnel"])
    names = list(dict.fromkeys(names))
    got = detector._compute_features(names)
    for i, name in enumerate(names):
        assert (got["parent"][i], got["sub_len"][i], got["max_label"][i], got["sld_len"][i],
                got["sub_h"][i], got["sld_h"][i]) == reference_features(detector, name), name


def per_name_split(psl: _Psl, name: str) -> tuple[str, str, str]:
    """(parent, subdomain, registrable label) from _Psl.split of the one name."""
    parent, suffix = psl.split(name)
    if parent == INVALID_TLD:
        return parent, name, ""
    if not parent:
        return "", "", ""
    return (parent, name[: -len(parent) - 1] if len(name) > len(parent) else "",
            parent[: -len(suffix) - 1] if len(parent) > len(suffix) else parent)


KERNEL_NAMES = st.lists(
    st.builds(lambda prefix, rule, wild, upper: (lambda n: n.upper() if upper else n)(
        ".".join([*prefix, rule.replace("*", wild or "x")])),
        st.lists(NAME_LABELS, max_size=4), st.sampled_from(_RULES),
        st.sampled_from(["", "x", "www"]), st.booleans())
    | st.lists(NAME_LABELS, min_size=1, max_size=7).map(".".join),
    min_size=1, max_size=40)


@pytest.mark.skipif(PublicSuffixList is None, reason="publicsuffixlist not installed")
@settings(max_examples=200, deadline=None)
@given(KERNEL_NAMES)
def test_kernel_split_equals_the_per_name_split(names: list[str]) -> None:
    # names under real rules (wildcards filled in, exceptions as labels), odd labels, case
    detector = DnsTunnelDetector(load_config()["correlation"]["detectors"]["dns_tunnel"])
    parent, sub, sld = detector._split_names(names)
    assert list(zip(parent.tolist(), sub.tolist(), sld.tolist(), strict=True)) == [
        per_name_split(detector._psl, name) for name in names]


@pytest.mark.skipif(PublicSuffixList is None, reason="publicsuffixlist not installed")
@settings(max_examples=50, deadline=None)
@given(KERNEL_NAMES)
def test_kernel_split_checks_hash_matches_on_the_text(names: list[str]) -> None:
    # every key of every name "matches" a rule tail by hash (as a collision would): the
    # text check must reject the false matches and the per-name split answer them
    detector = DnsTunnelDetector(load_config()["correlation"]["detectors"]["dns_tunnel"])
    keys = [".".join(n.lower().split(".")[-d:]) for n in names
            for d in range(1, n.count(".") + 2)]
    real = dns_tunnel._tail_hashes(detector._psl.tails)
    codes, bounds = dns_tunnel._utf8_codes(keys)
    colliding = np.union1d(real, dns_tunnel._reversed_hash_kernel(codes, bounds))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dns_tunnel, "_tail_hashes", lambda tails: colliding)
        parent, sub, sld = detector._split_names(names)
    assert list(zip(parent.tolist(), sub.tolist(), sld.tolist(), strict=True)) == [
        per_name_split(detector._psl, name) for name in names]


def test_kernel_split_flags_a_false_hash_match() -> None:
    # "example.com" hashed as a rule tail: the kernel's d* is wrong, the text check says so
    detector = DnsTunnelDetector(load_config()["correlation"]["detectors"]["dns_tunnel"])
    if detector._psl.tails is None:
        pytest.skip("publicsuffixlist rules not reachable")
    names = ["www.example.com", "a.b.example.org"]
    codes, bounds = dns_tunnel._utf8_codes(["example.com"])
    colliding = np.union1d(dns_tunnel._tail_hashes(detector._psl.tails),
                           dns_tunnel._reversed_hash_kernel(codes, bounds))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dns_tunnel, "_tail_hashes", lambda tails: colliding)
        parent, _, _, checked = detector._split_by_kernel(names)
    assert checked.tolist() == [False, True]
    assert parent[1] == "example.org"


def test_tail_walk_kernel_label_starts() -> None:
    codes, bounds = dns_tunnel._utf8_codes(["a.bb.ccc", "x", ""])
    none = np.zeros(0, np.uint64)
    count, deepest, starts = dns_tunnel._tail_walk_kernel(codes, bounds, none)
    assert count.tolist() == [3, 1, 1]
    assert deepest.tolist() == [0, 0, 0]  # no tail matches
    assert starts[:3].tolist() == [5, 2, 0]  # "ccc", "bb.ccc", "a.bb.ccc"
    assert starts[9] == 0  # "x" (slot 8 + 1)


def test_feature_memo_bound_gives_the_same_features(monkeypatch) -> None:
    names = [f"{i:x}{'q' * (i % 50)}.t{i % 7}.example.co.uk" for i in range(300)]
    config = load_config()["correlation"]["detectors"]["dns_tunnel"]
    unbounded = DnsTunnelDetector(config)._name_features(names)
    monkeypatch.setattr(dns_tunnel, "_FEATURE_MEMO_MAX", 100)
    small = DnsTunnelDetector(config)
    for lo in range(0, 300, 60):  # overlapping calls: memo hits, then start-overs
        got = small._name_features(names[max(lo - 30, 0):lo + 60])
        for key, column in got.items():
            assert column.tolist() == unbounded[key][max(lo - 30, 0):lo + 60].tolist()
    assert unbounded["parent"][0] == "example.co.uk"
    start, length = unbounded["label_start"][5], unbounded["max_label"][5]
    assert names[5][start:start + length] == "5" + "q" * 5  # the longest label of the sub


# --- real captures ---------------------------------------------------------------------------


def replay(name: str) -> list[dict]:
    config = load_config()
    config["correlation"] = only_dns()
    report = run_pipeline([shared_pcap(name)], config)
    return [a for a in report.alerts if a["rule"]["id"].startswith(RULES)]


def test_iodine_capture() -> None:
    # MANIFEST: iodine DNS tunnel 10.0.2.30 -> resolver 10.0.2.20:53, *.pirate.sea
    alerts = replay("dns_tunneling/ndpi__dns-tunnel-iodine.pcap")
    tunnels = [a for a in alerts if a["rule"]["id"] == "cirtsa.dns.tunnel"]
    assert [(a["source"]["ip"], a["cirtsa"]["evidence"]["parent_domain"]) for a in tunnels] == [
        ("10.0.2.30", "pirate.sea")]
    assert tunnels[0]["destination"]["ip"] == "10.0.2.20"
    for a in alerts:
        assert_ecs(a)


def test_dnscat_exfiltration_capture() -> None:
    # MANIFEST: 192.168.220.56 -> 192.168.203.167:53, 150 long hex-label queries in 60 s
    alerts = replay("exfiltration/ndpi__dns_exfiltration.pcap")
    assert {a["source"]["ip"] for a in alerts} == {"192.168.220.56"}
    assert "cirtsa.dns.tunnel" in {a["rule"]["id"] for a in alerts}


def test_single_query_exfiltration_capture() -> None:
    # MANIFEST: single long/high-entropy DNS query+response
    alerts = replay("dns_tunneling/ndpi__dns-exf.pcap")
    assert [(a["rule"]["id"], a["source"]["ip"]) for a in alerts] == [
        ("cirtsa.dns.exfil_name", "192.168.2.225")]


NEGATIVE = ([f"benign/{p.name}" for p in sorted((PCAPS / "benign").glob("*.pcap*"))]
            + ["large/zeek__ssh.pcap", "large/zeek__echo-connections.pcap"]) \
    if PCAPS.is_dir() else ["(no shared captures)"]


@pytest.mark.parametrize("name", NEGATIVE)
def test_benign_captures_raise_nothing_above_low(name: str) -> None:
    alerts = replay(name)
    assert [a["message"] for a in alerts if a["event"]["severity"] > 21] == []
