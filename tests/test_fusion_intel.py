"""IOC tagging in fusion (fusion/enrich.py + pipeline/intel.py): events of real captures
(known_bad_ioc/*, MANIFEST; indicator files written from their public ground truth in
tests/data/intel/) and crafted events carry ECS threat.enrichments; benign ones do not."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import assert_ecs, shared_pcap
from event_builders import make_batch

import pipeline.intel as intel_module
from fusion.adapters import EveAdapter
from fusion.enrich import Constituency, Enricher
from fusion.stage import FusionStage, fusion_docs, intel_sources
from pipeline.bus import TOPIC_EVENTS, InMemoryBus
from pipeline.config import load_config
from sensors.sensor import CaptureResult, capture_events

DATA = Path(__file__).parent / "data" / "intel"
CSV = {"path": "sample.csv", "format": "csv", "name": "analyst-csv"}
MISP = {"path": "sample-misp.json", "format": "misp", "name": "misp-ndpi"}
STIX = {"path": "sample-stix.json", "format": "stix", "name": "stix-test"}


def config_with(shared_sources: list[dict] | None = None, **fusion_intel) -> dict:
    """Full default config; `shared_sources` = correlation's intel_match sources (base_dir DATA)."""
    config = load_config()
    config["correlation"]["detectors"]["intel_match"].update(
        sources=shared_sources or [], base_dir=str(DATA))
    config["fusion"]["intel"].update(fusion_intel)
    return config


def fuse(config: dict, batches) -> tuple[FusionStage, list[dict]]:
    bus = InMemoryBus()
    stage = FusionStage(bus, config)
    out = []
    bus.subscribe(TOPIC_EVENTS, out.append)
    for b in batches:
        stage.on_batch(b)
    return stage, [d for b in out for d in fusion_docs(b)]


def capture_batches(name: str, config: dict) -> list:
    path = shared_pcap(name)
    return [b for _, batches in capture_events(path, config["sensor"],
                                               CaptureResult(path=str(path)))
            for b in batches]


def tagged(docs: list[dict]) -> list[tuple[str, str, str, str]]:
    """(event.dataset, matched.field, matched.atomic, indicator.name) of every enrichment."""
    return sorted({(d["event"]["dataset"], e["matched"]["field"], e["matched"]["atomic"],
                    e["indicator"]["name"])
                   for d in docs for e in d.get("threat", {}).get("enrichments", [])})


# --- real captures ---------------------------------------------------------------------------


def test_datasets_capture_dns_and_http_hit_the_stix_domain() -> None:
    # suricata-verify datasets-04-http-dns: DNS query then HTTP Host for example.com
    config = config_with([STIX])
    stage, docs = fuse(config, capture_batches(
        "known_bad_ioc/suricata-verify__datasets-http-dns.pcap", config))
    assert tagged(docs) == [("cirtsa.dns", "dns.question.name", "example.com", "example.com"),
                            ("cirtsa.http", "url.domain", "example.com", "example.com")]
    hit = next(d for d in docs if "threat" in d)
    (e,) = hit["threat"]["enrichments"]
    assert e["indicator"]["type"] == "domain-name"
    assert e["indicator"]["provider"] == "stix-test"
    assert e["indicator"]["url"]["domain"] == "example.com"
    assert stage.stats["intel.events"] == 2
    for d in docs:
        assert_ecs(d)


def test_malware_capture_hits_misp_addresses_domain_and_certificate() -> None:
    # nDPI malware.pcap: the MISP sample lists its C2 address, domain and cert SHA-1
    config = config_with([MISP])
    stage, docs = fuse(config, capture_batches("known_bad_ioc/ndpi__malware.pcap", config))
    hits = tagged(docs)
    fields = {(f, ind) for _, f, _, ind in hits}
    assert ("destination.ip", "193.109.85.123") in fields
    assert ("tls.server.hash.sha1", "30C908A75DAC712C070051204D91DC3CBA7E0A46") in fields
    assert ("dns.question.name", "www.internetbadguys.com") in fields
    n_tagged = sum("threat" in d for d in docs)
    assert stage.stats["intel.events"] == n_tagged > 0
    assert stage.stats["intel.hits"] == sum(len(d["threat"]["enrichments"])
                                            for d in docs if "threat" in d)
    for d in docs:
        assert_ecs(d)


