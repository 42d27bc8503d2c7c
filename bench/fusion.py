# ruff: noqa: E402
"""Fusion throughput: normalize + dedupe + enrich, one core.

1. our own sensor's flow batches (already columnar) through FusionStage with a 100k-prefix
   constituency table and 1M threat-intel indicators (600k IPv4 addresses, 100k IPv4
   CIDRs /20-/28, 300k domains; ~11 % of the flows hit one): events/s (target >= 1,000,000), and
   the same without indicators;
2. Suricata EVE JSON lines (flow + dns, no community_id: fusion computes it) through
   EveAdapter (one-pass JSON scan kernel + columns from spans; msgspec / orjson decoding
   as fallback) + FusionStage with the same tables vs a plain `json.loads` + per-event
   dict-mapping loop producing the same fields (target >= 3x), and vs the narrower loop
   of this benchmark's first version (for comparison with earlier figures); then the
   adapter alone and the scan kernel alone (msgspec typed decode in trees without the
   scanner) vs the same anchor, to show where the rest of the time goes.
Prints medians of RUNS runs of CPU time (time.process_time); the anchor is measured in
the same run, interleaved. The kernels' first call (compile or cache load) is timed apart.
Usage: python3 bench/fusion.py [--runs 5] [--indicators 1000000] [--skip-sensor]
       [--skip-zeek] [--skip-eve]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

# Run as `python3 bench/fusion.py`: this file's directory comes first on sys.path and its
# name would shadow the fusion package; the repository root replaces it (works without an
# editable install too).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [os.path.dirname(_HERE)] + [p for p in sys.path
                                       if os.path.abspath(p or ".") != _HERE]

import numpy as np
import orjson

from fusion.adapters import EveAdapter, ZeekAdapter, _eve_fast

try:  # the one-pass JSON scanner (absent in trees before it, for A/B runs of this script;
    # asked of fusion.adapters, which uses it, not found elsewhere on the path)
    from fusion.adapters import EVE_KEYS, join_lines, scan_lines
except ImportError:
    scan_lines = None
from fusion.enrich import Constituency, Enricher
from fusion.sources import zeek_file
from fusion.stage import FusionStage
from pipeline.bus import InMemoryBus
from pipeline.intel import Indicator, IndicatorSet
from pipeline.schema import KINDS, EventBatch
from sensors.community_id import community_id_column
from sensors.packets import IP_DTYPE, ipv4_column

RUNS = 5
# CPU time of this process: the machine is shared, wall time measures the neighbours too.
_clock = time.process_time


def _prefix_table(rng: random.Random, n: int = 100_000) -> Enricher:
    prefixes = [f"{rng.getrandbits(8) or 1}.{rng.getrandbits(8)}.{rng.getrandbits(8)}.0/24"
                for _ in range(n // 2)]
    prefixes += [f"2001:db8:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::/64"
                 for _ in range(n // 4)]
    prefixes += [f"{rng.getrandbits(8) or 1}.{rng.getrandbits(8)}.0.0/{rng.choice([12, 16, 20])}"
                 for _ in range(n - len(prefixes))]
    owners = [Constituency(f"c{i % 500}", f"s{i % 20}", f"o{i % 500}") for i in range(n)]
    return Enricher(prefixes, owners)


def _indicators(rng: random.Random, n: int) -> IndicatorSet:
    """n indicators: 60 % IPv4 addresses, 10 % IPv4 CIDRs (/20-/28), 30 % domains. Built
    from Indicator objects (no file parsing: loading is not what is measured)."""
    out = []
    for _ in range(n * 6 // 10):  # listed hosts anywhere in the public space
        out.append(Indicator("ip", ".".join(str(rng.randrange(1, 224)) for _ in range(4)),
                             "bench"))
    for _ in range(n // 10):
        length = rng.choice([20, 24, 26, 28])
        addr = rng.getrandbits(32) & ~((1 << (32 - length)) - 1)
        out.append(Indicator("cidr", f"{addr >> 24}.{(addr >> 16) & 255}.{(addr >> 8) & 255}."
                             f"{addr & 255}/{length}", "bench"))
    for i in range(n - len(out)):
        out.append(Indicator("domain", f"bad{i}.example{i % 1000}.test", "bench"))
    return IndicatorSet(out)


def _flow_batches(rng: np.random.Generator, rows: int, per_batch: int) -> list[EventBatch]:
    hosts = rng.integers(0x0A000000, 0x0A000000 + 50_000, size=rows).astype(np.uint32)
    remote = rng.integers(1 << 24, 0xDF000000, size=rows).astype(np.uint32)
    cols = {}
    spec = KINDS["flow"]
    for f in spec.fields:
        cols[f.column] = np.zeros(rows, dtype=f.dtype)
    cols["src_ip"] = ipv4_column(hosts)
    cols["dst_ip"] = ipv4_column(remote)
    cols["src_port"] = rng.integers(1024, 65535, rows).astype(np.uint16)
    cols["dst_port"] = rng.choice([53, 80, 443, 22], rows).astype(np.uint16)
    cols["transport"] = np.full(rows, 6, np.uint8)
    cols["timestamp"] = np.sort(rng.integers(0, 3600 * 10**9, rows)) + 1_700_000_000 * 10**9
    cols["end"] = cols["timestamp"] + 10**9
    for c in ("observer_name", "ingress_zone", "conn_state", "end_reason"):
        cols[c] = np.full(rows, "sensor-1", dtype=object)
    cols["community_id"] = community_id_column(cols["src_ip"], cols["dst_ip"],
                                                cols["transport"], cols["src_port"],
                                                cols["dst_port"])
    assert cols["src_ip"].dtype == IP_DTYPE
    return [EventBatch("flow", {k: v[i:i + per_batch] for k, v in cols.items()})
            for i in range(0, rows, per_batch)]


def bench_sensor_batches(enricher: Enricher, intel: IndicatorSet) -> tuple[float, float, int]:
    """(events/s with indicators, events/s without, events tagged per pass)."""
    batches = _flow_batches(np.random.default_rng(1), 1_000_000, 65_536)
    with_intel, without = [], []
    tagged = 0
    for _ in range(RUNS):
        for rates, ind in ((with_intel, intel), (without, None)):
            enricher.intel = ind
            stage = FusionStage(InMemoryBus(), enricher=enricher)
            t = _clock()
            for b in batches:
                stage.on_batch(b)
            rates.append(1_000_000 / (_clock() - t))
            if ind is not None:
                tagged = stage.stats["intel.events"]
    enricher.intel = None
    return statistics.median(with_intel), statistics.median(without), tagged


def _eve_lines(n: int) -> list[bytes]:
    rng = random.Random(2)
    lines = []
    for i in range(n):
        src = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        dst = ".".join(str(rng.randrange(1, 224)) for _ in range(4))
        ts = f"2024-07-30T16:{(i // 60) % 60:02d}:{i % 60:02d}.{rng.randrange(10**6):06d}+0000"
        if i % 2:
            rec = {"timestamp": ts, "flow_id": i, "event_type": "flow", "src_ip": src,
                   "src_port": rng.randrange(1024, 65535), "dest_ip": dst, "dest_port": 443,
                   "proto": "TCP", "app_proto": "tls",
                   "flow": {"pkts_toserver": 7, "pkts_toclient": 6, "bytes_toserver": 900,
                            "bytes_toclient": 4000, "start": ts, "end": ts, "age": 0,
                            "state": "closed", "reason": "timeout", "alerted": False},
                   "tcp": {"tcp_flags": "1b", "tcp_flags_ts": "1b", "tcp_flags_tc": "1b"}}
        else:
            rec = {"timestamp": ts, "flow_id": i, "event_type": "dns", "src_ip": src,
                   "src_port": rng.randrange(1024, 65535), "dest_ip": dst, "dest_port": 53,
                   "proto": "UDP", "dns": {"type": "query", "id": i % 65536,
                                           "rrname": f"h{i}.example.com", "rrtype": "A"}}
        lines.append(orjson.dumps(rec))
    return lines


def _plain_loop(lines: list[bytes]) -> list[dict]:
    """Narrow anchor (the one of the first version of this benchmark): json.loads + one
    dict per event with the 5-tuple, time, counters / DNS question only."""
    from datetime import datetime

    out = []
    for line in lines:
        r = json.loads(line)
        e = {"timestamp": datetime.fromisoformat(r["timestamp"]).timestamp(),
             "src_ip": r["src_ip"], "dst_ip": r["dest_ip"], "src_port": r["src_port"],
             "dst_port": r["dest_port"], "transport": r["proto"].lower()}
        if r["event_type"] == "flow":
            f = r["flow"]
            e.update(src_packets=f["pkts_toserver"], dst_packets=f["pkts_toclient"],
                     src_bytes=f["bytes_toserver"], dst_bytes=f["bytes_toclient"],
                     end=datetime.fromisoformat(f["end"]).timestamp())
        else:
            d = r["dns"]
            e.update(qname=d["rrname"].lower(), qtype=d["rrtype"], dns_id=d["id"])
        out.append(e)
    return out


_REASONS = {"timeout": "idle", "forced": "evicted", "shutdown": "eof", "tcp_reuse": "fin"}


def _plain_loop_same_fields(lines: list[bytes]) -> list[dict]:
    """Same-fields anchor: json.loads + one dict per event holding every field the EVE
    adapter fills for these records (observer, zone, vlan, community_id as given, flow start
    and end, counters, TCP flags from hex, end reason; DNS id, question, type, class,
    direction, rcode, flags, answers). Addresses stay text: no parsing, no validation, no
    Community ID computation, no dedupe or enrichment (all work the fusion path does on
    top)."""
    from datetime import datetime

    out = []
    for line in lines:
        r = json.loads(line)
        vlan = r.get("vlan")
        e = {"observer_name": r.get("host", "suricata"), "ingress_zone": "default",
             "src_ip": r["src_ip"], "dst_ip": r["dest_ip"], "src_port": r["src_port"],
             "dst_port": r["dest_port"], "transport": r["proto"].lower(),
             "vlan": vlan[-1] if vlan else 0, "community_id": r.get("community_id", "")}
        if r["event_type"] == "flow":
            f, tcp = r["flow"], r.get("tcp", {})
            e.update(timestamp=datetime.fromisoformat(f["start"]).timestamp(),
                     end=datetime.fromisoformat(f["end"]).timestamp(),
                     src_packets=f["pkts_toserver"], dst_packets=f["pkts_toclient"],
                     src_bytes=f["bytes_toserver"], dst_bytes=f["bytes_toclient"],
                     src_tcp_flags=int(tcp.get("tcp_flags_ts", "0"), 16),
                     dst_tcp_flags=int(tcp.get("tcp_flags_tc", "0"), 16),
                     end_reason=_REASONS.get(f.get("reason"), f.get("reason")))
        else:
            d = r["dns"]
            answer = d.get("type") == "answer"
            e.update(timestamp=datetime.fromisoformat(r["timestamp"]).timestamp(),
                     dns_id=d["id"], is_response=answer,
                     qname=d["rrname"].rstrip(".").lower(), qtype=d.get("rrtype"),
                     qclass=1, rcode=d.get("rcode", "NOERROR") if answer else "NOERROR",
                     flags=int(d.get("flags", "0"), 16), answers=d.get("answers", []))
        out.append(e)
    return out


def _decode_alone(chunk: list[bytes]) -> None:
    """The adapter's first step alone: the scan kernel, or the typed decode before it."""
    if scan_lines is None:
        _eve_fast(chunk)
    else:
        buf, starts, ends, _ = join_lines(chunk)
        scan_lines(buf, starts, ends, EVE_KEYS.names, EVE_KEYS.offsets, EVE_KEYS.first,
                   EVE_KEYS.next)


