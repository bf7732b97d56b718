"""The JPEG preview through Pillow's libjpeg-turbo, where Pillow is importable and the preview fits the budget.

Why: rasterio's wheels bundle IJG libjpeg 9, whose encoder is about 2.5x slower than libjpeg-turbo (its
16x16 scaled DCT for subsampled chroma) and whose pixels differ from those of the GDAL the original tool
runs (Debian's and the GDAL container's, both built on libjpeg-turbo). Pillow's wheels bundle libjpeg-turbo;
at the same quality with optimised Huffman tables (what GDAL's JPEG driver asks libjpeg for) it writes
the same bytes as GDAL's JPEG driver on libjpeg-turbo, so the venv now writes the original tool's JPEG
(tested against ``gdal_translate``). The stock GDAL container has no Pillow: there GDAL's driver writes it.

The pixels come from the same VRT the driver would read, so band choice, scaling, masking and
downsampling (preview.py) are unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .backend import get_backend
from .exit_codes import GdalFailure
from .settings import JPEG_ENCODER_ENV
from .tiff import TiffTag, read_tiff_ifds

if TYPE_CHECKING:
    from PIL import Image

    from .preview import PreviewPlan
    from .rasterinfo import RasterInfo

#: Bytes per preview pixel the Pillow path holds for the pixels: the bands as read (1 per band) and
#: Pillow's image (1 for gray, 4 for RGB: Pillow keeps RGB in 32 bits); from a mapped file, 1 or 4.
PIXEL_BYTES = {1: 1 + 1, 3: 3 + 4}
#: What optimised Huffman tables add per pixel: libjpeg's whole-image coefficient buffer (2 bytes per
#: coefficient; 4:2:0 chroma) and Pillow's whole-image output buffer (1 byte per pixel).
OPTIMIZE_BYTES = {1: 2 + 1, 3: 3 + 1}
#: The Pillow path may use at most this share of the memory budget for the pixels.
BUDGET_SHARE = 4
#: Optimised tables (the original tool's exact bytes) while their buffers stay within this: about what the
#: COG half itself adds at ~3000² (measured +67 MiB at 2500² 4-band), so the JPEG never sets the peak.
#: Larger previews get libjpeg's standard tables: the same pixels, ~0.4 % more bytes, streamed.
OPTIMIZE_MAX_BYTES = 64 << 20

#: Pillow's mode for a file's stored pixels, by samples per pixel (4: RGBX, the fourth band ignored).
MAPPED_MODES = {1: "L", 3: "RGB", 4: "RGBX"}
#: Modes whose bytes Pillow's frombuffer maps as they are (no copy): the image then needs the mapping.
#: RGB is unpacked into Pillow's own 32-bit image instead, read from the file STRIP_BYTES at a time.
SHARED_MODES = ("L", "RGBX")
#: How much of a 3-band file is read at once into Pillow's RGB image. Why strips: the image holds 4 bytes a
#: pixel, and the whole file mapped beside it while it is filled would hold 3 more (at 5000² 3-band, one CPU,
#: the peak was 213 MiB against the original tool's 190: measured).
STRIP_BYTES = 256 << 10

#: After a preview whose whole-image buffers (:func:`whole_image_bytes`) reached this, the converter hands the
#: freed heap back to the OS at once. Why: glibc raises its mmap threshold as mapped blocks are freed, so in a
#: worker that has converted before, these 20-45 MB come from the heap and stay there after the encode,
#: fragmented; the next job then peaked on top of them (24 x 2500² 3-band on 2 cores: one worker's jobs at
#: 102-105 MiB, the original tool's 98). Smaller buffers are left for the next job to reuse: on this VM every
#: page handed back costs ~5 us to fault in again (a whole-heap trim after every job cost 5-8 % CPU at 2500²).
TRIM_AFTER_BYTES = 16 << 20

_turbo: Optional[bool] = None


@dataclass(frozen=True)
class StoredPixels:
    """Where a file keeps exactly the preview's pixels: ``samples`` bytes per pixel, row after row, from
    byte ``offset`` (see :func:`stored_pixels`)."""

    path: str
    offset: int
    width: int
    height: int
    samples: int

    @property
    def mode(self) -> str:
        """Pillow's mode for these pixels (MAPPED_MODES)."""
        return MAPPED_MODES[self.samples]

    @property
    def mapped(self) -> bool:
        """Whether Pillow's image is the file's bytes themselves (SHARED_MODES), not a copy in the heap."""
        return self.mode in SHARED_MODES


