"""The HTCondor boundary: the bindings module, the local schedd (tests replace `schedd`, never the logic), whether
Pegasus can run here, and the held jobs of submitted workflows."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from cog_pipeline.engines.base import WorkflowError

# JobStatus values: 1 idle, 2 running, 3 removed, 4 completed, 5 held, 6 transferring output, 7 suspended
ENDED_STATUSES = {3, 4}


class PegasusUnavailable(WorkflowError):
    """pegasus-plan / condor_submit_dag is not installed here: the run waits, nothing is lost."""



# -------------------------------------------------------------------------------------------------------------
# HTCondor bindings (htcondor2 in 24+/25 wheels, htcondor in older installs)


def htcondor_module() -> Any | None:
    try:
        import htcondor2 as module  # type: ignore[import-not-found]
    except ImportError:
        try:
            import htcondor as module  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return None
    return module


def schedd() -> Any:
    """The local schedd. Tests replace this function (the only HTCondor boundary), never the logic."""
    module = htcondor_module()
    if module is None:
        raise PegasusUnavailable("the HTCondor Python bindings (htcondor2) are not installed: pip install -e '.[condor]' in the checkout")
    return module.Schedd()


# -------------------------------------------------------------------------------------------------------------
# Can Pegasus run here? Checked before a scan with the Pegasus engine claims anything.

PEGASUS_CHECK_TIMEOUT_S = 120  # pegasus-plan --version starts a JVM; a loaded access point takes seconds


def pegasus_problem(env: Mapping[str, str] | None = None) -> str | None:
    """Why Pegasus cannot plan and submit under `env` (default: this process's environment), else None.

    pegasus-plan and condor_submit_dag must be on PATH (the planner runs `condor_submit_dag -no_submit` even
    without --submit), and the planner must start: see planner_problem.
    """
    env = dict(os.environ if env is None else env)
    missing = [tool for tool in ("pegasus-plan", "condor_submit_dag") if shutil.which(tool, path=env.get("PATH", "")) is None]
    if missing:
        return f"{' and '.join(missing)} not found on PATH"
    return planner_problem(env)


def planner_problem(env: Mapping[str, str]) -> str | None:
    """`pegasus-plan --version` under `env` fails: why (its first line), else None. It runs the same preflight as a
    real plan: the Python Pegasus' wrapper picks (PEGASUS_PYTHON, else the first python3 on PATH) must import
    Pegasus' own modules (YAML, GitPython), and Java must start."""
    plan = shutil.which("pegasus-plan", path=env.get("PATH", ""))
    if plan is None:
        return "pegasus-plan not found on PATH"
    try:
        proc = subprocess.run([plan, "--version"], env=dict(env), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=PEGASUS_CHECK_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"{plan} --version did not answer within {PEGASUS_CHECK_TIMEOUT_S} s"
    except OSError as exc:
        return f"{plan} --version cannot start: {exc.strerror or exc}"
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr + "\n" + proc.stdout).splitlines() if line.strip()]
        python = env.get("PEGASUS_PYTHON") or "the first python3 on PATH"
        return f"{plan} --version exited {proc.returncode}: {lines[0] if lines else 'no output'} (Pegasus' Python: {python})"
    return None


def check_pegasus() -> None:
    """Raise PegasusUnavailable (one line) when Pegasus cannot run in this process's environment."""
    problem = pegasus_problem()
    if problem:
        raise PegasusUnavailable(
            f"Pegasus cannot run here: {problem}; nothing was claimed. Set PEGASUS_PYTHON to the Python of the Pegasus "
            "installation (cog-pipeline crondor start records it), or run without HTCondor: cog-pipeline scan --engine local ..."
        )


# -------------------------------------------------------------------------------------------------------------
# Held jobs of submitted workflows (cog-pipeline status)

HELD = 5


def held_jobs(dagman_clusters: Mapping[str, int]) -> dict[str, list[dict[str, Any]]]:
    """The held jobs of each run's workflow: its DAGMan job, and every job whose DAGManJobId is that job.

    `dagman_clusters` maps a run's name to its DAGMan cluster id (run.json `dagman_cluster`); the answer maps
    it to [{"id": "123.0", "node": DAGNodeName or None, "reason": HoldReason}]. One query for all runs.
    Raises what the bindings raise when there is no schedd (the caller says so in one line).
    """
    by_cluster = {int(cluster): run for run, cluster in dagman_clusters.items()}
    held: dict[str, list[dict[str, Any]]] = {run: [] for run in dagman_clusters}
    if not by_cluster:
        return held
    ids = ", ".join(str(c) for c in sorted(by_cluster))
    constraint = f"JobStatus == {HELD} && (member(DAGManJobId, {{{ids}}}) || member(ClusterId, {{{ids}}}))"
    ads = schedd().query(constraint=constraint, projection=["ClusterId", "ProcId", "DAGManJobId", "DAGNodeName", "HoldReason"])
    for ad in sorted(ads, key=lambda a: (int(a.get("ClusterId", 0)), int(a.get("ProcId", 0)))):
        cluster = int(ad.get("ClusterId", 0))
        run = by_cluster.get(cluster, by_cluster.get(int(ad.get("DAGManJobId", -1))))
        if run is not None:
            held[run].append({"id": f"{cluster}.{ad.get('ProcId', 0)}", "node": ad.get("DAGNodeName"), "reason": ad.get("HoldReason")})
    return held