_FIRST_STEP = ("msgspec typed decode incl. UTF-8/overflow guards (fusion.adapters._eve_fast)"
               if scan_lines is None else "JSON scan kernel (fusion.json_scan.scan_lines)")


def bench_eve(enricher: Enricher,
              intel: IndicatorSet) -> tuple[float, float, float, float, float]:
    """(ours, narrow anchor, same-fields anchor, adapter alone, typed decode alone)
    events/s, interleaved per run."""
    lines = _eve_lines(200_000)
    ours, plain, same, alone, decode = [], [], [], [], []
    enricher.intel = intel
    for _ in range(RUNS):
        stage = FusionStage(InMemoryBus(), enricher=enricher)
        adapter = EveAdapter()
        t = _clock()
        for i in range(0, len(lines), 8192):
            stage.on_external(adapter.convert(lines[i:i + 8192]))
        ours.append(len(lines) / (_clock() - t))
        adapter = EveAdapter()
        t = _clock()
        for i in range(0, len(lines), 8192):
            adapter.convert(lines[i:i + 8192])
        alone.append(len(lines) / (_clock() - t))
        t = _clock()
        for i in range(0, len(lines), 8192):
            _decode_alone(lines[i:i + 8192])
        decode.append(len(lines) / (_clock() - t))
        t = _clock()
        _plain_loop(lines)
        plain.append(len(lines) / (_clock() - t))
        t = _clock()
        _plain_loop_same_fields(lines)
        same.append(len(lines) / (_clock() - t))
    enricher.intel = None
    return (statistics.median(ours), statistics.median(plain), statistics.median(same),
            statistics.median(alone), statistics.median(decode))


