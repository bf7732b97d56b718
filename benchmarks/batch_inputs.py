"""Realistic benchmark inputs for batch runs, cached outside the repository.

Why a module of its own: the batch benchmark needs many *different* images (not one file copied N times,
which would let the page cache and LZW dictionaries see the same bytes) whose content compresses like
imagery. Noise compresses not at all and constants compress to nothing; both would flatter or punish the
wrong contender. Every image is therefore cut from the real scenes in ``../shared/testdata/rasterio``:

* RGB bands: the interior of the Landsat scene ``RGB.byte.tif`` (no nodata collar), cubic x1.5;
* the 4th band of a 4-band image: a NIR-like band from ``rgb1_fake_nir_epsg3857.tif`` (same place), written
  as an ordinary band (ExtraSamples unspecified, like county RGB+NIR orthos), not as alpha;
* 1-band images: the scene's red band, or with ``gray_source="shade"`` the hillshade ``shade.tif`` (whose
  values are only 0 and 255, so it compresses like a mask; not the default for that reason);
* ``alpha=True``: the last band is an alpha band instead (RGBA drone and ortho mosaics, grey+alpha), opaque
  except a transparent wedge in each corner of the tile (about 12 % of the pixels), as a mosaic's collar.

The base tile is mirror-tiled (no seams) up to the requested size, and image ``i`` starts at its own offset
into the tiling, so each image has different bytes. Inputs are striped uint8 GeoTIFFs, uncompressed or LZW
(no predictor, as imagery is usually uploaded). A directory per parameter set holds the images and
``manifest.csv`` (``key,bands`` rows, the pipeline's manifest format); it is reused while its ``done``
marker exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TESTDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "rasterio"
DEFAULT_CACHE = Path("/tmp/cog-bench-inputs")
KEY_PREFIX = "Counties/Bench"


def _base_tile(bands: int, gray_source: str, alpha: bool = False) -> np.ndarray:
    """(bands, H, W) uint8 of real content, mirrored twice so that tiling it never makes a seam."""
    import rasterio
    from rasterio.enums import Resampling

    if bands == 1 and gray_source == "shade":
        with rasterio.open(TESTDATA / "shade.tif") as src:
            base = src.read(out_shape=(1, 1536, 1536), resampling=Resampling.nearest)
    else:
        with rasterio.open(TESTDATA / "RGB.byte.tif") as src:  # interior: no nodata collar
            rgb = src.read(window=((80, 600), (170, 630)), out_shape=(3, 780, 690), resampling=Resampling.cubic)
        layers = [rgb[:1]] if bands in (1, 2) else [rgb]
        if alpha:
            y, x = np.mgrid[0:780, 0:690]
            opaque = (np.minimum(y, 779 - y) + np.minimum(x, 689 - x)) > 190
            layers.append((opaque * 255).astype("uint8")[None])
        elif bands >= 4:
            with rasterio.open(TESTDATA / "rgb1_fake_nir_epsg3857.tif") as src:
                nir = src.read(1, window=((221, 459), (219, 457)), out_shape=(780, 690), resampling=Resampling.cubic)
            layers += [nir[None]] * (bands - 3)
        base = np.concatenate(layers)
    row = np.concatenate([base, base[:, :, ::-1]], axis=2)
    return np.ascontiguousarray(np.concatenate([row, row[:, ::-1, :]], axis=1))


def _write_image(path: Path, tile: np.ndarray, size: int, offset: tuple[int, int], compress: str,
                 alpha: bool = False) -> None:
    import rasterio
    from rasterio.transform import from_origin

    bands = tile.shape[0]
    profile = dict(
        driver="GTiff", width=size, height=size, count=bands, dtype="uint8", crs="EPSG:26916",
        transform=from_origin(600000.0 + offset[1], 5000000.0 - offset[0], 0.3, 0.3),
        interleave="pixel" if bands > 1 else "band",
    )
    if compress != "none":
        profile["compress"] = compress
    if bands == 3:
        profile["photometric"] = "RGB"
    elif bands == 4:
        profile.update(photometric="RGB", alpha="YES" if alpha else "UNSPECIFIED")
    elif bands == 2:
        profile.update(photometric="MINISBLACK", alpha="YES")
    cols = (np.arange(size) + offset[1]) % tile.shape[2]
    tmp = path.with_name(path.name + ".part")
    with rasterio.open(tmp, "w", **profile) as dst:
        for y in range(0, size, 1024):
            h = min(1024, size - y)
            rows = (np.arange(y, y + h) + offset[0]) % tile.shape[1]
            dst.write(np.ascontiguousarray(tile[:, rows][:, :, cols]), window=((y, y + h), (0, size)))
    tmp.rename(path)


def input_set(
    count: int, size: int, bands: int, compress: str = "none", gray_source: str = "landsat",
    cache: Path = DEFAULT_CACHE, alpha: bool = False,
) -> Path:
    """The cached folder holding ``count`` images and ``manifest.csv``; generated on first use."""
    if compress not in ("none", "lzw"):
        raise ValueError(f"compress must be none or lzw, not {compress!r}")
    if alpha and bands not in (2, 4):
        raise ValueError("an alpha band is the last of 2 (grey+alpha) or 4 (RGBA) bands")
    name = f"n{count}_s{size}_b{bands}_{compress}" + ("_shade" if bands == 1 and gray_source == "shade" else "")
    name += "_alpha" if alpha else ""
    folder = cache / name
    done = folder / "done"
    if done.exists():
        return folder
    tile = _base_tile(bands, gray_source, alpha)
    keys = []
    for i in range(count):
        key = f"{KEY_PREFIX}/img_{i:04d}.tif"
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Golden-ratio steps through the tiling: every image starts somewhere else in the scene.
            offset = (int(i * 0.618034 * tile.shape[1]) % tile.shape[1], int(i * 0.381966 * tile.shape[2]) % tile.shape[2])
            _write_image(path, tile, size, offset, compress, alpha)
        keys.append(key)
    (folder / "manifest.csv").write_text("".join(f"{k},{bands}\n" for k in keys), encoding="utf-8")
    done.write_text(json.dumps({"count": count, "size": size, "bands": bands, "compress": compress,
                                "gray_source": gray_source, "alpha": alpha}) + "\n")
    return folder


def images(folder: Path) -> list[tuple[str, Path]]:
    """(key, path) per manifest row of a cached input set, in manifest order."""
    rows = (folder / "manifest.csv").read_text(encoding="utf-8").splitlines()
    return [(key, folder / key) for key, _, _ in (r.rpartition(",") for r in rows if r)]
