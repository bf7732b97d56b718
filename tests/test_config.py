"""The production configuration file: defaults, the TOML profile, CLI overrides, one-line errors, show()."""

from __future__ import annotations

from pathlib import Path

import pytest

from cog_pipeline.config import (
    ConfigError,
    condor_profiles,
    load_config,
    pegasus_properties,
    plan_args,
    show,
    workflow_settings_kwargs,
)

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

[pegasus.properties]
"pegasus.mode" = "production"

[condor.profiles]
"+ProjectName" = '"cog"'
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_read_from_s3_on_the_workers():
    config = load_config(None)
    assert config.data.configuration == "auto" and config.data.bypass_input_staging  # S3 buckets: nonsharedfs
    assert pegasus_properties(config) == {"pegasus.data.configuration": "nonsharedfs", "pegasus.transfer.bypass.input.staging": "true"}
    assert plan_args(config) == ["--sites", "condorpool", "--output-sites", "storage", "--staging-site", "condorpool=storage"]


def test_file_values_are_used_and_flags_win(tmp_path):
    config = load_config(_write(tmp_path, PROFILE), {"resources.memory_mb": 8192, "dagman.retries": None})
    assert config.resources.memory_mb == 8192  # the flag
    assert config.resources.cores == 2 and config.dagman.retries == 5  # the file (a None flag is "not given")
    kwargs = workflow_settings_kwargs(config)
    assert (kwargs["s3_site"], kwargs["identity"], kwargs["container_image"]) == ("osn", "chtc_cog", "ghcr.io/osgeo/gdal:ubuntu-full-3.9.0")
    assert pegasus_properties(config)["pegasus.mode"] == "production"
    assert condor_profiles(config) == {"+ProjectName": '"cog"'}  # the generator adds its own rules
    assert kwargs["wall_time_s"] == 7200


def test_a_manifest_glob_gets_its_own_resources(tmp_path):
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings

    text = PROFILE + '\n[manifests."Counties/Big/*"]\nmemory_mb = 4096\nwall_time_s = 20000\n'
    config = load_config(_write(tmp_path, text))
    assert config.resources_for("Counties/Big/x_raw.csv").memory_mb == 4096
    assert config.resources_for("Counties/Big/x_raw.csv").cores == 2  # the rest as [resources]
    assert config.resources_for("Counties/Small/x_raw.csv") == config.resources
    settings = WorkflowSettings(**workflow_settings_kwargs(config))
    big = settings.for_manifest("Counties/Big/x_raw.csv")
    assert (big.memory_mb, big.wall_time_s, big.cpus) == (4096, 20000, 2)
    assert settings.for_manifest("Counties/Small/x_raw.csv") is settings
    with pytest.raises(ConfigError, match="manifests"):
        load_config(_write(tmp_path, '[manifests]\nmemory_mb = 4096\n'))
    with pytest.raises(ConfigError, match="resources.memory_mb"):
        load_config(_write(tmp_path, '[manifests."a*"]\nmemory_mb = "lots"\n'))


def test_disk_request_grows_with_the_input():
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings

    settings = WorkflowSettings(disk_mb=2048)
    assert settings.disk_mb_for(None) == settings.disk_mb_for(10 << 20) == 2048  # the floor
    assert settings.disk_mb_for(1600 << 20) == 4 * 1600 + 256  # a 1.6 GB tile


def test_no_container_flag_runs_without_an_image(tmp_path):
    config = load_config(_write(tmp_path, PROFILE), {"container.enabled": False})
    assert workflow_settings_kwargs(config)["container_image"] == ""


def test_condorio_keeps_the_staging_site_local(tmp_path):
    config = load_config(_write(tmp_path, '[data]\nconfiguration = "condorio"\n'))
    assert "--staging-site" not in plan_args(config)
    assert pegasus_properties(config) == {"pegasus.data.configuration": "condorio"}


@pytest.mark.parametrize(
    ("text", "overrides", "setting"),
    [
        ('[s3]\nsite = "s3-site"\n', {}, "s3.site"),
        ("", {"s3.identity": "cog.user"}, "s3.identity"),
        ("[resources]\nmemory_mb = 0\n", {}, "resources.memory_mb"),
        ('[resources]\ncores = "two"\n', {}, "resources.cores"),
        ('[data]\nconfiguration = "sharedfs"\n', {}, "data.configuration"),
        ("[dagman]\nretry = 3\n", {}, "dagman.retry"),
        ("[backoff]\nbase_s = 600\nmax_s = 60\n", {}, "backoff.max_s"),
        ("[resources\n", {}, "not valid TOML"),
        ("[nonsense]\n", {}, "[nonsense]"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_setting(tmp_path, text, overrides, setting):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text), overrides)
    message = str(err.value)
    assert setting in message and "\n" not in message


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(tmp_path / "absent.toml")


def test_show_prints_effective_settings_and_hides_secrets(tmp_path):
    text = PROFILE.replace(
        '"pegasus.mode" = "production"', '"pegasus.mode" = "production"\n"pegasus.catalog.secret_key" = "s3cr3t-value"'
    )
    config = load_config(_write(tmp_path, text), {"resources.cores": 3})
    out = show(config)
    assert "resources.cores = 3" in out and "s3.site = 'osn'" in out and "pegasus.properties.pegasus.mode = 'production'" in out
    assert "s3cr3t-value" not in out and "<hidden>" in out


def test_profile_drives_schema_valid_generated_files(tmp_path, pegasus_schema_dir):
    """The generator, given the config's settings, writes files the Pegasus 5.0 schemas accept and that
    carry the profile's values (nonsharedfs + bypass, S3 site name, resources, image)."""
    import yaml

    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate
    from cog_pipeline.rundir import RunDir
    from cog_pipeline.store import StoreConfig, open_store

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
    generate(run, open_store("in", store_config), WorkflowSettings(**workflow_settings_kwargs(config)))
    for name, schema in [(RunDir.WORKFLOW, "wf-5.0.yml"), (RunDir.REPLICAS, "rc-5.0.yml"),
                         (RunDir.TRANSFORMATIONS, "tc-5.0.yml"), (RunDir.SITES, "sc-5.0.yml")]:
        doc = yaml.safe_load(run.file(name).read_text(encoding="utf-8"))
        errors = list(schema_validator(pegasus_schema_dir, schema).iter_errors(doc))
        assert not errors, f"{name}: {errors[0].message}"
    sites = {s["name"]: s for s in yaml.safe_load(run.file(RunDir.SITES).read_text())["sites"]}
    assert "osn" in sites and sites["condorpool"]["profiles"]["pegasus"]["memory"] == 4096
    props = run.file(RunDir.PROPERTIES).read_text()
    # folder buckets (one machine) keep condorio under "auto"; S3 buckets get nonsharedfs (test_pegasus_wiring.py)
    assert "pegasus.data.configuration = condorio" in props and "pegasus.mode = production" in props
    tc = run.file(RunDir.TRANSFORMATIONS).read_text()
    assert "ubuntu-full-3.9.0" in tc
    args = run.load().pegasus.plan_args
    assert args[args.index("--output-sites") + 1] == "osn" and "--staging-site" not in args
