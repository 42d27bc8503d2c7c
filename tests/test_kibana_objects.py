"""deploy/kibana/cirt-sa.ndjson: a valid Kibana 8.x saved-objects file whose panels only use
fields our index templates map, and `cirt-sa kibana import` sending Kibana's import API call
to a real HTTP server on 127.0.0.1 (written here: it records the request and answers as
Kibana does)."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO

from correlation.es_setup import (
    _merged_mappings,
    component_templates,
    index_templates,
)
from pipeline.cli import main

KIBANA_DIR = REPO / "deploy" / "kibana"
NDJSON = KIBANA_DIR / "cirt-sa.ndjson"
KNOWN_TYPES = {"index-pattern", "lens", "dashboard", "visualization", "search"}


def objects() -> list[dict]:
    return [json.loads(line) for line in NDJSON.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def by_id() -> dict[tuple[str, str], dict]:
    return {(o["type"], o["id"]): o for o in objects()}


def mapped_fields(properties: dict, prefix: str = "") -> dict[str, str]:
    """Flat {dotted path: type} of a mappings `properties` tree (incl. multi-fields)."""
    out: dict[str, str] = {}
    for name, spec in properties.items():
        path = f"{prefix}{name}"
        if "type" in spec:
            out[path] = spec["type"]
        for sub, sub_spec in spec.get("fields", {}).items():
            out[f"{path}.{sub}"] = sub_spec["type"]
        out.update(mapped_fields(spec.get("properties", {}), f"{path}."))
    return out


def fields_for_pattern(title: str) -> dict[str, str]:
    """Fields mapped by every cirt-sa index template an index of the data view can match.
    A data view title may list several patterns (comma-separated). For a pattern no
    template of ours matches (sensor health: written by another component), only the
    shared ECS component every cirt-sa template has is assumed."""
    fields: dict[str, str] = {}
    matched = False
    for pattern in title.split(","):
        for body in index_templates(ilm=False).values():
            # A data view pattern and a template pattern overlap when one matches the other.
            if any(fnmatch.fnmatch(t.replace("*", "x"), pattern) or
                   fnmatch.fnmatch(pattern.replace("*", "x"), t)
                   for t in body["index_patterns"]):
                matched = True
                fields.update(mapped_fields(_merged_mappings(body["composed_of"])["properties"]))
    if not matched:
        shared = component_templates()["cirtsa-ecs@mappings"]["template"]["mappings"]
        fields.update(mapped_fields(shared["properties"]))
    return fields


def kql_fields(query: str) -> set[str]:
    return set(re.findall(r"([A-Za-z@_][\w.@]*)\s*:", query))


def test_file_is_current_with_its_generator():
    spec = importlib.util.spec_from_file_location("kibana_generate", KIBANA_DIR / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert NDJSON.read_text(encoding="utf-8") == module.render(), \
        "run python deploy/kibana/generate.py"


def test_every_object_is_a_saved_object_with_unique_id():
    objs = objects()
    assert objs
    seen = set()
    for obj in objs:
        assert {"type", "id", "attributes"} <= obj.keys(), obj
        assert obj["type"] in KNOWN_TYPES
        assert isinstance(obj["attributes"], dict) and obj["attributes"].get("title")
        assert isinstance(obj.get("references", []), list)
        assert (obj["type"], obj["id"]) not in seen, f"duplicate {obj['type']}/{obj['id']}"
        seen.add((obj["type"], obj["id"]))
    types = {o["type"] for o in objs}
    assert {"index-pattern", "lens", "dashboard"} <= types


def test_data_views_cover_alerts_incidents_and_events():
    titles = {o["attributes"]["title"]: o for o in objects() if o["type"] == "index-pattern"}
    for pattern in ("logs-cirtsa.alerts-*", "logs-cirtsa.incidents-*", "logs-cirtsa.*"):
        assert pattern in titles
        assert titles[pattern]["attributes"]["timeFieldName"] == "@timestamp"
    # Each data view matches at least the index its name promises.
    assert fnmatch.fnmatch("logs-cirtsa.alerts-v1", "logs-cirtsa.alerts-*")
    assert fnmatch.fnmatch("logs-cirtsa.flow-default", "logs-cirtsa.*")


def test_every_reference_resolves_within_the_file():
    index = by_id()
    for obj in objects():
        for ref in obj.get("references", []):
            assert {"type", "id", "name"} <= ref.keys(), ref
            assert (ref["type"], ref["id"]) in index, \
                f"{obj['type']}/{obj['id']} references missing {ref['type']}/{ref['id']}"


def test_lens_layers_reference_their_data_view_and_columns_are_consistent():
    for obj in objects():
        if obj["type"] != "lens":
            continue
        state = obj["attributes"]["state"]
        layers = state["datasourceStates"]["formBased"]["layers"]
        ref_names = {r["name"] for r in obj["references"]}
        for layer_id, layer in layers.items():
            assert f"indexpattern-datasource-layer-{layer_id}" in ref_names
            assert set(layer["columnOrder"]) == set(layer["columns"])
            for column in layer["columns"].values():
                order = column.get("params", {}).get("orderBy", {})
                if order.get("type") == "column":
                    assert order["columnId"] in layer["columns"]
        # Every accessor the visualization names is a column of the layer.
        vis = json.dumps(state["visualization"])
        columns = {c for layer in layers.values() for c in layer["columns"]}
        for accessor in re.findall(
                r'"(?:xAccessor|splitAccessor|metricAccessor|columnId)": "([^"]+)"', vis):
            assert accessor in columns, f"{obj['id']}: accessor {accessor} is not a column"
        for key in ("accessors", "primaryGroups", "metrics"):
            for accessor in re.findall(rf'"{key}": \[([^\]]*)\]', vis):
                for name in re.findall(r'"([^"]+)"', accessor):
                    assert name in columns, f"{obj['id']}: {key} {name} is not a column"


def test_every_field_a_panel_uses_is_mapped_in_our_templates():
    index = by_id()
    checked = 0
    for obj in objects():
        if obj["type"] != "lens":
            continue
        view = index[("index-pattern", obj["references"][0]["id"])]
        fields = fields_for_pattern(view["attributes"]["title"])
        state = obj["attributes"]["state"]
        used = set(kql_fields(state["query"]["query"]))
        for layer in state["datasourceStates"]["formBased"]["layers"].values():
            for column in layer["columns"].values():
                if column.get("sourceField") not in (None, "___records___"):
                    used.add(column["sourceField"])
                if column.get("params", {}).get("sortField"):
                    used.add(column["params"]["sortField"])
        for field in used:
            assert field in fields, f"{obj['id']}: {field} is not mapped for " \
                                    f"{view['attributes']['title']}"
            checked += 1
        # Bucket columns must be aggregatable types (no text).
        for layer in state["datasourceStates"]["formBased"]["layers"].values():
            for column in layer["columns"].values():
                if column.get("operationType") == "terms":
                    assert fields[column["sourceField"]] in ("keyword", "ip", "long"), column
    assert checked >= 15


def test_dashboard_panels_match_references_and_fit_the_grid():
    dash = next(o for o in objects() if o["type"] == "dashboard")
    panels = json.loads(dash["attributes"]["panelsJSON"])
    refs = {r["name"]: r for r in dash["references"]}
    assert len(panels) >= 6
    for panel in panels:
        assert panel["panelRefName"] in refs
        assert refs[panel["panelRefName"]]["type"] == panel["type"]
        grid = panel["gridData"]
        assert grid["i"] == panel["panelIndex"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 48 and grid["h"] > 0
    json.loads(dash["attributes"]["optionsJSON"])
    json.loads(dash["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
    titles = {by_id()[("lens", refs[p["panelRefName"]]["id"])]["attributes"]["title"]
              for p in panels}
    for needed in ("Alerts over time by rule", "Top attackers", "MITRE ATT&CK techniques",
                   "Sensor health reports per sensor"):
        assert needed in titles


def test_open_incidents_panel_excludes_closed_statuses():
    from correlation.lifecycle import CLOSING, OPEN_STATUSES

    panel = by_id()[("lens", "cirtsa-lens-open-incidents")]
    query = panel["attributes"]["state"]["query"]["query"]
    assert query.startswith("not ")
    for status in CLOSING:
        assert f'"{status}"' in query
    for status in OPEN_STATUSES:
        assert status not in query



def test_alert_panels_count_standing_alerts_only():
    """A withdrawn alert (correlation/engine.py: its window's whole data no longer supports
    it) stays in the index for the record; the panels count detections that stand, and
    the open-incident panels leave out an incident whose every alert was withdrawn."""
    lenses = [o for (kind, _), o in by_id().items() if kind == "lens"]
    on_alerts = [o for o in lenses
                 if any(r["id"] == "cirtsa-alerts" for r in o["references"])]
    assert len(on_alerts) >= 4
    for lens_object in on_alerts:
        query = lens_object["attributes"]["state"]["query"]["query"]
        assert "not cirtsa.alert.withdrawn : true" in query, lens_object["id"]
    for lens_id in ("cirtsa-lens-open-incidents", "cirtsa-lens-open-incidents-count"):
        query = by_id()[("lens", lens_id)]["attributes"]["state"]["query"]["query"]
        assert "cirtsa.incident.alert_count > 0" in query

# --- `cirt-sa kibana import` against a real HTTP server -----------------------------------


class FakeKibana(ThreadingHTTPServer):
    """Records each request; answers like Kibana's import API (or with `status`)."""

    def __init__(self, status: int = 200, answer: dict | None = None) -> None:
        self.requests: list[dict] = []
        self.status = status
        self.answer = answer
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers),
                                     "body": body})
        if self.server.status != 200:
            payload = {"statusCode": self.server.status, "error": "Bad Request",
                       "message": "Request must contain a kbn-xsrf header."}
        else:
            payload = self.server.answer or _import_answer(body, self.headers["Content-Type"])
        data = json.dumps(payload).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _file_part(body: bytes, content_type: str):
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return [p for p in message.iter_parts() if p.get_param("name", header="content-disposition")
            == "file"]


