"""Engines: the ways a generated workflow gets executed (see `base.Engine`); `local` and `pegasus` today."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cog_pipeline.config import PipelineConfig

    from .base import Engine

ENGINES = ("local", "pegasus")


def get_engine(name: str, config: PipelineConfig | None = None, **options: Any) -> Engine:
    """The engine called `name`, with its options from `config` (None: the defaults and the environment).
    `options`: progress (bool), submit (bool: pegasus plans and submits), finish (the pipeline's finish, for
    END hooks run in this process). Imported on demand: the local engine never loads the HTCondor bindings."""
    if config is None:
        from cog_pipeline.config import load_config

        config = load_config(None)
    if name == "local":
        from .local import LocalEngine

        return LocalEngine(config, **options)
    if name == "pegasus":
        from .pegasus.engine import PegasusEngine

        return PegasusEngine(config, **options)
    raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
