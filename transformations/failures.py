"""Telling write failures apart (out of disk, damaged input, internal) and the temporary names
the outputs are written under until verified.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from .backend import get_backend
from .exit_codes import ConversionError, ExitCode, GdalFailure
from .rasterinfo import RasterInfo

def _free_bytes(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def _probe_input(info: RasterInfo) -> Optional[str]:
    """Read the whole input, block row by block row; the GDAL error text if a read fails."""
    be = get_backend()
    rows = max(1, min(info.height, max(info.block_size[1], 1) * max(1, (8 << 20) // max(1, info.width * info.count))))
    try:
        for y in range(0, info.height, rows):
            be.read(info.path, list(range(1, info.count + 1)), window=(0, y, info.width, min(rows, info.height - y)))
    except GdalFailure as exc:
        return exc.text
    return None


def classify_write_failure(exc: GdalFailure, info: RasterInfo, out_dirs: Sequence[str], what: str) -> ConversionError:
    """OUT_OF_DISK when GDAL says the disk is full; else INPUT_UNREADABLE when the input does not read back;
    else OUT_OF_DISK when the output file system has less room left than the image needs (libtiff's messages
    on a full disk do not always say so); else INTERNAL with GDAL's message."""
    text = exc.text
    free = min((_free_bytes(d) for d in out_dirs), default=-1)
    if any(word in text.lower() for word in ("no space", "enospc", "disk full", "quota")):
        return ConversionError(ExitCode.OUT_OF_DISK, f"no space left while writing the {what} ({free} bytes free): {text}")
    problem = _probe_input(info)
    if problem:
        return ConversionError(ExitCode.INPUT_UNREADABLE, f"corrupt pixel data: {problem}")
    if 0 <= free < info.width * info.height * info.count * 2:  # pessimistic: full resolution + temporary overviews
        return ConversionError(ExitCode.OUT_OF_DISK, f"no space left while writing the {what} ({free} bytes free): {text}")
    return ConversionError(ExitCode.INTERNAL, f"writing the {what} failed: {text}")


def remove_outputs(*paths: str) -> None:
    for p in paths:
        for q in (p, p + ".aux.xml", p + ".ovr.tmp", p + ".msk.ovr.tmp"):
            try:
                os.remove(q)
            except OSError:
                pass


def temp_name(final: str, suffix: str, token: str) -> str:
    folder, name = os.path.split(os.path.abspath(final))
    return os.path.join(folder, f".{name}.{token}.tmp{suffix}")

