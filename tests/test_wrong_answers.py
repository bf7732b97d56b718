"""Issue 22.5 and 22.6: answers that used to be wrong, each reproduced against real parts.

Real folders and moto's HTTP S3 server, real rasters through the real converter, the real command line and a
live process holding a run's lease.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cog_pipeline.run.claim import claim_one
from cog_pipeline.examples import write_raster
from cog_pipeline.pipeline import ScanOptions, scan
from cog_pipeline.run.rundir import RECONCILED, Decisions, list_run_dirs
from tests.conftest import config_with


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cog_pipeline", *args], capture_output=True, text=True, timeout=300)


def _results(buckets, kind: str) -> str:
    keys = [k for k in buckets.input_keys() if f"_{kind}-" in k and not k.endswith("-reasons.csv")]
    return "".join(buckets.input.read_bytes(k)[0].decode() for k in sorted(keys))


def test_reconcile_refuses_a_run_a_live_process_carries_on(buckets, tmp_path):
    """`cog-pipeline reconcile RUN_DIR` on a run still converting used to file its rows failed for good."""
    buckets.put_text("x_raw.csv", "a.tif,1\n")
    claim = claim_one(buckets.input, buckets.input.head("x_raw.csv"), work_dir=tmp_path / "w",
                      output_bucket=buckets.output_bucket, store_config=buckets.config)
    assert claim.run_dir.acquire_lease()  # this (live) test process carries the run on, as a scan would
    refused = _cli("reconcile", str(claim.run_dir.path))
    assert refused.returncode == 1 and "still being carried on" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert claim.names.processing_key in buckets.input_keys() and _results(buckets, "failed") == ""
    assert claim.run_dir.load().state != RECONCILED

    forced = _cli("reconcile", "--force", str(claim.run_dir.path))
    assert forced.returncode == 0, forced.stderr
    assert _results(buckets, "failed") == "a.tif,1\n"


def test_reconcile_goes_ahead_once_the_lease_is_released(buckets, tmp_path):
    buckets.put_text("x_raw.csv", "a.tif,1\n")
    claim = claim_one(buckets.input, buckets.input.head("x_raw.csv"), work_dir=tmp_path / "w",
                      output_bucket=buckets.output_bucket, store_config=buckets.config)
    claim.run_dir.acquire_lease()
    claim.run_dir.release_lease()
    done = _cli("reconcile", str(claim.run_dir.path))
    assert done.returncode == 0, done.stderr
    assert _results(buckets, "failed") == "a.tif,1\n"


def test_keys_starting_with_a_dash_are_converted(buckets, tmp_path):
    """A key such as `-x.tif` used to fail every attempt with a usage error from the converter."""
    for key in ("-x.tif", "--bands.tif", "d/-y.tif"):
        path = tmp_path / "src" / key.replace("/", "_")
        write_raster(path, bands=1, size=64)
        buckets.put_file(key, path)
    buckets.put_text("x_raw.csv", "-x.tif,1\n--bands.tif,1\nd/-y.tif,1\n")
    options = ScanOptions(buckets.input_bucket, buckets.output_bucket, buckets.config, tmp_path / "work", progress=False, config=config_with(workers=1))
    scan(options, echo=lambda _m: None)
    assert _results(buckets, "failed") == ""
    assert _results(buckets, "processed") == "-x.tif,1\n--bands.tif,1\nd/-y.tif,1\n"
    assert {"-x.tif", "-x.jpg", "--bands.tif", "--bands.jpg", "d/-y.tif", "d/-y.jpg"} <= set(buckets.output_keys())


def test_an_endpoint_with_credentials_is_refused_and_never_written(s3_server, tmp_path):
    """`-e http://user:pass@host` used to be stored verbatim in run.json (mode 0644)."""
    host = s3_server.removeprefix("http://")
    result = _cli("scan", "--input-bucket", "in", "--output-bucket", "out", "-e", f"http://AKIAUSER:s3cr3tpass@{host}",
                  "-w", str(tmp_path / "w"))
    assert result.returncode == 2, result.stderr
    assert "holds credentials" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "s3cr3tpass" not in result.stderr + result.stdout and "AKIAUSER" not in result.stderr + result.stdout
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").rglob("run.json"))


def test_run_json_never_holds_an_endpoints_credentials(tmp_path):
    from cog_pipeline.storage.store import StoreConfig, StoreError

    config = StoreConfig(endpoint="https://user:secret@s3.example.org")
    with pytest.raises(StoreError, match="holds credentials") as caught:
        config.s3_client()
    assert "user:secret" not in str(caught.value) and "secret@" not in str(caught.value)


def _claimed_and_generated(buckets, tmp_path, manifest: str):
    """x_raw.csv with these rows, claimed and its workflow generated (as a tick does), nothing run yet."""
    from cog_pipeline.pipeline import prepare

    buckets.put_text("x_raw.csv", manifest)
    options = ScanOptions(buckets.input_bucket, buckets.output_bucket, buckets.config, tmp_path / "work", progress=False, config=config_with(workers=1))
    claim = claim_one(buckets.input, buckets.input.head("x_raw.csv"), work_dir=tmp_path / "work",
                      output_bucket=buckets.output_bucket, store_config=buckets.config)
    prepare(claim.run_dir, options, buckets.input, echo=lambda _m: None)
    return options, claim



def test_a_degenerate_strip_fails_at_once_and_is_not_retried(buckets, tmp_path):
    """A 60,000,000 x 1 TIFF of ~60 KB used to cost ~990 s of worker time (4 attempts) before it failed."""
    import numpy as np
    import rasterio

    strip = tmp_path / "strip.tif"
    with rasterio.open(strip, "w", driver="GTiff", width=60_000_000, height=1, count=1, dtype="uint8",
                       compress="deflate", blockxsize=1_048_576, blockysize=1, tiled=False) as ds:
        ds.write(np.zeros((1, 1, 60_000_000), dtype="uint8"))
    assert strip.stat().st_size < 1_000_000
    buckets.put_file("strip.tif", strip)
    write_raster(tmp_path / "ok.tif", bands=1, size=64)
    buckets.put_file("ok.tif", tmp_path / "ok.tif")
    buckets.put_text("x_raw.csv", "strip.tif,1\nok.tif,1\n")
    options = ScanOptions(buckets.input_bucket, buckets.output_bucket, buckets.config, tmp_path / "work", progress=False, config=config_with(workers=1))
    scan(options, echo=lambda _m: None)
    assert _results(buckets, "processed") == "ok.tif,1\n"
    (run,) = list_run_dirs(tmp_path / "work")
    (row,) = Decisions.load(run.path).failed_sample
    assert row["text"] == "strip.tif,1" and row["reason"].startswith("DEGENERATE_SHAPE: 60000000x1 is over 10,000:1")
    assert "attempts" not in row["reason"]  # refused once, never retried


def test_an_image_replaced_after_generation_is_not_converted_under_the_old_versions_name(buckets, tmp_path):
    """The COG's embedded lineage used to name the version listed at generation while the job converted the
    re-upload. Now the job reads exactly the listed version (If-Match), or the row fails SOURCE_CHANGED."""
    from cog_pipeline.pipeline import carry_on

    write_raster(tmp_path / "v1.tif", bands=1, size=64, seed=1)
    write_raster(tmp_path / "v2.tif", bands=1, size=64, seed=2)
    write_raster(tmp_path / "other.tif", bands=1, size=64, seed=3)
    buckets.put_file("a.tif", tmp_path / "v1.tif")
    buckets.put_file("b.tif", tmp_path / "other.tif")
    options, claim = _claimed_and_generated(buckets, tmp_path, "a.tif,1\nb.tif,1\n")
    buckets.put_file("a.tif", tmp_path / "v2.tif")  # re-uploaded between generation and the job
    carry_on(claim.run_dir, options, buckets.input, echo=lambda _m: None)
    decisions = Decisions.load(claim.run_dir.path)
    assert [r["key"] for r in decisions.processed_sample] == ["b.tif"]
    (row,) = decisions.failed_sample
    assert row["text"] == "a.tif,1" and row["reason"].startswith("SOURCE_CHANGED: "), row
    assert "a.tif" not in buckets.output_keys()


def test_lineage_and_provenance_name_the_version_converted_when_images_are_reuploaded(buckets, tmp_path):
    """provenance.jsonl used to take each source's ETag from a listing made when the run published: an image
    re-uploaded after its job had read it was recorded as the new version, while the COG (and the lineage
    embedded in it) came from the old one. Both now name the version the workflow listed and the job read,
    pinned with If-Match. An image re-uploaded between generation and its job is not converted at all."""
    import numpy as np
    import rasterio

    import cog_pipeline.engines.local as engine_local
    from cog_pipeline.pipeline import finish
    from cog_pipeline.publishing.provenance import read_provenance, read_provenance_lines

    for name, seed in (("a1", 1), ("a2", 2), ("c1", 3), ("c2", 4)):
        write_raster(tmp_path / f"{name}.tif", bands=1, size=64, seed=seed)
    buckets.put_file("a.tif", tmp_path / "a1.tif")
    buckets.put_file("c.tif", tmp_path / "c1.tif")
    options, claim = _claimed_and_generated(buckets, tmp_path, "a.tif,1\nc.tif,1\n")
    converted = buckets.input.head("a.tif")  # the version the workflow listed
    buckets.put_file("c.tif", tmp_path / "c2.tif")  # re-uploaded between generation and its job
    with pytest.MonkeyPatch.context() as patched:  # the END hook does not run: finish is called below, after the re-upload
        patched.setattr(engine_local, "run_end_hook", lambda cmd, run_dir, finish=None: 0)
        (ran,) = engine_local.run_batch([claim.run_dir], workers=1)
    assert ran.succeeded + ran.failed == 2
    buckets.put_file("a.tif", tmp_path / "a2.tif")  # re-uploaded after its job read it, before the run publishes
    assert buckets.input.head("a.tif").etag != converted.etag
    finish(claim.run_dir, input_store=buckets.input, echo=lambda _m: None)

    decisions = Decisions.load(claim.run_dir.path)
    assert [r["key"] for r in decisions.processed_sample] == ["a.tif"], decisions
    (failed,) = decisions.failed_sample
    assert failed["text"] == "c.tif,1" and failed["reason"].startswith("SOURCE_CHANGED: "), decisions
    assert "c.tif" not in buckets.output_keys()
    # The COG holds the first upload's pixels, and its embedded lineage names that version ...
    buckets.output.download("a.tif", tmp_path / "cog.tif")
    with rasterio.open(tmp_path / "cog.tif") as cog, rasterio.open(tmp_path / "a1.tif") as a1, rasterio.open(tmp_path / "a2.tif") as a2:
        pixels = cog.read()
        assert np.array_equal(pixels, a1.read()) and not np.array_equal(pixels, a2.read())
    lineage = read_provenance(buckets.output, "a.tif")
    assert (lineage["SOURCE_ETAG"], lineage["SOURCE_SIZE"]) == (converted.etag, str(converted.size))
    # ... and so does provenance.jsonl, which has no line for the row that was not converted.
    (line,) = read_provenance_lines(claim.run_dir.path)
    assert line["source"] == {"bucket": buckets.input_bucket, "key": "a.tif", "etag": converted.etag, "size": converted.size}
