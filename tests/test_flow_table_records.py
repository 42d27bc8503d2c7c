"""FlowTable record kernels (task Y1): _slot_records / _group_records + flow_batch against
the numpy formulation they replaced (row gathers, np.where originator picks, astype casts,
conn_state, the end-reason pass), on random table rows and walk groups."""
from __future__ import annotations

import numpy as np
from flow_end_reason_reference import end_reason_reference
from hypothesis import given, settings
from hypothesis import strategies as st

import sensors.flow_table as ft
from sensors.community_id import community_id_column
from sensors.packets import IP_DTYPE, segment_columns

CFG = {"idle_timeout_s": 1e-8, "tcp_idle_timeout_s": 2e-8, "active_timeout_s": 5e-9,
       "closed_linger_s": 3e-9, "max_flows": 1000}
_ADDRS = [bytes(16), bytes(15) + b"\x01", b"\x20\x01" + bytes(13) + b"\x01",
          bytes(10) + b"\xff\xff\x0a\x00\x00\x01", bytes(10) + b"\xff\xff\xc0\x00\x02\x07"]
_flags = st.integers(0, 255) | st.sampled_from([0x02, 0x12, 0x10, 0x11, 0x14, 0x04, 0x01])
_small = st.integers(0, 60)
_row = st.fixed_dictionaries({
    "vlan": st.sampled_from([0, 1, 4095]), "transport": st.sampled_from([1, 6, 17, 47, 58]),
    "lo_ip": st.sampled_from(_ADDRS), "hi_ip": st.sampled_from(_ADDRS),
    "lo_port": st.integers(0, 65535), "hi_port": st.integers(0, 65535),
    "orig_is_lo": st.booleans(), "flow_start": _small, "last_ts": _small,
    "closed_at": _small | st.just(-1), "piece": st.integers(0, 6),
    "st_fl_lo": _flags, "st_fl_hi": _flags, "cum_pk_lo": st.booleans(),
    "cum_pk_hi": st.booleans(), "cum_pay_lo": st.booleans(), "cum_pay_hi": st.booleans(),
    "p_first": _small, "p_end": _small, "p_pk_lo": st.integers(0, 3),
    "p_pk_hi": st.integers(0, 3), "p_by_lo": st.integers(0, 2**64 - 1),
    "p_by_hi": st.integers(0, 2**40), "p_pay_lo": st.integers(0, 9),
    "p_pay_hi": st.integers(0, 9), "p_fl_lo": _flags, "p_fl_hi": _flags,
    "split": _small | st.just(-1),
    "segment": st.sampled_from([0, 0, 4 << 56 | 5, 3 << 56 | 1023, 1 << 63 | 4 << 56 | 77])})


def _reference(rows: dict, reason: np.ndarray) -> dict:
    """The former flow_records (numpy picks and casts) without the constant columns."""
    o = rows["orig_is_lo"]

    def pick(lo, hi):
        return np.where(o, lo, hi), np.where(o, hi, lo)

    src_ip, dst_ip = pick(rows["lo_ip"], rows["hi_ip"])
    src_port, dst_port = pick(rows["lo_port"], rows["hi_port"])
    cols = {"timestamp": rows["p_first"].astype(np.int64), "src_ip": src_ip, "dst_ip": dst_ip,
            "src_port": src_port.astype(np.uint16), "dst_port": dst_port.astype(np.uint16),
            "transport": rows["transport"].astype(np.uint8),
            "vlan": (rows["vlan"] & ft.VLAN_MASK).astype(np.uint16),
            "end": rows["p_end"].astype(np.int64)}
    cols["tunnel_type"], cols["tunnel_id"] = segment_columns(rows["segment"])
    for ours, lo, hi in (("packets", "p_pk_lo", "p_pk_hi"), ("bytes", "p_by_lo", "p_by_hi"),
                         ("payload_bytes", "p_pay_lo", "p_pay_hi")):
        s, d = pick(rows[lo], rows[hi])
        cols[f"src_{ours}"], cols[f"dst_{ours}"] = s.astype(np.uint64), d.astype(np.uint64)
    s, d = pick(rows["p_fl_lo"], rows["p_fl_hi"])
    cols["src_tcp_flags"], cols["dst_tcp_flags"] = s.astype(np.uint8), d.astype(np.uint8)
    of, rf = pick(rows["st_fl_lo"], rows["st_fl_hi"])
    opk, rpk = pick(rows["cum_pk_lo"], rows["cum_pk_hi"])
    opay, rpay = pick(rows["cum_pay_lo"], rows["cum_pay_hi"])
    cols["conn_state"] = ft.conn_state(cols["transport"], of, rf, opk, rpk, opay, rpay)
    cols["end_reason"] = ft.REASONS[reason.astype(np.intp)]
    cols["community_id"] = community_id_column(src_ip, dst_ip, cols["transport"], src_port,
                                               dst_port, 0)
    return cols


