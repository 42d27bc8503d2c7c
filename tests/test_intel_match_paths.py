"""The compiled matching paths of pipeline/intel.py against straightforward references:

* match_domains joins a batch's names with NUL separators and hashes them in one pass
  (Latin-1 bytes when every name allows it, else UTF-32); a batch where some name
  contains a NUL itself takes the length-split path. Names of odd characters (NUL,
  Latin-1 and non-Latin-1 letters, empty names, dots in odd places) check all of them.
* match_ips reads the IPv4-mapped test and the address from raw 16-byte rows in the
  kernel; addresses that are almost mapped (a stray byte in the prefix, ::fffe:..., the
  old IPv4-compatible ::a.b.c.d) must go to the IPv6 tables, never to the IPv4 ones.
"""

from __future__ import annotations

import ipaddress

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.intel import Indicator, IndicatorSet, inline_indicators, string_hashes
from sensors.packets import IP_DTYPE

# --- domains ---------------------------------------------------------------------------------


def _reference_domain(values: list[str], name: str) -> int:
    """Index of the indicator equal to the longest suffix of `name` that starts at a label
    (position 0 or after a '.') and not at a NUL; the first loaded among equal values."""
    first: dict[str, int] = {}
    for i, v in enumerate(values):
        first.setdefault(v, i)
    for s in range(len(name)):
        if (s == 0 or name[s - 1] == ".") and name[s] != "\0" and name[s:] in first:
            return first[name[s:]]
    return -1


def _domain_set(values: list[str]) -> IndicatorSet:
    # Indicator objects as given (no normalization): the matcher compares text as is
    return IndicatorSet([Indicator("domain", v) for v in values])


_LATIN = "ab.-"
_chars = st.sampled_from(_LATIN + "\u00e9")  # Latin-1 only: the 1-byte encoding
_wide = st.sampled_from(_LATIN + "\u00e9\u4e2d\U0001F600\0")  # UTF-32, NUL: other paths


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(_LATIN + "\u00e9\u4e2d"), min_size=1,
                        max_size=6), min_size=1, max_size=8),
       st.lists(st.text(alphabet=st.one_of(_chars, _wide), max_size=14), max_size=40),
       st.data())
def test_match_domains_agrees_with_a_plain_suffix_walk(values, names, data) -> None:
    values = values + values[::3]  # duplicates: the first loaded must win
    # names that hit on purpose: an indicator itself and subdomains of it
    names = names + [data.draw(st.sampled_from(["", "x.", "a.b.", "\u00e9.", "\u4e2d."]))
                     + v for v in values[:4]]
    got = _domain_set(values).match_domains(np.array(names, object)).tolist()
    assert got == [_reference_domain(values, n) for n in names]


def test_a_name_with_a_nul_does_not_hide_the_hits_of_its_batch() -> None:
    s = _domain_set(["evil.test", "b\0c.test"])
    names = ["www.evil.test", "a\0.evil.test", "x.b\0c.test", "\0evil.test", "evil.test"]
    assert s.match_domains(np.array(names, object)).tolist() == [0, 0, 1, -1, 0]
    # without the NUL names, the same batch goes through the joined path: same answers
    assert s.match_domains(np.array([names[0], names[4]], object)).tolist() == [0, 0]


def test_non_latin1_and_latin1_names_match_like_ascii_ones() -> None:
    s = _domain_set(["\u4e2d.cn", "caf\u00e9.fr", "plain.test"])
    names = ["a.\u4e2d.cn", "x.caf\u00e9.fr", "y.plain.test", "\u4e2d.cnx", "\U0001F600.plain.test",
             "", "cafe.fr"]
    assert s.match_domains(np.array(names, object)).tolist() == [0, 1, 2, -1, 2, -1, -1]
    latin = [n for n in names if not any(ord(c) > 255 for c in n)]
    assert s.match_domains(np.array(latin, object)).tolist() == [1, 2, -1, -1]


def _thue_morse(doublings: int) -> str:
    text = "a"
    for _ in range(doublings):
        text += text.translate(str.maketrans("ab", "ba"))
    return text


