"""Planning the JPEG preview: which bands, scaling, masking and size, as a VRT over the input that GDAL streams
line by line (no whole image is held in a numpy array)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .backend import GMF_ALPHA, GMF_PER_DATASET, RasterInfo, get_backend
from .exit_codes import ConversionError, ExitCode
from .settings import JPEG_MAX_DIMENSION, STATS_SAMPLE_SIZE, SUPPORTED_TYPES
from .xmltext import escape as _xml_escape


@dataclass
class PreviewPlan:
    """How the JPEG preview is derived from the input."""

    bands: List[int]
    width: int
    height: int
    downsample: int = 1
    scale: Optional[Tuple[float, float]] = None  # (lo, hi) mapped linearly to 0..255
    masked: bool = False  # alpha/per-dataset mask composited onto black
    palette_expanded: bool = False
    description: str = ""

    @property
    def band_count(self) -> int:
        return 3 if self.palette_expanded else len(self.bands)


def _preview_scale(info: RasterInfo, bands: List[int]) -> Tuple[float, float]:
    """(lo, hi) of the valid pixels of ``bands``, from a read of at most STATS_SAMPLE_SIZE pixels a side."""
    import numpy as np  # noqa: PLC0415 - only for non-8-bit previews

    be = get_backend()
    w, h = info.width, info.height
    factor = max(1.0, max(w, h) / STATS_SAMPLE_SIZE)
    shape = (max(1, int(round(h / factor))), max(1, int(round(w / factor))))
    data = be.read(info.path, bands, out_shape=shape).astype(np.float64)
    valid = np.isfinite(data)
    for k, b in enumerate(bands):
        nd = info.nodata[b - 1]
        if nd is not None and not math.isnan(nd):
            valid[k] &= data[k] != nd
        if info.mask_flags[b - 1] & (GMF_PER_DATASET | GMF_ALPHA):
            valid[k] &= be.read(info.path, [b], out_shape=shape, masks=True)[0] > 0
    if not valid.any():
        return (0.0, 0.0)
    vals = data[valid]
    return (float(vals.min()), float(vals.max()))


def plan_preview(info: RasterInfo, band_rule: str = "rgb") -> PreviewPlan:
    """Decide which bands, scaling, masking and size the JPEG preview gets (see docs/conversion.md).

    Nodata pixels keep their stored value, as the original tool (`gdal_translate -of JPEG`) shows them;
    an alpha band or a per-dataset mask is composited onto black."""
    for b, dt in enumerate(info.dtypes, start=1):
        if dt not in SUPPORTED_TYPES:  # complex data among them
            raise ConversionError(ExitCode.UNSUPPORTED_INPUT,
                                  f"band {b} has data type {dt}; a JPEG preview cannot be made from it")
    palette = (band_rule == "rgb" and info.has_palette and info.colorinterp[0] == "palette"
               and info.dtypes[0] in ("uint8", "uint16"))
    non_alpha = [b for b in range(1, info.count + 1) if info.colorinterp[b - 1] != "alpha"]
    if not non_alpha:
        raise ConversionError(ExitCode.UNSUPPORTED_INPUT, "every band is an alpha band")
    if palette:
        bands = [1]
    elif len(non_alpha) >= 3 and band_rule == "rgb":
        bands = non_alpha[:3]
    else:
        bands = non_alpha[:1]
    k = max(1, -(-max(info.width, info.height) // JPEG_MAX_DIMENSION))
    masked = any(info.mask_flags[b - 1] & (GMF_PER_DATASET | GMF_ALPHA) for b in bands)
    scale = None
    notes = [f"bands {','.join(map(str, bands))}" if not palette else "palette expanded to RGB"]
    if not palette and any(info.dtypes[b - 1] != "uint8" for b in bands):
        scale = _preview_scale(info, bands)
        notes.append(f"{info.dtypes[bands[0] - 1]} scaled linearly {scale[0]:g}..{scale[1]:g} -> 0..255")
    if masked:
        notes.append("masked pixels composited onto black")
    if k > 1:
        notes.append(f"downsampled 1/{k} (JPEG limit {JPEG_MAX_DIMENSION} px)")
    return PreviewPlan(bands, -(-info.width // k), -(-info.height // k), k, scale, masked, palette, "; ".join(notes))


def _source_xml(src: str, band: str, info: RasterInfo, plan: PreviewPlan, extra: str = "") -> str:
    resampling = ' resampling="average"' if plan.downsample > 1 else ""
    tag = "ComplexSource" if extra else "SimpleSource"
    return (f"<{tag}{resampling}><SourceFilename relativeToVRT=\"0\">{_xml_escape(src)}</SourceFilename>"
            f'<SourceBand>{band}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{info.width}" ySize="{info.height}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{plan.width}" ySize="{plan.height}"/>{extra}</{tag}>')


def composites_in_numpy(plan: PreviewPlan) -> bool:
    """Whether a reader of the whole preview composites it onto black itself (jpeg.py, Pillow path): 8-bit bands
    at full size, where ``round(value * alpha / 255)`` is exactly what the VRT's ``mul`` yields (the product is
    never a tie), from one read of the input's bands and mask instead of one per band through Float64 (2000²
    RGBA: 0.26 instead of 1.81 s)."""
    return plan.masked and plan.scale is None and plan.downsample == 1 and not plan.palette_expanded


def preview_vrt(info: RasterInfo, plan: PreviewPlan) -> str:
    """A VRT (XML text) that yields the 8-bit preview bands, streamed by GDAL line by line."""
    src = os.path.abspath(info.path)
    scale = ""
    if plan.scale is not None:
        lo, hi = plan.scale
        ratio = 255.0 / (hi - lo) if hi > lo else 0.0
        offset = -lo * ratio if hi > lo else (255.0 if plan.scale != (0.0, 0.0) else 0.0)
        scale = f"<ScaleOffset>{offset!r}</ScaleOffset><ScaleRatio>{ratio!r}</ScaleRatio>"
    derived = function = ""
    if plan.masked:  # each band times its mask / 255: composited onto black
        derived = ' subClass="VRTDerivedRasterBand"'
        function = "<PixelFunctionType>mul</PixelFunctionType><SourceTransferType>Float64</SourceTransferType>"
    out_bands = []
    names = ["Red", "Green", "Blue"] if plan.band_count == 3 else ["Gray"]
    for k in range(plan.band_count):
        b = plan.bands[0] if plan.palette_expanded else plan.bands[k]
        palette = f"<ColorTableComponent>{k + 1}</ColorTableComponent>" if plan.palette_expanded else ""
        mask = ""
        if plan.masked:
            mask = _source_xml(src, f"mask,{b}", info, plan,
                               "<ScaleOffset>0</ScaleOffset><ScaleRatio>0.00392156862745098</ScaleRatio>")
        out_bands.append(f'<VRTRasterBand dataType="Byte" band="{k + 1}"{derived}><ColorInterp>{names[k]}</ColorInterp>'
                         f"{function}{_source_xml(src, str(b), info, plan, palette + scale)}{mask}</VRTRasterBand>")
    return f'<VRTDataset rasterXSize="{plan.width}" rasterYSize="{plan.height}">' + "".join(out_bands) + "</VRTDataset>"
