"""A test oracle for the URL edges: read a replica/site URL back into (scheme, bucket-or-root, key).

The package never parses a key out of a URL (keys travel as (bucket, key) pairs); the tests do, to prove the
URLs written for Pegasus name exactly the objects they were built from.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit


def parse_location(url: str) -> tuple[str, str, str]:
    """Split a replica URL into (scheme, bucket-or-root, key).

    Understands s3://bucket/key, Pegasus' s3://identity@site/bucket/key and file:///abs/path.
    """
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if "@" in parts.netloc:  # Pegasus: the netloc names identity@site, the bucket is the first path part
            bucket, _, key = parts.path.lstrip("/").partition("/")
        else:
            bucket, key = parts.netloc, parts.path.lstrip("/")
        return "s3", bucket, unquote(key)
    if parts.scheme == "file":
        return "file", "", unquote(parts.path)
    raise ValueError(f"unsupported replica location {url!r}")
