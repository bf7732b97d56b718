"""Which GDAL binding this process converts with: one per environment.

GDAL's own bindings (``osgeo.gdal``) where they are installed (the stock GDAL container, the worker
image), else rasterio's (this project's venv, whose wheels bundle GDAL). Both offer the same few
operations (backend_osgeo.py, backend_rasterio.py); every failure raises ``GdalFailure``. The binding
is loaded on first use, so importing the package costs no GDAL start-up.
"""

from __future__ import annotations

import importlib
from typing import Any, List, Optional

from .exit_codes import ConversionError, ExitCode

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
