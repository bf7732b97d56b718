"""`--config FILE` on scan / crondor start / workflow_gen, and `cog-pipeline config show`."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from cog_pipeline.cli import config as config_cli
from cog_pipeline.config import SETTINGS, flag_argv

from cog_pipeline.cli.main import main as cli
from cog_pipeline.crondor.submit import CrondorSpec, render_description, submit_commands

from .test_crondor import condor_argv

PROFILE = """
[resources]
memory_mb = 4096
wall_time_s = 3600

[dagman]
retries = 6

[s3]
site = "osn"

[pegasus.properties]
"pegasus.mode" = "production"
"my.secret_token" = "do-not-print-me"
"""


def profile(tmp_path: Path, text: str = PROFILE) -> Path:
    path = tmp_path / "cog-pipeline.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_config_show_prints_file_values_with_flags_winning_and_no_secret(tmp_path):
    path = profile(tmp_path)
    result = CliRunner().invoke(cli, ["config", "show", "--config", str(path), "--retries", "2", "--no-container"])
    assert result.exit_code == 0, result.output
    shown = tomllib.loads(result.output)
    assert shown["resources"]["memory_mb"] == 4096 and shown["s3"]["site"] == "osn"
    assert shown["dagman"]["retries"] == 2  # the flag wins over the file's 6
    assert shown["container"]["enabled"] is False
    assert shown["pegasus"]["properties"]["pegasus.mode"] == "production"
    assert "do-not-print-me" not in result.output and shown["pegasus"]["properties"]["my.secret_token"] == "<hidden>"
    lines = set(result.output.splitlines())
    assert "retries = 2  # flag --retries" in lines and f"memory_mb = 4096  # file {path}" in lines


def test_config_show_without_a_file_prints_the_defaults(tmp_path):
    result = CliRunner().invoke(cli, ["config", "show"])
    assert result.exit_code == 0
    assert 'configuration = "auto"  # default' in result.output and "retries = 3  # default" in result.output


def test_config_docs_prints_the_table_the_docs_hold():
    result = CliRunner().invoke(cli, ["config", "docs"])
    assert result.exit_code == 0
    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert result.output in doc and result.output.count("\n") == len(SETTINGS) + 2


FLAGGED = [item for item in SETTINGS.values() if item.flags and item.section not in ("local", "crondor")]


def _example(item):
    """A value of the setting's type other than its default, within its bounds."""
    if item.type is bool:
        return not item.default
    if item.choices:
        return next(c for c in item.choices if c != item.default)
    if item.type in (int, float):
        return item.type(item.default + 3)
    return {"publish.stac_base_url": "https://cogs.example.org/", "s3.site": "osn", "s3.identity": "carto"}.get(item.dotted, "example.org/gdal:9")


@pytest.mark.parametrize("item", FLAGGED, ids=[i.dotted for i in FLAGGED])
def test_every_setting_flag_given_to_the_crondor_reaches_its_ticks(tmp_path, item):
    """`crondor start FLAG VALUE` records the flag in the tick's command line, and that command line, run as a
    scan, has the setting: every setting a scan takes can be given to the Crondor."""
    value = _example(item)
    needs = {"publish.stac": True} if item.dotted == "publish.stac_base_url" else {}  # a base URL needs --stac
    argv_flag = flag_argv({item.dotted: value, **needs})
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, ["crondor", "start", "--input-bucket", "cog-in", "--output-bucket", "cog-out", "-w", str(work), *argv_flag, "--dry-run"])
    assert result.exit_code == 0, result.output
    argv = condor_argv(submit_commands((work / "crondor.sub").read_text())["arguments"])
    assert all(a in argv for a in argv_flag)
    seen = {}
    original = config_cli.scan_config

    def spy(kw):
        seen["config"] = original(kw)
        return seen["config"]

    root = tmp_path / "buckets"
    (root / "cog-in").mkdir(parents=True)
    (root / "cog-out").mkdir(parents=True)
    tick = [a for a in argv if a != "pegasus"]
    tick[tick.index("--engine")] = "--dry-run"  # the tick's scan, without Pegasus, changing nothing
    import cog_pipeline.cli.main as cli_mod

    cli_mod.scan_config, saved = spy, cli_mod.scan_config
    try:
        ran = CliRunner().invoke(cli, [*tick, "--local-root", str(root)])
    finally:
        cli_mod.scan_config = saved
    assert ran.exit_code == 0, ran.output
    assert seen["config"].value(item.dotted) == value


