"""Operator commands (`report`, `provenance`) and pure renderers for `status` (a rich table, or JSON).

Kept apart from cli.py so the main group only has to `main.add_command(report_cmd)` and
`main.add_command(provenance_cmd)`; the status renderers take plain row dicts so any status source works.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cog_pipeline.storage.store import StoreConfig, StoreError, open_store

#: `status --json` keys, in order; the table shows all but `where`, which follows it on a line of its own per run.
STATUS_COLUMNS = ("run", "manifest", "state", "rows", "done", "failed", "age", "engine", "where")


def _store_flags(func: Any) -> Any:
    for option in reversed([
        click.option("-e", "--endpoint", metavar="URL", help="S3-compatible endpoint (default: AWS)."),
        click.option("-a", "--access-key-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="File holding the S3 access key."),
        click.option("-s", "--secret-key-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="File holding the S3 secret key."),
        click.option("--local-root", type=click.Path(file_okay=False, path_type=Path), help="Folders as buckets: bucket NAME is DIR/NAME."),
    ]):
        func = option(func)
    return func


def _config(local_root: Path | None, endpoint: str | None, access: Path | None, secret: Path | None) -> StoreConfig:
    if local_root and (endpoint or access or secret):
        raise click.UsageError("--local-root uses folders as buckets; do not combine it with -e/-a/-s")
    if bool(access) != bool(secret):
        raise click.UsageError("give both -a and -s, or neither")
    return StoreConfig(local_root=local_root.resolve() if local_root else None, endpoint=endpoint,
                       access_key_file=access.resolve() if access else None, secret_key_file=secret.resolve() if secret else None)


def split_location(location: str) -> tuple[str, str]:
    """`s3://bucket/key` or `bucket/key` -> (bucket, key), literally: the key is not URL-decoded, and '#', '?',
    '%' stay part of it (as the AWS CLI reads S3 URIs). Use --bucket/--key to avoid even this split."""
    rest = location[len("s3://"):] if location.startswith("s3://") else location
    bucket, sep, key = rest.partition("/")
    if not sep or not bucket or not key:
        raise click.UsageError(f"LOCATION must be s3://BUCKET/KEY or BUCKET/KEY, not {location!r}")
    return bucket, key


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-thumbnails", is_flag=True, help="Do not reach the output bucket for thumbnails and sizes.")
@click.option("--upload", is_flag=True, help="Also put it beside the result files as <base>report-<TS>.html.")
def report_cmd(run_dir: Path, no_thumbnails: bool, upload: bool) -> None:
    """(Re)write RUN_DIR/report.html: counts, failed rows with their fixes, thumbnails, timings."""
    from cog_pipeline.cli.options import EXIT_USAGE, fail
    from cog_pipeline.publishing.report import upload_report, write_report

    if not (run_dir / "run.json").is_file():
        runs = sorted(p.name for p in run_dir.glob("workflow-run-*") if (p / "run.json").is_file())
        hint = f"; it holds {len(runs)} run(s), e.g. {run_dir / runs[-1]}" if runs else ""
        fail(f"{run_dir} is not a run directory (no run.json){hint}", EXIT_USAGE)
    from cog_pipeline.run.rundir import DamagedRunDir, RunDir

    try:
        info = RunDir(run_dir).load()
    except DamagedRunDir as exc:
        fail(str(exc), EXIT_USAGE)
    output_store = input_store = None
    try:
        if not no_thumbnails:
            output_store = open_store(info.output_bucket, info.store_config)
            input_store = open_store(info.input_bucket, info.store_config)
        path = write_report(run_dir, output_store=output_store, input_store=input_store, info=info)
        click.echo(str(path))
        if upload:
            if input_store is None:
                input_store = open_store(info.input_bucket, info.store_config)
            click.echo(f"uploaded {upload_report(run_dir, input_store, info=info)}")
    except (StoreError, KeyError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@click.command("provenance")
@click.argument("location", required=False)
@click.option("--bucket", help="Output bucket (with --key: no parsing of a location at all).")
@click.option("--key", help="Object key of the COG, taken literally.")
@_store_flags
@click.option("-w", "--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Where workflow-run-<TS>/ directories are: also print the run record.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def provenance_cmd(location: str | None, bucket: str | None, key: str | None, local_root: Path | None, endpoint: str | None,
                   access_key_file: Path | None, secret_key_file: Path | None, work_dir: Path | None, as_json: bool) -> None:
    """Print where the COG at LOCATION (s3://BUCKET/KEY, or BUCKET/KEY with --local-root) came from.

    Reads only the COG's header (ranged reads), never its pixels.
    """
    from cog_pipeline.cli.options import fail
    from cog_pipeline.cli.tick_log import SCHEMA_VERSION
    from cog_pipeline.publishing.provenance import find_run_dir, read_provenance, read_provenance_lines

    if location is not None and (bucket or key):
        raise click.UsageError("give LOCATION or --bucket/--key, not both")
    if location is None and not (bucket and key):
        raise click.UsageError("give LOCATION, or both --bucket and --key")
    if location is not None:
        bucket, key = split_location(location)
    assert bucket is not None and key is not None
    try:
        store = open_store(bucket, _config(local_root, endpoint, access_key_file, secret_key_file))
        stats: dict[str, int] = {}
        lineage = read_provenance(store, key, stats=stats)
    except StoreError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - not a TIFF, damaged header: one clear line
        fail(f"cannot read the header of {bucket}/{key}: {type(exc).__name__}: {exc}")
    run: dict[str, Any] | None = None
    lines: list[dict[str, Any]] = []
    if work_dir and lineage.get("RUN_ID"):
        found = find_run_dir(work_dir, lineage["RUN_ID"])
        if found:
            from cog_pipeline.run.rundir import DamagedRunDir, RunDir

            try:
                run = RunDir(found).load().to_json()
                run.pop("store", None)  # paths of key files: not lineage
            except DamagedRunDir:
                run = None
            lines = [ln for ln in read_provenance_lines(found) if any(o.get("key") == key for o in ln.get("outputs", []))]
    if as_json:
        click.echo(json.dumps({"schema_version": SCHEMA_VERSION, "bucket": bucket, "key": key, "lineage": lineage, "run": run, "provenance": lines,
                               "header_requests": stats.get("requests")}, ensure_ascii=False, sort_keys=True))
        return
    click.echo(f"{bucket}/{key}")
    if not lineage:
        click.echo("  no COG_PIPELINE metadata: not written by cog-pipeline with provenance")
    for name, value in sorted(lineage.items()):
        click.echo(f"  {name}: {value}")
    click.echo(f"  (header read in {stats.get('requests')} ranged request(s), {stats.get('bytes')} bytes)")
    if run is not None:
        click.echo(f"run {lineage['RUN_ID']}: state={run.get('state')} engine={run.get('engine')} manifest={run.get('manifest_key')}")
        for line in lines:
            click.echo(f"  attempts={line.get('attempts')} seconds={line.get('seconds')} host={line.get('host')} "
                       f"source etag={line.get('source', {}).get('etag')}")
    elif work_dir:
        click.echo(f"run directory for {lineage.get('RUN_ID')!r} not found under {work_dir}")


# ---------------------------------------------------------------------------------------------------------------
# status renderers (pure)

def render_status_table(rows: list[dict[str, Any]], width: int = 120) -> str:
    """The runs as plain text (no colour codes): one line per run, never a word broken. The run is shown by its
    claim time (`workflow-run-` dropped), every column but the manifest is as wide as its longest cell, the
    manifest takes what is left and, only if it must, ends in '…'. Then each run's `where` (report, submit
    dir or run directory) in full on a line of its own, which a terminal may wrap but nothing cuts."""
    import io

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from cog_pipeline.run.naming import RUN_DIR_PREFIX

    shown = [c for c in STATUS_COLUMNS if c != "where"]

    def cell(row: dict[str, Any], column: str) -> str:
        value = "" if row.get(column) is None else str(row[column])
        return value.removeprefix(RUN_DIR_PREFIX) if column == "run" else value

    widths = {c: max([len(c), *(len(cell(r, c)) for r in rows)]) for c in shown}
    widths["manifest"] = max(8, min(widths["manifest"], width - sum(w for c, w in widths.items() if c != "manifest") - 2 * (len(shown) - 1)))
    table = Table(title=f"{len(rows)} run(s)", box=None, pad_edge=False, padding=(0, 1), title_justify="left")
    for column in shown:
        table.add_column(column, no_wrap=True, overflow="ellipsis", width=widths[column],
                         justify="right" if column in ("rows", "done", "failed") else "left")
    for row in rows:
        # Text cells, never markup: keys and paths are user data, "[b]" must print as written.
        table.add_row(*(Text(cell(row, c)) for c in shown))
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(table)
    for row in rows:
        console.print(Text(f"{row.get('run')}: {row.get('where')}"), soft_wrap=True)
    return console.export_text()


def status_json(rows: list[dict[str, Any]]) -> str:
    """Machine-readable status, one line: {"schema_version": 1, "runs": [rows, keys STATUS_COLUMNS in order]}."""
    from cog_pipeline.cli.tick_log import SCHEMA_VERSION

    return json.dumps({"schema_version": SCHEMA_VERSION, "runs": [{c: row.get(c) for c in STATUS_COLUMNS} for row in rows]}, ensure_ascii=False)


def _claimed_epoch(info: Any, name: str) -> float | None:
    from datetime import datetime, timezone

    try:
        if info.claimed_at:
            return datetime.fromisoformat(info.claimed_at).timestamp()
        return datetime.strptime(name.rpartition("workflow-run-")[2][:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def status_row(run_dir: Any, now: float | None = None, info: Any = None) -> dict[str, Any]:
    """One run as the status table shows it: rows done/failed from reconcile.json, else from the job records
    and the pre-flight; where to look: the report, the Pegasus submit directory, or the run directory."""
    import time

    from cog_pipeline.cli.status import age_text, shown_state
    from cog_pipeline.publishing.report import REPORT_NAME, _manifest_rows
    from cog_pipeline.run.rundir import Decisions, Preflight

    info = info or run_dir.load()
    saved = Decisions.load(run_dir.path)
    if saved is not None:
        done, failed = saved.processed, saved.failed
    else:  # rows decided so far: converted by a job, or failed by a job or the pre-flight
        records = run_dir.job_records().values()
        preflight = Preflight.load(run_dir.path)
        done = sum(r.status == "succeeded" for r in records)
        failed = sum(r.status == "failed" for r in records) + (preflight.failed if preflight is not None else 0)
    report = run_dir.path / REPORT_NAME
    where = report if report.is_file() else (info.pegasus.submit_dir or run_dir.path)
    claimed = _claimed_epoch(info, run_dir.path.name)
    return {"run": run_dir.path.name, "manifest": info.manifest_key, "state": shown_state(run_dir, info),
            "rows": (saved.rows if saved is not None else 0) or _manifest_rows(run_dir.path), "done": done, "failed": failed,
            "age": age_text((now or time.time()) - claimed) if claimed else None, "engine": info.engine, "where": str(where)}


def status_rows(work_dir: Path, now: float | None = None) -> list[dict[str, Any]]:
    """Every readable run under the work directory, oldest first (damaged ones are `show_runs`' warnings)."""
    from cog_pipeline.run.rundir import survey_run_dirs

    return [status_row(r, now, info) for r, info in survey_run_dirs(work_dir)[0]]


def scan_json(report: Any) -> str:
    """A scan tick for scripts: every list of the ScanReport, run directories as paths, and for each
    reconciled run its counts, result keys and report."""
    from cog_pipeline.publishing.report import REPORT_NAME
    from cog_pipeline.run.rundir import Decisions

    def reconciled(run_dir: Any) -> dict[str, Any]:
        saved = Decisions.load(run_dir.path)
        report_path = run_dir.path / REPORT_NAME
        return {"run_dir": str(run_dir.path), "manifest_key": run_dir.load().manifest_key, **(saved.result if saved else {}),
                "report": str(report_path) if report_path.is_file() else None}

    out: dict[str, Any] = {name: list(getattr(report, name)) for name in ("would_claim", "refused", "recovered", "orphans", "errors", "damaged")}
    for name in ("claimed", "resumed", "in_flight"):
        out[name] = [str(r.path) for r in getattr(report, name)]
    out["reconciled"] = [reconciled(r) for r in report.reconciled]
    return json.dumps(out, ensure_ascii=False, sort_keys=True)
