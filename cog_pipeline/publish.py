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
from pathlib import Path
from typing import Any

from .rundir import RunDir
from .store import ObjectStore, open_store

Echo = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def processed_outputs(run_dir: RunDir) -> list[tuple[str, str]]:
    """(COG key, JPEG key) of every processed row of reconcile.json, duplicates once, in manifest order."""
    from .manifest import ManifestRow, parse_row

    saved = run_dir.read_json(RunDir.RECONCILE, {}) or {}
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for row in saved.get("rows", []):
        if row.get("status") != "processed":
            continue
        parsed = parse_row(int(row["line"]), str(row["text"]))
        if isinstance(parsed, ManifestRow) and parsed.key not in seen:
            seen.add(parsed.key)
            out.append((parsed.key, parsed.jpg_key))
    return out


def needs_publishing(run_dir: RunDir) -> bool:
    """A reconciled run whose report is missing has not been through `after_reconcile` completely."""
    from .report import REPORT_NAME

    return not (run_dir.path / REPORT_NAME).is_file()


def write_run_provenance(run_dir: RunDir, input_store: ObjectStore, output_store: ObjectStore) -> int:
    """provenance.jsonl from the inputs' versions the workflow listed (each job read that version) and a listing
    of the outputs, for the processed rows' keys; returns its lines."""
    from .listing import find_keys, listed_versions
    from .provenance import record_provenance

    info = run_dir.load()
    pairs = processed_outputs(run_dir)
    prefix = info.output_prefix or ""
    sources = listed_versions(run_dir.read_json(RunDir.PREFLIGHT, {}), [k for k, _ in pairs])
    if sources is None:  # generated before the versions were recorded: a listing, as then
        sources = find_keys(input_store, [k for k, _ in pairs])
    # Same-bucket mode: the outputs are at <prefix><key>; each is recorded under its row's key, with its own key.
    listed = find_keys(output_store, [prefix + k for pair in pairs for k in pair])
    outputs = {key[len(prefix):]: found for key, found in listed.items()}
    return record_provenance(run_dir.path, sources=sources, outputs=outputs,
                             source_bucket=info.input_bucket, output_bucket=info.output_bucket)


def write_run_stac(run_dir: RunDir, output_store: ObjectStore) -> list[str]:
    """An Item beside each processed COG and the manifest's Collection (only for runs claimed with --stac)."""
    from .stac import write_stac

    pairs = processed_outputs(run_dir)
    info = run_dir.load()
    prefix = info.output_prefix or ""
    outputs = [(prefix + cog, prefix + jpg) for cog, jpg in pairs]
    return write_stac(output_store, outputs, info.manifest_key, base_url=info.stac_base_url) if outputs else []


def write_and_upload_report(run_dir: RunDir, input_store: ObjectStore, output_store: ObjectStore) -> tuple[Path, str]:
    """report.html in the run directory, then the same file beside the result files: (path, key)."""
    from .report import upload_report, write_report

    path = write_report(run_dir.path, output_store=output_store, input_store=input_store)
    return path, upload_report(run_dir.path, input_store)


def after_reconcile(run_dir: RunDir, input_store: ObjectStore | None = None, output_store: ObjectStore | None = None,
                    echo: Echo | None = None) -> dict[str, Any]:
    """Provenance, STAC (when run.json says `stac`), report: each best effort, one warning line when it fails.

    Returns what was written: {"provenance": lines, "stac": keys, "report": path, "report_key": key}.
    """
    say = echo or _stderr
    info = run_dir.load()
    done: dict[str, Any] = {}
    try:
        input_store = input_store or open_store(info.input_bucket, info.store_config)
        output_store = output_store or open_store(info.output_bucket, info.store_config)
    except Exception as exc:  # noqa: BLE001 - the result files are out; this is a nicety
        say(f"warning: {run_dir.path.name}: no report or provenance: cannot open the buckets: {exc}")
        return done
    steps: list[tuple[str, Callable[[], Any]]] = [("provenance", lambda: write_run_provenance(run_dir, input_store, output_store))]
    if info.stac:
        steps.append(("stac", lambda: write_run_stac(run_dir, output_store)))
    steps.append(("report", lambda: write_and_upload_report(run_dir, input_store, output_store)))
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
