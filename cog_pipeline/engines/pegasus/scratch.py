"""The S3 staging prefix of a nonsharedfs run: recorded at generation, removed with boto3 when the run finishes.

With nonsharedfs the conversion jobs write their outputs to ``<output bucket>/<scratch prefix>/<run>/`` and
stage-out jobs copy them to their keys. Pegasus' own cleanup jobs would delete that prefix with
``pegasus-s3 rm -F``, which fails on keys with spaces (measured with the real pegasus-s3 5.1: the key is split
at the space). So runs are planned with ``--cleanup none`` and this module removes the prefix through the
project's store (boto3, keys carried as (bucket, key) pairs) once every job has ended. The outputs themselves
are never under the prefix, so removing it cannot lose a result.
"""

from __future__ import annotations

from cog_pipeline.run.rundir import RunDir
from cog_pipeline.storage.store import ObjectStore, open_store

SCRATCH_FILE = "scratch.json"


def record_scratch(run_dir: RunDir, bucket: str, prefix: str) -> None:
    """Remember which (bucket, prefix) the run stages through, for `remove_scratch`."""
    run_dir.write_json(SCRATCH_FILE, {"bucket": bucket, "prefix": prefix.strip("/") + "/"})


def remove_scratch(run_dir: RunDir, store: ObjectStore | None = None) -> int:
    """Delete every object under the run's recorded scratch prefix; returns how many (0 when none recorded).

    Safe to repeat: a second call finds nothing left. `store` is the output bucket's store (opened from
    run.json when not given).
    """
    scratch = run_dir.read_json(SCRATCH_FILE, default=None)
    if not isinstance(scratch, dict) or not scratch.get("prefix") or not scratch.get("bucket"):
        return 0
    prefix = str(scratch["prefix"])
    if prefix in ("", "/"):
        return 0  # never the whole bucket
    if store is None:
        store = open_store(str(scratch["bucket"]), run_dir.load().store_config)
    removed = 0
    for info in list(store.list(prefix)):
        store.delete(info.key)
        removed += 1
    return removed
