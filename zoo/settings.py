"""Typed process settings whose fields become CLI flags.

Each process (train, export, serve, load) has one `pydantic-settings` class with the
env prefix `ZOO_`. `add_settings_arguments` hands its fields to pydantic-settings' own
command-line source, which adds them to the process's argparse parser (`batch_size` ->
`--batch-size`, a bool as `--x/--no-x`, a list as `1,8,32`, help with the field's
description, default and environment variable), and `settings_from_args` builds the
settings from the flags that were given, so precedence is: flag, then environment
variable, then the field's default. A value the settings refuse is one line naming its
flag (`format_validation_error`), not argparse's usage text.
"""

from __future__ import annotations

import argparse
from typing import TypeVar

import pydantic
from pydantic_settings import BaseSettings, CliSettingsSource, SettingsConfigDict

from zoo.errors import InvalidArgumentError

S = TypeVar("S", bound=BaseSettings)


class ZooSettings(BaseSettings):
    """Base of every process's settings: env prefix `ZOO_`, unknown variables ignored."""

    model_config = SettingsConfigDict(
        env_prefix="ZOO_",
        extra="ignore",
        frozen=True,
        cli_kebab_case=True,
        cli_implicit_flags=True,  # --x/--no-x, as argparse's BooleanOptionalAction
        cli_hide_none_type=True,  # `--out Path`, not `--out {Path,null}`
        cli_show_env_vars=True,
        # An optional flag left out reads "(default: unset)"; pydantic-settings says "null".
        cli_parse_none_str="unset",
    )


def add_settings_arguments(
    parser: argparse.ArgumentParser, settings_cls: type[BaseSettings]
) -> None:
    """Add one `--flag` per settings field; defaults stay with the settings class."""
    CliSettingsSource(settings_cls, root_parser=parser)


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


def settings_from_args(settings_cls: type[S], args: argparse.Namespace) -> S:
    """Build settings from the given flags, env vars and defaults."""
    try:
        # The namespace holds only the flags that were given (the source adds them
        # suppressed), so an unset flag leaves its environment variable in force.
        cli = CliSettingsSource(settings_cls)(parsed_args=args)
        return settings_cls(_cli_settings_source=cli)
    except pydantic.ValidationError as error:
        raise InvalidArgumentError(format_validation_error(error)) from None