def test_benign_capture_is_not_tagged() -> None:
    config = config_with([CSV, MISP, STIX])
    stage, docs = fuse(config, capture_batches("benign/zeek__http_get.pcap", config))
    assert docs and not any("threat" in d for d in docs)
    assert stage.stats["intel.events"] == 0


# --- crafted events --------------------------------------------------------------------------


def test_csv_ip_cidr_and_parent_domain_hits_and_near_misses() -> None:
    flows = make_batch("flow", [
        {"t": 0, "src": "10.0.0.5", "dst": "8.8.8.8", "dst_port": 53, "transport": 17},
        {"t": 1, "src": "198.51.100.77", "dst": "10.0.0.9", "dst_port": 22},  # CIDR
        {"t": 2, "src": "10.0.0.5", "dst": "8.8.8.9"},                        # near miss
        {"t": 3, "src": "10.0.0.5", "dst": "198.51.101.1"}])                  # outside /24
    dns = make_batch("dns", [
        {"t": 0, "src": "10.0.0.7", "dst": "10.0.0.53", "qname": "a.b.testmyids.com"},
        {"t": 1, "src": "10.0.0.7", "dst": "10.0.0.53", "qname": "nottestmyids.com"},
        {"t": 2, "src": "10.0.0.7", "dst": "10.0.0.53", "qname": "testmyids.com.evil"}])
    stage, docs = fuse(config_with([CSV]), [flows, dns])
    assert [bool(d.get("threat")) for d in docs] == [True, True, False, False,
                                                      True, False, False]
    assert docs[0]["threat"]["enrichments"][0]["indicator"]["ip"] == "8.8.8.8"
    assert docs[0]["threat"]["enrichments"][0]["indicator"]["confidence"] == "High"
    cidr = docs[1]["threat"]["enrichments"][0]
    assert (cidr["matched"]["field"], cidr["matched"]["atomic"]) == ("source.ip",
                                                                     "198.51.100.77")
    assert cidr["indicator"]["name"] == "198.51.100.0/24"
    assert cidr["indicator"]["type"] == "ipv4-addr"
    sub = docs[4]["threat"]["enrichments"][0]
    assert (sub["matched"]["atomic"], sub["indicator"]["name"]) == ("a.b.testmyids.com",
                                                                    "testmyids.com")
    assert stage.stats["intel.events"] == 3
    for d in docs:
        assert_ecs(d)


def test_url_ja3_ja4_and_several_hits_on_one_event() -> None:
    http = make_batch("http", [{"t": 0, "src": "10.0.0.8", "dst": "203.0.113.7",
                                "dst_port": 80, "host": "testmyids.com", "uri": "/?x=1"}])
    tls = make_batch("tls", [{"t": 1, "src": "10.0.0.1", "dst": "192.0.2.1",
                              "ja3": "e7d705a3286e19ea42f587b344ee6865",
                              "ja4": "t13d1516h2_8daaf6152771_02713d6af862"},
                             {"t": 2, "src": "10.0.0.1", "dst": "192.0.2.1",
                              "ja3": "00000000000000000000000000000000"}])
    config = config_with([STIX], indicators=[
        {"type": "ja3", "value": "e7d705a3286e19ea42f587b344ee6865", "description": "tool"},
        {"type": "ja4", "value": "t13d1516h2_8daaf6152771_02713d6af862"}])
    _, docs = fuse(config, [http, tls])
    fields = [sorted(e["matched"]["field"] for e in d.get("threat", {}).get("enrichments", []))
              for d in docs]
    # http: the STIX url (query dropped for the match) and the STIX address 203.0.113.7
    assert fields == [["destination.ip", "url.original"],
                      ["cirtsa.tls.client.ja4", "tls.client.ja3"], []]
    ja3 = next(e for e in docs[1]["threat"]["enrichments"]
               if e["matched"]["field"] == "tls.client.ja3")
    assert ja3["indicator"]["type"] == "software"
    assert ja3["indicator"]["description"] == "tool"
    for d in docs:
        assert_ecs(d)


