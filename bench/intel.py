# ruff: noqa: E402
"""Threat-intel indicator sets (pipeline/intel.py): build time and matching speed.

1M indicators like bench/fusion.py (600k IPv4 addresses, 100k IPv4 CIDRs /20-/28, 300k
domains), measured for this tree's pipeline/intel.py ("new") and, in the same run, for
the committed version (`git show HEAD:pipeline/intel.py`, imported as another module:
"head"), plus a plain-Python anchor (a set of ints per prefix length + an ipaddress parse
per address; a set of names + a loop over parent suffixes):

* build: IndicatorSet(list of Indicator) (what fusion/correlation do after parsing), and
  loading a 1M-row CSV file (load_source + IndicatorSet: parsing included);
* flows: match_ips(src) + match_ips(dst) on 65,536-row batches (~4 % of the addresses
  hit; the rest are random public and private addresses): events/s;
* DNS: match_domains on 65,536-row batches of query names (20k distinct names, ~10 %
  subdomains of an indicator): events/s.

Results of new and head are compared (exit 1 when they differ). Medians of --runs runs,
interleaved (new, head, anchor in each run) so load on the machine hits all alike; all
figures are CPU time of this process (time.process_time), kernels warmed up first.

    python3 bench/intel.py                        # 1M indicators, 3 runs
    python3 bench/intel.py --runs 5 --indicators 1000000 --no-csv
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import statistics
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path = [_ROOT] + [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np

import pipeline.intel as new_intel
from sensors.packets import IP_DTYPE

BATCH = 65536


def load_head() -> object | None:
    """The committed pipeline/intel.py as module `intel_head` (None outside a git tree)."""
    try:
        text = subprocess.run(["git", "-C", _ROOT, "show", "HEAD:pipeline/intel.py"],
                              check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="intel-head-"), "intel_head.py")
    with open(path, "w") as fh:
        fh.write(text)
    spec = importlib.util.spec_from_file_location("intel_head", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["intel_head"] = module
    spec.loader.exec_module(module)
    return module


def indicator_values(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """(type, value): 60 % IPv4 addresses (octets 1-223), 10 % IPv4 CIDRs, 30 % domains."""
    n_ip, n_net = n * 6 // 10, n // 10
    octets = rng.integers(1, 224, (n_ip, 4))
    out = [("ip", f"{a}.{b}.{c}.{d}") for a, b, c, d in octets.tolist()]
    lengths = rng.choice([20, 24, 26, 28], n_net)
    addrs = rng.integers(0, 2**32, n_net, dtype=np.uint64)
    masks = (np.uint64(0xFFFFFFFF) << (32 - lengths).astype(np.uint64)) & np.uint64(0xFFFFFFFF)
    for a, length in zip((addrs & masks).tolist(), lengths.tolist(), strict=True):
        out.append(("cidr", f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/{length}"))
    out += [("domain", f"bad{i}.example{i % 1000}.test") for i in range(n - len(out))]
    return out


def listed_addresses(values: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(network address, addresses to draw from: min(size, 16)) of the first 50k ip/cidr
    indicators, for planting hits."""
    nets = [ipaddress.ip_network(v, strict=False) for k, v in values[:600_000:12]
            if k in ("ip", "cidr")]
    return (np.array([int(x.network_address) for x in nets], np.uint32),
            np.array([min(x.num_addresses, 16) for x in nets], np.uint32))


def flow_addresses(rng: np.random.Generator, listed: tuple[np.ndarray, np.ndarray], n: int
                   ) -> np.ndarray:
    """n IPv4 addresses as uint32: ~4 % listed (an ip, or inside a cidr), ~48 % random,
    ~48 % RFC 1918 (one side of most flows is local)."""
    addr = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    local = rng.random(n) < 0.5
    addr[local] = (np.uint32(0x0A000000) | (addr[local] & np.uint32(0x00FFFFFF)))
    start, span = listed
    hit = np.flatnonzero(rng.random(n) < 0.04)
    pick = rng.integers(0, start.size, hit.size)
    addr[hit] = start[pick] + (rng.integers(0, 2**16, hit.size).astype(np.uint32)
                               % span[pick])
    return addr


