"""The whole sensor path under NUMBA_BOUNDSCHECK: numba checks no index by default, so a
kernel reading or writing past an array on hostile traffic would give wrong events or
crash the sensor instead of raising. One fresh process compiles every kernel with the
checks on (its own numba cache dir: the unchecked cached machine code is not reused) and
runs CaptureReader + Sensor.process + flush (default config) over the malformed captures,
captures of every protocol, every cut of valid frames of every layer, and hypothesis-made
hostile captures (tests/hostile_traffic.py). Any exception or signal is a finding."""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import pytest
from bounds_check import run_checked
from conftest import PCAPS, REPO

# MANIFEST captures of every protocol, link type and file format the sensor reads
MANIFEST = [
    "benign/zeek__http_get.pcap", "benign/zeek__tls1.2.pcap", "benign/zeek__dns53.pcap",
    "benign/ndpi__dns.pcap", "benign/zeek__ssh_single-conn.pcap", "benign/zeek__smtp.pcap",
    "benign/zeek__wikipedia.pcap", "benign/tcpreplay__test.pcap",
    "benign/zeek__var-services-std-ports.pcap", "c2_beaconing/zeek__merlinc2_quic.pcapng",
    "c2_beaconing/ndpi__emotet.pcap", "dns_tunneling/ndpi__dns2tcp_tunnel.pcap",
    "dns_tunneling/ndpi__dns-tunnel-iodine.pcap", "brute_force/ndpi__ftp_failed.pcap",
    "brute_force/zeek__psql-login-fail.pcap", "icmp_sweep/slips__test12-icmp-portscan.pcap",
    "arp_spoofing/chrissanders__arp_resolution.pcapng", "web_attacks/zeek__heartbleed-success.pcap",
    "web_attacks/ndpi__log4j-webapp-exploit.pcap", "known_bad_ioc/ndpi__malware.pcap",
    "port_scan/ndpi__tcp_scan.pcapng", "exfiltration/ndpi__icmp-tunnel.pcap",
    "large/ndpi__1kxun.pcap", "pcapng/pcapng-testgen__le_test001.pcapng",
    "pcapng/pcapng-testgen__be_test001.pcapng", "pcapng/zeek__pcapng-multi-interface.pcapng",
]
FRAGMENTS = REPO / "tests" / "data" / "defrag" / "linux-fragmented-dns.pcapng"
EXAMPLES = 600  # hypothesis-made hostile captures (~10 s: compiling is most of the run)

SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import numpy as np, pytest
    import conftest  # noqa: F401 (the gate profile: the same draws on every run)
    import hostile_traffic
    from bounds_check import require_checks_on
    from sensors.http_kernel import equal_bytes

    require_checks_on()  # the check is on: an out-of-range read raises
    with pytest.raises(IndexError):  # and on the intrinsics' raw loads (check_span)
        equal_bytes(np.zeros(8, np.uint8), 1, np.zeros(8, np.uint8), 0, 8)
    start = time.monotonic()
    examples, *captures = sys.argv[1:]
    tally = hostile_traffic.run_all([Path(p) for p in captures], Path("."), int(examples))
    print(json.dumps({"reached": tally.reached(), "captures": tally.captures,
                      "packets": tally.packets, "seconds": round(time.monotonic() - start),
                      "phases": {k: round(v) for k, v in tally.seconds.items()}}))
""")


def test_sensor_stays_in_bounds_on_hostile_traffic(tmp_path: Path) -> None:
    if not PCAPS.is_dir():
        pytest.skip(f"{PCAPS} not available (the shared captures beside the repo)")
    captures = sorted(str(p) for p in (PCAPS / "malformed").iterdir() if p.is_file())
    captures += [str(PCAPS / name) for name in MANIFEST] + [str(FRAGMENTS)]
    done = run_checked(SCRIPT, [str(EXAMPLES), *captures], tmp_path, timeout_s=1200)
    # a crash in a kernel is a signal (faulthandler prints where), not an exception
    died = f"killed by {signal.Signals(-done.returncode).name}: " if done.returncode < 0 else ""
    assert done.returncode == 0, died + done.stderr[-4000:]
    # the kernels were compiled in the private cache dir (not loaded from __pycache__)
    assert any((tmp_path / "numba").rglob("*.nbi"))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # the inputs reached every deep path: events of each analyzer, tunnels, reassembled
    # datagrams, TCP streams (a run that reaches none of them tests nothing)
    reached = result["reached"]
    assert all(count > 0 for count in reached.values()), reached
    print(result)
