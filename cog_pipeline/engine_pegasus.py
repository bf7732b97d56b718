"""The Pegasus engine: plan a generated run directory onto HTCondor DAGMan and tell when it has ended.

The run directory already holds every planner input under Pegasus' default names (workflow.yml,
replicas.yml, transformations.yml, sites.yml, pegasus.properties, and credentials.conf for S3 key files),
written by ``pegasus/workflow_gen.py`` and read unchanged by the local engine. This module only adds:

``plan_and_submit(run_dir, submit, echo)``
    Runs ``pegasus-plan`` **from the run directory** (so ``./pegasus.properties`` is the one read, and an
    operator running the same command there by hand plans the same workflow)::

        pegasus-plan --conf <run>/pegasus.properties --sites condorpool --output-sites storage
                     [--staging-site condorpool=storage] [--cluster horizontal]
                     --dir <run>/submit --cleanup leaf [--submit] <run>/workflow.yml

    (the generator's ``plan_args`` plus ``--dir``/``--cleanup``/``--submit``), with ``PEGASUS_CREDENTIALS``
    set to the run's credentials.conf when there is one. The planner's output goes to ``<run>/plan.log``.
    Submitted: state RUNNING with ``submit_dir``, ``plan_log`` and, when known, ``dagman_cluster``.
    Planned only (``--no-submit``): state stays GENERATED with ``planned=True`` and ``plan_dir``; the next
    tick submits that plan with ``pegasus-run`` (after checking nobody already did it by hand).
    An empty workflow (no row got a job) is reconciled at once, without planning.
    Missing ``pegasus-plan`` (or ``condor_submit_dag`` when submitting) raises ``PegasusUnavailable``: the
    run stays GENERATED with its files, so a later tick or ``cog-pipeline run RUN_DIR`` carries it on.

``workflow_is_running(run_dir)``
    False once the DAG has finished, aborted or been removed with ``condor_rm``, so that the next tick
    reconciles a run whose END hook did not do it. Signals, in order:

    1. the schedd (``htcondor2.Schedd().query``): the DAGMan job (``ClusterId`` recorded at submit, else the
       scheduler-universe job whose ``Iwd`` is the submit directory). In the queue and not Removed/Completed
       means running; gone (or Removed/Completed) means ended. ``pegasus-dagman`` waits for
       ``pegasus-monitord`` (which runs the END hook), so "gone from the queue" also means "hook done".
    2. when the bindings or the schedd are not available, the submit directory's own files: the DAGMan
       job's event log ``*.dag.dagman.log`` (a terminated ``005`` or aborted ``009`` event after the last
       submit ``000``), ``jobstate.log``'s ``MONITORD_FINISHED`` after the last ``DAGMAN_STARTED``, or
       ``monitord.done``. No such sign means running (never reconcile a DAG that may still stage outputs);
       an operator can always run ``cog-pipeline reconcile RUN_DIR`` by hand.

``finish(run_dir)`` = ``collect_job_records`` + ``reconcile``
    What the END hook runs on the pegasus engine (``python -m cog_pipeline.engine_pegasus finish RUN_DIR``)
    and what the tick runs as its fallback. ``collect_job_records`` reads ``jobstate.log`` and writes
    ``jobs/<id>.json`` in the local engine's ``JobRecord`` format (exit code, category, attempts) for every
    conversion node that reached a final state, so failed rows get a reason. The reason is the converter's
    own last stderr line (``INPUT_UNREADABLE: ...``; a success's ``WARNING ...`` line becomes the record's
    ``warning``), read from the job's latest pegasus-kickstart YAML record in the submit directory
    (``<submit>/00/00/generate_cog_ID0000001.out.NNN``, rotated by pegasus-exitcode: ``files: stderr: data``
    of the ``- invocation: True`` record). When that record is missing, truncated or unparsable, the reason
    names the exit category and points to ``pegasus-analyzer``. Only that one line is copied (never the
    record's ``environment``). Clustered jobs (``--cluster-size``) cannot be mapped to rows and get no record.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .engine_local import EXIT_CATEGORIES, SUCCESS_CODES, JobRecord, WorkflowError, last_line
from .rundir import GENERATED, RECONCILED, RUNNING, RunDir, process_alive, write_json_atomic

Echo = Callable[[str], None]

PLAN_LOG = "plan.log"
SUBMIT_BASE = "submit"  # pegasus-plan --dir: submit directories are created below <run>/submit
MAX_PLAN_ATTEMPTS = 3  # after this many failed pegasus-plan runs the rows are reconciled as failed
LOCAL_HINT = "or run this manifest without HTCondor: cog-pipeline scan --engine local ... (or cog-pipeline run RUN_DIR)"
# JobStatus values: 1 idle, 2 running, 3 removed, 4 completed, 5 held, 6 transferring output, 7 suspended
ENDED_STATUSES = {3, 4}
JOB_NODE_RE = re.compile(r"^generate_cog_(ID\d+)$")
_SUBMITTED_RE = re.compile(r"submitted to cluster (\d+)")
_DIR_IN_OUTPUT_RE = re.compile(r"pegasus-(?:run|status -l|status|remove|analyzer)\s+(/\S+)")
_EVENT_RE = re.compile(r"^(\d{3}) \((\d+)\.(\d+)\.(\d+)\)")
# A job's kickstart output in the submit directory: <node>.out while it runs, then <node>.out.000, .001, ...
# once pegasus-exitcode (the POST script) has rotated it, one per attempt.
_KICKSTART_OUT_RE = re.compile(r"^generate_cog_(ID\d+)\.out(?:\.(\d{3}))?$")
_MAX_REASON_CHARS = 500


class PegasusUnavailable(WorkflowError):
    """pegasus-plan / condor_submit_dag is not installed here: the run waits, nothing is lost."""


class PlanError(WorkflowError):
    """pegasus-plan ran and failed."""


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
        raise PegasusUnavailable("the HTCondor Python bindings (htcondor2) are not installed: pip install 'cog-pipeline[condor]'")
    return module.Schedd()


# -------------------------------------------------------------------------------------------------------------
# Planning


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
    credentials = run_dir.load().extra.get("pegasus_credentials")
    if credentials:
        env["PEGASUS_CREDENTIALS"] = str(credentials)
    return env


def plan_command(run_dir: RunDir, submit: bool) -> list[str]:
    """pegasus-plan's command line for this run (the generator's plan_args + --dir/--cleanup/--submit)."""
    info = run_dir.load()
    workflow = str(run_dir.file(RunDir.WORKFLOW).resolve())
    args = [str(a) for a in (info.extra.get("plan_args") or [])]
    if args and args[-1].endswith(".yml") and not args[-1].startswith("-"):
        workflow = args.pop()
    if not args:
        args = [
            "--conf", str(run_dir.file(RunDir.PROPERTIES).resolve()),
            "--sites", "condorpool",
            "--output-sites", str(info.extra.get("output_site") or "storage"),
        ]
        if info.extra.get("cluster"):
            args += ["--cluster", "horizontal"]
    args += ["--dir", str((run_dir.path / SUBMIT_BASE).resolve())]
    if "--cleanup" not in args:
        args += ["--cleanup", "leaf"]
    if submit:
        args.append("--submit")
    return ["pegasus-plan", *args, workflow]


def _find_submit_dir(run_dir: RunDir, output: str) -> Path | None:
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
        return _cluster_from_files(submit_dir)
    return None


def plan_and_submit(run_dir: RunDir, submit: bool = True, echo: Echo = print) -> str:
    """Plan (and submit) one generated run. Returns what happened: reconciled|running|planned|failed.

    Whatever happens, this process stops owning the run when it returns (or raises): DAGMan carries a
    submitted run on, and a later tick carries on one that is planned, waiting or failed to plan.
    """
    try:
        return _plan_and_submit(run_dir, submit, echo)
    finally:
        if run_dir.exists() and run_dir.load().extra.get("owner_pid") is not None:
            run_dir.set_state(run_dir.load().state, owner_pid=None, owner_host=None)


def _plan_and_submit(run_dir: RunDir, submit: bool, echo: Echo) -> str:
    info = run_dir.load()
    if info.state == RECONCILED:
        return "reconciled"
    if info.state == RUNNING:
        echo(f"{run_dir.path} is already running in {info.extra.get('submit_dir')}")
        return "running"
    if info.state != GENERATED:
        raise WorkflowError(f"{run_dir.path} is {info.state}: generate its workflow before planning")
    extra = info.extra
    if extra.get("empty"):
        echo(f"{info.manifest_key}: no row got a job; reconciling without planning")
        result = finish(run_dir)
        echo(f"reconciled {info.manifest_key}: {result.processed} processed, {result.failed} failed")
        return "reconciled"

    plan_dir = Path(extra["plan_dir"]) if extra.get("plan_dir") else None
    if plan_dir is not None and plan_dir.is_dir():
        return _submit_existing_plan(run_dir, plan_dir, submit, echo)

    missing = missing_tools(submit)
    if missing:
        run_dir.set_state(GENERATED, engine_waiting=f"{', '.join(missing)} not found")
        raise PegasusUnavailable(unavailable_message(missing, run_dir))

    cmd = plan_command(run_dir, submit)
    echo(f"planning {run_dir.path}: {shlex.join(cmd)}")
    code, output = _run_logged(cmd, run_dir)
    submit_dir = _find_submit_dir(run_dir, output)
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
    attempts = int(extra.get("plan_attempts") or 0) + 1
    reason = _plan_error(output) or f"exit code {code}"
    run_dir.set_state(
        GENERATED, plan_attempts=attempts, plan_error=reason, plan_log=plan_log,
        **({"plan_dir": str(submit_dir), "planned": True} if complete else {}),
    )
    if attempts >= MAX_PLAN_ATTEMPTS and not complete:
        echo(f"error: pegasus-plan failed {attempts} times for {info.manifest_key} ({reason}); reconciling its rows as failed")
        _write_plan_failure_records(run_dir, f"pegasus-plan failed {attempts} times: {reason} (see {plan_log})")
        result = finish(run_dir)
        echo(f"reconciled {info.manifest_key}: {result.processed} processed, {result.failed} failed")
        return "reconciled"
    echo(f"error: pegasus-plan exited {code} for {info.manifest_key}: {reason} (attempt {attempts}/{MAX_PLAN_ATTEMPTS}, see {plan_log})")
    return "failed"


def _submit_existing_plan(run_dir: RunDir, plan_dir: Path, submit: bool, echo: Echo) -> str:
    info = run_dir.load()
    if _plan_was_submitted(plan_dir):
        # Someone ran pegasus-run by hand: adopt the workflow rather than submitting it a second time.
        run_dir.set_state(RUNNING, submit_dir=str(plan_dir), dagman_cluster=_cluster_from_files(plan_dir), submitted_at=time.time())
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


def _workflow_jobs(run_dir: RunDir) -> list[tuple[str, int | None, str | None]]:
    """(job id, manifest line, key) for every job of workflow.yml."""
    import yaml

    with open(run_dir.file(RunDir.WORKFLOW), encoding="utf-8") as fh:
        doc = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    jobs = []
    for job in doc.get("jobs") or []:
        meta = job.get("metadata") or {}
        line = str(meta.get("line", ""))
        jobs.append((str(job["id"]), int(line) if line.isdigit() else None, meta.get("key")))
    return jobs


def _write_plan_failure_records(run_dir: RunDir, reason: str) -> None:
    run_dir.jobs_dir.mkdir(parents=True, exist_ok=True)
    for job_id, line, key in _workflow_jobs(run_dir):
        path = run_dir.jobs_dir / f"{job_id}.json"
        if not path.exists():
            record = JobRecord(job_id, "failed", None, "PLAN_FAILED", reason, 0, 0.0, key=key, line=line)
            write_json_atomic(path, asdict(record))


# -------------------------------------------------------------------------------------------------------------
# Is the workflow still running?


def _cluster_from_files(submit_dir: Path) -> int | None:
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
        ads = schedd().query(constraint=constraint, projection=["ClusterId", "ProcId", "JobStatus"])
    except Exception:  # noqa: BLE001 - no bindings, no schedd, no permission: fall back to the submit directory
        return None
    return any(int(ad.get("JobStatus", 0)) not in ENDED_STATUSES for ad in ads)


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


def _local_engine_alive(extra: dict[str, Any]) -> bool:
    return process_alive(extra.get("engine_pid"), extra.get("engine_host"))


def workflow_is_running(run_dir: RunDir) -> bool:
    """False once the run's DAG finished, aborted or was removed (see the module docstring for the signals)."""
    info = run_dir.load()
    if info.state != RUNNING:
        return False
    submit_dir = info.extra.get("submit_dir")
    cluster = info.extra.get("dagman_cluster")
    if not submit_dir and info.extra.get("submitted_at"):
        # Submitted, but the planner's output did not name the submit directory: look for it under <run>/submit.
        found = _find_submit_dir(run_dir, "")
        if found is not None:
            submit_dir = str(found)
            run_dir.set_state(RUNNING, submit_dir=submit_dir)
        elif cluster is not None:
            alive = schedd_state(run_dir.path, cluster)
            return True if alive is None else alive
    if not submit_dir or not Path(submit_dir).is_dir():
        # Not submitted from here (or its submit directory is gone). `cog-pipeline run RUN_DIR` may be running it
        # with the local engine right now; otherwise nothing can finish it but a reconcile.
        return _local_engine_alive(info.extra)
    path = Path(submit_dir)
    if cluster is None:
        cluster = _cluster_from_files(path)
    alive = schedd_state(path, cluster)
    if alive is not None:
        return alive
    return not submit_dir_ended(path)


