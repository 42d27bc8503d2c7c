"""The offered-ALPN column holds one list per distinct client key, shared by the rows with
that key (as DNS answer lists are): each row reads its own ClientHello's names."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tls_kernels import client_streams

from sensors import tls


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(client_streams(), min_size=1, max_size=4), st.lists(st.integers(0, 3),
                                                                   min_size=1, max_size=12))
def test_each_row_lists_its_own_offered_names(clients, picks):
    flows = [clients[i % len(clients)] for i in picks]  # repeated stacks share a key
    parsed = tls.parse_flows(flows, [b""] * len(flows))
    rows = np.flatnonzero(parsed.status == tls.HELLO_OK)
    column = tls.event_columns(parsed, rows)["client_alpn"]
    assert column.dtype == object and column.shape == (rows.size,)
    for k, i in enumerate(rows.tolist()):
        hello = tls.handshake_of(parsed, i).client
        assert type(column[k]) is list
        assert column[k] == [p.decode("ascii", "replace") for p in hello.alpn]
    keys = [parsed.client_keys[parsed.client_key_start[i]:parsed.client_key_stop[i]].tobytes()
            for i in rows.tolist()]
    for a in range(rows.size):  # shared exactly by the rows with the same client key
        for b in range(rows.size):
            assert (column[a] is column[b]) == (keys[a] == keys[b])
