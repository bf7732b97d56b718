"""Which GDAL binding this process converts with, and the interface every binding offers.

The converter runs in two environments: this project's venv (rasterio's wheels bundle GDAL) and
the stock GDAL container (GDAL's own ``osgeo.gdal``, no rasterio, no pip). In the venv it calls
rasterio's libgdal through GDAL's C API (``libgdal``, backend_libgdal.py: no numpy or rasterio
import in a worker); rasterio's Python API (``rasterio``) stays selectable and is the fallback when
that library cannot be loaded. Everything else in the converter talks to GDAL only through
:class:`GdalBackend`, so the bindings stay interchangeable. The binding is loaded on first use, not
at import, so importing the package costs no GDAL start-up.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

#: What ``read_interleaved`` returns pixels in: anything with the buffer protocol.
Buffer = Union[bytes, bytearray, memoryview]

if TYPE_CHECKING:  # numpy is imported only where pixels are read: its import costs ~0.2 CPU-s per process
    import numpy as np

from .exit_codes import ConversionError, ExitCode
from .rasterinfo import RasterInfo
from .settings import BACKEND_ENV


@runtime_checkable
class GdalBackend(Protocol):
    """The few GDAL operations the converter needs; every failure raises ``GdalFailure``."""

    name: str
    version: str
    #: True when ``cascade_overviews`` can compute the COG driver's pyramid level by level.
    can_cascade_overviews: bool
    #: True when it can also start from an odd-sized input (the rounded-down sizes need
    #: GDALRegenerateOverviews); else the parallel path needs an even-sized input.
    regenerates_exact_sizes: bool

    def info(self, path: str, drivers: Optional[List[str]] = None, overviews: bool = True) -> RasterInfo:
        """What GDAL reads of ``path``; ``overviews=False`` leaves ``overview_sizes`` empty (rasterio opens the file
        once more per level to size them: three extra opens for a JPEG's DCT-scaled levels)."""
        ...

    def palette(self, path: str) -> List[Tuple[int, int, int, int]]: ...

    def create_copy(self, driver: str, src: str, dst: str, options: Dict[str, str]) -> List[str]: ...

    def cascade_overviews(self, src: str, dims: Sequence[Tuple[int, int]], prefix: str, resampling: str,
                          creation: Dict[str, str], threads: str, temps: List[str]) -> List[Union[str, Tuple[str, int]]]: ...

    def read(self, path: str, bands: Sequence[int], window: Optional[Tuple[int, int, int, int]] = None,
             out_shape: Optional[Tuple[int, int]] = None, masks: bool = False) -> np.ndarray: ...

    def read_interleaved(self, path: str, bands: int) -> Tuple[int, int, Buffer]:
        """(width, height, pixels): the first ``bands`` bands as 8-bit samples, pixel-interleaved, which
        Pillow takes as an "L" or "RGB" image as they are; no numpy on the backends that need none."""
        ...

    def checksums(self, path: str) -> Tuple[List[int], List[int]]: ...

    def decode_check(self, path: str) -> List[str]: ...

    def set_config(self, key: str, value: Optional[str]) -> None: ...

    def get_config(self, key: str) -> Optional[str]: ...

    def set_cachemax(self, nbytes: int) -> None: ...

    def get_cachemax(self) -> int: ...

    def quiet(self) -> None: ...


def overview_config(creation: Dict[str, str], threads: str) -> Dict[str, Optional[str]]:
    """The config that makes GDAL's overview builder write tiles as the COG's parts need them: the parts'
    compression, predictor and tile size, pixel interleaved, classic TIFF, no .aux RRD. Both bindings'
    ``cascade_overviews`` build under it (osgeo thread-locally, rasterio for the process)."""
    return {
        "COMPRESS_OVERVIEW": creation["COMPRESS"],
        "PREDICTOR_OVERVIEW": creation.get("PREDICTOR"),
        "INTERLEAVE_OVERVIEW": "PIXEL",
        "GDAL_TIFF_OVR_BLOCKSIZE": creation["BLOCKXSIZE"],
        "BIGTIFF_OVERVIEW": "NO",
        "GDAL_NUM_THREADS": threads,
        "USE_RRD": "NO",
    }


def cascade_levels(first: str, size: Tuple[int, int], dims: Sequence[Tuple[int, int]],
                   halve: Callable[[str], str], regenerate: Callable[[str, Tuple[int, int], int], str]) -> List[str]:
    """The pyramid's levels in order, each made from the one before (``first`` of ``size`` to start), as the
    COG driver makes them: ``halve(prev)`` for a level of exactly half an even-sized level (GDAL's overview
    builder), else ``regenerate(prev, (w, h), k)`` at the exact, rounded-down size. The bindings that can call
    GDALRegenerateOverviews (osgeo, libgdal) share this order; each supplies the two steps."""
    levels: List[str] = []
    prev, (pw, ph) = first, size
    for k, (w, h) in enumerate(dims):
        out = halve(prev) if pw % 2 == 0 and ph % 2 == 0 and (w, h) == (pw // 2, ph // 2) else regenerate(prev, (w, h), k)
        levels.append(out)
        prev, pw, ph = out, w, h
    return levels


_loaded: Optional[GdalBackend] = None
_problem: Optional[str] = None


def _load() -> Tuple[Optional[GdalBackend], Optional[str]]:
    wanted = os.environ.get(BACKEND_ENV, "").strip().lower() or "auto"
    order = {"auto": ["osgeo", "libgdal", "rasterio"], "osgeo": ["osgeo"], "libgdal": ["libgdal"],
             "rasterio": ["rasterio"]}.get(wanted)
    if order is None:
        return None, f"{BACKEND_ENV}={wanted!r}: use 'osgeo', 'libgdal' or 'rasterio'"
    problems = []
    for name in order:
        try:
            if name == "osgeo":
                from .backend_osgeo import OsgeoBackend  # noqa: PLC0415

                return OsgeoBackend(), None
            if name == "libgdal":
                from .backend_libgdal import LibgdalBackend  # noqa: PLC0415

                return LibgdalBackend(), None
            from .backend_rasterio import RasterioBackend  # noqa: PLC0415

            return RasterioBackend(), None
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
    return None, "no GDAL Python binding available (" + "; ".join(problems) + ")"


def loaded_backend() -> Optional[GdalBackend]:
    """The backend, loading it on first call; None when no binding is importable."""
    global _loaded, _problem
    if _loaded is None and _problem is None:
        _loaded, _problem = _load()
    return _loaded


def get_backend() -> GdalBackend:
    """The backend, or ConversionError(INTERNAL) naming why no binding could be loaded."""
    backend = loaded_backend()
    if backend is None:
        raise ConversionError(ExitCode.INTERNAL, _problem or "no GDAL backend")
    return backend


def backend_name() -> str:
    """``'osgeo'``, ``'libgdal'`` or ``'rasterio'``: the GDAL binding this process uses."""
    return get_backend().name


def gdal_version() -> str:
    return str(get_backend().version)
