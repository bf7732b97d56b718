"""The light COG checks reach rio-cogeo's verdict: on every converted test raster and on broken files.

The converter validates every COG with the built-in check (no import beyond the standard library)
instead of rio-cogeo, whose imports cost ~0.4 s per image; these tests are the evidence that nothing
is lost by that."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
import rasterio.shutil
from rio_cogeo.cogeo import cog_validate

from cog_pipeline.transformations.convert import convert
from cog_pipeline.transformations.validate import builtin_check
from tests import rasters

TESTDATA_RASTERS = ["rasterio/RGB.byte.tif", "rasterio/RGBA.byte.tif", "rasterio/byte.tif", "rasterio/float32.tif",
                    "rasterio/rgb1_fake_nir_epsg3857.tif", "rasterio/shade.tif", "seed/1band.tif"]


def _broken(folder: Path) -> dict[str, Path]:
    """COG look-alikes that break one rule each (and two that are fine)."""
    folder.mkdir()
    data = rasters.textured(1, 1200, 1100)
    out = {
        "striped_large": rasters.write(folder / "striped_large.tif", data),
        "striped_small": rasters.write(folder / "striped_small.tif", rasters.textured(1, 300, 200)),
        "tiled_no_overviews": rasters.write(folder / "tiled_no_overviews.tif", data, tiled=True,
                                            blockxsize=512, blockysize=512),
    }
    after = rasters.write(folder / "overviews_after_data.tif", data, tiled=True, blockxsize=512, blockysize=512)
    with rasterio.open(after, "r+") as ds:
        ds.build_overviews([2, 4])
    out["overviews_after_data"] = after
    striped_ovr = rasters.write(folder / "striped_with_overviews.tif", data)
    with rasterio.open(striped_ovr, "r+") as ds:
        ds.build_overviews([2, 4])
    out["striped_with_overviews"] = striped_ovr
    good = folder / "driver_cog.tif"
    rasterio.shutil.copy(out["striped_large"], good, driver="COG", COMPRESS="LZW")
    out["driver_cog"] = good
    return out


def _rio_cogeo(path: Path) -> tuple[bool, bool]:
    valid, errors, warnings = cog_validate(str(path), quiet=True)
    return bool(valid and not errors), bool(warnings)


def _builtin(path: Path) -> tuple[bool, bool]:
    errors, warnings = builtin_check(str(path))
    return not errors, bool(warnings)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_testdata: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    files = _broken(root / "broken")
    for name in TESTDATA_RASTERS:
        stem = name.replace("/", "_")[:-4]
        tif = root / "cog" / f"{stem}.tif"
        convert(shared_testdata / name, tif, root / "cog" / f"{stem}.jpg")
        files[f"converted {name}"] = tif
        files[f"input {name}"] = shared_testdata / name  # plain GeoTIFFs: mostly not COGs
    return files


def test_corpus_has_both_verdicts(corpus: dict[str, Path]) -> None:
    verdicts = {name: _rio_cogeo(path)[0] for name, path in corpus.items()}
    assert verdicts["overviews_after_data"] is False and verdicts["striped_large"] is False
    assert verdicts["driver_cog"] is True and all(v for k, v in verdicts.items() if k.startswith("converted"))


def test_builtin_check_agrees_with_rio_cogeo_on_every_file(corpus: dict[str, Path]) -> None:
    """Same valid/invalid verdict, file by file (the built-in check also notes a missing ghost area)."""
    disagree = {name: (_builtin(p), _rio_cogeo(p)) for name, p in corpus.items() if _builtin(p)[0] != _rio_cogeo(p)[0]}
    assert disagree == {}


def test_missing_overviews_is_a_warning_in_both(corpus: dict[str, Path]) -> None:
    path = corpus["tiled_no_overviews"]
    assert _builtin(path) == _rio_cogeo(path) == (True, True)
    assert any("no overviews" in w for w in builtin_check(str(path))[1])
