"""`--config FILE` and the setting flags, for `scan`, `crondor start` and `config show`; `config docs`.

One place turns the command line into the effective ``PipelineConfig`` (``cog_pipeline.config``), so the
three commands cannot disagree about what a flag means. A bad value is one line naming the setting, exit 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cog_pipeline.cli.options import EXIT_USAGE, check_scan_args, check_stac, cog_profile_option, fail
from cog_pipeline.config import (
    ConfigError,
    PipelineConfig,
    click_options,
    flag_values,
    load_config,
    settings_table,
    show,
)


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
        help="Settings file (TOML, docs/configuration.md); the environment and flags override it.",
    )(func)


def setting_options(*, exclude: tuple[str, ...] = (), cog_profile: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--config, every declared setting's flag (but those of the `exclude`d sections) and --cog-profile."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = click_options(exclude=exclude)(func)
        return config_option(cog_profile_option(func) if cog_profile else func)

    return decorate


def effective_config(kw: dict[str, Any]) -> PipelineConfig:
    """The configuration the command runs with: the --config file, the environment, then the flags given."""
    try:
        return load_config(kw.get("config_path"), flag_values(kw))
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
        raise  # unreachable: fail() exits


def scan_config(kw: dict[str, Any]) -> PipelineConfig:
    """A scan's arguments checked and its configuration loaded (`scan`, and `crondor start`, whose ticks would
    otherwise refuse them every 15 minutes): one line and exit 2 for the first problem."""
    check_scan_args(kw)
    config = effective_config(kw)
    check_stac(config)
    return config


@click.group("config")
def config_group() -> None:
    """The settings: every one has a default, a --config file entry and most a flag (docs/configuration.md)."""


@config_group.command("show")
@setting_options()
def config_show(**kw: Any) -> None:
    """Print the effective settings as TOML (defaults, the file, the environment, then the flags); never a secret."""
    click.echo(show(effective_config(kw)), nl=False)


@config_group.command("docs")
def config_docs() -> None:
    """Print the settings table of docs/configuration.md (Markdown), generated from the declarations."""
    click.echo(settings_table(), nl=False)