def bench_eve_breakdown(enricher: Enricher, intel: IndicatorSet) -> dict[str, float]:
    """Where an EVE line's time goes, us/line (medians): typed decode, adapter (decode +
    columns + validation + Community ID), Community ID alone (on the adapter's columns),
    fusion stage alone (dedupe + constituency + IOC on the adapter's batches), anchor."""
    lines = _eve_lines(200_000)
    chunks = [lines[i:i + 8192] for i in range(0, len(lines), 8192)]
    results = [EveAdapter().convert(c) for c in chunks]
    batches = [b for r in results for b in r.batches]
    enricher.intel = intel
    out: dict[str, list[float]] = {k: [] for k in ("decode", "adapter", "community_id",
                                                   "stage", "anchor")}
    per_line = 1e6 / len(lines)
    for _ in range(RUNS):
        t = _clock()
        for c in chunks:
            _decode_alone(c)
        out["decode"].append((_clock() - t) * per_line)
        adapter = EveAdapter()
        t = _clock()
        for c in chunks:
            adapter.convert(c)
        out["adapter"].append((_clock() - t) * per_line)
        t = _clock()
        for b in batches:
            c = b.columns
            community_id_column(c["src_ip"], c["dst_ip"], c["transport"], c["src_port"],
                                c["dst_port"])
        out["community_id"].append((_clock() - t) * per_line)
        stage = FusionStage(InMemoryBus(), enricher=enricher)
        t = _clock()
        for r in results:
            stage.on_external(r)
        out["stage"].append((_clock() - t) * per_line)
        t = _clock()
        _plain_loop_same_fields(lines)
        out["anchor"].append((_clock() - t) * per_line)
    enricher.intel = None
    return {k: statistics.median(v) for k, v in out.items()}


