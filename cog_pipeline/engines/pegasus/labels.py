"""Content-Type and Cache-Control on the outputs Pegasus staged.

pegasus-s3 uploads with no Content-Type, so a COG or JPEG staged by a workflow would reach a browser as
`binary/octet-stream`. When the workflow has ended, each output named in `outputs.yml` that this run wrote (listed,
and written since the claim) is copied onto itself with the headers `media.object_headers` gives its key (S3
CopyObject with MetadataDirective REPLACE: inside the store, no byte read on the access point). An output that
is not there, or is an earlier run's, is left as it is: a copy would make it look written by this run to
reconcile.
"""

from __future__ import annotations

from datetime import datetime

from cog_pipeline.engines.local_workflow import catalog_objects
from cog_pipeline.run.rundir import RunDir
from cog_pipeline.storage.listing import find_keys, written_since
from cog_pipeline.storage.store import open_store


def label_outputs(run_dir: RunDir) -> int:
    """Set the headers of every staged output of the run (S3 stores only); how many objects were labelled."""
    info = run_dir.load()
    path = run_dir.file(RunDir.OUTPUTS)
    if info.store_config.local_root is not None or not path.is_file():
        return 0
    store = open_store(info.output_bucket, info.store_config)
    claimed_at = datetime.fromisoformat(info.claimed_at) if info.claimed_at else None
    listed = find_keys(store, (key for bucket, key in catalog_objects(path).values() if bucket == store.bucket))
    ours = [key for key, obj in listed.items() if written_since(obj, claimed_at)]
    for key in ours:
        store.copy(key, key)
    return len(ours)
