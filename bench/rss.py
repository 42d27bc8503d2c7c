"""Resident memory of this process, for the benchmarks (Linux /proc; ru_maxrss fallback).

Peak RSS is VmHWM, not ru_maxrss: a worker started by fork+exec inherits its parent's
ru_maxrss, so the parent's own size would leak into the worker's figure.
"""

from __future__ import annotations

import resource


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak RSS since start (or since the peak was reset through /proc/self/clear_refs)."""
    peak = _status_mb("VmHWM:")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    current = _status_mb("VmRSS:")
    return current if current is not None else float("nan")
