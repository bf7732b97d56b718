"""Command-line pieces shared by `cog-pipeline` and `cog-pipeline crondor`: options, store config, errors.

Kept apart from cli.py so crondor/ can use them without importing the CLI that imports it.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cog_pipeline.errors import RUN_FILE_ERRORS, one_line, os_error_line
from cog_pipeline.storage.store import StoreConfig, StoreError, key_file_problem, normalise_endpoint

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class Failed(SystemExit):
    """fail()'s exit: the exit code, and the line it printed (the tick history keeps it)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(code)
        self.message = message


def fail(message: str, code: int = EXIT_ERROR) -> None:
    """One `error:` line on stderr and exit `code`; under `--json` also the error as JSON on stdout."""
    click.echo(f"error: {message}", err=True)
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.params.get("as_json"):
        import json

        from cog_pipeline.cli.tick_log import SCHEMA_VERSION

        click.echo(json.dumps({"schema_version": SCHEMA_VERSION, "error": message, "exit_code": code}, ensure_ascii=False))
    raise Failed(message, code)


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


def output_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Where outputs go when the input and output bucket are one (issue 8.5): never over the source images."""
    return _apply(func, [
        click.option("--output-prefix", metavar="PREFIX", help="Write outputs at PREFIX<key> in the output bucket (e.g. 'cogs/'); needed when it is the input bucket."),
        click.option("--replace-inputs", is_flag=True, help="Input bucket = output bucket without a prefix: let the COGs replace the source GeoTIFFs."),
    ])


def check_scan_args(kw: dict[str, Any]) -> None:
    """Refuse, before anything is listed or claimed, a pattern that could claim images and a bucket set-up
    whose outputs would overwrite the inputs: one line, exit 2."""
    from cog_pipeline.run.naming import check_buckets, check_pattern
    from cog_pipeline.storage.store import bucket_folder

    prefix = kw.get("output_prefix")
    root = kw.get("local_root")
    same = None
    if root:  # folder buckets are one bucket when their folders are one, whatever their names (`out -> in`)
        same = bucket_folder(root, kw["input_bucket"]) == bucket_folder(root, kw["output_bucket"])
    problem = check_pattern(kw["pattern"]) or check_buckets(
        kw["input_bucket"], kw["output_bucket"], prefix, bool(kw.get("replace_inputs")), same
    )
    if problem is None and prefix is not None:
        # A prefix must be a clean folder whatever the buckets: judge its form as check_buckets does for one bucket.
        problem = check_buckets(kw["input_bucket"], kw["input_bucket"], prefix, False)
    if problem:
        fail(problem, EXIT_USAGE)


#: scan and crondor start: on top of the --config file's [profile]
cog_profile_option = click.option(
    "--cog-profile", "cog_profile", multiple=True, metavar="NAME=VALUE",
    help="Override a conversion profile setting (compress, predictor, blocksize, overview_resampling, jpeg_quality, "
         "preview_bands); repeatable; on top of the --config file's [profile].")


def store_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by every command that reaches buckets."""
    options = [
        click.option("-e", "--endpoint", metavar="URL", help="S3-compatible endpoint: https://host, host:port or http://host:port. Default: AWS."),
        click.option("-a", "--access-key-file", type=click.Path(path_type=Path), help="File holding the S3 access key (as the original tool). Default: the standard AWS credential chain."),
        click.option("-s", "--secret-key-file", type=click.Path(path_type=Path), help="File holding the S3 secret key; give it with -a."),
        click.option("--region", help="S3 region (default: AWS_DEFAULT_REGION or us-east-1)."),
        click.option("--retry-mode", type=click.Choice(["standard", "adaptive"]), default="standard", show_default=True, help="botocore retry mode; adaptive also rate-limits the client when the store pushes back."),
        click.option("--local-root", type=click.Path(file_okay=False, path_type=Path), help="Use local folders as buckets: bucket NAME is the folder DIR/NAME (the embedded default; no S3 needed)."),
    ]
    return _apply(func, options)


