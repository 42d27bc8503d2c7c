"""The correlation engine: event-time hopping windows, watermark, vectorized detectors, alerts.

Time is event time only. The watermark is the largest event time pushed so far (any kind)
minus `allowed_lateness_s`; window [start, start + size) of a detector closes once the
watermark reaches its end, and the detector then sees every buffered row of it. Windows
close in ascending order, each exactly once, so results do not depend on how the input is
split into batches as long as no event arrives more than `allowed_lateness_s` behind the
newest event pushed before it. An event arriving for windows that already closed is
counted (`late_events`) and still counted in the windows of it that are open; when none
is open it is dropped and counted (`late_dropped`).

State is bounded: per detector and kind, the engine keeps only the columns the detector
asked for, of the rows its `select` kept, and drops rows once no open window needs them
(compacting when they are over a quarter of the buffer), plus a hard `max_buffered_rows`
cap, oldest rows dropped first and counted.

Repeats are suppressed, Zeek-notice style: once (rule, key) alerted for the window starting
at s, findings of the same (rule, key) in windows starting before s + max(window_s,
suppress_s) are dropped (and counted). Decisions are taken in window order, so they are
as deterministic and batch-split independent as the windows themselves.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from correlation.alerts import build_alert
from correlation.detector import NS_PER_S, Detector, Finding, WindowRange
from pipeline.config import deep_merge, load_class, load_config
from pipeline.schema import EventBatch, validate_batch


# Config section name under `correlation.detectors` -> "module:class". New detectors add a line.
def default_config() -> dict:
    """The `correlation` section of the embedded defaults (pipeline/config.py)."""
    return load_config()["correlation"]


def merge_config(base: Mapping, override: Mapping | None) -> dict:
    """Deep merge: mappings merge key by key, anything else in `override` replaces."""
    return deep_merge(dict(base), dict(override or {}))


def detector_class(name: str, section: Mapping) -> type[Detector]:
    """The class a detector section names in its `detector: module:Class` key."""
    return load_class(f"correlation.detectors.{name}.detector", section.get("detector"),
                      "correlation", Detector)


def build_detectors(config: Mapping) -> list[Detector]:
    """One detector per enabled section of `config["detectors"]`, in config order."""
    detectors: list[Detector] = []
    for name, section in (config.get("detectors") or {}).items():
        if not section.get("enabled", True):
            continue
        detectors.append(detector_class(name, section)(section))
    return detectors


class _Buffer:
    """Columns of one kind for one detector, in arrival order, in growable arrays.

    Appends copy into spare capacity (doubling), reads are views: no re-concatenation of
    the whole buffer on every window close.
    """

    def __init__(self, columns: tuple[str, ...]) -> None:
        self.names = columns
        self.arrays: dict[str, np.ndarray] = {}
        self.rows = 0

    def append(self, columns: Mapping[str, np.ndarray]) -> None:
        n = next(iter(columns.values())).shape[0]
        if n == 0:
            return
        need = self.rows + n
        if not self.arrays or need > self.capacity:
            size = max(need, 2 * self.capacity, 1024)
            grown = {c: np.empty(size, columns[c].dtype) for c in self.names}
            for c, old in self.arrays.items():
                grown[c][: self.rows] = old[: self.rows]
            self.arrays = grown
        for c in self.names:
            self.arrays[c][self.rows:need] = columns[c]
        self.rows = need

    @property
    def capacity(self) -> int:
        return next(iter(self.arrays.values())).shape[0] if self.arrays else 0

    def columns(self) -> dict[str, np.ndarray]:
        return {c: a[: self.rows] for c, a in self.arrays.items()}

    def keep(self, index: np.ndarray) -> None:
        """Keep only the rows selected by a boolean mask or an integer index, in order."""
        kept = {c: a[: self.rows][index] for c, a in self.arrays.items()}
        self.rows = int(kept[self.names[0]].shape[0])
        for c, values in kept.items():
            self.arrays[c][: self.rows] = values
            if values.dtype == object:
                self.arrays[c][self.rows:] = None  # release references of dropped rows

    def min_time(self) -> int | None:
        return int(self.arrays["timestamp"][: self.rows].min()) if self.rows else None

    def max_time(self) -> int | None:
        return int(self.arrays["timestamp"][: self.rows].max()) if self.rows else None


class _DetectorState:
    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.buffers = {s.kind: _Buffer(s.columns) for s in detector.inputs}
        self.next_k: int | None = None  # first window index not closed yet
        self.last_alert: dict[tuple[str, str], int] = {}  # (rule, key) -> window start


class CorrelationEngine:
    """Pushes event batches through the enabled detectors; returns ECS alerts.

    `config` is the `correlation` section of the pipeline config; it is merged over the
    packaged defaults, so a partial dict works. `detectors` overrides the detectors the
    config enables.
    """

    def __init__(self, config: Mapping | None = None,
                 detectors: list[Detector] | None = None) -> None:
        self.config = merge_config(default_config(), config)
        self.lateness_ns = int(round(float(self.config["allowed_lateness_s"]) * NS_PER_S))
        self.detectors = build_detectors(self.config) if detectors is None else list(detectors)
        self._states = [_DetectorState(d) for d in self.detectors]
        self._max_time: int | None = None
        self.stats: dict[str, int] = {
            "events_in": 0,  # rows pushed, all kinds
            "late_events": 0,  # rows that arrived after some window of theirs had closed
            "late_dropped": 0,  # late rows no open window of some detector could take
            "windows_closed": 0,  # detector windows closed (empty ones included)
            "findings": 0,  # (rule, key, window) hits before suppression
            "alerts_suppressed": 0,  # findings dropped as repeats
            "alerts_out": 0,
            "rows_buffered": 0,  # rows held now, all detectors
            "rows_dropped_overflow": 0,  # rows dropped by the max_buffered_rows cap
        }

    @property
    def watermark(self) -> int | None:
        """Event time (ns) up to which input is taken as complete; None before any event."""
        return None if self._max_time is None else self._max_time - self.lateness_ns

    def push(self, batch: EventBatch) -> list[dict]:
        """Add events; return the alerts of the windows the new watermark closed."""
        validate_batch(batch)
        n = len(batch)
        if n == 0:
            return []
        self.stats["events_in"] += n
        late = np.zeros(n, bool)
        dropped = np.zeros(n, bool)
        for state in self._states:
            if batch.kind in state.buffers:
                self._buffer(state, batch, late, dropped)
        self.stats["late_events"] += int(late.sum())
        self.stats["late_dropped"] += int(dropped.sum())
        batch_max = int(batch.columns["timestamp"].max())
        self._max_time = batch_max if self._max_time is None else max(self._max_time, batch_max)
        watermark = self._max_time - self.lateness_ns
        alerts = []
        for state in self._states:
            # window k is closed once k * hop + size <= watermark
            spec = state.detector.window
            alerts += self._close(state, (watermark - spec.size_ns) // spec.hop_ns)
        return self._emit(alerts)

    def flush(self) -> list[dict]:
        """End of input: close every window that holds a buffered row; return its alerts."""
        alerts = []
        for state in self._states:
            ends = [b.max_time() for b in state.buffers.values() if b.rows]
            if ends:
                alerts += self._close(state, int(state.detector.window.last_index(max(ends))))
        return self._emit(alerts)

    # --- internals ---------------------------------------------------------------------------

    def _buffer(self, state: _DetectorState, batch: EventBatch, late: np.ndarray,
                dropped: np.ndarray) -> None:
        detector = state.detector
        idx = np.flatnonzero(detector.select(batch))
        if idx.size and state.next_k is not None:
            t = batch.columns["timestamp"][idx]
            is_late = detector.window.first_index(t) < state.next_k
            all_closed = detector.window.last_index(t) < state.next_k
            late[idx[is_late]] = True
            dropped[idx[all_closed]] = True
            idx = idx[~all_closed]
        buf = state.buffers[batch.kind]
        buf.append({c: batch.columns[c][idx] for c in buf.names})
        excess = buf.rows - detector.max_buffered_rows
        if excess > 0:  # hard cap: oldest arrivals go first
            self.stats["rows_dropped_overflow"] += excess
            buf.keep(np.arange(excess, buf.rows))

    def _close(self, state: _DetectorState, last_k: int) -> list[tuple[tuple, dict]]:
        """Close windows state.next_k..last_k; return (order, alert) of the unsuppressed."""
        spec = state.detector.window
        if state.next_k is None:
            starts = [b.min_time() for b in state.buffers.values() if b.rows]
            if not starts:  # nothing buffered: those windows close empty
                state.next_k = last_k + 1
                return []
            first = int(spec.first_index(min(starts)))
            if last_k < first:  # the watermark has not passed any window holding a row
                return []
            state.next_k = first
        if last_k < state.next_k:
            return []
        windows = WindowRange(spec, state.next_k, last_k)
        rows = {kind: buf.columns() for kind, buf in state.buffers.items() if buf.rows}
        findings = state.detector.detect(rows, windows) if rows else []
        self.stats["windows_closed"] += last_k - state.next_k + 1
        state.next_k = last_k + 1
        horizon = int(spec.start(state.next_k))  # rows before it belong to closed windows only
        # Build the alerts now: findings describe themselves from views of the buffers.
        alerts = [(_finding_order(f), build_alert(f))
                  for f in self._suppress(state, findings, horizon)]
        for buf in state.buffers.values():
            if buf.rows:
                needed = buf.columns()["timestamp"] >= horizon
                # Compact only when it frees a good share: detectors skip stale rows anyway
                # (WindowRange.row_mask), so pruning every close would just copy.
                if needed.size - np.count_nonzero(needed) > needed.size // 4:
                    buf.keep(needed)
        return alerts

    def _suppress(self, state: _DetectorState, findings: list[Finding],
                  horizon: int) -> list[Finding]:
        span = max(state.detector.suppress_ns, state.detector.window.size_ns)
        self.stats["findings"] += len(findings)
        kept = []
        for f in sorted(findings, key=_finding_order):  # window order: deterministic
            key = (f.rule.id, f.key)
            last = state.last_alert.get(key)
            if last is not None and f.window_start < last + span:
                self.stats["alerts_suppressed"] += 1
                continue
            state.last_alert[key] = f.window_start
            kept.append(f)
        # Forget keys no future window (start >= horizon) can be suppressed by.
        state.last_alert = {k: s for k, s in state.last_alert.items() if s + span > horizon}
        return kept

    def _emit(self, alerts: list[tuple[tuple, dict]]) -> list[dict]:
        self.stats["rows_buffered"] = sum(b.rows for s in self._states for b in s.buffers.values())
        self.stats["alerts_out"] += len(alerts)
        return [alert for _, alert in sorted(alerts, key=lambda pair: pair[0])]


def _finding_order(f: Finding) -> tuple:
    return (f.window_start, f.rule.id, f.key)
