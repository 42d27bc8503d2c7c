"""The compiled DNS kernel (sensors/dns_kernel.py) against the pure-Python reference parser
(tests/dns_reference.py): the same results whatever the bytes around a message, text forms
byte for byte, a text buffer that grows, and no read or write out of range (checked by
running the kernel's own source without compilation over arrays that refuse any index
outside the message)."""

from __future__ import annotations

import ipaddress
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import dns_reference as ref
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dns_fuzz import VALID, mutated

from sensors import dns_kernel
from sensors.dns import MalformedDNS, _parsed_columns, parse_message

TESTS = Path(__file__).resolve().parent


def _reference(msg: bytes):
    try:
        return ref.parse_message(msg)
    except ref.MalformedDNS:
        return None


def _kernel_batch(buffer: bytes, starts: list[int], lengths: list[int]) -> list:
    """parse_messages over one buffer -> per message (fields, damaged) or None (malformed)."""
    parsed = dns_kernel.parse_messages(np.frombuffer(buffer, dtype=np.uint8),
                                       np.array(starts, dtype=np.int64),
                                       np.array(lengths, dtype=np.int64))
    kept, answers = _parsed_columns(*parsed)
    out: list = [None] * len(starts)
    for k, i in enumerate(kept["index"].tolist()):
        out[i] = ((int(kept["dns_id"][k]), int(kept["flags"][k]), kept["qname"][k],
                   int(kept["qtype"][k]), int(kept["qclass"][k]), answers[k]),
                  bool(kept["status"][k] == dns_kernel.DAMAGED))
    return out


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(st.binary(max_size=200), mutated(), st.sampled_from(VALID)),
                min_size=1, max_size=12),
       st.sampled_from([b"\x00", b"\xc0", b"\xff", b"\x3f", None]), st.randoms())
def test_results_do_not_depend_on_the_bytes_around_a_message(messages, fill, rnd):
    # Messages sit between filler bytes (pointer-like, label-like, random) and the last one
    # ends the buffer: a read outside its message would make the result differ from the
    # reference, which sees the message alone.
    buffer, starts = b"", []
    for msg in messages:
        gap = rnd.randint(0, 20)
        buffer += (fill * gap) if fill is not None else rnd.randbytes(gap)
        starts.append(len(buffer))
        buffer += msg
    got = _kernel_batch(buffer, starts, [len(m) for m in messages])
    assert got == [_reference(m) for m in messages]


def _soa_heavy_message(answers: int) -> bytes:
    """A response whose answers are SOA records naming a 250-byte name through pointers:
    a few hundred wire bytes that render to ~2 kB of text per answer."""
    long_name = b"".join(b"\x3e" + bytes([97 + k]) * 62 for k in range(4)) + b"\x00"
    question = long_name + b"\x00\x06\x00\x01"
    soa = b"\xc0\x0c\xc0\x0c" + struct.pack("!IIIII", 1, 2, 3, 4, 5)
    record = b"\xc0\x0c" + struct.pack("!HHIH", 6, 1, 60, len(soa)) + soa
    return struct.pack("!HHHHHH", 1, 0x8180, 1, answers, 0, 0) + question + record * answers


def test_text_buffer_grows_past_its_first_estimate():
    messages = [_soa_heavy_message(dns_kernel.MAX_ANSWERS)] * 3
    buffer = b"".join(messages)
    starts = [k * len(messages[0]) for k in range(3)]
    got = _kernel_batch(buffer, starts, [len(messages[0])] * 3)
    expected = _reference(messages[0])
    assert got == [expected] * 3
    (_, _, qname, _, _, answers), damaged = expected
    assert len(answers) == dns_kernel.MAX_ANSWERS and not damaged
    assert answers[0]["data"] == f"{qname} {qname} 1 2 3 4 5"
    # More text than the first guess of the kernel (64 bytes per message) by far.
    assert sum(len(a["name"]) + len(a["data"]) for a in answers) * 3 > 64 * 3 * 100


@st.composite
def ipv6_bytes(draw) -> bytes:
    """16 bytes with many zero groups (runs, ties, ends) and IPv4-mapped addresses."""
    kind = draw(st.sampled_from(["groups", "mapped", "random"]))
    if kind == "random":
        return draw(st.binary(min_size=16, max_size=16))
    if kind == "mapped":
        return bytes(10) + b"\xff\xff" + draw(st.binary(min_size=4, max_size=4))
    groups = draw(st.lists(st.one_of(st.just(0), st.integers(0, 0xFFFF)), min_size=8,
                           max_size=8))
    return struct.pack("!8H", *groups)


