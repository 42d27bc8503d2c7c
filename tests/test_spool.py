"""The on-disk spool: FIFO order, peek/ack draining, restart, the bound, torn writes."""

from __future__ import annotations

import logging
import os

import pytest

from pipeline.spool import Spool


def _value(i: int, size: int = 100) -> bytes:
    return i.to_bytes(4, "little") * (size // 4)


def _drain(spool: Spool) -> list[bytes]:
    out = []
    while items := spool.peek(10):
        for item in items:
            out.append(item.value)
            spool.ack(item.seq)
    return out


def test_fifo_order_and_fields(tmp_path):
    with Spool(tmp_path, segment_bytes=1000) as spool:  # several segments
        for i in range(50):
            spool.put(_value(i), key=None if i % 3 else b"k%d" % i, topic=f"t{i % 2}")
        assert len(spool) == 50
        items = spool.peek(50)
        assert [it.value for it in items] == [_value(i) for i in range(50)]
        assert [it.key for it in items[:4]] == [b"k0", None, None, b"k3"]
        assert [it.topic for it in items[:3]] == ["t0", "t1", "t0"]
        assert len(list(tmp_path.glob("*.seg"))) > 3
        assert _drain(spool) == [_value(i) for i in range(50)]
        assert len(spool) == 0 and spool.bytes == 0
        # Drained segments are deleted; only the active one is left.
        assert len(list(tmp_path.glob("*.seg"))) == 1


def test_peek_does_not_remove_and_excludes_in_flight(tmp_path):
    with Spool(tmp_path) as spool:
        seqs = [spool.put(_value(i), None, "t") for i in range(5)]
        assert [it.seq for it in spool.peek(2)] == seqs[:2]
        assert [it.seq for it in spool.peek(2)] == seqs[:2]  # still there
        assert [it.seq for it in spool.peek(2, exclude=set(seqs[:2]))] == seqs[2:4]


def test_out_of_order_ack_keeps_unacked_records(tmp_path):
    with Spool(tmp_path) as spool:
        seqs = [spool.put(_value(i), None, "t") for i in range(4)]
        spool.ack(seqs[2])
        spool.ack(seqs[0])
        assert [it.value for it in spool.peek(10)] == [_value(1), _value(3)]
        spool.ack(seqs[0])  # a second ack of the same record is ignored
        assert len(spool) == 2


def test_restart_resumes_in_order_after_partial_drain(tmp_path):
    spool = Spool(tmp_path, segment_bytes=700, fsync="always")
    for i in range(20):
        spool.put(_value(i), b"key", "sa.sensor")
    for item in spool.peek(7):
        spool.ack(item.seq)
    spool.close()

    reopened = Spool(tmp_path, segment_bytes=700)
    assert len(reopened) == 13
    reopened.put(_value(20), None, "sa.sensor")  # appends after what is left
    assert _drain(reopened) == [_value(i) for i in range(7, 21)]
    reopened.close()
    assert len(Spool(tmp_path)) == 0


def test_unacked_records_after_a_gap_are_redelivered_after_restart(tmp_path):
    spool = Spool(tmp_path)
    seqs = [spool.put(_value(i), None, "t") for i in range(3)]
    spool.ack(seqs[1])  # acked, but behind the unacked seqs[0]
    spool.close()
    # At-least-once: HEAD only moves over a contiguous acked prefix.
    assert [it.value for it in Spool(tmp_path).peek(10)] == [_value(i) for i in range(3)]


def test_bound_drops_oldest_with_metric_and_warning(tmp_path, caplog):
    record_size = len(_value(0)) + 8 + 2 + 1 + 4  # value, frame, topic "t", key length
    spool = Spool(tmp_path, max_bytes=10 * record_size, segment_bytes=3 * record_size)
    with caplog.at_level(logging.WARNING, logger="pipeline.spool"):
        for i in range(25):
            spool.put(_value(i), None, "t")
    assert len(spool) == 10
    assert spool.bytes <= spool.max_bytes
    assert spool.stats.dropped_oldest == 15
    assert spool.stats.dropped_bytes == 15 * record_size
    assert any("dropped the 1 oldest" in r.getMessage() for r in caplog.records)
    # The newest ten survive, in order; the disk holds at most the bound plus one segment.
    assert [it.value for it in spool.peek(100)] == [_value(i) for i in range(15, 25)]
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("*.seg"))
    assert on_disk <= spool.max_bytes + spool.segment_bytes
    spool.close()
    assert [it.value for it in Spool(tmp_path).peek(100)] == [_value(i) for i in range(15, 25)]


def test_record_larger_than_bound_is_refused(tmp_path):
    with Spool(tmp_path, max_bytes=100) as spool, pytest.raises(ValueError, match="exceeds"):
        spool.put(bytes(200), None, "t")


@pytest.mark.parametrize("cut", [1, 5, 9, 40])
def test_torn_tail_write_is_truncated_and_earlier_records_kept(tmp_path, cut):
    spool = Spool(tmp_path, segment_bytes=10_000)
    for i in range(6):
        spool.put(_value(i), None, "t")
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    size = segment.stat().st_size
    with open(segment, "r+b") as fh:  # the last record loses its last `cut` bytes
        fh.truncate(size - cut)

    reopened = Spool(tmp_path, segment_bytes=10_000)
    assert reopened.stats.recovered_truncated_bytes == len(_value(5)) + 15 - cut
    assert segment.stat().st_size < size - cut + 1
    reopened.put(_value(99), None, "t")  # appends cleanly after the cut
    assert _drain(reopened) == [_value(i) for i in range(5)] + [_value(99)]


def test_corrupted_record_bytes_end_the_segment(tmp_path):
    spool = Spool(tmp_path)
    for i in range(4):
        spool.put(_value(i), None, "t")
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    record = len(data) // 4
    data[2 * record + 20] ^= 0xFF  # damage the third record's value: its CRC fails
    segment.write_bytes(bytes(data))
    assert [it.value for it in Spool(tmp_path).peek(10)] == [_value(0), _value(1)]


def test_damaged_head_file_falls_back_to_redelivery(tmp_path):
    spool = Spool(tmp_path)
    for i in range(3):
        spool.put(_value(i), None, "t")
    spool.ack(spool.peek(1)[0].seq)
    spool.close()
    (tmp_path / "HEAD").write_text("garbage")
    # Nothing is lost: every record is delivered again, in order.
    assert [it.value for it in Spool(tmp_path).peek(10)] == [_value(i) for i in range(3)]


def test_fsync_policy_validated(tmp_path):
    with pytest.raises(ValueError, match="fsync"):
        Spool(tmp_path, fsync="sometimes")  # type: ignore[arg-type]


def test_reopen_of_empty_spool_and_permissions(tmp_path):
    Spool(tmp_path).close()
    spool = Spool(tmp_path)
    assert len(spool) == 0 and spool.peek(5) == []
    spool.put(b"x", None, "t")
    (segment,) = tmp_path.glob("*.seg")
    assert os.stat(segment).st_mode & 0o077 == 0  # spooled events are not world-readable
    spool.close()
