"""Backscatter and reflection: replies that answer requests their receiver never sent.

A spoofed-source attack makes someone else's host answer: a SYN flood with random spoofed
sources makes its victim send SYN-ACKs and RSTs to the spoofed addresses (**backscatter**:
seen near the spoofed addresses, one sender to many of our addresses; Moore et al., "Inferring
Internet Denial-of-Service Activity", 2001); a reflection attack spoofs its victim's address
so that many servers (reflectors) send their replies, amplified when the protocol answers a
small request with a large response (DNS, NTP, SSDP, memcached, CLDAP, CharGen, SNMP ...;
CISA TA14-017A), to the victim (**reflection**: many senders to one of our addresses).

Unsolicited replies, per flow record (the sensor flips a flow whose first packet is a SYN-ACK
so that its originator is the address the SYN-ACK went to, as Zeek does):

  syn_ack      TCP: responder sent SYN+ACK, originator never sent SYN   (sender = responder)
  rst          TCP: originator sent RST, no SYN, no payload, no reply    (sender = originator)
  icmp_error   ICMP destination unreachable / time exceeded (v4 3, 11; v6 1, 3)
               (sender = originator)
  udp_amplified  UDP with one side on an amplification service port whose bytes are at
               least `amplification_ratio` times the other side's (an unsolicited response:
               the other side sent nothing) (sender = the service side)

Backscatter is keyed by the sender (the DoS victim elsewhere: informational, low severity),
reflection by the receiver (our host is the victim: high severity; victim-keyed, so
`partition_key = "destination"`). Neither is a scan: the port-scan detectors never count
these flows (docs/detections.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from correlation.arrival_memo import rows_in_range
from correlation.detector import (
    IANA_TCP,
    NS_PER_S,
    TCP_RST,
    TCP_SYN,
    Columns,
    Detector,
    Evidence,
    Finding,
    InputSpec,
    Rule,
    WindowRange,
    distinct_per_group,
    factorize_ip,
)
from correlation.network_common import (
    GROUP_ADDRESSES,
    IANA_ICMP,
    IANA_ICMPV6,
    IANA_UDP,
    WindowGroups,
    batch_cached,
    in_ports,
    one_ip,
    sample_ips,
    seen_by,
    span,
)
from pipeline.jit import njit
from pipeline.schema import EventBatch

_IMPACT = ("TA0040", "Impact")

BACKSCATTER_RULE = Rule(
    id="cirtsa.dos.backscatter",
    name="DoS backscatter",
    description="One remote host sent unsolicited SYN-ACKs, RSTs or ICMP errors to many of the "
                "monitored addresses: it is the victim of a spoofed-source flood that uses "
                "these addresses as fake sources.",
    category="Denial of service",
    tactic_id=_IMPACT[0], tactic_name=_IMPACT[1],
    technique_id="T1498.001", technique_name="Network Denial of Service: Direct Network Flood",
    severity=21, severity_label="low", risk_score=21.0,
)

REFLECTION_RULE = Rule(
    id="cirtsa.dos.reflection",
    name="Reflection / amplification attack",
    description="Many hosts sent unsolicited replies (amplified UDP responses, SYN-ACKs, RSTs, "
                "ICMP errors) to one host: it is the victim of a reflection attack.",
    category="Denial of service",
    tactic_id=_IMPACT[0], tactic_name=_IMPACT[1],
    technique_id="T1498.002", technique_name="Network Denial of Service: Reflection Amplification",
    severity=73, severity_label="high", risk_score=73.0,
)

_COLUMNS = ("timestamp", "end", "src_ip", "dst_ip", "src_port", "dst_port", "transport",
            "src_tcp_flags", "dst_tcp_flags", "src_packets", "dst_packets", "src_bytes",
            "dst_bytes", "src_payload_bytes", "observer_name", "ingress_zone")

CLASS_NAMES = ("syn_ack", "rst", "icmp_error", "udp_amplified")
NOT_UNSOLICITED = -1


def classify(c: Columns, amp_ports: np.ndarray, ratio: float, rows: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(class code per row: index into CLASS_NAMES or -1, sender-is-originator per row), of
    every row of c or of `rows` (indices into c) only.

    One compiled pass (the numpy version takes ~25 passes and temporaries over the rows;
    this runs in two detectors' select for every flow batch, and at every close)."""
    if c["src_port"].dtype != np.uint16 or c["dst_port"].dtype != np.uint16:
        if rows is not None:
            c = {name: c[name][rows] for name in _CLASSIFY_COLUMNS}
        return classify_numpy(c, amp_ports, ratio)
    if rows is None:
        rows = np.arange(c["transport"].shape[0], dtype=np.int64)
    return _classify_rows(np.asarray(rows, np.int64), *(c[name] for name in _CLASSIFY_COLUMNS),
                          _amp_table(np.asarray(amp_ports).tobytes(), str(np.asarray(
                              amp_ports).dtype)), float(ratio))


