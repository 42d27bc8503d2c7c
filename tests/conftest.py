"""Shared fixtures: the read-only shared material beside the repo, and an ECS field checker."""

from __future__ import annotations

import functools
from pathlib import Path

import orjson
import pytest
import yaml
from hypothesis import settings

# The test command is a gate (nothing lands while it is red): property tests draw the same
# examples on every run, so a result depends on the code, not on the draw. Fuzzing for new
# failures is a separate job: `pytest --hypothesis-profile=fuzz` (new random draws on each
# run; repeat it) -- what it finds goes into the tests as explicit @example cases.
settings.register_profile("gate", derandomize=True, print_blob=True)
settings.register_profile("fuzz", derandomize=False, print_blob=True)
settings.load_profile("gate")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PCAPS = SHARED / "pcaps"
ECS_FLAT = SHARED / "reference" / "ecs" / "ecs_flat.yml"


def shared_pcap(name: str) -> Path:
    """A capture from ../shared/pcaps by its MANIFEST name; skips the test when absent."""
    path = PCAPS / name
    if not path.is_file():
        pytest.skip(f"{path} not available (tests need the shared captures beside the repo)")
    return path


@functools.cache
def ecs_fields() -> dict[str, dict]:
    if not ECS_FLAT.is_file():
        pytest.skip(f"{ECS_FLAT} not available (ECS reference lives in ../shared)")
    with open(ECS_FLAT, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def flatten(doc: dict, prefix: str = "") -> dict[str, object]:
    """Nested document -> {dotted.path: value}; lists of dicts are flattened through."""
    out: dict[str, object] = {}
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                out.update(flatten(item, path + "."))
        else:
            out[path] = value
    return out


_ECS_TYPE_CHECKS = {
    "keyword": lambda v: isinstance(v, str),
    "constant_keyword": lambda v: isinstance(v, str),
    "wildcard": lambda v: isinstance(v, str),
    "match_only_text": lambda v: isinstance(v, str),
    "text": lambda v: isinstance(v, str),
    "ip": lambda v: isinstance(v, str),
    "date": lambda v: isinstance(v, str),
    "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "scaled_float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def assert_ecs(doc: dict) -> None:
    """Every field of `doc` is an ECS field with a value of its type, or under cirtsa.*,
    and the document is plain JSON data (the NDJSON sink dumps it without numpy support)."""
    orjson.dumps(doc)  # TypeError on a numpy scalar left in the document
    fields = ecs_fields()
    for path, value in flatten(doc).items():
        if path.startswith("cirtsa."):
            continue
        assert path in fields, f"{path} is not an ECS field (put our own fields under cirtsa.*)"
        spec = fields[path]
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list):
            assert "array" in spec.get("normalize", []) or spec["type"] == "object", (
                f"{path} is a list but ECS does not normalize it to an array")
        check = _ECS_TYPE_CHECKS.get(spec["type"])
        if check is not None:
            for v in values:
                assert check(v), f"{path}={v!r} is not of ECS type {spec['type']}"
        allowed = spec.get("allowed_values")
        if allowed:
            names = {a["name"] for a in allowed}
            for v in values:
                assert v in names, f"{path}={v!r} is not an allowed value {sorted(names)}"


CORE_DETECTORS = ("port_scan_vertical", "port_scan_horizontal", "brute_force")


@pytest.fixture
def core_detectors_only(monkeypatch):
    """Unit tests of the engine and of the first detectors count exact alerts: run them
    with only those detectors enabled by default (others are tested in their own modules)."""
    import copy

    import correlation.engine as engine_module

    full = engine_module.default_config()
    core = {**full, "detectors": {k: v for k, v in full["detectors"].items()
                                  if k in CORE_DETECTORS}}
    monkeypatch.setattr(engine_module, "default_config", lambda: copy.deepcopy(core))