# -------------------------------------------------------------------------------------------------------------
# Failure reasons from the submit directory, then reconcile


def parse_jobstate(submit_dir: Path) -> dict[str, dict[str, Any]]:
    """Per conversion node: final state, last exit code, number of submissions, from jobstate.log."""
    nodes: dict[str, dict[str, Any]] = {}
    jobstate = submit_dir / "jobstate.log"
    if not jobstate.is_file():
        return nodes
    final_events = {"JOB_SUCCESS", "JOB_FAILURE", "POST_SCRIPT_SUCCESS", "POST_SCRIPT_FAILURE", "JOB_ABORTED", "SUBMIT_FAILED", "JOB_HELD"}
    with open(jobstate, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 3:
                continue
            match = JOB_NODE_RE.match(parts[1])
            if not match:
                continue
            node = nodes.setdefault(match.group(1), {"state": None, "exit_code": None, "submits": 0, "first": None, "last": None})
            stamp = int(parts[0]) if parts[0].isdigit() else None
            node["first"] = node["first"] if node["first"] is not None else stamp
            node["last"] = stamp
            event = parts[2]
            if event == "SUBMIT":
                node["submits"] += 1
                node["state"] = "SUBMIT"
            elif event in final_events:
                node["state"] = event
                if event in ("JOB_SUCCESS", "JOB_FAILURE") and len(parts) > 3 and parts[3].lstrip("-").isdigit():
                    node["exit_code"] = int(parts[3])
    return nodes


def _kickstart_outputs(submit_dir: Path) -> dict[str, Path]:
    """Per conversion job, its latest kickstart output file (the highest .out.NNN; a bare .out is newer still).

    Pegasus' default (Hashed) submit mapper puts the files two levels down (00/00/); Flat puts them at the top.
    """
    latest: dict[str, tuple[int, Path]] = {}
    for path in submit_dir.rglob("generate_cog_ID*.out*"):
        match = _KICKSTART_OUT_RE.match(path.name)
        if not match or not path.is_file():
            continue
        order = int(match.group(2)) if match.group(2) is not None else 1000
        if match.group(1) not in latest or order > latest[match.group(1)][0]:
            latest[match.group(1)] = (order, path)
    return {job_id: path for job_id, (_, path) in latest.items()}


_RECORD_LOADER: type | None = None


def _record_loader() -> type:
    """A SafeLoader that keeps timestamps as text (a record's dates are not needed and must not fail parsing)."""
    global _RECORD_LOADER
    if _RECORD_LOADER is None:
        import yaml

        class RecordLoader(yaml.SafeLoader):
            pass

        RecordLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.yaml_constructors["tag:yaml.org,2002:str"])
        _RECORD_LOADER = RecordLoader
    return _RECORD_LOADER


