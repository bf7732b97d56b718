"""The run directory: everything about one claimed manifest, on local disk, in files a person can read.

Each step of the flow (claim -> workflow -> jobs -> reconcile) records what it did here before the next
step starts, so a crash at any point can be resumed by reading the directory back. run.json is a typed,
versioned record (`RunInfo`); every write of it is checked against the state machine in `state.py`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import atomic
from . import lease as leases
from .lease import Lease
from .naming import RUN_DIR_PREFIX
from .state import RunState, check_transition, parse_state
from .store import StoreConfig

# Kept as names for the modules that compare states (RunState members are also plain strings).
CLAIMING, CLAIMED, GENERATED, RUNNING, RECONCILED, ABANDONED = (
    RunState.CLAIMING, RunState.CLAIMED, RunState.GENERATED, RunState.RUNNING, RunState.RECONCILED, RunState.ABANDONED,
)
STATES = tuple(RunState)
RUN_RECORD_VERSION = 2  # 1: the untyped `extra` dict (read and migrated); 2: typed fields


class DamagedRunDir(RuntimeError):
    """run.json cannot be read (truncated, not JSON, missing fields, from a newer version): skip the run."""


class LeaseHeld(RuntimeError):
    """Another live process carries this run on."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half of one."""
    atomic.write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"), 0o644)


@dataclass
class RunInfo:
    """run.json: what a later step (or a later tick after a crash) needs to carry the run on. Never secrets.

    Fields a newer writer added are kept in `unknown` and written back unchanged.
    """

    timestamp: str
    input_bucket: str
    output_bucket: str
    manifest_key: str
    processing_key: str
    store: dict[str, Any]
    state: RunState = RunState.CLAIMING
    engine: str = "local"
    # Server time of the processing object: outputs older than this belong to an earlier run.
    claimed_at: str | None = None
    manifest_etag: str | None = None
    claim_token: dict[str, Any] | None = None  # claim.ClaimToken: names this run's claimant in its fenced marker
    owner: dict[str, Any] | None = None  # the lease of whoever carries the run on now (lease.Lease)
    # Same-bucket mode: every output at <output_prefix><key> (naming.check_buckets); None: at <key>.
    output_prefix: str | None = None
    # Written by the workflow generator (pegasus/workflow_gen.py).
    output_site: str | None = None
    data_configuration: str | None = None
    staging_site: str | None = None
    cluster: bool = False
    cluster_size: int | None = None
    jobs: int | None = None
    empty: bool = False  # no row got a job: nothing to plan or run
    preflight_failed: int | None = None
    duplicates: int | None = None
    max_running: int | None = None
    max_transfers: int | None = None
    retries: int | None = None
    pegasus_files: dict[str, str] = field(default_factory=dict)
    pegasus_credentials: str | None = None
    plan_args: list[str] = field(default_factory=list)
    reconcile_command: str | None = None
    # Written by the Pegasus engine.
    engine_waiting: str | None = None
    planned: bool = False
    plan_dir: str | None = None
    plan_log: str | None = None
    plan_attempts: int = 0
    plan_error: str | None = None
    submit_dir: str | None = None
    submit_error: str | None = None
    dagman_cluster: int | None = None
    submitted_at: float | None = None
    stac: bool = False  # scan --stac: reconcile also writes STAC Items and a Collection (publish.py)
    stac_base_url: str | None = None  # scan --stac-base-url: the published records' hrefs are under it
    version: int = RUN_RECORD_VERSION
    unknown: dict[str, Any] = field(default_factory=dict)

    @property
    def store_config(self) -> StoreConfig:
        return StoreConfig.from_json(self.store)

    @property
    def lease(self) -> Lease | None:
        return Lease.from_json(self.owner)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "unknown"}
        data["state"] = str(self.state)
        return {**self.unknown, **data}

    @classmethod
    def from_json(cls, data: object, where: str = "run.json") -> RunInfo:
        if not isinstance(data, dict):
            raise DamagedRunDir(f"{where} does not hold a JSON object")
        data = dict(data)
        version = data.get("version", 1)
        if not isinstance(version, int) or version > RUN_RECORD_VERSION:
            raise DamagedRunDir(f"{where} is version {version!r}, newer than this cog-pipeline reads ({RUN_RECORD_VERSION}): upgrade cog-pipeline")
        known = {f.name for f in fields(cls)} - {"unknown"}
        legacy = data.pop("extra", None)
        if isinstance(legacy, dict):  # version 1: move the free-form facts into their fields
            if "owner_pid" in legacy or "engine_pid" in legacy:
                legacy.pop("owner_pid", None), legacy.pop("owner_host", None)
                legacy.pop("engine_pid", None), legacy.pop("engine_host", None)
            for key, value in legacy.items():
                data.setdefault(key, value)
        values = {k: v for k, v in data.items() if k in known}
        unknown = {k: v for k, v in data.items() if k not in known}
        values["version"] = RUN_RECORD_VERSION
        _check_required(values, where)
        try:
            values["state"] = parse_state(values.get("state", RunState.CLAIMING))
            return cls(**values, unknown=unknown)
        except (TypeError, ValueError) as exc:
            raise DamagedRunDir(f"{where}: {exc}") from None


