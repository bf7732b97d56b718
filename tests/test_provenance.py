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

from cog_pipeline.operator_cli import provenance_cmd, split_location
from cog_pipeline.provenance import (
    append_provenance,
    embed_with_copy,
    metadata_arguments,
    provenance_line,
    provenance_metadata,
    read_provenance,
    read_provenance_lines,
)
from cog_pipeline.store import ObjectInfo

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
    from cog_pipeline.store import StoreConfig

    root = tmp_path / "buckets"
    (root / "out").mkdir(parents=True)
    (root / "in" / key).parent.mkdir(parents=True)
    shutil.copyfile(shared_testdata / "rasterio/byte.tif", root / "in" / key)
    (root / "in" / "m_raw.csv").write_text(f"{key},1\nnope.tif,1\n", encoding="utf-8")
    report = scan(ScanOptions("in", "out", StoreConfig(local_root=root), tmp_path / "work", workers=1, progress=False), echo=lambda _m: None)
    return root, report.reconciled[0].path


@pytest.mark.slow
def test_record_provenance_from_a_real_run(shared_testdata: Path, tmp_path: Path) -> None:
    """After a real scan, one line per processed row (input version -> both outputs); a rerun does not duplicate."""
    from cog_pipeline.listing import find_keys
    from cog_pipeline.provenance import record_provenance
    from cog_pipeline.store import LocalStore

    key, jpg = "Eau Claire/a ü 'x' 1.tif", "Eau Claire/a ü 'x' 1.jpg"
    root, run_dir = _real_run(shared_testdata, tmp_path, key)
    src, out = LocalStore(root, "in"), LocalStore(root, "out")
    sources, outputs = find_keys(src, [key]), find_keys(out, [key, jpg])
    for _ in range(2):
        assert record_provenance(run_dir, sources=sources, outputs=outputs, source_bucket="in", output_bucket="out") == 1
    (line,) = read_provenance_lines(run_dir)
    assert line["source"] == {"bucket": "in", "key": key, "etag": sources[key].etag, "size": sources[key].size}
    assert sorted((o["key"], o["etag"]) for o in line["outputs"]) == sorted((k, outputs[k].etag) for k in (key, jpg))
    assert line["attempts"] == 1 and line["status"] == "succeeded" and line["run_id"] == run_dir.name.removeprefix("workflow-run-")


@pytest.mark.slow
def test_local_engine_delivers_keys_with_hash(shared_testdata: Path, tmp_path: Path) -> None:
    root, _ = _real_run(shared_testdata, tmp_path, "Eau Claire/a #1.tif")
    assert sorted(p.name for p in (root / "out" / "Eau Claire").iterdir()) == ["a #1.jpg", "a #1.tif"]
