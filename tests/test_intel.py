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


def reference_suffix_hashes(values: list[str], domains: bool = True) -> set[tuple]:
    """The numpy implementation the compiled kernel replaced (a code-point matrix folded
    column by column), kept as the oracle: (row, start, hash) triples."""
    lengths = [len(v) for v in values]
    width = max(lengths, default=0)
    out = set()
    if width == 0:
        return out
    codes = np.array(values, dtype=f"U{width}").view(np.uint32).reshape(len(values), width)
    h = np.zeros(len(values), np.uint64)
    for j in range(width - 1, -1, -1):
        c = codes[:, j]
        h = h * np.uint64(0x100000001B3) + c.astype(np.uint64)
        if not domains and j:
            continue
        at = (c != 0) if j == 0 else (c != 0) & (codes[:, j - 1] == 46)
        out.update((int(r), j, int(h[r])) for r in np.flatnonzero(at))
    return out


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("ab.-\x00Ü\U0001F600"), max_size=24)
                | st.sampled_from(["", ".", "..", "a.", ".a", "www.example.com"]),
                max_size=40), st.booleans())
def test_suffix_hash_kernel_equals_the_numpy_fold(values: list[str], domains: bool) -> None:
    rows, starts, hashes = suffix_hashes(np.array(values + [None], object)[:-1], domains)
    got = list(zip(rows.tolist(), starts.tolist(), hashes.tolist(), strict=True))
    assert len(got) == len(set(got))
    assert set(got) == reference_suffix_hashes(values, domains)


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


# --- bulk paths (IndicatorTable, numpy IPv4 parsing, /24 filter) vs plain references -------

def _reference_match(networks: list, address) -> int:
    """Most specific network holding the address; the first loaded among equals; -1."""
    covering = [(net.prefixlen, -i) for i, net in enumerate(networks)
                if net.version == address.version and address in net]
    return -max(covering)[1] if covering else -1


_V4_BASES = (0x0A000000, 0xC0A80000, 0x08080000, 0xCB007100)
_v4_net = st.tuples(st.sampled_from(_V4_BASES), st.integers(0, 2**16 - 1),
                    st.one_of(st.integers(0, 32), st.integers(16, 32), st.just(32))).map(
    lambda t: f"{ipaddress.IPv4Address(t[0] | t[1])}/{t[2]}")  # host bits set: strict=False
_V6_BASES = (0x20010DB8 << 96, 0x2A0E_97C0 << 96, 0xFE80 << 112)
_v6_net = st.tuples(st.sampled_from(_V6_BASES), st.integers(0, 2**20 - 1),
                    st.one_of(st.integers(0, 128), st.just(128))).map(
    lambda t: f"{ipaddress.IPv6Address(t[0] | (t[1] << 80) | (t[1] & 0xFF))}/{t[2]}")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(_v4_net, _v4_net, _v6_net), min_size=1, max_size=40),
       st.lists(st.one_of(st.tuples(st.sampled_from(_V4_BASES), st.integers(0, 2**16 - 1))
                          .map(lambda t: str(ipaddress.IPv4Address(t[0] | t[1]))),
                          st.integers(0, 2**32 - 1).map(lambda a: str(ipaddress.IPv4Address(a))),
                          st.tuples(st.sampled_from(_V6_BASES), st.integers(0, 2**20 - 1))
                          .map(lambda t: str(ipaddress.IPv6Address(t[0] | (t[1] << 80)
                                                                   | (t[1] & 0xFF))))),
                min_size=1, max_size=150),
       st.booleans(), st.data())
