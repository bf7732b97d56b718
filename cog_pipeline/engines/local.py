"""The local engine: execute a generated Pegasus workflow on this machine with a process pool.

It reads the same files `pegasus-plan` would (workflow.yml, replicas.yml, transformations.yml, sites.yml)
and gives each job the same world a Pegasus job sees on a worker: a scratch working directory holding
every input under its LFN, the transformation run there with the workflow's arguments, outputs picked up
by LFN. Where each file lives comes from the same catalogs Pegasus reads: an input LFN's object from
replicas.yml, an output LFN's from outputs.yml (``replicas.catalog.object_of_pfn``, then (bucket, key) pairs
inside). Nothing here reads the manifest: if the local engine can run a workflow, so can Pegasus, and the
other way round.

Each finished job leaves `jobs/<id>.json` (outcome, exit code, one-line reason, attempts) and
`jobs/<id>.log`, plus each uploaded output's ETag and size (so reconcile can tell this job's object from
another's); a rerun skips jobs already recorded, which is how a crashed run resumes. The driver renews the
run's lease (cog_pipeline/lease.py) while it works.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..lease import LEASE_SECONDS
from ..rundir import RUNNING, Preflight, RunDir, RunState
from ..state import FINAL
from ..store import LocalStore, StoreError, open_store
from .base import ExitCode, JobRecord, RunFinished, WorkflowError, run_end_hook, write_record
from .local_pool import PoolSettings, cores_available, execute, job_timeout_setting, plan_order, plan_workers
from .local_workflow import catalog_objects, read_document
from .local_worker import AttemptOutcome, JobSpec, exhausted, max_pixels_setting, run_attempt


@dataclass
class EngineResult:
    total: int
    succeeded: int
    failed: int
    skipped: int
    hooks: list[tuple[str, int]]  # (command, exit code)


def _load_yaml(path: Path) -> Any:
    if not path.is_file():
        raise WorkflowError(f"{path} is missing: generate the workflow first")
    return read_document(path)  # the generator's line format fast, anything else as YAML


def _profile(profiles: dict[str, Any] | None, namespace: str, key: str) -> Any:
    for name, value in ((profiles or {}).get(namespace) or {}).items():
        if name.lower() == key.lower():
            return value
    return None


def _env_profile(profiles: dict[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in ((profiles or {}).get("env") or {}).items()}


def _catalog_keys(path: Path, bucket: str, local_root: Path | None) -> dict[str, str]:
    """LFN -> key of a replica catalog whose PFNs all name objects in `bucket` (the run's input or output)."""
    if not path.is_file():
        raise WorkflowError(f"{path} is missing: generate the workflow first")
    try:
        objects = catalog_objects(path, local_root)
    except ValueError as exc:
        raise WorkflowError(f"{path.name}: {exc}") from None
    for lfn, (found_bucket, _) in objects.items():
        if found_bucket != bucket:
            raise WorkflowError(f"{path.name}: {lfn!r} is in bucket {found_bucket!r}, not the run's {bucket!r}")
    return {lfn: key for lfn, (_, key) in objects.items()}


def load_jobs(run_dir: RunDir) -> tuple[list[JobSpec], list[str]]:
    """Resolve the generated workflow into runnable jobs and the END hook commands."""
    info = run_dir.load()
    workflow = _load_yaml(run_dir.file(RunDir.WORKFLOW))
    local_root = info.store_config.local_root
    where_in = _catalog_keys(run_dir.file(RunDir.REPLICAS), info.input_bucket, local_root)
    where_out = _catalog_keys(run_dir.file(RunDir.OUTPUTS), info.output_bucket, local_root)
    transformations = _load_yaml(run_dir.file(RunDir.TRANSFORMATIONS)) or {}
    exe_of: dict[str, str] = {}
    env_of: dict[str, dict[str, str]] = {}
    for tr in transformations.get("transformations", []):
        for site in tr.get("sites", []):
            if site.get("name") == "local" or tr["name"] not in exe_of:
                exe_of[tr["name"]] = site["pfn"]
                # Profiles merge as in Pegasus: transformation, then its site entry, then the job.
                env_of[tr["name"]] = {
                    **_env_profile(tr.get("profiles")),
                    **_env_profile(site.get("profiles")),
                }
    wf_retry = _profile(workflow.get("profiles"), "dagman", "retry")
    scratch_root = str(run_dir.path / "scratch")
    jobs_dir = str(run_dir.jobs_dir)  # plain strings: 50,000 Path joins cost seconds
    jobs: list[JobSpec] = []
    for job in workflow.get("jobs", []):
        if job.get("type", "job") != "job":
            raise WorkflowError(f"job {job.get('id')}: only plain jobs are supported by the local engine")
        name = job["name"]
        if name not in exe_of:
            raise WorkflowError(f"job {job['id']}: transformation {name!r} is not in transformations.yml")
        inputs: dict[str, str] = {}
        outputs: dict[str, str] = {}
        for use in job.get("uses", []):
            lfn = use["lfn"]
            if use["type"] == "input":
                if lfn not in where_in:
                    raise WorkflowError(f"job {job['id']}: input {lfn!r} has no replica in {RunDir.REPLICAS}")
                inputs[lfn] = where_in[lfn]
            elif use["type"] == "output" and use.get("stageOut", True):
                if lfn not in where_out:
                    raise WorkflowError(f"job {job['id']}: output {lfn!r} has no location in {RunDir.OUTPUTS}")
                outputs[lfn] = where_out[lfn]
        # Pegasus retries a transient failure through the job's holds (run.json retries); a job-level
        # DAGMan retry, where a hand-written workflow has one, counts too.
        retry = _profile(job.get("profiles"), "dagman", "retry")
        retry = max(int(wf_retry if retry is None else retry), int(info.retries or 0))
        env = {**env_of.get(name, {}), **_env_profile(job.get("profiles"))}
        jobs.append(
            JobSpec(
                job_id=str(job["id"]),
                executable=exe_of[name],
                input_bucket=info.input_bucket,
                output_bucket=info.output_bucket,
                arguments=files_after_options([str(a) for a in job.get("arguments", [])], {*inputs, *outputs}),
                inputs=inputs,
                outputs=outputs,
                attempts=1 + int(retry or 0),
                metadata={str(k): str(v) for k, v in (job.get("metadata") or {}).items()},
                store=info.store,
                scratch_root=scratch_root,
                log_path=os.path.join(jobs_dir, f"{job['id']}.log"),
                env=env,
            )
        )
    hooks = [h["cmd"] for h in (workflow.get("hooks") or {}).get("shell", []) if h.get("_on") in ("end", "all")]
    return jobs, hooks


def files_after_options(arguments: list[str], files: set[str]) -> list[str]:
    """The job's arguments with its file arguments (its LFNs) after `--`, options first: a key that starts
    with '-' is then a file name to the converter, never an option. (They are a list, never a shell line.)"""
    named = [a for a in arguments if a in files]
    return [*(a for a in arguments if a not in files), "--", *named] if named else arguments


# ---------------------------------------------------------------------------------------------------------------
# One job in this process (the pool runs attempts in its workers: local_pool.py)


def run_job(spec: JobSpec, *, max_pixels: int | None = None) -> JobRecord:
    """Run one job with its retries in this process; never raises, so one image can never stop the others."""
    started = time.monotonic()
    Path(spec.scratch_root).mkdir(parents=True, exist_ok=True)
    outcome = AttemptOutcome("failed", None, ExitCode.INTERNAL.name, "job did not run")
    attempt = 0
    for attempt in range(1, spec.attempts + 1):
        outcome = run_attempt(spec, attempt, max_pixels=max_pixels)
        if outcome.status == "succeeded" or not outcome.retry:
            break
    return make_record(spec, outcome, attempt, time.monotonic() - started)


def make_record(spec: JobSpec, outcome: AttemptOutcome, attempts: int, seconds: float) -> JobRecord:
    """jobs/<id>.json from the job's last attempt."""
    return JobRecord(
        job_id=spec.job_id,
        status=outcome.status,
        exit_code=outcome.exit_code,
        category=outcome.category,
        reason=outcome.reason,
        attempts=attempts,
        seconds=round(seconds, 3),
        key=spec.metadata.get("key"),
        line=int(spec.metadata["line"]) if spec.metadata.get("line", "").isdigit() else None,
        warning=outcome.warning,
        outputs=outcome.outputs,
    )


# ---------------------------------------------------------------------------------------------------------------
# The driver


def _record_path(run_dir: RunDir, job_id: str) -> Path:
    return run_dir.jobs_dir / f"{job_id}.json"


def default_workers() -> int:
    return cores_available()


@dataclass(frozen=True)
class LocalLimits:
    """Per-job limits of the local engine (issue 8.10). None: the env setting, else the default."""

    job_timeout: float | None = None  # seconds per attempt; 0: no limit (local_pool.job_timeout_setting)
    max_pixels: int | None = None  # width*height*bands*bytes per sample; 0: no limit (local_worker)


def input_sizes(run_dir: RunDir, jobs: list[JobSpec]) -> dict[str, int]:
    """Each job's input size in bytes, to start big images first: pre-flight's sizes when the generator
    recorded them, else one listing (folder buckets: a stat per key). Unknown sizes count as 0."""
    checked = Preflight.load(run_dir.path)
    recorded = checked.sizes() if checked is not None else {}
    keys = {job.job_id: next(iter(job.inputs.values()), "") for job in jobs}
    if not recorded and jobs:
        info = run_dir.load()
        try:
            store = open_store(info.input_bucket, info.store_config)
            if isinstance(store, LocalStore):
                recorded = {}
                for key in keys.values():
                    try:
                        recorded[key] = store.path_of(key).stat().st_size
                    except (OSError, StoreError):
                        continue
            else:
                from ..listing import find_keys

                recorded = {k: o.size for k, o in find_keys(store, keys.values()).items()}
        except (StoreError, OSError):
            recorded = {}
    return {job_id: int(recorded.get(key) or 0) for job_id, key in keys.items()}


def run_workflow(
    run_dir: RunDir,
    *,
    workers: int | None = None,
    progress: bool = True,
    run_hooks: bool = True,
    limits: LocalLimits | None = None,
) -> EngineResult:
    """Run every job without a final record, then the END hooks, whatever the jobs' outcomes.

    A record is written only when a job has used up its attempts, so a resumed run redoes neither its
    successes nor its definitive failures. A finished run raises RunFinished and is left as it is; a run
    another live process holds raises LeaseHeld.
    """
    info = run_dir.load()
    if info.state in FINAL:
        raise RunFinished(f"{run_dir.path} is already {info.state}: nothing to do")
    if info.state not in (RunState.GENERATED, RUNNING):
        raise WorkflowError(f"{run_dir.path} is {info.state}: generate its workflow first")
    if info.engine != "local" and info.state == RUNNING:
        raise WorkflowError(f"{run_dir.path} was submitted to {info.engine}; it cannot also run here")
    jobs, hooks = load_jobs(run_dir)
    taken = run_dir.acquire_lease()
    try:
        done = set(run_dir.job_records())
        todo = [job for job in jobs if job.job_id not in done]
        run_dir.jobs_dir.mkdir(parents=True, exist_ok=True)
        run_dir.set_state(RUNNING, engine="local")
        succeeded = failed = 0
        try:
            if todo:
                todo = plan_order(todo, input_sizes(run_dir, todo))
                workers = plan_workers(default_workers(), len(todo), workers)
                succeeded, failed = _execute(run_dir, todo, workers, progress, limits=limits)
        finally:
            shutil.rmtree(run_dir.path / "scratch", ignore_errors=True)
        # The workflow has ended (every job has its final record): now, and only now, the END hooks. A driver
        # that dies before this point leaves the run RUNNING, and the next scan resumes the missing jobs.
        hook_results: list[tuple[str, int]] = []
        if run_hooks:
            for cmd in hooks:
                hook_results.append((cmd, run_end_hook(cmd, run_dir.path)))
    finally:
        if taken:
            run_dir.release_lease()
    return EngineResult(len(jobs), succeeded, failed, len(jobs) - len(todo), hook_results)


def _execute(run_dir: RunDir, todo: list[JobSpec], workers: int, show_progress: bool, *, limits: LocalLimits | None = None) -> tuple[int, int]:
    limits = limits or LocalLimits()
    counts = {"succeeded": 0, "failed": 0}
    left_over: list[str] = []  # reasons of jobs that met a full disk: recorded nowhere, run again next tick
    started = time.monotonic()
    settings = PoolSettings(
        workers=workers,
        cores=default_workers(),
        timeout=job_timeout_setting(limits.job_timeout),
        max_pixels=max_pixels_setting(limits.max_pixels),
        tick=LEASE_SECONDS / 4,
    )
    with _progress_bar(show_progress, f"converting ({workers} workers)", len(todo)) as advance:

        def on_final(spec: JobSpec, outcome: AttemptOutcome, attempts: int, seconds: float) -> None:
            if exhausted(outcome):  # no record: the row is not failed, it waits for a later tick
                left_over.append(outcome.reason)
                return
            record = make_record(spec, outcome, attempts, seconds)
            write_record(_record_path(run_dir, record.job_id), record)
            counts["succeeded" if record.status == "succeeded" else "failed"] += 1
            done = counts["succeeded"] + counts["failed"]
            advance(f"{done / max(time.monotonic() - started, 1e-6):.2f}", counts["failed"])

        # The pool wakes at least a few times per lease period to renew it, even while one job runs for long.
        execute(todo, settings, on_final, on_tick=run_dir.renew_lease)
    if left_over:
        raise WorkflowError(left_for_later(len(left_over), left_over[0]))
    return counts["succeeded"], counts["failed"]


def left_for_later(jobs: int, reason: str) -> str:
    return f"{jobs} job(s) ran out of disk ({reason}); their rows are left for a later tick"


@contextlib.contextmanager
def _progress_bar(show: bool, description: str, total: int) -> Iterator[Callable[[str, int], None]]:
    """A rich progress bar; yields ``advance(rate, failed)``. Without a terminal (Crondor, tests) rich is not
    even imported: its import costs ~0.1 s of every scan."""
    if not show:
        yield lambda rate, failed: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} img/s"),
        TextColumn("failed {task.fields[failed]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="-", failed=0)
        yield lambda rate, failed: bar.update(task, advance=1, rate=rate, failed=failed)


class LocalEngine:
    """The Engine protocol for this machine's process pool (see engines/base.py)."""

    name = "local"

    def __init__(self, workers: int | None = None, progress: bool = True, limits: LocalLimits | None = None) -> None:
        self.workers, self.progress, self.limits = workers, progress, limits

    def submit(self, run_dir: RunDir, echo: Callable[[str], None]) -> str:
        try:
            result = run_workflow(run_dir, workers=self.workers, progress=self.progress, run_hooks=True, limits=self.limits)
        except RunFinished:
            return "ended"  # its END hook already reconciled it (local_tick runs a tick's runs together)
        echo(f"jobs: {result.succeeded} succeeded, {result.failed} failed, {result.skipped} already done")
        for cmd, code in result.hooks:
            if code != 0:
                echo(f"warning: end hook exited {code}: {cmd}; finishing in-process")
        return "ended"

    def is_running(self, run_dir: RunDir) -> bool:
        return run_dir.is_owned()

    def collect_job_records(self, run_dir: RunDir) -> int:
        return 0  # the driver writes each record as its job ends
