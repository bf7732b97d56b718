"""One manifest through the real production path: scan -> pegasus-plan -> DAGMan on a real HTCondor pool ->
PegasusLite and kickstart on the workers -> the END hook run by pegasus-monitord -> result files.

Keys with spaces, every character the key rule lets through and hostile shell text must land as written and
run nothing; keys the rule refuses, a missing and a truncated image must fail with their own reasons, and
nothing else. The S3 server's access log shows which process read which image bytes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

import boto3
import numpy as np
import pytest

from cog_pipeline.run.rundir import RunDir
import rasterio

from cog_pipeline.replicas.pegasus_keys import pegasus_key_problem

from .conftest import REPO, Pool, wait_for
from .recorded_s3 import image_bytes_read

TESTDATA = REPO.parent / "shared" / "testdata"
CANARY = f"/var/tmp/cogpwn-{os.getpid()}"
TEST_AGENT = "cog-production-test"

GOOD = {
    "Counties/WI/Wood/plain.tif": "seed/1band.tif",
    "Counties/WI/Eau Claire/ortho.tif": "rasterio/RGB.byte.tif",
    "Counties/WI/Fond du Lac/ortho 4band.tif": "rasterio/RGBA.byte.tif",
    "Counties/WI/La Crosse/a%20b.tif": "rasterio/shade.tif",
    f"hostile/x;touch {CANARY}-1;.tif": "rasterio/byte.tif",
    f"hostile/`touch {CANARY}-2`.tif": "rasterio/byte.tif",
    f"hostile/$(touch {CANARY}-3) $HOME & $5.tif": "rasterio/byte.tif",
    "chars/a?b&c=d+e.tif": "rasterio/byte.tif",
    "chars/café ü 東京.tif": "rasterio/byte.tif",
    "chars/semi;colon|pipe>gt<lt.tif": "rasterio/byte.tif",
    "chars/brackets[1]{2}(3)^~*!@,:.tif": "rasterio/byte.tif",
}
REFUSED = ["Counties/WI/St. Croix/O'Brien.tif", "Counties/WI/a#b.tif", 'chars/say "hi".tif', "chars/nbsp\u00a0here.tif"]
MISSING = "Counties/WI/gone.tif"
TRUNCATED = "Counties/WI/Wood/truncated.tif"


def _client(s3):
    """This test's own client: its reads (checking the results) are told apart from the pipeline's in the log."""
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", config=Config(user_agent_extra=TEST_AGENT))


def _csv_rows(client, bucket: str, key: str) -> list[str]:
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    return [line for line in body.splitlines() if line]


def _results(client, bucket: str) -> dict[str, str]:
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {kind: k for k in keys for kind in ("processed", "failed", "reasons", "processing")
            if f"_{kind}-" in k or (kind == "reasons" and k.endswith("-reasons.csv"))}


def _config(workspace: Path, pool: Pool, **extra: str) -> Path:
    from shutil import which

    pegasus_home = Path(which("pegasus-plan")).resolve().parent.parent
    text = f'[container]\nenabled = false\npegasus_home = "{pegasus_home}"\n'
    for section, body in extra.items():
        text += f"\n[{section}]\n{body}\n"
    path = workspace / "cog-pipeline.toml"
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.fixture()
def buckets(s3, workspace: Path, pool: Pool):
    client = _client(s3)
    name = f"prod-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    client.create_bucket(Bucket=name + "-in")
    client.create_bucket(Bucket=name + "-out")
    for key_file, value in (("access.key", "testing-access-key"), ("secret.key", "testing-secret-key")):
        path = workspace / key_file
        path.write_text(value + "\n")
        if pool.user:
            os.chown(path, *(lambda e: (e.pw_uid, e.pw_gid))(__import__("pwd").getpwnam(pool.user)))
        path.chmod(0o600)
    return client, name + "-in", name + "-out"


def _scan(pool: Pool, s3, workspace: Path, in_bucket: str, out_bucket: str, config: Path, *extra: str):
    return pool.cog(
        "scan", "--engine", "pegasus", "--input-bucket", in_bucket, "--output-bucket", out_bucket,
        "-e", s3.url, "-a", str(workspace / "access.key"), "-s", str(workspace / "secret.key"),
        "-w", str(workspace / "work"), "--config", str(config), *extra,
    )


def test_a_manifest_runs_end_to_end_on_the_pool(pool: Pool, s3, workspace: Path, buckets, tmp_path: Path):
    client, in_bucket, out_bucket = buckets
    pool.owned_dir(workspace / "work")
    sizes = {}
    for key, source in GOOD.items():
        data = (TESTDATA / source).read_bytes()
        client.put_object(Bucket=in_bucket, Key=key, Body=data)
        sizes[key] = len(data)
    for key in REFUSED:
        client.put_object(Bucket=in_bucket, Key=key, Body=(TESTDATA / "rasterio/byte.tif").read_bytes())
    truncated = (TESTDATA / "seed/1band.tif").read_bytes()[:4096]
    client.put_object(Bucket=in_bucket, Key=TRUNCATED, Body=truncated)
    sizes[TRUNCATED] = len(truncated)
    bands = {key: rasterio.open(TESTDATA / source).count for key, source in GOOD.items()}
    manifest = [f"{key},{bands[key]}" for key in GOOD] + [f"{key},1" for key in REFUSED] + [f"{MISSING},1", f"{TRUNCATED},1"]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([r.rsplit(",", 1) for r in manifest])
    client.put_object(Bucket=in_bucket, Key="Counties/WI/prod_raw.csv", Body=out.getvalue().encode("utf-8"))

    started = time.monotonic()
    done = _scan(pool, s3, workspace, in_bucket, out_bucket, _config(workspace, pool))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted Counties/WI/prod_raw.csv" in done.stdout + done.stderr
    submitted = time.monotonic()

    # Nothing but pegasus-monitord's END hook answers the manifest from here on: no second scan runs.
    results = wait_for(lambda: (r := _results(client, in_bucket)) and "processing" not in r and r,
                       timeout=1500, interval=5, what="the END hook to write the result files")
    ended = time.monotonic()
    processed = _csv_rows(client, in_bucket, results["processed"])
    failed = _csv_rows(client, in_bucket, results["failed"])
    keys_by_line = {n: row.rsplit(",", 1)[0] for n, row in enumerate(manifest, 1)}
    reasons = {keys_by_line[int(row[0])]: row[2] for row in csv.reader(io.StringIO(
        client.get_object(Bucket=in_bucket, Key=results["reasons"])["Body"].read().decode("utf-8")))
        if row and row[0] != "line"}
    # Result files return rows as uploaded (CSV-quoted where a key needs it).
    assert sorted(processed) == sorted(out.getvalue().splitlines()[: len(GOOD)])
    assert len(failed) == len(REFUSED) + 2
    assert reasons[TRUNCATED].startswith("INPUT_UNREADABLE"), reasons[TRUNCATED]
    assert "does not exist" in reasons[MISSING]
    for key in REFUSED:
        assert reasons[key] == pegasus_key_problem(key), (key, reasons[key])

    # Every good image landed at its own key, as a valid COG with the source's pixels, with its preview.
    for key, source in GOOD.items():
        local = tmp_path / "cog.tif"
        local.write_bytes(client.get_object(Bucket=out_bucket, Key=key)["Body"].read())
        with rasterio.open(local) as cog, rasterio.open(TESTDATA / source) as src:
            assert cog.profile["compress"] == "lzw" and cog.profile["tiled"], key
            assert np.array_equal(cog.read(), src.read()), key
        jpeg = client.head_object(Bucket=out_bucket, Key=key[: -len(".tif")] + ".jpg")
        assert jpeg["ContentType"] == "image/jpeg", key  # labelled by the END hook: pegasus-s3 sends none
        assert client.head_object(Bucket=out_bucket, Key=key)["ContentType"].startswith("image/tiff"), key
    # The hostile keys ran nothing on the workers.
    assert not [p for p in Path(CANARY).parent.glob(Path(CANARY).name + "*")]

    # The run: reconciled by the END hook, which pegasus-monitord fired once at the start (ignored) and once
    # at the end; the truncated image failed once, with no retry.
    (run_dir,) = (workspace / "work").glob("workflow-run-*")
    info = RunDir(run_dir).load()
    assert info.state == "reconciled"
    submit_dir = Path(info.pegasus.submit_dir)
    # monitord logs a notification once its command has exited, just after the hook wrote the result files.
    notifications = wait_for(lambda: (t := (submit_dir / "monitord-notifications.log").read_text(errors="replace"))
                             and "PEGASUS_EVENT : at_end" in t and t, timeout=120, what="monitord's notifications log")
    assert notifications.count("PEGASUS_EVENT : start") == 1 and notifications.count("PEGASUS_EVENT : at_end") == 1, notifications
    assert notifications.count("workflow started; it is reconciled when it ends") == 1
    assert notifications.count("Notification status: 0") == 2
    jobstate = (submit_dir / "jobstate.log").read_text()
    truncated_job = json.loads(next(p for p in (run_dir / "jobs").glob("*.json") if json.loads(p.read_text()).get("key") == TRUNCATED).read_text())
    node = f"generate_cog_{truncated_job['job_id']}"
    assert sum(1 for line in jobstate.splitlines() if f" {node} SUBMIT " in line) == 1

    # Operators' tools read the submit directory.
    status = pool.run(["pegasus-status", "-l", str(submit_dir)])
    assert status.returncode == 0 and "Failure" in status.stdout, status.stdout + status.stderr
    analyzer = pool.run(["pegasus-analyzer", str(submit_dir)])
    assert node in analyzer.stdout, analyzer.stdout
    statistics = pool.run(["pegasus-statistics", "-s", "all", str(submit_dir)])
    assert statistics.returncode == 0, statistics.stderr

    # Image bytes: workers read each input once; the access point's processes read none.
    requests = [r for r in s3.requests if TEST_AGENT not in r.user_agent]
    inputs = {(in_bucket, k) for k in sizes}
    outputs = {(out_bucket, k) for k in GOOD} | {(out_bucket, k[:-4] + ".jpg") for k in GOOD}
    worker_reads = image_bytes_read(requests, inputs, by_pipeline=False)
    ap_reads = image_bytes_read(requests, inputs | outputs, by_pipeline=True) + image_bytes_read(requests, outputs, by_pipeline=False)
    print(f"\nrows: {len(processed)} processed (expected {len(GOOD)}), {len(failed)} failed (expected {len(REFUSED) + 2})")
    print(f"keys with spaces landed: {sum(' ' in k for k in GOOD)} of {sum(' ' in k for k in GOOD)}")
    print("END hook: fired by pegasus-monitord at the end (and once, ignored, at the start)")
    print(f"image bytes read by workers: {worker_reads} (inputs: {sum(sizes.values())}); by access-point processes: {ap_reads}")
    print(f"submit -> results: {ended - submitted:.0f} s")
    assert ap_reads == 0
    assert worker_reads == sum(sizes.values())


def test_the_crondor_answers_a_manifest_with_no_manual_step(pool: Pool, s3, workspace: Path, buckets):
    """`crondor start` with the README's flags and a one-minute schedule: its own tick claims, plans and submits,
    and the END hook answers the manifest; `crondor status` and `status` show the phases; `crondor stop` removes it."""
    client, in_bucket, out_bucket = buckets
    pool.owned_dir(workspace / "work")
    client.put_object(Bucket=in_bucket, Key="cron/Eau Claire/a.tif", Body=(TESTDATA / "seed/1band.tif").read_bytes())
    client.put_object(Bucket=in_bucket, Key="cron_raw.csv", Body=b"cron/Eau Claire/a.tif,1\n")
    ident = ["--input-bucket", in_bucket, "--output-bucket", out_bucket, "-p", "cron_raw.csv"]
    start = pool.cog("crondor", "start", *ident, "-e", s3.url, "-a", str(workspace / "access.key"), "-s", str(workspace / "secret.key"),
                     "-w", str(workspace / "work"), "--config", str(_config(workspace, pool)), "--schedule", "*/1 * * * *")
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        waiting = pool.cog("crondor", "status")
        assert in_bucket in waiting.stdout and ("waiting for its next tick" in waiting.stdout or "running a tick" in waiting.stdout), waiting.stdout
        in_flight = wait_for(lambda: (r := pool.cog("status", "-w", str(workspace / "work"))).returncode == 0
                             and "cron_raw.csv" in r.stdout and r.stdout, timeout=240, interval=2, what="the tick's claim")
        assert "cron_raw.csv" in in_flight
        results = wait_for(lambda: (r := _results(client, in_bucket)) and "processing" not in r and "processed" in r and r,
                           timeout=900, interval=5, what="the END hook's result files")
        assert _csv_rows(client, in_bucket, results["processed"]) == ["cron/Eau Claire/a.tif,1"]
        client.head_object(Bucket=out_bucket, Key="cron/Eau Claire/a.tif")
        last = wait_for(lambda: "last tick: ended" in (r := pool.cog("crondor", "status")).stdout and r.stdout, timeout=180,
                        what="crondor status to show the last tick")
        assert "exit code 0" in last, last
    finally:
        stop = pool.cog("crondor", "stop", *ident)
    assert stop.returncode == 0 and "removed Crondor job" in stop.stdout, stop.stdout + stop.stderr
    assert in_bucket not in pool.cog("crondor", "status").stdout  # gone from the queue (other Crondors may be listed)


def test_an_image_reuploaded_after_planning_fails_source_changed_on_the_pool(pool: Pool, s3, workspace: Path, buckets):
    """Pegasus' transfers stage an input without pinning its version. An image re-uploaded after the workflow was
    planned (its lineage names the version listed then) is not converted under that name: the converter on the
    worker finds the staged bytes are another version and the row fails SOURCE_CHANGED; the other row converts."""
    client, in_bucket, out_bucket = buckets
    pool.owned_dir(workspace / "work")
    first, second = "Counties/WI/Wood/replaced.tif", "Counties/WI/Wood/kept.tif"
    client.put_object(Bucket=in_bucket, Key=first, Body=(TESTDATA / "seed/1band.tif").read_bytes())
    client.put_object(Bucket=in_bucket, Key=second, Body=(TESTDATA / "seed/1band.tif").read_bytes())
    client.put_object(Bucket=in_bucket, Key="reup_raw.csv", Body=f"{first},1\n{second},1\n".encode())
    config = _config(workspace, pool)
    planned = _scan(pool, s3, workspace, in_bucket, out_bucket, config, "--no-submit")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    client.put_object(Bucket=in_bucket, Key=first, Body=(TESTDATA / "rasterio/byte.tif").read_bytes())  # re-uploaded
    submitted = _scan(pool, s3, workspace, in_bucket, out_bucket, config)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    results = wait_for(lambda: (r := _results(client, in_bucket)) and "processing" not in r and "failed" in r and r,
                       timeout=900, interval=5, what="the END hook to write the result files")
    assert _csv_rows(client, in_bucket, results["processed"]) == [f"{second},1"]
    reasons = client.get_object(Bucket=in_bucket, Key=results["reasons"])["Body"].read().decode("utf-8")
    assert "SOURCE_CHANGED" in reasons and "re-uploaded" in reasons, reasons
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=out_bucket).get("Contents", [])}
    assert second in keys and first not in keys, keys
