"""Which object keys the Pegasus engine cannot carry, so preflight fails those rows instead of a stage job.

A stage-in job carries many images; one URL that pegasus-transfer / pegasus-s3 (Pegasus 5.1) cannot follow
fails the whole job and every image in it. So the pegasus engine refuses such a row at preflight with a reason
naming the character and the way out; the local engine converts it (it reads S3 with boto3 directly).

The rule is what tests/test_pegasus_transfer.py measured with the real tools against an S3 server (stage-in to
a local file named after the LFN, stage-out from one, s3 -> s3 copy), not a guess. Why each one fails:

* ``'``: pegasus-transfer puts every URL and path between single quotes on a ``sh -c`` command line.
* ``#``: pegasus-s3 splits URLs with ``urlsplit``; what follows ``#`` is dropped as a fragment.
* whitespace other than the plain space (tab, no-break space, em space, ...): pegasus-transfer's URL pattern
  takes the path as ``[\\S ]*``, so the key is cut at the first such character.
* whitespace at the end of the key: pegasus-s3 ``strip()``s the URL path.
* ``//``: pegasus-transfer collapses repeated slashes in URL paths.
* ``$NAME`` / ``${NAME}`` (a letter, then at least one letter, digit or ``_``): pegasus-transfer expands
  environment variables in file paths, and stage jobs name local files after the LFN.
* a folder or file name over 255 bytes (UTF-8): stage jobs write the LFN as a local path, and file systems
  refuse longer names.
"""

from __future__ import annotations

import re

WAY_OUT = "rename the object, or run this manifest with --engine local"
MAX_NAME_BYTES = 255  # NAME_MAX of Linux file systems: one path component of the LFN
_ENV_VAR = re.compile(r"\$\{?[A-Za-z][A-Za-z0-9_]+")  # the pattern pegasus-transfer expands in file paths


def _whitespace_problem(key: str) -> str | None:
    for ch in key:
        if ch.isspace() and ch != " ":
            return f"contains the whitespace character U+{ord(ch):04X}, at which Pegasus' transfer tools cut the key"
    if key != key.rstrip():
        return "ends with a space, which pegasus-s3 strips from the key"
    return None


def pegasus_key_problem(key: str) -> str | None:
    """Why Pegasus' transfer tools cannot carry `key` (with the way out), or None when they can."""
    reason = None
    if "'" in key:
        reason = "contains ' (single quote), which breaks pegasus-transfer's quoted shell command"
    elif "#" in key:
        reason = "contains #, after which pegasus-s3 drops the rest of the key as a URL fragment"
    elif "//" in key:
        reason = "contains //, which pegasus-transfer collapses to /"
    elif (match := _ENV_VAR.search(key)) is not None:
        reason = f"contains {match.group()!r}, which pegasus-transfer expands as an environment variable"
    else:
        reason = _whitespace_problem(key)
        if reason is None:
            long_names = [part for part in key.split("/") if len(part.encode("utf-8")) > MAX_NAME_BYTES]
            if long_names:
                reason = f"has a folder or file name longer than {MAX_NAME_BYTES} bytes, which stage jobs cannot write"
    if reason is None:
        return None
    return f"key {reason}: {WAY_OUT}"
