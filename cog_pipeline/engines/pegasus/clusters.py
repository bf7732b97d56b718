"""Clustered jobs: each image's own outcome, and the stage-out a failed cluster never got.

With ``--cluster-size N`` Pegasus runs N conversions in one HTCondor job (``merge_...``), through
``pegasus-cluster`` without ``-f``, so every image of a cluster is converted even when one fails. PegasusLite then
stages every output to the run's scratch prefix (a failed conversion leaves empty files there, see
``workflow_gen.EMPTY_ON_FAILURE``), and the job fails. DAGMan never runs the stage-out node of a failed job, so the
good images of that cluster would be stranded in scratch and their rows would fail for a neighbour's bad input.

``stage_out_failed_clusters`` finishes that stage-out when the workflow has ended: for each failed cluster, the
transfers its stage-out node was planned with (the planner's own ``stage_out_*_<cluster>_*.in``: scratch URL ->
the output PFN from outputs.yml) are copied inside the store, server-side, for exactly the images whose own
conversion exited 0 in the cluster's kickstart record. Nothing else is copied, and the empty files of a failed
conversion never leave scratch (which the engine then removes).

``task_records`` gives each image of a cluster its own JobRecord (exit code, the converter's last stderr line).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cog_pipeline.engines.base import category, last_line
from cog_pipeline.replicas.catalog import object_of_pfn
from cog_pipeline.run.naming import line_of_job_id
from cog_pipeline.run.rundir.jobs import JobRecord

from .submit_dir import SubmitDir, _captured, _exit_from_raw, _invocations

CLUSTER_PREFIX = "merge_"


def _tasks(out: Path) -> dict[str, tuple[int | None, str | None, float | None]]:
    """job id -> (exit code, last stderr line, seconds) of every conversion in one cluster's kickstart output."""
    tasks = {}
    for record in _invocations(out.read_text(encoding="utf-8", errors="replace")):
        job_id = record.get("derivation")
        if record.get("transformation") != "generate_cog" or not isinstance(job_id, str):
            continue
        main = record.get("mainjob") or {}
        status = main.get("status") or {}
        raw = status.get("raw") if isinstance(status, dict) else None
        stderr = _captured(record, "stderr")
        duration = main.get("duration")
        tasks[job_id] = (_exit_from_raw(raw if isinstance(raw, int) else None), last_line(stderr) if stderr else None,
                         float(duration) if isinstance(duration, (int, float)) else None)
    return tasks


def task_records(found: SubmitDir, wanted: set[str]) -> dict[str, JobRecord]:
    """A JobRecord per conversion of every finished cluster (only for the job ids in `wanted`)."""
    records = {}
    for node, job in found.jobs.items():
        if not node.startswith(CLUSTER_PREFIX) or job.finished is None or node not in found.kickstart:
            continue
        for job_id, (code, line, seconds) in _tasks(found.kickstart[node].path).items():
            if job_id not in wanted:
                continue
            ok = code == 0
            reason = "" if ok else (line or f"exit code {code} in cluster {node}; details: pegasus-analyzer {found.path}")
            records[job_id] = JobRecord(job_id, "succeeded" if ok else "failed", code, category(code if code is not None else 1),
                                        reason, max(1, job.attempts), seconds or 0.0, line=line_of_job_id(job_id))
    return records


def stage_out_failed_clusters(found: SubmitDir, output_store: Any) -> list[str]:
    """Copy the outputs of the good images of every failed cluster from scratch to their keys; their job ids.

    Only S3 stores (nonsharedfs plans, where stage-out copies scratch objects); a transfer whose URLs are not
    both in the output store's bucket is left alone.
    """
    if not found.end.ended:
        return []
    staged = []
    for node, job in found.jobs.items():
        if not node.startswith(CLUSTER_PREFIX) or job.finished is not False or node not in found.kickstart:
            continue
        good = {job_id for job_id, (code, _, _) in _tasks(found.kickstart[node].path).items() if code == 0}
        for spec in found.path.rglob(f"stage_out_*_{node}_*.in"):
            for transfer in json.loads(spec.read_text(encoding="utf-8")):
                job_id = str(transfer.get("lfn", "")).partition(".")[0]
                if job_id not in good:
                    continue
                src = object_of_pfn(transfer["src_urls"][0]["url"])
                dst = object_of_pfn(transfer["dest_urls"][0]["url"])
                if src[0] != output_store.bucket or dst[0] != output_store.bucket:
                    continue
                output_store.copy(src[1], dst[1])
                staged.append(job_id)
    return sorted(set(staged))
