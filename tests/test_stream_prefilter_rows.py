"""PortPrefilter.rows as one compiled pass (sensors/stream_prefilter.py, task SA, issue #3):
the same rows as the former numpy version, whether the patterns are compared in the
capture or in the payload heads a collector already scanned for the batch (tcp_stream's
candidate memo); and prefix_predicate's kernel against a per-row reference. With the
candidate rows known, only those are kept (task Y4): the SSH and logins events stay those
without a prefilter, for both analyzers in the pipeline's order."""

from __future__ import annotations

import numpy as np
import pytest

import sensors.stream_prefilter as stream_prefilter
import sensors.tcp_stream as tcp_stream
from sensors.packets import IP_DTYPE
from sensors.stream_prefilter import PortPrefilter, _starts_with
from sensors.tcp_stream import PREFIX_BYTES, known_heads, prefix_predicate


class _Batch:
    """The DecodedPackets columns the prefilter and the candidate scan read."""

    def __init__(self, **columns: np.ndarray) -> None:
        self.__dict__.update(columns)

    def __len__(self) -> int:
        return int(self.transport.shape[0])


def _rows_reference(prefilter: PortPrefilter, packets: _Batch,
                    tcp: np.ndarray | None = None) -> np.ndarray:
    """The numpy version PortPrefilter.rows replaced (HEAD before task SA), over the TCP
    rows or the given rows (tcp_stream's candidate rows)."""
    if tcp is None:
        tcp = np.flatnonzero(packets.transport == 6)
    if tcp.size == 0:
        return tcp
    src_port = packets.src_port[tcp]
    dst_port = packets.dst_port[tcp]
    on_port = prefilter.marked[src_port] | prefilter.marked[dst_port]
    if prefilter.patterns:
        candidates = np.flatnonzero((packets.payload_len[tcp] > 0) & ~on_port)
        if candidates.size:
            rows = tcp[candidates]
            data = np.asarray(packets.data).reshape(-1).view(np.uint8)
            offset = packets.payload_offset[rows].astype(np.int64)
            length = packets.payload_len[rows].astype(np.int64)
            hit = np.zeros(candidates.size, dtype=bool)
            for pattern in prefilter.patterns:
                hit |= _starts_with(data, offset, length, pattern)
            if hit.any():
                ports = np.zeros(65536, dtype=bool)
                ports[src_port[candidates[hit]]] = True
                ports[dst_port[candidates[hit]]] = True
                on_port |= ports[src_port] | ports[dst_port]
    return tcp[on_port]


def _batch(seed: int, n: int) -> _Batch:
    """Random rows: TCP or not (some TCP rows without an IP version, so no candidate head),
    ports from a few values, payloads that start with a pattern or a near miss, offsets and
    lengths also past the end of the capture."""
    rng = np.random.default_rng(seed)
    data = bytearray(rng.integers(0, 256, 64 * n + 64).astype(np.uint8).tobytes())
    offset = rng.integers(0, len(data) + 8, n).astype(np.int64)
    for at in offset[rng.random(n) < 0.4].tolist():
        word = [b"SSH-2.0-OpenSSH_9", b"SSH-1.99", b"SSH", b"SSX-", b"USER x"][rng.integers(5)]
        data[at : at + len(word)] = word[: max(len(data) - at, 0)]
    return _Batch(
        data=np.frombuffer(bytes(data), dtype=np.uint8),
        transport=rng.choice(np.array([6, 6, 6, 17, 0], dtype=np.uint8), n),
        ip_version=rng.choice(np.array([4, 6, 4, 0], dtype=np.uint8), n),
        src_port=rng.choice(np.array([22, 2222, 80, 41000, 5000, 21], dtype=np.uint16), n),
        dst_port=rng.choice(np.array([22, 2222, 80, 41001, 5001, 110], dtype=np.uint16), n),
        payload_len=rng.choice(np.array([0, 1, 3, 4, 8, 9, 20, 400], dtype=np.int32), n),
        payload_offset=offset,
        tcp_flags=rng.integers(0, 256, n).astype(np.uint8),
        vlan=np.zeros(n, dtype=np.uint16),
        src_ip=rng.integers(0, 256, (n, 16)).astype(np.uint8).view(IP_DTYPE).reshape(-1),
        dst_ip=rng.integers(0, 256, (n, 16)).astype(np.uint8).view(IP_DTYPE).reshape(-1),
        ts_ns=np.arange(n, dtype=np.int64),
    )


