"""The run directory, the system's database: one typed document per file, each with its load and save.

| file                       | type                  | written by                  | read by                                   |
|----------------------------|-----------------------|-----------------------------|-------------------------------------------|
| run.json                   | `RunInfo` (+ `PegasusRecord`) | claim, generator, engines, reconcile | every step                   |
| preflight.json (+ .csv)    | `Preflight`           | the workflow generator      | reconcile, report, status, local engine   |
| jobs/<id>.json             | `JobRecord`           | the engines                 | reconcile, report, status, provenance     |
| reconcile.json             | `Decisions`           | reconcile                   | reconcile (a repeat), report, status, tick log |

Versioning and the migration of older files live in this package only (record.py, preflight.py,
decisions.py). Documents are summaries: per-row facts that can be as long as the manifest are in line
files read as streams (preflight-failed.csv, preflight-sizes.csv, results/).
"""

from __future__ import annotations

from typing import Any

from cog_pipeline.run.rundir import files
from cog_pipeline.run.rundir.decisions import Decisions, ProcessedOutput
from cog_pipeline.run.rundir.directory import (
    ABANDONED,
    CLAIMED,
    CLAIMING,
    GENERATED,
    RECONCILED,
    RUNNING,
    STATES,
    LeaseHeld,
    RunDir,
    list_run_dirs,
    remove_empty_run_dirs,
    survey_run_dirs,
)
from cog_pipeline.run.rundir.jobs import JobRecord
from cog_pipeline.run.rundir.preflight import Preflight, PreflightWriter
from cog_pipeline.run.rundir.record import RUN_RECORD_VERSION, DamagedRunDir, PegasusRecord, RunInfo
from cog_pipeline.run.state import RunState

__all__ = [
    "ABANDONED", "CLAIMED", "CLAIMING", "GENERATED", "RECONCILED", "RUNNING", "STATES", "RUN_RECORD_VERSION",
    "DamagedRunDir", "Decisions", "JobRecord", "LeaseHeld", "PegasusRecord", "Preflight", "PreflightWriter",
    "ProcessedOutput", "RunDir", "RunInfo", "RunState", "list_run_dirs", "remove_empty_run_dirs", "survey_run_dirs",
    "write_json_atomic",
]


def write_json_atomic(path: Any, data: Any) -> None:
    """files.write_json_atomic (looked up at each call, so a test's fault hook on it covers every caller)."""
    files.write_json_atomic(path, data)
