"""Longest-prefix match and direction."""

from __future__ import annotations

import ipaddress
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.enrich import NO_MATCH, Constituency, Enricher, PrefixTable
from fusion.stage import FusionStage, fusion_docs
from pipeline.bus import TOPIC_EVENTS, InMemoryBus
from pipeline.schema import EventBatch, empty_batch
from sensors.packets import IP_DTYPE, ip_to_bytes16


def _random_prefixes(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        if rng.random() < 0.7:
            length = rng.choice([8, 12, 16, 20, 22, 24, 28, 32])
            out.append(str(ipaddress.ip_network((rng.getrandbits(32), length), strict=False)))
        else:
            length = rng.choice([16, 32, 48, 56, 64, 96, 128])
            out.append(str(ipaddress.ip_network((rng.getrandbits(128), length), strict=False)))
    return out


def _oracle(nets, addr):
    best, best_len = NO_MATCH, -1
    for i, net in enumerate(nets):
        if addr.version == net.version and addr in net and net.prefixlen > best_len:
            best, best_len = i, net.prefixlen
    return best


@settings(max_examples=2, deadline=None)
@given(st.integers(0, 2**32))
def test_longest_prefix_match_agrees_with_ipaddress(seed):
    rng = random.Random(seed)
    prefixes = list(dict.fromkeys(_random_prefixes(rng, 300)))
    nets = [ipaddress.ip_network(p) for p in prefixes]
    table = PrefixTable(prefixes)
    # 100k random addresses per example, half drawn inside some prefix so matches happen
    n = 100_000
    addrs = []
    for _ in range(n):
        if rng.random() < 0.5:
            net = rng.choice(nets)
            addrs.append(net.network_address + rng.getrandbits(net.max_prefixlen
                                                              - net.prefixlen))
        elif rng.random() < 0.5:
            addrs.append(ipaddress.IPv4Address(rng.getrandbits(32)))
        else:
            addrs.append(ipaddress.IPv6Address(rng.getrandbits(128)))
    column = np.frombuffer(b"".join(ip_to_bytes16(str(a)) for a in addrs), dtype=IP_DTYPE)
    got = table.lookup(column)
    # oracle: Python's ipaddress defines each network; membership by integer shift per
    # (version, prefix length), longest first, for all 100k addresses
    levels: dict[tuple[int, int], dict[int, int]] = {}
    for i, net in enumerate(nets):
        levels.setdefault((net.version, net.prefixlen), {})[
            int(net.network_address) >> (net.max_prefixlen - net.prefixlen)] = i
    order = sorted(levels, key=lambda k: -k[1])
    for i, addr in enumerate(addrs):
        want = NO_MATCH
        for version, length in order:
            if version == addr.version:
                hit = levels[(version, length)].get(int(addr) >> (addr.max_prefixlen - length))
                if hit is not None:
                    assert addr in nets[hit]
                    want = hit
                    break
        assert got[i] == want, (addr, prefixes[got[i]] if got[i] >= 0 else None,
                                prefixes[want] if want >= 0 else None)


def test_direction_and_ecs_fields():
    enricher = Enricher(["10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"],
                        [Constituency("gov", "government", "Ministry"),
                         Constituency("hosp", "health", "Hospital"),
                         Constituency("gov", "government", "Ministry")])
    bus = InMemoryBus()
    stage = FusionStage(bus, enricher=enricher)
    out = []
    bus.subscribe(TOPIC_EVENTS, out.append)
    pairs = [("10.1.2.3", "192.0.2.1"), ("192.0.2.1", "10.2.0.1"), ("10.0.0.1", "2001:db8::1"),
             ("192.0.2.1", "198.51.100.1")]
    batch = empty_batch("ssh")
    n = len(pairs)
    cols = {k: np.zeros(n, dtype=v.dtype) for k, v in batch.columns.items()}
    cols["src_ip"] = np.frombuffer(b"".join(ip_to_bytes16(s) for s, _ in pairs), IP_DTYPE)
    cols["dst_ip"] = np.frombuffer(b"".join(ip_to_bytes16(d) for _, d in pairs), IP_DTYPE)
    cols["timestamp"] = np.full(n, 1_600_000_000 * 10**9, dtype=np.int64)
    for c in ("observer_name", "ingress_zone", "community_id", "client_banner",
              "server_banner"):
        cols[c] = np.array(["x"] * n, dtype=object)
    stage.on_batch(EventBatch("ssh", cols))
    docs = fusion_docs(out[0])
    assert [d["network"]["direction"] for d in docs] == ["outbound", "inbound", "internal",
                                                          "external"]
    assert docs[0]["cirtsa"]["constituency"]["source"]["name"] == "hosp"
    assert docs[1]["cirtsa"]["constituency"]["destination"]["sector"] == "government"
