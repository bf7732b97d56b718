"""The local engine: execute a generated Pegasus workflow on this machine with a process pool.

It reads the same files `pegasus-plan` would (workflow.yml, replicas.yml, transformations.yml, sites.yml)
and gives each job the same world a Pegasus job sees on a worker: a scratch working directory holding
every input under its LFN, the transformation run there with the workflow's arguments, outputs picked up
by LFN. Locations are (bucket, key) pairs, never URLs: an input LFN ``input/<key>`` is ``key`` in run.json's
input bucket (it must also have a replica in replicas.yml, as Pegasus requires), and an output LFN is its key
in the output bucket. Nothing here reads the manifest: if the local engine can run a workflow, so can
Pegasus, and the other way round.

Each finished job leaves `jobs/<id>.json` (outcome, exit code, one-line reason, attempts) and
`jobs/<id>.log`, plus each uploaded output's ETag and size (so reconcile can tell this job's object from
another's); a rerun skips jobs already recorded, which is how a crashed run resumes. The driver renews the
run's lease (cog_pipeline/lease.py) while it works.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..lease import LEASE_SECONDS
from ..replicas.catalog import key_of_input_lfn
from ..rundir import RUNNING, RunDir, RunState
from ..state import FINAL
from ..store import LocalStore, ObjectStore, StoreConfig, StoreError, open_store
from .base import NOT_RETRIED, SUCCESS_CODES, ExitCode, JobRecord, RunFinished, WorkflowError, category, last_line, write_record


@dataclass(frozen=True)
class JobSpec:
    """One job, resolved to concrete locations: everything a pool worker needs, picklable."""

    job_id: str
    executable: str
    arguments: list[str]
    input_bucket: str
    output_bucket: str
    inputs: dict[str, str]  # LFN -> key in the input bucket
    outputs: dict[str, str]  # LFN -> key in the output bucket
    attempts: int
    metadata: dict[str, str]
    store: dict[str, Any]
    scratch_root: str
    log_path: str
    env: dict[str, str] = field(default_factory=dict)


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
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _profile(profiles: dict[str, Any] | None, namespace: str, key: str) -> Any:
    for name, value in ((profiles or {}).get(namespace) or {}).items():
        if name.lower() == key.lower():
            return value
    return None


def _env_profile(profiles: dict[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in ((profiles or {}).get("env") or {}).items()}


def load_jobs(run_dir: RunDir) -> tuple[list[JobSpec], list[str]]:
    """Resolve the generated workflow into runnable jobs and the END hook commands."""
    info = run_dir.load()
    workflow = _load_yaml(run_dir.file(RunDir.WORKFLOW))
    replicas = _load_yaml(run_dir.file(RunDir.REPLICAS)) or {}
    transformations = _load_yaml(run_dir.file(RunDir.TRANSFORMATIONS)) or {}
    replicated = {r["lfn"] for r in replicas.get("replicas", []) if r.get("pfns")}
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
    scratch_root = run_dir.path / "scratch"
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
                if lfn not in replicated:
                    raise WorkflowError(f"job {job['id']}: input {lfn!r} has no replica in replicas.yml")
                try:
                    inputs[lfn] = key_of_input_lfn(lfn)
                except ValueError as exc:
                    raise WorkflowError(f"job {job['id']}: {exc}") from None
            elif use["type"] == "output" and use.get("stageOut", True):
                outputs[lfn] = lfn
        retry = _profile(job.get("profiles"), "dagman", "retry")
        retry = wf_retry if retry is None else retry
        env = {**env_of.get(name, {}), **_env_profile(job.get("profiles"))}
        jobs.append(
            JobSpec(
                job_id=str(job["id"]),
                executable=exe_of[name],
                input_bucket=info.input_bucket,
                output_bucket=info.output_bucket,
                arguments=[str(a) for a in job.get("arguments", [])],
                inputs=inputs,
                outputs=outputs,
                attempts=1 + int(retry or 0),
                metadata={str(k): str(v) for k, v in (job.get("metadata") or {}).items()},
                store=info.store,
                scratch_root=str(scratch_root),
                log_path=str(run_dir.jobs_dir / f"{job['id']}.log"),
                env=env,
            )
        )
    hooks = [h["cmd"] for h in (workflow.get("hooks") or {}).get("shell", []) if h.get("_on") in ("end", "all")]
    return jobs, hooks


# ---------------------------------------------------------------------------------------------------------------
# Inside a pool worker

_stores: dict[tuple[str, str], ObjectStore] = {}


def _store_for(store_json: dict[str, Any], bucket: str) -> ObjectStore:
    config = StoreConfig.from_json(store_json)
    cache_key = (repr(sorted(store_json.items())), bucket)
    if cache_key not in _stores:
        _stores[cache_key] = open_store(bucket, config)
    return _stores[cache_key]


def _safe_join(root: Path, lfn: str) -> Path:
    path = (root / lfn).resolve()
    if root.resolve() not in path.parents:
        raise WorkflowError(f"LFN {lfn!r} escapes the job's working directory")
    return path


def _stage_in(spec: JobSpec, workdir: Path) -> None:
    store = _store_for(spec.store, spec.input_bucket)
    for lfn, key in spec.inputs.items():
        dest = _safe_join(workdir, lfn)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(store, LocalStore):
            src = store.path_of(key)
            if not src.is_file():
                raise FileNotFoundError(f"input {key!r} does not exist in bucket {spec.input_bucket}")
            os.symlink(src, dest)  # Pegasus links local replicas too; the converter only reads it
        else:
            store.download(key, dest)


def _stage_out(spec: JobSpec, workdir: Path) -> dict[str, dict[str, Any]]:
    """Upload every output to its own key; returns key -> {etag, size} as the store reported them."""
    store = _store_for(spec.store, spec.output_bucket)
    uploaded: dict[str, dict[str, Any]] = {}
    for lfn, key in spec.outputs.items():
        src = _safe_join(workdir, lfn)
        if not src.is_file():
            raise FileNotFoundError(f"job produced no {lfn}")
        info = store.upload(src, key)
        uploaded[key] = {"etag": info.etag, "size": info.size}
    return uploaded


def run_job(spec: JobSpec) -> JobRecord:
    """Run one job with its retries; never raises, so one image can never stop the others."""
    started = time.monotonic()
    Path(spec.scratch_root).mkdir(parents=True, exist_ok=True)
    Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
    record = JobRecord(spec.job_id, "failed", None, ExitCode.INTERNAL.name, "job did not run", 0, 0.0)
    with open(spec.log_path, "a", encoding="utf-8") as log:
        for attempt in range(1, spec.attempts + 1):
            record.attempts = attempt
            workdir = Path(tempfile.mkdtemp(prefix=f"{spec.job_id}-", dir=spec.scratch_root))
            try:
                log.write(f"--- attempt {attempt}/{spec.attempts} in {workdir}\n")
                try:
                    _stage_in(spec, workdir)
                except (StoreError, OSError) as exc:
                    record.exit_code, record.category = None, "STAGE_IN_FAILED"
                    record.reason = f"stage-in failed: {exc}"
                    log.write(record.reason + "\n")
                    continue
                cmd = [spec.executable, *spec.arguments]
                log.write(f"$ {shlex.join(cmd)}\n")
                log.flush()
                # Scripts start with '#!/usr/bin/env python3': give them this environment's interpreter, as the
                # container gives them its own on a worker.
                path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
                env = {**os.environ, "PATH": path, **spec.env}
                proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env, check=False)
                log.write(proc.stdout)
                log.write(proc.stderr)
                record.exit_code = proc.returncode
                record.category = category(proc.returncode)
                record.reason = last_line(proc.stderr) or f"exit code {proc.returncode}"
                if proc.returncode not in SUCCESS_CODES:
                    if proc.returncode in NOT_RETRIED:
                        break
                    continue
                try:
                    record.outputs = _stage_out(spec, workdir)
                except (StoreError, OSError) as exc:
                    record.category = "STAGE_OUT_FAILED"
                    record.reason = f"stage-out failed: {exc}"
                    log.write(record.reason + "\n")
                    continue
                record.status = "succeeded"
                record.warning = record.reason if record.reason.startswith("WARNING") else None
                record.reason = ""
                break
            except Exception as exc:  # noqa: BLE001 - a crash in one job is that job's failure, with its reason
                record.category, record.reason = ExitCode.INTERNAL.name, f"{type(exc).__name__}: {exc}"
                log.write(record.reason + "\n")
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    record.seconds = round(time.monotonic() - started, 3)
    record.key = spec.metadata.get("key")
    record.line = int(spec.metadata["line"]) if spec.metadata.get("line", "").isdigit() else None
    return record


# ---------------------------------------------------------------------------------------------------------------
# The driver


def _record_path(run_dir: RunDir, job_id: str) -> Path:
    return run_dir.jobs_dir / f"{job_id}.json"


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def run_workflow(
    run_dir: RunDir,
    *,
    workers: int | None = None,
    progress: bool = True,
    run_hooks: bool = True,
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
        workers = max(1, min(workers or default_workers(), len(todo) or 1))
        succeeded = failed = 0
        try:
            if todo:
                succeeded, failed = _execute(run_dir, todo, workers, progress)
        finally:
            shutil.rmtree(run_dir.path / "scratch", ignore_errors=True)
        # The workflow has ended (every job has its final record): now, and only now, the END hooks. A driver
        # that dies before this point leaves the run RUNNING, and the next scan resumes the missing jobs.
        hook_results: list[tuple[str, int]] = []
        if run_hooks:
            for cmd in hooks:
                proc = subprocess.run(["/bin/sh", "-c", cmd], check=False)
                hook_results.append((cmd, proc.returncode))
    finally:
        if taken:
            run_dir.release_lease()
    return EngineResult(len(jobs), succeeded, failed, len(jobs) - len(todo), hook_results)


def _execute(run_dir: RunDir, todo: list[JobSpec], workers: int, show_progress: bool) -> tuple[int, int]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    succeeded = failed = 0
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} img/s"),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    started = time.monotonic()
    with Progress(*columns, disable=not show_progress, transient=False) as bar:
        task = bar.add_task(f"converting ({workers} workers)", total=len(todo), rate="-", failed=0)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending: set[Future[JobRecord]] = set()
            queue = iter(todo)
            # Keep a bounded number of jobs in flight so 100,000-row manifests do not fill memory with futures.
            for job in queue:
                pending.add(pool.submit(run_job, job))
                if len(pending) >= workers * 4:
                    break
            while pending:
                # Wake at least a few times per lease period to renew it, even while one job runs for long.
                finished, pending = wait(pending, timeout=LEASE_SECONDS / 4, return_when=FIRST_COMPLETED)
                run_dir.renew_lease()
                for future in finished:
                    record = future.result()
                    write_record(_record_path(run_dir, record.job_id), record)
                    if record.status == "succeeded":
                        succeeded += 1
                    else:
                        failed += 1
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(pool.submit(run_job, nxt))
                elapsed = max(time.monotonic() - started, 1e-6)
                bar.update(task, advance=len(finished), rate=f"{(succeeded + failed) / elapsed:.2f}", failed=failed)
    return succeeded, failed


class LocalEngine:
    """The Engine protocol for this machine's process pool (see engines/base.py)."""

    name = "local"

    def __init__(self, workers: int | None = None, progress: bool = True) -> None:
        self.workers, self.progress = workers, progress

    def submit(self, run_dir: RunDir, echo: Callable[[str], None]) -> str:
        result = run_workflow(run_dir, workers=self.workers, progress=self.progress, run_hooks=True)
        echo(f"jobs: {result.succeeded} succeeded, {result.failed} failed, {result.skipped} already done")
        for cmd, code in result.hooks:
            if code != 0:
                echo(f"warning: end hook exited {code}: {cmd}; finishing in-process")
        return "ended"

    def is_running(self, run_dir: RunDir) -> bool:
        return run_dir.is_owned()

    def collect_job_records(self, run_dir: RunDir) -> int:
        return 0  # the driver writes each record as its job ends