def check_stac(config: Any) -> None:
    """STAC needs its extra installed, and a base URL means nothing without STAC: one line, exit 2."""
    if config.publish.stac_base_url and not config.publish.stac:
        fail("--stac-base-url (publish.stac_base_url) needs --stac (publish.stac)", EXIT_USAGE)
    if config.publish.stac:
        try:
            import pystac  # noqa: F401
            import rio_stac  # noqa: F401
        except ImportError:
            fail("--stac needs pystac and rio-stac: run pip install -e '.[stac]' in the cog-pipeline checkout", EXIT_USAGE)


def profile_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--profile NAME`: a named AWS profile (its keys and region) instead of -a/-s or the default chain."""
    return click.option("--profile", metavar="NAME", help="AWS profile from ~/.aws/config and ~/.aws/credentials (its keys and region).")(func)


def scan_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """What a scan is given (`scan`, and `crondor start` for its ticks): buckets and pattern, where outputs go,
    how to reach the store."""
    return bucket_options(output_options(store_options(profile_option(func))))


def store_config(kw: dict[str, Any]) -> StoreConfig:
    if kw.get("local_root") and (kw.get("endpoint") or kw.get("access_key_file")):
        fail("--local-root uses folders as buckets; do not combine it with -e/-a/-s", EXIT_USAGE)
    for name, what in (("access_key_file", "access key"), ("secret_key_file", "secret key")):
        path = kw.get(name)
        problem = key_file_problem(path, what) if path is not None else None
        if problem:  # missing, a folder, a device such as /dev/urandom, binary, empty: named, never echoed
            fail(f"{'-a' if name == 'access_key_file' else '-s'}: {problem}", EXIT_USAGE)
    if bool(kw.get("access_key_file")) != bool(kw.get("secret_key_file")):
        fail("give both -a (access key file) and -s (secret key file), or neither", EXIT_USAGE)
    if kw.get("profile") and (kw.get("access_key_file") or kw.get("local_root")):
        fail("--profile names where the S3 keys come from; do not combine it with -a/-s or --local-root", EXIT_USAGE)
    try:
        normalise_endpoint(kw.get("endpoint"))  # before anything is written: an endpoint with user:pass@ is refused
    except StoreError as exc:
        fail(f"-e: {exc}", EXIT_USAGE)
    local_root = kw.get("local_root")
    return StoreConfig(
        local_root=local_root.resolve() if local_root else None,
        endpoint=kw.get("endpoint"),
        access_key_file=kw["access_key_file"].resolve() if kw.get("access_key_file") else None,
        secret_key_file=kw["secret_key_file"].resolve() if kw.get("secret_key_file") else None,
        region=kw.get("region"),
        retry_mode=kw.get("retry_mode") or "standard",
        profile=kw.get("profile") or None,
    )




def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Known failures become one clear line and exit 1, never a traceback (and never a secret)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cog_pipeline.engines.base import WorkflowError
        from cog_pipeline.run.claim import ClaimError, ClaimLost
        from cog_pipeline.run.rundir import DamagedRunDir, LeaseHeld
        from cog_pipeline.run.state import IllegalTransition

        try:
            return func(*args, **kwargs)
        except ClaimLost as exc:
            fail(f"claim lost: {exc}")
        except (StoreError, ClaimError, WorkflowError, DamagedRunDir, LeaseHeld, IllegalTransition) as exc:
            fail(str(exc))
        except OSError as exc:  # a read-only or full disk, a missing file: the path and the reason, one line
            if exc.errno == errno.EPIPE:
                raise  # the reader went away (`cog-pipeline status | head`): click exits quietly
            fail(os_error_line(exc))
        except RUN_FILE_ERRORS as exc:
            fail(f"a run file cannot be read: {one_line(exc)}")

    return wrapper


