"""Issue 22.5: a late conditional PUT must not resurrect a processing file beside the run's result files.

Through a real fault proxy on loopback in front of moto's HTTP server: the proxy holds the claim's conditional
PUT of the processing file (If-None-Match: *) longer than botocore's read timeout, so botocore retries it and
the run goes on with the retry; the held copy is let through only after the run finished and removed the
processing file. S3 then creates the file again (If-None-Match: * holds, nothing is there): the resurrection
the issue reproduced with a 90 s hold, here with a 2 s read timeout and a hold ended by the test, not a clock.
"""

from __future__ import annotations

import functools
from pathlib import Path

import boto3
import botocore.config
import pytest

from cog_pipeline.examples import write_raster
from cog_pipeline.pipeline import ScanOptions, scan
from cog_pipeline.storage.store import StoreConfig, open_store

from .conftest import config_with
from .fault_proxy import FaultProxy

READ_TIMEOUT = 2  # seconds: botocore gives up on the held PUT after this long and retries it


def _is_processing_create(method: str, path: str, headers: dict[str, str]) -> bool:
    names = {name.lower() for name in headers}
    return method == "PUT" and "_processing-" in path and "if-none-match" in names


@pytest.fixture()
def short_timeouts(monkeypatch):
    """Every S3 client the scan makes in this process gets a short read timeout (StoreConfig has no knob)."""
    real = botocore.config.Config
    monkeypatch.setattr(botocore.config, "Config", functools.partial(real, connect_timeout=READ_TIMEOUT, read_timeout=READ_TIMEOUT))


def test_a_held_processing_put_let_through_after_the_run_is_removed_by_the_next_tick(s3_server, bucket_name, tmp_path, short_timeouts):
    with FaultProxy(s3_server, hold=_is_processing_create) as proxy:
        config = StoreConfig(endpoint=proxy.endpoint)
        client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
        for bucket in (f"{bucket_name}-in", f"{bucket_name}-out"):
            client.create_bucket(Bucket=bucket)
        store = open_store(f"{bucket_name}-in", config)
        write_raster(tmp_path / "a.tif", bands=1, size=64)
        store.upload(tmp_path / "a.tif", "a.tif")
        store.put_bytes("x_raw.csv", b"a.tif,1\n")
        # Objects the tool did not create: a person's file, and another host's run in flight (no run here).
        theirs = {
            "notes/readme.txt": b"not a manifest\n",
            "y_processing-20200101-000000.csv": b"b.tif,1\n",
            "x_processing-notes.txt": b"a name like ours, not ours\n",
        }
        for key, data in theirs.items():
            store.put_bytes(key, data)
        options = ScanOptions(f"{bucket_name}-in", f"{bucket_name}-out", config, tmp_path / "work", progress=False, config=config_with(workers=1))

        first = scan(options, echo=lambda _m: None)
        assert proxy.held.is_set(), "the proxy never saw the processing file's conditional PUT"
        (run,) = first.reconciled
        names = run.load()
        assert proxy.held_request[1].endswith(names.processing_key)
        processed = f"x_processed-{names.timestamp}.csv"
        keys = [o.key for o in store.list("")]
        assert processed in keys and names.processing_key not in keys, keys  # the retry carried the run to its end

        proxy.release()  # the held PUT arrives now, after reconcile removed the processing file
        assert proxy.delivered.wait(60)
        assert proxy.delivered_status == 200
        keys = [o.key for o in store.list("")]
        assert names.processing_key in keys and processed in keys  # resurrected beside the result file

        lines: list[str] = []
        later = scan(options, echo=lines.append)
        assert later.errors == [] and later.claimed == []
        keys = [o.key for o in store.list("")]
        assert names.processing_key not in keys, lines
        assert any(line.startswith(f"removed {names.processing_key}: a late copy") for line in lines), lines
        assert store.read_bytes(processed)[0] == b"a.tif,1\n"
        for key, data in theirs.items():  # nothing the tool did not create is deleted
            assert store.read_bytes(key)[0] == data
        assert later.orphans == ["y_processing-20200101-000000.csv"]
        assert "a.tif" in keys
        assert sorted(o.key for o in open_store(f"{bucket_name}-out", config).list("")) == ["a.jpg", "a.tif"]