def pillow_turbo_available() -> bool:
    """True when Pillow imports and its JPEG codec is libjpeg-turbo (whose output matches GDAL's on turbo)."""
    global _turbo
    if _turbo is None:
        try:
            from PIL import features  # noqa: PLC0415 - only where a preview is written

            _turbo = bool(features.check_feature("libjpeg_turbo"))
        except Exception:  # noqa: BLE001 - no Pillow, or a build without JPEG: GDAL's driver writes it
            _turbo = False
    return _turbo


def use_pillow(width: int, height: int, bands: int, budget_mb: int, stored: Optional[StoredPixels] = None,
               alone: bool = False) -> bool:
    """Whether this preview is written by Pillow: env ``COG_PIPELINE_JPEG_ENCODER`` ("gdal" forces GDAL's
    driver, "pillow" asks for Pillow whatever the size), else Pillow when it has libjpeg-turbo and the
    preview's pixels fit the budget's share (larger previews keep GDAL's driver or the strips).

    ``stored``: the pixels will be mapped from the file (:func:`stored_pixels`: clean file pages the kernel
    can reclaim, no copy); then, when the JPEG runs ``alone`` (after the COG, one CPU), they may take half the
    budget instead of a quarter."""
    wanted = os.environ.get(JPEG_ENCODER_ENV, "").strip().lower() or "auto"
    if wanted == "gdal" or bands not in PIXEL_BYTES or not pillow_turbo_available():
        return False
    if wanted == "pillow":
        return True
    # Mapped L and RGBX images are the file's pages themselves; mapped RGB is copied into a 32-bit image.
    if stored is None:
        per_pixel = PIXEL_BYTES[bands]
    else:
        per_pixel = stored.samples if stored.mapped else 4
    share = BUDGET_SHARE // 2 if stored is not None and alone else BUDGET_SHARE
    return width * height * per_pixel <= (budget_mb << 20) // share


def optimize_tables(width: int, height: int, bands: int) -> bool:
    """Optimised Huffman tables (GDAL's JPEG driver's choice, so the original tool's bytes) when their
    whole-image buffers fit OPTIMIZE_MAX_BYTES; else standard tables, decoded pixels unchanged."""
    return width * height * OPTIMIZE_BYTES.get(bands, 4) <= OPTIMIZE_MAX_BYTES


def whole_image_bytes(width: int, height: int, bands: int, stored: Optional[StoredPixels], optimize: bool) -> int:
    """Heap bytes the Pillow path holds for the whole preview at once: Pillow's image unless it maps the file
    (L and RGBX), or the pixels as read plus the image (from the VRT), and the optimised tables' buffers."""
    if stored is not None:
        per_pixel = 0 if stored.mapped else 4
    else:
        per_pixel = PIXEL_BYTES.get(bands, 4)
    return width * height * (per_pixel + (OPTIMIZE_BYTES.get(bands, 4) if optimize else 0))


def stored_pixels(info: "RasterInfo", plan: "PreviewPlan") -> Optional[StoredPixels]:
    """Where the file stores exactly the preview's pixels (read from its header only); else None.

    Why: GDAL de-interleaves a pixel-interleaved input into per-band blocks and back (0.13 CPU-s for a
    2500² 4-band image, as long as the JPEG encode itself). An uncompressed, contiguous, 8-bit TIFF
    whose preview is its first 1 or 3 bands as they are (no scaling, mask, nodata, palette or
    downsampling: see preview.py) holds the preview's pixels as one block of bytes. That is every input
    of the parallel path once a compressed one has been decoded into its uncompressed temporary."""
    wanted = list(range(1, plan.band_count + 1))
    if (plan.bands != wanted or plan.scale is not None or plan.masked or plan.nodata_to_black
            or plan.palette_expanded or plan.downsample != 1 or info.count not in (1, 3, 4)
            or any(dt != "uint8" for dt in info.dtypes) or (plan.width, plan.height) != (info.width, info.height)):
        return None
    try:
        ifds, size = read_tiff_ifds(info.path, max_ifds=1)
    except (OSError, ValueError):
        return None
    tags = ifds[0].tags if ifds else {}
    offsets, counts = tags.get(TiffTag.STRIP_OFFSETS, []), tags.get(TiffTag.STRIP_BYTE_COUNTS, [])
    plain = (tags.get(TiffTag.COMPRESSION, [1]) == [1] and not ifds[0].tiled
             and tags.get(TiffTag.PLANAR_CONFIG, [1]) == [1] and tags.get(TiffTag.FILL_ORDER, [1]) == [1]
             and set(tags.get(TiffTag.BITS_PER_SAMPLE, [0])) == {8} and tags.get(TiffTag.SAMPLE_FORMAT, [1])[0] == 1
             and tags.get(TiffTag.SAMPLES_PER_PIXEL, [1]) == [info.count]
             and tags.get(TiffTag.PHOTOMETRIC, [0])[0] in (0, 1, 2)  # gray or RGB, never YCbCr/CMYK/palette
             and (ifds[0].width, ifds[0].height) == (info.width, info.height))
    nbytes = info.width * info.height * info.count
    if not plain or not offsets or len(offsets) != len(counts) or sum(counts) != nbytes:
        return None
    if any(offsets[k] + counts[k] != offsets[k + 1] for k in range(len(offsets) - 1)) or offsets[0] + nbytes > size:
        return None
    return StoredPixels(info.path, offsets[0], info.width, info.height, info.count)


