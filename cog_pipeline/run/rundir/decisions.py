"""reconcile.json: reconcile's decisions (`Decisions`), saved before anything is written to the bucket.

A summary: the counts, the result files' keys, the first `SAMPLE_ROWS` failed rows and processed rows with a
note. The result files (results/, streamed) hold every row. Reconcile also hands the run's processed
outputs, as its listing found them, to publishing in memory (`Decisions.outputs`); they are never saved,
so publishing neither re-parses rows nor re-lists the bucket reconcile just listed.

Written by reconcile; read by reconcile (a repeat), the report, the status table and the tick log.
Version 1 (every row, {"result": ..., "rows": [...]}) is still read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cog_pipeline.run.rundir import files
from cog_pipeline.run.rundir.files import SAMPLE_ROWS
from cog_pipeline.storage.store import ObjectInfo

DECISIONS_VERSION = 2  # 1: every row, with its text, status, reason and note


@dataclass(frozen=True)
class ProcessedOutput:
    """One processed row's outputs as reconcile's listing found them (a duplicate row is not repeated)."""

    line: int
    key: str  # the row's key (outputs at output_prefix + key)
    objects: dict[str, ObjectInfo]  # each output's object by its name (cog_pipeline.outputs), in declared order
    note: str = ""


@dataclass
class Decisions:
    processed: int = 0
    failed: int = 0
    processed_key: str | None = None
    failed_key: str | None = None
    reasons_key: str | None = None
    rows: int = 0  # rows decided (blank lines are not rows)
    duplicates: int = 0
    images: int = 0  # processed rows that are not duplicates: one of each output each
    noted: int = 0  # processed rows with a note (e.g. a band-count warning)
    failed_sample: list[dict[str, Any]] = field(default_factory=list)  # line, text, reason
    noted_sample: list[dict[str, Any]] = field(default_factory=list)  # line, text, note
    processed_sample: list[dict[str, Any]] = field(default_factory=list)  # line, key: the first processed images
    version: int = DECISIONS_VERSION
    outputs: list[ProcessedOutput] | None = field(default=None, repr=False, compare=False)  # in memory only

    RESULT_FIELDS = ("processed", "failed", "processed_key", "failed_key", "reasons_key")

    @property
    def result(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.RESULT_FIELDS}

    def add(self, line: int, text: str, status: str, reason: str = "", note: str = "", duplicate: bool = False,
            key: str | None = None) -> None:
        """Count one row's decision (and keep it when the sample still has room); `key`: a processed row's."""
        self.rows += 1
        self.duplicates += duplicate
        if status == "failed":
            self.failed += 1
            if len(self.failed_sample) < SAMPLE_ROWS:
                self.failed_sample.append({"line": line, "text": text, "reason": reason})
        else:
            self.processed += 1
            self.images += not duplicate
            if key is not None and not duplicate and len(self.processed_sample) < SAMPLE_ROWS:
                self.processed_sample.append({"line": line, "key": key})
            if note and not duplicate:
                self.noted += 1
                if len(self.noted_sample) < SAMPLE_ROWS:
                    self.noted_sample.append({"line": line, "text": text, "note": note})

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "outputs"}
        data["result"] = self.result
        return data

    @classmethod
    def from_json(cls, data: object) -> Decisions:
        if not isinstance(data, dict) or not isinstance(data.get("result"), dict):
            raise ValueError("reconcile.json holds no result")
        result = data["result"]
        if int(data.get("version", 1)) < 2:
            return _from_v1(result, data.get("rows"))
        return cls(**{k: result.get(k) for k in cls.RESULT_FIELDS},
                   rows=int(data.get("rows") or 0), duplicates=int(data.get("duplicates") or 0), noted=int(data.get("noted") or 0),
                   images=int(data.get("images") or 0),
                   failed_sample=list(data.get("failed_sample") or []), noted_sample=list(data.get("noted_sample") or []),
                   processed_sample=list(data.get("processed_sample") or []))

    def save(self, run_dir_path: Path) -> None:
        files.write_json_atomic(Path(run_dir_path) / "reconcile.json", self.to_json())

    @classmethod
    def load(cls, run_dir_path: Path) -> Decisions | None:
        """reconcile.json, or None when absent or damaged (reconcile then decides again from the bucket)."""
        try:
            return cls.from_json(files.read_json(Path(run_dir_path) / "reconcile.json"))
        except (OSError, ValueError, TypeError, KeyError):
            return None


def _from_v1(result: dict[str, Any], rows: object) -> Decisions:
    if not isinstance(rows, list):
        raise ValueError("reconcile.json version 1 holds no rows")
    from cog_pipeline.run.manifest import ManifestRow, parse_row

    decisions = Decisions()
    for row in rows:
        note = str(row.get("note") or "")
        parsed = parse_row(int(row["line"]), str(row.get("text", "")))
        decisions.add(int(row["line"]), str(row.get("text", "")), str(row.get("status")), str(row.get("reason") or ""),
                      note, duplicate=note.startswith("duplicate of line"), key=parsed.key if isinstance(parsed, ManifestRow) else None)
    for name in Decisions.RESULT_FIELDS:  # the counts as they were published
        setattr(decisions, name, result.get(name))
    return decisions
