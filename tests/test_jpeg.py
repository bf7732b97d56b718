"""The preview through Pillow's libjpeg-turbo (transformations/jpeg.py): the original tool's bytes, faster.

The reference is the original tool's own JPEG step, Debian's ``gdal_translate -of JPEG -co QUALITY=80``
(GDAL 3.6 on libjpeg-turbo, as in the GDAL container), run on the same pixels."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cog_pipeline.transformations import jpeg
from cog_pipeline.transformations.convert import convert, inspect_input
from cog_pipeline.transformations.preview import plan_preview

from . import rasters

needs_gdal_translate = pytest.mark.skipif(shutil.which("gdal_translate") is None,
                                          reason="Debian's gdal_translate (gdal-bin) is the reference encoder")
needs_turbo = pytest.mark.skipif(not jpeg.pillow_turbo(),
                                 reason="Pillow with libjpeg-turbo is not installed")

REAL_RGB = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "rasterio" / "RGB.byte.tif"


def _original_jpeg(src: Path, out: Path, bands: int) -> bytes:
    """The original tool's JPEG step on ``src`` (bands 1-3 of a 4-band image)."""
    picks = [a for b in range(1, 4) for a in ("-b", str(b))] if bands == 4 else []
    subprocess.run(["gdal_translate", "-q", str(src), str(out), "-of", "JPEG", "-co", "QUALITY=80", *picks],
                   check=True, capture_output=True)
    return out.read_bytes()


def _real_content(count: int, height: int, width: int) -> np.ndarray:
    """Pixels of the real Landsat scene when the test data is there (else the textured fixture)."""
    if not REAL_RGB.exists():
        return rasters.textured(count, height, width)
    scene = rasters.read(REAL_RGB)[:, 200:200 + height, 200:200 + width]
    bands = [scene[k % 3] for k in range(count)]
    return np.stack(bands).astype("uint8")


@needs_turbo
@needs_gdal_translate
@pytest.mark.parametrize("count", [1, 3, 4])
def test_pillow_preview_is_byte_identical_to_the_original_tools_jpeg(tmp_path: Path, count: int) -> None:
    data = _real_content(count, 301, 415)  # odd sizes: partial MCUs on both edges
    src = rasters.write(tmp_path / "in.tif", data, **({"photometric": "RGB"} if count >= 3 else {}))
    result = convert(src, tmp_path / "o.tif", tmp_path / "o.jpg", count)
    assert result.jpeg_method == "pillow"
    assert (tmp_path / "o.jpg").read_bytes() == _original_jpeg(src, tmp_path / "ref.jpg", count)


@needs_turbo
@needs_gdal_translate
def test_pillow_reads_scaled_previews_through_the_vrt(tmp_path: Path) -> None:
    """A uint16 image is scaled by the VRT; Pillow encodes what the VRT yields, as GDAL's driver would."""
    src = rasters.write(tmp_path / "in.tif", rasters.textured(1, 200, 260, dtype="uint16"))
    result = convert(src, tmp_path / "o.tif", tmp_path / "o.jpg", 1)
    assert result.jpeg_method == "pillow"
    vrts = [p for p in tmp_path.iterdir() if p.suffix == ".vrt"]
    assert vrts == []  # the VRT is a temporary
    info = inspect_input(str(src))
    plan = plan_preview(info)
    from cog_pipeline.transformations.preview import preview_vrt

    vrt = tmp_path / "p.vrt"
    vrt.write_text(preview_vrt(info, plan))
    assert (tmp_path / "o.jpg").read_bytes() == _original_jpeg(vrt, tmp_path / "ref.jpg", 1)


def test_writer_follows_the_budget() -> None:
    """Pillow while its ~7 bytes per RGB pixel fit a quarter of the budget; GDAL's driver beyond; strips once the
    driver's whole-image coefficient buffer would pass a third of it."""
    pillow = "pillow" if jpeg.pillow_turbo() else "driver"
    assert jpeg.choose_writer(2500, 2500, 3, 1024) == pillow
    assert jpeg.choose_writer(8000, 8000, 3, 1024) == "driver"
    assert jpeg.choose_writer(20000, 20000, 3, 1024) == "strips"
    assert jpeg.choose_writer(20000, 20000, 1, 1024) == "strips"


def test_a_preview_over_the_pillow_share_is_written_by_the_driver(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 1100, 1100), photometric="RGB")
    # 1100² x 7 bytes = 8.1 MiB > 64 MiB / 4 is false; 32 MB: 8 MiB / 4 = 2 MiB < 8.1: the driver
    result = convert(src, tmp_path / "o.tif", tmp_path / "o.jpg", 3, memory_budget_mb=64)
    assert result.jpeg_method == ("pillow" if jpeg.pillow_turbo() else "driver")
    result = convert(src, tmp_path / "p.tif", tmp_path / "p.jpg", 3, memory_budget_mb=24)
    assert result.jpeg_method == "driver"
    np.testing.assert_allclose(rasters.read(tmp_path / "p.jpg").astype(float).mean(),
                               rasters.read(tmp_path / "o.jpg").astype(float).mean(), atol=1.0)


@pytest.mark.parametrize("kind", ["alpha", "mask"])
def test_numpy_composite_is_the_vrts_composite(tmp_path: Path, kind: str) -> None:
    """The Pillow path composites onto black itself, from one read of the input's bands and mask: the same
    bytes the VRT's Float64 ``mul`` yields (every alpha value against every value)."""
    from cog_pipeline.transformations.backend import get_backend
    from cog_pipeline.transformations.preview import composites_in_numpy, preview_vrt

    if not jpeg.pillow_turbo():
        pytest.skip("Pillow with libjpeg-turbo is not installed")
    values, alphas = np.meshgrid(np.arange(256, dtype="uint8"), np.arange(256, dtype="uint8"))
    data = np.stack([values, values[::-1], values.T, alphas])
    if kind == "alpha":
        src = rasters.write(tmp_path / "in.tif", data, photometric="RGB", alpha="YES")
    else:
        src = rasters.write(tmp_path / "in.tif", data[:3], photometric="RGB", mask=data[3] > 100)
    info = inspect_input(str(src))
    plan = plan_preview(info)
    assert composites_in_numpy(plan)
    (tmp_path / "derived.vrt").write_text(preview_vrt(info, plan))
    jpeg._write_pillow(str(tmp_path / "derived.vrt"), str(tmp_path / "ref.jpg"), 3, 80)
    jpeg._write_pillow("", str(tmp_path / "o.jpg"), 3, 80, composite=(str(src), plan.bands))
    derived = get_backend().read(str(tmp_path / "derived.vrt"), [1, 2, 3])
    assert derived.any() and (derived != data[:3]).any()  # the mask did black something out
    assert (tmp_path / "o.jpg").read_bytes() == (tmp_path / "ref.jpg").read_bytes()