def test_ip_cidr_matching_agrees_with_ipaddress_reference(nets, addrs, via_csv, data) -> None:
    """IPv4 + IPv6, overlapping and duplicate CIDRs, /32 and /128 addresses: the most
    specific indicator wins, the first loaded among equals; through the object path
    (IndicatorSet(list)) and the bulk CSV path (IndicatorTable)."""
    nets = nets + nets[::3]  # duplicates: the first loaded must win
    networks = [ipaddress.ip_network(n, strict=False) for n in nets]
    # addresses inside each network, so that hits are not left to chance
    addrs = addrs + [str(n.network_address + data.draw(st.integers(0, min(n.num_addresses,
                                                                           2**16) - 1)))
                     for n in networks]
    if via_csv:
        s = IndicatorSet(parse_csv("type,value\n" + "".join(f"cidr,{n}\n" for n in nets), "t"))
    else:
        s = IndicatorSet(inline_indicators([{"type": "cidr", "value": n} for n in nets]))
    assert len(s) == len(networks)
    got = s.match_ips(ip_column(addrs)).tolist()
    assert got == [_reference_match(networks, ipaddress.ip_address(a)) for a in addrs]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_label, min_size=1, max_size=3).map(".".join), min_size=1, max_size=15),
       st.lists(st.lists(_label, min_size=1, max_size=5).map(".".join), min_size=1, max_size=60))
def test_domain_parent_matching_agrees_with_plain_reference(domains, names) -> None:
    """Bulk CSV path, duplicates allowed: the longest listed parent wins, the first loaded
    among duplicates; a plain loop over each name's parents is the reference."""
    domains = domains + domains[:2]  # duplicates
    names = names + [f"x.{d}" for d in domains[:3]] + [d.upper() for d in domains[:1]]
    s = IndicatorSet(parse_csv("type,value\n" + "".join(f"domain,{d}\n" for d in domains), "t"))
    first: dict[str, int] = {}
    for i, d in enumerate(domains):
        first.setdefault(d, i)

    def reference(name: str) -> int:
        labels = name.split(".")
        for k in range(len(labels)):  # longest parent first
            if ".".join(labels[k:]) in first:
                return first[".".join(labels[k:])]
        return -1

    assert s.match_domains(np.array(names, object)).tolist() == [reference(n) for n in names]


_ip_text = st.one_of(
    st.text(alphabet="0123456789./", max_size=20),
    st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(0, 300),
              st.integers(0, 300), st.integers(0, 40), st.booleans(), st.booleans()).map(
        lambda t: ("0" if t[6] else "") + ".".join(map(str, t[:4]))
        + (f"/{t[4]}" if t[5] else "")),
    st.sampled_from(["1.2.3.4/255.255.255.0", "::1", "1.2.3.4/024", "1.2.3.4/", " 1.2.3.4",
                     "1.2.3.4/32", "10.0.0.1/8", "é.1.2.3"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_ip_text, min_size=1, max_size=20))
def test_bulk_ipv4_parse_agrees_with_ipaddress(values) -> None:
    """Fuzz: whatever the numpy/inet_pton path accepts, ipaddress reads the same way, and
    `normalized` means normalize() would not change the value."""
    from pipeline.intel import _parse_ipv4_bulk

    ok, network, length, normalized = _parse_ipv4_bulk(values)
    for v, o, a, n, same in zip(values, ok.tolist(), network.tolist(), length.tolist(),
                                normalized.tolist(), strict=True):
        if not o:
            assert not same
            continue
        ref = ipaddress.ip_network(v, strict=False)
        assert (ref.version, int(ref.network_address), ref.prefixlen) == (4, a, n)
        assert same == (normalize("cidr", v)[1] == v)


@settings(max_examples=300, deadline=None)
@given(_ip_text)
def test_normalize_ip_fast_path_agrees_with_ipaddress(value) -> None:
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        with pytest.raises(IndicatorError):
            normalize("ip", value)
        return
    full = net.prefixlen == net.max_prefixlen
    assert normalize("ip", value) == (("ip", str(net.network_address)) if full
                                      else ("cidr", str(net)))