PREFILTERS = [
    lambda: PortPrefilter({22}, (b"SSH-",)),
    lambda: PortPrefilter({2222}, (b"SSH-", b"USER ")),
    lambda: PortPrefilter({22}, (b"SSH-2.0-OpenSSH",)),  # longer than a head: in the capture
    lambda: PortPrefilter({21, 110}),
    lambda: PortPrefilter({9}, (b"SSH-1.99", b"SSX-")),
]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("make", PREFILTERS)
def test_rows_equal_the_numpy_version_with_and_without_candidate_heads(seed, make):
    packets = _batch(seed, 40 + 37 * seed)
    expected = _rows_reference(make(), packets)
    assert known_heads(packets) is None
    without = make().rows(packets)
    tcp_stream._candidates(packets)  # what the HTTP/TLS collectors leave for the batch
    assert known_heads(packets) is not None
    with_heads = make().rows(packets)
    assert without.dtype == np.int64 and with_heads.dtype == np.int64
    np.testing.assert_array_equal(without, expected)
    # only the candidate rows (the only ones a collector selects) are read and kept
    candidates = known_heads(packets)[0]
    np.testing.assert_array_equal(with_heads, _rows_reference(make(), packets, candidates))
    assert np.isin(with_heads, expected).all()


def test_shared_port_pass_follows_each_prefilters_ports():
    """The prefilters reading one batch share a port pass (_SharedPass): each one's rows stay
    its own, whatever the order of calls, a prefilter joining later, and ports marked (note)
    between batches or between two calls for the same batch."""
    from types import SimpleNamespace

    ssh, logins, late = PortPrefilter({22}, (b"SSH-",)), PortPrefilter({21, 110}), \
        PortPrefilter({80}, (b"USER ",))
    for seed in range(10):
        packets = _batch(seed, 150 + 10 * seed)
        tcp_stream._candidates(packets)
        candidates = known_heads(packets)[0]
        order = [ssh, logins, late] if seed >= 3 else [ssh, logins]
        if seed % 2:
            order.reverse()
        for i, prefilter in enumerate(order):
            if seed % 3 == 0 and i == 1:  # a port marked after the pass ran for this batch
                prefilter.note([SimpleNamespace(server_port=[5000, 41001, 5001, 41000][seed % 4])])
            got = prefilter.rows(packets)
            np.testing.assert_array_equal(got, _rows_reference(prefilter, packets, candidates))
        ssh.note([SimpleNamespace(server_port=[2222, 80, 5000][seed % 3])])


def test_heads_are_read_for_the_rows_they_belong_to():
    """A head of another row must not decide: SSH- only in the capture of row 1, while the
    memo holds (wrongly placed) heads would say otherwise if rows were mismatched."""
    packets = _batch(3, 60)
    tcp_stream._candidates(packets)
    rows, heads = known_heads(packets)
    # the candidate heads are the payload heads of the candidate rows with payload, in order
    with_payload = rows[packets.payload_len[rows] > 0]
    assert heads.shape == (with_payload.size, PREFIX_BYTES)
    for row, head in zip(with_payload.tolist(), heads, strict=True):
        at, size = int(packets.payload_offset[row]), int(packets.payload_len[row])
        want = packets.data[at : at + min(size, PREFIX_BYTES)].tobytes()
        assert head[: len(want)].tobytes() == want


def test_empty_batch():
    packets = _batch(0, 0)
    assert PortPrefilter({22}, (b"SSH-",)).rows(packets).size == 0


@pytest.mark.parametrize("width", [3, 4, 8, 10])
@pytest.mark.parametrize("seed", range(4))
def test_prefix_predicate_kernel_against_per_row_bytes(width, seed):
    rng = np.random.default_rng(seed)
    patterns = [b"GET ", b"POST ", b"OPTIONS ", b"PROPFIND ", b"SSH-", b"\0\0"]
    n = 300
    head = rng.integers(0, 256, (n, width)).astype(np.uint8)
    for i in range(0, n, 3):  # plant patterns, whole or cut
        p = patterns[rng.integers(len(patterns))][: int(rng.integers(1, 10))]
        size = min(len(p), width)
        head[i, :size] = np.frombuffer(p[:size], dtype=np.uint8)
    payload_len = rng.integers(0, 12, n).astype(np.int32)
    got = prefix_predicate(patterns)(head, payload_len)
    shown = [p for p in patterns if 0 < len(p) <= PREFIX_BYTES]
    want = [any(len(p) <= width and payload_len[i] >= len(p)
                and head[i, : len(p)].tobytes() == p for p in shown) for i in range(n)]
    assert got.dtype == bool and got.tolist() == want


# --- SSH then logins on the candidate rows the HTTP/TLS collectors leave -----------------------

def _pipeline_events(batches, prefilter: bool) -> tuple:
    """(SSH events, login events) of both analyzers fed each batch in the default config's
    order, after the batch's candidate rows were memoised as the HTTP/TLS collectors do
    (SSH's feed of its subset replaces that memo: logins must still find the rows)."""
    from sensors.logins import LoginAnalyzer
    from sensors.ssh import SshAnalyzer

    ssh, logins = SshAnalyzer({}, "s", "z"), LoginAnalyzer({}, "s", "z")
    if not prefilter:
        ssh.prefilter = logins.prefilter = None
    out: tuple[list, list] = ([], [])
    for decoded in batches:
        tcp_stream._candidates(decoded)
        out[0].extend(ssh.process(decoded))
        if prefilter and len(decoded):
            assert stream_prefilter._batch_candidates(decoded) is not None
        out[1].extend(logins.process(decoded))
    out[0].extend(ssh.flush())
    out[1].extend(logins.flush())
    return tuple(_columns(events) for events in out)


