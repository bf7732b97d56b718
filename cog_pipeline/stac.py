"""STAC records for publishing (optional, `--stac`): an Item per COG beside it and a Collection per manifest.

Items come from rio-stac (projection and raster extension fields read from the COG itself, through the
ranged opener, so a COG on S3 is not downloaded) and are pystac objects; nothing here writes STAC JSON by
hand. Validation: pystac ships the core STAC 1.1 schemas, so the core check always runs offline; the
extension schemas (projection, raster) live only on stac-extensions.github.io and no package ships them,
so they are checked when that host is reachable and otherwise reported as not checked (never as valid).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .naming import base_of
from .store import ObjectStore

STAC_ITEM_SUFFIX = ".stac-item.json"


def item_key(key: str) -> str:
    """`a/b.tif` -> `a/b.stac-item.json`: the Item's key beside its COG."""
    return (key[: -len(".tif")] if key.endswith(".tif") else key) + STAC_ITEM_SUFFIX


def collection_key(manifest_key: str) -> str:
    """`Counties/test_raw.csv` -> `Counties/test_collection.json` in the output bucket."""
    return f"{base_of(manifest_key)}collection.json"


def item_for(cog_store: ObjectStore, key: str, jpg_key: str | None, *, collection_id: str | None = None,
             when: datetime | None = None) -> dict[str, Any]:
    """The STAC Item (as a dict) for the COG at `key`, with the JPEG as its `thumbnail` asset."""
    import pystac
    import rasterio
    from rio_stac import create_stac_item

    from .provenance import DOMAIN
    from .ranged import OPEN_NAME, opener_for

    opener, _ = opener_for(cog_store, key)
    with rasterio.open(OPEN_NAME, opener=opener) as src:
        created = src.tags(ns=DOMAIN).get("CREATED_UTC")
        moment = when or (datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) if created else datetime.now(timezone.utc))
        item = create_stac_item(
            src, input_datetime=moment, id=key[: -len(".tif")] if key.endswith(".tif") else key,
            collection=collection_id, asset_name="data", asset_href=cog_store.url(key),
            asset_media_type=pystac.MediaType.COG, asset_roles=["data"], with_proj=True, with_raster=True,
            raster_max_size=256,
        )
    if jpg_key:
        item.add_asset("thumbnail", pystac.Asset(href=cog_store.url(jpg_key), media_type=pystac.MediaType.JPEG, roles=["thumbnail"]))
    item.set_self_href(cog_store.url(item_key(key)))
    return item.to_dict(include_self_link=True, transform_hrefs=False)


def collection_for(items: list[dict[str, Any]], manifest_key: str, *, href: str | None = None) -> dict[str, Any]:
    """A Collection for one manifest's Items: extent from their bboxes and datetimes, a link to each."""
    import pystac

    parsed = [pystac.Item.from_dict(i, preserve_dict=False) for i in items]
    bboxes = [i.bbox for i in parsed if i.bbox] or [[-180.0, -90.0, 180.0, 90.0]]
    bbox = [min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes), max(b[3] for b in bboxes)]
    times = [i.datetime for i in parsed if i.datetime] or [datetime.now(timezone.utc)]
    collection = pystac.Collection(
        id=base_of(manifest_key).rstrip("_-/") or "manifest",
        description=f"COGs made by cog-pipeline from manifest {manifest_key}",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[min(times), max(times)]])),
        license="other",
    )
    for item in items:
        self_href = next((link["href"] for link in item.get("links", []) if link.get("rel") == "self"), None)
        if self_href:
            collection.add_link(pystac.Link(rel="item", target=self_href, media_type=pystac.MediaType.JSON))
    if href:
        collection.set_self_href(href)
    return collection.to_dict(include_self_link=bool(href), transform_hrefs=False)


def validate(stac: dict[str, Any]) -> dict[str, list[str]]:
    """Validate with pystac: {"valid": [schemas checked], "unchecked": [schemas that could not be fetched]}.

    Raises pystac's STACValidationError when a schema that could be read rejects the object.
    """
    from pystac.validation import validate_dict
    from pystac.validation.stac_validator import GetSchemaError

    import logging

    checked = validate_dict(stac, extensions=[])  # core: schemas shipped with pystac, offline
    unchecked: list[str] = []
    quiet = logging.getLogger("pystac.validation.stac_validator")
    level, quiet.level = quiet.level, logging.CRITICAL  # an unreachable schema host is reported below, not logged
    try:
        for extension in stac.get("stac_extensions", []):
            try:
                checked += validate_dict(stac, extensions=[extension])[1:]
            except GetSchemaError:
                unchecked.append(extension)
    finally:
        quiet.level = level
    return {"valid": list(checked), "unchecked": unchecked}


def write_stac(output_store: ObjectStore, outputs: list[tuple[str, str | None]], manifest_key: str) -> list[str]:
    """Put an Item beside each COG in `outputs` [(cog key, jpg key)] and the manifest's Collection; returns keys."""
    import json

    ckey = collection_key(manifest_key)
    cid = base_of(manifest_key).rstrip("_-/") or "manifest"
    items, written = [], []
    for key, jpg_key in outputs:
        item = item_for(output_store, key, jpg_key, collection_id=cid)
        item["links"].append({"rel": "collection", "href": output_store.url(ckey), "type": "application/json"})
        output_store.put_bytes(item_key(key), json.dumps(item, indent=1, ensure_ascii=False).encode("utf-8"))
        items.append(item)
        written.append(item_key(key))
    collection = collection_for(items, manifest_key, href=output_store.url(ckey))
    output_store.put_bytes(ckey, json.dumps(collection, indent=1, ensure_ascii=False).encode("utf-8"))
    return [*written, ckey]
