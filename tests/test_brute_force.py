"""Brute-force detector: many short login sessions from one source to one service.

Synthetic flows shaped like brute_force/zeek__sshguess.pcap (11 SSH sessions in 70 s, each
3.6-10 s with ~2.6 KB each way) and brute_force/zeek__ftp_bruteforce.pcap (30 FTP sessions
of ~2 s), plus benign look-alikes.
"""

from __future__ import annotations

import numpy as np
import pytest

from correlation.brute_force import BruteForceDetector
from correlation.engine import default_config

pytestmark = pytest.mark.usefixtures("core_detectors_only")

try:
    from test_engine import config_with, flow_batch, run
except ImportError:  # tests/ imported as a package
    from tests.test_engine import config_with, flow_batch, run


def sessions(n: int, gap_s: float = 6.5, dur: float = 4.0, dport: int = 22,
             src: str = "192.168.56.1", dst: str = "192.168.56.103", first_sport: int = 55470,
             client: int = 2600, server: int = 2400, state: str = "SF", t0: float = 0.0,
             **extra) -> list[dict]:
    return [dict(src=src, dst=dst, dport=dport, sport=first_sport + i, t=t0 + i * gap_s,
                 dur=dur, state=state, src_payload=client, dst_payload=server, **extra)
            for i in range(n)]


def test_ssh_password_guessing() -> None:
    alerts, _ = run(sessions(11))
    assert [a["rule"]["id"] for a in alerts] == ["cirtsa.brute_force.sessions"]
    a = alerts[0]
    assert a["source"]["ip"] == "192.168.56.1"
    assert a["destination"] == {"ip": "192.168.56.103", "port": 22}
    assert a["threat"]["technique"]["id"] == ["T1110"]
    assert a["threat"]["tactic"]["id"] == ["TA0006"]
    # The alert is the first window reaching the threshold: [t-240 s, t+60 s) holds the
    # sessions starting at 0..58.5 s (10 of them), the last one ending at 62.5 s.
    assert a["message"] == ("192.168.56.1 opened 10 short ssh sessions to 192.168.56.103:22 "
                            "in 62.5 s")
    ev = a["cirtsa"]["evidence"]
    assert (ev["sessions"], ev["flows"], ev["service"]) == (10, 10, "ssh")
    assert ev["client_payload_bytes"] == 10 * 2600
    assert ev["max_session_s"] == 4.0
    assert a["event"]["severity"] > 21  # above the scan rules


def test_ftp_bruteforce_of_thirty_short_sessions() -> None:
    alerts, stats = run(sessions(30, gap_s=2.0, dur=2.0, dport=21, client=25, server=137,
                                 dst="192.168.56.101", first_sport=54017))
    assert len(alerts) == 1 and alerts[0]["destination"]["port"] == 21
    assert alerts[0]["cirtsa"]["evidence"]["service"] == "ftp"
    assert stats["alerts_suppressed"] > 0  # later hopping windows repeat it


def test_below_threshold_is_quiet() -> None:
    assert run(sessions(9))[0] == []


def test_long_or_bulky_sessions_are_not_guessing() -> None:
    assert run(sessions(20, dur=120.0))[0] == []  # interactive sessions
    assert run(sessions(20, server=500_000))[0] == []  # scp / git fetch over ssh
    assert run(sessions(20, client=200_000))[0] == []  # uploads


def test_sessions_without_login_exchange_do_not_count() -> None:
    # Failed connection attempts are the scan detectors' business, not password guessing.
    assert run(sessions(20, state="S0", client=0, server=0))[0] == []
    assert run(sessions(20, state="REJ", client=0, server=0))[0] == []
    assert run(sessions(20, state="SF_EMPTY", client=0, server=0))[0] == []


def test_non_authentication_port_is_ignored() -> None:
    assert run(sessions(30, dport=443))[0] == []


def test_periodic_monitoring_logins_stay_below_the_rate() -> None:
    # A monitoring system logging in once a minute for an hour: at most 5 per 5-min window.
    assert run(sessions(60, gap_s=60.0))[0] == []


def test_sessions_to_different_servers_are_separate_keys() -> None:
    rows = [r for i in range(6) for r in sessions(1, dst=f"10.0.0.{i}", t0=i,
                                                  first_sport=40000 + i)]
    rows += sessions(6, dst="10.0.0.99", t0=20, first_sport=41000)
    assert run(rows)[0] == []


def test_one_session_seen_by_two_sensors_counts_once() -> None:
    rows = sessions(6, observer="sensor-a") + sessions(6, observer="sensor-b")
    assert run(rows)[0] == []  # 6 sessions, not 12
    rows = sessions(10, observer="sensor-a") + sessions(10, observer="sensor-b")
    alerts, _ = run(rows)
    assert len(alerts) == 1
    ev = alerts[0]["cirtsa"]["evidence"]
    assert (ev["sessions"], ev["flows"]) == (10, 20)
    assert alerts[0]["observer"]["name"] == "sensor-a"
    assert alerts[0]["cirtsa"]["observers"]["name"] == ["sensor-a", "sensor-b"]


def test_ports_and_thresholds_come_from_config() -> None:
    config = config_with(brute_force={"ports": [8443], "min_sessions": 5})
    assert len(run(sessions(5, dport=8443), config)[0]) == 1
    assert run(sessions(30, dport=22), config)[0] == []


def test_rdp_brute_force_on_ipv6() -> None:
    rows = sessions(12, dport=3389, src="2001:db8::1", dst="2001:db8::3389", server=12000)
    alerts, _ = run(rows)
    assert [a["destination"]["port"] for a in alerts] == [3389]
    assert alerts[0]["cirtsa"]["evidence"]["service"] == "rdp"


def test_detector_declares_its_inputs() -> None:
    detector = BruteForceDetector(default_config()["detectors"]["brute_force"])
    assert detector.kinds == ("flow",)
    batch = flow_batch(sessions(3) + sessions(2, dport=80, first_sport=1000))
    mask = detector.select(batch)
    assert mask.dtype == np.bool_ and mask.tolist() == [True, True, True, False, False]
    assert set(detector.input_spec("flow").columns) <= set(batch.columns)
