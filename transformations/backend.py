"""Which GDAL binding this process converts with: one per environment.

GDAL's own bindings (``osgeo.gdal``) where they are installed (the stock GDAL container, the worker
image), else rasterio's (this project's venv, whose wheels bundle GDAL). Both offer the same few
operations (backend_osgeo.py, backend_rasterio.py); every failure raises ``GdalFailure``. The binding
is loaded on first use, so importing the package costs no GDAL start-up.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from .exit_codes import ConversionError, ExitCode

_loaded: Optional[Any] = None
_problem: Optional[str] = None


def _load() -> Tuple[Optional[Any], Optional[str]]:
    problems = []
    try:
        from .backend_osgeo import OsgeoBackend  # noqa: PLC0415

        return OsgeoBackend(), None
    except ImportError as exc:
        problems.append(f"osgeo: {exc}")
    try:
        from .backend_rasterio import RasterioBackend  # noqa: PLC0415

        return RasterioBackend(), None
    except ImportError as exc:
        problems.append(f"rasterio: {exc}")
    return None, "no GDAL Python binding available (" + "; ".join(problems) + ")"


def loaded_backend() -> Optional[Any]:
    """The backend, loading it on first call; None when no binding is importable."""
    global _loaded, _problem
    if _loaded is None and _problem is None:
        _loaded, _problem = _load()
    return _loaded


def get_backend() -> Any:
    """The backend, or ConversionError(INTERNAL) naming why no binding could be loaded."""
    backend = loaded_backend()
    if backend is None:
        raise ConversionError(ExitCode.INTERNAL, _problem or "no GDAL backend")
    return backend
