"""Checking the input before anything is written, so a bad input is INPUT_UNREADABLE, not INTERNAL.
"""

from __future__ import annotations

import os

from .backend import get_backend
from .exit_codes import ConversionError, ExitCode, GdalFailure
from .rasterinfo import RasterInfo
from .settings import TIFF_MAGICS
from .tiff import check_tiff_complete

def _sniff_input(path: str) -> None:
    if not os.path.exists(path):
        raise ConversionError(ExitCode.INPUT_UNREADABLE, f"input does not exist: {path}")
    if os.path.isdir(path):
        raise ConversionError(ExitCode.INPUT_UNREADABLE, f"input is a directory: {path}")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ConversionError(ExitCode.INPUT_UNREADABLE, f"cannot read input: {exc.strerror}") from None
    if not head:
        raise ConversionError(ExitCode.INPUT_UNREADABLE, f"input is empty (0 bytes): {path}")
    if head[:4] not in TIFF_MAGICS:
        raise ConversionError(
            ExitCode.INPUT_UNREADABLE, f"not a TIFF file (starts with {head[:4]!r}): {path}"
        )


def inspect_input(path: str) -> RasterInfo:
    """Open the input as a GeoTIFF; ConversionError(INPUT_UNREADABLE) if that is not possible."""
    _sniff_input(path)
    check_tiff_complete(path)
    try:
        info = get_backend().info(path, drivers=["GTiff"])
    except GdalFailure as exc:
        raise ConversionError(ExitCode.INPUT_UNREADABLE, f"GDAL cannot open it: {exc.text}") from None
    if info.count < 1:
        raise ConversionError(ExitCode.UNSUPPORTED_INPUT, "the TIFF has no raster bands")
    return info

