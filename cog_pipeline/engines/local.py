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
run's lease (cog_pipeline/run/lease.py) while it works. One driver (`run_batch`) runs any number of runs through
one pool; `cog-pipeline run RUN_DIR` is a batch of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cog_pipeline.config import PipelineConfig, env_value
from cog_pipeline.run.lease import LEASE_SECONDS
from cog_pipeline.run.rundir import RUNNING, LeaseHeld, Preflight, RunDir, RunInfo, RunState
from cog_pipeline.run.rundir.jobs import JobRecord, job_file
from cog_pipeline.run.state import FINAL
from cog_pipeline.storage.store import LocalStore, StoreError, open_store

from . import local_pool
from .base import ExitCode, Finish, Outcome, RunFinished, WorkflowError, end_hook_command
from .local_pool import PoolSettings, cores_available, execute, plan_order, plan_workers, run_of
from .local_worker import AttemptOutcome, JobSpec, exhausted, run_attempt
from .local_workflow import catalog_objects, read_document


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


def load_jobs(run_dir: RunDir, info: RunInfo | None = None) -> tuple[list[JobSpec], list[str]]:
    """Resolve the generated workflow into runnable jobs and the END hook commands (`info`: run.json as the
    caller just read it)."""
    info = info or run_dir.load()
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
                from cog_pipeline.storage.listing import find_keys

                recorded = {k: o.size for k, o in find_keys(store, keys.values()).items()}
        except (StoreError, OSError):
            recorded = {}
    return {job_id: int(recorded.get(key) or 0) for job_id, key in keys.items()}


# ---------------------------------------------------------------------------------------------------------------
# The END hook


