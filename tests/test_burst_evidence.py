"""Evidence of findings with many rows per group (issue #4's alert burst: ~650 rows each).

The network detectors compute every hit's evidence at once with numpy
(correlation/evidence_rows.py HitRows, LazyEvidence); here each finding's evidence must equal
a straightforward per-row computation over the rows the test selects itself (the detector's
select mask, the finding's key and window), field by field and in key order. Findings are
described in shuffled order over several overlapping windows (the per-window batches).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from correlation.brute_force import SERVICE_NAMES, BruteForceDetector
from correlation.detector import (
    NS_PER_S,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    Evidence,
    Groups,
    WindowRange,
    ip_text,
)
from correlation.engine import default_config
from correlation.evidence_rows import (
    HitRows,
    LazyEvidence,
    ip_numeric_codes,
    ip_texts,
    object_codes,
    sorted_ips,
    time_span,
    unique_texts,
)
from correlation.port_scan import HorizontalScanDetector, VerticalScanDetector
from correlation.sweep import IcmpSweepDetector
from correlation.udp_scan import UdpHorizontalScanDetector, UdpVerticalScanDetector
from pipeline.schema import EventBatch
from sensors.packets import IP_DTYPE

T0 = 1_767_225_600 * NS_PER_S


def _name(*parts: str) -> str:
    return "".join(parts)  # a new object each time: equal names at distinct addresses


NAMES = [_name("s", "1"), _name("s", "2"), _name("s1|", "s2"), "", _name("z", "|"), None]


def _ips(values: list[int], v6: np.ndarray) -> np.ndarray:
    """IPv4-mapped addresses of the ints, or IPv6 ones where v6 holds."""
    out = []
    for v, six in zip(values, v6.tolist(), strict=True):
        if six:
            out.append(bytes.fromhex("20010db8") + bytes(4) + int(v).to_bytes(8, "big"))
        else:
            out.append(bytes(10) + b"\xff\xff" + int(v).to_bytes(4, "big"))
    return np.frombuffer(b"".join(out), IP_DTYPE).copy()


def flows(seed: int, keys: int, rows_per_key: int) -> dict[str, np.ndarray]:
    """Vertical scans, horizontal scans and login sessions of `keys` sources each, about
    rows_per_key rows per source over 10 minutes (several 5-minute windows), with repeated
    ports/hosts/client ports, answered/refused/unanswered attempts, IPv6 sources."""
    rng = np.random.default_rng(seed)
    n = 3 * keys * rows_per_key
    kind = np.repeat(np.arange(3), keys * rows_per_key)  # 0 vertical, 1 horizontal, 2 login
    key = np.tile(np.repeat(np.arange(keys), rows_per_key), 3)
    src = 0x6440_0000 + kind * 0x10000 + key
    victim = rng.integers(0, 6, keys)[key]  # sources share victims: not a key by itself
    dst = np.where(kind == 1, 0x0A03_0000 + rng.integers(0, 3 * rows_per_key, n),
                   0x0A02_0000 + victim)
    port = np.where(kind == 0, rng.integers(1, 2 * rows_per_key + 2, n),
                    np.where(kind == 1, rng.choice([22, 445], keys)[key],
                             rng.choice([21, 22, 3389, 3306], keys)[key]))
    ts = T0 + rng.integers(0, 600 * NS_PER_S, n)
    login = kind == 2
    dst_flags = rng.choice([0, TCP_RST, TCP_SYN | TCP_ACK, TCP_SYN | TCP_ACK | TCP_RST], n)
    return {
        "timestamp": ts,
        "end": ts + rng.integers(0, 40 * NS_PER_S, n) * (rng.random(n) < 0.9),
        "src_ip": _ips(src.tolist(), key % 3 == 0),
        "dst_ip": _ips(dst.tolist(), np.zeros(n, bool)),
        "src_port": rng.integers(40000, 40000 + 2 * rows_per_key, n).astype(np.uint16),
        "dst_port": port.astype(np.uint16),
        "transport": np.full(n, 6, np.uint8),
        "src_packets": np.ones(n, np.int64),
        "src_tcp_flags": np.where(login, 0x1B, TCP_SYN).astype(np.uint8),
        "dst_tcp_flags": np.where(login, 0x1B, dst_flags).astype(np.uint8),
        "src_payload_bytes": np.where(login, rng.integers(1, 3000, n), 0),
        "dst_payload_bytes": np.where(login, rng.integers(1, 3000, n), 0),
        "observer_name": np.array([NAMES[i] for i in rng.integers(0, 6, n)], object),
        "ingress_zone": np.array([NAMES[i] for i in rng.integers(0, 3, n)], object),
    }


def detector(cls: type, name: str):
    return cls(default_config()["detectors"][name])


def selected(d, cols: dict) -> dict:
    """The rows the engine would buffer for the detector (detect sees only those)."""
    keep = d.select(EventBatch("flow", cols))
    return {name: column[keep] for name, column in cols.items()}


def findings_of(d, cols: dict) -> list:
    spec = d.window
    ts = cols["timestamp"]
    if ts.size == 0:  # the engine closes no window of a detector without rows
        return []
    windows = WindowRange(spec, int(spec.first_index(int(ts.min()))),
                          int(spec.last_index(int(ts.max()))))
    return d.detect({"flow": cols}, windows)


def group_rows(d, cols: dict, finding, key_columns: tuple[str, ...]) -> np.ndarray:
    """The rows of the finding, selected from scratch: key and window."""
    ts = cols["timestamp"]
    keep = (ts >= finding.window_start) & (ts < finding.window_end)
    rows = np.flatnonzero(keep)
    texts = ["|".join(_key_part(cols, c, r) for c in key_columns) for r in rows.tolist()]
    return rows[np.array([t == finding.key for t in texts], bool)]


def _key_part(cols: dict, column: str, row: int) -> str:
    if column in ("dst_port", "udp_port"):
        return f"{'tcp' if column == 'dst_port' else 'udp'}/{int(cols['dst_port'][row])}"
    return ip_text(cols[column], row)


def reference_vertical(d, cols: dict, r: np.ndarray) -> Evidence:
    ts, ends = cols["timestamp"][r].tolist(), cols["end"][r].tolist()
    flags, ports_all = cols["dst_tcp_flags"][r].tolist(), cols["dst_port"][r].tolist()
    first_seen, last_seen = time_span(ts, ends)
    scanner, victim = ip_text(cols["src_ip"], int(r[0])), ip_text(cols["dst_ip"], int(r[0]))
    ports = sorted(set(ports_all))
    open_ports = sorted({p for p, f in zip(ports_all, flags, strict=True) if f & TCP_SYN})
    return Evidence(
        first_seen=first_seen, last_seen=last_seen, source_ip=scanner, destination_ip=victim,
        transport="tcp", related_ips=sorted({scanner, victim}),
        observers=unique_texts(cols["observer_name"][r].tolist()),
        zones=unique_texts(cols["ingress_zone"][r].tolist()),
        details={**_outcomes(flags), "distinct_ports": len(ports),
                 "ports": ports[: d.max_sample], "open_ports": open_ports[: d.max_sample]},
        message=f"{scanner} scanned {len(ports)} ports on {victim} "
                f"in {(last_seen - first_seen) / NS_PER_S:.1f} s")


def reference_horizontal(d, cols: dict, r: np.ndarray) -> Evidence:
    ts, ends = cols["timestamp"][r].tolist(), cols["end"][r].tolist()
    flags, dst = cols["dst_tcp_flags"][r].tolist(), cols["dst_ip"][r].tolist()
    first_seen, last_seen = time_span(ts, ends)
    scanner, port = ip_text(cols["src_ip"], int(r[0])), int(cols["dst_port"][r[0]])
    hosts = sorted_ips(dst)
    open_hosts = sorted_ips(h for h, f in zip(dst, flags, strict=True) if f & TCP_SYN)
    sample = ip_texts(hosts[: d.max_sample])
    return Evidence(
        first_seen=first_seen, last_seen=last_seen, source_ip=scanner, destination_port=port,
        transport="tcp", related_ips=[scanner] + [h for h in sample if h != scanner],
        observers=unique_texts(cols["observer_name"][r].tolist()),
        zones=unique_texts(cols["ingress_zone"][r].tolist()),
        details={**_outcomes(flags), "distinct_hosts": len(hosts), "hosts": sample,
                 "open_hosts": ip_texts(open_hosts[: d.max_sample])},
        message=f"{scanner} scanned {len(hosts)} hosts on port {port}/tcp "
                f"in {(last_seen - first_seen) / NS_PER_S:.1f} s")


def _outcomes(flags: list[int]) -> dict[str, int]:
    answered = sum(1 for f in flags if f & TCP_SYN)
    refused = sum(1 for f in flags if not f & TCP_SYN and f & TCP_RST)
    return {"attempts": len(flags), "unanswered": len(flags) - answered - refused,
            "refused": refused, "half_open": answered}


def reference_brute_force(cols: dict, r: np.ndarray) -> Evidence:
    ts, ends = cols["timestamp"][r].tolist(), cols["end"][r].tolist()
    src, dst = ip_text(cols["src_ip"], int(r[0])), ip_text(cols["dst_ip"], int(r[0]))
    port = int(cols["dst_port"][r[0]])
    service = SERVICE_NAMES.get(port, f"tcp/{port}")
    first_seen, last_seen = time_span(ts, ends)
    seconds = [(e - t) / NS_PER_S for t, e in zip(ts, ends, strict=True)]
    sessions = len(set(cols["src_port"][r].tolist()))
    details = {"service": service, "flows": len(ts), "sessions": sessions,
               "client_payload_bytes": int(cols["src_payload_bytes"][r].sum()),
               "server_payload_bytes": int(cols["dst_payload_bytes"][r].sum()),
               "max_session_s": round(max(seconds), 3),
               "median_session_s": round(float(np.median(seconds)), 3)}
    return Evidence(
        first_seen=first_seen, last_seen=last_seen, source_ip=src, destination_ip=dst,
        destination_port=port, transport="tcp", related_ips=sorted({src, dst}),
        observers=unique_texts(cols["observer_name"][r].tolist()),
        zones=unique_texts(cols["ingress_zone"][r].tolist()), details=details,
        message=f"{src} opened {sessions} short {service} sessions to {dst}:{port} "
                f"in {(last_seen - first_seen) / NS_PER_S:.1f} s")


def reference_udp_vertical(d, cols: dict, r: np.ndarray) -> Evidence:
    ts, ends = cols["timestamp"][r].tolist(), cols["end"][r].tolist()
    first, last = time_span(ts, ends)
    src, dst = ip_text(cols["src_ip"], int(r[0])), ip_text(cols["dst_ip"], int(r[0]))
    ports = sorted(set(cols["dst_port"][r].tolist()))
    return Evidence(
        first_seen=first, last_seen=last, source_ip=src, destination_ip=dst, transport="udp",
        related_ips=sorted({src, dst}), **_seen_by(cols, r),
        details={"probes": len(ts), "distinct_ports": len(ports),
                 "ports": ports[: d.max_sample]},
        message=f"{src} probed {len(ports)} UDP ports on {dst} without answer "
                f"in {(last - first) / NS_PER_S:.1f} s")


def reference_udp_horizontal(d, cols: dict, r: np.ndarray) -> Evidence:
    ts, ends = cols["timestamp"][r].tolist(), cols["end"][r].tolist()
    first, last = time_span(ts, ends)
    src, port = ip_text(cols["src_ip"], int(r[0])), int(cols["dst_port"][r[0]])
    hosts = ip_texts(sorted_ips(cols["dst_ip"][r].tolist()))
    sample = hosts[: d.max_sample]
    return Evidence(
        first_seen=first, last_seen=last, source_ip=src, destination_port=port,
        transport="udp", related_ips=[src] + [h for h in sample if h != src],
        **_seen_by(cols, r),
        details={"probes": len(ts), "distinct_hosts": len(hosts), "hosts": sample},
        message=f"{src} probed {len(hosts)} hosts on {port}/udp without answer "
                f"in {(last - first) / NS_PER_S:.1f} s")


def reference_icmp_sweep(d, cols: dict, r: np.ndarray) -> Evidence:
    ts, ends = cols["timestamp"][r].tolist(), cols["end"][r].tolist()
    first, last = time_span(ts, ends)
    src = ip_text(cols["src_ip"], int(r[0]))
    dst, answers = cols["dst_ip"][r].tolist(), cols["dst_packets"][r].tolist()
    hosts = ip_texts(sorted_ips(dst))
    alive = ip_texts(sorted_ips(h for h, p in zip(dst, answers, strict=True) if p > 0))
    sample = hosts[: d.max_sample]
    return Evidence(
        first_seen=first, last_seen=last, source_ip=src, transport="icmp",
        related_ips=[src] + [h for h in sample if h != src], **_seen_by(cols, r),
        details={"probes": len(ts), "distinct_hosts": len(hosts), "hosts": sample,
                 "answering_hosts": len(alive), "alive_hosts": alive[: d.max_sample]},
        message=f"{src} pinged {len(hosts)} hosts ({len(alive)} answered) "
                f"in {(last - first) / NS_PER_S:.1f} s")


def _seen_by(cols: dict, r: np.ndarray) -> dict:
    return {"observers": unique_texts(cols["observer_name"][r].tolist()),
            "zones": unique_texts(cols["ingress_zone"][r].tolist())}


def udp_and_icmp(seed: int, keys: int, rows_per_key: int) -> dict[str, np.ndarray]:
    """The flows of `flows`, made unanswered UDP (kind 0: many ports, kind 1: many hosts)
    and pings (kind 2: many hosts, some answered)."""
    cols = flows(seed, keys, rows_per_key)
    n = cols["timestamp"].shape[0]
    rng = np.random.default_rng(seed + 1)
    ping = np.arange(n) >= 2 * (n // 3)
    cols["transport"] = np.where(ping, 1, 17).astype(np.uint8)
    cols["src_port"] = np.where(ping, 8, cols["src_port"]).astype(np.uint16)
    cols["dst_port"] = np.where(ping, 0, cols["dst_port"] + 2000).astype(np.uint16)
    cols["dst_packets"] = np.where(ping, rng.random(n) < 0.3, 0).astype(np.int64)
    cols["dst_ip"][ping] = _ips((0x0A05_0000 + rng.integers(0, 3 * rows_per_key, n))
                                [ping].tolist(), np.zeros(int(ping.sum()), bool))
    return cols


CASES = [
    (VerticalScanDetector, "port_scan_vertical", ("src_ip", "dst_ip"),
     lambda d, cols, r: reference_vertical(d, cols, r)),
    (HorizontalScanDetector, "port_scan_horizontal", ("src_ip", "dst_port"),
     lambda d, cols, r: reference_horizontal(d, cols, r)),
    (BruteForceDetector, "brute_force", ("src_ip", "dst_ip", "dst_port"),
     lambda d, cols, r: reference_brute_force(cols, r)),
]


UDP_ICMP_CASES = [
    (UdpVerticalScanDetector, "udp_scan_vertical", ("src_ip", "dst_ip"),
     reference_udp_vertical),
    (UdpHorizontalScanDetector, "udp_scan_horizontal", ("src_ip", "udp_port"),
     reference_udp_horizontal),
    (IcmpSweepDetector, "icmp_sweep", ("src_ip",), reference_icmp_sweep),
]


def check_findings(cols: dict, seed: int, min_findings: int = 1, cases: list = CASES) -> None:
    order = np.random.default_rng(seed)
    for cls, name, key_columns, reference in cases:
        d = detector(cls, name)
        mine = selected(d, cols)
        findings = findings_of(d, mine)
        assert len(findings) >= min_findings, name
        for i in order.permutation(len(findings)).tolist():  # any describe order
            f = findings[i]
            got = f.describe()
            want = reference(d, mine, group_rows(d, mine, f, key_columns))
            assert dataclasses.asdict(got) == dataclasses.asdict(want), (name, f.key)
            assert list(got.details) == list(want.details), name  # document key order


def test_findings_of_hundreds_of_rows_equal_the_per_row_evidence() -> None:
    check_findings(flows(seed=1, keys=6, rows_per_key=400), seed=1, min_findings=12)


def test_udp_scans_and_sweeps_of_hundreds_of_rows_equal_the_per_row_evidence() -> None:
    check_findings(udp_and_icmp(seed=2, keys=6, rows_per_key=300), seed=2, min_findings=6,
                   cases=UDP_ICMP_CASES)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(1, 120))
@example(seed=243, keys=1, rows=1)  # no row selected for some detector
def test_evidence_equals_the_per_row_evidence(seed: int, keys: int, rows: int) -> None:
    check_findings(flows(seed, keys, rows), seed, min_findings=0)
    check_findings(udp_and_icmp(seed, keys, rows), seed, min_findings=0, cases=UDP_ICMP_CASES)


def test_two_evidence_sources_of_brute_force_concatenate_their_rows() -> None:
    """A second source (here: the same flows again, counted as another unit) adds its rows:
    flows and bytes double, each source counts its own distinct units, lengths and times
    stay (a doubled list has the same median and maximum)."""
    d = detector(BruteForceDetector, "brute_force")
    d.sources = (d.sources[0], dataclasses.replace(d.sources[0], unit="sessions_again"))
    cols = selected(d, flows(seed=3, keys=4, rows_per_key=200))
    findings = findings_of(d, cols)
    assert len(findings) >= 4
    for f in findings:
        want = reference_brute_force(cols, group_rows(d, cols, f, CASES[2][2]))
        details = dict(want.details)
        items = list(details.items())
        items.insert(3, ("sessions_again", details["sessions"]))
        details = dict(items)
        for name in ("flows", "client_payload_bytes", "server_payload_bytes"):
            details[name] *= 2
        got = f.describe()
        assert dataclasses.asdict(got) == dataclasses.asdict(
            dataclasses.replace(want, details=details))
        assert list(got.details) == list(details)


def test_lazy_evidence_computes_a_window_on_its_first_describe_only() -> None:
    made = []

    def make(members: np.ndarray):
        made.append(members.tolist())
        return lambda position: (members.tolist(), position)

    lazy = LazyEvidence(np.array([3, 3, 4, 3, 5]), make)
    assert made == []  # nothing described: nothing computed
    assert lazy.describe(3) == ([0, 1, 3], 2)
    assert lazy.describe(0) == ([0, 1, 3], 0)
    assert made == [[0, 1, 3]]  # window 4 and 5 (only repeats, say) never computed
    assert lazy.describe(4) == ([4], 0)
    assert made == [[0, 1, 3], [4]]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=30), min_size=1,
                max_size=8), st.integers(0, 12), st.data())
def test_hit_rows_aggregates_equal_python(groups_values, limit, data) -> None:
    """HitRows over hits drawn from shuffled groups equals per-group Python reductions."""
    values = np.array([v for g in groups_values for v in g], np.int64)
    group = np.repeat(np.arange(len(groups_values)), [len(g) for g in groups_values])
    shuffle = np.random.default_rng(len(values)).permutation(values.shape[0])
    groups = Groups.of(group[shuffle], len(groups_values))
    hits = np.array(data.draw(st.lists(st.integers(0, len(groups_values) - 1), min_size=1,
                                       unique=True)), np.int64)
    row_of = shuffle  # copy i holds row shuffle[i] of `values`
    hr = HitRows(groups, hits, row_of)
    mask = (values % 2 == 0)[hr.rows]
    counts, samples = hr.distinct(values[hr.rows], limit)
    masked_counts, masked = hr.distinct(values[hr.rows], limit, mask)
    ordered = hr.sorted_per_hit(values[hr.rows]).tolist()
    for i, g in enumerate(hits.tolist()):
        mine = sorted(values[hr.rows[hr.bounds[i]:hr.bounds[i + 1]]].tolist())
        assert mine == sorted(groups_values[g])
        assert counts[i] == len(set(mine)) and samples[i] == sorted(set(mine))[:limit]
        even = sorted({v for v in mine if v % 2 == 0})
        assert masked_counts[i] == len(even) and masked[i] == even[:limit]
        assert ordered[hr.bounds[i]:hr.bounds[i + 1]] == mine
        assert hr.sum(values[hr.rows])[i] == sum(mine)
        assert hr.min(values[hr.rows])[i] == min(mine)
        assert hr.count(mask)[i] == sum(1 for v in mine if v % 2 == 0)


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("values", ["mixed", "one object", "distinct objects"])
def test_object_codes_share_codes_between_equal_values(strided: bool, values: str) -> None:
    values = np.array({
        "mixed": [NAMES[i % len(NAMES)] for i in range(40)] + [_name("s", "1")],
        "one object": [NAMES[0]] * 41,
        "distinct objects": [_name("s", str(i % 3)) for i in range(2000)],  # hashed
    }[values], object)
    column = values[::2] if strided else values  # a strided view is made contiguous
    rows = np.array([0, 5, 3, 3, 1, 2, 4, 20, 6, 7, 8], np.int64) % column.shape[0]
    codes, uniques = object_codes(column, rows)
    got = [uniques[c] for c in codes.tolist()]
    assert got == column[rows].tolist()
    assert len(uniques) == len(set(column[rows].tolist()))


def test_ip_numeric_codes_order_addresses_numerically() -> None:
    ips = _ips([0x0A00_0002, 0x0A00_000A, 0x0A00_0002, 5, 0x0A00_000A],
               np.array([False, False, False, True, False]))
    codes, uniques = ip_numeric_codes(ips)
    assert ip_texts(uniques.tolist()) == ["10.0.0.2", "10.0.0.10", "2001:db8::5"]
    assert codes.tolist() == [0, 1, 0, 2, 1]
