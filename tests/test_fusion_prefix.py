"""PrefixTable edge cases the random property test (test_fusion_enrich.py) rarely draws:
prefixes at both ends of the IPv4 space, /0 and /32, IPv4-mapped IPv6 prefixes, equal
prefixes listed twice, IPv4 and IPv6 kept apart."""

from __future__ import annotations

import ipaddress

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.enrich import NO_MATCH, PrefixTable
from sensors.packets import IP_DTYPE, ip_to_bytes16


def column(addrs: list[str]) -> np.ndarray:
    return np.frombuffer(b"".join(ip_to_bytes16(a) for a in addrs), IP_DTYPE)


def test_extremes_mapped_and_duplicates() -> None:
    table = PrefixTable(["0.0.0.0/0", "255.255.255.255/32", "255.255.255.0/24",
                         "::ffff:10.0.0.0/104", "10.0.0.0/8", "2001:db8::/32", "::/0"])
    got = table.lookup(column(["1.2.3.4", "255.255.255.255", "255.255.255.254", "10.9.9.9",
                               "2001:db8::1", "2001:db9::1", "0.0.0.0"]))
    # 10.0.0.0/8 twice (mapped and plain): the first listed wins; ::/0 matches no IPv4
    assert got.tolist() == [0, 1, 2, 3, 5, 6, 0]
    assert PrefixTable(["2001:db8::/32"]).lookup(column(["10.0.0.1"])).tolist() == [NO_MATCH]
    assert PrefixTable(["10.0.0.0/8"]).lookup(column(["::a00:1"])).tolist() == [NO_MATCH]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), min_size=1,
                max_size=40),
       st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=200))
def test_ipv4_any_prefixes_agree_with_ipaddress(prefixes, addrs) -> None:
    nets = [ipaddress.ip_network((a, n), strict=False) for a, n in prefixes]
    # extremes as queries too: first and last address of every prefix
    queries = addrs + [int(n.network_address) for n in nets] + [int(n.broadcast_address)
                                                              for n in nets]
    got = PrefixTable([str(n) for n in nets]).lookup(
        column([str(ipaddress.IPv4Address(a)) for a in queries]))
    for q, g in zip(queries, got.tolist(), strict=True):
        addr = ipaddress.IPv4Address(q)
        inside = [i for i, n in enumerate(nets) if addr in n]
        best = max((nets[i].prefixlen for i in inside), default=-1)
        want = next((i for i in inside if nets[i].prefixlen == best), NO_MATCH)
        assert g == want, (addr, nets)


# Prefixes clustered in a few /16s (so the /16 level says "search" and the compiled search
# runs among that /16's own pieces), queried at every prefix edge +-1 and at /16 edges.
_clustered = st.tuples(st.sampled_from([0x0A000000, 0x0A010000, 0xC0A80000, 0xFFFF0000]),
                       st.integers(0, 2**17 - 1), st.integers(8, 32))


@settings(max_examples=60, deadline=None)
@given(st.lists(_clustered, min_size=1, max_size=30),
       st.lists(st.integers(0, 2**17 - 1), max_size=50))
def test_ipv4_clustered_prefixes_and_edges_agree_with_ipaddress(prefixes, offsets) -> None:
    nets = [ipaddress.ip_network(((base + off) % 2**32, n), strict=False)
            for base, off, n in prefixes]
    queries = {(int(n.network_address) + d) % 2**32 for n in nets for d in (-1, 0, 1)}
    queries |= {(int(n.broadcast_address) + d) % 2**32 for n in nets for d in (-1, 0, 1)}
    queries |= {(base + off) % 2**32 for base, _, _ in prefixes for off in offsets}
    queries |= {(int(n.network_address) & 0xFFFF0000) + e for n in nets
                for e in (0, 0xFFFF)}  # first and last address of each prefix's /16
    queries = sorted(queries)
    got = PrefixTable([str(n) for n in nets]).lookup(
        column([str(ipaddress.IPv4Address(a)) for a in queries]))
    for q, g in zip(queries, got.tolist(), strict=True):
        addr = ipaddress.IPv4Address(q)
        inside = [i for i, n in enumerate(nets) if addr in n]
        best = max((nets[i].prefixlen for i in inside), default=-1)
        want = next((i for i in inside if nets[i].prefixlen == best), NO_MATCH)
        assert g == want, (addr, nets)
