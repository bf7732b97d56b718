"""Reading TIFF structure in pure Python (any GDAL version, either binding).

Used to reject truncated or damaged inputs before GDAL touches them (convert.inspect_input), by the
built-in COG check and to join the JPEG strips; tags are named by :class:`TiffTag`, never by bare numbers.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Dict, List, Tuple

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


#: struct formats of the TIFF field types the converter reads (their sizes too, by struct.calcsize)
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


def read_tiff_ifds(path: str) -> Tuple[List[Ifd], int]:
    """Walk a (Big)TIFF's IFD chain (at most 256 IFDs); returns the IFDs and the file size. Raises ValueError."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
        if head[:4] not in TIFF_MAGICS:
            raise ValueError("not a TIFF file")
        bo = "<" if head[:2] == b"II" else ">"
        big = head[2:4] in (b"+\x00", b"\x00+")
        # offsets and value counts, the entry count of an IFD, one entry: 8, 8, 20 bytes in BigTIFF; 4, 2, 12 else
        off, off_size, n_fmt, n_size, entry_size = ("Q", 8, "Q", 8, 20) if big else ("I", 4, "H", 2, 12)
        first = 8 if big else 4
        if len(head) < first + off_size:
            raise ValueError(f"{'BigTIFF' if big else 'TIFF'} header truncated")
        offset = struct.unpack(bo + off, head[first:first + off_size])[0]
        ifds: List[Ifd] = []
        seen = set()
        while offset and len(ifds) < 256:
            if offset in seen:
                raise ValueError("IFD chain loops")
            if offset + n_size > size:
                raise ValueError(f"IFD at byte {offset} lies beyond the end of the file ({size} bytes)")
            seen.add(offset)
            fh.seek(offset)
            n = struct.unpack(bo + n_fmt, fh.read(n_size))[0]
            raw = fh.read(n * entry_size)
            if len(raw) < n * entry_size:
                raise ValueError(f"IFD at byte {offset} is truncated")
            tags: Dict[int, List[int]] = {}
            for k in range(n):
                e = raw[k * entry_size : (k + 1) * entry_size]
                tag, typ = struct.unpack(bo + "HH", e[:4])
                if tag not in _WANTED_TAGS or typ not in TIFF_FORMATS:
                    continue
                count = struct.unpack(bo + off, e[4 : 4 + off_size])[0]
                inline = e[4 + off_size :]
                nbytes = count * struct.calcsize(bo + TIFF_FORMATS[typ])
                if count > 50_000_000:
                    raise ValueError(f"tag {tag} claims {count} values")
                if nbytes <= len(inline):
                    data = inline[:nbytes]
                else:
                    where = struct.unpack(bo + off, inline)[0]
                    if where + nbytes > size:
                        raise ValueError(f"tag {tag} data lies beyond the end of the file")
                    pos = fh.tell()
                    fh.seek(where)
                    data = fh.read(nbytes)
                    fh.seek(pos)
                tags[tag] = list(struct.unpack(bo + TIFF_FORMATS[typ] * count, data))
            ifds.append(Ifd(offset, tags))
            nxt = fh.read(off_size)
            if len(nxt) < off_size:
                raise ValueError(f"IFD at byte {offset} is truncated")
            offset = struct.unpack(bo + off, nxt)[0]
    return ifds, size


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
    lines = head[start : start + nbytes].decode("ascii", "replace").splitlines()
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in lines if "=" in line)}

