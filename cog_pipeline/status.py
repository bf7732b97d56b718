"""What `cog-pipeline status` (and `crondor status`) shows: the runs in flight under a work directory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click

from .rundir import GENERATED, RUNNING, survey_run_dirs
from .state import IN_FLIGHT


def show_runs(work_dir: Path, long_: bool = False) -> None:
    """One block per unfinished run; a damaged run directory is one warning line."""
    run_dirs, problems = survey_run_dirs(work_dir)
    runs = [r for r in run_dirs if r.load().state in IN_FLIGHT]
    click.echo(f"runs in flight under {work_dir}: {len(runs)}")
    for problem in problems:
        click.echo(f"warning: {problem}")
    have_status = shutil.which("pegasus-status") is not None
    for run_dir in runs:
        info = run_dir.load()
        click.echo(f"- {run_dir.path.name}  {info.manifest_key}  state={info.state}  engine={info.engine}")
        if info.state == GENERATED:
            if info.engine_waiting:
                click.echo(f"    waiting: {info.engine_waiting} (next tick retries; or: cog-pipeline run {run_dir.path})")
            if info.plan_error:
                click.echo(f"    last pegasus-plan error: {info.plan_error} (attempt {info.plan_attempts}; {info.plan_log})")
            if info.planned and info.plan_dir:
                click.echo(f"    planned, not submitted: pegasus-run {info.plan_dir}")
            continue
        if info.state != RUNNING:
            continue
        submit_dir = info.submit_dir
        if not submit_dir:
            click.echo("    running with the local engine" if info.engine == "local" else "    no submit directory recorded")
            continue
        from .engines.pegasus.monitor import workflow_is_running

        running = workflow_is_running(run_dir)
        click.echo(f"    submit dir: {submit_dir}" + ("" if running else "  (workflow ended; the next tick reconciles it)"))
        if not have_status:
            click.echo("    (pegasus-status is not installed on this host: cannot show job counts)")
            continue
        cmd = ["pegasus-status", *(["-l"] if long_ else []), submit_dir]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        for line in (proc.stdout + proc.stderr).rstrip().splitlines():
            click.echo(f"    {line}")
