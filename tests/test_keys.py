"""Keys are user data: every odd key lands at its own key with its own pixels, on folders and on S3 (issue 8.1).

On the old main the local engine built `f"{root}/{lfn}"` URLs and parsed them back, so `X/a b.tif` received the
pixels of `X/a%20b.tif`, and `hash#tag.tif` / `q?x.tif` were written to `hash` / `q`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from cog_pipeline.pipeline import ScanOptions, scan

from . import rasters
from tests.conftest import config_with

# (key, bands, size): each image has its own size and band count, so a mix-up is visible in the pixels.
ODD_KEYS = [("X/a b.tif", 3, 24), ("X/a%20b.tif", 1, 20), ("Weird/hash#tag.tif", 1, 28), ("Weird/q?x.tif", 3, 32)]


@pytest.mark.slow
def test_odd_keys_each_land_at_their_own_key_with_their_own_pixels(buckets, tmp_path: Path) -> None:
    sources = {}
    for i, (key, bands, size) in enumerate(ODD_KEYS):
        data = rasters.textured(bands, size, size, seed=i + 1)
        src = rasters.write(tmp_path / "src" / f"{i}.tif", data)
        buckets.put_file(key, src)
        sources[key] = data
    buckets.put_text("odd_raw.csv", "".join(f"{key},{bands}\n" for key, bands, _ in ODD_KEYS))
    report = scan(ScanOptions(buckets.input_bucket, buckets.output_bucket, buckets.config, tmp_path / "work", progress=False, config=config_with(workers=2)))
    assert len(report.reconciled) == 1 and not report.errors
    assert not [k for k in buckets.input_keys() if "failed" in k], "every row succeeded"
    outputs = set(buckets.output_keys())
    for key, _, _ in ODD_KEYS:
        assert {key, key[:-4] + ".jpg"} <= outputs, key
    assert not {"Weird/hash", "Weird/q", "Weird/hash.jpg", "Weird/q.jpg"} & outputs
    for i, (key, bands, size) in enumerate(ODD_KEYS):
        local = tmp_path / "check" / f"{i}.tif"
        buckets.output.download(key, local)
        with rasterio.open(local) as cog:
            assert (cog.count, cog.width, cog.height) == (bands, size, size), key
            assert np.array_equal(cog.read(), sources[key]), key
