"""FlowTable per-batch path (issue #3, task V2): what the walk reads of a packet (TCP flags
only for TCP, payload clamped at 0), pieces crossed inside one batch, emitted columns that
are the batch's own arrays (not copied again, never shared with the table), and emitted
rows built only for non-empty pieces."""
from __future__ import annotations

import dataclasses

import numpy as np
from test_flow_table import CFG, Pkt, make_packets, reference_flows, run, tcp, tick

from sensors.flow_table import FlowTable


def _replace(d, **columns):
    return dataclasses.replace(d, **columns)


def test_tcp_flag_bits_of_non_tcp_rows_are_ignored():
    pkts = [Pkt(0, sport=5000, dport=53, proto=17, payload=20),
            Pkt(0.5, "10.0.0.2", "10.0.0.1", 53, 5000, proto=17, payload=40),
            tcp(1, "S"), tcp(1.1, "SA", False)]
    clean = make_packets(pkts)
    # Decoders may leave garbage in tcp_flags of non-TCP rows; the flow table must not
    # count it (no flags, no close on a "FIN"/"RST" bit, conn_state by the UDP rule).
    dirty = _replace(clean, tcp_flags=np.where(clean.transport == 6, clean.tcp_flags,
                                               np.uint8(0xFF)).astype(np.uint8))
    assert run(dirty) == run(clean)
    udp = [r for r in run(dirty) if r["transport"] == 17][0]
    assert udp["src_tcp_flags"] == udp["dst_tcp_flags"] == 0
    assert udp["end_reason"] == "eof" and udp["conn_state"] == "SF"


def test_negative_payload_length_counts_as_zero():
    pkts = [tcp(0, "S", payload=0), tcp(0.1, "SA", False), tcp(0.2, "PA", payload=7)]
    d = make_packets(pkts)
    neg = _replace(d, payload_len=np.array([-3, -1, 7], dtype=np.int32))
    (row,) = run(neg)
    assert row["src_payload_bytes"] == 7 and row["dst_payload_bytes"] == 0
    assert row["conn_state"] == run(d)[0]["conn_state"]


def test_pieces_inside_one_batch_match_reference_when_the_clock_jumps_pieces():
    # One batch; one flow whose packets cross piece ends one at a time, exactly at a piece
    # end, and several pieces at once.
    cfg = dict(CFG, idle_timeout_s=10_000, tcp_idle_timeout_s=10_000)
    active = cfg["active_timeout_s"]
    times = [0, 1, active - 1e-9, active, active + 1, 3.5 * active, 3.5 * active + 2,
             4 * active - 1e-9, 4 * active, 9 * active + 0.5]
    pkts = [tcp(t, "A" if i else "S", fwd=i % 2 == 0, payload=i) for i, t in enumerate(times)]
    pkts.append(tick(9 * active + 0.6))
    rows = run(pkts, cfg)
    assert [r["end_reason"] for r in rows if r["src_port"] == 1234] == \
        ["active"] * 4 + ["eof"]
    assert sorted((r["timestamp"], r["end"], r["src_packets"], r["dst_packets"])
                  for r in rows) == sorted((e[0], e[7], e[8], e[9])
                                           for e in reference_flows(pkts, cfg))


def test_emitted_columns_are_not_shared_with_the_table_or_later_batches():
    cfg = dict(CFG, idle_timeout_s=1, tcp_idle_timeout_s=1)
    table = FlowTable(cfg, "s", "z")
    first = make_packets([tcp(0, "S"), tcp(0.1, "SA", False), Pkt(0.2, proto=17)])
    later = make_packets([tcp(5, "S"), tcp(5.1, "SA", False), Pkt(5.2, proto=17),
                          tcp(9, "S"), Pkt(9.5, proto=17)])
    assert table.update(first) is None
    out = table.update(later)  # the first batch's flows expire here
    assert out is not None and len(out) >= 2
    kept = {k: np.array(v, copy=True) for k, v in out.columns.items()}
    for col in table._cols.values():
        for v in out.columns.values():
            assert not np.shares_memory(col, v)
    table.update(make_packets([tcp(30, "S"), Pkt(30.5, proto=17)]))
    table.flush()
    for k, v in out.columns.items():
        assert v.dtype == kept[k].dtype
        assert v.tolist() == kept[k].tolist(), k


def test_empty_pieces_emit_nothing_and_expire_still_releases_their_flows():
    # A flow whose piece was emitted ("active") and that then goes idle ends with an empty
    # piece: no record, but its slot is freed (live count back to 0 before flush).
    cfg = dict(CFG, active_timeout_s=10, idle_timeout_s=15, tcp_idle_timeout_s=15)
    table = FlowTable(cfg, "s", "z")
    table.update(make_packets([tcp(0, "S"), tcp(1, "SA", False)]))
    out = table.update(make_packets([tick(10.5)]))
    assert out is not None and out.columns["end_reason"].tolist() == ["active"]
    out = table.update(make_packets([tick(40)]))
    assert out is not None and out.columns["end_reason"].tolist() == ["idle"]  # the tick flow
    assert table.stats["flows_live"] == 1  # the second tick's flow only
    assert int(table._live.sum()) == 1
