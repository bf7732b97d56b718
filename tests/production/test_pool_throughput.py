"""Per-job overhead on the real pool, with and without clustering, and clustering's failure isolation.

Twelve small real images (conversion takes about a second each) are run as one manifest without clustering and
with `--cluster-size 6`; the share of the workflow's wall time that is not conversion is printed side by side
(docs/chtc.md, "Throughput on the pool"). One image in the clustered run is truncated: the other images of its
cluster must still land.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cog_pipeline.run.rundir import RunDir

from .conftest import Pool, wait_for
from .test_pegasus_pool import TESTDATA, _config, buckets  # noqa: F401 - buckets is a fixture

SOURCES = ["seed/1band.tif", "rasterio/RGB.byte.tif", "rasterio/RGBA.byte.tif", "rasterio/shade.tif"]


def _run(pool: Pool, s3, workspace: Path, client, in_bucket: str, out_bucket: str, name: str, rows: list[tuple[str, bytes]], *extra: str):
    work = pool.owned_dir(workspace / f"work-{name}")
    for key, data in rows:
        client.put_object(Bucket=in_bucket, Key=key, Body=data)
    client.put_object(Bucket=in_bucket, Key=f"{name}/m_raw.csv", Body="".join(f"{k},1\n" for k, _ in rows).encode())
    started = time.monotonic()
    done = pool.cog("scan", "--engine", "pegasus", "--input-bucket", in_bucket, "--output-bucket", out_bucket,
                    "-e", s3.url, "-a", str(workspace / "access.key"), "-s", str(workspace / "secret.key"),
                    "-w", str(work), "--config", str(_config(workspace, pool)), "-p", f"{name}/*raw.csv", *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: _answered(client, in_bucket, name), timeout=1500, interval=3, what=f"the {name} run's result files")
    wall = time.monotonic() - started
    (run_dir,) = work.glob("workflow-run-*")
    records = [json.loads(p.read_text()) for p in (run_dir / "jobs").glob("ID*.json")]
    return wall, records, run_dir


def _answered(client, bucket: str, name: str) -> bool:
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=name + "/").get("Contents", [])]
    return any("_processed-" in k or "_failed-" in k for k in keys) and not any("_processing-" in k for k in keys)


def _conversion_seconds(run_dir: Path) -> float:
    """The converters' own run time, from the kickstart records of the run (what a job spent converting)."""
    from cog_pipeline.engines.pegasus.submit_dir import _invocations

    info = RunDir(run_dir).load()
    total = 0.0
    for out in Path(info.pegasus.submit_dir).rglob("*.out.[0-9][0-9][0-9]"):
        for record in _invocations(out.read_text(errors="replace")):
            if record.get("transformation") == "generate_cog":
                total += float((record.get("mainjob") or {}).get("duration") or record.get("duration") or 0)
    return total


@pytest.mark.parametrize("count", [12, 48])
def test_overhead_share_with_and_without_clustering(pool: Pool, s3, workspace: Path, buckets, count: int):
    client, in_bucket, out_bucket = buckets
    images = [(TESTDATA / SOURCES[i % len(SOURCES)]).read_bytes() for i in range(count)]
    shares = {}
    for name, extra in ((f"single{count}", ()), (f"clustered{count}", ("--cluster-size", "6"))):
        rows = [(f"{name}/img{i:02d}.tif", data) for i, data in enumerate(images)]
        rows[3] = (rows[3][0], images[0][:4096])  # truncated: in a cluster, it fails beside five good images
        wall, records, run_dir = _run(pool, s3, workspace, client, in_bucket, out_bucket, name, rows, *extra)
        converting = _conversion_seconds(run_dir)
        shares[name] = (wall, converting, 1 - converting / wall)
        landed = {o["Key"] for o in client.list_objects_v2(Bucket=out_bucket, Prefix=name + "/").get("Contents", [])}
        assert {k for k, _ in rows} - {rows[3][0]} <= landed, (name, sorted({k for k, _ in rows} - landed))
        assert rows[3][0] not in landed and rows[3][0][:-4] + ".jpg" not in landed  # its empty files stayed in scratch
        by_key = {r["key"]: r for r in records}
        assert by_key[rows[3][0]]["status"] == "failed" and by_key[rows[3][0]]["reason"].startswith("INPUT_UNREADABLE")
        assert sum(r["status"] == "succeeded" for r in records) == count - 1
    for name, (wall, converting, share) in shares.items():
        print(f"\n{name}: {count} images, workflow {wall:.0f} s, converting {converting:.1f} s, overhead {share:.0%} of the wall time")
