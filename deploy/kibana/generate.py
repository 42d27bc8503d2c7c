"""Generate deploy/kibana/cirt-sa.ndjson: the cirt-sa data views, Lens panels and dashboard
in Kibana 8.x saved-objects export format (what Stack Management > Saved Objects > Import
and `cirt-sa kibana import` take).

    python deploy/kibana/generate.py            # rewrites cirt-sa.ndjson next to this file

Formats (Kibana 8.x): `index-pattern` (a data view: title = index pattern, timeFieldName),
`lens` (state.datasourceStates.formBased layers of columns; the data view is a reference
named `indexpattern-datasource-layer-<layer id>`), `dashboard` (panelsJSON as a string, each
by-reference panel naming its reference `panel_<panelIndex>`). Kibana migrates objects with
an older typeMigrationVersion forward on import. tests/test_kibana_objects.py checks the file
parses, references resolve, and every field a panel uses is mapped by correlation/es_setup.py.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("cirt-sa.ndjson")
CORE_MIGRATION = "8.8.0"
LAYER = "layer1"
# an incident whose every alert was withdrawn is emitted once more with no alerts (docs/
# elasticsearch.md): nothing left to work on
KQL_OPEN_INCIDENTS = ('not cirtsa.incident.status : ("repelled" or "false_positive") '
                      'and cirtsa.incident.alert_count > 0')
# the alert panels count detections that stand: a withdrawn alert (its window's whole data
# no longer supports it) stays in the index, marked, for the record
KQL_STANDING_ALERTS = "not cirtsa.alert.withdrawn : true"

DATA_VIEWS = {
    # id: (title = index pattern, name shown in Kibana)
    "cirtsa-alerts": ("logs-cirtsa.alerts-*", "cirt-sa alerts"),
    "cirtsa-incidents": ("logs-cirtsa.incidents-*", "cirt-sa incidents"),
    "cirtsa-events": ("logs-cirtsa.*", "cirt-sa events (all cirt-sa data)"),
    "cirtsa-sensor-health": ("logs-cirtsa.sensor_health-*", "cirt-sa sensor health"),
}


def data_view(view_id: str) -> dict:
    title, name = DATA_VIEWS[view_id]
    return {"type": "index-pattern", "id": view_id, "managed": False,
            "coreMigrationVersion": CORE_MIGRATION, "typeMigrationVersion": "8.0.0",
            "attributes": {"title": title, "name": name, "timeFieldName": "@timestamp",
                           "allowNoIndex": True, "fieldFormatMap": "{}", "runtimeFieldMap": "{}",
                           "fieldAttrs": "{}", "sourceFilters": "[]"},
            "references": []}


# --- Lens columns ---------------------------------------------------------------------------


def date_histogram(field: str = "@timestamp") -> dict:
    return {"label": field, "dataType": "date", "operationType": "date_histogram",
            "sourceField": field, "isBucketed": True, "scale": "interval",
            "params": {"interval": "auto", "includeEmptyRows": True, "dropPartials": False}}


def terms(field: str, size: int, order_by: str = "count", data_type: str = "string",
          label: str | None = None) -> dict:
    return {"label": label or f"Top {size} values of {field}", "dataType": data_type,
            "operationType": "terms", "sourceField": field, "isBucketed": True,
            "scale": "ordinal", "customLabel": label is not None,
            "params": {"size": size, "orderBy": {"type": "column", "columnId": order_by},
                       "orderDirection": "desc", "otherBucket": True, "missingBucket": False,
                       "parentFormat": {"id": "terms"}}}


def count(label: str = "Count of records") -> dict:
    return {"label": label, "dataType": "number", "operationType": "count", "isBucketed": False,
            "scale": "ratio", "sourceField": "___records___", "params": {"emptyAsNull": True},
            "customLabel": label != "Count of records"}


def metric(op: str, field: str, label: str, data_type: str = "number") -> dict:
    return {"label": label, "dataType": data_type, "operationType": op, "sourceField": field,
            "isBucketed": False, "scale": "ratio", "customLabel": True,
            "params": {"emptyAsNull": True}}


def last_value(field: str, label: str) -> dict:
    return {"label": label, "dataType": "string", "operationType": "last_value",
            "sourceField": field, "isBucketed": False, "scale": "ordinal", "customLabel": True,
            "params": {"sortField": "@timestamp", "showArrayValues": False}}


def lens(lens_id: str, title: str, view_id: str, vis_type: str, columns: dict[str, dict],
         visualization: dict, query: str = "", description: str = "") -> dict:
    return {
        "type": "lens", "id": lens_id, "managed": False,
        "coreMigrationVersion": CORE_MIGRATION, "typeMigrationVersion": "8.9.0",
        "attributes": {
            "title": title, "description": description, "visualizationType": vis_type,
            "state": {
                "datasourceStates": {"formBased": {"layers": {LAYER: {
                    "columns": columns, "columnOrder": list(columns),
                    "incompleteColumns": {}}}}},
                "visualization": visualization,
                "query": {"query": query, "language": "kuery"},
                "filters": [], "internalReferences": [], "adHocDataViews": {},
            },
        },
        "references": [{"type": "index-pattern", "id": view_id,
                        "name": f"indexpattern-datasource-layer-{LAYER}"}],
    }


def xy(series: str, x: str, y: list[str], split: str | None = None) -> dict:
    layer = {"layerId": LAYER, "layerType": "data", "seriesType": series, "xAccessor": x,
             "accessors": y}
    if split:
        layer["splitAccessor"] = split
    return {"legend": {"isVisible": True, "position": "right"}, "valueLabels": "hide",
            "fittingFunction": "None", "preferredSeriesType": series, "layers": [layer]}


def table(columns: list[str]) -> dict:
    return {"layerId": LAYER, "layerType": "data",
            "columns": [{"columnId": c, "isTransposed": False} for c in columns]}


# --- the panels -------------------------------------------------------------------------------


def panels() -> list[dict]:
    return [
        lens("cirtsa-lens-alerts-over-time", "Alerts over time by rule", "cirtsa-alerts",
             "lnsXY",
             {"ts": date_histogram(), "rule": terms("rule.name", 10), "count": count("Alerts")},
             xy("bar_stacked", "ts", ["count"], split="rule"),
             query=KQL_STANDING_ALERTS),
        lens("cirtsa-lens-top-attackers", "Top attackers", "cirtsa-alerts", "lnsDatatable",
             {"src": terms("source.ip", 20, data_type="ip", label="Attacker (source.ip)"),
              "count": count("Alerts"),
              "targets": metric("unique_count", "destination.ip", "Distinct targets"),
              "rules": metric("unique_count", "rule.id", "Distinct rules"),
              "sev": metric("max", "event.severity", "Max severity")},
             table(["src", "count", "targets", "rules", "sev"]),
             query=KQL_STANDING_ALERTS),
        lens("cirtsa-lens-targets-by-sector", "Targets by constituency and segment",
             "cirtsa-alerts", "lnsPie",
             {"sector": terms("cirtsa.constituency", 10, label="Constituency / sector"),
              "zone": terms("observer.ingress.zone", 10, label="Segment (observer.ingress.zone)"),
              "count": count("Alerts")},
             {"shape": "treemap", "layers": [{
                 "layerId": LAYER, "layerType": "data", "primaryGroups": ["sector", "zone"],
                 "metrics": ["count"], "numberDisplay": "value", "categoryDisplay": "default",
                 "legendDisplay": "default", "nestedLegend": False}]},
             query=KQL_STANDING_ALERTS),
        lens("cirtsa-lens-attack-techniques", "MITRE ATT&CK techniques", "cirtsa-alerts",
             "lnsXY",
             {"technique": terms("threat.technique.id", 15, label="Technique"),
              "tactic": terms("threat.tactic.name", 10, label="Tactic"),
              "count": count("Alerts")},
             xy("bar_horizontal_stacked", "technique", ["count"], split="tactic"),
             query=KQL_STANDING_ALERTS),
        lens("cirtsa-lens-open-incidents-count", "Open incidents", "cirtsa-incidents",
             "lnsMetric", {"count": count("Open incidents")},
             {"layerId": LAYER, "layerType": "data", "metricAccessor": "count"},
             query=KQL_OPEN_INCIDENTS),
        lens("cirtsa-lens-open-incidents", "Open incidents (not repelled / false positive)",
             "cirtsa-incidents", "lnsDatatable",
             {"incident": terms("cirtsa.incident.id", 50, order_by="sev", label="Incident"),
              "status": last_value("cirtsa.incident.status", "Status"),
              "sev": metric("max", "event.severity", "Severity"),
              "alerts": metric("max", "cirtsa.incident.alert_count", "Alerts"),
              "last": metric("max", "cirtsa.incident.last_seen", "Last seen", "date")},
             table(["incident", "status", "sev", "alerts", "last"]),
             query=KQL_OPEN_INCIDENTS),
        lens("cirtsa-lens-sensor-health", "Sensor health reports per sensor",
             "cirtsa-sensor-health", "lnsXY",
             {"ts": date_histogram(), "sensor": terms("observer.name", 20, label="Sensor"),
              "count": count("Health reports")},
             xy("line", "ts", ["count"], split="sensor"),
             description="A sensor whose line drops to zero has stopped reporting."),
    ]


# (lens id, x, y, w, h) on Kibana's 48-column grid
LAYOUT = [
    ("cirtsa-lens-open-incidents-count", 0, 0, 8, 8),
    ("cirtsa-lens-alerts-over-time", 8, 0, 40, 12),
    ("cirtsa-lens-top-attackers", 0, 12, 24, 15),
    ("cirtsa-lens-targets-by-sector", 24, 12, 24, 15),
    ("cirtsa-lens-attack-techniques", 0, 27, 24, 15),
    ("cirtsa-lens-open-incidents", 24, 27, 24, 15),
    ("cirtsa-lens-sensor-health", 0, 42, 48, 10),
]


def dashboard() -> dict:
    panel_list, references = [], []
    for i, (lens_id, x, y, w, h) in enumerate(LAYOUT, 1):
        index = f"p{i}"
        panel_list.append({"version": "8.9.0", "type": "lens",
                           "gridData": {"x": x, "y": y, "w": w, "h": h, "i": index},
                           "panelIndex": index, "embeddableConfig": {"enhancements": {}},
                           "panelRefName": f"panel_{index}"})
        references.append({"name": f"panel_{index}", "type": "lens", "id": lens_id})
    search_source = {"query": {"query": "", "language": "kuery"}, "filter": []}
    return {
        "type": "dashboard", "id": "cirtsa-overview", "managed": False,
        "coreMigrationVersion": CORE_MIGRATION, "typeMigrationVersion": "8.9.0",
        "attributes": {
            "title": "cirt-sa situational awareness",
            "description": "Alerts, attackers, targets by constituency/segment, ATT&CK "
                           "techniques, open incidents and sensor health.",
            "panelsJSON": json.dumps(panel_list, separators=(",", ":")),
            "optionsJSON": json.dumps({"useMargins": True, "syncColors": False,
                                       "syncCursor": True, "syncTooltips": False,
                                       "hidePanelTitles": False}, separators=(",", ":")),
            "timeRestore": True, "timeFrom": "now-24h", "timeTo": "now",
            "refreshInterval": {"pause": False, "value": 60000},
            "version": 1,
            "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps(search_source,
                                                                     separators=(",", ":"))},
        },
        "references": references,
    }


def saved_objects() -> list[dict]:
    """Every object, referenced objects first (the order an export has)."""
    return [data_view(v) for v in DATA_VIEWS] + panels() + [dashboard()]


def render() -> str:
    return "".join(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n"
                   for obj in saved_objects())


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(OUT)
