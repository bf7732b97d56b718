"""STAC Items and Collection from real COGs in real buckets (folder and moto's HTTP S3), validated by pystac."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pystac = pytest.importorskip("pystac", reason="the 'stac' extra (pystac, rio-stac) is not installed")
pytest.importorskip("rio_stac", reason="the 'stac' extra (pystac, rio-stac) is not installed")

from cog_pipeline.publishing.provenance import embed_with_copy  # noqa: E402
from cog_pipeline.publishing.stac import CATALOG_KEY, SHIPPED_SCHEMAS, collection_key, item_key, offline_schema_map, validate, write_stac  # noqa: E402
from tests.conftest import config_with

KEY = "Eau Claire/a #1?/Ünïcødé scan.tif"
JPG = KEY[: -len(".tif")] + ".jpg"


@pytest.fixture(scope="module")
def cog(shared_testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("stac") / "cog.tif"
    embed_with_copy(shared_testdata / "rasterio/RGB.byte.tif", dst, {"CREATED_UTC": "2026-12-01T10:15:00Z"})
    return dst


@pytest.fixture()
def offline(monkeypatch):
    """No connection leaves this machine: validation must use the shipped schemas."""
    import socket

    real = socket.socket.connect

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"test is offline: no connection to {address[0]}")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def stac_validator_says(path: Path) -> tuple[bool, list]:
    from stac_validator.validate import StacValidate

    checker = StacValidate(str(path), schema_map=offline_schema_map())
    return checker.run(), checker.message


def test_items_collection_and_catalog_are_valid_offline_per_pystac_and_stac_validator(buckets, cog: Path, offline, tmp_path) -> None:
    buckets.output.upload(cog, KEY)
    buckets.output.put_bytes(JPG, b"\xff\xd8 a jpeg stands here")
    keys = write_stac(buckets.output, [{"cog": KEY, "preview": JPG}], "Counties/test_raw.csv")
    assert keys == [item_key(KEY), collection_key("Counties/test_raw.csv"), CATALOG_KEY] == [
        "Eau Claire/a #1?/Ünïcødé scan.stac-item.json", "Counties/test_collection.json", "catalog.json"]
    item, collection, catalog = (json.loads(buckets.output.read_bytes(k)[0]) for k in keys)
    props = item["properties"]
    assert props["created"] == "2026-12-01T10:15:00Z"  # processing time, from the COG's provenance
    assert props["proj:shape"] == [718, 791] and (props.get("proj:epsg") == 32618 or props.get("proj:code") == "EPSG:32618")
    bands = item["assets"]["data"]["raster:bands"]
    assert len(bands) == 3 and all(b["histogram"]["count"] == len(b["histogram"]["buckets"]) for b in bands)
    assert item["assets"]["data"]["href"] == buckets.output.url(KEY)
    assert item["assets"]["thumbnail"] == {"href": buckets.output.url(JPG), "type": "image/jpeg", "roles": ["thumbnail"]}
    # URL-safe ids, unique per key; exactly one collection link, to the Collection's JSON; a root Catalog.
    assert re.fullmatch(r"Eau-Claire-a-1-n-c-d-scan-[0-9a-f]{8}", item["id"]) and item["collection"] == collection["id"]
    assert re.fullmatch(r"[A-Za-z0-9._-]+", collection["id"])
    by_rel = {rel: [ln["href"] for ln in item["links"] if ln["rel"] == rel] for rel in ("self", "collection", "root")}
    assert by_rel == {"self": [buckets.output.url(item_key(KEY))], "collection": [buckets.output.url(keys[1])], "root": [buckets.output.url(CATALOG_KEY)]}
    assert [ln["href"] for ln in collection["links"] if ln["rel"] == "item"] == [buckets.output.url(item_key(KEY))]
    assert collection["extent"]["spatial"]["bbox"][0] == pytest.approx(item["bbox"])
    assert [ln["href"] for ln in catalog["links"] if ln["rel"] == "child"] == [buckets.output.url(keys[1])]
    # pystac checks the core and both extension schemas; stac-validator agrees; no network was used.
    assert validate(item) == ["https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json", *SHIPPED_SCHEMAS]
    assert validate(collection) and validate(catalog)
    for name, record in (("item", item), ("collection", collection), ("catalog", catalog)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(record))
        valid, message = stac_validator_says(path)
        assert valid, message


def test_validation_rejects_a_broken_item(tmp_path: Path, cog: Path, offline) -> None:
    from cog_pipeline.storage.store import LocalStore

    (tmp_path / "out").mkdir()
    store = LocalStore(tmp_path, "out")
    store.upload(cog, "x.tif")
    write_stac(store, [{"cog": "x.tif"}], "m_raw.csv")
    item = json.loads(store.read_bytes("x.stac-item.json")[0])
    assert "thumbnail" not in item["assets"] and item["id"] == "x"
    broken = {**item, "properties": {**item["properties"], "proj:shape": "718x791"}}  # the projection schema's rule
    with pytest.raises(pystac.STACValidationError):
        validate(broken)
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    assert stac_validator_says(tmp_path / "broken.json")[0] is False
    del item["geometry"]
    with pytest.raises(pystac.STACValidationError):
        validate(item)


def test_an_image_without_georeferencing_has_no_bbox_or_geometry_and_hrefs_follow_the_base_url(tmp_path, shared_testdata, offline):
    from cog_pipeline.storage.store import LocalStore

    (tmp_path / "out").mkdir()
    store = LocalStore(tmp_path, "out")
    plain = tmp_path / "plain.tif"
    embed_with_copy(shared_testdata / "seed" / "1band.tif", plain, {"CREATED_UTC": "2026-12-01T10:15:00Z"})
    store.upload(plain, "Landsat/LC08 B4.TIF")
    write_stac(store, [{"cog": "Landsat/LC08 B4.TIF", "preview": "Landsat/LC08 B4.jpg"}], "m_raw.csv", base_url="https://cogs.example.org/pub/")
    item = json.loads(store.read_bytes("Landsat/LC08 B4.stac-item.json")[0])
    assert item["geometry"] is None and "bbox" not in item and not any(k in item["properties"] for k in ("proj:bbox", "proj:transform", "proj:epsg"))
    assert item["assets"]["data"]["href"] == "https://cogs.example.org/pub/Landsat/LC08%20B4.TIF"
    assert item["assets"]["thumbnail"]["href"] == "https://cogs.example.org/pub/Landsat/LC08%20B4.jpg"
    assert {ln["rel"]: ln["href"] for ln in item["links"]}["root"] == "https://cogs.example.org/pub/catalog.json"
    assert validate(item)


def test_an_item_published_again_under_another_manifest_leaves_the_first_collection(tmp_path, cog):
    from cog_pipeline.storage.store import LocalStore

    (tmp_path / "out").mkdir()
    store = LocalStore(tmp_path, "out")
    store.upload(cog, "a.tif")
    store.upload(cog, "b.tif")
    write_stac(store, [{"cog": "a.tif"}, {"cog": "b.tif"}], "first_raw.csv")
    write_stac(store, [{"cog": "a.tif"}], "second_raw.csv")
    first = json.loads(store.read_bytes("first_collection.json")[0])
    second = json.loads(store.read_bytes("second_collection.json")[0])
    items = lambda c: [ln["href"] for ln in c["links"] if ln["rel"] == "item"]  # noqa: E731
    assert items(first) == [store.url("b.stac-item.json")] and items(second) == [store.url("a.stac-item.json")]
    assert json.loads(store.read_bytes("a.stac-item.json")[0])["collection"] == "second"
    catalog = json.loads(store.read_bytes(CATALOG_KEY)[0])
    assert [ln["href"] for ln in catalog["links"] if ln["rel"] == "child"] == [store.url("first_collection.json"), store.url("second_collection.json")]


@pytest.mark.slow
def test_scan_with_stac_publishes_valid_items_and_a_collection(buckets, shared_testdata: Path, tmp_path: Path) -> None:
    """`--stac` is recorded in run.json at the claim; reconcile then puts an Item beside each processed COG and the
    manifest's Collection, all valid per pystac (extensions: checked when their schema host answers)."""
    from cog_pipeline.pipeline import ScanOptions, scan
    from cog_pipeline.run.rundir import RunDir

    keys = ["Eau Claire/a #1 ü.tif", "b/rgb.tif"]
    buckets.put_file(keys[0], shared_testdata / "rasterio/byte.tif")
    buckets.put_file(keys[1], shared_testdata / "rasterio/RGB.byte.tif")
    buckets.put_text("Counties/m_raw.csv", f"{keys[0]},1\n{keys[1]},3\nmissing.tif,1\n")
    options = ScanOptions(buckets.input_bucket, buckets.output_bucket, buckets.config, tmp_path / "work", progress=False, config=config_with(workers=1, stac=True))
    (run_dir,) = scan(options, echo=lambda _m: None).reconciled
    assert RunDir(run_dir.path).load().stac is True
    for key in keys:
        item = json.loads(buckets.output.read_bytes(item_key(key))[0])
        assert item["assets"]["data"]["href"] == buckets.output.url(key)
        assert validate(item)[1:] == list(SHIPPED_SCHEMAS)
        assert "bbox" in item and item["properties"]["created"] == item["properties"]["datetime"]  # no acquisition time in the file
    # The original tool's seed image: not georeferenced, acquired per its TIFF DateTime tag (kept in the COG).
    buckets.put_file("seed/1band.tif", shared_testdata / "seed/1band.tif")
    buckets.put_text("Counties/seed_raw.csv", "seed/1band.tif,1\n")
    scan(options, echo=lambda _m: None)
    seed = json.loads(buckets.output.read_bytes("seed/1band.stac-item.json")[0])
    assert (seed["geometry"], "bbox" in seed, seed["properties"]["datetime"]) == (None, False, "2010-06-28T11:52:28Z")
    assert seed["properties"]["created"] > "2026" and validate(seed)
    collection = json.loads(buckets.output.read_bytes(collection_key("Counties/m_raw.csv"))[0])
    assert validate(collection)
    assert sorted(ln["href"] for ln in collection["links"] if ln["rel"] == "item") == sorted(buckets.output.url(item_key(k)) for k in keys)
    assert item_key("missing.tif") not in buckets.output_keys()


@pytest.mark.slow
def test_scan_without_stac_writes_none(buckets, shared_testdata: Path, tmp_path: Path) -> None:
    from cog_pipeline.pipeline import ScanOptions, scan

    buckets.put_file("a.tif", shared_testdata / "rasterio/byte.tif")
    buckets.put_text("m_raw.csv", "a.tif,1\n")
    scan(ScanOptions(buckets.input_bucket, buckets.output_bucket, buckets.config, tmp_path / "work", progress=False, config=config_with(workers=1)), echo=lambda _m: None)
    assert sorted(buckets.output_keys()) == ["a.jpg", "a.tif"]
