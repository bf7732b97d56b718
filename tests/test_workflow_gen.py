"""pegasus/workflow_gen.py: generated files are schema-valid, match the manifest, and carry every setting."""

from __future__ import annotations

import dataclasses

import configparser
import json
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml

from cog_pipeline.run.manifest import ManifestRow, parse_manifest
from cog_pipeline.pegasus import workflow_gen as wg
from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate
from cog_pipeline.replicas.catalog import job_lfns
from cog_pipeline.run.rundir import CLAIMED, GENERATED, Preflight, RunDir, RunInfo
from tests.oracles import build_api_workflow, comparable_workflow
from tests.urls import parse_location
from cog_pipeline.storage.store import RequestCounter, StoreConfig, open_store

from .test_replicas import schema_validator
from cog_pipeline.config import ConfigError, Resources, load_config
from tests.conftest import config_with

REPO = Path(__file__).resolve().parent.parent
TS = "20240102-030405"

# line 1 ok, 2 ok (awkward key), 3 rejected, 4 missing input, 5 duplicate of 1, 6 (blank) skipped, 7 ok
MANIFEST = (
    "Counties/WI/Wood/1band.tif,1\n"
    'Counties/WI/Wood/it\'s "odd" Städte 🚀.tif,3\n'
    "Counties/WI/notatif.png,3\n"
    "Counties/WI/Missing/gone.tif,1\n"
    "Counties/WI/Wood/1band.tif,2\n"
    "\n"
    "Counties/MN/Hennepin/4band.tif, 4\n"
)
PRESENT = ["Counties/WI/Wood/1band.tif", 'Counties/WI/Wood/it\'s "odd" Städte 🚀.tif', "Counties/MN/Hennepin/4band.tif"]
ACCESS = "AKIAWORKFLOWGENTEST"
SECRET = "wfgen/Secret+Key=SHOULD-NEVER-LEAK"


def make_run(tmp_path: Path, config: StoreConfig, manifest: str = MANIFEST, in_bucket: str = "in", out_bucket: str = "out") -> RunDir:
    run = RunDir(tmp_path / f"workflow-run-{TS}")
    run.path.mkdir(parents=True)
    run.file(RunDir.MANIFEST).write_text(manifest, encoding="utf-8")
    run.save(
        RunInfo(
            timestamp=TS,
            input_bucket=in_bucket,
            output_bucket=out_bucket,
            manifest_key="Counties/batch_raw.csv",
            processing_key=f"Counties/batch_processing-{TS}.csv",
            store=config.to_json(),
            state=CLAIMED,
        )
    )
    return run


@pytest.fixture()
def local_run(tmp_path):
    root = tmp_path / "buckets"
    for key in PRESENT:
        path = root / "in" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"tif")
    (root / "out").mkdir(parents=True)
    config = StoreConfig(local_root=root)
    run = make_run(tmp_path, config)
    return run, open_store("in", config), root


