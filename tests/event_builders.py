"""Synthetic event batches of any kind from row dicts, with schema defaults for the rest.

`make_batch("dns", [{"t": 0.5, "src": "10.0.0.1", "qname": "a.test"}])`: `t` is seconds
after BASE_T, `src`/`dst` are address text, MAC columns take "aa:bb:..." text or ints; every
other column defaults to 0 / "" / False / [] and the batch is validated.
"""

from __future__ import annotations

import numpy as np

from pipeline.schema import KINDS, EventBatch, validate_batch
from sensors.packets import IP_DTYPE, ip_to_bytes16

BASE_T = 1_699_999_200.0  # 2023-11-14T22:00:00Z, a whole hour


def _default(column: str, dtype: np.dtype):
    if dtype == IP_DTYPE:
        return np.frombuffer(ip_to_bytes16("0.0.0.0"), IP_DTYPE)[0]
    if dtype.kind == "O":
        return [] if column in ("answers", "client_alpn") else ""
    if dtype.kind == "b":
        return False
    return 0


def _mac(value) -> int:
    return int(value.replace(":", "").replace("-", ""), 16) if isinstance(value, str) else value


def make_batch(kind: str, rows: list[dict]) -> EventBatch:
    spec = KINDS[kind]
    n = len(rows)
    cols = {f.column: np.empty(n, f.dtype) for f in spec.fields}
    for i, r in enumerate(rows):
        for f in spec.fields:
            c = f.column
            if c == "timestamp":
                value = int(round((BASE_T + r.get("t", 0.0)) * 1e9))
            elif c == "end":
                value = int(round((BASE_T + r.get("t", 0.0) + r.get("dur", 0.0)) * 1e9))
            elif c == "src_ip" and "src" in r:
                value = np.frombuffer(ip_to_bytes16(r["src"]), IP_DTYPE)[0]
            elif c == "dst_ip" and "dst" in r:
                value = np.frombuffer(ip_to_bytes16(r["dst"]), IP_DTYPE)[0]
            elif c == "observer_name":
                value = r.get("observer", "sensor-1")
            elif c == "ingress_zone":
                value = r.get("zone", "dmz")
            elif c in r:
                value = _mac(r[c]) if c.endswith("mac") else r[c]
            else:
                value = _default(c, f.dtype)
            if f.dtype.kind == "O":
                cols[c][i] = value
            else:
                cols[c][i] = value
    batch = EventBatch(kind, cols)
    validate_batch(batch)
    return batch
