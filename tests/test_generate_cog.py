"""generate_cog (the zipapp built from transformations/): real GDAL on real and generated rasters."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp, MaskFlags
from rio_cogeo.cogeo import cog_validate

from cog_pipeline.transformations.convert import convert
from cog_pipeline.transformations.exit_codes import ConversionError, ExitCode
from cog_pipeline.transformations.profile import with_overrides
from cog_pipeline.transformations.validate import builtin_check, validate_jpeg
from tests import rasters
from tests.convert_support import EXECUTABLE, SYSTEM_PYTHON, needs_osgeo


def run(args: list[str], python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(EXECUTABLE), *map(str, args)], capture_output=True, text=True, timeout=120)


def outputs(tmp_path: Path, name: str = "out") -> tuple[Path, Path]:
    return tmp_path / "out" / f"{name}.tif", tmp_path / "out" / f"{name}.jpg"


def assert_cog_valid(path: Path) -> None:
    valid, errors, _ = cog_validate(str(path), quiet=True)
    assert valid and not errors, errors


def jpeg_shape(path: Path) -> tuple[int, int, int]:
    with rasters.open_(path) as ds:
        assert ds.driver == "JPEG"
        assert ds.dtypes[0] == "uint8"
        return ds.count, ds.height, ds.width


def converted(tmp_path: Path, src: Path, bands: int | None = None, **kw):
    tif, jpg = outputs(tmp_path)
    result = convert(src, tif, jpg, bands, verify_pixels=True, **kw)
    return result, tif, jpg


# ---------------------------------------------------------------- faithful COG output


@pytest.mark.parametrize("count", [1, 3, 4])
def test_uint8_full_resolution_pixels_equal(tmp_path: Path, count: int) -> None:
    data = rasters.textured(count, 700, 650)
    src = rasters.write(tmp_path / "in.tif", data)
    result, tif, _ = converted(tmp_path, src, count)
    assert result.exit_code == ExitCode.OK
    np.testing.assert_array_equal(rasters.read(tif), data)


@pytest.mark.parametrize("count,jpeg_bands", [(1, 1), (3, 3), (4, 3)])
def test_jpeg_band_count_and_full_size(tmp_path: Path, count: int, jpeg_bands: int) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(count, 300, 410))
    _, _, jpg = converted(tmp_path, src, count)
    assert jpeg_shape(jpg) == (jpeg_bands, 300, 410)


def test_cog_is_lzw_tiled_512_with_overviews_to_one_tile(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 1500, 1300))
    result, tif, _ = converted(tmp_path, src, 3)
    assert_cog_valid(tif)
    with rasters.open_(tif) as ds:
        assert ds.compression.name == "lzw"
        assert ds.block_shapes == [(512, 512)] * 3
        assert ds.overviews(1) == [2, 4]
    assert result.overview_sizes == [(650, 750), (325, 375)]


def test_georeferencing_and_nodata_kept(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(1, 64, 80), nodata=7)
    _, tif, _ = converted(tmp_path, src, 1)
    with rasters.open_(src) as a, rasters.open_(tif) as b:
        assert b.crs == a.crs
        assert b.transform == a.transform
        assert b.nodata == 7


def test_colorinterp_descriptions_and_tags_kept(tmp_path: Path) -> None:
    src = rasters.write(
        tmp_path / "in.tif",
        rasters.textured(3, 50, 60),
        photometric="RGB",
        tags={"SOURCE": "county flight 2020"},
        band_tags={2: {"WAVELENGTH": "green"}},
        descriptions=["red", "green", "blue"],
    )
    _, tif, _ = converted(tmp_path, src, 3)
    with rasters.open_(tif) as ds:
        assert ds.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert ds.descriptions == ("red", "green", "blue")
        assert ds.tags()["SOURCE"] == "county flight 2020"
        assert ds.tags(2)["WAVELENGTH"] == "green"


def test_alpha_band_kept_in_cog(tmp_path: Path) -> None:
    data = rasters.textured(4, 200, 240)
    data[3] = 255
    data[3, :, :100] = 0
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB", alpha="YES")
    _, tif, _ = converted(tmp_path, src, 4)
    with rasters.open_(tif) as ds:
        assert ds.colorinterp[3] == ColorInterp.alpha
        np.testing.assert_array_equal(ds.read(), data)


def test_internal_mask_kept_in_cog(tmp_path: Path) -> None:
    mask = np.full((300, 300), 255, dtype="uint8")
    mask[100:200, 50:250] = 0
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 300, 300), mask=mask)
    _, tif, _ = converted(tmp_path, src, 3)
    with rasters.open_(tif) as ds:
        assert ds.mask_flag_enums[0] == [MaskFlags.per_dataset]
        np.testing.assert_array_equal(ds.read_masks(1), mask)


def test_non_georeferenced_input(tmp_path: Path) -> None:
    data = rasters.textured(1, 90, 120)
    src = rasters.write(tmp_path / "in.tif", data, crs=None)
    _, tif, jpg = converted(tmp_path, src, 1)
    with rasters.open_(tif) as ds:
        assert ds.crs is None
    np.testing.assert_array_equal(rasters.read(tif), data)
    assert jpeg_shape(jpg) == (1, 90, 120)


def test_tiny_20x20(tmp_path: Path) -> None:
    data = rasters.textured(3, 20, 20)
    src = rasters.write(tmp_path / "in.tif", data)
    _, tif, jpg = converted(tmp_path, src, 3)
    assert_cog_valid(tif)
    np.testing.assert_array_equal(rasters.read(tif), data)
    assert jpeg_shape(jpg) == (3, 20, 20)


def test_already_a_cog_input(tmp_path: Path) -> None:
    data = rasters.textured(3, 900, 900)
    plain = rasters.write(tmp_path / "plain.tif", data)
    cog_in = tmp_path / "cog_in.tif"
    rasterio.shutil.copy(plain, cog_in, driver="COG", COMPRESS="DEFLATE")
    _, tif, _ = converted(tmp_path, cog_in, 3)
    assert_cog_valid(tif)
    with rasters.open_(tif) as ds:
        assert ds.compression.name == "lzw"
        np.testing.assert_array_equal(ds.read(), data)


def test_overviews_match_the_cog_driver_default(tmp_path: Path) -> None:
    """Same overview pixels as the original `gdal_translate -of COG -co COMPRESS=LZW`."""
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 1100, 1100))
    reference = tmp_path / "reference.tif"
    rasterio.shutil.copy(src, reference, driver="COG", COMPRESS="LZW")
    _, tif, _ = converted(tmp_path, src, 3)
    for level in range(2):
        with rasters.open_(reference, overview_level=level) as a, rasters.open_(tif, overview_level=level) as b:
            np.testing.assert_array_equal(b.read(), a.read())


def test_resampling_option_changes_overviews_only(tmp_path: Path) -> None:
    data = rasters.textured(1, 1100, 1100)
    src = rasters.write(tmp_path / "in.tif", data)
    default_tif, _ = outputs(tmp_path, "default")
    nearest_tif, _ = outputs(tmp_path, "nearest")
    convert(src, default_tif, default_tif.with_suffix(".jpg"), 1)
    convert(src, nearest_tif, nearest_tif.with_suffix(".jpg"), 1,
            profile=with_overrides(["overview_resampling=nearest"]))
    np.testing.assert_array_equal(rasters.read(nearest_tif), data)
    with rasters.open_(default_tif, overview_level=0) as a, rasters.open_(nearest_tif, overview_level=0) as b:
        assert not np.array_equal(a.read(), b.read())
        np.testing.assert_array_equal(b.read(1), data[0, ::2, ::2])


def test_deep_output_folders_are_created(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(1, 30, 30))
    tif = tmp_path / "Counties" / "WI" / "Wood" / "x.tif"
    jpg = tmp_path / "previews" / "Counties" / "WI" / "Wood" / "x.jpg"
    convert(src, tif, jpg, 1)
    assert tif.is_file() and jpg.is_file()
    assert sorted(p.name for p in tif.parent.iterdir()) == ["x.tif"]
    assert sorted(p.name for p in jpg.parent.iterdir()) == ["x.jpg"]


# ---------------------------------------------------------------- JPEG previews


def test_rgba_preview_has_no_alpha_and_transparent_area_is_black(tmp_path: Path) -> None:
    data = np.full((4, 256, 256), 200, dtype="uint8")
    data[3] = 255
    data[3, :, :128] = 0  # transparent left half, whose RGB is 200 underneath
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB", alpha="YES")
    _, _, jpg = converted(tmp_path, src, 4)
    preview = rasters.read(jpg)
    assert preview.shape == (3, 256, 256)
    assert preview[:, :, :120].max() <= 3
    assert preview[:, :, 136:].min() >= 195


def test_rgbn_preview_uses_bands_1_to_3(tmp_path: Path) -> None:
    data = np.zeros((4, 128, 128), dtype="uint8")
    data[0], data[1], data[2], data[3] = 30, 90, 150, 250
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB", alpha="UNSPECIFIED")
    _, _, jpg = converted(tmp_path, src, 4)
    means = rasters.read(jpg).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(means, [30, 90, 150], atol=3)


def test_nodata_keeps_its_value_in_preview_as_the_original_tool_shows_it(tmp_path: Path) -> None:
    data = np.full((1, 128, 128), 255, dtype="uint8")
    data[0, :, 64:] = 180
    src = rasters.write(tmp_path / "in.tif", data, nodata=255)
    _, _, jpg = converted(tmp_path, src, 1)
    preview = rasters.read(jpg)[0]
    assert preview[:, :56].min() >= 252
    assert abs(int(preview[:, 72:].mean()) - 180) <= 2


def test_internal_mask_area_is_black_in_preview(tmp_path: Path) -> None:
    mask = np.full((128, 128), 255, dtype="uint8")
    mask[:64] = 0
    src = rasters.write(tmp_path / "in.tif", np.full((3, 128, 128), 220, dtype="uint8"), mask=mask)
    _, _, jpg = converted(tmp_path, src, 3)
    preview = rasters.read(jpg)
    assert preview[:, :56].max() <= 3
    assert preview[:, 72:].min() >= 215


def test_uint16_is_scaled_min_to_max(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(1000, 5000, 256).astype("uint16"), (3, 64, 1))
    src = rasters.write(tmp_path / "in.tif", ramp)
    result, tif, jpg = converted(tmp_path, src, 3)
    np.testing.assert_array_equal(rasters.read(tif), ramp)  # the COG keeps uint16
    preview = rasters.read(jpg).astype(int)
    assert preview[:, :, :4].mean() <= 4
    assert preview[:, :, -4:].mean() >= 251
    assert abs(preview[:, :, 126:130].mean() - 127) <= 4
    assert "1000..5000" in result.preview


def test_int16_is_scaled(tmp_path: Path) -> None:
    data = rasters.textured(1, 100, 100, dtype="int16")
    src = rasters.write(tmp_path / "in.tif", data)
    _, tif, jpg = converted(tmp_path, src, 1)
    np.testing.assert_array_equal(rasters.read(tif), data)
    preview = rasters.read(jpg)
    assert preview.min() <= 10 and preview.max() >= 245


def test_float32_nodata_excluded_from_scaling(tmp_path: Path) -> None:
    data = np.tile(np.linspace(-1.0, 1.0, 200, dtype="float32"), (1, 100, 1))
    data[:, :50] = -9999.0
    src = rasters.write(tmp_path / "in.tif", data, nodata=-9999.0)
    result, tif, jpg = converted(tmp_path, src, 1)
    np.testing.assert_array_equal(rasters.read(tif), data)
    preview = rasters.read(jpg)[0].astype(int)
    assert preview[:40].max() <= 3  # nodata rows
    assert preview[60:, :4].mean() <= 5 and preview[60:, -4:].mean() >= 250
    assert "-1..1" in result.preview


def test_float32_nan_is_black(tmp_path: Path) -> None:
    data = np.full((1, 64, 64), 5.0, dtype="float32")
    data[0, :, 32:] = 10.0
    data[0, :16] = np.nan
    src = rasters.write(tmp_path / "in.tif", data)
    _, _, jpg = converted(tmp_path, src, 1)
    preview = rasters.read(jpg)[0].astype(int)
    assert preview[:10].max() <= 3
    assert preview[24:, 40:].min() >= 250


def test_gray_plus_alpha_gives_one_band_preview(tmp_path: Path) -> None:
    data = np.full((2, 64, 64), 150, dtype="uint8")
    data[1] = 255
    src = rasters.write(
        tmp_path / "in.tif", data, colorinterp=[ColorInterp.gray, ColorInterp.alpha]
    )
    _, _, jpg = converted(tmp_path, src, 2)
    assert jpeg_shape(jpg) == (1, 64, 64)


def test_palette_is_expanded_to_rgb(tmp_path: Path) -> None:
    data = np.zeros((1, 64, 64), dtype="uint8")
    data[0, :, 32:] = 1
    src = rasters.write(
        tmp_path / "in.tif", data, photometric="PALETTE", colormap={0: (255, 0, 0, 255), 1: (0, 0, 255, 255)}
    )
    _, tif, jpg = converted(tmp_path, src, 1)
    np.testing.assert_array_equal(rasters.read(tif), data)
    preview = rasters.read(jpg).astype(int)
    assert preview.shape == (3, 64, 64)
    assert preview[0, :, :24].mean() > 240 and preview[2, :, :24].mean() < 15
    assert preview[2, :, 40:].mean() > 240 and preview[0, :, 40:].mean() < 15


def test_wider_than_jpeg_limit_gets_downsampled_preview(tmp_path: Path) -> None:
    data = np.tile(np.arange(70000, dtype="uint32") % 251, (1, 8, 1)).astype("uint8")
    src = rasters.write(tmp_path / "in.tif", data)
    result, tif, jpg = converted(tmp_path, src, 1)
    np.testing.assert_array_equal(rasters.read(tif), data)
    assert result.jpeg_downsample == 2
    assert jpeg_shape(jpg) == (1, 4, 35000)


# ---------------------------------------------------------------- band mismatch


def test_band_mismatch_converts_per_file_and_reports(tmp_path: Path) -> None:
    data = rasters.textured(3, 40, 40)
    src = rasters.write(tmp_path / "in.tif", data)
    result, tif, jpg = converted(tmp_path, src, 4)
    assert result.exit_code == ExitCode.BAND_MISMATCH
    assert result.reason == "band mismatch: manifest says 4 bands, file has 3; converted per file"
    np.testing.assert_array_equal(rasters.read(tif), data)
    assert jpeg_shape(jpg) == (3, 40, 40)


# ---------------------------------------------------------------- failure categories


def _bad_input(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "bad.tif"
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("path/to/image.tif,4\nthis is not an image\n")
    elif kind == "truncated":
        good = rasters.write(tmp_path / "good.tif", rasters.textured(3, 200, 200))
        blob = good.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    elif kind == "header_only":
        path.write_bytes(b"II*\x00")
    elif kind == "png_named_tif":
        good = rasters.write(tmp_path / "good.tif", rasters.textured(1, 20, 20))
        rasterio.shutil.copy(good, tmp_path / "x.png", driver="PNG")
        shutil.move(tmp_path / "x.png", path)
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated", "header_only", "png_named_tif"])
def test_bad_inputs_are_input_unreadable_and_leave_nothing(tmp_path: Path, kind: str) -> None:
    src = _bad_input(tmp_path, kind)
    tif, jpg = outputs(tmp_path)
    with pytest.raises(ConversionError) as info:
        convert(src, tif, jpg, 3)
    assert info.value.code == ExitCode.INPUT_UNREADABLE
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_corrupt_tif_from_testdata_is_input_unreadable(tmp_path: Path, shared_testdata: Path) -> None:
    tif, jpg = outputs(tmp_path)
    with pytest.raises(ConversionError) as info:
        convert(shared_testdata / "rasterio" / "corrupt.tif", tif, jpg, 3)
    assert info.value.code == ExitCode.INPUT_UNREADABLE
    assert not tif.exists() and not jpg.exists()


def test_damaged_pixel_data_is_input_unreadable(tmp_path: Path) -> None:
    """Complete file, valid structure, but the DEFLATE stream of the tiles is garbage."""
    good = rasters.write(tmp_path / "good.tif", rasters.textured(1, 256, 256), tiled=True, compress="deflate",
                         blockxsize=128, blockysize=128)
    with rasters.open_(good) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    blob = bytearray(good.read_bytes())
    blob[offset : offset + size] = bytes((i * 37 + 11) % 256 for i in range(size))
    src = tmp_path / "damaged.tif"
    src.write_bytes(bytes(blob))
    tif, jpg = outputs(tmp_path)
    with pytest.raises(ConversionError) as info:
        convert(src, tif, jpg, 1)
    assert info.value.code == ExitCode.INPUT_UNREADABLE
    assert not any((tmp_path / "out").iterdir())


def test_complex_data_is_unsupported(tmp_path: Path) -> None:
    data = (rasters.textured(1, 16, 16, dtype="float32") + 1j).astype("complex64")
    src = rasters.write(tmp_path / "in.tif", data)
    tif, jpg = outputs(tmp_path)
    with pytest.raises(ConversionError) as info:
        convert(src, tif, jpg, 1)
    assert info.value.code == ExitCode.UNSUPPORTED_INPUT
    assert not tif.exists() and not jpg.exists()


@pytest.fixture()
def tiny_disk(tmp_path: Path):
    """A 1 MiB tmpfs: real ENOSPC. Needs root (mount); skipped otherwise."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_out_of_disk(tmp_path: Path, tiny_disk: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, size=(3, 1024, 1024), dtype="uint8")
    src = rasters.write(tmp_path / "in.tif", noise)
    with pytest.raises(ConversionError) as info:
        convert(src, tiny_disk / "a" / "x.tif", tiny_disk / "a" / "x.jpg", 3)
    assert info.value.code == ExitCode.OUT_OF_DISK
    assert not any(p.is_file() for p in tiny_disk.rglob("*"))


