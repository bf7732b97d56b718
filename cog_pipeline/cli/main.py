"""The `cog-pipeline` command: a thin click layer over pipeline, reconcile and the engines.

Flags keep the original tool's names (`--input-bucket`, `--output-bucket`, `-p`, `-a`, `-s`, `-e`, `-m`) so
existing Crondor set-ups and muscle memory carry over.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from cog_pipeline.cli.config import config_group, effective_config, scan_config, setting_options
from cog_pipeline.cli.operator import provenance_cmd, report_cmd
from cog_pipeline.cli.options import EXIT_ERROR, fail, handle_errors, scan_options, store_config
from cog_pipeline.cli.warnings_log import warnings_to_log
from cog_pipeline.config import SECTIONS
from cog_pipeline.crondor.commands import crondor
from cog_pipeline.errors import one_line, os_error_line
from cog_pipeline.storage.store import StoreConfig

# Leaving the process, the interpreter's final garbage collections walk every object of the ~300 modules a scan
# imports: 50-100 ms after the last job of every scan (measured on the 2-core machine). Frozen at exit, they are
# skipped. Files, the stdio and pipes are flushed and closed as before (atexit handlers registered later run
# first); only cyclic garbage still alive at exit is left to the operating system, whose finalizers Python
# never promised to run.
atexit.register(gc.freeze)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="cog-pipeline")
def main() -> None:
    """Turn GeoTIFFs listed in bucket manifests into Cloud Optimized GeoTIFFs and JPEG previews.

    Manifests (`key,bands` rows, default glob `*raw.csv`) are claimed by renaming them
    `*processing-<TS>.csv`; each becomes a Pegasus workflow run by the local engine (default) or by
    Pegasus on HTCondor; results land as `*processed-<TS>.csv` and `*failed-<TS>.csv` beside the manifest.
    """


@main.command()
@scan_options
@click.option("-w", "--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True, help="Where workflow-run-<TS>/ directories are kept.")
@click.option("--engine", type=click.Choice(["local", "pegasus"]), default="local", show_default=True, help="local: run the workflow here with a process pool; pegasus: pegasus-plan onto HTCondor.")
@setting_options(exclude=("crondor",))
@click.option("--no-submit", is_flag=True, help="pegasus: plan the workflow but do not submit it.")
@click.option("--dry-run", is_flag=True, help="List what would be claimed; change nothing.")
@click.option("--quiet", is_flag=True, help="No progress display (it only shows when stdout is a terminal anyway).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object describing the tick, schema_version 1 (docs/operator.md; messages go to stderr).")
@handle_errors
def scan(**kw: Any) -> None:
    """One trigger tick: claim waiting manifests, run their workflows, reconcile.

    Also carries on runs an earlier tick left unfinished (after a crash), so running it again is always safe.
    """
    from cog_pipeline.cli.progress import ScanProgress
    from cog_pipeline.cli.tick_log import now_iso
    from cog_pipeline.pipeline import ScanOptions
    from cog_pipeline.pipeline import scan as run_scan

    config = scan_config(kw)  # the --config file, the environment, then the flags
    shown = ScanProgress(not kw["quiet"] and not kw["as_json"] and sys.stdout.isatty())
    options = ScanOptions(
        input_bucket=kw["input_bucket"],
        output_bucket=kw["output_bucket"],
        store=store_config(kw),
        work_dir=kw["work_dir"].resolve(),
        pattern=kw["pattern"],
        engine=kw["engine"],
        dry_run=kw["dry_run"],
        progress=shown.enabled,
        submit=not kw["no_submit"],
        output_prefix=kw.get("output_prefix"),
        config=config,
        on_phase=shown.phase,
    )
    say = (lambda m: click.echo(m, err=True)) if kw["as_json"] else shown.echo
    from cog_pipeline.pipeline import work_dir_problem

    if (problem := work_dir_problem(options)) is not None:  # before anything (the warnings log) is written there
        shown.close()
        fail(problem)
    started = now_iso()
    try:
        with warnings_to_log(options.work_dir):
            report = run_scan(options, echo=say)
    except BaseException as exc:
        if not options.dry_run and not isinstance(exc, KeyboardInterrupt):
            _after_tick(None, config, options.work_dir, started, say, error=getattr(exc, "message", None) or one_line(exc))
        raise
    finally:
        shown.close()
    record = None if options.dry_run else _after_tick(report, config, options.work_dir, started, say)
    if kw["as_json"]:
        from cog_pipeline.cli.tick_log import tick_record

        click.echo(json.dumps(record or tick_record(report, started=started, work_dir=options.work_dir), ensure_ascii=False, sort_keys=True))
        sys.exit(EXIT_ERROR if report.errors else 0)
    if options.dry_run:
        for key in report.would_claim:
            click.echo(f"would claim {key}")
        for problem in report.refused:
            click.echo(f"would not claim: {problem}")
        if not report.would_claim:
            click.echo("nothing to claim")
        return
    if not (report.claimed or report.resumed or report.reconciled):  # reconciled: a manifest failed whole at its claim
        click.echo("nothing to do: no manifest matches and no run is waiting")
    for run in (record or {}).get("runs", []):
        if run["report"]:
            click.echo(f"report: {run['report']}")  # on stdout, last, with the claim lines: open it in a browser
    if report.errors:
        sys.exit(EXIT_ERROR)


def _after_tick(report: Any, config: Any, work_dir: Path, started: str, say: Any, error: str | None = None) -> dict[str, Any] | None:
    """The tick's line in ticks.jsonl, the Prometheus textfile, then the notifications (each best effort)."""
    from cog_pipeline.cli.notify import notify
    from cog_pipeline.cli.tick_log import append_history, tick_record, write_prometheus

    try:
        record = tick_record(report, started=started, work_dir=work_dir, error=error)
    except Exception as exc:  # noqa: BLE001 - a run directory that cannot be read must not cost the tick
        say(f"warning: no tick record: {one_line(exc)}")
        return None
    for what, step in (("tick history", lambda: append_history(work_dir, record)),
                       ("Prometheus textfile", lambda: config.notify.prometheus_textfile and write_prometheus(Path(config.notify.prometheus_textfile), record))):
        try:
            step()
        except OSError as exc:
            say(f"warning: {what} not written: {os_error_line(exc)}")
    notify(config.notify, record, say)
    return record


