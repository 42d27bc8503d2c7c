"""The former column-wise FlowTable._end_reason (three np.searchsorted passes), kept as the
tests' reference for the compiled end reasons (sensors.flow_table._reason_of, used by the
record kernels _slot_records and _group_records): tests/test_flow_table.py and
tests/test_flow_table_records.py."""

from __future__ import annotations

import numpy as np

import sensors.flow_table as ft


def end_reason_reference(table: ft.FlowTable, rows: dict, clock: np.ndarray,
                         split_clock: np.ndarray) -> np.ndarray:
    """Per row, its reason code: R_ACTIVE when the clock left the piece strictly before the
    flow ended (first crossing of last packet + idle, close + linger, or the split clock),
    else R_RST / R_FIN when closed, R_IDLE otherwise."""
    never = ft.NEVER

    def first_crossing(threshold: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(clock, threshold, side="right")
        found = pos < clock.shape[0]
        return np.where(found, clock[np.minimum(pos, clock.shape[0] - 1)], never)

    def times(name: str) -> np.ndarray:
        return np.asarray(rows[name], dtype=np.int64)

    idle = np.where(rows["transport"] == ft.TCP, table.tcp_idle_ns, table.idle_ns)
    c_idle = first_crossing(times("last_ts") + idle)
    closed = times("closed_at") < never
    c_close = np.where(closed, first_crossing(
        np.minimum(times("closed_at") + table.linger_ns, never)), never)
    c_active = first_crossing(times("flow_start") + (times("piece") + 1) * table.active_ns - 1)
    c_end = np.minimum(np.minimum(c_idle, c_close), split_clock)
    had_rst = ((rows["st_fl_lo"] | rows["st_fl_hi"]) & ft.RST) > 0
    end_reason = np.where(closed, np.where(had_rst, ft.R_RST, ft.R_FIN), ft.R_IDLE)
    return np.where(c_active < c_end, ft.R_ACTIVE, end_reason).astype(np.uint8)