_CLASSIFY_COLUMNS = ("transport", "src_tcp_flags", "dst_tcp_flags", "src_port", "dst_port",
                     "dst_packets", "src_payload_bytes", "src_bytes", "dst_bytes")


@lru_cache(maxsize=16)
def _amp_table(ports: bytes, dtype: str) -> np.ndarray:
    """64 K table: port is an amplification service port."""
    wanted = np.frombuffer(ports, dtype).astype(np.int64)
    table = np.zeros(65536, np.bool_)
    table[wanted[(wanted >= 0) & (wanted < 65536)]] = True
    return table


@njit
def _classify_rows(rows, transport, sf, df, src_port, dst_port, dst_packets, src_payload,
                   src_bytes, dst_bytes, amp, ratio):
    """classify_numpy, row by row: the later class wins as there (rst over syn_ack)."""
    n = rows.shape[0]
    cls = np.full(n, NOT_UNSOLICITED, np.int8)
    sender_is_orig = np.ones(n, np.bool_)
    for j in range(n):
        i = rows[j]
        proto = transport[i]
        if proto == IANA_TCP:
            flags = sf[i]
            if flags & TCP_SYN == 0:
                if df[i] & (TCP_SYN | 0x10) == (TCP_SYN | 0x10):
                    cls[j] = 0
                    sender_is_orig[j] = False
                if flags & TCP_RST != 0 and dst_packets[i] == 0 and src_payload[i] == 0:
                    cls[j] = 1
        elif proto == IANA_ICMP:
            if src_port[i] == 3 or src_port[i] == 11:
                cls[j] = 2
        elif proto == IANA_ICMPV6:
            if src_port[i] == 1 or src_port[i] == 3:
                cls[j] = 2
        elif proto == IANA_UDP:
            src_service = amp[src_port[i]] and not amp[dst_port[i]]
            dst_service = amp[dst_port[i]] and not src_service
            sb = np.float64(src_bytes[i])
            db = np.float64(dst_bytes[i])
            if src_service and sb >= ratio * db and dst_packets[i] == 0:
                cls[j] = 3
            elif dst_service and db >= ratio * max(sb, 1.0) and dst_packets[i] > 0:
                cls[j] = 3
                sender_is_orig[j] = False
    return cls, sender_is_orig


