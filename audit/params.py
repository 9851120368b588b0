"""Parameters declared as data, validated in one place.

Config sections, attacks and (later) defenses declare their parameters with the
constraints below; the same declarations validate user input, fill defaults, feed
`kansa list` and the schema documentation, so a message reads the same everywhere:
``audit.toml: attacks[1].eps: expected a number or a list of numbers in (0, 1], got "big"``.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from audit.errors import ConfigError

REQUIRED: Any = object()


def as_written(value: Any) -> str:
    """A value as the user would write it, on one line and at most about 60 characters."""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class Invalid(Exception):
    """Raised by a constraint with the 'expected ..., got ...' part of a message."""


class Constraint:
    """One accepted form of a value; `check` returns the normalised value or raises Invalid."""

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def fail(self, value: Any) -> Invalid:
        return Invalid(f"expected {self.describe()}, got {as_written(value)}")


@dataclass(frozen=True)
class Number(Constraint):
    low: float | None = None
    high: float | None = None
    closed: str = "both"  # which ends belong to the interval: both, left, right, neither
    integer: bool = False

    def _range(self) -> str:
        if self.low is None and self.high is None:
            return ""
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        low = "-inf" if self.low is None else _number(self.low)
        high = "inf" if self.high is None else _number(self.high)
        if self.low is not None and self.high is None:
            return f" {'>=' if left == '[' else '>'} {low}"
        if self.high is not None and self.low is None:
            return f" {'<=' if right == ']' else '<'} {high}"
        return f" in {left}{low}, {high}{right}"

    def describe(self) -> str:
        return ("an integer" if self.integer else "a number") + self._range()

    def describe_plural(self) -> str:
        return ("integers" if self.integer else "numbers") + self._range()

    def check(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(value)
        if self.integer and not float(value).is_integer():
            raise self.fail(value)
        if not math.isfinite(value):
            raise self.fail(value)
        left_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        right_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        if not (left_ok and right_ok):
            raise self.fail(value)
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class Text(Constraint):
    non_empty: bool = True

    def describe(self) -> str:
        return "a non-empty string" if self.non_empty else "a string"

    def check(self, value: Any) -> Any:
        if not isinstance(value, str) or (self.non_empty and not value.strip()):
            raise self.fail(value)
        return value


@dataclass(frozen=True)
class Flag(Constraint):
    def describe(self) -> str:
        return "true or false"

    def check(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise self.fail(value)
        return value


@dataclass(frozen=True)
class Choice(Constraint):
    options: tuple[Any, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(as_written(o) for o in self.options)

    def check(self, value: Any) -> Any:
        if isinstance(value, bool) or value not in self.options:
            hint = ""
            if isinstance(value, str):
                close = difflib.get_close_matches(value, [str(o) for o in self.options], n=1)
                hint = f" (did you mean {as_written(close[0])}?)" if close else ""
            raise Invalid(f"expected {self.describe()}, got {as_written(value)}{hint}")
        return value


@dataclass(frozen=True)
class ListOf(Constraint):
    item: Constraint
    min_len: int = 1
    max_len: int | None = None
    length: int | None = None

    def describe(self) -> str:
        size = ""
        if self.length is not None:
            size = f"{self.length} "
        inner = self.item.describe_plural() if isinstance(self.item, Number) else self.item.describe()
        if isinstance(self.item, Number):
            return f"a list of {size}{inner}"
        return f"a list of {size}items, each {inner}"

    def check(self, value: Any) -> Any:
        if not isinstance(value, list):
            raise self.fail(value)
        n = len(value)
        if (self.length is not None and n != self.length) or n < self.min_len or (
            self.max_len is not None and n > self.max_len
        ):
            raise self.fail(value)
        try:
            return [self.item.check(v) for v in value]
        except Invalid:
            raise self.fail(value) from None


@dataclass(frozen=True)
class OneOrMany(Constraint):
    """A single value or a list of them, always normalised to a list (a sweep)."""

    item: Number

    def describe(self) -> str:
        return f"{self.item.describe().replace(self.item._range(), '')} or a list of {self.item.describe_plural()}"

    def check(self, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise self.fail(value)
            try:
                checked = [self.item.check(v) for v in value]
            except Invalid:
                raise self.fail(value) from None
            if len(set(checked)) != len(checked):
                raise Invalid(f"expected distinct values, got {as_written(value)}")
            return checked
        try:
            return [self.item.check(value)]
        except Invalid:
            raise self.fail(value) from None


@dataclass(frozen=True)
class AnyTable(Constraint):
    """A table passed through as is (e.g. keyword arguments for a user's factory)."""

    def describe(self) -> str:
        return "a table"

    def check(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise self.fail(value)
        return value


@dataclass(frozen=True)
class AnyOf(Constraint):
    options: tuple[Constraint, ...]

    def describe(self) -> str:
        return " or ".join(o.describe() for o in self.options)

    def check(self, value: Any) -> Any:
        for option in self.options:
            try:
                return option.check(value)
            except Invalid:
                continue
        raise self.fail(value)


@dataclass(frozen=True)
class Param:
    """One named parameter: its constraint, default and a one-line reason for it.

    `quick` is a budget (steps, queries, models to train) small enough for a smoke run that still goes
    through every code path: the conformance tests run every registered attack and defense with it,
    a third-party one included, so a plugin declares it beside the default it shrinks.
    """

    name: str
    constraint: Constraint
    default: Any = REQUIRED
    doc: str = ""
    quick: Any = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe_default(self) -> str:
        return "required" if self.required else ("none" if self.default is None else as_written(self.default))


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Location:
    """Where a value sits in the user's file, for messages like `audit.toml: attacks[1].eps: ...`."""

    source: str
    path: str = ""

    def child(self, key: str | int) -> "Location":
        if isinstance(key, int):
            return Location(self.source, f"{self.path}[{key}]")
        shown = key if _BARE_KEY.fullmatch(key) else as_written(key)
        return Location(self.source, f"{self.path}.{shown}" if self.path else shown)

    def error(self, message: str) -> ConfigError:
        where = f"{self.source}: {self.path}: " if self.path else f"{self.source}: "
        return ConfigError(where + message)


@dataclass(frozen=True)
class ParamSet:
    """The parameters of one config table, validated together; unknown keys are errors."""

    params: tuple[Param, ...]
    extra_keys: tuple[str, ...] = field(default=())

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def validate(self, table: Any, where: Location) -> dict[str, Any]:
        if not isinstance(table, Mapping):
            raise where.error(f"expected a table, got {as_written(table)}")
        known = self.names() + list(self.extra_keys)
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {as_written(close[0])}?" if close else ""
                allowed = ", ".join(known) if known else "none"
                raise where.child(str(key)).error(f"unknown key{hint} (allowed here: {allowed})")
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name not in table:
                if p.required:
                    raise where.child(p.name).error(f"missing; expected {p.constraint.describe()}")
                out[p.name] = p.default
                continue
            value = table[p.name]
            if value is None and p.default is None:
                out[p.name] = None
                continue
            try:
                out[p.name] = p.constraint.check(value)
            except Invalid as exc:
                raise where.child(p.name).error(str(exc)) from None
        return out


def optional_tables(value: Any, where: Location) -> list[Any]:
    """An optional `[[name]]` array of tables (a single table is accepted as a list of one)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        name = where.path.rsplit(".", 1)[-1]
        raise where.error(f"expected one or more [[{name}]] tables, got {as_written(value)}")
    return value


def quick_values(params: Sequence[Param]) -> dict[str, Any]:
    """The declared smoke-run budgets: parameter name -> its `quick` value."""
    return {p.name: p.quick for p in params if p.quick is not None}


def describe_params(params: Sequence[Param]) -> list[dict[str, str]]:
    """Rows for `kansa list` and the schema docs."""
    return [
        {"name": p.name, "accepts": p.constraint.describe(), "default": p.describe_default(), "doc": p.doc}
        for p in params
    ]


def validate_tagged(
    table: Any,
    where: Location,
    tag: str,
    variants: Mapping[str, Sequence[Param]],
    common: Sequence[Param] = (),
    default_tag: str | None = None,
) -> dict[str, Any]:
    """Validate a table whose allowed keys depend on one key (`source`, `kind`, `name`)."""
    if not isinstance(table, Mapping):
        raise where.error(f"expected a table, got {as_written(table)}")
    chosen = table.get(tag, default_tag)
    if chosen is None:
        raise where.child(tag).error(f"missing; expected {Choice(tuple(variants)).describe()}")
    try:
        Choice(tuple(variants)).check(chosen)
    except Invalid as exc:
        raise where.child(tag).error(str(exc)) from None
    tag_param = Param(tag, Choice(tuple(variants)), default=default_tag if default_tag else REQUIRED)
    values = ParamSet((tag_param, *common, *variants[chosen])).validate(table, where)
    return values
