"""Turn a claimed run directory into a Pegasus 5 abstract workflow plus its catalogs and properties.

Contract (shared with the local engine ``cog_pipeline/engine_local.py``, reconcile and the Crondor)
===================================================================================================

Entry points
    ``generate(run_dir: RunDir, input_store: ObjectStore, settings: WorkflowSettings) -> GenerationResult``
    and ``main()`` (``python pegasus/workflow_gen.py RUN_DIR [options]``; it rebuilds the input store from
    run.json's ``store`` with ``RunInfo.store_config`` + ``open_store``).

Inputs
    ``<run>/manifest.csv`` (the claimed manifest) and ``<run>/run.json`` (input/output bucket, StoreConfig).

Pre-flight (before any job exists)
    Input keys are checked with ``listing.find_keys`` (a few paginated listings, never one request per key).
    ``<run>/preflight.json`` = ``{"failed": [...], "duplicates": [...], "jobs": N}`` where
    ``failed`` holds ``{"line": int, "text": str, "reason": str}`` for the manifest's rejected rows and for rows
    whose input object does not exist, sorted by line; ``duplicates`` holds
    ``{"line": int, "text": str, "duplicate_of": first_line}``. Only existing inputs get jobs. On a run whose
    engine is ``pegasus``, a key the Pegasus transfer tools cannot carry
    (``replicas.pegasus_keys.pegasus_key_problem``) fails here with that reason, before any listing.

Data configuration and configuration file
    ``WorkflowSettings.data_configuration`` None: nonsharedfs for S3 buckets (staging site = the S3 site,
    bypassed input staging, ``--cleanup none`` and ``<run>/scratch.json`` naming the scratch prefix the engine
    removes with boto3), condorio for folder buckets. ``settings_from_config`` / ``--config FILE`` build the
    settings from ``cog_pipeline.config`` (flags override the file); see docs/workflow.md.

Files written into the run directory (Pegasus' default names)
    ``workflow.yml``, ``replicas.yml``, ``transformations.yml``, ``sites.yml`` (rendered from the template
    ``pegasus/sites.yml``), ``pegasus.properties``, ``preflight.json`` and, only for an S3 store with key
    files, ``credentials.conf`` (mode 0600). All YAML files are valid against the Pegasus 5.0 schemas.

Jobs (one per valid manifest row)
    id ``ID{line:07d}`` (line = 1-based manifest line), transformation ``generate_cog``, arguments exactly
    ``[<input LFN>, <row.key>, <row.jpg_key>, "--bands", str(bands)]``, then ``"--metadata-b64", <provenance>``
    (``settings.provenance``, default on: the row's lineage as base64url JSON, see ``cog_pipeline.provenance``); uses: the input LFN (``input``), and
    ``row.key`` / ``row.jpg_key`` (``output``, ``stageOut: true``, ``registerReplica: false``);
    metadata ``key`` (the manifest key) and ``line`` (as a string, as Pegasus.api stores metadata);
    profiles ``dagman: {RETRY: <retries>, CATEGORY: "cog"}`` (Pegasus.api writes DAGMan keys upper-case;
    Pegasus and the local engine treat them case-insensitively).

LFN conventions
    Input LFN = ``input/<key>`` (an LFN used as both input and output breaks Pegasus, and input and output
    keys are equal). Output LFNs = the object keys in the OUTPUT bucket, folders kept.

Where things are
    * Input PFNs: ``replicas.yml``, lfn ``input/<key>`` -> one pfn on site ``storage``:
      ``s3://<identity>@storage/<input-bucket>/<raw key>`` or, when buckets are folders,
      ``file://<local_root>/<input-bucket>/<key>``. Nothing in the package parses these back: the local
      engine takes (bucket, key) from the LFN and run.json (the tests' ``tests/urls.py`` checks them).
    * Outputs: the output site is ``run.json`` ``extra.output_site`` (``storage``); in ``sites.yml`` that site's
      ``sharedStorage`` file server URL is the OUTPUT bucket root (``s3://<identity>@storage/<output-bucket>``
      or ``file://<local_root>/<output-bucket>``); an output lands at ``<url> + "/" + <LFN>``.
    * Converter: ``transformations.yml`` transformation ``generate_cog``, site ``local``, ``pfn`` = absolute
      path of the ``generate_cog`` zipapp built from ``transformations/`` into the cache (stageable; run inside
      the GDAL container on the pool).
    * Reconcile: workflow-level shell hook on ``end`` (``hooks.shell[0].cmd``). Pegasus has no FINAL node and a
      job whose parents failed never runs, so reconcile is not a job: pegasus-monitord runs END hooks on the
      submit host when the workflow ends, and the local engine runs them after all jobs, whatever their outcome.

run.json
    ``RunDir.set_state(GENERATED, ...)`` records in ``extra``: ``output_site``, ``data_configuration``,
    ``staging_site``, ``cluster`` (true: plan with ``--cluster horizontal``), ``cluster_size``, ``jobs``,
    ``preflight_failed``, ``duplicates``, ``max_running``, ``max_transfers``, ``retries``, ``pegasus_files``,
    ``pegasus_credentials`` (path or null), ``plan_args`` (pegasus-plan arguments besides --dir/--submit),
    ``reconcile_command``, ``empty`` (true when no row got a job: do not plan, run the END hook directly).

Speed
    Pegasus.api + PyYAML need about 85 s for 100,000 jobs, so the two big documents (workflow.yml and
    replicas.yml) are written by a fast writer: block YAML whose list items are single-line JSON flow
    mappings (JSON is YAML; characters YAML 1.1 treats as unprintable or as line breaks are \\u-escaped). The
    per-job structure is taken from a Pegasus.api ``Job`` built once with placeholder values, and a test
    asserts the document equals Pegasus.api's ``Workflow.write()`` output for a small manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from cog_pipeline import rundir as rundir_mod
from cog_pipeline.engines.base import end_hook_command, job_id_of
from cog_pipeline.engines.pegasus.plan import COMPUTE_SITE, default_plan_args
from cog_pipeline.listing import find_keys
from cog_pipeline.manifest import ManifestRow, parse_manifest
from cog_pipeline.naming import key_under_output_prefix
from cog_pipeline.provenance import METADATA_B64, job_metadata_encoder
from cog_pipeline.replicas.catalog import (
    INPUT_LFN_PREFIX,
    ReplicaEntry,
    file_url,
    input_lfn,
    replica_entries,
    s3_url,
    write_replica_catalog,
    yaml_json,
)
from cog_pipeline.replicas.credentials import CREDENTIALS_FILE, write_credentials
from cog_pipeline.replicas.pegasus_keys import pegasus_key_problem
from cog_pipeline.engines.pegasus.scratch import record_scratch
from cog_pipeline.rundir import GENERATED, RunDir
from cog_pipeline.store import ObjectStore, open_store

log = logging.getLogger(__name__)

TRANSFORMATION = "generate_cog"
CATEGORY = "cog"  # DAGMan category of the conversion jobs: dagman.cog.maxjobs throttles them
SITES_TEMPLATE = Path(__file__).resolve().parent / "sites.yml"
DEFAULT_IMAGE = "ghcr.io/osgeo/gdal:ubuntu-small-3.6.3"
DATA_CONFIGURATIONS = ("condorio", "nonsharedfs")
CONTAINER_TYPES = ("singularity", "docker")
_PLACEHOLDER = re.compile(r"\$\{(COG_[A-Z0-9_]+)\}")


def default_converter() -> Path:
    """The converter zipapp of the installed sources, built on first use into the cache (transformations/build.py)."""
    from cog_pipeline.transformations.build import cached_zipapp

    return cached_zipapp()


@dataclass
class WorkflowSettings:
    """Everything the generator needs besides the run directory; every field has a default."""

    retries: int = 3  # DAGMan retries per job, as the original
    max_running: int = 10000  # --max-running: dagman.maxjobs and dagman.cog.maxjobs
    max_transfers: int = 40  # cap on concurrent S3 transfers: (stage-in + stage-out jobs) x transfer_threads
    transfer_threads: int = 4  # pegasus.transfer.threads: parallel transfers inside one transfer job
    transfer_attempts: int = 3  # pegasus-transfer -m: attempts per URL pair inside one transfer job
    backoff_base: int = 60  # seconds held before the first release of a failed transfer job
    backoff_max: int = 3600  # cap on the exponential delay
    backoff_releases: int = 3  # releases before the job is removed and DAGMan's retry counts it
    cluster_size: int | None = None  # --cluster-size N: pegasus clusters.size, plan with --cluster horizontal
    profile: tuple[str, ...] = ()  # conversion profile overrides, NAME=VALUE (transformations/profile.py)
    s3_site: str = "storage"  # name of the object-store site (replicas and output site)
    identity: str = "cog"  # user part of s3://<identity>@<site>/...; section [<identity>@<site>] in credentials
    container_image: str = DEFAULT_IMAGE  # "" runs the converter without a container
    container_type: str = "singularity"
    cpus: int = 1
    memory_mb: int = 1024
    disk_mb: int = 2048
    converter: Path = field(default_factory=default_converter)
    reconcile_command: str | None = None  # None: the END hook "<python> -m cog_pipeline finish <run_dir>"
    local_mode: bool | None = None  # buckets are folders; None: decided from run.json store.local_root
    # None: nonsharedfs for S3 buckets (workers read S3 themselves; no image crosses the access point), condorio
    # for folder buckets (one machine: today's behaviour). Either may be chosen explicitly.
    data_configuration: str | None = None
    wall_time_s: int = 0  # 0: no limit; else a conversion running longer is removed (and retried by DAGMan)
    extra_properties: dict[str, str] = field(default_factory=dict)  # the config's [pegasus.properties]
    pool_condor_profiles: dict[str, str] = field(default_factory=dict)  # the config's condor profiles (condorpool)
    scratch_prefix: str = "pegasus-scratch"  # staging area (nonsharedfs) in the output bucket: <prefix>/<ts>
    write_credentials: bool = True  # write <run>/credentials.conf when the store is S3 with key files
    provenance: bool = True  # each job passes its provenance to the converter (--metadata-b64, cog_pipeline.provenance)

    def validate(self) -> None:
        for name in ("retries", "transfer_attempts", "backoff_releases"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("max_running", "max_transfers", "transfer_threads", "backoff_base", "backoff_max", "cpus", "memory_mb", "disk_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.cluster_size is not None and self.cluster_size < 1:
            raise ValueError("cluster_size must be >= 1")
        if self.wall_time_s < 0:
            raise ValueError("wall_time_s must be >= 0")
        if self.data_configuration is not None and self.data_configuration not in DATA_CONFIGURATIONS:
            raise ValueError(f"data_configuration must be one of {DATA_CONFIGURATIONS}")
        if self.container_type not in CONTAINER_TYPES:
            raise ValueError(f"container_type must be one of {CONTAINER_TYPES}")
        for name in ("s3_site", "identity"):
            # pegasus-transfer finds an S3 URL's bucket with s3://\w+@\w+/: anything else breaks mkdir.
            if not re.fullmatch(r"\w+", getattr(self, name), re.ASCII):
                raise ValueError(f"{name} {getattr(self, name)!r} must be word characters only (letters, digits, _)")
        if self.s3_site in ("local", COMPUTE_SITE):
            raise ValueError(f"s3_site must not reuse the site name {self.s3_site!r}")
        if not self.scratch_prefix or self.scratch_prefix.startswith("/"):
            raise ValueError("scratch_prefix must be a relative key prefix")

    def data_configuration_for(self, local_mode: bool) -> str:
        """The data configuration this run plans with (see the field's comment for the automatic choice)."""
        if self.data_configuration is not None:
            return self.data_configuration
        return "condorio" if local_mode else "nonsharedfs"

    @property
    def transfer_jobs(self) -> int:
        """Concurrent stage-in jobs (and, separately, stage-out jobs) so that all transfers stay <= max_transfers."""
        return max(1, self.max_transfers // (2 * self.transfer_threads))


@dataclass
class GenerationResult:
    jobs: int
    failed: list[dict[str, Any]]
    duplicates: list[dict[str, Any]]
    files: dict[str, Path]
    output_site: str
    data_configuration: str
    cluster: bool
    credentials: Path | None
    seconds: float


# ----------------------------------------------------------------------------------------------------------------
# Backoff: HTCondor expressions (docs/workflow.md explains the choice)


def _delay_expr(base: int, cap: int) -> str:
    return f"ifThenElse({base} * pow(2, NumHolds - 1) > {cap}, {cap}, {base} * pow(2, NumHolds - 1))"


def backoff_profiles(settings: WorkflowSettings) -> dict[str, dict[str, str]]:
    """condor profiles for the `local` site (transfer jobs) and the `condorpool` site (conversion jobs)."""
    delay = _delay_expr(settings.backoff_base, settings.backoff_max)
    releases = settings.backoff_releases
    # A job held for any other reason is removed after this long (Pegasus' own default is 30 minutes).
    held_limit = max(1800, 2 * settings.backoff_max)
    waited = f"((time() - EnteredCurrentStatus) > {delay})"
    remove = f"(JobStatus == 5) && ((NumHolds > {releases}) || ((time() - EnteredCurrentStatus) > {held_limit}))"
    return {
        "local": {
            "on_exit_hold": "(ExitBySignal == true) || (ExitCode =!= 0)",
            "periodic_release": f"(HoldReasonCode =?= 3) && (NumHolds <= {releases}) && {waited}",
            "periodic_remove": remove,
        },
        COMPUTE_SITE: {
            "periodic_release": f"((HoldReasonCode =?= 12) || (HoldReasonCode =?= 13)) && (NumHolds <= {releases}) && {waited}",
            "periodic_remove": remove,
        },
    }


def pool_condor_profiles(settings: WorkflowSettings) -> dict[str, str]:
    """The conversion jobs' condor profiles: backoff, then the operator's, with every periodic_remove kept.

    HTCondor takes one periodic_remove per job, so the backoff's (held too often / too long) and the
    configuration's (the wall-time limit, or the operator's own) are joined with ``||``: either removes it.
    """
    profiles = dict(backoff_profiles(settings)[COMPUTE_SITE])
    extra = dict(settings.pool_condor_profiles)
    if settings.wall_time_s and "periodic_remove" not in extra:
        extra["periodic_remove"] = wall_time_remove(settings.wall_time_s)
    for name, value in extra.items():
        if name == "periodic_remove":
            profiles[name] = f"({profiles[name]}) || ({value})"
        else:
            profiles[name] = value
    return profiles


def wall_time_remove(seconds: int) -> str:
    """Remove a conversion that has been running (JobStatus 2) longer than `seconds`; DAGMan retries it."""
    return f"(JobStatus == 2) && ((time() - EnteredCurrentStatus) > {int(seconds)})"


# ----------------------------------------------------------------------------------------------------------------
# Sites


def _render(node: Any, values: dict[str, Any], missing: set[str]) -> Any:
    if isinstance(node, dict):
        return {k: _render(v, values, missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_render(v, values, missing) for v in node]
    if isinstance(node, str):
        whole = _PLACEHOLDER.fullmatch(node)
        if whole and whole.group(1) in values and isinstance(values[whole.group(1)], int):
            return values[whole.group(1)]

        def sub(m: re.Match) -> str:
            if m.group(1) not in values:
                missing.add(m.group(1))
                return m.group(0)
            return str(values[m.group(1)])

        return _PLACEHOLDER.sub(sub, node)
    return node


def render_sites(values: dict[str, Any], template: Path = SITES_TEMPLATE) -> dict[str, Any]:
    """The site catalog document: the template with every ${COG_...} placeholder replaced."""
    doc = yaml.safe_load(template.read_text(encoding="utf-8"))
    missing: set[str] = set()
    rendered = _render(doc, values, missing)
    if missing:
        raise KeyError(f"no value for site template placeholders: {', '.join(sorted(missing))}")
    return rendered


def site_values(run_dir: RunDir, info, settings: WorkflowSettings, local_root: Path | None) -> dict[str, Any]:
    out_bucket = info.output_bucket
    scratch = scratch_key(settings, info.timestamp)
    if local_root is not None:
        out_path = (Path(local_root).resolve() / out_bucket).as_posix()
        output_url = file_url(local_root, out_bucket)
        scratch_path = f"{out_path}/{scratch}"
        scratch_url = file_url(local_root, out_bucket, scratch)
    else:
        out_path = f"/{out_bucket}"
        output_url = s3_url(out_bucket, identity=settings.identity, site=settings.s3_site)
        scratch_path = f"/{out_bucket}/{scratch}"
        scratch_url = s3_url(out_bucket, scratch, identity=settings.identity, site=settings.s3_site)
    base = run_dir.path.resolve()
    profiles = backoff_profiles(settings)
    pool = pool_condor_profiles(settings)
    return {
        "COG_LOCAL_SCRATCH_PATH": str(base / "scratch"),
        "COG_LOCAL_SCRATCH_URL": (base / "scratch").as_uri(),
        "COG_LOCAL_STORAGE_PATH": str(base / "outputs"),
        "COG_LOCAL_STORAGE_URL": (base / "outputs").as_uri(),
        "COG_LOCAL_ON_EXIT_HOLD": profiles["local"]["on_exit_hold"],
        "COG_LOCAL_PERIODIC_RELEASE": profiles["local"]["periodic_release"],
        "COG_LOCAL_PERIODIC_REMOVE": profiles["local"]["periodic_remove"],
        "COG_CPUS": settings.cpus,
        "COG_MEMORY_MB": settings.memory_mb,
        "COG_DISK_MB": settings.disk_mb,
        "COG_POOL_PERIODIC_RELEASE": pool["periodic_release"],
        "COG_POOL_PERIODIC_REMOVE": pool["periodic_remove"],
        "COG_STORAGE_SITE": settings.s3_site,
        "COG_OUTPUT_PATH": out_path,
        "COG_OUTPUT_URL": output_url,
        "COG_SCRATCH_PATH": scratch_path,
        "COG_SCRATCH_URL": scratch_url,
    }


def scratch_key(settings: WorkflowSettings, timestamp: str) -> str:
    """The run's staging prefix in the output bucket (nonsharedfs): <scratch_prefix>/<run timestamp>."""
    return f"{settings.scratch_prefix.strip('/')}/{timestamp}"


def add_pool_limits(sites: dict[str, Any], settings: WorkflowSettings) -> dict[str, Any]:
    """The condorpool site's wall-time limit as a Pegasus ``maxwalltime`` profile (minutes, rounded up), and
    the operator's condor profiles besides periodic_remove (that one is joined in site_values)."""
    pool = next(site for site in sites["sites"] if site["name"] == COMPUTE_SITE)
    profiles = pool.setdefault("profiles", {})
    if settings.wall_time_s:
        profiles.setdefault("pegasus", {})["maxwalltime"] = -(-settings.wall_time_s // 60)
    condor = profiles.setdefault("condor", {})
    for name, value in pool_condor_profiles(settings).items():
        condor[name] = value
    return sites


# ----------------------------------------------------------------------------------------------------------------
# Transformations, properties


def build_transformation_catalog(settings: WorkflowSettings):
    from Pegasus.api import Container, Transformation, TransformationCatalog

    tc = TransformationCatalog()
    container = None
    if settings.container_image:
        image = settings.container_image if "://" in settings.container_image else f"docker://{settings.container_image}"
        kind = Container.SINGULARITY if settings.container_type == "singularity" else Container.DOCKER
        container = Container("gdal", kind, image=image)
        tc.add_containers(container)
    tr = Transformation(TRANSFORMATION, site="local", pfn=str(settings.converter), is_stageable=True, container=container)
    # The file wins over the manifest's band count: converted, verified, job succeeds, mismatch reported.
    tr.add_env(COG_PIPELINE_BAND_MISMATCH="warn")
    if settings.profile:
        tr.add_env(COG_PIPELINE_PROFILE=",".join(settings.profile))
    if settings.cluster_size:
        tr.add_pegasus_profile(clusters_size=settings.cluster_size)
    tc.add_transformations(tr)
    return tc


def build_properties(run_dir: RunDir, settings: WorkflowSettings):
    from Pegasus.api import Properties

    base = run_dir.path.resolve()
    props = Properties()
    props["pegasus.catalog.site"] = "YAML"
    props["pegasus.catalog.site.file"] = str(base / RunDir.SITES)
    props["pegasus.catalog.replica"] = "YAML"
    props["pegasus.catalog.replica.file"] = str(base / RunDir.REPLICAS)
    props["pegasus.catalog.transformation"] = "YAML"
    props["pegasus.catalog.transformation.file"] = str(base / RunDir.TRANSFORMATIONS)
    props["pegasus.data.configuration"] = settings.data_configuration
    # Throttling: all DAGMan nodes, and the conversion jobs' own category.
    props["dagman.maxjobs"] = settings.max_running
    props[f"dagman.{CATEGORY}.maxjobs"] = settings.max_running
    # Retries of every job (transfer and cleanup jobs too); conversion jobs also carry the job profile.
    props["dagman.retry"] = settings.retries
    # S3 transfer cap: at most transfer_jobs stage-in and transfer_jobs stage-out jobs at once, each with
    # transfer_threads parallel transfers, and as many transfer jobs per level as may run at once.
    n = settings.transfer_jobs
    for kind in ("stagein", "stageout"):
        props[f"dagman.{kind}.maxjobs"] = n
        props[f"pegasus.{kind}.clusters"] = n
    props["pegasus.transfer.threads"] = settings.transfer_threads
    props["pegasus.transfer.arguments"] = f"-m {settings.transfer_attempts}"
    props["pegasus.transfer.lite.arguments"] = f"-m {settings.transfer_attempts}"
    if settings.data_configuration == "nonsharedfs":
        # Workers read inputs straight from the input bucket instead of a copy on the staging site.
        props["pegasus.transfer.bypass.input.staging"] = "true"
    for name, value in settings.extra_properties.items():  # the operator's [pegasus.properties] win
        props[name] = value
    return props


# ----------------------------------------------------------------------------------------------------------------
# Workflow: Pegasus.api objects for one job (the template) and the fast writer


def row_job(wf, row: ManifestRow, settings: WorkflowSettings, *, job_id: str | None = None, lfn_in=None, lfn_tif=None, lfn_jpg=None, bands=None, key=None, line=None, meta=None):
    from Pegasus.api import File, Job

    inp = File(lfn_in if lfn_in is not None else input_lfn(row.key))
    tif = File(lfn_tif if lfn_tif is not None else row.key)
    jpg = File(lfn_jpg if lfn_jpg is not None else row.jpg_key)
    job = (
        Job(TRANSFORMATION, _id=job_id if job_id is not None else job_id_of(row.line))
        .add_args(inp, tif, jpg, "--bands", bands if bands is not None else str(row.bands), *((METADATA_B64, meta) if meta is not None else ()))
        .add_inputs(inp)
        .add_outputs(tif, jpg, stage_out=True, register_replica=False)
        .add_dagman_profile(retry=settings.retries, category=CATEGORY)
        .add_metadata(key=key if key is not None else row.key, line=line if line is not None else row.line)
    )
    if wf is not None:
        wf.add_jobs(job)
    return job


def workflow_shell(name: str, settings: WorkflowSettings, hook: str, metadata: dict[str, str]):
    from Pegasus.api import EventType, Workflow

    wf = Workflow(name, infer_dependencies=False)
    wf.add_shell_hook(EventType.END, hook)
    if metadata:
        wf.add_metadata(**metadata)
    return wf


_SLOTS = ("ID", "IN", "TIF", "JPG", "BANDS", "KEY", "LINE")


def _job_format(settings: WorkflowSettings, with_meta: bool = False) -> str:
    """A %-format string of one job's JSON, derived from a Pegasus.api Job with placeholder values."""
    from Pegasus.api.writable import _CustomEncoder

    slots = (*_SLOTS, "META") if with_meta else _SLOTS
    token = {slot: f"@@COG_{slot}@@" for slot in slots}
    dummy = ManifestRow(line=1, key="x.tif", bands=1, text="x.tif,1")
    job = row_job(
        None, dummy, settings, job_id=token["ID"], lfn_in=token["IN"], lfn_tif=token["TIF"], lfn_jpg=token["JPG"],
        bands=token["BANDS"], key=token["KEY"], line=token["LINE"], meta=token.get("META"),
    )
    doc = json.loads(json.dumps(job, cls=_CustomEncoder))
    order = [token["IN"], token["TIF"], token["JPG"]]
    doc["uses"].sort(key=lambda use: order.index(use["lfn"]))  # a set in Pegasus.api: make the order stable
    text = json.dumps(doc, ensure_ascii=False).replace("%", "%%")
    for slot in slots:
        quoted = json.dumps(token[slot])
        if quoted not in text:
            raise RuntimeError(f"Pegasus.api job structure changed: placeholder {slot} not found")
        text = text.replace(quoted, f"%({slot})s")
    return text


def _x_pegasus() -> dict[str, str]:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = "unknown"
    return {"createdBy": user, "createdOn": datetime.now().strftime(r"%m-%d-%yT%H:%M:%SZ"), "apiLang": "python"}


def write_workflow(
    path: Path,
    rows: list[ManifestRow],
    settings: WorkflowSettings,
    name: str,
    hook: str,
    metadata: dict[str, str],
    provenance: Callable[[str], str] | None = None,
    output_prefix: str = "",
) -> int:
    """Write workflow.yml fast (see the module docstring). Returns the number of jobs.

    `provenance` (key -> base64url text) adds each job's `--metadata-b64` argument. Output LFNs are the output
    keys: ``<output_prefix><key>`` (same-bucket mode puts them under a prefix).
    """
    from Pegasus.api.writable import _CustomEncoder

    header = json.loads(json.dumps(workflow_shell(name, settings, hook, metadata), cls=_CustomEncoder))
    header.pop("jobs", None)
    dependencies = header.pop("jobDependencies", [])
    fmt = _job_format(settings, provenance is not None)
    dumps = yaml_json
    in_prefix = '"' + json.dumps(INPUT_LFN_PREFIX)[1:-1]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"x-pegasus: {dumps(_x_pegasus())}\n")
        for k, v in header.items():
            fh.write(f"{k}: {dumps(v)}\n")  # keys are Pegasus' fixed top-level names
        fh.write("jobs:")
        chunk: list[str] = []
        for row in rows:
            key_json = dumps(row.key)
            chunk.append(
                "\n- "
                + fmt
                % {
                    "ID": f'"{job_id_of(row.line)}"',
                    "IN": in_prefix + key_json[1:],
                    "TIF": dumps(output_prefix + row.key) if output_prefix else key_json,
                    "JPG": dumps(output_prefix + row.jpg_key),
                    "BANDS": f'"{row.bands}"',
                    "KEY": key_json,
                    "LINE": f'"{row.line}"',
                    **({"META": f'"{provenance(row.key)}"'} if provenance is not None else {}),
                }
            )
            if len(chunk) >= 4096:
                fh.write("".join(chunk))
                chunk.clear()
        fh.write("".join(chunk))
        fh.write(" []\n" if not rows else "\n")
        fh.write(f"jobDependencies: {dumps(dependencies)}\n")
    return len(rows)


# ----------------------------------------------------------------------------------------------------------------
# Pre-flight and generate()


def preflight(
    manifest,
    input_store: ObjectStore,
    guarded_prefix: str | None = None,
    refuse: Callable[[str], str | None] | None = None,
    listed: dict | None = None,
) -> tuple[list[ManifestRow], list[dict], list[dict]]:
    """(rows that get jobs, failed entries, duplicate entries).

    `guarded_prefix`: the output prefix when outputs share the input bucket; a row whose key lies under it
    fails, because another row's output could land on it (naming.key_under_output_prefix).
    `refuse(key)` (the pegasus engine: ``replicas.pegasus_keys.pegasus_key_problem``) fails a row here, with
    its reason, when its key cannot be carried: one such key in a stage-in job would fail every image in it.
    `listed`, when given, receives the listing (each input's ETag and size: its provenance).
    """
    failed: list[dict[str, Any]] = [{"line": r.line, "text": r.text, "reason": r.reason} for r in manifest.rejected]
    candidates: list[ManifestRow] = []
    for row in manifest.rows:
        problem = refuse(row.key) if refuse is not None else None
        if key_under_output_prefix(row.key, guarded_prefix):
            failed.append({"line": row.line, "text": row.text, "reason": f"input key is under the output prefix {guarded_prefix!r} of this bucket, where outputs are written"})
        elif problem:
            failed.append({"line": row.line, "text": row.text, "reason": problem})
        else:
            candidates.append(row)
    found = find_keys(input_store, (row.key for row in candidates))
    if listed is not None:
        listed.update(found)
    ok: list[ManifestRow] = []
    for row in candidates:
        if row.key in found:
            ok.append(row)
        else:
            failed.append({"line": row.line, "text": row.text, "reason": f"input object does not exist: {input_store.url(row.key)}"})
    failed.sort(key=lambda item: item["line"])
    duplicates = [{"line": row.line, "text": row.text, "duplicate_of": first} for row, first in manifest.duplicates]
    duplicates.sort(key=lambda item: item["line"])
    # No checksum is known: S3 listings return none, and an ETag is not a sha256 (so replicas carry none).
    return ok, failed, duplicates


def default_reconcile_command(run_dir: RunDir) -> str:
    """Both engines end with the same hook, so workflow.yml does not depend on who runs it."""
    return end_hook_command(run_dir.path)


def _write_credentials(run_dir: RunDir, settings: WorkflowSettings, config) -> Path | None:
    """credentials.conf for the planner, only when S3 key files are given (never in folder mode)."""
    if not settings.write_credentials or config.access_key_file is None or config.secret_key_file is None:
        return None
    return write_credentials(
        run_dir.file(CREDENTIALS_FILE), settings.s3_site, settings.identity, config.endpoint, config.region,
        config.access_key_file, config.secret_key_file,
    )


def _record_generated(run_dir: RunDir, settings: WorkflowSettings, files: dict[str, Path], hook: str, credentials: Path | None, *, jobs: int, failed: int, duplicates: int, s3_scratch: bool = False) -> None:
    """Move the run to GENERATED with what the engines and an operator need to know about its files."""
    cluster = bool(settings.cluster_size)
    staging_site = settings.s3_site if settings.data_configuration == "nonsharedfs" else "local"
    plan_args = default_plan_args(
        files[RunDir.PROPERTIES], settings.s3_site,
        staging_site=settings.s3_site if settings.data_configuration == "nonsharedfs" else None, cluster=cluster,
    )
    if s3_scratch:
        # Pegasus' cleanup jobs delete the S3 scratch prefix with `pegasus-s3 rm -F`, which fails on keys with
        # spaces; the engine removes the prefix with boto3 when the run finishes instead (engines/pegasus/scratch.py).
        plan_args += ["--cleanup", "none"]
    plan_args.append(str(files[RunDir.WORKFLOW].resolve()))
    run_dir.set_state(
        GENERATED,
        output_site=settings.s3_site,
        data_configuration=settings.data_configuration,
        staging_site=staging_site,
        cluster=cluster,
        cluster_size=settings.cluster_size,
        jobs=jobs,
        empty=not jobs,
        preflight_failed=failed,
        duplicates=duplicates,
        max_running=settings.max_running,
        max_transfers=settings.max_transfers,
        retries=settings.retries,
        pegasus_files={name: path.name for name, path in files.items()},
        pegasus_credentials=str(credentials) if credentials else None,
        plan_args=plan_args,
        reconcile_command=hook,
    )


def generate(run_dir: RunDir, input_store: ObjectStore, settings: WorkflowSettings) -> GenerationResult:
    started = time.perf_counter()
    settings.validate()
    info = run_dir.load()
    if info.state in (rundir_mod.RUNNING, rundir_mod.RECONCILED, rundir_mod.ABANDONED):
        raise RuntimeError(f"{run_dir} is {info.state}: its workflow can no longer be regenerated")
    config = info.store_config
    local_mode = settings.local_mode if settings.local_mode is not None else config.local_root is not None
    if local_mode and config.local_root is None:
        raise ValueError("local_mode needs run.json store.local_root (the folder holding the buckets)")
    local_root = config.local_root if local_mode else None
    settings = dataclasses.replace(settings, data_configuration=settings.data_configuration_for(local_mode))

    manifest = parse_manifest(run_dir.file(RunDir.MANIFEST).read_bytes())
    prefix = info.output_prefix or ""
    listed: dict = {}
    rows, failed, duplicates = preflight(
        manifest,
        input_store,
        prefix if info.input_bucket == info.output_bucket else None,
        refuse=pegasus_key_problem if info.engine == "pegasus" else None,
        listed=listed,
    )
    # The inputs' sizes, from the listing preflight made anyway: the local engine starts big images first
    # without listing the bucket a second time.
    sizes = {row.key: listed[row.key].size for row in rows if row.key in listed}
    run_dir.write_json(RunDir.PREFLIGHT, {"failed": failed, "duplicates": duplicates, "jobs": len(rows), "sizes": sizes})

    files = {name: run_dir.file(name) for name in (RunDir.WORKFLOW, RunDir.REPLICAS, RunDir.TRANSFORMATIONS, RunDir.SITES, RunDir.PROPERTIES, RunDir.PREFLIGHT)}
    entries: list[ReplicaEntry] = replica_entries(
        (row.key for row in rows), info.input_bucket, local_root=local_root, identity=settings.identity, site=settings.s3_site
    )
    write_replica_catalog(files[RunDir.REPLICAS], entries, header=_x_pegasus())
    del entries

    build_transformation_catalog(settings).write(str(files[RunDir.TRANSFORMATIONS]))

    sites = add_pool_limits(render_sites(site_values(run_dir, info, settings, local_root)), settings)
    with open(files[RunDir.SITES], "w", encoding="utf-8") as fh:
        yaml.safe_dump(sites, fh, sort_keys=False, allow_unicode=True, width=1 << 20)

    build_properties(run_dir, settings).write(str(files[RunDir.PROPERTIES]))

    hook = settings.reconcile_command or default_reconcile_command(run_dir)
    metadata = {"run": info.timestamp, "manifest_key": info.manifest_key, "input_bucket": info.input_bucket, "output_bucket": info.output_bucket}
    provenance = job_metadata_encoder(source_bucket=info.input_bucket, listed=listed, manifest_key=info.manifest_key,
                                      run_id=info.timestamp, converter=settings.converter,
                                      profile=settings.profile) if settings.provenance else None
    write_workflow(files[RunDir.WORKFLOW], rows, settings, f"cog-{info.timestamp}", hook, metadata, provenance, output_prefix=prefix)

    credentials = None if local_mode else _write_credentials(run_dir, settings, config)
    if credentials:
        files[CREDENTIALS_FILE] = credentials
    cluster = bool(settings.cluster_size)
    s3_scratch = not local_mode and settings.data_configuration == "nonsharedfs"
    if s3_scratch:
        record_scratch(run_dir, info.output_bucket, scratch_key(settings, info.timestamp))
    _record_generated(run_dir, settings, files, hook, credentials, jobs=len(rows), failed=len(failed), duplicates=len(duplicates), s3_scratch=s3_scratch)
    seconds = time.perf_counter() - started
    log.info("%s: %d jobs, %d failed in pre-flight, %d duplicates (%.2f s)", run_dir, len(rows), len(failed), len(duplicates), seconds)
    return GenerationResult(
        jobs=len(rows),
        failed=failed,
        duplicates=duplicates,
        files=files,
        output_site=settings.s3_site,
        data_configuration=settings.data_configuration,
        cluster=cluster,
        credentials=credentials,
        seconds=seconds,
    )


# ----------------------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    """Flags override the configuration file (``--config``); a flag not given leaves the file's value."""
    p = argparse.ArgumentParser(prog="workflow_gen", description="Write a run directory's Pegasus workflow, catalogs and properties.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--config", type=Path, default=None, help="the production configuration file (TOML; docs/chtc.md)")
    p.add_argument("--retries", type=int, help="DAGMan retries per job (default 3)")
    p.add_argument("--max-running", type=int, help="most jobs DAGMan runs at once (default 10000)")
    p.add_argument("--max-transfers", type=int, help="most concurrent S3 transfers (default 40)")
    p.add_argument("--transfer-threads", type=int)
    p.add_argument("--transfer-attempts", type=int)
    p.add_argument("--backoff-base", type=int, help="seconds before the first release of a held transfer job")
    p.add_argument("--backoff-max", type=int)
    p.add_argument("--backoff-releases", type=int)
    p.add_argument("--cluster-size", type=int, default=None, help="cluster N conversion jobs into one (horizontal clustering)")
    p.add_argument("--s3-site")
    p.add_argument("--identity")
    p.add_argument("--container-image", help="'' to run without a container")
    p.add_argument("--no-container", action="store_true", help="run the converter without a container")
    p.add_argument("--container-type", choices=CONTAINER_TYPES)
    p.add_argument("--cpus", type=int)
    p.add_argument("--memory", type=int, help="MB (default 1024)")
    p.add_argument("--disk", type=int, help="MB (default 2048)")
    p.add_argument("--wall-time", type=int, help="seconds a conversion may run before it is removed (0: no limit)")
    p.add_argument("--converter", type=Path, default=None)
    p.add_argument("--reconcile-command", default=None)
    p.add_argument("--data-configuration", choices=("auto", *DATA_CONFIGURATIONS))
    p.add_argument("--scratch-prefix", default=WorkflowSettings.scratch_prefix)
    p.add_argument("--no-credentials", action="store_true", help="do not write <run>/credentials.conf")
    return p


def settings_from_config(config, **fixed: Any) -> WorkflowSettings:
    """WorkflowSettings from a loaded ``cog_pipeline.config.PipelineConfig`` (plus fields the file has not)."""
    from cog_pipeline.config import workflow_settings_kwargs

    return WorkflowSettings(**workflow_settings_kwargs(config), **fixed)


def settings_from_args(args: argparse.Namespace) -> WorkflowSettings:
    """Raises cog_pipeline.config.ConfigError (one line, naming the setting) for a bad file or flag."""
    from cog_pipeline.config import load_config, overrides_from_flags

    config = load_config(args.config, overrides_from_flags(vars(args)))
    fixed: dict[str, Any] = {
        "reconcile_command": args.reconcile_command, "scratch_prefix": args.scratch_prefix,
        "write_credentials": not args.no_credentials,
    }
    if args.converter is not None:
        fixed["converter"] = args.converter.resolve()
    return settings_from_config(config, **fixed)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    run_dir = RunDir(args.run_dir)
    if not run_dir.exists():
        print(f"error: {run_dir.path} has no run.json", file=sys.stderr)
        return 2
    from cog_pipeline.config import ConfigError

    try:
        settings = settings_from_args(args)
        settings.validate()
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = run_dir.load()
    store = open_store(info.input_bucket, info.store_config)
    result = generate(run_dir, store, settings)
    summary = asdict(result)
    summary["files"] = {k: str(v) for k, v in result.files.items()}
    summary["credentials"] = str(result.credentials) if result.credentials else None
    summary["failed"] = len(result.failed)
    summary["duplicates"] = len(result.duplicates)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
