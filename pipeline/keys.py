"""Partitioning keys for the Kafka topics: which events travel together so that one
correlation worker owns *complete* state for the keys of its partitions.

Two keyings (docs/kafka.md explains why):
- `source`: scans and brute force count what one attacker (source.ip) does. `sa.events` is
  split by a hash of source.ip.
- `destination`: DoS / SYN-flood detectors count what one victim (destination.ip) receives,
  from many (possibly spoofed) sources; split by source.ip they would see a slice of the
  victim's traffic in every worker and miss the flood. `sa.events.by_dst` carries the same
  events split by a hash of destination.ip.

A detector declares the key it needs with a class attribute `partition_key = "source"` or
`"destination"`; detectors that say nothing are source-keyed (`partition_key_of`).

Bucketing is part of the wire contract (a third-party producer must split the same way):
bucket = fmix64(lo * 0x9E3779B97F4A7C15 + hi) mod buckets, where lo/hi are the address
column's 16 bytes (IPv4 as IPv4-mapped IPv6) read as two little-endian uint64 and fmix64 is
MurmurHash3's 64-bit finalizer, all arithmetic mod 2**64. The Kafka message key of a
bucket's sub-batch is `aligned_keys(buckets)[bucket]`: a short key that Kafka's default
partitioner (murmur2, Java client and kafka-python) maps to partition == bucket, so with
buckets == partitions every message lands on "its" partition. With another partitioner or
partition count the keying stays correct (same address -> same key -> same partition); only
the alignment (one sub-batch per partition) is lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import numpy as np

from pipeline.schema import EventBatch

SOURCE = "source"
DESTINATION = "destination"
PARTITION_KEYS = (SOURCE, DESTINATION)
# The address column each keying hashes (every event kind carries both, pipeline/schema.py).
KEY_COLUMNS = {SOURCE: "src_ip", DESTINATION: "dst_ip"}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FMIX1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT = np.uint64(33)
_FEW_BUCKETS = 16  # up to this many buckets, rows are grouped by compare, not by sorting


def partition_key_of(detector: object) -> str:
    """The keying a detector needs: its `partition_key` attribute, "source" by default."""
    key = getattr(detector, "partition_key", SOURCE)
    if key not in PARTITION_KEYS:
        name = type(detector).__name__
        raise ValueError(f"{name}.partition_key must be one of {PARTITION_KEYS}, not {key!r}")
    return key


def split_detectors(detectors: Iterable[object]) -> dict[str, list]:
    """{"source": [...], "destination": [...]}, config order kept within each."""
    split: dict[str, list] = {k: [] for k in PARTITION_KEYS}
    for detector in detectors:
        split[partition_key_of(detector)].append(detector)
    return split


def ip_buckets(addresses: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket (0..buckets-1, int64) of every 16-byte address; stable across processes,
    hosts and versions (see the module docstring for the exact function)."""
    if buckets < 1:
        raise ValueError("buckets must be >= 1")
    raw = np.ascontiguousarray(addresses).view("<u8").reshape(-1, 2).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = raw[:, 0] * _GOLDEN + raw[:, 1]
        x ^= x >> _SHIFT
        x *= _FMIX1
        x ^= x >> _SHIFT
        x *= _FMIX2
        x ^= x >> _SHIFT
    return (x % np.uint64(buckets)).astype(np.int64)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's `Utils.murmur2`, also kafka-python's), as an
    unsigned 32-bit int (Java's is the same bits, signed; partitioning masks the sign)."""
    length = len(data)
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length % 4
    if tail:
        rest = data[length - tail:]
        if tail >= 3:
            h ^= rest[2] << 16
        if tail >= 2:
            h ^= rest[1] << 8
        h ^= rest[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def default_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed message."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@lru_cache(maxsize=64)
def aligned_keys(buckets: int) -> tuple[bytes, ...]:
    """One message key per bucket such that the default partitioner puts bucket b on
    partition b of a topic with `buckets` partitions: the first `b<b>-<n>` (n = 0, 1, ...)
    that lands there. Deterministic, so every producer computes the same keys."""
    keys = []
    for bucket in range(buckets):
        n = 0
        while default_partition(f"b{bucket}-{n}".encode(), buckets) != bucket:
            n += 1
        keys.append(f"b{bucket}-{n}".encode())
    return tuple(keys)


def bucket_rows(batch: EventBatch, keying: str,
                buckets: int) -> list[tuple[int, np.ndarray | None]]:
    """The row indices of every non-empty bucket of the batch's `keying` address, rows in
    their original order within each: [(bucket, rows), ...] by bucket; rows None means
    "the whole batch" (one bucket, or a kind without that address column). Indices only:
    the caller encodes each bucket's rows without copying sub-batches first."""
    column = batch.columns.get(KEY_COLUMNS[keying])
    if len(batch) == 0:
        return []
    if column is None or buckets == 1:  # a kind without addresses: one bucket, still ordered
        return [(0, None)]
    bucket = ip_buckets(column, buckets)
    if buckets <= _FEW_BUCKETS:  # one vectorized compare per bucket beats any sort
        groups = ((b, np.flatnonzero(bucket == b)) for b in range(buckets))
        return [(b, rows) for b, rows in groups if len(rows)]
    # Stable radix sort on the narrowest integer type (a 64-bit key would mean a merge sort).
    order = np.argsort(bucket.astype(np.uint16 if buckets <= 1 << 16 else np.int64),
                       kind="stable")
    counts = np.bincount(bucket, minlength=buckets)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    return [(b, order[bounds[b]:bounds[b + 1]]) for b in np.flatnonzero(counts).tolist()]


def split_by_key(batch: EventBatch, keying: str, buckets: int) -> list[tuple[int, EventBatch]]:
    """The batch cut into one sub-batch per non-empty bucket of its `keying` address,
    rows in their original order within each: [(bucket, sub-batch), ...] by bucket."""
    return [(b, batch if rows is None else batch.take(rows))
            for b, rows in bucket_rows(batch, keying, buckets)]
