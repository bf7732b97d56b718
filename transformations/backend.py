"""Which GDAL binding this process converts with, one per environment, and what it reports about a raster.

GDAL's own bindings (``osgeo.gdal``) where they are installed (the stock GDAL container, the worker image), else
rasterio's (this project's venv, whose wheels bundle GDAL). Both offer the same few operations and describe a
raster as a :class:`RasterInfo`; every failure raises ``GdalFailure``. The binding is loaded on first use, so
importing this module costs no GDAL start-up (nor numpy: the local worker's size guard reads the table here).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from .exit_codes import ConversionError, ExitCode

# GDAL mask flags (gdal.h)
GMF_PER_DATASET = 0x02
GMF_ALPHA = 0x04


@dataclass
class RasterInfo:
    path: str
    driver: str
    width: int
    height: int
    count: int
    dtypes: List[str]
    nodata: List[Optional[float]]
    colorinterp: List[str]
    mask_flags: List[int]
    block_size: Tuple[int, int]
    overview_sizes: List[Tuple[int, int]]
    has_palette: bool


def numpy_dtype_name(gdal_name: str) -> str:
    """numpy's (and rasterio's) name for a GDAL data type: ``UInt16`` -> ``uint16``, ``CFloat32`` -> ``complex64``."""
    return {"Byte": "uint8", "CInt16": "complex_int16", "CInt32": "complex_int32", "CFloat32": "complex64",
            "CFloat64": "complex128"}.get(gdal_name, gdal_name.lower())


#: Bytes per sample of each data-type name a RasterInfo carries (numpy_dtype_name's values, rasterio's names,
#: and rasterio's "complex" alias), complex types at their full size (both parts). A table rather than
#: ``numpy.dtype(name).itemsize`` so that the callers (the local worker's size guard) need not import numpy,
#: and because numpy has no "complex_int16"/"complex_int32".
DTYPE_ITEMSIZE = {
    "uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "float16": 2, "uint32": 4, "int32": 4, "float32": 4,
    "uint64": 8, "int64": 8, "float64": 8, "complex_int16": 4, "complex_int32": 8, "complex64": 8,
    "complex128": 16, "complex": 16,
}


def dtype_itemsize(name: str) -> int:
    """Bytes per sample of a data-type name; 8 for a name not in DTYPE_ITEMSIZE, to stay on the safe side of
    a size limit."""
    return DTYPE_ITEMSIZE.get(name, 8)


_loaded: Optional[Any] = None
_problems: List[str] = []


def loaded_backend() -> Optional[Any]:
    """The backend (``OsgeoBackend``, else ``RasterioBackend``), loading it on first call; None when no binding
    is importable."""
    global _loaded
    if _loaded is None and not _problems:
        for name in ("osgeo", "rasterio"):
            try:
                module = importlib.import_module(f"{__package__}.backend_{name}")
                _loaded = getattr(module, f"{name.capitalize()}Backend")()
                break
            except ImportError as exc:
                _problems.append(f"{name}: {exc}")
    return _loaded


def get_backend() -> Any:
    """The backend, or ConversionError(INTERNAL) naming why no binding could be loaded."""
    backend = loaded_backend()
    if backend is None:
        raise ConversionError(ExitCode.INTERNAL, "no GDAL Python binding available (" + "; ".join(_problems) + ")")
    return backend
