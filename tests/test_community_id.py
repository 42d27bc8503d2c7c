"""Community ID v1 against the spec's published test vectors.

Vectors are copied from github.com/corelight/community-id-spec, baseline/README.md
("Default settings" and "A custom seed=1 value" tables) and baseline/baseline_deflt.json /
baseline_seed1.json (commit c4ec2bc40d65ddbcbdd642582bf5609797a80772). In the JSON files the
ICMP "sport"/"dport" are already Zeek port equivalents (type, counter-type or code); feeding
them back as (type, code) maps to the same values, so they are valid inputs here too.
"""

from __future__ import annotations

import ipaddress
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors import community_id as cid
from sensors.community_id import community_id_column, community_id_v1
from sensors.packets import IP_DTYPE, IPV4_MAPPED_PREFIX, ip_to_bytes16

V6A = "fe80:0001:0203:0405:0607:0809:0A0B:0C0D"
V6B = "fe80:1011:1213:1415:1617:1819:1A1B:1C1D"

# (proto, src, dst, sport, dport, id with seed 0, id with seed 1) -- baseline/README.md tables
README_VECTORS = [
    (6, "1.2.3.4", "5.6.7.8", 1122, 3344,
     "1:wCb3OG7yAFWelaUydu0D+125CLM=", "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
    (6, "5.6.7.8", "1.2.3.4", 3344, 1122,
     "1:wCb3OG7yAFWelaUydu0D+125CLM=", "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
    (17, "1.2.3.4", "5.6.7.8", 1122, 3344,
     "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg=", "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
    (17, "5.6.7.8", "1.2.3.4", 3344, 1122,
     "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg=", "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
    (132, "1.2.3.4", "5.6.7.8", 1122, 3344,
     "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8=", "1:uitchpn5MMGAQKBJh7bIr/bAr7s="),
    (132, "5.6.7.8", "1.2.3.4", 3344, 1122,
     "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8=", "1:uitchpn5MMGAQKBJh7bIr/bAr7s="),
    (1, "1.2.3.4", "5.6.7.8", 8, 0,
     "1:crodRHL2FEsHjbv3UkRrfbs4bZ0=", "1:9pr4ZGTICiuZoIh90RRYE2RyXpU="),
    (1, "5.6.7.8", "1.2.3.4", 0, 0,
     "1:crodRHL2FEsHjbv3UkRrfbs4bZ0=", "1:9pr4ZGTICiuZoIh90RRYE2RyXpU="),
    (1, "1.2.3.4", "5.6.7.8", 11, 0,
     "1:f/YiSyWqczrTgfUCZlBUnvHRcPk=", "1:1DD7cWGC/Yg91YGsQeni8du3pIA="),
    (58, V6A, V6B, 128, 0,
     "1:0bf7hyMJUwt3fMED7z8LIfRpBeo=", "1:IO27GQzPuCtNnwFvjWALMHu5tJE="),
    (58, V6B, V6A, 129, 0,
     "1:0bf7hyMJUwt3fMED7z8LIfRpBeo=", "1:IO27GQzPuCtNnwFvjWALMHu5tJE="),
    (58, V6A, V6B, 146, 0,
     "1:fYC8+pz24E+EhANP1EZhpX0Dw10=", "1:Cv4IKJe56BNkF0MBW2YxQ3Nwc3s="),
    (46, "1.2.3.4", "5.6.7.8", 0, 0,
     "1:ikv3kmf89luf73WPz1jOs49S768=", "1:/buhqeOmaRCopOZFy9HnoJd5XW8="),
    (46, "5.6.7.8", "1.2.3.4", 0, 0,
     "1:ikv3kmf89luf73WPz1jOs49S768=", "1:/buhqeOmaRCopOZFy9HnoJd5XW8="),
    (46, V6A, V6B, 0, 0,
     "1:wQ/2mwrnXP4lmJcHdGL5ePjR+e0=", "1:j6EyyfBzL4vWKHFXgUqb5Az3OxM="),
    (46, V6B, V6A, 0, 0,
     "1:wQ/2mwrnXP4lmJcHdGL5ePjR+e0=", "1:j6EyyfBzL4vWKHFXgUqb5Az3OxM="),
]

# baseline_deflt.json + baseline_seed1.json, merged by tuple (null ports -> 0)
JSON_VECTORS = [
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 135, 136,
     "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=", "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 136, 135,
     "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=", "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 135, 136,
     "1:zavyT/cezQr1fmImYCwYnMXbgck=", "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM="),
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 136, 135,
     "1:zavyT/cezQr1fmImYCwYnMXbgck=", "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM="),
    (58, "3ffe:501:1800:2345::2", "3ffe:507:0:1:200:86ff:fe05:80da", 3, 0,
     "1:2ObVBgIn28oZvibYZhZMBgh7WdQ=", "1:lVEtCZpYu84Xqaa++3lXFyuu2n4="),
    (58, "3ffe:501:410:0:2c0:dfff:fe47:33e", "3ffe:507:0:1:200:86ff:fe05:80da", 1, 4,
     "1:hLZd0XGWojozrvxqE0dWB1iM6R0=", "1:W8MHwXpWzpoSTD+cGcaJr4u0ys8="),
    (58, "3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:501:0:1001::2", 128, 129,
     "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=", "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
    (58, "3ffe:501:0:1001::2", "3ffe:507:0:1:200:86ff:fe05:80da", 129, 128,
     "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=", "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
    (58, "fe80::200:86ff:fe05:80da", "ff02::2", 133, 134,
     "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0=", "1:L7Ka0ZMYu+J3bL4ulW2PrqyXNo8="),
    (58, "fe80::260:97ff:fe07:69ea", "ff02::1", 134, 133,
     "1:pkvHqCL88/tg1k4cPigmZXUtL00=", "1:K/ee5UCqAMAQXDorP5nSa2CGLjc="),
    (1, "192.168.0.89", "192.168.0.1", 8, 0,
     "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=", "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
    (1, "192.168.0.1", "192.168.0.89", 0, 8,
     "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=", "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
    (1, "10.0.0.1", "10.0.0.2", 11, 0,
     "1:YHxtAirCG//0OzkcVAukqKQN9xM=", "1:XjUibYHaafLQ3pxQeiMI8g25q20="),
    (6, "2001:470:e5bf:dead:4957:2174:e82c:4887", "2607:f8b0:400c:c03::1a", 63943, 25,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=", "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
    (6, "2607:f8b0:400c:c03::1a", "2001:470:e5bf:dead:4957:2174:e82c:4887", 25, 63943,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=", "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
    (132, "192.168.170.8", "192.168.170.56", 7, 7,
     "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=", "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
    (132, "192.168.170.56", "192.168.170.8", 7, 7,
     "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=", "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
    (6, "128.232.110.120", "66.35.250.204", 34855, 80,
     "1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
    (6, "66.35.250.204", "128.232.110.120", 80, 34855,
     "1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
    (17, "192.168.1.52", "8.8.8.8", 54585, 53,
     "1:d/FP5EW3wiY1vCndhwleRRKHowQ=", "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
    (17, "8.8.8.8", "192.168.1.52", 53, 54585,
     "1:d/FP5EW3wiY1vCndhwleRRKHowQ=", "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
    (46, "10.1.12.1", "10.1.12.2", 0, 0,
     "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=", "1:rYir8gphR31noO9iDRQmF/BteEI="),
    (46, "10.1.12.2", "10.1.12.1", 0, 0,
     "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=", "1:rYir8gphR31noO9iDRQmF/BteEI="),
]

ALL_VECTORS = README_VECTORS + JSON_VECTORS


def _packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


@pytest.mark.parametrize("proto,src,dst,sport,dport,cid0,cid1", ALL_VECTORS)
def test_scalar_matches_spec_vectors(proto, src, dst, sport, dport, cid0, cid1):
    assert community_id_v1(_packed(src), _packed(dst), proto, sport, dport) == cid0
    assert community_id_v1(_packed(src), _packed(dst), proto, sport, dport, seed=1) == cid1


@pytest.mark.parametrize("proto,src,dst,sport,dport,cid0,cid1", ALL_VECTORS)
def test_ipv4_mapped_16_byte_addresses_hash_as_ipv4(proto, src, dst, sport, dport, cid0, cid1):
    # Our column form stores IPv4 as ::ffff:a.b.c.d; it must give the 4-byte result.
    assert community_id_v1(ip_to_bytes16(src), ip_to_bytes16(dst), proto, sport, dport) == cid0


@pytest.mark.parametrize("seed,expected_index", [(0, 5), (1, 6)])
def test_column_matches_spec_vectors(seed, expected_index):
    vectors = ALL_VECTORS
    src = np.array([ip_to_bytes16(v[1]) for v in vectors], dtype=IP_DTYPE)
    dst = np.array([ip_to_bytes16(v[2]) for v in vectors], dtype=IP_DTYPE)
    proto = np.array([v[0] for v in vectors], dtype=np.uint8)
    sport = np.array([v[3] for v in vectors], dtype=np.uint16)
    dport = np.array([v[4] for v in vectors], dtype=np.uint16)
    got = community_id_column(src, dst, proto, sport, dport, seed=seed)
    assert got.dtype == object
    assert got.tolist() == [v[expected_index] for v in vectors]


def test_ports_ignored_for_portless_protocols():
    # Spec: other IP protocols hash only addresses and protocol; stray port values must not
    # change the ID.
    a, b = _packed("1.2.3.4"), _packed("5.6.7.8")
    assert community_id_v1(a, b, 46, 1234, 80) == "1:ikv3kmf89luf73WPz1jOs49S768="


def test_icmp_one_way_is_not_flipped():
    # Type 11 (time exceeded) is one-way: the reverse tuple is a different flow.
    a, b = _packed("1.2.3.4"), _packed("5.6.7.8")
    assert community_id_v1(a, b, 1, 11, 0) != community_id_v1(b, a, 1, 11, 0)


def test_same_address_ordered_by_port():
    a = _packed("10.0.0.1")
    assert community_id_v1(a, a, 6, 1000, 80) == community_id_v1(a, a, 6, 80, 1000)


def test_empty_column():
    empty = np.empty(0, dtype=IP_DTYPE)
    got = community_id_column(empty, empty, np.empty(0, np.uint8), np.empty(0, np.uint16),
                              np.empty(0, np.uint16))
    assert got.shape == (0,) and got.dtype == object


def test_bad_address_length():
    with pytest.raises(ValueError):
        community_id_v1(b"\x01\x02\x03", _packed("1.2.3.4"), 6, 1, 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=55), min_size=1, max_size=40))
def test_column_sha1_equals_hashlib(messages):
    """The column-wise SHA1 (one block per row) against hashlib, any length 0..55."""
    import hashlib

    from sensors.community_id import sha1_rows

    width = max(len(m) for m in messages)
    buf = np.zeros((len(messages), width), dtype=np.uint8)
    for i, m in enumerate(messages):
        buf[i, :len(m)] = np.frombuffer(m, dtype=np.uint8)
        buf[i, len(m):] = 0xA5  # bytes past the message must not count
    digests = sha1_rows(buf, np.array([len(m) for m in messages]))
    assert [bytes(d) for d in digests] == [hashlib.sha1(m).digest() for m in messages]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4),
                          st.sampled_from([1, 6, 17, 47, 58, 132]), st.integers(0, 65535),
                          st.integers(0, 65535)), min_size=1, max_size=30),
       st.integers(0, 65535))
def test_column_ids_equal_a_per_row_hashlib_reference(tuples, seed):
    """The compiled kernel (ordering, packing, SHA1, base64) against hashlib per row."""
    _check_column_ids(tuples, seed)


_ADDR = st.one_of(
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=4, max_size=4).map(lambda a: IPV4_MAPPED_PREFIX + a),
    st.sampled_from([bytes(16), IPV4_MAPPED_PREFIX + bytes(4), bytes(15) + b"\x01"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_ADDR, _ADDR, st.integers(0, 255), st.integers(0, 65535),
                          st.integers(0, 65535)), min_size=1, max_size=40),
       st.integers(0, 65535), st.booleans())
def test_column_ids_any_family_and_protocol(tuples, seed, same_addresses):
    """16-byte addresses of both families (and equal endpoints, ordered by port), every
    protocol number, ICMP types of both kinds: the kernel equals the hashlib reference."""
    if same_addresses:
        tuples = [(s, s, p, sp, dp) for s, _, p, sp, dp in tuples]
    _check_column_ids(tuples, seed, width=16)


def _check_column_ids(tuples, seed, width: int = 4) -> None:
    """community_id_column (vectorized SHA1 + base64) against the spec computed per row with
    hashlib/base64, IPv4 tuples of every port-carrying and one portless protocol."""
    import base64
    import hashlib
    import struct

    from sensors.community_id import community_id_column, icmp_port_equivalents

    def reference(src: bytes, dst: bytes, proto: int, sport: int, dport: int) -> str:
        sp, dp, one_way = icmp_port_equivalents(np.array([proto]), np.array([sport]),
                                                np.array([dport]))
        sport, dport, one_way = int(sp[0]), int(dp[0]), bool(one_way[0])
        if proto not in (1, 6, 17, 58, 132):
            sport = dport = 0
        if not (one_way or (src, sport) < (dst, dport)):
            src, dst, sport, dport = dst, src, dport, sport
        if src.startswith(IPV4_MAPPED_PREFIX):  # both endpoints of a tuple share a family
            src, dst = src[12:], dst[12:]
        data = struct.pack("!H", seed) + src + dst + struct.pack("!BB", proto, 0)
        if proto in (1, 6, 17, 58, 132):
            data += struct.pack("!HH", sport, dport)
        return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()

    def col(addrs: list[bytes]) -> np.ndarray:
        if width == 4:
            addrs = [IPV4_MAPPED_PREFIX + a for a in addrs]
        return np.array(addrs, dtype=IP_DTYPE)

    src, dst, proto, sport, dport = (list(x) for x in zip(*tuples, strict=True))
    got = community_id_column(col(src), col(dst), np.array(proto, dtype=np.uint8),
                              np.array(sport), np.array(dport), seed)
    assert got.dtype == object
    assert got.tolist() == [reference(*t) for t in tuples]


def test_column_holds_plain_str_objects_of_30_characters():
    """The column's contract: builtin str objects (not numpy str_ or bytes), one per row,
    each the full 30-character "1:<base64>=" text (nothing stripped by the UCS4 read)."""
    rows = [(_packed(src), _packed(dst), proto, sport, dport)
            for proto, src, dst, sport, dport, _, _ in ALL_VECTORS]
    src = np.array([ip_to_bytes16(str(ipaddress.ip_address(s))) for s, *_ in rows], dtype=IP_DTYPE)
    dst = np.array([ip_to_bytes16(str(ipaddress.ip_address(d))) for _, d, *_ in rows],
                   dtype=IP_DTYPE)
    got = community_id_column(src, dst, np.array([r[2] for r in rows], dtype=np.uint8),
                              np.array([r[3] for r in rows]), np.array([r[4] for r in rows]))
    assert got.dtype == object and got.shape == (len(rows),)
    assert all(type(x) is str and len(x) == 30 and x.startswith("1:") and x.endswith("=")
               for x in got)
    assert got.tolist() == [cid0 for *_, cid0, _ in ALL_VECTORS]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_ADDR, _ADDR, st.integers(0, 255), st.integers(-70000, 70000),
                          st.integers(-70000, 70000)), min_size=1, max_size=40),
       st.integers(0, 65535))
def test_sha_extension_kernel_equals_the_scalar_kernel(tuples, seed):
    """Both text kernels give the same rows: the SHA-NI one (used where the CPU has the SHA
    extensions) and the portable scalar one (used elsewhere, so tested here too)."""

    if not cid._SHA_NI:
        pytest.skip("this CPU (or the numba target) has no SHA extensions")
    src, dst, proto, sport, dport = (list(x) for x in zip(*tuples, strict=True))
    args = (np.array(src, dtype=IP_DTYPE).view(np.uint8).reshape(-1, 16),
            np.array(dst, dtype=IP_DTYPE).view(np.uint8).reshape(-1, 16),
            np.array(proto, dtype=np.uint8), np.array(sport, dtype=np.int32),
            np.array(dport, dtype=np.int32), seed)
    assert np.array_equal(cid._community_id_text_ni(*args), cid._community_id_text(*args))


@pytest.mark.parametrize("rows", range(1, 11))
def test_sha_extension_kernel_every_group_size(rows):
    """The SHA-NI kernel hashes rows SHA_LANES at a time; every count (full groups, a short
    last group whose spare lanes repeat its last row) gives the scalar kernel's rows, IPv4
    and IPv6 tuples mixed so consecutive lanes hold inputs of different lengths."""

    if not cid._SHA_NI:
        pytest.skip("this CPU (or the numba target) has no SHA extensions")
    rng = np.random.default_rng(rows)
    addrs = rng.integers(0, 256, (2, rows, 16), dtype=np.uint8)
    addrs[:, ::2, :12] = np.frombuffer(IPV4_MAPPED_PREFIX, dtype=np.uint8)
    args = (addrs[0], addrs[1], rng.choice(np.array([1, 6, 17, 47, 58], dtype=np.uint8), rows),
            rng.integers(0, 65536, rows).astype(np.int32),
            rng.integers(0, 65536, rows).astype(np.int32), 7)
    assert np.array_equal(cid._community_id_text_ni(*args), cid._community_id_text(*args))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                 "0123456789+/:=", min_size=30, max_size=30),
                min_size=0, max_size=50))
def test_str_column_makes_plain_equal_strs_and_releases_the_placeholders(texts):
    """_str_column's kernel (str objects made through the C API) gives what numpy's
    astype(object) gives: builtin str, equal, same hash, usable as keys; the None
    placeholders of the column it fills are released (None's count is unchanged)."""
    rows = np.frombuffer("".join(texts).encode(), dtype=np.uint8).reshape(len(texts), 30)
    got = cid._str_column(np.ascontiguousarray(rows))
    assert got.dtype == object and got.shape == (len(texts),)
    assert all(type(x) is str for x in got)
    assert got.tolist() == texts
    assert [hash(x) for x in got] == [hash(t) for t in texts]
    assert {x: i for i, x in enumerate(got)} == {t: i for i, t in enumerate(texts)}
    assert all(x.isascii() and len(x) == 30 for x in got)


def test_str_column_releases_the_none_placeholders():
    rows = np.full((1000, 30), ord("A"), dtype=np.uint8)
    before = sys.getrefcount(None)
    columns = [cid._str_column(rows) for _ in range(5)]
    assert abs(sys.getrefcount(None) - before) < 100  # a leak would be 1000 a call
    assert all(c.tolist() == ["A" * 30] * 1000 for c in columns)


def test_str_column_fallback_without_the_kernel(monkeypatch):
    rows = np.frombuffer(b"1:" + b"A" * 27 + b"=", dtype=np.uint8).reshape(1, 30).copy()
    monkeypatch.setattr(cid, "_STR_DATA", -1)
    got = cid._str_column(rows)
    assert got.tolist() == ["1:" + "A" * 27 + "="] and type(got[0]) is str
