"""The one writer of the run directory's JSON documents, and the bound on how many rows a document copies.

Every document (run.json, preflight.json, reconcile.json, jobs/<id>.json) is written through
`write_json_atomic`, so a crash leaves the old file or the new one, never half of one (the crash-matrix test
counts its calls as crash points). Per-row data that can be as long as the manifest goes to line files that
are written and read as streams (preflight-failed.csv, the result files), never into these documents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cog_pipeline.storage import atomic

# A document lists at most this many rows (failed rows, noted rows); it always says how many there were.
SAMPLE_ROWS = 1000


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half of one."""
    atomic.write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"), 0o644)


def read_json(path: Path) -> Any:
    """The file's JSON; FileNotFoundError when absent; ValueError (UnicodeDecodeError too) when damaged."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
