"""Former kernels of StreamCollector._select, kept as the tests' reference for
_select_rows_kernel (tests/test_stream_select.py) and for _select's answers as np.isin gave
them (tests/test_tcp_stream_kernels.py). Production uses _select_rows_kernel only. Also the
former grouping kernels (_group_kernel, _counting_order): the reference numbering of
_flow_groups_kernel and the order _fast_groups_kernel's counting sort gives. And the former
reopening test on gathered flags and hashes (_reopened_kernel), _reopened_at_kernel's
reference."""

from __future__ import annotations

import numpy as np

from pipeline.jit import njit
from sensors.tcp_stream import ACK, SYN, _hash_table, _in_table, _slot_of


@njit
def _select_kernel(hashes, has_payload, opens, syn, ignored, held):
    """_select_core with a table built from the array of ignored hashes (tests, tools)."""
    it, iu, _ = _hash_table(ignored)
    return _select_core(hashes, has_payload, opens, syn, it, iu, ignored.shape[0] > 0, held)


@njit
def _select_core(hashes, has_payload, opens, syn, it, iu, any_ignored, held):
    """StreamCollector._select's flow tests in one pass over the candidate rows, with hash
    tables of the ignored (released/closed: `it`/`iu`, an open-addressing table; empty
    when not `any_ignored`) and held flow hashes:
    - may_open: the row's flow is opened by a payload row of the batch that may open one
      (`opens`) and is not ignored;
    - keep: the row's flow is held or in may_open;
    - handshake: a SYN without payload, on a port that may open, of a flow neither ignored
      nor kept (to remember for a later batch);
    - settled: the row's flow is held or ignored (not for the fast path);
    - fresh: the distinct hashes of the flows this batch may open that are not held, in
      first-seen order (their remembered handshakes are replayed)."""
    n = hashes.shape[0]
    im = it.shape[0] - 1
    ht, hu, hm = _hash_table(held)
    not_ignored = np.ones(n, dtype=np.bool_)
    if any_ignored:
        for i in range(n):
            not_ignored[i] = not _in_table(it, iu, im, hashes[i])
    count = 0
    for i in range(n):
        if opens[i] and has_payload[i] and not_ignored[i]:
            count += 1
    opening = np.empty(count, dtype=np.uint64)
    count = 0
    for i in range(n):
        if opens[i] and has_payload[i] and not_ignored[i]:
            opening[count] = hashes[i]
            count += 1
    ot, ou, om = _hash_table(opening)
    may_open = np.zeros(n, dtype=np.bool_)
    keep = np.zeros(n, dtype=np.bool_)
    handshake = np.zeros(n, dtype=np.bool_)
    settled = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        value = hashes[i]
        may_open[i] = count > 0 and _in_table(ot, ou, om, value)
        is_held = held.shape[0] > 0 and _in_table(ht, hu, hm, value)
        keep[i] = may_open[i] or is_held
        settled[i] = is_held or not not_ignored[i]
        handshake[i] = (syn[i] and not has_payload[i] and opens[i] and not_ignored[i]
                        and not keep[i])
    # the opening flows not held, each once, in first-seen order
    fresh = np.empty(count, dtype=np.uint64)
    seen_t = np.zeros(ot.shape[0], dtype=np.uint64)
    seen_u = np.zeros(ot.shape[0], dtype=np.bool_)
    n_fresh = 0
    for value in opening:
        if held.shape[0] > 0 and _in_table(ht, hu, hm, value):
            continue
        slot = np.int64(value & np.uint64(om))
        while seen_u[slot] and seen_t[slot] != value:
            slot = (slot + 1) & om
        if seen_u[slot]:
            continue
        seen_t[slot] = value
        seen_u[slot] = True
        fresh[n_fresh] = value
        n_fresh += 1
    return may_open, keep, handshake, settled, fresh[:n_fresh]


@njit
def _opening_kernel(plen, flags, sport, dport, head_matched, port_table, any_ports):
    """_select's former per-row flags of the candidate rows, one pass (now inside
    _select_rows_kernel; kept as its reference in tests/test_stream_select.py): has
    payload; matched (the client predicate's answer `head_matched`, given per row with
    payload, in order; all False when it is empty); opens (matched or on a selected port;
    every row when not `any_ports`); SYN; pure SYN (SYN without ACK); and whether any row
    is a pure SYN."""
    n = plen.shape[0]
    has = np.empty(n, dtype=np.bool_)
    matched = np.zeros(n, dtype=np.bool_)
    opens = np.empty(n, dtype=np.bool_)
    syn = np.empty(n, dtype=np.bool_)
    pure_syn = np.empty(n, dtype=np.bool_)
    any_pure_syn = False
    use_match = head_matched.shape[0] > 0
    at = 0
    for i in range(n):
        has[i] = plen[i] > 0
        if has[i] and use_match:
            matched[i] = head_matched[at]
            at += 1
        if any_ports:
            opens[i] = port_table[sport[i]] or port_table[dport[i]] or matched[i]
        else:
            opens[i] = True
        f = flags[i]
        syn[i] = (f & SYN) != 0
        pure_syn[i] = (f & (SYN | ACK)) == SYN
        any_pure_syn = any_pure_syn or pure_syn[i]
    return has, matched, opens, syn, pure_syn, any_pure_syn


@njit
def _group_kernel(hashes):
    """(group of each row, number of groups): rows of one hash share a group, groups are
    numbered in the order their first row appears."""
    n = hashes.shape[0]
    size = 16
    while size < 2 * n:
        size *= 2
    mask = size - 1
    table = np.zeros(size, dtype=np.uint64)
    used = np.zeros(size, dtype=np.bool_)
    ids = np.zeros(size, dtype=np.int64)
    group_of = np.empty(n, dtype=np.int64)
    groups = 0
    for i in range(n):
        value = hashes[i]
        slot = _slot_of(table, used, mask, value)
        if not used[slot]:
            used[slot] = True
            table[slot] = value
            ids[slot] = groups
            groups += 1
        group_of[i] = ids[slot]
    return group_of, groups


@njit
def _counting_order(keys, n_keys):
    """The stable permutation that sorts `keys` (ints in [0, n_keys)): a counting sort."""
    first = np.zeros(n_keys + 1, dtype=np.int64)
    for k in keys:
        first[k + 1] += 1
    for k in range(n_keys):
        first[k + 1] += first[k]
    order = np.empty(keys.shape[0], dtype=np.int64)
    for i in range(keys.shape[0]):
        k = keys[i]
        order[first[k]] = i
        first[k] += 1
    return order


@njit
def _reopened_kernel(flags, hashes, table, used):
    """The hashes (row order, repeats kept) of the pure-SYN rows (SYN without ACK) whose
    flow is in the open-addressing table of released/closed hashes (see _HashLru)."""
    mask = table.shape[0] - 1
    hits = 0
    out = np.empty(flags.shape[0], dtype=np.uint64)
    for i in range(flags.shape[0]):
        if (flags[i] & (SYN | ACK)) == SYN and _in_table(table, used, mask, hashes[i]):
            out[hits] = hashes[i]
            hits += 1
    return out[:hits]
