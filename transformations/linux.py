"""The few Linux/glibc calls the converter and its callers make through ctypes, each best effort.

One place for them, so libc is loaded once and every caller gets the same fallback: elsewhere (another
libc, another OS) each call is a no-op that says so by returning False.
"""

from __future__ import annotations

import functools
import os
import signal
from typing import Any, Optional

_PR_SET_PDEATHSIG = 1
_SYNC_FILE_RANGE_WRITE = 2


@functools.lru_cache(maxsize=1)
def _libc() -> Optional[Any]:
    try:
        import ctypes  # noqa: PLC0415 - only where one of these calls is made

        return ctypes.CDLL(None, use_errno=True)
    except (OSError, AttributeError):
        return None


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send `sig` to this process when its parent (thread) dies (``prctl``)."""
    libc = _libc()
    try:
        return libc is not None and libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except AttributeError:
        return False


def start_writeback(path: str) -> bool:
    """Ask the kernel to start writing `path`'s dirty pages to disk now, without waiting (``sync_file_range``).

    Why: whoever publishes the file fsyncs it (the local engine's folder bucket links it and fsyncs; on one
    CPU that wait was ~0.1 s per 2500² image and ~0.4 s per 5000² image of idle core). Started when the COG is
    finished, the writing overlaps the JPEG encode and the verification, and the fsync finds little left."""
    libc = _libc()
    if libc is None:
        return False
    import ctypes  # noqa: PLC0415

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return libc.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), _SYNC_FILE_RANGE_WRITE) == 0
    except AttributeError:
        return False
    finally:
        os.close(fd)


def trim_heap() -> bool:
    """Return freed heap memory to the OS (glibc ``malloc_trim``).

    The COG threads' freed buffers stay in glibc's per-thread arenas otherwise and count
    towards the peak RSS of the serialised JPEG step (1-band 10000x10000: 345 -> 298 MiB)."""
    libc = _libc()
    if libc is None:
        return False
    try:
        libc.malloc_trim(0)
    except AttributeError:
        return False
    return True
