"""Issue 22.8: the claim time when an S3 endpoint's answers carry no `Date` header.

Reconcile compares outputs' LastModified with the claim time, which the processing file's PUT answer dates
(the store's clock). An endpoint (or a proxy in front of it) that sends no `Date` falls back to this machine's
clock. A small HTTP proxy on loopback in front of moto strips the header from every answer.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cog_pipeline.run.claim import claim_one
from cog_pipeline.storage.store import StoreConfig, open_store

from .fault_proxy import FaultProxy


@pytest.fixture()
def no_date_endpoint(s3_server):
    with FaultProxy(s3_server, strip_date=True) as proxy:
        yield proxy.endpoint


def test_without_a_date_header_the_claim_time_is_this_machines_clock(no_date_endpoint, bucket_name, tmp_path):
    import boto3

    boto3.client("s3", endpoint_url=no_date_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket_name)
    config = StoreConfig(endpoint=no_date_endpoint)
    store = open_store(bucket_name, config)
    store.put_bytes("x_raw.csv", b"a.tif,1\n")
    before = datetime.now(timezone.utc)
    claim = claim_one(store, store.head("x_raw.csv"), work_dir=tmp_path / "w", output_bucket=bucket_name, store_config=config)
    after = datetime.now(timezone.utc)
    claimed_at = datetime.fromisoformat(claim.run_dir.load().claimed_at)
    assert before - timedelta(seconds=1) <= claimed_at <= after + timedelta(seconds=1)
    assert claim.names.processing_key in [o.key for o in store.list("")]
