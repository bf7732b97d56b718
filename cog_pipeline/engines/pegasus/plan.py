"""Planning: run ``pegasus-plan`` (or ``pegasus-run`` for an existing plan) for one generated run directory.

See docs/workflow.md for the command line. Planned-only runs stay GENERATED with ``plan_dir``; a failed
plan is retried by later ticks up to MAX_PLAN_ATTEMPTS, then its rows get PLAN_FAILED records and the
tick finishes the run. Missing tools raise PegasusUnavailable and leave the run GENERATED.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from cog_pipeline.config import COMPUTE_SITE
from cog_pipeline.engines.base import WorkflowError, last_line
from cog_pipeline.run.rundir import GENERATED, RECONCILED, RUNNING, RunDir

from .condor import PegasusUnavailable
from .monitor import SUBMIT_BASE, cluster_from_files, find_submit_dir
from .records import write_plan_failure_records

Echo = Callable[[str], None]

PLAN_LOG = "plan.log"
_SUBMITTED_RE = re.compile(r"submitted to cluster (\d+)")
MAX_PLAN_ATTEMPTS = 3  # after this many failed pegasus-plan runs the rows are reconciled as failed
LOCAL_HINT = "or run this manifest without HTCondor: cog-pipeline scan --engine local ... (or cog-pipeline run RUN_DIR)"


class PlanError(WorkflowError):
    """pegasus-plan ran and failed."""



def default_plan_args(properties: Path, output_site: str, *, staging_site: str | None = None, cluster: bool = False) -> list[str]:
    """The one definition of pegasus-plan's arguments besides --dir/--cleanup/--submit and the workflow."""
    args = ["--conf", str(properties.resolve()), "--sites", COMPUTE_SITE, "--output-sites", output_site]
    if staging_site:
        args += ["--staging-site", f"{COMPUTE_SITE}={staging_site}"]
    if cluster:
        args += ["--cluster", "horizontal"]
    return args


def missing_tools(submit: bool) -> list[str]:
    tools = ["pegasus-plan"] + (["condor_submit_dag"] if submit else [])
    return [tool for tool in tools if shutil.which(tool) is None]


def unavailable_message(missing: list[str], run_dir: RunDir) -> str:
    return (
        f"{' and '.join(missing)} not found on PATH: Pegasus/HTCondor is not installed on this host. "
        f"{run_dir.path} keeps its generated workflow and is carried on by the next tick; {LOCAL_HINT}"
    )


def planner_env(run_dir: RunDir) -> dict[str, str]:
    env = dict(os.environ)
    credentials = run_dir.load().pegasus.pegasus_credentials
    if credentials:
        env["PEGASUS_CREDENTIALS"] = str(credentials)
    return env


def plan_command(run_dir: RunDir, submit: bool) -> list[str]:
    """pegasus-plan's command line for this run (the generator's plan_args + --dir/--cleanup/--submit)."""
    info = run_dir.load()
    workflow = str(run_dir.file(RunDir.WORKFLOW).resolve())
    args = [str(a) for a in info.pegasus.plan_args]
    if args and args[-1].endswith(".yml") and not args[-1].startswith("-"):
        workflow = args.pop()
    if not args:
        args = default_plan_args(run_dir.file(RunDir.PROPERTIES), info.output_site or "storage", cluster=info.cluster)
    args += ["--dir", str((run_dir.path / SUBMIT_BASE).resolve())]
    if "--cleanup" not in args:
        args += ["--cleanup", "leaf"]
    if submit:
        args.append("--submit")
    return ["pegasus-plan", *args, workflow]


def _run_logged(cmd: list[str], run_dir: RunDir) -> tuple[int, str]:
    """Run `cmd` in the run directory, appending its output to plan.log; returns (exit code, this output)."""
    log_path = run_dir.file(PLAN_LOG)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shlex.join(cmd)}\n")
        log.flush()
        start = log.tell()
        proc = subprocess.run(cmd, cwd=run_dir.path, env=planner_env(run_dir), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False)
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        fh.seek(start)
        output = fh.read()
    return proc.returncode, output


def _plan_error(output: str) -> str:
    """The planner's most telling line: its last [ERROR]/FATAL line, else its last line."""
    errors = [line.strip() for line in output.splitlines() if "[ERROR]" in line or "FATAL" in line or line.lstrip().startswith("Error")]
    return errors[-1] if errors else last_line(output)


def _dagman_cluster(output: str, submit_dir: Path | None) -> int | None:
    found = _SUBMITTED_RE.findall(output)
    if found:
        return int(found[-1])
    if submit_dir is not None:
        return cluster_from_files(submit_dir)
    return None


