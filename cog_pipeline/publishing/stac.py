"""STAC records for publishing (optional, `--stac`): an Item per COG beside it, a Collection per manifest, and one
root Catalog (`catalog.json`) in the output bucket linking every Collection.

Items come from rio-stac (projection and raster extension fields read from the COG itself, through the ranged
opener, so a COG on S3 is not downloaded) and are pystac objects. What is published holds to the STAC 1.1 spec:

- ids are URL-safe (`[A-Za-z0-9._-]`): a key's stem as it is when it already is, else with every other
  character replaced by `-` and 8 hex digits of the stem's SHA-1 added, so two keys never share an id;
- hrefs are under `--stac-base-url` (e.g. `https://cogs.example.org/`, each key percent-encoded) when given,
  else the bucket's own URLs (`s3://…`, `file://…`);
- an Item has exactly one `collection` link (to its Collection's JSON) and a `root` link to the Catalog;
  when a key is published again under another manifest, the Collection that held it drops its link;
- an image that is not georeferenced has `geometry: null` and no `bbox` (not a world box);
- `datetime` is the image's acquisition time from its metadata (GDAL's IMAGERY `ACQUISITIONDATETIME`, else
  the TIFF `DateTime` tag) and, when it has none, the processing time; `created` is always the processing time;
- a raster histogram's `count` is its number of buckets (rio-stac gives the number of bin edges).

Validation runs offline: pystac ships the core schemas, and the projection and raster extension schemas
(v1.1.0, Apache-2.0, from github.com/stac-extensions) are shipped in `cog_pipeline/schemas/`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cog_pipeline.outputs import COG, declared, image_stem
from cog_pipeline.run.naming import base_of
from cog_pipeline.storage.store import ObjectNotFound, ObjectStore

STAC_ITEM_SUFFIX = ".stac-item.json"
CATALOG_KEY = "catalog.json"
SCHEMA_DIR = Path(__file__).with_name("schemas")
#: extension schema URL -> the shipped copy
SHIPPED_SCHEMAS = {
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json": SCHEMA_DIR / "projection-v1.1.0.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json": SCHEMA_DIR / "raster-v1.1.0.json",
}
_SAFE = re.compile(r"[A-Za-z0-9._-]+")


def safe_id(text: str) -> str:
    """A URL-safe id for `text`: itself when it is one, else a readable slug plus a hash that keeps it unique."""
    if _SAFE.fullmatch(text):
        return text
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"
    return f"{slug}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


def item_key(key: str) -> str:
    """`a/b.tif` -> `a/b.stac-item.json`: the Item's key beside its COG."""
    return image_stem(key) + STAC_ITEM_SUFFIX


def collection_key(manifest_key: str) -> str:
    """`Counties/test_raw.csv` -> `Counties/test_collection.json` in the output bucket."""
    return f"{base_of(manifest_key)}collection.json"


def collection_id(manifest_key: str) -> str:
    return safe_id(base_of(manifest_key).rstrip("_-/") or "manifest")


class Hrefs:
    """Where published records point: under a base URL when given, else the bucket's own URLs."""

    def __init__(self, store: ObjectStore, base_url: str | None = None) -> None:
        self.store, self.base_url = store, (base_url.rstrip("/") + "/" if base_url else None)

    def __call__(self, key: str) -> str:
        return self.base_url + quote(key, safe="/") if self.base_url else self.store.url(key)


