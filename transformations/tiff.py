"""Reading TIFF structure in pure Python (any GDAL version, either binding).

Used to reject truncated or damaged inputs before GDAL touches them and by the built-in COG
check; tags are named by :class:`TiffTag`, never by bare numbers.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Dict, List, Tuple

from .exit_codes import ConversionError, ExitCode
from .settings import TIFF_MAGICS

class TiffTag(IntEnum):
    """The TIFF tags the converter reads (TIFF 6.0 and the TIFF Technical Notes)."""

    NEW_SUBFILE_TYPE = 254
    IMAGE_WIDTH = 256
    IMAGE_LENGTH = 257
    STRIP_OFFSETS = 273
    ROWS_PER_STRIP = 278
    STRIP_BYTE_COUNTS = 279
    TILE_WIDTH = 322
    TILE_LENGTH = 323
    TILE_OFFSETS = 324
    TILE_BYTE_COUNTS = 325
    JPEG_TABLES = 347


TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
TIFF_FORMATS = {1: "B", 3: "H", 7: "B", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}
_WANTED_TAGS = frozenset(TiffTag)


@dataclass
class Ifd:
    offset: int
    tags: Dict[int, List[int]]

    @property
    def width(self) -> int:
        return self.tags.get(TiffTag.IMAGE_WIDTH, [0])[0]

    @property
    def height(self) -> int:
        return self.tags.get(TiffTag.IMAGE_LENGTH, [0])[0]

    @property
    def subfile_type(self) -> int:
        return self.tags.get(TiffTag.NEW_SUBFILE_TYPE, [0])[0]

    @property
    def tiled(self) -> bool:
        return TiffTag.TILE_WIDTH in self.tags and TiffTag.TILE_OFFSETS in self.tags

    @property
    def tile_size(self) -> Tuple[int, int]:
        return (self.tags.get(TiffTag.TILE_WIDTH, [0])[0], self.tags.get(TiffTag.TILE_LENGTH, [0])[0])

    @property
    def data_offsets(self) -> List[int]:
        return self.tags.get(TiffTag.TILE_OFFSETS) or self.tags.get(TiffTag.STRIP_OFFSETS) or []

    @property
    def data_counts(self) -> List[int]:
        return self.tags.get(TiffTag.TILE_BYTE_COUNTS) or self.tags.get(TiffTag.STRIP_BYTE_COUNTS) or []


def read_tiff_ifds(path: str, max_ifds: int = 256) -> Tuple[List[Ifd], int]:
    """Walk a (Big)TIFF's IFD chain; returns the IFDs and the file size. Raises ValueError."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
        if head[:4] not in TIFF_MAGICS:
            raise ValueError("not a TIFF file")
        bo = "<" if head[:2] == b"II" else ">"
        big = head[2:4] in (b"+\x00", b"\x00+")
        if big:
            if len(head) < 16:
                raise ValueError("BigTIFF header truncated")
            offset = struct.unpack(bo + "Q", head[8:16])[0]
        else:
            if len(head) < 8:
                raise ValueError("TIFF header truncated")
            offset = struct.unpack(bo + "I", head[4:8])[0]
        ifds: List[Ifd] = []
        seen = set()
        while offset and len(ifds) < max_ifds:
            if offset in seen:
                raise ValueError("IFD chain loops")
            if offset + (8 if big else 2) > size:
                raise ValueError(f"IFD at byte {offset} lies beyond the end of the file ({size} bytes)")
            seen.add(offset)
            fh.seek(offset)
            n = struct.unpack(bo + ("Q" if big else "H"), fh.read(8 if big else 2))[0]
            entry_size = 20 if big else 12
            raw = fh.read(n * entry_size)
            if len(raw) < n * entry_size:
                raise ValueError(f"IFD at byte {offset} is truncated")
            tags: Dict[int, List[int]] = {}
            for k in range(n):
                e = raw[k * entry_size : (k + 1) * entry_size]
                tag, typ = struct.unpack(bo + "HH", e[:4])
                if tag not in _WANTED_TAGS or typ not in TIFF_FORMATS:
                    continue
                count = struct.unpack(bo + ("Q" if big else "I"), e[4:12] if big else e[4:8])[0]
                inline = e[12:20] if big else e[8:12]
                nbytes = count * TIFF_TYPE_SIZES[typ]
                if count > 50_000_000:
                    raise ValueError(f"tag {tag} claims {count} values")
                if nbytes <= len(inline):
                    data = inline[:nbytes]
                else:
                    where = struct.unpack(bo + ("Q" if big else "I"), inline)[0]
                    if where + nbytes > size:
                        raise ValueError(f"tag {tag} data lies beyond the end of the file")
                    pos = fh.tell()
                    fh.seek(where)
                    data = fh.read(nbytes)
                    fh.seek(pos)
                tags[tag] = list(struct.unpack(bo + TIFF_FORMATS[typ] * count, data))
            ifds.append(Ifd(offset, tags))
            nxt = fh.read(8 if big else 4)
            if len(nxt) < (8 if big else 4):
                raise ValueError(f"IFD at byte {offset} is truncated")
            offset = struct.unpack(bo + ("Q" if big else "I"), nxt)[0]
    return ifds, size


def check_tiff_complete(path: str) -> None:
    """Raise ConversionError(INPUT_UNREADABLE) if the TIFF is truncated or its structure is broken."""
    try:
        ifds, size = read_tiff_ifds(path)
    except ValueError as exc:
        raise ConversionError(ExitCode.INPUT_UNREADABLE, f"damaged TIFF structure: {exc}") from None
    except OSError as exc:
        raise ConversionError(ExitCode.INPUT_UNREADABLE, f"cannot read input: {exc}") from None
    if not ifds:
        raise ConversionError(ExitCode.INPUT_UNREADABLE, "TIFF has no image directory")
    end = 0
    for ifd in ifds:
        for off, cnt in zip(ifd.data_offsets, ifd.data_counts):
            if off and cnt:
                end = max(end, off + cnt)
    if end > size:
        raise ConversionError(
            ExitCode.INPUT_UNREADABLE,
            f"truncated: the file has {size} bytes but its image data extends to byte {end}",
        )


def ghost_metadata(path: str) -> Dict[str, str]:
    """GDAL's COG 'ghost area' (GDAL_STRUCTURAL_METADATA) right after the TIFF header."""
    with open(path, "rb") as fh:
        head = fh.read(1024)
    key = b"GDAL_STRUCTURAL_METADATA_SIZE="
    pos = head.find(key)
    if pos < 0 or pos > 32:
        return {}
    try:
        nbytes = int(head[pos + len(key) : pos + len(key) + 6])
    except ValueError:
        return {}
    start = head.find(b"\n", pos) + 1
    text = head[start : start + nbytes].decode("ascii", "replace")
    out = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out