def _check_required(values: dict[str, Any], where: str) -> None:
    """The fields every step needs must have their type (`store: null` would fail deep inside a tick)."""
    for name in ("timestamp", "input_bucket", "output_bucket", "manifest_key", "processing_key"):
        if not isinstance(values.get(name), str) or not values.get(name):
            raise DamagedRunDir(f"{where}: {name} is {values.get(name)!r}, not a name")
    if not isinstance(values.get("store"), dict):
        raise DamagedRunDir(f"{where}: store is {values.get('store')!r}, not the bucket settings")


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
    PREFLIGHT = "preflight.json"  # rows that failed before any job (bad rows, missing inputs)
    JOBS = "jobs"  # one <job-id>.json per finished job attempt sequence, plus logs
    RECONCILE = "reconcile.json"
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
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DamagedRunDir(f"{self.path} has no {self.RUN_JSON}") from None
        except (OSError, ValueError) as exc:
            raise DamagedRunDir(f"{path} is unreadable ({type(exc).__name__}: {exc})") from None
        return RunInfo.from_json(data, str(path))

    def save(self, info: RunInfo) -> None:
        """Write run.json, refusing any move the state machine does not allow."""
        old = self.load().state if self.exists() else None
        check_transition(old, parse_state(info.state), str(self.path))
        write_json_atomic(self.path / self.RUN_JSON, info.to_json())

    def set_state(self, state: RunState | str, **facts: Any) -> RunInfo:
        """Move to `state` (or stay) and record `facts` (RunInfo field names) in one write."""
        info = self.load()
        info.state = parse_state(state)
        for name, value in facts.items():
            if name == "unknown" or not hasattr(info, name):
                raise TypeError(f"RunInfo has no field {name!r}")
            setattr(info, name, value)
        self.save(info)
        return info

    def update(self, **facts: Any) -> RunInfo:
        """Record facts without moving."""
        return self.set_state(self.load().state, **facts)

    def acquire_lease(self) -> bool:
        """Take the run's lease for this process. False when a live owner holds it; True when this process
        took it now. A lease already ours is renewed and counts as not newly taken (raises nothing)."""
        info = self.load()
        if leases.is_mine(info.lease):
            self.renew_lease()
            return False
        if leases.is_alive(info.lease):
            raise LeaseHeld(f"{self.path} is being carried on by {info.lease.owner_id}; try again later")
        self.update(owner=leases.mine().to_json())
        return True

    def renew_lease(self) -> None:
        if leases.is_mine(self.load().lease):
            self.update(owner=leases.mine().to_json())

    def release_lease(self) -> None:
        """Give the lease up, if it is this process's (a lease taken over by another owner stays)."""
        if self.exists() and leases.is_mine(self.load().lease):
            self.update(owner=None)

    def is_owned(self) -> bool:
        """Someone (this process or another live one) holds the run's lease."""
        return leases.is_alive(self.load().lease)

    def read_json(self, name: str, default: Any = None) -> Any:
        path = self.path / name
        if not path.is_file():
            return default
        return json.loads(path.read_text(encoding="utf-8"))

    def write_json(self, name: str, data: Any) -> None:
        write_json_atomic(self.path / name, data)

    def job_records(self) -> dict[str, dict[str, Any]]:
        """Outcome of every finished job (jobs/<id>.json), by job id. An unreadable record is no record."""
        records: dict[str, dict[str, Any]] = {}
        if self.jobs_dir.is_dir():
            for path in self.jobs_dir.glob("*.json"):
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                    records[str(data["job_id"])] = data
                except (OSError, ValueError, KeyError, TypeError):
                    continue
        return records


def _candidates(work_dir: Path) -> list[Path]:
    if not work_dir.is_dir():
        return []
    return sorted(p for p in work_dir.glob(f"{RUN_DIR_PREFIX}*") if p.is_dir())


def list_run_dirs(work_dir: Path) -> list[RunDir]:
    """Every run directory whose run.json can be read (damaged ones: see `survey_run_dirs`)."""
    return survey_run_dirs(work_dir)[0]


def survey_run_dirs(work_dir: Path) -> tuple[list[RunDir], list[str]]:
    """(readable run directories, one-line problems of the others). Empty directories are not problems."""
    good: list[RunDir] = []
    problems: list[str] = []
    for path in _candidates(work_dir):
        run_dir = RunDir(path)
        if not run_dir.exists():
            if any(path.iterdir()):
                problems.append(f"{path} has no {RunDir.RUN_JSON}; skipped")
            continue
        try:
            run_dir.load()
        except DamagedRunDir as exc:
            problems.append(f"{exc}; skipped")
            continue
        good.append(run_dir)
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
