"""Reconcile: decide, for every manifest row, processed or failed, and write the result files.

The output bucket is the truth: a row is processed only when its COG and its JPEG are there and were
written by this run (not older than the claim, by the store's own clock). Job records and the pre-flight
file only supply the *reason* a row failed. Decisions are saved in the run directory before anything is
written to the bucket, so a crash half-way through is finished by running reconcile again, with the same
result, and the processing file is removed only after the result files are safely in the bucket.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import locking
from .claim import fence_before_results, write_recognised
from .listing import find_keys
from .manifest import Manifest, ManifestRow, parse_manifest
from .naming import RunNames
from .rundir import RECONCILED, RunDir
from .store import ObjectInfo, ObjectStore, PreconditionFailed, StoreError, open_store

PROCESSED = "processed"
FAILED = "failed"


@dataclass(frozen=True)
class RowOutcome:
    line: int
    text: str
    status: str  # processed | failed
    reason: str = ""
    note: str = ""  # e.g. a band-count warning on a processed row


@dataclass(frozen=True)
class ReconcileResult:
    processed: int
    failed: int
    processed_key: str | None
    failed_key: str | None
    reasons_key: str | None
    already_done: bool = False


def _second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def written_since(obj: ObjectInfo, claimed_at: datetime | None) -> bool:
    """The object was written after the claim (to the second: some stores keep no finer time)."""
    return claimed_at is None or _second(obj.last_modified) >= _second(claimed_at)


def decide(
    manifest: Manifest,
    outputs: dict[str, Any],
    claimed_at: datetime | None,
    preflight: dict[str, Any],
    records: dict[str, dict[str, Any]],
    output_prefix: str = "",
) -> list[RowOutcome]:
    """Pure decision logic: every row of the manifest gets exactly one outcome (outputs at output_prefix + key)."""
    pre_failed = {int(item["line"]): str(item["reason"]) for item in preflight.get("failed", [])}
    record_by_line = {int(r["line"]): r for r in records.values() if r.get("line") is not None}
    outcomes: dict[int, RowOutcome] = {}

    for rejected in manifest.rejected:
        outcomes[rejected.line] = RowOutcome(rejected.line, rejected.text, FAILED, rejected.reason)

    def judge(row: ManifestRow) -> RowOutcome:
        if row.line in pre_failed:
            return RowOutcome(row.line, row.text, FAILED, pre_failed[row.line])
        record = record_by_line.get(row.line)
        tif_key, jpg_key = output_prefix + row.key, output_prefix + row.jpg_key
        tif, jpg = outputs.get(tif_key), outputs.get(jpg_key)
        fresh = [o for o in (tif, jpg) if o is not None and written_since(o, claimed_at)]
        foreign = _not_this_jobs(record, ((tif_key, tif), (jpg_key, jpg)))
        if len(fresh) == 2 and foreign:
            return RowOutcome(row.line, row.text, FAILED, "the object at " + ", ".join(foreign) + " is not this row's output (its ETag/size differ from what the job uploaded)")
        if len(fresh) == 2:
            note = str(record.get("warning") or "") if record else ""
            return RowOutcome(row.line, row.text, PROCESSED, note=note)
        if record is not None and record.get("status") == "failed":
            category, detail = str(record.get("category") or ""), str(record.get("reason") or "")
            reason = detail if detail.split(":")[0] in (category, category.split("_")[0]) else f"{category}: {detail}"
            if record.get("attempts", 1) > 1:
                reason += f" (after {record['attempts']} attempts)"
            return RowOutcome(row.line, row.text, FAILED, reason)
        missing = [k for k, o in ((tif_key, tif), (jpg_key, jpg)) if o is None]
        stale = [k for k, o in ((tif_key, tif), (jpg_key, jpg)) if o is not None and o not in fresh]
        parts = []
        if missing:
            parts.append("missing from the output bucket: " + ", ".join(missing))
        if stale:
            parts.append("only stale outputs from an earlier run: " + ", ".join(stale))
        if record is None:
            parts.append("no job record (the job did not run or did not finish)")
        return RowOutcome(row.line, row.text, FAILED, "; ".join(parts))

    for row in manifest.rows:
        outcomes[row.line] = judge(row)
    for duplicate, first_line in manifest.duplicates:
        first = outcomes[first_line]
        reason = f"duplicate of line {first_line}" + (f": {first.reason}" if first.reason else "")
        outcomes[duplicate.line] = RowOutcome(
            duplicate.line, duplicate.text, first.status, reason if first.status == FAILED else "", f"duplicate of line {first_line}, converted once"
        )
    return [outcomes[line] for line in sorted(outcomes)]


def _not_this_jobs(record: dict[str, Any] | None, found: tuple[tuple[str, Any], ...]) -> list[str]:
    """Keys whose listed object differs from what the row's job recorded right after uploading it.

    Jobs that record no outputs (Pegasus stages outputs itself) are trusted on freshness alone.
    """
    uploaded = (record or {}).get("outputs") or {}
    foreign = []
    for key, info in found:
        mine = uploaded.get(key)
        if info is None or not isinstance(mine, dict):
            continue
        if str(mine.get("etag")) != str(info.etag) or int(mine.get("size", -1)) != int(info.size):
            foreign.append(key)
    return foreign


def _csv_rows(outcomes: list[RowOutcome], status: str, raw_by_line: dict[int, bytes] | None = None) -> bytes:
    """The rows with this status, each exactly as the manifest held it (its bytes, whatever the encoding)."""
    raw_by_line = raw_by_line or {}
    return b"".join(raw_by_line.get(o.line, o.text.encode("utf-8")) + b"\n" for o in outcomes if o.status == status)


def _reasons_csv(outcomes: list[RowOutcome]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["line", "row", "reason"])
    for o in outcomes:
        if o.status == FAILED:
            writer.writerow([o.line, o.text, o.reason])
    return buffer.getvalue().encode("utf-8")


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


def _saved_decisions(run_dir: RunDir) -> dict[str, Any] | None:
    """reconcile.json, or None when it is absent or damaged: decisions are recomputed from the bucket (the
    same outputs, the same claim time give the same decisions), so a damaged file never wedges the run."""
    try:
        saved = run_dir.read_json(RunDir.RECONCILE)
    except (ValueError, UnicodeDecodeError):
        return None
    ok = isinstance(saved, dict) and isinstance(saved.get("result"), dict) and isinstance(saved.get("rows"), list)
    return saved if ok else None


def _reconcile(run_dir: RunDir, input_store: ObjectStore | None, output_store: ObjectStore | None) -> ReconcileResult:
    info = run_dir.load()
    names = RunNames(info.manifest_key, info.timestamp)
    saved = _saved_decisions(run_dir)
    if info.state == RECONCILED and saved is not None:
        return ReconcileResult(**{**saved["result"], "already_done": True})
    config = info.store_config
    input_store = input_store or open_store(info.input_bucket, config)

    if saved is None:
        output_store = output_store or open_store(info.output_bucket, config)
        manifest = parse_manifest(run_dir.file(RunDir.MANIFEST).read_bytes())
        prefix = info.output_prefix or ""  # same-bucket mode: outputs at <prefix><key>
        wanted = [prefix + k for row in manifest.rows for k in (row.key, row.jpg_key)]
        outputs = find_keys(output_store, wanted)
        claimed_at = datetime.fromisoformat(info.claimed_at) if info.claimed_at else None
        outcomes = decide(manifest, outputs, claimed_at, run_dir.read_json(RunDir.PREFLIGHT, {}), run_dir.job_records(), output_prefix=prefix)
        n_processed = sum(o.status == PROCESSED for o in outcomes)
        n_failed = len(outcomes) - n_processed
        result = ReconcileResult(
            processed=n_processed,
            failed=n_failed,
            # Each file only when it has rows, as the original; but an empty manifest still gets a (empty)
            # processed file, so whoever uploaded it sees that it was handled.
            processed_key=names.processed_key if n_processed or not outcomes else None,
            failed_key=names.failed_key if n_failed else None,
            reasons_key=names.reasons_key if n_failed else None,
        )
        results_dir = run_dir.path / RunDir.RESULTS
        results_dir.mkdir(exist_ok=True)
        files = {
            result.processed_key: _csv_rows(outcomes, PROCESSED, manifest.raw_by_line()),
            result.failed_key: _csv_rows(outcomes, FAILED, manifest.raw_by_line()),
            result.reasons_key: _reasons_csv(outcomes),
        }
        for key, data in files.items():
            if key:
                (results_dir / key.rpartition("/")[2]).write_bytes(data)
        saved = {
            "result": {k: v for k, v in result.__dict__.items() if k != "already_done"},
            "rows": [o.__dict__ for o in outcomes],
        }
        run_dir.write_json(RunDir.RECONCILE, saved)

    result = ReconcileResult(**saved["result"])
    results_dir = run_dir.path / RunDir.RESULTS
    publish = {k: results_dir / k.rpartition("/")[2] for k in (result.processed_key, result.failed_key, result.reasons_key) if k}
    fence_before_results(input_store, run_dir, names, publish)  # ClaimLost: the run is ABANDONED, nothing written
    for key, path in publish.items():
        # Created only if absent (a repeat recognises its own bytes): never over another run's result file.
        try:
            write_recognised(input_store, key, path.read_bytes())
        except PreconditionFailed:
            raise StoreError(f"{input_store.url(key)} exists with other content (another run's result file); not overwritten") from None
    input_store.delete(names.processing_key)
    run_dir.set_state(RECONCILED)
    return result
