"""TLS numba kernels against the pure-Python parser they replaced (tests/tls_reference.py):
the same Handshake (or the same "incomplete" / "malformed" verdict) on generated, split and
mutated handshakes; flows parsed together as alone (no read crosses a flow's end); the same
events and counters from the analyzer on real captures; and, under NUMBA_BOUNDSCHECK, no
kernel index outside its arrays on hostile bytes."""

from __future__ import annotations

import struct
import textwrap

import pytest
import tls_reference as reference
from bounds_check import run_checked
from conftest import shared_pcap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tls import TLS_CAPTURES, ext, u16s, vec

from pipeline.schema import batch_to_ecs
from sensors import tls
from sensors.decode import decode
from sensors.pcap_reader import CaptureReader

GREASE = [0x0A0A, 0x1A1A, 0x5A5A, 0xFAFA]
u16 = st.integers(0, 0xFFFF) | st.sampled_from(GREASE + [0x1301, 0xC02F, 0x0304, 0x0303])
blob = st.binary(max_size=40)
# session ids: some shared by generated clients and servers (echoed: resumption), 32 zeros
session_ids = st.binary(max_size=32) | st.sampled_from([b"", b"\x07" * 32, bytes(32), b"\x07"])


# --- generated handshakes ---------------------------------------------------------------------


@st.composite
def client_extension(draw) -> bytes:
    kind = draw(st.sampled_from([0, 10, 11, 13, 16, 35, 41, 43, 0x1A1A, 0xFF01])
                | st.integers(0, 0xFFFF))
    if draw(st.integers(0, 9)) == 0:
        return ext(kind, draw(blob))  # any bytes under any type
    if kind == 0:
        names = draw(st.lists(st.tuples(st.sampled_from([0, 0, 1]),
                                        st.binary(max_size=12) | st.just(b"Host.Example")),
                              max_size=3))
        return ext(kind, vec(b"".join(bytes([t]) + vec(name) for t, name in names)))
    if kind == 16:
        items = draw(st.lists(st.binary(max_size=9) | st.sampled_from([b"h2", b"http/1.1"]),
                              max_size=4))
        return ext(kind, vec(b"".join(vec(item, 1) for item in items)))
    if kind in (10, 13):
        return ext(kind, vec(u16s(draw(st.lists(u16, max_size=8)))))
    if kind == 11:
        return ext(kind, vec(draw(st.binary(max_size=4)), 1))
    if kind == 43:
        return ext(kind, vec(u16s(draw(st.lists(u16, max_size=5))), 1))
    return ext(kind, draw(blob))


def as_records(message: bytes, cuts: list[int], version: bytes = b"\x03\x01") -> bytes:
    """A handshake message split into handshake records at `cuts`."""
    bounds = sorted({0, len(message), *(c % (len(message) + 1) for c in cuts)})
    pairs = zip(bounds, bounds[1:], strict=False)
    return b"".join(b"\x16" + version + vec(message[a:b]) for a, b in pairs)


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)
cuts = st.lists(st.integers(0, 10_000), max_size=3)
trailer = st.lists(st.sampled_from([b"\x14\x03\x03\x00\x01\x01", b"\x17\x03\x03\x00\x03abc",
                                    b"\x15\x03\x03\x00\x02\x01\x00", b"\x16\x03\x03\x00\x01"]),
                   max_size=3)


