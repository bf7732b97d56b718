"""The HTTP headers an object gets when it is written to S3: its Content-Type and Cache-Control.

Decided by the key's suffix alone, so every writer (the local engine's outputs, result files, the report,
STAC records) sends the same headers for the same kind of file, and a browser opens the uploaded report
instead of downloading it. Outputs (each declared in cog_pipeline.outputs, with its Content-Type) may be
cached for a day; records that a later run rewrites (CSV, HTML, JSON) are revalidated on every read
(`no-cache`: the ETag decides).
"""

from __future__ import annotations

from cog_pipeline.outputs import IMAGE_SUFFIXES, declared

OUTPUT_CACHE = "public, max-age=86400"
#: suffix (lower case) -> (Content-Type, Cache-Control) of the records the pipeline writes
_RECORDS = {
    ".html": ("text/html; charset=utf-8", "no-cache"),
    ".csv": ("text/csv; charset=utf-8", "no-cache"),
    ".stac-item.json": ("application/geo+json", "no-cache"),
    ".json": ("application/json", "no-cache"),
}
_DEFAULT = ("application/octet-stream", "no-cache")


def _types() -> list[tuple[str, tuple[str, str]]]:
    """(suffix, headers), the longest suffix first (`.stac-item.json` before `.json`): every declared output
    (the COG at its image's own key, so by every image suffix), then the records."""
    types = [(suffix.lower(), (kind.media_type, OUTPUT_CACHE))
             for kind in declared() for suffix in (IMAGE_SUFFIXES if kind.suffix is None else (kind.suffix,))]
    return sorted([*types, *_RECORDS.items()], key=lambda item: -len(item[0]))


def object_headers(key: str) -> dict[str, str]:
    """boto3's arguments for `key`: {"ContentType": ..., "CacheControl": ...}."""
    lower = key.lower()
    content_type, cache = next((v for suffix, v in _types() if lower.endswith(suffix)), _DEFAULT)
    return {"ContentType": content_type, "CacheControl": cache}
