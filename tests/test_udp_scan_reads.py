"""The UDP scans' finding keys and evidence addresses are read at the hit rows only and
formatted for all hits at once (task W8, as task V6 made the TCP scans do): never a
whole-column gather of an engine address or object column; same alerts as before."""

from __future__ import annotations

import pytest

from correlation.detector import WindowRange
from correlation.engine import default_config
from correlation.udp_scan import UdpHorizontalScanDetector, UdpVerticalScanDetector

try:
    from test_close_evidence import TakeOnlyColumns
    from test_engine import flow_batch
except ImportError:  # tests/ imported as a package
    from tests.test_close_evidence import TakeOnlyColumns
    from tests.test_engine import flow_batch

ADDRESS_COLUMNS = ("src_ip", "dst_ip")


class TakeOnlyAddresses(TakeOnlyColumns):
    """TakeOnlyColumns whose address columns, too, may only be read at rows (the key and
    the evidence; the grouping reads the engine's address codes)."""

    def __getitem__(self, name: str):
        if name in ADDRESS_COLUMNS:
            raise AssertionError(f"whole address column {name} gathered")
        return super().__getitem__(name)


def _probe(src: str, dst: str, dport: int, t: float, observer: str = "sensor-1") -> dict:
    return dict(src=src, dst=dst, dport=dport, sport=45000, proto=17, t=t, state="S0",
                observer=observer, zone="dmz")


def _rows() -> list[dict]:
    """Vertical scans (IPv4 and IPv6 scanners, one scanning itself), horizontal scans on
    two ports, and probes below the thresholds."""
    rows = []
    scanners = [("10.4.0.1", "10.9.0.5"), ("2001:db8::7", "2001:db8::1:5"),
                ("10.4.0.3", "10.4.0.3"), ("192.0.2.200", "10.9.0.6")]
    for a, (src, dst) in enumerate(scanners):
        rows += [_probe(src, dst, 1000 + i, 5.0 + a + i * 0.01, f"sensor-{i % 2}")
                 for i in range(40)]
    for a, (src, port) in enumerate([("10.5.0.1", 161), ("2001:db8::9", 500),
                                     ("10.5.0.2", 161)]):
        rows += [_probe(src, f"10.8.{a}.{i}", port, 6.0 + a + i * 0.02) for i in range(30)]
    rows += [_probe("10.6.0.1", "10.9.0.9", 2000 + i, 7.0 + i) for i in range(3)]
    return rows


def _alerts(detector, cols: dict) -> list[dict]:
    from correlation.alerts import build_alerts

    k = int(detector.window.last_index(int(cols["timestamp"].max())))
    return build_alerts(detector.detect({"flow": cols}, WindowRange(detector.window, k, k)))


@pytest.mark.parametrize("detector_class", [UdpVerticalScanDetector,
                                            UdpHorizontalScanDetector])
def test_udp_scan_reads_addresses_at_the_hit_rows_only(detector_class) -> None:
    detector = detector_class(default_config()["detectors"][detector_class.name])
    batch = flow_batch(_rows())
    keep = detector.select(batch)
    plain = {name: column[keep] for name, column in batch.columns.items()}
    want = _alerts(detector, plain)
    reader = TakeOnlyAddresses(plain, codes=True)
    assert _alerts(detector, reader) == want
    address_takes = [n for name, n in reader.taken if name in ADDRESS_COLUMNS]
    assert address_takes and max(address_takes) < plain["src_ip"].shape[0]


def test_udp_scan_keys_and_evidence_name_the_scanners() -> None:
    """The keys and addresses formatted in batches are those of each finding's rows
    (IPv4 and IPv6 alike; a host scanning itself is named once in related.ip)."""
    config = default_config()["detectors"]
    batch = flow_batch(_rows())
    vertical = UdpVerticalScanDetector(config["udp_scan_vertical"])
    plain = {name: column[vertical.select(batch)] for name, column in batch.columns.items()}
    found = {(a["source"]["ip"], a["destination"]["ip"]): a
             for a in _alerts(vertical, TakeOnlyAddresses(plain, codes=True))}
    assert set(found) == {("10.4.0.1", "10.9.0.5"), ("2001:db8::7", "2001:db8::1:5"),
                          ("10.4.0.3", "10.4.0.3"), ("192.0.2.200", "10.9.0.6")}
    assert found[("10.4.0.3", "10.4.0.3")]["related"]["ip"] == ["10.4.0.3"]
    assert found[("192.0.2.200", "10.9.0.6")]["related"]["ip"] == ["10.9.0.6",
                                                                  "192.0.2.200"]
    horizontal = UdpHorizontalScanDetector(config["udp_scan_horizontal"])
    plain = {name: column[horizontal.select(batch)] for name, column in batch.columns.items()}
    got = {(a["source"]["ip"], a["destination"]["port"])
           for a in _alerts(horizontal, TakeOnlyAddresses(plain, codes=True))}
    assert got == {("10.5.0.1", 161), ("2001:db8::9", 500), ("10.5.0.2", 161)}