def _assert_same(batch, expected: dict) -> None:
    for name, values in expected.items():
        got = batch.columns[name]
        assert got.dtype == values.dtype, name
        assert got.tolist() == values.tolist(), name


def _clock(steps: list[int]) -> np.ndarray:
    return np.cumsum(np.array(steps, dtype=np.int64) % 4) + int(steps[0])


@settings(max_examples=150, deadline=None)
@given(st.lists(_row, min_size=1, max_size=25), st.lists(_small, min_size=1, max_size=30),
       st.sampled_from([-1, ft.R_EOF, ft.R_EVICTED]), st.booleans())
def test_slot_records_equal_the_numpy_rows(rows, clock_steps, reason, with_split):
    table = ft.FlowTable(CFG, "s", "z")
    n = len(rows)
    slots = np.arange(n, dtype=np.int64)[::-1].copy()  # not in slot order
    for name, dtype in ft.SLOT_FIELDS.items():
        values = [r[name] for r in rows]
        if name == "closed_at":
            values = [ft.NEVER if v < 0 else v for v in values]
        column = (np.frombuffer(b"".join(values), dtype=IP_DTYPE) if dtype == IP_DTYPE
                  else np.array(values, dtype=np.int64 if dtype.kind == "i"
                                else np.uint64).astype(dtype))
        table._cols[name][:n] = column
    # a flow with a tunnel segment has SEGMENT_FLAG in its key's vlan
    table._cols["vlan"][:n] |= np.where(table._cols["segment"][:n] != 0, ft.SEGMENT_FLAG,
                                        0).astype(np.uint16)
    clock = _clock(clock_steps)
    split = np.array([ft.NEVER if r["split"] < 0 else r["split"] for r in rows],
                     dtype=np.int64)[slots]
    rec = table._slot_records(slots, reason, split if with_split else ft._NO_SPLIT, clock)
    kept = slots[(table._cols["p_pk_lo"][slots] + table._cols["p_pk_hi"][slots]) > 0]
    gathered = {name: col[kept] for name, col in table._cols.items()}
    if reason < 0:
        split_kept = split[(table._cols["p_pk_lo"][slots] + table._cols["p_pk_hi"][slots]) > 0]
        codes = end_reason_reference(table, gathered, clock, split_kept if with_split
                                     else np.full(kept.size, ft.NEVER))
    else:
        codes = np.full(kept.size, reason, dtype=np.uint8)
    if not kept.size:
        assert rec[0].size == 0
        return
    _assert_same(ft.flow_batch(rec, "s", "z"), _reference(gathered, codes))


@settings(max_examples=150, deadline=None)
@given(st.lists(_row, min_size=1, max_size=25), st.lists(_small, min_size=1, max_size=30),
       st.sampled_from([-1, ft.R_ACTIVE]), st.data())
