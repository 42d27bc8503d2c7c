"""Build PacketBatch objects from in-memory frames, for tests (no capture file needed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from sensors.packets import LINKTYPE_ETHERNET, PacketBatch


def batch_from_frames(
    frames: Sequence[bytes],
    ts_ns: Sequence[int] | None = None,
    linktype: int | Sequence[int] = LINKTYPE_ETHERNET,
) -> PacketBatch:
    """Concatenate `frames` into one uint8 buffer; one row per frame, caplen == wirelen.

    `linktype` is one value for all frames or one per frame (mixed-interface batches);
    with a list, `interface` is the index of each frame's link type among the distinct
    (sorted) link types, like one pcapng interface per link type.
    """
    frames = [bytes(frame) for frame in frames]
    n = len(frames)
    lengths = np.array([len(frame) for frame in frames], dtype=np.int64)
    offsets = np.zeros(n, dtype=np.int64)
    if n:
        offsets[1:] = np.cumsum(lengths)[:-1]
    data = np.frombuffer(b"".join(frames), dtype=np.uint8).copy()
    if ts_ns is None:
        ts = np.arange(n, dtype=np.int64) * 1_000_000
    else:
        ts = np.asarray(ts_ns, dtype=np.int64)
    if isinstance(linktype, int):
        linktypes = np.full(n, linktype, dtype=np.uint16)
        interface = np.zeros(n, dtype=np.uint16)
    else:
        linktypes = np.asarray(linktype, dtype=np.uint16)
        _, interface = np.unique(linktypes, return_inverse=True)
        interface = interface.astype(np.uint16)
    if ts.shape[0] != n or linktypes.shape[0] != n:
        raise ValueError("ts_ns and linktype lists must have one entry per frame")
    return PacketBatch(
        data=data,
        offset=offsets,
        caplen=lengths.astype(np.uint32),
        wirelen=lengths.astype(np.uint32),
        ts_ns=ts,
        linktype=linktypes,
        interface=interface,
    )


def batch_from_scapy(
    packets: Iterable, linktype: int | Sequence[int] = LINKTYPE_ETHERNET
) -> PacketBatch:
    """Batch of scapy packets: bytes(pkt) as the frame, pkt.time as the timestamp."""
    packets = list(packets)
    frames = [bytes(pkt) for pkt in packets]
    ts_ns = [int(round(pkt.time * 1_000_000_000)) for pkt in packets]
    return batch_from_frames(frames, ts_ns=ts_ns, linktype=linktype)
