"""PDEATHSIG through ctypes, best effort: a no-op returning False where libc has no prctl."""

from __future__ import annotations

import functools
import signal
from typing import Any, Optional

_PR_SET_PDEATHSIG = 1


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