@settings(max_examples=500, deadline=None)
@given(ipv6_bytes())
def test_aaaa_text_is_rfc5952(raw):
    msg = (struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + b"\x01a\x00\x00\x1c\x00\x01"
           + b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 1, 16) + raw)
    data = parse_message(msg)[0][5][0]["data"]
    assert data == ref.ipv6_text(raw)
    address = ipaddress.IPv6Address(raw)
    if address.ipv4_mapped is None:
        assert data == str(address)
    else:  # hex groups, whatever the running Python prints for mapped addresses
        assert data == "::ffff:" + ":".join(f"{int.from_bytes(raw[k:k + 2], 'big'):x}"
                                            for k in (12, 14))


def test_every_byte_value_in_labels_and_txt():
    for value in range(256):
        label = bytes([value, 65, value])
        txt = bytes([3]) + label
        msg = (struct.pack("!HHHHHH", 1, 0x8180, 1, 2, 0, 0) + b"\x03" + label + b"\x00"
               + b"\x00\x10\x00\x01"
               + b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 1, len(txt)) + txt
               + b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 1, 5) + b"\x03" + label + b"\x00")
        assert parse_message(msg) == ref.parse_message(msg), value


def test_malformed_messages_raise():
    for msg in (b"", b"\x00" * 11, struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x01a\x00\x00"):
        try:
            parse_message(msg)
        except MalformedDNS:
            continue
        raise AssertionError(msg)


# --- no index out of range: the kernel's source run as plain Python over strict arrays ----

class _StrictBytes:
    """A read-only byte array that raises IndexError for any index outside [0, size)."""

    def __init__(self, raw: bytes) -> None:
        self._array = np.frombuffer(raw, dtype=np.uint8)
        self.shape = self._array.shape

    def __getitem__(self, index):
        if not 0 <= index < self._array.shape[0]:
            raise IndexError(f"read at {index} outside [0, {self._array.shape[0]})")
        return self._array[index]


def _hostile_messages(count: int, seed: int) -> list[bytes]:
    """Random payloads, random bodies behind a plausible header, and mutated valid messages
    (bit flips, cuts, pointers to anywhere)."""
    rnd = random.Random(seed)
    out = []
    for k in range(count):
        if k % 3 == 0:
            out.append(rnd.randbytes(rnd.randint(0, 120)))
        elif k % 3 == 1:
            out.append(struct.pack("!HHHHHH", 1, rnd.randint(0, 0xFFFF), rnd.randint(0, 3),
                                   rnd.randint(0, 70), 0, 0)
                       + rnd.randbytes(rnd.randint(0, 200)))
        else:
            msg = bytearray(rnd.choice(VALID))
            for _ in range(rnd.randint(1, 6)):
                at = rnd.randrange(len(msg)) if msg else 0
                op = rnd.choice(["flip", "cut", "pointer", "byte"])
                if not msg:
                    break
                if op == "flip":
                    msg[at] ^= 1 << rnd.randint(0, 7)
                elif op == "cut":
                    del msg[at:]
                elif op == "pointer":
                    msg[at : at + 2] = struct.pack("!H", 0xC000 | rnd.randint(0, 0x3FFF))
                else:
                    msg[at] = rnd.choice([0, 0x3F, 0x40, 0xC0, 0xFF, rnd.randint(0, 255)])
            out.append(bytes(msg))
    out.append(_soa_heavy_message(dns_kernel.MAX_ANSWERS))  # the text buffer must grow
    return out


def run_uncompiled_bounds_check(count: int = 600, seed: int = 1) -> int:
    """Child side (NUMBA_DISABLE_JIT=1): each message alone in an exactly sized strict
    array, so any read outside it raises; the text buffer is a plain numpy array, so any
    write past its end raises. Also checks the results against the reference."""
    checked = 0
    for msg in _hostile_messages(count, seed):
        parsed = dns_kernel.parse_messages(_StrictBytes(msg), np.zeros(1, dtype=np.int64),
                                           np.array([len(msg)], dtype=np.int64))
        kept, answers = _parsed_columns(*parsed)
        got = None
        if kept["status"].size:
            got = ((int(kept["dns_id"][0]), int(kept["flags"][0]), kept["qname"][0],
                    int(kept["qtype"][0]), int(kept["qclass"][0]), answers[0]),
                   bool(kept["status"][0] == dns_kernel.DAMAGED))
        assert got == _reference(msg), msg
        checked += 1
    segments = [struct.pack("!H", len(m)) + m for m in _hostile_messages(count // 4, seed + 1)]
    for segment in segments + [s[: len(s) // 2] for s in segments]:
        dns_kernel.split_tcp_segments(_StrictBytes(segment), np.zeros(1, dtype=np.int64),
                                      np.array([len(segment)], dtype=np.int64))
        checked += 1
    return checked


def test_kernel_source_never_indexes_out_of_range():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_dns_kernels as t; "
            "print(t.run_uncompiled_bounds_check())")
    done = subprocess.run([sys.executable, "-c", code, str(TESTS)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 600


def test_equal_texts_share_one_str_and_near_equal_ones_stay_apart():
    # qnames that are prefixes of each other, equal lengths with other bytes, repeats, and
    # one longer than INTERN_MAX_LEN: every event still equals the reference, and repeated
    # short names are one str object per batch.
    labels = [b"a", b"aa", b"aaa", b"ab", b"ba", b"a", b"aa", b"x" * 63, b"x" * 63]
    messages = []
    for k, label in enumerate(labels):
        name = bytes([len(label)]) + label + b"\x01z\x00"
        messages.append(struct.pack("!HHHHHH", k, 0x8180, 1, 1, 0, 0) + name
                        + b"\x00\x01\x00\x01" + b"\xc0\x0c"
                        + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([10, 0, 0, k]))
    buffer = b"".join(messages)
    starts = np.cumsum([0] + [len(m) for m in messages[:-1]]).tolist()
    got = _kernel_batch(buffer, starts, [len(m) for m in messages])
    assert got == [_reference(m) for m in messages]
    qnames = [fields[2] for fields, _ in got]
    assert qnames[0] == qnames[5] == "a.z" and qnames[0] is qnames[5]
    assert qnames[0] is got[0][0][5][0]["name"]  # the answer's owner name too
    assert qnames[7] == qnames[8] and len(qnames[7]) > dns_kernel.INTERN_MAX_LEN


def test_outputs_grow_between_messages_and_equal_texts_stay_shared():
    # Far more answer rows, text bytes and distinct texts than parse_messages starts with
    # (n + 64 rows, 64 bytes per message, a 1024-slot intern table): they grow between
    # messages (the table rehashed several times), and a message repeated after that
    # still shares its texts with its first copy.
    messages = []
    for k in range(300):
        name = b"\x05h%04d\x07example\x00" % k
        records = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4)
                           + bytes([10, k >> 8, k & 0xFF, a]) for a in range(20))
        messages.append(struct.pack("!HHHHHH", k, 0x8180, 1, 20, 0, 0) + name
                        + b"\x00\x01\x00\x01" + records)
    messages.append(messages[0])
    buffer = b"".join(messages)
    starts = np.cumsum([0] + [len(m) for m in messages[:-1]]).tolist()
    lengths = [len(m) for m in messages]
    parsed = dns_kernel.parse_messages(np.frombuffer(buffer, dtype=np.uint8),
                                       np.array(starts, dtype=np.int64),
                                       np.array(lengths, dtype=np.int64))
    msg, records, text, used = parsed
    assert records.shape[0] == 301 * 20
    texts = text[:used].tobytes().decode("ascii").split("\n")[:-1]
    assert len(texts) == 300 * 21 and len(set(texts)) == len(texts)  # each text once
    assert (msg[300, 1:] == np.r_[0, msg[0, 2:6], 300 * 20, 20]).all()
    assert (records[300 * 20:] == records[:20]).all()  # the same text indexes
    got = _kernel_batch(buffer, starts, lengths)
    assert got == [_reference(m) for m in messages]
    assert got[300][0][2] is got[0][0][2] and got[300][0][5] is got[0][0][5]


def test_port_candidates_selects_dns_rows_and_cuts_spans_to_the_buffer():
    # rows (to/from port 53) -> UDP rows with a DNS header of payload, their spans inside
    # the 1000-byte buffer; TCP rows with a length prefix too; not IP: none.
    #           0    1    2    3    4    5    6    7    8
    ip_version = np.array([4, 6, 4, 4, 0, 4, 4, 4, 4], dtype=np.uint8)
    transport = np.array([17, 17, 17, 6, 17, 6, 1, 17, 17], dtype=np.uint8)
    length = np.array([12, 40, 11, 14, 40, 13, 40, 40, 40], dtype=np.int32)
    offset = np.array([0, 100, 200, 300, 400, 500, 600, 980, 1200], dtype=np.int64)
    rows = np.arange(9, dtype=np.int64)
    udp, start, udp_len, tcp = dns_kernel.port_candidates(rows, ip_version, transport,
                                                          length, offset, 1000)
    assert udp.tolist() == [0, 1, 7, 8] and tcp.tolist() == [3]
    assert start.tolist() == [0, 100, 980, 1200]
    assert udp_len.tolist() == [12, 40, 20, 0]
    udp, _, _, tcp = dns_kernel.port_candidates(rows[[1, 3]], ip_version, transport, length,
                                                offset, 1000)
    assert udp.tolist() == [1] and tcp.tolist() == [3]
