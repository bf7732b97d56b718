"""Every check the converter makes fires on a real bad output: the output is damaged between GDAL writing it and
the converter checking it, through the one seam every write goes through (the binding's ``create_copy``), and
the conversion must fail with the check's exit code, one line, and no output left behind."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from cog_pipeline.transformations import cli
from cog_pipeline.transformations.backend import get_backend
from cog_pipeline.transformations.convert import convert
from cog_pipeline.transformations.exit_codes import ConversionError, ExitCode
from tests import rasters


def _damage(monkeypatch: pytest.MonkeyPatch, driver: str, after: Callable[[Callable, str, str, dict], None]) -> None:
    """Let GDAL write ``driver``'s output, then hand it to ``after(real_copy, src, dst, options)`` to damage it."""
    backend = type(get_backend())
    real = backend.create_copy

    def create_copy(self, drv: str, src: str, dst: str, options: dict) -> list:
        messages = real(self, drv, src, dst, options)
        if drv == driver:
            after(lambda *a, **kw: real(self, *a, **kw), src, dst, options)
        return messages

    monkeypatch.setattr(backend, "create_copy", create_copy)


def _overviews_after_data(real, src, dst, options) -> None:
    """Same pixels, 512 tiles and overviews to one tile, but the overviews appended after the image data: only
    the COG validator can tell."""
    import rasterio
    from rasterio.enums import Resampling

    real("GTiff", dst, dst + ".x.tif", {"COMPRESS": "LZW", "TILED": "YES", "BLOCKXSIZE": "512", "BLOCKYSIZE": "512"})
    with rasterio.open(dst + ".x.tif", "r+") as ds:
        ds.build_overviews([2], Resampling.nearest)
    os.replace(dst + ".x.tif", dst)


def _small_tiles(real, src, dst, options) -> None:
    real("COG", src, dst, {**options, "BLOCKSIZE": "256"})


def _no_overviews(real, src, dst, options) -> None:
    real("COG", src, dst, {**options, "OVERVIEWS": "NONE"})


def _cropped(real, src, dst, options) -> None:
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src) as ds:
        profile, tags = {**ds.profile, "height": ds.height - 1}, ds.tags()
        data = ds.read(window=Window(0, 0, ds.width, ds.height - 1))
    with rasterio.open(dst + ".c.tif", "w", **{**profile, "driver": "GTiff"}) as out:
        out.write(data)
        out.update_tags(**tags)  # the provenance slot
    real("COG", dst + ".c.tif", dst, options)
    os.remove(dst + ".c.tif")


def _one_pixel_changed(real, src, dst, options) -> None:
    import rasterio

    with rasterio.open(src) as ds:
        profile, data, tags = ds.profile, ds.read(), ds.tags()
    data[0, 5, 5] ^= 0xFF
    with rasterio.open(dst + ".c.tif", "w", **{**profile, "driver": "GTiff"}) as out:
        out.write(data)
        out.update_tags(**tags)  # the provenance slot
    real("COG", dst + ".c.tif", dst, options)
    os.remove(dst + ".c.tif")


def _without_provenance_slot(real, src, dst, options) -> None:  # the input itself, not the VRT with the slot
    real("COG", _input_of(src), dst, options)


def _input_of(vrt: str) -> str:
    from xml.etree import ElementTree

    name = ElementTree.parse(vrt).find(".//SourceFilename")
    path = name.text
    return path if name.get("relativeToVRT") != "1" else os.path.join(os.path.dirname(vrt), path)


def _jpeg_truncated(real, src, dst, options) -> None:
    data = Path(dst).read_bytes()
    Path(dst).write_bytes(data[: len(data) - 300])


def _jpeg_corrupt_entropy(real, src, dst, options) -> None:
    data = bytearray(Path(dst).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    Path(dst).write_bytes(bytes(data))


def _jpeg_grey(real, src, dst, options) -> None:  # one band where the preview has three
    grey = _single_band_vrt(src)
    real("JPEG", grey, dst, options)
    os.remove(grey)


def _single_band_vrt(vrt: str) -> str:
    text = Path(vrt).read_text()
    first = text.index("</VRTRasterBand>") + len("</VRTRasterBand>")
    out = vrt + ".1.vrt"
    Path(out).write_text(text[:first] + "</VRTDataset>")
    return out


CASES = {
    # COG checks: the validator, then the reopened file against the input and the profile
    "not a COG": ("COG", _overviews_after_data, ExitCode.OUTPUT_INVALID, "not all before the image data"),
    "tiles not the profile's": ("COG", _small_tiles, ExitCode.OUTPUT_INVALID, "blocks are (256, 256)"),
    "no overviews": ("COG", _no_overviews, ExitCode.OUTPUT_INVALID, "overviews stop at"),
    "size differs": ("COG", _cropped, ExitCode.OUTPUT_INVALID, "input is (700, 600"),
    "pixels differ": ("COG", _one_pixel_changed, ExitCode.OUTPUT_INVALID, "pixels differ"),
    "provenance slot lost": ("COG", _without_provenance_slot, ExitCode.INTERNAL, "metadata slot"),
    # JPEG checks: complete file, size and bands, GDAL decodes every block
    "JPEG truncated": ("JPEG", _jpeg_truncated, ExitCode.OUTPUT_INVALID, "end-of-image"),
    "JPEG corrupt data": ("JPEG", _jpeg_corrupt_entropy, ExitCode.OUTPUT_INVALID, "JPEG"),
    "JPEG wrong bands": ("JPEG", _jpeg_grey, ExitCode.OUTPUT_INVALID, "JPEG has 1 bands, expected 3"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_check_fires_on_a_damaged_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    driver, damage, code, words = CASES[case]
    data = rasters.textured(3, 600, 700)
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB")
    out = tmp_path / "out"
    _damage(monkeypatch, driver, damage)
    # 8 MB: the preview goes through GDAL's JPEG driver (past Pillow's share), so the JPEG seam is the binding's
    monkeypatch.setenv("COG_PIPELINE_MEMORY_BUDGET", "8")
    with pytest.raises(ConversionError) as caught:
        convert(src, out / "x.tif", out / "x.jpg", 3, verify_pixels=True)
    assert caught.value.code == code and words in caught.value.reason, caught.value.reason
    assert sorted(p.name for p in out.iterdir()) == []  # nothing left behind, temporaries included
    # the executable's own entry: the same exit code and one line on stderr
    err = io.StringIO()
    with redirect_stderr(err):
        rc = cli.main([str(src), str(out / "y.tif"), str(out / "y.jpg"), "--bands", "3", "--verify-pixels"])
    assert rc == code and err.getvalue().startswith(f"{code.name}: ") and err.getvalue().count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == []


def test_the_same_conversion_passes_every_check_undamaged(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 600, 700), photometric="RGB")
    result = convert(src, tmp_path / "x.tif", tmp_path / "x.jpg", 3, verify_pixels=True, memory_budget_mb=8)
    assert result.exit_code == ExitCode.OK and result.jpeg_method == "driver"
