"""Wire-format benchmark: encode + decode of one 50k-row flow batch and one 50k-row DNS batch.

Candidates, measured in the same run (median of 5):
- cirtsa-wire: pipeline.wire format 2 (raw little-endian column buffers; text columns as a
  dictionary or NUL-joined UTF-8; nested columns as JSON), the format of Kafka messages;
- cirtsa-wire-v1: the same writer in format 1 (every object column one JSON array), the
  previous format, still read;
- pickle:      pickle protocol 5 of the EventBatch (Python-only, unsafe on untrusted input:
               an anchor, not a candidate for the wire);
- json-events: one ECS JSON document per event (pipeline.schema.batch_to_ecs + orjson), what
               a naive "one Kafka message per event" design sends; decode = orjson.loads
               per document (to dicts, not back to columns: a generous baseline).
- msgpack-cols (only when msgpack is installed): the same columnar design in msgpack (raw
               buffers as bin, object columns as arrays): JSON vs msgpack for object columns.

Batches are synthetic but shaped like sensor output: a few sensors/zones, IPv4-mapped and
IPv6 addresses, Community IDs, Zeek connection states; DNS queries and answers with 0-3
records. Run: python bench/wire_format.py [--rows N] [--runs N]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import wire  # noqa: E402
from pipeline.schema import DNS, FLOW, EventBatch, batch_to_ecs, validate_batch  # noqa: E402
from sensors.packets import IP_DTYPE  # noqa: E402

T0 = 1_700_000_000_000_000_000


def _obj(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _addresses(rng: np.random.Generator, n: int, v6_share: float = 0.1) -> np.ndarray:
    raw = np.zeros((n, 16), dtype=np.uint8)
    raw[:, 10:12] = 0xFF  # IPv4-mapped
    raw[:, 12] = 10
    raw[:, 13:16] = rng.integers(0, 256, size=(n, 3))
    v6 = rng.random(n) < v6_share
    raw[v6] = rng.integers(0, 256, size=(int(v6.sum()), 16))
    raw[v6, 0:2] = (0x20, 0x01)
    return raw.view(IP_DTYPE).reshape(n)


def _common(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    src, dst = _addresses(rng, n), _addresses(rng, n)
    cids = [
        "1:" + base64.b64encode(hashlib.sha1(i.to_bytes(4, "little")).digest()).decode()
        for i in range(n)
    ]
    return {
        "timestamp": T0 + np.sort(rng.integers(0, 60_000_000_000, n)).astype(np.int64),
        "observer_name": _obj(rng.choice(["sensor-ams-1", "sensor-ams-2", "sensor-rtm-1"],
                                         n).tolist()),
        "ingress_zone": _obj(rng.choice(["dmz", "core", "gov-edge"], n).tolist()),
        "src_ip": src,
        "dst_ip": dst,
        "src_port": rng.integers(1024, 65536, n).astype(np.uint16),
        "dst_port": rng.choice([22, 53, 80, 443, 445, 3389], n).astype(np.uint16),
        "transport": rng.choice([6, 17, 1], n, p=[0.7, 0.25, 0.05]).astype(np.uint8),
        "vlan": rng.choice([0, 0, 0, 10, 20], n).astype(np.uint16),
        "community_id": _obj(cids),
    }


def flow_batch(n: int, seed: int = 1) -> EventBatch:
    rng = np.random.default_rng(seed)
    cols = _common(rng, n)
    cols["end"] = cols["timestamp"] + rng.integers(0, 5_000_000_000, n)
    for side in ("src", "dst"):
        packets = rng.integers(1, 1000, n).astype(np.uint64)
        cols[f"{side}_packets"] = packets
        cols[f"{side}_bytes"] = packets * rng.integers(60, 1500, n).astype(np.uint64)
        cols[f"{side}_payload_bytes"] = cols[f"{side}_bytes"] // np.uint64(2)
        cols[f"{side}_tcp_flags"] = rng.integers(0, 64, n).astype(np.uint8)
    cols["conn_state"] = _obj(rng.choice(["S0", "SF", "REJ", "RSTO", "OTH", "SH"], n).tolist())
    cols["end_reason"] = _obj(rng.choice(["fin", "rst", "idle", "eof"], n).tolist())
    # optional columns the bench does not build are filled by EventBatch
    batch = EventBatch(FLOW.name, {f.column: cols[f.column] for f in FLOW.fields
                                   if f.column in cols})
    validate_batch(batch)
    return batch


def dns_batch(n: int, seed: int = 2) -> EventBatch:
    rng = np.random.default_rng(seed)
    cols = _common(rng, n)
    is_response = rng.random(n) < 0.5
    labels = rng.integers(0, 36**6, n)
    qnames = [f"{np.base_repr(int(v), 36).lower()}.cdn{int(v) % 50}.example.com"
              for v in labels]
    answers = []
    for i, resp in enumerate(is_response.tolist()):
        count = int(rng.integers(1, 4)) if resp else 0
        answers.append([{"name": qnames[i], "type": "A", "class": "IN", "ttl": 300,
                         "data": f"192.0.2.{(i + k) % 250}"} for k in range(count)])
    cols.update({
        "dns_id": rng.integers(0, 65536, n).astype(np.uint16),
        "is_response": is_response,
        "qname": _obj(qnames),
        "qtype": rng.choice([1, 28, 16, 15], n).astype(np.uint16),
        "qclass": np.ones(n, dtype=np.uint16),
        "rcode": np.where(is_response, rng.choice([0, 0, 0, 3], n), 0).astype(np.uint8),
        "flags": np.where(is_response, 0x8180, 0x0100).astype(np.uint16),
        "answers": _obj(answers),
    })
    batch = EventBatch(DNS.name, {f.column: cols[f.column] for f in DNS.fields if f.column in cols})
    validate_batch(batch)
    return batch


# --- candidates -----------------------------------------------------------------------------

def _json_events_encode(batch: EventBatch) -> list[bytes]:
    return [orjson.dumps(doc) for doc in batch_to_ecs(batch)]


def _json_events_decode(messages: list[bytes]) -> list[dict]:
    return [orjson.loads(m) for m in messages]


CANDIDATES: dict[str, tuple[Callable, Callable]] = {
    "cirtsa-wire": (wire.encode, wire.decode),
    "cirtsa-wire-v1": (lambda b: wire.encode(b, format_version=1), wire.decode),
    "pickle": (lambda b: pickle.dumps(b, protocol=5), pickle.loads),
    "json-events": (_json_events_encode, _json_events_decode),
}

try:  # optional: only measured when installed (it is not a dependency)
    import msgpack

    def _msgpack_encode(batch: EventBatch) -> bytes:
        # The same design with msgpack: raw buffers as bin, object columns as arrays.
        cols = {k: (v.tolist() if v.dtype.kind == "O" else v.tobytes())
                for k, v in batch.columns.items()}
        return msgpack.packb({"kind": batch.kind, "columns": cols})

    def _msgpack_decode(data: bytes) -> EventBatch:
        doc = msgpack.unpackb(data)
        spec = {f.column: f.dtype for f in (FLOW if doc["kind"] == "flow" else DNS).fields}
        cols = {k: (np.fromiter(v, dtype=object, count=len(v)) if spec[k].kind == "O"
                    else np.frombuffer(v, dtype=spec[k])) for k, v in doc["columns"].items()}
        return EventBatch(doc["kind"], cols)

    CANDIDATES["msgpack-cols"] = (_msgpack_encode, _msgpack_decode)
except ImportError:
    pass


def _size(encoded: bytes | list[bytes]) -> int:
    return sum(map(len, encoded)) if isinstance(encoded, list) else len(encoded)


def measure(batch: EventBatch, encode: Callable, decode: Callable, runs: int) -> dict:
    enc_times, dec_times = [], []
    encoded = None
    for _ in range(runs):
        t0 = time.process_time()
        encoded = encode(batch)
        t1 = time.process_time()
        decode(encoded)
        t2 = time.process_time()
        enc_times.append(t1 - t0)
        dec_times.append(t2 - t1)
    enc, dec = statistics.median(enc_times), statistics.median(dec_times)
    size = _size(encoded)
    total = enc + dec
    return {"bytes": size, "enc_ms": enc * 1e3, "dec_ms": dec * 1e3,
            "mb_s": size / total / 1e6, "events_s": len(batch) / total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    batches = {"flow": flow_batch(args.rows), "dns": dns_batch(args.rows)}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.rows} rows per batch, median of {args.runs} runs, CPU time of this process "
          f"(single-threaded work; wall time would include other jobs), load average {load}; "
          f"events/s and MB/s are for encode+decode together (MB = encoded bytes); "
          f"ratio = cirtsa-wire events/s / candidate events/s")
    header = (f"{'batch':5} {'format':14} {'bytes/event':>11} {'encode ms':>10} "
              f"{'decode ms':>10} {'MB/s':>8} {'events/s':>11} {'ratio':>7}")
    print(header)
    print("-" * len(header))
    for kind, batch in batches.items():
        results = {name: measure(batch, enc, dec, args.runs)
                   for name, (enc, dec) in CANDIDATES.items()}
        ours = results["cirtsa-wire"]["events_s"]
        for name, r in results.items():
            print(f"{kind:5} {name:14} {r['bytes'] / args.rows:11.1f} {r['enc_ms']:10.1f} "
                  f"{r['dec_ms']:10.1f} {r['mb_s']:8.1f} {r['events_s']:11,.0f} "
                  f"{ours / r['events_s']:6.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
