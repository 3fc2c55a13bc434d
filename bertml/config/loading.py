"""Loading a command config: YAML file, then dotted `key=value` overrides, then type checks.

Types are checked and converted by pydantic (`TypeAdapter` over the plain dataclasses);
this module only reads the YAML, nests the overrides, turns command-line spellings of
null and lists into values, and words pydantic's first error as one line.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import types
import typing
from dataclasses import field
from typing import Any, Literal, Union

import yaml

from bertml.errors import BertmlError


class ConfigError(BertmlError, ValueError):
    """A config value is missing, unknown or of the wrong type or range."""


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help string (mutable defaults are copied per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


def check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def ordered_fields(cls: type) -> list[dataclasses.Field]:
    """A config's fields, its own first, then those of the sections it extends (nearest first):
    the order of `--help`, `--print-config` and saved configs."""
    order = {c: i for i, c in enumerate(cls.__mro__)}
    return sorted(dataclasses.fields(cls), key=lambda f: order[_owner(cls, f.name)])


def _owner(cls: type, name: str) -> type:
    return next(c for c in reversed(cls.__mro__) if name in inspect.get_annotations(c))


def to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {f.name: _ordered(getattr(cfg, f.name), d[f.name]) for f in ordered_fields(type(cfg))}


def _ordered(value: Any, d: Any) -> Any:
    return to_dict(value) if dataclasses.is_dataclass(value) else d


# ----------------------------------------------------------------------------- loading


def load(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Any:
    """Load `cls` from an optional YAML file plus `key=value` overrides (CLI wins)."""
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"--config {path}: file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--config {path}: expected a mapping at the top level")
    cli = parse_overrides(overrides or [])
    return _validate(cls, _merge(data, _cli_values(cls, cli, "")), shown=_merge(data, cli))


def from_dict(cls: type, data: dict[str, Any] | None) -> Any:
    """Build dataclass `cls` from a nested dict (e.g. a saved config), checking keys and types."""
    return _validate(cls, dict(data or {}), shown=dict(data or {}))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["optim.lr=2e-5", "data.train=x"]` -> nested dict of raw strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{pair}: overrides are key=value (e.g. optim.lr=2e-5)")
        key, value = pair.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p} is a value, not a section")
        node[leaf] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _cli_values(cls: type, raw: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The command line's spellings pydantic does not read: null/none/~ for an optional key,
    `[a, b]` or `a,b` for a list. Everything else stays a string for pydantic to convert."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for name, value in raw.items():
        tp = hints.get(name)
        if tp is None or isinstance(value, dict):
            out[name] = _cli_values(tp, value, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else value
            continue
        args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
        if type(None) in args and value.lower() in ("null", "none", "~"):
            value = None
        elif any(typing.get_origin(a) is list for a in args):
            try:
                value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            except yaml.YAMLError:
                raise ConfigError(f"{prefix}{name}: expected a list like [a, b] or a,b, got {value!r}") from None
        out[name] = value
    return out


@functools.cache
def _adapter(cls: type):
    from pydantic import ConfigDict, TypeAdapter

    # pydantic's config for a plain dataclass (nested sections inherit it): numbers are
    # accepted where text is expected (a run name of 2024); unknown keys are errors.
    cls.__pydantic_config__ = ConfigDict(coerce_numbers_to_str=True, extra="forbid")
    return TypeAdapter(cls)


def _validate(cls: type, data: dict[str, Any], shown: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as e:
        raise _one_line(cls, e.errors(include_url=False), shown) from None


def _one_line(cls: type, errors: list[dict], shown: dict[str, Any]) -> ConfigError:
    """pydantic's first error as `key: expected <type>, got <value as written>`; an unknown key
    first, since it explains the rest; a section's own check (ConfigError) as it is."""
    err = next((e for e in errors if e["type"] == "unexpected_keyword_argument"), errors[0])
    if isinstance(err.get("ctx", {}).get("error"), ConfigError):
        return err["ctx"]["error"]
    node, where, path = cls, shown, []
    for part in err["loc"]:
        names = [f.name for f in dataclasses.fields(node)]
        key = ".".join([*path, str(part)])
        if part not in names:
            return ConfigError(f"{key}: unknown key; known keys here: {', '.join(sorted(names))}")
        path.append(part)
        tp, value = typing.get_type_hints(node)[part], where.get(part)
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                return ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
            node, where = tp, value
            continue
        return ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    msg = err["ctx"]["error"] if err["type"] == "value_error" else err["msg"]
    return ConfigError(f"{'.'.join(path) or cls.__name__}: {msg}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


# ----------------------------------------------------------------------------- saving, help


def save(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (or JSON if the path ends in .json)."""
    from bertml.secrets import redact

    d = redact(to_dict(cfg))  # URIs without their credentials
    with open(path, "w", encoding="utf-8") as f:
        if str(path).endswith(".json"):
            json.dump(d, f, indent=2, ensure_ascii=False)
        else:
            yaml.safe_dump(d, f, sort_keys=False, allow_unicode=True)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, nested sections flattened with dots."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in ordered_fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = "null" if default is None else json.dumps(default, ensure_ascii=False) if not isinstance(default, str) else (default or "(required)")
        rows.append((prefix + f.name, shown, f"{f.metadata.get('help', '')} [{_type_name(tp)}]"))
    return rows
