"""STAC Items and Collection from real COGs in real buckets (folder and moto's HTTP S3), validated by pystac."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pystac = pytest.importorskip("pystac", reason="the 'stac' extra (pystac, rio-stac) is not installed")
pytest.importorskip("rio_stac", reason="the 'stac' extra (pystac, rio-stac) is not installed")

from cog_pipeline.provenance import embed_with_copy  # noqa: E402
from cog_pipeline.stac import collection_key, item_key, validate, write_stac  # noqa: E402

KEY = "Eau Claire/a #1?/Ünïcødé scan.tif"
JPG = KEY[: -len(".tif")] + ".jpg"


@pytest.fixture(scope="module")
def cog(shared_testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("stac") / "cog.tif"
    embed_with_copy(shared_testdata / "rasterio/RGB.byte.tif", dst, {"CREATED_UTC": "2026-12-01T10:15:00Z"})
    return dst


def test_items_and_collection(buckets, cog: Path) -> None:
    buckets.output.upload(cog, KEY)
    buckets.output.put_bytes(JPG, b"\xff\xd8 a jpeg stands here")
    keys = write_stac(buckets.output, [(KEY, JPG)], "Counties/test_raw.csv")
    assert keys == [item_key(KEY), collection_key("Counties/test_raw.csv")] == ["Eau Claire/a #1?/Ünïcødé scan.stac-item.json", "Counties/test_collection.json"]
    item = json.loads(buckets.output.read_bytes(keys[0])[0])
    props = item["properties"]
    assert props["datetime"].startswith("2026-12-01T10:15:00")  # from the COG's provenance
    assert props["proj:shape"] == [718, 791] and (props.get("proj:epsg") == 32618 or props.get("proj:code") == "EPSG:32618")
    assert len(item["assets"]["data"]["raster:bands"]) == 3
    assert item["assets"]["data"]["href"] == buckets.output.url(KEY)
    assert item["assets"]["thumbnail"] == {"href": buckets.output.url(JPG), "type": "image/jpeg", "roles": ["thumbnail"]}
    assert item["collection"] == "Counties/test"
    result = validate(item)
    assert any(s.endswith("item.json") for s in result["valid"])
    # every extension is either checked against its schema or reported as not checked: never silently passed
    assert {e for e in item["stac_extensions"]} == {e for e in result["unchecked"]} | {e for e in result["valid"] if "extensions" in e}
    collection = json.loads(buckets.output.read_bytes(keys[1])[0])
    assert any(s.endswith("collection.json") for s in validate(collection)["valid"])
    assert [ln["href"] for ln in collection["links"] if ln["rel"] == "item"] == [buckets.output.url(item_key(KEY))]
    assert collection["extent"]["spatial"]["bbox"][0] == pytest.approx(item["bbox"])


def test_validation_rejects_a_broken_item(tmp_path: Path, cog: Path) -> None:
    from cog_pipeline.store import LocalStore

    (tmp_path / "out").mkdir()
    store = LocalStore(tmp_path, "out")
    store.upload(cog, "x.tif")
    write_stac(store, [("x.tif", None)], "m_raw.csv")
    item = json.loads(store.read_bytes("x.stac-item.json")[0])
    assert "thumbnail" not in item["assets"]
    del item["geometry"]
    with pytest.raises(pystac.STACValidationError):
        validate(item)


@pytest.mark.slow
def test_scan_with_stac_publishes_valid_items_and_a_collection(buckets, shared_testdata: Path, tmp_path: Path) -> None:
    """`--stac` is recorded in run.json at the claim; reconcile then puts an Item beside each processed COG and the
    manifest's Collection, all valid per pystac (extensions: checked when their schema host answers)."""
    from cog_pipeline.pipeline import ScanOptions, scan
    from cog_pipeline.rundir import RunDir

    keys = ["Eau Claire/a #1 ü.tif", "b/rgb.tif"]
    buckets.put_file(keys[0], shared_testdata / "rasterio/byte.tif")
    buckets.put_file(keys[1], shared_testdata / "rasterio/RGB.byte.tif")
    buckets.put_text("Counties/m_raw.csv", f"{keys[0]},1\n{keys[1]},3\nmissing.tif,1\n")
    options = ScanOptions(buckets.input_bucket, buckets.output_bucket, buckets.config, tmp_path / "work", workers=1, progress=False, stac=True)
    (run_dir,) = scan(options, echo=lambda _m: None).reconciled
    assert RunDir(run_dir.path).load().stac is True
    for key in keys:
        item = json.loads(buckets.output.read_bytes(item_key(key))[0])
        assert item["assets"]["data"]["href"] == buckets.output.url(key)
        assert any(s.endswith("item.json") for s in validate(item)["valid"])
    collection = json.loads(buckets.output.read_bytes(collection_key("Counties/m_raw.csv"))[0])
    assert any(s.endswith("collection.json") for s in validate(collection)["valid"])
    assert sorted(ln["href"] for ln in collection["links"] if ln["rel"] == "item") == sorted(buckets.output.url(item_key(k)) for k in keys)
    assert item_key("missing.tif") not in buckets.output_keys()


@pytest.mark.slow
def test_scan_without_stac_writes_none(buckets, shared_testdata: Path, tmp_path: Path) -> None:
    from cog_pipeline.pipeline import ScanOptions, scan

    buckets.put_file("a.tif", shared_testdata / "rasterio/byte.tif")
    buckets.put_text("m_raw.csv", "a.tif,1\n")
    scan(ScanOptions(buckets.input_bucket, buckets.output_bucket, buckets.config, tmp_path / "work", workers=1, progress=False), echo=lambda _m: None)
    assert sorted(buckets.output_keys()) == ["a.jpg", "a.tif"]
