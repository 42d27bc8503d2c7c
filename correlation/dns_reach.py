"""dns_tunnel's per-close prefilter in one compiled pass: which rows can be part of a finding.

A close of dns_tunnel holds ~10^3-10^6 DNS rows and nearly none are part of a finding: a
(client, parent) key needs >= min_unique_names distinct names or an exfiltration-shaped
name over the whole range before its rows are worth replicating into windows, and a DGA
client needs >= dga_min_domains distinct random-looking parents answered NXDOMAIN. The
numpy version of that test factorized the names, the parents, the clients and the
(client, parent) pairs of every row and counted distinct pairs: five hash passes and their
temporaries per close. This kernel reads each row's name row (the detector's per-name
feature columns, looked up on arrival) and client code once, and counts distinct values in
small open-addressing tables (correlation/kernels.py's linear probing), so only the rows
that reach go on to the window assignment.
"""

from __future__ import annotations

import numpy as np

from correlation.kernels import _find_or_add, _rehash
from pipeline.jit import njit

_MAX_START_BITS = 16  # a table starts sized for the rows, up to 65,536 slots, then doubles


@njit
def _new_table(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.uint64]:
    """(slots, key_hi, key_lo, shift) of an empty table for at most n keys (ids 0..n-1):
    about 2n slots (at most 2**_MAX_START_BITS; _add doubles them as keys come)."""
    bits = 4
    while (1 << bits) < 2 * n and bits < _MAX_START_BITS:
        bits += 1
    return (np.full(1 << bits, -1, np.int64), np.empty(max(n, 1), np.uint64),
            np.empty(max(n, 1), np.uint64), np.uint64(64 - bits))


@njit
def _add(slots: np.ndarray, key_hi: np.ndarray, key_lo: np.ndarray, shift: np.uint64,
         a: np.uint64, b: np.uint64, m: int
         ) -> tuple[int, int, np.ndarray, np.uint64]:
    """(id of key (a, b), keys held after, slots, shift): _find_or_add, then a rehash into
    twice the slots when the table is half full (so a probe always ends)."""
    k, grown = _find_or_add(slots, key_hi, key_lo, a, b, shift, m)
    if 2 * grown >= slots.shape[0]:
        bits = 65 - np.int64(shift)
        slots = _rehash(key_hi, key_lo, grown, bits)
        shift = np.uint64(64 - bits)
    return k, grown, slots, shift


