"""One job attempt, as a long-lived local pool worker runs it: stage in, guard the size, convert, stage out.

Why in-process: spawning the `generate_cog` executable costs ~0.8-1 CPU-s of interpreter and GDAL/rasterio
imports per image before a pixel is read (issue 10.2). A worker imports once and then calls the converter's
own command-line entry point (`transformations.cli.main`, which calls `convert()`) in-process, so arguments,
verification, exit codes, the one reason line and the band-mismatch warn mode are exactly the executable's.
A transformation whose PFN is not the bundled converter (or env COG_PIPELINE_LOCAL_INPROCESS=0) still runs
as a subprocess, as Pegasus would run it, so workflow.yml stays engine-neutral.

Workers die with their parent (issue 8.9): `PR_SET_PDEATHSIG` plus a parent-pid watchdog thread.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cog_pipeline.config import env_value
from cog_pipeline.outputs import PREVIEW
from cog_pipeline.publishing.thumbnail import thumbnail_path, write_thumbnail
from cog_pipeline.storage.store import LocalStore, ObjectStore, PreconditionFailed, StoreConfig, StoreError, open_store
from cog_pipeline.transformations.linux import set_pdeathsig

from .base import NOT_RETRIED, SUCCESS_CODES, ExitCode, WorkflowError, category, last_line

THREADS_ENV = "COG_PIPELINE_THREADS"  # the converter's own thread setting (transformations/settings.py)
# Failures of this machine, not of the row: no record is written, so the row waits for a later tick.
RESOURCE_EXHAUSTED = frozenset({"OUT_OF_DISK"})
MAX_ASPECT = 10_000  # longest side over shortest: beyond it an image is a degenerate strip, refused before converting


@dataclass(frozen=True)
class JobSpec:
    """One job, resolved to concrete locations: everything a pool worker needs, picklable.

    Defined here, beside the worker that runs it, not in local.py: a worker unpickles one per job, and
    unpickling imports the class's module; local.py would bring the whole engine (the workflow reader's
    YAML, the run directory, state and lease layers: ~3 MiB) into every worker, which runs none of it."""

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
class AttemptOutcome:
    """What one attempt ended with; the driver turns the last one into the job's record."""

    status: str  # "succeeded" | "failed"
    exit_code: int | None
    category: str
    reason: str
    retry: bool = True  # False: the failure is deterministic, another attempt only burns time
    warning: str | None = None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Dying with the parent


def die_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """PR_SET_PDEATHSIG, then a watchdog thread (the fallback where prctl is missing): a worker whose parent
    is gone exits at once instead of converting jobs that the next scan also runs."""
    set_pdeathsig()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


#: Thread pools numpy's BLAS would otherwise start, one per core, in every worker: their threads spin after
#: each call (measured 1 % of a batch's CPU) and the pool already runs one worker per core.
_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # not OMP_NUM_THREADS: it sizes GDAL threads


def single_threaded_numerics() -> None:
    """Give numpy's BLAS one thread, unless the user chose otherwise; must run before numpy is imported."""
    for name in _BLAS_THREAD_VARS:
        os.environ.setdefault(name, "1")


def _exit_now() -> None:
    """Leave without the interpreter's shutdown: every job's files and log are closed by now, and tearing
    down numpy, rasterio and GDAL took ~0.1-0.2 s that the driver waited through before the END hook."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def worker_main(conn: Any, parent_pid: int) -> None:
    """A pool worker's life: import the converter once, then run one attempt per message until told to stop."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    single_threaded_numerics()
    try:
        from cog_pipeline.transformations import cli  # noqa: F401 - pays the imports once per worker
        from cog_pipeline.transformations.backend import get_backend

        get_backend()
    except Exception:  # noqa: BLE001 - a missing GDAL shows up as each job's reason instead
        pass
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            _exit_now()
        spec, attempt, threads, max_pixels = message
        conn.send("started")  # the wall-time limit counts from here, not from the worker's own start-up
        conn.send(run_attempt(spec, attempt, threads=threads, max_pixels=max_pixels))


# ---------------------------------------------------------------------------------------------------------------
# Staging


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


def listed_version(arguments: list[str]) -> str | None:
    """The input's ETag the workflow generator listed and the lineage embeds (its `--metadata-b64`), if any."""
    from cog_pipeline.publishing.provenance import METADATA_B64, decode_metadata

    if METADATA_B64 not in arguments[:-1]:
        return None
    try:
        return decode_metadata(arguments[arguments.index(METADATA_B64) + 1]).get("SOURCE_ETAG") or None
    except ValueError:
        return None


