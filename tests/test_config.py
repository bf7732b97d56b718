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
    assert config.data.configuration == "nonsharedfs" and config.data.bypass_input_staging
    assert pegasus_properties(config) == {"pegasus.data.configuration": "nonsharedfs", "pegasus.transfer.bypass.input.staging": "true"}
    assert plan_args(config) == ["--sites", "condorpool", "--output-sites", "storage", "--staging-site", "condorpool=storage"]


def test_file_values_are_used_and_flags_win(tmp_path):
    config = load_config(_write(tmp_path, PROFILE), {"resources.memory_mb": 8192, "dagman.retries": None})
    assert config.resources.memory_mb == 8192  # the flag
    assert config.resources.cores == 2 and config.dagman.retries == 5  # the file (a None flag is "not given")
    kwargs = workflow_settings_kwargs(config)
    assert (kwargs["s3_site"], kwargs["identity"], kwargs["container_image"]) == ("osn", "chtc_cog", "ghcr.io/osgeo/gdal:ubuntu-full-3.9.0")
    assert pegasus_properties(config)["pegasus.mode"] == "production"
    profiles = condor_profiles(config)
    assert profiles["+ProjectName"] == '"cog"' and "> 7200" in profiles["periodic_remove"]


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
