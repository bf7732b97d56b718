"""Reconcile: decide, for every manifest row, processed or failed, and write the result files.

The output bucket is the truth: a row is processed only when each of its outputs (cog_pipeline.outputs: the
COG and the JPEG) is there and was written by this run (not older than the claim, by the store's own clock).
Job records and the pre-flight file only supply the *reason* a row failed. Decisions are saved in the run
directory before anything is written to the bucket, so a crash half-way through is finished by running
reconcile again, with the same result, and the processing file is removed only after the result files are
safely in the bucket.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cog_pipeline.outputs import declared
from cog_pipeline.run.claim import fence_before_results, write_recognised
from cog_pipeline.run.manifest import DuplicateRow, ManifestRow, Parsed, RejectedRow, iter_manifest_file
from cog_pipeline.run.naming import RunNames, job_id_of
from cog_pipeline.run.rundir import RECONCILED, Decisions, JobRecord, Preflight, ProcessedOutput, RunDir, RunInfo
from cog_pipeline.run.rundir.jobs import job_file
from cog_pipeline.storage import locking
from cog_pipeline.storage.listing import find_keys, written_since
from cog_pipeline.storage.store import ObjectInfo, ObjectStore, PreconditionFailed, StoreError, open_store

PROCESSED = "processed"
FAILED = "failed"


@dataclass(frozen=True)
class RowOutcome:
    line: int
    text: str
    status: str  # processed | failed
    reason: str = ""
    note: str = ""  # e.g. a band-count warning on a processed row
    raw: bytes = field(default=b"", repr=False, compare=False)  # the row's bytes, for the result files
    duplicate: bool = False
    output: ProcessedOutput | None = field(default=None, repr=False, compare=False)  # processed, not a duplicate


@dataclass(frozen=True)
class ReconcileResult:
    processed: int
    failed: int
    processed_key: str | None
    failed_key: str | None
    reasons_key: str | None
    already_done: bool = False
    # The documents handed on to publishing: reconcile's decisions, run.json as written, the pre-flight's
    # summary (None when this reconcile did not read it).
    decisions: Decisions | None = field(default=None, repr=False, compare=False)
    info: RunInfo | None = field(default=None, repr=False, compare=False)
    preflight: Preflight | None = field(default=None, repr=False, compare=False)


class _PreFailed:
    """Pre-flight's failed rows, (line, reason) in line order, looked up by ascending line as a stream."""

    def __init__(self, failed: Iterable[tuple[int, str]]) -> None:
        self._items = iter(failed)
        self._next = next(self._items, None)

    def reason(self, line: int) -> str | None:
        while self._next is not None and self._next[0] < line:
            self._next = next(self._items, None)
        if self._next is not None and self._next[0] == line:
            return self._next[1]
        return None


def wanted_outputs(parsed: Iterable[Parsed], pre_failed: Iterable[tuple[int, str]], output_prefix: str,
                   firsts: set[int]) -> Iterator[str]:
    """The output keys reconcile must look for: those of every row that got a job. Adds to `firsts` the
    lines whose outcome a later duplicate repeats."""
    pre = _PreFailed(pre_failed)
    kinds = declared()
    for item in parsed:
        if isinstance(item, DuplicateRow):
            firsts.add(item.first_line)
        elif isinstance(item, ManifestRow) and pre.reason(item.line) is None:
            for kind in kinds:
                yield output_prefix + kind.key_of(item.key)


