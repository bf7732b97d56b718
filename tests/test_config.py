"""The settings table (cog_pipeline.config): defaults, the TOML file, the environment, flags, show(), the docs."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from cog_pipeline.config import SETTINGS, ConfigError, load_config, settings_table, show

REPO = Path(__file__).resolve().parent.parent

PROFILE = """
[container]
image = "ghcr.io/osgeo/gdal:ubuntu-full-3.9.0"

[resources]
cores = 2
memory_mb = 4096
disk_mb = 20000
wall_time_s = 7200

[s3]
site = "osn"
identity = "chtc_cog"

[dagman]
retries = 5

[local]
max_pixels = 1000000

[pegasus.properties]
"pegasus.mode" = "production"

[condor.profiles]
"+ProjectName" = '"cog"'
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_declared_ones_and_read_from_s3_on_the_workers():
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings

    config = load_config(None, environ={})
    assert all(config.value(dotted) == item.default for dotted, item in SETTINGS.items())
    assert config.origins == {}
    settings = WorkflowSettings(config)
    assert settings.data_configuration_for(local_mode=False) == "nonsharedfs"  # S3 buckets
    assert settings.data_configuration_for(local_mode=True) == "condorio"  # folder buckets


def test_layers_file_then_environment_then_flags(tmp_path):
    path = _write(tmp_path, PROFILE)
    config = load_config(path, {"resources.memory_mb": 8192, "dagman.retries": None},
                         environ={"COG_PIPELINE_MAX_PIXELS": "2000", "COG_PIPELINE_JOB_TIMEOUT": "30"})
    assert config.resources.memory_mb == 8192  # the flag over the file's 4096
    assert config.resources.cores == 2 and config.dagman.retries == 5  # the file (a None flag is "not given")
    assert config.local.max_pixels == 2000 and config.local.job_timeout_s == 30.0  # the environment over the file
    assert config.origins["resources.memory_mb"] == "flag --memory"
    assert config.origins["resources.cores"] == f"file {path}"
    assert config.origins["local.max_pixels"] == "env COG_PIPELINE_MAX_PIXELS"
    flagged = load_config(path, {"local.max_pixels": 7}, environ={"COG_PIPELINE_MAX_PIXELS": "2000"})
    assert flagged.local.max_pixels == 7  # a flag wins over the environment


def test_a_manifest_glob_gets_its_own_resources(tmp_path):
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings

    text = PROFILE + '\n[manifests."Counties/Big/*"]\nmemory_mb = 4096\nwall_time_s = 20000\n'
    config = load_config(_write(tmp_path, text))
    assert config.resources_for("Counties/Big/x_raw.csv").memory_mb == 4096
    assert config.resources_for("Counties/Big/x_raw.csv").cores == 2  # the rest as [resources]
    assert config.resources_for("Counties/Small/x_raw.csv") == config.resources
    settings = WorkflowSettings(config)
    big = settings.for_manifest("Counties/Big/x_raw.csv").config.resources
    assert (big.memory_mb, big.wall_time_s, big.cores) == (4096, 20000, 2)
    assert settings.for_manifest("Counties/Small/x_raw.csv") is settings
    with pytest.raises(ConfigError, match="manifests"):
        load_config(_write(tmp_path, '[manifests]\nmemory_mb = 4096\n'))
    with pytest.raises(ConfigError, match="resources.memory_mb"):
        load_config(_write(tmp_path, '[manifests."a*"]\nmemory_mb = "lots"\n'))


def test_disk_request_grows_with_the_input():
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings

    settings = WorkflowSettings(load_config(None, {"resources.disk_mb": 2048}))
    assert settings.disk_mb_for(None) == settings.disk_mb_for(10 << 20) == 2048  # the floor
    assert settings.disk_mb_for(1600 << 20) == 4 * 1600 + 256  # a 1.6 GB tile


def test_no_container_flag_runs_without_an_image(tmp_path):
    config = load_config(_write(tmp_path, PROFILE), {"container.enabled": False})
    assert config.container.image and config.container_image == ""


