"""Test-only fault injection for tests/test_crash_matrix.py, loaded by Python at start-up through PYTHONPATH.

Production code carries no hook: this module exists only on the PYTHONPATH the crash-matrix test gives the
`cog-pipeline scan` process it starts (and so also to that scan's pool workers, END hook and converters).
With COG_CRASH_COUNTER set, it wraps every object-store call (LocalStore and S3Store) and every run-state
write (rundir.files.write_json_atomic: run.json, preflight.json, reconcile.json, jobs/*.json) so that each one first takes the next
number from a counter file shared by the whole process tree. In a counting run it appends the point's name to
COG_CRASH_LOG; when the number equals COG_CRASH_AT it SIGKILLs the whole process group before the call runs,
as a power cut or `kill -9` of the tick would; when it equals COG_CRASH_AFTER, right after the call returns (a
write applied whose answer was lost).
"""

from __future__ import annotations

import fcntl
import functools
import os
import signal

_COUNTER = os.environ.get("COG_CRASH_COUNTER")
_STORE_CALLS = ("list", "head", "read_bytes", "read_head", "create", "put_bytes", "replace", "check", "delete", "download", "upload", "adopt")


def _next_point(name: str) -> bool:
    """Count the point; SIGKILL the process group now if it is COG_CRASH_AT (before the call), or return True
    when COG_CRASH_AFTER names it (the caller kills after the call: applied, its answer never seen)."""
    with open(_COUNTER, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        fh.seek(0)
        n = int(fh.read().strip() or 0) + 1
        fh.seek(0)
        fh.truncate()
        fh.write(str(n))
        fh.flush()
        log = os.environ.get("COG_CRASH_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as out:
                out.write(f"{n} {os.getpid()} {name}\n")
        if n == int(os.environ.get("COG_CRASH_AT") or 0):
            os.killpg(os.getpgrp(), signal.SIGKILL)
        return n == int(os.environ.get("COG_CRASH_AFTER") or 0)


def _wrap(owner: type, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def counted(*args, **kwargs):
        after = _next_point(label)
        result = original(*args, **kwargs)
        if after:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        return result

    setattr(owner, name, counted)


def _install() -> None:
    from cog_pipeline.storage import store
    from cog_pipeline.run.rundir import files as rundir

    for cls in (store.LocalStore, store.S3Store):
        for name in _STORE_CALLS:
            _wrap(cls, name, f"{cls.__name__}.{name}")
    original = rundir.write_json_atomic

    def write_json_atomic(path, data):
        after = _next_point(f"write:{os.path.basename(str(path))}")
        original(path, data)
        if after:
            os.killpg(os.getpgrp(), signal.SIGKILL)

    rundir.write_json_atomic = write_json_atomic


if _COUNTER:
    _install()
