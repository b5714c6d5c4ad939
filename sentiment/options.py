"""One dataclass per surface, turned into argparse options and back.

Field metadata carries the help text (and choices); the dataclass's own
``__post_init__`` validates values and names the option in its message.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _base_type(hint: Any) -> Any:
    """``int`` for ``int | None``: optional options take the type they hold."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def check_whole(owner: Any, names: tuple[str, ...], minimum: int = 1, options: bool = True,
                maximum: int | None = None) -> None:
    """Each named attribute of ``owner`` must be a whole number of at least ``minimum`` (and at
    most ``maximum``); the message names it as an option (``--batch-size``) or, for a file's field, as is."""
    from .errors import SentimentError

    for name in names:
        value = getattr(owner, name)
        shown = option_name(name) if options else name
        if isinstance(value, bool) or not isinstance(value, int):
            raise SentimentError(f"{shown} must be a whole number (got {value!r})")
        if value < minimum:
            raise SentimentError(f"{shown} must be at least {minimum} (got {value})")
        if maximum is not None and value > maximum:
            raise SentimentError(f"{shown} must be at most {maximum:,} (got {value:,})")


def add_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--option`` per field of dataclass ``cls`` (defaults shown in --help)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or field.metadata.get("cli") is False:
            continue
        kind = _base_type(hints[field.name])
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kwargs: dict[str, Any] = {"dest": field.name, "default": default}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            kwargs["metavar"] = field.metadata.get("metavar", field.name.split("_")[-1].upper())
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
            kwargs.pop("metavar", None)
        if default is not None and kind is not bool:
            help_text += f" (default: {default})"
        parser.add_argument(option_name(field.name), help=help_text, **kwargs)


def from_args(cls: type[T], namespace: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from parsed options (only the fields ``cls`` has)."""
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if hasattr(namespace, f.name)}
    values.update(overrides)
    return cls(**values)