# --- Zeek --------------------------------------------------------------------------------------

def _zeek_records(n: int) -> dict[str, list[dict]]:
    """conn, dns and http records shaped like Zeek's JSON writer output (the fields of the
    reference logs in ../shared/reference/sensor-logs/zeek/json), fixed seed."""
    rng = random.Random(4)
    out: dict[str, list[dict]] = {"conn": [], "dns": [], "http": []}
    for i in range(n):
        ts = 1_713_484_795 + i * 0.001 + rng.random() * 1e-3
        base = {"ts": round(ts, 6), "uid": f"C{rng.getrandbits(64):016x}",
                "id.orig_h": f"10.{rng.randrange(256)}.{rng.randrange(256)}."
                             f"{rng.randrange(1, 255)}",
                "id.orig_p": rng.randrange(1024, 65535),
                "id.resp_h": ".".join(str(rng.randrange(1, 224)) for _ in range(4))}
        log = ("conn", "dns", "http")[i % 3]
        if log == "conn":
            rec = {**base, "id.resp_p": 443, "proto": "tcp", "service": "ssl",
                   "duration": round(rng.random() * 30, 6), "orig_bytes": 517,
                   "resp_bytes": 4012, "conn_state": "SF", "local_orig": True,
                   "local_resp": False, "missed_bytes": 0, "history": "ShADadFf",
                   "orig_pkts": 9, "orig_ip_bytes": 1001, "resp_pkts": 8,
                   "resp_ip_bytes": 4436, "tunnel_parents": []}
        elif log == "dns":
            rec = {**base, "id.resp_p": 53, "proto": "udp", "trans_id": i % 65536,
                   "rtt": 0.02, "query": f"h{i}.example.com", "qclass": 1,
                   "qclass_name": "C_INTERNET", "qtype": 1, "qtype_name": "A", "rcode": 0,
                   "rcode_name": "NOERROR", "AA": False, "TC": False, "RD": True, "RA": True,
                   "Z": 0, "answers": [f"192.0.2.{i % 250 + 1}"], "TTLs": [60.0],
                   "rejected": False}
        else:
            rec = {**base, "id.resp_p": 80, "trans_depth": 1, "method": "GET",
                   "host": f"www{i % 97}.example.org", "uri": f"/p/{i}?q=1", "version": "1.1",
                   "user_agent": "curl/7.58.0", "request_body_len": 0,
                   "response_body_len": 3735, "status_code": 200, "status_msg": "OK",
                   "tags": [], "resp_fuids": [f"F{i:x}"], "resp_mime_types": ["text/html"]}
        out[log].append(rec)
    return out


