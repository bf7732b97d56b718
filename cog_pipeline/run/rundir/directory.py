"""The run directory's paths, and the guarded reads and writes of run.json (with the run's lease).

Each step of the flow (claim -> workflow -> jobs -> reconcile) records what it did here before the next
step starts, so a crash at any point can be resumed by reading the directory back. Every write of run.json
is checked against the state machine in `state.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cog_pipeline.run import lease as leases
from cog_pipeline.run.naming import RUN_DIR_PREFIX
from cog_pipeline.run.rundir import files
from cog_pipeline.run.rundir.jobs import JobRecord, load_job_records
from cog_pipeline.run.rundir.record import DamagedRunDir, RunInfo
from cog_pipeline.run.state import RunState, check_transition, parse_state

# Kept as names for the modules that compare states (RunState members are also plain strings).
CLAIMING, CLAIMED, GENERATED, RUNNING, RECONCILED, ABANDONED = (
    RunState.CLAIMING, RunState.CLAIMED, RunState.GENERATED, RunState.RUNNING, RunState.RECONCILED, RunState.ABANDONED,
)
STATES = tuple(RunState)


class LeaseHeld(RuntimeError):
    """Another live process carries this run on."""


class RunDir:
    """Paths inside workflow-run-<TS>/ and the guarded reads and writes of run.json."""

    MANIFEST = "manifest.csv"
    RUN_JSON = "run.json"
    WORKFLOW = "workflow.yml"
    REPLICAS = "replicas.yml"  # input replica catalog: input LFN -> object in the input bucket
    OUTPUTS = "outputs.yml"  # output replica catalog (Pegasus' Replica output mapper): output LFN -> object
    TRANSFORMATIONS = "transformations.yml"
    SITES = "sites.yml"
    PROPERTIES = "pegasus.properties"
    PREFLIGHT = "preflight.json"  # what pre-flight decided, summarised (preflight.Preflight)
    PREFLIGHT_FAILED = "preflight-failed.csv"  # every row pre-flight failed: line,reason (a stream)
    PREFLIGHT_SIZES = "preflight-sizes.csv"  # each job's input size: key,bytes (a stream)
    JOBS = "jobs"  # one <job-id>.json per finished job attempt sequence, plus logs
    RECONCILE = "reconcile.json"  # reconcile's decisions, summarised (decisions.Decisions)
    RESULTS = "results"  # copies of the processed/failed/reasons files written to the bucket

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def timestamp(self) -> str:
        return self.path.name[len(RUN_DIR_PREFIX) :]

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def jobs_dir(self) -> Path:
        return self.path / self.JOBS

    def exists(self) -> bool:
        return (self.path / self.RUN_JSON).is_file()

    def load(self) -> RunInfo:
        """run.json as a RunInfo; DamagedRunDir (one line naming the file) when it cannot be read."""
        path = self.path / self.RUN_JSON
        try:
            data = files.read_json(path)
        except FileNotFoundError:
            raise DamagedRunDir(f"{self.path} has no {self.RUN_JSON}") from None
        except (OSError, ValueError) as exc:
            raise DamagedRunDir(f"{path} is unreadable ({type(exc).__name__}: {exc})") from None
        return RunInfo.from_json(data, str(path))

    def save(self, info: RunInfo) -> None:
        """Write run.json, refusing any move the state machine does not allow (from the state on disk)."""
        self._write(self.load().state if self.exists() else None, info)

    def _write(self, old: RunState | None, info: RunInfo) -> None:
        check_transition(old, parse_state(info.state), str(self.path))
        files.write_json_atomic(self.path / self.RUN_JSON, info.to_json())

    def set_state(self, state: RunState | str | None, **facts: Any) -> RunInfo:
        """Move to `state` (None: stay) and record `facts` in one read and one write: names of RunInfo's
        fields or of its engine sub-record's (`submit_dir=...` lands in `info.pegasus`). Returns what it wrote."""
        info = self.load()
        old = info.state
        if state is not None:
            info.state = parse_state(state)
        for name, value in facts.items():
            info.set_fact(name, value)
        self._write(old, info)
        return info

    def update(self, **facts: Any) -> RunInfo:
        """Record facts without moving."""
        return self.set_state(None, **facts)

    def acquire_lease(self) -> bool:
        """Take the run's lease for this process. False when the lease was already ours (it is renewed, and
        counts as not newly taken); True when this process took it now. LeaseHeld when a live owner holds it."""
        info = self.load()
        if leases.is_alive(info.lease) and not leases.is_mine(info.lease):
            raise LeaseHeld(f"{self.path} is being carried on by {info.lease.owner_id}; try again later")
        taken = not leases.is_mine(info.lease)
        info.owner = leases.mine().to_json()
        self._write(info.state, info)
        return taken

    def renew_lease(self) -> None:
        info = self.load()
        if leases.is_mine(info.lease):
            info.owner = leases.mine().to_json()
            self._write(info.state, info)

    def release_lease(self) -> RunInfo | None:
        """Give the lease up, if it is this process's (a lease taken over by another owner stays). Returns the
        run as it stands then (None: it has no run.json)."""
        if not self.exists():
            return None
        info = self.load()
        if leases.is_mine(info.lease):
            info.owner = None
            self._write(info.state, info)
        return info

    def is_owned(self) -> bool:
        """Someone (this process or another live one) holds the run's lease."""
        return leases.is_alive(self.load().lease)

    def read_json(self, name: str, default: Any = None) -> Any:
        """An engine's own small file (e.g. the Pegasus scratch record); the run's documents have types."""
        path = self.path / name
        if not path.is_file():
            return default
        return files.read_json(path)

    def write_json(self, name: str, data: Any) -> None:
        files.write_json_atomic(self.path / name, data)

    def job_records(self) -> dict[str, JobRecord]:
        """Outcome of every finished job (jobs/<id>.json), by job id. An unreadable record is no record."""
        return load_job_records(self.jobs_dir)


def _candidates(work_dir: Path) -> list[Path]:
    if not work_dir.is_dir():
        return []
    return sorted(p for p in work_dir.glob(f"{RUN_DIR_PREFIX}*") if p.is_dir())


def list_run_dirs(work_dir: Path) -> list[RunDir]:
    """Every run directory whose run.json can be read (damaged ones: see `survey_run_dirs`)."""
    return [run_dir for run_dir, _ in survey_run_dirs(work_dir)[0]]


def survey_run_dirs(work_dir: Path) -> tuple[list[tuple[RunDir, RunInfo]], list[str]]:
    """(readable run directories with their run.json as read, one-line problems of the others). Empty
    directories are not problems."""
    good: list[tuple[RunDir, RunInfo]] = []
    problems: list[str] = []
    for path in _candidates(work_dir):
        run_dir = RunDir(path)
        if not run_dir.exists():
            if any(path.iterdir()):
                problems.append(f"{path} has no {RunDir.RUN_JSON}; skipped")
            continue
        try:
            good.append((run_dir, run_dir.load()))
        except DamagedRunDir as exc:
            problems.append(f"{exc}; skipped")
    return good, problems


def remove_empty_run_dirs(work_dir: Path) -> list[Path]:
    """Remove run directories a crashed claim left empty (made, but no run.json ever written).

    Call only under the scan lock: then no claim is between its mkdir and its first write.
    """
    removed = []
    for path in _candidates(work_dir):
        try:
            path.rmdir()  # only succeeds on an empty directory
        except OSError:
            continue
        removed.append(path)
    return removed
