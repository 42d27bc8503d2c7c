"""Plain-Python twin of the correlation engine and of every default detector.

Dicts, sets and loops over rows; no numpy in the detection logic. Input batches are turned
into lists of row tuples up front (`rows_of`), and that cost is part of what the benchmark
measures. Same semantics as correlation/engine.py (epoch-aligned hopping windows, watermark
= newest event time - allowed_lateness_s, windows closed in order exactly once, late rows
kept for their open windows and dropped when none is open, lazy buffer compaction and the
max_buffered_rows cap, Zeek-style suppression) and as each correlation/<detector>.py,
thresholds read from the same configuration. `bench/correlation.py` runs both on the same
stream and asserts the same alerts; tests/test_plain_twin.py does so on a small stream.

Each finding carries the alert's identity (alert id, rule, key, window), severity and the
main evidence counts, named as in the engine's `cirtsa.evidence.*` (see `MAIN_COUNTS`).
Scope: event kinds flow, dns and arp (what the benchmark stream holds; beaconing's tls/http
sources are not twinned), and intel indicators of type ip, cidr and domain.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Mapping

from pipeline.config import deep_merge, load_config
from pipeline.intel import Indicator, IndicatorSet
from pipeline.schema import TRANSPORT_NAMES, EventBatch

try:
    from publicsuffixlist import PublicSuffixList
except ImportError:  # pragma: no cover
    PublicSuffixList = None

NS = 1_000_000_000

# Row layouts: one tuple per event, fields by position (fast to build with zip, fast to read).
FLOW_COLS = ("timestamp", "end", "src_ip", "dst_ip", "src_port", "dst_port", "transport",
             "src_packets", "dst_packets", "src_bytes", "dst_bytes", "src_payload_bytes",
             "dst_payload_bytes", "src_tcp_flags", "dst_tcp_flags")
(TS, END, SRC, DST, SPORT, DPORT, PROTO, SPK, DPK, SB, DB, SPB, DPB, SF, DF) = range(15)
DNS_COLS = ("timestamp", "src_ip", "dst_ip", "src_port", "dst_port", "is_response", "qname",
            "qtype", "rcode")
(_, D_SRC, D_DST, D_SPORT, D_DPORT, D_RESP, D_QNAME, D_QTYPE, D_RCODE) = range(9)
ARP_COLS = ("timestamp", "src_ip", "dst_ip", "operation", "src_mac", "gratuitous")
(_, A_SRC, A_DST, A_OP, A_MAC, A_GRAT) = range(6)
ROW_COLS = {"flow": FLOW_COLS, "dns": DNS_COLS, "arp": ARP_COLS}

# rule id -> the evidence counts compared between engine and twin
MAIN_COUNTS = {
    "cirtsa.scan.vertical": ("attempts", "distinct_ports"),
    "cirtsa.scan.horizontal": ("attempts", "distinct_hosts"),
    "cirtsa.scan.darknet": ("attempts", "distinct_addresses"),
    "cirtsa.brute_force.sessions": ("flows", "sessions"),
    "cirtsa.sweep.icmp": ("probes", "distinct_hosts"),
    "cirtsa.sweep.arp": ("requests", "distinct_targets"),
    "cirtsa.scan.udp_vertical": ("probes", "distinct_ports"),
    "cirtsa.scan.udp_horizontal": ("probes", "distinct_hosts"),
    "cirtsa.dos.syn_flood": ("attempts", "peak_per_s"),
    "cirtsa.dos.flood": ("flows", "packets"),
    "cirtsa.dos.backscatter": ("flows", "distinct_receivers"),
    "cirtsa.dos.reflection": ("flows", "distinct_reflectors", "reply_bytes"),
    "cirtsa.beacon.flow": ("connections", "contacts"),
    "cirtsa.beacon.flow_encrypted": ("connections", "contacts"),
    "cirtsa.beacon.dns": ("connections", "contacts"),
    "cirtsa.c2.long_connection": ("pieces",),
    "cirtsa.c2.strobe": ("connections",),
    "cirtsa.exfil.upload": ("flows", "bytes_out", "bytes_in"),
    "cirtsa.exfil.volume": ("bytes_out", "bytes_in", "history_windows"),
    "cirtsa.exfil.icmp_tunnel": ("flows", "payload_bytes", "packets"),
    "cirtsa.dns.tunnel": ("queries", "unique_names"),
    "cirtsa.dns.exfil_name": ("queries", "unique_names"),
    "cirtsa.dns.dga": ("nxdomain_responses", "nxdomain_domains"),
    "cirtsa.intel.ip": ("hits",),
    "cirtsa.intel.domain": ("hits",),
    "cirtsa.arp.ip_conflict": ("macs",),
    "cirtsa.arp.gateway_spoof": ("macs",),
    "cirtsa.arp.gratuitous_storm": ("gratuitous",),
}


def alert_id(rule_id: str, key: str, window_start_ns: int) -> str:
    """Same definition as correlation/alerts.py (re-implemented: the twin checks it too)."""
    text = "\x1f".join((rule_id, key, str(int(window_start_ns))))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_V4_PREFIX = b"\x00" * 10 + b"\xff\xff"


def ip_text(raw: bytes) -> str:
    if raw[:12] == _V4_PREFIX:
        return f"{raw[12]}.{raw[13]}.{raw[14]}.{raw[15]}"
    return str(ipaddress.IPv6Address(raw))


def mac_text(value: int) -> str:
    return "-".join(f"{b:02X}" for b in int(value).to_bytes(8, "big")[2:])


class Cidrs:
    """Membership of 16-byte addresses in CIDR blocks (IPv4 as IPv4-mapped IPv6)."""

    def __init__(self, cidrs) -> None:
        self.blocks = []
        for text in cidrs:
            net = ipaddress.ip_network(str(text), strict=False)
            if net.version == 4:
                net = ipaddress.ip_network(f"::ffff:{net.network_address}/{96 + net.prefixlen}")
            self.blocks.append((int(net.network_address), int(net.netmask)))
        self.memo: dict[bytes, bool] = {}

    def __contains__(self, raw: bytes) -> bool:
        got = self.memo.get(raw)
        if got is None:
            value = int.from_bytes(raw, "big")
            got = any((value & mask) == addr for addr, mask in self.blocks)
            if len(self.memo) > 1_000_000:
                self.memo.clear()
            self.memo[raw] = got
        return got


GROUP_ADDRESSES = Cidrs(["224.0.0.0/4", "255.255.255.255/32", "ff00::/8"])


def rows_of(batch: EventBatch) -> list[tuple]:
    """The batch as row tuples (ROW_COLS order): the up-front conversion, counted."""
    cols = ROW_COLS.get(batch.kind)
    if cols is None:
        raise NotImplementedError(f"plain twin: event kind {batch.kind!r} is not twinned")
    return list(zip(*(batch.columns[c].tolist() for c in cols), strict=True))


# --- windows ----------------------------------------------------------------------------------


class Spec:
    def __init__(self, config: Mapping) -> None:
        self.size = int(round(float(config["window_s"]) * NS))
        self.hop = int(round(float(config["hop_s"]) * NS))

    def first_index(self, t: int) -> int:
        return (t - self.size) // self.hop + 1

    def last_index(self, t: int) -> int:
        return t // self.hop


def in_range(rows: list[tuple], spec: Spec, fk: int, lk: int) -> list[tuple]:
    """Rows inside some window fk..lk."""
    lo, hi = fk * spec.hop, lk * spec.hop + spec.size
    return [r for r in rows if lo <= r[0] < hi]


def windows_of(t: int, spec: Spec, fk: int, lk: int) -> range:
    """Indices of the closing windows fk..lk containing time t, latest first (as
    WindowRange.assign orders copies)."""
    last = min(t // spec.hop, lk)
    first = max((t - spec.size) // spec.hop + 1, fk)
    return range(last, first - 1, -1)


def group_windows(rows: list[tuple], keys: list, spec: Spec, fk: int, lk: int
                  ) -> dict[tuple, list[int]]:
    """(window, key) -> row positions, in the order the engine's copies come (copy j = the
    window last_index - j; within one window rows stay in arrival order)."""
    per_copy: dict[int, list[tuple[int, object]]] = {}
    for i, r in enumerate(rows):
        t = r[0]
        last = t // spec.hop
        for k in windows_of(t, spec, fk, lk):
            per_copy.setdefault(last - k, []).append((i, k))
    groups: dict[tuple, list[int]] = {}
    for j in sorted(per_copy):
        for i, k in per_copy[j]:
            groups.setdefault((k, keys[i]), []).append(i)
    return groups


class Finding:
    __slots__ = ("rule_id", "key", "window_start", "window_end", "severity", "counts")

    def __init__(self, rule_id: str, key: str, k: int, spec: Spec, severity: int,
                 counts: dict) -> None:
        self.rule_id, self.key = rule_id, key
        self.window_start, self.window_end = k * spec.hop, k * spec.hop + spec.size
        self.severity, self.counts = severity, counts

    def record(self) -> dict:
        return {"id": alert_id(self.rule_id, self.key, self.window_start),
                "rule": self.rule_id, "key": self.key, "window_start": self.window_start,
                "window_end": self.window_end, "severity": self.severity,
                "counts": dict(self.counts)}


class PlainDetector:
    name = ""
    kinds: tuple[str, ...] = ("flow",)

    def __init__(self, config: Mapping) -> None:
        self.config = dict(config)
        self.spec = Spec(config)
        self.suppress = int(round(float(config.get("suppress_s", 0)) * NS))
        self.max_rows = int(config.get("max_buffered_rows", 5_000_000))

    def select(self, kind: str, row: tuple) -> bool:
        raise NotImplementedError

    def detect(self, rows: dict[str, list[tuple]], fk: int, lk: int) -> list[Finding]:
        raise NotImplementedError


# --- distinct-target detectors (scans, sweeps) ------------------------------------------------


class DistinctTarget(PlainDetector):
    """Distinct targets per (window, key) >= threshold."""

    rule_id = ""
    threshold_key = ""
    counts_names = ("", "")

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.threshold = int(config[self.threshold_key])

    def key_target(self, row: tuple):
        raise NotImplementedError

    def key_text(self, row: tuple) -> str:
        raise NotImplementedError

    def evidence_target(self, row: tuple):
        return self.key_target(row)[1]

    def detect(self, rows, fk, lk):
        kind = self.kinds[0]
        rows = in_range(rows.get(kind, []), self.spec, fk, lk)
        kt = [self.key_target(r) for r in rows]
        whole: dict = {}
        for key, target in kt:  # necessary condition over the whole range
            whole.setdefault(key, set()).add(target)
        keep = [i for i, (key, _) in enumerate(kt) if len(whole[key]) >= self.threshold]
        sub = [rows[i] for i in keep]
        groups = group_windows(sub, [kt[i][0] for i in keep], self.spec, fk, lk)
        out = []
        for (k, _), members in groups.items():
            targets = {kt[keep[i]][1] for i in members}
            if len(targets) >= self.threshold:
                r = [sub[i] for i in members]
                out.append(Finding(self.rule_id, self.key_text(r[0]), k, self.spec,
                                   self.severity, self.counts(r)))
        return out

    severity = 21

    def counts(self, r: list[tuple]) -> dict:
        a, b = self.counts_names
        return {a: len(r), b: len({self.evidence_target(x) for x in r})}


def failed_attempt(r: tuple) -> bool:
    sf, df = r[SF], r[DF]
    if r[PROTO] != 6 or r[SPK] <= 0:
        return False
    no_payload = r[SPB] == 0 and r[DPB] == 0
    resp_syn = df & 0x02
    if sf & 0x02:
        if not sf & 0x10 and not resp_syn:
            return True  # unanswered / refused
        return bool(resp_syn and no_payload and (sf | df) & 0x04)  # half-open
    return not sf & 0x16 and not resp_syn and no_payload  # stealth


class VerticalScan(DistinctTarget):
    name, rule_id, threshold_key = "port_scan_vertical", "cirtsa.scan.vertical", "vertical_ports"
    counts_names = ("attempts", "distinct_ports")

    def select(self, kind, r):
        return failed_attempt(r)

    def key_target(self, r):
        return (r[SRC], r[DST]), r[DPORT]

    def key_text(self, r):
        return f"{ip_text(r[SRC])}|{ip_text(r[DST])}"


class HorizontalScan(DistinctTarget):
    name, rule_id = "port_scan_horizontal", "cirtsa.scan.horizontal"
    threshold_key = "horizontal_hosts"
    counts_names = ("attempts", "distinct_hosts")

    def select(self, kind, r):
        return failed_attempt(r)

    def key_target(self, r):
        return (r[SRC], r[DPORT]), r[DST]

    def key_text(self, r):
        return f"{ip_text(r[SRC])}|tcp/{r[DPORT]}"


class DarknetScan(DistinctTarget):
    name, rule_id, threshold_key = "darknet_scan", "cirtsa.scan.darknet", "min_addresses"
    counts_names = ("attempts", "distinct_addresses")

    def __init__(self, config):
        super().__init__(config)
        self.darknets = Cidrs(config.get("darknets") or [])
        self.service = {int(p) for p in config["service_source_ports"]}

    def select(self, kind, r):
        if not self.darknets.blocks or r[SPK] <= 0 or r[DST] not in self.darknets:
            return False
        proto, sf = r[PROTO], r[SF]
        if proto == 6:  # SYN without ACK, or a stealth probe: never a reply
            return bool((sf & 0x02 and not sf & 0x10) or not sf & 0x16)
        if proto == 17:
            return r[SPORT] not in self.service
        return (proto == 1 and r[SPORT] == 8) or (proto == 58 and r[SPORT] == 128)

    def key_target(self, r):
        return r[SRC], r[DST]

    def key_text(self, r):
        return ip_text(r[SRC])


class IcmpSweep(DistinctTarget):
    name, rule_id, threshold_key = "icmp_sweep", "cirtsa.sweep.icmp", "min_hosts"
    counts_names = ("probes", "distinct_hosts")

    def select(self, kind, r):
        return (((r[PROTO] == 1 and r[SPORT] == 8) or (r[PROTO] == 58 and r[SPORT] == 128))
                and r[DST] not in GROUP_ADDRESSES)

    def key_target(self, r):
        return r[SRC], r[DST]

    def key_text(self, r):
        return ip_text(r[SRC])


class ArpSweep(DistinctTarget):
    name, rule_id, threshold_key = "arp_sweep", "cirtsa.sweep.arp", "min_targets"
    kinds = ("arp",)
    counts_names = ("requests", "distinct_targets")

    def select(self, kind, r):
        return (r[A_OP] == 1 and not r[A_GRAT]) or r[A_OP] == 2

    def key_target(self, r):
        # replies only name live hosts: a key of their own with one constant target
        if r[A_OP] == 2:
            return ("reply", r[A_SRC]), 0
        return r[A_SRC], r[A_DST]

    def evidence_target(self, r):
        return r[A_DST]

    def key_text(self, r):
        return ip_text(r[A_SRC])


class _UdpScan(DistinctTarget):
    def __init__(self, config):
        super().__init__(config)
        self.service = {int(p) for p in config["service_source_ports"]}
        self.lo, self.hi = (int(p) for p in config.get("ignore_dst_port_range", (0, -1)))

    def select(self, kind, r):
        return (r[PROTO] == 17 and r[SPK] > 0 and r[DPK] == 0 and r[SPORT] not in self.service
                and not (self.lo <= r[DPORT] <= self.hi) and r[DST] not in GROUP_ADDRESSES)


class UdpVertical(_UdpScan):
    name, rule_id = "udp_scan_vertical", "cirtsa.scan.udp_vertical"
    threshold_key = "vertical_ports"
    counts_names = ("probes", "distinct_ports")

    def key_target(self, r):
        return (r[SRC], r[DST]), r[DPORT]

    def key_text(self, r):
        return f"{ip_text(r[SRC])}|{ip_text(r[DST])}"


class UdpHorizontal(_UdpScan):
    name, rule_id = "udp_scan_horizontal", "cirtsa.scan.udp_horizontal"
    threshold_key = "horizontal_hosts"
    counts_names = ("probes", "distinct_hosts")

    def key_target(self, r):
        return (r[SRC], r[DPORT]), r[DST]

    def key_text(self, r):
        return f"{ip_text(r[SRC])}|udp/{r[DPORT]}"


# --- brute force ------------------------------------------------------------------------------


class BruteForce(PlainDetector):
    name = "brute_force"

    def __init__(self, config):
        super().__init__(config)
        self.ports = {int(p) for p in config["ports"]}
        self.max_session = int(float(config["max_session_s"]) * NS)
        self.max_client = int(config["max_client_payload_bytes"])
        self.max_server = int(config["max_server_payload_bytes"])
        self.min_sessions = int(config["min_sessions"])

    def select(self, kind, r):
        return (r[PROTO] == 6 and bool(r[SF] & 0x02) and (r[DF] & 0x12) == 0x12
                and r[SPB] > 0 and r[DPB] > 0 and r[SPB] <= self.max_client
                and r[DPB] <= self.max_server and r[END] - r[TS] <= self.max_session
                and r[DPORT] in self.ports)

    def detect(self, rows, fk, lk):
        rows = in_range(rows.get("flow", []), self.spec, fk, lk)
        whole: dict = {}
        for r in rows:
            whole.setdefault((r[SRC], r[DST], r[DPORT]), set()).add(r[SPORT])
        sub = [r for r in rows if len(whole[(r[SRC], r[DST], r[DPORT])]) >= self.min_sessions]
        groups = group_windows(sub, [(r[SRC], r[DST], r[DPORT]) for r in sub], self.spec, fk, lk)
        out = []
        for (k, (src, dst, port)), members in groups.items():
            sessions = {sub[i][SPORT] for i in members}
            if len(sessions) >= self.min_sessions:
                out.append(Finding("cirtsa.brute_force.sessions",
                                   f"{ip_text(src)}|{ip_text(dst)}|tcp/{port}", k, self.spec,
                                   47, {"flows": len(members), "sessions": len(sessions)}))
        return out


# --- denial of service ------------------------------------------------------------------------


class SynFlood(PlainDetector):
    name = "dos_syn_flood"

    def __init__(self, config):
        super().__init__(config)
        self.min_rate = int(config["min_syn_per_s"])
        self.per_port = float(config["min_attempts_per_port"])

    def select(self, kind, r):
        return (r[PROTO] == 6 and bool(r[SF] & 0x02) and not r[SF] & 0x10
                and r[DST] not in GROUP_ADDRESSES)

    def detect(self, rows, fk, lk):
        rows = in_range(rows.get("flow", []), self.spec, fk, lk)
        if len(rows) < self.min_rate:
            return []
        per_sec: dict = {}
        for r in rows:
            key = (r[DST], r[TS] // NS)
            per_sec[key] = per_sec.get(key, 0) + 1
        hot = {victim for (victim, _), n in per_sec.items() if n >= self.min_rate}
        sub = [r for r in rows if r[DST] in hot]
        groups = group_windows(sub, [r[DST] for r in sub], self.spec, fk, lk)
        out = []
        for (k, victim), members in groups.items():
            secs: dict[int, int] = {}
            ports = set()
            for i in members:
                r = sub[i]
                s = r[TS] // NS
                secs[s] = secs.get(s, 0) + 1
                ports.add(r[DPORT])
            peak = max(secs.values())
            if peak >= self.min_rate and len(members) >= self.per_port * max(len(ports), 1):
                out.append(Finding("cirtsa.dos.syn_flood", ip_text(victim), k, self.spec, 73,
                                   {"attempts": len(members), "peak_per_s": peak}))
        return out


class VolumetricFlood(PlainDetector):
    name = "dos_flood"

    def __init__(self, config):
        super().__init__(config)
        self.min_pps = float(config["min_pps"])

    def select(self, kind, r):
        return r[DPK] == 0 and r[SPK] > 0 and r[DST] not in GROUP_ADDRESSES

    def detect(self, rows, fk, lk):
        rows = in_range(rows.get("flow", []), self.spec, fk, lk)
        window_s = self.spec.size / NS
        need = self.min_pps * window_s
        if not rows or float(sum(r[SPK] for r in rows)) < need:
            return []
        total: dict = {}
        for r in rows:
            total[r[DST]] = total.get(r[DST], 0.0) + float(r[SPK])
        sub = [r for r in rows if total[r[DST]] >= need]
        groups = group_windows(sub, [r[DST] for r in sub], self.spec, fk, lk)
        out = []
        for (k, victim), members in groups.items():
            end_k = k * self.spec.hop + self.spec.size
            packets = 0.0
            for i in members:
                r = sub[i]
                inside = min(max((end_k - r[TS]) / max(r[END] - r[TS], 1), 0.0), 1.0)
                packets += r[SPK] * inside
            if packets >= need:
                out.append(Finding("cirtsa.dos.flood", ip_text(victim), k, self.spec, 73,
                                   {"flows": len(members),
                                    "packets": sum(sub[i][SPK] for i in members)}))
        return out


# --- backscatter and reflection ---------------------------------------------------------------


class _Unsolicited(PlainDetector):
    def __init__(self, config):
        super().__init__(config)
        self.amp = {int(p) for p in config["amplification_ports"]}
        self.ratio = float(config["amplification_ratio"])

    def classify(self, r: tuple) -> tuple[int, bool]:
        """(class: 0 syn_ack, 1 rst, 2 icmp_error, 3 udp_amplified, -1 none; sender is orig)."""
        proto, sf, df = r[PROTO], r[SF], r[DF]
        tcp = proto == 6
        syn_ack = tcp and not sf & 0x02 and (df & 0x12) == 0x12
        rst = tcp and not sf & 0x02 and bool(sf & 0x04) and r[DPK] == 0 and r[SPB] == 0
        icmp_error = (proto == 1 and r[SPORT] in (3, 11)) or (proto == 58 and r[SPORT] in (1, 3))
        amp_src = amp_dst = False
        if proto == 17:
            src_service = r[SPORT] in self.amp and r[DPORT] not in self.amp
            dst_service = r[DPORT] in self.amp and not src_service
            sb, db = float(r[SB]), float(r[DB])
            amp_src = src_service and sb >= self.ratio * db and r[DPK] == 0
            amp_dst = dst_service and db >= self.ratio * max(sb, 1.0) and r[DPK] > 0
        cls = -1
        if syn_ack:
            cls = 0
        if rst:
            cls = 1
        if icmp_error:
            cls = 2
        if amp_src or amp_dst:
            cls = 3
        return cls, not syn_ack and not amp_dst

    def parties(self, r: tuple) -> tuple[bytes, bytes, float]:
        """(sender, receiver, reply bytes)."""
        _, orig = self.classify(r)
        if orig:
            return r[SRC], r[DST], float(r[SB])
        return r[DST], r[SRC], float(r[DB])


class Backscatter(_Unsolicited):
    name = "backscatter"

    def __init__(self, config):
        super().__init__(config)
        self.min_receivers = int(config["min_receivers"])

    def select(self, kind, r):
        return self.classify(r)[0] != -1

    def detect(self, rows, fk, lk):
        rows = in_range(rows.get("flow", []), self.spec, fk, lk)
        if len(rows) < self.min_receivers:
            return []
        parts = [self.parties(r) for r in rows]
        whole: dict = {}
        for s, rcv, _ in parts:
            whole.setdefault(s, set()).add(rcv)
        keep = [i for i, p in enumerate(parts) if len(whole[p[0]]) >= self.min_receivers]
        groups = group_windows([rows[i] for i in keep], [parts[i][0] for i in keep],
                               self.spec, fk, lk)
        out = []
        for (k, sender), members in groups.items():
            receivers = {parts[keep[i]][1] for i in members}
            if len(receivers) >= self.min_receivers:
                out.append(Finding("cirtsa.dos.backscatter", ip_text(sender), k, self.spec, 21,
                                   {"flows": len(members), "distinct_receivers": len(receivers)}))
        return out


class Reflection(_Unsolicited):
    name = "reflection"

    def __init__(self, config):
        super().__init__(config)
        self.min_reflectors = int(config["min_reflectors"])
        self.min_bytes = float(config["min_reply_bytes"])

    def select(self, kind, r):
        cls, orig = self.classify(r)
        return cls != -1 and (r[DST] if orig else r[SRC]) not in GROUP_ADDRESSES

    def detect(self, rows, fk, lk):
        rows = in_range(rows.get("flow", []), self.spec, fk, lk)
        if len(rows) < self.min_reflectors:
            return []
        parts = [self.parties(r) for r in rows]
        senders: dict = {}
        volume: dict = {}
        for s, rcv, b in parts:
            senders.setdefault(rcv, set()).add(s)
            volume[rcv] = volume.get(rcv, 0.0) + b
        keep = [i for i, (_, rcv, _) in enumerate(parts)
                if len(senders[rcv]) >= self.min_reflectors and volume[rcv] >= self.min_bytes]
        groups = group_windows([rows[i] for i in keep], [parts[i][1] for i in keep],
                               self.spec, fk, lk)
        out = []
        for (k, receiver), members in groups.items():
            reflectors = {parts[keep[i]][0] for i in members}
            reply = 0.0
            for i in members:
                reply += parts[keep[i]][2]
            if len(reflectors) >= self.min_reflectors and reply >= self.min_bytes:
                out.append(Finding("cirtsa.dos.reflection", ip_text(receiver), k, self.spec, 73,
                                   {"flows": len(members), "distinct_reflectors": len(reflectors),
                                    "reply_bytes": int(sum(parts[keep[i]][2] for i in members))}))
        return out


# --- beaconing --------------------------------------------------------------------------------

TLS_PORTS = {443, 465, 563, 636, 853, 989, 990, 992, 993, 994, 995, 5061, 8443}


def quantile(v: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted v (NaN when empty), as beaconing computes it."""
    n = len(v)
    if n == 0:
        return math.nan
    pos = q * max(n - 1, 0)
    lo, hi = math.floor(pos), math.ceil(pos)
    frac = pos - lo
    return v[lo] * (1 - frac) + v[hi] * frac