_CONN_FIELDS = ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto",
                "service", "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig",
                "local_resp", "missed_bytes", "history", "orig_pkts", "orig_ip_bytes",
                "resp_pkts", "resp_ip_bytes", "tunnel_parents")
_CONN_TYPES = ("time", "string", "addr", "port", "addr", "port", "enum", "string", "interval",
               "count", "count", "string", "bool", "bool", "count", "string", "count", "count",
               "count", "count", "set[string]")


def _tsv_value(v) -> str:
    if isinstance(v, bool):
        return "T" if v else "F"
    if isinstance(v, list):
        return ",".join(map(str, v)) if v else "(empty)"
    return str(v)


def _zeek_tsv(conn: list[dict]) -> bytes:
    """The conn records as a Zeek TSV conn.log (the writer's header lines)."""
    head = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)",
            "#unset_field\t-", "#path\tconn", "#fields\t" + "\t".join(_CONN_FIELDS),
            "#types\t" + "\t".join(_CONN_TYPES)]
    rows = ["\t".join(_tsv_value(r[f]) for f in _CONN_FIELDS) for r in conn]
    return ("\n".join(head + rows) + "\n").encode()


def _history_anchor(history: str) -> tuple[int, int]:
    bits = {"s": 0x02, "h": 0x12, "a": 0x10, "d": 0x18, "f": 0x11, "r": 0x04}
    orig = resp = 0
    for ch in history:
        if ch.isupper():
            orig |= bits.get(ch.lower(), 0)
        else:
            resp |= bits.get(ch, 0)
    return orig, resp


def _zeek_map(log: str, r: dict) -> dict:
    """Same-fields anchor mapping of one Zeek record (what ZeekAdapter fills); no address
    parsing, validation, Community ID, dedupe or enrichment."""
    e = {"observer_name": "zeek", "ingress_zone": "default", "timestamp": r["ts"],
         "src_ip": r["id.orig_h"], "dst_ip": r["id.resp_h"], "src_port": r["id.orig_p"],
         "dst_port": r["id.resp_p"], "transport": r.get("proto", "tcp"),
         "vlan": r.get("vlan", 0), "community_id": r.get("community_id", "")}
    if log == "conn":
        flags = _history_anchor(r.get("history", ""))
        e.update(end=r["ts"] + r.get("duration", 0.0), src_packets=r.get("orig_pkts"),
                 dst_packets=r.get("resp_pkts"), src_bytes=r.get("orig_ip_bytes"),
                 dst_bytes=r.get("resp_ip_bytes"), src_payload_bytes=r.get("orig_bytes"),
                 dst_payload_bytes=r.get("resp_bytes"), src_tcp_flags=flags[0],
                 dst_tcp_flags=flags[1], conn_state=r.get("conn_state"))
    elif log == "dns":
        ttls = r.get("TTLs", [])
        e.update(dns_id=r.get("trans_id"), is_response="rcode" in r,
                 qname=r.get("query", "").rstrip(".").lower(), qtype=r.get("qtype"),
                 qclass=r.get("qclass"), rcode=r.get("rcode"),
                 flags=(0x8000 if "rcode" in r else 0) | (0x0100 if r.get("RD") else 0)
                 | (0x0080 if r.get("RA") else 0) | (0x0400 if r.get("AA") else 0),
                 answers=[{"name": r.get("query", ""), "type": "A", "class": "IN",
                           "ttl": int(ttls[i]) if i < len(ttls) else 0, "data": a}
                          for i, a in enumerate(r.get("answers", []))])
    else:
        mimes = r.get("resp_mime_types") or [None]
        e.update(method=r.get("method"), host=r.get("host", "").lower(), uri=r.get("uri"),
                 version=r.get("version"), user_agent=r.get("user_agent"),
                 referrer=r.get("referrer"), status=r.get("status_code"),
                 request_body_bytes=r.get("request_body_len", -1),
                 response_body_bytes=r.get("response_body_len", -1),
                 response_mime_type=mimes[0], basic_auth_user=r.get("username"))
    return e


