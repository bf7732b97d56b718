"""PDEATHSIG through ctypes, best effort: a no-op returning False where libc has no prctl."""

from __future__ import annotations

import signal

_PR_SET_PDEATHSIG = 1


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send `sig` to this process when its parent (thread) dies (``prctl``)."""
    try:
        import ctypes  # noqa: PLC0415 - only where this call is made

        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
