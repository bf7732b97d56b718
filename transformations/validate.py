"""Verification of the outputs before they are moved into place: the COG and the JPEG."""

from __future__ import annotations

import os
from typing import List, Tuple

from .backend import get_backend
from .exit_codes import GdalFailure
from .tiff import ghost_metadata, read_tiff_ifds

#: rio-cogeo's limit: a reader's first request (a few hundred bytes) must hold the first IFD.
MAX_FIRST_IFD_OFFSET = 300
#: rio-cogeo's rule: an image larger than this is tiled, and the pyramid reaches it.
COG_BLOCKSIZE = 512


def builtin_check(path: str) -> Tuple[List[str], List[str]]:
    """The COG rules rio-cogeo checks, on the TIFF structure itself; returns (errors, warnings).

    The converter's one COG validator, in every environment: pure Python, 0.1 ms a call, where rio-cogeo's
    import alone costs ~0.4 s; tests/test_convert_validation.py checks that it reaches rio-cogeo's verdict on
    every test raster and on deliberately broken files."""
    errors: List[str] = []
    warnings_: List[str] = []
    try:
        ifds, size = read_tiff_ifds(path)
    except (ValueError, OSError) as exc:
        return [f"not a readable TIFF: {exc}"], []
    images = [d for d in ifds if not d.subfile_type & 4]
    if not images:
        return ["no image directory"], []
    main, overviews = images[0], images[1:]
    if ifds[0].offset > MAX_FIRST_IFD_OFFSET:
        errors.append(f"the first image directory is at byte {ifds[0].offset}, not at the start of the file")
    if os.path.exists(path + ".ovr"):
        errors.append("overviews are in an external .ovr file")
    if main.subfile_type & 1:
        errors.append("the first directory is not the full-resolution image")
    tile = max(main.tile_size) if main.tiled else 0
    for label, d in [("full-resolution image", main)] + [(f"overview {i}", o) for i, o in enumerate(overviews)]:
        if not d.tiled:
            if max(d.width, d.height) > COG_BLOCKSIZE:  # a small striped image reads in one request anyway
                errors.append(f"{label} ({d.width}x{d.height}) is not tiled")
        elif d.tile_size[0] % 16 or d.tile_size[1] % 16:
            errors.append(f"{label} tile size {d.tile_size} is not a multiple of 16")
    if max(main.width, main.height) > max(tile, COG_BLOCKSIZE) and not overviews:
        # rio-cogeo and GDAL's validator warn; convert() itself requires the overviews it made.
        warnings_.append(f"{main.width}x{main.height} image has no overviews")
    prev = (main.width, main.height)
    for i, o in enumerate(overviews):
        if not o.subfile_type & 1:
            errors.append(f"overview {i} is not flagged as reduced resolution")
        if o.width >= prev[0] and o.height >= prev[1]:
            errors.append(f"overview {i} ({o.width}x{o.height}) is not smaller than the level before")
        prev = (o.width, o.height)
    if overviews and max(prev) > max(tile, COG_BLOCKSIZE):
        warnings_.append(f"smallest overview is {prev[0]}x{prev[1]}, larger than one tile")
    all_data = [x for d in ifds for x in d.data_offsets if x]
    if all_data and max(d.offset for d in ifds) > min(all_data):
        errors.append("image directories are not all before the image data")
    # Overview data must come before the full-resolution data, smallest overview first.
    order = [x for x in reversed([min((x for x in d.data_offsets if x), default=0) for d in images]) if x]
    if order != sorted(order):
        errors.append("tile data is not ordered from the smallest overview to the full resolution")
    errors += ["tile data extends beyond the end of the file" for d in ifds
               if any(off + cnt > size for off, cnt in zip(d.data_offsets, d.data_counts))]
    ghost = ghost_metadata(path)
    if not ghost:
        warnings_.append("no GDAL structural metadata (ghost area) at the start of the file")
    elif ghost.get("LAYOUT") != "IFDS_BEFORE_DATA":
        errors.append(f"ghost area says LAYOUT={ghost.get('LAYOUT')}")
    return errors, warnings_


def _jpeg_complete(path: str) -> None:
    """ValueError unless the file starts with JPEG's start-of-image and ends with its end-of-image marker."""
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(max(0, os.fstat(fh.fileno()).st_size - 2))
        tail = fh.read(2)
    if head != b"\xff\xd8":
        raise ValueError("no JPEG start-of-image marker")
    if tail != b"\xff\xd9":
        raise ValueError("no JPEG end-of-image marker (truncated?)")


def validate_jpeg(path: str, width: int, height: int, bands: int) -> Tuple[List[str], Tuple[float, float]]:
    """(errors, (min, max) of the decoded samples): the JPEG is complete (start and end markers), GDAL opens it
    as a JPEG of the expected size and band count, and every block entropy-decodes (at 1/8 scale)."""
    be = get_backend()
    try:
        _jpeg_complete(path)
        info = be.info(path, overviews=False)
        errors = []
        if info.driver != "JPEG":
            errors.append(f"GDAL reads it as {info.driver}")
        if (info.width, info.height) != (width, height):
            errors.append(f"JPEG is {info.width}x{info.height}, expected {width}x{height}")
        if info.count != bands:
            errors.append(f"JPEG has {info.count} bands, expected {bands}")
        if errors:
            return errors, (0.0, 0.0)
        # libjpeg reports corrupt entropy-coded data as a warning and decodes on (grey blocks)
        messages, value_range = be.decode_check(path)
        corrupt = [m for m in messages if "libjpeg" in m]
        if corrupt:
            detail = corrupt[0].split("(this warning")[0].split("libjpeg:", 1)[-1].strip()
            return [f"JPEG does not decode cleanly: {detail}"], value_range
    except (ValueError, OSError) as exc:
        return [f"JPEG {exc}"], (0.0, 0.0)
    except GdalFailure as exc:
        return [f"JPEG does not decode: {exc.text}"], (0.0, 0.0)
    return [], value_range