def decide(
    parsed: Iterable[Parsed],
    outputs: dict[str, ObjectInfo],
    claimed_at: datetime | None,
    pre_failed: Iterable[tuple[int, str]],
    record_for: Callable[[int], JobRecord | None],
    output_prefix: str = "",
    firsts: set[int] | None = None,
) -> Iterator[RowOutcome]:
    """Every row gets exactly one outcome, in line order, as a stream (outputs at output_prefix + key).

    `pre_failed`: pre-flight's failures in line order; `record_for(line)`: the row's job record, if any;
    `firsts`: the lines later duplicates refer to (only their outcomes are remembered; None: all)."""
    pre = _PreFailed(pre_failed)
    remembered: dict[int, RowOutcome] = {}
    kinds = declared()

    def judge(row: ManifestRow) -> RowOutcome:
        pre_reason = pre.reason(row.line)
        if pre_reason is not None:
            return RowOutcome(row.line, row.text, FAILED, pre_reason, raw=row.raw)
        record = record_for(row.line)
        found = tuple((key, outputs.get(key)) for key in (output_prefix + kind.key_of(row.key) for kind in kinds))
        fresh = [o for _, o in found if o is not None and written_since(o, claimed_at)]
        foreign = _not_this_jobs(record, found)
        if len(fresh) == len(kinds) and foreign:
            return RowOutcome(row.line, row.text, FAILED, "the object at " + ", ".join(foreign) + " is not this row's output (its ETag/size differ from what the job uploaded)", raw=row.raw)
        if len(fresh) == len(kinds):
            note = str(record.warning or "") if record else ""
            objects = {kind.name: o for kind, (_, o) in zip(kinds, found)}
            return RowOutcome(row.line, row.text, PROCESSED, note=note, raw=row.raw, output=ProcessedOutput(row.line, row.key, objects, note))
        if record is not None and record.status == "failed":
            category, detail = str(record.category or ""), str(record.reason or "")
            reason = detail if detail.split(":")[0] in (category, category.split("_")[0]) else f"{category}: {detail}"
            if (record.attempts or 1) > 1:
                reason += f" (after {record.attempts} attempts)"
            return RowOutcome(row.line, row.text, FAILED, reason, raw=row.raw)
        missing = [k for k, o in found if o is None]
        stale = [k for k, o in found if o is not None and o not in fresh]
        parts = []
        if missing:
            parts.append("missing from the output bucket: " + ", ".join(missing))
        if stale:
            parts.append("only stale outputs from an earlier run: " + ", ".join(stale))
        if record is None:
            parts.append("no job record (the job did not run or did not finish)")
        return RowOutcome(row.line, row.text, FAILED, "; ".join(parts), raw=row.raw)

    for item in parsed:
        if isinstance(item, RejectedRow):
            outcome = RowOutcome(item.line, item.text, FAILED, item.reason, raw=item.raw)
        elif isinstance(item, DuplicateRow):
            first = remembered[item.first_line]
            reason = f"duplicate of line {item.first_line}" + (f": {first.reason}" if first.reason else "")
            outcome = RowOutcome(item.line, item.row.text, first.status, reason if first.status == FAILED else "",
                                 f"duplicate of line {item.first_line}, converted once", raw=item.row.raw, duplicate=True)
        else:
            outcome = judge(item)
            if firsts is None or item.line in firsts:
                remembered[item.line] = outcome
        yield outcome


def _not_this_jobs(record: JobRecord | None, found: tuple[tuple[str, Any], ...]) -> list[str]:
    """Keys whose listed object differs from what the row's job recorded right after uploading it.

    Jobs that record no outputs (Pegasus stages outputs itself) are trusted on freshness alone.
    """
    uploaded = (record.outputs if record is not None else None) or {}
    foreign = []
    for key, info in found:
        mine = uploaded.get(key)
        if info is None or not isinstance(mine, dict):
            continue
        if str(mine.get("etag")) != str(info.etag) or int(mine.get("size", -1)) != int(info.size):
            foreign.append(key)
    return foreign


def record_reader(run_dir: RunDir) -> Callable[[int], JobRecord | None]:
    """A row's job record by its line, read when asked (jobs/<job id>.json): records are never all in memory."""
    def record_for(line: int) -> JobRecord | None:
        record = JobRecord.load(job_file(run_dir.jobs_dir, job_id_of(line)))
        return record if record is not None and record.line == line else None

    return record_for


def decided_rows(run_dir: RunDir, info: RunInfo, output_store: ObjectStore, preflight: Preflight | None) -> Iterator[RowOutcome]:
    """Every row's outcome, from the manifest (read twice, as streams), pre-flight's failures, the job
    records and one listing of the output keys of the rows that got a job."""
    manifest = run_dir.file(RunDir.MANIFEST)
    prefix = info.output_prefix or ""  # same-bucket mode: outputs at <prefix><key>

    def pre_failed() -> Iterable[tuple[int, str]]:
        return preflight.iter_failed() if preflight is not None else ()

    firsts: set[int] = set()
    outputs = find_keys(output_store, wanted_outputs(iter_manifest_file(manifest), pre_failed(), prefix, firsts))
    claimed_at = datetime.fromisoformat(info.claimed_at) if info.claimed_at else None
    return decide(iter_manifest_file(manifest), outputs, claimed_at, pre_failed(), record_reader(run_dir), prefix, firsts)


