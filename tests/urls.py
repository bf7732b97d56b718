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
    if url.startswith("s3://"):
        netloc, _, rest = url[len("s3://"):].partition("/")
        if "@" in netloc:  # Pegasus: identity@site, then bucket/key with the key RAW, as pegasus-s3 reads it
            bucket, _, key = rest.partition("/")
            return "s3", bucket, key
        parts = urlsplit(url)  # plain s3://bucket/<percent-encoded key> (ObjectStore.url, for log lines)
        return "s3", parts.netloc, unquote(parts.path.lstrip("/"))
    parts = urlsplit(url)
    if parts.scheme == "file":
        return "file", "", unquote(parts.path)
    raise ValueError(f"unsupported replica location {url!r}")