def _finish(run_dir: Path, show_report: bool) -> None:
    from cog_pipeline.pipeline import finish
    from cog_pipeline.publishing.report import REPORT_NAME
    from cog_pipeline.run.rundir import RunDir

    result = finish(RunDir(run_dir), echo=lambda line: click.echo(line, err=True))
    prefix = "already reconciled: " if result.already_done else ""
    click.echo(f"{prefix}{result.processed} processed, {result.failed} failed")
    for key in (result.processed_key, result.failed_key, result.reasons_key):
        if key:
            click.echo(f"  {key}")
    if show_report and (run_dir / REPORT_NAME).is_file():  # the END hook leaves it to the scan that ran it
        click.echo(f"report: {run_dir / REPORT_NAME}")


@main.command("reconcile")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Reconcile even while a live process or workflow carries the run on (rows still converting then fail).")
@handle_errors
def reconcile_cmd(run_dir: Path, force: bool) -> None:
    """Write processed/failed CSVs for RUN_DIR from what is in the output bucket; remove its processing file.

    Safe to run any number of times: a reconciled run is reported, not redone. A run still in flight (a live
    lease, or its workflow running) is refused unless --force: its rows would be filed failed for good.
    """
    from cog_pipeline.pipeline import run_is_active
    from cog_pipeline.run.rundir import RECONCILED, RunDir

    run = RunDir(run_dir)
    info = run.load()
    if not force and info.state != RECONCILED and run_is_active(run):
        holder = f" by {info.lease.owner_id}" if run.is_owned() and info.lease else ""
        fail(f"{run_dir} is still being carried on{holder} and its jobs may be converting; "
             "it is reconciled when they end (or give --force to file unfinished rows as failed now)")
    _finish(run_dir, show_report=True)


@main.command("finish")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@handle_errors
def finish_cmd(run_dir: Path) -> None:
    """The workflows' END hook (both engines): collect job outcomes, then reconcile RUN_DIR. Safe to repeat.

    pegasus-monitord runs the hook at the workflow's start too (PEGASUS_EVENT=start): that call does nothing.
    """
    if os.environ.get("PEGASUS_EVENT") == "start":
        click.echo(f"{run_dir}: workflow started; it is reconciled when it ends")
        return
    _finish(run_dir, show_report=False)


