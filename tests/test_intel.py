"""Indicator sets (pipeline/intel.py): parsers for CSV, MISP and STIX 2.1, and vectorized
matching of addresses, CIDRs, domains and their subdomains, URLs, JA3/JA4, certificate SHA-1.

Matching is checked against a plain-Python oracle (ipaddress / str.endswith) on random data,
so a hash or search bug shows up as a disagreement.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.intel import (
    IndicatorError,
    IndicatorSet,
    inline_indicators,
    load_source,
    normalize,
    parse_csv,
    parse_misp,
    parse_stix,
    stix_pattern_values,
    suffix_hashes,
)
from sensors.packets import IP_DTYPE, ip_to_bytes16

DATA = Path(__file__).parent / "data" / "intel"


def ip_column(addresses: list[str]) -> np.ndarray:
    return np.array([np.frombuffer(ip_to_bytes16(a), IP_DTYPE)[0] for a in addresses],
                    dtype=IP_DTYPE)


def test_csv_file_loads_typed_indicators() -> None:
    got = load_source({"path": str(DATA / "sample.csv"), "format": "csv", "name": "csv"})
    assert [(i.type, i.value) for i in got] == [
        ("ip", "8.8.8.8"), ("domain", "testmyids.com"), ("cidr", "198.51.100.0/24")]
    assert got[0].confidence == "High" and got[0].source == "csv"
    assert got[1].severity == "low"


def test_csv_without_type_column_guesses_types() -> None:
    text = "value\n10.0.0.0/8\n2001:db8::1\nEvil.Example.\nhttp://x.test/a\n" \
           "9a7f6a45c84d90c9e8baecb0c9ae8dff\n" \
           "30:C9:08:A7:5D:AC:71:2C:07:00:51:20:4D:91:DC:3C:BA:7E:0A:46\n" \
           "t13d1515h2_8daaf6152771_6a09c78d0dc2\n"
    assert [(i.type, i.value) for i in parse_csv(text, "s")] == [
        ("cidr", "10.0.0.0/8"), ("ip", "2001:db8::1"), ("domain", "evil.example"),
        ("url", "x.test/a"), ("ja3", "9a7f6a45c84d90c9e8baecb0c9ae8dff"),
        ("cert_sha1", "30C908A75DAC712C070051204D91DC3CBA7E0A46"),
        ("ja4", "t13d1515h2_8daaf6152771_6a09c78d0dc2")]


def test_bad_csv_value_names_the_line() -> None:
    with pytest.raises(IndicatorError, match="line 3"):
        parse_csv("type,value\nip,1.2.3.4\nip,1.2.3.400\n", "feed")
    with pytest.raises(IndicatorError, match="value"):
        parse_csv("a,b\n1,2\n", "feed")


def test_misp_event_export() -> None:
    data = json.loads((DATA / "sample-misp.json").read_text())
    got, skipped = parse_misp(data, "misp")
    assert [(i.type, i.value) for i in got] == [
        ("ip", "193.109.85.123"), ("ip", "144.139.247.220"),
        ("domain", "www.internetbadguys.com"),
        ("cert_sha1", "30C908A75DAC712C070051204D91DC3CBA7E0A46")]
    assert skipped == 1  # the md5 file hash: nothing on the wire to match it against
    assert got[0].technique == ("T1071", "Application Layer Protocol")
    assert got[0].reference.startswith("misp:event/")
    # the same attributes as an attribute search export
    attrs = {"response": {"Attribute": data["Event"]["Attribute"]}}
    assert len(parse_misp(attrs, "misp")[0]) == 3


def test_stix_bundle() -> None:
    got, skipped = parse_stix(json.loads((DATA / "sample-stix.json").read_text()), "stix")
    assert [(i.type, i.value) for i in got] == [
        ("domain", "example.com"), ("url", "testmyids.com/"), ("ip", "203.0.113.7"),
        ("cidr", "2001:db8::/48"), ("cert_sha1", "21B4CF84133A21A4B00263763984EAED27EE517C")]
    assert skipped == 2  # the AND pattern and the sigma indicator
    assert got[0].tactic == ("TA0011", "Command and Control")
    assert got[0].technique[0] == "T1071.001"
    assert got[0].confidence == "High"


@pytest.mark.parametrize("pattern,expected", [
    ("[ipv4-addr:value = '1.2.3.4']", [("ip", "1.2.3.4")]),
    ("[domain-name:value = 'a.test'] OR [url:value = 'http://b.test/x']",
     [("domain", "a.test"), ("url", "http://b.test/x")]),
    ("[file:hashes.'SHA-1' = 'aa']", [("cert_sha1", "aa")]),
    ("[ipv4-addr:value = '1.2.3.4' AND ipv4-addr:value = '1.2.3.5']", None),
    ("[process:name = 'x.exe']", None),
    ("[ipv4-addr:value = '1.2.3.4'] FOLLOWEDBY [ipv4-addr:value = '1.2.3.5']", None),
])
def test_stix_patterns(pattern: str, expected) -> None:
    assert stix_pattern_values(pattern) == expected


def test_unknown_format_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(IndicatorError, match="cannot read"):
        load_source({"path": str(tmp_path / "nope.csv"), "format": "csv"})
    (tmp_path / "x.txt").write_text("1.2.3.4")
    with pytest.raises(IndicatorError, match="unknown format"):
        load_source({"path": str(tmp_path / "x.txt"), "format": "txt"})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(IndicatorError, match="not JSON"):
        load_source({"path": str(tmp_path / "bad.json"), "format": "stix"})


def test_normalize_rejects_wrong_values() -> None:
    for kind, value in [("ja3", "xyz"), ("cert_sha1", "12"), ("ip", "evil.com"),
                        ("ja4", "nope"), ("hash", "1")]:
        with pytest.raises(IndicatorError):
            normalize(kind, value)


def test_ip_and_cidr_matching_longest_prefix() -> None:
    s = IndicatorSet(inline_indicators(
        ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "0.0.0.0/0", "2001:db8::/32",
         "2001:db8:0:1::/64", "2001:db8::1", "2001:db8::ff00/120"]))
    col = ip_column(["10.1.2.3", "10.1.9.9", "10.2.0.1", "8.8.8.8", "2001:db8::1",
                     "2001:db8:0:1::5", "2001:db8:5::1", "2001:db9::1", "2001:db8::ff42"])
    assert s.match_ips(col).tolist() == [2, 1, 0, 3, 6, 5, 4, -1, 7]


def test_domain_matches_itself_and_subdomains_only() -> None:
    s = IndicatorSet(inline_indicators(["evil.com", "deep.sub.evil.com", "co.uk"]))
    names = ["evil.com", "a.evil.com", "x.deep.sub.evil.com", "notevil.com", "evil.com.au",
             "com", "", "www.bbc.co.uk", "evil.co"]
    assert s.match_domains(np.array(names, object)).tolist() == [0, 0, 1, -1, -1, -1, -1, 2, -1]


def test_url_ja3_ja4_cert_matching() -> None:
    s = IndicatorSet(inline_indicators([
        {"type": "url", "value": "http://Bad.test/dl/payload.exe"},
        {"type": "ja3", "value": "9A7F6A45C84D90C9E8BAECB0C9AE8DFF"},
        {"type": "ja4", "value": "t13d1515h2_8daaf6152771_6a09c78d0dc2"},
        {"type": "cert_sha1",
         "value": "30:c9:08:a7:5d:ac:71:2c:07:00:51:20:4d:91:dc:3c:ba:7e:0a:46"},
    ]))
    hosts = np.array(["bad.test", "bad.test", "bad.test", "other.test"], object)
    uris = np.array(["/dl/payload.exe", "/dl/payload.exe?x=1", "/dl/other", "/dl/payload.exe"],
                    object)
    assert s.match_urls(hosts, uris).tolist() == [0, 0, -1, -1]
    assert s.match_strings("ja3", np.array(["9a7f6a45c84d90c9e8baecb0c9ae8dff", "0" * 32],
                                           object)).tolist() == [1, -1]
    assert s.match_strings("ja4", np.array(["t13d1515h2_8daaf6152771_6a09c78d0dc2"],
                                           object)).tolist() == [2]
    assert s.match_strings("cert_sha1", np.array(["30C908A75DAC712C070051204D91DC3CBA7E0A46"],
                                                 object)).tolist() == [3]


def test_suffix_hashes_only_at_label_starts() -> None:
    rows, starts, _ = suffix_hashes(np.array(["a.bc.d", "x", ""], object))
    assert sorted(zip(rows.tolist(), starts.tolist(), strict=True)) == [
        (0, 0), (0, 2), (0, 5), (1, 0)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)), min_size=1,
                max_size=30),
       st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=200), st.data())
def test_ipv4_matching_agrees_with_ipaddress(nets, addrs, data) -> None:
    networks = [ipaddress.ip_network((a, p), strict=False) for a, p in nets]
    # hit some networks on purpose
    addrs = addrs + [int(n.network_address) + data.draw(st.integers(0, n.num_addresses - 1))
                     for n in networks[:5]]
    s = IndicatorSet(inline_indicators([str(n) for n in networks]))
    got = s.match_ips(ip_column([str(ipaddress.IPv4Address(a)) for a in addrs]))
    for a, g in zip(addrs, got.tolist(), strict=True):
        addr = ipaddress.IPv4Address(a)
        covering = [n for n in networks if addr in n]
        if not covering:
            assert g == -1
        else:
            assert g >= 0 and addr in ipaddress.ip_network(s.indicators[g].value)
            assert ipaddress.ip_network(s.indicators[g].value).prefixlen == \
                max(n.prefixlen for n in covering)


_label = st.text(alphabet="abcdefghij0-", min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_label, min_size=1, max_size=3).map(".".join), min_size=1, max_size=15),
       st.lists(st.lists(_label, min_size=1, max_size=5).map(".".join), min_size=1, max_size=60))
def test_domain_matching_agrees_with_endswith(domains, names) -> None:
    names = names + [f"x.{d}" for d in domains[:3]]
    s = IndicatorSet(inline_indicators([{"type": "domain", "value": d} for d in domains]))
    got = s.match_domains(np.array(names, object))
    values = [i.value for i in s.indicators]
    for name, g in zip(names, got.tolist(), strict=True):
        covering = [v for v in values if name == v or name.endswith("." + v)]
        if not covering:
            assert g == -1
        else:
            assert values[g] == max(covering, key=len)
