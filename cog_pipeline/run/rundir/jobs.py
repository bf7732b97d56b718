"""jobs/<id>.json: how one job ended (`JobRecord`), written by the engines, read by reconcile and the report.

Records are read one at a time (`record_for_line`, `iter_job_records`): a run of a million jobs never holds
a million of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cog_pipeline.run.rundir import files


@dataclass
class JobRecord:
    """jobs/<id>.json: how one job ended, written once its attempts are used up.

    ``outputs`` maps each uploaded output key to ``{"etag": ..., "size": ...}`` as the store reported them
    right after the upload, so reconcile can prove the object at a key is this job's output.
    """

    job_id: str
    status: str  # "succeeded" | "failed"
    exit_code: int | None
    category: str
    reason: str
    attempts: int
    seconds: float
    key: str | None = None
    line: int | None = None
    warning: str | None = None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        """Tolerant of fields a newer writer added (they are dropped, the rest is kept)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: Path) -> None:
        files.write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> JobRecord | None:
        """The record at `path`; None when it is absent or cannot be read (an unreadable record is no record)."""
        try:
            data = files.read_json(path)
            record = cls.from_json(data)
            str(record.job_id)
            return record
        except (OSError, ValueError, KeyError, TypeError):
            return None


def job_file(jobs_dir: Path, job_id: str) -> Path:
    return Path(jobs_dir) / f"{job_id}.json"


def iter_job_records(jobs_dir: Path) -> Iterator[tuple[JobRecord, float]]:
    """(record, when it was written) of every readable jobs/*.json, one at a time, in file-name order."""
    jobs_dir = Path(jobs_dir)
    if not jobs_dir.is_dir():
        return
    for path in sorted(jobs_dir.glob("*.json")):
        record = JobRecord.load(path)
        if record is not None:
            try:
                yield record, path.stat().st_mtime
            except OSError:
                continue


def load_job_records(jobs_dir: Path) -> dict[str, JobRecord]:
    """Every readable record by job id (for callers that need them all, e.g. which jobs are done)."""
    return {str(record.job_id): record for record, _ in iter_job_records(jobs_dir)}
