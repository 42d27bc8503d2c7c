"""Synthetic event batches for the network detectors' tests (flows, ARP, DNS, TLS), and a
helper that runs real captures through the real sensor + engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from correlation.engine import CorrelationEngine
from pipeline.config import deep_merge, load_config
from pipeline.embedded import run_pipeline
from pipeline.schema import KINDS, EventBatch, validate_batch
from sensors.packets import IP_DTYPE, ip_to_bytes16

BASE_T = 1_699_999_200.0  # a whole hour: offsets align with windows

F, S, R, P, A = 0x01, 0x02, 0x04, 0x08, 0x10

# defaults per flow column when a row does not say
_FLOW_DEFAULTS = {"sport": 40000, "dport": 80, "proto": 6, "sflags": S | A | P | F,
                  "dflags": S | A | P | F, "spk": 5, "dpk": 5, "spay": 300, "dpay": 900,
                  "dur": 0.1, "observer": "sensor-1", "zone": "dmz", "state": "SF"}


def _ip(text: str) -> np.ndarray:
    return np.frombuffer(ip_to_bytes16(text), IP_DTYPE)[0]


def _ns(t: float) -> int:
    return int(round((BASE_T + t) * 1e9))


def flows(rows: list[dict]) -> EventBatch:
    """FLOW batch: src, dst, t + optional sport, dport, proto, sflags, dflags, spk, dpk,
    spay, dpay, sbytes, dbytes, dur, observer, zone, state."""
    n = len(rows)
    cols = {f.column: np.empty(n, f.dtype) for f in KINDS["flow"].fields}
    for i, row in enumerate(rows):
        r = {**_FLOW_DEFAULTS, **row}
        t = _ns(r["t"])
        cols["timestamp"][i], cols["end"][i] = t, t + int(round(r["dur"] * 1e9))
        cols["src_ip"][i], cols["dst_ip"][i] = _ip(r["src"]), _ip(r["dst"])
        cols["src_port"][i], cols["dst_port"][i] = r["sport"], r["dport"]
        cols["transport"][i], cols["vlan"][i], cols["community_id"][i] = r["proto"], 0, ""
        cols["src_tcp_flags"][i] = r["sflags"] if r["proto"] == 6 else 0
        cols["dst_tcp_flags"][i] = r["dflags"] if r["proto"] == 6 else 0
        cols["src_packets"][i], cols["dst_packets"][i] = r["spk"], r["dpk"]
        cols["src_payload_bytes"][i], cols["dst_payload_bytes"][i] = r["spay"], r["dpay"]
        cols["src_bytes"][i] = r.get("sbytes", r["spay"] + 60 * r["spk"])
        cols["dst_bytes"][i] = r.get("dbytes", r["dpay"] + 60 * r["dpk"])
        cols["conn_state"][i], cols["end_reason"][i] = r["state"], "eof"
        cols["observer_name"][i], cols["ingress_zone"][i] = r["observer"], r["zone"]
    batch = EventBatch("flow", cols)
    validate_batch(batch)
    return batch


def events(kind: str, rows: list[dict]) -> EventBatch:
    """A batch of any kind: each row gives src, dst (when the kind has them), t and any
    column by name; other columns get zero / empty values."""
    spec = KINDS[kind]
    n = len(rows)
    cols = {}
    for f in spec.fields:
        if f.dtype == object:
            cols[f.column] = np.array([""] * n, dtype=object)
        else:
            cols[f.column] = np.zeros(n, f.dtype)
    cols["observer_name"][:] = "sensor-1"
    cols["ingress_zone"][:] = "dmz"
    for i, row in enumerate(rows):
        for name, value in row.items():
            if name == "t":
                cols["timestamp"][i] = _ns(value)
            elif name in ("src", "dst"):
                cols[f"{name}_ip"][i] = _ip(value)
            else:
                cols[name][i] = value
    batch = EventBatch(kind, cols)
    validate_batch(batch)
    return batch


def only(*names: str, **overrides: dict) -> dict:
    """Correlation config enabling only the named detectors (sections overridden)."""
    detectors = load_config()["correlation"]["detectors"]
    section = {name: {"enabled": name in names} for name in detectors}
    for name, extra in overrides.items():
        section[name] = {**section.get(name, {}), **extra}
    return {"detectors": section}


def run(batches: list[EventBatch], config: dict) -> tuple[list[dict], CorrelationEngine]:
    engine = CorrelationEngine(config)
    alerts = []
    for b in batches:
        alerts += engine.push(b)
    alerts += engine.flush()
    return alerts, engine


def run_capture(path: Path, override: dict | None = None) -> tuple[list[dict], dict]:
    """(alerts, event counts by kind) of one capture through the real sensor and engine."""
    config = deep_merge(load_config(), override or {})
    report = run_pipeline([path], config)
    return report.alerts, dict(report.events)


def rule_ids(alerts: list[dict], prefix: str = "cirtsa.") -> list[str]:
    return sorted(a["rule"]["id"] for a in alerts if a["rule"]["id"].startswith(prefix))


_CAPTURE_CACHE: dict[tuple[str, str], tuple[list[dict], dict]] = {}


def capture_alerts(path: Path, override: dict | None = None) -> tuple[list[dict], dict]:
    """run_capture, memoized per (path, override) across test modules (captures are replayed
    once per session however many detectors' tests look at them)."""
    key = (str(path), repr(override))
    if key not in _CAPTURE_CACHE:
        _CAPTURE_CACHE[key] = run_capture(path, override)
    return _CAPTURE_CACHE[key]


NEGATIVE_CAPTURES = [f"benign/{n}" for n in (
    "ndpi__dns.pcap", "tcpreplay__test.pcap", "zeek__bro.org.pcap", "zeek__dns53.pcap",
    "zeek__http_get.pcap", "zeek__smtp.pcap", "zeek__ssh_single-conn.pcap",
    "zeek__tls1.2.pcap", "zeek__var-services-std-ports.pcap", "zeek__wikipedia.pcap",
    "zeek__workshop_2011_browse.pcap")] + [f"large/{n}" for n in (
        "ndpi__1kxun.pcap", "zeek__echo-connections.pcap", "zeek__ssh.pcap")]


def above_low(alerts: list[dict], prefix: str) -> list[str]:
    """Messages of alerts of rules under `prefix` with severity above low (21)."""
    return [f"{a['rule']['id']}: {a['message']}" for a in alerts
            if a["rule"]["id"].startswith(prefix) and a["event"]["severity"] > 21]
