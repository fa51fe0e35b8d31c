"""The operator registry: every token mixer and FFN, by name, letter, role, aliases and typed options.

Each operator class (a `flashsearch.kernels.Operator` subclass) declares who it is:

    class Toy(Operator):
        name = "toy"                    # canonical name, used in layer_types and op_options
        letter = "T"                    # the layer-pattern letter of summaries ("D F M2 F A F")
        role = "mixer"                  # "mixer" (sequence mixing) or "ffn" (channel mixing)
        aliases = ("toy_mixer",)        # other accepted spellings (optional)

        @dataclass(frozen=True)
        class Options:                  # typed options with defaults; op_options.toy fills them
            width: int = option(4, ge=1)

and is registered just by being defined (`Operator.__init_subclass__` calls `register`), so a user's operator
in their own module is known as soon as that module is imported (config key `imports:`). Everything else -
the genome's operator and mixer sets, letters, option validation - asks this module.

This module does not import torch: the genome and the search space only need names and options. The built-in
operators live in flashsearch.kernels (torch modules); the first lookup imports that package, which registers
them.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import sys
import typing
from dataclasses import dataclass
from types import MappingProxyType, UnionType
from typing import Any, Literal, Mapping

from flashsearch.errors import FlashsearchError

ROLES = ("mixer", "ffn")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_LETTER = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def option(default: Any, *, ge: float | None = None, gt: float | None = None) -> Any:
    """A field of an operator's Options with a bound checked on validation: `window: int = option(512, ge=1)`."""
    return dataclasses.field(default=default, metadata={"ge": ge, "gt": gt})


def option_error(op: str, key: str, value: Any, why: str) -> FlashsearchError:
    """One-line user error naming the operator and the option (what, where, how to fix)."""
    return FlashsearchError(f"operator {op!r} option {key}={value!r} (in op_options.{op}) {why}")