def _import_answer(body: bytes, content_type: str) -> dict:
    parts = _file_part(body, content_type)
    lines = parts[0].get_payload(decode=True).decode().splitlines() if parts else []
    return {"success": bool(lines), "successCount": len(lines), "errors": []}


@pytest.fixture
def kibana():
    server = FakeKibana()
    yield server
    server.shutdown()
    server.server_close()


def test_import_posts_the_file_to_the_import_api(kibana, monkeypatch, capsys):
    monkeypatch.delenv("CIRTSA_KIBANA_API_KEY", raising=False)
    monkeypatch.delenv("CIRTSA_ES_API_KEY", raising=False)
    monkeypatch.setenv("CIRTSA_ES_USER", "elastic")
    monkeypatch.setenv("CIRTSA_ES_PASSWORD", "s3cret")
    code = main(["kibana", "import", "--url", kibana.url])
    assert code == 0
    assert len(kibana.requests) == 1
    req = kibana.requests[0]
    assert req["path"] == "/api/saved_objects/_import?overwrite=true"
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["kbn-xsrf"]
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    assert headers["authorization"].startswith("Basic ")
    parts = _file_part(req["body"], headers["content-type"])
    assert len(parts) == 1
    assert parts[0].get_filename() == "cirt-sa.ndjson"
    assert parts[0].get_payload(decode=True) == NDJSON.read_bytes()
    out = capsys.readouterr().out
    assert f"imported {len(objects())} saved object(s)" in out
    assert "s3cret" not in out