def load(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_local_store_generates_schema_valid_files(local_run, pegasus_schema_dir):
    run, store, _ = local_run
    result = generate(run, store, WorkflowSettings())
    assert result.jobs == 3
    for name, schema in [
        (RunDir.WORKFLOW, "wf-5.0.yml"),
        (RunDir.REPLICAS, "rc-5.0.yml"),
        (RunDir.TRANSFORMATIONS, "tc-5.0.yml"),
        (RunDir.SITES, "sc-5.0.yml"),
    ]:
        errors = list(schema_validator(pegasus_schema_dir, schema).iter_errors(load(run.file(name))))
        assert not errors, f"{name}: {errors[0].message}"


def test_checked_in_site_template_is_valid_on_its_own(pegasus_schema_dir):
    doc = load(REPO / "pegasus" / "sites.yml")
    errors = list(schema_validator(pegasus_schema_dir, "sc-5.0.yml").iter_errors(doc))
    assert not errors, errors[0].message
    names = [site["name"] for site in doc["sites"]]
    assert names == ["local", "condorpool", "${COG_STORAGE_SITE}"]


def test_schema_validator_rejects_broken_documents(pegasus_schema_dir):
    """Guard against a validator that accepts anything (e.g. unresolved refs)."""
    wf = schema_validator(pegasus_schema_dir, "wf-5.0.yml")
    good = {"pegasus": "5.0.4", "name": "w", "jobs": [{"type": "job", "name": "g", "id": "ID1", "arguments": [], "uses": []}]}
    assert not list(wf.iter_errors(good))
    assert list(wf.iter_errors({"pegasus": "5.0.4", "name": "w", "jobs": []}))  # minItems 1
    bad_use = json.loads(json.dumps(good))
    bad_use["jobs"][0]["uses"] = [{"lfn": "x", "type": "sideways"}]
    assert list(wf.iter_errors(bad_use))
    sc = schema_validator(pegasus_schema_dir, "sc-5.0.yml")
    assert list(sc.iter_errors({"pegasus": "5.0.4", "sites": [{"name": "x", "arch": "pdp11"}]}))


def test_jobs_match_manifest_rows(local_run):
    run, store, _ = local_run
    generate(run, store, WorkflowSettings(config_with(retries=5)))
    wf = load(run.file(RunDir.WORKFLOW))
    jobs = wf["jobs"]
    assert [j["id"] for j in jobs] == ["ID0000001", "ID0000002", "ID0000007"]
    rows = {r.line: r for r in parse_manifest(MANIFEST).rows}
    for job in jobs:
        row = rows[int(job["id"][2:])]
        assert job["type"] == "job" and job["name"] == "generate_cog"
        lfn_in, lfn_tif, lfn_jpg = job_lfns(job["id"])
        assert lfn_in == f"{job['id']}.in.tif"
        # No key in an argument or an LFN: only job-local names and plain tokens.
        assert job["arguments"][:6] == ["--empty-outputs-on-failure", lfn_in, lfn_tif, lfn_jpg, "--bands", str(row.bands)]
        assert job["arguments"][6] == "--metadata-b64" and len(job["arguments"]) == 8  # provenance: test_provenance.py
        uses = {u["lfn"]: u for u in job["uses"]}
        assert uses[lfn_in] == {"lfn": lfn_in, "type": "input"}
        for out in (lfn_tif, lfn_jpg):
            assert uses[out] == {"lfn": out, "type": "output", "stageOut": True, "registerReplica": False}
        assert job["metadata"] == {"key": row.key, "line": str(row.line)}
        # A conversion is retried by HTCondor's holds (transient failures only), never by DAGMan.
        assert job["profiles"]["dagman"] == {"RETRY": 0, "CATEGORY": "cog"}
        assert job["profiles"]["pegasus"] == {"diskspace": 2048}  # small inputs: the floor
    assert jobs[2]["arguments"][5] == "4"  # ' 4' in the manifest: the parsed band count
    assert wf["jobDependencies"] == []
    assert wf["name"] == f"cog-{TS}"


def test_each_job_requests_disk_for_its_input_and_the_manifest_glob_sets_resources(local_run):
    run, store, root = local_run
    big = next((root / "in").rglob("*.tif"))
    with open(big, "r+b") as fh:  # a sparse 1 GiB input: the listing's size is what counts
        fh.truncate(1 << 30)
    resources = Resources(cores=2, memory_mb=3000, disk_mb=100, wall_time_s=60, held_remove_s=30)
    settings = WorkflowSettings(dataclasses.replace(config_with(), manifests={run.load().manifest_key: resources}))
    generate(run, store, settings)
    disks = {job["metadata"]["key"]: job["profiles"]["pegasus"]["diskspace"] for job in load(run.file(RunDir.WORKFLOW))["jobs"]}
    big_key = big.relative_to(root / "in").as_posix()
    assert disks[big_key] == 4 * 1024 + 256
    for key, disk in disks.items():  # small inputs: the formula's 256 MB beats the glob's floor of 100
        if key != big_key:
            assert disk == -(-4 * (root / "in" / key).stat().st_size // (1 << 20)) + 256
    pool = next(s for s in load(run.file(RunDir.SITES))["sites"] if s["name"] == "condorpool")
    assert (pool["profiles"]["pegasus"]["cores"], pool["profiles"]["pegasus"]["memory"]) == (2, 3000)
    assert "> 60)" in pool["profiles"]["condor"]["periodic_hold"]


def test_preflight_json_lists_bad_missing_and_duplicate_rows(local_run):
    run, store, root = local_run
    result = generate(run, store, WorkflowSettings())
    pre = Preflight.load(run.path)
    assert (pre.jobs, pre.failed, pre.duplicates) == (3, 2, 1)
    assert [f["line"] for f in pre.failed_sample] == [3, 4]
    assert pre.failed_sample[0]["text"] == "Counties/WI/notatif.png,3"
    assert "does not end in '.tif'" in pre.failed_sample[0]["reason"]
    gone = f"input object does not exist: {root / 'in' / 'Counties/WI/Missing/gone.tif'}"
    assert pre.failed_sample[1] == {"line": 4, "text": "Counties/WI/Missing/gone.tif,1", "reason": gone}
    assert list(pre.iter_failed()) == [(3, pre.failed_sample[0]["reason"]), (4, gone)]  # the line file, streamed
    assert pre.duplicate_sample == [{"line": 5, "text": "Counties/WI/Wood/1band.tif,2", "duplicate_of": 1}]
    assert result.failed == pre.failed_sample and result.duplicates == pre.duplicate_sample
    # Each job's input version as listed: what the job reads (If-Match) and provenance.jsonl names.
    listed = pre.versions(set(pre.sizes()))
    assert {k: etag for k, (_, etag) in listed.items()} == {k: store.head(k).etag for k in pre.sizes()} and len(listed) == 3
    # Missing rows get no job and no replica.
    assert all("gone" not in r["lfn"] for r in load(run.file(RunDir.REPLICAS))["replicas"])


def test_preflight_records_each_job_inputs_size_from_its_listing(local_run):
    """The local engine orders jobs by these sizes; recorded here, it never lists the input bucket again."""
    from cog_pipeline.engines.local import input_sizes, load_jobs

    run, store, root = local_run
    generate(run, store, WorkflowSettings())
    sizes = Preflight.load(run.path).sizes()
    jobs, _ = load_jobs(run)
    assert sizes == {key: (root / "in" / key).stat().st_size for key in {next(iter(j.inputs.values())) for j in jobs}}
    for key in sizes:  # gone from the bucket: the recorded sizes are what the engine uses
        (root / "in" / key).unlink()
    assert input_sizes(run, jobs) == {j.job_id: sizes[next(iter(j.inputs.values()))] for j in jobs}


def test_replicas_and_outputs_resolve_to_buckets_local(local_run):
    run, store, root = local_run
    generate(run, store, WorkflowSettings())
    keys = {job["id"]: job["metadata"]["key"] for job in load(run.file(RunDir.WORKFLOW))["jobs"]}
    replicas = load(run.file(RunDir.REPLICAS))["replicas"]
    assert [r["lfn"] for r in replicas] == [job_lfns(job_id)[0] for job_id in keys]
    for replica, key in zip(replicas, keys.values()):
        (pfn,) = replica["pfns"]
        assert pfn["site"] == "local"  # folder buckets: files on the access point, where stage-in runs
        scheme, _, path = parse_location(pfn["pfn"])
        assert scheme == "file"
        assert Path(path) == store.base / key
        assert Path(path).is_file()
    # The output replica catalog (Pegasus' Replica output mapper) puts each job's COG and JPEG at its key.
    outputs = {r["lfn"]: parse_location(r["pfns"][0]["pfn"]) for r in load(run.file(RunDir.OUTPUTS))["replicas"]}
    for job_id, key in keys.items():
        _, tif, jpg = job_lfns(job_id)
        assert outputs[tif] == ("file", "", str((root / "out" / key).resolve()))
        assert outputs[jpg] == ("file", "", str((root / "out" / key).resolve().with_suffix(".jpg")))
    info = run.load()
    assert info.state == GENERATED
    assert info.output_site == "storage"
    assert info.data_configuration == "condorio"
    site = next(s for s in load(run.file(RunDir.SITES))["sites"] if s["name"] == info.output_site)
    storage = next(d for d in site["directories"] if d["type"] in ("sharedStorage", "localStorage"))
    assert storage["fileServers"][0]["url"] == (root / "out").resolve().as_uri()


def test_fast_workflow_writer_equals_pegasus_api_write(tmp_path):
    rows = parse_manifest(MANIFEST).rows
    settings = WorkflowSettings(config_with(retries=4))
    hook = "/usr/bin/python3 -m cog_pipeline reconcile '/tmp/run dir'"
    meta = {"run": TS, "manifest_key": "Counties/x_raw.csv"}
    fast = tmp_path / "fast.yml"
    wg.write_workflow(fast, rows, settings, "cog-test", hook, meta)
    api = tmp_path / "api.yml"
    build_api_workflow(rows, settings, "cog-test", hook, meta).write(str(api))
    assert comparable_workflow(fast) == comparable_workflow(api)


def test_awkward_characters_survive_the_fast_writer(tmp_path, pegasus_schema_dir):
    from Pegasus import yaml as pegasus_yaml

    keys = ["a\u2028b.tif", "nel\x85.tif", "bom\ufeff.tif", "tab\there.tif", "q\"'\\.tif", "% %(ID)s {x}.tif"]
    rows = [ManifestRow(i + 1, k, 1, f"{k},1") for i, k in enumerate(keys)]
    path = tmp_path / "wf.yml"
    wg.write_workflow(path, rows, WorkflowSettings(), "w", "true", {})
    text = path.read_text(encoding="utf-8")
    for doc in (yaml.safe_load(text), pegasus_yaml.loads(text)):
        assert [j["metadata"]["key"] for j in doc["jobs"]] == keys
        assert [j["arguments"][1] for j in doc["jobs"]] == [job_lfns(j["id"])[0] for j in doc["jobs"]]
    assert not list(schema_validator(pegasus_schema_dir, "wf-5.0.yml").iter_errors(yaml.safe_load(text)))


def test_reconcile_is_an_end_hook_not_a_job(local_run):
    run, store, _ = local_run
    generate(run, store, WorkflowSettings())
    wf = load(run.file(RunDir.WORKFLOW))
    # "all": pegasus-monitord 5.1 fires it at the start (ignored by `finish`) and at the end; "end" never fires.
    assert wf["hooks"] == {"shell": [{"_on": "all", "cmd": f"{sys.executable} -m cog_pipeline finish {run.path.resolve()}"}]}
    assert all(j["name"] == "generate_cog" for j in wf["jobs"])
    generate(run, store, WorkflowSettings(reconcile_command="echo done"))
    assert load(run.file(RunDir.WORKFLOW))["hooks"]["shell"][0]["cmd"] == "echo done"
    assert run.load().reconcile_command == "echo done"


def properties(run: RunDir) -> dict[str, str]:
    from Pegasus.api import Properties

    props = Properties.load(str(run.file(RunDir.PROPERTIES)))
    return dict(props._conf["DEFAULT"])


def test_settings_land_where_pegasus_reads_them(local_run):
    run, store, _ = local_run
    settings = WorkflowSettings(config_with(retries=2, max_running=123, max_transfers=24, threads=3, attempts=7, size=17, image="example.org/gdal:9", type="docker", cores=2, memory_mb=3000, disk_mb=5000))
    result = generate(run, store, settings)
    props = properties(run)
    assert props["dagman.maxjobs"] == "123"
    assert props["dagman.cog.maxjobs"] == "123"
    assert props["dagman.retry"] == "2"
    assert props["dagman.stagein.maxjobs"] == props["dagman.stageout.maxjobs"] == "4"  # 4 jobs x 3 threads x 2 <= 24
    assert props["pegasus.transfer.threads"] == "3"
    # One stage-out per conversion, outputs mapped by outputs.yml, no checksum pulled back to the access point,
    # every image of a cluster converted.
    assert props["pegasus.transfer.refiner"] == "Basic"
    assert props["pegasus.dir.storage.mapper"] == "Replica" and props["pegasus.dir.storage.mapper.replica"] == "YAML"
    assert Path(props["pegasus.dir.storage.mapper.replica.file"]) == run.file(RunDir.OUTPUTS).resolve()
    assert props["pegasus.integrity.checking"] == "none"
    assert props["pegasus.clusterer.job.aggregator.seqexec.firstjobfail"] == "false"
    assert props["pegasus.transfer.arguments"] == "-m 7"
    assert props["pegasus.data.configuration"] == "condorio"
    for kind, name in (("site", RunDir.SITES), ("replica", RunDir.REPLICAS), ("transformation", RunDir.TRANSFORMATIONS)):
        assert Path(props[f"pegasus.catalog.{kind}.file"]) == run.file(name).resolve()
    assert all(j["profiles"]["dagman"]["RETRY"] == 0 for j in load(run.file(RunDir.WORKFLOW))["jobs"])

    tc = load(run.file(RunDir.TRANSFORMATIONS))
    (tr,) = tc["transformations"]
    assert tr["name"] == "generate_cog"
    assert tr["profiles"]["pegasus"]["clusters.size"] == 17
    assert tr["profiles"]["env"] == {"COG_PIPELINE_BAND_MISMATCH": "warn"}  # the file wins, on every engine
    # Installed where it runs: in the worker image on the pool (nothing staged per job), this machine's copy for
    # the local engine.
    sites = {site["name"]: site for site in tr["sites"]}
    assert sites["condorpool"] == {"name": "condorpool", "pfn": "/usr/local/bin/generate_cog", "type": "installed", "container": "cog-worker",
                                   # Pegasus' transfers do not pin the input's version: the converter checks it there
                                   "profiles": {"env": {"COG_PIPELINE_VERIFY_SOURCE": "1"}}}
    assert "profiles" not in sites["local"]  # the local engine pins it itself (If-Match)
    assert sites["local"]["pfn"] == str(wg.default_converter()) and sites["local"]["type"] == "installed"
    assert Path(sites["local"]["pfn"]).name == "generate_cog" and Path(sites["local"]["pfn"]).is_file()  # built on demand
    assert tc["containers"] == [{"name": "cog-worker", "type": "docker", "image": "docker://example.org/gdal:9", "bypass": True}]
    assert props["pegasus.transfer.container.onhost"] == "false"  # stage-in/out inside the image, with its tools

    pool = next(s for s in load(run.file(RunDir.SITES))["sites"] if s["name"] == "condorpool")
    assert pool["profiles"]["pegasus"] == {"style": "condor", "cores": 2, "memory": 3000, "diskspace": 5000, "maxwalltime": 120}
    assert pool["profiles"]["condor"]["universe"] == "vanilla"

    extra = run.load()
    assert extra.cluster is True and extra.cluster_size == 17 and result.cluster
    assert extra.pegasus.plan_args[-3:-1] == ["--cluster", "horizontal"]
    assert extra.max_running == 123


def test_defaults_match_the_original(local_run):
    run, store, _ = local_run
    generate(run, store, WorkflowSettings())
    props = properties(run)
    assert props["dagman.maxjobs"] == "10000" and props["dagman.retry"] == "3"
    # No image until the operator publishes the worker image; Pegasus' tools are on the workers, not shipped.
    assert props["pegasus.transfer.worker.package"] == "false" and "pegasus.transfer.container.onhost" not in props
    tc = load(run.file(RunDir.TRANSFORMATIONS))
    assert not tc.get("containers")
    assert "pegasus" not in tc["transformations"][0]["profiles"]  # no clustering unless asked
    pool = next(s for s in load(run.file(RunDir.SITES))["sites"] if s["name"] == "condorpool")
    assert pool["profiles"]["pegasus"] == {"style": "condor", "cores": 1, "memory": 1024, "diskspace": 2048, "maxwalltime": 120}
    assert pool["profiles"]["env"] == {"PEGASUS_HOME": "/opt/pegasus"}
    assert run.load().cluster is False
    assert "--cluster" not in run.load().pegasus.plan_args


def test_no_container_when_image_is_empty(local_run, pegasus_schema_dir):
    run, store, _ = local_run
    generate(run, store, WorkflowSettings(config_with(image="")))
    tc = load(run.file(RunDir.TRANSFORMATIONS))
    assert "containers" not in tc or tc["containers"] == []
    assert all("container" not in site for site in tc["transformations"][0]["sites"])
    # Without an image, the pool's workers run this machine's copy (a personal pool, or a shared file system).
    assert {site["pfn"] for site in tc["transformations"][0]["sites"]} == {str(wg.default_converter())}
    assert not list(schema_validator(pegasus_schema_dir, "tc-5.0.yml").iter_errors(tc))


def _condor_profiles(run: RunDir) -> dict[str, dict[str, str]]:
    return {s["name"]: s["profiles"]["condor"] for s in load(run.file(RunDir.SITES))["sites"] if "condor" in s.get("profiles", {})}


def test_condor_expressions_parse_in_htcondor_bindings(local_run):
    import classad2
    import htcondor2

    run, store, _ = local_run
    generate(run, store, WorkflowSettings())
    profiles = _condor_profiles(run)
    assert set(profiles) == {"local", "condorpool"}
    for site, condor in profiles.items():
        submit = htcondor2.Submit({"executable": "/bin/true", **condor})
        text = str(submit)
        for key, value in condor.items():
            assert f"{key} = " in text
            assert submit[key] == str(value)
            if key != "universe":
                classad2.ExprTree(str(value))  # raises ClassAdException when it does not parse
    with pytest.raises(Exception):
        classad2.ExprTree("(NumHolds < ")  # the parser does reject broken expressions


def test_backoff_releases_with_exponential_delay(local_run):
    """Evaluate the generated expressions against job ads: hold -> wait base*2^(n-1) -> release; then remove."""
    import classad2

    run, store, _ = local_run
    generate(run, store, WorkflowSettings(config_with(base_s=60, max_s=600, releases=3, retries=3)))
    local = _condor_profiles(run)["local"]
    now = int(time.time())

    def ev(expr: str, **attrs) -> bool:
        return bool(classad2.ExprTree(expr).eval(classad2.ClassAd(attrs)))

    assert ev(local["on_exit_hold"], ExitBySignal=False, ExitCode=1)
    assert not ev(local["on_exit_hold"], ExitBySignal=False, ExitCode=0)
    release = local["periodic_release"]
    held = dict(JobStatus=5, HoldReasonCode=3)
    assert not ev(release, NumHolds=1, EnteredCurrentStatus=now - 30, **held)
    assert ev(release, NumHolds=1, EnteredCurrentStatus=now - 70, **held)
    assert not ev(release, NumHolds=2, EnteredCurrentStatus=now - 100, **held)  # second hold waits 120 s
    assert ev(release, NumHolds=2, EnteredCurrentStatus=now - 130, **held)
    assert not ev(release, NumHolds=3, EnteredCurrentStatus=now - 200, **held)  # third: 240 s
    assert ev(release, NumHolds=3, EnteredCurrentStatus=now - 250, **held)
    assert not ev(release, NumHolds=4, EnteredCurrentStatus=now - 10_000, **held)  # out of releases
    assert not ev(release, NumHolds=1, EnteredCurrentStatus=now - 10_000, JobStatus=5, HoldReasonCode=1)  # user hold
    remove = local["periodic_remove"]
    assert ev(remove, NumHolds=4, EnteredCurrentStatus=now, **held)
    assert not ev(remove, NumHolds=2, EnteredCurrentStatus=now - 500, **held)
    assert not ev(remove, NumHolds=4, EnteredCurrentStatus=now, JobStatus=2, HoldReasonCode=0)
    capped = WorkflowSettings(config_with(base_s=60, max_s=100, releases=10))
    expr = wg.hold_profiles(capped)["local"]["periodic_release"]
    assert ev(expr, NumHolds=8, EnteredCurrentStatus=now - 110, **held)  # 60*2^7 capped at 100 s


def test_conversions_retry_transient_failures_only_with_backoff(local_run):
    """A bad input (a deterministic exit code) fails at once; a transient failure is held and released later."""
    import classad2

    from cog_pipeline.engines.base import NOT_RETRIED
    from cog_pipeline.transformations.exit_codes import ExitCode

    run, store, _ = local_run
    generate(run, store, WorkflowSettings(config_with(base_s=60, max_s=600, retries=2)))
    pool = _condor_profiles(run)["condorpool"]
    now = int(time.time())

    def ev(expr: str, **attrs):
        return classad2.ExprTree(expr).eval(classad2.ClassAd(attrs))

    for code in NOT_RETRIED:
        assert not ev(pool["on_exit_hold"], ExitBySignal=False, ExitCode=int(code))
    assert not ev(pool["on_exit_hold"], ExitBySignal=False, ExitCode=0)
    for code in (ExitCode.INTERNAL, ExitCode.OUT_OF_DISK):
        assert ev(pool["on_exit_hold"], ExitBySignal=False, ExitCode=int(code))
    assert ev(pool["on_exit_hold"], ExitBySignal=True, ExitSignal=9)
    assert ev(pool["on_exit_hold_reason"], ExitBySignal=False, ExitCode=7) == "transient failure: exit code 7"
    assert ev(pool["on_exit_hold_reason"], ExitBySignal=True, ExitSignal=9) == "transient failure: killed by signal 9"
    release, remove = pool["periodic_release"], pool["periodic_remove"]
    for code in (3, 12, 13):  # its own transient hold, HTCondor file-transfer holds
        assert not ev(release, NumHolds=1, EnteredCurrentStatus=now - 30, JobStatus=5, HoldReasonCode=code)
        assert ev(release, NumHolds=1, EnteredCurrentStatus=now - 70, JobStatus=5, HoldReasonCode=code)
    assert not ev(release, NumHolds=3, EnteredCurrentStatus=now - 10_000, JobStatus=5, HoldReasonCode=3)  # retries spent
    assert ev(remove, NumHolds=3, EnteredCurrentStatus=now, JobStatus=5, HoldReasonCode=3)
    # Any other hold (memory exceeded, the wall-time limit, condor_hold) is never released: removed after 10 min.
    assert not ev(release, NumHolds=1, EnteredCurrentStatus=now - 10_000, JobStatus=5, HoldReasonCode=34)
    assert not ev(remove, NumHolds=1, EnteredCurrentStatus=now - 500, JobStatus=5, HoldReasonCode=34)
    assert ev(remove, NumHolds=1, EnteredCurrentStatus=now - 700, JobStatus=5, HoldReasonCode=34)
    assert not ev(remove, NumHolds=1, EnteredCurrentStatus=now - 700, JobStatus=2, HoldReasonCode=0)


def test_wall_time_limit_holds_with_its_reason(local_run):
    import classad2

    run, store, _ = local_run
    generate(run, store, WorkflowSettings(config_with(wall_time_s=900)))
    pool = _condor_profiles(run)["condorpool"]
    now = int(time.time())
    hold = classad2.ExprTree(pool["periodic_hold"])
    assert hold.eval(classad2.ClassAd({"JobStatus": 2, "EnteredCurrentStatus": now - 901}))
    assert not hold.eval(classad2.ClassAd({"JobStatus": 2, "EnteredCurrentStatus": now - 800}))
    assert not hold.eval(classad2.ClassAd({"JobStatus": 1, "EnteredCurrentStatus": now - 5000}))
    assert classad2.ExprTree(pool["periodic_hold_reason"]).eval() == "ran longer than the wall-time limit of 900 s"
    generate(run, store, WorkflowSettings(config_with(wall_time_s=0)))
    assert "periodic_hold" not in _condor_profiles(run)["condorpool"]


def test_empty_manifest_still_writes_files_and_flags_it(tmp_path):
    root = tmp_path / "b"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    config = StoreConfig(local_root=root)
    run = make_run(tmp_path, config, manifest="nope.png,1\nmissing.tif,1\n")
    result = generate(run, open_store("in", config), WorkflowSettings())
    assert result.jobs == 0
    wf = load(run.file(RunDir.WORKFLOW))
    assert wf["jobs"] == [] and wf["hooks"]["shell"][0]["_on"] == "all"
    assert load(run.file(RunDir.REPLICAS))["replicas"] == []
    assert run.load().empty is True
    assert [line for line, _ in Preflight.load(run.path).iter_failed()] == [1, 2]


def test_nonsharedfs_uses_s3_staging_site(local_run):
    run, store, root = local_run
    generate(run, store, WorkflowSettings(config_with(configuration="nonsharedfs")))
    extra = run.load()
    assert extra.data_configuration == "nonsharedfs" and extra.pegasus.staging_site == "storage"
    assert "--staging-site" in extra.pegasus.plan_args
    props = properties(run)
    assert props["pegasus.data.configuration"] == "nonsharedfs"
    assert props["pegasus.transfer.bypass.input.staging"] == "true"
    storage = next(s for s in load(run.file(RunDir.SITES))["sites"] if s["name"] == "storage")
    scratch = next(d for d in storage["directories"] if d["type"] == "sharedScratch")
    assert scratch["fileServers"][0]["url"] == (root / "out" / "pegasus-scratch" / TS).resolve().as_uri()


def test_the_images_converter_path_is_a_setting(local_run, tmp_path):
    """An operator's own image installs generate_cog elsewhere: [container] converter_path in the TOML file is the
    PFN the pool runs; the local engine keeps this machine's copy."""
    run, store, _ = local_run
    toml = tmp_path / "cog.toml"
    toml.write_text('[container]\nimage = "example.org/gdal:9"\nconverter_path = "/opt/cog/bin/generate_cog"\n')
    generate(run, store, WorkflowSettings(load_config(toml)))
    (tr,) = load(run.file(RunDir.TRANSFORMATIONS))["transformations"]
    sites = {site["name"]: site["pfn"] for site in tr["sites"]}
    assert sites["condorpool"] == "/opt/cog/bin/generate_cog" and sites["local"] == str(wg.default_converter())


def test_invalid_settings_are_refused():
    for bad in (dict(max_running=0), dict(size=-1), dict(configuration="sharedfs"), dict(retries=-1), dict(site="local")):
        with pytest.raises(ConfigError):
            config_with(**bad)


# ----------------------------------------------------------------------------------------------------------------
# Real S3 (moto server over HTTP)


@pytest.fixture()
def s3_run(tmp_path, s3_server, bucket_name):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "access").write_text(ACCESS + "\n")
    (keys / "secret").write_text(SECRET + "\n")
    config = StoreConfig(endpoint=s3_server, access_key_file=keys / "access", secret_key_file=keys / "secret", region="us-east-1")
    client = config.s3_client()
    in_bucket, out_bucket = bucket_name, bucket_name + "-out"
    client.create_bucket(Bucket=in_bucket)
    client.create_bucket(Bucket=out_bucket)
    for key in PRESENT:
        client.put_object(Bucket=in_bucket, Key=key, Body=b"tif")
    client.put_object(Bucket=in_bucket, Key="Counties/WI/Wood/unrelated.tif", Body=b"x")
    run = make_run(tmp_path, config, in_bucket=in_bucket, out_bucket=out_bucket)
    return run, config, in_bucket, out_bucket


def test_s3_preflight_replicas_sites_and_credentials(s3_run, pegasus_schema_dir):
    run, config, in_bucket, out_bucket = s3_run
    counter = RequestCounter()
    store = open_store(in_bucket, config, counter)
    result = generate(run, store, WorkflowSettings())
    assert result.jobs == 3
    # Pre-flight listed; it never asked once per key.
    assert set(counter.by_operation) == {"ListObjectsV2"}
    assert counter.total <= 3
    pre = Preflight.load(run.path)
    assert [line for line, _ in pre.iter_failed()] == [3, 4]
    assert pre.failed_sample[1]["reason"] == f"input object does not exist: s3://{in_bucket}/Counties/WI/Missing/gone.tif"
    assert pre.duplicate_sample[0]["duplicate_of"] == 1

    replicas = load(run.file(RunDir.REPLICAS))["replicas"]
    assert len(replicas) == 3
    for replica in replicas:
        pfn = replica["pfns"][0]["pfn"]
        assert pfn.startswith(f"s3://cog@storage/{in_bucket}/")  # the raw key follows
        assert parse_location(pfn)[:2] == ("s3", in_bucket)
        assert "checksum" not in replica  # S3 listings carry no sha256: none is invented
        # and the URL names an object that really exists on the server
        _, bucket, key = parse_location(pfn)
        assert store.head(key) is not None

    sites = {s["name"]: s for s in load(run.file(RunDir.SITES))["sites"]}
    storage = sites["storage"]["directories"][0]
    assert storage["type"] == "sharedStorage"
    assert storage["fileServers"][0]["url"] == f"s3://cog@storage/{out_bucket}"
    assert parse_location(storage["fileServers"][0]["url"] + "/Counties/WI/Wood/1band.tif") == ("s3", out_bucket, "Counties/WI/Wood/1band.tif")

    for name, schema in [(RunDir.WORKFLOW, "wf-5.0.yml"), (RunDir.REPLICAS, "rc-5.0.yml"), (RunDir.TRANSFORMATIONS, "tc-5.0.yml"), (RunDir.SITES, "sc-5.0.yml")]:
        assert not list(schema_validator(pegasus_schema_dir, schema).iter_errors(load(run.file(name)))), name

    cred = run.file("credentials.conf")
    assert result.credentials == cred
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    ini = configparser.RawConfigParser()
    ini.read(cred)
    assert ini["storage"]["endpoint"] == config.endpoint
    assert ini["cog@storage"]["access_key"] == ACCESS and ini["cog@storage"]["secret_key"] == SECRET
    assert run.load().pegasus.pegasus_credentials == str(cred)

    # No secret anywhere but credentials.conf.
    for path in run.path.rglob("*"):
        if path.is_file() and path != cred:
            text = path.read_text(encoding="utf-8", errors="replace")
            assert SECRET not in text and ACCESS not in text, path


def test_s3_without_key_files_writes_no_credentials(s3_run):
    run, config, in_bucket, _ = s3_run
    generate(run, open_store(in_bucket, config), WorkflowSettings(write_credentials=False))
    assert not run.file("credentials.conf").exists()
    assert run.load().pegasus.pegasus_credentials is None


def test_custom_site_and_identity_flow_into_every_url(s3_run):
    run, config, in_bucket, out_bucket = s3_run
    generate(run, open_store(in_bucket, config), WorkflowSettings(config_with(site="osn", identity="carto")))
    replicas = load(run.file(RunDir.REPLICAS))["replicas"]
    assert all(r["pfns"][0]["site"] == "osn" and r["pfns"][0]["pfn"].startswith(f"s3://carto@osn/{in_bucket}/") for r in replicas)
    sites = {s["name"]: s for s in load(run.file(RunDir.SITES))["sites"]}
    assert sites["osn"]["directories"][0]["fileServers"][0]["url"] == f"s3://carto@osn/{out_bucket}"
    assert run.load().output_site == "osn"
    ini = configparser.RawConfigParser()
    ini.read(run.file("credentials.conf"))
    assert ini.has_section("osn") and ini.has_section("carto@osn")
