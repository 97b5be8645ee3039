"""Typed process settings whose fields become CLI flags.

Each process (train, export, serve, load) has one `pydantic-settings` class with the
env prefix `ZOO_`. `add_settings_arguments` turns its fields into argparse flags
(`batch_size` -> `--batch-size`, help from the field's description), and
`settings_from_args` builds the settings from the flags that were given, so precedence
is: flag, then environment variable, then the field's default.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
from pydantic_settings import BaseSettings, SettingsConfigDict

from zoo.errors import InvalidArgumentError

S = TypeVar("S", bound=BaseSettings)


class ZooSettings(BaseSettings):
    """Base of every process's settings: env prefix `ZOO_`, unknown variables ignored."""

    model_config = SettingsConfigDict(env_prefix="ZOO_", extra="ignore", frozen=True)


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _flag_options(annotation: Any) -> dict[str, Any]:
    annotation = _unwrap_optional(annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": [str(c) for c in typing.get_args(annotation)], "type": str}
    if origin in (list, tuple):
        # Comma-separated on the command line: --sweep 1,8,32
        return {"type": lambda s: [p.strip() for p in s.split(",") if p.strip()]}
    if annotation in (int, float, str, Path):
        return {"type": annotation}
    return {"type": str}


def add_settings_arguments(
    parser: argparse.ArgumentParser, settings_cls: type[BaseSettings], *, skip: tuple[str, ...] = ()
) -> None:
    """Add one `--flag` per settings field; defaults stay with the settings class."""
    for name, field in settings_cls.model_fields.items():
        if name in skip:
            continue
        default = field.get_default(call_default_factory=True)
        help_text = field.description or ""
        if default is not None and default is not pydantic.fields.PydanticUndefined:
            help_text += f" (default: {default}; env ZOO_{name.upper()})"
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            help=help_text,
            **_flag_options(field.annotation),
        )


def format_validation_error(error: pydantic.ValidationError) -> str:
    """One line: the first problem, named as the user wrote it (a flag)."""
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check across fields names its flags itself
        return message
    flag = "--" + ".".join(str(p) for p in first["loc"]).replace("_", "-")
    got = first.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{flag}: {message}{got_text}"


def settings_from_args(settings_cls: type[S], args: argparse.Namespace, **extra: Any) -> S:
    """Build settings from the given flags (plus `extra`), env vars and defaults."""
    given = {k: v for k, v in vars(args).items() if k in settings_cls.model_fields}
    given.update(extra)
    try:
        return settings_cls(**given)
    except pydantic.ValidationError as error:
        raise InvalidArgumentError(format_validation_error(error)) from None
