"""The allowed values of recipe keys, declared once next to the field and checked before any work.

A schema field says which values it takes with :func:`within`::

    from ftclip.domains import NON_NEGATIVE_INT, POSITIVE_INT, OneOf, within

    @dataclass
    class MyDataConfig:
        batch_size: int = within(POSITIVE_INT, 64)
        num_workers: int = within(NON_NEGATIVE_INT, 4)
        on_bad_image: str = within(OneOf("error", "skip"), "error")

:func:`check_values` (run by :func:`ftclip.recipe.validate` on every recipe, before a run directory,
data or model exists) walks the task's schema and the config together -- nested sections and the
entries of ``Dict[str, <dataclass>]`` fields such as ``stages`` -- and raises one
:class:`~ftclip.errors.ConfigError` whose line names each bad key, its value and the domain::

    recipe.yaml (with overrides data.batch_size=0): data.batch_size=0 is not allowed: it must be an integer >= 1

``None`` is always accepted for an ``Optional`` field (it means "the default"), so a domain
describes the values other than ``None``. Every ``int``/``float`` field (also inside lists and
mappings) of a task schema must declare one: ``tests/test_domains.py`` walks the schema of every
registered task, fails on a numeric key without a domain, and feeds each key the values
:meth:`Domain.outside` lists. Checks that relate two keys (``min <= max``) stay in the task's
``check_config``; checks that need the machine (a GPU) stay in the engine.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ftclip.errors import ConfigError

#: the ``dataclasses.field`` metadata key holding a field's :class:`Domain`
DOMAIN = "ftclip_domain"
_NO_DEFAULT = object()


class Domain:
    """A set of allowed values: :meth:`contains`, a description (``text``) and examples outside it."""

    text: str = ""

    def contains(self, value: Any) -> bool:
        raise NotImplementedError

    def outside(self) -> list[Any]:
        """A few values not in the domain (what the schema walk test feeds each key)."""
        raise NotImplementedError

    def __or__(self, other: "Domain") -> "AnyOf":
        return AnyOf(self, other)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.text}>"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


class Interval(Domain):
    """Finite numbers between ``low`` and ``high`` (either may be None: unbounded); ``integer``: whole numbers."""

    def __init__(self, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False, integer: bool = False):
        self.low, self.high, self.low_open, self.high_open, self.integer = low, high, low_open, high_open, integer
        what = "an integer" if integer else "a finite number"
        if low is not None and high is not None:
            self.text = f"{what} in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
        elif low is not None:
            self.text = f"{what} {'>' if low_open else '>='} {_fmt(low)}"
        elif high is not None:
            self.text = f"{what} {'<' if high_open else '<='} {_fmt(high)}"
        else:
            self.text = what

    def contains(self, value: Any) -> bool:
        if not _is_number(value) or not math.isfinite(value):
            return False
        if self.integer and not float(value).is_integer():
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def outside(self) -> list[Any]:
        values: list[Any] = []
        if self.low is not None:
            values.append(self.low - 1 if self.integer else float(self.low) - (0.0 if self.low_open else 1.0))
        if self.high is not None:
            values.append(self.high + 1 if self.integer else float(self.high) + (0.0 if self.high_open else 1.0))
        if not self.integer:
            values.append(math.nan)
            if self.low is None or self.high is None:
                values.append(math.inf if self.high is None else -math.inf)
        return [v for v in values if not self.contains(v)]


class OneOf(Domain):
    """One of a fixed set of values (names, usually)."""

    def __init__(self, *choices: Any):
        self.choices = tuple(choices)
        self.names = ", ".join(str(c) for c in self.choices)
        self.text = self.names if len(self.choices) == 1 else f"one of: {self.names}"

    def contains(self, value: Any) -> bool:
        return any(_same(value, c) or _is_number(value) and _is_number(c) and value == c for c in self.choices)

    def outside(self) -> list[Any]:
        if all(isinstance(c, str) for c in self.choices):
            return ["no-such-choice"]
        numbers = [c for c in self.choices if _is_number(c)]
        return [max(numbers) + 1] if numbers else []


class Each(Domain):
    """A list whose every item is in ``item`` (``mapping``: a mapping whose every value is); optionally a fixed
    or minimum length."""

    def __init__(self, item: Domain, *, length: int | None = None, min_length: int = 0, mapping: bool = False):
        self.item, self.length, self.min_length, self.mapping = item, length, min_length, mapping
        if mapping:
            size = "a mapping of names to values"
        elif length is not None:
            size = f"a list of {length} values"
        elif min_length:
            size = "a non-empty list" if min_length == 1 else f"a list of at least {min_length} values"
        else:
            size = "a list"
        self.text = f"{size} (each {item.text})"

    def contains(self, value: Any) -> bool:
        if self.mapping:
            if not isinstance(value, Mapping):
                return False
            items = list(value.values())
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            return False
        if self.length is not None and len(items) != self.length or len(items) < self.min_length:
            return False
        return all(self.item.contains(v) for v in items)

    def outside(self) -> list[Any]:
        if self.mapping:
            return [{"x": bad} for bad in self.item.outside()]
        size = max(self.length or 1, self.min_length, 1)
        values: list[Any] = [[bad] * size for bad in self.item.outside()]
        if self.length is not None or self.min_length:
            values.append([])
        return values


class Name(Domain):
    """A non-empty string."""

    text = "a non-empty name"

    def contains(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip())

    def outside(self) -> list[Any]:
        return [""]


class AnyOf(Domain):
    """Values in at least one of several domains (``POSITIVE_INT | OneOf("auto")``)."""

    def __init__(self, *parts: Domain):
        self.parts = tuple(p for part in parts for p in (part.parts if isinstance(part, AnyOf) else (part,)))
        texts = [p.names if isinstance(p, OneOf) else p.text for p in self.parts]
        self.text = f"{', '.join(texts[:-1])} or {texts[-1]}"

    def contains(self, value: Any) -> bool:
        return any(p.contains(value) for p in self.parts)

    def outside(self) -> list[Any]:
        seen: list[Any] = []
        for part in self.parts:
            for value in part.outside():
                if not self.contains(value) and not any(_same(value, s) for s in seen):
                    seen.append(value)
        return seen


def _same(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


# --------------------------------------------------------------------------- the common domains
POSITIVE_INT = Interval(1, integer=True)
NON_NEGATIVE_INT = Interval(0, integer=True)
POSITIVE = Interval(0, low_open=True)
NON_NEGATIVE = Interval(0)
FINITE = Interval()
FRACTION = Interval(0, 1)  # a probability
SEED = Interval(0, 2**32 - 1, integer=True)  # what numpy's seeding accepts
NAME = Name()


def within(domain: Domain, default: Any = _NO_DEFAULT, *, factory: Any = None) -> Any:
    """A dataclass field whose values must be in ``domain`` (``default`` or a ``factory`` for lists/dicts)."""
    metadata = {DOMAIN: domain}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    if default is _NO_DEFAULT:
        raise TypeError("within() needs a default (omegaconf.MISSING for a required key) or a factory")
    return dataclasses.field(default=default, metadata=metadata)


def domain_of(field: dataclasses.Field) -> Domain | None:
    return field.metadata.get(DOMAIN)


# --------------------------------------------------------------------------- walking a schema
def _unwrap_optional(kind: Any) -> Any:
    if typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def section_type(kind: Any) -> type | None:
    """The dataclass of a nested section (``ModelConfig``, ``Optional[...]``), else None."""
    kind = _unwrap_optional(kind)
    return kind if dataclasses.is_dataclass(kind) else None


def entry_type(kind: Any) -> type | None:
    """The dataclass of the entries of a ``Dict[str, <dataclass>]`` field (``stages``), else None."""
    kind = _unwrap_optional(kind)
    if typing.get_origin(kind) is dict:
        args = typing.get_args(kind)
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return args[1]
    return None


def is_numeric(kind: Any) -> bool:
    """Whether a field type holds numbers: int, float, or a list / mapping of them (bool is not a number)."""
    kind = _unwrap_optional(kind)
    if kind in (int, float):
        return True
    origin = typing.get_origin(kind)
    if origin in (list, dict):
        args = typing.get_args(kind)
        return bool(args) and is_numeric(args[-1])
    return False


def walk(schema: type, prefix: str = "", entry: str = "<name>") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """Every key of ``schema`` as ``(dotted key, field, type)``, sections flattened; the entries of a
    ``Dict[str, <dataclass>]`` field appear once, under the name ``entry`` (``stages.<name>.epochs``)."""
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        key, kind = f"{prefix}{field.name}", hints[field.name]
        yield key, field, kind
        if (section := section_type(kind)) is not None:
            yield from walk(section, f"{key}.", entry)
        elif (item := entry_type(kind)) is not None:
            yield from walk(item, f"{key}.{entry}.", entry)


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def show(value: Any) -> str:
    """A value as a recipe would write it (``0``, ``nan``, ``'fp8'``, ``[0.0, 0.0, 0.0]``)."""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return repr(value)


def violations(cfg: DictConfig, schema: type, prefix: str = "") -> list[str]:
    """``key=value is not allowed: it must be ...`` for every value of ``cfg`` outside its field's domain."""
    hints = typing.get_type_hints(schema)
    found: list[str] = []
    for field in dataclasses.fields(schema):
        key, kind = f"{prefix}{field.name}", hints[field.name]
        value = cfg.get(field.name) if isinstance(cfg, DictConfig) else None
        domain = domain_of(field)
        if domain is not None and value is not None and not domain.contains(_plain(value)):
            found.append(f"{key}={show(_plain(value))} is not allowed: it must be {domain.text}")
        if value is None:
            continue
        if (section := section_type(kind)) is not None:
            found += violations(value, section, f"{key}.")
        elif (item := entry_type(kind)) is not None:
            for name, entry in value.items():
                found += violations(entry, item, f"{key}.{name}.")
    return found


def check_values(cfg: DictConfig, schema: type, source: str) -> None:
    """One ConfigError naming every value of ``cfg`` outside its domain (the first three, and a count)."""
    found = violations(cfg, schema)
    if found:
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise ConfigError(f"{source}: {'; '.join(found[:3])}{more}")
