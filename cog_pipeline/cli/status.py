"""What `cog-pipeline status` (and `crondor status`) shows: the runs in flight under a work directory.

For each submitted Pegasus run: its submit directory, DAGMan's state and the job counts (from the real
``pegasus-status`` when installed, else from jobstate.log: ``submit_dir.job_counts``), and for a run with
failures the exact ``pegasus-analyzer <submit dir>`` command, under the one table of every run that
``operator_cli.render_status_table`` prints. ``status_row`` gives one run's Pegasus facts (submit_dir, dagman,
counts_from, counts, analyzer) for those lines.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import click

from cog_pipeline.errors import one_line
from cog_pipeline.run.lease import is_alive
from cog_pipeline.run.rundir import GENERATED, RUNNING, RunDir, survey_run_dirs
from cog_pipeline.run.state import IN_FLIGHT


def analyzer_command(submit_dir: str | Path) -> str:
    """The exact command an operator runs to see why jobs failed."""
    return shlex.join(["pegasus-analyzer", str(submit_dir)])


def dagman_facts(submit_dir: Path) -> dict[str, Any]:
    """DAGMan state and job counts of one submit directory (never raises: a damaged dir says "unknown")."""
    from cog_pipeline.engines.pegasus.submit_dir import job_counts, read_jobstate

    try:
        source, counts = job_counts(submit_dir)
        _, end = read_jobstate(submit_dir)
    except Exception as exc:  # noqa: BLE001 - status must show every other run
        return {"dagman": f"unknown ({exc})", "counts_from": None, "counts": {}, "done": None, "failed": None}
    if source == "pegasus-status" and counts.get("state"):
        dagman = str(counts["state"])
    elif end.ended:
        dagman = "Success" if end.status == 0 else f"Failure (DAGMan exit {end.status})"
    else:
        dagman = "Running" if (submit_dir / "jobstate.log").is_file() else "not started"
    return {"dagman": dagman, "counts_from": source, "counts": counts,
            "done": counts.get("succeeded"), "failed": counts.get("failed")}


def age_text(seconds: float) -> str:
    """A run's age for a person, the one format every table uses: 45s, 12m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def status_row(run_dir: RunDir, now: float | None = None) -> dict[str, Any]:
    """One run in flight with its Pegasus facts, for the detail lines under the status table."""
    info = run_dir.load()
    try:
        age = age_text((now or time.time()) - run_dir.file("run.json").stat().st_mtime)
    except OSError:
        age = None
    row: dict[str, Any] = {"run": run_dir.path.name, "state": str(info.state), "done": None, "failed": None, "age": age,
                           "engine": info.engine, "where": info.pegasus.submit_dir or str(run_dir.path), "submit_dir": info.pegasus.submit_dir,
                           "dagman": None, "counts_from": None, "analyzer": None, "manifest": info.manifest_key}
    if info.state == RUNNING and info.pegasus.submit_dir and Path(info.pegasus.submit_dir).is_dir():
        facts = dagman_facts(Path(info.pegasus.submit_dir))
        row.update({k: facts[k] for k in ("dagman", "counts_from", "done", "failed")})
        row["counts"] = facts["counts"]
        if facts["failed"]:
            row["analyzer"] = analyzer_command(info.pegasus.submit_dir)
    return row


def runs_in_flight(work_dir: Path) -> list[RunDir]:
    """The unfinished runs under `work_dir` (damaged run directories are left to show_runs)."""
    return [r for r, info in survey_run_dirs(work_dir)[0] if info.state in IN_FLIGHT]


def _counts_text(counts: dict[str, Any]) -> str:
    names = ("total", "succeeded", "failed", "held", "running", "queued", "unready", "ready")
    return ", ".join(f"{counts[n]} {n}" for n in names if isinstance(counts.get(n), int))


