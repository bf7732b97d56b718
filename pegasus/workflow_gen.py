"""Turn a claimed run directory into a Pegasus 5 abstract workflow plus its catalogs and properties.

Contract (shared with the local engine ``cog_pipeline/engine_local.py``, reconcile and the Crondor)
===================================================================================================

Entry points
    ``generate(run_dir: RunDir, input_store: ObjectStore, settings: WorkflowSettings) -> GenerationResult``.
    ``WorkflowSettings`` is the generator's view of the one configuration (``cog_pipeline.config``); the tick
    (``cog_pipeline.pipeline.prepare``) calls it for every claimed run.

Inputs
    ``<run>/manifest.csv`` (the claimed manifest) and ``<run>/run.json`` (input/output bucket, StoreConfig).

Pre-flight (before any job exists)
    Input keys are checked with ``listing.find_keys`` (a few paginated listings, never one request per key).
    ``<run>/preflight.json`` (``rundir.Preflight``): the counts of jobs, failed rows and duplicates, and the
    first failed rows (``{"line", "text", "reason"}``: the manifest's rejected rows and rows whose input object
    does not exist) and duplicates (``{"line", "text", "duplicate_of"}``); every failed row is in
    ``<run>/preflight-failed.csv`` and every job's input size in ``<run>/preflight-sizes.csv``, both written as
    the manifest streams by. Only existing inputs get jobs. On a run whose
    engine is ``pegasus``, a key the Pegasus transfer tools cannot carry
    (``replicas.pegasus_keys.pegasus_key_problem``) fails here with that reason, before any listing.

Data configuration and configuration file
    ``data.configuration = "auto"``: nonsharedfs for S3 buckets (staging site = the S3 site, bypassed input
    staging, ``--cleanup none`` and ``<run>/scratch.json`` naming the scratch prefix the engine removes with
    boto3), condorio for folder buckets; see docs/workflow.md.

Files written into the run directory (Pegasus' default names)
    ``workflow.yml``, ``replicas.yml``, ``outputs.yml``, ``transformations.yml``, ``sites.yml`` (rendered from the
    template ``pegasus/sites.yml``), ``pegasus.properties``, ``preflight.json`` and, only for an S3 store with key
    files, ``credentials.conf`` (mode 0600). All YAML files are valid against the Pegasus 5.0 schemas.

Jobs (one per valid manifest row)
    id ``ID{line:07d}`` (line = 1-based manifest line), transformation ``generate_cog``, arguments exactly
    ``["--empty-outputs-on-failure", <in LFN>, <tif LFN>, <jpg LFN>, "--bands", str(bands)]`` (one LFN per
    output declared in ``cog_pipeline.outputs``, in its order), then ``"--metadata-b64", <provenance>``
    (``settings.provenance``, default on: the row's lineage as base64url JSON, see
    ``cog_pipeline.publishing.provenance``); uses: the input LFN (``input``) and the output LFNs (``output``,
    ``stageOut: true``, ``registerReplica: false``); metadata ``key`` (the manifest key) and ``line`` (as a
    string, as Pegasus.api stores metadata); profiles ``dagman: {RETRY: 0, CATEGORY: "cog"}`` (HTCondor's holds
    retry a transient failure: ``hold_profiles``) and ``pegasus: {diskspace: ...}`` (``disk_mb_for``).

LFN conventions
    Job-local names only (``replicas.catalog.job_lfns``): ``ID0000001.in.tif``, ``ID0000001.tif``,
    ``ID0000001.jpg``. No key is ever in an LFN or an argument.

Where things are
    * Inputs: ``replicas.yml``, input LFN -> one pfn: ``s3://<identity>@storage/<input-bucket>/<raw key>`` on
      site ``storage`` or, when buckets are folders, ``file://<local_root>/<input-bucket>/<key>`` on site
      ``local``.
    * Outputs: ``outputs.yml``, output LFN -> its object in the OUTPUT bucket (``<output_prefix><key>``), read
      by Pegasus' ``Replica`` output mapper (``pegasus.dir.storage.mapper``). Both engines read both catalogs
      (``engines.local_workflow.catalog_objects``).
    * Converter: ``transformations.yml`` transformation ``generate_cog``, installed (never staged): on
      ``condorpool`` in the worker image (``container.converter_path``) or, without one, this machine's zipapp; on
      ``local`` this machine's zipapp, for the local engine.
    * Reconcile: workflow-level shell hook on ``all`` (``hooks.shell[0].cmd``). Pegasus has no FINAL node and a
      job whose parents failed never runs, so reconcile is not a job: pegasus-monitord runs the hook on the
      submit host at the workflow's start (ignored) and end, and the local engine runs it after all jobs,
      whatever their outcome.

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

import dataclasses
import getpass
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from cog_pipeline.config import PipelineConfig, load_config
from cog_pipeline.engines.base import NOT_RETRIED, end_hook_command
from cog_pipeline.engines.pegasus.plan import COMPUTE_SITE, default_plan_args
from cog_pipeline.engines.pegasus.scratch import record_scratch
from cog_pipeline.outputs import declared
from cog_pipeline.publishing.provenance import METADATA_B64, job_metadata_encoder
from cog_pipeline.replicas.catalog import (
    ReplicaEntry,
    file_url,
    job_lfns,
    replica_entries,
    s3_url,
    write_replica_catalog,
    yaml_json,
)
from cog_pipeline.replicas.credentials import CREDENTIALS_FILE, write_credentials
from cog_pipeline.run import rundir as rundir_mod
from cog_pipeline.run.claim import FAILS_WHOLE
from cog_pipeline.run.manifest import DuplicateRow, ManifestRow, RejectedRow, iter_manifest_file
from cog_pipeline.run.naming import job_id_of, key_under_output_prefix
from cog_pipeline.run.rundir import GENERATED, Preflight, PreflightWriter, RunDir, RunInfo
from cog_pipeline.storage.listing import find_keys
from cog_pipeline.storage.store import ObjectStore

log = logging.getLogger(__name__)

TRANSFORMATION = "generate_cog"
# PegasusLite stages a job's declared outputs even after the job failed: with no file there it retries for
# minutes and its exit code hides the converter's. Empty files end the job at once with the converter's code;
# a failed job's stage-out node never runs, so they stay in the run's scratch prefix.
EMPTY_ON_FAILURE = "--empty-outputs-on-failure"
CATEGORY = "cog"  # DAGMan category of the conversion jobs: dagman.cog.maxjobs throttles them
SITES_TEMPLATE = Path(__file__).resolve().parent / "sites.yml"
_PLACEHOLDER = re.compile(r"\$\{(COG_[A-Z0-9_]+)\}")


def default_converter() -> Path:
    """The converter zipapp of the installed sources, built on first use into the cache (transformations/build.py)."""
    from cog_pipeline.transformations.build import cached_zipapp

    return cached_zipapp()


@dataclass
class WorkflowSettings:
    """The generator's view of the one configuration (``cog_pipeline.config``), plus what is fixed per run."""

    config: PipelineConfig = field(default_factory=lambda: load_config(None))
    write_credentials: bool = True  # write <run>/credentials.conf when the store is S3 with key files
    converter: Path = field(default_factory=default_converter)  # this machine's copy (the local engine's)
    reconcile_command: str | None = None  # None: the END hook "<python> -m cog_pipeline finish <run_dir>"
    local_mode: bool | None = None  # buckets are folders; None: decided from run.json store.local_root
    # The data configuration this run plans with: data.configuration with "auto" resolved (None: not yet).
    data_configuration: str | None = None
    scratch_prefix: str = "pegasus-scratch"  # staging area (nonsharedfs) in the output bucket: <prefix>/<ts>
    provenance: bool = True  # each job passes its provenance to the converter (--metadata-b64, cog_pipeline.publishing.provenance)
    # Keys the engine's transfer tools cannot carry fail at preflight with this reason (Engine.key_problem).
    key_problem: Callable[[str], str | None] | None = None

    def validate(self) -> None:
        if not self.scratch_prefix or self.scratch_prefix.startswith("/"):
            raise ValueError("scratch_prefix must be a relative key prefix")

    @property
    def worker_converter(self) -> str:
        """Where the conversion jobs find generate_cog: in the worker image, else this machine's copy (a personal
        pool, or a file system every worker shares)."""
        return self.config.container.converter_path if self.config.container_image else str(self.converter)

    @property
    def profile(self) -> tuple[str, ...]:
        """The conversion profile's overrides, NAME=VALUE (transformations/profile.py)."""
        return tuple(f"{k}={v}" for k, v in self.config.profile.items())

    @property
    def extra_properties(self) -> dict[str, str]:
        """The operator's [pegasus.properties], plus bypass=false when they turned input bypass off."""
        props = {} if self.config.data.bypass_input_staging else {"pegasus.transfer.bypass.input.staging": "false"}
        return {**props, **self.config.pegasus_properties}

    def for_manifest(self, manifest_key: str) -> "WorkflowSettings":
        """These settings with the resources of the first [manifests."<glob>"] matching `manifest_key`."""
        resources = self.config.resources_for(manifest_key)
        if resources is self.config.resources:
            return self
        return dataclasses.replace(self, config=dataclasses.replace(self.config, resources=resources))

    def disk_mb_for(self, input_bytes: int | None) -> int:
        """The disk a job requests: the input, the COG and its overviews, the preview (4 x the input + 256 MB),
        never less than resources.disk_mb."""
        floor = self.config.resources.disk_mb
        if not input_bytes:
            return floor
        return max(floor, -(-4 * input_bytes // (1 << 20)) + 256)

    def data_configuration_for(self, local_mode: bool) -> str:
        """data.configuration, "auto" resolved: nonsharedfs for S3 buckets (workers read S3 themselves; no image
        crosses the access point), condorio for folder buckets (one machine)."""
        if self.data_configuration is not None:
            return self.data_configuration
        chosen = self.config.data.configuration
        if chosen != "auto":
            return chosen
        return "condorio" if local_mode else "nonsharedfs"

    @property
    def transfer_jobs(self) -> int:
        """Concurrent stage-in jobs (and, separately, stage-out jobs) so that all transfers stay <= max_transfers."""
        return max(1, self.config.transfers.max_transfers // (2 * self.config.transfers.threads))


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
    info: RunInfo  # run.json as generate() wrote it (GENERATED)


# ----------------------------------------------------------------------------------------------------------------
# Holds, retries and limits: HTCondor expressions (docs/chtc.md lists each knob)


def _delay_expr(base: int, cap: int) -> str:
    return f"ifThenElse({base} * pow(2, NumHolds - 1) > {cap}, {cap}, {base} * pow(2, NumHolds - 1))"


def transient_exit_expr() -> str:
    """True when a finished conversion failed in a way another attempt may cure: a signal (out of memory, a
    preempted slot), or an exit code the converter does not declare deterministic (engines.base.NOT_RETRIED:
    a bad input fails the same way every time, so it is never retried)."""
    deterministic = " && ".join(f"(ExitCode =!= {int(code)})" for code in sorted(NOT_RETRIED))
    return f"(ExitBySignal == true) || ((ExitCode =!= 0) && {deterministic})"


def hold_profiles(settings: WorkflowSettings) -> dict[str, dict[str, str]]:
    """condor profiles for the `local` site (transfer jobs) and the `condorpool` site (conversion jobs).

    A transient failure puts the job on hold (on_exit_hold, HoldReasonCode 3), and periodic_release lets it run
    again after an exponentially growing delay: HTCondor's own retry with backoff, in the same slot-free way for
    both kinds of job. A conversion also comes back from a file-transfer hold (codes 12/13). After `retries`
    releases of a conversion (`backoff_releases` of a transfer job), or when a hold nobody releases (memory
    exceeded, the wall-time limit, an operator's condor_hold) has lasted `held_remove_s`, the job is removed and
    its row fails with the hold reason.
    """
    delay = _delay_expr(settings.config.backoff.base_s, settings.config.backoff.max_s)
    releases = settings.config.backoff.releases
    waited = f"((time() - EnteredCurrentStatus) > {delay})"
    own_hold = "(HoldReasonCode =?= 3)"
    transfer_hold = "((HoldReasonCode =?= 12) || (HoldReasonCode =?= 13))"

    def remove(releasable: str, releases: int) -> str:
        stuck = f"((time() - EnteredCurrentStatus) > {settings.config.resources.held_remove_s})"
        return f"(JobStatus == 5) && ((NumHolds > {releases}) || ((!{releasable}) && {stuck}))"

    pool_releasable = f"({own_hold} || {transfer_hold})"
    return {
        "local": {
            "on_exit_hold": "(ExitBySignal == true) || (ExitCode =!= 0)",
            "periodic_release": f"{own_hold} && (NumHolds <= {releases}) && {waited}",
            "periodic_remove": remove(own_hold, releases),
        },
        COMPUTE_SITE: {
            "on_exit_hold": transient_exit_expr(),
            "on_exit_hold_reason": 'ifThenElse(ExitBySignal =?= true, strcat("transient failure: killed by signal ", ExitSignal), '
            'strcat("transient failure: exit code ", ExitCode))',
            "periodic_release": f"{pool_releasable} && (NumHolds <= {settings.config.dagman.retries}) && {waited}",
            "periodic_remove": remove(pool_releasable, settings.config.dagman.retries),
        },
    }


def pool_condor_profiles(settings: WorkflowSettings) -> dict[str, str]:
    """The conversion jobs' condor profiles: holds and backoff, the wall-time limit, then the operator's own.

    HTCondor takes one periodic_remove per job, so the operator's is joined with ``||``: either removes it.
    """
    profiles = dict(hold_profiles(settings)[COMPUTE_SITE])
    if settings.config.resources.wall_time_s:
        # Held (not removed) so the reason reaches the row: the hold is then removed after held_remove_s.
        profiles["periodic_hold"] = f"(JobStatus == 2) && ((time() - EnteredCurrentStatus) > {int(settings.config.resources.wall_time_s)})"
        profiles["periodic_hold_reason"] = f'"ran longer than the wall-time limit of {int(settings.config.resources.wall_time_s)} s"'
    for name, value in settings.config.condor_profiles.items():
        if name == "periodic_remove":
            profiles[name] = f"({profiles[name]}) || ({value})"
        else:
            profiles[name] = value
    return profiles


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
        output_url = s3_url(out_bucket, identity=settings.config.s3.identity, site=settings.config.s3.site)
        scratch_path = f"/{out_bucket}/{scratch}"
        scratch_url = s3_url(out_bucket, scratch, identity=settings.config.s3.identity, site=settings.config.s3.site)
    base = run_dir.path.resolve()
    profiles = hold_profiles(settings)
    pool = pool_condor_profiles(settings)
    return {
        "COG_LOCAL_SCRATCH_PATH": str(base / "scratch"),
        "COG_LOCAL_SCRATCH_URL": (base / "scratch").as_uri(),
        "COG_LOCAL_STORAGE_PATH": str(base / "outputs"),
        "COG_LOCAL_STORAGE_URL": (base / "outputs").as_uri(),
        "COG_LOCAL_ON_EXIT_HOLD": profiles["local"]["on_exit_hold"],
        "COG_LOCAL_PERIODIC_RELEASE": profiles["local"]["periodic_release"],
        "COG_LOCAL_PERIODIC_REMOVE": profiles["local"]["periodic_remove"],
        "COG_CPUS": settings.config.resources.cores,
        "COG_MEMORY_MB": settings.config.resources.memory_mb,
        "COG_DISK_MB": settings.config.resources.disk_mb,
        "COG_POOL_PERIODIC_RELEASE": pool["periodic_release"],
        "COG_POOL_PERIODIC_REMOVE": pool["periodic_remove"],
        "COG_STORAGE_SITE": settings.config.s3.site,
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
    if settings.config.resources.wall_time_s:
        profiles.setdefault("pegasus", {})["maxwalltime"] = -(-settings.config.resources.wall_time_s // 60)
    if settings.config.container.pegasus_home:
        # Pegasus' tools are already on the worker: no worker package travels from the access point per job.
        profiles.setdefault("env", {})["PEGASUS_HOME"] = settings.config.container.pegasus_home
    condor = profiles.setdefault("condor", {})
    for name, value in pool_condor_profiles(settings).items():
        condor[name] = value
    return sites


# ----------------------------------------------------------------------------------------------------------------
# Transformations, properties


def build_transformation_catalog(settings: WorkflowSettings):
    """generate_cog installed where it runs: in the worker image (or at a path every worker sees) for the pool,
    and this machine's copy for the local engine. Nothing is staged from the access point per job."""
    from Pegasus.api import Container, Transformation, TransformationCatalog, TransformationSite

    tc = TransformationCatalog()
    container = None
    if settings.config.container_image:
        image = settings.config.container_image if "://" in settings.config.container_image else f"docker://{settings.config.container_image}"
        kind = Container.SINGULARITY if settings.config.container.type == "singularity" else Container.DOCKER
        # bypass: each worker pulls the image straight from where it is published (CHTC: /staging via OSDF,
        # cached near the workers), never through the access point.
        container = Container("cog-worker", kind, image=image, bypass_staging=True)
        tc.add_containers(container)
    tr = Transformation(TRANSFORMATION)
    pool = TransformationSite(COMPUTE_SITE, settings.worker_converter, is_stageable=False, container=container)
    # Pegasus' transfers stage an input without pinning its version: the converter checks the staged file is the
    # version listed (its lineage names). The local engine pins it itself (If-Match), so its site does not.
    pool.add_env(COG_PIPELINE_VERIFY_SOURCE="1")
    tr.add_sites(pool)
    tr.add_sites(TransformationSite("local", str(settings.converter), is_stageable=False))
    # The file wins over the manifest's band count: converted, verified, job succeeds, mismatch reported.
    tr.add_env(COG_PIPELINE_BAND_MISMATCH="warn")
    if settings.profile:
        tr.add_env(COG_PIPELINE_PROFILE=",".join(settings.profile))
    if settings.config.clustering.size:
        tr.add_pegasus_profile(clusters_size=settings.config.clustering.size)
    tc.add_transformations(tr)
    return tc


def _set_planner_only(props, key: str, value: str) -> None:
    """A property the 5.1 planner reads (docs: reference-guide/configuration) that Pegasus.api's list of
    known keys lacks: set without the API's "Unrecognized property key" warning."""
    api_log = logging.getLogger("Pegasus.api.properties")
    disabled, api_log.disabled = api_log.disabled, True
    try:
        props[key] = value
    finally:
        api_log.disabled = disabled


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
    props["dagman.maxjobs"] = settings.config.dagman.max_running
    props[f"dagman.{CATEGORY}.maxjobs"] = settings.config.dagman.max_running
    # DAGMan's retries of the transfer and create-dir jobs; a conversion's own profile says 0 (its holds retry it).
    props["dagman.retry"] = settings.config.dagman.retries
    # Outputs land where outputs.yml says (the output replica catalog): LFNs stay job-local, keys stay in PFNs.
    props["pegasus.dir.storage.mapper"] = "Replica"
    _set_planner_only(props, "pegasus.dir.storage.mapper.replica", "YAML")
    _set_planner_only(props, "pegasus.dir.storage.mapper.replica.file", str(base / RunDir.OUTPUTS))
    # One stage-out job per conversion job: a row's fate depends on its own image only (DAGMan never runs a
    # node whose parent failed, so a shared stage-out job would strand every other row of its parents).
    _set_planner_only(props, "pegasus.transfer.refiner", "Basic")
    # Checksums are not pulled back to the access point: S3 checks each PUT's integrity itself, and the
    # converter verifies its outputs on the worker before they are staged.
    props["pegasus.integrity.checking"] = "none"
    # A clustered job runs every image of its cluster; one failure stops none of the others.
    props["pegasus.clusterer.job.aggregator.seqexec.firstjobfail"] = "false"
    # S3 transfer cap: at most transfer_jobs stage-out jobs at once, each with transfer_threads transfers.
    props["dagman.stageout.maxjobs"] = settings.transfer_jobs
    props["dagman.stagein.maxjobs"] = settings.transfer_jobs
    props["pegasus.transfer.threads"] = settings.config.transfers.threads
    props["pegasus.transfer.arguments"] = f"-m {settings.config.transfers.attempts}"
    props["pegasus.transfer.lite.arguments"] = f"-m {settings.config.transfers.attempts}"
    if settings.data_configuration == "nonsharedfs":
        # Workers read inputs straight from the input bucket instead of a copy on the staging site.
        props["pegasus.transfer.bypass.input.staging"] = "true"
    if settings.config.container.pegasus_home:
        props["pegasus.transfer.worker.package"] = "false"  # the workers have it (PEGASUS_HOME in sites.yml)
    if settings.config.container_image:
        # Stage-in and stage-out run inside the worker image, with its own Pegasus tools.
        _set_planner_only(props, "pegasus.transfer.container.onhost", "false")
    for name, value in settings.extra_properties.items():  # the operator's [pegasus.properties] win
        props[name] = value
    return props


# ----------------------------------------------------------------------------------------------------------------
# Workflow: Pegasus.api objects for one job (the template) and the fast writer


def row_job(wf, row: ManifestRow, settings: WorkflowSettings, *, job_id: str | None = None, bands=None, key=None, line=None, meta=None, disk_mb: int | None = None):
    from Pegasus.api import File, Job

    job_id = job_id if job_id is not None else job_id_of(row.line)
    inp, *outs = (File(lfn) for lfn in job_lfns(job_id))  # the input, then each declared output
    job = (
        Job(TRANSFORMATION, _id=job_id)
        .add_args(EMPTY_ON_FAILURE, inp, *outs, "--bands", bands if bands is not None else str(row.bands), *((METADATA_B64, meta) if meta is not None else ()))
        .add_inputs(inp)
        .add_outputs(*outs, stage_out=True, register_replica=False)
        # No DAGMan retry: a transient failure is retried by HTCondor itself (hold_profiles), a deterministic one
        # (a bad input) never is.
        .add_dagman_profile(retry=0, category=CATEGORY)
        .add_pegasus_profile(diskspace=f"{disk_mb if disk_mb is not None else settings.config.resources.disk_mb} MB")
        .add_metadata(key=key if key is not None else row.key, line=line if line is not None else row.line)
    )
    if wf is not None:
        wf.add_jobs(job)
    return job


def workflow_shell(name: str, settings: WorkflowSettings, hook: str, metadata: dict[str, str]):
    from Pegasus.api import EventType, Workflow

    wf = Workflow(name, infer_dependencies=False)
    # ALL, not END: the planner writes END as "end", which pegasus-monitord 5.1 never fires; it fires ALL at the
    # start (PEGASUS_EVENT=start, which `cog-pipeline finish` ignores) and at the end (PEGASUS_EVENT=at_end).
    wf.add_shell_hook(EventType.ALL, hook)
    if metadata:
        wf.add_metadata(**metadata)
    return wf


_SLOTS = ("BANDS", "KEY", "LINE")
_DISK_SENTINEL = 987654321  # a number slot: Pegasus.api parses "<n> MB", so no text token can stand there


def _job_format(settings: WorkflowSettings, with_meta: bool = False) -> str:
    """A %-format string of one job's JSON, derived from a Pegasus.api Job with placeholder values. The job id
    (plain ASCII) stands unquoted, so it fills the LFNs named after it too (``replicas.catalog.job_lfns``)."""
    from Pegasus.api.writable import _CustomEncoder

    slots = (*_SLOTS, "META") if with_meta else _SLOTS
    token = {slot: f"@@COG_{slot}@@" for slot in (*slots, "ID")}
    dummy = ManifestRow(line=1, key="x.tif", bands=1, text="x.tif,1")
    job = row_job(
        None, dummy, settings, job_id=token["ID"],
        bands=token["BANDS"], key=token["KEY"], line=token["LINE"], meta=token.get("META"), disk_mb=_DISK_SENTINEL,
    )
    doc = json.loads(json.dumps(job, cls=_CustomEncoder))
    order = list(job_lfns(token["ID"]))
    doc["uses"].sort(key=lambda use: order.index(use["lfn"]))  # a set in Pegasus.api: make the order stable
    text = json.dumps(doc, ensure_ascii=False).replace("%", "%%")
    for slot in slots:
        quoted = json.dumps(token[slot])
        if quoted not in text:
            raise RuntimeError(f"Pegasus.api job structure changed: placeholder {slot} not found")
        text = text.replace(quoted, f"%({slot})s")
    if text.count(token["ID"]) != 1 + 2 * len(order):  # the id, and each LFN in the arguments and the uses
        raise RuntimeError("Pegasus.api job structure changed: the job id is not where it was")
    text = text.replace(token["ID"], "%(ID)s")
    if text.count(str(_DISK_SENTINEL)) != 1:
        raise RuntimeError("Pegasus.api job structure changed: the diskspace profile was not found")
    return text.replace(str(_DISK_SENTINEL), "%(DISK)s")


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
    sizes: dict[str, int] | None = None,
) -> int:
    """Write workflow.yml fast (see the module docstring). Returns the number of jobs.

    `provenance` (key -> base64url text) adds each job's `--metadata-b64` argument; `sizes` (key -> bytes of
    the input) sizes each job's disk request (``WorkflowSettings.disk_mb_for``). Every LFN is job-local
    (``replicas.catalog.job_lfns``); where the files live is in replicas.yml and outputs.yml.
    """
    from Pegasus.api.writable import _CustomEncoder

    header = json.loads(json.dumps(workflow_shell(name, settings, hook, metadata), cls=_CustomEncoder))
    header.pop("jobs", None)
    dependencies = header.pop("jobDependencies", [])
    fmt = _job_format(settings, provenance is not None)
    dumps = yaml_json
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"x-pegasus: {dumps(_x_pegasus())}\n")
        for k, v in header.items():
            fh.write(f"{k}: {dumps(v)}\n")  # keys are Pegasus' fixed top-level names
        fh.write("jobs:")
        chunk: list[str] = []
        for row in rows:
            chunk.append(
                "\n- "
                + fmt
                % {
                    "ID": job_id_of(row.line),  # plain ASCII: no escaping needed
                    "BANDS": f'"{row.bands}"',
                    "KEY": dumps(row.key),
                    "LINE": f'"{row.line}"',
                    "DISK": settings.disk_mb_for((sizes or {}).get(row.key)),
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
    run_dir: RunDir,
    input_store: ObjectStore,
    guarded_prefix: str | None = None,
    refuse: Callable[[str], str | None] | None = None,
    listed: dict | None = None,
) -> tuple[list[ManifestRow], Preflight]:
    """(rows that get jobs, the pre-flight summary), with every failed row and job size written to the run
    directory as they are decided (rundir.preflight). The manifest is read twice, as a stream: once for the
    keys to list, once to decide.

    `guarded_prefix`: the output prefix when outputs share the input bucket; a row whose key lies under it
    fails, because another row's output could land on it (naming.key_under_output_prefix).
    `refuse(key)` (the pegasus engine: ``replicas.pegasus_keys.pegasus_key_problem``) fails a row here, with
    its reason, when its key cannot be carried: one such key in a stage-in job would fail every image in it.
    `listed`, when given, receives the listing of the rows that got jobs (each input's ETag and size: its provenance).
    """
    manifest = run_dir.file(RunDir.MANIFEST)

    def problem(row: ManifestRow) -> str | None:
        if key_under_output_prefix(row.key, guarded_prefix):
            return f"input key is under the output prefix {guarded_prefix!r} of this bucket, where outputs are written"
        return refuse(row.key) if refuse is not None else None

    # The keys to list (a repeated key is listed once anyway): without the duplicate index, so that index and
    # this key set are never in memory together.
    candidates = (p.key for p in iter_manifest_file(manifest, duplicates=False) if isinstance(p, ManifestRow) and problem(p) is None)
    found = find_keys(input_store, candidates)
    ok: list[ManifestRow] = []
    out = PreflightWriter(run_dir.path)
    for parsed in iter_manifest_file(manifest):
        if isinstance(parsed, RejectedRow):
            out.failed(parsed.line, parsed.text, parsed.reason)
        elif isinstance(parsed, DuplicateRow):
            out.duplicate(parsed.line, parsed.row.text, parsed.first_line)
        elif problem(parsed) is not None:
            out.failed(parsed.line, parsed.text, problem(parsed))
        elif parsed.key not in found:
            out.failed(parsed.line, parsed.text, f"input object does not exist: {input_store.where(parsed.key)}")
        else:
            ok.append(parsed)
            out.job(parsed.key, found[parsed.key].size, found[parsed.key].etag)
            if listed is not None:
                listed[parsed.key] = found[parsed.key]
    del found
    # No checksum is known: S3 listings return none, and an ETag is not a sha256 (so replicas carry none).
    return ok, out.close()


def default_reconcile_command(run_dir: RunDir) -> str:
    """Both engines end with the same hook, so workflow.yml does not depend on who runs it."""
    return end_hook_command(run_dir.path)


def _write_credentials(run_dir: RunDir, settings: WorkflowSettings, config) -> Path | None:
    """credentials.conf for the planner, only when S3 key files are given (never in folder mode)."""
    if not settings.write_credentials or config.access_key_file is None or config.secret_key_file is None:
        return None
    return write_credentials(
        run_dir.file(CREDENTIALS_FILE), settings.config.s3.site, settings.config.s3.identity, config.endpoint, config.region,
        config.access_key_file, config.secret_key_file,
    )


def _record_generated(run_dir: RunDir, settings: WorkflowSettings, files: dict[str, Path], hook: str, credentials: Path | None, *, jobs: int, failed: int, duplicates: int, s3_scratch: bool = False) -> RunInfo:
    """Move the run to GENERATED with what the engines and an operator need to know about its files; returns
    run.json as written."""
    cluster = bool(settings.config.clustering.size)
    staging_site = settings.config.s3.site if settings.data_configuration == "nonsharedfs" else "local"
    plan_args = default_plan_args(
        files[RunDir.PROPERTIES], settings.config.s3.site,
        staging_site=settings.config.s3.site if settings.data_configuration == "nonsharedfs" else None, cluster=cluster,
    )
    if s3_scratch:
        # Pegasus' cleanup jobs delete the S3 scratch prefix with `pegasus-s3 rm -F`, which fails on keys with
        # spaces; the engine removes the prefix with boto3 when the run finishes instead (engines/pegasus/scratch.py).
        plan_args += ["--cleanup", "none"]
    plan_args.append(str(files[RunDir.WORKFLOW].resolve()))
    return run_dir.set_state(
        GENERATED,
        output_site=settings.config.s3.site,
        data_configuration=settings.data_configuration,
        staging_site=staging_site,
        cluster=cluster,
        cluster_size=settings.config.clustering.size or None,
        jobs=jobs,
        empty=not jobs,
        preflight_failed=failed,
        duplicates=duplicates,
        max_running=settings.config.dagman.max_running,
        max_transfers=settings.config.transfers.max_transfers,
        retries=settings.config.dagman.retries,
        pegasus_files={name: path.name for name, path in files.items()},
        pegasus_credentials=str(credentials) if credentials else None,
        plan_args=plan_args,
        reconcile_command=hook,
    )


def generate(run_dir: RunDir, input_store: ObjectStore, settings: WorkflowSettings, info: RunInfo | None = None) -> GenerationResult:
    """The run's workflow files and its pre-flight, then the run GENERATED (`info`: run.json as the caller
    just read it)."""
    started = time.perf_counter()
    settings.validate()
    info = info or run_dir.load()
    if info.state in (rundir_mod.RUNNING, rundir_mod.RECONCILED, rundir_mod.ABANDONED):
        raise RuntimeError(f"{run_dir} is {info.state}: its workflow can no longer be regenerated")
    config = info.store_config
    local_mode = settings.local_mode if settings.local_mode is not None else config.local_root is not None
    if local_mode and config.local_root is None:
        raise ValueError("local_mode needs run.json store.local_root (the folder holding the buckets)")
    local_root = config.local_root if local_mode else None
    settings = dataclasses.replace(settings.for_manifest(info.manifest_key), data_configuration=settings.data_configuration_for(local_mode))

    prefix = info.output_prefix or ""
    listed: dict = {}
    rows, checked = preflight(
        run_dir,
        input_store,
        prefix if info.input_bucket == info.output_bucket else None,
        # A manifest failing whole (its name is not UTF-8: claim.FAILS_WHOLE) fails every row with its reason.
        refuse=(lambda _key: whole) if (whole := info.unknown.get(FAILS_WHOLE)) else settings.key_problem,
        listed=listed,
    )
    # The inputs' sizes, from the listing preflight made anyway: the local engine starts big images first
    # without listing the bucket a second time (preflight-sizes.csv has them too).
    sizes = {row.key: listed[row.key].size for row in rows if row.key in listed}

    files = {name: run_dir.file(name) for name in (RunDir.WORKFLOW, RunDir.REPLICAS, RunDir.OUTPUTS, RunDir.TRANSFORMATIONS, RunDir.SITES, RunDir.PROPERTIES, RunDir.PREFLIGHT)}
    where = {"local_root": local_root, "identity": settings.config.s3.identity, "site": settings.config.s3.site}
    lfns = [job_lfns(job_id_of(row.line)) for row in rows]
    # Folder buckets are files on the access point: their inputs are replicas on site `local`, where the
    # planner's stage-in jobs run (a file:// replica on another site is one it cannot select).
    in_where = {**where, "site": "local"} if local_root is not None else where
    entries: list[ReplicaEntry] = replica_entries(((names[0], row.key) for names, row in zip(lfns, rows)), info.input_bucket, **in_where)
    write_replica_catalog(files[RunDir.REPLICAS], entries, header=_x_pegasus())
    kinds = declared()
    outputs = ((lfn, prefix + kind.key_of(row.key)) for names, row in zip(lfns, rows) for lfn, kind in zip(names[1:], kinds))
    entries = replica_entries(outputs, info.output_bucket, **where)
    write_replica_catalog(files[RunDir.OUTPUTS], entries, header=_x_pegasus())
    del entries, lfns

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
    write_workflow(files[RunDir.WORKFLOW], rows, settings, f"cog-{info.timestamp}", hook, metadata, provenance, sizes)

    credentials = None if local_mode else _write_credentials(run_dir, settings, config)
    if credentials:
        files[CREDENTIALS_FILE] = credentials
    cluster = bool(settings.config.clustering.size)
    s3_scratch = not local_mode and settings.data_configuration == "nonsharedfs"
    if s3_scratch:
        record_scratch(run_dir, info.output_bucket, scratch_key(settings, info.timestamp))
    generated = _record_generated(run_dir, settings, files, hook, credentials, jobs=len(rows), failed=checked.failed, duplicates=checked.duplicates, s3_scratch=s3_scratch)
    seconds = time.perf_counter() - started
    log.info("%s: %d jobs, %d failed in pre-flight, %d duplicates (%.2f s)", run_dir, len(rows), checked.failed, checked.duplicates, seconds)
    return GenerationResult(
        jobs=len(rows),
        failed=checked.failed_sample,
        duplicates=checked.duplicate_sample,
        files=files,
        output_site=settings.config.s3.site,
        data_configuration=settings.data_configuration,
        cluster=cluster,
        credentials=credentials,
        seconds=seconds,
        info=generated,
    )
