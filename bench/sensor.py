"""Sensor benchmark: pcap -> flow + protocol events on one core, against anchors.

Measured in the same run, each pinned to CPU 0 (os.sched_setaffinity / taskset -c 0),
median of --runs runs:
- cirt-sa: sensors.pcap_reader.CaptureReader -> sensors.sensor.Sensor (decode, flow table
  and every analyzer enabled in the configuration), all events materialized as columns;
  in a child process so its peak RSS is its own;
- argus:  `argus -r F -w out` then `ra -r out` (flow records, like ours);
- tshark: `tshark -r F -T fields` with frame time, ip src/dst, tcp/udp ports, dns.qry.name,
          http.host, tls SNI;
- dpkt:   a decode loop Ethernet -> IP -> TCP/UDP building a flow dict (5-tuple -> packets,
          bytes), the classic "Python pcap script";
- scapy:  PcapReader iteration, on the first --scapy-slice packets only, extrapolated to the
          whole file (marked "~" in the table).
Inputs: the largest captures in ../shared/pcaps/large/ and a generated 2M-packet mixed
capture (bench/gen_capture.py). Then the memory check: a generated 10M-packet
spoofed-source SYN flood through the same Sensor, peak RSS reported (target < 500 MB).

Page cache: before its runs, every capture is put in the state of a capture read from
storage (settle_page_cache: flushed, dropped from the page cache, read once), the same for
every tool. Why: the reader maps the file, and what mapping costs depends on how the pages
came into the cache. Pages a program wrote in small pieces (the generator's, or a capture
just written by a capture tool) sit in small folios: on the 2M mix, mapping and releasing
them cost the sensor ~60 ms of its ~0.55 s. Pages read from storage sit in large folios
(2 MB on Linux 6.18 / ext4 here), which the kernel maps with one fault each (~1 ms). The
read() loops of the anchors barely notice the difference. `--page-cache as-is` skips
this, to measure a capture in whatever state it is.

Mirrored traffic (opt-in, not part of the default run): `--mirror vxlan` (repeatable:
vxlan, erspan, gre, raw, sll2) also runs the sensor alone on the mix rewritten with every
packet inside that tunnel (gen_capture.wrap_records; or as a raw-IP / Linux cooked capture)
and prints its pkt/s next to the plain mix's.

Usage: python bench/sensor.py [--runs 3] [--packets 2000000] [--flood 10000000]
                              [--page-cache read|as-is] [--work DIR] [--write-doc]
                              [--mirror vxlan] [--mirror erspan]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rss import peak_rss_mb  # bench/rss.py (this script's directory is on sys.path)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LARGE = REPO.parent / "shared" / "pcaps" / "large"
TSHARK_FIELDS = ["frame.time_epoch", "ip.src", "ip.dst", "tcp.srcport", "tcp.dstport",
                 "udp.srcport", "udp.dstport", "dns.qry.name", "http.host",
                 "tls.handshake.extensions_server_name"]
TARGETS = {"pps": 1_000_000, "argus": 10, "dpkt": 30, "tshark": 50, "flood_rss_mb": 500}


def pin() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})


# --- measurements ------------------------------------------------------------------------

WARM_BATCH_PACKETS = 97  # see worker


def worker(path: str, config_path: str | None, warm: str = "") -> dict:
    """Child process: one timed pass of the whole Sensor over `path`, after an untimed-apart
    warm-up pass over `warm` (a small capture: loads or compiles the numba kernels once;
    its CPU time is reported as warmup_cpu_s). The warm capture is read twice: at the
    configured batch size (one batch: the sensor freezes the start-up heap after its
    first batch, see pipeline/heap.py, so this one must load most kernels), then in
    batches of WARM_BATCH_PACKETS, for the kernels that only run on a later batch (held
    and released flows, replayed handshakes), which were loaded inside the timed pass
    (~14 ms per process on this machine). A warm-up in small batches alone froze the heap
    after 97 packets, before most kernels were loaded, and the collector's full passes
    over them made the timed pass slower (echo-connections 10.2 -> 12.1 ms)."""
    pin()
    sys.path.insert(0, str(REPO))
    from pipeline.config import load_config

    config = load_config(config_path)["sensor"]
    warmup = 0.0
    if warm:
        cpu_start = time.process_time()
        _sensor_pass(warm, config)
        _sensor_pass(warm, config, WARM_BATCH_PACKETS)
        warmup = time.process_time() - cpu_start
    result = _sensor_pass(path, config)
    result["warmup_cpu_s"] = warmup
    result["maxrss_mb"] = peak_rss_mb()
    return result


def _sensor_pass(path: str, config: dict, batch_packets: int | None = None) -> dict:
    from sensors.pcap_reader import CaptureReader
    from sensors.sensor import Sensor

    sensor = Sensor(config)
    events: dict[str, int] = {}
    start = time.perf_counter()
    cpu_start = time.process_time()  # also CPU time: wall time suffers on a shared machine
    if batch_packets is None:
        batch_packets = int(config.get("batch_packets", 65536))
    with CaptureReader(path, batch_packets=batch_packets) as reader:
        for batch in reader.batches():
            for out in sensor.process(batch):
                events[out.kind] = events.get(out.kind, 0) + len(out)
        packets = reader.packets
    for piece in sensor.flush_chunks():  # as capture_events hands them on
        for out in piece:
            events[out.kind] = events.get(out.kind, 0) + len(out)
    seconds = time.perf_counter() - start
    return {"packets": packets, "seconds": seconds, "events": events,
            "cpu_seconds": time.process_time() - cpu_start,
            "flows_evicted": int(sensor.flow_table.stats.get("flows_evicted", 0))}


WARM: Path | None = None  # the warm-up capture main() generates


def run_worker(path: Path, config_path: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(path), "--warm", str(WARM or "")]
    if config_path:
        cmd += ["--config", config_path]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed(cmd: list[str], cwd: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, cwd=cwd)
    return time.perf_counter() - start


def argus_seconds(path: Path, work: Path) -> float:
    out = work / "argus.out"
    out.unlink(missing_ok=True)
    return timed(["argus", "-r", str(path), "-w", str(out)]) + timed(["ra", "-r", str(out)])


def tshark_seconds(path: Path) -> float:
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields"]
    for name in TSHARK_FIELDS:
        cmd += ["-e", name]
    return timed(cmd)


def dpkt_seconds(path: Path) -> float:
    import dpkt

    start = time.perf_counter()
    flows: dict = {}
    with open(path, "rb") as fh:
        for _ts, buf in dpkt.pcap.Reader(fh):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                continue
            l4 = ip.data
            ports = (l4.sport, l4.dport) if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP) else (0, 0)
            key = (ip.src, ip.dst, ip.p, *ports)
            entry = flows.get(key)
            if entry is None:
                flows[key] = [1, len(buf)]
            else:
                entry[0] += 1
                entry[1] += len(buf)
    return time.perf_counter() - start


def scapy_seconds(path: Path, limit: int) -> tuple[float, int]:
    """Seconds for the first `limit` packets and how many there were (fully dissected:
    scapy.all registers the Ethernet/IP layers; without it frames stay Raw)."""
    from scapy.all import PcapReader

    start = time.perf_counter()
    count = 0
    with PcapReader(str(path)) as reader:
        for _packet in reader:
            count += 1
            if count >= limit:
                break
    return time.perf_counter() - start, count


def settle_page_cache(path: Path, chunk: int = 1 << 20) -> None:
    """Leave `path` in the page cache as a capture read from storage: its written pages
    flushed (fsync; a dirty page cannot be dropped), dropped (POSIX_FADV_DONTNEED), then the
    file read once from start to end, so the kernel's readahead brings it back in the folio
    sizes it picks for a read. A page another process keeps mapped stays as it is; where
    fadvise is missing the cache is left alone."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            os.fsync(fd)
        except OSError:
            pass  # e.g. a read-only file system: nothing of ours is dirty there
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while os.read(fd, chunk):
            pass
    finally:
        os.close(fd)


