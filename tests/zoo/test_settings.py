"""The settings-to-flags contract every CLI relies on, held by pydantic-settings' CLI source."""

from __future__ import annotations

import argparse
from typing import Literal

import pytest
from pydantic import Field

from zoo.errors import InvalidArgumentError
from zoo.settings import ZooSettings, add_settings_arguments, settings_from_args


class DemoSettings(ZooSettings):
    batch_size: int = Field(8, ge=1, description="images per request")
    progress: bool = Field(True, description="show progress")
    sweep: list[float] | None = Field(None, description="loads to run")
    device: Literal["cpu", "cuda"] = Field("cpu", description="where to run")


def parse(*argv: str) -> DemoSettings:
    parser = argparse.ArgumentParser(prog="zoo demo")
    add_settings_arguments(parser, DemoSettings)
    return settings_from_args(DemoSettings, parser.parse_args(argv))


def test_a_flag_overrides_its_variable_which_overrides_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse().batch_size == 8
    monkeypatch.setenv("ZOO_BATCH_SIZE", "16")
    monkeypatch.setenv("ZOO_PROGRESS", "false")
    assert (parse().batch_size, parse().progress) == (16, False)
    given = parse("--batch-size", "8", "--progress")
    assert (given.batch_size, given.progress) == (8, True)


def test_kebab_case_flags_negatable_bools_and_comma_separated_lists() -> None:
    settings = parse("--batch-size", "4", "--no-progress", "--sweep", "1,8,32")
    assert (settings.batch_size, settings.progress, settings.sweep) == (4, False, [1, 8, 32])
    with pytest.raises(SystemExit):  # argparse's own refusal of an unknown flag
        parse("--batch_size", "4")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ("--batch-size", "0"),
            "--batch-size: Input should be greater than or equal to 1 (got '0')",
        ),
        (("--batch-size", "x"), "--batch-size: Input should be a valid integer"),
        (("--device", "tpu"), "--device: Input should be 'cpu' or 'cuda' (got 'tpu')"),
    ],
)
def test_a_refused_value_is_one_line_naming_its_flag(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        parse(*argv)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_help_shows_each_default_and_variable() -> None:
    parser = argparse.ArgumentParser(prog="zoo demo")
    add_settings_arguments(parser, DemoSettings)
    text = " ".join(parser.format_help().split())
    assert "--batch-size int images per request (default: 8) [env: ZOO_BATCH_SIZE]" in text
    assert "--progress, --no-progress show progress (default: True) [env: ZOO_PROGRESS]" in text
