"""`--config FILE` and the flags that override it, for `scan`, `crondor start` and `config show`.

One place turns the command line into the effective ``PipelineConfig`` (``cog_pipeline.config``), so the
three commands cannot disagree about what a flag means. A bad value is one line naming the setting, exit 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .config import DATA_CONFIGURATIONS, ConfigError, PipelineConfig, load_config, overrides_from_flags, show
from .options import EXIT_USAGE, fail


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
        help="Production configuration file (TOML, docs/chtc.md); flags override it.",
    )(func)


def resource_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Flags for the settings an operator changes most; everything else lives in the file."""
    options = [
        click.option("--container-image", help="Container image for the conversions (overrides [container] image)."),
        click.option("--no-container", is_flag=True, default=None, help="Run the converter without a container."),
        click.option("--cpus", type=click.IntRange(min=1), help="Cores per conversion job."),
        click.option("--memory", type=click.IntRange(min=1), help="Memory per conversion job, MB."),
        click.option("--disk", type=click.IntRange(min=1), help="Disk per conversion job, MB."),
        click.option("--wall-time", type=click.IntRange(min=0), help="Seconds a conversion may run before it is removed (0: no limit)."),
        click.option("--data-configuration", type=click.Choice(DATA_CONFIGURATIONS), help="auto: nonsharedfs for S3 buckets, condorio for folders."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def effective_config(kw: dict[str, Any]) -> PipelineConfig:
    """The configuration the command runs with: the --config file, then the flags given."""
    try:
        return load_config(kw.get("config_path"), overrides_from_flags(kw))
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
        raise  # unreachable: fail() exits


@click.group("config")
def config_group() -> None:
    """The production configuration file (TOML): see docs/chtc.md."""


@config_group.command("show")
@config_option
@click.option("-m", "--max-running", type=click.IntRange(min=1), help="DAGMan maxjobs.")
@click.option("--retries", type=click.IntRange(min=0), help="Retries per job.")
@click.option("--cluster-size", type=click.IntRange(min=0), help="Images per clustered job (0: none).")
@resource_options
def config_show(**kw: Any) -> None:
    """Print the effective settings (defaults, the file, then the flags); never a secret."""
    click.echo(show(effective_config(kw)))
