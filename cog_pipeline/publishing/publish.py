"""What an operator gets once a run is reconciled: provenance.jsonl, STAC records (when asked), the run report.

`pipeline.finish` calls `after_reconcile` right after `reconcile`. Nothing here may cost the result files,
which are already in the bucket: every step is best effort and a failure is one warning line. The report is
written last, so "report.html exists" means every step has run; a finish that finds a reconciled run without
it (a crash in between, or a run reconciled by an older version) runs the steps again. Each step rewrites
its files whole, so running them twice gives the same files.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cog_pipeline.run.rundir import Decisions, Preflight, ProcessedOutput, RunDir, RunInfo
from cog_pipeline.storage.store import ObjectInfo, ObjectStore, open_store

Echo = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def processed_outputs(run_dir: RunDir, info: RunInfo, output_store: ObjectStore, decisions: Decisions | None,
                      preflight: Preflight | None) -> list[ProcessedOutput]:
    """Every processed row's outputs (duplicates once, in manifest order): as reconcile handed them over, or,
    when this process did not reconcile the run (a publish a crash interrupted), decided again from the bucket."""
    if decisions is not None and decisions.outputs is not None:
        return decisions.outputs
    from cog_pipeline.publishing.reconcile import decided_rows

    return [o.output for o in decided_rows(run_dir, info, output_store, preflight) if o.output is not None]


def listed_versions(preflight: Preflight | None, keys: set[str]) -> dict[str, ObjectInfo] | None:
    """The version (ETag, size) of each of `keys` the workflow generator listed; None when it recorded none.
    (last_modified is not recorded: the epoch stands in.)"""
    versions = preflight.versions(keys) if preflight is not None else None
    if versions is None:
        return None
    epoch = datetime.fromtimestamp(0, timezone.utc)
    return {key: ObjectInfo(key, size, etag, epoch) for key, (size, etag) in versions.items()}


def needs_publishing(run_dir: RunDir) -> bool:
    """A reconciled run whose report is missing has not been through `after_reconcile` completely."""
    from cog_pipeline.publishing.report import REPORT_NAME

    return not (run_dir.path / REPORT_NAME).is_file()


def write_run_provenance(run_dir: RunDir, info: RunInfo, input_store: ObjectStore, processed: list[ProcessedOutput],
                         preflight: Preflight | None) -> tuple[int, dict[str, ObjectInfo]]:
    """provenance.jsonl from reconcile's outputs and the inputs' versions: (lines, those versions).

    Each input's version is the one the workflow generator listed (preflight-sizes.csv): each job read exactly
    that version (If-Match) and its COG's lineage names it, so a listing now would name an image re-uploaded
    since. A run generated before the ETags were recorded lists its inputs, as then."""
    from cog_pipeline.publishing.provenance import record_provenance
    from cog_pipeline.storage.listing import find_keys

    sources = listed_versions(preflight, {o.key for o in processed})
    if sources is None:
        sources = find_keys(input_store, (o.key for o in processed))
    lines = record_provenance(run_dir.path, processed=processed, sources=sources,
                              source_bucket=info.input_bucket, output_bucket=info.output_bucket)
    return lines, sources


def write_run_stac(info: RunInfo, output_store: ObjectStore, processed: list[ProcessedOutput]) -> list[str]:
    """An Item beside each processed COG and the manifest's Collection (only for runs claimed with --stac)."""
    from cog_pipeline.publishing.stac import write_stac

    outputs = [{name: obj.key for name, obj in o.objects.items()} for o in processed]  # where reconcile found them (<prefix><key>)
    return write_stac(output_store, outputs, info.manifest_key, base_url=info.stac_base_url) if outputs else []


def write_and_upload_report(run_dir: RunDir, info: RunInfo, input_store: ObjectStore, output_store: ObjectStore,
                            processed: list[ProcessedOutput], decisions: Decisions | None,
                            sources: dict[str, ObjectInfo] | None, preflight: Preflight | None) -> tuple[Path, str]:
    """report.html in the run directory, then the same file beside the result files: (path, key)."""
    from cog_pipeline.publishing.report import upload_report, write_report

    path = write_report(run_dir.path, output_store=output_store, input_store=input_store, info=info,
                        decisions=decisions, processed=processed, sources=sources, preflight=preflight)
    return path, upload_report(run_dir.path, input_store, info=info)


def after_reconcile(run_dir: RunDir, input_store: ObjectStore | None = None, output_store: ObjectStore | None = None,
                    echo: Echo | None = None, decisions: Decisions | None = None, info: RunInfo | None = None,
                    preflight: Preflight | None = None) -> dict[str, Any]:
    """Provenance, STAC (when run.json says `stac`), report: each best effort, one warning line when it fails.

    The documents reconcile hands over (ReconcileResult): `decisions`, with the outputs its listing found,
    `info` (run.json as reconcile wrote it) and `preflight`; whatever is not given is read from the run
    directory. Returns what was written: {"provenance": lines, "stac": keys, "report": path, "report_key": key}.
    """
    say = echo or _stderr
    info = info or run_dir.load()
    done: dict[str, Any] = {}
    try:
        input_store = input_store or open_store(info.input_bucket, info.store_config)
        output_store = output_store or open_store(info.output_bucket, info.store_config)
        if decisions is None:
            decisions = Decisions.load(run_dir.path)
        if preflight is None:
            preflight = Preflight.load(run_dir.path)
        processed = processed_outputs(run_dir, info, output_store, decisions, preflight)
    except Exception as exc:  # noqa: BLE001 - the result files are out; this is a nicety
        say(f"warning: {run_dir.path.name}: no report or provenance: cannot read the buckets: {exc}")
        return done
    sources: dict[str, ObjectInfo] | None = None

    def provenance() -> int:
        nonlocal sources
        lines, sources = write_run_provenance(run_dir, info, input_store, processed, preflight)
        return lines

    steps: list[tuple[str, Callable[[], Any]]] = [("provenance", provenance)]
    if info.stac:
        steps.append(("stac", lambda: write_run_stac(info, output_store, processed)))
    steps.append(("report", lambda: write_and_upload_report(run_dir, info, input_store, output_store, processed, decisions, sources, preflight)))
    for name, step in steps:
        try:
            done[name] = step()
        except Exception as exc:  # noqa: BLE001 - never fails the reconcile; one line says what is missing
            say(f"warning: {run_dir.path.name}: {name} not written: {type(exc).__name__}: {one_line(str(exc))}")
    if "report" in done:  # the commands print its path on stdout (scan last, reconcile after the counts)
        done["report"], done["report_key"] = done["report"]
    return done


def one_line(text: str) -> str:
    return " ".join(text.split())[:300]
