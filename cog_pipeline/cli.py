"""The `cog-pipeline` command: a thin click layer over pipeline, reconcile and the engines.

Flags keep the original tool's names (`--input-bucket`, `--output-bucket`, `-p`, `-a`, `-s`, `-e`, `-m`) so
existing Crondor set-ups and muscle memory carry over.
"""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .store import StoreConfig, StoreError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _fail(message: str, code: int = EXIT_ERROR) -> None:
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
        click.option("-m", "--max-running", type=click.IntRange(min=1), default=10000, show_default=True, help="Most conversion jobs running at once per workflow (DAGMan maxjobs)."),
        click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True, help="Retries per job."),
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


def _store_config(kw: dict[str, Any]) -> StoreConfig:
    if kw.get("local_root") and (kw.get("endpoint") or kw.get("access_key_file")):
        _fail("--local-root uses folders as buckets; do not combine it with -e/-a/-s", EXIT_USAGE)
    for name in ("access_key_file", "secret_key_file"):
        path = kw.get(name)
        if path is not None and not path.is_file():
            _fail(f"{'-a' if name == 'access_key_file' else '-s'} {path}: no such file", EXIT_USAGE)
    if bool(kw.get("access_key_file")) != bool(kw.get("secret_key_file")):
        _fail("give both -a (access key file) and -s (secret key file), or neither", EXIT_USAGE)
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
        from .engine_local import WorkflowError

        try:
            return func(*args, **kwargs)
        except (StoreError, ClaimError, WorkflowError, FileNotFoundError) as exc:
            _fail(str(exc))

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="cog-pipeline")
def main() -> None:
    """Turn GeoTIFFs listed in bucket manifests into Cloud Optimized GeoTIFFs and JPEG previews.

    Manifests (`key,bands` rows, default glob `*raw.csv`) are claimed by renaming them
    `*processing-<TS>.csv`; each becomes a Pegasus workflow run by the local engine (default) or by
    Pegasus on HTCondor; results land as `*processed-<TS>.csv` and `*failed-<TS>.csv` beside the manifest.
    """


@main.command()
@bucket_options
@store_options
@click.option("-w", "--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True, help="Where workflow-run-<TS>/ directories are kept.")
@click.option("--engine", type=click.Choice(["local", "pegasus"]), default="local", show_default=True, help="local: run the workflow here with a process pool; pegasus: pegasus-plan onto HTCondor.")
@workflow_options
@click.option("--workers", type=click.IntRange(min=1), help="local engine: worker processes (default: one per CPU).")
@click.option("--no-submit", is_flag=True, help="pegasus: plan the workflow but do not submit it.")
@click.option("--dry-run", is_flag=True, help="List what would be claimed; change nothing.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def scan(**kw: Any) -> None:
    """One trigger tick: claim waiting manifests, run their workflows, reconcile.

    Also carries on runs an earlier tick left unfinished (after a crash), so running it again is always safe.
    """
    from .pipeline import ScanOptions
    from .pipeline import scan as run_scan

    workflow: dict[str, Any] = {"retries": kw["retries"], "max_running": kw["max_running"]}
    if kw.get("cluster_size"):
        workflow["cluster_size"] = kw["cluster_size"]
    options = ScanOptions(
        input_bucket=kw["input_bucket"],
        output_bucket=kw["output_bucket"],
        store=_store_config(kw),
        work_dir=kw["work_dir"].resolve(),
        pattern=kw["pattern"],
        engine=kw["engine"],
        dry_run=kw["dry_run"],
        workers=kw.get("workers"),
        progress=not kw["quiet"] and sys.stderr.isatty(),
        submit=not kw["no_submit"],
        workflow=workflow,
    )
    report = run_scan(options, echo=click.echo)
    if options.dry_run:
        for key in report.would_claim:
            click.echo(f"would claim {key}")
        for problem in report.refused:
            click.echo(f"would not claim: {problem}")
        if not report.would_claim:
            click.echo("nothing to claim")
        return
    if not (report.claimed or report.resumed):
        click.echo("nothing to do: no manifest matches and no run is waiting")
    if report.errors:
        sys.exit(EXIT_ERROR)


@main.command("reconcile")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@handle_errors
def reconcile_cmd(run_dir: Path) -> None:
    """Write processed/failed CSVs for RUN_DIR from what is in the output bucket; remove its processing file.

    Safe to run any number of times: a reconciled run is reported, not redone.
    """
    from .reconcile import reconcile
    from .rundir import RunDir

    result = reconcile(RunDir(run_dir))
    prefix = "already reconciled: " if result.already_done else ""
    click.echo(f"{prefix}{result.processed} processed, {result.failed} failed")
    for key in (result.processed_key, result.failed_key, result.reasons_key):
        if key:
            click.echo(f"  {key}")


@main.command("run")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes (default: one per CPU).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def run_cmd(run_dir: Path, workers: int | None, quiet: bool) -> None:
    """Execute RUN_DIR's generated workflow with the local engine (jobs already done are skipped)."""
    from .engine_local import run_workflow
    from .rundir import RunDir

    result = run_workflow(RunDir(run_dir), workers=workers, progress=not quiet and sys.stderr.isatty())
    click.echo(f"{result.succeeded} succeeded, {result.failed} failed, {result.skipped} already done")
    for cmd, code in result.hooks:
        if code:
            click.echo(f"end hook exited {code}: {cmd}", err=True)


@main.command()
@click.option("--dir", "demo_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"), show_default=True, help="Folder for the example buckets and runs (recreated).")
@click.option("--size", type=click.IntRange(min=64), default=1024, show_default=True, help="Example image width/height in pixels.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def demo(demo_dir: Path, size: int, quiet: bool) -> None:
    """Run the whole pipeline on generated example images in local-folder buckets and show the results."""
    from .examples import make_example_bucket
    from .pipeline import ScanOptions
    from .pipeline import scan as run_scan

    demo_dir = demo_dir.resolve()
    if demo_dir.exists():
        shutil.rmtree(demo_dir)
    buckets = demo_dir / "buckets"
    (buckets / "cog-output").mkdir(parents=True)
    manifest = make_example_bucket(buckets / "cog-input", size=size)
    click.echo(f"example input bucket: {buckets / 'cog-input'} (manifest {manifest.name})")
    options = ScanOptions(
        input_bucket="cog-input",
        output_bucket="cog-output",
        store=StoreConfig(local_root=buckets),
        work_dir=demo_dir / "work",
        progress=not quiet and sys.stderr.isatty(),
    )
    report = run_scan(options, echo=click.echo)
    click.echo("")
    click.echo(f"output bucket {buckets / 'cog-output'}:")
    for path in sorted(p for p in (buckets / "cog-output").rglob("*") if p.is_file()):
        click.echo(f"  {path.relative_to(buckets / 'cog-output')}  ({path.stat().st_size:,} bytes)")
    click.echo(f"input bucket {buckets / 'cog-input'} (result files beside the manifest):")
    for path in sorted((buckets / "cog-input").glob("*.csv")):
        click.echo(f"  {path.name}:")
        for line in path.read_text(encoding="utf-8").splitlines():
            click.echo(f"      {line}")
    for run_dir in report.reconciled:
        click.echo(f"run directory: {run_dir.path}")


# The production loop on an HTCondor access point (crondor/commands.py).
from .crondor.commands import crondor, status  # noqa: E402

main.add_command(crondor)
main.add_command(status)
