"""Our sensor's flows and Zeek conn records of the same capture fuse to one flow per
connection. Zeek is not installed here, so the conn records are generated from tshark's
conversation table of the capture (`tshark -z conv,tcp -z conv,udp`) and written in Zeek's
TSV conn.log format; the sensor sees the capture itself."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import shared_pcap

from fusion.run import run_ingest
from pipeline.config import load_config

CAPTURE = "benign/zeek__wikipedia.pcap"  # MANIFEST: 34 TCP/UDP conversations

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark missing")


def _tshark_conn_log(pcap, out):
    first = subprocess.run(["tshark", "-r", str(pcap), "-c", "1", "-T", "fields", "-e",
                            "frame.time_epoch"], capture_output=True, text=True, check=True)
    t0 = float(first.stdout.split()[0])
    text = subprocess.run(["tshark", "-r", str(pcap), "-q", "-z", "conv,tcp", "-z", "conv,udp"],
                          capture_output=True, text=True, check=True).stdout
    rows, proto = [], None
    for line in text.splitlines():
        if "TCP Conversations" in line:
            proto = "tcp"
        elif "UDP Conversations" in line:
            proto = "udp"
        elif "<->" in line:
            parts = line.split()
            a, b = parts[0].rsplit(":", 1), parts[2].rsplit(":", 1)
            # columns: <- frames, bytes, "bytes", -> frames, bytes, "bytes", total ..., start, dur
            back_pkts, back_bytes = int(parts[3]), int(parts[4])
            fwd_pkts, fwd_bytes = int(parts[6]), int(parts[7])
            start, dur = float(parts[-2]), float(parts[-1])
            rows.append([f"{t0 + start:.6f}", f"C{len(rows)}", a[0], a[1], b[0], b[1], proto,
                         f"{dur:.6f}", "-", "-", "-", str(fwd_pkts), str(fwd_bytes),
                         str(back_pkts), str(back_bytes)])
    header = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)",
              "#unset_field\t-", "#path\tconn",
              "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tduration"
              "\torig_bytes\tresp_bytes\tconn_state\torig_pkts\torig_ip_bytes\tresp_pkts"
              "\tresp_ip_bytes",
              "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tinterval\tcount\tcount"
              "\tstring\tcount\tcount\tcount\tcount"]
    out.write_text("\n".join(header + ["\t".join(r) for r in rows]) + "\n")
    return len(rows)


def test_sensor_and_zeek_conn_fuse_to_one_flow_per_connection(tmp_path):
    pcap = shared_pcap(CAPTURE)
    conn = tmp_path / "conn.log"
    conversations = _tshark_conn_log(pcap, conn)
    config = load_config()
    sensor_only = run_ingest(config, pcaps=[pcap], correlate=False)
    zeek_only = run_ingest(config, zeek=[conn], correlate=False)
    assert zeek_only.events["flow"] == conversations
    flows = []
    both = run_ingest(config, zeek=[conn], pcaps=[pcap], correlate=False,
                      on_events=lambda b: flows.append(b) if b.kind == "flow" else None)
    dups = both.stats.get("fusion.dedupe.duplicates", 0)
    # every Zeek record repeats a connection the sensor reported: merged, not added
    assert dups == conversations
    assert both.events["flow"] == sensor_only.events["flow"]
    multi = [names for b in flows for names in b.fusion.observers.values()]
    assert len(multi) == conversations
    assert all(sorted(names) == sorted([config["sensor"]["id"], "zeek"]) for names in multi)