# ---------------------------------------------------------------- validators


def test_builtin_validator_accepts_the_cog(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 1200, 1000), mask=np.full((1200, 1000), 255, "uint8"))
    _, tif, _ = converted(tmp_path, src, 3)
    assert builtin_check(str(tif))[0] == []


def test_builtin_validator_rejects_striped_tiff_like_rio_cogeo(tmp_path: Path) -> None:
    path = rasters.write(tmp_path / "plain.tif", rasters.textured(1, 1200, 1200))
    errors, _ = builtin_check(str(path))
    assert any("not tiled" in e for e in errors), errors
    assert not cog_validate(str(path), quiet=True)[0]


def test_builtin_validator_warns_on_missing_overviews_like_rio_cogeo(tmp_path: Path) -> None:
    path = rasters.write(tmp_path / "plain.tif", rasters.textured(1, 1200, 1200), tiled=True,
                         blockxsize=256, blockysize=256)
    errors, warnings = builtin_check(str(path))
    assert errors == [] and any("no overviews" in w for w in warnings), (errors, warnings)
    assert cog_validate(str(path), quiet=True)[2]  # a warning there


def test_builtin_validator_rejects_overviews_after_data(tmp_path: Path) -> None:
    path = rasters.write(tmp_path / "plain.tif", rasters.textured(1, 1200, 1200), tiled=True,
                         blockxsize=512, blockysize=512)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4, 8])
    errors, _ = builtin_check(str(path))
    assert any("before the image data" in e or "ordered" in e for e in errors), errors


