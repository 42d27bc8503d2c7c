"""Per-slice byte sums kept on arrival, so that a window close can rule out a threshold
without reading the buffered rows.

exfil_upload's hour-long windows hop every 10 minutes: every buffered outbound flow is in
six closes, and each close used to read the whole hour's rows (two column gathers, a sum,
and on most dense closes a per-source bincount over the engine's address ranks) to find
that no source sent `min_upload_bytes`. Here select adds each kept row's bytes, once, to
a bucket of a fixed-size table per hop slice (bucket = hash of the source address); a
close sums the slices of each of its windows. A bucket's sum is at least the sum of every
source hashed into it, so a close where no bucket of any window reaches the threshold has
no source (hence no pair) that does: it ends there. Otherwise only the rows of sources in
a hot bucket go on to the exact grouping, and those are all the rows of every source that
can reach the threshold, so the findings are the same.

Soundness needs every buffered row to have been added (rows added but not buffered, late
or dropped by the row cap, only make sums larger). The engine buffers a subset of the
rows select kept; `SliceSums.covers` also checks that the rows held in the range are no
more than the rows added for its slices, so a detect fed rows that never went through
select (tests calling detect directly) takes the exact path.
"""

from __future__ import annotations

import copy

import numpy as np

from correlation.detector import WindowRange
from pipeline.jit import njit

BUCKET_BITS = 10  # 1,024 buckets: ~10 sources each at 10k sources, 8 KB per slice
# a batch or a closing range spanning more slices takes the exact path (a range that long:
# the watermark jumped over a gap; its per-slice tables would cost more than the rows)
MAX_SLICES_PER_BATCH = 4096


@njit
def _bucket(hi: np.uint64, lo: np.uint64, bits: int) -> int:
    mixed = ((hi * np.uint64(0x9E3779B97F4A7C15)) ^ lo) * np.uint64(0xC2B2AE3D27D4EB4F)
    return np.int64(mixed >> np.uint64(64 - bits))


@njit
def _add_kept(keep: np.ndarray, times: np.ndarray, words: np.ndarray, values: np.ndarray,
              hop: int, j0: int, bits: int, table: np.ndarray, rows: np.ndarray) -> None:
    """table[slice - j0, bucket] += value and rows[slice - j0] += 1 per kept row."""
    s, lo, hi = 0, 1, 0  # slice of the previous row and its bounds (empty at first)
    for i in range(times.shape[0]):
        if keep[i]:
            t = times[i]
            if not lo <= t < hi:  # rows arrive nearly in time order: a division per slice
                s = t // hop - j0
                lo, hi = (s + j0) * hop, (s + j0 + 1) * hop
            table[s, _bucket(words[i, 0], words[i, 1], bits)] += float(values[i])
            rows[s] += 1


def source_buckets(words: np.ndarray, bits: int = BUCKET_BITS) -> np.ndarray:
    """Bucket (int64 in [0, 2**bits)) of each (rows, 2) native uint64 address; the top bits
    of a multiplicative mix of both words (every address bit moves them)."""
    mixed = ((words[:, 0] * np.uint64(0x9E3779B97F4A7C15)) ^ words[:, 1]) \
        * np.uint64(0xC2B2AE3D27D4EB4F)
    return (mixed >> np.uint64(64 - bits)).astype(np.int64)


@njit
def hot_rows(words: np.ndarray, bits: int, hot: np.ndarray) -> np.ndarray:
    """hot[source_buckets(words, bits)] in one compiled pass (no uint64 temporaries)."""
    out = np.empty(words.shape[0], np.bool_)
    for i in range(words.shape[0]):
        out[i] = hot[_bucket(words[i, 0], words[i, 1], bits)]
    return out


