"""Options declared once: each field of a config dataclass carries its help, choices and range as metadata.

A config declares a field with :func:`option` (scikit-learn's parameter constraints, kept beside the field); its
``__post_init__`` calls :func:`check_options`, so a YAML file, a flag and a Python call are checked by the same
declarations, each failure one line naming the key. ``lungscope.cli.flags`` turns the same declarations into flags.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any

from lungscope.errors import ConfigError

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
               list: "a list", tuple: "a list", type(None): "null"}


@dataclass(frozen=True)
class Range:
    """The values a number may take: ``low`` and ``high`` (None: unbounded), each end included or not."""

    low: float | None = None
    high: float | None = None
    low_included: bool = True
    high_included: bool = True

    def __contains__(self, value: float) -> bool:
        """Finite and within the ends (NaN and infinity never are: an option never asks for them)."""
        above = self.low is None or value > self.low or (self.low_included and value == self.low)
        below = self.high is None or value < self.high or (self.high_included and value == self.high)
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        """``positive``, ``at least 1``, ``in [0, 1)``: what the range asks for, after "must be"."""
        if self.high is None:
            if self.low == 0 and not self.low_included:
                return "positive"
            return f"{'at least' if self.low_included else 'above'} {self.low}"
        if self.low is None:
            return f"{'at most' if self.high_included else 'below'} {self.high}"
        return f"in {'[' if self.low_included else '('}{self.low}, {self.high}{']' if self.high_included else ')'}"


POSITIVE = Range(0, low_included=False)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_included=False)  # [0, 1)


@dataclass(frozen=True)
class Option:
    """What a field declares beyond its type and default. ``default_help`` words a default that is not a value
    (``the model's``); ``flag`` and ``const`` rename its flag or make it a switch that sets ``const``."""

    help: str
    choices: Sequence[Any] = ()
    range: Range | None = None
    default_help: str | None = None
    metavar: str | None = None
    flag: str | None = None
    const: Any = None


def option(default: Any = MISSING, *, help: str, default_factory: Callable[[], Any] | Any = MISSING,
           choices: Sequence[Any] = (), range: Range | None = None, default_help: str | None = None,
           metavar: str | None = None, flag: str | None = None, const: Any = None) -> Any:
    """A dataclass field with its declaration (see :class:`Option`) in its metadata."""
    declared = Option(help, tuple(choices), range, default_help, metavar, flag, const)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"option": declared})


def declared(field: dataclasses.Field[Any]) -> Option | None:
    """The :class:`Option` a field was declared with, or None for a plain field."""
    return field.metadata.get("option")


def choices_of(config: type, name: str) -> tuple[Any, ...]:
    """The choices declared for the field ``name`` of the dataclass ``config`` (none: ``()``)."""
    spec = declared(next(f for f in dataclasses.fields(config) if f.name == name))
    return () if spec is None else tuple(spec.choices)


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type an annotation declares (an int is a number; a list serves for a tuple)."""
    origin = typing.get_origin(hint) or hint
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if origin is Any:
        return True
    if origin in (int, float):
        kind = numbers.Integral if origin is int else numbers.Real
        return isinstance(value, kind) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and (not args or all(_fits(item, args[0]) for item in value))
    return not isinstance(origin, type) or isinstance(value, origin)


def _type_name(hint: Any) -> str:
    """``a number``, ``an integer or null``...: what an annotation asks for, in a config file's words."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return " or ".join(_TYPE_NAMES.get(typing.get_origin(arg) or arg, str(arg)) for arg in args)


def check_options(config: Any) -> None:
    """Raise ConfigError, one line naming the key, for the first field of ``config`` off its type, its declared
    choices or its declared range (for a list: any item off them). None passes where the type allows it."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if not _fits(value, hints[field.name]):
            raise ConfigError(f"config key {field.name!r} must be {_type_name(hints[field.name])}, not {value!r}")
        spec = declared(field)
        if spec is None or value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if spec.choices and item not in spec.choices:
                raise ConfigError(f"{field.name} must be one of {', '.join(map(str, spec.choices))}, not {item!r}")
            if spec.range is not None and item not in spec.range:
                raise ConfigError(f"{field.name} must be {spec.range}, not {item!r}")
