"""The local engine's worker pool: long-lived workers, one attempt at a time each, crash-isolated and timed.

concurrent.futures' ProcessPoolExecutor cannot do three things this engine needs: tell which job killed a
worker (a dead worker breaks the whole pool, BrokenProcessPool, and every pending job with it: issue 8.11),
kill one job that runs too long (issue 8.10), and choose the thread count per job (issue 10.5). So each
worker here is a `multiprocessing` process (spawn: no inherited locks or threads) with its own pipe; the
driver knows what each one runs, and

* a worker that dies (segfault, ``os._exit``, OOM kill) fails only the attempt it ran, with the signal or
  exit code as the reason; it is replaced and the other jobs go on;
* an attempt past the wall-time limit is killed (SIGKILL) and its job fails with a reason naming the limit;
  a timed-out job is not retried (a retry would burn the same time again);
* jobs start biggest first (the longest-processing-time rule keeps every core busy to the end), and each
  attempt gets ``threads_for(...)`` GDAL threads: one per worker while jobs wait, more for the last ones.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_any
from typing import TYPE_CHECKING, Any

from .local_worker import AttemptOutcome, attempt_dir, worker_main

if TYPE_CHECKING:
    from .local_worker import JobSpec

# A worker is replaced after this many attempts, so heap fragmentation or a leak in a library cannot grow
# one process's memory without bound; start-up then costs ~1 CPU-s per this many images.
JOBS_PER_WORKER = 200


# ---------------------------------------------------------------------------------------------------------------
# Scheduling: pure functions


def plan_order(jobs: Sequence[JobSpec], sizes: dict[str, int]) -> list[JobSpec]:
    """Biggest input first (ties: manifest order). Starting the longest jobs first means no core idles at the
    end while one huge image, started last, still runs."""
    indexed = list(enumerate(jobs))
    indexed.sort(key=lambda item: (-sizes.get(item[1].job_id, 0), item[0]))
    return [job for _, job in indexed]


def plan_workers(cores: int, jobs: int, requested: int | None = None) -> int:
    """How many workers: one per core (or as asked), never more than there are jobs."""
    return max(1, min(requested or cores, jobs or 1))


def threads_for(cores: int, running: int, waiting: int) -> int:
    """GDAL threads for the attempt about to start, with `running` attempts already running and `waiting`
    jobs still queued behind it: one thread while other jobs can use the other cores, the spare cores
    shared out once nothing waits (one huge image on two cores gets both)."""
    busy = running + 1 + waiting
    return max(1, cores // max(1, min(cores, busy)))


def cores_available() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run_of(spec: JobSpec) -> str:
    """Which run a job belongs to (job ids repeat across runs; each run has its own scratch folder)."""
    return spec.scratch_root


class FairQueue:
    """Jobs of several runs (manifests claimed in one tick) sharing one pool, so that a small manifest never
    waits behind another's huge image: the next job comes from the run with the fewest attempts running,
    ties going to the run with the least input left to convert (the smaller manifest finishes first);
    within a run, jobs keep their order (biggest first, see plan_order). One run: plain FIFO."""

    def __init__(self, todo: Sequence[JobSpec], sizes: dict[tuple[str, str], int] | None = None) -> None:
        self.sizes = sizes or {}
        self.runs: dict[str, deque[tuple[JobSpec, int]]] = {}
        self.left: dict[str, int] = {}
        for spec in todo:
            self.runs.setdefault(run_of(spec), deque()).append((spec, 1))
            self.left[run_of(spec)] = self.left.get(run_of(spec), 0) + self._size(spec)

    def _size(self, spec: JobSpec) -> int:
        return self.sizes.get((run_of(spec), spec.job_id), 0)

    def __len__(self) -> int:
        return sum(len(q) for q in self.runs.values())

    def pop(self, running: dict[str, int]) -> tuple[JobSpec, int]:
        run = min((r for r, q in self.runs.items() if q), key=lambda r: (running.get(r, 0), self.left[r]))
        spec, attempt = self.runs[run].popleft()
        if attempt == 1:
            self.left[run] -= self._size(spec)
        return spec, attempt

    def retry(self, spec: JobSpec, attempt: int) -> None:
        self.runs[run_of(spec)].appendleft((spec, attempt))


# ---------------------------------------------------------------------------------------------------------------
# The pool


@dataclass
class _Running:
    spec: JobSpec
    attempt: int
    started: float | None = None  # when the worker said it began (the limit does not count its start-up)


#: Workers started ahead of the first job (see :func:`prestart`), handed to the next :func:`execute`.
_prestarted: list[_Worker] = []


def prestart(count: int) -> None:
    """Start ``count`` workers now, so that their start-up (interpreter, rasterio, GDAL: ~0.8 CPU-s each)
    runs while the scan claims manifests and writes workflows, instead of before the first image."""
    ctx = multiprocessing.get_context("spawn")
    while len(_prestarted) < count:
        _prestarted.append(_Worker(ctx))


def release_prestarted() -> None:
    """Stop the prestarted workers no :func:`execute` took (nothing was claimed, or fewer jobs than workers)."""
    while _prestarted:
        _prestarted.pop().stop()


def _new_worker(ctx: Any) -> _Worker:
    """A prestarted worker if one is alive, else a fresh one."""
    while _prestarted:
        worker = _prestarted.pop()
        if worker.proc.is_alive():
            return worker
        worker.kill()
    return _Worker(ctx)


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Hide ``__main__.__file__`` while a worker is spawned.

    Why: multiprocessing's spawn re-runs the parent's main script in the child (as ``__mp_main__``) when
    ``__main__`` has a file. Under the ``cog-pipeline`` console script that imports the whole CLI (click, the
    Pegasus wiring, the store and config layers: ~0.18 CPU-s) in every worker, which needs none of it: its
    target, ``worker_main``, is found by module name. Only the parent's main thread starts workers."""
    main = sys.modules.get("__main__")
    saved = getattr(main, "__file__", None)
    if main is None or saved is None or getattr(main, "__spec__", None) is not None:
        yield  # no file to hide, or a module run with -m: spawn re-imports it by name (cheap, and needed)
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = saved


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=worker_main, args=(child, os.getpid()), daemon=True, name="cog-worker")
        with _main_script_hidden():
            self.proc.start()
        child.close()
        self.job: _Running | None = None
        self.done = 0

    def stop(self, grace: float = 5.0) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(grace)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(1)
        self.conn.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"WORKER_DIED: the worker process converting this image was killed by {name}{hint}"
    return f"WORKER_DIED: the worker process converting this image exited with code {exitcode} before it finished"


