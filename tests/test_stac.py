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
