"""Every object the pipeline writes to S3 carries a Content-Type and Cache-Control (moto over HTTP, a real scan)."""

from __future__ import annotations

import boto3
import pytest

from cog_pipeline.storage.media import object_headers
from cog_pipeline.pipeline import ScanOptions, scan
from cog_pipeline.storage.store import StoreConfig
from tests.conftest import config_with


@pytest.mark.parametrize(("key", "content_type"), [
    ("a/B.TIF", "image/tiff; application=geotiff; profile=cloud-optimized"), ("a.jpg", "image/jpeg"),
    ("x_report-1.html", "text/html; charset=utf-8"), ("x_failed-1.csv", "text/csv; charset=utf-8"),
    ("a.stac-item.json", "application/geo+json"), ("x_collection.json", "application/json"),
    ("x_raw.csv.claim", "application/octet-stream")])
def test_headers_follow_the_suffix(key, content_type):
    assert object_headers(key)["ContentType"] == content_type


@pytest.mark.slow
def test_a_scan_on_s3_uploads_every_file_with_its_content_type(s3_server, bucket_name, tmp_path, shared_testdata):
    pytest.importorskip("rio_stac")
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    for suffix in ("in", "out"):
        client.create_bucket(Bucket=f"{bucket_name}-{suffix}")
    config = StoreConfig(endpoint=s3_server)
    src = shared_testdata / "seed" / "1band.tif"
    client.upload_file(str(src), f"{bucket_name}-in", "Eau Claire/a.tif")
    client.put_object(Bucket=f"{bucket_name}-in", Key="ct_raw.csv", Body=b"Eau Claire/a.tif,1\nmissing.tif,1\n")
    scan(ScanOptions(input_bucket=f"{bucket_name}-in", output_bucket=f"{bucket_name}-out", store=config,
                     work_dir=tmp_path / "work", progress=False, config=config_with(workers=1, stac=True)))
    seen = {}
    for bucket in (f"{bucket_name}-in", f"{bucket_name}-out"):
        for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            head = client.head_object(Bucket=bucket, Key=obj["Key"])
            seen[obj["Key"]] = (head["ContentType"], head.get("CacheControl"))
    expected = {  # the output bucket is listed last, so a key in both is the output's
        "Eau Claire/a.tif": ("image/tiff; application=geotiff; profile=cloud-optimized", "public, max-age=86400"),
        "Eau Claire/a.jpg": ("image/jpeg", "public, max-age=86400"),
        "Eau Claire/a.stac-item.json": ("application/geo+json", "no-cache"),
        "ct_collection.json": ("application/json", "no-cache"),
    }
    for key, headers in expected.items():
        assert seen[key] == headers, key
    results = {k: v for k, v in seen.items() if k.startswith("ct_") and not k.endswith(".json")}
    kinds = {k.rsplit(".", 1)[1]: v for k, v in results.items()}
    assert kinds == {"csv": ("text/csv; charset=utf-8", "no-cache"), "html": ("text/html; charset=utf-8", "no-cache")}
    assert sum("report-" in k for k in results) == 1 and sum("failed-" in k for k in results) == 2
