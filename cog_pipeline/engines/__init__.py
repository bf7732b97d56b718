"""Engines: the ways a generated workflow gets executed (see `base.Engine`); `local` and `pegasus` today."""

from __future__ import annotations


from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Engine

ENGINES = ("local", "pegasus")


def get_engine(
    name: str, *, workers: int | None = None, progress: bool = True, submit: bool = True,
    job_timeout: float | None = None, max_pixels: int | None = None,
) -> Engine:
    """The engine called `name` (imported on demand: the local engine never loads the HTCondor bindings).
    `job_timeout` and `max_pixels` are the local engine's per-job limits (None: env, else defaults)."""
    if name == "local":
        from .local import LocalEngine, LocalLimits

        return LocalEngine(workers=workers, progress=progress, limits=LocalLimits(job_timeout, max_pixels))
    if name == "pegasus":
        from .pegasus.engine import PegasusEngine

        return PegasusEngine(submit=submit)
    raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
