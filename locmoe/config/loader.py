"""YAML -> typed ``JobConfig``: ``defaults:`` inheritance, ``--set a.b=c`` overrides, type and bound checks.

Every problem raises one :class:`ConfigError` naming the field, the value and what is allowed, so a bad
config fails at start-up rather than at step 1000.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml

from locmoe.config.checks import resolve_and_check
from locmoe.config.errors import ConfigError
from locmoe.config.fields import describe_rules, violates
from locmoe.config.schema import JobConfig
from locmoe.config.shipped import resolve_config_ref

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# ----------------------------------------------------------------------------- reading YAML


def read_yaml_with_defaults(path: str | Path, _seen: tuple = (), base: Path | None = None) -> dict:
    """Read a YAML job file and merge the files its ``defaults:`` names under it.

    ``path`` is a config reference (:func:`locmoe.config.shipped.resolve_config_ref`): an existing path
    (relative to ``base``, or to the working directory when ``base`` is None), else a shipped config name.
    The entries of ``defaults:`` are references relative to the file that names them."""
    path = resolve_config_ref(path, base)
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError("defaults", f"inheritance cycle: {chain}")
    raw = parse_yaml_text(read_text(path), str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            "", f"{path} must hold a mapping of sections (model:, train:, ...), got {type(raw).__name__} {_short(raw)}"
        )
    merged: dict = {}
    for parent in _defaults_list(raw.pop("defaults", None), path):
        merged = deep_merge(merged, read_yaml_with_defaults(parent, (*_seen, path), base=path.parent))
    return deep_merge(merged, raw)


def read_text(path: Path) -> str:
    """A config file's text; not UTF-8 or unreadable is a ConfigError naming the file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError("", f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            "", f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from None


def parse_yaml_text(text: str, where: str):
    """``yaml.safe_load`` with a one-line ConfigError (problem, line, column) instead of the parser's report."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError("", f"{where} is not valid YAML: {yaml_problem(err)}") from None


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line from a PyYAML error: what is wrong and where (1-based line and column)."""
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if problem is None:
        problem = " ".join(str(err).split())
    if mark is not None:
        problem += f" (line {mark.line + 1}, column {mark.column + 1})"
    return problem


def _defaults_list(value: Any, path: Path) -> list[str]:
    """``defaults:`` as a list of file references: one string, or a list of non-empty strings."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(
            "defaults",
            f"in {path}: {_short(value)} is not allowed: must be a file name or a "
            "list of file names (relative to this file, or shipped config names)",
        )
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or not all(p.strip() for p in parts):
            raise ConfigError("--set", f"{item!r} is not of the form section.field=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(key, f"--set value {_short(text)} is not valid YAML: {yaml_problem(err)}") from None
        node = raw
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
        rules = field.metadata.get("rules", {})
        value = coerce(data[name], hints[name], where, rules)
        if value is not None and rules and violates(value, rules):
            raise ConfigError(where, f"{value!r} is not allowed: must be {describe_rules(rules)}")
        values[name] = value
    return cls(**values)


def coerce(value: Any, hint: Any, where: str, rules: dict | None = None) -> Any:
    """Check ``value`` against the annotation ``hint``; numbers given as strings (``'1e-3'``) become floats.
    Floats must be finite (``.inf``, ``nan`` and ints beyond the float range are refused); ``rules`` only
    make the messages say what else is allowed."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return coerce(value, next(a for a in args if a is not type(None)), where, rules)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(where, f"expected a list, got {value!r}")
        return [coerce(v, args[0], f"{where}[{i}]", rules) for i, v in enumerate(value)]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"expected an integer, got {value!r}")
        if not INT64_MIN <= value <= INT64_MAX:  # seeds, sizes and steps reach numpy and the frameworks as int64
            bounds = " and ".join(filter(None, (describe_rules(rules or {}), f"<= {INT64_MAX} (a 64-bit integer)")))
            raise ConfigError(where, f"{_short(value)} is not allowed: must be {bounds}")
        return value
    if hint is float:
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ConfigError(where, f"expected a number, got {value!r}")
        try:
            number = float(number)
        except OverflowError:  # an int beyond the float range
            number = math.inf
        if not math.isfinite(number):
            bounds = describe_rules(rules or {})
            raise ConfigError(
                where, f"{_short(value)} is not allowed: must be a finite number" + (f" {bounds}" if bounds else "")
            )
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {hint!r} at {where}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


# ----------------------------------------------------------------------------- public entry points


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] = (), layers: Iterable[str | Path] = ()
) -> JobConfig:
    """Load, layer, override, type-check and cross-check a job config. ``path=None`` starts from the defaults;
    ``layers`` are YAML fragments merged over it in order (e.g. a router variant), ``overrides`` come last.
    ``path`` and each layer are files (relative to the working directory) or shipped config names."""
    raw = read_yaml_with_defaults(path) if path is not None else {}
    for layer in layers:
        raw = deep_merge(raw, read_yaml_with_defaults(layer))
    raw = apply_overrides(raw, overrides)
    cfg = build(JobConfig, raw)
    return resolve_and_check(cfg)


def config_from_dict(raw: dict) -> JobConfig:
    """Build and check a config from an already-parsed mapping (e.g. the copy stored in a checkpoint)."""
    return resolve_and_check(build(JobConfig, raw))


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: JobConfig) -> str:
    """YAML text that ``load_config`` reads back to an equal config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
