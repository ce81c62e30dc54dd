"""YAML -> typed ``JobConfig``: ``defaults:`` inheritance, ``--set a.b=c`` overrides, type and bound checks.

Every problem raises one :class:`ConfigError` naming the field, the value and what is allowed, so a bad
config fails at start-up rather than at step 1000.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml

from locmoe.config.fields import describe_rules, violates
from locmoe.config.schema import JobConfig
from locmoe.errors import LocMoEError


class ConfigError(LocMoEError):
    """A config value that is unknown, of the wrong type, or out of range."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


# ----------------------------------------------------------------------------- reading YAML

def read_yaml_with_defaults(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a YAML job file and merge the files its ``defaults:`` names (paths relative to it) under it."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError("defaults", f"inheritance cycle: {chain}")
    if not path.is_file():
        raise ConfigError("", f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError("", f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    parents = raw.pop("defaults", None) or []
    if isinstance(parents, str):
        parents = [parents]
    merged: dict = {}
    for parent in parents:
        merged = deep_merge(merged, read_yaml_with_defaults(path.parent / parent, (*_seen, path)))
    return deep_merge(merged, raw)


def deep_merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, recursing into mappings; lists and scalars are replaced whole."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    """Apply ``a.b.c=value`` strings; the value is parsed as YAML (``8``, ``1e-3``, ``[0, 1]``, ``true``)."""
    raw = dict(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", f"{item!r} is not of the form section.field=value")
        value = yaml.safe_load(text) if text.strip() else ""
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    return raw


# ----------------------------------------------------------------------------- typed construction

def build(cls: type, data: Any, path: str = "") -> Any:
    """Construct dataclass ``cls`` from a mapping, checking names, types and bounds field by field."""
    if not isinstance(data, dict):
        raise ConfigError(path or cls.__name__, f"expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), fields, n=1)
            did_you_mean = f" did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(_join(path, key), f"unknown field;{did_you_mean} allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name not in data:
            continue
        where = _join(path, name)
        value = coerce(data[name], hints[name], where)
        rules = field.metadata.get("rules", {})
        if value is not None and rules and violates(value, rules):
            raise ConfigError(where, f"{value!r} is not allowed: must be {describe_rules(rules)}")
        values[name] = value
    return cls(**values)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``hint``; numbers given as strings (``'1e-3'``) become floats."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return coerce(value, next(a for a in args if a is not type(None)), where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(where, f"expected a list, got {value!r}")
        return [coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {hint!r} at {where}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


# ----------------------------------------------------------------------------- public entry points

def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                layers: Iterable[str | Path] = ()) -> JobConfig:
    """Load, layer, override, type-check and cross-check a job config. ``path=None`` starts from the defaults;
    ``layers`` are YAML fragments merged over it in order (e.g. a router variant), ``overrides`` come last."""
    from locmoe.config.checks import resolve_and_check

    raw = read_yaml_with_defaults(path) if path is not None else {}
    for layer in layers:
        raw = deep_merge(raw, read_yaml_with_defaults(layer))
    raw = apply_overrides(raw, overrides)
    cfg = build(JobConfig, raw)
    return resolve_and_check(cfg)


def config_from_dict(raw: dict) -> JobConfig:
    """Build and check a config from an already-parsed mapping (e.g. the copy stored in a checkpoint)."""
    from locmoe.config.checks import resolve_and_check

    return resolve_and_check(build(JobConfig, raw))


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: JobConfig) -> str:
    """YAML text that ``load_config`` reads back to an equal config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
