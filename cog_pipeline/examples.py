"""Example data made by the project itself: small georeferenced rasters and a manifest that exercises
both outcomes, so the README's first command works on any machine (no ../shared, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Wisconsin Transverse Mercator, the office's everyday CRS.
EXAMPLE_CRS = "EPSG:3071"
# Manifest rows (key, bands) mirroring the original tool's sample manifest, plus a 3-band image.
EXAMPLE_IMAGES: list[tuple[str, int]] = [
    ("Counties/WI/Wood/1band.tif", 1),
    ("Counties/WI/Wood/4band.tif", 4),
    ("Counties/WI/Dane/1band.tif", 1),
    ("Counties/WI/Dane/4band.tif", 4),
    ("Counties/WI/Dane/3band.tif", 3),
]
# Rows that must end in the failed file, each for a different reason.
EXAMPLE_BAD_ROWS = [
    "Counties/WI/Sauk/not-uploaded.tif,3",
    "Counties/WI/Sauk/typo.tif,three",
]


def terrain(size: int, bands: int, seed: int) -> np.ndarray:
    """Smooth, photo-like uint8 content (compresses like imagery, not like noise or a constant)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((bands, size, size), dtype=np.uint8)
    for band in range(bands):
        field = np.zeros((size, size), dtype=np.float32)
        for octave in range(1, 6):
            fx, fy, phase = rng.uniform(1, 4, 3) * octave
            field += np.sin(2 * np.pi * (fx * x + phase)) * np.cos(2 * np.pi * (fy * y + phase)) / octave
        field += rng.normal(0, 0.05, (size, size)).astype(np.float32)
        lo, hi = float(field.min()), float(field.max())
        out[band] = np.clip((field - lo) / (hi - lo + 1e-9) * 255, 0, 255).astype(np.uint8)
    if bands == 4:
        out[3] = 255  # an opaque alpha band, as scanned RGBA imagery has
    return out


def write_raster(path: Path, bands: int, size: int = 1024, seed: int = 0) -> None:
    """A striped, uncompressed GeoTIFF like the office's scanner output."""
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    data = terrain(size, bands, seed)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": "uint8",
        "crs": EXAMPLE_CRS,
        "transform": from_origin(540000.0 + seed * 1000, 400000.0, 0.5, 0.5),
    }
    if bands == 4:
        profile["photometric"] = "RGB"
        profile["alpha"] = "YES"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if bands == 4:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
        elif bands == 3:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]


def make_example_bucket(bucket_dir: Path, manifest_name: str = "example_raw.csv", size: int = 1024) -> Path:
    """Fill a local-folder bucket with example images and, last (as uploaders must), their manifest."""
    for seed, (key, bands) in enumerate(EXAMPLE_IMAGES):
        write_raster(bucket_dir / key, bands, size=size, seed=seed)
    rows = [f"{key},{bands}" for key, bands in EXAMPLE_IMAGES] + EXAMPLE_BAD_ROWS
    manifest = bucket_dir / manifest_name
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest
