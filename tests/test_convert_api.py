"""The in-process API (what long-lived workers call) and provenance embedded in the COG."""

from __future__ import annotations

import os
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
    assert "osgeo GDAL" in proc.stdout and ", valid; " in proc.stdout
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


def test_provenance_slot_is_filled_in_a_bigtiff_cog(tmp_path: Path) -> None:
    """The slot is found and filled by bytes, whatever the TIFF flavour: a BigTIFF COG from GDAL's COG driver."""
    import rasterio
    import rasterio.shutil

    from cog_pipeline.transformations.provenance import fill_slot, slot_vrt_metadata

    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 600, 700), photometric="RGB")
    rasterio.shutil.copy(src, tmp_path / "in.vrt", driver="VRT")
    text = (tmp_path / "in.vrt").read_text()
    head = text.index(">") + 1
    (tmp_path / "in.vrt").write_text(text[:head] + slot_vrt_metadata(PROVENANCE) + text[head:])
    rasterio.shutil.copy(tmp_path / "in.vrt", tmp_path / "big.tif", driver="COG", COMPRESS="LZW", BIGTIFF="YES")
    assert (tmp_path / "big.tif").read_bytes()[:4] == b"II+\x00"
    fill_slot(str(tmp_path / "big.tif"), PROVENANCE)
    with rasterio.open(tmp_path / "big.tif") as ds:
        assert ds.tags(ns="COG_PIPELINE") == PROVENANCE
        assert "COG_PIPELINE_SLOT" not in ds.tags()
    assert builtin_check(str(tmp_path / "big.tif"))[0] == []
    np.testing.assert_array_equal(rasters.read(tmp_path / "big.tif"), rasters.read(src))


@pytest.mark.slow
def test_a_4_band_20000_square_converts_with_its_lineage_under_1_gb(tmp_path: Path, shared_testdata: Path) -> None:
    """Real content (the RGBA Landsat scene tiled to 20000x20000), the executable in its own process: lineage
    embedded, a valid COG, and peak RSS under the job's 1 GB request."""
    import rasterio
    from rasterio.windows import Window

    scene = rasters.read(shared_testdata / "rasterio" / "RGBA.byte.tif")
    size = 20000
    src = tmp_path / "big.tif"
    with rasterio.open(src, "w", driver="GTiff", width=size, height=size, count=4, dtype="uint8", tiled=True,
                       blockxsize=512, blockysize=512, photometric="RGB", alpha="YES", BIGTIFF="YES") as out:
        band_rows = np.tile(scene, (1, 1, -(-size // scene.shape[2])))[:, :, :size]
        for y in range(0, size, 2048):
            rows = min(2048, size - y)
            block = np.take(band_rows, np.arange(y, y + rows) % scene.shape[1], axis=1)
            out.write(block, window=Window(0, y, size, rows))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COG_PIPELINE_")}
    peak = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-S", "-c", peak, sys.executable, str(EXECUTABLE), str(src),
                           str(tmp_path / "o.tif"), str(tmp_path / "o.jpg"), "--bands", "4",
                           *[f"--metadata={k}={v}" for k, v in PROVENANCE.items()]],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) / 1024 < 1024
    with rasterio.open(tmp_path / "o.tif") as ds:
        tags = ds.tags(ns="COG_PIPELINE")
        assert {k: tags[k] for k in PROVENANCE} == PROVENANCE and tags["PROFILE_COMPRESS"] == "LZW"
        assert (ds.width, ds.height, ds.count) == (size, size, 4)
        np.testing.assert_array_equal(ds.read(window=Window(19000, 19000, 500, 500)),
                                      _window(src, Window(19000, 19000, 500, 500)))
    assert builtin_check(str(tmp_path / "o.tif"))[0] == []


def _window(path: Path, window) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(window=window)
