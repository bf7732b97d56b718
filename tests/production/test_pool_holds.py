"""Holds and removal on the real pool: a held job that is released succeeds; one nobody releases fails its row
with the hold reason; a workflow removed with condor_rm answers its rows by itself, and the failed file,
resubmitted, is converted by the next scan."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cog_pipeline.run.rundir import RunDir

from .conftest import Pool, wait_for
from .test_pegasus_pool import TESTDATA, _config, _csv_rows, _results, _scan, buckets  # noqa: F401 - buckets is a fixture


def _submit(pool, s3, workspace, client, in_bucket, out_bucket, name: str, keys: list[str], config: Path):
    for key in keys:
        client.put_object(Bucket=in_bucket, Key=key, Body=(TESTDATA / "seed/1band.tif").read_bytes())
    client.put_object(Bucket=in_bucket, Key=f"{name}_raw.csv", Body="".join(f"{k},1\n" for k in keys).encode())
    pool.owned_dir(workspace / "work")
    done = _scan(pool, s3, workspace, in_bucket, out_bucket, config, "-p", f"{name}_raw.csv")
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = max((workspace / "work").glob("workflow-run-*"))
    return run_dir, RunDir(run_dir).load().pegasus.dagman_cluster


def _conversion_jobs(pool: Pool, dagman: int) -> list[str]:
    done = pool.run(["condor_q", "-constraint", f"DAGManJobId == {dagman} && JobUniverse == 5", "-af", "ClusterId", "ProcId"])
    return [".".join(line.split()) for line in done.stdout.splitlines() if line.strip()]


def _answered(client, bucket: str, name: str):
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=name).get("Contents", [])]
    if any("_processing-" in k for k in keys):
        return None
    return {kind: k for k in keys for kind in ("processed", "failed") if f"_{kind}-" in k and not k.endswith("reasons.csv")} or None


def test_a_held_job_released_succeeds_and_one_left_held_fails_with_the_hold_reason(pool: Pool, s3, workspace: Path, buckets):
    client, in_bucket, out_bucket = buckets
    config = _config(workspace, pool, resources="held_remove_s = 20")
    run_dir, dagman = _submit(pool, s3, workspace, client, in_bucket, out_bucket, "held", ["held/a.tif", "held/b.tif"], config)
    jobs = wait_for(lambda: (j := _conversion_jobs(pool, dagman)) and len(j) == 2 and j, timeout=300, interval=0.5, what="the conversion jobs")
    for job in jobs:
        assert pool.run(["condor_hold", job]).returncode == 0
    time.sleep(5)
    assert pool.run(["condor_release", jobs[0]]).returncode == 0  # the other one stays held
    results = wait_for(lambda: _answered(client, in_bucket, "held"), timeout=900, interval=5, what="the result files")
    assert _csv_rows(client, in_bucket, results["processed"]) and _csv_rows(client, in_bucket, results["failed"])
    records = {r["key"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "jobs").glob("ID*.json"))}
    held = [r for r in records.values() if r["status"] == "failed"]
    assert len(held) == 1 and held[0]["category"] == "HELD" and "condor_hold" in held[0]["reason"], held
    assert sum(r["status"] == "succeeded" for r in records.values()) == 1


def test_a_removed_workflow_answers_its_rows_and_a_resubmission_converts_them(pool: Pool, s3, workspace: Path, buckets):
    client, in_bucket, out_bucket = buckets
    config = _config(workspace, pool)
    run_dir, dagman = _submit(pool, s3, workspace, client, in_bucket, out_bucket, "rm", ["rm/a.tif", "rm/b b.tif"], config)
    # DAGMan (and with it pegasus-monitord, which runs the END hook) must have started: a DAG removed before it
    # starts runs no hook at all, and the next scan answers its rows instead.
    submit_dir = Path(RunDir(run_dir).load().pegasus.submit_dir)
    wait_for(lambda: any(submit_dir.glob("*.dag.dagman.out")), timeout=300, interval=1, what="DAGMan to start")
    assert pool.run(["condor_rm", str(dagman)]).returncode == 0
    results = wait_for(lambda: _answered(client, in_bucket, "rm"), timeout=600, interval=3, what="the END hook after condor_rm")
    assert "processed" not in results
    reasons = client.get_object(Bucket=in_bucket, Key=results["failed"][:-4] + "-reasons.csv")["Body"].read().decode()
    assert reasons.count("the workflow was removed") == 2, reasons
    # A rescan finds nothing to redo; the failed file renamed to the pattern is a new manifest and is converted.
    again = _scan(pool, s3, workspace, in_bucket, out_bucket, config, "-p", "rm_raw.csv")
    assert again.returncode == 0 and "claimed" not in again.stdout + again.stderr
    client.copy_object(Bucket=in_bucket, Key="rm_raw.csv", CopySource={"Bucket": in_bucket, "Key": results["failed"]})
    _scan(pool, s3, workspace, in_bucket, out_bucket, config, "-p", "rm_raw.csv")
    wait_for(lambda: len([k for k in (o["Key"] for o in client.list_objects_v2(Bucket=in_bucket, Prefix="rm_processed-").get("Contents", []))]) == 1,
             timeout=900, interval=5, what="the resubmission's processed file")
    for key in ("rm/a.tif", "rm/b b.tif"):
        client.head_object(Bucket=out_bucket, Key=key)
