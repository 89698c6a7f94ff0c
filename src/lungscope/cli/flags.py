"""Flags from declarations: the declared fields of a config dataclass (:mod:`lungscope.options`) as argparse flags,
and the flags given as the config's overrides. Names, types, choices and help with the default come from the field."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Collection
from typing import Any

from lungscope.options import Option, declared

_DEST = "config."  # a flag's dest is its field's name under this prefix: no clash with a verb's own flags


def _text(value: Any) -> str:
    """A default as a command line would write it: ``on``, ``512 128``, ``0.001``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def _help(field: dataclasses.Field[Any], spec: Option) -> str:
    """The declared help and, where there is one, the dataclass's default (or its ``default_help`` wording)."""
    default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
    unshown = default in (None, "") or spec.const is not None  # a switch's default: not switched
    shown = spec.default_help or (None if unshown else _text(default))
    text = spec.help if shown is None else f"{spec.help} (default: {shown})"
    return text.replace("%", "%%")  # argparse %-formats a help


def _converter(kind: type, optional: bool) -> Callable[[str], Any]:
    """``kind`` of a flag's word; where the field takes None, the word ``none`` gives None."""
    if not optional:
        return kind

    def convert(text: str) -> Any:
        return None if text == "none" else kind(text)

    convert.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return convert


def add_config_flags(parser: argparse.ArgumentParser, config: type, skip: Collection[str] = ()) -> None:
    """A flag for each declared field of ``config`` (a dataclass) not in ``skip`` and not a mapping:
    ``--image-size`` for ``image_size`` (or the declared ``flag``); a bool is a ``--x/--no-x`` switch, a declared
    ``const`` a switch setting it, a list takes any number of values. An unset flag leaves the config's value."""
    hints = typing.get_type_hints(config)
    for field in dataclasses.fields(config):
        spec = declared(field)
        if spec is None or field.name in skip:
            continue
        hint = hints[field.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)] if union else [hint]
        optional = union and len(kinds) < len(typing.get_args(hint))
        kind = typing.get_origin(kinds[0]) or kinds[0]
        flag = spec.flag or "--" + field.name.replace("_", "-")
        common: dict[str, Any] = {"dest": _DEST + field.name, "default": argparse.SUPPRESS, "help": _help(field, spec)}
        if spec.const is not None:
            parser.add_argument(flag, action="store_const", const=spec.const, **common)
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind is list:
            parser.add_argument(flag, nargs="*", type=typing.get_args(kinds[0])[0],
                                metavar=spec.metavar or "X", **common)
        elif kind is not dict:
            parser.add_argument(flag, type=_converter(kind, optional and not spec.choices),
                                choices=spec.choices or None,
                                metavar=None if spec.choices else spec.metavar or flag[2:].replace("-", "_").upper(),
                                **common)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The values of the config flags given on the command line, by field name."""
    return {name[len(_DEST):]: value for name, value in vars(args).items() if name.startswith(_DEST)}
