"""The production configuration reaches the generated Pegasus files; the S3 data flow; refused keys; scratch."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from cog_pipeline.config import ConfigError, load_config
from cog_pipeline.engines.pegasus.scratch import SCRATCH_FILE, remove_scratch
from cog_pipeline.engines import get_engine
from cog_pipeline.pegasus import workflow_gen as wg
from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate
from cog_pipeline.replicas.pegasus_keys import pegasus_key_problem
from cog_pipeline.run.rundir import Preflight, RunDir
from cog_pipeline.storage.store import open_store

from .test_replicas import schema_validator
from .test_workflow_gen import TS, make_run, properties
from tests.conftest import config_with

PROFILE = """
[resources]
memory_mb = 4096
wall_time_s = 5400

[dagman]
retries = 5

[pegasus.properties]
"pegasus.mode" = "production"

[condor.profiles]
"+ProjectName" = '"cog"'
"""


def load(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def pool_site(run: RunDir) -> dict:
    return next(s for s in load(run.file(RunDir.SITES))["sites"] if s["name"] == "condorpool")


def folder_run(tmp_path: Path, keys: list[str], engine: str = "local") -> tuple[RunDir, object]:
    from cog_pipeline.storage.store import StoreConfig

    root = tmp_path / "buckets"
    for key in keys:
        path = root / "in" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"tif")
    (root / "out").mkdir(parents=True, exist_ok=True)
    config = StoreConfig(local_root=root)
    run = make_run(tmp_path, config, manifest="".join(f"{k},1\n" for k in keys))
    run.update(engine=engine)
    return run, open_store("in", config)


@pytest.fixture()
def s3_buckets(s3_server, bucket_name):
    from cog_pipeline.storage.store import StoreConfig

    config = StoreConfig(endpoint=s3_server, region="us-east-1")
    client = config.s3_client()
    client.create_bucket(Bucket=bucket_name)
    client.create_bucket(Bucket=bucket_name + "-out")
    return config, client, bucket_name, bucket_name + "-out"


def s3_run(tmp_path: Path, s3_buckets, keys: list[str], engine: str = "pegasus") -> RunDir:
    config, client, in_bucket, out_bucket = s3_buckets
    for key in keys:
        client.put_object(Bucket=in_bucket, Key=key, Body=b"tif")
    run = make_run(tmp_path, config, manifest="".join(f"{k},1\n" for k in keys), in_bucket=in_bucket, out_bucket=out_bucket)
    run.update(engine=engine)
    return run


# ----------------------------------------------------------------------------------------------------------------
# Configuration file -> generated files


def test_config_file_reaches_properties_sites_and_workflow(tmp_path, pegasus_schema_dir):
    profile = tmp_path / "cog-pipeline.toml"
    profile.write_text(PROFILE)
    run, store = folder_run(tmp_path, ["a/x.tif"])
    generate(run, store, WorkflowSettings(load_config(profile, {"resources.cores": 2})))
    props = properties(run)
    assert props["dagman.retry"] == "5" and props["pegasus.mode"] == "production"
    pool = pool_site(run)
    assert pool["profiles"]["pegasus"]["memory"] == 4096 and pool["profiles"]["pegasus"]["cores"] == 2
    assert pool["profiles"]["condor"]["+ProjectName"] == '"cog"'
    # Conversions: no DAGMan retry, HTCondor releases a transient failure's hold up to `retries` times.
    assert [j["profiles"]["dagman"]["RETRY"] for j in load(run.file(RunDir.WORKFLOW))["jobs"]] == [0]
    assert "(NumHolds <= 5)" in pool["profiles"]["condor"]["periodic_release"]
    for name, schema in ((RunDir.SITES, "sc-5.0.yml"), (RunDir.WORKFLOW, "wf-5.0.yml"), (RunDir.TRANSFORMATIONS, "tc-5.0.yml"), (RunDir.REPLICAS, "rc-5.0.yml")):
        assert not list(schema_validator(pegasus_schema_dir, schema).iter_errors(load(run.file(name)))), name


def test_wall_time_is_a_maxwalltime_profile_and_a_hold_with_its_reason(tmp_path):
    run, store = folder_run(tmp_path, ["a/x.tif"])
    generate(run, store, WorkflowSettings(config_with(wall_time_s=5400)))
    pool = pool_site(run)
    assert pool["profiles"]["pegasus"]["maxwalltime"] == 90  # minutes
    condor = pool["profiles"]["condor"]
    assert condor["periodic_hold"] == "(JobStatus == 2) && ((time() - EnteredCurrentStatus) > 5400)"
    assert condor["periodic_remove"] == wg.hold_profiles(WorkflowSettings())["condorpool"]["periodic_remove"]


def test_the_operators_periodic_remove_is_joined_with_the_holds_rule(tmp_path):
    run, store = folder_run(tmp_path, ["a/x.tif"])
    config = dataclasses.replace(config_with(wall_time_s=0), condor_profiles={"periodic_remove": "(NumJobStarts > 9)"})
    generate(run, store, WorkflowSettings(config))
    pool = pool_site(run)
    assert "maxwalltime" not in pool["profiles"]["pegasus"] and "periodic_hold" not in pool["profiles"]["condor"]
    rule = wg.hold_profiles(WorkflowSettings())["condorpool"]["periodic_remove"]
    assert pool["profiles"]["condor"]["periodic_remove"] == f"({rule}) || ((NumJobStarts > 9))"


# ----------------------------------------------------------------------------------------------------------------
# Data flow: S3 -> worker -> S3 by default; condorio selectable; folders unchanged


def test_s3_buckets_default_to_nonsharedfs_with_the_output_site_as_staging(tmp_path, s3_buckets, pegasus_schema_dir):
    run = s3_run(tmp_path, s3_buckets, ["Counties/WI/Eau Claire/x.tif"])
    generate(run, open_store(run.load().input_bucket, run.load().store_config), WorkflowSettings())
    info = run.load()
    props = properties(run)
    assert props["pegasus.data.configuration"] == "nonsharedfs"
    assert props["pegasus.transfer.bypass.input.staging"] == "true"
    args = info.pegasus.plan_args
    assert args[args.index("--staging-site") + 1] == "condorpool=storage"
    assert args[args.index("--cleanup") + 1] == "none"  # pegasus-s3 rm cannot delete keys with spaces
    assert (info.data_configuration, info.pegasus.staging_site) == ("nonsharedfs", "storage")
    assert json.loads(run.file(SCRATCH_FILE).read_text()) == {"bucket": info.output_bucket, "prefix": f"pegasus-scratch/{TS}/"}
    assert args[args.index("--sites") + 1] == "condorpool" and args[args.index("--output-sites") + 1] == "storage"
    for name, schema in ((RunDir.SITES, "sc-5.0.yml"), (RunDir.WORKFLOW, "wf-5.0.yml"), (RunDir.TRANSFORMATIONS, "tc-5.0.yml"), (RunDir.REPLICAS, "rc-5.0.yml")):
        assert not list(schema_validator(pegasus_schema_dir, schema).iter_errors(load(run.file(name)))), name
    # the input PFN keeps the key raw (the real pegasus-s3 takes it literally)
    (pfn,) = [r["pfns"][0]["pfn"] for r in load(run.file(RunDir.REPLICAS))["replicas"]]
    assert pfn.endswith("/Counties/WI/Eau Claire/x.tif")


def test_condorio_stays_selectable_for_s3(tmp_path, s3_buckets):
    run = s3_run(tmp_path, s3_buckets, ["a/x.tif"])
    generate(run, open_store(run.load().input_bucket, run.load().store_config), WorkflowSettings(config_with(configuration="condorio")))
    info = run.load()
    assert properties(run)["pegasus.data.configuration"] == "condorio"
    assert "--staging-site" not in info.pegasus.plan_args and "--cleanup" not in info.pegasus.plan_args
    assert not run.file(SCRATCH_FILE).exists()


def test_folder_buckets_keep_condorio(tmp_path):
    run, store = folder_run(tmp_path, ["a/x.tif"])
    generate(run, store, WorkflowSettings())
    assert properties(run)["pegasus.data.configuration"] == "condorio"
    assert "--staging-site" not in run.load().pegasus.plan_args


def test_scratch_prefix_is_removed_with_boto3_and_outputs_stay(tmp_path, s3_buckets):
    config, client, _, out_bucket = s3_buckets
    run = s3_run(tmp_path, s3_buckets, ["a/x.tif"])
    generate(run, open_store(run.load().input_bucket, config), WorkflowSettings())
    scratch = [f"pegasus-scratch/{TS}/Counties/WI/Eau Claire/x.tif", f"pegasus-scratch/{TS}/Fond du Lac/y.jpg"]
    keep = ["Counties/WI/Eau Claire/x.tif", f"pegasus-scratch/other-run/z.tif"]
    for key in scratch + keep:
        client.put_object(Bucket=out_bucket, Key=key, Body=b"x")
    assert remove_scratch(run) == 2
    left = sorted(o["Key"] for o in client.list_objects_v2(Bucket=out_bucket)["Contents"])
    assert left == sorted(keep)
    assert remove_scratch(run) == 0  # safe to repeat


# ----------------------------------------------------------------------------------------------------------------
# Keys the Pegasus tools cannot carry fail at preflight, on the pegasus engine only

REFUSED = ["Counties/WI/St. Croix/it's.tif", "Counties/WI/a#b.tif", "Counties/WI/em\u2003space.tif", "Counties/WI/nbsp\u00a0here.tif",
           'Counties/WI/say "hi".tif']
CARRIED = ["Counties/WI/Eau Claire/x.tif", "Counties/WI/Fond du Lac/Façade (1)+[2]@=&%.tif", "x;touch PWNED;`id`$(id)$HOME.tif"]


def test_pegasus_engine_fails_refused_keys_at_preflight_with_the_way_out(tmp_path):
    run, store = folder_run(tmp_path, REFUSED + CARRIED, engine="pegasus")
    result = generate(run, store, WorkflowSettings(key_problem=get_engine("pegasus").key_problem))  # as the tick does
    assert result.jobs == len(CARRIED)
    failed = {f["text"].rsplit(",", 1)[0]: f["reason"] for f in Preflight.load(run.path).failed_sample}
    assert set(failed) == set(REFUSED)
    for key, reason in failed.items():
        assert reason == pegasus_key_problem(key)
        assert "rename the object, or run this manifest with --engine local" in reason
    assert "single quote" in failed[REFUSED[0]] and "#" in failed[REFUSED[1]] and "U+2003" in failed[REFUSED[2]] and "U+00A0" in failed[REFUSED[3]]
    assert "double quote" in failed[REFUSED[4]]
    jobs = load(run.file(RunDir.WORKFLOW))["jobs"]
    assert sorted(j["metadata"]["key"] for j in jobs) == sorted(CARRIED)


def test_local_engine_still_gives_those_keys_jobs(tmp_path):
    run, store = folder_run(tmp_path, REFUSED, engine="local")
    result = generate(run, store, WorkflowSettings(key_problem=get_engine("local").key_problem))
    assert result.jobs == len(REFUSED) and result.failed == []


@pytest.mark.slow
def test_local_engine_converts_keys_the_pegasus_engine_refuses(tmp_path):
    """The way out the refusal names: the same manifest with --engine local converts every row."""
    import rasterio

    from cog_pipeline.pipeline import ScanOptions, scan
    from cog_pipeline.storage.store import StoreConfig

    from . import rasters

    root = tmp_path / "buckets"
    (root / "out").mkdir(parents=True)
    keys = ["O'Brien/x.tif", "a#b/y.tif", "trail\u00a0nbsp/z.tif"]
    for i, key in enumerate(keys):
        assert pegasus_key_problem(key) is not None
        rasters.write(root / "in" / key, rasters.textured(1, 16, 16, seed=i + 1))
    (root / "in" / "odd_raw.csv").write_text("".join(f"{k},1\n" for k in keys), encoding="utf-8")
    report = scan(ScanOptions("in", "out", StoreConfig(local_root=root), tmp_path / "work", engine="local", progress=False, config=config_with(workers=1)))
    assert len(report.reconciled) == 1 and not report.errors
    for key in keys:
        with rasterio.open(root / "out" / key) as cog:
            assert cog.count == 1, key
    assert not list((root / "in").glob("odd_failed-*.csv"))


@pytest.mark.parametrize("bad", [{"site": "s3-site"}, {"identity": "my.id"}, {"site": "Stöö"}])
def test_site_and_identity_names_must_be_word_characters(bad):
    with pytest.raises(ConfigError, match="word characters"):
        config_with(**bad)
