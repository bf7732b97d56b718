"""The HTTP headers an object gets when it is written to S3: its Content-Type and Cache-Control.

Decided by the key's suffix alone, so every writer (the local engine's outputs, result files, the report,
STAC records) sends the same headers for the same kind of file, and a browser opens the uploaded report
instead of downloading it. Outputs (COG, JPEG) may be cached for a day; records that a later run rewrites
(CSV, HTML, JSON) are revalidated on every read (`no-cache`: the ETag decides).
"""

from __future__ import annotations

#: suffix (lower case) -> (Content-Type, Cache-Control)
_TYPES = {
    ".tif": ("image/tiff; application=geotiff; profile=cloud-optimized", "public, max-age=86400"),
    ".tiff": ("image/tiff; application=geotiff; profile=cloud-optimized", "public, max-age=86400"),
    ".jpg": ("image/jpeg", "public, max-age=86400"),
    ".html": ("text/html; charset=utf-8", "no-cache"),
    ".csv": ("text/csv; charset=utf-8", "no-cache"),
    ".stac-item.json": ("application/geo+json", "no-cache"),  # before .json: the first matching suffix wins
    ".json": ("application/json", "no-cache"),
}
_DEFAULT = ("application/octet-stream", "no-cache")


def object_headers(key: str) -> dict[str, str]:
    """boto3's arguments for `key`: {"ContentType": ..., "CacheControl": ...}."""
    lower = key.lower()
    content_type, cache = next((v for suffix, v in _TYPES.items() if lower.endswith(suffix)), _DEFAULT)
    return {"ContentType": content_type, "CacheControl": cache}
