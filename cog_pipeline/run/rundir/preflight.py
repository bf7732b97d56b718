"""What pre-flight decided before any job: `Preflight` (preflight.json) plus two line files for the per-row facts.

preflight.json is a summary: how many rows got a job, failed, or repeat an earlier row, and the first
`SAMPLE_ROWS` failed rows and duplicates. Every failed row, with its reason, is in preflight-failed.csv
(`line,reason`, in line order), which reconcile reads as a stream beside the manifest; each job's input size
is in preflight-sizes.csv (`key,bytes`), which the local engine reads to start big images first.

Written by the workflow generator (pegasus/workflow_gen.py); read by reconcile, the report, the status
table and the local engine. Version 1 (one JSON object with every failed row and every size) is still read.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cog_pipeline.run.rundir import files
from cog_pipeline.run.rundir.files import SAMPLE_ROWS

PREFLIGHT_VERSION = 2  # 1: every failed row and every size inside preflight.json


@dataclass
class Preflight:
    jobs: int = 0
    failed: int = 0  # rows failed before any job
    duplicates: int = 0  # rows that repeat an earlier row's key (converted once)
    failed_sample: list[dict[str, Any]] = field(default_factory=list)  # the first failed rows: line, text, reason
    duplicate_sample: list[dict[str, Any]] = field(default_factory=list)  # line, text, duplicate_of
    version: int = PREFLIGHT_VERSION
    # Version 1 kept every failed row and size in the JSON: they are served from here instead of the line files.
    _v1_failed: list[dict[str, Any]] | None = field(default=None, repr=False, compare=False)
    _v1_sizes: dict[str, int] | None = field(default=None, repr=False, compare=False)
    directory: Path | None = field(default=None, repr=False, compare=False)  # the run directory it was read from

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_") and k != "directory"}

    @classmethod
    def from_json(cls, data: object) -> Preflight:
        if not isinstance(data, dict):
            raise ValueError("preflight.json does not hold a JSON object")
        if int(data.get("version", 1)) < 2:  # version 1: lists, migrated to counts and samples
            failed = [f for f in data.get("failed") or [] if isinstance(f, dict)]
            duplicates = [d for d in data.get("duplicates") or [] if isinstance(d, dict)]
            return cls(jobs=int(data.get("jobs") or 0), failed=len(failed), duplicates=len(duplicates),
                       failed_sample=failed[:SAMPLE_ROWS], duplicate_sample=duplicates[:SAMPLE_ROWS],
                       _v1_failed=failed, _v1_sizes=dict(data.get("sizes") or {}))
        return cls(jobs=int(data.get("jobs") or 0), failed=int(data.get("failed") or 0), duplicates=int(data.get("duplicates") or 0),
                   failed_sample=list(data.get("failed_sample") or []), duplicate_sample=list(data.get("duplicate_sample") or []))

    @classmethod
    def load(cls, run_dir_path: Path) -> Preflight | None:
        """preflight.json, or None when the workflow was never generated (or the file cannot be read)."""
        try:
            found = cls.from_json(files.read_json(Path(run_dir_path) / "preflight.json"))
        except (OSError, ValueError, TypeError):
            return None
        found.directory = Path(run_dir_path)
        return found

    def iter_failed(self) -> Iterator[tuple[int, str]]:
        """(line, reason) of every row pre-flight failed, in line order, read as a stream."""
        if self._v1_failed is not None:
            yield from sorted((int(f["line"]), str(f.get("reason", ""))) for f in self._v1_failed)
            return
        if self.directory is not None:
            yield from iter_failed_file(self.directory / FAILED_FILE)

    def sizes(self) -> dict[str, int]:
        """Each job's input size in bytes, by key (rows without a job are not there)."""
        if self._v1_sizes is not None:
            return {str(k): int(v or 0) for k, v in self._v1_sizes.items()}
        return {key: size for key, size, _ in self._jobs()}

    def versions(self, keys: set[str]) -> dict[str, tuple[int, str]] | None:
        """(size, ETag) of each of `keys` as pre-flight listed it: the version the job reads (If-Match) and its
        lineage names. One pass over the line file, keeping only `keys`. None for a run generated before the
        ETags were recorded."""
        if self._v1_sizes is not None:
            return None
        found: dict[str, tuple[int, str]] = {}
        listed = 0
        for key, size, etag in self._jobs():
            if etag is None:
                return None
            listed += 1
            if key in keys:
                found[key] = (size, etag)
        return found if listed or not self.jobs else None  # a missing line file names no version

    def _jobs(self) -> Iterator[tuple[str, int, str | None]]:
        """(key, size, etag or None) of every job's input, from preflight-sizes.csv."""
        if self.directory is None:
            return
        try:
            with open(self.directory / SIZES_FILE, encoding="utf-8", newline="") as fh:
                for row in csv.reader(fh):
                    yield row[0], int(row[1]), (row[2] if len(row) > 2 else None)
        except (OSError, ValueError, IndexError):
            return


FAILED_FILE = "preflight-failed.csv"
SIZES_FILE = "preflight-sizes.csv"


def iter_failed_file(path: Path) -> Iterator[tuple[int, str]]:
    try:
        fh = open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        return
    with fh:
        for line, reason in csv.reader(fh):
            yield int(line), reason


class PreflightWriter:
    """Writes pre-flight's decisions as they are made: failed rows and sizes to their line files, a bounded
    sample and the counts to preflight.json (by `close`, last, so preflight.json says the files are complete).

    Failed rows must be given in line order (reconcile merges them with the manifest)."""

    def __init__(self, run_dir_path: Path) -> None:
        self.dir = Path(run_dir_path)
        self.summary = Preflight()
        self._failed = open(self.dir / FAILED_FILE, "w", encoding="utf-8", newline="")
        self._sizes = open(self.dir / SIZES_FILE, "w", encoding="utf-8", newline="")
        self._failed_csv = csv.writer(self._failed, lineterminator="\n")
        self._sizes_csv = csv.writer(self._sizes, lineterminator="\n")
        self._last_line = 0

    def failed(self, line: int, text: str, reason: str) -> None:
        if line <= self._last_line:
            raise ValueError(f"pre-flight failures out of line order: {line} after {self._last_line}")
        self._last_line = line
        self._failed_csv.writerow([line, reason])
        self.summary.failed += 1
        if len(self.summary.failed_sample) < SAMPLE_ROWS:
            self.summary.failed_sample.append({"line": line, "text": text, "reason": reason})

    def duplicate(self, line: int, text: str, first_line: int) -> None:
        self.summary.duplicates += 1
        if len(self.summary.duplicate_sample) < SAMPLE_ROWS:
            self.summary.duplicate_sample.append({"line": line, "text": text, "duplicate_of": first_line})

    def job(self, key: str, size: int, etag: str) -> None:
        self.summary.jobs += 1
        self._sizes_csv.writerow([key, size, etag])

    def close(self) -> Preflight:
        for fh in (self._failed, self._sizes):
            fh.flush()
            fh.close()
        files.write_json_atomic(self.dir / "preflight.json", self.summary.to_json())
        self.summary.directory = self.dir
        return self.summary

