"""The memos of dns_kernel.parse_messages: A-record addresses (_address_key) and question
names (_plain_name_length). A repeat takes the text index the intern table would give it, so
events equal the reference parser's and every distinct text is kept once, also when entries
collide in the memos' slots, A-shaped data comes in other record types or lengths, and
names differ only in case, use pointers, escapes or are too long to be remembered."""

from __future__ import annotations

import struct

import dns_reference as ref
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors import dns_kernel
from sensors.dns import _parsed_columns


def _record(rtype: int, rdata: bytes) -> bytes:
    return b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata


def _message(k: int, records: list[bytes], qname: bytes = b"\x01h\x07example\x00") -> bytes:
    return (struct.pack("!HHHHHH", k, 0x8180, 1, len(records), 0, 0)
            + qname + b"\x00\x01\x00\x01" + b"".join(records))


def _parse(messages: list[bytes]):
    buffer = b"".join(messages)
    starts = np.cumsum([0] + [len(m) for m in messages[:-1]]).astype(np.int64)
    lengths = np.array([len(m) for m in messages], dtype=np.int64)
    parsed = dns_kernel.parse_messages(np.frombuffer(buffer, dtype=np.uint8), starts, lengths)
    kept, answers = _parsed_columns(*parsed)
    got: list = [None] * len(messages)  # malformed: no event
    for k, i in enumerate(kept["index"].tolist()):
        got[i] = ((int(kept["dns_id"][k]), int(kept["flags"][k]), kept["qname"][k],
                   int(kept["qtype"][k]), int(kept["qclass"][k]), answers[k]),
                  bool(kept["status"][k] == dns_kernel.DAMAGED))
    return parsed, got


def _colliding_addresses(count: int) -> list[bytes]:
    """Distinct addresses that share one memo slot."""
    out, value = [], 0
    target = dns_kernel._address_slot(np.uint64(0))
    while len(out) < count:
        if dns_kernel._address_slot(np.uint64(value)) == target:
            out.append(struct.pack("!I", value))
        value += 1
    return out


def test_colliding_and_repeated_addresses_equal_the_reference():
    same_slot = _colliding_addresses(4)
    records = []
    for k in range(40):
        address = same_slot[k % 4]
        records.append(_record(1, address))  # A, alternating addresses of one slot
        if k % 5 == 0:  # the same 4 bytes as other types / an A of another length
            records.append(_record(16, b"\x03" + address[:3]))  # TXT
            records.append(_record(1, address + b"\x00"))  # A of 5 bytes: hex
            records.append(_record(28, address * 4))  # AAAA
    messages = [_message(k, records[k::7]) for k in range(7)] + [_message(7, records[:3])]
    (msg, rows, text, used), got = _parse(messages)
    assert got == [ref.parse_message(m) for m in messages]
    texts = text[:used].tobytes().decode("ascii").split("\n")[:-1]
    assert len(texts) == len(set(texts))  # a memo hit never adds the text again
    a_rows = rows[rows[:, 1] == 1]
    by_text = {}
    for index in a_rows[:, 4].tolist():
        by_text.setdefault(texts[index], set()).add(index)
    assert all(len(indexes) == 1 for indexes in by_text.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from([1, 1, 1, 5, 16, 28]),
                                   st.binary(min_size=3, max_size=6)), max_size=8),
                min_size=1, max_size=12))
def test_random_answer_sections_equal_the_reference(sections):
    messages = [_message(k, [_record(rtype, rdata) for rtype, rdata in section])
                for k, section in enumerate(sections)]
    _, got = _parse(messages)
    assert got == [ref.parse_message(m) for m in messages]


def _wire(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


NAMES = [_wire([b"www", b"example", b"com"]), _wire([b"WWW", b"Example", b"COM"]),
         _wire([b"a.b", b"x\\y"]), _wire([b"\x00\xff ", b"c"]), _wire([b"x" * 40] * 3),
         _wire([b"y" * 63]), _wire([b"q" * 20, b"\x01" * 12]), b"\x00", b"\x01a\xc0\x04",
         b"\xc0\x02", _wire([b"a" * 30, b"b" * 30]), _wire([b"a" * 30, b"b" * 31]),
         _wire([b"z"] * 40), b"\x05ab", b"\x41abc\x00"]


def test_question_names_colliding_repeated_and_unremembered_equal_the_reference():
    # every name twice and interleaved; names of one memo slot alternating
    same_slot, value = [], 0
    target = None
    while len(same_slot) < 3:
        name = _wire([b"h%d" % value, b"example"])
        at = np.frombuffer(name, dtype=np.uint8)
        slot = dns_kernel._name_slot(at, 0, len(name))
        target = slot if target is None else target
        if slot == target:
            same_slot.append(name)
        value += 1
    names = NAMES + NAMES[::-1] + same_slot * 3
    messages = [_message(k, [_record(1, bytes([10, 0, 0, k % 3]))], name)
                for k, name in enumerate(names)]
    (msg, rows, text, used), got = _parse(messages)
    assert got == [_reference(m) for m in messages]
    texts = text[:used].tobytes().decode("ascii").split("\n")[:-1]
    short = [t for t in texts if len(t) <= dns_kernel.INTERN_MAX_LEN]
    assert len(short) == len(set(short))


def _reference(msg: bytes):
    try:
        return ref.parse_message(msg)
    except ref.MalformedDNS:
        return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(range(len(NAMES))), st.booleans()),
                min_size=1, max_size=30))
def test_random_question_sequences_equal_the_reference(picks):
    messages = [_message(k, [_record(1, b"\x0a\x00\x00\x01")] if answer else [], NAMES[i])
                for k, (i, answer) in enumerate(picks)]
    _, got = _parse(messages)
    assert got == [_reference(m) for m in messages]
