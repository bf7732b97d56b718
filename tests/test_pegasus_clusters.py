"""A failed cluster's good images, from the files a real clustered run left (tests/data/pegasus-real/clustered)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cog_pipeline.engines.pegasus.clusters import stage_out_failed_clusters, task_records
from cog_pipeline.engines.pegasus.submit_dir import read_submit_dir
from cog_pipeline.replicas.catalog import object_of_pfn
from cog_pipeline.storage.store import StoreConfig, open_store

from .test_pegasus_wiring import s3_buckets  # noqa: F401 - a fixture

REAL = Path(__file__).parent / "data" / "pegasus-real" / "clustered"
CLUSTER = "merge_generate_cog_PID1_ID2"


def _submit_dir(tmp_path: Path) -> Path:
    sub = tmp_path / "submit"
    (sub / "00" / "00").mkdir(parents=True)
    for name in ("jobstate.log", "braindump.yml"):
        shutil.copy(REAL / name, sub / name)
    for name in (f"{CLUSTER}.out.000", f"stage_out_local_{CLUSTER}_0.in"):
        shutil.copy(REAL / name, sub / "00" / "00" / name)
    return sub


def _transfers() -> list[dict]:
    return json.loads((REAL / f"stage_out_local_{CLUSTER}_0.in").read_text())


def test_each_image_of_a_cluster_gets_its_own_record(tmp_path):
    found = read_submit_dir(_submit_dir(tmp_path))
    assert found.jobs[CLUSTER].finished is False  # one bad image failed the cluster's job
    wanted = {t["lfn"].partition(".")[0] for t in _transfers()}
    records = task_records(found, wanted)
    assert set(records) == wanted and len(records) == 6
    failed = [r for r in records.values() if r.status == "failed"]
    assert [r.job_id for r in failed] == ["ID0000004"]
    assert failed[0].exit_code == 3 and failed[0].reason.startswith("INPUT_UNREADABLE")
    assert all(r.exit_code == 0 and r.reason == "" for r in records.values() if r.status == "succeeded")


def test_the_good_images_of_a_failed_cluster_reach_their_keys_and_the_bad_ones_empty_files_do_not(tmp_path, s3_server):
    found = read_submit_dir(_submit_dir(tmp_path))
    transfers = _transfers()
    bucket = object_of_pfn(transfers[0]["src_urls"][0]["url"])[0]
    config = StoreConfig(endpoint=s3_server, region="us-east-1")
    config.s3_client().create_bucket(Bucket=bucket)
    store = open_store(bucket, config)
    for t in transfers:  # what PegasusLite left in scratch: real outputs, and the failed conversion's empty files
        src_key = object_of_pfn(t["src_urls"][0]["url"])[1]
        store.put_bytes(src_key, b"" if t["lfn"].startswith("ID0000004.") else f"output {t['lfn']}".encode())
    staged = stage_out_failed_clusters(found, store)
    assert staged == sorted({t["lfn"].partition(".")[0] for t in transfers} - {"ID0000004"})
    for t in transfers:
        key = object_of_pfn(t["dest_urls"][0]["url"])[1]
        if t["lfn"].startswith("ID0000004."):
            assert store.head(key) is None
        else:
            assert store.read_bytes(key)[0] == f"output {t['lfn']}".encode()


def test_nothing_is_staged_before_the_workflow_has_ended(tmp_path, s3_server):
    sub = _submit_dir(tmp_path)
    lines = (sub / "jobstate.log").read_text().splitlines()
    (sub / "jobstate.log").write_text("\n".join(l for l in lines if "DAGMAN_FINISHED" not in l) + "\n")
    found = read_submit_dir(sub)
    assert stage_out_failed_clusters(found, object()) == []  # the store is never touched


def test_staged_outputs_get_their_content_type_inside_the_store(tmp_path, s3_buckets):
    """pegasus-s3 uploads without a Content-Type: the END hook labels each output outputs.yml names, in place."""
    from cog_pipeline.engines.pegasus.labels import label_outputs
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate
    from cog_pipeline.run.rundir import RunDir

    from .test_pegasus_wiring import s3_run

    config, client, in_bucket, out_bucket = s3_buckets
    run = s3_run(tmp_path, s3_buckets, ["Counties/WI/Eau Claire/x.tif", "gone/y.tif"])
    generate(run, open_store(in_bucket, config), WorkflowSettings())
    client.put_object(Bucket=out_bucket, Key="Counties/WI/Eau Claire/x.tif", Body=b"cog bytes")  # as pegasus-s3 leaves it
    client.put_object(Bucket=out_bucket, Key="Counties/WI/Eau Claire/x.jpg", Body=b"jpeg bytes")
    assert label_outputs(run) == 2  # gone/y's outputs were never staged: skipped
    tif = client.head_object(Bucket=out_bucket, Key="Counties/WI/Eau Claire/x.tif")
    assert tif["ContentType"].startswith("image/tiff") and tif["CacheControl"] == "public, max-age=86400"
    assert client.head_object(Bucket=out_bucket, Key="Counties/WI/Eau Claire/x.jpg")["ContentType"] == "image/jpeg"
    assert client.get_object(Bucket=out_bucket, Key="Counties/WI/Eau Claire/x.tif")["Body"].read() == b"cog bytes"
    assert run.file(RunDir.OUTPUTS).is_file()


def test_an_earlier_runs_output_is_not_labelled_so_reconcile_still_sees_it_as_stale(tmp_path, s3_buckets):
    """Copying an object onto itself makes it new: only what this run wrote is labelled, or a stale COG from an
    earlier run would pass reconcile's written-after-the-claim check."""
    import time
    from datetime import datetime, timezone

    from cog_pipeline.engines.pegasus.labels import label_outputs
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate

    from .test_pegasus_wiring import s3_run

    config, client, in_bucket, out_bucket = s3_buckets
    client.put_object(Bucket=out_bucket, Key="a/old.tif", Body=b"earlier run")  # before this run's claim
    client.put_object(Bucket=out_bucket, Key="a/old.jpg", Body=b"earlier run")
    time.sleep(1.1)
    run = s3_run(tmp_path, s3_buckets, ["a/old.tif"])
    run.update(claimed_at=datetime.now(timezone.utc).isoformat())
    generate(run, open_store(in_bucket, config), WorkflowSettings())
    before = client.head_object(Bucket=out_bucket, Key="a/old.tif")
    assert label_outputs(run) == 0
    assert client.head_object(Bucket=out_bucket, Key="a/old.tif")["LastModified"] == before["LastModified"]
