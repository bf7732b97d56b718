"""Read workflow.yml and replicas.yml fast when they are in the generator's own line format, else as YAML.

Why: PyYAML (even its C loader) spent minutes building Python objects for a 50,000-row manifest's 25 MB
workflow.yml before the first conversion could start (issue 8.13). The generator writes these two documents
as block YAML whose top-level values and list items are single-line JSON (pegasus/workflow_gen.py,
replicas/catalog.py: JSON is YAML, so Pegasus reads them as they are), so one json.loads per line gives the
same document. Anything outside that shape (a hand-edited file, one written by Pegasus.api itself) makes the
fast reader give up and the file is read as YAML: workflow.yml stays the one source of truth for both engines.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

_TOP = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*):(.*)$")


def read_fast(path: Path) -> dict[str, Any] | None:
    """The document, if every line is `key: <json>`, `key:` (a list follows) or `- <json>`; else None."""
    doc: dict[str, Any] = {}
    current: list[Any] | None = None
    loads = json.loads
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("- "):
                    if current is None:
                        return None
                    current.append(loads(line[2:]))
                    continue
                match = _TOP.match(line.rstrip("\n"))
                if match is None:
                    return None
                key, rest = match.group(1), match.group(2).strip()
                if key in doc:
                    return None
                if rest:
                    doc[key] = loads(rest)
                    current = None
                else:
                    doc[key] = current = []
    except (ValueError, UnicodeDecodeError):
        return None
    return doc


def read_document(path: Path) -> Any:
    """workflow.yml / replicas.yml / any YAML catalog, the fast way when it applies."""
    fast = read_fast(path)
    if fast is not None:
        return fast
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def catalog_objects(path: Path, local_root: Path | None = None) -> dict[str, tuple[str, str]]:
    """LFN -> (bucket, key) of a replica catalog this project wrote (replicas.yml, outputs.yml): the catalogs
    both engines read, turned back into objects by ``replicas.catalog.object_of_pfn`` (ValueError for a PFN it
    did not write)."""
    from cog_pipeline.replicas.catalog import object_of_pfn

    return {entry["lfn"]: object_of_pfn(pfn["pfn"], local_root)
            for entry in (read_document(path) or {}).get("replicas", []) for pfn in entry.get("pfns") or []}
