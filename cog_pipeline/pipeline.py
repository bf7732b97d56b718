"""One trigger tick: claim -> generate -> engine -> finish, for every manifest waiting in the bucket.

This is what the Crondor runs every 15 minutes and what `cog-pipeline scan` runs by hand. Each step hands
the next one a run directory and its run.json as last read or written; everything a step did is in the
directory, so a tick that dies anywhere is carried on by the next.
`finish` (the engine's job records, then reconcile) is the only way a run is reconciled: the tick calls it,
and so do both engines' END hook (`cog-pipeline finish RUN_DIR`) and `cog-pipeline reconcile`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cog_pipeline.config import PipelineConfig, load_config
from cog_pipeline.engines import get_engine
from cog_pipeline.engines.base import Engine, Outcome, WorkflowError
from cog_pipeline.errors import RUN_FILE_ERRORS, one_line, os_error_line
from cog_pipeline.publishing import publish
from cog_pipeline.publishing.reconcile import ReconcileResult, reconcile
from cog_pipeline.run.claim import Claim, ClaimError, ClaimLost, claim_one, look, recover_claims, scan_lock
from cog_pipeline.run.lease import is_alive
from cog_pipeline.run.rundir import (
    CLAIMED,
    GENERATED,
    RECONCILED,
    RUNNING,
    DamagedRunDir,
    LeaseHeld,
    RunDir,
    RunInfo,
    remove_empty_run_dirs,
    survey_run_dirs,
)
from cog_pipeline.run.state import IN_FLIGHT
from cog_pipeline.storage.store import ObjectStore, StoreConfig, StoreError, bucket_folder, open_store

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
    progress: bool = True
    submit: bool = True  # pegasus: plan and submit; False: plan only
    output_prefix: str | None = None  # outputs at <prefix><key> in the output bucket (same-bucket mode)
    # Every setting (config.py): the workflow's, the engines' own, publishing's. Default: the built-in values
    # and the environment.
    config: PipelineConfig = field(default_factory=lambda: load_config(None))
    engines: dict[str, Engine] = field(default_factory=dict, repr=False)  # built once per tick (tick_engine)
    on_phase: Callable[[str], None] | None = None  # told "claim", "preflight", "convert", "reconcile" (progress.py)


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
    damaged: list[str] = field(default_factory=list)  # run directories that cannot be read (skipped)
    lost: list[str] = field(default_factory=list)  # claims a fence found taken over (nothing published)


def run_is_active(run_dir: RunDir, info: RunInfo | None = None) -> bool:
    """Someone is carrying this run on right now: a live lease holder, or a workflow still running (`info`:
    its run.json as just read)."""
    info = info or run_dir.load()
    if is_alive(info.lease):
        return True
    return info.state == RUNNING and get_engine(info.engine).is_running(run_dir)


def finish(run_dir: RunDir, input_store: ObjectStore | None = None, echo: Echo | None = None,
           info: RunInfo | None = None) -> ReconcileResult:
    """Every job has ended: the engine's job records (best effort, for reasons), then the one reconcile, whose
    documents publishing is handed (`info`: run.json as the caller just read it)."""
    info = info or run_dir.load()
    if info.state != RECONCILED:
        try:
            get_engine(info.engine).collect_job_records(run_dir)
        except Exception as exc:  # noqa: BLE001 - reasons are a nicety; never let them block the result files
            (echo or _stderr)(f"warning: could not read job outcomes of {run_dir.path.name}: {exc}")
    result = reconcile(run_dir, input_store=input_store)
    if publish.needs_publishing(run_dir):  # provenance, STAC, report: best effort, never fails the reconcile
        publish.after_reconcile(run_dir, input_store=input_store, echo=echo, decisions=result.decisions, info=result.info,
                                preflight=result.preflight)
    return result


def _phase(options: ScanOptions, name: str) -> None:
    if options.on_phase is not None:
        options.on_phase(name)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def scan(options: ScanOptions, echo: Echo = print) -> ScanReport:
    """One tick: claim and adopt under the scan lock, then carry every run this tick holds as far as it goes."""
    problem = work_dir_problem(options)
    if problem:
        raise ClaimError(problem)
    if options.dry_run:
        return _scan(options, None, echo)
    engine = tick_engine(options, options.engine)
    engine.begin()  # e.g. one line and nothing claimed when pegasus-plan cannot run here
    try:
        return _scan(options, engine, echo)
    finally:
        engine.end()


def tick_engine(options: ScanOptions, name: str) -> Engine:
    """The engine `name` with this tick's settings, built once per tick; END hooks it runs in this process
    call `finish`."""
    if name not in options.engines:
        options.engines[name] = get_engine(name, options.config, progress=options.progress, submit=options.submit, finish=finish)
    return options.engines[name]


def work_dir_problem(options: ScanOptions) -> str | None:
    """Why the work dir cannot be used: inside a folder bucket, its files (manifest copies, results) would be
    objects of the bucket, and a broad pattern would claim them again every tick."""
    root = options.store.local_root
    if root is None:
        return None
    work = options.work_dir.resolve()
    for bucket in dict.fromkeys((options.input_bucket, options.output_bucket)):
        folder = bucket_folder(root, bucket)
        if work == folder or folder in work.parents:
            return f"work dir {work} is inside folder bucket {bucket!r} ({folder}); keep it outside the buckets"
    return None


def _scan(options: ScanOptions, engine: Engine | None, echo: Echo) -> ScanReport:
    report = ScanReport()
    input_store = open_store(options.input_bucket, options.store)
    # Claiming work that could never be delivered would only leave manifests processing: check the output
    # bucket is reachable first (an empty listing under a name no object has: one cheap request).
    list(open_store(options.output_bucket, options.store).list(".cog-pipeline-probe/"))
    _phase(options, "claim")
    if not _claim_and_adopt(options, report, input_store, echo) or engine is None:
        return report  # a dry run: nothing was claimed
    carry_on_all([*report.claimed, *report.resumed], options, input_store, report, echo)
    return report


def _claim_and_adopt(options: ScanOptions, report: ScanReport, input_store: ObjectStore, echo: Echo) -> bool:
    """Claim every waiting manifest and adopt unfinished runs, under the scan lock; False for a dry run."""
    with scan_lock(options.work_dir):
        # Under the lock no claim is half-way: an empty run directory is one a crashed claim left behind.
        for path in remove_empty_run_dirs(options.work_dir):
            echo(f"warning: removed {path}: an interrupted claim left it empty")
        view = look(input_store, options.pattern)
        if options.dry_run:
            report.would_claim = [p.name for p in view.pending if p.problem is None]
            report.refused = [p.problem for p in view.pending if p.problem]
            return False
        report.recovered = recover_claims(input_store, options.work_dir, view)
        for line in report.recovered:
            echo(line)
        if report.recovered:
            view = look(input_store, options.pattern)
        for pending in view.pending:
            if pending.problem:
                report.refused.append(pending.problem)
                echo(f"not claimed: {pending.problem}")
                continue
            try:
                claim: Claim | None = claim_one(
                    input_store,
                    pending.info,
                    work_dir=options.work_dir,
                    output_bucket=options.output_bucket,
                    store_config=options.store,
                    engine=options.engine,
                    output_prefix=options.output_prefix,
                )
            except ClaimLost as exc:
                report.lost.append(f"{pending.name}: {exc}")
                echo(f"claim lost: {pending.name}: {exc}; the scan that took it over answers for it")
                continue
            if claim is None:
                echo(f"skipped {pending.name}: another scan claimed it")
                continue
            if claim.failed:  # its name is not UTF-8: the preflight fails every row with the reason
                echo(f"failing {pending.name} whole: {claim.failed}")
            claim.run_dir.acquire_lease()  # just claimed: the lease is new
            if options.config.publish.stac:
                claim.run_dir.update(stac=True, stac_base_url=options.config.publish.stac_base_url or None)
            report.claimed.append(claim.run_dir)
            echo(f"claimed {pending.info.key} -> {claim.names.processing_key} ({claim.run_dir.path})")
        # Runs an earlier tick left unfinished: adopt them under the lock so two scans never both carry one on.
        local_processing = _adopt_unfinished(options, report, echo)
        _remove_late_copies(input_store, view, local_processing, echo)
        report.orphans = [p.key for p in view.processing if p.key not in local_processing]
        for key in report.orphans:
            echo(f"warning: {key} has no run directory under {options.work_dir}; another work directory or host owns it")

    return True


def carry_on_all(runs: list[RunDir], options: ScanOptions, input_store: ObjectStore, report: ScanReport, echo: Echo) -> None:
    """Generate each run's workflow (if it was not), hand the runs to their engines (each engine gets all of its
    runs at once), and finish every run that ended. One run's trouble goes into the report and never stops the
    tick's other runs; whatever happens, this process no longer carries a run afterwards."""
    try:
        by_engine: dict[str, list[RunDir]] = {}
        for run_dir in runs:
            info = _guarded(run_dir, report, echo, lambda r=run_dir: prepare(r, options, input_store, echo))
            if info is not None:
                by_engine.setdefault(info.engine, []).append(run_dir)
        _phase(options, "convert")
        outcomes: dict[Path, Outcome] = {}
        for name, group in by_engine.items():
            got = _guarded(group[0], report, echo, lambda n=name, g=group: tick_engine(options, n).run(g, echo), runs=group)
            outcomes.update(got or {})
        for run_dir in runs:
            outcome = outcomes.get(run_dir.path)
            if outcome is not None:
                _guarded(run_dir, report, echo, lambda r=run_dir, o=outcome: _after_engine(r, o, input_store, options, echo))
    finally:
        for run_dir in runs:
            # Whatever happened, this process no longer carries the run: the next tick may (a killed process
            # is noticed by its lease instead; so is a lease that a read-only run directory keeps).
            try:
                info = run_dir.release_lease()
            except (DamagedRunDir, OSError, *RUN_FILE_ERRORS):
                continue
            if info is not None and info.state == RECONCILED:
                report.reconciled.append(run_dir)


