"""A small JPEG picture of a processed image, for the run report.

Two sources, one picture size (``THUMB_PX`` on the longer side, JPEG quality ``THUMB_QUALITY``):

* The local engine's worker makes it right after a job's outputs are in place, from the job's own JPEG
  preview still on its disk, and leaves it in the run directory as ``jobs/<job id>.thumb.jpg``; the report
  then only reads that file. The preview is a faithful source: it is the picture the job made for people to
  look at (bands 1-3 of a 4-band image, else one band as grey; palettes expanded to colour, masked pixels
  black, non-8-bit data already stretched to 0-255 by the converter). It is read with Pillow alone, which
  asks libjpeg for a DCT-scaled decode (``draft``: a 10000² preview is decoded at 1250², in ~5 MB, 0.11 s), so
  a worker's picture imports neither numpy nor rasterio (issue 10: a worker converting an 8-bit image through
  a backend that calls libgdal directly must not pay their imports or their memory for a picture).
* For jobs that ran elsewhere (Pegasus), or when the worker's picture is missing or stale, the report reads the
  COG's smallest overview by ranges (report.py -> :func:`thumbnail_jpeg`, rasterio + numpy): the preview is
  full size (MBs), the overview a block or two near the COG's front.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

THUMB_PX = 192
THUMB_QUALITY = 75
THUMB_SUFFIX = ".thumb.jpg"


def thumbnail_jpeg(name: str, opener: Any = None, max_px: int = THUMB_PX) -> bytes:
    """The JPEG bytes of a COG's picture at most ``max_px`` on its longer side (RGB from bands 1-3, else grey
    from band 1; other data types stretched to 0-255), read from its smallest fitting overview: the report's
    fallback. ``opener``: rasterio's ``opener=`` for ranged reads.
    Raises whatever reading or encoding raises; callers decide what a missing picture costs."""
    import numpy as np
    from PIL import Image

    from cog_pipeline.transformations.backend_rasterio import import_rasterio_without_boto3

    import_rasterio_without_boto3()
    import rasterio

    with rasterio.open(name, opener=opener) as src:
        scale = max(src.width, src.height) / max_px
        w, h = max(1, round(src.width / max(scale, 1))), max(1, round(src.height / max(scale, 1)))
        bands = [1, 2, 3] if src.count >= 3 else [1]
        data = src.read(bands, out_shape=(len(bands), h, w))
    if data.dtype != np.uint8:
        lo, hi = float(data.min()), float(data.max())
        data = ((data - lo) / ((hi - lo) or 1) * 255).astype(np.uint8)
    pixels = np.ascontiguousarray(np.moveaxis(data, 0, -1)) if len(bands) == 3 else np.ascontiguousarray(data[0])
    return _encoded(Image.fromarray(pixels))


def preview_thumbnail_jpeg(preview: str | os.PathLike[str], max_px: int = THUMB_PX) -> bytes:
    """The JPEG bytes of a JPEG preview's picture at most ``max_px`` on its longer side, aspect kept (grey
    stays grey, RGB stays RGB). Pillow only: libjpeg decodes at 1/2, 1/4 or 1/8 (``draft``) to the smallest
    size not under the picture's, then ``thumbnail`` resamples the rest of the way.
    Raises whatever reading or encoding raises (not a JPEG, truncated, too large to decode)."""
    from PIL import Image
    from PIL.JpegImagePlugin import JpegImageFile

    # The JPEG reader itself, not Image.open: only a JPEG is accepted, and Pillow's decompression-bomb limit
    # is applied to the size the DCT-scaled decode really holds, not to the full size (Image.open would refuse
    # the 40000² previews the converter makes, although they decode at 5000² here).
    with JpegImageFile(os.fspath(preview)) as img:
        scale = max(img.width, img.height) / max_px
        if scale > 1:
            img.draft(img.mode, (max(1, math.floor(img.width / scale)), max(1, math.floor(img.height / scale))))
        limit = Image.MAX_IMAGE_PIXELS
        if limit and img.width * img.height > limit:
            raise ValueError(f"preview decodes at {img.width}x{img.height}, over {limit} pixels")
        img.thumbnail((max_px, max_px))
        return _encoded(img if img.mode in ("L", "RGB") else img.convert("RGB"))


def _encoded(picture: Any) -> bytes:
    """A picture's JPEG bytes, as both sources write them."""
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=THUMB_QUALITY)
    return out.getvalue()


def thumbnail_path(jobs_dir: str | os.PathLike[str], job_id: str) -> Path:
    """Where a job's picture lives: beside its record and log (``jobs/ID0000001.thumb.jpg``)."""
    return Path(jobs_dir) / f"{job_id}{THUMB_SUFFIX}"


def write_thumbnail(preview: Path, dest: Path) -> bool:
    """Make the picture of a job's JPEG ``preview`` at ``dest`` (a temporary renamed into place); False, and
    nothing left, when it cannot be made. Not fsynced: a picture lost or torn in a crash is only read again by
    the report, which checks it is a whole JPEG and otherwise reads the COG itself."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(preview_thumbnail_jpeg(preview))
        os.replace(tmp, dest)
        return True
    except Exception:  # noqa: BLE001 - a picture must never cost a job
        tmp.unlink(missing_ok=True)
        return False


def read_thumbnail(path: Path) -> bytes | None:
    """A picture written by :func:`write_thumbnail`, if it is there and a whole JPEG (start and end markers)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9" else None