def page_map_ms(path: Path) -> float:
    """Milliseconds to map every page of `path` in (one read per 4 KB page of a read-only
    mapping, as the sensor's reader maps a capture) and release them again: a probe of the
    page cache's state that the table prints next to each capture (small folios cost one
    fault per fault-around window, 2 MB folios one fault each)."""
    import mmap

    import numpy as np

    with open(path, "rb") as fh:
        mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mapping, dtype=np.uint8)
    try:
        start = time.perf_counter()
        int(view[::mmap.PAGESIZE].sum())
        mapping.madvise(mmap.MADV_DONTNEED)
        return (time.perf_counter() - start) * 1000
    finally:
        del view
        mapping.close()


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- the run -------------------------------------------------------------------------------

def bench_file(path: Path, runs: int, work: Path, scapy_slice: int) -> dict:
    map_ms = median([page_map_ms(path) for _ in range(3)])
    results = [run_worker(path) for _ in range(runs)]
    packets = results[0]["packets"]
    row = {"file": path.name, "packets": packets, "events": results[0]["events"],
           "page_map_ms": map_ms, "file_mb": path.stat().st_size / 1e6,
           "cirtsa_s": median([r["seconds"] for r in results]),
           "peak_rss_mb": max(r["maxrss_mb"] for r in results),
           "cirtsa_cpu_s": median([r["cpu_seconds"] for r in results]),
           "warmup_cpu_s": median([r["warmup_cpu_s"] for r in results])}
    row["cirtsa_pps"] = packets / row["cirtsa_s"]
    if shutil.which("argus") and shutil.which("ra"):
        row["argus_s"] = median([argus_seconds(path, work) for _ in range(runs)])
    if shutil.which("tshark"):
        row["tshark_s"] = median([tshark_seconds(path) for _ in range(runs)])
    row["dpkt_s"] = median([dpkt_seconds(path) for _ in range(runs)])
    scapy = [scapy_seconds(path, scapy_slice) for _ in range(runs)]
    counted = scapy[0][1]
    row["scapy_s"] = median([s for s, _ in scapy]) * packets / max(counted, 1)
    row["scapy_extrapolated"] = counted < packets
    return row


