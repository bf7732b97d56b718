"""The declared conversion profile (transformations/profile.py): defaults, overrides by name from the converter's
CLI and environment, the TOML configuration and `scan --cog-profile`, and provenance recording it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cog_pipeline.config import ConfigError, flag_values, load_config
from cog_pipeline.transformations import settings
from cog_pipeline.transformations.convert import convert
from cog_pipeline.transformations.profile import DEFAULT, with_overrides
from tests import rasters
from tests.convert_support import EXECUTABLE


def test_defaults_are_the_seeds_lzw_and_quality_80() -> None:
    assert (DEFAULT.compress, DEFAULT.predictor, DEFAULT.blocksize, DEFAULT.jpeg_quality) == ("LZW", "YES", 512, 80)
    assert DEFAULT.creation_options(2) == {"COMPRESS": "LZW", "PREDICTOR": "YES", "BLOCKSIZE": "512",
                                           "BIGTIFF": "IF_SAFER", "NUM_THREADS": "2"}


@pytest.mark.parametrize("bad", ["compress", "colour=red", "jpeg_quality=0", "jpeg_quality=high",
                                 "blocksize=500", "preview_bands=all"])
def test_bad_overrides_name_the_setting(bad: str) -> None:
    with pytest.raises(ValueError, match="profile setting"):
        with_overrides([bad])


def test_at_most_five_environment_variables_each_documented() -> None:
    assert len(settings.ENV) <= 5
    assert all(name.startswith("COG_PIPELINE_") and s.doc for name, s in settings.ENV.items())


def test_every_environment_variable_the_converter_reads_is_declared() -> None:
    """No module but settings.py names a COG_PIPELINE_ variable it reads from os.environ."""
    import re

    folder = Path(settings.__file__).parent
    for module in folder.glob("*.py"):
        text = module.read_text()
        for name in re.findall(r'env\("(COG_PIPELINE_\w+)"\)', text):
            assert name in settings.ENV, (module.name, name)
        if module.name != "settings.py":
            assert not re.search(r'environ[^\n]*"COG_PIPELINE_', text), module.name


def test_deflate_quality_and_band_rule_by_name_on_the_cli_and_in_the_environment(tmp_path: Path) -> None:
    data = rasters.textured(4, 300, 260)
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB")
    env = {"COG_PIPELINE_PROFILE": "compress=DEFLATE, jpeg_quality=95"}
    proc = subprocess.run([sys.executable, str(EXECUTABLE), str(src), str(tmp_path / "o.tif"),
                           str(tmp_path / "o.jpg"), "--profile", "preview_bands=first", "-v"],
                          capture_output=True, text=True, timeout=120, env={**__import__("os").environ, **env})
    assert proc.returncode == 0, proc.stderr
    with rasters.open_(tmp_path / "o.tif") as ds:
        assert ds.compression.name.upper() == "DEFLATE"
        tags = ds.tags(ns="COG_PIPELINE")
    assert (tags["PROFILE_COMPRESS"], tags["PROFILE_JPEG_QUALITY"], tags["PROFILE_PREVIEW_BANDS"]) == \
        ("DEFLATE", "95", "first")
    np.testing.assert_array_equal(rasters.read(tmp_path / "o.tif"), data)
    with rasters.open_(tmp_path / "o.jpg") as ds:
        assert ds.count == 1  # the "first" band rule
    low = convert(src, tmp_path / "l.tif", tmp_path / "l.jpg", 4, profile=with_overrides(["jpeg_quality=20"]))
    assert low.profile.jpeg_quality == 20
    assert (tmp_path / "l.jpg").stat().st_size < (tmp_path / "o.jpg").stat().st_size / 2


def test_a_bad_environment_profile_is_a_usage_line(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(1, 64, 64))
    proc = subprocess.run([sys.executable, str(EXECUTABLE), str(src), str(tmp_path / "o.tif"), str(tmp_path / "o.jpg")],
                          capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "COG_PIPELINE_PROFILE": "jpeg_quality=loud"})
    assert proc.returncode == 2 and proc.stderr.startswith("USAGE: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "o.tif").exists()


def test_toml_profile_and_flags_reach_the_workflows_converter_environment(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[profile]\ncompress = "DEFLATE"\njpeg_quality = 90\n')
    config = load_config(toml, flag_values({"cog_profile": ("jpeg_quality=70",)}))
    assert config.profile == {"compress": "DEFLATE", "jpeg_quality": "70"}
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, build_transformation_catalog

    settings = WorkflowSettings(config)
    assert settings.profile == ("compress=DEFLATE", "jpeg_quality=70")
    catalog = build_transformation_catalog(settings)
    out = tmp_path / "tc.yml"
    catalog.write(str(out))
    (tr,) = yaml.safe_load(out.read_text())["transformations"]
    assert tr["profiles"]["env"]["COG_PIPELINE_PROFILE"] == "compress=DEFLATE,jpeg_quality=70"
    toml.write_text('[profile]\njpeg_quality = 900\n')
    with pytest.raises(ConfigError, match="jpeg_quality"):
        load_config(toml)


def test_scan_profile_flag_converts_every_row_with_it(tmp_path: Path) -> None:
    """`cog-pipeline scan --cog-profile compress=DEFLATE` on folder buckets, the local engine: the COG is DEFLATE and
    its provenance says so; a bad value is one usage line and claims nothing."""
    import os

    root = tmp_path / "buckets"
    data = rasters.textured(3, 200, 240)
    rasters.write(root / "in" / "a b.tif", data, photometric="RGB")
    (root / "in" / "t_raw.csv").write_text("a b.tif,3\n")
    (root / "out").mkdir()
    base = [sys.executable, "-m", "cog_pipeline", "scan", "--input-bucket", "in", "--output-bucket", "out",
            "--local-root", str(root), "-w", str(tmp_path / "work"), "--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COG_PIPELINE_")}
    bad = subprocess.run([*base, "--cog-profile", "jpeg_quality=0"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "jpeg_quality" in bad.stderr and (root / "in" / "t_raw.csv").exists()
    proc = subprocess.run([*base, "--cog-profile", "compress=DEFLATE"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    with rasters.open_(root / "out" / "a b.tif") as ds:
        assert ds.compression.name.upper() == "DEFLATE"
        assert ds.tags(ns="COG_PIPELINE")["PROFILE_COMPRESS"] == "DEFLATE"
    np.testing.assert_array_equal(rasters.read(root / "out" / "a b.tif"), data)
