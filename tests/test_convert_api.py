"""The in-process API (what long-lived workers call) and provenance embedded in the COG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rio_cogeo.cogeo import cog_validate

from cog_pipeline.transformations.convert import ConversionResult, ConvertOptions, convert
from cog_pipeline.transformations.exit_codes import ConversionError, ExitCode
from cog_pipeline.transformations.validate import builtin_check
from tests import rasters
from tests.convert_support import EXECUTABLE, SYSTEM_PYTHON, needs_osgeo

PROVENANCE = {"RUN": "workflow-run-20261201-101500", "ROW": "Counties/WI/Eau Claire/a%20b#1.tif", "NOTE": "a & <b> \"c\" é"}


def _cli(python: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(EXECUTABLE), *map(str, args)], capture_output=True, text=True, timeout=120)


def _levels(path: Path) -> list[np.ndarray]:
    with rasters.open_(path) as ds:
        count = len(ds.overviews(1))
    out = [rasters.read(path)]
    for level in range(count):
        with rasters.open_(path, overview_level=level) as o:
            out.append(o.read())
    return out


def test_in_process_convert_writes_what_the_executable_writes(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 900, 700), photometric="RGB")
    result = convert(src, tmp_path / "api.tif", tmp_path / "api.jpg", 3, ConvertOptions(threads=1))
    assert isinstance(result, ConversionResult) and result.exit_code == ExitCode.OK
    proc = _cli(sys.executable, src, tmp_path / "cli.tif", tmp_path / "cli.jpg", "--bands", "3", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "api.tif").read_bytes() == (tmp_path / "cli.tif").read_bytes()
    assert (tmp_path / "api.jpg").read_bytes() == (tmp_path / "cli.jpg").read_bytes()


def test_in_process_error_carries_the_executables_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_text("not an image\n")
    with pytest.raises(ConversionError) as info:
        convert(bad, tmp_path / "o.tif", tmp_path / "o.jpg", 1)
    proc = _cli(sys.executable, bad, tmp_path / "o.tif", tmp_path / "o.jpg", "--bands", "1")
    assert info.value.code == ExitCode.INPUT_UNREADABLE == proc.returncode
    assert proc.stderr == info.value.line + "\n"


def test_metadata_is_embedded_in_its_own_domain_with_pixels_unchanged(tmp_path: Path) -> None:
    data = rasters.textured(4, 1100, 1000)
    src = rasters.write(tmp_path / "in.tif", data, tags={"SOURCE": "county flight"})
    plain = convert(src, tmp_path / "plain.tif", tmp_path / "plain.jpg", 4)
    tagged = convert(src, tmp_path / "md.tif", tmp_path / "md.jpg", 4, metadata=PROVENANCE)
    assert tagged.exit_code == plain.exit_code == ExitCode.OK
    with rasters.open_(tmp_path / "md.tif") as ds:
        assert ds.tags(ns="COG_PIPELINE") == {**PROVENANCE, **tagged.profile.as_metadata()}
        assert ds.tags()["SOURCE"] == "county flight"  # the default domain is kept
    for a, b in zip(_levels(tmp_path / "plain.tif"), _levels(tmp_path / "md.tif"), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(rasters.read(tmp_path / "md.tif"), data)
    valid, errors, _ = cog_validate(str(tmp_path / "md.tif"), quiet=True)
    assert valid and not errors, errors
    assert builtin_check(str(tmp_path / "md.tif"))[0] == []


@needs_osgeo
def test_metadata_under_the_system_gdal(tmp_path: Path) -> None:
    data = rasters.textured(3, 1100, 1100)
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB")
    proc = _cli(SYSTEM_PYTHON, src, tmp_path / "md.tif", tmp_path / "md.jpg", "--bands", "3", "-v",
                *[f"--metadata={k}={v}" for k, v in PROVENANCE.items()], "--metadata", "RUN=second wins")
    assert proc.returncode == 0, proc.stderr
    assert "osgeo GDAL" in proc.stdout and "valid (gdal+builtin)" in proc.stdout
    plain = _cli(SYSTEM_PYTHON, src, tmp_path / "plain.tif", tmp_path / "plain.jpg", "--bands", "3")
    assert plain.returncode == 0, plain.stderr
    with rasters.open_(tmp_path / "md.tif") as ds:
        tags = ds.tags(ns="COG_PIPELINE")
        assert {k: tags[k] for k in PROVENANCE} == {**PROVENANCE, "RUN": "second wins"}
        assert tags["PROFILE_COMPRESS"] == "LZW" and tags["PROFILE_JPEG_QUALITY"] == "80"
    for a, b in zip(_levels(tmp_path / "plain.tif"), _levels(tmp_path / "md.tif"), strict=True):
        np.testing.assert_array_equal(a, b)
    assert cog_validate(str(tmp_path / "md.tif"), quiet=True)[0]


@pytest.mark.parametrize("bad", ["NOEQUALS", "=value"])
def test_cli_bad_metadata_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(1, 32, 32))
    proc = _cli(sys.executable, src, tmp_path / "o.tif", tmp_path / "o.jpg", "--metadata", bad)
    assert proc.returncode == ExitCode.USAGE and proc.stderr.startswith("USAGE: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "o.tif").exists()


def test_api_bad_metadata_key_is_usage_and_writes_nothing(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(1, 32, 32))
    with pytest.raises(ConversionError) as info:
        convert(src, tmp_path / "out" / "o.tif", tmp_path / "out" / "o.jpg", metadata={"A KEY": "x"})
    assert info.value.code == ExitCode.USAGE
    assert not (tmp_path / "out").exists()


def test_the_rasterio_backend_loads_without_importing_boto3() -> None:
    """Pool workers convert local files only: boto3 (~19 MiB, ~0.3 CPU-s) is left to the stores that need it."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from cog_pipeline.transformations.backend_rasterio import RasterioBackend\n"
            "RasterioBackend()\n"
            "assert 'rasterio' in sys.modules and 'boto3' not in sys.modules, sorted(sys.modules)\n"
            "import boto3, rasterio.session\n"
            "print('ok', boto3.__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", "boto3"]
