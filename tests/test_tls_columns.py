"""TLS event columns built once per distinct value (KnownValues): version and cipher names
made once per code, SNI / ALPN texts and certificate columns once per distinct slice, give
what one call per row gives."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tls_kernels import client_streams, server_streams
from test_tls_known import HS_KINDS, HS_SOURCES

from sensors import tls


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 0xFFFF) | st.sampled_from([0x0303, 0x1301]),
                                   st.integers(-1, 0xFFFF) | st.sampled_from([0x1301, -1])),
                         max_size=20), min_size=1, max_size=3))
def test_code_names_made_once_per_code(batches):
    """KnownValues.code_columns: a version and a cipher name per row, equal to one call of
    version_name / cipher_name per row ("" for the cipher code -1), the name of each code
    made once across batches."""
    known = tls.KnownValues()
    made: list[tuple[str, int]] = []
    version_name, cipher_name = tls.version_name, tls.cipher_name
    tls.version_name = lambda code: made.append(("v", code)) or version_name(code)
    tls.cipher_name = lambda code: made.append(("c", code)) or cipher_name(code)
    try:
        for rows in batches:
            codes = np.array([[v for v, _ in rows], [c for _, c in rows]],
                             np.int64).reshape(2, -1)
            client = np.zeros(codes.shape[1], np.int64)  # unused: no version is -1
            versions, ciphers = known.code_columns(codes, client)
            assert versions.dtype == object and ciphers.dtype == object
            assert versions.tolist() == [version_name(v) for v, _ in rows]
            assert ciphers.tolist() == [cipher_name(c) if c >= 0 else "" for _, c in rows]
    finally:
        tls.version_name, tls.cipher_name = version_name, cipher_name
    assert len(made) == len(set(made))  # once per (table, code)


def _hs_columns(hs: np.ndarray, starts: np.ndarray, stops: np.ndarray, leaf_lo: np.ndarray,
                leaf_hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """(server_name, next_protocol, cert_sha1, cert_subject, cert_issuer) of rows whose
    (m, 2) hs slices are SNI and chosen ALPN, hs[leaf_lo:leaf_hi] their leaf certificate
    (empty: none, ""), numbered by a new KnownValues as event_columns numbers them."""
    known = tls.KnownValues()
    lo = np.stack([starts[:, 0], starts[:, 1], leaf_lo]).astype(np.int64)
    hi = np.stack([stops[:, 0], stops[:, 1], leaf_hi]).astype(np.int64)
    src = np.ascontiguousarray(hs, dtype=np.uint8)
    sni, alpn, leaf = known.number(src, src, src, HS_SOURCES, HS_KINDS, lo, hi)
    texts = known.texts
    return (texts["server_name"][sni], texts["next_protocol"][alpn], texts["cert_sha1"][leaf],
            texts["cert_subject"][leaf], texts["cert_issuer"][leaf])


def _piece(data: bytes, a: int, b: int) -> bytes:
    """data[a:b] clipped to data (empty when b <= a)."""
    lo = min(max(a, 0), len(data))
    return data[lo : max(min(b, len(data)), lo)]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=48),
       st.lists(st.tuples(*[st.tuples(st.integers(-3, 50), st.integers(-3, 50))] * 3),
                max_size=12),
       st.booleans())
def test_hs_columns_equal_each_row_alone(data, rows, newlines):
    """SNI / ALPN columns and leaves numbered by KnownValues equal each row's own texts
    (ASCII with "replace", the SNI lower-cased; a "\n" byte in a hostile SNI included): the
    columns never share numbers, even for equal bytes."""
    if newlines:
        data = data.replace(b"a", b"\n")
    src = np.frombuffer(data, np.uint8)
    bounds = np.array(rows, np.int64).reshape(-1, 3, 2)
    starts, stops = bounds[:, :2, 0].copy(), bounds[:, :2, 1].copy()
    leaf_lo, leaf_hi = bounds[:, 2, 0].copy(), bounds[:, 2, 1].copy()
    got = _hs_columns(src, starts, stops, leaf_lo, leaf_hi)
    assert all(column.dtype == object and column.shape == (len(rows),) for column in got)
    for i in range(len(rows)):
        sni = _piece(data, int(starts[i, 0]), int(stops[i, 0])).decode("ascii", "replace")
        alpn = _piece(data, int(starts[i, 1]), int(stops[i, 1])).decode("ascii", "replace")
        assert (got[0][i], got[1][i]) == (sni.lower(), alpn)
        der = _piece(data, int(leaf_lo[i]), int(leaf_hi[i]))
        expected = tls.certificate(der) if der else ("", "", "")
        assert (got[2][i], got[3][i], got[4][i]) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(client_streams(), server_streams()), min_size=1, max_size=4))
def test_event_columns_take_an_index_array_or_a_list(flows):
    """The analyzer hands event_columns its index array (no list round trip)."""
    parsed = tls.parse_flows([c for c, _ in flows], [s for _, s in flows])
    at = np.flatnonzero(parsed.status == tls.HELLO_OK)
    by_array, by_list = tls.event_columns(parsed, at), tls.event_columns(parsed, at.tolist())
    assert list(by_array) == list(by_list)
    for name, column in by_array.items():
        assert column.dtype == by_list[name].dtype and column.tolist() == by_list[name].tolist()