@st.composite
def client_streams(draw) -> bytes:
    """A client's bytes: a ClientHello (maybe without extensions), split into records, then
    maybe CCS / application data / alert records; then maybe mutated and cut."""
    version = draw(st.sampled_from([0x0300, 0x0301, 0x0303]) | st.integers(0, 0xFFFF))
    body = struct.pack("!H", version) + draw(st.binary(min_size=32, max_size=32)) \
        + vec(draw(session_ids), 1) + vec(u16s(draw(st.lists(u16, max_size=12)))) \
        + vec(b"\x00", 1)
    extensions = draw(st.lists(client_extension(), max_size=8))
    if extensions or draw(st.booleans()):
        body += vec(b"".join(extensions))
    message = bytes([draw(st.sampled_from([1, 1, 1, 2]))]) + len(body).to_bytes(3, "big") + body
    for _ in range(draw(st.integers(0, 2))):  # ClientKeyExchange (a full handshake), others
        kind = draw(st.sampled_from([16, 16, 11, 15]))
        payload = draw(blob)
        message += bytes([kind]) + len(payload).to_bytes(3, "big") + payload
    data = as_records(message, draw(cuts)) + b"".join(draw(trailer))
    data = mutate(data, draw(edits))
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@st.composite
def server_streams(draw) -> bytes:
    """A server's flight: maybe a HelloRetryRequest, ServerHello (ALPN, supported_versions,
    key_share, pre_shared_key, others; maybe a retry's random), maybe a Certificate, maybe a
    ServerKeyExchange (named curve or not, maybe shorter than one), then maybe CCS /
    application data; split, then maybe mutated and cut."""
    exts = []
    for kind in draw(st.lists(st.sampled_from([16, 43, 51, 41, 0xFF01, 0x0A0A]), max_size=4)):
        if kind == 16 and draw(st.booleans()):
            exts.append(ext(16, vec(b"".join(vec(p, 1) for p in draw(
                st.lists(st.binary(max_size=6) | st.just(b"h2"), max_size=2))))))
        elif kind == 43:
            exts.append(ext(43, u16s([draw(u16)]) if draw(st.booleans()) else draw(blob)))
        elif kind == 51 and draw(st.booleans()):  # a group, maybe with a key
            key = vec(draw(blob)) if draw(st.booleans()) else b""
            exts.append(ext(51, u16s([draw(u16)]) + key))
        else:
            exts.append(ext(kind, draw(blob)))
    random = draw(st.sampled_from([bytes(32), bytes(32), bytes(32), tls.HRR_RANDOM]))
    body = struct.pack("!H", draw(st.sampled_from([0x0301, 0x0303]) | st.integers(0, 0xFFFF))) \
        + random + vec(draw(session_ids), 1) + struct.pack("!HB", draw(u16), 0)
    if exts or draw(st.booleans()):
        body += vec(b"".join(exts))
    flight = b"\x02" + len(body).to_bytes(3, "big") + body
    for _ in range(draw(st.integers(0, 2))):
        certs = b"".join(vec(der, 3) for der in draw(st.lists(blob, max_size=2)))
        flight += b"\x0b" + len(vec(certs, 3)).to_bytes(3, "big") + vec(certs, 3)
    for _ in range(draw(st.integers(0, 2))):
        exchange = (bytes([draw(st.sampled_from([3, 3, 1]))]) + u16s([draw(u16)])
                    + draw(blob))[: draw(st.integers(0, 50))]
        flight += b"\x0c" + len(exchange).to_bytes(3, "big") + exchange
    if draw(st.integers(0, 3)) == 0:  # after a HelloRetryRequest (maybe with its CCS)
        retry = struct.pack("!H", 0x0303) + tls.HRR_RANDOM + vec(draw(session_ids), 1) \
            + struct.pack("!HB", draw(u16), 0) + vec(ext(51, u16s([draw(u16)])))
        retry = b"\x02" + len(retry).to_bytes(3, "big") + retry
        if draw(st.booleans()):  # in the flight's records
            flight = retry + flight
            data = b""
        else:  # its own record, then maybe CCS / others
            data = as_records(retry, []) + b"".join(draw(trailer))
    else:
        data = b""
    data += as_records(flight, draw(cuts), b"\x03\x03") + b"".join(draw(trailer))
    data = mutate(data, draw(edits))
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


def outcome(parse, client: bytes, server: bytes) -> object:
    """What a parser makes of one flow: a Handshake, "incomplete" or "malformed"."""
    try:
        found = parse(client, server)
    except tls.MalformedTLS:
        return "malformed"
    return "incomplete" if found is None else found


def reference_outcome(client: bytes, server: bytes) -> object:
    try:
        return outcome(reference.parse_handshake, client, server)
    except Exception:  # noqa: BLE001 - the old analyzer counted any error as malformed
        return "malformed"


# --- kernel path == reference -------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(client_streams(), server_streams())
def test_handshake_matches_reference(client, server):
    assert outcome(tls.parse_handshake, client, server) == reference_outcome(client, server)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_random_bytes_match_reference(client, server):
    client = b"\x16\x03\x01" + client  # past the record type check, into the length fields
    assert outcome(tls.parse_handshake, client, server) == reference_outcome(client, server)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(client_streams(), server_streams()), min_size=1, max_size=6))
def test_flows_parsed_together_as_alone(flows):
    """One batch of flows: each flow's result is the reference's for it alone, so no kernel
    read or write crosses into a neighbour's bytes or key region."""
    parsed = tls.parse_flows([c for c, _ in flows], [s for _, s in flows])
    for i, (client, server) in enumerate(flows):
        assert outcome(lambda *_, i=i: tls.handshake_of(parsed, i), client, server) \
            == reference_outcome(client, server)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(client_streams())