def _zeek_json_anchor(lines: list[bytes], log: str) -> list[dict]:
    return [_zeek_map(log, json.loads(line)) for line in lines]


_TSV_CONVERT = {"time": float, "interval": float, "count": int, "port": int,
                "bool": lambda v: v == "T", "set[string]": lambda v: v.split(",")}


def _zeek_tsv_anchor(path: str) -> list[dict]:
    """split + dict mapping: each row -> the Zeek record (typed fields) -> same mapping."""
    out = []
    with open(path, "rb") as fh:
        fields = types = None
        for raw in fh:
            line = raw.rstrip(b"\n").decode()
            if line.startswith("#"):
                key, _, value = line[1:].partition("\t")
                if key == "fields":
                    fields = value.split("\t")
                elif key == "types":
                    types = [_TSV_CONVERT.get(t, str) for t in value.split("\t")]
                continue
            rec = {f: conv(v) for f, conv, v in zip(fields, types, line.split("\t"),
                                                    strict=True) if v != "-"}
            out.append(_zeek_map("conn", rec))
    return out


def bench_zeek(enricher: Enricher, intel: IndicatorSet, tmpdir: str) -> dict[str, tuple]:
    """Per Zeek log type, (ours: adapter + fusion stage, adapter alone, anchor) lines/s."""
    records = _zeek_records(150_000)
    lines = {log: [orjson.dumps(r) for r in recs] for log, recs in records.items()}
    tsv_path = os.path.join(tmpdir, "conn.log")
    with open(tsv_path, "wb") as fh:
        fh.write(_zeek_tsv(records["conn"]))
    enricher.intel = intel
    rates: dict[str, dict[str, list[float]]] = {}
    for _ in range(RUNS):
        for log, ls in lines.items():
            r = rates.setdefault(f"json {log}", {"ours": [], "alone": [], "anchor": []})
            stage = FusionStage(InMemoryBus(), enricher=enricher)
            adapter = ZeekAdapter()
            t = _clock()
            for i in range(0, len(ls), 8192):
                stage.on_external(adapter.convert(ls[i:i + 8192], log))
            r["ours"].append(len(ls) / (_clock() - t))
            adapter = ZeekAdapter()
            t = _clock()
            for i in range(0, len(ls), 8192):
                adapter.convert(ls[i:i + 8192], log)
            r["alone"].append(len(ls) / (_clock() - t))
            t = _clock()
            _zeek_json_anchor(ls, log)
            r["anchor"].append(len(ls) / (_clock() - t))
        r = rates.setdefault("tsv conn", {"ours": [], "alone": [], "anchor": []})
        n = len(records["conn"])
        stage = FusionStage(InMemoryBus(), enricher=enricher)
        t = _clock()
        for result in zeek_file(tsv_path, ZeekAdapter()):
            stage.on_external(result)
        r["ours"].append(n / (_clock() - t))
        t = _clock()
        for _result in zeek_file(tsv_path, ZeekAdapter()):
            pass
        r["alone"].append(n / (_clock() - t))
        t = _clock()
        _zeek_tsv_anchor(tsv_path)
        r["anchor"].append(n / (_clock() - t))
    enricher.intel = None
    return {k: tuple(statistics.median(v[x]) for x in ("ours", "alone", "anchor"))
            for k, v in rates.items()}


