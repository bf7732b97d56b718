"""Job records from a Pegasus submit directory: jobstate.log outcomes plus the converter's own reason line.

``collect_job_records`` writes ``jobs/<id>.json`` (the shared ``JobRecord``) for every conversion node that
reached a final state. The reason is the converter's last stderr line from the job's latest
pegasus-kickstart YAML record (``<submit>/00/00/generate_cog_ID0000001.out.NNN``); when that record is
missing, truncated or unparsable, the reason names the exit category and points to ``pegasus-analyzer``.
Only that one line is copied (never the record's ``environment``). Clustered jobs get no record.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...rundir import RunDir
from ..base import SUCCESS_CODES, JobRecord, category, last_line, line_of_job_id, write_record

JOB_NODE_RE = re.compile(r"^generate_cog_(ID\d+)$")
# A job's kickstart output in the submit directory: <node>.out while it runs, then <node>.out.000, .001, ...
# once pegasus-exitcode (the POST script) has rotated it, one per attempt.
_KICKSTART_OUT_RE = re.compile(r"^generate_cog_(ID\d+)\.out(?:\.(\d{3}))?$")
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
        path = run_dir.jobs_dir / f"{job_id}.json"
        if not path.exists():
            write_record(path, JobRecord(job_id, "failed", None, "PLAN_FAILED", reason, 0, 0.0, key=key, line=line))



def parse_jobstate(submit_dir: Path) -> dict[str, dict[str, Any]]:
    """Per conversion node: final state, last exit code, number of submissions, from jobstate.log."""
    nodes: dict[str, dict[str, Any]] = {}
    jobstate = submit_dir / "jobstate.log"
    if not jobstate.is_file():
        return nodes
    final_events = {"JOB_SUCCESS", "JOB_FAILURE", "POST_SCRIPT_SUCCESS", "POST_SCRIPT_FAILURE", "JOB_ABORTED", "SUBMIT_FAILED", "JOB_HELD"}
    with open(jobstate, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 3:
                continue
            match = JOB_NODE_RE.match(parts[1])
            if not match:
                continue
            node = nodes.setdefault(match.group(1), {"state": None, "exit_code": None, "submits": 0, "first": None, "last": None})
            stamp = int(parts[0]) if parts[0].isdigit() else None
            node["first"] = node["first"] if node["first"] is not None else stamp
            node["last"] = stamp
            event = parts[2]
            if event == "SUBMIT":
                node["submits"] += 1
                node["state"] = "SUBMIT"
            elif event in final_events:
                node["state"] = event
                if event in ("JOB_SUCCESS", "JOB_FAILURE") and len(parts) > 3 and parts[3].lstrip("-").isdigit():
                    node["exit_code"] = int(parts[3])
    return nodes


def _kickstart_outputs(submit_dir: Path) -> dict[str, Path]:
    """Per conversion job, its latest kickstart output file (the highest .out.NNN; a bare .out is newer still).

    Pegasus' default (Hashed) submit mapper puts the files two levels down (00/00/); Flat puts them at the top.
    """
    latest: dict[str, tuple[int, Path]] = {}
    for path in submit_dir.rglob("generate_cog_ID*.out*"):
        match = _KICKSTART_OUT_RE.match(path.name)
        if not match or not path.is_file():
            continue
        order = int(match.group(2)) if match.group(2) is not None else 1000
        if match.group(1) not in latest or order > latest[match.group(1)][0]:
            latest[match.group(1)] = (order, path)
    return {job_id: path for job_id, (_, path) in latest.items()}


_RECORD_LOADER: type | None = None


def _record_loader() -> type:
    """A SafeLoader that keeps timestamps as text (a record's dates are not needed and must not fail parsing)."""
    global _RECORD_LOADER
    if _RECORD_LOADER is None:
        import yaml

        class RecordLoader(yaml.SafeLoader):
            pass

        RecordLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.yaml_constructors["tag:yaml.org,2002:str"])
        _RECORD_LOADER = RecordLoader
    return _RECORD_LOADER


