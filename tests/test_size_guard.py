"""The local worker's size guard counts bytes per sample from a table (backend.DTYPE_ITEMSIZE), not numpy."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

from cog_pipeline.engines.local_worker import size_problem
from cog_pipeline.transformations.backend import DTYPE_ITEMSIZE, dtype_itemsize, numpy_dtype_name

# numpy has no complex integer types: each is its two integer parts.
_NUMPY_EQUIVALENT = {"complex_int16": "complex64", "complex_int32": "complex128"}
_PARTS = {"complex_int16": "int16", "complex_int32": "int32"}


@pytest.mark.parametrize("name", sorted(DTYPE_ITEMSIZE))
def test_the_table_agrees_with_numpy(name: str) -> None:
    expected = 2 * np.dtype(_PARTS[name]).itemsize if name in _PARTS else np.dtype(name).itemsize
    assert dtype_itemsize(name) == expected


def test_every_name_a_raster_info_carries_is_in_the_table() -> None:
    gdal_names = ["Byte", "Int8", "UInt16", "Int16", "UInt32", "Int32", "UInt64", "Int64", "Float32", "Float64",
                  "CInt16", "CInt32", "CFloat32", "CFloat64"]
    assert all(numpy_dtype_name(g) in DTYPE_ITEMSIZE for g in gdal_names)
    assert all(dtype in DTYPE_ITEMSIZE for dtype in rasterio.dtypes.dtype_rev if dtype not in ("bool", None))


def test_an_unknown_name_counts_as_eight_bytes() -> None:
    assert dtype_itemsize("no-such-type") == 8


def _complex_int16(path: Path, size: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning
        with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="complex_int16") as dst:
            dst.write(np.ones((1, size, size), dtype="complex64"))
    return path


def test_a_complex_int16_input_is_weighed_at_four_bytes_a_sample(tmp_path: Path) -> None:
    """numpy cannot size "complex_int16": the guard used to give up on such inputs and let any size through."""
    path = _complex_int16(tmp_path / "c.tif", 10)  # 10 x 10 x 1 x 4 = 400 pixel-bytes
    assert size_problem(path, 400) is None
    problem = size_problem(path, 399)
    assert problem is not None and problem.startswith("TOO_LARGE: 10x10x1 complex_int16 is 400 pixel-bytes")