def bowley_madm(values: list[float]) -> tuple[float, float, float]:
    """(Bowley skew, MADM, median); 0 where undefined, as correlation/beaconing.py."""
    v = sorted(values)
    q1, q2, q3 = quantile(v, 0.25), quantile(v, 0.5), quantile(v, 0.75)
    den = q3 - q1
    skew = (q1 + q3 - 2 * q2) / den if den > 0 and q2 != q1 and q2 != q3 else 0.0
    median = 0.0 if math.isnan(q2) else q2
    madm = quantile(sorted(abs(x - median) for x in values), 0.5)
    return skew, (0.0 if math.isnan(madm) else madm), median


def _pairwise_sum(a: list[float]) -> float:
    """numpy's pairwise summation order (float sums of the histogram statistics)."""
    n = len(a)
    if n < 8:
        res = 0.0
        for x in a:
            res += x
        return res
    if n <= 128:
        r = a[:8]
        i = 8
        while i < n - (n % 8):
            for j in range(8):
                r[j] += a[i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res += a[i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise_sum(a[:n2]) + _pairwise_sum(a[n2:])


def beacon_score(times: list[int], sizes: list[float] | None, bins: int, ideal: int
                 ) -> tuple[int, float]:
    """(contacts, score) of one group (module doc of correlation/beaconing.py)."""
    secs = sorted({t // NS for t in times})
    contacts = len(secs)
    intervals = [float(b - a) for a, b in zip(secs, secs[1:], strict=False)]
    skew, madm, median = bowley_madm(intervals)
    ts_skew = 1 - abs(skew)
    ts_madm = min(max(1 - madm / max(median, 1.0), 0.0), 1.0)
    count = min(1.0, contacts / float(ideal))
    lo, hi = secs[0], secs[-1]
    width = max((hi - lo + 1) / bins, 1e-9)
    hist = [0] * bins
    for s in secs:
        hist[min(int((s - lo) / width), bins - 1)] += 1
    mean = _pairwise_sum([float(h) for h in hist]) / bins
    std = math.sqrt(_pairwise_sum([(h - mean) * (h - mean) for h in hist]) / bins)
    hist_score = min(max(1 - std / mean, 0.0), 1.0) if mean > 0 else 0.0
    ts_score = (ts_skew + ts_madm + count) / 3
    if sizes is None:
        return contacts, (ts_score + hist_score) / 2
    ds_skew, ds_madm, ds_median = bowley_madm(sizes)
    ds_score = ((1 - abs(ds_skew)) + min(max(1 - ds_madm / max(ds_median, 1.0), 0.0), 1.0)) / 2
    return contacts, (ts_score + hist_score + ds_score) / 3


class Beaconing(PlainDetector):
    name = "beaconing"

    def __init__(self, config):
        super().__init__(config)
        self.min_connections = int(config["min_connections"])
        self.min_score = float(config["min_score"])
        self.medium_score = float(config["medium_score"])
        self.bins = int(config["histogram_bins"])
        self.ideal = int(config["ideal_connections"])
        self.kinds = tuple(k for k in config.get("kinds", ["flow", "dns", "tls", "http"])
                           if k in ("flow", "dns"))

    def select(self, kind, r):
        if kind == "flow":
            if r[DPK] <= 0 or r[DST] in GROUP_ADDRESSES:
                return False
            if r[PROTO] == 17:
                return True
            # TCP: established (SYN-ACK or responder data) with payload, not a refused probe
            return (r[PROTO] == 6 and (r[SPB] > 0 or r[DPB] > 0)
                    and bool(r[DF] & 0x02 or r[DPB] > 0))
        return not r[D_RESP] and r[D_QNAME] != ""

    def detect(self, rows, fk, lk):
        out = []
        for kind, kind_rows in rows.items():
            out += self._detect_kind(kind, in_range(kind_rows, self.spec, fk, lk), fk, lk)
        return out

    def _detect_kind(self, kind, rows, fk, lk):
        if len(rows) < self.min_connections:
            return []
        other = DST if kind == "flow" else D_QNAME
        src = SRC if kind == "flow" else D_SRC
        whole: dict = {}
        for r in rows:
            key = (r[src], r[other])
            whole[key] = whole.get(key, 0) + 1
        sub = [r for r in rows if whole[(r[src], r[other])] >= self.min_connections]
        groups = group_windows(sub, [(r[src], r[other]) for r in sub], self.spec, fk, lk)
        out = []
        for (k, (s, o)), members in groups.items():
            times = [sub[i][0] for i in members]
            sizes = ([max(float(sub[i][SB]), 0.0) for i in members] if kind == "flow" else None)
            contacts, score = beacon_score(times, sizes, self.bins, self.ideal)
            if contacts < self.min_connections or score < self.min_score:
                continue
            if kind == "flow":
                rule = ("cirtsa.beacon.flow_encrypted" if sub[members[0]][DPORT] in TLS_PORTS
                        else "cirtsa.beacon.flow")
                key = f"{ip_text(s)}|{ip_text(o)}"
            else:
                rule, key = "cirtsa.beacon.dns", f"{ip_text(s)}|{o}"
            out.append(Finding(rule, key, k, self.spec, 47 if score >= self.medium_score else 21,
                               {"connections": len(members), "contacts": contacts}))
        return out


# --- long connections and strobes -------------------------------------------------------------


class LongConnection(PlainDetector):
    name = "long_connection"

    def __init__(self, config):
        super().__init__(config)
        self.min_ns = int(float(config["min_duration_s"]) * NS)
        self.min_piece = int(float(config["min_piece_s"]) * NS)

    def select(self, kind, r):
        return r[PROTO] in (6, 17) and r[END] - r[TS] >= self.min_piece

    def detect(self, rows, fk, lk):
        rows = in_range(rows.get("flow", []), self.spec, fk, lk)
        conn = [(r[SRC], r[DST], r[SPORT], r[DPORT], r[PROTO]) for r in rows]
        span: dict = {}
        for c, r in zip(conn, rows, strict=True):
            lo, hi = span.get(c, (r[TS], r[END]))
            span[c] = (min(lo, r[TS]), max(hi, r[END]))
        keep = [i for i, c in enumerate(conn) if span[c][1] - span[c][0] >= self.min_ns]
        sub = [rows[i] for i in keep]
        groups = group_windows(sub, [conn[i] for i in keep], self.spec, fk, lk)
        out = []
        for (k, (src, dst, _, dport, proto)), members in groups.items():
            first = min(sub[i][TS] for i in members)
            last = max(sub[i][END] for i in members)
            if last - first >= self.min_ns:
                name = TRANSPORT_NAMES.get(proto, str(proto))
                out.append(Finding("cirtsa.c2.long_connection",
                                   f"{ip_text(src)}|{ip_text(dst)}|{name}/{dport}", k,
                                   self.spec, 21, {"pieces": len(members)}))
        return out


class Strobe(PlainDetector):
    name = "strobe"

    def __init__(self, config):
        super().__init__(config)
        self.min_connections = int(config["min_connections"])

    def select(self, kind, r):
        return r[PROTO] in (6, 17) and r[DST] not in GROUP_ADDRESSES

    def detect(self, rows, fk, lk):
        rows = in_range(rows.get("flow", []), self.spec, fk, lk)
        if len(rows) < self.min_connections:
            return []
        whole: dict = {}
        for r in rows:
            whole[(r[SRC], r[DST])] = whole.get((r[SRC], r[DST]), 0) + 1
        sub = [r for r in rows if whole[(r[SRC], r[DST])] >= self.min_connections]
        groups = group_windows(sub, [(r[SRC], r[DST]) for r in sub], self.spec, fk, lk)
        return [Finding("cirtsa.c2.strobe", f"{ip_text(s)}|{ip_text(d)}", k, self.spec, 21,
                        {"connections": len(m)})
                for (k, (s, d)), m in groups.items() if len(m) >= self.min_connections]


# --- exfiltration -----------------------------------------------------------------------------

DEFAULT_INTERNAL = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                    "169.254.0.0/16", "fc00::/7", "fe80::/10")


class _Outbound(PlainDetector):
    def __init__(self, config):
        super().__init__(config)
        self.internal = Cidrs(config.get("internal_networks", DEFAULT_INTERNAL))
        self.any_destination = str(config.get("destinations", "external")) == "any"
        self.min_ratio = float(config["min_out_in_ratio"])

    def select(self, kind, r):
        return (r[SRC] in self.internal and (self.any_destination or r[DST] not in self.internal)
                and r[SPB] > 0)


class Upload(_Outbound):
    name = "exfil_upload"

    def __init__(self, config):
        super().__init__(config)
        self.min_bytes = float(config["min_upload_bytes"])

    def detect(self, rows, fk, lk):
        rows = in_range(rows.get("flow", []), self.spec, fk, lk)
        if not rows or float(sum(r[SPB] for r in rows)) < self.min_bytes:
            return []
        sent: dict = {}
        for r in rows:
            sent[(r[SRC], r[DST])] = sent.get((r[SRC], r[DST]), 0) + r[SPB]
        sub = [r for r in rows if sent[(r[SRC], r[DST])] >= self.min_bytes]
        groups = group_windows(sub, [(r[SRC], r[DST]) for r in sub], self.spec, fk, lk)
        out = []
        for (k, (s, d)), members in groups.items():
            out_b = sum(sub[i][SPB] for i in members)
            in_b = sum(sub[i][DPB] for i in members)
            if out_b >= self.min_bytes and out_b >= self.min_ratio * in_b:
                out.append(Finding("cirtsa.exfil.upload", f"{ip_text(s)}|{ip_text(d)}", k,
                                   self.spec, 47, {"flows": len(members), "bytes_out": out_b,
                                                   "bytes_in": in_b}))
        return out


class VolumeBaseline(_Outbound):
    name = "exfil_volume"

    def __init__(self, config):
        super().__init__(config)
        self.min_bytes = float(config["min_out_bytes"])
        self.factor = float(config["baseline_factor"])
        self.min_history = int(config["min_history_windows"])
        self.alpha = float(config["ewma_alpha"])
        self.max_hosts = int(config["max_hosts"])
        self.baseline: dict[bytes, list] = {}  # host -> [ewma, first window, last window]

    def detect(self, rows, fk, lk):
        rows = in_range(rows.get("flow", []), self.spec, fk, lk)
        groups = group_windows(rows, [r[SRC] for r in rows], self.spec, fk, lk)
        out = []
        for (k, host), members in sorted(groups.items(), key=lambda kv: kv[0][0]):
            sent = sum(rows[i][SB] for i in members)
            received = sum(rows[i][DB] for i in members)
            entry = self.baseline.get(host)
            if entry is None:
                entry = self.baseline[host] = [0.0, k, k - 1]
            ewma = entry[0] * (1 - self.alpha) ** max(k - entry[2] - 1, 0)
            history = k - entry[1]
            entry[0] = self.alpha * float(sent) + (1 - self.alpha) * ewma
            entry[2] = k
            if (sent >= self.min_bytes and history >= self.min_history
                    and sent >= self.factor * max(ewma, 1.0) and sent >= self.min_ratio * received):
                out.append(Finding("cirtsa.exfil.volume", ip_text(host), k, self.spec, 47,
                                   {"bytes_out": sent, "bytes_in": received,
                                    "history_windows": history}))
        excess = len(self.baseline) - self.max_hosts
        if excess > 0:  # least recently active first (tie order may differ from the engine)
            for name, _ in sorted(self.baseline.items(), key=lambda kv: kv[1][2])[:excess]:
                del self.baseline[name]
        return out


class IcmpTunnel(PlainDetector):
    name = "exfil_icmp"

    def __init__(self, config):
        super().__init__(config)
        self.min_bytes = float(config["min_payload_bytes"])
        self.normal = float(config["max_normal_payload_bytes"])

    def select(self, kind, r):
        p, s, d = r[PROTO], r[SPORT], r[DPORT]
        echo = ((p == 1 and ((s == 8 and d == 0) or (s == 0 and d == 8)))
                or (p == 58 and ((s == 128 and d == 129) or (s == 129 and d == 128))))
        return echo and r[SPB] + r[DPB] > 0

    def detect(self, rows, fk, lk):
        rows = in_range(rows.get("flow", []), self.spec, fk, lk)
        pairs = [(r[SRC], r[DST]) if r[SRC] <= r[DST] else (r[DST], r[SRC]) for r in rows]
        whole: dict = {}
        for p, r in zip(pairs, rows, strict=True):
            whole[p] = whole.get(p, 0) + r[SPB] + r[DPB]
        keep = [i for i, p in enumerate(pairs) if whole[p] >= self.min_bytes]
        sub = [rows[i] for i in keep]
        groups = group_windows(sub, [pairs[i] for i in keep], self.spec, fk, lk)
        out = []
        for (k, (a, b)), members in groups.items():
            payload = sum(sub[i][SPB] + sub[i][DPB] for i in members)
            packets = sum(sub[i][SPK] + sub[i][DPK] for i in members)
            if payload >= self.min_bytes and payload / max(packets, 1) > self.normal:
                key = "|".join(sorted((ip_text(a), ip_text(b))))
                out.append(Finding("cirtsa.exfil.icmp_tunnel", key, k, self.spec, 47,
                                   {"flows": len(members), "payload_bytes": payload,
                                    "packets": packets}))
        return out


# --- DNS tunnel / exfil names / DGA -----------------------------------------------------------

INVALID_TLD = "<invalid-tld>"


def entropy(text: str) -> float:
    """Shannon entropy, bits per character (code points above 255 share one bucket)."""
    if not text:
        return 0.0
    counts: dict[int, int] = {}
    for ch in text:
        c = min(ord(ch), 255)
        counts[c] = counts.get(c, 0) + 1
    n = len(text)
    h = 0.0
    for c in sorted(counts):
        p = counts[c] / n
        h += p * math.log2(p)
    return -h


class DnsTunnel(PlainDetector):
    name = "dns_tunnel"
    kinds = ("dns",)

    def __init__(self, config):
        super().__init__(config)
        c = config
        self.min_unique = int(c["min_unique_names"])
        self.min_long = int(c["min_long_names"])
        self.long_chars = int(c["long_subdomain_chars"])
        self.min_entropy = float(c["min_entropy"])
        self.tunnel_qtypes = {int(q) for q in c["tunnel_qtypes"]}
        self.min_tunnel_types = int(c["min_tunnel_type_queries"])
        self.exfil_label = int(c["exfil_min_label_chars"])
        self.dga_min = int(c["dga_min_domains"])
        self.dga_label = int(c["dga_min_label_chars"])
        self.dga_entropy = float(c["dga_min_entropy"])
        self.ignore = tuple(str(d).lower().strip(".") for d in c.get("ignore_domains") or ())
        self.psl = PublicSuffixList() if PublicSuffixList is not None else None
        self.features: dict[str, tuple] = {}

    def select(self, kind, r):
        wanted = (not r[D_RESP]) or r[D_RCODE] == 3 or r[D_QTYPE] in self.tunnel_qtypes
        return wanted and r[D_QNAME] != ""

    def _split(self, name: str) -> tuple[str, str]:
        labels = name.split(".")
        tld = labels[-1]
        if len(labels) < 2 or not tld:
            return "", tld
        if not (tld.isalpha() or tld.startswith("xn--")):
            return INVALID_TLD, tld
        if self.psl is None:
            raise RuntimeError("plain twin needs publicsuffixlist (as the engine prefers)")
        return self.psl.privatesuffix(name) or "", self.psl.publicsuffix(name) or tld

    def feature(self, name: str) -> tuple:
        """(parent, long name, exfil name, random sld) of a name, memoized."""
        got = self.features.get(name)
        if got is not None:
            return got
        parent, suffix = self._split(name)
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
            parent = ""
        flat = sub.replace(".", "")
        max_label = max((len(x) for x in sub.split(".")), default=0) if sub else 0
        sub_h = entropy(flat)
        long_name = len(flat) >= self.long_chars and sub_h >= self.min_entropy
        exfil = max_label >= self.exfil_label and sub_h >= self.min_entropy
        random_sld = len(sld) >= self.dga_label and entropy(sld) >= self.dga_entropy
        got = (parent, long_name, exfil, random_sld)
        if len(self.features) > 200_000:
            self.features.clear()
        self.features[name] = got
        return got

    def detect(self, rows, fk, lk):
        rows = in_range(rows.get("dns", []), self.spec, fk, lk)
        out = []
        queries, keys = [], []
        nx, nx_keys = [], []
        for r in rows:
            parent, _, _, random_sld = self.feature(r[D_QNAME])
            if not parent:
                continue
            if not r[D_RESP]:
                queries.append(r)
                keys.append((r[D_SRC], parent))
            elif r[D_RCODE] == 3 and parent != INVALID_TLD and random_sld:
                nx.append(r)
                nx_keys.append(r[D_DST])
        for (k, (client, parent)), members in group_windows(queries, keys, self.spec,
                                                            fk, lk).items():
            names = {queries[i][D_QNAME] for i in members}
            long_n = sum(1 for q in names if self.features[q][1])
            types = sum(1 for i in members if queries[i][D_QTYPE] in self.tunnel_qtypes)
            tunnel = len(names) >= self.min_unique and (long_n >= self.min_long
                                                        or types >= self.min_tunnel_types)
            exfil = not tunnel and any(self.features[q][2] for q in names)
            if tunnel or exfil:
                out.append(Finding("cirtsa.dns.tunnel" if tunnel else "cirtsa.dns.exfil_name",
                                   f"{ip_text(client)}|{parent}", k, self.spec,
                                   73 if tunnel else 21,
                                   {"queries": len(members), "unique_names": len(names)}))
        domains_of: dict = {}
        for r in nx:
            domains_of.setdefault(r[D_DST], set()).add(self.features[r[D_QNAME]][0])
        keep = [i for i, r in enumerate(nx) if len(domains_of[r[D_DST]]) >= self.dga_min]
        sub = [nx[i] for i in keep]
        for (k, client), members in group_windows(sub, [r[D_DST] for r in sub], self.spec,
                                                  fk, lk).items():
            domains = {self.features[sub[i][D_QNAME]][0] for i in members}
            if len(domains) >= self.dga_min:
                out.append(Finding("cirtsa.dns.dga", ip_text(client), k, self.spec, 47,
                                   {"nxdomain_responses": len(members),
                                    "nxdomain_domains": len(domains)}))
        return out


# --- threat intel -----------------------------------------------------------------------------

SEVERITIES = {"low": 21, "medium": 47, "high": 73, "critical": 99}
_RULE_OF_TYPE = {"ip": "ip", "cidr": "ip", "domain": "domain"}


class IntelMatch(PlainDetector):
    name = "intel_match"
    kinds = ("flow", "dns")

    def __init__(self, config):
        super().__init__(config)
        # indicator parsing is configuration, not detection: shared with the engine
        self.indicators: list[Indicator] = IndicatorSet.from_config(
            config.get("sources") or [], config.get("indicators") or []).indicators
        self.default_severity = str(config.get("default_severity", "medium")).lower()
        self.nets: list[tuple[int, int, int, int]] = []  # (prefix length, address, mask, idx)
        self.domains: dict[str, int] = {}
        for i, ind in enumerate(self.indicators):
            if ind.type in ("ip", "cidr"):
                net = ipaddress.ip_network(ind.value, strict=False)
                plen = net.prefixlen
                if net.version == 4:
                    net = ipaddress.ip_network(f"::ffff:{net.network_address}/{96 + plen}")
                self.nets.append((net.prefixlen, int(net.network_address), int(net.netmask), i))
            elif ind.type == "domain":
                self.domains.setdefault(ind.value, i)
            else:
                raise NotImplementedError(f"plain twin: indicator type {ind.type}")
        self.nets.sort(key=lambda n: -n[0])  # longest prefix first
        self.ip_memo: dict[bytes, int] = {}
        self.name_memo: dict[str, int] = {}

    def match_ip(self, raw: bytes) -> int:
        got = self.ip_memo.get(raw)
        if got is None:
            got = -1
            if self.nets:
                value = int.from_bytes(raw, "big")
                for _, addr, mask, i in self.nets:
                    if value & mask == addr:
                        got = i
                        break
            if len(self.ip_memo) > 1_000_000:
                self.ip_memo.clear()
            self.ip_memo[raw] = got
        return got

    def match_name(self, name: str) -> int:
        got = self.name_memo.get(name)
        if got is None:
            got = -1
            if self.domains:
                s = 0
                while True:  # the name, then each parent: the longest match wins
                    hit = self.domains.get(name[s:])
                    if hit is not None:
                        got = hit
                        break
                    s = name.find(".", s) + 1
                    if s == 0:
                        break
            if len(self.name_memo) > 1_000_000:
                self.name_memo.clear()
            self.name_memo[name] = got
        return got

    def hits(self, kind: str, r: tuple) -> list[tuple[int, bytes]]:
        """(indicator, local endpoint) of each matched field of a row."""
        out = []
        if kind == "flow":
            i = self.match_ip(r[SRC])
            if i >= 0:
                out.append((i, r[DST]))
            i = self.match_ip(r[DST])
            if i >= 0:
                out.append((i, r[SRC]))
        elif kind == "dns":
            i = self.match_name(r[D_QNAME])
            if i >= 0:
                out.append((i, r[D_DST] if r[D_RESP] else r[D_SRC]))
        return out

    def select(self, kind, r):
        return bool(self.hits(kind, r))

    def detect(self, rows, fk, lk):
        counts: dict = {}
        for kind, kind_rows in rows.items():
            for r in in_range(kind_rows, self.spec, fk, lk):
                for ind, local in self.hits(kind, r):
                    for k in windows_of(r[0], self.spec, fk, lk):
                        counts[(k, local, ind)] = counts.get((k, local, ind), 0) + 1
        out = []
        for (k, local, i), n in counts.items():
            ind = self.indicators[i]
            label = ind.severity if ind.severity in SEVERITIES else self.default_severity
            out.append(Finding(f"cirtsa.intel.{_RULE_OF_TYPE[ind.type]}",
                               f"{ind.type}:{ind.value}|{ip_text(local)}", k, self.spec,
                               SEVERITIES[label], {"hits": n}))
        return out


# --- ARP spoofing -----------------------------------------------------------------------------

_ZERO_V4 = _V4_PREFIX + b"\x00" * 4


class ArpSpoof(PlainDetector):
    name = "arp_spoof"
    kinds = ("arp",)

    def __init__(self, config):
        super().__init__(config)
        self.min_macs = int(config["min_macs"])
        self.min_gratuitous = int(config["min_gratuitous"])
        self.gateways: dict[bytes, int | None] = {}
        for gw in config.get("gateways") or []:
            entry = {"ip": gw} if isinstance(gw, str) else dict(gw)
            mac = entry.get("mac")
            raw = ipaddress.ip_address(str(entry["ip"]))
            raw = (_V4_PREFIX + raw.packed) if raw.version == 4 else raw.packed
            self.gateways[raw] = (int(str(mac).replace(":", "").replace("-", "")
                                      .replace(".", ""), 16) if mac else None)

    def select(self, kind, r):
        return r[A_SRC] != _ZERO_V4 and r[A_MAC] != 0

    def detect(self, rows, fk, lk):
        rows = in_range(rows.get("arp", []), self.spec, fk, lk)
        out = []
        for (k, ip), members in group_windows(rows, [r[A_SRC] for r in rows], self.spec,
                                              fk, lk).items():
            macs = {rows[i][A_MAC] for i in members}
            rule = None
            if ip in self.gateways:
                expected = self.gateways[ip]
                if (expected is not None and macs - {expected}) or (
                        expected is None and len(macs) >= 2):
                    rule = ("cirtsa.arp.gateway_spoof", 73)
            if rule is None and len(macs) >= self.min_macs:
                rule = ("cirtsa.arp.ip_conflict", 47)
            if rule is not None:
                out.append(Finding(rule[0], ip_text(ip), k, self.spec, rule[1],
                                   {"macs": len(macs)}))
        grat = [r for r in rows if r[A_GRAT]]
        for (k, mac), members in group_windows(grat, [r[A_MAC] for r in grat], self.spec,
                                               fk, lk).items():
            if len(members) >= self.min_gratuitous:
                out.append(Finding("cirtsa.arp.gratuitous_storm", mac_text(mac), k, self.spec,
                                   47, {"gratuitous": len(members)}))
        return out


# --- the engine -------------------------------------------------------------------------------

# detector class named in the config ("module:Class") -> its plain twin
TWINS = {
    "correlation.port_scan:VerticalScanDetector": VerticalScan,
    "correlation.port_scan:HorizontalScanDetector": HorizontalScan,
    "correlation.brute_force:BruteForceDetector": BruteForce,
    "correlation.sweep:IcmpSweepDetector": IcmpSweep,
    "correlation.sweep:ArpSweepDetector": ArpSweep,
    "correlation.darknet:DarknetScanDetector": DarknetScan,
    "correlation.udp_scan:UdpVerticalScanDetector": UdpVertical,
    "correlation.udp_scan:UdpHorizontalScanDetector": UdpHorizontal,
    "correlation.dos:SynFloodDetector": SynFlood,
    "correlation.dos:VolumetricFloodDetector": VolumetricFlood,
    "correlation.backscatter:BackscatterDetector": Backscatter,
    "correlation.backscatter:ReflectionDetector": Reflection,
    "correlation.beaconing:BeaconDetector": Beaconing,
    "correlation.long_connections:LongConnectionDetector": LongConnection,
    "correlation.long_connections:StrobeDetector": Strobe,
    "correlation.exfiltration:UploadDetector": Upload,
    "correlation.exfiltration:VolumeBaselineDetector": VolumeBaseline,
    "correlation.exfiltration:IcmpTunnelDetector": IcmpTunnel,
    "correlation.dns_tunnel:DnsTunnelDetector": DnsTunnel,
    "correlation.intel_match:IntelMatchDetector": IntelMatch,
    "correlation.arp_spoof:ArpSpoofDetector": ArpSpoof,
}


class _State:
    def __init__(self, detector: PlainDetector) -> None:
        self.detector = detector
        self.buffers: dict[str, list[tuple]] = {k: [] for k in detector.kinds}
        self.next_k: int | None = None
        self.last_alert: dict[tuple[str, str], int] = {}


class PlainEngine:
    """correlation/engine.py in plain Python: push(batch) -> alert records, flush()."""

    def __init__(self, config: Mapping | None = None) -> None:
        self.config = deep_merge(dict(load_config()["correlation"]), dict(config or {}))
        self.lateness = int(round(float(self.config["allowed_lateness_s"]) * NS))
        self.states = []
        for name, section in (self.config.get("detectors") or {}).items():
            if not section.get("enabled", True):
                continue
            cls = TWINS.get(str(section.get("detector")))
            if cls is None:
                raise NotImplementedError(f"plain twin: no twin for detector {name}")
            self.states.append(_State(cls(section)))
        self.max_time: int | None = None
        self.stats = {"events_in": 0, "late_events": 0, "late_dropped": 0,
                      "rows_dropped_overflow": 0, "findings": 0, "alerts_suppressed": 0,
                      "alerts_out": 0}

    def push(self, batch: EventBatch) -> list[dict]:
        n = len(batch)
        if n == 0:
            return []
        self.stats["events_in"] += n
        rows = rows_of(batch)
        kind = batch.kind
        late: set[int] = set()
        dropped: set[int] = set()
        for state in self.states:
            if kind in state.buffers:
                self._buffer(state, kind, rows, late, dropped)
        self.stats["late_events"] += len(late)
        self.stats["late_dropped"] += len(dropped)
        batch_max = max(r[0] for r in rows)
        self.max_time = batch_max if self.max_time is None else max(self.max_time, batch_max)
        watermark = self.max_time - self.lateness
        alerts = []
        for state in self.states:
            spec = state.detector.spec
            alerts += self._close(state, (watermark - spec.size) // spec.hop)
        return self._emit(alerts)

    def flush(self) -> list[dict]:
        alerts = []
        for state in self.states:
            ends = [max(r[0] for r in b) for b in state.buffers.values() if b]
            if ends:
                alerts += self._close(state, state.detector.spec.last_index(max(ends)))
        return self._emit(alerts)

    def _buffer(self, state: _State, kind: str, rows: list[tuple], late: set, dropped: set
                ) -> None:
        det = state.detector
        select = det.select
        chosen = [i for i, r in enumerate(rows) if select(kind, r)]
        buf = state.buffers[kind]
        if state.next_k is not None:
            spec, nk = det.spec, state.next_k
            for i in chosen:
                t = rows[i][0]
                if t // spec.hop < nk:
                    late.add(i)
                    dropped.add(i)
                    continue
                if spec.first_index(t) < nk:
                    late.add(i)
                buf.append(rows[i])
        else:
            buf.extend(rows[i] for i in chosen)
        excess = len(buf) - det.max_rows
        if excess > 0:  # hard cap: oldest arrivals go first
            self.stats["rows_dropped_overflow"] += excess
            del buf[:excess]

    def _close(self, state: _State, last_k: int) -> list[tuple[tuple, dict]]:
        det = state.detector
        spec = det.spec
        if state.next_k is None:
            starts = [min(r[0] for r in b) for b in state.buffers.values() if b]
            if not starts:
                state.next_k = last_k + 1
                return []
            first = spec.first_index(min(starts))
            if last_k < first:
                return []
            state.next_k = first
        if last_k < state.next_k:
            return []
        rows = {kind: buf for kind, buf in state.buffers.items() if buf}
        findings = det.detect(rows, state.next_k, last_k) if rows else []
        state.next_k = last_k + 1
        horizon = state.next_k * spec.hop
        kept = self._suppress(state, findings, horizon)
        for kind, buf in state.buffers.items():
            if buf:
                needed = [r for r in buf if r[0] >= horizon]
                if len(buf) - len(needed) > len(buf) // 4:  # the engine's lazy compaction
                    state.buffers[kind] = needed
        return [((f.window_start, f.rule_id, f.key), f.record()) for f in kept]

    def _suppress(self, state: _State, findings: list[Finding], horizon: int) -> list[Finding]:
        span = max(state.detector.suppress, state.detector.spec.size)
        self.stats["findings"] += len(findings)
        kept = []
        for f in sorted(findings, key=lambda f: (f.window_start, f.rule_id, f.key)):
            key = (f.rule_id, f.key)
            last = state.last_alert.get(key)
            if last is not None and f.window_start < last + span:
                self.stats["alerts_suppressed"] += 1
                continue
            state.last_alert[key] = f.window_start
            kept.append(f)
        state.last_alert = {k: s for k, s in state.last_alert.items() if s + span > horizon}
        return kept

    def _emit(self, alerts: list[tuple[tuple, dict]]) -> list[dict]:
        self.stats["alerts_out"] += len(alerts)
        return [a for _, a in sorted(alerts, key=lambda pair: pair[0])]
