"""Elasticsearch test helpers: a real osmem-server process, a response-dropping TCP proxy,
and synthetic ECS alerts. Imported by tests as `from es_fixtures import ...`.

osmem-server's pytest plugin offers `osmem_server` (one session-wide process) and
`osmem_clone` (a copy-on-write clone per test). The outage tests must kill and restart the
server on the same port, which the plugin's shared process cannot do, so these fixtures run
their own process per test (it starts in milliseconds).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

osmem_server = pytest.importorskip("osmem_server", reason="osmem-server (test extra) missing")

from correlation.es_setup import make_client  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OsmemProcess:
    """One osmem-server process on 127.0.0.1; kill/restart keep the port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> OsmemProcess:
        binary = osmem_server.resolve_binary()
        self.proc = subprocess.Popen(
            [binary, "--addr", f"127.0.0.1:{self.port}", "--no-stdin-watch", "--no-ja"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        # The server prints one JSON line with its URL when it listens.
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line or "url" not in json.loads(line):
            self.kill()
            raise RuntimeError(f"osmem-server did not start: {line!r}")
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("osmem-server does not accept connections")

    def kill(self) -> None:
        """SIGKILL by PID (a crash, not a clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> OsmemProcess:
        self.kill()
        return self.start()


@pytest.fixture(name="osmem")
def osmem_process() -> Iterator[OsmemProcess]:
    """A fresh osmem-server per test (import `osmem_process`, request `osmem`)."""
    server = OsmemProcess().start()
    yield server
    server.kill()


def es_client(url: str, **kwargs):
    """A client as the tests use it: plain JSON media types for osmem, and no transport
    level retries, so the sink's own retry logic is what gets exercised."""
    options = {"request_timeout": 10, "max_retries": 0, **kwargs}
    return make_client(url, compat_plain_json=True, **options)


class DropReplyProxy:
    """TCP relay to `target_port` that, while `drop_bulk_replies` > 0, forwards a _bulk
    request to the server but closes the client connection instead of relaying the reply:
    the documents are indexed, the writer never hears it (an acknowledgement lost in an
    outage)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.drop_bulk_replies = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            state = {"drop": False}
            threading.Thread(target=self._pump_requests, args=(client, upstream, state),
                             daemon=True).start()
            threading.Thread(target=self._pump_replies, args=(upstream, client, state),
                             daemon=True).start()

    def _pump_requests(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        try:
            while data := src.recv(65536):
                if data.startswith((b"POST /_bulk", b"PUT /_bulk")):
                    with self._lock:
                        if self.drop_bulk_replies > 0:
                            self.drop_bulk_replies -= 1
                            state["drop"] = True
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src, dst)

    def _pump_replies(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        try:
            while data := src.recv(65536):
                if state["drop"]:
                    with self._lock:
                        self.dropped += 1
                    # Give the server time to finish the request it is answering, then cut.
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src, dst)

    def close(self) -> None:
        self._closed = True
        self._listener.close()


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


# --- synthetic alerts -------------------------------------------------------------------

RULES = (
    # (rule id, name, category, tactic id, tactic name, technique id, technique name, severity)
    ("cirtsa-scan-horizontal", "Horizontal port scan", "Network scan", "TA0007", "Discovery",
     "T1046", "Network Service Discovery", 47),
    ("cirtsa-bruteforce-ssh", "SSH brute force", "Brute force", "TA0006", "Credential Access",
     "T1110", "Brute Force", 73),
    ("cirtsa-dns-tunnel", "DNS tunnelling", "Command and control", "TA0011",
     "Command and Control", "T1071.004", "Application Layer Protocol: DNS", 73),
)
BASE_TIME = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def source_ip(i: int) -> str:
    """Deterministic mix of 192.168/16, 10/8 and IPv6 sources."""
    if i % 5 == 4:
        return f"2001:db8::{i % 65535:x}"
    if i % 3 == 0:
        return f"10.{(i // 250) % 250}.{i % 250}.{1 + i % 200}"
    return f"192.168.{(i // 250) % 250}.{1 + i % 250}"


def alert_id(rule_id: str, key: str, window_start: str) -> str:
    """Stable alert id = hash(rule id, key, window start), as DESIGN.md §3 defines it."""
    return hashlib.sha256(f"{rule_id}|{key}|{window_start}".encode()).hexdigest()[:32]


def make_alert(i: int, run: str = "") -> dict:
    rule_id, name, category, tac_id, tac_name, tech_id, tech_name, severity = RULES[i % 3]
    src = source_ip(i)
    dst = f"203.0.113.{i % 250 + 1}"
    ts = BASE_TIME + timedelta(minutes=7 * i)
    window_start = ts.replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    window_end = (ts + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    technique = {"id": [tech_id], "name": [tech_name],
                 "reference": [f"https://attack.mitre.org/techniques/{tech_id.replace('.', '/')}/"]}
    return {
        "@timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "ecs": {"version": "8.17.0"},
        "message": f"{name} from {src}",
        "event": {
            "id": alert_id(rule_id, src + run, window_start),
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["info"],
            "dataset": "cirtsa.alerts",
            "module": "cirtsa",
            "severity": severity,
            "risk_score": float(severity),
            "start": window_start,
            "end": window_end,
        },
        "rule": {"id": rule_id, "name": name, "category": category, "ruleset": "cirt-sa",
                 "version": "1"},
        "threat": {"framework": "MITRE ATT&CK",
                   "tactic": {"id": [tac_id], "name": [tac_name],
                              "reference": [f"https://attack.mitre.org/tactics/{tac_id}/"]},
                   "technique": technique},
        "source": {"ip": src, "port": 40000 + i % 20000},
        "destination": {"ip": dst, "port": (22, 53, 445)[i % 3]},
        "network": {"transport": "udp" if i % 3 == 2 else "tcp"},
        "related": {"ip": sorted({src, dst})},
        "observer": {"name": f"sensor-{i % 2 + 1}", "ingress": {"zone": "dmz"}},
        "cirtsa": {"alert": {"key": src, "window": {"start": window_start, "end": window_end},
                             "status": "new", "event_count": 10 + i % 90,
                             "severity_label": "high" if severity >= 73 else "medium"},
                   "detector": rule_id.removeprefix("cirtsa-"),
                   "evidence": {"distinct_ports": 5 + i % 100, "first_seen": window_start,
                                "last_seen": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}},
    }


def make_alerts(n: int, start: int = 0, run: str = "") -> list[dict]:
    """n distinct synthetic ECS alerts; `run` salts the ids (a different set of alerts)."""
    return [make_alert(i, run) for i in range(start, start + n)]


def make_incident(i: int, status: str = "new", alert_ids: list[str] | None = None) -> dict:
    alert = make_alert(i)
    return {
        "@timestamp": alert["@timestamp"],
        "message": f"Incident: {alert['rule']['name']} campaign from {alert['source']['ip']}",
        "event": {"id": f"incident-{i}", "kind": "alert", "category": ["intrusion_detection"],
                  "type": ["info"], "dataset": "cirtsa.incidents", "module": "cirtsa",
                  "severity": alert["event"]["severity"],
                  "risk_score": alert["event"]["risk_score"]},
        "rule": alert["rule"],
        "threat": alert["threat"],
        "source": {"ip": alert["source"]["ip"]},
        "related": {"ip": alert["related"]["ip"]},
        "cirtsa": {"incident": {"id": f"incident-{i}", "status": status,
                                "alert_ids": alert_ids or [alert["event"]["id"]],
                                "alert_count": len(alert_ids or [1])}},
    }


# --- alert versions (tests/test_alert_revisions.py, tests/test_alert_withdrawals.py) -------

@pytest.fixture(name="alerts_es")
def alerts_es_client(osmem: OsmemProcess):
    """A client of a set-up osmem (templates, aliases): alerts can be written at once."""
    from correlation.es_setup import setup

    client = es_client(osmem.url)
    setup(client, 30)
    return client


def lifecycle_sink(client):
    """An ElasticsearchSink as the correlation service makes it (analysts' fields kept),
    refreshing after each write so that a read sees it, with a short retry budget."""
    from correlation.es_sink import ElasticsearchSink

    return ElasticsearchSink(client, refresh="true", max_attempts=2, initial_backoff_s=0.01,
                             preserve_lifecycle=True)


def stored_alert(client, doc_id: str) -> dict:
    """The alert document stored under `doc_id`."""
    from correlation.es_setup import ALERTS_ALIAS

    return client.get(index=ALERTS_ALIAS, id=doc_id)["_source"]