def main() -> None:
    global RUNS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--indicators", type=int, default=1_000_000)
    ap.add_argument("--skip-sensor", action="store_true", help="skip our own sensor batches")
    ap.add_argument("--skip-zeek", action="store_true", help="skip the Zeek logs")
    ap.add_argument("--skip-eve", action="store_true", help="skip the Suricata EVE lines")
    args = ap.parse_args()
    RUNS = args.runs
    if hasattr(os, "sched_setaffinity"):  # one core, as the target says
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    enricher = _prefix_table(random.Random(0))
    t = _clock()
    intel = _indicators(random.Random(3), args.indicators)
    print(f"{len(intel):,} indicators built in {_clock() - t:.1f} s (once)")
    t = _clock()
    EveAdapter().convert(_eve_lines(64))  # kernels: compile, or load from the numba cache
    print(f"EVE adapter first call (kernel compile or cache load): {_clock() - t:.2f} s CPU")
    t = _clock()
    for log, recs in _zeek_records(30).items():  # the Zeek scan kernels, likewise
        ZeekAdapter().convert([orjson.dumps(r) for r in recs], log)
    print(f"Zeek adapter first call (kernel compile or cache load): {_clock() - t:.2f} s CPU")
    if not args.skip_sensor:
        _print_sensor(enricher, intel)
    if not args.skip_eve:
        _print_eve(enricher, intel)
    if not args.skip_zeek:
        _print_zeek(enricher, intel)


def _print_sensor(enricher: Enricher, intel: IndicatorSet) -> None:
    sensor, bare, tagged = bench_sensor_batches(enricher, intel)
    print(f"sensor flow batches, normalize+dedupe+enrich (100k prefixes, {len(intel):,} "
          f"indicators, {tagged:,} of 1,000,000 events tagged): {sensor:,.0f} events/s "
          f"(target 1,000,000: {sensor / 1e6:.2f}x)")
    print(f"  same without indicators: {bare:,.0f} events/s")


def _print_eve(enricher: Enricher, intel: IndicatorSet) -> None:
    ours, plain, same, alone, decode = bench_eve(enricher, intel)
    print(f"EVE JSON lines, scan kernel + columnar adapter + fusion incl. Community "
          f"ID computation (same tables): {ours:,.0f} events/s")
    print(f"anchor json.loads + dict-mapping loop, same fields as the adapter: "
          f"{same:,.0f} events/s; ratio {ours / same:.2f}x (target 3x)")
    print(f"anchor json.loads + narrow dict-mapping loop (first version's anchor): "
          f"{plain:,.0f} events/s; ratio {ours / plain:.2f}x")
    # Where the gap is: the anchor does no validation, Community ID, dedupe or enrichment.
    print(f"  EveAdapter alone (scan, columns, validation, Community ID; no fusion "
          f"stage): {alone:,.0f} events/s, {alone / same:.2f}x the same-fields anchor")
    print(f"  {_FIRST_STEP} alone: {decode:,.0f} events/s, {decode / same:.2f}x the "
          f"same-fields anchor")
    parts = bench_eve_breakdown(enricher, intel)
    print("EVE per-line cost, us/line (medians; the parts are timed separately):")
    print(f"  {_FIRST_STEP}: {parts['decode']:.2f}")
    print(f"  columns + validation + address parsing (adapter - that - Community ID): "
          f"{parts['adapter'] - parts['decode'] - parts['community_id']:.2f}")
    print(f"  Community ID computation (SHA1 per row): {parts['community_id']:.2f}")
    print(f"  fusion stage (dedupe + constituency + IOC match): {parts['stage']:.2f}")
    print(f"  total {parts['adapter'] + parts['stage']:.2f} vs anchor {parts['anchor']:.2f} "
          f"(3x the anchor = {parts['anchor'] / 3:.2f} us/line)")


def _print_zeek(enricher: Enricher, intel: IndicatorSet) -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        zeek = bench_zeek(enricher, intel, tmpdir)
    print("Zeek (50k lines per log type; TSV: conn.log file, 50k rows): ours = adapter + "
          "fusion stage (same tables); anchor = json.loads / split + same-fields dict mapping")
    for name, (ours_z, alone_z, anchor_z) in zeek.items():
        print(f"  {name}: ours {ours_z:,.0f} lines/s, adapter alone {alone_z:,.0f}, anchor "
              f"{anchor_z:,.0f}; ratio {ours_z / anchor_z:.2f}x (adapter alone "
              f"{alone_z / anchor_z:.2f}x; target 3x)")


if __name__ == "__main__":
    main()
