"""Engines: the ways a generated workflow gets executed (see `base.Engine`); `local` and `pegasus` today."""

from __future__ import annotations


from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Engine

ENGINES = ("local", "pegasus")


def get_engine(name: str, *, workers: int | None = None, progress: bool = True, submit: bool = True) -> Engine:
    """The engine called `name` (imported on demand: the local engine never loads the HTCondor bindings)."""
    if name == "local":
        from .local import LocalEngine

        return LocalEngine(workers=workers, progress=progress)
    if name == "pegasus":
        from .pegasus.engine import PegasusEngine

        return PegasusEngine(submit=submit)
    raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
