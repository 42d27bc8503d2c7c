"""FlowTable's walk state buffer kept across batches (issue #3, task V6): records do not
depend on what an earlier batch (or anything else) left in it, and only buffers up to
_KEPT_STATE words stay with the table."""
from __future__ import annotations

import numpy as np
from test_flow_table import CFG, Pkt, run, tcp

import sensors.flow_table as ft
from sensors.flow_table import FlowTable


def _mixed_packets(n_flows: int, t0: float) -> list[Pkt]:
    """n_flows flows of 1-3 packets each, some closed, from t0 on."""
    pkts = []
    for i in range(n_flows):
        src = f"10.1.{i // 250}.{i % 250 + 1}"
        t = t0 + i * 0.001
        pkts.append(Pkt(t, src, "192.0.2.1", 1000 + i % 5000, 80, "S"))
        if i % 2:
            pkts.append(Pkt(t + 0.0005, "192.0.2.1", src, 80, 1000 + i % 5000, "SA"))
        if i % 3 == 0:
            pkts.append(Pkt(t + 0.0007, src, "192.0.2.1", 1000 + i % 5000, 80, "R"))
    return sorted(pkts, key=lambda p: p.t)


class _DirtyTable(FlowTable):
    """A table whose kept walk state is filled with garbage before every batch."""

    def _walk_state(self, n_keys: int) -> np.ndarray:
        state = super()._walk_state(n_keys)
        state.fill(-0x1234_5678_9ABC)
        return state


def test_records_do_not_depend_on_the_kept_state():
    cfg = dict(CFG, idle_timeout_s=1, tcp_idle_timeout_s=2, active_timeout_s=3)
    pkts = (_mixed_packets(300, 0.0) + _mixed_packets(40, 0.5)
            + [tcp(5 + i, "PA", payload=3) for i in range(6)] + _mixed_packets(500, 20.0))
    pkts = sorted(pkts, key=lambda p: p.t)
    cuts = [50, 51, 400, 700, 1200]  # growing and shrinking key counts per batch
    clean = run(pkts, cfg, cuts)
    assert run(pkts, cfg, cuts, table=_DirtyTable(cfg, "sensor-t", "zone-t")) == clean
    # the same records as a fresh table per batch would give for one batch
    assert run(pkts, cfg) == run(pkts, cfg, table=_DirtyTable(cfg, "sensor-t", "zone-t"))


def test_only_small_buffers_are_kept(monkeypatch):
    monkeypatch.setattr(ft, "_KEPT_STATE", 26 * 100)
    table = FlowTable(CFG, "s", "z")
    small = table._walk_state(10)
    assert small.size >= 26 * 10 and table._walk_state(10) is small
    assert table._walk_state(90) is table._state  # grows, still kept
    big = table._walk_state(1000)
    assert big.size >= 26 * 1000 and table._state.size <= 26 * 100
    assert table._walk_state(1000) is not big
