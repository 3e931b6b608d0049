"""Training configuration: YAML loading and ``key=value`` overrides into typed sections.

A YAML file may start from a named preset (``preset: coco-finetune``) and override any field;
unknown keys are rejected with a "did you mean" suggestion. The sections themselves live in
:mod:`gdino.train.sections` (imported by both this module and :mod:`gdino.train.presets`). See
docs/finetune.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from gdino.train.presets import get_train_preset
from gdino.train.sections import (
    CheckpointSection,
    ConfigError,
    DataSection,
    EvalSection,
    LossSection,
    ModelSection,
    OptimSection,
    ScheduleSection,
    TrainConfig,
)


def _suggest(key: str, names: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    prefix = f"{where}." if where else ""
    return f"; did you mean {prefix + close[0]!r}?" if close else f"; known keys: {', '.join(names)}"


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check ``value`` against a field annotation; ints become floats, lists become tuples."""
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        args = typing.get_args(kind)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = typing.get_args(kind)[0]
        return tuple(_coerce(v, item, where) for v in value)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def _build(kind: type, values: Any, where: str, base: Any = None) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(kind)
    names = [f.name for f in dataclasses.fields(kind)]
    base = base if base is not None else kind()
    changes = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}{_suggest(str(key), names, where)}")
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            changes[key] = _build(hint, value, path, getattr(base, key))
        else:
            changes[key] = _coerce(value, hint, path)
    return dataclasses.replace(base, **changes)


def from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from nested dicts; a top-level ``preset`` key starts from that preset."""
    values = dict(values)
    preset = values.pop("preset", None)
    if preset is not None:
        base = get_train_preset(str(preset))
    return _build(TrainConfig, values, "", base)


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=1e-5"`` -> ``{"optim": {"lr": 1e-05}}`` (the value is parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    value = yaml.safe_load(raw) if raw.strip() else None
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config (or a preset name when ``path`` is not a file) and apply overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_file():
            try:
                loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
            except yaml.YAMLError as e:
                raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"{p}: expected a mapping at the top level")
            values = loaded or {}
        elif p.suffix in (".yaml", ".yml") or p.parent != Path("."):
            raise ConfigError(f"config file not found: {p}")
        else:
            values = {"preset": str(path)}
    for text in overrides:
        values = _merge(values, parse_override(text))
    try:
        return from_dict(values)
    except ConfigError as e:
        where = f"{path}: " if path is not None and Path(path).is_file() else ""
        raise ConfigError(f"{where}{e}") from None


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (loadable by :func:`load_config`)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


__all__ = [
    "CheckpointSection",
    "ConfigError",
    "DataSection",
    "EvalSection",
    "LossSection",
    "ModelSection",
    "OptimSection",
    "ScheduleSection",
    "TrainConfig",
    "from_dict",
    "load_config",
    "parse_override",
    "save_config",
]
