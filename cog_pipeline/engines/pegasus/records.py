"""Job records from a Pegasus submit directory, read with ``submit_dir.read_submit_dir``.

``collect_job_records`` writes ``jobs/<id>.json`` (the shared ``JobRecord``) for every conversion node of
workflow.yml that reached a final state. What a record says comes from the real files Pegasus and DAGMan
leave (submit_dir.py reads them): jobstate.log for the final state, attempts and exit code; the latest
attempt's kickstart record (``<node>.out.NNN``) for the converter's last stderr line and for pegasus-exitcode's
classification; the HTCondor event log for holds. When no usable record exists the reason names the exit
category and points to ``pegasus-analyzer``. Only that one line is copied (never the record's
``environment``). A conversion node is ``<transformation>_<job id>`` (``generate_cog_ID0000001``); clustered
jobs (``merge_...``) get no record.

The submit directory is the END hook's ``PEGASUS_SUBMIT_DIR`` when pegasus-monitord set it (a workflow planned
by hand still gets its reasons), else the one run.json recorded (``submit_dir.submit_dir_for_hook``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cog_pipeline.engines.base import SUCCESS_CODES, category, last_line
from cog_pipeline.run.naming import line_of_job_id
from cog_pipeline.run.rundir import RunDir
from cog_pipeline.run.rundir.jobs import JobRecord, job_file

from .submit_dir import (
    JobState,
    KickstartRecord,
    _invocations,
    dag_was_removed,
    holds_by_node,
    main_invocation,
    read_submit_dir,
    submit_dir_for_hook,
)

JOB_NODE_RE = re.compile(r"^\w+?_(ID\d{7})$")
STAGE_OUT_RE = re.compile(r"^stage_out_(?:local|remote)_(\w+?_ID\d{7})_\d+$")  # one per conversion (Basic refiner)
_MAX_REASON_CHARS = 500


def _workflow_jobs(run_dir: RunDir) -> list[tuple[str, int | None, str | None]]:
    """(job id, manifest line, key) for every job of workflow.yml."""
    import yaml

    with open(run_dir.file(RunDir.WORKFLOW), encoding="utf-8") as fh:
        doc = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    jobs = []
    for job in doc.get("jobs") or []:
        meta = job.get("metadata") or {}
        line = str(meta.get("line", ""))
        jobs.append((str(job["id"]), int(line) if line.isdigit() else None, meta.get("key")))
    return jobs


def write_plan_failure_records(run_dir: RunDir, reason: str) -> None:
    run_dir.jobs_dir.mkdir(parents=True, exist_ok=True)
    for job_id, line, key in _workflow_jobs(run_dir):
        path = job_file(run_dir.jobs_dir, job_id)
        if not path.exists():
            JobRecord(job_id, "failed", None, "PLAN_FAILED", reason, 0, 0.0, key=key, line=line).save(path)



def kickstart_reason(path: Path | None, job_id: str, exit_code: int | None) -> str | None:
    """The converter's last stderr line from one kickstart output, or None (never raises).

    A record whose own exit code disagrees with jobstate.log's belongs to another attempt and is not used.
    """
    if path is None:
        return None
    try:
        records = [r for r in _invocations(path.read_text(encoding="utf-8", errors="replace")) if r.get("derivation") in (None, job_id)]
        if not records:
            return None
        main = main_invocation(records)
        files = main.get("files")
        stderr = files.get("stderr") if isinstance(files, dict) else None
        data = stderr.get("data") if isinstance(stderr, dict) else None
        status = (main.get("mainjob") or {}).get("status") if isinstance(main.get("mainjob"), dict) else None
        code = status.get("regular_exitcode") if isinstance(status, dict) else None
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        if not isinstance(data, str) or (code is not None and exit_code is not None and code != exit_code):
            return None
        line = last_line(data)
        return line[:_MAX_REASON_CHARS] if line else None
    except Exception:  # noqa: BLE001 - a reason is a nicety: any surprise means "use the exit category"
        return None


def _run_keys(run_dir: RunDir) -> dict[str, tuple[int | None, str | None]]:
    """job id -> (manifest line, key) for every job of workflow.yml (the nodes a record may be written for)."""
    try:
        return {job_id: (line, key) for job_id, line, key in _workflow_jobs(run_dir)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def collect_job_records(run_dir: RunDir, env: dict[str, str] | None = None) -> int:
    """Write jobs/<id>.json for conversion nodes that reached a final state in the submit directory (and, for a
    clustered run, for each image of every finished cluster, after finishing failed clusters' stage-out)."""
    import os

    info = run_dir.load()
    recorded = info.pegasus.submit_dir
    submit_dir = submit_dir_for_hook(os.environ if env is None else env, Path(recorded) if recorded else None)
    if submit_dir is None or not submit_dir.is_dir():
        return 0
    found = read_submit_dir(submit_dir)
    removed = found.end.ended and dag_was_removed(submit_dir)
    if not found.jobs and not removed:
        return 0
    workflow = _run_keys(run_dir)
    holds = holds_by_node(found.events)
    hint = f"details: pegasus-analyzer {submit_dir}"
    run_dir.jobs_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    if info.cluster:
        written += _cluster_records(run_dir, info, found, workflow)
    # conversion node -> its own stage-out node, found once (a run has one per conversion)
    stage_outs = {m.group(1): node for node in found.jobs if (m := STAGE_OUT_RE.match(node)) is not None}
    for node, job in found.jobs.items():
        match = JOB_NODE_RE.match(node)
        # A node still held when the DAG ended (condor_rm, DAG abort) is over too: it failed, held.
        over = job.finished is not None or (found.end.ended and job.state == "JOB_HELD")
        if not match or match.group(1) not in workflow or not over:
            continue
        job_id = match.group(1)
        path = job_file(run_dir.jobs_dir, job_id)
        if path.exists():
            continue
        record = job_record(job_id, job, found.kickstart.get(node), holds.get(node), hint)
        if record.status == "succeeded":
            record = _after_stage_out(record, found, stage_outs.get(node), removed, hint)
        record.line, record.key = workflow[job_id]
        record.save(path)
        written += 1
    if removed:  # every row whose job never ended: say why, rather than "no job record"
        for job_id, (line, key) in workflow.items():
            path = job_file(run_dir.jobs_dir, job_id)
            if not path.exists():
                JobRecord(job_id, "failed", None, "REMOVED", REMOVED_REASON, 0, 0.0, key=key, line=line).save(path)
                written += 1
    return written


REMOVED_REASON = "not converted: the workflow was removed (condor_rm or pegasus-remove) before this row's job ended"


def _after_stage_out(record: JobRecord, found, stage: str | None, removed: bool, hint: str) -> JobRecord:
    """A conversion that succeeded still fails its row when its own stage-out node (`stage`) failed or never ran."""
    state = found.jobs[stage].finished if stage else None
    if stage is None and not removed or state is True:
        return record
    if state is False:
        why = found.kickstart[stage].reason if stage in found.kickstart else None
        reason = f"converted, but the stage-out to the output bucket failed{f' ({why})' if why else ''}; {hint}"
        return JobRecord(record.job_id, "failed", record.exit_code, "STAGE_OUT_FAILED", reason, record.attempts, record.seconds)
    if removed:
        reason = "converted, but the workflow was removed (condor_rm or pegasus-remove) before its stage-out copied the outputs"
        return JobRecord(record.job_id, "failed", record.exit_code, "REMOVED", reason, record.attempts, record.seconds)
    return record


def _cluster_records(run_dir: RunDir, info, found, workflow: dict) -> int:
    from cog_pipeline.storage.store import open_store

    from .clusters import stage_out_failed_clusters, task_records

    if info.store_config.local_root is None and found.end.ended:
        stage_out_failed_clusters(found, open_store(info.output_bucket, info.store_config))
    written = 0
    for job_id, record in task_records(found, set(workflow)).items():
        path = job_file(run_dir.jobs_dir, job_id)
        if not path.exists():
            record.line, record.key = workflow[job_id]
            record.save(path)
            written += 1
    return written


def job_record(job_id: str, job: JobState, kickstart: KickstartRecord | None, hold: dict[str, Any] | None, hint: str) -> JobRecord:
    """The JobRecord of one conversion node that reached a final state (JobState.finished is not None)."""
    code = job.exit_code
    cat = category(code)
    converter_line = kickstart_reason(kickstart.path, job_id, code) if kickstart is not None else None
    was_held = job.held > 0 or (hold is not None and hold["held"] > 0)
    warning = None
    if job.finished:
        status, reason, cat = "succeeded", "", category(code or 0)
        warning = f"exit code {code} ({cat})" if code and code not in SUCCESS_CODES else None
        if converter_line and converter_line.startswith("WARNING"):
            warning = converter_line
    elif code is None and was_held:
        # Held, then removed (periodic_remove after the backoff, or condor_rm): no exit code exists.
        why = (hold or {}).get("last_hold_reason")
        status, cat = "failed", "HELD"
        reason = f"held{f' ({why})' if why else ''} and removed after {job.attempts} attempt(s); {hint}"
    elif code is None:
        status, cat, reason = "failed", "REMOVED", f"{job.state.lower().replace('_', ' ')} (condor_rm or DAG abort); {hint}"
    elif code == 0:
        why = kickstart.reason if kickstart is not None and kickstart.classification == "failure" else None
        status, cat = "failed", "JOB_FAILED"
        reason = f"the job exited 0 but pegasus-exitcode rejected it{f' ({why})' if why else ''}; {hint}"
    else:
        status = "failed"
        reason = converter_line or f"exit code {code} after {job.attempts} attempt(s); {hint}"
    seconds = float(job.last - job.first) if job.first is not None and job.last is not None else 0.0
    return JobRecord(job_id, status, code, cat, reason, max(1, job.attempts), seconds, line=line_of_job_id(job_id), warning=warning)