class SliceSums:
    """Per hop slice (slice j = [j * hop, (j + 1) * hop)): a sum per source bucket and
    the number of rows added."""

    def __init__(self, hop_ns: int, bits: int = BUCKET_BITS) -> None:
        self.hop = int(hop_ns)
        self.bits = int(bits)
        self.sums: dict[int, np.ndarray] = {}
        self.counts: dict[int, int] = {}
        self.released_before: int | None = None  # slices before it are gone
        self.poisoned_until: int | None = None  # ranges starting at or before: no answer

    def add(self, times: np.ndarray, words: np.ndarray, values: np.ndarray) -> None:
        """Add rows (timestamps ns, (rows, 2) address words, byte values)."""
        self.add_rows(np.ones(times.shape[0], bool), times, words, values)

    def add_rows(self, keep: np.ndarray, times: np.ndarray, words: np.ndarray,
                 values: np.ndarray) -> None:
        """add() of the rows where `keep` is true, in compiled passes over the whole
        columns (no gathered copies of the kept rows)."""
        times = np.ascontiguousarray(times, np.int64)
        if times.shape[0] == 0:
            return
        # slices of the whole batch (vectorized min/max; slices without kept rows are
        # skipped below)
        lo, hi = int(times.min()), int(times.max())
        j0, j1 = lo // self.hop, hi // self.hop
        if j1 - j0 >= MAX_SLICES_PER_BATCH:  # a replayed day in one batch: not summed
            self.poisoned_until = hi if self.poisoned_until is None else max(
                self.poisoned_until, hi)
            return
        table = np.zeros((j1 - j0 + 1, 1 << self.bits))
        rows = np.zeros(j1 - j0 + 1, np.int64)
        _add_kept(keep, times, words, values, self.hop, j0, self.bits, table, rows)
        for offset in np.flatnonzero(rows).tolist():
            s = j0 + offset
            if self.released_before is not None and s < self.released_before:
                continue  # late rows of a closed range: dropped by the engine too
            have = self.sums.get(s)
            if have is None:
                self.sums[s] = table[offset].copy()
                self.counts[s] = int(rows[offset])
            else:
                have += table[offset]
                self.counts[s] += int(rows[offset])

    def covers(self, windows: WindowRange, held_in_range: int | None) -> bool:
        """Whether the sums can vouch for the `held_in_range` rows of the closing range."""
        if held_in_range is None:
            return False
        start = int(windows.spec.start(windows.first))
        if self.poisoned_until is not None and start <= self.poisoned_until:
            return False
        j0, j1 = self._slices(windows)
        if j1 - j0 >= MAX_SLICES_PER_BATCH:
            return False
        added = sum(c for s, c in self.counts.items() if j0 <= s <= j1)
        return held_in_range <= added

    def hot_buckets(self, windows: WindowRange, threshold: float) -> np.ndarray:
        """Buckets whose sum over the slices of some closing window is >= threshold."""
        spec = windows.spec
        j0, j1 = self._slices(windows)
        size = 1 << self.bits
        # row s + 1 - j0: sums of slices j0..s (row 0: none)
        cumulative = np.zeros((j1 - j0 + 2, size))
        for s in range(j0, j1 + 1):
            have = self.sums.get(s)
            if have is not None:
                cumulative[s - j0 + 1] = have
        for row in range(1, cumulative.shape[0]):  # (np.cumsum along axis 0 is slow)
            cumulative[row] += cumulative[row - 1]
        if windows.first == windows.last:  # one window: its slices are the range's
            best = cumulative[-1]
        else:
            ks = np.arange(int(windows.first), int(windows.last) + 1, dtype=np.int64)
            a = spec.start(ks) // self.hop - j0
            b = (spec.end(ks) - 1) // self.hop - j0
            best = (cumulative[b + 1] - cumulative[a]).max(axis=0)
        # (integer byte counts summed in float64 are exact below 2**53; the margin keeps
        # the test one-sided beyond that)
        return np.flatnonzero(best >= threshold * (1 - 1e-9))

    def probe(self) -> SliceSums:
        """Sums for a detect on windows that stay open: its release forgets slices of its
        own (the dicts are copied: a few entries, one per hop slice held), the per-slice
        arrays are shared (a detect only reads them)."""
        other = copy.copy(self)
        other.sums, other.counts = dict(self.sums), dict(self.counts)
        return other

    def release(self, windows: WindowRange) -> None:
        """Forget the slices no later close reads (entirely before the next range)."""
        horizon = int(windows.spec.start(windows.last + 1)) // self.hop
        self.released_before = horizon if self.released_before is None else max(
            self.released_before, horizon)
        for s in [s for s in self.sums if s < self.released_before]:
            del self.sums[s]
            del self.counts[s]

    def _slices(self, windows: WindowRange) -> tuple[int, int]:
        """First and last slice overlapping the closing range."""
        return (int(windows.spec.start(windows.first)) // self.hop,
                (int(windows.spec.end(windows.last)) - 1) // self.hop)