def to_column(addr: np.ndarray) -> np.ndarray:
    """uint32 IPv4 -> 16-byte IPv4-mapped column (sensors.packets.IP_DTYPE)."""
    raw = np.zeros((addr.size, 16), np.uint8)
    raw[:, 10:12] = 0xFF
    raw[:, 12:] = addr.astype(">u4").view(np.uint8).reshape(-1, 4)
    return raw.view(IP_DTYPE).reshape(-1)


def dns_names(rng: np.random.Generator, values: list[tuple[str, str]], n: int) -> np.ndarray:
    domains = [v for k, v in values if k == "domain"]
    distinct = [f"host{i}.site{i % 977}.example.org" for i in range(18_000)]
    distinct += [f"www{i}.{domains[int(j)]}" for i, j in
                 enumerate(rng.integers(0, len(domains), 2_000))]
    return np.array(distinct, object)[rng.integers(0, len(distinct), n)]


def timed(fn, *args) -> tuple[float, object]:
    """(CPU seconds of fn(*args), its result): CPU time moves far less than wall time on
    the shared machine (one process, one thread)."""
    t = time.process_time()
    out = fn(*args)
    return time.process_time() - t, out


def plain_ip_matcher(values: list[tuple[str, str]]):
    """Anchor: one set of network ints per prefix length, longest prefix first."""
    by_len: dict[int, set[int]] = {}
    for kind, v in values:
        if kind in ("ip", "cidr"):
            net = ipaddress.ip_network(v, strict=False)
            by_len.setdefault(net.prefixlen, set()).add(int(net.network_address))
    lengths = sorted(by_len, reverse=True)

    def match(addresses: list[str]) -> int:
        hits = 0
        for a in addresses:
            x = int(ipaddress.IPv4Address(a))
            for length in lengths:
                if (x >> (32 - length)) << (32 - length) in by_len[length]:
                    hits += 1
                    break
        return hits
    return match


def plain_domain_matcher(values: list[tuple[str, str]]):
    domains = {v for k, v in values if k == "domain"}

    def match(names: list[str]) -> int:
        hits = 0
        for name in names:
            labels = name.split(".")
            if any(".".join(labels[i:]) in domains for i in range(len(labels))):
                hits += 1
        return hits
    return match


