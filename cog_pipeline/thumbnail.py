"""A small JPEG picture of a COG, for the run report: made from its smallest overview.

Two callers make the same picture. The local engine's worker makes it right after a job's outputs are in
place, from the COG still on its disk (~8 ms, beside the other jobs), and leaves it in the run directory as
``jobs/<job id>.thumb.jpg``; the report then only reads that file, instead of opening every COG one after the
other once the last job has ended (~15 ms per image, all of it after the run's work is done, plus rasterio's
import in the scan process). For jobs that ran elsewhere (Pegasus) the report reads the COG by ranges
(report.py). Encoded by Pillow (libjpeg-turbo); GDAL only reads the overview.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

THUMB_PX = 192
THUMB_QUALITY = 75
THUMB_SUFFIX = ".thumb.jpg"


def thumbnail_jpeg(name: str, opener: Any = None, max_px: int = THUMB_PX) -> bytes:
    """The JPEG bytes of a picture at most ``max_px`` on its longer side (RGB from bands 1-3, else grey
    from band 1; other data types stretched to 0-255). ``opener``: rasterio's ``opener=`` for ranged reads.
    Raises whatever reading or encoding raises; callers decide what a missing picture costs."""
    import numpy as np
    from PIL import Image

    from .transformations.backend_rasterio import import_rasterio_without_boto3

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
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=THUMB_QUALITY)
    return out.getvalue()


def thumbnail_path(jobs_dir: str | os.PathLike[str], job_id: str) -> Path:
    """Where a job's picture lives: beside its record and log (``jobs/ID0000001.thumb.jpg``)."""
    return Path(jobs_dir) / f"{job_id}{THUMB_SUFFIX}"


def write_thumbnail(cog: Path, dest: Path) -> bool:
    """Make ``cog``'s picture at ``dest`` (a temporary renamed into place); False, and nothing left, when it
    cannot be made. Not fsynced: a picture lost or torn in a crash is only read again by the report, which
    checks it is a whole JPEG and otherwise reads the COG itself."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(thumbnail_jpeg(str(cog)))
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