def test_csv_bulk_rows_share_metadata_and_source_severity(tmp_path: Path) -> None:
    (tmp_path / "f.csv").write_text(
        "value,type,description,tags,severity\n"
        "192.0.2.1,ip,botnet C2,mitre-attack:command-and-control,\n"
        "192.0.2.0/25,cidr,botnet C2,mitre-attack:command-and-control,\n"
        "evil.test,domain,phishing,,high\n"
        "198.51.100.7/24,,guessed,,\n")
    got = load_source({"path": str(tmp_path / "f.csv"), "name": "feed", "severity": "low"})
    assert [(i.type, i.value) for i in got] == [
        ("ip", "192.0.2.1"), ("cidr", "192.0.2.0/25"), ("domain", "evil.test"),
        ("cidr", "198.51.100.0/24")]
    assert [i.severity for i in got] == ["low", "low", "high", "low"]
    assert got[0].tactic == ("TA0011", "Command and Control") and got[1].description == \
        "botnet C2"
    assert got[-1] is got[3] and got[0].source == "feed"  # made once, then kept
    # mixed with inline entries, indices stay in load order
    s = IndicatorSet.from_config([{"path": str(tmp_path / "f.csv"), "format": "csv"}],
                                 ["203.0.113.9"])
    assert s.match_ips(ip_column(["203.0.113.9", "192.0.2.1", "192.0.2.77",
                                  "198.51.100.200", "192.0.2.200"])).tolist() == \
        [4, 0, 1, 3, -1]
    assert s.indicators[4].source == "inline" and s.types() == {"ip", "cidr", "domain"}


def test_csv_bulk_errors_name_the_first_bad_line() -> None:
    with pytest.raises(IndicatorError, match="line 4"):
        parse_csv("type,value\nip,1.2.3.4\ndomain,a.test\nip,1.2.3.400\nip,1.2.3.500\n", "f")
    with pytest.raises(IndicatorError, match="line 3.*unknown indicator type"):
        parse_csv("type,value\nip,1.2.3.4\nhash,abc\n", "f")


def test_same_sources_load_once_and_a_changed_file_loads_again(tmp_path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text("type,value\nip,198.51.100.7\ndomain,evil.example\n")
    relative = IndicatorSet.from_config([{"path": "feed.csv", "format": "csv"}],
                                        base_dir=tmp_path)
    absolute = IndicatorSet.from_config([{"path": str(feed), "format": "csv"}])
    assert absolute is relative  # fusion and correlation share one loaded set
    other_name = IndicatorSet.from_config([{"path": str(feed), "format": "csv", "name": "x"}])
    assert other_name is not relative and other_name.indicators[0].source == "x"
    feed.write_text("type,value\nip,198.51.100.8\n")  # edited feed (size/mtime change)
    reloaded = IndicatorSet.from_config([{"path": str(feed), "format": "csv"}])
    assert reloaded is not relative and len(reloaded) == 1
    assert reloaded.indicators[0].value == "198.51.100.8"


@settings(max_examples=60, deadline=None)
@given(st.lists(_v4_net, min_size=1, max_size=40))
def test_ipv4_matching_at_every_edge_agrees_with_ipaddress_reference(nets) -> None:
    """The compiled lookup (/24 bit, then searches bounded by a per-/16 index): queried at
    each network's first and last address +-1 and at the edges of its /16 and /24."""
    networks = [ipaddress.ip_network(n, strict=False) for n in nets + nets[::4]]
    queries = set()
    for n in networks:
        first, last = int(n.network_address), int(n.broadcast_address)
        queries |= {(a + d) % 2**32 for a in (first, last) for d in (-1, 0, 1)}
        queries |= {(first & 0xFFFF0000) + e for e in (0, 0xFFFF)}
        queries |= {(last & 0xFFFFFF00) + e for e in (0, 0xFF)}
    addrs = [str(ipaddress.IPv4Address(a)) for a in sorted(queries)]
    s = IndicatorSet(inline_indicators([{"type": "cidr", "value": str(n)}
                                        for n in networks]))
    got = s.match_ips(ip_column(addrs)).tolist()
    assert got == [_reference_match(networks, ipaddress.ip_address(a)) for a in addrs]
