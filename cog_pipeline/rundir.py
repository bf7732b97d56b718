"""The run directory: everything about one claimed manifest, on local disk, in files a person can read.

Each step of the flow (claim -> workflow -> jobs -> reconcile) records what it did here before the next
step starts, so a crash at any point can be resumed by reading the directory back.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import atomic
from .naming import RUN_DIR_PREFIX
from .store import StoreConfig

# The run's life, in order. A run directory's state only ever moves forward.
CLAIMING = "claiming"  # run directory made, manifest not yet renamed in the bucket
CLAIMED = "claimed"  # processing file in the bucket, manifest copied here
GENERATED = "generated"  # Pegasus files written
RUNNING = "running"  # handed to an engine
RECONCILED = "reconciled"  # result files written, processing file removed
ABANDONED = "abandoned"  # the claim lost to another scan; nothing in the bucket belongs to this run
STATES = (CLAIMING, CLAIMED, GENERATED, RUNNING, RECONCILED, ABANDONED)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half of one."""
    atomic.write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"), 0o644)


def this_host() -> str:
    return socket.gethostname()


def process_alive(pid: object, host: object) -> bool:
    """Whether `pid` is a live process on this host: how a run knows its owner died without telling anyone."""
    if not isinstance(pid, int) or host != this_host():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunInfo:
    """run.json: what a later step (or a later tick after a crash) needs to carry the run on. Never secrets."""

    timestamp: str
    input_bucket: str
    output_bucket: str
    manifest_key: str
    processing_key: str
    store: dict[str, Any]
    state: str = CLAIMING
    engine: str = "local"
    # Server time of the processing object: outputs older than this belong to an earlier run.
    claimed_at: str | None = None
    # Free-form facts steps add (submit directory, pid of the engine, max_running, ...).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store_config(self) -> StoreConfig:
        return StoreConfig.from_json(self.store)


class RunDir:
    """Paths inside workflow-run-<TS>/ and the run.json state machine."""

    MANIFEST = "manifest.csv"
    RUN_JSON = "run.json"
    WORKFLOW = "workflow.yml"
    REPLICAS = "replicas.yml"
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
        data = json.loads((self.path / self.RUN_JSON).read_text(encoding="utf-8"))
        return RunInfo(**data)

    def save(self, info: RunInfo) -> None:
        if info.state not in STATES:
            raise ValueError(f"unknown run state {info.state!r}")
        write_json_atomic(self.path / self.RUN_JSON, asdict(info))

    def set_state(self, state: str, **extra: Any) -> RunInfo:
        info = self.load()
        info.state = state
        info.extra.update(extra)
        self.save(info)
        return info

    def read_json(self, name: str, default: Any = None) -> Any:
        path = self.path / name
        if not path.is_file():
            return default
        return json.loads(path.read_text(encoding="utf-8"))

    def write_json(self, name: str, data: Any) -> None:
        write_json_atomic(self.path / name, data)

    def job_records(self) -> dict[str, dict[str, Any]]:
        """Outcome of every finished job (jobs/<id>.json), by job id."""
        records: dict[str, dict[str, Any]] = {}
        if self.jobs_dir.is_dir():
            for path in self.jobs_dir.glob("*.json"):
                data = json.loads(path.read_text(encoding="utf-8"))
                records[str(data["job_id"])] = data
        return records


def list_run_dirs(work_dir: Path) -> list[RunDir]:
    if not work_dir.is_dir():
        return []
    return [RunDir(p) for p in sorted(work_dir.glob(f"{RUN_DIR_PREFIX}*")) if (p / RunDir.RUN_JSON).is_file()]