def test_a_hash_collision_is_not_a_hit() -> None:
    """A Thue-Morse string and its complement (1,024 characters) have the same polynomial
    hash modulo 2**64 for any odd base: only the text comparison tells them apart."""
    listed = _thue_morse(10)
    other = listed.translate(str.maketrans("ab", "ba"))
    assert string_hashes([listed])[0] == string_hashes([other])[0]  # the premise
    s = _domain_set([listed])
    names = [other, "x." + other, listed, "x." + listed]
    assert s.match_domains(np.array(names, object)).tolist() == [-1, -1, 0, 0]
    # the same through the length-split path (a name with a NUL in the batch)
    assert s.match_domains(np.array(names + ["\0"], object)).tolist() == [-1, -1, 0, 0, -1]


# --- addresses ---------------------------------------------------------------------------------


def _column(raw: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(raw), IP_DTYPE).copy()


def _mapped_v4(raw: bytes) -> int | None:
    """The IPv4 address of an IPv4-mapped row (::ffff:a.b.c.d), else None."""
    return int.from_bytes(raw[12:], "big") if raw[:12] == bytes(10) + b"\xff\xff" else None


def _reference_ip(networks: list, raw: bytes) -> int:
    """Longest prefix holding the row's address, the first loaded among equals; an
    IPv4-mapped row is looked up as its IPv4 address, every other row as IPv6."""
    v4 = _mapped_v4(raw)
    addr = ipaddress.IPv4Address(v4) if v4 is not None else \
        ipaddress.IPv6Address(int.from_bytes(raw, "big"))
    covering = [(net.prefixlen, -i) for i, net in enumerate(networks)
                if net.version == addr.version and addr in net]
    return -max(covering)[1] if covering else -1


_V4_NETS = ("192.0.2.0/24", "192.0.2.128/25", "198.51.100.7", "10.0.0.0/8", "10.1.2.3")
_V6_NETS = ("2001:db8::/32", "2001:db8::1", "::/96", "::c000:280/121", "::fffe:0:0/96")
# the first 12 bytes of a row: mapped, and near misses of it
_PREFIXES = (bytes(10) + b"\xff\xff", bytes(10) + b"\xff\xfe", bytes(12),
             b"\x01" + bytes(9) + b"\xff\xff", bytes(9) + b"\x01\xff\xff",
             bytes.fromhex("20010db8") + bytes(8))
_TAILS = (bytes([192, 0, 2, 130]), bytes([192, 0, 2, 5]), bytes([198, 51, 100, 7]),
          bytes([10, 1, 2, 3]), bytes([10, 200, 0, 1]), bytes([0, 0, 0, 1]),
          bytes([203, 0, 113, 9]))
# rows as (first 12 bytes, last 4 bytes): mapped and near-miss prefixes, listed and any tails
ADDRESS_ROWS = st.lists(st.tuples(st.sampled_from(_PREFIXES),
                                  st.one_of(st.sampled_from(_TAILS),
                                            st.binary(min_size=4, max_size=4))),
                        max_size=60)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_V4_NETS + _V6_NETS), min_size=1, max_size=8), ADDRESS_ROWS)
def test_match_ips_reads_mapped_and_other_rows_like_the_reference(nets, rows) -> None:
    raw = [p + t for p, t in rows]
    networks = [ipaddress.ip_network(n) for n in nets]
    s = IndicatorSet(inline_indicators([{"type": "cidr", "value": n} for n in nets]))
    got = s.match_ips(_column(raw)).tolist()
    assert got == [_reference_ip(networks, r) for r in raw]


def test_mapped_rows_never_reach_the_ipv6_tables_and_others_never_the_ipv4_one() -> None:
    s = IndicatorSet(inline_indicators(["192.0.2.1", "::ffff:0:0/96", "::c000:201"]))
    raw = [bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1]),  # mapped 192.0.2.1: the ip
           bytes(12) + bytes([192, 0, 2, 1]),  # ::192.0.2.1: IPv6, the third
           bytes(10) + b"\xff\xfe" + bytes([192, 0, 2, 1]),  # neither
           bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 2])]  # mapped, not listed
    assert s.match_ips(_column(raw)).tolist() == [0, 2, -1, -1]
    only_v6 = IndicatorSet(inline_indicators(["::c000:201"]))
    assert only_v6.match_ips(_column(raw)).tolist() == [-1, 0, -1, -1]
    only_v4 = IndicatorSet(inline_indicators(["192.0.2.1"]))
    assert only_v4.match_ips(_column(raw)).tolist() == [0, -1, -1, -1]
    assert only_v4.match_ips(_column([])).tolist() == []