def write_jpeg_pillow(vrt: str, jpg: str, bands: int, quality: int, stored: Optional[StoredPixels] = None,
                      optimize: bool = True) -> None:
    """Encode the preview's 8-bit bands as a baseline JPEG, libjpeg defaults plus (``optimize``) optimised
    Huffman tables, as GDAL's JPEG driver does. ``stored`` (:func:`stored_pixels`) maps the file's bytes
    instead of reading the VRT. Read failures raise ``GdalFailure``."""
    from PIL import Image  # noqa: PLC0415

    if stored is not None:
        if not stored.mapped:
            _rgb_in_strips(stored).save(jpg, format="JPEG", quality=quality, optimize=optimize)
            return
        import mmap  # noqa: PLC0415

        # L, and RGBX for 4 samples, which Pillow maps without a copy and libjpeg-turbo encodes as RGB (the
        # fourth band is no alpha here: plan.masked is False); same bytes as GDAL's driver on bands 1-3 (tested).
        nbytes = stored.width * stored.height * stored.samples
        with open(stored.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            with memoryview(mapped)[stored.offset:stored.offset + nbytes] as pixels:
                image = Image.frombuffer(stored.mode, (stored.width, stored.height), pixels, "raw", stored.mode, 0, 1)
                image.save(jpg, format="JPEG", quality=quality, optimize=optimize)
                del image  # the mapping can close only once nothing refers to it
        return
    # One pixel-interleaved read, as Pillow lays out "L" and "RGB": no numpy, no per-band planes to merge.
    width, height, pixels = get_backend().read_interleaved(vrt, bands)
    mode = "L" if bands == 1 else "RGB"
    image = Image.frombuffer(mode, (width, height), pixels, "raw", mode, 0, 1)
    if mode != "L":
        del pixels  # Pillow copied RGB into its own 32-bit image: the read buffer goes before libjpeg's grows
    image.save(jpg, format="JPEG", quality=quality, optimize=optimize)


def _rgb_in_strips(stored: StoredPixels) -> "Image.Image":
    """Pillow's RGB image of a 3-band file's stored pixels, read STRIP_BYTES at a time into one buffer and one
    strip image that every strip reuses, so that no more than a strip of the file is held beside the image (and
    no mapping of it is left while libjpeg encodes).

    Why reused: a new bytes object and strip image per strip left their freed memory in the worker's heap, where
    libjpeg's coefficient buffer did not fit it: 8 MiB more at the encode's peak (3-band 2500², one CPU: 100 vs
    92 MiB, measured in one process after a COG)."""
    from PIL import Image  # noqa: PLC0415

    row = stored.width * stored.samples
    rows = max(1, min(stored.height, STRIP_BYTES // row))
    image = Image.new("RGB", (stored.width, stored.height))
    strip = Image.new("RGB", (stored.width, rows))
    buffer = memoryview(bytearray(rows * row))
    with open(stored.path, "rb", buffering=0) as fh:
        for y in range(0, stored.height, rows):
            n = min(rows, stored.height - y)
            got = os.preadv(fh.fileno(), [buffer[:n * row]], stored.offset + y * row)
            if got != n * row:
                raise GdalFailure(f"{stored.path}: the file ends inside its pixels (row {y + got // row})")
            if n != rows:  # the last, shorter strip
                strip = Image.new("RGB", (stored.width, n))
            strip.frombytes(buffer[:n * row], "raw", "RGB", 0, 1)
            image.paste(strip, (0, y))
    return image
