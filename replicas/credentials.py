"""credentials.conf for Pegasus' S3 transfers, written from the operator's key files.

Pegasus (pegasus-plan, pegasus-transfer, pegasus-s3) reads an INI file named by the environment variable
``PEGASUS_CREDENTIALS`` (default ``~/.pegasus/credentials.conf``) and refuses it unless its mode is 0600::

    [storage]                 # the S3 site's name in sites.yml / the replica URLs
    endpoint = https://s3.example.org
    region = us-east-1        # only when known

    [cog@storage]             # <identity>@<site>, the user part of s3://cog@storage/bucket/key
    access_key = ...
    secret_key = ...

Rules kept here:

* the file is created with mode 0600 from the first byte (``mkstemp`` in the same folder, then an atomic
  rename: ``cog_pipeline.storage.atomic``); it is never chmod-ed afterwards and never briefly world-readable;
* key material is read from the key files given on the command line and written only into this file: it is
  never logged, never part of an exception message, never copied into run.json, catalogs or submit files;
* without key files (or with a local-folder store) no file is written: Pegasus then uses whatever
  ``PEGASUS_CREDENTIALS`` / ``~/.pegasus/credentials.conf`` the operator already keeps (the boto3 side uses
  the standard AWS credential chain).
"""

from __future__ import annotations

import logging
from pathlib import Path

from cog_pipeline.replicas.catalog import check_name
from cog_pipeline.storage import atomic
from cog_pipeline.storage.store import normalise_endpoint, read_key_file

log = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials.conf"
MODE = 0o600
AWS_DEFAULT_ENDPOINT = "https://s3.amazonaws.com"


def _clean(value: str, what: str) -> str:
    # A newline would let a value start a new INI line or section; refuse without echoing the value.
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError(f"{what} contains a line break or NUL character")
    return value


def render_credentials(site: str, identity: str, endpoint: str | None, region: str | None, access_key: str, secret_key: str) -> str:
    check_name(site, "site name")
    check_name(identity, "S3 identity")
    endpoint_url = normalise_endpoint(endpoint) or AWS_DEFAULT_ENDPOINT
    lines = [f"[{site}]", f"endpoint = {_clean(endpoint_url, 'endpoint')}"]
    if region:
        lines.append(f"region = {_clean(region, 'region')}")
    lines += [
        "",
        f"[{identity}@{site}]",
        f"access_key = {_clean(access_key, 'access key')}",
        f"secret_key = {_clean(secret_key, 'secret key')}",
        "",
    ]
    return "\n".join(lines)


def write_credentials(
    path: Path | str,
    site: str,
    identity: str,
    endpoint: str | None,
    region: str | None,
    access_key_file: Path | str,
    secret_key_file: Path | str,
) -> Path:
    """Write the credentials INI to `path` (mode 0600 from creation, atomic replace). Returns the path."""
    path = Path(path)
    access_key = read_key_file(access_key_file, "access key")
    secret_key = read_key_file(secret_key_file, "secret key")
    text = render_credentials(site, identity, endpoint, region, access_key, secret_key)
    atomic.write_bytes(path, text.encode("utf-8"), MODE)  # created 0600, never readable by others
    log.info("wrote S3 credentials for %s@%s to %s (mode 0600)", identity, site, path)
    return path
