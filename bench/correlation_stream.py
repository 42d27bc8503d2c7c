"""A seeded, realistic mixed event stream for the correlation benchmark, with planted attacks.

`make_stream(events, seed)` returns the stream as `EventBatch`es in arrival order, the way
sensors deliver them (one kind per batch, at most `batch_rows` rows), plus the list of
planted attacks (rule id and alert key each should produce).

Shape of the stream (times are event times, epoch-aligned hours):
* a 26-hour *history* phase of flows only (10% of the events), one batch per hour by
  default: internal clients browsing, and the host that later exfiltrates, sending its
  usual ~2 MB an hour (exfil_volume needs `min_history_windows` hours of baseline);
* a 3-hour *dense* phase with every kind: flows (TCP/UDP to many servers, DNS and NTP to
  internal servers, monitoring pings), DNS queries and responses with realistic names,
  ARP who-has/is-at, and the planted attacks.
Rows are ordered by when a sensor would emit them (start + min(duration, 30 s)), and the
dense phase is delivered in 300 s slices, flow batch then DNS then ARP: never more than
330 s out of order, inside the engine's default `allowed_lateness_s` (360 s).
Benign traffic scales with the event count (more clients and servers, same per-host
rates), so a larger stream is a larger network, not a noisier one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from pipeline.schema import KINDS, EventBatch
from sensors.packets import IP_DTYPE, ipv4_column

NS = 1_000_000_000
HOUR = 3600
BASE_S = 1_767_225_600  # 2026-01-01T00:00:00Z, hour aligned
HISTORY_S = 26 * HOUR
DENSE_S = 3 * HOUR
T0_S = BASE_S + HISTORY_S  # start of the dense phase
SLICE_S = 300  # dense-phase delivery slice (< allowed_lateness_s - emit delay)
EMIT_DELAY_CAP_S = 30

SENSOR = "sensor-1"
ZONE = "campus"
RESOLVER = "10.1.0.53"
NTP_SERVER = "10.1.0.123"
MONITOR = "10.1.0.5"
GATEWAY = "10.1.0.1"
GATEWAY_MAC = 0x0200_0A01_0001

# Inline threat-intel indicators the benchmark configures (intel_match has none by default).
INTEL_INDICATORS = [
    {"type": "ip", "value": "185.220.101.4", "description": "bench: known C2 address",
     "severity": "high"},
    {"type": "domain", "value": "evil-example.net", "description": "bench: malware domain"},
    {"type": "cidr", "value": "192.0.2.128/25", "description": "bench: bad range"},
]


# Unused address space the benchmark's sensor sees (darknet_scan has none by default).
DARKNETS = ["10.254.0.0/16"]


def bench_config() -> dict:
    """`correlation` overrides of the benchmark: the defaults plus inline indicators and a
    darknet."""
    return {"detectors": {"intel_match": {"indicators": INTEL_INDICATORS},
                          "darknet_scan": {"darknets": DARKNETS}}}


@dataclass(frozen=True)
class Planted:
    """One planted attack: the alert it must produce."""

    name: str
    rule_id: str
    key: str


@dataclass
class Stream:
    batches: list[EventBatch]
    planted: list[Planted]
    events: int
    counts: dict[str, int] = field(default_factory=dict)  # rows per kind


def ip4(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def ips(values: Iterable[int] | np.ndarray) -> np.ndarray:
    return ipv4_column(np.asarray(values, np.uint32).reshape(-1))


class Table:
    """Rows of one kind accumulated as column chunks (scalars broadcast), then concatenated."""

    def __init__(self, kind: str) -> None:
        self.kind = KINDS[kind]
        self.chunks: list[dict[str, np.ndarray]] = []

    def add(self, n: int, **cols) -> None:
        if n <= 0:
            return
        chunk = {}
        for name, value in cols.items():
            dtype = self.kind.field(name).dtype
            if dtype == IP_DTYPE:
                value = ips(np.broadcast_to(np.asarray(value, np.int64), (n,)))
            elif dtype.kind == "O":
                arr = np.empty(n, object)
                if isinstance(value, (list, np.ndarray)) and len(value) == n:
                    for i, v in enumerate(value):  # item by item: values may be lists
                        arr[i] = v
                else:
                    arr.fill(value)
                value = arr
            else:
                value = np.broadcast_to(np.asarray(value).astype(dtype), (n,)).copy()
            chunk[name] = value
        self.chunks.append(chunk)

    def build(self) -> dict[str, np.ndarray]:
        n = sum(len(next(iter(c.values()))) for c in self.chunks)
        out = {}
        for f in self.kind.fields:
            if f.dtype == object:
                col = np.empty(n, object)
                col.fill([] if f.column == "answers" else "")  # one shared, never mutated
            else:
                col = np.zeros(n, f.dtype)
            pos = 0
            for c in self.chunks:
                m = len(next(iter(c.values())))
                if f.column in c:
                    col[pos:pos + m] = c[f.column]
                pos += m
            out[f.column] = col
        out["observer_name"][:] = SENSOR
        out["ingress_zone"][:] = ZONE
        return out


def _ns(seconds: np.ndarray | float) -> np.ndarray:
    return (np.asarray(seconds, np.float64) * NS).astype(np.int64)


# --- benign background ------------------------------------------------------------------------

_WORDS = ("cloud", "data", "shop", "news", "mail", "media", "bank", "travel", "photo", "music",
          "game", "sport", "health", "learn", "code", "book", "food", "home", "auto", "energy",
          "social", "video", "stream", "market", "city", "green", "blue", "north", "smart",
          "open", "global", "digital", "secure", "express", "prime", "star", "nova", "alpha")
_TLDS = ("com", "net", "org", "de", "fr", "io", "co.uk", "eu", "info", "com.au")
_SUBS = ("www", "api", "cdn", "static", "img", "login", "m", "assets", "news", "mail", "", "")


def _domains(rng: np.random.Generator, n: int) -> list[str]:
    out = set()
    while len(out) < n:
        a, b = rng.choice(_WORDS, 2, replace=False)
        out.add(f"{a}{b}.{rng.choice(_TLDS)}")
    return sorted(out)


class Network:
    """Who exists: internal clients, internal servers, external servers (scaled by size)."""

    def __init__(self, rng: np.random.Generator, events: int) -> None:
        self.n_clients = max(200, events // 250)
        self.clients = ip4("10.1.16.0") + np.arange(self.n_clients)
        self.n_servers = max(2000, events // 50)
        # external servers spread over 23.0.0.0/8 .. 95.0.0.0/8, avoiding planted addresses
        self.servers = np.unique(rng.integers(ip4("23.0.0.0"), ip4("96.0.0.0"),
                                              self.n_servers * 2))[: self.n_servers]
        rank = np.arange(self.n_servers)
        p = 1.0 / (rank + 50.0)  # mild popularity (Zipf with an offset)
        self.server_p = p / p.sum()
        self.internal_servers = ip4("10.1.0.10") + np.arange(30)
        self.domains = _domains(rng, 400)
        dp = 1.0 / (np.arange(len(self.domains)) + 20.0)
        self.domain_p = dp / dp.sum()

    def mac(self, ip: np.ndarray | int) -> np.ndarray:
        return 0x0200_0000_0000 + np.asarray(ip, np.int64)


def background_flows(rng: np.random.Generator, net: Network, flows: Table, n: int,
                     start_s: float, span_s: float) -> None:
    """n benign flows in [start, start + span)."""
    ts = start_s + rng.random(n) * span_s
    client = rng.choice(net.clients, n)
    kind = rng.choice(6, n, p=[0.72, 0.12, 0.05, 0.06, 0.01, 0.04])
    # 0 web TCP to external servers, 1 DNS/UDP to the resolver, 2 internal TCP services,
    # 3 QUIC (UDP 443) to external servers, 4 failed TCP attempts, 5 other TCP (mail, ssh)
    server = rng.choice(net.servers, n, p=net.server_p)
    dst = np.where(kind == 1, ip4(RESOLVER),
                   np.where(kind == 2, rng.choice(net.internal_servers, n), server))
    dport = np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3, kind == 4],
        [rng.choice([443, 443, 443, 80], n), 53, rng.choice([445, 389, 88, 3268, 8080], n),
         443, rng.choice([443, 80, 8443, 8080, 25, 993, 22, 5222], n)],
        rng.choice([993, 587, 22, 8883, 5223], n))
    udp = (kind == 1) | (kind == 3)
    failed = kind == 4
    dur = np.where(kind == 1, rng.random(n) * 0.05, rng.exponential(8.0, n))
    dur = np.where(failed, rng.random(n) * 3, np.minimum(dur, 280))
    spk = np.where(failed, rng.integers(1, 3, n), rng.integers(3, 40, n))
    dpk = np.where(failed, 0, rng.integers(2, 60, n))
    spb = np.where(failed, 0, np.exp(rng.normal(6.5, 1.2, n)).astype(np.int64) + 1)
    dpb = np.where(failed, 0, np.exp(rng.normal(9.0, 1.5, n)).astype(np.int64) + 1)
    spk = np.where(kind == 1, 1, spk)
    dpk = np.where(kind == 1, 1, dpk)
    spb = np.where(kind == 1, rng.integers(20, 60, n), spb)
    dpb = np.where(kind == 1, rng.integers(40, 300, n), dpb)
    sf = np.where(udp, 0, np.where(failed, 0x02, 0x1B))
    df = np.where(udp | failed, 0, 0x1B)
    flows.add(n, timestamp=_ns(ts), end=_ns(ts + dur), src_ip=client, dst_ip=dst,
              src_port=rng.integers(1024, 65535, n), dst_port=dport,
              transport=np.where(udp, 17, 6), src_packets=spk, dst_packets=dpk,
              src_payload_bytes=spb, dst_payload_bytes=dpb,
              src_bytes=spb + spk * np.where(udp, 42, 66),
              dst_bytes=dpb + dpk * np.where(udp, 42, 66),
              src_tcp_flags=sf, dst_tcp_flags=df,
              conn_state=np.where(failed, "S0", "SF").tolist(),
              end_reason=np.where(udp, "idle", "fin").tolist())


def periodic_flows(rng: np.random.Generator, net: Network, flows: Table, start_s: float,
                   span_s: float) -> None:
    """NTP polls (every 1024 s, ntpd's settled poll) and the monitoring host's pings
    (dense phase only: the history phase is there for the exfil baseline)."""
    reps = int(span_s // 1024)
    phase = rng.random(net.n_clients) * 1024
    ts = (start_s + phase[:, None] + 1024 * np.arange(reps)[None, :]
          + rng.normal(0, 1.0, (net.n_clients, reps))).ravel()
    client = np.repeat(net.clients, reps)
    n = ts.size
    flows.add(n, timestamp=_ns(ts), end=_ns(ts + 0.01), src_ip=client, dst_ip=ip4(NTP_SERVER),
              src_port=123, dst_port=123, transport=17, src_packets=1, dst_packets=1,
              src_payload_bytes=48, dst_payload_bytes=48, src_bytes=90, dst_bytes=90,
              conn_state="SF", end_reason="idle")
    targets = net.internal_servers[:8]
    pings = int(span_s // 60)
    ts = (start_s + 60 * np.arange(pings)[:, None] + rng.random((pings, 8))).ravel()
    n = ts.size
    flows.add(n, timestamp=_ns(ts), end=_ns(ts + 0.001), src_ip=ip4(MONITOR),
              dst_ip=np.tile(targets, pings), src_port=8, dst_port=0, transport=1,
              src_packets=1, dst_packets=1, src_payload_bytes=56, dst_payload_bytes=56,
              src_bytes=98, dst_bytes=98, conn_state="OTH", end_reason="idle")


def background_dns(rng: np.random.Generator, net: Network, dns: Table, n_pairs: int,
                   start_s: float, span_s: float) -> None:
    """n_pairs benign query + response pairs from clients to the resolver."""
    ts = start_s + rng.random(n_pairs) * span_s
    client = rng.choice(net.clients, n_pairs)
    dom = rng.choice(len(net.domains), n_pairs, p=net.domain_p)
    sub = rng.choice(_SUBS, n_pairs)
    names = [f"{s}.{net.domains[d]}" if s else net.domains[d]
             for s, d in zip(sub.tolist(), dom.tolist(), strict=True)]
    ptr = rng.random(n_pairs) < 0.04  # reverse lookups
    for i in np.flatnonzero(ptr).tolist():
        a = int(net.servers[i % net.n_servers])
        names[i] = f"{a & 255}.{(a >> 8) & 255}.{(a >> 16) & 255}.{a >> 24}.in-addr.arpa"
    qtype = np.where(ptr, 12, rng.choice([1, 1, 1, 1, 28, 28, 65, 15], n_pairs))
    nx = rng.random(n_pairs) < 0.02  # typos and stale names
    for i in np.flatnonzero(nx).tolist():
        names[i] = names[i].replace(".", "-old.", 1) if "." in names[i] else names[i]
    sport = rng.integers(1024, 65535, n_pairs)
    dns_id = rng.integers(0, 65536, n_pairs)
    dns.add(n_pairs, timestamp=_ns(ts), src_ip=client, dst_ip=ip4(RESOLVER), src_port=sport,
            dst_port=53, transport=17, dns_id=dns_id, is_response=False, qname=names,
            qtype=qtype, qclass=1, flags=0x0100)
    rtt = rng.exponential(0.02, n_pairs)
    dns.add(n_pairs, timestamp=_ns(ts + rtt), src_ip=ip4(RESOLVER), dst_ip=client, src_port=53,
            dst_port=sport, transport=17, dns_id=dns_id, is_response=True, qname=names,
            qtype=qtype, qclass=1, rcode=np.where(nx, 3, 0), flags=0x8180)


def background_arp(rng: np.random.Generator, net: Network, arp: Table, n: int,
                   start_s: float, span_s: float) -> None:
    """Who-has for the gateway or a peer, is-at replies, a few boot announcements."""
    half = n // 2
    ts = start_s + rng.random(half) * span_s
    asker = rng.choice(net.clients, half)
    target = np.where(rng.random(half) < 0.7, ip4(GATEWAY), rng.choice(net.internal_servers, half))
    arp.add(half, timestamp=_ns(ts), src_ip=asker, dst_ip=target, operation=1,
            src_mac=net.mac(asker), eth_src_mac=net.mac(asker))
    reply_mac = np.where(target == ip4(GATEWAY), GATEWAY_MAC, net.mac(target))
    arp.add(half, timestamp=_ns(ts + 0.001), src_ip=target, dst_ip=asker, operation=2,
            src_mac=reply_mac, dst_mac=net.mac(asker), eth_src_mac=reply_mac)
    boots = max(1, n // 200)
    ts = start_s + rng.random(boots) * span_s
    host = rng.choice(net.clients, boots)
    for j in range(3):  # a booting host announces itself ~3 times
        arp.add(boots, timestamp=_ns(ts + j), src_ip=host, dst_ip=host, operation=1,
                src_mac=net.mac(host), eth_src_mac=net.mac(host), gratuitous=True)


# --- planted attacks --------------------------------------------------------------------------


def plant(rng: np.random.Generator, flows: Table, dns: Table, arp: Table,
          history: Table) -> list[Planted]:
    """Add one instance of every attack shape the default detectors find."""
    t0 = float(T0_S)
    planted: list[Planted] = []

    def tcp(n, ts, src, dst, dport, sf, df, spk=1, dpk=0, spb=0, dpb=0, dur=0.5, sport=None):
        sport = rng.integers(30000, 61000, n) if sport is None else sport
        flows.add(n, timestamp=_ns(ts), end=_ns(np.asarray(ts) + dur), src_ip=src, dst_ip=dst,
                  src_port=sport, dst_port=dport, transport=6, src_packets=spk,
                  dst_packets=dpk, src_payload_bytes=spb, dst_payload_bytes=dpb,
                  src_bytes=np.asarray(spb) + 66 * np.asarray(spk),
                  dst_bytes=np.asarray(dpb) + 66 * np.asarray(dpk),
                  src_tcp_flags=sf, dst_tcp_flags=df)

    def udp(n, ts, src, dst, sport, dport, spk=1, dpk=0, sb=80, db=0, dur=0.01):
        flows.add(n, timestamp=_ns(ts), end=_ns(np.asarray(ts) + dur), src_ip=src, dst_ip=dst,
                  src_port=sport, dst_port=dport, transport=17, src_packets=spk,
                  dst_packets=dpk, src_bytes=sb, dst_bytes=db,
                  src_payload_bytes=np.maximum(np.asarray(sb) - 42 * np.asarray(spk), 0),
                  dst_payload_bytes=np.maximum(np.asarray(db) - 42 * np.asarray(dpk), 0))

    # TCP vertical scan: SYNs to 200 ports of one host, refused by RST (nmap -sS)
    n = 200
    tcp(n, t0 + 600 + np.sort(rng.random(n)) * 20, ip4("203.0.113.5"), ip4("10.1.0.20"),
        rng.permutation(np.arange(1, 1025))[:n], 0x02, 0x14, dpk=1)
    planted.append(Planted("tcp vertical scan", "cirtsa.scan.vertical",
                           "203.0.113.5|10.1.0.20"))
    # TCP horizontal scan: SMB on 60 hosts over 10 minutes, unanswered
    n = 60
    tcp(n, t0 + 1200 + np.sort(rng.random(n)) * 600, ip4("198.51.100.7"),
        ip4("10.1.16.0") + rng.permutation(900)[:n], 445, 0x02, 0x00, spk=2)
    planted.append(Planted("tcp horizontal scan", "cirtsa.scan.horizontal",
                           "198.51.100.7|tcp/445"))
    # slow telnet scan through the darknet: 8 unused addresses, one every 15 min, 2 ports
    # (never 5 hosts on one port within an hour: only the darknet rule sees it)
    n = 8
    tcp(n, t0 + 2400 + np.arange(n) * 900.0 + rng.random(n), ip4("198.51.100.77"),
        ip4("10.254.0.0") + rng.permutation(65536)[:n], np.where(np.arange(n) % 2, 2323, 23),
        0x02, 0x00, spk=2)
    planted.append(Planted("darknet scan", "cirtsa.scan.darknet", "198.51.100.77"))
    # ICMP echo sweep of a /26 by an internal host (a third answer)
    n = 60
    ts = t0 + 1800 + np.sort(rng.random(n)) * 15
    flows.add(n, timestamp=_ns(ts), end=_ns(ts + 1), src_ip=ip4("10.1.5.9"),
              dst_ip=ip4("10.1.6.1") + np.arange(n), src_port=8, dst_port=0, transport=1,
              src_packets=1, dst_packets=(np.arange(n) % 3 == 0).astype(int),
              src_payload_bytes=56, src_bytes=98)
    planted.append(Planted("ICMP sweep", "cirtsa.sweep.icmp", "10.1.5.9"))
    # ARP sweep (arp-scan) of 100 addresses in 30 s
    n = 100
    ts = t0 + 2400 + np.sort(rng.random(n)) * 30
    sweeper = ip4("10.1.5.66")
    arp.add(n, timestamp=_ns(ts), src_ip=sweeper, dst_ip=ip4("10.1.16.0") + np.arange(n),
            operation=1, src_mac=0x0200_0A01_0542, eth_src_mac=0x0200_0A01_0542)
    planted.append(Planted("ARP sweep", "cirtsa.sweep.arp", "10.1.5.66"))
    # UDP vertical scan: 50 ports of one host, no answer
    n = 50
    udp(n, t0 + 3000 + np.sort(rng.random(n)) * 40, ip4("203.0.113.9"), ip4("10.1.0.30"),
        rng.integers(40000, 60000, n), rng.permutation(np.arange(1, 1024))[:n])
    planted.append(Planted("UDP vertical scan", "cirtsa.scan.udp_vertical",
                           "203.0.113.9|10.1.0.30"))
    # UDP horizontal scan: SNMP on 40 hosts over 20 minutes
    n = 40
    udp(n, t0 + 3300 + np.sort(rng.random(n)) * 1200, ip4("203.0.113.10"),
        ip4("10.1.16.0") + rng.permutation(900)[:n], rng.integers(40000, 60000, n), 161)
    planted.append(Planted("UDP horizontal scan", "cirtsa.scan.udp_horizontal",
                           "203.0.113.10|udp/161"))
    # SYN flood with spoofed sources: 300 attempts/s for 20 s on one web server
    n = 6000
    ts = t0 + 4000 + np.sort(rng.random(n)) * 20
    acked = rng.random(n) < 0.5
    tcp(n, ts, rng.integers(ip4("100.0.0.0"), ip4("120.0.0.0"), n), ip4("10.1.0.80"), 80,
        0x02, np.where(acked, 0x12, 0), dpk=acked.astype(int))
    planted.append(Planted("SYN flood (spoofed)", "cirtsa.dos.syn_flood", "10.1.0.80"))
    # volumetric UDP flood: 60 one-way flows of 10k packets in 10 s (~60k packets/s)
    n = 60
    ts = t0 + 4500 + np.sort(rng.random(n)) * 10
    udp(n, ts, ip4("203.0.113.0") + rng.integers(100, 200, n), ip4("10.1.0.81"),
        rng.integers(40000, 60000, n), 9999, spk=10_000, sb=10_000 * 100, dur=1.0)
    planted.append(Planted("UDP packet flood", "cirtsa.dos.flood", "10.1.0.81"))
    # backscatter: a remote SYN-flood victim SYN-ACKs 100 of our addresses it never heard from
    n = 100
    ts = t0 + 5000 + np.sort(rng.random(n)) * 1800
    tcp(n, ts, ip4("10.1.16.0") + rng.permutation(3000)[:n], ip4("192.0.2.50"),
        rng.integers(1024, 65535, n), 0x04, 0x12, spk=1, dpk=1, sport=80)
    planted.append(Planted("DoS backscatter", "cirtsa.dos.backscatter", "192.0.2.50"))
    # DNS reflection on one host: 30 resolvers send 500 KB each of unsolicited answers
    n = 30
    ts = t0 + 5500 + np.sort(rng.random(n)) * 40
    udp(n, ts, ip4("198.18.0.0") + np.arange(n) * 7, ip4("10.1.0.90"), 53,
        rng.integers(1024, 65535, n), spk=350, sb=500_000, dur=5.0)
    planted.append(Planted("DNS reflection", "cirtsa.dos.reflection", "10.1.0.90"))
    # SSH and FTP brute force: 40 short login-sized sessions in 4 minutes each
    for base, port, attacker, victim in ((6000, 22, "203.0.113.20", "10.1.0.22"),
                                         (6300, 21, "203.0.113.21", "10.1.0.21")):
        n = 40
        ts = t0 + base + np.sort(rng.random(n)) * 240
        tcp(n, ts, ip4(attacker), ip4(victim), port, 0x1B, 0x1B, spk=12, dpk=10,
            spb=rng.integers(1500, 3000, n), dpb=rng.integers(1500, 4000, n),
            dur=rng.uniform(2.0, 8.0, n), sport=40000 + np.arange(n) * 3)
        planted.append(Planted(f"{'SSH' if port == 22 else 'FTP'} brute force",
                               "cirtsa.brute_force.sessions",
                               f"{attacker}|{victim}|tcp/{port}"))
    # beaconing with jitter: an implant calls home every 60 s +- 10% over 3 h (HTTPS + DNS)
    beacon_ts = t0 + 30 + np.cumsum(rng.uniform(54, 66, int(DENSE_S // 60) - 2))
    n = beacon_ts.size
    tcp(n, beacon_ts, ip4("10.1.3.33"), ip4("185.100.87.1"), 443, 0x1B, 0x1B, spk=6, dpk=5,
        spb=rng.integers(700, 760, n), dpb=rng.integers(300, 340, n), dur=0.3)
    planted.append(Planted("HTTPS beacon", "cirtsa.beacon.flow_encrypted",
                           "10.1.3.33|185.100.87.1"))
    dns.add(n, timestamp=_ns(beacon_ts - 0.05), src_ip=ip4("10.1.3.33"), dst_ip=ip4(RESOLVER),
            src_port=rng.integers(1024, 65535, n), dst_port=53, transport=17,
            is_response=False, qname="update.c2-example.net", qtype=1, qclass=1)
    planted.append(Planted("DNS beacon", "cirtsa.beacon.dns", "10.1.3.33|update.c2-example.net"))
    # long connection: a reverse shell kept open, reported in 1800 s pieces
    starts = t0 + 100 + 1800 * np.arange(3)
    tcp(3, starts, ip4("10.1.4.44"), ip4("45.33.1.2"), 22, 0x18, 0x18, spk=400, dpk=380,
        spb=40_000, dpb=60_000, dur=1800.0, sport=51515)
    planted.append(Planted("long connection", "cirtsa.c2.long_connection",
                           "10.1.4.44|45.33.1.2|tcp/22"))
    # strobe: 4000 connections to one server in 50 minutes
    n = 4000
    ts = t0 + 7000 + np.sort(rng.random(n)) * 3000
    tcp(n, ts, ip4("10.1.7.77"), ip4("93.184.216.34"), 80, 0x1B, 0x1B, spk=5, dpk=4,
        spb=rng.integers(200, 600, n), dpb=rng.integers(500, 3000, n), dur=0.2)
    planted.append(Planted("connection strobe", "cirtsa.c2.strobe", "10.1.7.77|93.184.216.34"))
    # large upload: 30 x 5 MB to one external host in 30 minutes
    n = 30
    ts = t0 + 7500 + np.sort(rng.random(n)) * 1800
    tcp(n, ts, ip4("10.1.8.88"), ip4("51.15.0.9"), 443, 0x1B, 0x1B, spk=3500, dpk=900,
        spb=5_000_000, dpb=rng.integers(20_000, 60_000, n), dur=30.0)
    planted.append(Planted("large upload", "cirtsa.exfil.upload", "10.1.8.88|51.15.0.9"))
    # volume exfiltration: a host with 28 h of ~2 MB/h outbound sends 80 MB in hour 28
    leaker = ip4("10.1.9.99")
    for hour in range(HISTORY_S // HOUR + 2):
        table = history if hour < HISTORY_S // HOUR else flows
        n = 20
        ts = BASE_S + hour * HOUR + np.sort(rng.random(n)) * HOUR
        table.add(n, timestamp=_ns(ts), end=_ns(ts + 5), src_ip=leaker,
                  dst_ip=rng.choice([ip4("52.1.1.1"), ip4("52.2.2.2"), ip4("52.3.3.3")], n),
                  src_port=rng.integers(1024, 65535, n), dst_port=443, transport=6,
                  src_packets=80, dst_packets=60, src_payload_bytes=95_000,
                  dst_payload_bytes=40_000, src_bytes=100_000, dst_bytes=44_000,
                  src_tcp_flags=0x1B, dst_tcp_flags=0x1B)
    n = 40
    ts = t0 + 7300 + np.sort(rng.random(n)) * 1700
    tcp(n, ts, leaker, ip4("62.0.0.0") + np.arange(n) * 256 + 10, 443, 0x1B, 0x1B, spk=1500,
        dpk=400, spb=2_000_000, dpb=20_000, dur=20.0)
    planted.append(Planted("volume exfiltration", "cirtsa.exfil.volume", "10.1.9.99"))
    # ICMP tunnel: 200 echo flows of 10 x 1000-byte payloads each way in 10 minutes
    n = 200
    ts = t0 + 8000 + np.sort(rng.random(n)) * 600
    flows.add(n, timestamp=_ns(ts), end=_ns(ts + 2), src_ip=ip4("10.1.10.10"),
              dst_ip=ip4("198.51.100.200"), src_port=8, dst_port=0, transport=1,
              src_packets=10, dst_packets=10, src_payload_bytes=10_000,
              dst_payload_bytes=10_000, src_bytes=10_420, dst_bytes=10_420)
    planted.append(Planted("ICMP tunnel", "cirtsa.exfil.icmp_tunnel",
                           "10.1.10.10|198.51.100.200"))
    # DNS tunnel: 300 TXT queries with hex-encoded labels under one zone in 4 minutes
    n = 300
    ts = t0 + 8500 + np.sort(rng.random(n)) * 240
    hexes = rng.integers(0, 16, (n, 40))
    names = ["".join("0123456789abcdef"[x] for x in row[:32]) + "."
             + "".join("0123456789abcdef"[x] for x in row[32:]) + ".t.tunnel-example.com"
             for row in hexes.tolist()]
    sport = rng.integers(1024, 65535, n)
    dns.add(n, timestamp=_ns(ts), src_ip=ip4("10.1.11.11"), dst_ip=ip4(RESOLVER),
            src_port=sport, dst_port=53, transport=17, is_response=False, qname=names,
            qtype=16, qclass=1)
    answers = [[{"name": q, "type": "TXT", "class": "IN", "ttl": 0, "data": "x" * 220}]
               for q in names]
    dns.add(n, timestamp=_ns(ts + 0.05), src_ip=ip4(RESOLVER), dst_ip=ip4("10.1.11.11"),
            src_port=53, dst_port=sport, transport=17, is_response=True, qname=names,
            qtype=16, qclass=1, answers=answers)
    planted.append(Planted("DNS tunnel", "cirtsa.dns.tunnel", "10.1.11.11|tunnel-example.com"))
    # one query carrying 60 base32 characters of data in a label
    label = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz234567"), 60))
    dns.add(1, timestamp=_ns(t0 + 8700), src_ip=ip4("10.1.11.12"), dst_ip=ip4(RESOLVER),
            src_port=5353 + 1000, dst_port=53, transport=17, is_response=False,
            qname=f"{label}.exfil-example.org", qtype=1, qclass=1)
    planted.append(Planted("DNS exfil name", "cirtsa.dns.exfil_name",
                           "10.1.11.12|exfil-example.org"))
    # DGA: NXDOMAIN for 40 random registrable domains in 2 minutes
    n = 40
    ts = t0 + 9000 + np.sort(rng.random(n)) * 120
    letters = list("abcdefghijklmnopqrstuvwxyz")
    dga = [("".join(rng.choice(letters, int(rng.integers(12, 17)))) + rng.choice([".com", ".net"]))
           for _ in range(n)]
    sport = rng.integers(1024, 65535, n)
    dns.add(n, timestamp=_ns(ts), src_ip=ip4("10.1.12.12"), dst_ip=ip4(RESOLVER), src_port=sport,
            dst_port=53, transport=17, is_response=False, qname=dga, qtype=1, qclass=1)
    dns.add(n, timestamp=_ns(ts + 0.03), src_ip=ip4(RESOLVER), dst_ip=ip4("10.1.12.12"),
            src_port=53, dst_port=sport, transport=17, is_response=True, qname=dga, qtype=1,
            qclass=1, rcode=3)
    planted.append(Planted("DGA lookups", "cirtsa.dns.dga", "10.1.12.12"))
    # threat-intel hits: a connection to a known C2 address, a lookup of a malware domain,
    # and an inbound probe from a listed range
    tcp(1, np.array([t0 + 9500.0]), ip4("10.1.13.13"), ip4("185.220.101.4"), 443, 0x1B, 0x1B,
        spk=8, dpk=7, spb=900, dpb=4000, dur=2.0)
    planted.append(Planted("intel IP hit", "cirtsa.intel.ip", "ip:185.220.101.4|10.1.13.13"))
    dns.add(1, timestamp=_ns(t0 + 9510), src_ip=ip4("10.1.13.14"), dst_ip=ip4(RESOLVER),
            src_port=40001, dst_port=53, transport=17, is_response=False,
            qname="cdn.evil-example.net", qtype=1, qclass=1)
    dns.add(1, timestamp=_ns(t0 + 9510.02), src_ip=ip4(RESOLVER), dst_ip=ip4("10.1.13.14"),
            src_port=53, dst_port=40001, transport=17, is_response=True,
            qname="cdn.evil-example.net", qtype=1, qclass=1)
    planted.append(Planted("intel domain hit", "cirtsa.intel.domain",
                           "domain:evil-example.net|10.1.13.14"))
    tcp(1, np.array([t0 + 9520.0]), ip4("192.0.2.200"), ip4("10.1.0.25"), 3389, 0x02, 0x14,
        dpk=1)
    planted.append(Planted("intel CIDR hit", "cirtsa.intel.ip",
                           "cidr:192.0.2.128/25|10.1.0.25"))
    # ARP spoofing of the gateway: an attacker answers is-at for it every 2 s and announces
    # it gratuitously, while the real gateway keeps answering
    n = 60
    ts = t0 + 9800 + np.arange(n) * 2.0
    evil_mac = 0x0266_6666_6666
    arp.add(n, timestamp=_ns(ts), src_ip=ip4(GATEWAY), dst_ip=ip4("10.1.16.0") + np.arange(n),
            operation=2, src_mac=evil_mac, eth_src_mac=evil_mac)
    arp.add(n, timestamp=_ns(ts + 1), src_ip=ip4(GATEWAY), dst_ip=ip4(GATEWAY), operation=1,
            src_mac=evil_mac, eth_src_mac=evil_mac, gratuitous=True)
    arp.add(5, timestamp=_ns(t0 + 9805 + np.arange(5) * 20.0), src_ip=ip4(GATEWAY),
            dst_ip=ip4("10.1.16.7"), operation=2, src_mac=GATEWAY_MAC, eth_src_mac=GATEWAY_MAC)
    planted.append(Planted("ARP spoofing", "cirtsa.arp.ip_conflict", GATEWAY))
    planted.append(Planted("gratuitous ARP storm", "cirtsa.arp.gratuitous_storm",
                           "02-66-66-66-66-66"))
    return planted


# --- assembly ---------------------------------------------------------------------------------


def _emit_order(kind: str, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(emit time ns, order): a flow record is emitted when it ends (capped), others at once."""
    t = cols["timestamp"]
    emit = t.copy()
    if kind == "flow":
        emit = t + np.minimum(cols["end"] - t, EMIT_DELAY_CAP_S * NS)
    order = np.argsort(emit, kind="stable")
    return emit[order], order


def _take(kind: str, cols: dict[str, np.ndarray], index: np.ndarray) -> EventBatch:
    return EventBatch(kind, {c: v[index] for c, v in cols.items()})


def make_stream(events: int = 1_000_000, seed: int = 1, batch_rows: int = 65_536,
                history_slice_s: int = HOUR) -> Stream:
    """The benchmark stream: ~`events` rows in total (planted attacks included).

    History-phase flows are delivered in `history_slice_s` slices (a quiet network's
    sensor still flushes its records at least hourly); 0 packs them into full batches of
    `batch_rows` regardless of the hours each spans (a replayed capture of a quiet day).
    """
    rng = np.random.default_rng(seed)
    net = Network(rng, events)
    history, flows, dns, arp = Table("flow"), Table("flow"), Table("dns"), Table("arp")
    planted = plant(rng, flows, dns, arp, history)
    periodic_flows(rng, net, flows, float(T0_S), float(DENSE_S))
    fixed = sum(len(next(iter(c.values()))) for t in (history, flows, dns, arp) for c in t.chunks)
    free = max(events - fixed, 1000)
    background_flows(rng, net, history, int(free * 0.10), float(BASE_S), float(HISTORY_S))
    background_flows(rng, net, flows, int(free * 0.66), float(T0_S), float(DENSE_S))
    background_dns(rng, net, dns, int(free * 0.11), float(T0_S), float(DENSE_S))
    background_arp(rng, net, arp, int(free * 0.02), float(T0_S), float(DENSE_S))

    batches: list[EventBatch] = []
    hist_cols = history.build()
    emit, order = _emit_order("flow", hist_cols)
    # flows only: a batch may span a whole slice (hours) without any row arriving late
    cuts = (np.searchsorted(emit, (BASE_S + np.arange(0, HISTORY_S, history_slice_s)) * NS)
            if history_slice_s > 0 else np.zeros(1, np.int64))
    for lo, hi in zip(cuts.tolist(), [*cuts[1:].tolist(), order.size], strict=True):
        for s in range(lo, hi, batch_rows):
            batches.append(_take("flow", hist_cols, order[s:min(s + batch_rows, hi)]))
    dense = []
    for kind, table in (("flow", flows), ("dns", dns), ("arp", arp)):
        cols = table.build()
        emit, order = _emit_order(kind, cols)
        dense.append((kind, cols, emit, order))
    t = T0_S * NS
    end = (T0_S + DENSE_S + 2 * HOUR) * NS
    while t < end:
        for kind, cols, emit, order in dense:
            lo, hi = np.searchsorted(emit, [t, t + SLICE_S * NS])
            for s in range(lo, hi, batch_rows):
                batches.append(_take(kind, cols, order[s:min(s + batch_rows, hi)]))
        t += SLICE_S * NS
    counts: dict[str, int] = {}
    for b in batches:
        counts[b.kind] = counts.get(b.kind, 0) + len(b)
    return Stream(batches, planted, sum(counts.values()), counts)
