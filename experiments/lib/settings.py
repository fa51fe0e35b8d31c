"""A study's settings: its settings.yaml (the one home of every default) read into the study's frozen dataclass.

settings.yaml maps each field of the study's `Settings` to a value; an optional `quick:` mapping overrides some
of them for a smoke run (`python -m experiments run <study> --quick`), and `key=value` arguments override any
field last (values are parsed as YAML: `seeds=[0,1]`, `device=cuda`, `alpha=null`). Types are checked against the
dataclass's annotations, so a typo or a wrong type fails in one line before anything runs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from flashsearch.errors import FlashsearchError

QUICK = "quick"
T = TypeVar("T")


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """['seeds=[0,1]', 'device=cuda'] -> {'seeds': [0, 1], 'device': 'cuda'} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FlashsearchError(f"override {pair!r} is not key=value")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """`value` checked against the annotation `hint` (lists become tuples for tuple fields)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, arm, value)
            except FlashsearchError as e:
                errors.append(str(e))
        raise FlashsearchError(errors[0] if errors else f"setting {name} must not be null")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise FlashsearchError(f"setting {name} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(f"{name}[{i}]", item, v) for i, v in enumerate(value))
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise FlashsearchError(f"setting {name} must be {hint.__name__}, got {value!r}")
    return value


def build(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """cls(**values) with every field given, no unknown key, each value of its annotated type."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise FlashsearchError(f"{where}: unknown settings {unknown}; known: {sorted(fields)}")
    missing = sorted(fields - set(values))
    if missing:
        raise FlashsearchError(f"{where}: settings {missing} have no value (settings.yaml is their one home)")
    hints = typing.get_type_hints(cls)
    try:
        return cls(**{k: _coerce(k, hints[k], v) for k, v in values.items()})
    except FlashsearchError as e:
        raise FlashsearchError(f"{where}: {e}") from None


def load_settings(cls: type[T], path: str | Path, overrides: Sequence[str] = (), quick: bool = False) -> T:
    """The study's settings: settings.yaml, then its `quick:` overrides (if quick), then `key=value` overrides."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise FlashsearchError(f"{path}: expected a mapping of settings")
    quick_values = raw.pop(QUICK, None) or {}
    if not isinstance(quick_values, dict):
        raise FlashsearchError(f"{path}: `{QUICK}:` must be a mapping of settings")
    values = {**raw, **(quick_values if quick else {})}
    extra = parse_overrides(overrides)
    unknown = sorted(set(extra) - set(values))
    if unknown:
        raise FlashsearchError(f"{path}: unknown settings {unknown}; known: {sorted(values)}")
    checked = build(cls, {**values, **extra}, str(path))
    if not quick:
        build(cls, {**raw, **quick_values}, f"{path} ({QUICK}:)")  # a broken quick: section fails every run
    return checked


def as_dict(settings: Any) -> dict[str, Any]:
    """Plain JSON-able mapping of a settings dataclass (tuples as lists), for result headers and cache keys."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}
