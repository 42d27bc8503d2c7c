"""DNS texts and objects kept across batches (sensors/dns.py DnsObjects, and
dns_kernel.parse_messages_into / global_records / global_sets): a message gives the
reference parser's result whatever batches came before it (memos and tables filled by
them, tables grown or dropped at their caps), and equal values of different batches share
one object."""

from __future__ import annotations

import random
import struct

import dns_reference as ref
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dns_fuzz import VALID, mutated

from pipeline.schema import DNS_CLASS_NAMES, dns_type_name
from sensors import dns_kernel
from sensors.dns import DnsObjects, _kept_columns


def _reference(msg: bytes):
    try:
        return ref.parse_message(msg)
    except ref.MalformedDNS:
        return None


def _batch(objects: DnsObjects, messages: list[bytes]) -> list:
    """One batch through `objects` -> per message (fields, damaged) or None (malformed)."""
    buffer = b"".join(messages)
    starts = np.cumsum([0] + [len(m) for m in messages[:-1]]).astype(np.int64)
    lengths = np.array([len(m) for m in messages], dtype=np.int64)
    msg, records = objects.parse(np.frombuffer(buffer, dtype=np.uint8), starts, lengths)
    kept, answers = _kept_columns(msg, records, objects)
    got: list = [None] * len(messages)
    for k, i in enumerate(kept["index"].tolist()):
        got[i] = ((int(kept["dns_id"][k]), int(kept["flags"][k]), kept["qname"][k],
                   int(kept["qtype"][k]), int(kept["qclass"][k]), answers[k]),
                  bool(kept["status"][k] == dns_kernel.DAMAGED))
    return got


def _small_caps() -> DnsObjects:
    """Caps low enough that a few batches pass them (everything dropped and made again)."""
    objects = DnsObjects()
    objects.MAX_TEXTS = objects.MAX_RECORDS = objects.MAX_SETS = 8
    objects.MAX_TEXT_BYTES = 200
    return objects


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.lists(st.one_of(mutated(), st.sampled_from(VALID)), min_size=1,
                         max_size=8), min_size=1, max_size=5),
       st.booleans())
def test_batches_through_kept_objects_equal_the_reference(batches, small):
    objects = _small_caps() if small else DnsObjects()
    for messages in batches:
        assert _batch(objects, messages) == [_reference(m) for m in messages]


def _a_response(name: bytes, address: bytes, ttl: int = 60, owner: bytes | None = None
                ) -> bytes:
    """A response for `name` (wire form) with one A record, its owner written out."""
    question = name + b"\x00\x01\x00\x01"
    record = (owner or name) + struct.pack("!HHIH", 1, 1, ttl, 4) + address
    return struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0) + question + record


def _name(k: int) -> bytes:
    label = f"host{k}".encode()
    return bytes([len(label)]) + label + b"\x07example\x03com\x00"


def test_equal_values_of_later_batches_share_the_first_objects():
    objects = DnsObjects()
    first = _batch(objects, [_a_response(_name(1), b"\xc0\x00\x02\x01"),
                             _a_response(_name(2), b"\xc0\x00\x02\x02")])
    # Many new values in between: tables and memos grow (rehash) before the repeat.
    _batch(objects, [_a_response(_name(k), bytes([10, 0, k >> 8, k & 255]), ttl=k)
                     for k in range(3, 3000)])
    again = _batch(objects, [_a_response(_name(2), b"\xc0\x00\x02\x02"),
                             _a_response(_name(1), b"\xc0\x00\x02\x01", ttl=61)])
    assert again[0] == first[1]
    assert again[0][0][5] is first[1][0][5]  # the same answer list
    assert again[0][0][2] is first[1][0][2]  # the same qname str
    assert again[1][0][5] == [dict(first[0][0][5][0], ttl=61)]
    assert again[1][0][5][0]["name"] is first[0][0][5][0]["name"]


def test_caps_drop_everything_and_results_stay_the_same():
    objects = _small_caps()
    rng = random.Random(3)
    messages = [_a_response(_name(rng.randint(0, 30)), bytes([10, 0, 0, rng.randint(0, 9)]))
                for _ in range(200)]
    for at in range(0, 200, 7):
        batch = messages[at:at + 7]
        assert _batch(objects, batch) == [_reference(m) for m in batch]
    assert objects.text_count < 64  # dropped at the cap, not grown without bound


def test_owner_and_name_data_memos_equal_the_reference():
    """Owners other than the question and CNAME data, written out (no pointers): the name
    memo gives their texts after the first sight, also in later batches."""
    cname = b"\x04edge\x03cdn\x07example\x00"
    question = _name(5) + b"\x00\x01\x00\x01"
    records = (_name(5) + struct.pack("!HHIH", 5, 1, 60, len(cname)) + cname
               + cname + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x0a\x00\x00\x01"
               + cname + struct.pack("!HHIH", 28, 1, 60, 16) + bytes(15) + b"\x01")
    msg = struct.pack("!HHHHHH", 9, 0x8180, 1, 3, 0, 0) + question + records
    # the CNAME target as a question too: its memo entry came from the question walk
    query = struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + cname + b"\x00\x01\x00\x01"
    objects = DnsObjects()
    for batch in ([msg, msg], [query, msg], [msg]):
        assert _batch(objects, batch) == [_reference(m) for m in batch]