def _moment(text: str | None) -> datetime | None:
    """A metadata timestamp (`2010:06:28 11:52:28` as TIFF writes it, or ISO 8601) as UTC; None if unreadable."""
    if not text:
        return None
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def item_for(cog_store: ObjectStore, objects: Mapping[str, str], *, collection: str | None = None,
             href: Hrefs | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The STAC Item (as a dict) for one image's outputs (`objects`: declared name -> key, cog_pipeline.outputs):
    made from the COG, with each other output as an asset (the JPEG: `thumbnail`)."""
    import warnings

    import pystac
    import rasterio
    from rio_stac import create_stac_item

    from cog_pipeline.publishing.provenance import DOMAIN
    from cog_pipeline.storage.ranged import OPEN_NAME, opener_for

    href = href or Hrefs(cog_store)
    key = objects[COG.name]
    opener, _ = opener_for(cog_store, key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no CRS" and TIFF-date warnings: both are handled below
        with rasterio.open(OPEN_NAME, opener=opener) as src:
            created = _moment(src.tags(ns=DOMAIN).get("CREATED_UTC")) or now or datetime.now(timezone.utc)
            acquired = _moment(src.tags(ns="IMAGERY").get("ACQUISITIONDATETIME")) or _moment(src.tags().get("TIFFTAG_DATETIME"))
            georeferenced = src.crs is not None
            item = create_stac_item(
                src, input_datetime=acquired or created, id=safe_id(image_stem(key)),
                asset_name=COG.stac_asset, asset_href=href(key), asset_media_type=COG.media_type, asset_roles=list(COG.stac_roles),
                with_proj=True, with_raster=True, raster_max_size=256,
            )
    item.common_metadata.created = created
    if not georeferenced:
        item.geometry, item.bbox = None, None
    for kind in declared():
        if kind is not COG and objects.get(kind.name):
            item.add_asset(kind.stac_asset, pystac.Asset(href=href(objects[kind.name]), media_type=kind.media_type, roles=list(kind.stac_roles)))
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    if not georeferenced:
        data.pop("bbox", None)
        for name in ("proj:bbox", "proj:geometry", "proj:transform", "proj:epsg", "proj:wkt2", "proj:projjson", "proj:centroid"):
            data["properties"].pop(name, None)
    for band in data["assets"][COG.stac_asset].get("raster:bands", []):
        if "buckets" in band.get("histogram", {}):
            band["histogram"]["count"] = len(band["histogram"]["buckets"])
    data["links"] = [{"rel": "self", "href": href(item_key(key)), "type": "application/geo+json"}]
    if collection:
        data["collection"] = collection_id(collection)
        data["links"] += [{"rel": "collection", "href": href(collection_key(collection)), "type": "application/json"},
                          {"rel": "parent", "href": href(collection_key(collection)), "type": "application/json"},
                          {"rel": "root", "href": href(CATALOG_KEY), "type": "application/json"}]
    return data


def collection_for(items: list[dict[str, Any]], manifest_key: str, *, href: Hrefs) -> dict[str, Any]:
    """A Collection for one manifest's Items: extent from their bboxes and datetimes, a link to each."""
    import pystac

    bboxes = [i["bbox"] for i in items if i.get("bbox")] or [[-180.0, -90.0, 180.0, 90.0]]
    bbox = [min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes), max(b[3] for b in bboxes)]
    times = [datetime.fromisoformat(i["properties"]["datetime"].replace("Z", "+00:00")) for i in items if i["properties"].get("datetime")]
    times = times or [datetime.now(timezone.utc)]
    collection = pystac.Collection(
        id=collection_id(manifest_key),
        description=f"COGs made by cog-pipeline from manifest {manifest_key}",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[min(times), max(times)]])),
        license="other",
    )
    data = collection.to_dict(include_self_link=False, transform_hrefs=False)
    data["links"] = [{"rel": "self", "href": href(collection_key(manifest_key)), "type": "application/json"},
                     {"rel": "root", "href": href(CATALOG_KEY), "type": "application/json"},
                     {"rel": "parent", "href": href(CATALOG_KEY), "type": "application/json"}]
    data["links"] += [{"rel": "item", "href": href(item_key(_cog_key_of(i))), "type": "application/geo+json"} for i in items]
    return data


def _cog_key_of(item: dict[str, Any]) -> str:
    return item["_key"]


def validator():
    """pystac's JSON-schema validator, its cache primed with the shipped extension schemas (no network)."""
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    checker = JsonSchemaSTACValidator()
    for uri, path in SHIPPED_SCHEMAS.items():
        schema = json.loads(path.read_text(encoding="utf-8"))
        checker.schema_cache[uri] = checker.schema_cache[uri + "#"] = schema
    return checker