def stage_in(spec: JobSpec, workdir: Path) -> None:
    """Every input at its LFN, exactly the version the lineage names (If-Match its listed ETag): an image
    re-uploaded after the workflow was generated fails its row (SOURCE_CHANGED) instead of being converted
    under the old version's name."""
    store = _store_for(spec.store, spec.input_bucket)
    version = listed_version(spec.arguments) if len(spec.inputs) == 1 else None
    for lfn, key in spec.inputs.items():
        dest = _safe_join(workdir, lfn)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(store, LocalStore):
            store.pin(key, dest, version)  # linked, not copied (Pegasus links local replicas too)
        else:
            store.download(key, dest, version)


def stage_out(spec: JobSpec, workdir: Path) -> dict[str, dict[str, Any]]:
    """Upload every output to its own key; returns key -> {etag, size} as the store reported them."""
    store = _store_for(spec.store, spec.output_bucket)
    uploaded: dict[str, dict[str, Any]] = {}
    for lfn, key in spec.outputs.items():
        src = _safe_join(workdir, lfn)
        if not src.is_file():
            raise FileNotFoundError(f"job produced no {lfn}")
        # Adopted, not copied (a folder bucket links it); the attempt's scratch folder is removed afterwards.
        info = store.adopt(src, key)
        uploaded[key] = {"etag": info.etag, "size": info.size}
    return uploaded


def leave_thumbnail(spec: JobSpec, workdir: Path) -> None:
    """The run report's picture of the job's image, made here from the job's JPEG preview while it is still on
    this disk and the other jobs run (thumbnail.py: Pillow only, no numpy or rasterio): best effort, never the
    job's failure."""
    preview = next((lfn for lfn in spec.outputs if lfn.endswith(PREVIEW.lfn_suffix)), None)
    if preview is not None:
        write_thumbnail(_safe_join(workdir, preview), thumbnail_path(Path(spec.log_path).parent, spec.job_id))


# ---------------------------------------------------------------------------------------------------------------
# The size guard


def size_problem(path: Path, max_pixels: int) -> str | None:
    """A one-line reason when the input's uncompressed size exceeds the limit, or its shape is degenerate
    (header only; None if it fits or the header cannot be read: the converter then reports that itself)."""
    try:
        # dtype_itemsize is a table: this guard must not import numpy
        from cog_pipeline.transformations.backend import dtype_itemsize, get_backend

        info = get_backend().info(str(path), drivers=["GTiff"])
        itemsize = max((dtype_itemsize(d) for d in info.dtypes), default=1)
    except Exception:  # noqa: BLE001 - unreadable: not this guard's business
        return None
    long_side, short_side = max(info.width, info.height), max(min(info.width, info.height), 1)
    if long_side > MAX_ASPECT * short_side:
        # A 60,000,000 x 1 strip is 60 KB on disk, fits any pixel limit and costs the converter ~1000 s
        # (a pyramid of 17 levels of 1-pixel strips) before it fails: refuse it at once, never retried.
        return (
            f"DEGENERATE_SHAPE: {info.width}x{info.height} is over {MAX_ASPECT:,}:1; an image this thin cannot be "
            "tiled into a COG with overviews"
        )
    weight = info.width * info.height * max(info.count, 1) * itemsize
    if max_pixels <= 0 or weight <= max_pixels:
        return None
    return (
        f"TOO_LARGE: {info.width}x{info.height}x{info.count} {info.dtypes[0] if info.dtypes else ''} is "
        f"{weight:,} pixel-bytes uncompressed, over the limit of {max_pixels:,} "
        "(local.max_pixels: --max-pixels, COG_PIPELINE_MAX_PIXELS; 0 disables the check)"
    )


# ---------------------------------------------------------------------------------------------------------------
# Running the converter


def bundled_converter() -> Path:
    """The zipapp of this package's converter sources, built on first use (transformations/build.py)."""
    from cog_pipeline.transformations.build import cached_zipapp

    return cached_zipapp()


def runs_in_process(executable: str) -> bool:
    """The bundled converter runs in-process unless COG_PIPELINE_LOCAL_INPROCESS=0; anything else is a
    subprocess, exactly as Pegasus would run it."""
    if not env_value("local.in_process"):
        return False
    try:
        return os.path.samefile(executable, bundled_converter())
    except OSError:
        return False


@contextlib.contextmanager
def _job_environment(env: dict[str, str], workdir: Path):
    """The job's environment and working directory for the duration of one in-process call (a worker runs
    one job at a time, so changing the process-wide state is safe)."""
    saved = {k: os.environ.get(k) for k in env}
    cwd = os.getcwd()
    os.environ.update(env)
    os.chdir(workdir)
    try:
        yield
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def convert_in_process(arguments: list[str], env: dict[str, str], workdir: Path) -> tuple[int, str]:
    """(exit code, what the executable would have printed on stderr) from the converter's own CLI entry."""
    from cog_pipeline.transformations import cli

    err = io.StringIO()
    with _job_environment(env, workdir), contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        try:
            code = int(cli.main(arguments))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    return code, err.getvalue()


