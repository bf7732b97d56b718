"""Several local runs of one tick through one shared pool, so no manifest waits behind another's huge image.

Why: the tick used to carry its runs on one after the other, so a 20x20 image of manifest B sat behind
manifest A's 100000² image for as long as A ran (issue 8.10). Here every run claimed or resumed in the tick is
generated first, then all their jobs share one pool (`local_pool.FairQueue`: the run with the fewest attempts
running goes next, ties to the one with the least input left), and each run's END hook (its reconcile) starts
the moment its own last job ends. The tick's usual loop then finds each run reconciled and only reports it.

With one worker nothing can run beside a huge image once it has started; the fair queue still starts the
smaller manifest first.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..rundir import RUNNING, LeaseHeld, RunDir, RunState
from ..state import FINAL
from ..store import StoreError
from .base import WorkflowError, run_end_hook, write_record
from .local import JobSpec, LocalLimits, default_workers, input_sizes, left_for_later, load_jobs, make_record
from .local_pool import PoolSettings, execute, job_timeout_setting, plan_order, plan_workers, run_of
from .local_worker import AttemptOutcome, exhausted, max_pixels_setting

Echo = Callable[[str], None]


@dataclass
class _Run:
    run_dir: RunDir
    todo: list[JobSpec]
    hooks: list[str]
    taken: bool
    left: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # job id -> input bytes (the order's weights)
    hook_thread: threading.Thread | None = None
    hook_codes: list[tuple[str, int]] = field(default_factory=list)
    left_over: list[str] = field(default_factory=list)  # reasons of jobs that met a full disk

    def start_hooks(self) -> None:
        def run() -> None:
            for cmd in self.hooks:
                self.hook_codes.append((cmd, run_end_hook(cmd, self.run_dir.path)))

        self.hook_thread = threading.Thread(target=run, name=f"end-hook {self.run_dir.path.name}")
        self.hook_thread.start()


def _start(run_dir: RunDir) -> _Run | None:
    """The run's jobs still to do, with its lease held and its state RUNNING; None if it is not ours to run."""
    info = run_dir.load()
    if info.state in FINAL or info.state not in (RunState.GENERATED, RUNNING) or info.engine != "local":
        return None
    jobs, hooks = load_jobs(run_dir)
    taken = run_dir.acquire_lease()
    done = set(run_dir.job_records())
    todo = [job for job in jobs if job.job_id not in done]
    run_dir.jobs_dir.mkdir(parents=True, exist_ok=True)
    run_dir.set_state(RUNNING, engine="local")
    sizes = input_sizes(run_dir, todo)
    return _Run(run_dir, plan_order(todo, sizes), hooks, taken, left=len(todo), sizes=sizes)


def run_workflows(run_dirs: list[RunDir], *, workers: int | None = None, limits: LocalLimits | None = None) -> list[str]:
    """Run the jobs of every run through one pool and start each run's END hooks as soon as its jobs have all
    ended. Returns one-line problems of runs that could not start (they are left for the tick's own loop)."""
    problems: list[str] = []
    runs: list[_Run] = []
    for run_dir in run_dirs:
        try:
            run = _start(run_dir)
        except (WorkflowError, LeaseHeld, StoreError, OSError) as exc:
            problems.append(f"{run_dir.path.name}: {exc}")
            continue
        if run is not None:
            runs.append(run)
    by_key = {str(run.run_dir.path / "scratch"): run for run in runs}
    todo = [spec for run in runs for spec in run.todo]
    sizes: dict[tuple[str, str], int] = {}
    for run in runs:
        sizes.update({(run_of(s), s.job_id): run.sizes.get(s.job_id, 0) for s in run.todo})

    def on_final(spec: JobSpec, outcome: AttemptOutcome, attempts: int, seconds: float) -> None:
        run = by_key[run_of(spec)]
        if exhausted(outcome):  # no record, no END hook: the run waits for a later tick (the tick's loop says so)
            run.left_over.append(outcome.reason)
        else:
            write_record(run.run_dir.jobs_dir / f"{spec.job_id}.json", make_record(spec, outcome, attempts, seconds))
        run.left -= 1
        if run.left == 0 and not run.left_over:
            run.start_hooks()

    def renew() -> None:
        for run in runs:
            run.run_dir.renew_lease()

    try:
        for run in runs:
            if not run.todo:
                run.start_hooks()
        if todo:
            limits = limits or LocalLimits()
            settings = PoolSettings(
                workers=plan_workers(default_workers(), len(todo), workers), cores=default_workers(),
                timeout=job_timeout_setting(limits.job_timeout), max_pixels=max_pixels_setting(limits.max_pixels),
            )
            execute(todo, settings, on_final, on_tick=renew, sizes=sizes)
    finally:
        for run in runs:
            if run.hook_thread is not None:
                run.hook_thread.join()
            shutil.rmtree(run.run_dir.path / "scratch", ignore_errors=True)
            if run.taken:
                run.run_dir.release_lease()
    problems.extend(f"{run.run_dir.path.name}: {left_for_later(len(run.left_over), run.left_over[0])}" for run in runs if run.left_over)
    return problems