def test_bad_value_is_one_line_naming_the_setting_exit_2(tmp_path):
    for text, setting in (('[s3]\nidentity = "my-id"\n', "s3.identity"), ("[resources]\nmemory_mb = -1\n", "resources.memory_mb"), ("[dagman]\nretry = 1\n", "dagman.retry")):
        result = CliRunner().invoke(cli, ["config", "show", "--config", str(profile(tmp_path, text))])
        assert result.exit_code == 2, result.output
        message = result.output.strip()
        assert "\n" not in message and message.startswith("error: ") and setting in message, message
        assert "Traceback" not in message


def test_scan_reads_the_config_file(tmp_path):
    root = tmp_path / "buckets"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir(parents=True)
    (root / "in" / "batch_raw.csv").write_text("missing/x.tif,1\n")
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, ["scan", "--input-bucket", "in", "--output-bucket", "out", "--local-root", str(root), "-w", str(work), "--config", str(profile(tmp_path, "[dagman]\nretries = 6\nmax_running = 77\n")), "--quiet"])
    assert result.exit_code == 0, result.output
    (run,) = work.glob("workflow-run-*")
    props = (run / "pegasus.properties").read_text()
    assert "dagman.retry = 6" in props and "dagman.maxjobs = 77" in props


def test_scan_with_a_bad_config_claims_nothing(tmp_path):
    root = tmp_path / "buckets"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir(parents=True)
    (root / "in" / "batch_raw.csv").write_text("x.tif,1\n")
    result = CliRunner().invoke(cli, ["scan", "--input-bucket", "in", "--output-bucket", "out", "--local-root", str(root), "-w", str(tmp_path / "w"), "--config", str(profile(tmp_path, '[data]\nconfiguration = "sharedfs"\n'))])
    assert result.exit_code == 2 and "data.configuration" in result.output
    assert (root / "in" / "batch_raw.csv").exists()


def test_crondor_records_the_config_path_not_its_settings(tmp_path):
    path = profile(tmp_path)
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, ["crondor", "start", "--input-bucket", "cog-in", "--output-bucket", "cog-out", "-w", str(work), "--config", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    argv = condor_argv(submit_commands((work / "crondor.sub").read_text())["arguments"])
    assert argv[argv.index("--config") + 1] == str(path.resolve())
    assert "-m" not in argv and "--retries" not in argv and "4096" not in argv  # nothing re-serialised


def test_crondor_start_refuses_a_bad_config(tmp_path):
    result = CliRunner().invoke(cli, ["crondor", "start", "--input-bucket", "a", "--output-bucket", "b", "-w", str(tmp_path / "w"), "--config", str(profile(tmp_path, "[backoff]\nbase_s = 0\n")), "--dry-run"])
    assert result.exit_code == 2 and "backoff.base_s" in result.output
    assert not (tmp_path / "w" / "crondor.sub").exists()


def test_crondor_tick_with_config_is_a_command_line_scan_accepts(tmp_path):
    path = profile(tmp_path, "[dagman]\nretries = 4\n")
    root = tmp_path / "buckets"
    (root / "cog-in").mkdir(parents=True)
    (root / "cog-out").mkdir(parents=True)
    spec = CrondorSpec("cog-in", "cog-out", tmp_path / "work", local_root=root, config=path.resolve(), command=["cog-pipeline"])
    argv = condor_argv(submit_commands(render_description(spec))["arguments"])
    result = CliRunner().invoke(cli, [*argv, "--dry-run"])
    assert result.exit_code == 0, result.output


def test_the_committed_example_config_is_valid_and_shown(tmp_path):
    example = Path(__file__).resolve().parent.parent / "pegasus" / "cog-pipeline.toml"
    result = CliRunner().invoke(cli, ["config", "show", "--config", str(example)])
    assert result.exit_code == 0, result.output
    shown = tomllib.loads(result.output)
    assert shown["resources"]["wall_time_s"] == 7200 and shown["condor"]["profiles"]["+ProjectName"] == '"cog"'
    assert shown["local"]["workers"] == 0 and shown["publish"]["stac"] is False