def test_validate_jpeg_rejects_truncated_and_wrong_size(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 100, 120))
    _, _, jpg = converted(tmp_path, src, 3)
    assert validate_jpeg(str(jpg), 120, 100, 3)[0] == []
    assert validate_jpeg(str(jpg), 120, 100, 1)[0]
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpg.read_bytes()[:-500])
    assert validate_jpeg(str(cut), 120, 100, 3)[0]


def test_validate_jpeg_rejects_corrupt_entropy_data(tmp_path: Path) -> None:
    """libjpeg decodes damaged entropy-coded data on (grey blocks) and only warns: the decode check must
    turn that warning into a failure, and the structural check alone cannot see it."""
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 600, 640))
    _, _, jpg = converted(tmp_path, src, 3)
    data = bytearray(jpg.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = np.random.default_rng(7).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(bytes(data))
    errors, _ = validate_jpeg(str(bad), 640, 600, 3)
    assert errors and "does not decode cleanly" in errors[0], errors
    assert validate_jpeg(str(jpg), 640, 600, 3)[0] == []


def test_info_without_overviews_reads_the_same_but_the_levels(tmp_path: Path) -> None:
    from dataclasses import replace

    from cog_pipeline.transformations.backend import get_backend

    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 1100, 1200))
    _, tif, _ = converted(tmp_path, src, 3)
    full, bare = get_backend().info(str(tif)), get_backend().info(str(tif), overviews=False)
    assert full.overview_sizes == [(600, 550), (300, 275)] and bare.overview_sizes == []
    assert replace(full, overview_sizes=[]) == bare


