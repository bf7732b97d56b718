"""`cog-pipeline crondor start|stop|status`: the production loop on an access point.

The Crondor is one local-universe HTCondor job with CronTab scheduling that runs
`cog-pipeline scan --engine pegasus ...` on a cron schedule (`--schedule`, default every 15 minutes) and stays
queued (`on_exit_remove = false`).
Every call to HTCondor goes through `cog_pipeline.condor.schedd()` (htcondor2, or htcondor on older
installs); nothing else here talks to HTCondor.
"""

from __future__ import annotations

import fcntl
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import click

from cog_pipeline.cli.config import scan_config, setting_options
from cog_pipeline.cli.options import EXIT_ERROR, bucket_options, fail, handle_errors, scan_options, store_config
from cog_pipeline.cli.status import runs_in_flight, show_runs
from cog_pipeline.config import flag_values
from cog_pipeline.engines.pegasus import condor
from cog_pipeline.engines.pegasus.condor import PegasusUnavailable

from .events import read_ticks
from .submit import (
    KEY_ATTRIBUTE,
    CrondorSpec,
    CrondorSpecError,
    build_submit,
    classad_string,
    crondor_key,
    write_description,
)

STATUS_NAMES = {3: "removed", 4: "completed", 6: "transferring output", 7: "suspended"}  # 1, 2 and 5: phase_lines
CRON_ATTRIBUTES = ("CronMinute", "CronHour", "CronDayOfMonth", "CronMonth", "CronDayOfWeek")
PROJECTION = ["ClusterId", "ProcId", "JobStatus", "JobBatchName", KEY_ATTRIBUTE, "Iwd", "UserLog", "DeferralTime", "HoldReason", "NumJobStarts", *CRON_ATTRIBUTES]
LOCAL_HINT = "without HTCondor, run the same scan by hand or from cron: cog-pipeline scan --engine local ..."


def _connect() -> Any:
    try:
        return condor.schedd()
    except PegasusUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - HTCondorException and friends: no schedd on this host
        raise PegasusUnavailable(f"cannot reach an HTCondor schedd on this host ({exc}); the Crondor needs an HTCondor access point; {LOCAL_HINT}") from None


def _job_action_remove() -> Any:
    module = condor.htcondor_module()
    return module.JobAction.Remove


def find_crondors(schedd: Any, key: str | None = None) -> list[Any]:
    """Queued cog-pipeline Crondors (all of them, or the one for `key`), not counting removed ones."""
    constraint = f"{KEY_ATTRIBUTE} =!= undefined && JobStatus =!= 3"
    if key is not None:
        constraint = f"{KEY_ATTRIBUTE} == {classad_string(key)} && JobStatus =!= 3"
    return list(schedd.query(constraint=constraint, projection=PROJECTION))


