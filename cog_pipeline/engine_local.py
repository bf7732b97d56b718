"""The local engine: execute a generated Pegasus workflow on this machine with a process pool.

It reads the same files `pegasus-plan` would (workflow.yml, replicas.yml, transformations.yml, sites.yml)
and gives each job the same world a Pegasus job sees on a worker: a scratch working directory holding
every input under its LFN, the transformation run there with the workflow's arguments, outputs picked up
by LFN and staged to the output site's storage URL + "/" + LFN. Nothing here reads the manifest: if the
local engine can run a workflow, so can Pegasus, and the other way round.

Each finished job leaves `jobs/<id>.json` (outcome, exit code, one-line reason, attempts) and
`jobs/<id>.log`; a rerun skips jobs already recorded as succeeded, which is how a crashed run resumes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import atomic
from .rundir import RUNNING, RunDir, this_host, write_json_atomic
from .store import ObjectStore, StoreConfig, StoreError, open_store, parse_location

# Exit codes of transformations/generate_cog (see docs/conversion.md). Input problems are deterministic:
# retrying them only burns time, so the local engine does not (DAGMan retries every failure).
EXIT_CATEGORIES = {
    0: "OK",
    1: "INTERNAL_ERROR",
    2: "USAGE_ERROR",
    3: "INPUT_UNREADABLE",
    4: "UNSUPPORTED_INPUT",
    5: "BAND_MISMATCH",
    6: "OUTPUT_INVALID",
    7: "OUT_OF_DISK",
}
NOT_RETRIED = {2, 3, 4, 5}
# Like DAGMan, only exit 0 succeeds. Generated workflows set COG_PIPELINE_BAND_MISMATCH=warn on the
# transformation, so a band mismatch exits 0 with a "WARNING BAND_MISMATCH: ..." line: processed, noted.
SUCCESS_CODES = {0}


class WorkflowError(RuntimeError):
    """The run directory does not hold a workflow this engine can execute."""


@dataclass(frozen=True)
class JobSpec:
    """One job, resolved to concrete locations: everything a pool worker needs, picklable."""

    job_id: str
    executable: str
    arguments: list[str]
    inputs: dict[str, str]  # LFN -> PFN
    outputs: dict[str, str]  # LFN -> destination URL
    attempts: int
    metadata: dict[str, str]
    store: dict[str, Any]
    scratch_root: str
    log_path: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class JobRecord:
    job_id: str
    status: str  # "succeeded" | "failed"
    exit_code: int | None
    category: str
    reason: str
    attempts: int
    seconds: float
    key: str | None = None
    line: int | None = None
    warning: str | None = None


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


def _output_url(sites: dict[str, Any], site_name: str) -> str:
    for site in sites.get("sites", []):
        if site.get("name") != site_name:
            continue
        for directory in site.get("directories", []):
            if directory.get("type") in ("sharedStorage", "localStorage"):
                for server in directory.get("fileServers", []):
                    if server.get("operation", "all") in ("all", "put"):
                        return str(server["url"]).rstrip("/")
    raise WorkflowError(f"site {site_name!r} has no storage directory with a put/all file server in sites.yml")


def load_jobs(run_dir: RunDir) -> tuple[list[JobSpec], list[str]]:
    """Resolve the generated workflow into runnable jobs and the END hook commands."""
    info = run_dir.load()
    workflow = _load_yaml(run_dir.file(RunDir.WORKFLOW))
    replicas = _load_yaml(run_dir.file(RunDir.REPLICAS)) or {}
    transformations = _load_yaml(run_dir.file(RunDir.TRANSFORMATIONS)) or {}
    sites = _load_yaml(run_dir.file(RunDir.SITES)) or {}
    output_site = str(info.extra.get("output_site") or "storage")
    output_root = _output_url(sites, output_site)

    pfn_of = {r["lfn"]: r["pfns"][0]["pfn"] for r in replicas.get("replicas", []) if r.get("pfns")}
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
                if lfn not in pfn_of:
                    raise WorkflowError(f"job {job['id']}: input {lfn!r} has no replica in replicas.yml")
                inputs[lfn] = pfn_of[lfn]
            elif use["type"] == "output" and use.get("stageOut", True):
                outputs[lfn] = f"{output_root}/{lfn}"
        retry = _profile(job.get("profiles"), "dagman", "retry")
        retry = wf_retry if retry is None else retry
        env = {**env_of.get(name, {}), **_env_profile(job.get("profiles"))}
        jobs.append(
            JobSpec(
                job_id=str(job["id"]),
                executable=exe_of[name],
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
    for lfn, pfn in spec.inputs.items():
        dest = _safe_join(workdir, lfn)
        dest.parent.mkdir(parents=True, exist_ok=True)
        scheme, bucket, key = parse_location(pfn)
        if scheme == "file":
            if not Path(key).is_file():
                raise FileNotFoundError(f"input {pfn} does not exist")
            os.symlink(key, dest)  # Pegasus links local replicas too; the converter only reads it
        else:
            _store_for(spec.store, bucket).download(key, dest)


def _stage_out(spec: JobSpec, workdir: Path) -> None:
    for lfn, url in spec.outputs.items():
        src = _safe_join(workdir, lfn)
        if not src.is_file():
            raise FileNotFoundError(f"job produced no {lfn}")
        scheme, bucket, key = parse_location(url)
        if scheme == "file":
            with atomic.replacing(Path(key), 0o644) as tmp:
                shutil.copyfile(src, tmp)
        else:
            _store_for(spec.store, bucket).upload(src, key)


def last_line(text: str) -> str:
    """The one-line reason a tool printed last (generate_cog prints exactly one; planners print many)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_job(spec: JobSpec) -> JobRecord:
    """Run one job with its retries; never raises, so one image can never stop the others."""
    started = time.monotonic()
    Path(spec.scratch_root).mkdir(parents=True, exist_ok=True)
    Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
    record = JobRecord(spec.job_id, "failed", None, "INTERNAL_ERROR", "job did not run", 0, 0.0)
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
                record.category = EXIT_CATEGORIES.get(proc.returncode, "INTERNAL_ERROR")
                record.reason = last_line(proc.stderr) or f"exit code {proc.returncode}"
                if proc.returncode not in SUCCESS_CODES:
                    if proc.returncode in NOT_RETRIED:
                        break
                    continue
                try:
                    _stage_out(spec, workdir)
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
                record.category, record.reason = "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}"
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
    successes nor its definitive failures.
    """
    jobs, hooks = load_jobs(run_dir)
    done = set(run_dir.job_records())
    todo = [job for job in jobs if job.job_id not in done]
    run_dir.jobs_dir.mkdir(parents=True, exist_ok=True)
    run_dir.set_state(RUNNING, engine_pid=os.getpid(), engine_host=this_host())
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
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    record = future.result()
                    write_json_atomic(_record_path(run_dir, record.job_id), asdict(record))
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