@dataclass
class PoolSettings:
    workers: int
    cores: int
    timeout: float | None = None
    max_pixels: int | None = None
    tick: float = 60.0  # the driver's on_tick (lease renewal) runs at least this often


def execute(
    todo: Sequence[JobSpec],
    settings: PoolSettings,
    on_final: Callable[[JobSpec, AttemptOutcome, int, float], None],
    on_tick: Callable[[], None] = lambda: None,
    sizes: dict[tuple[str, str], int] | None = None,
) -> None:
    """Run every job's attempts through the pool; `on_final(spec, outcome, attempts, seconds)` once per job.
    `todo` may hold several runs' jobs (see FairQueue); `sizes` maps (run_of(spec), job id) to input bytes."""
    ctx = multiprocessing.get_context("spawn")
    queue = FairQueue(todo, sizes)
    first_start: dict[tuple[str, str], float] = {}
    workers = [_new_worker(ctx) for _ in range(max(1, min(settings.workers, len(todo) or 1)))]
    last_tick = time.monotonic()
    ended: list[tuple[JobSpec, AttemptOutcome, int, float]] = []
    try:
        while queue or ended or any(w.job for w in workers):
            for i, worker in enumerate(workers):
                if worker.job is None and queue:
                    per_run: dict[str, int] = {}
                    for w in workers:
                        if w.job:
                            per_run[run_of(w.job.spec)] = per_run.get(run_of(w.job.spec), 0) + 1
                    spec, attempt = queue.pop(per_run)
                    threads = threads_for(settings.cores, sum(per_run.values()), len(queue))
                    first_start.setdefault((run_of(spec), spec.job_id), time.monotonic())
                    try:
                        worker.conn.send((spec, attempt, threads, settings.max_pixels))
                    except (OSError, ValueError):  # died while idle: replace it and try again
                        worker.kill()
                        workers[i] = worker = _Worker(ctx)
                        worker.conn.send((spec, attempt, threads, settings.max_pixels))
                    worker.job = _Running(spec, attempt)
            # Jobs that ended are handed on (their records written: ~5 ms each with the fsync) once the workers
            # they freed have their next job, not while those workers wait for it.
            for final in ended:
                on_final(*final)
            ended.clear()
            busy = [w for w in workers if w.job]
            if not busy:
                continue
            timeout = settings.tick
            begun = [w.job.started for w in busy if w.job.started is not None]
            if settings.timeout and begun:
                timeout = max(0.0, min(timeout, min(begun) + settings.timeout - time.monotonic()))
            wait_any([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=timeout)
            for i, worker in enumerate(workers):
                job = worker.job
                if job is None:
                    continue
                outcome = _collect(worker, job, settings.timeout)
                if outcome is None:
                    continue
                if not worker.proc.is_alive() or worker.conn.closed:
                    shutil.rmtree(attempt_dir(job.spec, job.attempt), ignore_errors=True)
                    _note(job.spec, outcome.reason)
                    workers[i] = _Worker(ctx)
                else:
                    worker.job = None
                    worker.done += 1
                    if worker.done >= JOBS_PER_WORKER:
                        worker.stop()
                        workers[i] = _Worker(ctx)
                if outcome.status != "succeeded" and outcome.retry and job.attempt < job.spec.attempts:
                    queue.retry(job.spec, job.attempt + 1)
                else:
                    seconds = time.monotonic() - first_start[(run_of(job.spec), job.spec.job_id)]
                    ended.append((job.spec, outcome, job.attempt, seconds))
            if time.monotonic() - last_tick >= settings.tick / 4:
                on_tick()
                last_tick = time.monotonic()
    finally:
        for worker in workers:
            if worker.job is not None:
                worker.kill()
            else:
                worker.stop()


def _collect(worker: _Worker, job: _Running, timeout: float | None) -> AttemptOutcome | None:
    """The attempt's outcome if it has one now: a message, a dead worker, or a killed overrun."""
    try:
        while worker.conn.poll():
            message = worker.conn.recv()
            if message == "started":
                job.started = time.monotonic()
                continue
            return message
    except (EOFError, OSError):
        pass
    if not worker.proc.is_alive():
        worker.proc.join(1)
        worker.conn.close()
        return AttemptOutcome("failed", None, "WORKER_DIED", death_reason(worker.proc.exitcode))
    if timeout and job.started is not None and time.monotonic() - job.started >= timeout:
        worker.kill()
        return AttemptOutcome(
            "failed", None, "TIMEOUT",
            f"TIMEOUT: the job ran longer than the {timeout:g} s wall-time limit and was killed "
            "(local.job_timeout_s: --job-timeout, COG_PIPELINE_JOB_TIMEOUT; 0 disables it)",
            retry=False,
        )
    return None


def _note(spec: JobSpec, reason: str) -> None:
    try:
        with open(spec.log_path, "a", encoding="utf-8") as log:
            log.write(reason + "\n")
    except OSError:
        pass