def test_import_into_a_space_with_an_api_key(kibana, monkeypatch, tmp_path):
    monkeypatch.setenv("CIRTSA_KIBANA_API_KEY", "a2V5OnNlY3JldA==")
    objects_file = tmp_path / "one.ndjson"
    objects_file.write_text(NDJSON.read_text().splitlines()[0] + "\n")
    code = main(["kibana", "import", "--url", kibana.url + "/", "--space", "cirt",
                 "--file", str(objects_file), "--quiet"])
    assert code == 0
    req = kibana.requests[0]
    assert req["path"] == "/s/cirt/api/saved_objects/_import?overwrite=true"
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["authorization"] == "ApiKey a2V5OnNlY3JldA=="


def test_import_errors_reported_by_kibana_give_exit_4(monkeypatch, capsys):
    monkeypatch.delenv("CIRTSA_KIBANA_API_KEY", raising=False)
    server = FakeKibana(answer={"success": False, "successCount": 0, "errors": [
        {"id": "cirtsa-overview", "type": "dashboard",
         "error": {"type": "missing_references", "references": [{"type": "lens", "id": "x"}]}}]})
    try:
        code = main(["kibana", "import", "--url", server.url])
    finally:
        server.shutdown()
        server.server_close()
    assert code == 4
    err = capsys.readouterr().err
    assert "missing_references" in err and "cirtsa-overview" in err


def test_import_http_error_and_unreachable_kibana_give_exit_4(capsys):
    server = FakeKibana(status=400)
    try:
        assert main(["kibana", "import", "--url", server.url]) == 4
    finally:
        server.shutdown()
        server.server_close()
    assert "HTTP 400" in capsys.readouterr().err
    port = server.server_address[1]  # closed now: nothing listens
    assert main(["kibana", "import", "--url", f"http://127.0.0.1:{port}"]) == 4
    assert "kibana unreachable" in capsys.readouterr().err


def test_import_without_url_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delenv("CIRTSA_KIBANA_URL", raising=False)
    assert main(["kibana", "import"]) == 2
    assert "Kibana URL" in capsys.readouterr().err


def test_missing_objects_file_is_a_usage_error(kibana, tmp_path):
    assert main(["kibana", "import", "--url", kibana.url,
                 "--file", str(tmp_path / "nope.ndjson")]) == 2
    assert kibana.requests == []


def test_generated_path_is_the_default_file():
    from pipeline.commands.es import KIBANA_OBJECTS

    assert Path(KIBANA_OBJECTS) == NDJSON