def run_end_hook(cmd: str, run_dir: RunDir, finish: Finish | None = None) -> int:
    """Run one END hook; its exit code. The engines' own hook (`base.end_hook_command`) is a call of `finish` in
    this process when one is given (a second interpreter and its imports cost ~0.5 s at the end of every
    scan); anything else, or env COG_PIPELINE_LOCAL_INPROCESS=0, runs in ``/bin/sh`` as DAGMan would run it."""
    if finish is not None and cmd == end_hook_command(run_dir.path) and env_value("local.in_process"):
        try:
            with contextlib.redirect_stdout(sys.stderr):  # a caller's stdout stays its own (scan --json)
                finish(run_dir)
        except Exception as exc:  # noqa: BLE001 - the tick finishes the run again and reports it
            print(f"error: end hook failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        to_stderr: int | None = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        to_stderr = None
    return subprocess.run(["/bin/sh", "-c", cmd], check=False, stdout=to_stderr).returncode


# ---------------------------------------------------------------------------------------------------------------
# The driver: one or several runs through one pool


@dataclass
class RunResult:
    """What one run's jobs did in this batch."""

    run_dir: RunDir
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0  # recorded by an earlier attempt of the run
    hooks: list[tuple[str, int]] = field(default_factory=list)  # (command, exit code)
    problem: str | None = None  # why it did not start, or why rows were left for a later tick
    finished: bool = False  # it was already in a final state (its END hook reconciled it): left as it is


@dataclass
class _Run:
    result: RunResult
    todo: list[JobSpec]
    hooks: list[str]
    taken: bool
    sizes: dict[str, int]
    left: int = 0
    left_over: list[str] = field(default_factory=list)  # reasons of jobs that met a full disk
    hook_thread: threading.Thread | None = None


def check_runnable(run_dir: RunDir, info: RunInfo | None = None) -> RunInfo:
    """run.json, as read (or `info`); RunFinished for a run in a final state (left exactly as it is);
    WorkflowError for one this engine cannot run (not generated, or submitted to another engine)."""
    info = info or run_dir.load()
    if info.state in FINAL:
        raise RunFinished(f"{run_dir.path} is already {info.state}: nothing to do")
    if info.state not in (RunState.GENERATED, RUNNING):
        raise WorkflowError(f"{run_dir.path} is {info.state}: generate its workflow first")
    if info.engine != "local" and info.state == RUNNING:
        raise WorkflowError(f"{run_dir.path} was submitted to {info.engine}; it cannot also run here")
    return info


def _start(run_dir: RunDir) -> _Run:
    """The run's jobs still to do, with its lease held and its state RUNNING."""
    jobs, hooks = load_jobs(run_dir, check_runnable(run_dir))
    taken = run_dir.acquire_lease()
    done = set(run_dir.job_records())
    todo = [job for job in jobs if job.job_id not in done]
    run_dir.jobs_dir.mkdir(parents=True, exist_ok=True)
    run_dir.set_state(RUNNING, engine="local")
    sizes = input_sizes(run_dir, todo)
    result = RunResult(run_dir, total=len(jobs), skipped=len(jobs) - len(todo))
    return _Run(result, plan_order(todo, sizes), hooks, taken, sizes, left=len(todo))


def run_batch(run_dirs: list[RunDir], *, workers: int | None = None, timeout: float | None = None,
              max_pixels: int = 0, progress: bool = False, finish: Finish | None = None) -> list[RunResult]:
    """Run the jobs of every run through one pool (the fair queue: no manifest waits behind another's huge
    image), and each run's END hooks the moment its own last job ends, whatever the jobs' outcomes.

    A record is written only when a job has used up its attempts, so a resumed run redoes neither its successes
    nor its definitive failures; a job that met a full disk gets no record and its run no END hook: the rows
    wait for a later tick (`problem` says so). A run that cannot start gets its `problem` and is left alone."""
    results: list[RunResult] = []
    runs: list[_Run] = []
    for run_dir in run_dirs:
        try:
            run = _start(run_dir)
        except RunFinished as exc:
            results.append(RunResult(run_dir, problem=str(exc), finished=True))
            continue
        except (WorkflowError, LeaseHeld, StoreError, OSError) as exc:
            results.append(RunResult(run_dir, problem=str(exc)))
            continue
        runs.append(run)
        results.append(run.result)
    by_key = {str(run.result.run_dir.path / "scratch"): run for run in runs}
    todo = [spec for run in runs for spec in run.todo]
    sizes = {(run_of(spec), spec.job_id): run.sizes.get(spec.job_id, 0) for run in runs for spec in run.todo}

    def start_hooks(run: _Run) -> None:
        def hooks() -> None:
            for cmd in run.hooks:
                run.result.hooks.append((cmd, run_end_hook(cmd, run.result.run_dir, finish)))

        run.hook_thread = threading.Thread(target=hooks, name=f"end-hook {run.result.run_dir.path.name}")
        run.hook_thread.start()

    try:
        with _progress_bar(progress, f"converting ({plan_workers(cores_available(), len(todo), workers)} workers)", len(todo)) as advance:
            started = time.monotonic()

            def on_final(spec: JobSpec, outcome: AttemptOutcome, attempts: int, seconds: float) -> None:
                run = by_key[run_of(spec)]
                if exhausted(outcome):  # no record, no END hook: the rows wait for a later tick
                    run.left_over.append(outcome.reason)
                else:
                    record = make_record(spec, outcome, attempts, seconds)
                    record.save(job_file(run.result.run_dir.jobs_dir, spec.job_id))
                    if record.status == "succeeded":
                        run.result.succeeded += 1
                    else:
                        run.result.failed += 1
                run.left -= 1
                if run.left == 0 and not run.left_over:
                    start_hooks(run)
                done = sum(r.result.succeeded + r.result.failed for r in runs)
                advance(f"{done / max(time.monotonic() - started, 1e-6):.2f}", sum(r.result.failed for r in runs))

            def renew() -> None:
                for run in runs:
                    run.result.run_dir.renew_lease()

            for run in runs:
                if not run.todo:
                    start_hooks(run)
            if todo:
                settings = PoolSettings(workers=plan_workers(cores_available(), len(todo), workers), cores=cores_available(),
                                        timeout=timeout, max_pixels=max_pixels, tick=LEASE_SECONDS / 4)
                execute(todo, settings, on_final, on_tick=renew, sizes=sizes)
    finally:
        for run in runs:
            if run.hook_thread is not None:
                run.hook_thread.join()
            shutil.rmtree(run.result.run_dir.path / "scratch", ignore_errors=True)
            if run.taken:
                run.result.run_dir.release_lease()
    for run in runs:
        if run.left_over:
            run.result.problem = left_for_later(len(run.left_over), run.left_over[0])
    return results


def left_for_later(jobs: int, reason: str) -> str:
    return f"{jobs} job(s) ran out of disk ({reason}); their rows are left for a later tick"


@contextlib.contextmanager
def _progress_bar(show: bool, description: str, total: int) -> Iterator[Callable[[str, int], None]]:
    """A rich progress bar; yields ``advance(rate, failed)``. Without a terminal (Crondor, tests) rich is not
    even imported: its import costs ~0.1 s of every scan."""
    if not show or not total:
        yield lambda rate, failed: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} img/s"),
        TextColumn("failed {task.fields[failed]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="-", failed=0)
        yield lambda rate, failed: bar.update(task, advance=1, rate=rate, failed=failed)


def output_objects(run_dir: RunDir) -> set[tuple[str, str]]:
    """(bucket, key) of every object the run's jobs write, from its outputs catalog."""
    info = run_dir.load()
    return set(catalog_objects(run_dir.file(RunDir.OUTPUTS), info.store_config.local_root).values())


class LocalEngine:
    """The Engine protocol (engines/base.py) for this machine's process pool."""

    name = "local"
    adopts_unplanned = True  # it runs a run another engine's tick generated but never handed over
    writes_credentials = False  # it reads the key files itself
    key_problem = None  # it carries any key the stores take

    def __init__(self, config: PipelineConfig, *, progress: bool = False, finish: Finish | None = None, **_: Any) -> None:
        self.workers = config.local.workers or None
        self.timeout = config.local.job_timeout_s or None
        self.max_pixels = config.local.max_pixels
        self.progress = progress
        self.finish = finish

    def begin(self) -> None:
        """The pool's workers start now: their imports overlap the listing, the claims and the workflows."""
        local_pool.prestart(plan_workers(cores_available(), cores_available(), self.workers))

    def end(self) -> None:
        local_pool.release_prestarted()

    def run(self, runs: list[RunDir], echo: Callable[[str], None]) -> dict[Path, Outcome]:
        """Every run through one pool. Two runs that write one output never run side by side: the later one
        goes in a later batch, after the earlier one's END hook has reconciled it."""
        outcomes: dict[Path, Outcome] = {}
        for batch in self._batches(runs, echo):
            for result in run_batch(batch, workers=self.workers, timeout=self.timeout, max_pixels=self.max_pixels,
                                    progress=self.progress, finish=self.finish):
                outcomes[result.run_dir.path] = self._outcome(result, echo)
        return outcomes

    @staticmethod
    def _batches(runs: list[RunDir], echo: Callable[[str], None]) -> list[list[RunDir]]:
        """The runs in batches whose outputs do not meet, in order. One run is one batch: its outputs catalog
        (as long as its manifest) is read only when another run could share an output."""
        if len(runs) < 2:
            return [runs]
        writes_of: dict[Path, set[tuple[str, str]]] = {}
        for run_dir in runs:
            try:
                writes_of[run_dir.path] = output_objects(run_dir)
            except (OSError, ValueError, WorkflowError):
                writes_of[run_dir.path] = set()  # run_batch names the problem
        batches: list[list[RunDir]] = []
        waiting = list(runs)
        while waiting:
            batch, writes, later = [], set(), []
            for run_dir in waiting:
                if writes_of[run_dir.path] & writes:
                    echo(f"{run_dir.load().manifest_key}: shares outputs with another manifest of this tick; it runs after it")
                    later.append(run_dir)
                    continue
                writes |= writes_of[run_dir.path]
                batch.append(run_dir)
            batches.append(batch)
            waiting = later
        return batches

    @staticmethod
    def _outcome(result: RunResult, echo: Callable[[str], None]) -> Outcome:
        if result.finished:
            return Outcome("ended")  # its END hook reconciled it already
        if result.problem and not result.total:
            return Outcome("error", result.problem)
        echo(f"jobs: {result.succeeded} succeeded, {result.failed} failed, {result.skipped} already done")
        for cmd, code in result.hooks:
            if code != 0:
                echo(f"warning: end hook exited {code}: {cmd}; finishing in-process")
        return Outcome("error", result.problem) if result.problem else Outcome("ended")

    def is_running(self, run_dir: RunDir) -> bool:
        return run_dir.is_owned()

    def handed_over(self, run_dir: RunDir) -> bool:
        return run_dir.load().state == RUNNING

    def collect_job_records(self, run_dir: RunDir) -> int:
        return 0  # the driver writes each record as its job ends