# ---------------------------------------------------------------- shared test rasters


@pytest.mark.parametrize(
    "name,jpeg_bands",
    [
        ("rasterio/RGB.byte.tif", 3),
        ("rasterio/RGBA.byte.tif", 3),
        ("rasterio/shade.tif", 1),
        ("rasterio/rgb1_fake_nir_epsg3857.tif", 1),
        ("rasterio/byte.tif", 1),
        ("rasterio/float32.tif", 1),
        ("seed/1band.tif", 1),
    ],
)
def test_shared_testdata_converts_faithfully(tmp_path: Path, shared_testdata: Path, name: str, jpeg_bands: int) -> None:
    src = shared_testdata / name
    result, tif, jpg = converted(tmp_path, src)
    assert result.exit_code == ExitCode.OK
    assert_cog_valid(tif)
    with rasters.open_(src) as a, rasters.open_(tif) as b:
        np.testing.assert_array_equal(b.read(), a.read())
        assert (b.crs, b.transform, b.nodatavals, b.colorinterp) == (a.crs, a.transform, a.nodatavals, a.colorinterp)
        np.testing.assert_array_equal(b.read_masks(1), a.read_masks(1))
    assert jpeg_shape(jpg) == (jpeg_bands, result.height, result.width)


# ---------------------------------------------------------------- the executable


