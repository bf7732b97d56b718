"""The preview through Pillow's libjpeg-turbo (transformations/jpeg_pillow.py): the original tool's bytes, faster.

The reference is the original tool's own JPEG step, Debian's ``gdal_translate -of JPEG -co QUALITY=80``
(GDAL 3.6 on libjpeg-turbo, as in the GDAL container), run on the same pixels."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cog_pipeline.transformations import jpeg_pillow
from cog_pipeline.transformations.convert import convert
from cog_pipeline.transformations.inputs import inspect_input
from cog_pipeline.transformations.exit_codes import GdalFailure
from cog_pipeline.transformations.preview import plan_preview, preview_vrt

from . import rasters

needs_gdal_translate = pytest.mark.skipif(shutil.which("gdal_translate") is None,
                                          reason="Debian's gdal_translate (gdal-bin) is the reference encoder")
needs_turbo = pytest.mark.skipif(not jpeg_pillow.pillow_turbo_available(),
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
    assert result.jpeg_method.startswith("pillow")
    assert (tmp_path / "o.jpg").read_bytes() == _original_jpeg(src, tmp_path / "ref.jpg", count)


@needs_turbo
@needs_gdal_translate
def test_pillow_reads_scaled_previews_through_the_vrt(tmp_path: Path) -> None:
    """A uint16 image is scaled by the VRT; Pillow encodes what the VRT yields, as GDAL's driver would."""
    src = rasters.write(tmp_path / "in.tif", rasters.textured(1, 200, 260, dtype="uint16"))
    result = convert(src, tmp_path / "o.tif", tmp_path / "o.jpg", 1)
    assert result.jpeg_method == "pillow"  # not stored: the file's bytes are not the preview's
    vrts = [p for p in tmp_path.iterdir() if p.suffix == ".vrt"]
    assert vrts == []  # the VRT is a temporary
    info = inspect_input(str(src))
    plan = plan_preview(info)
    from cog_pipeline.transformations.preview import preview_vrt

    vrt = tmp_path / "p.vrt"
    vrt.write_text(preview_vrt(info, plan))
    assert (tmp_path / "o.jpg").read_bytes() == _original_jpeg(vrt, tmp_path / "ref.jpg", 1)


def test_gdal_encoder_can_be_forced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COG_PIPELINE_JPEG_ENCODER", "gdal")
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 64, 80), photometric="RGB")
    assert convert(src, tmp_path / "o.tif", tmp_path / "o.jpg", 3).jpeg_method == "driver"


@needs_turbo
def test_preview_too_large_for_the_budget_keeps_gdals_encoder(tmp_path: Path) -> None:
    """Pillow holds about 7 bytes per RGB pixel read through the VRT, 4 read from the file in strips; past a
    quarter of the budget GDAL's driver writes it."""
    assert jpeg_pillow.use_pillow(2500, 2500, 3, 1024)
    assert not jpeg_pillow.use_pillow(10000, 10000, 3, 1024)
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 2100, 2100), photometric="RGB")
    # 2100² x 4 bytes = 16.8 MiB > 64 MiB / 4: the driver (its coefficient buffer still fits a third)
    result = convert(src, tmp_path / "o.tif", tmp_path / "o.jpg", 3, memory_budget_mb=64)
    assert result.jpeg_method == "driver"


@pytest.mark.parametrize("layout,expected", [
    ({}, True),                                   # uncompressed, striped, pixel-interleaved
    ({"compress": "lzw"}, False),                 # compressed: GDAL decodes it
    ({"tiled": True, "blockxsize": 64, "blockysize": 64}, False),
    ({"interleave": "band"}, False),              # planar: bands are apart in the file
])
def test_stored_pixels_only_when_the_file_holds_the_preview_bytes(tmp_path: Path, layout: dict, expected: bool) -> None:
    data = rasters.textured(4, 90, 70)
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB", **layout)
    info = inspect_input(str(src))
    stored = jpeg_pillow.stored_pixels(info, plan_preview(info))
    assert (stored is not None) is expected
    if stored is not None:
        raw = src.read_bytes()[stored.offset:stored.offset + 90 * 70 * 4]
        pixels = np.frombuffer(raw, dtype="uint8").reshape(90, 70, 4)
        np.testing.assert_array_equal(np.moveaxis(pixels, -1, 0), data)


def test_stored_pixels_refused_when_the_preview_is_not_the_bytes(tmp_path: Path) -> None:
    """Nodata, uint16 and alpha all change the preview's pixels: those read through the VRT."""
    cases = {
        "nodata": rasters.write(tmp_path / "nd.tif", rasters.textured(3, 40, 50), photometric="RGB", nodata=0),
        "uint16": rasters.write(tmp_path / "u16.tif", rasters.textured(1, 40, 50, dtype="uint16")),
        "alpha": rasters.write(tmp_path / "a.tif", rasters.textured(4, 40, 50), photometric="RGB", alpha="YES"),
    }
    for name, src in cases.items():
        info = inspect_input(str(src))
        assert jpeg_pillow.stored_pixels(info, plan_preview(info)) is None, name


