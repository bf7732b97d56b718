"""Writing the JPEG preview from its VRT (preview.py) with one of three writers, chosen by what fits the budget:

* baseline strips (jpeg_strips.py) when GDAL's JPEG driver would hold more than a third of it in libjpeg's
  whole-image coefficient buffer (a 40000² preview within a 1 GB slot);
* Pillow's libjpeg-turbo where Pillow has it (the venv) and the preview fits a quarter of it: it writes the
  container's bytes, where rasterio's bundled IJG libjpeg 9 is 2-3x slower and its pixels differ;
* else GDAL's JPEG driver (the only writer in the stock GDAL container).
"""

from __future__ import annotations

import functools
from typing import List, Optional, Tuple

from .backend import get_backend
from .jpeg_strips import coefficient_buffer_bytes, write_streamed_jpeg

#: Bytes per preview pixel the Pillow path holds: the bands as read (1 per band) and Pillow's image (1 or 4).
_PILLOW_BYTES = {1: 2, 3: 7}


@functools.lru_cache(maxsize=1)
def pillow_turbo() -> bool:
    """True when Pillow imports and its JPEG codec is libjpeg-turbo."""
    try:
        from PIL import features  # noqa: PLC0415

        return bool(features.check_feature("libjpeg_turbo"))
    except Exception:  # noqa: BLE001 - no Pillow, or one without JPEG: GDAL's driver writes it
        return False


def choose_writer(width: int, height: int, bands: int, budget_mb: int) -> str:
    """"strips", "pillow" or "driver" for a preview of this size under this budget."""
    budget = budget_mb << 20
    if coefficient_buffer_bytes(width, height, bands) > budget // 3:
        return "strips"
    if pillow_turbo() and width * height * _PILLOW_BYTES[bands] <= budget // 4:
        return "pillow"
    return "driver"


def write_preview(vrt: str, jpg: str, strips_tif: str, bands: int, quality: int, writer: str,
                  composite: Optional[Tuple[str, List[int]]] = None) -> str:
    """Write the preview with ``writer`` ("strips", "pillow" or "driver"); returns it. ``composite`` (Pillow
    only; preview.composites_in_numpy): (input path, preview bands) read straight from the input and composited
    onto black with the first band's mask, instead of through the VRT."""
    if writer == "strips":
        write_streamed_jpeg(vrt, strips_tif, jpg, bands, quality)
    elif writer == "pillow":
        _write_pillow(vrt, jpg, bands, quality, composite)
    else:
        get_backend().create_copy("JPEG", vrt, jpg, {"QUALITY": str(quality)})
    return writer


def _write_pillow(vrt: str, jpg: str, bands: int, quality: int,
                  composite: Optional[Tuple[str, List[int]]] = None) -> None:
    """libjpeg's defaults (4:2:0, ISLOW DCT) and optimised Huffman tables: what GDAL's driver asks for."""
    from PIL import Image  # noqa: PLC0415

    be = get_backend()
    if composite:  # round(value * alpha / 255), in 16 bits (65025 + 127 fits), band by band
        import numpy as np  # noqa: PLC0415

        path, picks = composite
        alpha = be.read(path, picks[:1], masks=True)[0].astype(np.uint16)
        planes = np.stack([((plane * alpha + 127) // 255).astype(np.uint8) for plane in be.read(path, picks)])
        del alpha
    else:
        planes = be.read(vrt, list(range(1, bands + 1)))
    height, width = planes.shape[1:]
    layers = [Image.frombuffer("L", (width, height), plane, "raw", "L", 0, 1) for plane in planes]
    image = layers[0] if bands == 1 else Image.merge("RGB", layers)
    del layers, planes
    image.save(jpg, format="JPEG", quality=quality, optimize=True)