@main.command("run")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--quiet", is_flag=True, help="No progress bar.")
@setting_options(exclude=tuple(s for s in SECTIONS if s != "local"), cog_profile=False)  # the rest is in the workflow
@handle_errors
def run_cmd(run_dir: Path, quiet: bool, **kw: Any) -> None:
    """Execute RUN_DIR's generated workflow with the local engine (jobs already done are skipped).

    A finished run is reported and left exactly as it is.
    """
    from cog_pipeline.engines.base import RunFinished
    from cog_pipeline.engines.local import check_runnable, run_batch
    from cog_pipeline.pipeline import finish
    from cog_pipeline.run.rundir import RunDir

    config = effective_config(kw)
    run = RunDir(run_dir)
    try:
        check_runnable(run)
    except RunFinished as exc:
        click.echo(str(exc))
        return
    (result,) = run_batch([run], workers=config.local.workers or None, timeout=config.local.job_timeout_s or None,
                          max_pixels=config.local.max_pixels, progress=not quiet and sys.stderr.isatty(), finish=finish)
    if result.problem:
        fail(result.problem)
    click.echo(f"{result.succeeded} succeeded, {result.failed} failed, {result.skipped} already done")
    for cmd, code in result.hooks:
        if code:
            click.echo(f"end hook exited {code}: {cmd}", err=True)


@main.command()
@click.option("--dir", "demo_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"), show_default=True, help="New folder for the example buckets and runs (one an earlier demo made is emptied; any other is refused).")
@click.option("--size", type=click.IntRange(min=64), default=1024, show_default=True, help="Example image width/height in pixels.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def demo(demo_dir: Path, size: int, quiet: bool) -> None:
    """Run the whole pipeline on generated example images in local-folder buckets and show the results."""
    from cog_pipeline.examples import make_example_bucket
    from cog_pipeline.pipeline import ScanOptions
    from cog_pipeline.pipeline import scan as run_scan

    demo_dir = demo_dir.resolve()
    _fresh_demo_dir(demo_dir)
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
    for run_dir in report.reconciled:  # last, so it is what the operator sees: open it in a browser
        click.echo(f"report: {run_dir.path / 'report.html'}")


DEMO_MARK = ".cog-pipeline-demo"  # in a folder `demo` created: the only kind it ever empties again


def _fresh_demo_dir(demo_dir: Path) -> None:
    """Create the demo folder, or empty one an earlier demo created (only its buckets and work folders).

    A folder the demo did not create is refused whole: `demo --dir .` must never delete anything else."""
    if demo_dir.exists() or demo_dir.is_symlink():
        if not (demo_dir / DEMO_MARK).is_file() or demo_dir.is_symlink():
            fail(f"{demo_dir} exists and was not created by `cog-pipeline demo`; give --dir a new folder")
        for name in ("buckets", "work"):
            if (demo_dir / name).is_symlink():
                (demo_dir / name).unlink()
            elif (demo_dir / name).exists():
                shutil.rmtree(demo_dir / name)
    else:
        demo_dir.mkdir(parents=True)
        (demo_dir / DEMO_MARK).write_text("made by cog-pipeline demo; it may empty this folder's buckets/ and work/\n")


@main.command("status")
@click.option("-w", "--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True, help="Where workflow-run-<TS>/ directories are kept.")
@click.option("--long", "long_", is_flag=True, help="pegasus-status -l (per-job detail).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as a JSON array (one object per run).")
@handle_errors
def status(work_dir: Path, long_: bool, as_json: bool) -> None:
    """A table of the runs under the work directory, then pegasus-status for each workflow in flight."""
    from cog_pipeline.cli.operator import render_status_table, status_json, status_rows
    from cog_pipeline.cli.status import show_runs

    if not work_dir.is_dir():
        fail(f"work directory {work_dir} does not exist (give -w WORK_DIR, where the workflow-run-<TS>/ directories are)")
    rows = status_rows(work_dir.resolve())
    if as_json:
        click.echo(status_json(rows))
        return
    click.echo(render_status_table(rows, width=shutil.get_terminal_size((120, 24)).columns), nl=False)
    show_runs(work_dir.resolve(), long_=long_)


# The production loop on an HTCondor access point (crondor/commands.py).
main.add_command(crondor)
# `cog-pipeline config show`: the effective production settings (config_cli.py).
main.add_command(config_group)
# What an operator reads after a run (operator_cli.py).
main.add_command(report_cmd)
main.add_command(provenance_cmd)
