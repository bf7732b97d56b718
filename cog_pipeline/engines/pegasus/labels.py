"""Content-Type and Cache-Control on the outputs Pegasus staged.

pegasus-s3 uploads with no Content-Type, so a COG or JPEG staged by a workflow would reach a browser as
`binary/octet-stream`. When the workflow has ended, each output named in `outputs.yml` that exists is copied
onto itself with the headers `media.object_headers` gives its key (S3 CopyObject with MetadataDirective REPLACE:
inside the store, no byte read on the access point). An output that is not there (its row failed) is skipped.
"""

from __future__ import annotations

from ...rundir import RunDir
from ...store import ObjectNotFound, open_store
from ..local_workflow import catalog_objects


def label_outputs(run_dir: RunDir) -> int:
    """Set the headers of every staged output of the run (S3 stores only); how many objects were labelled."""
    info = run_dir.load()
    path = run_dir.file(RunDir.OUTPUTS)
    if info.store_config.local_root is not None or not path.is_file():
        return 0
    store = open_store(info.output_bucket, info.store_config)
    labelled = 0
    for bucket, key in catalog_objects(path).values():
        if bucket != store.bucket:
            continue
        try:
            store.copy(key, key)
        except ObjectNotFound:
            continue
        labelled += 1
    return labelled
