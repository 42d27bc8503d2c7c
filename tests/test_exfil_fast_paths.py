"""The exfiltration detectors' cheaper closes keep their findings and evidence: the ICMP
quiet-range exit, exfil_volume's row-free grouping (a hit's rows found again by host and
window), and evidence read at the finding's rows only. Oracles are plain-Python passes
over the rows pushed."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from network_builders import BASE_T, flows, only, run

from correlation.engine import CorrelationEngine, default_config, merge_config
from correlation.exfiltration import IcmpTunnelDetector, _finding_rows
from pipeline.schema import ns_to_iso

NS = 1_000_000_000
HOSTS = ["10.0.0.5", "10.0.0.6", "192.168.1.9", "fd00::5"]
REMOTES = ["203.0.113.7", "198.51.100.10", "2001:db8::1"]


def pushed(batches: list, config: dict) -> list[dict]:
    return run(batches, config)[0]


def split(rows: list[dict], parts: int) -> list:
    rows = sorted(rows, key=lambda r: r["t"])
    chunks = [c for c in np.array_split(np.arange(len(rows)), parts) if c.size]
    return [flows([rows[i] for i in c.tolist()]) for c in chunks]


# --- exfil_icmp: closes whose rows all carry ping-sized payloads end before the grouping ---


class NoExit(IcmpTunnelDetector):
    """The detector without the quiet-range exit (every close groups its pairs)."""

    def _some_large_echo(self, payload: np.ndarray, packets: np.ndarray) -> bool:
        return True


def icmp_engines() -> tuple[CorrelationEngine, CorrelationEngine]:
    config = merge_config(default_config(), only("exfil_icmp"))
    section = config["detectors"]["exfil_icmp"]
    return (CorrelationEngine(config, detectors=[IcmpTunnelDetector(section)]),
            CorrelationEngine(config, detectors=[NoExit(section)]))


def alerts_of(engine: CorrelationEngine, batches: list) -> list[dict]:
    out = []
    for batch in batches:
        out += engine.push(batch)
    return out + engine.flush()


def echo(t: float, src: str, dst: str, per_packet: int, packets: int) -> dict:
    return dict(src=src, dst=dst, proto=1, sport=8, dport=0, t=t, dur=5, spk=packets,
                dpk=packets, spay=per_packet * packets, dpay=per_packet * packets + 1)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * 3600), st.sampled_from(HOSTS[:3]),
                          st.sampled_from(["203.0.113.7", "10.0.0.5"]),
                          st.integers(0, 140), st.integers(0, 900)),
                min_size=1, max_size=40),
       st.integers(1, 5))
def test_icmp_exit_keeps_every_finding(rows, parts) -> None:
    # payloads per packet around the 64-byte normal, so that means of pairs land on both
    # sides of it, and some rows with no packets at all
    built = [echo(t, s, d, per, n) for t, s, d, per, n in rows if s != d]
    if not built:
        return
    fast, full = icmp_engines()
    assert alerts_of(fast, split(built, parts)) == alerts_of(full, split(built, parts))


def test_icmp_closes_of_ordinary_pings_end_early_and_the_tunnel_is_found() -> None:
    calls: list[bool] = []

    class Counting(IcmpTunnelDetector):
        def _some_large_echo(self, payload: np.ndarray, packets: np.ndarray) -> bool:
            calls.append(super()._some_large_echo(payload, packets))
            return calls[-1]

    pings = [echo(i * 60.0, "10.0.0.6", "203.0.113.7", 56, 60) for i in range(180)]
    # one mean just above the normal: a single row above it among ordinary ones
    tunnel = [echo(7200 + i * 60.0, "10.0.0.5", "198.51.100.10", 56, 600) for i in range(5)]
    tunnel += [echo(7500.0, "10.0.0.5", "198.51.100.10", 1000, 200)]
    config = merge_config(default_config(), only("exfil_icmp"))
    engine = CorrelationEngine(config, detectors=[Counting(config["detectors"]["exfil_icmp"])])
    alerts = alerts_of(engine, split(pings + tunnel, 12))
    assert {a["cirtsa"]["alert"]["key"] for a in alerts} == {"10.0.0.5|198.51.100.10"}
    assert calls.count(False) > 0 and calls.count(True) > 0


# --- exfil_volume: groups without per-row arrays; a hit's rows by host and window ---------


def volume_config() -> dict:
    # every (window, host) with enough bytes is a hit: no history, no baseline factor, no
    # suppression of the next hour
    return only("exfil_volume", exfil_volume={
        "min_out_bytes": 1_000_000, "baseline_factor": 0, "min_history_windows": 0,
        "min_out_in_ratio": 0, "suppress_s": 0})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4 * 3600 - 1), st.sampled_from(HOSTS),
                          st.sampled_from(REMOTES), st.integers(1, 900_000),
                          st.integers(0, 90_000)), min_size=1, max_size=40),
       st.integers(1, 4))
def test_volume_evidence_equals_a_dict_pass(rows, parts) -> None:
    built = [dict(src=s, dst=d, t=t, dport=443, spay=b, dpay=r, sbytes=b, dbytes=r)
             for t, s, d, b, r in rows]
    want: dict = defaultdict(lambda: [0, 0, set(), []])
    for r in built:  # (host, hour) -> bytes out, in, destinations, times
        entry = want[(r["src"], int(BASE_T + r["t"]) // 3600)]
        entry[0] += r["sbytes"]
        entry[1] += r["dbytes"]
        entry[2].add(r["dst"])
        entry[3].append(int(round((BASE_T + r["t"]) * NS)))
    expected = sorted((host, ns_to_iso(k * 3600 * NS), v[0], v[1], len(v[2]),
                       ns_to_iso(min(v[3]))) for (host, k), v in want.items()
                      if v[0] >= 1_000_000)
    # several batches, and one: then every window closes at the flush, in one close
    for batches in (split(built, parts), split(built, 1)):
        got = sorted((a["source"]["ip"], a["cirtsa"]["alert"]["window"]["start"],
                      a["cirtsa"]["evidence"]["bytes_out"], a["cirtsa"]["evidence"]["bytes_in"],
                      a["cirtsa"]["evidence"]["distinct_destinations"],
                      a["cirtsa"]["evidence"]["first_seen"])
                     for a in pushed(batches, volume_config()))
        assert got == expected


def test_volume_hits_of_one_host_in_one_multi_window_close() -> None:
    # one batch: the flush closes the last two hours together; each hit's evidence holds
    # the rows of its own hour only
    built = [dict(src="10.0.0.5", dst="203.0.113.7", t=t, dport=443, spay=600_000, dpay=0,
                  sbytes=600_000, dbytes=0) for t in (10, 20, 3610, 3620, 7300, 7400)]
    alerts = pushed(split(built, 1), volume_config())
    assert [(a["cirtsa"]["alert"]["window"]["start"], a["cirtsa"]["evidence"]["bytes_out"])
            for a in alerts] == [(ns_to_iso(int(BASE_T + h * 3600) * NS), 1_200_000)
                                 for h in range(3)]


# --- evidence read at the finding's rows ---------------------------------------------------


def test_finding_rows_read_only_the_declared_columns_at_the_rows() -> None:
    cols = {"timestamp": np.arange(10) * 7, "src_ip": np.arange(10) + 100}
    sub, r = _finding_rows(cols, np.array([2, 5, 9]), ("timestamp", "end", "src_ip"))
    assert set(sub) == {"timestamp", "src_ip"}  # a column the rows lack is left out
    assert sub["timestamp"].tolist() == [14, 35, 63] and r.tolist() == [0, 1, 2]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2 * 3600), st.sampled_from(HOSTS[:3]),
                          st.sampled_from(REMOTES[:2]), st.integers(1, 3_000_000),
                          st.integers(0, 50_000), st.sampled_from([443, 22])),
                min_size=1, max_size=40),
       st.integers(1, 4))
def test_upload_evidence_equals_a_dict_pass(rows, parts) -> None:
    built = [dict(src=s, dst=d, t=t, dport=p, spay=up, dpay=down, spk=10, dpk=10)
             for t, s, d, up, down, p in rows]
    config = only("exfil_upload", exfil_upload={"min_upload_bytes": 4_000_000})
    for a in pushed(split(built, parts), config):
        start = a["cirtsa"]["alert"]["window"]["start"]
        mine = [r for r in built if r["src"] == a["source"]["ip"]
                and r["dst"] == a["destination"]["ip"]
                and ns_to_iso(int(round((BASE_T + r["t"]) * NS))) >= start
                and ns_to_iso(int(round((BASE_T + r["t"] - 3600) * NS))) < start]
        ev = a["cirtsa"]["evidence"]
        assert ev["bytes_out"] == sum(r["spay"] for r in mine) >= 4_000_000
        assert ev["bytes_in"] == sum(r["dpay"] for r in mine)
        assert ev["flows"] == len(mine)
        assert ev["ports"] == sorted({r["dport"] for r in mine})
