"""Configuration: embedded defaults deep-merged with a user file.

Defaults are `pipeline/defaults.yaml` plus every `pipeline/defaults.d/*.yaml` in name order
(one file per component, e.g. a detector's thresholds), so components add their settings
without editing a shared file.
"""

from __future__ import annotations

import copy
import functools
import importlib
import os
from pathlib import Path
from typing import Any

import yaml

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
DEFAULTS_DIR = Path(__file__).with_name("defaults.d")


class ConfigError(ValueError):
    """The configuration file is unreadable or has the wrong shape."""


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: `override` laid over `base`, recursing into nested dicts."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def default_config() -> dict[str, Any]:
    """The embedded defaults: defaults.yaml, then defaults.d/*.yaml in name order.

    Parsed once per process and per version of the files (YAML parsing took ~0.2 s, paid
    by every engine, sensor and CLI command built); every call returns a fresh deep copy,
    so callers may modify it.
    """
    parts = (DEFAULTS_PATH, *sorted(DEFAULTS_DIR.glob("*.yaml")))
    return copy.deepcopy(_parsed_defaults(tuple((str(p), *_version(p)) for p in parts)))


def _version(path: Path) -> tuple[int, int]:
    """(mtime ns, size) of a defaults file: an edited file is parsed again."""
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)  # unreadable: _read_yaml raises the ConfigError
    return (st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _parsed_defaults(parts: tuple[tuple[str, int, int], ...]) -> dict[str, Any]:
    config = _read_yaml(parts[0][0])
    for path, _, _ in parts[1:]:
        config = deep_merge(config, _read_yaml(path))
    return config


def load_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Defaults, overridden by the YAML file at `path` when given."""
    config = default_config()
    if path is not None:
        config = deep_merge(config, _read_yaml(path))
    return config


def config_from_args(args: Any) -> dict[str, Any]:
    """The configuration of a CLI command: defaults, `--config FILE`, then the common
    `--sensor-id` / `--zone` options (attributes absent on a command are ignored)."""
    config = load_config(getattr(args, "config", None))
    if getattr(args, "sensor_id", None):
        config["sensor"]["id"] = args.sensor_id
    if getattr(args, "zone", None):
        config["sensor"]["zone"] = args.zone
    return config


def load_class(where: str, spec: object, package: str, base: type) -> type:
    """The class a configuration section names as "module:Class" (a detector, an analyzer).

    The topology is configuration, like Vector's components: a new component is a module
    plus a config section, with no registry to edit. Only subclasses of `base` inside
    `package` are accepted; `where` (e.g. "correlation.detectors.NAME.detector") names the
    key in errors."""
    key = where.rsplit(".", 1)[-1]
    section = where.rsplit(".", 1)[0]
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"{section}: needs `{key}: module:Class`")
    module_name, class_name = spec.split(":", 1)
    if not module_name.startswith(f"{package}."):
        raise ValueError(f"{section}: {spec} is not in the {package} package")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{section}: cannot load {spec}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{section}: {spec} is not a{'n' if base.__name__[0] in 'AEIOU' else ''} "
                         f"{base.__name__}")
    return cls