def _columns(events: list) -> dict | None:
    from pipeline.schema import concat_batches

    batch = concat_batches(events)
    return None if batch is None else {k: v.tolist() for k, v in batch.columns.items()}


@pytest.mark.parametrize("capture", ["large/zeek__ssh.pcap", "brute_force/zeek__sshguess.pcap",
                                     "brute_force/zeek__ftp_bruteforce.pcap",
                                     "benign/zeek__smtp.pcap", "large/ndpi__1kxun.pcap"])
@pytest.mark.parametrize("batch_packets", [7, 256])
def test_candidate_rows_give_the_same_events_on_real_captures(capture, batch_packets):
    from conftest import shared_pcap

    from sensors.decode import decode
    from sensors.pcap_reader import CaptureReader

    with CaptureReader(shared_pcap(capture), batch_packets=batch_packets) as reader:
        batches = [decode(b) for b in reader.batches()]
    with_prefilter = _pipeline_events(batches, True)
    assert with_prefilter == _pipeline_events(batches, False)
    if "1kxun" not in capture:
        assert with_prefilter != (None, None)  # the comparison covers real events


def test_candidate_rows_same_events_other_ports_and_noise():
    # SSH on 2222 (server banner first) and 22, FTP on 21 with a client on port 2222, HTTP
    # noise on a service port: every 3 frames a batch
    from packet_builders import batch_from_scapy
    from tcp_sessions import tcp_session

    from sensors.decode import decode

    banner = [(1, b"SSH-2.0-OpenSSH_9.6\r\n"), (0, b"SSH-2.0-OpenSSH_9.6\r\n"),
              (0, b"\0" * 40), (1, b"\0" * 60)]
    sessions = [
        tcp_session(banner, dport=2222, t0=1000.0),
        tcp_session(banner, dport=22, sport=41000, t0=1000.2),
        tcp_session([(1, b"220 ftp\r\n"), (0, b"USER bob\r\n"), (1, b"331 pw\r\n"),
                     (0, b"PASS x\r\n"), (1, b"530 no\r\n")], dport=21, sport=2222,
                    client="192.0.2.7", t0=1000.1),
        tcp_session([(0, b"GET / HTTP/1.1\r\n\r\n"), (1, b"HTTP/1.1 200 OK\r\n\r\n")],
                    dport=80, sport=21, client="192.0.2.99", t0=1000.05),
    ]
    frames = sorted((f for s in sessions for f in s), key=lambda f: float(f.time))
    batches = [decode(batch_from_scapy(frames[i : i + 3])) for i in range(0, len(frames), 3)]
    with_prefilter = _pipeline_events(batches, True)
    assert with_prefilter == _pipeline_events(batches, False)
    assert len(with_prefilter[0]["dst_port"]) == 2 and 22 in with_prefilter[0]["dst_port"]
    assert with_prefilter[1] is not None


def test_feed_of_no_rows_while_nothing_is_held_is_skipped_safely():
    """PortPrefilter.feed skips collector.feed when no row is kept and no flow is held: such
    a feed changes nothing but the clock (set before). Checked against a collector that is
    fed the empty batches, with a SYN remembered while nothing is held."""
    import copy

    from packet_builders import batch_from_scapy
    from tcp_sessions import tcp_session

    from sensors.decode import decode
    from sensors.ssh import SshAnalyzer
    from sensors.stream_prefilter import subset

    frames = tcp_session([(1, b"SSH-2.0-x\r\n"), (0, b"SSH-2.0-y\r\n")], dport=22, t0=1000.0)
    noise = tcp_session([(0, b"GET / HTTP/1.1\r\n\r\n")], dport=80, sport=41000, t0=1000.0)
    batches = [decode(batch_from_scapy(frames[:1])), decode(batch_from_scapy(noise)),
               decode(batch_from_scapy(frames[1:]))]
    fed, skipping = SshAnalyzer({}, "s", "z"), None
    out_fed, out_skipping = [], []
    for i, batch in enumerate(batches):
        if i == 1:
            assert fed.collector.held_flows == 0  # the SYN is remembered, no flow held
            skipping = copy.deepcopy(fed)
            empty = subset(batch, np.zeros(0, dtype=np.int64))
            fed.collector.clock = max(fed.collector.clock, int(batch.ts_ns.max()))
            out_fed += fed._events(fed.collector.feed(empty))
            out_skipping += skipping.process(batch)
        elif skipping is None:
            out_fed += fed.process(batch)
        else:
            out_fed += fed.process(batch)
            out_skipping += skipping.process(batch)
    out_fed += fed.flush()
    out_skipping += skipping.flush()
    assert _columns(out_fed) == _columns(out_skipping) is not None
    assert fed.collector.stats == skipping.collector.stats