def _pdeathsig_preexec() -> None:
    set_pdeathsig()


def convert_subprocess(executable: str, arguments: list[str], env: dict[str, str], workdir: Path) -> tuple[int, str, str]:
    # Scripts start with '#!/usr/bin/env python3': give them this environment's interpreter, as the
    # container gives them its own on a worker.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    full_env = {**os.environ, "PATH": path, **env}
    proc = subprocess.run(
        [executable, *arguments], cwd=workdir, capture_output=True, text=True, env=full_env, check=False,
        preexec_fn=_pdeathsig_preexec,  # noqa: PLW1509 - only a prctl; the grandchild dies with this worker
    )
    return proc.returncode, proc.stdout, proc.stderr


def attempt_dir(spec: JobSpec, attempt: int) -> Path:
    """Deterministic, so the driver can clean up after a worker that died mid-attempt."""
    return Path(spec.scratch_root) / f"{spec.job_id}.{attempt}"


def run_attempt(spec: JobSpec, attempt: int, *, threads: int | None = None, max_pixels: int | None = None) -> AttemptOutcome:
    """One attempt of one job; never raises, so one image can never stop the others."""
    workdir = attempt_dir(spec, attempt)
    shutil.rmtree(workdir, ignore_errors=True)
    Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
    env = dict(spec.env)
    if threads and THREADS_ENV not in env:
        env[THREADS_ENV] = str(threads)
    limit = env_value("local.max_pixels") if max_pixels is None else max_pixels
    with open(spec.log_path, "a", encoding="utf-8") as log:
        try:
            workdir.mkdir(parents=True)
            log.write(f"--- attempt {attempt}/{spec.attempts} in {workdir} (worker pid {os.getpid()}, {threads or 'default'} threads)\n")
            log.flush()
            try:
                stage_in(spec, workdir)
            except PreconditionFailed as exc:
                reason = (f"SOURCE_CHANGED: the input was replaced after the workflow was generated ({exc}); "
                          "the lineage would name the wrong version: resubmit the row")
                return _logged(log, AttemptOutcome("failed", None, "SOURCE_CHANGED", reason, retry=False))
            except (StoreError, OSError) as exc:
                return _logged(log, AttemptOutcome("failed", None, _stage_category(exc, "STAGE_IN_FAILED"), f"stage-in failed: {exc}"))
            for lfn in spec.inputs:
                problem = size_problem(workdir / lfn, limit)
                if problem:
                    return _logged(log, AttemptOutcome("failed", None, problem.partition(":")[0], problem, retry=False))
            log.write(f"$ {shlex.join([spec.executable, *spec.arguments])}\n")
            log.flush()
            if runs_in_process(spec.executable):
                code, err = convert_in_process(spec.arguments, env, workdir)
                log.write(err)
            else:
                code, out, err = convert_subprocess(spec.executable, spec.arguments, env, workdir)
                log.write(out)
                log.write(err)
            reason = last_line(err) or f"exit code {code}"
            if code not in SUCCESS_CODES:
                return AttemptOutcome("failed", code, category(code), reason, retry=code not in NOT_RETRIED)
            try:
                outputs = stage_out(spec, workdir)
            except (StoreError, OSError) as exc:
                return _logged(log, AttemptOutcome("failed", code, _stage_category(exc, "STAGE_OUT_FAILED"), f"stage-out failed: {exc}"))
            leave_thumbnail(spec, workdir)
            warning = reason if reason.startswith("WARNING") else None
            return AttemptOutcome("succeeded", code, category(code), "", warning=warning, outputs=outputs)
        except Exception as exc:  # noqa: BLE001 - a crash in one job is that job's failure, with its reason
            return _logged(log, AttemptOutcome("failed", None, ExitCode.INTERNAL.name, f"{type(exc).__name__}: {exc}"))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _stage_category(exc: Exception, otherwise: str) -> str:
    return "OUT_OF_DISK" if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) else otherwise


def exhausted(outcome: AttemptOutcome) -> bool:
    """The attempt failed for want of this machine's resources (a full disk), not because of its row."""
    return outcome.status == "failed" and outcome.category in RESOURCE_EXHAUSTED


def _logged(log: Any, outcome: AttemptOutcome) -> AttemptOutcome:
    log.write(outcome.reason + "\n")
    return outcome