def write_csv(values: list[tuple[str, str]], path: str) -> None:
    with open(path, "w") as fh:
        fh.write("type,value,description\n")
        fh.writelines(f"{k},{v},bench feed\n" for k, v in values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--indicators", type=int, default=1_000_000)
    ap.add_argument("--batches", type=int, default=8, help="65,536-row batches per run")
    ap.add_argument("--no-csv", action="store_true", help="skip the CSV load figures")
    ap.add_argument("--no-head", action="store_true", help="skip the committed version")
    args = ap.parse_args()
    head = None if args.no_head else load_head()
    mods = {"new": new_intel} | ({"head": head} if head is not None else {})
    rng = np.random.default_rng(7)
    values = indicator_values(rng, args.indicators)
    csv_path = os.path.join(tempfile.mkdtemp(prefix="intel-bench-"), "feed.csv")
    if not args.no_csv:
        write_csv(values, csv_path)
    listed = listed_addresses(values)
    src = [to_column(flow_addresses(rng, listed, BATCH)) for _ in range(args.batches)]
    dst = [to_column(flow_addresses(rng, listed, BATCH)) for _ in range(args.batches)]
    names = [dns_names(rng, values, BATCH) for _ in range(args.batches)]
    events = BATCH * args.batches
    print(f"{len(values):,} indicators; {args.batches} x {BATCH:,}-row batches; "
          f"{args.runs} runs; versions: {', '.join(mods)}")

    build: dict[str, list[float]] = {m: [] for m in mods}
    load: dict[str, list[float]] = {m: [] for m in mods}
    flows: dict[str, list[float]] = {m: [] for m in mods} | {"anchor": []}
    dns: dict[str, list[float]] = {m: [] for m in mods} | {"anchor": []}
    results: dict[str, tuple] = {}
    plain_ip, plain_dns = plain_ip_matcher(values), plain_domain_matcher(values)
    anchor_n = 20_000  # the anchor runs on a slice: it is ~100x slower
    anchor_src = [str(ipaddress.IPv4Address(int(x))) for x in
                  src[0][:anchor_n].view(">u4").reshape(-1, 4)[:, 3].tolist()]
    anchor_dst = [str(ipaddress.IPv4Address(int(x))) for x in
                  dst[0][:anchor_n].view(">u4").reshape(-1, 4)[:, 3].tolist()]
    anchor_names = names[0][:anchor_n].tolist()
    for run in range(args.runs):
        order = list(mods.items())  # alternate who goes first: load drifts within a run
        for name, mod in order if run % 2 == 0 else order[::-1]:
            objs = [mod.Indicator(k, v, "bench") for k, v in values]
            secs, iset = timed(mod.IndicatorSet, objs)
            build[name].append(secs)
            del objs
            if not args.no_csv:
                secs, _ = timed(lambda m=mod: m.IndicatorSet(m.load_source(
                    {"path": csv_path, "format": "csv", "name": "bench"})))
                load[name].append(secs)
            iset.match_ips(src[0][:2])  # kernels compiled / loaded from cache: not timed
            iset.match_domains(names[0][:2])
            t = time.process_time()
            ip_hits = [(iset.match_ips(s), iset.match_ips(d)) for s, d in zip(src, dst,
                                                                               strict=True)]
            flows[name].append(events / (time.process_time() - t))
            t = time.process_time()
            dns_hits = [iset.match_domains(b) for b in names]
            dns[name].append(events / (time.process_time() - t))
            if run == 0:
                results[name] = (np.concatenate([np.concatenate(p) for p in ip_hits]),
                                 np.concatenate(dns_hits))
            del iset
        secs, _ = timed(lambda: (plain_ip(anchor_src), plain_ip(anchor_dst)))
        flows["anchor"].append(anchor_n / secs)
        secs, _ = timed(plain_dns, anchor_names)
        dns["anchor"].append(anchor_n / secs)
        print(f"run {run + 1}/{args.runs} done", flush=True)

    med = {k: statistics.median(v) for k, v in build.items()}
    print("\nbuild IndicatorSet from Indicator objects (s):  " +
          ", ".join(f"{k} {v:.2f}" for k, v in med.items()) +
          (f"  -> {med['head'] / med['new']:.1f}x faster" if "head" in med else ""))
    if not args.no_csv:
        med = {k: statistics.median(v) for k, v in load.items()}
        print("load CSV + build (s):                          " +
              ", ".join(f"{k} {v:.2f}" for k, v in med.items()) +
              (f"  -> {med['head'] / med['new']:.1f}x faster" if "head" in med else ""))
    for title, table in (("flows, src+dst IPs (events/s)", flows),
                         ("DNS names (events/s)       ", dns)):
        med = {k: statistics.median(v) for k, v in table.items()}
        ratios = f"new/anchor {med['new'] / med['anchor']:.0f}x"
        if "head" in med:
            ratios += f", new/head {med['new'] / med['head']:.2f}x"
        print(f"{title}: " + ", ".join(f"{k} {v:,.0f}" for k, v in med.items()) +
              f"  ({ratios})")
    ip_new, dns_new = results["new"]
    print(f"hits: {int((ip_new >= 0).sum()):,} addresses of {ip_new.size:,}, "
          f"{int((dns_new >= 0).sum()):,} names of {dns_new.size:,}")
    if "head" in results:
        same = all(np.array_equal(a, b) for a, b in zip(results["new"], results["head"],
                                                         strict=True))
        print("new and head results identical:", same)
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
