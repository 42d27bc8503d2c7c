"""dns_tunnel's per-close prefilter kernel (correlation/dns_reach.py) selects exactly the rows
the numpy grouping it replaced selected, with the same key order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation.detector import distinct_per_group
from correlation.dns_reach import tunnel_reach
from correlation.kernels import factorize_u64


def reference(name_row, client, is_resp, nx, named, parent_id, exfil, dga, min_unique,
              dga_min):
    """The numpy steps of DnsTunnelDetector.detect before the kernel (HEAD)."""
    client_code = factorize_u64(client.view(np.uint64))[0]
    name_code, first = factorize_u64(name_row.view(np.uint64))
    rows = name_row[first]
    parent_code_of = factorize_u64(parent_id[rows].view(np.uint64))[0]
    has_parent = named[rows][name_code]
    q = np.flatnonzero(~is_resp & has_parent)
    key = np.zeros(0, np.int64)
    if q.size:
        pcode = parent_code_of[name_code[q]]
        key = factorize_u64(client_code[q] * (int(pcode.max()) + 1) + pcode)[0]
        n_keys = int(key.max()) + 1
        reach = ((distinct_per_group(key, n_keys, name_code[q]) >= min_unique)
                 | (np.bincount(key, weights=exfil[rows][name_code[q]], minlength=n_keys)
                    > 0))[key]
        q, key = q[reach], key[reach]
    d = np.flatnonzero(is_resp & nx & has_parent & dga[rows][name_code])
    if d.size:
        pcode = parent_code_of[name_code[d]]
        d = d[distinct_per_group(client_code[d], int(client_code.max()) + 1,
                                 pcode)[client_code[d]] >= dga_min]
    return q, key, d


def ranks(values: np.ndarray) -> list[int]:
    """Dense ranks of the values (what combine_codes keeps of the key ids)."""
    return np.unique(values, return_inverse=True)[1].tolist()


@st.composite
def closes(draw):
    n_names = draw(st.integers(1, 12))
    n = draw(st.integers(0, 300))
    ints = st.integers
    return dict(
        name_row=np.array(draw(st.lists(ints(0, n_names - 1), min_size=n, max_size=n)),
                          np.int64),
        client=np.array(draw(st.lists(st.sampled_from([3, 7, 2**40, -5, 11]), min_size=n,
                                      max_size=n)), np.int64),
        is_resp=np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool),
        nx=np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool),
        named=np.array(draw(st.lists(st.booleans(), min_size=n_names, max_size=n_names)),
                       bool),
        parent_id=np.array(draw(st.lists(ints(0, 4), min_size=n_names, max_size=n_names)),
                           np.int64),
        exfil=np.array(draw(st.lists(st.booleans().map(lambda b: b and draw(st.booleans())),
                                     min_size=n_names, max_size=n_names)), bool),
        dga=np.array(draw(st.lists(st.booleans(), min_size=n_names, max_size=n_names)), bool),
        min_unique=draw(ints(1, 6)), dga_min=draw(ints(1, 4)))


@settings(max_examples=300, deadline=None)
@given(closes())
def test_tunnel_reach_equals_the_numpy_grouping(c) -> None:
    c["dga"] &= c["named"]  # (the detector's dga_name implies a parent)
    args = (c["name_row"], c["client"], c["is_resp"], c["nx"], c["named"], c["parent_id"],
            c["exfil"], c["dga"], c["min_unique"], c["dga_min"])
    client = c["client"].view(np.uint64)
    q, key, d = tunnel_reach(args[0], client, client ^ np.uint64(5), *args[2:])
    want_q, want_key, want_d = reference(*args)
    assert q.tolist() == want_q.tolist()
    assert ranks(key) == ranks(want_key)  # same groups, same order of their first rows
    assert d.tolist() == want_d.tolist()


def test_tunnel_reach_counts_distinct_names_not_rows() -> None:
    # client 1: 3 queries of one name under parent 0 (1 distinct), then 3 distinct names
    name_row = np.array([0, 0, 0, 1, 2, 3, 4], np.int64)
    client = np.array([1, 1, 1, 2, 2, 2, 2], np.int64)
    is_resp = np.zeros(7, bool)
    named = np.array([True, True, True, True, False])
    parent_id = np.array([0, 1, 1, 1, 1], np.int64)
    none = np.zeros(5, bool)
    q, key, d = tunnel_reach(name_row, client.view(np.uint64), np.zeros(7, np.uint64), is_resp,
                             is_resp, named, parent_id, none, none, 3, 1)
    assert q.tolist() == [3, 4, 5]  # client 2 under parent 1; row 6 has no parent
    assert key.tolist() == [1, 1, 1]  # (client 1's key 0 has one distinct name)
    assert d.size == 0


def test_tunnel_reach_many_keys_grow_the_tables() -> None:
    # 40,000 clients (more than a table's starting 65,536 slots hold at half load), each
    # with min_unique names under one parent, and NXDOMAIN answers for DGA
    n_clients, per = 40_000, 2
    client = np.repeat(np.arange(n_clients, dtype=np.int64) * 7919, per)
    name_row = np.tile(np.arange(per, dtype=np.int64), n_clients)
    is_resp = np.zeros(client.size, bool)
    named = np.ones(per, bool)
    parent_id = np.zeros(per, np.int64)
    none = np.zeros(per, bool)
    hi, lo = np.zeros(client.size, np.uint64), client.view(np.uint64)
    q, key, d = tunnel_reach(name_row, hi, lo, is_resp, is_resp, named, parent_id, none,
                             none, per, 1)
    assert q.tolist() == list(range(client.size))
    assert key.tolist() == np.repeat(np.arange(n_clients), per).tolist()
    q, _, d = tunnel_reach(name_row, hi, lo, ~is_resp, ~is_resp, named, np.arange(per),
                           none, ~none, 1, per)
    assert q.size == 0 and d.tolist() == list(range(client.size))
