"""Small real GeoTIFFs for tests, written with rasterio (GDAL)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

UTM = "EPSG:32618"
TRANSFORM = from_origin(500000.0, 4500000.0, 30.0, 30.0)


def textured(bands: int, height: int, width: int, dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """Smooth gradients plus a little noise: compresses and downsamples like imagery, not like a constant."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype("float64")
    out = np.empty((bands, height, width), dtype="float64")
    for b in range(bands):
        base = 100 + 80 * np.sin(xx / (17.0 + 5 * b)) * np.cos(yy / (23.0 + 3 * b))
        out[b] = base + rng.normal(0, 6, size=(height, width))
    out = np.clip(out, 0, 255)
    if np.dtype(dtype).kind == "f":
        return out.astype(dtype)
    if dtype == "uint16":
        return (out * 40).astype(dtype)  # 0..10200, like 12-14 bit sensors
    if dtype == "int16":
        return (out * 20 - 2000).astype(dtype)
    return out.astype(dtype)


def write(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = UTM,
    transform: Any = TRANSFORM,
    nodata: float | None = None,
    colorinterp: list[ColorInterp] | None = None,
    mask: np.ndarray | None = None,
    tags: dict[str, str] | None = None,
    band_tags: dict[int, dict[str, str]] | None = None,
    descriptions: list[str] | None = None,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    **creation: Any,
) -> Path:
    """Write ``data`` (bands, rows, cols) as a GeoTIFF (striped, uncompressed unless told otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = data.shape
    profile: dict[str, Any] = dict(
        driver="GTiff", width=width, height=height, count=count, dtype=str(data.dtype)
    )
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    profile.update(creation)
    env = {"GDAL_TIFF_INTERNAL_MASK": True} if mask is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning for the plain images
        with rasterio.Env(**env), rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            if colorinterp is not None:
                dst.colorinterp = colorinterp
            if mask is not None:
                dst.write_mask(mask)
            if tags:
                dst.update_tags(**tags)
            for bidx, bt in (band_tags or {}).items():
                dst.update_tags(bidx, **bt)
            for i, desc in enumerate(descriptions or [], start=1):
                dst.set_band_description(i, desc)
            if colormap is not None:
                dst.write_colormap(1, colormap)
    return path


def read(path: Path, **kwargs: Any) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as src:
            return src.read(**kwargs)


def open_(path: Path, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rasterio.open(path, **kwargs)