@needs_turbo
def test_stored_and_vrt_reads_encode_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = rasters.textured(4, 130, 150)
    plain = rasters.write(tmp_path / "plain.tif", data, photometric="RGB")
    tiled = rasters.write(tmp_path / "tiled.tif", data, photometric="RGB", tiled=True, blockxsize=64, blockysize=64)
    a = convert(plain, tmp_path / "a.tif", tmp_path / "a.jpg", 4)
    b = convert(tiled, tmp_path / "b.tif", tmp_path / "b.jpg", 4)
    assert (a.jpeg_method, b.jpeg_method) == ("pillow-stored", "pillow")
    assert (tmp_path / "a.jpg").read_bytes() == (tmp_path / "b.jpg").read_bytes()


@needs_turbo
@needs_gdal_translate
@pytest.mark.skipif(not REAL_RGB.exists(), reason="the size bound is for real imagery (../shared/testdata): "
                    "on synthetic noise the standard tables' share of a small file is larger")
def test_large_previews_use_standard_tables_with_the_original_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past OPTIMIZE_MAX_BYTES libjpeg's whole-image buffers are skipped: standard Huffman tables, so the bytes
    differ a little, but the decoded pixels are the original tool's."""
    monkeypatch.setattr(jpeg_pillow, "OPTIMIZE_MAX_BYTES", 1000)
    data = _real_content(3, 240, 330)
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB")
    result = convert(src, tmp_path / "o.tif", tmp_path / "o.jpg", 3)
    assert result.jpeg_method == "pillow-stored+std-tables"
    reference = _original_jpeg(src, tmp_path / "ref.jpg", 3)
    ours = (tmp_path / "o.jpg").read_bytes()
    assert ours != reference
    assert len(ours) < len(reference) * 1.05
    np.testing.assert_array_equal(rasters.read(tmp_path / "o.jpg"), rasters.read(tmp_path / "ref.jpg"))


def test_mapped_pixels_may_take_half_the_budget_when_the_jpeg_runs_alone() -> None:
    """4-band 10000² maps 400 MB: a quarter of 1 GB is too little beside the COG threads, half is fine after."""
    if not jpeg_pillow.pillow_turbo_available():
        pytest.skip("Pillow with libjpeg-turbo is not installed")
    def mapped(size: int) -> jpeg_pillow.StoredPixels:
        return jpeg_pillow.StoredPixels("in.tif", 8, size, size, 4)

    assert not jpeg_pillow.use_pillow(10000, 10000, 3, 1024, mapped(10000), alone=False)
    assert jpeg_pillow.use_pillow(10000, 10000, 3, 1024, mapped(10000), alone=True)
    assert not jpeg_pillow.use_pillow(10000, 10000, 3, 1024)  # read through the VRT: 7 bytes a pixel
    assert not jpeg_pillow.use_pillow(20000, 20000, 3, 1024, mapped(20000), alone=True)


@needs_turbo
@pytest.mark.parametrize("count,mapped_while_encoding", [(3, False), (4, True), (1, True)])
def test_a_copied_rgb_image_releases_the_mapping_before_libjpeg_encodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     count: int, mapped_while_encoding: bool) -> None:
    """Pillow keeps RGB in 32 bits, so a mapped 3-band file is copied: the mapping is closed before the encode,
    when libjpeg's coefficient buffer grows, and its pages leave the process. L and RGBX images are the
    mapped pages themselves and keep them."""
    from PIL import Image

    src = rasters.write(tmp_path / "in.tif", rasters.textured(count, 90, 110), photometric="RGB" if count > 1 else None)
    info = inspect_input(str(src))
    stored = jpeg_pillow.stored_pixels(info, plan_preview(info))
    assert stored is not None
    seen: list[bool] = []
    real_save = Image.Image.save

    def save(image, *args, **kw):
        seen.append(str(src) in Path("/proc/self/maps").read_text())
        return real_save(image, *args, **kw)

    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "out.jpg"
    jpeg_pillow.write_jpeg_pillow("unused.vrt", str(out), min(count, 3), 80, stored)
    assert seen == [mapped_while_encoding]
    with Image.open(out) as img:
        assert img.size == (110, 90)


