"""Provenance round trip: embed in a COG, put it in a real bucket (folder and moto's HTTP S3), read the header
back with ranged reads, through the library and through the `provenance` command."""

from __future__ import annotations

import json
import multiprocessing
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from cog_pipeline.cli.operator import provenance_cmd, split_location
from cog_pipeline.publishing.provenance import (
    append_provenance,
    embed_with_copy,
    metadata_arguments,
    provenance_line,
    provenance_metadata,
    read_provenance,
    read_provenance_lines,
)
from cog_pipeline.storage.store import ObjectInfo
from tests.conftest import config_with

KEY = "Eau Claire/a#b?c d/Ünïcødé 'x' %20.tif"


def _meta() -> dict[str, str]:
    return provenance_metadata(
        source_bucket="in put", source_key=KEY, source_etag="abc123", source_size=1234,
        manifest_key="Counties/x_raw.csv", run_id="20261201-101500", converter_version="generate_cog 0.1.0",
        creation_options={"COMPRESS": "LZW", "BLOCKSIZE": "512"}, now=datetime(2026, 12, 1, 10, 15, tzinfo=timezone.utc),
    )


@pytest.fixture(scope="module")
def tagged_cog(shared_testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("prov") / "tagged.tif"
    embed_with_copy(shared_testdata / "rasterio/RGB.byte.tif", dst, _meta())
    return dst


def test_metadata_fields() -> None:
    meta = _meta()
    assert meta["SOURCE_KEY"] == KEY and meta["SOURCE_SIZE"] == "1234" and meta["RUN_ID"] == "20261201-101500"
    assert meta["CREATION_OPTIONS"] == "BLOCKSIZE=512 COMPRESS=LZW"
    assert meta["CREATED_UTC"] == "2026-12-01T10:15:00Z" and meta["GDAL_VERSION"] == rasterio.__gdal_version__
    args = metadata_arguments(meta)
    assert args[args.index(f"SOURCE_KEY={KEY}") - 1] == "--metadata"


def test_embedding_keeps_pixels_and_cog_validity(tagged_cog: Path, shared_testdata: Path) -> None:
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _ = cog_validate(str(tagged_cog))
    assert valid, errors
    with rasterio.open(tagged_cog) as out, rasterio.open(shared_testdata / "rasterio/RGB.byte.tif") as src:
        assert np.array_equal(out.read(), src.read())
        assert out.tags(ns="COG_PIPELINE") == _meta()


def test_round_trip_over_a_bucket(buckets, tagged_cog: Path) -> None:
    """folder and S3: the same domain comes back, from the header only."""
    buckets.output.upload(tagged_cog, KEY)
    stats: dict[str, int] = {}
    assert read_provenance(buckets.output, KEY, stats=stats) == _meta()
    size = tagged_cog.stat().st_size
    assert stats["requests"] <= 2 and stats["bytes"] < size / 4, (stats, size)


def test_cog_without_provenance_reads_empty(buckets, shared_testdata: Path) -> None:
    buckets.output.upload(shared_testdata / "rasterio/byte.tif", "plain #1.tif")
    assert read_provenance(buckets.output, "plain #1.tif") == {}


def test_command_folder_bucket_with_run_record(tmp_path: Path, tagged_cog: Path) -> None:
    root = tmp_path / "buckets"
    (root / "out" / "Eau Claire/a#b?c d").mkdir(parents=True)
    (root / "out" / KEY).write_bytes(tagged_cog.read_bytes())
    run_dir = tmp_path / "work" / "workflow-run-20261201-101500"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"state": "reconciled", "engine": "local", "manifest_key": "Counties/x_raw.csv",
                                                  "timestamp": "20261201-101500", "input_bucket": "in", "output_bucket": "out",
                                                  "processing_key": "Counties/x_processing-20261201-101500.csv",
                                                  "store": {"access_key_file": "/secret/path"}}))
    info = ObjectInfo(KEY, 1234, "abc123", datetime.now(timezone.utc))
    append_provenance(run_dir, provenance_line(record={"status": "succeeded", "attempts": 2, "seconds": 1.5, "key": KEY},
                                               source=info, outputs={KEY: info}, source_bucket="in", output_bucket="out",
                                               run_id="20261201-101500", host="worker-1"))
    result = CliRunner().invoke(provenance_cmd, ["--local-root", str(root), f"out/{KEY}", "-w", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    assert f"SOURCE_KEY: {KEY}" in result.output
    assert "run 20261201-101500: state=reconciled" in result.output and "attempts=2" in result.output and "host=worker-1" in result.output
    assert "/secret/path" not in result.output
    as_json = CliRunner().invoke(provenance_cmd, ["--local-root", str(root), "--bucket", "out", "--key", KEY, "--json"])
    assert json.loads(as_json.output)["lineage"] == _meta()


def test_command_s3_with_bucket_and_key(s3_server: str, bucket_name: str, tagged_cog: Path) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket_name)
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").upload_file(str(tagged_cog), bucket_name, KEY)
    result = CliRunner().invoke(provenance_cmd, ["-e", s3_server, "--bucket", bucket_name, "--key", KEY, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["lineage"]["SOURCE_ETAG"] == "abc123"
    url_form = CliRunner().invoke(provenance_cmd, ["-e", s3_server, f"s3://{bucket_name}/{KEY}", "--json"])
    assert json.loads(url_form.output)["key"] == KEY


def test_command_missing_object_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result = CliRunner().invoke(provenance_cmd, ["--local-root", str(tmp_path), "out/nope.tif"])
    assert result.exit_code == 1 and result.output.startswith("error: ") and "Traceback" not in result.output


def test_location_split_is_literal() -> None:
    assert split_location("s3://b/a%20b#c?d") == ("b", "a%20b#c?d")
    assert split_location("b/x/y.tif") == ("b", "x/y.tif")


def _writer(run_dir: str, n: int, tag: int) -> None:
    for i in range(n):
        append_provenance(Path(run_dir), {"tag": tag, "i": i, "pad": "ü" * 3000})


def test_lines_never_interleave(tmp_path: Path) -> None:
    procs = [multiprocessing.Process(target=_writer, args=(str(tmp_path), 100, t)) for t in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = read_provenance_lines(tmp_path)
    assert len(lines) == 300 and {(ln["tag"], ln["i"]) for ln in lines} == {(t, i) for t in range(3) for i in range(100)}


def _real_run(shared_testdata: Path, tmp_path: Path, key: str):
    import shutil

    from cog_pipeline.pipeline import ScanOptions, scan
    from cog_pipeline.storage.store import StoreConfig

    root = tmp_path / "buckets"
    (root / "out").mkdir(parents=True)
    (root / "in" / key).parent.mkdir(parents=True)
    shutil.copyfile(shared_testdata / "rasterio/byte.tif", root / "in" / key)
    (root / "in" / "m_raw.csv").write_text(f"{key},1\nnope.tif,1\n", encoding="utf-8")
    report = scan(ScanOptions("in", "out", StoreConfig(local_root=root), tmp_path / "work", progress=False, config=config_with(workers=1)), echo=lambda _m: None)
    return root, report.reconciled[0].path


@pytest.mark.slow
def test_record_provenance_from_a_real_run(shared_testdata: Path, tmp_path: Path) -> None:
    """After a real scan, one line per processed row (input version -> both outputs); a rerun does not duplicate."""
    from cog_pipeline.storage.listing import find_keys
    from cog_pipeline.publishing.provenance import record_provenance
    from cog_pipeline.run.rundir import ProcessedOutput, RunDir
    from cog_pipeline.storage.store import LocalStore

    key, jpg = "Eau Claire/a ü 'x' 1.tif", "Eau Claire/a ü 'x' 1.jpg"
    root, run_dir = _real_run(shared_testdata, tmp_path, key)
    src, out = LocalStore(root, "in"), LocalStore(root, "out")
    sources, outputs = find_keys(src, [key]), find_keys(out, [key, jpg])
    (line_no,) = [r.line for r in RunDir(run_dir).job_records().values()]
    processed = [ProcessedOutput(line_no, key, {"cog": outputs[key], "preview": outputs[jpg]})]
    for _ in range(2):
        assert record_provenance(run_dir, processed=processed, sources=sources, source_bucket="in", output_bucket="out") == 1
    (line,) = read_provenance_lines(run_dir)
    assert line["source"] == {"bucket": "in", "key": key, "etag": sources[key].etag, "size": sources[key].size}
    assert sorted((o["key"], o["etag"]) for o in line["outputs"]) == sorted((k, outputs[k].etag) for k in (key, jpg))
    assert line["attempts"] == 1 and line["status"] == "succeeded" and line["run_id"] == run_dir.name.removeprefix("workflow-run-")


@pytest.mark.slow
def test_local_engine_delivers_keys_with_hash(shared_testdata: Path, tmp_path: Path) -> None:
    root, _ = _real_run(shared_testdata, tmp_path, "Eau Claire/a #1.tif")
    assert sorted(p.name for p in (root / "out" / "Eau Claire").iterdir()) == ["a #1.jpg", "a #1.tif"]


# ---------------------------------------------------------------------------------------------------------------
# Wired: the generator gives every job its provenance; a real run embeds it; reconcile writes provenance.jsonl

def _job_provenance(job: dict) -> dict[str, str]:
    from cog_pipeline.publishing.provenance import METADATA_B64, decode_metadata

    args = job["arguments"]
    return decode_metadata(args[args.index(METADATA_B64) + 1])


def test_generated_jobs_carry_their_provenance(tmp_path: Path) -> None:
    """One base64url argument per job: only [A-Za-z0-9_-], whatever the key holds; it decodes to the row's lineage
    with the pre-flight listing's ETag and size."""
    import re

    import yaml

    from cog_pipeline.storage.listing import find_keys
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate
    from cog_pipeline.run.rundir import RunDir

    from cog_pipeline.storage.store import StoreConfig, open_store

    from .test_workflow_gen import PRESENT, TS, make_run

    root = tmp_path / "buckets"
    for i, key in enumerate(PRESENT):
        (root / "in" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "in" / key).write_bytes(b"tif" * (i + 1))
    (root / "out").mkdir(parents=True)
    config = StoreConfig(local_root=root)
    run, store = make_run(tmp_path, config), open_store("in", config)
    generate(run, store, WorkflowSettings())
    listed = find_keys(store, PRESENT)
    jobs = yaml.safe_load(run.file(RunDir.WORKFLOW).read_text(encoding="utf-8"))["jobs"]
    assert len(jobs) == 3
    for job in jobs:
        key = job["metadata"]["key"]
        value = job["arguments"][job["arguments"].index("--metadata-b64") + 1]
        assert re.fullmatch(r"[A-Za-z0-9_-]+", value)
        meta = _job_provenance(job)
        assert meta["SOURCE_KEY"] == key and meta["SOURCE_BUCKET"] == "in"
        assert (meta["SOURCE_ETAG"], meta["SOURCE_SIZE"]) == (listed[key].etag, str(listed[key].size))
        assert meta["MANIFEST_KEY"] == "Counties/batch_raw.csv" and meta["RUN_ID"] == TS
        assert meta["CONVERTER_VERSION"].startswith("cog-pipeline ") and "generate_cog sha256:" in meta["CONVERTER_VERSION"]
        assert "COMPRESS=LZW" in meta["CREATION_OPTIONS"] and "JPEG_QUALITY=80" in meta["CREATION_OPTIONS"]
        assert "GDAL_VERSION" not in meta and "CREATED_UTC" not in meta  # the converter adds what only it knows


def test_fast_writer_with_provenance_equals_pegasus_api(tmp_path: Path) -> None:
    from cog_pipeline.run.manifest import parse_manifest
    from cog_pipeline.pegasus import workflow_gen as wg
    from cog_pipeline.publishing.provenance import encode_metadata

    from .oracles import build_api_workflow, comparable_workflow
    from .test_workflow_gen import MANIFEST

    rows = parse_manifest(MANIFEST).rows
    settings = wg.WorkflowSettings()

    def prov(key: str) -> str:
        return encode_metadata({"SOURCE_KEY": key})

    wg.write_workflow(tmp_path / "fast.yml", rows, settings, "w", "true", {}, prov)
    build_api_workflow(rows, settings, "w", "true", {}, prov).write(str(tmp_path / "api.yml"))
    assert comparable_workflow(tmp_path / "fast.yml") == comparable_workflow(tmp_path / "api.yml")


def test_encoding_round_trips_any_text() -> None:
    from cog_pipeline.publishing.provenance import decode_metadata, encode_metadata

    meta = {"SOURCE_KEY": KEY + ' \n\t"&<>=%?#\\', "EMPTY": ""}
    assert decode_metadata(encode_metadata(meta)) == meta


def test_converter_refuses_a_damaged_metadata_argument(tmp_path: Path, shared_testdata: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cog_pipeline.transformations.cli", str(shared_testdata / "rasterio/byte.tif"),
                           str(tmp_path / "o.tif"), str(tmp_path / "o.jpg"), "--metadata-b64", "not*base64"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "USAGE: --metadata-b64: expected base64url of a JSON object"
    assert not (tmp_path / "o.tif").exists()


def _scan(config, work: Path, input_bucket: str, output_bucket: str):
    from cog_pipeline.pipeline import ScanOptions, scan

    report = scan(ScanOptions(input_bucket, output_bucket, config, work, progress=False, config=config_with(workers=1)), echo=lambda _m: None)
    assert len(report.reconciled) == 1, report
    return report.reconciled[0].path


@pytest.mark.slow
def test_real_run_embeds_provenance_in_the_cog(shared_testdata: Path, tmp_path: Path) -> None:
    """The local engine runs the built converter: the COG's COG_PIPELINE domain holds the row's lineage; pixels are
    the source's and the COG is valid; reconcile wrote provenance.jsonl."""
    from datetime import datetime

    from rio_cogeo.cogeo import cog_validate

    from cog_pipeline.storage.listing import find_keys
    from cog_pipeline.storage.store import LocalStore

    key = "Eau Claire/a #1 ü 'x' %20.tif"
    root, run_dir = _real_run(shared_testdata, tmp_path, key)
    listed = find_keys(LocalStore(root, "in"), [key])[key]
    cog = root / "out" / key
    with rasterio.open(cog) as out, rasterio.open(shared_testdata / "rasterio/byte.tif") as src:
        tags = out.tags(ns="COG_PIPELINE")
        assert np.array_equal(out.read(), src.read())
    assert cog_validate(str(cog))[0]
    assert {k: tags[k] for k in ("SOURCE_BUCKET", "SOURCE_KEY", "SOURCE_ETAG", "SOURCE_SIZE", "MANIFEST_KEY", "RUN_ID")} == {
        "SOURCE_BUCKET": "in", "SOURCE_KEY": key, "SOURCE_ETAG": listed.etag, "SOURCE_SIZE": str(listed.size),
        "MANIFEST_KEY": "m_raw.csv", "RUN_ID": run_dir.name.removeprefix("workflow-run-")}
    assert tags["GDAL_VERSION"] and tags["CONVERTER_VERSION"].startswith("cog-pipeline ")
    assert "COMPRESS=LZW" in tags["CREATION_OPTIONS"]
    assert datetime.strptime(tags["CREATED_UTC"], "%Y-%m-%dT%H:%M:%SZ")
    (line,) = read_provenance_lines(run_dir)
    assert line["source"]["key"] == key and line["source"]["etag"] == listed.etag


@pytest.mark.slow
def test_provenance_command_after_a_real_run(buckets, shared_testdata: Path, tmp_path: Path) -> None:
    """Through the real pipeline on folder and S3 buckets: `cog-pipeline provenance` reads the COG's header and finds
    the run's record and its provenance.jsonl line."""
    key = "Eau Claire/b #2 ü?.tif"
    buckets.put_file(key, shared_testdata / "rasterio/byte.tif")
    buckets.put_text("m_raw.csv", f"{key},1\n")
    run_dir = _scan(buckets.config, tmp_path / "work", buckets.input_bucket, buckets.output_bucket)
    where = ["--local-root", str(buckets.config.local_root)] if buckets.kind == "folder" else ["-e", buckets.config.endpoint]
    result = CliRunner().invoke(provenance_cmd, [*where, "--bucket", buckets.output_bucket, "--key", key, "-w", str(tmp_path / "work"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["lineage"]["SOURCE_KEY"] == key and out["lineage"]["RUN_ID"] == run_dir.name.removeprefix("workflow-run-")
    assert out["run"]["state"] == "reconciled" and "store" not in out["run"]
    (line,) = out["provenance"]
    assert line["source"]["etag"] == out["lineage"]["SOURCE_ETAG"] and line["status"] == "succeeded"
    assert out["header_requests"] <= 2