def plan_and_submit(run_dir: RunDir, submit: bool = True, echo: Echo = print) -> str:
    """Plan (and submit) one generated run. Returns ended|running|planned|failed.

    "ended": no job will ever run (an empty workflow, or planning failed MAX_PLAN_ATTEMPTS times and every
    job has a PLAN_FAILED record), so the caller finishes the run now. Never reconciles itself.
    """
    info = run_dir.load()
    if info.state == RECONCILED:
        return "ended"
    if info.state == RUNNING:
        echo(f"{run_dir.path} is already running in {info.pegasus.submit_dir}")
        return "running"
    if info.state != GENERATED:
        raise WorkflowError(f"{run_dir.path} is {info.state}: generate its workflow before planning")
    if info.empty:
        echo(f"{info.manifest_key}: no row got a job; nothing to plan")
        return "ended"

    plan_dir = Path(info.pegasus.plan_dir) if info.pegasus.plan_dir else None
    if plan_dir is not None and plan_dir.is_dir():
        return _submit_existing_plan(run_dir, plan_dir, submit, echo)

    missing = missing_tools(submit)
    if missing:
        run_dir.set_state(GENERATED, engine_waiting=f"{', '.join(missing)} not found")
        raise PegasusUnavailable(unavailable_message(missing, run_dir))

    cmd = plan_command(run_dir, submit)
    echo(f"planning {run_dir.path}: {shlex.join(cmd)}")
    code, output = _run_logged(cmd, run_dir)
    submit_dir = find_submit_dir(run_dir, output)
    plan_log = str(run_dir.file(PLAN_LOG))
    if code == 0:
        if submit:
            run_dir.set_state(
                RUNNING, submit_dir=str(submit_dir) if submit_dir else None, plan_dir=str(submit_dir) if submit_dir else None,
                plan_log=plan_log, planned=True, dagman_cluster=_dagman_cluster(output, submit_dir), submitted_at=time.time(),
                engine_waiting=None,
            )
            echo(f"submitted {info.manifest_key}: pegasus-status -l {submit_dir}")
            return "running"
        run_dir.set_state(GENERATED, planned=True, plan_dir=str(submit_dir) if submit_dir else None, plan_log=plan_log, engine_waiting=None)
        echo(f"planned {info.manifest_key} in {submit_dir} (not submitted): pegasus-run {submit_dir}")
        return "planned"

    # pegasus-plan --submit may have written a complete plan and failed only at condor_submit_dag: keep it so
    # the next tick submits that plan instead of planning again.
    complete = submit_dir is not None and any(submit_dir.glob("*.dag"))
    attempts = info.pegasus.plan_attempts + 1
    reason = _plan_error(output) or f"exit code {code}"
    run_dir.set_state(
        GENERATED, plan_attempts=attempts, plan_error=reason, plan_log=plan_log,
        **({"plan_dir": str(submit_dir), "planned": True} if complete else {}),
    )
    if attempts >= MAX_PLAN_ATTEMPTS and not complete:
        echo(f"error: pegasus-plan failed {attempts} times for {info.manifest_key} ({reason}); its rows fail")
        write_plan_failure_records(run_dir, f"pegasus-plan failed {attempts} times: {reason} (see {plan_log})")
        return "ended"
    echo(f"error: pegasus-plan exited {code} for {info.manifest_key}: {reason} (attempt {attempts}/{MAX_PLAN_ATTEMPTS}, see {plan_log})")
    return "failed"


def _submit_existing_plan(run_dir: RunDir, plan_dir: Path, submit: bool, echo: Echo) -> str:
    info = run_dir.load()
    if _plan_was_submitted(plan_dir):
        # Someone ran pegasus-run by hand: adopt the workflow rather than submitting it a second time.
        run_dir.set_state(RUNNING, submit_dir=str(plan_dir), dagman_cluster=cluster_from_files(plan_dir), submitted_at=time.time())
        echo(f"{info.manifest_key}: {plan_dir} was already submitted; following it")
        return "running"
    if not submit:
        echo(f"{info.manifest_key} is planned in {plan_dir} (not submitted): pegasus-run {plan_dir}")
        return "planned"
    missing = [tool for tool in ("pegasus-run", "condor_submit_dag") if shutil.which(tool) is None]
    if missing:
        run_dir.set_state(GENERATED, engine_waiting=f"{', '.join(missing)} not found")
        raise PegasusUnavailable(unavailable_message(missing, run_dir))
    cmd = ["pegasus-run", str(plan_dir)]
    echo(f"submitting {run_dir.path}: {shlex.join(cmd)}")
    code, output = _run_logged(cmd, run_dir)
    if code != 0:
        reason = _plan_error(output) or f"exit code {code}"
        run_dir.set_state(GENERATED, submit_error=reason)
        echo(f"error: pegasus-run exited {code} for {info.manifest_key}: {reason} (see {run_dir.file(PLAN_LOG)})")
        return "failed"
    run_dir.set_state(
        RUNNING, submit_dir=str(plan_dir), plan_log=str(run_dir.file(PLAN_LOG)),
        dagman_cluster=_dagman_cluster(output, plan_dir), submitted_at=time.time(), engine_waiting=None,
    )
    echo(f"submitted {info.manifest_key}: pegasus-status -l {plan_dir}")
    return "running"


def _plan_was_submitted(submit_dir: Path) -> bool:
    return any(
        path.exists()
        for path in (
            submit_dir / "monitord.started",
            submit_dir / "jobstate.log",
            *submit_dir.glob("*.dag.dagman.out"),
            *submit_dir.glob("*.dag.dagman.log"),
        )
    )


