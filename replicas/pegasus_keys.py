"""Which object keys the Pegasus engine cannot carry, so preflight fails those rows instead of their jobs.

A key reaches Pegasus only inside a PFN (replicas.yml for the input, outputs.yml for the outputs): jobs name
their files with job-local LFNs and no key is ever in a job's arguments (``replicas.catalog``). A PFN the
planner or pegasus-transfer / pegasus-s3 (Pegasus 5.1) cannot carry would fail that row's job after it was
scheduled, so the pegasus engine refuses such a row at preflight with a reason naming the character and the
way out; the local engine converts it (it reads S3 with boto3 directly).

The rule is what the tests measured with the real tools against an S3 server (tests/test_pegasus_transfer.py:
pegasus-transfer with the planner's own transfer specification; tests/production/: the real planner and a
real pool), not a guess. Why each one fails:

* ``"``: the planner writes PFNs into the jobs' JSON transfer lists without escaping them, so ``"`` ends
  the string early. (A backslash would start an escape there, and pegasus-transfer collapses ``//``: the
  manifest parser refuses both for every engine, ``manifest.check_key``.)
* ``'``: pegasus-transfer puts every URL and path between single quotes on a ``sh -c`` command line.
* ``#``: pegasus-s3 splits URLs with ``urlsplit``; what follows ``#`` is dropped as a fragment.
* whitespace other than the plain space (tab, no-break space, em space, ...): pegasus-transfer's URL pattern
  takes the path as ``[\\S ]*``, so the key is cut at the first such character.
(A key ending in whitespace cannot reach Pegasus: every key ends in ``.tif`` or ``.tiff``.)
"""

from __future__ import annotations

WAY_OUT = "rename the object, or run this manifest with --engine local"


def _whitespace_problem(key: str) -> str | None:
    for ch in key:
        if ch.isspace() and ch != " ":
            return f"contains the whitespace character U+{ord(ch):04X}, at which Pegasus' transfer tools cut the key"
    return None


def pegasus_key_problem(key: str) -> str | None:
    """Why Pegasus' transfer tools cannot carry `key` (with the way out), or None when they can."""
    reason = None
    if '"' in key:
        reason = "contains \" (double quote), which the planner writes unescaped into the jobs' JSON transfer lists"
    elif "'" in key:
        reason = "contains ' (single quote), which breaks pegasus-transfer's quoted shell command"
    elif "#" in key:
        reason = "contains #, after which pegasus-s3 drops the rest of the key as a URL fragment"
    else:
        reason = _whitespace_problem(key)
    if reason is None:
        return None
    return f"key {reason}: {WAY_OUT}"