def test_suricata_eve_records_are_tagged_too() -> None:
    line = orjson.dumps({"timestamp": "2024-07-30T16:00:00.000000+0000", "event_type": "dns",
                         "src_ip": "10.0.0.2", "src_port": 5353, "dest_ip": "10.0.0.53",
                         "dest_port": 53, "proto": "UDP",
                         "dns": {"type": "query", "id": 7, "rrname": "cdn.EXAMPLE.com",
                                 "rrtype": "A"}})
    bus = InMemoryBus()
    stage = FusionStage(bus, config_with([STIX]))
    out = []
    bus.subscribe(TOPIC_EVENTS, out.append)
    stage.on_external(EveAdapter().convert([line]))
    (doc,) = fusion_docs(out[0])
    (e,) = doc["threat"]["enrichments"]
    assert (e["matched"]["atomic"], e["indicator"]["name"]) == ("cdn.example.com",
                                                                "example.com")
    assert_ecs(doc)


# --- configuration and loading ---------------------------------------------------------------


def test_fusion_shares_correlation_set_adds_and_overrides() -> None:
    shared = intel_sources(config_with([CSV]))
    assert [s["path"] for s in shared[0]] == [str(DATA / "sample.csv")]
    added = intel_sources(config_with([CSV], sources=[STIX], indicators=["192.0.2.99"]))
    assert [Path(s["path"]).name for s in added[0]] == ["sample.csv", "sample-stix.json"]
    assert added[1] == ["192.0.2.99"]
    own = intel_sources(config_with([CSV], shared=False, sources=[MISP],
                                    base_dir=str(DATA)))
    assert [Path(s["path"]).name for s in own[0]] == ["sample-misp.json"]
    assert intel_sources(config_with([CSV], enabled=False)) == ([], [])
    # not shared: the CSV address is not tagged any more
    flows = make_batch("flow", [{"t": 0, "src": "10.0.0.5", "dst": "8.8.8.8"}])
    assert tagged(fuse(config_with([CSV]), [flows])[1])
    assert not tagged(fuse(config_with([CSV], shared=False), [flows])[1])


def test_indicators_load_once_per_stage_not_per_batch(monkeypatch) -> None:
    calls = []
    real = intel_module.load_source
    monkeypatch.setattr(intel_module, "load_source",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    config = config_with([CSV, STIX])
    batches = [make_batch("flow", [{"t": i, "src": "10.0.0.5", "dst": "8.8.8.8"}])
               for i in range(5)]
    stage, docs = fuse(config, batches)
    assert len(calls) == 2  # one per source file, at construction
    assert stage.stats["intel.events"] == 5 == sum("threat" in d for d in docs)


def test_given_enricher_gets_the_indicators_and_keeps_constituencies() -> None:
    enricher = Enricher(["10.0.0.0/8"], [Constituency("gov", "government", "Ministry")])
    bus = InMemoryBus()
    stage = FusionStage(bus, config_with([CSV]), enricher=enricher)
    out = []
    bus.subscribe(TOPIC_EVENTS, out.append)
    stage.on_batch(make_batch("flow", [{"t": 0, "src": "10.0.0.5", "dst": "8.8.8.8"}]))
    (doc,) = fusion_docs(out[0])
    assert doc["network"]["direction"] == "outbound"
    assert doc["cirtsa"]["constituency"]["source"]["name"] == "gov"
    assert doc["threat"]["enrichments"][0]["indicator"]["ip"] == "8.8.8.8"
    assert_ecs(doc)


@pytest.mark.parametrize("sources", [[], None])
def test_no_indicators_no_enricher_and_no_threat_fields(sources) -> None:
    stage, docs = fuse(config_with(sources), [make_batch("flow", [
        {"t": 0, "src": "10.0.0.5", "dst": "8.8.8.8"}])])
    assert stage.enricher is None
    assert "threat" not in docs[0] and "direction" not in docs[0].get("network", {})
