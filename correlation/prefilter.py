"""Cheap necessary-condition filters that detectors run before grouping in order.

Most detectors group the rows of the closing range by a key (a source/destination pair, a
source and a name) in an order-preserving way (ranks: np.unique's order), and then keep only
the keys that reach a count or byte threshold over the whole range. On real traffic nearly
every key is a one-off: beaconing's (source, DNS name) keys are ~99% distinct, and only a few
hundred of ~50,000 flow rows belong to a pair with enough contacts. Ranking every row just to
drop it is most of such a detector's time.

Here the keys are first given *unordered* ids by one compiled hash pass
(correlation/kernels.py factorize_u64: no sort), the threshold is applied on those, and the
caller ranks only the surviving rows. The surviving rows are exactly those the ranked path
keeps, and ranks of a subset keep their order, so group numbering, findings and evidence are
unchanged.
"""

from __future__ import annotations

import numpy as np

from correlation.detector import Columns
from correlation.kernels import factorize_u64


def raw_address_codes(cols: Columns, names: tuple[str, ...], idx: np.ndarray
                      ) -> np.ndarray | None:
    """Equality codes (int64, non-negative, not dense, in no particular order) of the
    address tuple `names` at rows idx, from the engine's interned address ids (its
    address_ids: no ranks needed; else its order-preserving address_codes); None when the
    columns do not carry them (a plain dict of columns, as tests may pass)."""
    shared = getattr(cols, "address_ids", None) or getattr(cols, "address_codes", None)
    return shared(names, idx) if shared is not None else None


def pack_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """One equality code per row for the pair (a, b) of non-negative int codes; None when
    the packed value could overflow int64."""
    if a.size == 0:
        return np.zeros(0, np.int64)
    radix = int(b.max()) + 1
    if (int(a.max()) + 1) * radix >= 2**63:
        return None
    return a.astype(np.int64) * radix + b.astype(np.int64)


def reaching(codes: np.ndarray, threshold: float, weights: np.ndarray | None = None
             ) -> np.ndarray:
    """Boolean per row: the row's code has >= threshold rows (or sum of `weights`) in all.

    A hash pass gives unordered ids (first appearance), so no row is sorted."""
    if codes.size == 0:
        return np.zeros(0, bool)
    ids, first = factorize_u64(codes.view(np.uint64) if codes.dtype == np.int64
                               else codes.astype(np.uint64))
    totals = np.bincount(ids, weights=weights, minlength=first.shape[0])
    return totals[ids] >= threshold


def pair_candidates(cols: Columns, idx: np.ndarray, threshold: float,
                    weights: np.ndarray | None = None, first: str = "src_ip",
                    second: str | None = "dst_ip") -> np.ndarray:
    """The rows of idx whose `first` address and whose `second` address each reach
    `threshold` rows (or sum of `weights`, aligned with idx) in all: a superset of the rows
    whose (first, second) pair does, from two bincounts over the engine's address codes (no
    sort, no hash). Worth it when the threshold is high (strobes: thousands of
    connections; uploads: megabytes), so that few addresses pass. idx unchanged when the
    columns carry no address codes. second=None: the first address alone."""
    for name in (first, second) if second is not None else (first,):
        if idx.size == 0:
            break
        raw = raw_address_codes(cols, (name,), idx)
        if raw is None:
            return idx
        ok = np.bincount(raw, weights=weights)[raw] >= threshold
        idx = idx[ok]
        weights = None if weights is None else weights[ok]
    return idx