def _anchor(row: dict, name: str) -> str:
    if f"{name}_s" not in row:
        return "n/a"
    pps = row["packets"] / row[f"{name}_s"]
    mark = "~" if name == "scapy" and row.get("scapy_extrapolated") else ""
    return f"{mark}{pps:,.0f} ({row[f'{name}_s'] / row['cirtsa_s']:.1f}x)"


def table(rows: list[dict]) -> str:
    head = ("| capture | packets | cirt-sa pkt/s | cirt-sa pkt/s of CPU time | peak RSS MB | "
            "argus pkt/s (x) | tshark pkt/s (x) | dpkt pkt/s (x) | scapy pkt/s (x) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        cells = " | ".join(_anchor(r, name) for name in ("argus", "tshark", "dpkt", "scapy"))
        lines.append(f"| {r['file']} | {r['packets']:,} | {r['cirtsa_pps']:,.0f} | "
                     f"{r['packets'] / r['cirtsa_cpu_s']:,.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cirt-sa sensor benchmark")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help="sensor config YAML laid over the defaults")
    parser.add_argument("--warm", default="", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--packets", type=int, default=2_000_000, help="generated mixed capture")
    parser.add_argument("--flood", type=int, default=10_000_000, help="SYN flood packets (0: skip)")
    parser.add_argument("--flood-dport", type=int, default=443)
    parser.add_argument("--large", type=int, default=2, help="how many of the largest captures")
    parser.add_argument("--scapy-slice", type=int, default=100_000)
    parser.add_argument("--page-cache", choices=("read", "as-is"), default="read",
                        help="read: settle each capture as read from storage before its runs "
                             "(see the module docstring); as-is: leave the page cache alone")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "cirtsa-bench"))
    parser.add_argument("--write-doc", action="store_true",
                        help="write the results into docs/performance.md (## Sensor)")
    parser.add_argument("--mirror", action="append", default=[],
                        choices=("vxlan", "erspan", "gre", "raw", "sll2"),
                        help="also run the sensor on the mix mirrored in this tunnel (every "
                             "packet tunnelled) or as this link type; repeatable")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.config, args.warm)))
        return 0
    pin()
    sys.path.insert(0, str(HERE))
    import gen_capture

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    inputs = sorted(LARGE.glob("*.pcap*"), key=lambda p: p.stat().st_size,
                    reverse=True)[:args.large] if LARGE.is_dir() else []
    global WARM
    WARM = work / f"warm-v{gen_capture.MIX_VERSION}-20000.pcap"
    if not WARM.exists():
        gen_capture.write_mixed(WARM, 20000)
    mixed = work / f"mixed-v{gen_capture.MIX_VERSION}-{args.packets}.pcap"
    if not mixed.exists():
        gen_capture.write_mixed(mixed, args.packets)
    inputs.append(mixed)
    rows = []
    for path in inputs:
        print(f"... {path.name}", file=sys.stderr)
        if args.page_cache == "read":
            settle_page_cache(path)
        rows.append(bench_file(path, args.runs, work, args.scapy_slice))
    flood = None
    if args.flood:
        flood_path = work / f"flood-{args.flood}-{args.flood_dport}.pcap"
        if not flood_path.exists():
            gen_capture.write_flood(flood_path, args.flood, dport=args.flood_dport)
        print(f"... {flood_path.name}", file=sys.stderr)
        if args.page_cache == "read":
            settle_page_cache(flood_path)
        flood = run_worker(flood_path)
        flood["file"] = flood_path.name
    report = format_report(rows, flood, args)
    if args.mirror:
        report += "\n\n" + mirrored_report(mixed, rows[-1], args, work, gen_capture)
    print(report)
    if args.write_doc:
        write_doc(report)
    return 0