def show_runs(work_dir: Path, long_: bool = False) -> None:
    """One block of detail per unfinished run (the table above has their rows); a damaged run directory is one warning line."""
    surveyed, problems = survey_run_dirs(work_dir)
    in_flight = [(r, info) for r, info in surveyed if info.state in IN_FLIGHT]
    runs = [r for r, _ in in_flight]
    click.echo(f"runs in flight under {work_dir}: {len(runs)}")
    for problem in problems:
        click.echo(f"warning: {problem}")
    on_path = shutil.which("pegasus-status") is not None
    held = _held_jobs(runs)
    for run_dir, info in in_flight:
        click.echo(f"- {run_dir.path.name}  {info.manifest_key}  state={info.state}  engine={info.engine}")
        if info.state == GENERATED:
            if info.engine_waiting:
                click.echo(f"    waiting: {info.engine_waiting} (next tick retries; or: cog-pipeline run {run_dir.path})")
            if info.pegasus.plan_error:
                click.echo(f"    last pegasus-plan error: {info.pegasus.plan_error} (attempt {info.pegasus.plan_attempts}; {info.pegasus.plan_log})")
            if info.pegasus.planned and info.pegasus.plan_dir:
                click.echo(f"    planned, not submitted: pegasus-run {info.pegasus.plan_dir}")
            continue
        if info.state != RUNNING:
            continue
        submit_dir = info.pegasus.submit_dir
        if not submit_dir:
            if shown_state(run_dir, info) == "stopped":
                click.echo("    stopped: its process is gone (lease expired); the next scan carries it on")
            else:
                click.echo("    running here (its process holds the lease)" if is_alive(info.lease) else "    no submit directory recorded")
            continue
        _show_submitted(run_dir, submit_dir, long_, on_path)
        for job in held.get(run_dir.path.name, []):
            click.echo(f"    held: {job['id']} {job['node'] or 'DAGMan'}: {job['reason']} (condor_release {job['id']})")


def _held_jobs(runs: list[RunDir]) -> dict[str, list[dict[str, Any]]]:
    """The held jobs of each submitted run (engines.pegasus.condor.held_jobs); no schedd here: one line."""
    from cog_pipeline.engines.pegasus.condor import held_jobs

    infos = {run.path.name: run.load() for run in runs}
    clusters = {name: info.pegasus.dagman_cluster for name, info in infos.items() if info.state == RUNNING and info.pegasus.dagman_cluster is not None}
    if not clusters:
        return {}
    try:
        return held_jobs(clusters)
    except Exception as exc:  # noqa: BLE001 - no bindings or no schedd: the rest of the status still shows
        click.echo(f"held jobs: unknown (the schedd cannot be asked: {one_line(exc)})")
        return {}


def _show_submitted(run_dir: RunDir, submit_dir: str, long_: bool, on_path: bool) -> None:
    from cog_pipeline.engines.pegasus.monitor import workflow_is_running

    running = workflow_is_running(run_dir)
    click.echo(f"    submit dir: {submit_dir}" + ("" if running else "  (workflow ended; the next tick reconciles it)"))
    if not Path(submit_dir).is_dir():
        return
    row = status_row(run_dir)
    source = row["counts_from"]
    note = "" if source != "logs" or on_path else " (pegasus-status is not installed on this host: counts from jobstate.log)"
    click.echo(f"    DAGMan: {row['dagman']}; jobs: {_counts_text(row.get('counts') or {}) or 'none yet'}{note}")
    if row["analyzer"]:
        click.echo(f"    failures: {row['analyzer']}")
    if long_ and on_path:
        proc = subprocess.run(["pegasus-status", "-l", submit_dir], capture_output=True, text=True, check=False)
        for line in (proc.stdout + proc.stderr).rstrip().splitlines():
            click.echo(f"    {line}")


def shown_state(run_dir: Any, info: Any) -> str:
    """The run's state, except that a run recorded as running whose process and workflow are gone (its lease
    expired or its owner is dead, and its engine runs nothing of it: `pipeline.run_is_active`, as the scan
    decides) is "stopped": the next scan carries it on."""
    from cog_pipeline.pipeline import run_is_active
    from cog_pipeline.run.state import RunState

    if info.state == RunState.RUNNING and not run_is_active(run_dir, info):
        return "stopped"
    return str(info.state)