class _ResultFiles:
    """The processed, failed and reasons files, written row by row into results/ under temporary names."""

    PARTS = (PROCESSED, FAILED, "reasons")

    def __init__(self, results_dir: Path) -> None:
        results_dir.mkdir(exist_ok=True)
        self.dir = results_dir
        self.files = {part: open(results_dir / f".{part}.part", "wb") for part in self.PARTS}
        self.reasons = csv.writer(_TextSink(self.files["reasons"]), lineterminator="\n")
        self.reasons.writerow(["line", "row", "reason"])

    def add(self, outcome: RowOutcome) -> None:
        # Each row exactly as the manifest held it (its bytes, whatever the encoding).
        self.files[outcome.status].write((outcome.raw or outcome.text.encode("utf-8")) + b"\n")
        if outcome.status == FAILED:
            self.reasons.writerow([outcome.line, outcome.text, outcome.reason])

    def finish(self, keys: dict[str, str | None]) -> None:
        """Each file under its key's name, or removed when its key is None (no such file)."""
        for part, fh in self.files.items():
            fh.close()
            path, key = self.dir / f".{part}.part", keys[part]
            if key:
                os.replace(path, self.dir / key.rpartition("/")[2])
            else:
                path.unlink()


class _TextSink:
    """A text `write` for csv.writer over a binary file (UTF-8, undecodable text kept as written)."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh

    def write(self, text: str) -> int:
        return self.fh.write(text.encode("utf-8", "surrogateescape"))


def reconcile(
    run_dir: RunDir,
    *,
    input_store: ObjectStore | None = None,
    output_store: ObjectStore | None = None,
) -> ReconcileResult:
    """Write processed/failed files beside the manifest and retire the processing file. Safe to repeat.

    Serialised per run directory: the END hook, a Crondor tick and an operator may all call it at once.
    """
    with _run_lock(run_dir):
        return _reconcile(run_dir, input_store, output_store)


@contextmanager
def _run_lock(run_dir: RunDir) -> Iterator[None]:
    try:
        with locking.held(run_dir.path / ".reconcile.lock", f"the reconcile lock of {run_dir.path.name}"):
            yield
    except locking.LockTimeout as exc:
        raise StoreError(str(exc)) from None


def _reconcile(run_dir: RunDir, input_store: ObjectStore | None, output_store: ObjectStore | None) -> ReconcileResult:
    info = run_dir.load()  # under the run's lock: another process may have reconciled it meanwhile
    names = RunNames(info.manifest_key, info.timestamp)
    # A damaged or absent reconcile.json is decided again from the bucket (the same outputs and claim time
    # give the same decisions), so a damaged file never wedges the run.
    saved = Decisions.load(run_dir.path)
    if info.state == RECONCILED and saved is not None:
        return ReconcileResult(**saved.result, already_done=True, decisions=saved, info=info)
    config = info.store_config
    input_store = input_store or open_store(info.input_bucket, config)

    preflight = None
    if saved is None:
        output_store = output_store or open_store(info.output_bucket, config)
        preflight = Preflight.load(run_dir.path)
        saved = _decide_and_write(run_dir, info, names, output_store, preflight)

    results_dir = run_dir.path / RunDir.RESULTS
    publish = {k: results_dir / k.rpartition("/")[2] for k in (saved.processed_key, saved.failed_key, saved.reasons_key) if k}
    fence_before_results(input_store, run_dir, info, names, publish)  # ClaimLost: the run is ABANDONED, nothing written
    for key, path in publish.items():
        # Created only if absent (a repeat recognises its own bytes): never over another run's result file.
        try:
            write_recognised(input_store, key, path.read_bytes())
        except PreconditionFailed:
            raise StoreError(f"{input_store.url(key)} exists with other content (another run's result file); not overwritten") from None
    input_store.delete(names.processing_key)
    info = run_dir.set_state(RECONCILED)
    return ReconcileResult(**saved.result, decisions=saved, info=info, preflight=preflight)


def _decide_and_write(run_dir: RunDir, info: RunInfo, names: RunNames, output_store: ObjectStore,
                      preflight: Preflight | None) -> Decisions:
    """Decide every row, writing the result files into results/ as the rows stream by; then reconcile.json."""
    decisions = Decisions(outputs=[])
    files = _ResultFiles(run_dir.path / RunDir.RESULTS)
    try:
        for outcome in decided_rows(run_dir, info, output_store, preflight):
            files.add(outcome)
            decisions.add(outcome.line, outcome.text, outcome.status, outcome.reason, outcome.note, outcome.duplicate,
                          outcome.output.key if outcome.output is not None else None)
            if outcome.output is not None:
                decisions.outputs.append(outcome.output)
    except BaseException:
        for fh in files.files.values():
            fh.close()
        raise
    # Each file only when it has rows, as the original; but an empty manifest still gets a (empty) processed
    # file, so whoever uploaded it sees that it was handled.
    decisions.processed_key = names.processed_key if decisions.processed or not decisions.rows else None
    decisions.failed_key = names.failed_key if decisions.failed else None
    decisions.reasons_key = names.reasons_key if decisions.failed else None
    files.finish({PROCESSED: decisions.processed_key, FAILED: decisions.failed_key, "reasons": decisions.reasons_key})
    decisions.save(run_dir.path)
    return decisions