# ---- checking one option value against its declared type ----------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class _Check:
    """How one option is checked: its type (int/float/bool/str/Literal), whether None is allowed, its bounds."""

    key: str
    kind: str                        # "int" | "float" | "bool" | "str" | "choice"
    choices: tuple[Any, ...] = ()
    optional: bool = False
    ge: float | None = None
    gt: float | None = None

    def __call__(self, op: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        bound = "".join(f" {s} {b:g}" for s, b in ((">=", self.ge), (">", self.gt)) if b is not None)
        if self.kind == "int":
            ok, want = _is_int(value), "an integer" + bound
        elif self.kind == "float":
            ok, want = _is_number(value), "a finite number" + bound
        elif self.kind == "bool":
            ok, want = isinstance(value, bool), "true or false"
        elif self.kind == "str":
            ok, want = isinstance(value, str), "a string"
        else:
            ok, want = value in self.choices and type(value) in {type(c) for c in self.choices}, \
                "one of " + ", ".join(map(repr, self.choices))
        if ok and self.ge is not None:
            ok = value >= self.ge
        if ok and self.gt is not None:
            ok = value > self.gt
        if not ok:
            raise option_error(op, self.key, value, f"must be {want}" + (" or null" if self.optional else ""))
        return float(value) if self.kind == "float" else value


def _check_for(owner: str, f: dataclasses.Field, hint: Any) -> _Check:
    optional = False
    args = typing.get_args(hint)
    if (typing.get_origin(hint) in (typing.Union, UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            optional, hint = True, rest[0]
    kinds = {int: "int", float: "float", bool: "bool", str: "str"}
    ge, gt = f.metadata.get("ge"), f.metadata.get("gt")
    if typing.get_origin(hint) is Literal:
        return _Check(f.name, "choice", typing.get_args(hint), optional)
    if hint not in kinds:
        raise FlashsearchError(f"operator class {owner}: Options.{f.name} has type {hint!r}, which is not supported; "
                               "use int, float, bool, str, a Literal[...] or `X | None` of these")
    return _Check(f.name, kinds[hint], (), optional, ge, gt)


# ---- the registry -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OperatorSpec:
    """What the registry knows of one operator; `cls` is the implementing class (a torch module)."""

    name: str
    letter: str
    role: str
    aliases: tuple[str, ...]
    hf_name: str                     # its name in an exported Hugging Face config's layer_types
    options: type                    # the frozen Options dataclass
    cls: type
    checks: tuple[_Check, ...]

    @property
    def is_mixer(self) -> bool:
        return self.role == "mixer"

    def parse_options(self, given: Mapping[str, Any] | None = None) -> Any:
        """op_options.<name> -> the operator's Options instance; an unknown or ill-typed option is one
        FlashsearchError naming the operator and the option."""
        given = dict(given or {})
        known = {c.key: c for c in self.checks}
        unknown = sorted(set(given) - set(known))
        if unknown:
            allowed = ", ".join(known) or "none"
            raise FlashsearchError(f"operator {self.name!r} does not support option(s) {', '.join(unknown)} "
                                   f"(in op_options.{self.name}); supported: {allowed}")
        values = {k: known[k](self.name, v) for k, v in given.items()}
        try:
            return self.options(**values)
        except (TypeError, ValueError) as e:      # an operator's own __post_init__ check
            raise FlashsearchError(f"operator {self.name!r}: invalid op_options.{self.name}: {e}") from None


_SPECS: dict[str, OperatorSpec] = {}          # canonical name -> spec, in registration order
_SPELLINGS: dict[str, str] = {}               # every accepted spelling (lower case) -> canonical name
_builtins_loaded = False


def _ensure_builtins() -> None:
    """Register the built-in operators (importing flashsearch.kernels, which imports torch) on first use."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    try:
        importlib.import_module("flashsearch.kernels")
    except BaseException:
        _builtins_loaded = False
        raise


def _declared(cls: type, attr: str, default: Any) -> Any:
    return cls.__dict__.get(attr, default)


def _source(cls: type) -> str | None:
    path = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return os.path.realpath(path) if path else None


def register(cls: type) -> OperatorSpec:
    """Add operator class `cls` to the registry (called by Operator.__init_subclass__). Duplicate names,
    letters or aliases of another operator are a FlashsearchError; re-registering the same class (a module
    reload) replaces it."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    name = _declared(cls, "name", "")
    letter = _declared(cls, "letter", "")
    role = getattr(cls, "role", "")
    aliases = tuple(str(a).lower() for a in _declared(cls, "aliases", ()))
    hf_name = _declared(cls, "hf_name", None) or name

    def bad(msg: str) -> FlashsearchError:
        return FlashsearchError(f"operator class {where}: {msg}")

    if not isinstance(name, str) or not _NAME.match(name):
        raise bad(f"name={name!r} must be lower case letters, digits and _ (e.g. name = 'my_mixer')")
    if not isinstance(letter, str) or not _LETTER.match(letter):
        raise bad(f"letter={letter!r} must start with a capital letter (e.g. letter = 'T'); layer patterns "
                  "such as 'D F M2 F A F' use it")
    if role not in ROLES:
        raise bad(f"role={role!r}; choose one of {', '.join(ROLES)}")
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)
            and options.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise bad("Options must be a frozen dataclass (@dataclass(frozen=True) class Options: ...)")
    fields = dataclasses.fields(options)
    no_default = [f.name for f in fields
                  if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if no_default:
        raise bad(f"Options field(s) {', '.join(no_default)} need a default (an operator must build without options)")
    try:
        hints = typing.get_type_hints(options)
    except Exception as e:  # noqa: BLE001 - an unresolvable annotation is the operator author's error
        raise bad(f"cannot resolve the Options annotations ({type(e).__name__}: {e})") from None
    checks = tuple(_check_for(where, f, hints[f.name]) for f in fields)

    spellings = {name, letter.lower(), hf_name, *aliases}
    for s in sorted(spellings):
        owner = _SPELLINGS.get(s)
        if owner is not None and owner != name:
            raise bad(f"{s!r} (its name, letter or an alias) is already taken by operator {owner!r} "
                      f"({_SPECS[owner].cls.__module__}.{_SPECS[owner].cls.__qualname__}); pick another")
    old = _SPECS.get(name)
    if old is not None:
        if old.cls.__qualname__ == cls.__qualname__ and old.cls.__module__ != cls.__module__ \
                and _source(old.cls) is not None and _source(old.cls) == _source(cls):
            # The same file imported under a second module name (e.g. the repository's kernels/ folder as a
            # top-level `kernels` when the checkout is on sys.path and a library probes for Hugging Face's
            # `kernels`): the same operator. Keep the class of the flashsearch package, else the first one.
            if not cls.__module__.startswith("flashsearch.") or old.cls.__module__.startswith("flashsearch."):
                return old
        elif (old.cls.__module__, old.cls.__qualname__) != (cls.__module__, cls.__qualname__):
            raise bad(f"operator name {name!r} is already registered by "
                      f"{old.cls.__module__}.{old.cls.__qualname__}; pick another name")
        for s in [k for k, v in _SPELLINGS.items() if v == name]:   # replaced: forget the old spellings
            del _SPELLINGS[s]
    spec = OperatorSpec(name=name, letter=letter, role=role, aliases=aliases, hf_name=hf_name, options=options,
                        cls=cls, checks=checks)
    _SPECS[name] = spec
    for s in spellings:
        _SPELLINGS[s] = name
    return spec


# ---- lookups ----------------------------------------------------------------------------------------------------
def _spelling(name: Any) -> str:
    return str(name).strip().lower()


def spec(name: str, where: str = "layer_types") -> OperatorSpec:
    """The spec of operator `name` (a canonical name, letter or alias), or a one-line error naming the choices."""
    key = _spelling(name)
    if key not in _SPELLINGS:
        _ensure_builtins()
    try:
        return _SPECS[_SPELLINGS[key]]
    except KeyError:
        other = sorted(s for s, n in _SPELLINGS.items() if s != n)
        raise FlashsearchError(
            f"unknown operator {name!r} in {where}; choose one of {', '.join(_SPECS)} (also accepted: "
            f"{', '.join(other)}); an operator of your own must be imported first (config key `imports:`, or "
            "`flashsearch --import MODULE ...`)"
        ) from None


def canonical(name: str, where: str = "layer_types") -> str:
    """Map an operator name, letter or alias to its canonical name."""
    return spec(name, where).name


def specs() -> tuple[OperatorSpec, ...]:
    """Every registered operator, built-ins first, in registration order."""
    _ensure_builtins()
    return tuple(_SPECS.values())


def names() -> tuple[str, ...]:
    return tuple(s.name for s in specs())


def mixers() -> tuple[str, ...]:
    return tuple(s.name for s in specs() if s.is_mixer)


def is_mixer(name: str) -> bool:
    return spec(name).is_mixer


def letter(name: str) -> str:
    return spec(name).letter


def letters() -> Mapping[str, str]:
    """Canonical name -> letter, e.g. {"attention": "A", "mamba2": "M2", ...}."""
    return MappingProxyType({s.name: s.letter for s in specs()})


def parse_options(name: str, given: Mapping[str, Any] | None = None) -> Any:
    """op_options for operator `name` -> its typed Options (defaults filled in, values validated)."""
    return spec(name, where="op_options").parse_options(given)


__all__ = ["OperatorSpec", "ROLES", "option", "option_error", "register", "spec", "canonical", "specs", "names",
           "mixers", "is_mixer", "letter", "letters", "parse_options"]
