"""One trigger tick: claim -> generate -> run -> reconcile, for every manifest waiting in the bucket.

This is what the Crondor runs every 15 minutes and what `cog-pipeline scan` runs by hand. Each step hands
the next one a run directory and nothing else, so a tick that dies anywhere is carried on by the next.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .claim import Claim, claim_one, look, recover_claims, scan_lock
from .rundir import CLAIMED, GENERATED, RECONCILED, RUNNING, RunDir, list_run_dirs, process_alive, this_host
from .engine_local import WorkflowError
from .store import ObjectStore, StoreConfig, StoreError, open_store

Echo = Callable[[str], None]


@dataclass
class ScanOptions:
    input_bucket: str
    output_bucket: str
    store: StoreConfig
    work_dir: Path
    pattern: str = "*raw.csv"
    engine: str = "local"  # local | pegasus
    dry_run: bool = False
    workers: int | None = None
    progress: bool = True
    submit: bool = True  # pegasus: plan and submit; False: plan only
    workflow: dict[str, Any] = field(default_factory=dict)  # WorkflowSettings overrides (retries, max_running, ...)


@dataclass
class ScanReport:
    would_claim: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    claimed: list[RunDir] = field(default_factory=list)
    resumed: list[RunDir] = field(default_factory=list)
    reconciled: list[RunDir] = field(default_factory=list)
    in_flight: list[RunDir] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # runs that stopped on an error this tick


def run_is_active(run_dir: RunDir) -> bool:
    """Someone is carrying this run on right now: a live scan process here, or a workflow still running."""
    info = run_dir.load()
    if process_alive(info.extra.get("owner_pid"), info.extra.get("owner_host")):
        return True
    if info.engine == "pegasus" and info.state == RUNNING:
        from .engine_pegasus import workflow_is_running

        return workflow_is_running(run_dir)
    return False


def _adopt(run_dir: RunDir) -> None:
    run_dir.set_state(run_dir.load().state, owner_pid=os.getpid(), owner_host=this_host())


def _release(run_dir: RunDir) -> None:
    info = run_dir.load()
    if info.extra.get("owner_pid") == os.getpid():
        run_dir.set_state(info.state, owner_pid=None, owner_host=None)


def scan(options: ScanOptions, echo: Echo = print) -> ScanReport:
    report = ScanReport()
    input_store = open_store(options.input_bucket, options.store)
    # Claiming work that could never be delivered would only leave manifests processing: check the output
    # bucket is reachable first (an empty listing under a name no object has: one cheap request).
    list(open_store(options.output_bucket, options.store).list(".cog-pipeline-probe/"))
    with scan_lock(options.work_dir):
        view = look(input_store, options.pattern)
        if options.dry_run:
            report.would_claim = [p.info.key for p in view.pending if p.problem is None]
            report.refused = [p.problem for p in view.pending if p.problem]
            return report
        report.recovered = recover_claims(input_store, options.work_dir, view)
        if report.recovered:
            view = look(input_store, options.pattern)
        for pending in view.pending:
            if pending.problem:
                report.refused.append(pending.problem)
                echo(f"not claimed: {pending.problem}")
                continue
            claim: Claim | None = claim_one(
                input_store,
                pending.info,
                work_dir=options.work_dir,
                output_bucket=options.output_bucket,
                store_config=options.store,
                engine=options.engine,
            )
            if claim is None:
                echo(f"skipped {pending.info.key}: another scan claimed it")
                continue
            _adopt(claim.run_dir)
            report.claimed.append(claim.run_dir)
            echo(f"claimed {pending.info.key} -> {claim.names.processing_key} ({claim.run_dir.path})")
        # Runs an earlier tick left unfinished: adopt them under the lock so two scans never both carry one on.
        claimed_paths = {r.path for r in report.claimed}
        local_processing = set()
        for run_dir in list_run_dirs(options.work_dir):
            info = run_dir.load()
            if info.input_bucket != options.input_bucket:
                continue
            local_processing.add(info.processing_key)
            if run_dir.path in claimed_paths or info.state not in (CLAIMED, GENERATED, RUNNING):
                continue
            if run_is_active(run_dir):
                report.in_flight.append(run_dir)
                continue
            _adopt(run_dir)
            report.resumed.append(run_dir)
            echo(f"carrying on {info.processing_key} ({run_dir.path}, was {info.state})")
        report.orphans = [p.key for p in view.processing if p.key not in local_processing]
        for key in report.orphans:
            echo(f"warning: {key} has no run directory under {options.work_dir}; another work directory or host owns it")

    for run_dir in [*report.claimed, *report.resumed]:
        try:
            carry_on(run_dir, options, input_store, echo)
        except (StoreError, WorkflowError, OSError) as exc:
            # One run's trouble (an unreachable bucket, a broken run directory) must not hold up the others;
            # this run stays where it stopped and the next tick carries it on.
            report.errors.append(f"{run_dir.path.name}: {exc}")
            echo(f"error: {run_dir.path.name}: {exc}; left for the next tick")
        finally:
            # Whatever happened, this process no longer carries the run: the next tick may (a killed process
            # is noticed by its pid instead).
            _release(run_dir)
        if run_dir.load().state == RECONCILED:
            report.reconciled.append(run_dir)
    return report


def carry_on(run_dir: RunDir, options: ScanOptions, input_store: ObjectStore, echo: Echo = print) -> None:
    """Take one run from wherever it stopped to the end its engine can reach in this tick."""
    from .pegasus.workflow_gen import WorkflowSettings, generate

    info = run_dir.load()
    engine = info.engine
    if info.state == CLAIMED:
        settings = WorkflowSettings(**options.workflow) if options.workflow else WorkflowSettings()
        # Only the planner needs key material in a file; the local engine reads the key files itself.
        settings.write_credentials = settings.write_credentials and engine == "pegasus"
        if engine == "pegasus" and settings.reconcile_command is None:
            # On Pegasus the END hook also turns the submit directory's jobstate.log into failure reasons.
            from .engine_pegasus import end_hook_command

            settings.reconcile_command = end_hook_command(run_dir)
        generate(run_dir, input_store, settings)
        info = run_dir.load()
        echo(f"generated workflow in {run_dir.path}")
    if engine == "local":
        from .engine_local import run_workflow
        from .reconcile import reconcile

        result = run_workflow(run_dir, workers=options.workers, progress=options.progress)
        echo(f"jobs: {result.succeeded} succeeded, {result.failed} failed, {result.skipped} already done")
        if run_dir.load().state != RECONCILED:
            # The END hook did not finish the run (it failed, or could not start): reconcile here.
            for cmd, code in result.hooks:
                if code != 0:
                    echo(f"warning: end hook exited {code}: {cmd}; reconciling in-process")
            reconcile(run_dir, input_store=input_store)
        summary = run_dir.read_json(RunDir.RECONCILE)["result"]
        echo(
            f"reconciled {info.manifest_key}: {summary['processed']} processed, {summary['failed']} failed"
            + (f" -> {summary['failed_key']}" if summary["failed_key"] else "")
        )
    elif engine == "pegasus":
        if info.state == RUNNING:
            # The workflow is no longer running but the run was never reconciled (its END hook did not run or
            # failed, or the DAG was removed): this tick is the fallback that reconciles it.
            from .engine_pegasus import finish

            result = finish(run_dir, input_store=input_store)
            echo(f"reconciled {info.manifest_key}: {result.processed} processed, {result.failed} failed")
            return
        from .engine_pegasus import plan_and_submit

        plan_and_submit(run_dir, submit=options.submit, echo=echo)
    else:
        raise ValueError(f"unknown engine {engine!r}")
