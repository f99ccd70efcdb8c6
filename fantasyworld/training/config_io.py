"""Run-config files and their typed reading, for any tree of keyword-only config dataclasses.

* :func:`read_config_file`: a YAML mapping with its ``base:`` chain resolved (a file states only
  what differs from its base; nested sections merge key by key).
* :func:`apply_overrides`: ``key=value`` strings with dotted keys, values parsed as YAML.
* :func:`from_dict` / :func:`config_to_dict`: nested dict <-> dataclass, every value coerced to
  its field's annotated type; an unknown key or a wrong type is a :class:`ConfigError` naming
  the key (and the closest valid one).

The schema itself (:class:`~fantasyworld.training.config.TrainConfig` and its sections, with
their checks) lives in :mod:`fantasyworld.training.config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fantasyworld.errors import ConfigError

__all__ = ["BASE_KEY", "apply_overrides", "config_to_dict", "from_dict", "read_config_file", "unknown_choice"]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type ``tp`` or raise naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of its fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)  # also YAML's '1e-5' (a string in YAML 1.1)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def unknown_choice(key: str, value: str, choices: Sequence[str]) -> str:
    """``"KEY 'value' is unknown; choose one of a, b (did you mean 'a'?)"`` for a config value
    outside its vocabulary (the suggestion only when one is close)."""
    close = difflib.get_close_matches(value, choices, n=1)
    return (f"{key} {value!r} is unknown; choose one of {', '.join(choices)}"
            + (f" (did you mean {close[0]!r}?)" if close else ""))


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """An instance of the keyword-only dataclass ``cls`` from a nested dict: each value coerced to
    its field's annotated type; an unknown key is a :class:`ConfigError` suggesting the closest one."""
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, names, n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; valid keys: {', '.join(names)}"
        raise ConfigError(f"unknown config key '{prefix}{k}'{hint}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a nested plain dict (tuples as lists), the inverse of :func:`from_dict`."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(config))


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (dotted keys, YAML values) to a nested dict, in order."""
    out = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(out, key, value)
    return out


BASE_KEY = "base"
"""Top-level YAML key naming a config this one extends (path relative to this file)."""


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over``: nested sections merge key by key, any other value replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of a YAML run config with its ``base:`` chain resolved.

    ``base: stage1_tiny.yaml`` makes this file state only what differs: the base is read
    first (itself possibly with a base) and this file's keys are merged over it, section by
    section. Raises :class:`ConfigError` for a missing file, invalid YAML, a non-mapping, or
    a cycle of bases.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in _chain:
        raise ConfigError(f"{path}: base configs form a cycle ({' -> '.join(str(p) for p in _chain)})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a run config must be a mapping, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: {BASE_KEY} must be a file name, got {base!r}")
    return _merge(read_config_file(path.parent / base, (*_chain, path.resolve())), data)
