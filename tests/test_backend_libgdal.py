"""The venv's converter backend: rasterio's libgdal through GDAL's C API (backend_libgdal.py).

Each behaviour is checked against rasterio's own reading of the same file (the other backend of the venv,
on the same libgdal), so the two must agree field for field and pixel for pixel.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from rasterio.enums import ColorInterp

from cog_pipeline.transformations.backend_libgdal import CONVERTER_DRIVERS, LibgdalBackend
from cog_pipeline.transformations.backend_rasterio import RasterioBackend
from cog_pipeline.transformations.exit_codes import GdalFailure
from tests import rasters


@pytest.fixture(scope="module")
def lean() -> LibgdalBackend:
    return LibgdalBackend()


@pytest.fixture(scope="module")
def rio() -> RasterioBackend:
    return RasterioBackend()


def _rgba(tmp_path: Path) -> Path:
    return rasters.write(tmp_path / "rgba.tif", rasters.textured(4, 90, 70), photometric="RGB", alpha="YES",
                         tiled=True, blockxsize=32, blockysize=32)


def _uint16_nodata(tmp_path: Path) -> Path:
    return rasters.write(tmp_path / "u16.tif", rasters.textured(1, 40, 60, dtype="uint16"), nodata=7)


def _palette(tmp_path: Path) -> Path:
    return rasters.write(tmp_path / "pal.tif", rasters.textured(1, 30, 30), crs=None, transform=None,
                         colormap={0: (0, 0, 0, 255), 1: (255, 0, 0, 255), 7: (1, 2, 3, 4)})


def _masked(tmp_path: Path) -> Path:
    mask = np.zeros((50, 50), dtype="uint8")
    mask[10:40, 5:45] = 255
    return rasters.write(tmp_path / "masked.tif", rasters.textured(3, 50, 50), photometric="RGB", mask=mask)


def _float_with_overviews(tmp_path: Path) -> Path:
    path = rasters.write(tmp_path / "f32.tif", rasters.textured(2, 128, 96, dtype="float32"))
    with rasters.open_(path, mode="r+") as ds:
        ds.build_overviews([2, 4])
    return path


MAKERS = [_rgba, _uint16_nodata, _palette, _masked, _float_with_overviews]


@pytest.mark.parametrize("make", MAKERS, ids=lambda f: f.__name__.strip("_"))
def test_info_is_what_rasterio_reads(tmp_path: Path, lean: LibgdalBackend, rio: RasterioBackend, make) -> None:
    path = str(make(tmp_path))
    assert lean.info(path) == rio.info(path)
    assert lean.info(path, overviews=False) == rio.info(path, overviews=False)


def test_an_ungeoreferenced_file_is_not_georeferenced(tmp_path: Path, lean: LibgdalBackend) -> None:
    plain = rasters.write(tmp_path / "plain.tif", rasters.textured(1, 8, 8), crs=None, transform=None)
    placed = rasters.write(tmp_path / "placed.tif", rasters.textured(1, 8, 8))
    assert (lean.info(str(plain)).georeferenced, lean.info(str(placed)).georeferenced) == (False, True)


def test_the_palette_is_what_rasterio_reads(tmp_path: Path, lean: LibgdalBackend, rio: RasterioBackend) -> None:
    path = str(_palette(tmp_path))
    got = lean.palette(path)
    assert got == rio.palette(path)
    assert got[7] == (1, 2, 3, 255)  # GeoTIFF palettes hold no alpha


@pytest.mark.parametrize("make", MAKERS, ids=lambda f: f.__name__.strip("_"))
def test_pixels_read_are_rasterios(tmp_path: Path, lean: LibgdalBackend, rio: RasterioBackend, make) -> None:
    path = str(make(tmp_path))
    count = lean.info(path).count
    bands = list(range(1, count + 1))
    for kwargs in ({}, {"window": (3, 5, 20, 11)}, {"out_shape": (9, 7)}, {"masks": True}):
        got, want = lean.read(path, bands, **kwargs), rio.read(path, bands, **kwargs)
        assert got.dtype == want.dtype and got.shape == want.shape, kwargs
        np.testing.assert_array_equal(got, want)


def test_complex_integers_are_read_as_complex_floats(tmp_path: Path, lean: LibgdalBackend) -> None:
    data = (rasters.textured(1, 16, 16, dtype="int16") + 1j * 3).astype("complex64")
    path = rasters.write(tmp_path / "c.tif", data.astype("complex64"))
    got = lean.read(str(path), [1])
    assert got.dtype == np.complex64
    np.testing.assert_array_equal(got, data)


def test_band_checksums_are_gdals(tmp_path: Path, lean: LibgdalBackend, rio: RasterioBackend) -> None:
    path = str(_masked(tmp_path))
    sums, msums = lean.checksums(path)
    assert sums == rio.checksums(path)[0]
    assert len(msums) == 3 and len(set(msums)) == 1  # one per-dataset mask, summed for each band


def test_a_missing_file_fails_with_gdals_own_reason(tmp_path: Path, lean: LibgdalBackend) -> None:
    with pytest.raises(GdalFailure) as info:
        lean.info(str(tmp_path / "nowhere.tif"))
    assert "No such file or directory" in str(info.value)


def test_a_file_that_is_not_a_raster_fails_with_a_reason(tmp_path: Path, lean: LibgdalBackend) -> None:
    bad = tmp_path / "text.tif"
    bad.write_text("not a tiff\n")
    with pytest.raises(GdalFailure) as info:
        lean.info(str(bad))
    assert str(info.value)


def test_keys_with_any_character_open(tmp_path: Path, lean: LibgdalBackend) -> None:
    path = rasters.write(tmp_path / "Eau Claire a%20b #?é.tif", rasters.textured(1, 8, 8))
    assert lean.info(str(path)).width == 8


def test_each_thread_collects_only_its_own_messages(tmp_path: Path, lean: LibgdalBackend) -> None:
    """The JPEG thread and the COG thread convert side by side; a message must reach the thread that caused it."""
    wrong: list[str] = []

    def fail_many(tag: str) -> None:
        for i in range(60):
            try:
                lean.info(str(tmp_path / f"{tag}-{i}.tif"))
            except GdalFailure as exc:
                if any(f"{tag}-{i}.tif" not in m for m in exc.messages) or not exc.messages:
                    wrong.append(str(exc.messages))

    threads = [threading.Thread(target=fail_many, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_a_failed_copy_names_gdals_reason_and_leaves_the_process_working(tmp_path: Path,
                                                                       lean: LibgdalBackend) -> None:
    src = str(_rgba(tmp_path))
    with pytest.raises(GdalFailure) as info:
        lean.create_copy("GTiff", src, str(tmp_path / "no" / "such" / "dir" / "o.tif"), {})
    assert str(info.value)
    lean.create_copy("GTiff", src, str(tmp_path / "o.tif"), {"COMPRESS": "LZW"})
    np.testing.assert_array_equal(rasters.read(tmp_path / "o.tif"), rasters.read(Path(src)))


def test_config_options_round_trip(lean: LibgdalBackend) -> None:
    lean.set_config("COG_PIPELINE_TEST_OPTION", "x y")
    assert lean.get_config("COG_PIPELINE_TEST_OPTION") == "x y"
    lean.set_config("COG_PIPELINE_TEST_OPTION", None)
    assert lean.get_config("COG_PIPELINE_TEST_OPTION") is None
    before = lean.get_cachemax()
    try:
        lean.set_cachemax(48 << 20)
        assert lean.get_cachemax() == 48 << 20
    finally:
        lean.set_cachemax(before)


def test_a_worker_converting_8_bit_images_imports_neither_numpy_nor_rasterio(tmp_path: Path) -> None:
    """The point of this backend: a pool worker holds no numpy or rasterio between jobs (measured ~26 MiB)."""
    src = rasters.write(tmp_path / "in.tif", rasters.textured(4, 600, 500), photometric="RGB", alpha="YES")
    code = (
        "import sys\n"
        "from cog_pipeline.transformations import cli\n"
        "rc = cli.main([sys.argv[1], sys.argv[2], sys.argv[3], '--bands', '4'])\n"
        "from cog_pipeline.transformations.backend import backend_name\n"
        "print(rc, backend_name(), *sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'rasterio'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "o.tif"), str(tmp_path / "o.jpg")],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["0", "libgdal"], proc.stderr
    np.testing.assert_array_equal(rasters.read(tmp_path / "o.tif"), rasters.read(src))


def test_rasterio_imported_later_shares_the_library(tmp_path: Path, lean: LibgdalBackend) -> None:
    """A process may still import rasterio after this backend loaded libgdal (the rio-cogeo validator does):
    both then use the one library, and what one sets the other sees."""
    lean.set_config("COG_PIPELINE_SHARED_PROBE", "seen")
    try:
        from rasterio._env import get_gdal_config

        assert get_gdal_config("COG_PIPELINE_SHARED_PROBE") == "seen"
    finally:
        lean.set_config("COG_PIPELINE_SHARED_PROBE", None)


def test_colour_interpretation_names_match(tmp_path: Path, lean: LibgdalBackend) -> None:
    path = rasters.write(tmp_path / "ci.tif", rasters.textured(3, 8, 8),
                         colorinterp=[ColorInterp.blue, ColorInterp.green, ColorInterp.red])
    assert lean.info(str(path)).colorinterp == ["blue", "green", "red"]


@pytest.mark.parametrize("bands", [1, 3])
def test_interleaved_pixels_are_rasterios_bands_side_by_side(tmp_path: Path, lean: LibgdalBackend,
                                                             rio: RasterioBackend, bands: int) -> None:
    data = rasters.textured(bands, 37, 53)
    path = str(rasters.write(tmp_path / "in.tif", data))
    w, h, got = lean.read_interleaved(path, bands)
    assert (w, h) == (53, 37)
    assert bytes(got) == np.ascontiguousarray(np.moveaxis(data, 0, -1)).tobytes()
    assert bytes(got) == bytes(rio.read_interleaved(path, bands)[2])


def test_only_the_drivers_a_conversion_uses_are_registered() -> None:
    """Registering all ~200 drivers costs a worker ~6 MiB; a fresh process on this backend has just these five
    (rasterio, if a process imports it later, registers the rest)."""
    code = ("import ctypes\n"
            "from cog_pipeline.transformations.backend_libgdal import LibgdalBackend\n"
            "lib = LibgdalBackend().lib\n"
            "lib.GDALGetDriverCount.restype = ctypes.c_int\n"
            "lib.GDALGetDriver.restype, lib.GDALGetDriver.argtypes = ctypes.c_void_p, [ctypes.c_int]\n"
            "print(*sorted(lib.GDALGetDriverShortName(lib.GDALGetDriver(i)).decode()\n"
            "              for i in range(lib.GDALGetDriverCount())))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == sorted(CONVERTER_DRIVERS), proc.stderr