def _after_engine(run_dir: RunDir, outcome: Outcome, input_store: ObjectStore, options: ScanOptions, echo: Echo) -> None:
    if outcome.state == "error":
        raise WorkflowError(outcome.problem or "the engine stopped")
    if outcome.state == "ended":
        _phase(options, "reconcile")
        info = run_dir.load()  # as the engine left it
        result = finish(run_dir, input_store=input_store, echo=echo, info=info)
        echo(
            f"reconciled {info.manifest_key}: {result.processed} processed, {result.failed} failed"
            + (f" -> {result.failed_key}" if result.failed_key else "")
        )


def _guarded(run_dir: RunDir, report: ScanReport, echo: Echo, step: Callable[[], Any], runs: list[RunDir] | None = None) -> Any:
    """`step()`, or None when it failed: the trouble is reported for `runs` (default: the one run), which stay
    where they stopped for the next tick."""
    names = [r.path.name for r in (runs or [run_dir])]
    try:
        return step()
    except ClaimLost as exc:
        # Reconcile's fence: the processing file is no longer this claim's. The run is ABANDONED and wrote
        # no result file; whoever holds the manifest now answers for it.
        report.lost.extend(f"{name}: {exc}" for name in names)
        for name in names:
            echo(f"claim lost: {name}: {exc}; no result file written, run abandoned")
    except (StoreError, WorkflowError, OSError, DamagedRunDir, *RUN_FILE_ERRORS) as exc:
        # One run's trouble (an unreachable bucket, a read-only or full disk, a damaged run file) must not
        # hold up the others; this run stays where it stopped and the next tick carries it on.
        line = os_error_line(exc) if isinstance(exc, OSError) else one_line(exc)
        for name in names:
            report.errors.append(f"{name}: {line}")
            echo(f"error: {name}: {line}; left for the next tick")
    except Exception as exc:  # noqa: BLE001 - a bug met by one run's input must not cost the tick's other runs
        line = f"{type(exc).__name__}: {one_line(exc)}"[:500]
        for name in names:
            report.errors.append(f"{name}: {line}")
            echo(f"error: {name}: unexpected {line}; left for the next tick")
    return None