def classify_numpy(c: Columns, amp_ports: np.ndarray, ratio: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """classify() in whole-array passes: the reference, and the path for port columns that
    are not uint16 (the kernel's port table has 64 K entries)."""
    tcp = c["transport"] == IANA_TCP
    sf, df = c["src_tcp_flags"], c["dst_tcp_flags"]
    orig_syn = (sf & TCP_SYN) != 0
    syn_ack = tcp & ~orig_syn & ((df & (TCP_SYN | 0x10)) == (TCP_SYN | 0x10))
    rst = (tcp & ~orig_syn & ((sf & TCP_RST) != 0) & (c["dst_packets"] == 0)
           & (c["src_payload_bytes"] == 0))
    icmp_error = (((c["transport"] == IANA_ICMP) & in_ports(c["src_port"], (3, 11)))
                  | ((c["transport"] == IANA_ICMPV6) & in_ports(c["src_port"], (1, 3))))
    udp = c["transport"] == IANA_UDP
    src_service = udp & in_ports(c["src_port"], amp_ports) & ~in_ports(c["dst_port"], amp_ports)
    dst_service = udp & in_ports(c["dst_port"], amp_ports) & ~src_service
    sb = c["src_bytes"].astype(np.float64)
    db = c["dst_bytes"].astype(np.float64)
    amp_from_src = src_service & (sb >= ratio * db) & (c["dst_packets"] == 0)
    amp_from_dst = dst_service & (db >= ratio * np.maximum(sb, 1.0)) & (c["dst_packets"] > 0)
    cls = np.full(sf.shape[0], NOT_UNSOLICITED, np.int8)
    cls[syn_ack] = 0
    cls[rst] = 1
    cls[icmp_error] = 2
    cls[amp_from_src | amp_from_dst] = 3
    sender_is_orig = ~syn_ack & ~amp_from_dst
    return cls, sender_is_orig


# The backscatter and reflection detectors classify the same batch with the same settings:
# the last batch's classes are kept (with a reference to its columns, so their identity
# cannot be reused) and handed to the second select read-only.
def classify_batch(c: Columns, amp_ports: np.ndarray, ratio: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """classify() of a whole batch; while the engine selects one batch (batch_memo), the
    backscatter and reflection detectors' selects share one computation (batch_cached)."""
    return batch_cached(("backscatter.classify", amp_ports.tobytes(), ratio), c["transport"],
                        lambda: classify(c, amp_ports, ratio))


class _UnsolicitedDetector(Detector):
    inputs = (InputSpec("flow", _COLUMNS),)

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.amp_ports = np.asarray(sorted({int(p) for p in config["amplification_ports"]}),
                                    dtype=np.uint16)
        self.ratio = float(config["amplification_ratio"])
        self.max_sample = int(config.get("evidence_sample", 20))

    def select(self, batch: EventBatch) -> np.ndarray:
        cls, _ = classify_batch(batch.columns, self.amp_ports, self.ratio)
        return cls != NOT_UNSOLICITED

    def _parties(self, cols: Columns, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        """(class, sender column, receiver column, reply bytes) of rows idx."""
        cls, sender_is_orig = classify(cols, self.amp_ports, self.ratio, rows=idx)
        src, dst = cols["src_ip"][idx], cols["dst_ip"][idx]
        sender = np.where(sender_is_orig, src, dst)
        receiver = np.where(sender_is_orig, dst, src)
        reply_bytes = np.where(sender_is_orig, cols["src_bytes"][idx], cols["dst_bytes"][idx])
        return cls, sender, receiver, reply_bytes.astype(np.float64)

    def _evidence(self, cols: Columns, r: np.ndarray, keyed_on_sender: bool) -> Evidence:
        first, last = span(cols, r)
        cls, sender, receiver, reply_bytes = self._parties(cols, r)
        key_col, other_col = (sender, receiver) if keyed_on_sender else (receiver, sender)
        key_ip = one_ip(key_col, 0)
        n_other, others = sample_ips(other_col, self.max_sample)
        by_class = {CLASS_NAMES[i]: int((cls == i).sum()) for i in range(len(CLASS_NAMES))}
        ports = np.unique(np.where(keyed_on_sender, cols["src_port"][r], cols["dst_port"][r]))
        details = {"flows": int(r.size), "reply_bytes": int(reply_bytes.sum()),
                   **{f"{k}_flows": v for k, v in by_class.items()}}
        if keyed_on_sender:
            details |= {"distinct_receivers": n_other, "receivers": others}
            msg = (f"{key_ip} sent unsolicited replies to {n_other} monitored addresses in "
                   f"{(last - first) / NS_PER_S:.0f} s: victim of a spoofed-source flood")
            return Evidence(first_seen=first, last_seen=last, source_ip=key_ip,
                            related_ips=[key_ip] + [o for o in others if o != key_ip],
                            details=details, message=msg, **seen_by(cols, r))
        amp = cls == 3
        details |= {"distinct_reflectors": n_other, "reflectors": others,
                    "amplified_bytes": int(reply_bytes[amp].sum()),
                    "service_ports": ports[: self.max_sample].tolist()}
        msg = (f"{key_ip} received unsolicited replies from {n_other} reflectors "
               f"({int(reply_bytes.sum()):,} bytes) in {(last - first) / NS_PER_S:.0f} s")
        return Evidence(first_seen=first, last_seen=last, source_ip=one_ip(other_col, 0),
                        destination_ip=key_ip,
                        related_ips=[key_ip] + [o for o in others if o != key_ip],
                        details=details, message=msg, **seen_by(cols, r))


class BackscatterDetector(_UnsolicitedDetector):
    """One sender of unsolicited replies to >= min_receivers distinct addresses."""

    name = "backscatter"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (BACKSCATTER_RULE,)
    threshold_keys = ("min_receivers", "amplification_ports", "amplification_ratio")

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.min_receivers = int(config["min_receivers"])

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows["flow"]
        t = cols["timestamp"]
        idx = rows_in_range(t, windows)
        if idx.size < self.min_receivers:
            return []
        _, sender, receiver, _ = self._parties(cols, idx)
        key, _ = factorize_ip(sender)
        target, _ = factorize_ip(receiver)
        keep = distinct_per_group(key, int(key.max()) + 1, target)[key] >= self.min_receivers
        idx, key, target = idx[keep], key[keep], target[keep]
        if idx.size == 0:
            return []
        full_target = np.zeros(t.shape[0], np.int64)
        full_target[idx] = target
        wg = WindowGroups.of(windows, t, idx, key)
        hits = np.flatnonzero(wg.distinct(full_target) >= self.min_receivers)
        sender_text = self._sender_text(cols)
        return wg.findings(hits, windows, lambda g: self.rules[0], sender_text,
                           lambda r, g: self._evidence(cols, r, keyed_on_sender=True))

    def _sender_text(self, cols: Columns):
        def text(row: int) -> str:
            _, sender, _, _ = self._parties(cols, np.array([row]))
            return one_ip(sender, 0)
        return text


class ReflectionDetector(_UnsolicitedDetector):
    """Unsolicited replies from >= min_reflectors senders carrying >= min_reply_bytes to one
    receiver (victim-keyed)."""

    name = "reflection"
    pure_detect = True  # detect changes no attribute: probe() is itself
    rules = (REFLECTION_RULE,)
    threshold_keys = ("min_reflectors", "min_reply_bytes", "amplification_ports",
                      "amplification_ratio")
    partition_key = "destination"

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.min_reflectors = int(config["min_reflectors"])
        self.min_bytes = float(config["min_reply_bytes"])

    def select(self, batch: EventBatch) -> np.ndarray:
        cls, sender_is_orig = classify_batch(batch.columns, self.amp_ports, self.ratio)
        receiver = np.where(sender_is_orig, batch.columns["dst_ip"], batch.columns["src_ip"])
        return (cls != NOT_UNSOLICITED) & ~GROUP_ADDRESSES.contains(receiver)

    def detect(self, rows: Mapping[str, Columns], windows: WindowRange) -> list[Finding]:
        cols = rows["flow"]
        t = cols["timestamp"]
        idx = rows_in_range(t, windows)
        if idx.size < self.min_reflectors:
            return []
        _, sender, receiver, reply_bytes = self._parties(cols, idx)
        key, _ = factorize_ip(receiver)
        target, _ = factorize_ip(sender)
        n_keys = int(key.max()) + 1
        keep = ((distinct_per_group(key, n_keys, target)[key] >= self.min_reflectors)
                & (np.bincount(key, weights=reply_bytes, minlength=n_keys)[key] >= self.min_bytes))
        idx, key, target, reply_bytes = idx[keep], key[keep], target[keep], reply_bytes[keep]
        if idx.size == 0:
            return []
        full_target = np.zeros(t.shape[0], np.int64)
        full_bytes = np.zeros(t.shape[0], np.float64)
        full_target[idx], full_bytes[idx] = target, reply_bytes
        wg = WindowGroups.of(windows, t, idx, key)
        hits = np.flatnonzero((wg.distinct(full_target) >= self.min_reflectors)
                              & (wg.sum(full_bytes) >= self.min_bytes))

        def receiver_text(row: int) -> str:
            _, _, rcv, _ = self._parties(cols, np.array([row]))
            return one_ip(rcv, 0)
        return wg.findings(hits, windows, lambda g: self.rules[0], receiver_text,
                           lambda r, g: self._evidence(cols, r, keyed_on_sender=False))