@needs_turbo
def test_a_3_band_file_read_in_strips_encodes_the_bytes_of_the_vrt_read(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Strips of 7 rows (the last one short) fill Pillow's RGB image exactly: the JPEG equals the one encoded
    from GDAL's read of the same pixels through the preview VRT."""
    monkeypatch.setattr(jpeg_pillow, "STRIP_BYTES", 7 * 110 * 3)
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 90, 110), photometric="RGB")
    info = inspect_input(str(src))
    plan = plan_preview(info)
    stored = jpeg_pillow.stored_pixels(info, plan)
    assert stored is not None
    jpeg_pillow.write_jpeg_pillow("unused.vrt", str(tmp_path / "strips.jpg"), 3, 80, stored)
    vrt = tmp_path / "p.vrt"
    vrt.write_text(preview_vrt(info, plan))
    jpeg_pillow.write_jpeg_pillow(str(vrt), str(tmp_path / "vrt.jpg"), 3, 80)
    assert (tmp_path / "strips.jpg").read_bytes() == (tmp_path / "vrt.jpg").read_bytes()


def test_a_3_band_file_that_ends_inside_its_pixels_fails_with_a_reason(tmp_path: Path) -> None:
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 40, 50), photometric="RGB")
    info = inspect_input(str(src))
    stored = jpeg_pillow.stored_pixels(info, plan_preview(info))
    assert stored is not None
    with open(src, "r+b") as fh:
        fh.truncate(stored.offset + 50 * 3 * 10 + 5)
    with pytest.raises(GdalFailure, match="ends inside its pixels"):
        jpeg_pillow.write_jpeg_pillow("unused.vrt", str(tmp_path / "o.jpg"), 3, 80, stored)


@needs_turbo
def test_a_3_band_file_is_read_a_strip_at_a_time_never_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's RGB image holds 4 bytes a pixel; the file is read beside it STRIP_BYTES at a time, not mapped
    whole (which at 5000² put the peak above the original tool's), and every strip lands in the same buffer
    (a new one per strip left freed memory in the heap that libjpeg's buffer then did not reuse)."""
    import os as os_module

    monkeypatch.setattr(jpeg_pillow, "STRIP_BYTES", 10 * 110 * 3)
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 95, 110), photometric="RGB")
    info = inspect_input(str(src))
    stored = jpeg_pillow.stored_pixels(info, plan_preview(info))
    assert stored is not None
    reads: list[int] = []
    targets: set[int] = set()
    real_preadv = os_module.preadv

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        reads.append(sum(b.nbytes for b in buffers))
        targets.update(id(b.obj) for b in buffers)
        assert str(src) not in Path("/proc/self/maps").read_text()
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(jpeg_pillow.os, "preadv", preadv)
    jpeg_pillow.write_jpeg_pillow("unused.vrt", str(tmp_path / "o.jpg"), 3, 80, stored)
    assert reads == [10 * 110 * 3] * 9 + [5 * 110 * 3]
    assert len(targets) == 1


def test_whole_image_bytes_count_only_what_the_heap_holds() -> None:
    """Mapped L and RGBX images are the file's pages (no heap); a 3-band file is copied into Pillow's 32-bit
    image; a VRT read holds the read and the image; optimised tables add their whole-image buffers."""
    def stored(samples: int) -> jpeg_pillow.StoredPixels:
        return jpeg_pillow.StoredPixels("in.tif", 8, 100, 50, samples)

    pixels = 100 * 50
    assert jpeg_pillow.whole_image_bytes(100, 50, 1, stored(1), optimize=False) == 0
    assert jpeg_pillow.whole_image_bytes(100, 50, 3, stored(4), optimize=True) == pixels * 4
    assert jpeg_pillow.whole_image_bytes(100, 50, 3, stored(3), optimize=True) == pixels * (4 + 4)
    assert jpeg_pillow.whole_image_bytes(100, 50, 3, None, optimize=False) == pixels * (3 + 4)
    assert jpeg_pillow.whole_image_bytes(100, 50, 1, None, optimize=True) == pixels * (2 + 3)


@needs_turbo
@pytest.mark.parametrize("threads", [1, 2])
def test_the_heap_is_handed_back_after_a_preview_with_large_whole_image_buffers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """One trim more, after the JPEG is written, exactly when the preview's buffers reach TRIM_AFTER_BYTES."""
    from cog_pipeline.transformations import convert as convert_module

    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 64, 80), photometric="RGB")
    buffers = 64 * 80 * (4 + 4)  # a 3-band file's stored pixels, optimised tables

    def trims(threshold: int, name: str) -> list[bool]:
        seen: list[bool] = []
        out = tmp_path / name
        monkeypatch.setattr(convert_module, "TRIM_AFTER_BYTES", threshold)
        monkeypatch.setattr(convert_module, "_trim_heap",
                            lambda: seen.append(any(p.suffix == ".jpg" for p in out.rglob("*"))) or True)
        result = convert(src, out / "o.tif", out / "o.jpg", 3, threads=threads)
        assert result.jpeg_method == "pillow-stored"
        return seen

    below, at = trims(buffers + 1, "below"), trims(buffers, "at")
    assert len(at) == len(below) + 1
    assert at.count(True) == below.count(True) + 1  # the extra one once a JPEG file exists
