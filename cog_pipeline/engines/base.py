"""What every engine shares: the Engine protocol, the exit categories and the END hook command.

Defined once here so the engines never reach into each other, and so the pipeline tick can drive any engine
the same way, without knowing which engine it is: ``run`` (start or continue a batch of runs), ``is_running``
(someone is still executing it) and ``collect_job_records`` (turn what the engine left behind into
``jobs/<id>.json``). Reconcile is not an
engine's business: the tick (``pipeline.finish``) does it once every job has ended.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from cog_pipeline.run.rundir import RunDir


# The converter's exit codes, defined once in the converter (it ships as one file to workers, so the
# dependency points this way): the engines classify what the converter itself declares.
from cog_pipeline.transformations.exit_codes import ExitCode  # noqa: E402

# Input problems are deterministic: retrying them only burns time, so the local engine does not.
NOT_RETRIED = frozenset({ExitCode.USAGE, ExitCode.INPUT_UNREADABLE, ExitCode.UNSUPPORTED_INPUT, ExitCode.BAND_MISMATCH,
                         ExitCode.SOURCE_CHANGED})
# Like DAGMan, only exit 0 succeeds. Generated workflows set COG_PIPELINE_BAND_MISMATCH=warn, so a band
# mismatch exits 0 with a "WARNING BAND_MISMATCH: ..." line: processed, noted.
SUCCESS_CODES = frozenset({ExitCode.OK})


def category(code: int | None) -> str:
    """The exit category's name for a process exit code (unknown codes are internal errors)."""
    if code is None:
        return ExitCode.INTERNAL.name
    try:
        return ExitCode(code).name
    except ValueError:
        return ExitCode.INTERNAL.name


class WorkflowError(RuntimeError):
    """The run directory does not hold a workflow this engine can execute."""


class RunFinished(WorkflowError):
    """The run has reached a final state: there is nothing left to do, and nothing is changed."""


def end_hook_command(run_dir: Path) -> str:
    """The workflow's END hook, the same for every engine: `cog-pipeline finish RUN_DIR`, spelled with this
    Python (`-m cog_pipeline`) so it needs no PATH on the submit host."""
    return shlex.join([sys.executable, "-m", "cog_pipeline", "finish", str(Path(run_dir).resolve())])


def last_line(text: str) -> str:
    """The one-line reason a tool printed last (generate_cog prints exactly one; planners print many)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Outcome(NamedTuple):
    """Where one run stands after its engine ran it in this tick."""

    state: str  # "ended" (every job has ended: finish it now), "running" (someone else carries it on),
    #             "planned" or "waiting" (a later tick carries it on), "error" (left for the next tick)
    problem: str | None = None  # "error": one line saying why


#: the pipeline's finish(run_dir), handed to an engine that runs END hooks in its own process
Finish = Callable[["RunDir"], Any]


class Engine(Protocol):
    """One way to execute generated run directories. Implementations: engines.local, engines.pegasus.

    Built by ``engines.get_engine(name, config, progress=..., submit=..., finish=...)``: each engine takes its own
    options from the configuration. The tick calls ``begin`` before it claims, ``run`` with the runs it carries
    on, and ``end``; ``is_running`` and ``collect_job_records`` serve the finish of any run.
    """

    name: str
    adopts_unplanned: bool  # a tick of this engine may run a run another engine generated but never started
    writes_credentials: bool  # the generator writes credentials.conf for it (the planner needs key material in a file)
    key_problem: Callable[[str], str | None] | None  # why its tools cannot carry a key (preflight fails that row)

    def begin(self) -> None:
        """Before the tick claims anything: check the engine can run here (raise with one line), warm it up."""
        ...

    def end(self) -> None:
        """After the tick: release what `begin` started."""
        ...

    def run(self, runs: list[RunDir], echo: Callable[[str], None]) -> dict[Path, Outcome]:
        """Start or continue each run (generated, or running); its Outcome by run directory path."""
        ...

    def is_running(self, run_dir: RunDir) -> bool:
        """Whether something is still executing this run's jobs (never reconcile while it is)."""
        ...

    def handed_over(self, run_dir: RunDir) -> bool:
        """Whether this engine has taken the run beyond its generated files (planned, submitted, running): then
        no other engine may take it."""
        ...

    def collect_job_records(self, run_dir: RunDir) -> int:
        """Write jobs/<id>.json for jobs that ended and have no record yet; returns how many were written."""
        ...