def test_cli_success_prints_nothing_on_stderr(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 64, 64))
    tif, jpg = tmp_path / "Counties/WI/Wood/x.tif", tmp_path / "Counties/WI/Wood/x.jpg"
    proc = run([src, tif, jpg, "--bands", "3"])
    assert (proc.returncode, proc.stderr) == (0, "")
    assert_cog_valid(tif)
    assert jpeg_shape(jpg) == (3, 64, 64)


def test_cli_band_mismatch_exit_5_one_line(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 64, 64))
    tif, jpg = outputs(tmp_path)
    proc = run([src, tif, jpg, "--bands", "4"])
    assert proc.returncode == 5
    assert proc.stderr == "BAND_MISMATCH: band mismatch: manifest says 4 bands, file has 3; converted per file\n"
    assert tif.is_file() and jpg.is_file()


def test_cli_band_mismatch_in_a_workflow_succeeds_with_a_warning_line(tmp_path: Path, monkeypatch) -> None:
    """Generated workflows set COG_PIPELINE_BAND_MISMATCH=warn: the file wins and the job succeeds."""
    monkeypatch.setenv("COG_PIPELINE_BAND_MISMATCH", "warn")
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 64, 64))
    tif, jpg = outputs(tmp_path)
    proc = run([src, tif, jpg, "--bands", "4"])
    assert proc.returncode == 0
    assert proc.stderr == "WARNING BAND_MISMATCH: band mismatch: manifest says 4 bands, file has 3; converted per file\n"
    assert_cog_valid(tif)
    assert jpeg_shape(jpg) == (3, 64, 64)


