"""Long-lived connections (joined from the sensor's active-timeout pieces) and strobes."""

from __future__ import annotations

import pytest
from conftest import assert_ecs, shared_pcap
from network_builders import (
    NEGATIVE_CAPTURES,
    above_low,
    capture_alerts,
    flows,
    only,
    rule_ids,
    run,
)

LONG = only("long_connection")
STROBE = only("strobe")


def piece(t: float, dur: float, sport: int = 50000, dst: str = "203.0.113.9") -> dict:
    return dict(src="10.0.0.5", dst=dst, sport=sport, dport=4041, t=t, dur=dur,
                spay=4000, dpay=2000)


def test_pieces_of_one_connection_join_into_a_long_one() -> None:
    # the sensor emits a 100-minute connection as pieces of 30 min
    rows = [piece(0, 1800), piece(1800, 1800), piece(3600, 1800), piece(5400, 600)]
    alerts, _ = run([flows(rows)], LONG)
    assert rule_ids(alerts) == ["cirtsa.c2.long_connection"]
    a = alerts[0]
    assert_ecs(a)
    assert a["destination"] == {"ip": "203.0.113.9", "port": 4041}
    assert a["threat"]["technique"]["id"] == ["T1071"]
    assert a["threat"]["tactic"]["id"] == ["TA0011"]
    assert a["cirtsa"]["evidence"]["duration_s"] >= 3600
    assert a["cirtsa"]["alert"]["key"] == "10.0.0.5|203.0.113.9|tcp/4041"


def test_many_shorter_connections_are_not_one_long_one() -> None:
    # same pair, different client ports, each 40 min: never one connection of an hour
    rows = [piece(i * 2500, 2400, sport=50000 + i) for i in range(6)]
    alerts, _ = run([flows(rows)], LONG)
    assert alerts == []


def test_strobe() -> None:
    rows = [dict(src="10.0.0.5", dst="203.0.113.9", sport=1024 + i % 60000, dport=80,
                 t=i * 0.5) for i in range(4000)]
    alerts, _ = run([flows(rows)], STROBE)
    assert rule_ids(alerts) == ["cirtsa.c2.strobe"]
    assert_ecs(alerts[0])
    assert alerts[0]["cirtsa"]["evidence"]["connections"] >= 3600


def test_busy_but_not_strobing_pairs_are_quiet() -> None:
    rows = [dict(src=f"10.0.0.{i % 50}", dst="203.0.113.9", sport=1024 + i % 60000, t=i * 0.5)
            for i in range(7000)]
    assert run([flows(rows)], STROBE)[0] == []


def test_window_shorter_than_the_duration_is_rejected() -> None:
    with pytest.raises(ValueError, match="window_s"):
        run([flows([piece(0, 10)])], only("long_connection", long_connection={
            "window_s": 1800, "hop_s": 600}))


@pytest.mark.parametrize("name", NEGATIVE_CAPTURES)
def test_benign_captures_have_nothing_above_low(name: str) -> None:
    alerts, _ = capture_alerts(shared_pcap(name))
    assert above_low(alerts, "cirtsa.c2") == []
    assert rule_ids(alerts, "cirtsa.c2.strobe") == []