def validate(stac: dict[str, Any]) -> list[str]:
    """Validate with pystac against the core and every extension schema, offline; returns the schemas checked.

    Raises pystac's STACValidationError when a schema rejects the object, and GetSchemaError for an extension
    whose schema is not shipped (never reported as valid).
    """
    from pystac.validation import validate_dict

    return list(validate_dict(stac, validator=validator()))


def offline_schema_map() -> dict[str, str]:
    """Schema URL -> local file for stac-validator (`StacValidate(..., schema_map=...)`): pystac's core and
    GeoJSON copies and the shipped extension schemas, so it validates without a network."""
    import importlib.resources

    from pystac.validation.local_validator import VERSION, get_local_schema_cache

    base = importlib.resources.files("pystac.validation.jsonschemas")
    out = {}
    for uri in get_local_schema_cache():
        name = uri.rsplit("/", 1)[1]
        out[uri] = str(base / ("geojson" if "geojson.org" in uri else f"stac-spec/v{VERSION}") / name)
    return out | {uri: str(path) for uri, path in SHIPPED_SCHEMAS.items()}


def _put_json(store: ObjectStore, key: str, data: dict[str, Any]) -> None:
    store.put_bytes(key, json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8"))


def _read_json(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.read_bytes(key)[0])
    except (ObjectNotFound, ValueError):
        return None


def _unlink_from_previous_collection(store: ObjectStore, key: str, manifest_key: str, href: Hrefs) -> None:
    """The Item at item_key(key) belonged to another manifest's Collection: that Collection drops its link."""
    previous = _read_json(store, item_key(key))
    if not previous or previous.get("collection") in (None, collection_id(manifest_key)):
        return
    link = next((ln["href"] for ln in previous.get("links", []) if ln.get("rel") == "collection"), None)
    old_key = next((k for k in _collection_keys(store) if href(k) == link), None)
    old = _read_json(store, old_key) if old_key else None
    if old is None:
        return
    mine = href(item_key(key))
    old["links"] = [ln for ln in old.get("links", []) if not (ln.get("rel") == "item" and ln.get("href") == mine)]
    _put_json(store, old_key, old)


def _collection_keys(store: ObjectStore) -> list[str]:
    catalog = _read_json(store, CATALOG_KEY) or {}
    return [str(k) for k in catalog.get("cog_pipeline:collection_keys", [])]


def _update_catalog(store: ObjectStore, ckey: str, manifest_key: str, href: Hrefs) -> None:
    """The root Catalog: one `child` link per Collection ever published to this bucket."""
    import pystac

    catalog = _read_json(store, CATALOG_KEY)
    if catalog is None:
        catalog = pystac.Catalog(id="cog-pipeline", description="COGs published by cog-pipeline").to_dict(include_self_link=False)
        catalog["links"] = [{"rel": "self", "href": href(CATALOG_KEY), "type": "application/json"},
                            {"rel": "root", "href": href(CATALOG_KEY), "type": "application/json"}]
    keys = catalog.setdefault("cog_pipeline:collection_keys", [])
    if ckey not in keys:
        keys.append(ckey)
        catalog["links"].append({"rel": "child", "href": href(ckey), "type": "application/json", "title": manifest_key})
    _put_json(store, CATALOG_KEY, catalog)


def write_stac(output_store: ObjectStore, outputs: list[Mapping[str, str]], manifest_key: str,
               base_url: str | None = None) -> list[str]:
    """Put an Item beside each COG in `outputs` (per image, declared output name -> key: `item_for`), the
    manifest's Collection and the root Catalog; returns the keys written."""
    href = Hrefs(output_store, base_url)
    ckey = collection_key(manifest_key)
    items, written = [], []
    for objects in outputs:
        key = objects[COG.name]
        item = item_for(output_store, objects, collection=manifest_key, href=href)
        _unlink_from_previous_collection(output_store, key, manifest_key, href)
        _put_json(output_store, item_key(key), item)
        items.append({**item, "_key": key})
        written.append(item_key(key))
    _put_json(output_store, ckey, collection_for(items, manifest_key, href=href))
    _update_catalog(output_store, ckey, manifest_key, href)
    return [*written, ckey, CATALOG_KEY]
