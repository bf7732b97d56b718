"""Is a submitted Pegasus workflow still running? The schedd first, then the submit directory's own files.

False once the DAG has finished, aborted or been removed with ``condor_rm``, so that the next tick
finishes a run whose END hook did not. Signals, in order: the schedd (the DAGMan job by ``ClusterId``, else
the scheduler-universe job whose ``Iwd`` is the submit directory); when the schedd cannot say, the DAGMan
event log (a terminated ``005`` or aborted ``009`` after the last submit ``000``), ``jobstate.log``'s
``MONITORD_FINISHED`` after the last ``DAGMAN_STARTED``, or ``monitord.done``. No sign means running.
"""

from __future__ import annotations

import re
from pathlib import Path

from cog_pipeline.run.rundir import RUNNING, RunDir

from . import condor

SUBMIT_BASE = "submit"  # pegasus-plan --dir: submit directories are created below <run>/submit
_DIR_IN_OUTPUT_RE = re.compile(r"pegasus-(?:run|status -l|status|remove|analyzer)\s+(/\S+)")
_EVENT_RE = re.compile(r"^(\d{3}) \((\d+)\.(\d+)\.(\d+)\)")


def find_submit_dir(run_dir: RunDir, output: str) -> Path | None:
    for match in reversed(_DIR_IN_OUTPUT_RE.findall(output)):
        path = Path(match)
        if path.is_dir():
            return path
    base = run_dir.path / SUBMIT_BASE
    if not base.is_dir():
        return None
    braindumps = [p for name in ("braindump.yml", "braindump.txt") for p in base.rglob(name)]
    if not braindumps:
        return None
    return max(braindumps, key=lambda p: p.stat().st_mtime).parent



def cluster_from_files(submit_dir: Path) -> int | None:
    jobstate = submit_dir / "jobstate.log"
    if jobstate.is_file():
        found = re.findall(r"DAGMAN_STARTED (\d+)\.", jobstate.read_text(encoding="utf-8", errors="replace"))
        if found:
            return int(found[-1])
    for log in sorted(submit_dir.glob("*.dag.dagman.log")):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            match = _EVENT_RE.match(line)
            if match and match.group(1) == "000":
                return int(match.group(2))
    return None


def schedd_state(submit_dir: Path, cluster: int | None) -> bool | None:
    """True: the DAGMan job is in the queue and alive; False: it is not; None: the schedd could not say."""
    if cluster is not None:
        constraint = f"ClusterId == {int(cluster)}"
    else:
        constraint = f"JobUniverse == 7 && Iwd == {_classad_string(str(submit_dir))}"
    try:
        ads = condor.schedd().query(constraint=constraint, projection=["ClusterId", "ProcId", "JobStatus"])
    except Exception:  # noqa: BLE001 - no bindings, no schedd, no permission: fall back to the submit directory
        return None
    return any(int(ad.get("JobStatus", 0)) not in condor.ENDED_STATUSES for ad in ads)


def _classad_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def submit_dir_ended(submit_dir: Path) -> bool:
    """The submit directory's own evidence that the DAGMan job (and pegasus-monitord) ended."""
    for log in submit_dir.glob("*.dag.dagman.log"):
        last_submit = last_end = -1
        for i, line in enumerate(log.read_text(encoding="utf-8", errors="replace").splitlines()):
            match = _EVENT_RE.match(line)
            if not match:
                continue
            if match.group(1) == "000":
                last_submit = i
            elif match.group(1) in ("005", "009"):
                last_end = i
        if last_end > last_submit:
            return True
    jobstate = submit_dir / "jobstate.log"
    if jobstate.is_file():
        started = finished = -1
        for i, line in enumerate(jobstate.read_text(encoding="utf-8", errors="replace").splitlines()):
            if "INTERNAL *** DAGMAN_STARTED" in line:
                started = i
            elif "INTERNAL *** MONITORD_FINISHED" in line:
                finished = i
        if finished > started:
            return True
    return (submit_dir / "monitord.done").exists()


def workflow_is_running(run_dir: RunDir) -> bool:
    """False once the run's DAG finished, aborted or was removed (see the module docstring for the signals)."""
    info = run_dir.load()
    if info.state != RUNNING:
        return False
    submit_dir = info.pegasus.submit_dir
    cluster = info.pegasus.dagman_cluster
    if not submit_dir and info.pegasus.submitted_at:
        # Submitted, but the planner's output did not name the submit directory: look for it under <run>/submit.
        found = find_submit_dir(run_dir, "")
        if found is not None:
            submit_dir = str(found)
            run_dir.update(submit_dir=submit_dir)
        elif cluster is not None:
            alive = schedd_state(run_dir.path, cluster)
            return True if alive is None else alive
    if not submit_dir or not Path(submit_dir).is_dir():
        # Not submitted from here (or its submit directory is gone). `cog-pipeline run RUN_DIR` may be running it
        # with the local engine right now; otherwise nothing can finish it but a reconcile.
        return run_dir.is_owned()
    path = Path(submit_dir)
    if cluster is None:
        cluster = cluster_from_files(path)
    alive = schedd_state(path, cluster)
    if alive is not None:
        return alive
    return not submit_dir_ended(path)