def _invocation_records(text: str) -> list[dict[str, Any]]:
    """Every parsable ``- invocation: True`` record in a kickstart output (a file may hold several, with
    ``---------------pegasus-multipart`` or ``[cluster-...]`` parts between them). A record that does not
    parse (truncated, garbage) is skipped."""
    import yaml

    chunks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines(keepends=True):
        if line.startswith("- invocation:"):
            current = [line]
            chunks.append(current)
        elif current is not None and (line[:1] in (" ", "\t") or not line.strip()):
            current.append(line)
        else:  # a multipart marker, a cluster line, another top-level item: this record has ended
            current = None
    records = []
    loader = _record_loader()
    for chunk in chunks:
        try:
            doc = yaml.load("".join(chunk), Loader=loader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError:
            continue
        if isinstance(doc, list) and doc and isinstance(doc[0], dict) and doc[0].get("invocation") is True:
            records.append(doc[0])
    return records


def _main_job_stderr(record: dict[str, Any]) -> tuple[str | None, int | None]:
    """(the main job's captured stderr, its exit code) from one invocation record; None where absent."""
    files = record.get("files")
    stderr = files.get("stderr") if isinstance(files, dict) else None
    data = stderr.get("data") if isinstance(stderr, dict) else None
    mainjob = record.get("mainjob")
    status = mainjob.get("status") if isinstance(mainjob, dict) else None
    code = status.get("regular_exitcode") if isinstance(status, dict) else None
    return (data if isinstance(data, str) else None), (code if isinstance(code, int) and not isinstance(code, bool) else None)


def kickstart_reason(path: Path | None, job_id: str, exit_code: int | None) -> str | None:
    """The converter's last stderr line from the job's kickstart record, or None (never raises).

    The record used is the last invocation of this job (``derivation``) preferring the ``generate_cog``
    transformation. A record whose own exit code disagrees with jobstate.log's belongs to another attempt and
    is not used.
    """
    if path is None:
        return None
    try:
        records = [r for r in _invocation_records(path.read_text(encoding="utf-8", errors="replace")) if r.get("derivation") in (None, job_id)]
        main = [r for r in records if "generate_cog" in str(r.get("transformation") or "")] or records
        if not main:
            return None
        data, code = _main_job_stderr(main[-1])
        if data is None or (code is not None and exit_code is not None and code != exit_code):
            return None
        line = last_line(data)
        return line[:_MAX_REASON_CHARS] if line else None
    except Exception:  # noqa: BLE001 - a reason is a nicety: any surprise means "use the exit category"
        return None


def collect_job_records(run_dir: RunDir) -> int:
    """Write jobs/<id>.json for conversion nodes that reached a final state in the submit directory."""
    submit_dir = run_dir.load().submit_dir
    if not submit_dir or not Path(submit_dir).is_dir():
        return 0
    nodes = parse_jobstate(Path(submit_dir))
    if not nodes:
        return 0
    keys: dict[int, str] = {}
    try:
        from ...manifest import parse_manifest

        keys = {row.line: row.key for row in parse_manifest(run_dir.file(RunDir.MANIFEST).read_bytes()).rows}
    except (OSError, ValueError):
        pass
    run_dir.jobs_dir.mkdir(parents=True, exist_ok=True)
    try:
        outputs = _kickstart_outputs(Path(submit_dir))
    except Exception:  # noqa: BLE001 - without kickstart records the reasons fall back to the exit category
        outputs = {}
    written = 0
    for job_id, node in nodes.items():
        path = run_dir.jobs_dir / f"{job_id}.json"
        if path.exists() or node["state"] in (None, "SUBMIT"):
            continue
        record = node_record(job_id, node, outputs.get(job_id), f"details: pegasus-analyzer {submit_dir}")
        line = line_of_job_id(job_id)
        record.key = keys.get(line) if line else None
        write_record(path, record)
        written += 1
    return written


_RAN = ("JOB_SUCCESS", "JOB_FAILURE", "POST_SCRIPT_SUCCESS", "POST_SCRIPT_FAILURE")


def node_record(job_id: str, node: dict[str, Any], kickstart: Path | None, hint: str) -> JobRecord:
    """The JobRecord of one conversion node that reached a final state (see `parse_jobstate`)."""
    state, code = node["state"], node["exit_code"]
    cat = category(code)
    if state == "POST_SCRIPT_SUCCESS" or (state == "JOB_SUCCESS" and code in SUCCESS_CODES):
        status, reason = "succeeded", ""
    elif state == "POST_SCRIPT_FAILURE" and code == 0:
        status, cat, reason = "failed", "JOB_FAILED", f"the job exited 0 but pegasus-exitcode rejected it; {hint}"
    elif state in ("JOB_FAILURE", "POST_SCRIPT_FAILURE"):
        status, reason = "failed", f"exit code {code}; {hint}" if code is not None else f"job failed; {hint}"
    elif state == "JOB_HELD":
        status, cat, reason = "failed", "HELD", f"held when the workflow ended (removed); {hint}"
    else:  # JOB_ABORTED, SUBMIT_FAILED
        status, cat, reason = "failed", "REMOVED", f"{state.lower().replace('_', ' ')} (condor_rm or DAG abort); {hint}"
    warning = None
    converter_line = kickstart_reason(kickstart, job_id, code) if state in _RAN else None
    if status == "succeeded":
        cat = category(code or 0)
        warning = f"exit code {code} ({cat})" if code else None
        if converter_line and converter_line.startswith("WARNING"):
            warning = converter_line
    elif converter_line and code not in (None, 0):
        reason = converter_line
    seconds = float(node["last"] - node["first"]) if node["first"] is not None and node["last"] is not None else 0.0
    return JobRecord(job_id, status, code, cat, reason, max(1, node["submits"]), seconds, line=line_of_job_id(job_id), warning=warning)
