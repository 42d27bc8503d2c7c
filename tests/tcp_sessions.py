"""Build whole TCP conversations as scapy frames, for stream-based analyzer tests."""

from __future__ import annotations

from scapy.all import IP, TCP, Ether


def tcp_session(exchanges: list[tuple[int, bytes]], client: str = "192.0.2.10",
                server: str = "198.51.100.20", sport: int = 40000, dport: int = 22,
                t0: float = 1_700_000_000.0, step: float = 0.01, close: bool = True,
                handshake: bool = True) -> list:
    """Frames of a TCP connection: handshake, then one segment per (direction, payload)
    (0 = client -> server), each acknowledged implicitly, then FIN from both sides."""
    c_seq, s_seq = 1000, 5000
    t = t0
    frames = []

    def seg(direction: int, flags: str, payload: bytes = b"") -> None:
        nonlocal c_seq, s_seq, t
        if direction == 0:
            pkt = IP(src=client, dst=server) / TCP(sport=sport, dport=dport, flags=flags,
                                                   seq=c_seq, ack=s_seq)
        else:
            pkt = IP(src=server, dst=client) / TCP(sport=dport, dport=sport, flags=flags,
                                                   seq=s_seq, ack=c_seq)
        eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # explicit: no ARP lookup
        frame = eth / pkt / payload if payload else eth / pkt
        frame.time = t
        t += step
        frames.append(frame)
        advance = len(payload) + (1 if "S" in flags or "F" in flags else 0)
        if direction == 0:
            c_seq += advance
        else:
            s_seq += advance

    if handshake:
        seg(0, "S")
        seg(1, "SA")
        seg(0, "A")
    for direction, payload in exchanges:
        seg(direction, "PA", payload)
    if close:
        seg(0, "FA")
        seg(1, "FA")
        seg(0, "A")
    return frames


def analyzer_columns(analyzer, batches) -> dict | None:
    """Every event column (as lists) a stream analyzer emits for these decoded batches and
    its flush; None when it emits nothing."""
    from pipeline.schema import concat_batches

    out = []
    for decoded in batches:
        out += analyzer.process(decoded)
    out += analyzer.flush()
    batch = concat_batches(out)
    return None if batch is None else {k: v.tolist() for k, v in batch.columns.items()}
