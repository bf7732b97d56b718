"""Test oracles: the same documents built with Pegasus.api, the reference the fast writers are compared with."""

from __future__ import annotations

from collections.abc import Iterable


def build_api_workflow(rows, settings, name: str, hook: str, metadata: dict[str, str], provenance=None):
    """The whole workflow as Pegasus.api objects (for small manifests); `provenance`: key -> --metadata-b64 value."""
    from cog_pipeline.pegasus.workflow_gen import row_job, workflow_shell

    wf = workflow_shell(name, settings, hook, metadata)
    for row in rows:
        row_job(wf, row, settings, meta=provenance(row.key) if provenance else None)
    return wf


def comparable_workflow(path) -> dict:
    """A written workflow.yml as a document to compare: without its `x-pegasus` header (who wrote it, when),
    each job's `uses` in LFN order (a set in Pegasus.api: its order is arbitrary)."""
    from pathlib import Path

    import yaml

    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    assert set(doc.pop("x-pegasus")) == {"createdBy", "createdOn", "apiLang"}
    for job in doc["jobs"]:
        job["uses"].sort(key=lambda u: u["lfn"])
    return doc


def build_replica_catalog(entries: Iterable):
    """The same replica entries as a Pegasus.api ReplicaCatalog."""
    from Pegasus.api import ReplicaCatalog

    rc = ReplicaCatalog()
    for entry in entries:
        checksum = {"sha256": entry.sha256} if entry.sha256 else None
        rc.add_replica(entry.site, entry.lfn, entry.pfn, checksum=checksum)
    return rc