def test_cli_warn_mode_does_not_hide_real_failures(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COG_PIPELINE_BAND_MISMATCH", "warn")
    src = _bad_input(tmp_path, "text")
    tif, jpg = outputs(tmp_path)
    proc = run([src, tif, jpg, "--bands", "4"])
    assert proc.returncode == 3 and proc.stderr.startswith("INPUT_UNREADABLE")


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_cli_bad_input_exit_3_one_line(tmp_path: Path, kind: str) -> None:
    src = _bad_input(tmp_path, kind)
    tif, jpg = outputs(tmp_path)
    proc = run([src, tif, jpg, "--bands", "3"])
    assert proc.returncode == 3
    assert proc.stderr.startswith("INPUT_UNREADABLE: ")
    assert proc.stderr.count("\n") == 1
    assert not tif.exists() and not jpg.exists()


@pytest.mark.parametrize("changed", ["size", "md5"])
def test_cli_source_changed_since_listing_exit_8_when_asked_to_verify(tmp_path: Path, monkeypatch, changed: str) -> None:
    """On the Pegasus pool (COG_PIPELINE_VERIFY_SOURCE=1) the staged input must be the version the workflow listed:
    its size, and its MD5 when the listed ETag is a plain MD5 (a single-part upload). Else SOURCE_CHANGED, and
    no output; the version listed converts."""
    import base64
    import hashlib
    import json

    src = rasters.write(tmp_path / "in.tif", rasters.textured(1, 64, 64))
    data = src.read_bytes()
    listed = {"size": len(data), "etag": hashlib.md5(data).hexdigest()}
    if changed == "size":
        listed["size"] += 1
    else:
        listed["etag"] = hashlib.md5(data + b"x").hexdigest()
    meta = {"SOURCE_SIZE": str(listed["size"]), "SOURCE_ETAG": f'"{listed["etag"]}"'}
    b64 = base64.urlsafe_b64encode(json.dumps(meta).encode()).decode().rstrip("=")
    tif, jpg = outputs(tmp_path)
    monkeypatch.setenv("COG_PIPELINE_VERIFY_SOURCE", "1")
    proc = run([src, tif, jpg, "--bands", "1", "--metadata-b64", b64])
    assert proc.returncode == ExitCode.SOURCE_CHANGED == 8
    assert proc.stderr.startswith("SOURCE_CHANGED: ") and proc.stderr.count("\n") == 1
    assert not tif.exists() and not jpg.exists()
    good = {"SOURCE_SIZE": str(len(data)), "SOURCE_ETAG": hashlib.md5(data).hexdigest()}
    b64 = base64.urlsafe_b64encode(json.dumps(good).encode()).decode().rstrip("=")
    assert run([src, tif, jpg, "--bands", "1", "--metadata-b64", b64]).returncode == 0
    multipart = {"SOURCE_SIZE": str(len(data)), "SOURCE_ETAG": "0123456789abcdef0123456789abcdef-2"}  # not an MD5
    b64 = base64.urlsafe_b64encode(json.dumps(multipart).encode()).decode().rstrip("=")
    assert run([src, tif, jpg, "--bands", "1", "--metadata-b64", b64]).returncode == 0


def test_cli_usage_error_exit_2(tmp_path: Path) -> None:
    proc = run([tmp_path / "in.tif", tmp_path / "x.tif"])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1


# ---------------------------------------------------------------- the stock GDAL container (osgeo, no rasterio)


@needs_osgeo
def test_osgeo_backend_converts_and_validates(tmp_path: Path) -> None:
    data = rasters.textured(4, 700, 600)
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB", alpha="YES")
    tif, jpg = outputs(tmp_path)
    proc = run([src, tif, jpg, "--bands", "4", "--verify-pixels"], python=SYSTEM_PYTHON)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert_cog_valid(tif)  # rio-cogeo agrees with the container's built-in check
    np.testing.assert_array_equal(rasters.read(tif), data)
    assert jpeg_shape(jpg) == (3, 700, 600)


@needs_osgeo
def test_osgeo_backend_runs_without_rasterio(tmp_path: Path) -> None:
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from generate_cog import backend as g; "
         "import importlib.util as u; print(g.get_backend().name, u.find_spec('rasterio') is None)",
         str(EXECUTABLE)],
        capture_output=True, text=True,
    )
    assert probe.stdout.split() == ["osgeo", "True"], probe.stderr