@contextmanager
def _start_lock(work_dir: Path) -> Iterator[None]:
    """Two `start`s for one work directory at the same moment: the second waits, then sees the first's job."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / ".crondor.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _job_id(ad: Any) -> str:
    return f"{ad.get('ClusterId')}.{ad.get('ProcId', 0)}"


def _time(epoch: Any) -> str:
    try:
        return datetime.fromtimestamp(int(epoch)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError):
        return "not scheduled yet"


def _schedule(ad: Any) -> str:
    return " ".join(str(ad.get(name, "*")) for name in CRON_ATTRIBUTES)


def phase_lines(ad: Any) -> list[str]:
    """What the Crondor is doing (waiting or running a tick) and how its last tick ended, from the job's ad and
    its event log: JobStatus 2 alone is not a tick, since the job holds its slot while it waits for its time."""
    status = int(ad.get("JobStatus", 0))
    try:
        ticks = read_ticks(Path(str(ad.get("UserLog"))), int(ad.get("ClusterId")))
    except Exception as exc:  # noqa: BLE001 - an unreadable log must not hide the rest of the status
        ticks, log_problem = None, f"unknown (cannot read {ad.get('UserLog')}: {exc})"
    if status == 5:
        phase = f"held: {ad.get('HoldReason')} (condor_release {_job_id(ad)})"
    elif status == 2 and ticks is not None and ticks.running:
        phase = f"running a tick since {_time(ticks.started)}"
    elif status in (1, 2):
        phase = f"waiting for its next tick at {_time(ad.get('DeferralTime'))}" + (" (its slot is ready)" if status == 2 else "")
    else:
        phase = STATUS_NAMES.get(status, str(status))
    lines = [f"  state: {phase}; schedule: {_schedule(ad)}; ticks so far: {ticks.count if ticks else ad.get('NumJobStarts', 0)}"]
    if ticks is None:
        lines.append(f"  last tick: {log_problem}")
    elif ticks.outcome:
        lines.append(f"  last tick: ended {_time(ticks.ended)}, {ticks.outcome}, took {int(ticks.seconds or 0)} s (its output: {ad.get('Iwd')}/crondor.out, crondor.err)")
    else:
        lines.append("  last tick: none has ended yet")
    return lines


@click.group()
def crondor() -> None:
    """Run `scan --engine pegasus` on a cron schedule on this HTCondor access point (a Crondor)."""


@crondor.command()
@scan_options
@click.option("-w", "--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True, help="Where run directories, crondor.sub and the Crondor's logs are kept.")
@setting_options(exclude=("local",))
@click.option("--dry-run", is_flag=True, help="Write crondor.sub and print it; submit nothing.")
@handle_errors
def start(**kw: Any) -> None:
    """Submit the Crondor; refuses when one for the same buckets and pattern is already queued.

    With --config FILE the Crondor's ticks read that file (its path is in the arguments), so editing it
    changes the next tick; it is checked now, so a bad value fails here rather than every 15 minutes.
    """
    config = scan_config(kw)  # the tick would refuse these every 15 minutes: refuse them now
    store = store_config(kw)  # validates -a/-s (regular, readable key files; their bytes never echoed)
    config_path = kw.get("config_path")
    spec = CrondorSpec(
        input_bucket=kw["input_bucket"],
        output_bucket=kw["output_bucket"],
        pattern=kw["pattern"],
        work_dir=kw["work_dir"].resolve(),
        endpoint=store.endpoint,
        access_key_file=store.access_key_file,
        secret_key_file=store.secret_key_file,
        region=store.region,
        retry_mode=store.retry_mode,
        local_root=store.local_root,
        # the setting flags given, passed on as given (the schedule is the Crondor's own, not the tick's)
        settings={k: v for k, v in flag_values(kw).items() if k != "crondor.schedule"},
        output_prefix=kw.get("output_prefix"),
        replace_inputs=bool(kw.get("replace_inputs")),
        aws_profile=kw.get("profile"),
        config=Path(config_path).resolve() if config_path else None,
        schedule=config.crondor.schedule,
    )
    try:
        spec.validate()
    except CrondorSpecError as exc:
        fail(str(exc), 2)
    problem = condor.pegasus_problem(env=spec.environment)
    if problem:  # every tick would refuse to claim: say it now (the description is still written/submitted)
        click.echo(f"warning: Pegasus cannot run in the tick's environment: {problem}; each tick will say so and claim nothing", err=True)
    if kw["dry_run"]:
        path = write_description(spec)
        click.echo(path.read_text(encoding="utf-8"))
        click.echo(f"# written to {path}; not submitted (--dry-run)")
        return
    schedd = _connect()
    with _start_lock(spec.work_dir):
        existing = find_crondors(schedd, spec.key)
        if existing:
            ad = existing[0]
            fail(
                f"a Crondor for {spec.input_bucket} -> {spec.output_bucket} ({spec.pattern}) is already queued: job {_job_id(ad)} "
                f"(work dir {ad.get('Iwd')}). Stop it first: cog-pipeline crondor stop --input-bucket {spec.input_bucket} "
                f"--output-bucket {spec.output_bucket} -p '{spec.pattern}'",
                EXIT_ERROR,
            )
        path = write_description(spec)
        result = schedd.submit(build_submit(spec))
    cluster = result.cluster() if callable(getattr(result, "cluster", None)) else getattr(result, "cluster", result)
    click.echo(f"Crondor submitted: job {cluster}.0, batch {spec.batch_name}, schedule '{spec.schedule}'")
    click.echo(f"  description {path}; logs {spec.work_dir}/crondor.{{out,err,log}}")
    click.echo("  watch: cog-pipeline crondor status   stop: cog-pipeline crondor stop --input-bucket ... --output-bucket ... -p ...")


@crondor.command()
@bucket_options
@handle_errors
def stop(input_bucket: str, output_bucket: str, pattern: str) -> None:
    """Remove the Crondor for these buckets and pattern (workflows already submitted keep running).

    Says what happens to the runs in flight: each submitted DAG keeps running and, when it ends, pegasus-monitord
    runs its END hook (`cog-pipeline finish RUN_DIR`), which writes the result files; a run left unreconciled
    (hook failed, DAG removed) is finished by the next scan run by hand.
    """
    schedd = _connect()
    key = crondor_key(input_bucket, output_bucket, pattern)
    jobs = find_crondors(schedd, key)
    if not jobs:
        click.echo(f"no Crondor queued for {input_bucket} -> {output_bucket} ({pattern})")
        return
    schedd.act(_job_action_remove(), [_job_id(ad) for ad in jobs], reason="cog-pipeline crondor stop")
    for ad in jobs:
        work_dir = Path(str(ad.get("Iwd")))
        click.echo(f"removed Crondor job {_job_id(ad)} ({ad.get('JobBatchName')}); no further tick runs")
        click.echo(
            f"  {len(runs_in_flight(work_dir))} run(s) in flight under {work_dir}: submitted DAGs keep running, and when one ends "
            "pegasus-monitord runs its END hook (cog-pipeline finish RUN_DIR), which writes its result files; a run its hook "
            f"did not reconcile (hook failed, DAG removed) waits for the next scan you run: cog-pipeline scan --engine pegasus "
            f"-w {work_dir} ... (watch: cog-pipeline status -w {work_dir}; stop one DAG: pegasus-remove SUBMIT_DIR)"
        )


@crondor.command("status")
@click.option("-w", "--work-dir", "work_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path), help="Also list runs in this work directory (default: each Crondor's own).")
@handle_errors
def crondor_status(work_dirs: tuple[Path, ...]) -> None:
    """The queued Crondors (waiting or running a tick, the last tick's outcome), then the runs in flight."""
    schedd = _connect()
    jobs = find_crondors(schedd)
    if not jobs:
        click.echo("no cog-pipeline Crondor is queued on this schedd")
    dirs: list[Path] = [Path(d).resolve() for d in work_dirs]
    for ad in jobs:
        click.echo(f"Crondor {_job_id(ad)}  {ad.get('JobBatchName')}  [{ad.get(KEY_ATTRIBUTE)}]")
        for line in phase_lines(ad):
            click.echo(line)
        if ad.get("Iwd") and Path(str(ad.get("Iwd"))) not in dirs:
            dirs.append(Path(str(ad.get("Iwd"))))
    for work_dir in dirs:
        show_runs(work_dir)


def main() -> None:  # pragma: no cover - `python -m cog_pipeline.crondor.commands` for debugging
    crondor(prog_name="cog-pipeline crondor")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
