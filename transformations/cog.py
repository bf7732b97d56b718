"""Building the COG: GDAL's COG driver in one call, or the parallel path that runs the overview
pyramid beside the full-resolution compression and assembles the same file.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .assemble import assemble_cog
from .backend import get_backend
from .exit_codes import GdalFailure
from .failures import remove_outputs, temp_name
from .rasterinfo import GMF_ALL_VALID, RasterInfo
from .settings import COG_BLOCKSIZE, FULL_RES_THREAD_NICE, OVERVIEW_THREADS_ENV

def cog_options(info: RasterInfo, threads: int, resampling: Optional[str]) -> Dict[str, str]:
    opts = {
        "COMPRESS": "LZW",
        "BLOCKSIZE": str(COG_BLOCKSIZE),
        "PREDICTOR": "YES",  # horizontal differencing (floating-point predictor for floats): lossless
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": str(threads),
    }
    if resampling:
        opts["RESAMPLING"] = resampling.upper()
    if info.overview_sizes and max(info.overview_sizes[-1]) > COG_BLOCKSIZE:
        # The input's own overviews do not reach one tile: compute a complete set instead.
        opts["OVERVIEWS"] = "IGNORE_EXISTING"
    return opts


COG_METHOD_ENV = "COG_PIPELINE_COG_METHOD"
#: Largest uncompressed image the parallel path takes: its parts and the assembled COG are classic
#: TIFFs (< 4 GB), and LZW with the predictor expands incompressible data by at most ~1.5x.
PARALLEL_MAX_BYTES = 2_600_000_000
_PARALLEL_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


def cog_overview_dims(width: int, height: int) -> List[Tuple[int, int]]:
    """The overview sizes GDAL's COG driver makes: halve (rounding down) until one tile fits."""
    dims = []
    while width > COG_BLOCKSIZE or height > COG_BLOCKSIZE:
        width, height = max(1, width // 2), max(1, height // 2)
        dims.append((width, height))
    return dims


def cog_method(info: RasterInfo, resampling: Optional[str] = None) -> str:
    """``'parallel'`` when the COG can be built as overview pyramid || full-resolution tiles and
    assembled (see :func:`parallel_cog`), else ``'driver'`` (GDAL's COG driver in one call).

    The parallel path covers the common case only, where its overviews are proven identical to
    the COG driver's: a binding that can cascade the pyramid (osgeo: any size; rasterio: an
    even-sized input), a GTiff input needing overviews and having none,
    no nodata, mask, alpha band or palette (those change how GDAL resamples), one data type,
    the default (cubic) resampling, and an image small enough for a classic TIFF.
    ``COG_PIPELINE_COG_METHOD=driver`` forces the driver.
    """
    wanted = os.environ.get(COG_METHOD_ENV, "").strip().lower()
    if wanted == "driver":
        return "driver"
    be = get_backend()
    itemsize = {"uint8": 1, "int8": 1, "uint16": 2, "int16": 2}.get(info.dtypes[0] if info.dtypes else "", 4)
    if info.dtypes and info.dtypes[0] in ("float64",):
        itemsize = 8
    ok = (
        getattr(be, "can_cascade_overviews", False)
        and (getattr(be, "regenerates_exact_sizes", False) or (info.width % 2 == 0 and info.height % 2 == 0))
        and (not resampling or resampling.lower() == "cubic")
        and info.driver == "GTiff"
        and info.count >= 1
        and not info.overview_sizes
        and bool(cog_overview_dims(info.width, info.height))
        and not info.has_palette
        and all(f == GMF_ALL_VALID for f in info.mask_flags)
        and all(n is None for n in info.nodata)
        and len(set(info.dtypes)) == 1
        and info.dtypes[0] in _PARALLEL_DTYPES
        and info.width * info.height * info.count * itemsize <= PARALLEL_MAX_BYTES
    )
    return "parallel" if ok else "driver"


def parallel_cog(info: RasterInfo, out: str, threads: int, temps: List[str], token: str,
                  timings: Dict[str, float], beside_jpeg: bool = True) -> None:
    """Build the COG GDAL's COG driver would build, with its two halves running concurrently.

    The COG driver computes the overviews, then compresses the overview and full-resolution
    tiles, one after the other. Here a second thread computes the overview pyramid (cubic, level
    by level, exactly like the COG driver) and LZW-compresses it, while this thread compresses
    the full-resolution tiles into a plain tiled GTiff with the COG's creation options; then the
    compressed tiles are copied verbatim into the COG layout (:func:`assemble_cog`). Only tiles
    are copied: no pixel is decoded or re-encoded, so full-resolution tiles are byte-identical
    to what the COG driver writes.
    """
    gtiff = _part_options(info, threads)
    full = temp_name(out, ".full.tif", token)
    first_temp = len(temps)
    temps.append(full)
    ovr_threads = os.environ.get(OVERVIEW_THREADS_ENV, "").strip()
    pyramid = _OverviewPyramid(info.path, cog_overview_dims(info.width, info.height), temp_name(out, ".", token),
                               gtiff, ovr_threads if ovr_threads.isdigit() else "1", temps)
    # One CPU (a CHTC slot): the two halves run one after the other in this thread. Threads would
    # only take turns on the core, and each would grow its own heap arena (peak RSS).
    sequential = threads == 1
    worker = threading.Thread(target=pyramid.build, name="generate_cog-overviews", daemon=True)
    if not sequential:
        worker.start()
    timings["cog_full_res"], full_error = _compress_full_res(info.path, full, gtiff, beside_jpeg)
    if sequential:
        pyramid.build()
    else:
        worker.join()
    if full_error is not None:
        raise full_error
    timings["cog_overviews"] = pyramid.seconds
    if pyramid.error is not None:
        raise pyramid.error
    t0 = time.perf_counter()
    try:
        _assemble(full, pyramid.levels, out)
    finally:
        remove_outputs(*temps[first_temp:])
    timings["cog_assemble"] = time.perf_counter() - t0


def _part_options(info: RasterInfo, threads: int) -> Dict[str, str]:
    """GTiff creation options for the parts: the COG's tiling, compression and predictor, so their
    tiles can be copied into the COG unchanged; classic TIFF because the assembler reads only that."""
    return {
        "TILED": "YES",
        "BLOCKXSIZE": str(COG_BLOCKSIZE),
        "BLOCKYSIZE": str(COG_BLOCKSIZE),
        "COMPRESS": "LZW",
        "PREDICTOR": "3" if info.dtypes[0].startswith("float") else "2",
        "INTERLEAVE": "PIXEL",
        "BIGTIFF": "NO",
        "NUM_THREADS": str(threads),
    }


@dataclass
class _OverviewPyramid:
    """The overview half: computes and compresses every level, keeping (not raising) its error
    because it may run in a worker thread and the caller re-raises it in its own."""

    source: str
    dims: List[Tuple[int, int]]
    prefix: str
    gtiff: Dict[str, str]
    threads: str
    temps: List[str]
    levels: List[str] = field(default_factory=list)
    error: Optional[BaseException] = None
    seconds: float = 0.0

    def build(self) -> None:
        """Cascade the pyramid (cubic, like the COG driver) into ``levels``; time it in ``seconds``."""
        t0 = time.perf_counter()
        try:
            self.levels.extend(get_backend().cascade_overviews(self.source, self.dims, self.prefix, "CUBIC",
                                                               self.gtiff, self.threads, self.temps))
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller's thread
            self.error = exc
        self.seconds = time.perf_counter() - t0


def _compress_full_res(source: str, full: str, gtiff: Dict[str, str], beside_jpeg: bool
                       ) -> Tuple[float, Optional[BaseException]]:
    """Compress the full resolution into ``full``; (seconds, the error to re-raise after the overviews).

    Beside the JPEG it runs in its own, niced thread (a thread's priority can be lowered, but not
    raised back unprivileged). Without a JPEG beside it (single band) it runs in the calling thread,
    un-niced, and a failure raises at once. (Its own thread raised the 1-band peak RSS from 298 to
    354 MiB: that thread's heap arena outlived the COG.)"""
    be = get_backend()
    t0 = time.perf_counter()
    if not beside_jpeg:
        be.create_copy("GTiff", source, full, gtiff)
        return time.perf_counter() - t0, None
    outcome: Dict[str, Any] = {}

    def full_res() -> None:
        _nice_this_thread(FULL_RES_THREAD_NICE)
        try:
            be.create_copy("GTiff", source, full, gtiff)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller's thread
            outcome["error"] = exc
        outcome["seconds"] = time.perf_counter() - t0

    full_thread = threading.Thread(target=full_res, name="generate_cog-full-res", daemon=True)
    full_thread.start()
    full_thread.join()
    return outcome.get("seconds", 0.0), outcome.get("error")


def _assemble(full: str, levels: List[str], out: str) -> None:
    """:func:`assemble_cog`, with a full disk reported as GDAL reports it (so it is classified OUT_OF_DISK)."""
    try:
        assemble_cog(full, levels, out)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise GdalFailure(f"No space left on device while assembling the COG: {exc}") from None
        raise


def _nice_this_thread(nice: int) -> None:
    """Lower the calling thread's CPU priority (Linux: niceness is per thread); best effort."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass

