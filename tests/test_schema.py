"""The event schema: validation at the stage boundary and the ECS JSON mapping."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO, assert_ecs

from pipeline.schema import (
    KINDS,
    EventBatch,
    SchemaError,
    batch_to_ecs,
    concat_batches,
    empty_batch,
    ns_to_iso,
    validate_batch,
)
from sensors.packets import IP_DTYPE, ip_column_to_str, ip_to_bytes16, ipv4_column

T0 = 1_508_968_601_767_055_000


def _ips(*texts: str) -> np.ndarray:
    return np.frombuffer(b"".join(ip_to_bytes16(t) for t in texts), dtype=IP_DTYPE)


def _obj(*values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def flow_batch() -> EventBatch:
    n = 2
    cols = {
        "timestamp": np.array([T0, T0 + 5], dtype=np.int64),
        "observer_name": _obj("s1", "s1"),
        "ingress_zone": _obj("dmz", "dmz"),
        "src_ip": _ips("192.168.2.154", "2001:db8::1"),
        "dst_ip": _ips("192.168.2.22", "2001:db8::2"),
        "src_port": np.array([52038, 5353], dtype=np.uint16),
        "dst_port": np.array([21, 53], dtype=np.uint16),
        "transport": np.array([6, 17], dtype=np.uint8),
        "vlan": np.array([0, 10], dtype=np.uint16),
        "community_id": _obj("1:abc=", "1:def="),
        "end": np.array([T0 + 1000, T0 + 5], dtype=np.int64),
        "src_packets": np.array([1, 1], dtype=np.uint64),
        "dst_packets": np.array([0, 0], dtype=np.uint64),
        "src_bytes": np.array([60, 80], dtype=np.uint64),
        "dst_bytes": np.array([0, 0], dtype=np.uint64),
        "src_payload_bytes": np.array([0, 38], dtype=np.uint64),
        "dst_payload_bytes": np.array([0, 0], dtype=np.uint64),
        "src_tcp_flags": np.array([2, 0], dtype=np.uint8),
        "dst_tcp_flags": np.array([0, 0], dtype=np.uint8),
        "conn_state": _obj("S0", "S0"),
        "end_reason": _obj("eof", "idle"),
    }
    assert len(cols["timestamp"]) == n
    return EventBatch("flow", cols)


def dns_batch() -> EventBatch:
    answers = [[], [{"name": "example.org", "type": "A", "class": "IN", "ttl": 60,
                     "data": "192.0.2.7"}]]
    return EventBatch("dns", {
        "timestamp": np.array([T0, T0 + 10], dtype=np.int64),
        "observer_name": _obj("s1", "s1"),
        "ingress_zone": _obj("lan", "lan"),
        "src_ip": _ips("10.0.0.2", "10.0.0.53"),
        "dst_ip": _ips("10.0.0.53", "10.0.0.2"),
        "src_port": np.array([40000, 53], dtype=np.uint16),
        "dst_port": np.array([53, 40000], dtype=np.uint16),
        "transport": np.array([17, 17], dtype=np.uint8),
        "vlan": np.array([0, 0], dtype=np.uint16),
        "community_id": _obj("1:x=", "1:x="),
        "dns_id": np.array([4660, 4660], dtype=np.uint16),
        "is_response": np.array([False, True]),
        "qname": _obj("example.org", "example.org"),
        "qtype": np.array([1, 1], dtype=np.uint16),
        "qclass": np.array([1, 1], dtype=np.uint16),
        "rcode": np.array([0, 3], dtype=np.uint8),
        "flags": np.array([0x0100, 0x8180], dtype=np.uint16),
        "answers": _obj(*answers),
    })


def test_valid_batches_pass():
    validate_batch(flow_batch())
    validate_batch(dns_batch())
    for kind in KINDS:
        validate_batch(empty_batch(kind))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.pop("src_ip"), "missing columns"),
        (lambda c: c.__setitem__("extra", np.zeros(2)), "unexpected columns"),
        (lambda c: c.__setitem__("src_port", c["src_port"].astype(np.int64)), "dtype"),
        (lambda c: c.__setitem__("end", c["end"][:1]), "length"),
        (lambda c: c.__setitem__("timestamp", -np.ones(2, dtype=np.int64)), "event time"),
        (lambda c: c.__setitem__("src_bytes", [1, 2]), "numpy"),
    ],
)
def test_invalid_batches_are_rejected_with_reason(mutate, message):
    batch = flow_batch()
    mutate(batch.columns)
    with pytest.raises(SchemaError, match=message):
        validate_batch(batch)


def test_unknown_kind_rejected():
    with pytest.raises(SchemaError, match="unknown event kind"):
        validate_batch(EventBatch("nope", {}))


def test_flow_to_ecs_fields_and_values():
    docs = batch_to_ecs(flow_batch())
    assert len(docs) == 2
    for doc in docs:
        assert_ecs(doc)
    d = docs[0]
    assert d["@timestamp"] == "2017-10-25T21:56:41.767055Z"
    assert d["event"]["kind"] == "event" and d["event"]["category"] == ["network"]
    assert d["source"] == {"ip": "192.168.2.154", "port": 52038, "packets": 1, "bytes": 60}
    assert d["destination"]["ip"] == "192.168.2.22"
    assert d["network"]["transport"] == "tcp" and d["network"]["iana_number"] == "6"
    assert d["network"]["community_id"] == "1:abc="
    assert d["event"]["duration"] == 1000
    assert d["observer"] == {"name": "s1", "ingress": {"zone": "dmz"}}
    assert "vlan" not in d["network"]
    assert docs[1]["network"]["vlan"] == {"id": "10"}
    assert docs[1]["source"]["ip"] == "2001:db8::1"
    assert docs[1]["network"]["transport"] == "udp"
    assert d["cirtsa"]["flow"]["conn_state"] == "S0"


def test_dns_to_ecs_fields_and_values():
    query, answer = batch_to_ecs(dns_batch())
    assert_ecs(query)
    assert_ecs(answer)
    assert query["dns"]["type"] == "query" and "response_code" not in query["dns"]
    assert query["dns"]["question"] == {"name": "example.org", "type": "A", "class": "IN"}
    assert query["dns"]["header_flags"] == ["RD"]
    assert answer["dns"]["type"] == "answer"
    assert answer["dns"]["response_code"] == "NXDOMAIN"
    assert answer["dns"]["header_flags"] == ["RD", "RA"]
    assert answer["dns"]["resolved_ip"] == ["192.0.2.7"]
    assert answer["dns"]["id"] == "4660"


def test_ip_columns_round_trip():
    texts = ["0.0.0.0", "255.255.255.255", "10.1.2.3", "::1", "2001:db8::ff00:42:8329", "::"]
    assert ip_column_to_str(_ips(*texts)) == texts
    v4 = ipv4_column(np.array([0x0A010203, 0xC0A80216], dtype=np.uint32))
    assert ip_column_to_str(v4) == ["10.1.2.3", "192.168.2.22"]


def test_ns_to_iso():
    assert ns_to_iso(0) == "1970-01-01T00:00:00.000000Z"
    assert ns_to_iso(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"


def test_concat():
    both = concat_batches([flow_batch(), empty_batch("flow"), flow_batch()])
    assert len(both) == 4
    validate_batch(both)
    assert concat_batches([]) is None


def test_schema_doc_lists_every_column():
    """docs/schema.md documents every column of every kind (docs cannot drift silently)."""
    text = (REPO / "docs" / "schema.md").read_text(encoding="utf-8")
    for kind in KINDS.values():
        assert f"## `{kind.name}`" in text, f"docs/schema.md lacks a section for {kind.name}"
        for f in kind.fields:
            assert f"`{f.column}`" in text and f"`{f.ecs}`" in text, (
                f"docs/schema.md lacks {kind.name}.{f.column} -> {f.ecs}")


def _synthetic(kind_name: str, n: int = 3) -> EventBatch:
    """Plausible rows for any kind, built from the schema alone."""
    kind = KINDS[kind_name]
    cols: dict[str, np.ndarray] = {}
    for f in kind.fields:
        if f.dtype == IP_DTYPE:
            cols[f.column] = _ips(*(["10.0.0.1", "2001:db8::9", "192.0.2.4"][:n]))
        elif f.dtype == object:
            if f.column == "answers":
                cols[f.column] = _obj(*([[]] * n))
            elif f.column == "client_alpn":
                cols[f.column] = _obj(*([["h2", "http/1.1"]] * n))
            else:
                cols[f.column] = _obj(*(["x"] * n))
        elif f.dtype == np.bool_:
            cols[f.column] = np.array([True, False, True][:n])
        elif f.column in ("outcome", "auth_success"):
            cols[f.column] = np.array([-1, 0, 1][:n], dtype=f.dtype)
        elif f.column in ("timestamp", "end"):
            cols[f.column] = np.array([T0, T0 + 1, T0 + 2][:n], dtype=np.int64)
        else:
            cols[f.column] = np.arange(1, n + 1).astype(f.dtype)
    return EventBatch(kind_name, cols)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_maps_to_valid_ecs(kind):
    batch = _synthetic(kind)
    validate_batch(batch)
    docs = batch_to_ecs(batch)
    assert len(docs) == len(batch)
    for doc in docs:
        assert_ecs(doc)
        assert doc["@timestamp"].startswith("2017-10-25T")
        assert doc["event"]["dataset"] == KINDS[kind].dataset
        assert doc["observer"]["name"] == "x"
        assert doc["related"]["ip"]


def test_arp_and_login_values():
    arp = batch_to_ecs(_synthetic("arp"))[0]
    assert arp["source"]["mac"] == "00-00-00-00-00-01"
    assert arp["cirtsa"]["arp"]["operation"] == "request"
    login = [d["event"]["outcome"] for d in batch_to_ecs(_synthetic("login"))]
    assert login == ["unknown", "failure", "success"]
    alert = batch_to_ecs(_synthetic("ids_alert"))[0]
    assert alert["event"]["kind"] == "alert" and alert["rule"]["ruleset"] == "x"


def test_documents_own_their_nested_values():
    """The sensor shares one answers list (and its dicts) between rows with equal answers:
    each document must get its own copy, so editing one document edits no other and no
    batch cell."""
    batch = dns_batch()
    shared = [{"name": "example.org", "type": "A", "class": "IN", "ttl": 60,
               "data": "192.0.2.7"}]
    answers = np.empty(2, object)
    answers[0] = answers[1] = shared
    batch.columns["answers"] = answers
    first, second = batch_to_ecs(batch)
    assert first["dns"]["answers"] == second["dns"]["answers"] == shared
    first["dns"]["answers"][0]["data"] = "198.51.100.1"
    first["dns"]["answers"].append({"name": "x", "type": "A"})
    assert second["dns"]["answers"] == shared
    assert shared == [{"name": "example.org", "type": "A", "class": "IN", "ttl": 60,
                       "data": "192.0.2.7"}]


def _folding_flows(names: np.ndarray) -> EventBatch:
    n = len(names)
    return EventBatch("flow", {
        "community_id": _obj(*[f"1:{i}" for i in range(n)]),
        "timestamp": np.zeros(n, np.int64),
        "observer_name": _obj(*["s1"] * n),
        "observer_names": names})


def test_fold_observer_names_shortcut_only_for_one_shared_empty_object():
    from pipeline.schema import fold_observer_names, object_addresses

    empty = ""
    shared = np.empty(4, object)
    shared[:] = [empty] * 4
    assert len(set(object_addresses(shared).tolist())) == 1
    plain = _folding_flows(shared)
    assert fold_observer_names(plain) is plain
    # row 0 empty, later rows named: the pointers differ, the names are folded
    mixed = np.empty(4, object)
    mixed[:] = ["", "s1|s2", "", "s1|zeek"]
    folded = fold_observer_names(_folding_flows(mixed))
    assert folded.columns["observer_name"].tolist() == ["s1", "s1|s2", "s1", "s1|zeek"]
    # a strided view (not contiguous) takes the general path with the same result
    wide = np.empty(8, object)
    wide[:] = ["", "x", "s1|s2", "x", "", "x", "s1|zeek", "x"]
    folded = fold_observer_names(_folding_flows(wide[::2]))
    assert folded.columns["observer_name"].tolist() == ["s1", "s1|s2", "s1", "s1|zeek"]