def test_group_records_equal_the_numpy_rows(rows, clock_steps, reason, data):
    """Walk group rows (int64, counts where the table has booleans) with their key words."""
    n = len(rows)
    g = np.zeros((n, len(ft._GROUP_FIELDS)), dtype=np.int64)
    for j, name in enumerate(ft._GROUP_FIELDS):
        values = [r[name] for r in rows]
        if name == "closed_at":
            values = [ft.NEVER if v < 0 else v for v in values]
        if name.startswith("cum_"):  # counts in group rows
            values = [3 * int(v) for v in values]
        g[:, j] = np.array(values, dtype=np.uint64).view(np.int64)
    words = np.array([[(r["vlan"] | (ft.SEGMENT_FLAG if r["segment"] else 0)) << 48
                       | r["transport"] << 40 | r["lo_port"] << 16
                       | r["hi_port"], int.from_bytes(r["lo_ip"][:8], "big"),
                       int.from_bytes(r["lo_ip"][8:], "big"),
                       int.from_bytes(r["hi_ip"][:8], "big"),
                       int.from_bytes(r["hi_ip"][8:], "big"), r["segment"]] for r in rows],
                     dtype=np.uint64)
    g_key = np.array(data.draw(st.permutations(range(n))), dtype=np.int64)
    g_clock = np.array([ft.NEVER if r["split"] < 0 else r["split"] for r in rows],
                       dtype=np.int64)
    chosen = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1))),
                      dtype=np.int64)
    table = ft.FlowTable(CFG, "s", "z")
    clock = _clock(clock_steps)
    # the bucket index given, or left to the kernel to build when a row needs it
    search = table._clock_search(clock) if data.draw(st.booleans()) else table._batch_clock(clock)
    rec = ft._group_records(chosen, g, g_key, g_clock, words, reason, search[0], search[2],
                            search[1], table.idle_ns, table.tcp_idle_ns, table.active_ns,
                            table.linger_ns)[0]
    # the former _group_rows + _key_endpoints
    gathered = {name: g[chosen, j].astype(np.int64 if name.startswith("cum_")
                                          else ft.SLOT_FIELDS[name])
                for j, name in enumerate(ft._GROUP_FIELDS)}
    meta = words[g_key[chosen], 0]
    gathered.update({
        "vlan": (meta >> np.uint64(48)).astype(np.uint16),
        "transport": ((meta >> np.uint64(40)) & np.uint64(0xFF)).astype(np.uint8),
        "lo_ip": np.ascontiguousarray(words[g_key[chosen], 1:3].astype(">u8")).view(
            IP_DTYPE).ravel(),
        "hi_ip": np.ascontiguousarray(words[g_key[chosen], 3:5].astype(">u8")).view(
            IP_DTYPE).ravel(),
        "lo_port": ((meta >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.uint16),
        "hi_port": (meta & np.uint64(0xFFFF)).astype(np.uint16),
        "segment": words[g_key[chosen], 5]})
    codes = (end_reason_reference(table, gathered, clock, g_clock[chosen]) if reason < 0
             else np.full(chosen.size, reason, dtype=np.uint8))
    _assert_same(ft.flow_batch(rec, "s", "z"), _reference(gathered, codes))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=0, max_size=60),
       st.lists(st.integers(-5, 200), min_size=0, max_size=40), st.integers(0, 10**6))
def test_positions_equal_position(steps, thresholds, base):
    """The batched clock search gives _position's answer for every threshold (before, on,
    inside and past the clock, repeated values)."""
    clock = (np.cumsum(np.array(steps, dtype=np.int64) % 3) + base if steps
             else np.zeros(0, dtype=np.int64))
    shift, starts = ft._clock_index(clock)
    values = np.array(thresholds, dtype=np.int64) + base
    got = ft._positions(clock, starts, shift, values)
    assert got.tolist() == [ft._position(clock, starts, shift, int(t)) for t in values]
    assert got.tolist() == np.searchsorted(clock, values, side="right").tolist()