@needs_osgeo
def test_osgeo_backend_band_mismatch_and_bad_input(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(1, 50, 50), nodata=0)
    tif, jpg = outputs(tmp_path)
    proc = run([src, tif, jpg, "--bands", "3"], python=SYSTEM_PYTHON)
    assert proc.returncode == 5
    assert proc.stderr == "BAND_MISMATCH: band mismatch: manifest says 3 bands, file has 1; converted per file\n"
    bad = _bad_input(tmp_path, "text")
    proc = run([bad, tmp_path / "o2.tif", tmp_path / "o2.jpg", "--bands", "1"], python=SYSTEM_PYTHON)
    assert proc.returncode == 3 and proc.stderr.startswith("INPUT_UNREADABLE: ")


@needs_osgeo
def test_osgeo_backend_scales_uint16(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 4000, 128).astype("uint16"), (1, 32, 1))
    src = rasters.write(tmp_path / "in.tif", ramp)
    tif, jpg = outputs(tmp_path)
    proc = run([src, tif, jpg, "--bands", "1"], python=SYSTEM_PYTHON)
    assert (proc.returncode, proc.stderr) == (0, "")
    np.testing.assert_array_equal(rasters.read(tif), ramp)
    preview = rasters.read(jpg).astype(int)
    assert preview[0, :, :2].mean() <= 4 and preview[0, :, -2:].mean() >= 251


