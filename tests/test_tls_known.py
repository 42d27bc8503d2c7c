"""TLS's KnownValues: distinct client keys, server keys, SNIs, ALPN names and leaf
certificates numbered across batches. Event columns with one kept table equal those with a
new table per batch (also when the table starts over at its bounds), and the numbering is
exact whatever its memo guesses."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tls_kernels import client_streams, server_streams

from sensors import tls

flows = st.tuples(client_streams(), server_streams() | st.just(b""))
# three columns of one source (a flight's bytes): SNI, chosen ALPN and leaf certificate
HS_SOURCES = np.full(3, tls.SOURCE_HS, np.int64)
HS_KINDS = np.array([tls.KIND_SNI, tls.KIND_ALPN, tls.KIND_LEAF], np.int64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(flows, min_size=1, max_size=4), min_size=1, max_size=4),
       st.sampled_from([(tls.MAX_KNOWN_VALUES, tls.MAX_KNOWN_BYTES), (3, 64), (0, 0)]))
def test_kept_table_gives_each_batch_its_own_columns(batches, bounds):
    """Batch after batch through one KnownValues (small bounds: it starts over often) reads
    what a new table per batch reads, object types included."""
    known = tls.KnownValues(*bounds)
    for batch in batches:
        parsed = tls.parse_flows([c for c, _ in batch], [s for _, s in batch])
        rows = np.flatnonzero(parsed.status == tls.HELLO_OK)
        kept = tls.event_columns(parsed, rows, known)
        fresh = tls.event_columns(parsed, rows)
        assert list(kept) == list(fresh)
        for name, column in kept.items():
            assert column.dtype == fresh[name].dtype and column.shape == (rows.size,), name
            for a, b in zip(column.tolist(), fresh[name].tolist(), strict=True):
                assert a == b and type(a) is type(b), name


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=80), min_size=1, max_size=6),
       st.lists(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 79), st.integers(0, 255),
                                   st.integers(0, 2)), max_size=20), min_size=1, max_size=3))
def test_numbers_exact_across_calls(pool, calls):
    """Values get equal numbers exactly when kind and bytes are equal, across calls (the
    batch's source arrays change; kept bytes are compared): slices of a small pool repeat
    (memo hits), some with one byte changed (same length and often the same last bytes:
    wrong guesses), in three kinds that never share a number."""
    known = tls.KnownValues()
    seen: dict[tuple[int, bytes], int] = {}
    for picks in calls:
        parts, kinds = [], []
        for which, at, value, kind in picks:
            piece = bytearray(pool[which % len(pool)])
            if piece and value % 3 == 0:
                piece[at % len(piece)] = value
            parts.append(bytes(piece))
            kinds.append(kind)
        src = np.frombuffer(bytearray(b"".join(parts)), np.uint8)
        sizes = np.array([len(p) for p in parts], np.int64)
        stops = np.cumsum(sizes)
        lo = np.zeros((3, len(parts)), np.int64)
        hi = np.zeros((3, len(parts)), np.int64)
        for i, kind in enumerate(kinds):  # each row's slice in its kind's column
            lo[kind, i], hi[kind, i] = stops[i] - sizes[i], stops[i]
        ids = known.number(src, src, src, HS_SOURCES, HS_KINDS, lo, hi)
        for i, kind in enumerate(kinds):
            for c in range(3):
                value = parts[i] if c == kind else b""
                assert ids[c, i] == seen.setdefault((c, value), int(ids[c, i]))
    assert len(set(seen.values())) == len(seen)  # unequal values, unequal numbers