@pytest.mark.parametrize(
    ("text", "flags", "environ", "setting"),
    [
        ('[s3]\nsite = "s3-site"\n', {}, {}, "s3.site"),
        ("", {"s3.identity": "cog.user"}, {}, "s3.identity"),
        ("[resources]\nmemory_mb = 0\n", {}, {}, "resources.memory_mb"),
        ('[resources]\ncores = "two"\n', {}, {}, "resources.cores"),
        ("[local]\njob_timeout_s = true\n", {}, {}, "local.job_timeout_s"),
        ('[data]\nconfiguration = "sharedfs"\n', {}, {}, "data.configuration"),
        ("[dagman]\nretry = 3\n", {}, {}, "dagman.retry"),
        ("[backoff]\nbase_s = 600\nmax_s = 60\n", {}, {}, "backoff.max_s"),
        ('[crondor]\nschedule = "every day"\n', {}, {}, "crondor.schedule"),
        ('[publish]\nstac_base_url = "ftp://x"\n', {}, {}, "publish.stac_base_url"),
        ("[claim]\nstale_marker_age_s = 5\n", {}, {}, "claim.stale_marker_age_s"),
        ("", {}, {"COG_PIPELINE_MAX_PIXELS": "lots"}, "local.max_pixels"),
        ("", {"nonsense.x": 1}, {}, "nonsense.x"),
        ("[resources\n", {}, {}, "not valid TOML"),
        ("[nonsense]\n", {}, {}, "[nonsense]"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_setting(tmp_path, text, flags, environ, setting):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text), flags, environ=environ)
    message = str(err.value)
    assert setting in message and "\n" not in message


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(tmp_path / "absent.toml")


def test_show_is_toml_that_loads_back_to_the_same_settings_and_hides_secrets(tmp_path):
    text = PROFILE.replace(
        '"pegasus.mode" = "production"', '"pegasus.mode" = "production"\n"pegasus.catalog.secret_key" = "s3cr3t-value"'
    ) + '\n[notify]\nwebhook_url = "https://hooks.example.org/T0KEN"\n[manifests."Counties/Big/*"]\nmemory_mb = 8192\n'
    config = load_config(_write(tmp_path, text), {"resources.cores": 3, "profile.compress": "DEFLATE"}, environ={})
    out = show(config)
    assert "s3cr3t-value" not in out and "T0KEN" not in out and "<hidden>" in out
    assert re.search(r"^cores = 3  # flag --cpus$", out, re.M) and re.search(r'^site = "osn"  # file ', out, re.M)
    parsed = tomllib.loads(out)  # valid TOML
    assert parsed["resources"]["cores"] == 3 and parsed["profile"] == {"compress": "DEFLATE"}
    assert parsed["manifests"]["Counties/Big/*"]["memory_mb"] == 8192
    # Loaded back (secrets aside), it is the same configuration.
    reloaded = load_config(_write(tmp_path, out.replace('"<set, hidden>"', '""').replace('"<hidden>"', '"x"')), environ={})
    for dotted in SETTINGS:
        if dotted != "notify.webhook_url":
            assert reloaded.value(dotted) == config.value(dotted), dotted
    assert reloaded.manifests == config.manifests and reloaded.profile == config.profile


def test_the_docs_table_is_the_declared_table():
    """docs/configuration.md shows exactly what the declarations say (`cog-pipeline config docs` prints it)."""
    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert settings_table() in doc
    assert all(f"`{dotted}`" in doc for dotted in SETTINGS)


def test_environment_only_settings_are_refused_in_the_file_and_read_where_used(tmp_path, monkeypatch):
    from cog_pipeline.run.claim import stale_marker_age

    with pytest.raises(ConfigError, match="COG_PIPELINE_LOCAL_INPROCESS only"):
        load_config(_write(tmp_path, "[local]\nin_process = false\n"))
    # A bad value is one line when the configuration loads, before anything runs (not a failure inside a worker).
    with pytest.raises(ConfigError, match="local.in_process"):
        load_config(None, environ={"COG_PIPELINE_LOCAL_INPROCESS": "sometimes"})
    assert load_config(None, environ={"COG_PIPELINE_LOCAL_INPROCESS": "0"}).local.in_process is False
    monkeypatch.setenv("COG_PIPELINE_STALE_MARKER_AGE", "2.5")
    assert stale_marker_age().total_seconds() == 2.5
    monkeypatch.setenv("COG_PIPELINE_STALE_MARKER_AGE", "0")
    with pytest.raises(ConfigError, match="claim.stale_marker_age_s"):
        stale_marker_age()


def test_every_section_is_a_frozen_table_of_declared_settings():
    from cog_pipeline import config as config_mod

    for section, cls in config_mod.SECTIONS.items():
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{section}.{f.name} has no doc line"


def test_profile_drives_schema_valid_generated_files(tmp_path, pegasus_schema_dir):
    """The generator, given the config's settings, writes files the Pegasus 5.0 schemas accept and that
    carry the profile's values (S3 site name, resources, image)."""
    import yaml

    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate
    from cog_pipeline.run.rundir import RunDir
    from cog_pipeline.storage.store import StoreConfig, open_store

    from .test_replicas import schema_validator
    from .test_workflow_gen import PRESENT, make_run

    root = tmp_path / "buckets"
    for key in PRESENT:
        (root / "in" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "in" / key).write_bytes(b"tif")
    (root / "out").mkdir(parents=True)
    store_config = StoreConfig(local_root=root)
    run = make_run(tmp_path, store_config)
    config = load_config(_write(tmp_path, PROFILE))
    generate(run, open_store("in", store_config), WorkflowSettings(config))
    for name, schema in [(RunDir.WORKFLOW, "wf-5.0.yml"), (RunDir.REPLICAS, "rc-5.0.yml"),
                         (RunDir.TRANSFORMATIONS, "tc-5.0.yml"), (RunDir.SITES, "sc-5.0.yml")]:
        doc = yaml.safe_load(run.file(name).read_text(encoding="utf-8"))
        errors = list(schema_validator(pegasus_schema_dir, schema).iter_errors(doc))
        assert not errors, f"{name}: {errors[0].message}"
    sites = {s["name"]: s for s in yaml.safe_load(run.file(RunDir.SITES).read_text())["sites"]}
    assert "osn" in sites and sites["condorpool"]["profiles"]["pegasus"]["memory"] == 4096
    assert sites["condorpool"]["profiles"]["condor"]["+ProjectName"] == '"cog"'
    props = run.file(RunDir.PROPERTIES).read_text()
    # folder buckets (one machine) keep condorio under "auto"; S3 buckets get nonsharedfs (test_pegasus_wiring.py)
    assert "pegasus.data.configuration = condorio" in props and "pegasus.mode = production" in props
    tc = run.file(RunDir.TRANSFORMATIONS).read_text()
    assert "ubuntu-full-3.9.0" in tc
    args = run.load().pegasus.plan_args
    assert args[args.index("--output-sites") + 1] == "osn" and "--staging-site" not in args
