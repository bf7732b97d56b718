"""run.json: the run's core record (`RunInfo`), the Pegasus engine's sub-record, and the migration of older files.

Version 1 kept free-form facts in an `extra` dict; version 2 made them 45 flat typed fields; version 3 (this)
keeps the engine-neutral facts at the top and groups the Pegasus engine's own facts under `"pegasus"`. Every
older file is read and migrated here, and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cog_pipeline.run.lease import Lease
from cog_pipeline.run.state import RunState, parse_state
from cog_pipeline.storage.store import StoreConfig

RUN_RECORD_VERSION = 3  # 1: the untyped `extra` dict; 2: flat typed fields; 3: the Pegasus facts grouped


class DamagedRunDir(RuntimeError):
    """run.json cannot be read (truncated, not JSON, missing fields, from a newer version): skip the run."""


@dataclass
class PegasusRecord:
    """What only the Pegasus engine records: how it planned and submitted the workflow (run.json "pegasus")."""

    staging_site: str | None = None  # written by the workflow generator
    plan_args: list[str] = field(default_factory=list)
    pegasus_credentials: str | None = None
    planned: bool = False
    plan_dir: str | None = None
    plan_log: str | None = None
    plan_attempts: int = 0
    plan_error: str | None = None
    submit_dir: str | None = None
    submit_error: str | None = None
    dagman_cluster: int | None = None
    submitted_at: float | None = None


PEGASUS_FIELDS = frozenset(f.name for f in fields(PegasusRecord))


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
    cluster: bool = False
    cluster_size: int | None = None
    jobs: int | None = None
    empty: bool = False  # no row got a job: nothing to plan or run
    preflight_failed: int | None = None
    duplicates: int | None = None
    max_running: int | None = None
    max_transfers: int | None = None
    retries: int | None = None
    pegasus_files: dict[str, str] = field(default_factory=dict)  # the workflow's files (both engines read them)
    reconcile_command: str | None = None
    engine_waiting: str | None = None  # why the engine could not take the run yet (a later tick retries)
    stac: bool = False  # scan --stac: reconcile also writes STAC Items and a Collection (publish.py)
    stac_base_url: str | None = None  # scan --stac-base-url: the published records' hrefs are under it
    pegasus: PegasusRecord = field(default_factory=PegasusRecord)
    version: int = RUN_RECORD_VERSION
    unknown: dict[str, Any] = field(default_factory=dict)

    @property
    def store_config(self) -> StoreConfig:
        return StoreConfig.from_json(self.store)

    @property
    def lease(self) -> Lease | None:
        return Lease.from_json(self.owner)

    def set_fact(self, name: str, value: Any) -> None:
        """Set a field of the core record or, for the Pegasus engine's own facts, of its sub-record."""
        if name in PEGASUS_FIELDS:
            setattr(self.pegasus, name, value)
        elif name != "unknown" and name in _CORE_FIELDS:
            setattr(self, name, value)
        else:
            raise TypeError(f"RunInfo has no field {name!r}")

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "unknown"}
        data["state"] = str(self.state)
        return {**self.unknown, **data}

    @classmethod
    def from_json(cls, data: object, where: str = "run.json") -> RunInfo:
        values, unknown = migrate(data, where)
        _check_required(values, where)
        try:
            values["state"] = parse_state(values.get("state", RunState.CLAIMING))
            pegasus = values.pop("pegasus", None) or {}
            if not isinstance(pegasus, dict):
                raise TypeError(f"pegasus is {pegasus!r}, not an object")
            return cls(**values, pegasus=PegasusRecord(**{k: v for k, v in pegasus.items() if k in PEGASUS_FIELDS}), unknown=unknown)
        except (TypeError, ValueError) as exc:
            raise DamagedRunDir(f"{where}: {exc}") from None


_CORE_FIELDS = frozenset(f.name for f in fields(RunInfo))


def migrate(data: object, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Any version of run.json -> (the current version's field values, fields this version does not know)."""
    if not isinstance(data, dict):
        raise DamagedRunDir(f"{where} does not hold a JSON object")
    data = dict(data)
    version = data.get("version", 1)
    if not isinstance(version, int) or version > RUN_RECORD_VERSION:
        raise DamagedRunDir(f"{where} is version {version!r}, newer than this cog-pipeline reads ({RUN_RECORD_VERSION}): upgrade cog-pipeline")
    legacy = data.pop("extra", None)
    if isinstance(legacy, dict):  # version 1: move the free-form facts into their fields
        for name in ("owner_pid", "owner_host", "engine_pid", "engine_host"):
            legacy.pop(name, None)
        for key, value in legacy.items():
            data.setdefault(key, value)
    if version < 3:  # versions 1 and 2: the Pegasus engine's facts were flat beside the core ones
        pegasus = {name: data.pop(name) for name in PEGASUS_FIELDS if name in data}
        data["pegasus"] = pegasus
    values = {k: v for k, v in data.items() if k in _CORE_FIELDS and k != "unknown"}
    unknown = {k: v for k, v in data.items() if k not in _CORE_FIELDS}
    values["version"] = RUN_RECORD_VERSION
    return values, unknown


def _check_required(values: dict[str, Any], where: str) -> None:
    """The fields every step needs must have their type (`store: null` would fail deep inside a tick)."""
    for name in ("timestamp", "input_bucket", "output_bucket", "manifest_key", "processing_key"):
        if not isinstance(values.get(name), str) or not values.get(name):
            raise DamagedRunDir(f"{where}: {name} is {values.get(name)!r}, not a name")
    if not isinstance(values.get("store"), dict):
        raise DamagedRunDir(f"{where}: store is {values.get('store')!r}, not the bucket settings")