def _remove_late_copies(input_store: ObjectStore, view: Any, local_processing: dict[str, str], echo: Echo) -> None:
    """A processing file of a run reconciled here is a late write: a conditional PUT a proxy held until after
    reconcile removed the file (botocore had retried it meanwhile) put it back. Its run has answered (the
    claim timestamp is unique in the bucket, so no other claim has that name): remove it, If-Match the version
    listed, so it never stands beside the run's result files."""
    for listed in view.processing:
        if local_processing.get(listed.key) != RECONCILED:
            continue
        try:
            input_store.delete(listed.key, if_match=listed.etag)
        except StoreError:
            continue  # changed or gone since the listing: the next tick looks again
        echo(f"removed {listed.key}: a late copy of the processing file of a run reconciled here")


def _adopt_unfinished(options: ScanOptions, report: ScanReport, echo: Echo) -> dict[str, str]:
    """Take the lease of every unfinished run of this input bucket nobody carries on; returns the processing
    keys this work directory knows, with their runs' states. A damaged run directory is reported once and skipped."""
    run_dirs, report.damaged = survey_run_dirs(options.work_dir)
    for problem in report.damaged:
        echo(f"warning: {problem}")
    claimed_paths = {r.path for r in report.claimed}
    local_processing: dict[str, str] = {}
    for run_dir, info in run_dirs:
        if info.input_bucket != options.input_bucket:
            continue
        local_processing[info.processing_key] = str(info.state)
        if run_dir.path in claimed_paths or info.state not in IN_FLIGHT:
            continue
        try:
            if run_is_active(run_dir, info) or not run_dir.acquire_lease():
                report.in_flight.append(run_dir)
                continue
        except LeaseHeld:
            report.in_flight.append(run_dir)
            continue
        except OSError as exc:  # its run directory is read-only or its disk full: the other runs go on
            report.errors.append(f"{run_dir.path.name}: {os_error_line(exc)}")
            echo(f"error: {run_dir.path.name}: {os_error_line(exc)}; left for the next tick")
            continue
        report.resumed.append(run_dir)
        echo(f"carrying on {info.processing_key} ({run_dir.path}, was {info.state})")
    return local_processing