@njit
def tunnel_reach(name_row: np.ndarray, client_hi: np.ndarray, client_lo: np.ndarray,
                 is_response: np.ndarray,
                 nxdomain: np.ndarray, named: np.ndarray, parent_id: np.ndarray,
                 exfil_name: np.ndarray, dga_name: np.ndarray, min_unique: int,
                 dga_min: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows whose key can be a tunnel or exfil finding, their key ids, NXDOMAIN
    rows whose client can be a DGA finding), rows ascending.

    Per row i: name_row[i] indexes the per-name columns named, parent_id, exfil_name and
    dga_name (each of at least max(name_row) + 1 entries: the caller's contract, every
    index is a row the detector stored); (client_hi[i], client_lo[i]) are equal exactly
    when the clients are (the 16-byte address as two words). Keys are (client, parent_id)
    of the queries with a parent; a key reaches with >= min_unique distinct name rows or
    one exfil-shaped name. A DGA row is a response with nxdomain whose name has dga_name;
    its client reaches with >= dga_min distinct parent ids over those rows.

    Key ids follow first appearance among the rows of the clients counted in pass 2; all
    rows of a key are among them or none, so the reaching keys are numbered in the order
    of their first rows, as a factorize of any one-to-one key code over all queries with
    a parent would order them.
    """
    n = name_row.shape[0]
    # pass 1: per client, queries with a parent, whether one has an exfil name, DGA rows.
    # Only clients with enough of them can reach (a key's distinct names are its rows at
    # most), so the distinct counting below skips nearly every row.
    c_slots, c_hi, c_lo, c_shift = _new_table(n)
    n_clients = 0
    client_id = np.full(n, -1, np.int64)
    queries_of = np.zeros(max(n, 1), np.int64)
    exfil_of = np.zeros(max(n, 1), np.bool_)
    dga_rows_of = np.zeros(max(n, 1), np.int64)
    for i in range(n):
        r = name_row[i]
        if is_response[i]:
            if not (nxdomain[i] and dga_name[r]):
                continue
        elif not named[r]:
            continue
        c, n_clients, c_slots, c_shift = _add(c_slots, c_hi, c_lo, c_shift, client_hi[i],
                                              client_lo[i], n_clients)
        client_id[i] = c
        if is_response[i]:
            dga_rows_of[c] += 1
        else:
            queries_of[c] += 1
            exfil_of[c] |= exfil_name[r]
    # pass 2: (client, parent) keys and their distinct names; clients' distinct parents
    k_slots, k_hi, k_lo, k_shift = _new_table(16)
    p_slots, p_hi, p_lo, p_shift = _new_table(16)
    d_slots, d_hi, d_lo, d_shift = _new_table(16)
    n_keys, n_pairs, n_domains = 0, 0, 0
    key = np.full(n, -1, np.int64)
    names_of = np.zeros(max(n, 1), np.int64)
    key_exfil = np.zeros(max(n, 1), np.bool_)
    domains_of = np.zeros(max(n, 1), np.int64)
    for i in range(n):
        c = client_id[i]
        if c < 0:
            continue
        r = name_row[i]
        if is_response[i]:
            if dga_rows_of[c] < dga_min:
                continue
            if d_hi.shape[0] <= n_domains + 1:
                d_hi, d_lo = _grown(d_hi, n), _grown(d_lo, n)
            _, grown, d_slots, d_shift = _add(d_slots, d_hi, d_lo, d_shift, np.uint64(c),
                                              np.uint64(parent_id[r]), n_domains)
            if grown > n_domains:
                n_domains = grown
                domains_of[c] += 1
            continue
        if queries_of[c] < min_unique and not exfil_of[c]:
            continue
        if k_hi.shape[0] <= n_keys + 1:
            k_hi, k_lo = _grown(k_hi, n), _grown(k_lo, n)
        k, n_keys, k_slots, k_shift = _add(k_slots, k_hi, k_lo, k_shift, np.uint64(c),
                                           np.uint64(parent_id[r]), n_keys)
        key[i] = k
        if p_hi.shape[0] <= n_pairs + 1:
            p_hi, p_lo = _grown(p_hi, n), _grown(p_lo, n)
        _, grown, p_slots, p_shift = _add(p_slots, p_hi, p_lo, p_shift, np.uint64(k),
                                          np.uint64(r), n_pairs)
        if grown > n_pairs:
            n_pairs = grown
            names_of[k] += 1
        key_exfil[k] |= exfil_name[r]
    n_q, n_d = 0, 0
    for i in range(n):
        k = key[i]
        if k >= 0 and (names_of[k] >= min_unique or key_exfil[k]):
            n_q += 1
        elif k < 0 and client_id[i] >= 0 and is_response[i] \
                and domains_of[client_id[i]] >= dga_min:
            n_d += 1
    q = np.empty(n_q, np.int64)
    q_key = np.empty(n_q, np.int64)
    d = np.empty(n_d, np.int64)
    n_q, n_d = 0, 0
    for i in range(n):
        k = key[i]
        if k >= 0 and (names_of[k] >= min_unique or key_exfil[k]):
            q[n_q] = i
            q_key[n_q] = k
            n_q += 1
        elif k < 0 and client_id[i] >= 0 and is_response[i] \
                and domains_of[client_id[i]] >= dga_min:
            d[n_d] = i
            n_d += 1
    return q, q_key, d


@njit
def _grown(keys: np.ndarray, n: int) -> np.ndarray:
    """keys in an array of twice the size (at most n + 1 entries: ids stay below n)."""
    out = np.empty(min(max(2 * keys.shape[0], 16), n + 1), keys.dtype)
    out[: keys.shape[0]] = keys
    return out
