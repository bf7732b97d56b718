"""Bounded waits for the flock()s that serialise scans, a folder bucket's conditional writes and a run's reconcile.

flock() itself waits forever: a scan stalled while holding a lock (SIGSTOP, a paused VM, a hung NFS mount)
would block every other scan silently. Every wait here ends after LOCK_WAIT and names the lock file.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

LOCK_WAIT = 120.0  # seconds: the longest any holder legitimately keeps one of these locks is a few seconds


class LockTimeout(RuntimeError):
    """A lock stayed held for LOCK_WAIT seconds: its holder is stalled (or very slow)."""


def wait_for_flock(fh: IO, path: Path, what: str, timeout: float | None = None) -> None:
    """flock(LOCK_EX) on `fh` within `timeout` seconds (default LOCK_WAIT), else LockTimeout naming `what` and `path`."""
    limit = LOCK_WAIT if timeout is None else timeout
    deadline = time.monotonic() + limit
    delay = 0.001
    while True:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"waited {limit:.0f} s for {what} ({path}); the process holding it is stalled or stopped"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


@contextmanager
def held(path: Path, what: str, timeout: float | None = None, mode: str = "a+b") -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the block, waiting at most `timeout`."""
    with open(path, mode) as fh:
        wait_for_flock(fh, path, what, timeout)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
