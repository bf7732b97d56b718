"""What each `scan` tick leaves for the operator: one JSON line in `<work dir>/ticks.jsonl`, and optionally a
Prometheus textfile of the same counts.

The line is the tick's JSON record (`tick_record`), the same object `scan --json` prints: versioned
(`schema_version`), timestamped (`started`, `ended`, UTC ISO 8601) and complete for a tick that failed
(`error`). The Crondor keeps only the last tick's stdout; this file keeps them all. It is appended to,
never rewritten; rotate it with logrotate (`copytruncate`) if it grows too large for you (~1 KB per tick).
Keys (docs/operator.md, "The tick record"):

  schema_version, started, ended, version (cog-pipeline's), work_dir, error (a fatal error's one line, or null),
  counts: {claimed, resumed, reconciled, in_flight, errors, rows_processed, rows_failed},
  runs: [{run_dir, manifest_key, processed, failed, processed_key, failed_key, reasons_key, report}],
  claimed, resumed, in_flight (run directories), would_claim, refused, recovered, orphans, errors, damaged.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
HISTORY_NAME = "ticks.jsonl"
WARNINGS_LOG_NAME = "cog-pipeline.log"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cog-pipeline")
    except PackageNotFoundError:
        return "unknown"


def _run(run_dir: Any) -> dict[str, Any]:
    from cog_pipeline.publishing.report import REPORT_NAME
    from cog_pipeline.run.rundir import Decisions

    saved = Decisions.load(run_dir.path)
    result = saved.result if saved is not None else {}
    report_path = run_dir.path / REPORT_NAME
    return {"run_dir": str(run_dir.path), "manifest_key": run_dir.load().manifest_key,
            "processed": result.get("processed"), "failed": result.get("failed"),
            **{k: result.get(k) for k in ("processed_key", "failed_key", "reasons_key")},
            "report": str(report_path) if report_path.is_file() else None}


def tick_record(report: Any | None, *, started: str, work_dir: Path, error: str | None = None) -> dict[str, Any]:
    """The tick as one JSON-able dict (see the module's docstring); `report` is pipeline.ScanReport or None."""
    runs = [_run(r) for r in report.reconciled] if report is not None else []
    lists = {name: list(getattr(report, name, []) or []) for name in ("would_claim", "refused", "recovered", "orphans", "errors", "damaged")}
    dirs = {name: [str(r.path) for r in getattr(report, name, []) or []] for name in ("claimed", "resumed", "in_flight")}
    counts = {"claimed": len(dirs["claimed"]), "resumed": len(dirs["resumed"]), "reconciled": len(runs),
              "in_flight": len(dirs["in_flight"]), "errors": len(lists["errors"]) + (1 if error else 0),
              "rows_processed": sum(r["processed"] or 0 for r in runs), "rows_failed": sum(r["failed"] or 0 for r in runs)}
    return {"schema_version": SCHEMA_VERSION, "started": started, "ended": now_iso(), "version": _version(),
            "work_dir": str(work_dir), "error": error, "counts": counts, "runs": runs, **dirs, **lists,
            "reconciled": runs}  # `reconciled`: the same list as `runs`, under the name scan --json always had


def append_history(work_dir: Path, record: dict[str, Any]) -> Path:
    """One line at the end of `<work_dir>/ticks.jsonl` (O_APPEND: lines of concurrent ticks never interleave)."""
    path = Path(work_dir) / HISTORY_NAME
    line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return path


def read_history(work_dir: Path) -> list[dict[str, Any]]:
    """Every readable line of ticks.jsonl, oldest first (a torn last line is skipped)."""
    out = []
    try:
        lines = (Path(work_dir) / HISTORY_NAME).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def prometheus_text(record: dict[str, Any]) -> str:
    """The tick's counts in the Prometheus text format (for node_exporter's textfile collector)."""
    ended = datetime.fromisoformat(record["ended"].replace("Z", "+00:00")).timestamp()
    lines = ["# HELP cog_pipeline_tick_timestamp_seconds When the last scan tick ended.",
             "# TYPE cog_pipeline_tick_timestamp_seconds gauge", f"cog_pipeline_tick_timestamp_seconds {ended:.0f}",
             "# HELP cog_pipeline_tick_error 1 if the last tick stopped on an error.",
             "# TYPE cog_pipeline_tick_error gauge", f"cog_pipeline_tick_error {1 if record.get('error') else 0}",
             "# HELP cog_pipeline_last_tick Counts of the last scan tick.", "# TYPE cog_pipeline_last_tick gauge"]
    lines += [f'cog_pipeline_last_tick{{count="{name}"}} {value}' for name, value in sorted(record["counts"].items())]
    return "\n".join(lines) + "\n"


def write_prometheus(path: Path, record: dict[str, Any]) -> None:
    """Rewrite the textfile atomically (the collector never reads half a file)."""
    from cog_pipeline.storage import atomic

    atomic.write_bytes(Path(path), prometheus_text(record).encode("utf-8"), 0o644)