def _invocation_records(text: str) -> list[dict[str, Any]]:
    """Every parsable ``- invocation: True`` record in a kickstart output (a file may hold several, with
    ``---------------pegasus-multipart`` or ``[cluster-...]`` parts between them). A record that does not
    parse (truncated, garbage) is skipped."""
    import yaml

    chunks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines(keepends=True):
        if line.startswith("- invocation:"):
            current = [line]
            chunks.append(current)
        elif current is not None and (line[:1] in (" ", "\t") or not line.strip()):
            current.append(line)
        else:  # a multipart marker, a cluster line, another top-level item: this record has ended
            current = None
    records = []
    loader = _record_loader()
    for chunk in chunks:
        try:
            doc = yaml.load("".join(chunk), Loader=loader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError:
            continue
        if isinstance(doc, list) and doc and isinstance(doc[0], dict) and doc[0].get("invocation") is True:
            records.append(doc[0])
    return records


def _main_job_stderr(record: dict[str, Any]) -> tuple[str | None, int | None]:
    """(the main job's captured stderr, its exit code) from one invocation record; None where absent."""
    files = record.get("files")
    stderr = files.get("stderr") if isinstance(files, dict) else None
    data = stderr.get("data") if isinstance(stderr, dict) else None
    mainjob = record.get("mainjob")
    status = mainjob.get("status") if isinstance(mainjob, dict) else None
    code = status.get("regular_exitcode") if isinstance(status, dict) else None
    return (data if isinstance(data, str) else None), (code if isinstance(code, int) and not isinstance(code, bool) else None)


def kickstart_reason(path: Path | None, job_id: str, exit_code: int | None) -> str | None:
    """The converter's last stderr line from the job's kickstart record, or None (never raises).

    The record used is the last invocation of this job (``derivation``) preferring the ``generate_cog``
    transformation. A record whose own exit code disagrees with jobstate.log's belongs to another attempt and
    is not used.
    """
    if path is None:
        return None
    try:
        records = [r for r in _invocation_records(path.read_text(encoding="utf-8", errors="replace")) if r.get("derivation") in (None, job_id)]
        main = [r for r in records if "generate_cog" in str(r.get("transformation") or "")] or records
        if not main:
            return None
        data, code = _main_job_stderr(main[-1])
        if data is None or (code is not None and exit_code is not None and code != exit_code):
            return None
        line = last_line(data)
        return line[:_MAX_REASON_CHARS] if line else None
    except Exception:  # noqa: BLE001 - a reason is a nicety: any surprise means "use the exit category"
        return None


def collect_job_records(run_dir: RunDir) -> int:
    """Write jobs/<id>.json for conversion nodes that reached a final state in the submit directory."""
    submit_dir = run_dir.load().extra.get("submit_dir")
    if not submit_dir or not Path(submit_dir).is_dir():
        return 0
    nodes = parse_jobstate(Path(submit_dir))
    if not nodes:
        return 0
    keys: dict[int, str] = {}
    try:
        from .manifest import parse_manifest

        keys = {row.line: row.key for row in parse_manifest(run_dir.file(RunDir.MANIFEST).read_bytes()).rows}
    except (OSError, ValueError):
        pass
    run_dir.jobs_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    hint = f"details: pegasus-analyzer {submit_dir}"
    try:
        outputs = _kickstart_outputs(Path(submit_dir))
    except Exception:  # noqa: BLE001 - without kickstart records the reasons fall back to the exit category
        outputs = {}
    for job_id, node in nodes.items():
        path = run_dir.jobs_dir / f"{job_id}.json"
        state, code = node["state"], node["exit_code"]
        if path.exists() or state in (None, "SUBMIT"):
            continue
        category = EXIT_CATEGORIES.get(code, "INTERNAL_ERROR") if code is not None else "INTERNAL_ERROR"
        if state == "POST_SCRIPT_SUCCESS" or (state == "JOB_SUCCESS" and code in SUCCESS_CODES):
            status, reason = "succeeded", ""
        elif state == "POST_SCRIPT_FAILURE" and code == 0:
            status, category, reason = "failed", "JOB_FAILED", f"the job exited 0 but pegasus-exitcode rejected it; {hint}"
        elif state in ("JOB_FAILURE", "POST_SCRIPT_FAILURE"):
            status, reason = "failed", f"exit code {code}; {hint}" if code is not None else f"job failed; {hint}"
        elif state == "JOB_HELD":
            status, category, reason = "failed", "HELD", f"held when the workflow ended (removed); {hint}"
        else:  # JOB_ABORTED, SUBMIT_FAILED
            status, category, reason = "failed", "REMOVED", f"{state.lower().replace('_', ' ')} (condor_rm or DAG abort); {hint}"
        warning = None
        converter_line = kickstart_reason(outputs.get(job_id), job_id, code) if state in ("JOB_SUCCESS", "JOB_FAILURE", "POST_SCRIPT_SUCCESS", "POST_SCRIPT_FAILURE") else None
        if status == "succeeded":
            category = EXIT_CATEGORIES.get(code or 0, "OK")
            warning = f"exit code {code} ({category})" if code else None
            if converter_line and converter_line.startswith("WARNING"):
                warning = converter_line
        elif converter_line and code not in (None, 0):
            reason = converter_line
        line = int(job_id[2:]) if job_id[2:].isdigit() else None
        seconds = float(node["last"] - node["first"]) if node["first"] is not None and node["last"] is not None else 0.0
        record = JobRecord(
            job_id, status, code, category, reason, max(1, node["submits"]), seconds,
            key=keys.get(line) if line else None, line=line, warning=warning,
        )
        write_json_atomic(path, asdict(record))
        written += 1
    return written


def finish(run_dir: RunDir, input_store=None):
    """Failure reasons from the submit directory (best effort), then the exactly-once reconcile."""
    from .reconcile import reconcile

    if run_dir.load().state != RECONCILED:
        try:
            collect_job_records(run_dir)
        except Exception as exc:  # noqa: BLE001 - reasons are a nicety; never let them block the result files
            print(f"warning: could not read job outcomes from the submit directory: {exc}", file=sys.stderr)
    return reconcile(run_dir, input_store=input_store)


def end_hook_command(run_dir: RunDir) -> str:
    """The workflow END hook for pegasus runs: finish() from the submit host's Python, no PATH needed."""
    return shlex.join([sys.executable, "-m", "cog_pipeline.engine_pegasus", "finish", str(run_dir.path.resolve())])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "finish":
        print("usage: python -m cog_pipeline.engine_pegasus finish RUN_DIR", file=sys.stderr)
        return 2
    run_dir = RunDir(Path(argv[1]))
    if not run_dir.exists():
        print(f"error: {run_dir.path} has no run.json", file=sys.stderr)
        return 2
    result = finish(run_dir)
    prefix = "already reconciled: " if result.already_done else ""
    print(f"{prefix}{result.processed} processed, {result.failed} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