TEXTS = ["", "example.com", "192.0.2.1", "a.example", "2001:db8::1"]


def _with_texts() -> DnsObjects:
    objects = DnsObjects()
    text = np.frombuffer("".join(t + "\n" for t in TEXTS).encode(), dtype=np.uint8)
    objects.add_texts(text, 0, text.shape[0])
    return objects


def _messages_of(messages: list[list[tuple]]) -> tuple[np.ndarray, np.ndarray]:
    """msg columns (qname 0, first answer row, answer count) and answer rows."""
    count = np.array([len(m) for m in messages], dtype=np.int64)
    msg = np.zeros((len(messages), 8), dtype=np.int64)
    msg[:, 0] = dns_kernel.OK
    msg[:, 6] = np.cumsum(count) - count
    msg[:, 7] = count
    records = np.array([r for m in messages for r in m], dtype=np.int64).reshape(-1, 5)
    return msg, records


def _per_row_answers(messages: list[list[tuple]]) -> list[list[dict]]:
    """What the answers column holds, built the plain way: a new dict per record."""
    return [[{"name": TEXTS[r[0]], "type": dns_type_name(r[1]),
              "class": DNS_CLASS_NAMES.get(r[2], f"CLASS{r[2]}"), "ttl": r[3],
              "data": TEXTS[r[4]]} for r in m] for m in messages]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.lists(st.tuples(
    st.integers(0, 4), st.sampled_from([1, 5, 28, 99]), st.sampled_from([1, 3]),
    st.sampled_from([0, 60, 2**31]), st.integers(0, 4)), max_size=4), max_size=40),
    min_size=1, max_size=3))
def test_shared_answer_objects_equal_per_row_objects(batches):
    objects = _with_texts()
    seen_lists: dict[tuple, int] = {}
    seen_dicts: dict[tuple, int] = {}
    for messages in batches:
        msg, records = _messages_of(messages)
        _, column = objects.columns(msg, records)
        assert column.dtype == object and column.shape == (len(messages),)
        got = column.tolist()
        assert got == _per_row_answers(messages)
        assert all(type(v) is list and all(type(d) is dict for d in v) for v in got)
        # Sharing, across batches too: one list per distinct answer list, one dict per
        # distinct record.
        for m, v in zip(messages, got, strict=True):
            assert seen_lists.setdefault(tuple(m), id(v)) == id(v)
            for r, d in zip(m, v, strict=True):
                assert seen_dicts.setdefault(r, id(d)) == id(d)
    assert len({i for i in seen_lists.values()}) == len(seen_lists)


def _global_answers(first_row, count, records, tables):
    """global_answers over `tables` (updated in place): the batch's list ids."""
    ids, *rest = dns_kernel.global_answers(np.array(first_row, dtype=np.int64),
                                           np.array(count, dtype=np.int64),
                                           np.array(records, dtype=np.int64).reshape(-1, 5),
                                           *tables)
    tables[:] = rest
    return ids.tolist()


def test_global_answers_number_equal_records_and_lists():
    # tables far too small: the kernel grows them (and refills their slots)
    tables = [np.empty((1, 5), dtype=np.int64), np.full(2, -1, dtype=np.int64), 0,
              np.empty((1, 5), dtype=np.int64), np.empty(1, dtype=np.int64),
              np.zeros(2, dtype=np.int64), np.full(2, -1, dtype=np.int64), 1]
    records = [[1, 1, 1, 60, 2], [1, 1, 1, 60, 2], [1, 1, 1, 61, 2],
               [1, 1, 1, 60, 2], [1, 1, 1, 61, 2]]
    # messages: rows [0], [1], [2], none, [3, 4]
    assert _global_answers([0, 1, 2, 3, 3], [1, 1, 1, 0, 2], records, tables) == [1, 1, 2, 0, 3]
    keys, _, record_count, set_rows, members, bounds, _, sets = tables
    assert record_count == 2 and keys[:2].tolist() == [[1, 1, 1, 60, 2], [1, 1, 1, 61, 2]]
    assert sets == 4 and bounds[:5].tolist() == [0, 0, 1, 2, 4]
    assert members[:4].tolist() == [0, 1, 0, 1]
    assert set_rows[:4].tolist() == [records[0], records[2], records[3], records[4]]
    # a later batch: known records and lists keep their numbers, new ones follow
    later = [[1, 1, 1, 61, 2], [2, 1, 1, 60, 2], [1, 1, 1, 60, 2], [1, 1, 1, 61, 2]]
    assert _global_answers([0, 1, 2, 0], [1, 1, 1, 0], later, tables) == [2, 4, 1, 0]
    keys, _, record_count, set_rows, members, bounds, _, sets = tables
    assert record_count == 3 and keys[2].tolist() == [2, 1, 1, 60, 2]
    assert sets == 5 and members[bounds[4]:bounds[5]].tolist() == [2]
    # many lists at once (slot tables grown several times): ids stay first-seen numbers
    many = [[k % 7, 1, 1, k, 2] for k in range(300)]
    ids = _global_answers(list(range(300)), [1] * 300, many, tables)
    assert ids == list(range(5, 305))
    assert _global_answers(list(range(300)), [1] * 300, many, tables) == ids
