"""The HTCondor boundary: the bindings module and the local schedd (tests replace `schedd`, never the logic)."""

from __future__ import annotations

from typing import Any

from ..base import WorkflowError

# JobStatus values: 1 idle, 2 running, 3 removed, 4 completed, 5 held, 6 transferring output, 7 suspended
ENDED_STATUSES = {3, 4}


class PegasusUnavailable(WorkflowError):
    """pegasus-plan / condor_submit_dag is not installed here: the run waits, nothing is lost."""



# -------------------------------------------------------------------------------------------------------------
# HTCondor bindings (htcondor2 in 24+/25 wheels, htcondor in older installs)


def htcondor_module() -> Any | None:
    try:
        import htcondor2 as module  # type: ignore[import-not-found]
    except ImportError:
        try:
            import htcondor as module  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return None
    return module


def schedd() -> Any:
    """The local schedd. Tests replace this function (the only HTCondor boundary), never the logic."""
    module = htcondor_module()
    if module is None:
        raise PegasusUnavailable("the HTCondor Python bindings (htcondor2) are not installed: pip install 'cog-pipeline[condor]'")
    return module.Schedd()


