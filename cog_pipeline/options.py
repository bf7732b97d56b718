"""Command-line pieces shared by `cog-pipeline` and `cog-pipeline crondor`: options, store config, errors.

Kept apart from cli.py so crondor/ can use them without importing the CLI that imports it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .store import StoreConfig, StoreError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _apply(func: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    for option in reversed(options):
        func = option(func)
    return func


def bucket_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Which buckets and manifests: the identity of a scan, and of the Crondor that runs it."""
    return _apply(func, [
        click.option("--input-bucket", required=True, help="Bucket holding the images and the manifests."),
        click.option("--output-bucket", required=True, help="Bucket receiving the COGs (same keys) and the .jpg previews."),
        click.option("-p", "--pattern", default="*raw.csv", show_default=True, help="Glob matched against full manifest keys."),
    ])


def workflow_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """How each claimed manifest's workflow is generated (the same for a scan and for the Crondor's ticks)."""
    return _apply(func, [
        # No click defaults: a flag not given leaves the --config file's value (defaults: 10000 and 3).
        click.option("-m", "--max-running", type=click.IntRange(min=1), help="Most conversion jobs running at once per workflow (DAGMan maxjobs; default 10000)."),
        click.option("--retries", type=click.IntRange(min=0), help="Retries per job (default 3)."),
        click.option("--cluster-size", type=click.IntRange(min=1), help="pegasus: cluster N images per HTCondor job."),
    ])


def store_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by every command that reaches buckets."""
    options = [
        click.option("-e", "--endpoint", metavar="URL", help="S3-compatible endpoint: https://host, host:port or http://host:port. Default: AWS."),
        click.option("-a", "--access-key-file", type=click.Path(dir_okay=False, path_type=Path), help="File holding the S3 access key (as the original tool). Default: the standard AWS credential chain."),
        click.option("-s", "--secret-key-file", type=click.Path(dir_okay=False, path_type=Path), help="File holding the S3 secret key; give it with -a."),
        click.option("--region", help="S3 region (default: AWS_DEFAULT_REGION or us-east-1)."),
        click.option("--retry-mode", type=click.Choice(["standard", "adaptive"]), default="standard", show_default=True, help="botocore retry mode; adaptive also rate-limits the client when the store pushes back."),
        click.option("--local-root", type=click.Path(file_okay=False, path_type=Path), help="Use local folders as buckets: bucket NAME is the folder DIR/NAME (the embedded default; no S3 needed)."),
    ]
    return _apply(func, options)


def store_config(kw: dict[str, Any]) -> StoreConfig:
    if kw.get("local_root") and (kw.get("endpoint") or kw.get("access_key_file")):
        fail("--local-root uses folders as buckets; do not combine it with -e/-a/-s", EXIT_USAGE)
    for name in ("access_key_file", "secret_key_file"):
        path = kw.get(name)
        if path is not None and not path.is_file():
            fail(f"{'-a' if name == 'access_key_file' else '-s'} {path}: no such file", EXIT_USAGE)
    if bool(kw.get("access_key_file")) != bool(kw.get("secret_key_file")):
        fail("give both -a (access key file) and -s (secret key file), or neither", EXIT_USAGE)
    local_root = kw.get("local_root")
    return StoreConfig(
        local_root=local_root.resolve() if local_root else None,
        endpoint=kw.get("endpoint"),
        access_key_file=kw["access_key_file"].resolve() if kw.get("access_key_file") else None,
        secret_key_file=kw["secret_key_file"].resolve() if kw.get("secret_key_file") else None,
        region=kw.get("region"),
        retry_mode=kw.get("retry_mode") or "standard",
    )


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Known failures become one clear line and exit 1, never a traceback (and never a secret)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .claim import ClaimError
        from .engines.base import WorkflowError
        from .rundir import DamagedRunDir, LeaseHeld
        from .state import IllegalTransition

        try:
            return func(*args, **kwargs)
        except (StoreError, ClaimError, WorkflowError, DamagedRunDir, LeaseHeld, IllegalTransition, FileNotFoundError) as exc:
            fail(str(exc))

    return wrapper