def _adopt_unplanned(run_dir: RunDir, info: RunInfo, options: ScanOptions, echo: Echo) -> RunInfo:
    """A tick whose engine adopts unplanned runs (the local engine) finishes a run another engine's attempt left
    unplanned (no Pegasus here, or the plan failed): the workflow files are engine-neutral, so it can run them
    as they are. Returns the run as it stands."""
    if info.engine == options.engine or info.state not in (CLAIMED, GENERATED):
        return info
    if tick_engine(options, info.engine).handed_over(run_dir):
        return info
    if not tick_engine(options, options.engine).adopts_unplanned:
        return info
    echo(f"{info.manifest_key}: was waiting for {info.engine}; running it with the {options.engine} engine")
    return run_dir.update(engine=options.engine, engine_waiting=None)


def prepare(run_dir: RunDir, options: ScanOptions, input_store: ObjectStore, echo: Echo = print) -> RunInfo:
    """The run, handed to this tick's engine if it may be, with its workflow generated (if it was not)."""
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate

    info = _adopt_unplanned(run_dir, run_dir.load(), options, echo)
    if info.state == CLAIMED:
        _phase(options, "preflight")
        # Only an engine that needs key material in a file (the planner) gets credentials.conf; keys its tools
        # cannot carry fail at preflight.
        engine = tick_engine(options, info.engine)
        settings = WorkflowSettings(options.config, write_credentials=engine.writes_credentials, key_problem=engine.key_problem)
        info = generate(run_dir, input_store, settings, info).info
        echo(f"generated workflow in {run_dir.path}")
    return info


def carry_on(run_dir: RunDir, options: ScanOptions, input_store: ObjectStore, echo: Echo = print) -> None:
    """Take one run from wherever it stopped to the end its engine can reach in this tick (raises its trouble)."""
    info = prepare(run_dir, options, input_store, echo)
    _phase(options, "convert")
    outcome = tick_engine(options, info.engine).run([run_dir], echo)[run_dir.path]
    _after_engine(run_dir, outcome, input_store, options, echo)