def format_report(rows: list[dict], flood: dict | None, args: argparse.Namespace) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?") if os.path.exists("/proc/cpuinfo") else "?"
    cache = ("each capture flushed, dropped from the page cache and read once before its runs "
             "(as read from storage)" if args.page_cache == "read"
             else "captures taken as they were in the page cache")
    parts = [f"Measured {time.strftime('%Y-%m-%d')} on {cpu}, one core (CPU 0), "
             f"median of {args.runs} runs; ratios = anchor time / cirt-sa time "
             f"(\"~\": extrapolated from the first {args.scapy_slice:,} packets); "
             f"page cache: {cache}.", "", table(rows), ""]
    for r in rows:
        events = ", ".join(f"{n:,} {k}" for k, n in sorted(r["events"].items()))
        parts.append(f"- {r['file']}: {events}; warm-up before timing (kernel load/compile, "
                     f"20k-packet capture, then again in batches of {WARM_BATCH_PACKETS}) "
                     f"{r['warmup_cpu_s']:.2f} s CPU, not included; page cache probe "
                     f"(map in + release every page of its {r['file_mb']:,.0f} MB): "
                     f"{r['page_map_ms']:.1f} ms")
    if flood:
        parts += ["", f"SYN flood ({flood['file']}): {flood['packets']:,} packets, "
                  f"{flood['packets'] / flood['seconds']:,.0f} pkt/s, "
                  f"{flood['flows_evicted']:,} flows evicted, peak RSS "
                  f"{flood['maxrss_mb']:.0f} MB (target < {TARGETS['flood_rss_mb']} MB)"]
    mixed = rows[-1]
    parts += ["", "Targets (DESIGN.md §7) on the generated mixed capture: "
              f"{mixed['cirtsa_pps']:,.0f} pkt/s (target {TARGETS['pps']:,})"
              + "".join(f"; {name} {mixed[f'{name}_s'] / mixed['cirtsa_s']:.1f}x "
                        f"(target {TARGETS[name]}x)" for name in ("argus", "dpkt", "tshark")
                        if f"{name}_s" in mixed)]
    return "\n".join(parts)


def mirrored_report(mixed: Path, plain: dict, args: argparse.Namespace, work: Path,
                    gen_capture) -> str:
    """The sensor alone (no anchors) on the mix rewritten by gen_capture.wrap_records, next
    to the plain mix of this run."""
    lines = [f"Mirrored mix (the same {plain['packets']:,} packets, every one tunnelled or "
             f"behind another link header; sensor only, median of {args.runs} runs):", "",
             "| capture | cirt-sa pkt/s | pkt/s of CPU time | of the plain mix's (CPU time) |",
             "|---|---|---|---|",
             f"| plain (Ethernet) | {plain['cirtsa_pps']:,.0f} | "
             f"{plain['packets'] / plain['cirtsa_cpu_s']:,.0f} | 100 % |"]
    for wrap in args.mirror:
        path = work / f"{mixed.stem}-{wrap}.pcap"
        if not path.exists():
            gen_capture.write_wrapped(mixed, path, wrap)
        print(f"... {path.name}", file=sys.stderr)
        if args.page_cache == "read":
            settle_page_cache(path)
        results = [run_worker(path) for _ in range(args.runs)]
        packets = results[0]["packets"]
        pps = packets / median([r["seconds"] for r in results])
        cpu_pps = packets / median([r["cpu_seconds"] for r in results])
        plain_cpu_pps = plain["packets"] / plain["cirtsa_cpu_s"]  # (steadier than wall time)
        lines.append(f"| {wrap} | {pps:,.0f} | {cpu_pps:,.0f} | "
                     f"{100 * cpu_pps / plain_cpu_pps:.0f} % |")
    return "\n".join(lines)


def write_doc(report: str) -> None:
    """Replace the body of `## Sensor` in docs/performance.md with the latest figures."""
    doc = REPO / "docs" / "performance.md"
    text = doc.read_text() if doc.exists() else "# Performance\n"
    start_marker, end_marker = "<!-- bench/sensor.py results -->", "<!-- end bench/sensor.py -->"
    block = f"{start_marker}\n{report}\n{end_marker}"
    if start_marker in text and end_marker in text:
        before, rest = text.split(start_marker, 1)
        text = before + block + rest.split(end_marker, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Sensor\n\n" + block + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