def test_backend_in_this_environment_is_rasterio() -> None:
    """One binding per environment: rasterio's in the venv (osgeo is not installed there)."""
    from cog_pipeline.transformations.backend import get_backend

    assert get_backend().name == "rasterio"


@pytest.mark.parametrize("count,width,height,dtype", [(1, 1100, 900, "uint8"), (3, 2050, 1030, "uint8"),
                                                       (4, 1024, 1024, "uint8"), (1, 700, 600, "uint16"),
                                                       (1, 700, 600, "float32")])
def test_cog_is_the_cog_drivers_cog_and_no_larger(tmp_path: Path, count: int, width: int, height: int,
                                                 dtype: str) -> None:
    """The COG is GDAL's COG driver's with the profile's options: same pixels at every level, no larger
    (the provenance adds a few hundred bytes of metadata)."""
    data = rasters.textured(count, height, width).astype(dtype)
    src = rasters.write(tmp_path / "in.tif", data)
    reference = tmp_path / "reference.tif"
    rasterio.shutil.copy(src, reference, driver="COG", COMPRESS="LZW", PREDICTOR="YES", BLOCKSIZE=512)
    tif, jpg = outputs(tmp_path)
    convert(src, tif, jpg, count)
    with rasters.open_(reference) as a, rasters.open_(tif) as b:
        assert a.overviews(1) == b.overviews(1)
        levels = len(a.overviews(1))
    for level in [None, *range(levels)]:
        kw = {} if level is None else {"overview_level": level}
        with rasters.open_(reference, **kw) as a, rasters.open_(tif, **kw) as b:
            np.testing.assert_array_equal(b.read(), a.read())
    assert tif.stat().st_size <= reference.stat().st_size + 1024


def test_shade_preview_shows_nodata_as_the_original_tool_does(tmp_path: Path, shared_testdata: Path) -> None:
    """shade.tif: a hillshade whose nodata (255) surrounds the valid pixels. The original tool's
    `gdal_translate -of JPEG` shows nodata as its stored value: mean ~224.7, not a black frame."""
    result, _, jpg = converted(tmp_path, shared_testdata / "rasterio" / "shade.tif", 1)
    mean = float(rasters.read(jpg).astype(float).mean())
    assert abs(mean - 224.7) < 1.0, mean
    assert result.preview_uniform is None
    if shutil.which("gdal_translate"):
        ref = tmp_path / "ref.jpg"
        subprocess.run(["gdal_translate", "-q", "-of", "JPEG", "-co", "QUALITY=80",
                        str(shared_testdata / "rasterio" / "shade.tif"), str(ref)], check=True)
        assert abs(mean - float(rasters.read(ref).astype(float).mean())) < 0.5


@pytest.mark.parametrize("value", [0, 255])
def test_a_uniform_preview_is_reported(tmp_path: Path, value: int) -> None:
    """A preview of one value (an all-nodata tile, a blank scan) converts, and the result says so."""
    src = rasters.write(tmp_path / "in.tif", np.full((3, 300, 400), value, dtype="uint8"), photometric="RGB")
    tif, jpg = outputs(tmp_path)
    result = convert(src, tif, jpg, 3)
    assert result.exit_code == ExitCode.OK and result.preview_uniform == value
    proc = run([src, tmp_path / "v.tif", tmp_path / "v.jpg", "-v"])
    assert proc.returncode == 0 and f"preview uniform (every sample {value})" in proc.stdout
    textured = rasters.write(tmp_path / "t.tif", rasters.textured(3, 300, 400), photometric="RGB")
    assert convert(textured, tmp_path / "t.tif.out.tif", tmp_path / "t.jpg", 3).preview_uniform is None


def test_positionals_may_start_with_a_dash_after_double_dash(tmp_path: Path) -> None:
    """Keys are user data: a file named `-x.tif` (and outputs like it) reach the converter after `--`, in a
    folder of their own and relative to it, with characters a shell would interpret."""
    data = rasters.textured(3, 64, 80)
    rasters.write(tmp_path / "-in $x;'%é.tif", data, photometric="RGB")
    proc = subprocess.run([sys.executable, str(EXECUTABLE), "--bands", "3", "--", "-in $x;'%é.tif", "-o.tif", "-o.jpg"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, "")
    np.testing.assert_array_equal(rasters.read(tmp_path / "-o.tif"), data)
    assert jpeg_shape(tmp_path / "-o.jpg") == (3, 64, 80)
