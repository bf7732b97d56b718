"""What every engine shares: the Engine protocol, the job record, the exit categories and the job-id convention.

Defined once here so the engines never reach into each other, and so the pipeline tick can drive any engine
the same way: ``submit`` (start or continue the run), ``is_running`` (someone is still executing it) and
``collect_job_records`` (turn what the engine left behind into ``jobs/<id>.json``). Reconcile is not an
engine's business: the tick (``pipeline.finish``) does it once every job has ended.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..rundir import RunDir
    from ..rundir.jobs import JobRecord


# The converter's exit codes, defined once in the converter (it ships as one file to workers, so the
# dependency points this way): the engines classify what the converter itself declares.
from ..transformations.exit_codes import ExitCode  # noqa: E402

# Input problems are deterministic: retrying them only burns time, so the local engine does not.
NOT_RETRIED = frozenset({ExitCode.USAGE, ExitCode.INPUT_UNREADABLE, ExitCode.UNSUPPORTED_INPUT, ExitCode.BAND_MISMATCH})
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


def job_id_of(line: int) -> str:
    """The job id of the manifest row on 1-based `line`: the one convention every part uses."""
    return f"ID{line:07d}"


def line_of_job_id(job_id: str) -> int | None:
    """The manifest line of a job id made by `job_id_of` (None for anything else)."""
    digits = job_id[2:]
    return int(digits) if job_id.startswith("ID") and digits.isdigit() else None


class WorkflowError(RuntimeError):
    """The run directory does not hold a workflow this engine can execute."""


class RunFinished(WorkflowError):
    """The run has reached a final state: there is nothing left to do, and nothing is changed."""


def __getattr__(name: str) -> Any:
    """`JobRecord` lives in the run directory's package (cog_pipeline.rundir.jobs). It is imported only when
    asked for, so a pool worker, which imports this module for the exit categories, never loads the run
    directory's layers."""
    if name == "JobRecord":
        from ..rundir.jobs import JobRecord

        return JobRecord
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def end_hook_command(run_dir: Path) -> str:
    """The workflow's END hook, the same for every engine: `cog-pipeline finish RUN_DIR`, spelled with this
    Python (`-m cog_pipeline`) so it needs no PATH on the submit host."""
    return shlex.join([sys.executable, "-m", "cog_pipeline", "finish", str(Path(run_dir).resolve())])


#: "0": the local engine runs every command as Pegasus would (converter and END hook in processes of their own)
INPROCESS_ENV = "COG_PIPELINE_LOCAL_INPROCESS"


def in_process_allowed() -> bool:
    """False when env COG_PIPELINE_LOCAL_INPROCESS=0 asks the local engine to spawn what it could call."""
    import os

    return os.environ.get(INPROCESS_ENV, "1").strip() != "0"


def run_end_hook(cmd: str, run_dir: Path) -> int:
    """Run one END hook and return its exit code. The engines' own hook (:func:`end_hook_command`) runs in
    this process, through the same click command, when the local engine executes it: a second interpreter
    and its imports cost ~0.5 s at the end of every scan. Anything else, or env
    COG_PIPELINE_LOCAL_INPROCESS=0, runs in ``/bin/sh`` as DAGMan would run it."""
    import subprocess
    import sys

    if cmd == end_hook_command(run_dir) and in_process_allowed():
        return _finish_in_process(Path(run_dir))
    try:
        to_stderr: int | None = sys.stderr.fileno()  # the caller's stdout stays its own (scan --json)
    except (AttributeError, OSError, ValueError):
        to_stderr = None
    return subprocess.run(["/bin/sh", "-c", cmd], check=False, stdout=to_stderr).returncode


def _finish_in_process(run_dir: Path) -> int:
    """``cog-pipeline finish RUN_DIR`` as a call: its exit code; everything it prints goes to stderr, so a
    caller's stdout stays its own (``scan --json`` prints only the JSON there)."""
    import contextlib
    import sys

    import click

    from ..cli import main

    try:
        with contextlib.redirect_stdout(sys.stderr):
            main(["finish", str(run_dir)], standalone_mode=False)
    except SystemExit as exc:  # handle_errors' one-line failures
        return exc.code if isinstance(exc.code, int) else 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the caller finishes the run in-process again and reports it
        click.echo(f"error: end hook failed: {type(exc).__name__}: {exc}", err=True)
        return 1
    return 0


def last_line(text: str) -> str:
    """The one-line reason a tool printed last (generate_cog prints exactly one; planners print many)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def write_record(path: Path, record: JobRecord) -> None:
    from ..rundir import write_json_atomic

    write_json_atomic(path, record.to_json())


def read_record(path: Path) -> JobRecord:
    from ..rundir.jobs import JobRecord

    return JobRecord.from_json(json.loads(path.read_text(encoding="utf-8")))


class Engine(Protocol):
    """One way to execute a generated run directory. Implementations: engines.local, engines.pegasus."""

    name: str

    def submit(self, run_dir: RunDir, echo: Any) -> str:
        """Start or continue the run. Returns "ended" (every job has ended: finish it now), "running"
        (someone else carries it on), "planned" or "waiting" (a later tick carries it on)."""
        ...

    def is_running(self, run_dir: RunDir) -> bool:
        """Whether something is still executing this run's jobs (never reconcile while it is)."""
        ...

    def collect_job_records(self, run_dir: RunDir) -> int:
        """Write jobs/<id>.json for jobs that ended and have no record yet; returns how many were written."""
        ...
