"""The benchmark's generated mix (bench/gen_capture.py) is real protocol traffic: what the
sensor reads from it equals tshark's reading (DNS names, HTTP requests, TLS SNI, JA3 and the
leaf certificate's SHA1), and it is varied enough that a per-batch memo of names cannot make
the benchmark look better than traffic with many names would."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import load_config
from sensors.pcap_reader import CaptureReader
from sensors.sensor import Sensor

# the repository root, not bench/ itself: bench/elasticsearch.py would shadow the client
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import gen_capture  # noqa: E402


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mix") / "mix.pcap"
    gen_capture.write_mixed(path, 6000)
    return path


@pytest.fixture(scope="module")
def events(mix) -> dict[str, list[dict]]:
    sensor = Sensor(load_config(None)["sensor"])
    out: dict[str, list[dict]] = {}

    def keep(batches):
        for batch in batches:
            cols = batch.columns
            out.setdefault(batch.kind, []).extend(
                {k: cols[k][i] for k in cols} for i in range(len(batch)))

    with CaptureReader(mix) as reader:
        for packets in reader.batches():
            keep(sensor.process(packets))
    for piece in sensor.flush_chunks():
        keep(piece)
    return out


def tshark(path: Path, display_filter: str, fields: list[str]) -> list[list[str]]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    cmd = ["tshark", "-n", "-r", str(path), "-Y", display_filter, "-T", "fields"]
    for name in fields:
        cmd += ["-e", name]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in text.splitlines()]


def test_dns_names_match_tshark(mix, events):
    ours = Counter(str(e["qname"]) for e in events["dns"])
    theirs = Counter(row[0] for row in tshark(mix, "dns", ["dns.qry.name"]))
    assert ours == theirs


def test_http_requests_match_tshark(mix, events):
    ours = Counter((str(e["host"]), str(e["method"]), str(e["uri"])) for e in events["http"])
    theirs = Counter(tuple(row) for row in tshark(
        mix, "http.request", ["http.host", "http.request.method", "http.request.uri"]))
    assert ours == theirs


def test_tls_sni_ja3_and_certificate_match_tshark(mix, events):
    ours = Counter((str(e["server_name"]), str(e["ja3"])) for e in events["tls"])
    theirs = Counter(tuple(row) for row in tshark(
        mix, "tls.handshake.type == 1",
        ["tls.handshake.extensions_server_name", "tls.handshake.ja3"]))
    assert ours == theirs
    leaf_sha1 = Counter(hashlib.sha1(bytes.fromhex(row[0].split(",")[0])).hexdigest().upper()
                        for row in tshark(mix, "tls.handshake.type == 11",
                                          ["tls.handshake.certificate"]))
    assert Counter(str(e["cert_sha1"]) for e in events["tls"]) == leaf_sha1


def test_mix_is_varied():
    # names per kind in the templates, independent of the capture size
    kinds = Counter(name.rstrip("0123456789") for name in gen_capture._templates())
    assert kinds["dns"] >= 500 and kinds["tls"] >= 16 and kinds["http"] >= 12
    lookups = gen_capture._dns_lookups()
    assert len({name for name, *_ in lookups}) == len(lookups)
    assert {qtype for _, qtype, _, _ in lookups} == {"A", "AAAA"}
    assert any(rcode == 3 for _, _, rcode, _ in lookups)
    assert any(kind == "CNAME" for *_, answers in lookups for _, kind, _, _ in answers)
