"""Command-line options declared on the fields of a config dataclass.

A field declared with :func:`option` carries its help text, argument group and choices in its
metadata; :func:`add_options` turns every such field into an argparse argument (``--field-name``,
with the field's default, and its type and nargs read from the annotation) and
:func:`option_values` reads the parsed values back. So a default and its choices are stated once,
on the field. Fields declared without :func:`option` are not on the command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Callable, Sequence

__all__ = ["Option", "add_options", "flag", "option", "option_fields", "option_values"]

_METADATA_KEY = "sammed_fast.option"


@dataclasses.dataclass(frozen=True)
class Option:
    """How a config field appears on the command line."""

    help: str
    group: str | None = None  # argument group title; None -> the parser's own options
    choices: Sequence[str] | None = None
    parse: Callable[[str], Any] | None = None  # parses the one value given instead of the annotation's type


def option(default: Any, help: str, *, group: str | None = None, choices: Sequence[str] | None = None,
           parse: Callable[[str], Any] | None = None) -> Any:
    """A dataclass field with this default that is also a command-line option (see :class:`Option`)."""
    return dataclasses.field(default=default, metadata={_METADATA_KEY: Option(help, group, choices, parse)})


def option_fields(config_class: type) -> list[dataclasses.Field]:
    """The fields of ``config_class`` that are command-line options, in field order."""
    return [field for field in dataclasses.fields(config_class) if _METADATA_KEY in field.metadata]


def flag(field: dataclasses.Field) -> str:
    """The field's command-line flag: ``--tile-size`` for tile_size; a switch that is on by default
    is turned off with ``--no-<name>``."""
    name = field.name.replace("_", "-")
    return f"--no-{name}" if field.default is True else f"--{name}"


def add_options(parser: argparse.ArgumentParser, config_class: type) -> None:
    """Adds an argument for every option field of ``config_class``, in its group; the help shows
    the field's default."""
    annotations = typing.get_type_hints(config_class)
    groups: dict[str | None, Any] = {None: parser}
    for field in option_fields(config_class):
        spec: Option = field.metadata[_METADATA_KEY]
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        groups[spec.group].add_argument(flag(field), dest=field.name, default=field.default,
                                        **_argument(annotations[field.name], field.default, spec))


def option_values(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The parsed value of every option field of ``config_class``, by field name."""
    return {field.name: getattr(args, field.name) for field in option_fields(config_class)}


def _argument(annotation: Any, default: Any, spec: Option) -> dict[str, Any]:
    """add_argument's keywords for a field: bool -> a switch; tuple[T, ...] -> one or more T."""
    value_type = _without_none(annotation)
    if value_type is bool:
        return {"action": "store_false" if default else "store_true", "help": spec.help}
    text = spec.help if default is None else f"{spec.help} (default: %(default)s)"
    if spec.parse is None and typing.get_origin(value_type) is tuple:
        return {"type": typing.get_args(value_type)[0], "nargs": "+", "choices": spec.choices, "help": text}
    return {"type": spec.parse or value_type, "choices": spec.choices, "help": text}


def _without_none(annotation: Any) -> Any:
    """``X | None`` -> X; any other annotation unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return annotation