def test_client_hello_fields_match_reference(client):
    body = reference.read_direction(client).messages[:1]
    body = body[0][1] if body else client[9:]
    try:
        expected = reference.parse_client_hello(body)
    except tls.MalformedTLS:
        with pytest.raises(tls.MalformedTLS):
            tls.parse_client_hello(body)
        return
    assert tls.parse_client_hello(body) == expected


def test_a_full_tls12_flight_is_read():
    """Not vacuous: the generated shapes above do reach the deep fields (a fixed flight)."""
    hello_body = struct.pack("!H", 0x0303) + bytes(32) + vec(b"", 1) + vec(u16s([0xC02F])) \
        + vec(b"\x00", 1) \
        + vec(ext(0, vec(b"\x00" + vec(b"a.example"))) + ext(16, vec(vec(b"h2", 1))))
    client = as_records(b"\x01" + len(hello_body).to_bytes(3, "big") + hello_body, [20]) \
        + b"\x14\x03\x03\x00\x01\x01"
    sh = struct.pack("!H", 0x0303) + bytes(32) + vec(b"", 1) + struct.pack("!HB", 0xC02F, 0) \
        + vec(ext(16, vec(vec(b"h2", 1))))
    der = b"\x30\x03\x02\x01\x05"
    cert = vec(vec(der, 3) + vec(b"\x30\x00", 3), 3)
    server = as_records(b"\x02" + len(sh).to_bytes(3, "big") + sh
                        + b"\x0b" + len(cert).to_bytes(3, "big") + cert, [50], b"\x03\x03") \
        + b"\x14\x03\x03\x00\x01\x01"
    ours = tls.parse_handshake(client, server)
    assert ours == reference.parse_handshake(client, server)
    assert ours.client.server_name == "a.example" and ours.server.alpn == b"h2"
    assert ours.cert_der == der and ours.established and not ours.malformed


# --- analyzer == reference analyzer ----------------------------------------------------------


def _events(analyzer, path):
    out = []
    with CaptureReader(path) as reader:
        for batch in reader.batches():
            out += analyzer.process(decode(batch))
    out += analyzer.flush()
    return [doc for b in out for doc in batch_to_ecs(b)], analyzer.stats


@pytest.mark.parametrize("name", TLS_CAPTURES + ["benign/zeek__smtp.pcap",
                                                 "c2_beaconing/ndpi__emotet.pcap",
                                                 "known_bad_ioc/ndpi__malware.pcap",
                                                 "malformed/suricata-verify__http-mime-truncated.pcap"])
def test_analyzer_events_and_counters_match_reference(name):
    path = shared_pcap(name)
    ours = _events(tls.TlsAnalyzer({}, "s", "z"), path)
    assert ours == _events(reference.ReferenceTlsAnalyzer({}, "s", "z"), path)
    assert ours[0] or name.startswith("malformed/")


# --- bounds: the compiled kernels under NUMBA_BOUNDSCHECK -----------------------------------------

BOUNDS_SCRIPT = textwrap.dedent("""
    import numpy as np
    from hypothesis import HealthCheck, given, settings
    from bounds_check import require_checks_on
    from sensors import tls
    import test_tls_kernels as t

    require_checks_on()  # the check is on: an out-of-range read raises

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(t.client_streams(), t.server_streams())
    def each_kernel_alone(client, server):
        # every array holds exactly the bytes a kernel may read: any read past them raises
        for data in (client, server):
            size = np.array([len(data)], np.int64)
            hs, start, stop, flags = tls.frame_records(
                np.frombuffer(data, np.uint8), np.zeros(1, np.int64), size)
            hs = np.array(hs[: stop[0]])
            tls.client_hellos(hs, start, stop, flags, size)
            tls.server_flights(hs, start, stop)
        parsed = tls.parse_flows([client, server], [server, client])
        tls.event_columns(parsed, np.flatnonzero(parsed.status == tls.HELLO_OK).tolist())

    each_kernel_alone()
    import test_tls_curve_resumed as crafted
    crafted.every_cut_checks()  # key_share / ServerKeyExchange / session ids at every cut
    print("bounds ok")
""")


def test_kernels_stay_in_bounds_on_hostile_bytes(tmp_path):
    """A fresh process compiles the kernels with bounds checks (own numba cache dir, so the
    unchecked cached code is not reused) and feeds each kernel one direction's exact bytes."""
    done = run_checked(BOUNDS_SCRIPT, [], tmp_path, timeout_s=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bounds ok" in done.stdout
