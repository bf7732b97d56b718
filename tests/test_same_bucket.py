"""Input bucket = output bucket (issue 8.5): refused unless outputs go under a prefix or the operator says
the COGs may replace the sources. Real folder buckets (and moto's HTTP server), real rasters, the real CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from cog_pipeline.cli.main import main as cli
from cog_pipeline.examples import write_raster

KEYS = ("Eau Claire/a b.tif", "X/a%20b.tif", "Weird/hash#tag.tif")


def _bucket(root: Path, rows: str | None = None) -> Path:
    bucket = root / "one"
    for i, key in enumerate(KEYS):
        write_raster(bucket / key, 1, size=24 + 4 * i, seed=i)
    (bucket / "m_raw.csv").write_text(rows if rows is not None else "".join(f"{k},1\n" for k in KEYS))
    return bucket


def _scan(root: Path, work: Path, *extra: str):
    args = ["scan", "--local-root", str(root), "--input-bucket", "one", "--output-bucket", "one", "-w", str(work), "--quiet", *extra]
    return CliRunner().invoke(cli, args)


def _pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_one_bucket_without_a_prefix_is_refused_before_claiming(tmp_path):
    bucket = _bucket(tmp_path)
    before = {k: (bucket / k).read_bytes() for k in KEYS}
    result = _scan(tmp_path, tmp_path / "work")
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "--output-prefix" in result.output
    assert (bucket / "m_raw.csv").is_file() and not list(bucket.glob("m_processing-*"))
    assert not list((tmp_path / "work").glob("workflow-run-*"))
    assert {k: (bucket / k).read_bytes() for k in KEYS} == before


@pytest.mark.parametrize("prefix", ["cogs", "/cogs/", "a/../b/", ""])
def test_a_prefix_that_cannot_keep_outputs_apart_is_refused(tmp_path, prefix):
    bucket = _bucket(tmp_path)
    result = _scan(tmp_path, tmp_path / "work", "--output-prefix", prefix)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert (bucket / "m_raw.csv").is_file()


@pytest.mark.slow
def test_with_a_prefix_the_sources_stay_and_the_outputs_land_under_it(tmp_path):
    bucket = _bucket(tmp_path)
    before = {k: (bucket / k).read_bytes() for k in KEYS}
    result = _scan(tmp_path, tmp_path / "work", "--output-prefix", "cogs/")
    assert result.exit_code == 0, result.output
    assert {k: (bucket / k).read_bytes() for k in KEYS} == before  # sources untouched, byte for byte
    for key in KEYS:
        out = bucket / "cogs" / key
        assert np.array_equal(_pixels(out), _pixels(bucket / key)), key
        assert (bucket / "cogs" / (key[: -len(".tif")] + ".jpg")).is_file()
    (processed,) = bucket.glob("m_processed-*.csv")
    assert sorted(processed.read_text().splitlines()) == sorted(f"{k},1" for k in KEYS)
    assert not list(bucket.glob("m_failed-*"))


@pytest.mark.slow
def test_a_row_under_the_output_prefix_fails_with_a_reason(tmp_path):
    bucket = _bucket(tmp_path, rows="Eau Claire/a b.tif,1\ncogs/old.tif,1\n")
    write_raster(bucket / "cogs" / "old.tif", 1, size=20)
    old = (bucket / "cogs" / "old.tif").read_bytes()
    result = _scan(tmp_path, tmp_path / "work", "--output-prefix", "cogs/")
    assert result.exit_code == 0, result.output
    (reasons,) = bucket.glob("m_failed-*-reasons.csv")
    assert "cogs/old.tif" in reasons.read_text() and "output prefix" in reasons.read_text()
    assert (bucket / "cogs" / "old.tif").read_bytes() == old and not (bucket / "cogs" / "cogs").exists()
    assert (bucket / "cogs" / "Eau Claire" / "a b.tif").is_file()


@pytest.mark.slow
def test_replace_inputs_lets_the_cogs_replace_the_sources(tmp_path):
    bucket = _bucket(tmp_path)
    before = {k: (bucket / k).read_bytes() for k in KEYS}
    pixels = {k: _pixels(bucket / k) for k in KEYS}
    result = _scan(tmp_path, tmp_path / "work", "--replace-inputs")
    assert result.exit_code == 0, result.output
    for key in KEYS:
        assert (bucket / key).read_bytes() != before[key]  # now the COG ...
        assert np.array_equal(_pixels(bucket / key), pixels[key])  # ... of the same image
        with rasterio.open(bucket / key) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" or ds.profile.get("tiled")
    assert len(list(bucket.glob("m_processed-*.csv"))) == 1


@pytest.mark.slow
def test_with_a_prefix_on_s3_the_outputs_land_under_it(s3_server, bucket_name, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=bucket_name)
    key = "Weird/hash#tag.tif"
    write_raster(tmp_path / "src.tif", 1, size=24)
    client.upload_file(str(tmp_path / "src.tif"), bucket_name, key)
    client.put_object(Bucket=bucket_name, Key="m_raw.csv", Body=f"{key},1\n".encode())
    args = ["scan", "-e", s3_server, "--input-bucket", bucket_name, "--output-bucket", bucket_name, "-w", str(tmp_path / "work"),
            "--quiet", "--output-prefix", "cogs/"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket_name)["Contents"]}
    assert {key, "cogs/" + key, "cogs/Weird/hash#tag.jpg"} <= keys
    assert client.get_object(Bucket=bucket_name, Key=key)["Body"].read() == (tmp_path / "src.tif").read_bytes()
    client.download_file(bucket_name, "cogs/" + key, str(tmp_path / "cog.tif"))
    assert np.array_equal(_pixels(tmp_path / "cog.tif"), _pixels(tmp_path / "src.tif"))
    assert [k for k in keys if "_processed-" in k] and not [k for k in keys if "_failed-" in k]


def test_crondor_start_refuses_one_bucket_and_passes_the_prefix_on(tmp_path):
    base = ["crondor", "start", "--local-root", str(tmp_path), "--input-bucket", "one", "--output-bucket", "one", "-w", str(tmp_path / "w"), "--dry-run"]
    refused = CliRunner().invoke(cli, base)
    assert refused.exit_code == 2 and "--output-prefix" in refused.output
    result = CliRunner().invoke(cli, [*base, "--output-prefix", "cogs/"])
    assert result.exit_code == 0, result.output
    (arguments,) = [line for line in result.output.splitlines() if line.startswith("arguments")]
    assert "--output-prefix cogs/ " in arguments


def test_the_generated_workflow_names_prefixed_outputs_for_both_engines(tmp_path):
    """Both engines stage an output where the output replica catalog (outputs.yml) puts it: with a prefix, at
    <prefix><key>; the input replica and the job's key metadata stay the row's key."""
    import yaml

    from cog_pipeline.run.claim import claim_one
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate
    from cog_pipeline.replicas.catalog import job_lfns, object_of_pfn
    from cog_pipeline.storage.store import StoreConfig, open_store

    bucket = _bucket(tmp_path)
    config = StoreConfig(local_root=tmp_path)
    store = open_store("one", config)
    claim = claim_one(store, store.head("m_raw.csv"), work_dir=tmp_path / "w", output_bucket="one", store_config=config, output_prefix="cogs/")
    generate(claim.run_dir, store, WorkflowSettings(write_credentials=False))
    jobs = yaml.safe_load(claim.run_dir.file("workflow.yml").read_text())["jobs"]

    def catalog(name):
        doc = yaml.safe_load(claim.run_dir.file(name).read_text())
        return {r["lfn"]: object_of_pfn(r["pfns"][0]["pfn"], tmp_path) for r in doc["replicas"]}

    inputs, outputs = catalog("replicas.yml"), catalog("outputs.yml")
    for job, key in zip(jobs, KEYS):
        lfn_in, lfn_tif, lfn_jpg = job_lfns(job["id"])
        assert inputs[lfn_in] == ("one", key)
        assert outputs[lfn_tif] == ("one", "cogs/" + key)
        assert outputs[lfn_jpg] == ("one", "cogs/" + key[: -len(".tif")] + ".jpg")
        assert job["metadata"]["key"] == key
    assert bucket.is_dir()


def test_provenance_and_stac_describe_the_outputs_under_the_prefix_not_the_sources(tmp_path):
    """Issue 22.5: with --output-prefix and --stac, STAC Items and provenance used to describe the sources."""
    import json

    bucket = _bucket(tmp_path, "Eau Claire/a b.tif,1\n")
    result = _scan(tmp_path, tmp_path / "work", "--output-prefix", "cogs/", "--stac")
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "work").glob("workflow-run-*")
    (line,) = [json.loads(x) for x in (run / "provenance.jsonl").read_text().splitlines()]
    assert line["source"]["key"] == "Eau Claire/a b.tif"
    cog = bucket / "cogs" / "Eau Claire" / "a b.tif"
    assert {(o["key"], o["size"]) for o in line["outputs"]} == {
        ("cogs/Eau Claire/a b.tif", cog.stat().st_size),
        ("cogs/Eau Claire/a b.jpg", (bucket / "cogs" / "Eau Claire" / "a b.jpg").stat().st_size),
    }
    item = json.loads((bucket / "cogs" / "Eau Claire" / "a b.stac-item.json").read_text())
    assert not (bucket / "Eau Claire" / "a b.stac-item.json").exists()
    assert all("cogs/Eau%20Claire/" in asset["href"] or "cogs/Eau Claire/" in asset["href"] for asset in item["assets"].values())
